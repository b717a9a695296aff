// Rotary position embedding of q and k and the static KV cache write, in one kernel (flexq_cli/rope_kernel.py).
// HF's attention does this as ~10 elementwise launches per layer (q * cos, rotate_half's slice, negation and
// concatenation, * sin, the add, the same for k) plus two index_copy_ launches into the cache; at batch 1 each of
// them is a few microseconds of an otherwise idle GPU, in every layer of every decode step.
//
// Input: qkv (rows, (Hq + 2 Hkv) * D) 16-bit, the fused q/k/v GEMM's output (row r = token t of sequence b,
// r = b * T + t; q heads, then k heads, then v heads, D wide each). cos, sin (rows, D): the model's rotary
// tables for each token (transformers' LlamaRotaryEmbedding, attention scaling included), in the same dtype.
// Output: q (rows, Hq, D) rotated (the caller views it as (B, Hq, T, D)); k rotated and v as they are, written to
// keys / values (B, Hkv, L, D) at position slots[t] (the static cache's slots of this forward, same for every b).
// Numerics: transformers' apply_rotary_pos_emb, op for op, each op rounded to the 16-bit dtype as PyTorch rounds
// it: out = 16(16(x * cos) + 16(rotate_half(x) * sin)), rotate_half(x)[d] = -x[d + D/2] (d < D/2), x[d - D/2]
// (else). The products of two 16-bit values are exact in fp32 and rounded once; the sum is rounded to fp32 and
// then to 16 bits, as PyTorch's half add does; negation is exact and rounding symmetric, so 16(-a * s) is what
// PyTorch computes from the negated copy. So q and the cache hold HF's bits exactly.
// Grid (rows, ceil(W / ROPE_THREADS)): one output element per thread, a row spread over several CTAs.

#ifndef ROPE_BF16
#define ROPE_BF16 0
#endif
#ifndef ROPE_THREADS
#define ROPE_THREADS 256
#endif

#define FQ_BF16 ROPE_BF16
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
fq_rope_cache(const u16* __restrict__ qkv, const u16* __restrict__ cos, const u16* __restrict__ sin,
              const long long* __restrict__ slots, u16* __restrict__ q, u16* __restrict__ keys,
              u16* __restrict__ values, int T, int Hq, int Hkv, int D, int L) {
    pdl_wait();     // qkv is the previous kernel's output
    pdl_trigger();
    const int r = blockIdx.x, b = r / T, t = r - b * T;
    const int W = (Hq + 2 * Hkv) * D;
    const int j = blockIdx.y * ROPE_THREADS + threadIdx.x;
    if (j >= W) return;
    const u16* xr = qkv + (size_t)r * W;
    const int head = j / D, d = j - head * D, half = D / 2;
    u16 out = xr[j];
    if (head < Hq + Hkv) {  // q or k: rotate
        const float c = to_float(cos[(size_t)r * D + d]), s = to_float(sin[(size_t)r * D + d]);
        const float partner = to_float(xr[d < half ? j + half : j - half]);
        const u16 xc = from_float(fmul_ieee(to_float(out), c));
        const u16 rs = from_float(fmul_ieee(d < half ? -partner : partner, s));
        out = from_float(fadd_ieee(to_float(xc), to_float(rs)));
    }
    if (head < Hq) {
        q[(size_t)r * Hq * D + j] = out;
        return;
    }
    const long long slot = slots[t];
    if (slot < 0 || slot >= L) return;  // the caller checks slots on the host (generate.Decoder); never write outside
    const bool is_k = head < Hq + Hkv;
    const int h = head - Hq - (is_k ? 0 : Hkv);
    (is_k ? keys : values)[(((size_t)b * Hkv + h) * L + slot) * D + d] = out;
}
