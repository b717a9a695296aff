// RMSNorm of a LLaMA-family decoder in one kernel, optionally with the next quantized linear's activation
// quantize-and-pack in the same pass (flexq_cli/norm_kernel.py). Numerics: primitives.rms_norm, bit for bit:
//   ss  = sum of x[k]^2 (fp32) over the row zero-padded to a power of two, as a bottom-up pairwise tree: level o
//         (o = 1, 2, 4, ...) adds element i + o into element i for i a multiple of 2o. More zero padding leaves
//         the result unchanged (x + 0 = x for the non-negative partial sums), so the CTA may cover any power of two
//         >= H: thread t sums elements [tR, tR + R) in registers, lanes by shuffles, warps through shared memory.
//   inv = 1 / sqrt(ss / H + eps)            (IEEE div.rn, add.rn, sqrt.rn, div.rn)
//   y   = 16-bit(w * 16-bit(x * inv))        (as HF's LlamaRMSNorm: the normalized row rounded to the input dtype,
//                                            times the weight; both products are exact in fp32, one rounding each)
// mode 0: y only. mode 1: y, and the BTC bit planes + scales of y (btc_act_pack's layout; grid = Mp tokens, the
// padding tokens' records zeros). mode 2: y, and the INT8 kernel's permuted int8 codes + scales (i8_act_quant's
// layout). mode 3: y, and the same codes + scales in i8_act_quant's tiled layout, for the warp-specialized INT8
// GEMM (grid = Mt * 128 tokens, the padding tokens' codes and scales zeros). Modes 1-3 use act groups of 128: each
// warp quantizes whole 128-wide blocks of y as it makes them (x is read again for that: the CTA's own first read left
// it in L1).
// With a residual (res != null) the row normalized is s = 16-bit(x + res), PyTorch's add of the decoder's residual
// stream (the two values added in fp32, round to nearest, then rounded to 16 bits): the kernel writes s to `sum`
// (each element once, by the thread that writes y there) and normalizes s, so the add needs no launch of its own.
// Grid (tokens, CTAs per token): every CTA of a token sums all its squares (the same tree, so the same inv), then
// writes and packs only its share of the row (blocks blockIdx.y * NORM_WARPS + warp, every gridDim.y * NORM_WARPS),
// so a one-token norm spreads its pack over several SMs. R = (padded width) / NORM_THREADS <= NORM_MAX_R elements
// per thread.
// fq_silu_mul (bottom of the file) is the same idea for down_proj's input: HF's gated SiLU product in one launch,
// optionally with down_proj's pack.

#ifndef NORM_BF16
#define NORM_BF16 0
#endif
#ifndef NORM_ACT_BITS
#define NORM_ACT_BITS 8
#endif
#ifndef NORM_THREADS
#define NORM_THREADS 256
#endif
#ifndef NORM_MAX_R
#define NORM_MAX_R 16
#endif

#define FQ_BF16 NORM_BF16
#include "common.cuh"

#define QMAX ((1 << (NORM_ACT_BITS - 1)) - 1)
#define NORM_WARPS (NORM_THREADS / 32)

static_assert(NORM_ACT_BITS == 6 || NORM_ACT_BITS == 8, "activation bits must be 6 or 8");
static_assert(NORM_THREADS % 32 == 0 && NORM_THREADS <= 1024, "whole warps per CTA");
static_assert((NORM_WARPS & (NORM_WARPS - 1)) == 0 && (NORM_MAX_R & (NORM_MAX_R - 1)) == 0, "powers of two");

// One token's input row: x, or with a residual row the 16-bit sum x + res (PyTorch's rounding).
struct RowIn {
    const u16* x;
    const u16* res;
    __device__ __forceinline__ u16 operator()(int k) const {
        return res ? from_float(fadd_ieee(to_float(x[k]), to_float(res[k]))) : x[k];
    }
};

// y[k] of this token as 16-bit bits, for the input element xk: w * round16(xk * inv).
__device__ __forceinline__ u16 norm_value(u16 xk, const u16* w, int k, float inv) {
    const u16 h = from_float(fmul_ieee(to_float(xk), inv));
    return from_float(fmul_ieee(to_float(w[k]), to_float(h)));
}

// The tree sum of the squares of xr[0..H) (the row's own zero padding up to NORM_THREADS * R), for every thread.
__device__ __forceinline__ float tree_sum_squares(const RowIn& xr, int H, int R, bool live) {
    __shared__ float warp_sums[NORM_WARPS];
    __shared__ float total;
    float v[NORM_MAX_R];
    const int base = threadIdx.x * R;
#pragma unroll
    for (int r = 0; r < NORM_MAX_R; ++r) {
        const float a = (live && r < R && base + r < H) ? to_float(xr(base + r)) : 0.f;
        v[r] = fmul_ieee(a, a);
    }
#pragma unroll
    for (int o = 1; o < NORM_MAX_R; o *= 2)  // levels inside the thread (beyond R they add zeros: no change)
#pragma unroll
        for (int r = 0; r < NORM_MAX_R; r += 2 * o) v[r] = fadd_ieee(v[r], v[r + o]);
    float s = v[0];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {  // lane j += lane j + o (kept by the lanes that are multiples of 2o)
        const float t = __shfl_down_sync(0xffffffffu, s, o);
        s = fadd_ieee(s, t);
    }
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < NORM_WARPS ? warp_sums[lane] : 0.f;
#pragma unroll
        for (int o = 1; o < NORM_WARPS; o *= 2) {
            const float t = __shfl_down_sync(0xffffffffu, s, o);
            s = fadd_ieee(s, t);
        }
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

__device__ __forceinline__ u16 silu_mul(const u16* g, int k, int I) {
    const float gf = to_float(g[k]);
    const u16 s = from_float(fdiv_ieee(gf, fadd_ieee(1.f, expf(-gf))));
    return from_float(fmul_ieee(to_float(s), to_float(g[I + k])));
}

// One 128-wide block's pack from the values a warp holds four per lane (act groups of 128): mode 1 the BTC record
// (btc_act_pack's layout), mode 2 the INT8 codes in the INT8 kernel's K order, mode 3 those codes tiled; and the
// block's scale.
__device__ __forceinline__ void store_pack(const float (&v)[4], int mode, void* packed, float* sx, int tok, int b,
                                           int NB, int lane) {
    int q[4];
    const float s = block_codes(v, warp_block_scale(v, QMAX), QMAX, q);
    if (mode == 1) {
        const size_t row = (size_t)tok * NB + b;  // the block's record and scale
        const u32 mine = plane_word<NORM_ACT_BITS>(q, lane);
        if (lane < 4 * NORM_ACT_BITS) ((u32*)packed)[row * (4 * NORM_ACT_BITS) + lane] = mine;
        if (lane == 0) sx[row] = s;
    } else {
        store_int8_block((signed char*)packed, sx, q, s, tok, b, NB, lane, mode == 3);
    }
}

// Blocks b0, b0 + step, ... (< NB) of one token's row of `width` 16-bit outputs: lane l of the warp makes
// k = 128b + 32e + l as value(k), stores it in out[k] (live tokens, k < width) and, for modes 1-3, the block's
// pack from those values (zeros past the row or for a padding token).
template <class Value>
__device__ __forceinline__ void emit_blocks(Value value, u16* out, int width, bool live, int b0, int step, int NB,
                                            int mode, void* packed, float* sx, int tok) {
    const int lane = threadIdx.x & 31;
    for (int b = b0; b < NB; b += step) {
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int k = b * 128 + e * 32 + lane;
            v[e] = 0.f;
            if (live && k < width) {
                const u16 r = value(k);
                out[k] = r;
                v[e] = to_float(r);
            }
        }
        if (mode != 0) store_pack(v, mode, packed, sx, tok, b, NB, lane);
    }
}

// res and sum: null, or the residual row added to x and the (M, H) output of the sum (not aliasing x or res: every
// CTA of a token reads the whole row).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
fq_rmsnorm(const u16* __restrict__ x, const u16* __restrict__ res, const u16* __restrict__ w, u16* __restrict__ sum,
           u16* __restrict__ y, void* __restrict__ packed, float* __restrict__ sx, int M, int H, int R, int NB,
           float eps, int mode) {
    pdl_wait();     // x is the previous kernel's output; packed/sx may still be read by the previous GEMM
    pdl_trigger();  // the GEMM after us may start its weight prefetch (it waits for this grid before reading)
    const int tok = blockIdx.x;  // modes 0 and 2: 0 .. M-1; 1: 0 .. Mp-1; 3: 0 .. Mt*128-1; tokens >= M are padding
    const bool live = tok < M;
    const size_t row = (size_t)(live ? tok : 0) * H;
    const RowIn xr{x + row, res ? res + row : nullptr};
    const float ss = tree_sum_squares(xr, H, R, live);
    const float inv = fdiv_ieee(1.f, fsqrt_ieee(fadd_ieee(fdiv_ieee(ss, (float)H), eps)));
    u16* yr = y + (size_t)tok * H;
    u16* sr = sum ? sum + row : nullptr;  // written only for live tokens (row is theirs)
    auto value = [&](int k) {
        const u16 xk = xr(k);
        if (sr) sr[k] = xk;
        return norm_value(xk, w, k, inv);
    };
    if (mode == 0) {
        for (int k = blockIdx.y * NORM_THREADS + threadIdx.x; k < H; k += gridDim.y * NORM_THREADS) yr[k] = value(k);
        return;
    }
    const int b0 = blockIdx.y * NORM_WARPS + (threadIdx.x >> 5);
    emit_blocks(value, yr, H, live, b0, gridDim.y * NORM_WARPS, NB, mode, packed, sx, tok);
}

// ================================================================ the gated SiLU product before down_proj
// h = 16-bit(16-bit(silu(g)) * u) for gu = [g | u] (M, 2I), as HF's LlamaMLP: act_fn(gate) * up, with PyTorch's
// SiLU kernel's formula g / (1 + exp(-g)) in fp32 (IEEE add and division), rounded to the 16-bit dtype, times u
// (exact in fp32, one rounding). mode 0: h only; 1 / 2 / 3: h and its BTC / INT8 / tiled INT8 pack for down_proj, as
// above.
// Grid (tokens, CTAs per token); NB = the 128-wide blocks of the row (of down_proj's padded K with a pack).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
fq_silu_mul(const u16* __restrict__ gu, u16* __restrict__ h, void* __restrict__ packed, float* __restrict__ sx,
            int M, int I, int NB, int mode) {
    pdl_wait();
    pdl_trigger();
    const int tok = blockIdx.x;
    const bool live = tok < M;
    const u16* g = gu + (size_t)(live ? tok : 0) * 2 * I;
    u16* hr = h + (size_t)tok * I;
    // no reduction across blocks: grid.y CTAs share a token's blocks, so a wide row spreads over the SMs
    emit_blocks([&](int k) { return silu_mul(g, k, I); }, hr, I, live, blockIdx.y * NORM_WARPS + (threadIdx.x >> 5),
                gridDim.y * NORM_WARPS, NB, mode, packed, sx, tok);
}
