// Helpers shared by the CUDA sources in this folder. flexq_cli/resources.kernel_source() pastes this file in place
// of the `#include "common.cuh"` line (NVRTC, through CuPy, gets one source string); nvcc finds it beside the .cu.
// Before including it, a kernel defines FQ_BF16 (1: its 16-bit activations and outputs are bfloat16).
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;

// ---------------------------------------------------------------- the weight layout (flexq_cli/packing.py)
// qweight holds one 96-byte record (six bit planes of 128 K) per (row, K block), ordered by groups of 16 rows and
// block-major inside a group, so that the 16 rows of one MMA tile are 1,536 contiguous bytes per block.
// The index of the record of (row, block b) among NB blocks per row (N % 16 == 0); block b + 1 is 16 records on.
#define REC_GROUP 16
__device__ __forceinline__ size_t rec_index(int row, int b, int NB) {
    return ((size_t)(row >> 4) * NB + b) * REC_GROUP + (row & (REC_GROUP - 1));
}

// ---------------------------------------------------------------- 16-bit float conversions (no cuda_fp16.h)
__device__ __forceinline__ float to_float(u16 h) {
#if FQ_BF16
    return __uint_as_float(((u32)h) << 16);
#else
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ u16 from_float(float f) {
    u16 h;
#if FQ_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

// Two floats as one word of 16-bit values, lo in the low half, each rounded as from_float rounds it.
__device__ __forceinline__ u32 pack_pair(float lo, float hi) {
    u32 r;
#if FQ_BF16
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// IEEE fp32 arithmetic written as PTX: CuPy compiles with -ftz=true, which would turn __fdiv_rn & co into their
// flush-to-zero forms; explicit div.rn / mul.rn / add.rn keep denormals, as torch does, and are never contracted
// into an FMA, so the epilogue repeats the reference's operation sequence exactly.
__device__ __forceinline__ float fdiv_ieee(float a, float b) { float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float fmul_ieee(float a, float b) { float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float fadd_ieee(float a, float b) { float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float fsqrt_ieee(float a) { float r; asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a)); return r; }
__device__ __forceinline__ u32 abs_bits(float f) { return __float_as_uint(f) & 0x7fffffffu; }  // |f| as ordered uint

__device__ __forceinline__ float half_to_float(u16 h) {  // weight scales are always float16
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

// bias[row] as float: a float32 bias (bias_f32) or one of the output's 16-bit dtype. Every GEMM's last step adds it.
__device__ __forceinline__ float bias_at(const void* bias, int bias_f32, int row) {
    return bias_f32 ? ((const float*)bias)[row] : to_float(((const u16*)bias)[row]);
}

// ---------------------------------------------------------------- programmatic dependent launch (sm_90)
// btc.py launches both kernels with the programmatic-stream-serialization attribute, so a kernel may start
// while the one before it in the stream is still running. Everything that reads memory another kernel writes
// (x, xpack, sx, the counters and partials) or writes memory anybody reads comes after pdl_wait(), which
// returns once the preceding grid has completed and its writes are visible; only the read-only weight
// prefetch runs before it. pdl_trigger() lets the next kernel's CTAs be scheduled early (they wait in turn).
// Launched without the attribute (or below sm_90) both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------- activation quantization (primitives.py, bit for bit)
// s = absmax / qmax with IEEE division (div.rn), q = rint(x / s) (round half to even) clamped to [qmin, qmax],
// and s == 0 gives q = 0. absmax is taken on |x| as an ordered uint (monotonic for non-negative floats).
__device__ __forceinline__ float act_scale(u32 absmax_bits, int qmax) {
    return fdiv_ieee(__uint_as_float(absmax_bits), (float)qmax);
}
__device__ __forceinline__ int act_code(float v, float s, int qmax) {
    return s > 0.f ? (int)fminf(fmaxf(rintf(fdiv_ieee(v, s)), (float)(-qmax - 1)), (float)qmax) : 0;
}
// The scale of one (token, 128-block) whose values a warp holds four per lane.
__device__ __forceinline__ float warp_block_scale(const float (&v)[4], int qmax) {
    const u32 m = max(max(abs_bits(v[0]), abs_bits(v[1])), max(abs_bits(v[2]), abs_bits(v[3])));
    return act_scale(__reduce_max_sync(0xffffffffu, m), qmax);
}

// ================================================================ memory helpers
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, unsigned long long policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(policy));
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(u32 addr, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}

__device__ __forceinline__ u32 lds32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}


// The codes of the values a warp holds four per lane, with scale s; returns s.
__device__ __forceinline__ float block_codes(const float (&v)[4], float s, int qmax, int (&q)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) q[e] = act_code(v[e], s, qmax);
    return s;
}

// x row `xr` (K values, fp16/bf16) of one token: lane l of a warp holds v[e] = x[128b + 32e + l] (0 past K or for a
// padding token), the block's codes q[e] and, returned, its scale (whole_row: the given per-token scale).
__device__ __forceinline__ float quantize_block(const u16* xr, int K, bool live, int b, int whole_row, float row_scale,
                                                int qmax, int (&q)[4]) {
    const int lane = threadIdx.x & 31;
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int k = b * 128 + e * 32 + lane;
        v[e] = (live && k < K) ? to_float(xr[k]) : 0.f;
    }
    return whole_row ? block_codes(v, row_scale, qmax, q) : block_codes(v, warp_block_scale(v, qmax), qmax, q);
}

// One (token, block) BTC record from the codes a warp holds four per lane (quantize_block): word e of plane p (bit l
// = bit p of lane l's code of element e) ends up in lane p*4+e, so the record is one coalesced 4*ABITS-word store.
// Each lane's four codes as bytes (byte e = q[e]: column 8e + p of a 32 x 32 bit matrix whose row l is lane l's
// word) are transposed across the warp (five shuffle stages swap off-diagonal blocks of 16, 8, 4, 2, 1: lane j
// then holds column j) and lane p*4+e takes column 8e + p; 6 shuffles where a ballot per plane word took 4 * ABITS.
// Shared by btc_act_pack, the fused pack of btc_gemm (BTC_FUSE) and the RMSNorm kernel's pack (rmsnorm.cu).
template <int ABITS>
__device__ __forceinline__ u32 plane_word(const int (&q)[4], int lane) {
    u32 x = (q[0] & 0xff) | ((q[1] & 0xff) << 8) | ((q[2] & 0xff) << 16) | ((u32)(q[3] & 0xff) << 24);
#pragma unroll
    for (int s = 16; s >= 1; s >>= 1) {
        const u32 m = 0xFFFFFFFFu / ((1u << s) + 1);  // the low s bits of every 2s: 0x0000FFFF, 0x00FF00FF, ...
        const u32 y = __shfl_xor_sync(0xffffffffu, x, s);
        x = (lane & s) ? ((x & ~m) | ((y >> s) & m)) : ((x & m) | ((y & m) << s));
    }
    return __shfl_sync(0xffffffffu, x, (lane & 3) * 8 + ((lane >> 2) & 7));
}

// The INT8 kernel's K order (w6_int8_gemm.cu, top): lane l's code of element e (physical k = 32e + l of a block)
// goes to logical byte 32e + i8_code_pos(l) of the block. Shared by i8_act_quant and rmsnorm.cu.
__device__ __forceinline__ int i8_code_pos(int lane) {
    const int p = lane & 7, i = lane >> 3;
    return 16 * (p & 1) + 4 * (p >> 1) + i;
}
// The warp-specialized INT8 GEMM's tiled activations (w6_int8_gemm.cu, i8_act_quant): codes (Mt, NB, 128, 128) and
// scales (Mt, NB, 128), the 128 tokens of token tile tok / 128 and block b as 128-byte rows. The row of (tok, b), and
// where the code of element e (physical k = 32e + l) of the lane l with row-layout position kk = i8_code_pos(l) =
// 16h + 4q + i sits in it: byte 32q + 16h + 4e + i (the row layout's 4-byte groups (e, q) transposed, so that K step
// q of the GEMM holds what its register fragments of the weights need, w6_int8_gemm.cu, ws_block), in 16-byte chunk
// c at chunk c ^ (tok % 8), wgmma's 128-byte swizzle. Shared by i8_act_quant and rmsnorm.cu.
__device__ __forceinline__ size_t tiled_act_row(int tok, int b, int NB) {
    return ((size_t)(tok >> 7) * NB + b) * 128 + (tok & 127);
}
__device__ __forceinline__ int tiled_act_byte(int tok, int e, int kk) {
    const int byte = 32 * ((kk >> 2) & 3) + (kk & 16) + 4 * e + (kk & 3);
    return (((byte >> 4) ^ (tok & 7)) << 4) | (byte & 15);
}
// One 128-wide block's INT8 codes (lane l holds q[e], physical k = 32e + l) and scale s into the row layout (xq (M,
// NB * 128), sx (M, NB)) or the tiled one above. Shared by i8_act_quant and rmsnorm.cu's modes 2 and 3.
__device__ __forceinline__ void store_int8_block(signed char* xq, float* sx, const int (&q)[4], float s, int tok,
                                                 int b, int NB, int lane, bool tiled) {
    const int kk = i8_code_pos(lane);
    const size_t row = tiled ? tiled_act_row(tok, b, NB) : (size_t)tok * NB + b;
    signed char* out = xq + row * 128;
#pragma unroll
    for (int e = 0; e < 4; ++e) out[tiled ? tiled_act_byte(tok, e, kk) : 32 * e + kk] = (signed char)q[e];
    if (lane == 0) sx[row] = s;
}

// ---------------------------------------------------------------- 6-bit weights: bit planes -> int8 codes
// Swap the bits selected by mask m << s of `lo` with the bits m of `hi` (one step of a bit-matrix transpose).
// SELECT: each side a select (one lop3) of the other's shifted bits, 4 instructions and no chain through t, where the
// XOR form takes 5. On the H100 (2026-11-23, twenty-first session) the select form made the warp-specialized GEMM
// 1.06-1.08x faster; in the decode kernel it was 0.55-1.06x config by config, so that one keeps the XOR form.
template <bool SELECT>
__device__ __forceinline__ void delta_swap(u32& lo, u32& hi, int s, u32 m) {
    if (SELECT) {
        const u32 l = lo, h = hi;
        asm("lop3.b32 %0, %1, %2, %3, 0xD8;" : "=r"(hi) : "r"(h), "r"(l >> s), "r"(m));  // m ? l >> s : h
        asm("lop3.b32 %0, %1, %2, %3, 0xD8;" : "=r"(lo) : "r"(l), "r"(h << s), "r"(m << s));
    } else {
        const u32 t = ((lo >> s) ^ hi) & m;
        hi ^= t;
        lo ^= t << s;
    }
}

// r[0..5]: the six plane words of one (weight row, 32-wide K word) of a packed record (plane j: bit k of word j is
// bit j of the code of k). They are rows 0..5 of an 8 x 32 bit matrix; rows 6 and 7 repeat the sign plane (so the
// codes come out sign-extended to 8 bits); three delta-swap stages transpose each 8 x 8 block (byte lane i), after
// which r[p] holds in byte i the int8 code of k = p + 8i. 12 swaps of 4-5 instructions for 32 codes. Shared by the
// INT8 kernels (w6_int8_gemm.cu, w6_int8_gemv.cu), which order K to match; SELECT: delta_swap's form.
template <bool SELECT = false>
__device__ __forceinline__ void unpack_planes(u32 (&r)[8]) {
    r[6] = r[7] = r[5];
#pragma unroll
    for (int j = 0; j < 4; ++j) delta_swap<SELECT>(r[j], r[j + 4], 4, 0x0F0F0F0Fu);
#pragma unroll
    for (int j = 0; j < 8; j += (j & 1) ? 3 : 1) delta_swap<SELECT>(r[j], r[j + 2], 2, 0x33333333u);  // 0, 1, 4, 5
#pragma unroll
    for (int j = 0; j < 8; j += 2) delta_swap<SELECT>(r[j], r[j + 1], 1, 0x55555555u);
}

// ---------------------------------------------------------------- INT8 MMA (w6_int8_gemm.cu, w6_int8_gemv.cu)
#define MAGIC 0x4B400000  // float 1.5 * 2^23: its low mantissa bits hold an int added to it exactly
#define MAGIC_F 12582912.0f

__device__ __forceinline__ void imma(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// The first MMA of a block starts from MAGIC instead of 0: the accumulator's bits are then the float MAGIC_F + acc
// (|acc| <= 2^19 < 2^22), and one exact subtraction gives (float)acc: no int-to-float conversion instruction.
__device__ __forceinline__ void imma_first(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(MAGIC));
}

// One 128-K block's term of the canonical epilogue (reference.py) into its chunk's running sum: (float)acc from the
// accumulator's MAGIC-biased bits (exact), times fp32(sx * sw), each multiply rounded; the chunk's first block
// (kb == 0) starts the sum. The INT8 mainloops all end a block here (chunk_add_term; the warp-specialized kernel,
// whose accumulator starts from 0, converts it itself and calls chunk_add).
__device__ __forceinline__ void chunk_add(float& csum, float acc, float sx, float sw, int kb) {
    const float term = fmul_ieee(acc, fmul_ieee(sx, sw));
    csum = kb == 0 ? term : fadd_ieee(csum, term);
}
__device__ __forceinline__ void chunk_add_term(float& csum, int biased_acc, float sx, float sw, int kb) {
    chunk_add(csum, fadd_ieee(__int_as_float(biased_acc), -MAGIC_F), sx, sw, kb);  // exact (float)acc
}

// The per-token scale (act_group_size -1) of row `xr`, reduced over the whole CTA of WARPS warps (all must call).
template <int WARPS>
__device__ __forceinline__ float cta_row_scale(const u16* xr, int K, bool live, int qmax) {
    __shared__ u32 red[WARPS];
    u32 m = 0;
    for (int k = threadIdx.x; live && k < K; k += blockDim.x) m = max(m, abs_bits(to_float(xr[k])));
    m = __reduce_max_sync(0xffffffffu, m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0;
    for (int w = 0; w < WARPS; ++w) m = max(m, red[w]);
    return act_scale(m, qmax);
}
