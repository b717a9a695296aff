// Decode attention: one query token per sequence over the static KV cache, softmax(q k^T * scale + mask) v, in one
// launch (flexq_cli/attn_kernel.py). Optionally it also quantizes each head's output for o_proj's INT8 kernel (the
// head is exactly one act group of 128 when D = 128), so o_proj needs no quantize launch of its own.
//
// Inputs: q (B, H, D) 16-bit (the rotary kernel's output); keys, values: the cache buffers (B, Hkv, max_len, D), of
// which the first L positions are read (kv_b, kv_h: their batch and head strides in elements); mask: additive
// 16-bit (B, ..., L) with batch stride mask_b and unit stride along the keys (0 or -inf, generate.Decoder), or null.
// GQA: query head h reads kv head h / (H / Hkv).
// Output: out (B, H * D) 16-bit; with AT_QUANT, xq (B, H * D) int8 codes in i8_act_quant's layout and sx (B, H) float32
// scales, the same bits as i8_act_quant on out (quantize_block's numerics on the rounded 16-bit outputs).
//
// Work: grid (B * H, S). CTA (bh, s) takes keys [s * chunk, (s + 1) * chunk) of its (sequence, head): q.k with 8 lanes
// per key (D / 8 dimensions each, a warp 4 keys per step), the chunk's scores in shared memory, its max m and
// l = sum exp(score - m), then o = sum exp(score - m) v with each lane owning D / 32 dimensions (a warp reads one
// value row per step). With S > 1 each CTA stores (o, m, l) to `part`, and the last CTA of its (sequence, head) to
// arrive (an atomic counter, reset by that CTA for the next launch) combines them: M = max m_s,
// out = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s. A chunk whose keys are all masked has m = -inf and adds
// nothing. Numerics: fp32 throughout, one rounding to 16 bits at the end; not transformers' SDPA bit for bit (cuDNN
// and flash attention order their sums differently), tests/test_attention_gpu.py states the tolerance.

#ifndef AT_D
#define AT_D 128
#endif
#ifndef AT_BF16
#define AT_BF16 0
#endif
#ifndef AT_QUANT
#define AT_QUANT 0  // 1: also xq / sx for o_proj (needs AT_D == 128)
#endif
#ifndef AT_QMAX
#define AT_QMAX 127
#endif
#ifndef AT_MAX_CHUNK
#define AT_MAX_CHUNK 512  // keys per CTA at most (scores in shared memory); attn_kernel.py keeps to it
#endif

#define FQ_BF16 AT_BF16
#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000u)
#ifndef AT_WARPS
#define AT_WARPS 4  // attn_kernel.WARPS (attn_kernel.py always passes it)
#endif
#define AT_THREADS (32 * AT_WARPS)
#define LPK 8              // lanes per key in q.k
#define DPL (AT_D / LPK)   // dimensions per lane in q.k: 16 or 8
#define VPL (AT_D / 32)    // dimensions per lane in p.v: 4 or 2
static_assert(AT_D == 64 || AT_D == 128, "head dim 64 or 128");
static_assert(!AT_QUANT || AT_D == 128, "the fused quantize needs one head per act group of 128");
static_assert(AT_THREADS >= AT_D, "a thread per output dimension");

// The sum (or max) of one value per warp, in warp order
__device__ __forceinline__ float warps_sum(const float* v, int stride) {
    float r = v[0];
#pragma unroll
    for (int w = 1; w < AT_WARPS; ++w) r += v[w * stride];
    return r;
}
__device__ __forceinline__ float warps_max(const float* v) {
    float r = v[0];
#pragma unroll
    for (int w = 1; w < AT_WARPS; ++w) r = fmaxf(r, v[w]);
    return r;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// 16-bit values -> floats (n of them, from 4-byte-aligned memory)
template <int N>
__device__ __forceinline__ void load_f(const u16* p, float (&f)[N]) {
    if constexpr (N % 8 == 0) {
#pragma unroll
        for (int i = 0; i < N / 8; ++i) {
            const uint4 w = ((const uint4*)p)[i];
            const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                f[8 * i + 2 * j] = to_float((u16)(ws[j] & 0xffffu));
                f[8 * i + 2 * j + 1] = to_float((u16)(ws[j] >> 16));
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            const u32 w = ((const u32*)p)[i];
            f[2 * i] = to_float((u16)(w & 0xffffu));
            f[2 * i + 1] = to_float((u16)(w >> 16));
        }
    }
}

extern "C" __global__ void __launch_bounds__(AT_THREADS)
fq_decode_attn(const u16* __restrict__ q, const u16* __restrict__ keys, const u16* __restrict__ values,
               const u16* __restrict__ mask, u16* __restrict__ out, float* __restrict__ part,
               int* __restrict__ counters, signed char* __restrict__ xq, float* __restrict__ sx, int H, int Hkv, int L,
               int chunk,
               unsigned long long kv_b, unsigned long long kv_h, unsigned long long mask_b, float scale) {
    __shared__ float sc[AT_MAX_CHUNK];
    __shared__ float red[AT_WARPS][AT_D];
    __shared__ float wred[AT_WARPS];
    __shared__ int last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int bh = blockIdx.x, S = gridDim.y, s = blockIdx.y;
    const int b = bh / H, h = bh % H, hk = h / (H / Hkv);
    const int j0 = s * chunk, n = max(0, min(L, j0 + chunk) - j0);
    const u16* kb = keys + b * kv_b + hk * kv_h + (size_t)j0 * AT_D;
    const u16* vb = values + b * kv_b + hk * kv_h + (size_t)j0 * AT_D;
    const u16* mb = mask ? mask + b * mask_b + j0 : nullptr;

    pdl_wait();  // q and the cache's newest row are the rotary kernel's output
    pdl_trigger();
    // scores: lane (key kq = lane / 8, part sub = lane % 8) of warp w: key 4 (w + 4 it) + kq
    const int sub = lane & (LPK - 1), kq = lane / LPK;
    float qf[DPL];
    load_f<DPL>(q + (size_t)bh * AT_D + sub * DPL, qf);
    float mloc = NEG_INF;
    // UNR groups of 4 keys per warp and step, all their rows loaded before any is used (bytes in flight)
    constexpr int UNR = 4;
    for (int j = 4 * warp + kq; j - kq < n; j += 4 * AT_WARPS * UNR) {
        float kf[UNR][DPL];
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int ju = j + 4 * AT_WARPS * u;
            if (ju < n) load_f<DPL>(kb + (size_t)ju * AT_D + sub * DPL, kf[u]);
        }
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int ju = j + 4 * AT_WARPS * u;
            float dot = 0.f;
#pragma unroll
            for (int d = 0; d < DPL; ++d) dot = fmaf(qf[d], kf[u][d], dot);
#pragma unroll
            for (int o = LPK / 2; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            if (ju < n) {
                const float sj = dot * scale + (mb ? to_float(mb[ju]) : 0.f);
                if (sub == 0) sc[ju] = sj;
                mloc = fmaxf(mloc, sj);
            }
        }
    }
    mloc = warp_max(mloc);
    if (lane == 0) wred[warp] = mloc;
    __syncthreads();
    const float m = warps_max(wred);
    float lsum = 0.f;
    for (int j = threadIdx.x; j < n; j += AT_THREADS) {
        const float p = m == NEG_INF ? 0.f : __expf(sc[j] - m);
        sc[j] = p;
        lsum += p;
    }
    lsum = warp_sum(lsum);
    __syncthreads();  // every p is in sc, every warp has read wred
    if (lane == 0) wred[warp] = lsum;
    // p.v: warp w takes keys w, w + 4, ...; lane owns dimensions VPL * lane ..
    float acc[VPL];
#pragma unroll
    for (int d = 0; d < VPL; ++d) acc[d] = 0.f;
#pragma unroll 8
    for (int j = warp; j < n; j += AT_WARPS) {
        float vf[VPL];
        load_f<VPL>(vb + (size_t)j * AT_D + lane * VPL, vf);
        const float p = sc[j];
#pragma unroll
        for (int d = 0; d < VPL; ++d) acc[d] = fmaf(p, vf[d], acc[d]);
    }
#pragma unroll
    for (int d = 0; d < VPL; ++d) red[warp][lane * VPL + d] = acc[d];
    __syncthreads();
    const float l = warps_sum(wred, 1);
    float o = 0.f;  // thread d < D: this chunk's (unnormalised) output dimension d
    if (threadIdx.x < AT_D) o = warps_sum(&red[0][threadIdx.x], AT_D);

    float* fin = red[0];  // the final outputs, for the quantize (reused: every read of red is above)
    if (S == 1) {
        __syncthreads();
        if (threadIdx.x < AT_D) fin[threadIdx.x] = o / l;
    } else {
        float* mine = part + ((size_t)bh * S + s) * (AT_D + 2);
        if (threadIdx.x < AT_D) __stcg(mine + threadIdx.x, o);
        if (threadIdx.x == 0) {
            __stcg(mine + AT_D, m);
            __stcg(mine + AT_D + 1, l);
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(counters + bh, 1) == S - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        const float* all = part + (size_t)bh * S * (AT_D + 2);
        float M = NEG_INF;
        for (int t = 0; t < S; ++t) M = fmaxf(M, __ldcg(all + t * (AT_D + 2) + AT_D));
        float Lsum = 0.f, O = 0.f;
        for (int t = 0; t < S; ++t) {
            const float mt = __ldcg(all + t * (AT_D + 2) + AT_D);
            const float w = mt == NEG_INF ? 0.f : __expf(mt - M);
            Lsum += w * __ldcg(all + t * (AT_D + 2) + AT_D + 1);
            if (threadIdx.x < AT_D) O += w * __ldcg(all + t * (AT_D + 2) + threadIdx.x);
        }
        if (threadIdx.x == 0) counters[bh] = 0;  // for the next launch (stream order: nobody else touches it now)
        __syncthreads();
        if (threadIdx.x < AT_D) fin[threadIdx.x] = O / Lsum;
    }
    if (threadIdx.x < AT_D) {
        const u16 r = from_float(fin[threadIdx.x]);
        out[(size_t)bh * AT_D + threadIdx.x] = r;
        fin[threadIdx.x] = to_float(r);  // the quantize reads the 16-bit output, as i8_act_quant would
    }
#if AT_QUANT
    __syncthreads();
    if (warp == 0) {  // quantize_block on this head's 128 values: lane l holds element 32e + l
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = fin[32 * e + lane];
        int qc[4];
        const float scl = block_codes(v, warp_block_scale(v, AT_QMAX), AT_QMAX, qc);
        signed char* dst = xq + (size_t)bh * 128 + i8_code_pos(lane);
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[32 * e] = (signed char)qc[e];
        if (lane == 0) sx[bh] = scl;
    }
#endif
}
