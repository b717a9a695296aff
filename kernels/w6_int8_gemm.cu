// W6A6 / W6A8 GEMM on INT8 tensor cores for prefill and large batches, plus its activation quantize kernel.
//
// Same numerics as btc_gemm.cu and flexq_cli/reference.py, bit for bit: per 128-wide K block b the exact int32
// dot product acc_b of the activation and weight codes, term_b = (float)acc_b * (sx * sw) (two rounded
// multiplies), chunk sums of I8_CHUNK blocks in block order, the chunk sums in chunk order, + bias, one rounding.
// The packed 6-bit weights are the only copy: each CTA unpacks its tile to int8 in shared memory, one K block
// ahead of the MMAs that read it. Activations (6- or 8-bit codes) are int8 as they are.
//
// Compiled at run time by CuPy RawModule (NVRTC); flexq_cli/int8_kernel.py is the one source of truth for the
// -D options below.
//
// ---- A permuted K order inside every 32-wide K step ---------------------------------------------------------
// mma.m16n8k32.s8 gives thread (g = lane/4, t = lane%4) the K positions 4t..4t+3 (register 0) and 16+4t..16+4t+3
// (register 1) of its B column, four int8 in one 32-bit register. Built from bit planes in the natural order that
// needs a bit gather per byte. Instead both operands use one fixed permutation of the 32 positions of a K step
// (a dot product does not care about the order of its terms, so the integer result is unchanged): logical position
// kk = 16r + 4t + i holds physical k = 2t + r + 8i. Then register (t, r) of weight row n is, for plane j, the
// bits p + 8i (p = 2t + r) of the plane word moved to bit j of byte i: for all eight registers of a step at once,
// an 8 x 8 bit-matrix transpose per byte lane of the six plane words (unpack_weights).
// The activation kernel writes its int8 codes in the same logical order, so A and B are ldmatrix-ed as plain tiles.
//
// ---- Layouts -------------------------------------------------------------------------------------------------
// qweight (N, NB*24) uint32: one 96-byte record per (row, block), plane j (0..5) at bytes 16j..16j+15, bit k%32 of
//   word (k%128)/32, records in groups of 16 rows, block-major (rec_index, common.cuh; flexq_cli/packing.py).
//   Weights are the MMA's B operand (8 rows of N per MMA).
// xq (M, NB*128) int8 activation codes, K permuted as above inside each 32-wide step; sx (M, NB) float32 (the
//   scale of each block's group). Activations are the MMA's A operand (16 tokens per MMA).
// CTA tile: I8_BM tokens x I8_BN weight rows, I8_WM x I8_WN warps, each I8_BM/I8_WM x I8_BN/I8_WN. A cp.async
//   pipeline of I8_STAGES K blocks brings the activation tile, the packed weight records and the block's scales.

#ifndef I8_ACT_BITS
#define I8_ACT_BITS 8
#endif
#ifndef I8_BM
#define I8_BM 128
#endif
#ifndef I8_BN
#define I8_BN 128
#endif
#ifndef I8_WM
#define I8_WM 2
#endif
#ifndef I8_WN
#define I8_WN 4
#endif
#ifndef I8_STAGES
#define I8_STAGES 4
#endif
#ifndef I8_BF16
#define I8_BF16 0
#endif
#ifndef I8_DEBUG_ACC
#define I8_DEBUG_ACC 0
#endif
#ifndef I8_QUANT_WARPS
#define I8_QUANT_WARPS 4
#endif
#ifndef I8_CHUNK
#define I8_CHUNK 2  // primitives.EPILOGUE_CHUNK_BLOCKS (int8_kernel.py always passes it)
#endif
#ifndef I8_WGMMA
#define I8_WGMMA 0  // 1: the Hopper mainloop (wgmma, sm_90a) instead of mma.sync; 2: it warp-specialized (the end)
#endif

#define FQ_BF16 I8_BF16
#include "common.cuh"

#define QMAX ((1 << (I8_ACT_BITS - 1)) - 1)
#define THREADS (32 * I8_WM * I8_WN)
#define WTM (I8_BM / I8_WM)        // warp tile: tokens
#define WTN (I8_BN / I8_WN)        // warp tile: weight rows
#define MTILES (WTM / 16)
#define NTILES (WTN / 8)
#define A_STRIDE (128 + 16)        // bytes per token row of a stage; 16 * odd: conflict-free ldmatrix
#define WP_STRIDE (96 + 16)        // bytes per packed weight record (16 * 7)
#define WU_STRIDE (128 + 16)       // bytes per unpacked int8 weight row
#define STAGE_A 0
#define STAGE_WP (I8_BM * A_STRIDE)
#define STAGE_SX (STAGE_WP + I8_BN * WP_STRIDE)
#define STAGE_SW (STAGE_SX + I8_BM * 4)
#define STAGE_BYTES (STAGE_SW + I8_BN * 4)
#define WU_BYTES (I8_BN * WU_STRIDE)

static_assert(I8_ACT_BITS == 6 || I8_ACT_BITS == 8, "activation bits must be 6 or 8");
#if !I8_WGMMA
static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: a multiple of 16 tokens and of 16 weight rows");
static_assert((I8_BN * 4) % THREADS == 0, "the unpack gives every thread the same number of (row, word) items");
static_assert(I8_STAGES >= 3, "the pipeline keeps one block being unpacked ahead of the one being multiplied");
static_assert(STAGE_BYTES % 16 == 0, "stages must stay 16-byte aligned");
#endif

// ================================================================ activation quantize
// x (M, K) fp16/bf16 -> xq (M, NB*128) int8 codes in the permuted order, sx (M, NB) float32. One warp per
// (token, block) as btc_act_pack: lane l holds physical k = 32e + l of the block, codes from quantize_block.
// whole_row != 0: one scale per token (act_group_size -1); then grid.y must be 1.
// tiled != 0 (the warp-specialized GEMM's layout, one bulk copy per tile and block): xq (Mt, NB, 128, 128), the 128
// tokens of token tile mt and block b as 128-byte rows, 16-byte chunk c of row r at chunk c ^ (r % 8) (wgmma's
// 128-byte swizzle), and sx (Mt, NB, 128); the grid covers Mt * 128 tokens, those past M get codes and scales 0.
extern "C" __global__ void __launch_bounds__(32 * I8_QUANT_WARPS)
i8_act_quant(const u16* __restrict__ x, signed char* __restrict__ xq, float* __restrict__ sx, int M, int K, int NB,
             int whole_row, int tiled) {
    pdl_wait();     // x is the previous kernel's output; xq/sx may still be read by the previous GEMM
    pdl_trigger();
    const int tok = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool live = tok < M;
    const u16* xr = x + (size_t)(live ? tok : 0) * K;
    const float row_scale = whole_row ? cta_row_scale<I8_QUANT_WARPS>(xr, K, live, QMAX) : 0.f;
    for (int b = blockIdx.y * I8_QUANT_WARPS + warp; b < NB; b += gridDim.y * I8_QUANT_WARPS) {
        int q[4];
        const float s = quantize_block(xr, K, live, b, whole_row, row_scale, QMAX, q);
        store_int8_block(xq, sx, q, s, tok, b, NB, lane, tiled);
    }
}

// ================================================================ the GEMM
__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
// 16 bytes, or zeros when `valid` is false (the source is then not read: src-size 0)
__device__ __forceinline__ void cp_async16_zfill(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

struct Args {
    const uint4* qweight;     // 16-byte chunks, 6 per record (rec_index)
    const u16* w_scales;      // (N, ws_cols) float16
    const signed char* xq;    // (M, NB*128)
    const float* sx;          // (M, NB)
    const void* bias;         // (N,) float32 (bias_f32) or the output dtype, or null
    void* y;                  // (M, N) output dtype; debug: (NB, M, N) int32 block accumulators
    int M, N, NB, ws_cols, w_step, bias_f32;
};

// Output columns row, row + 1 of token tok (N % 16 == 0: both exist when row does): + bias, one rounding each, one
// 4-byte store. Both mainloops end here.
__device__ __forceinline__ void store_pair(const Args& a, int tok, int row, float v0, float v1) {
    if (a.bias) {
        v0 = fadd_ieee(v0, bias_at(a.bias, a.bias_f32, row));
        v1 = fadd_ieee(v1, bias_at(a.bias, a.bias_f32, row + 1));
    }
    ((u32*)a.y)[((size_t)tok * a.N + row) >> 1] = (u32)from_float(v0) | ((u32)from_float(v1) << 16);
}

// Packed weight records and weight scales of block b (read-only for every kernel: may run before pdl_wait).
// No L2 cache-policy operand here: with one (createpolicy evict_last) these copies raised illegal-instruction
// errors on the H100 (CUDA 13 driver), and every token tile of a column reads the same weights anyway.
// Rows past N are left alone: their unpacked values are never stored. A weight scale is 2 bytes; it travels in the
// aligned 4-byte word that holds it (cp.async copies 4 bytes at least) and the epilogue picks the half.
__device__ __forceinline__ void load_weights(const Args& a, char* st, int n0, int b) {
    for (int c = threadIdx.x; c < I8_BN * 6; c += THREADS) {
        const int row = c / 6, w = c % 6;
        if (n0 + row < a.N)
            cp_async16(smem_addr(st + STAGE_WP + row * WP_STRIDE + w * 16),
                       a.qweight + rec_index(n0 + row, b, a.NB) * 6 + w);
    }
    for (int row = threadIdx.x; row < I8_BN; row += THREADS)
        if (n0 + row < a.N) {
            const size_t e = (size_t)(n0 + row) * a.ws_cols + (size_t)b * a.w_step;
            cp_async4(smem_addr(st + STAGE_SW + row * 4), a.w_scales + (e & ~(size_t)1));
        }
}
// Activation codes and scales of block b; tokens past M are zeros (no output is stored for them).
__device__ __forceinline__ void load_acts(const Args& a, char* st, int m0, int b) {
    for (int c = threadIdx.x; c < I8_BM * 8; c += THREADS) {
        const int tok = c / 8, w = c % 8;
        const bool live = m0 + tok < a.M;
        cp_async16_zfill(smem_addr(st + STAGE_A + tok * A_STRIDE + w * 16),
                         a.xq + ((size_t)(live ? m0 + tok : 0) * a.NB + b) * 128 + w * 16, live);
    }
    for (int tok = threadIdx.x; tok < I8_BM; tok += THREADS)
        if (m0 + tok < a.M) cp_async4(smem_addr(st + STAGE_SX + tok * 4), a.sx + (size_t)(m0 + tok) * a.NB + b);
}

// One stage's packed records -> int8 weight rows in logical K order (see the top of the file): item (row, word w)
// gets its six plane words transposed by unpack_planes (common.cuh), after which word p holds in byte i the code of
// k = p + 8i: register (t, r) with p = 2t + r, stored at logical bytes 16r + 4t .. +3 of the step.
__device__ __forceinline__ void unpack_step(const u32* rec, u32 (&r)[8]) {
#pragma unroll
    for (int j = 0; j < 6; ++j) r[j] = rec[4 * j];
    unpack_planes(r);
}

#if !I8_WGMMA
__device__ __forceinline__ void unpack_weights(const char* st, char* wu) {
#pragma unroll
    for (int it = 0; it < I8_BN * 4 / THREADS; ++it) {
        const int item = threadIdx.x + it * THREADS, row = item >> 2, w = item & 3;
        u32 r[8];
        unpack_step((const u32*)(st + STAGE_WP + row * WP_STRIDE) + w, r);
        uint4* dst = (uint4*)(wu + row * WU_STRIDE + w * 32);
        dst[0] = make_uint4(r[0], r[2], r[4], r[6]);  // r = 0: t = 0..3
        dst[1] = make_uint4(r[1], r[3], r[5], r[7]);  // r = 1
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
i8_gemm(const uint4* qweight, const u16* w_scales, const signed char* xq, const float* sx, const void* bias, void* y,
        int M, int N, int NB, int ws_cols, int w_step, int bias_f32) {
    const Args a{qweight, w_scales, xq, sx, bias, y, M, N, NB, ws_cols, w_step, bias_f32};
    extern __shared__ __align__(128) char smem[];
    char* wu_buf = smem + I8_STAGES * STAGE_BYTES;  // two unpacked weight tiles: block b and block b + 1
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = warp / I8_WN, wn = warp % I8_WN;
    const int m0 = blockIdx.y * I8_BM, n0 = blockIdx.x * I8_BN;

    // Prologue: stage s holds block s. Weights go out before pdl_wait() (they overlap the quantize kernel).
#pragma unroll
    for (int s = 0; s < I8_STAGES - 1; ++s)
        if (s < a.NB) load_weights(a, smem + s * STAGE_BYTES, n0, s);
    pdl_wait();
#pragma unroll
    for (int s = 0; s < I8_STAGES - 1; ++s) {
        if (s < a.NB) load_acts(a, smem + s * STAGE_BYTES, m0, s);
        cp_async_commit();
    }
    cp_async_wait<I8_STAGES - 2>();
    __syncthreads();
    unpack_weights(smem, wu_buf);

    // ldmatrix lane addresses. A (16 tokens x 32 K): lane l feeds token (l & 7) + 8 * ((l >> 3) & 1), K half l >> 4.
    // B (two 8-row n tiles x 32 K): lane l feeds row (l & 7) + 8 * (l >> 4), K half (l >> 3) & 1.
    const u32 a_off = (wm * WTM + (lane & 7) + 8 * ((lane >> 3) & 1)) * A_STRIDE + (lane >> 4) * 16;
    const u32 b_off = (wn * WTN + (lane & 7) + 8 * (lane >> 4)) * WU_STRIDE + ((lane >> 3) & 1) * 16;
#if !I8_DEBUG_ACC
    // A weight scale sits in the high half of its 4-byte word when row * ws_cols + b * w_step is odd: the row part of
    // that parity, for this thread's rows 8j + 2t + e, as bit 2j + e (the block part is added per block).
    u32 wpar = 0;
#pragma unroll
    for (int j = 0; j < NTILES; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) wpar |= (u32)(((n0 + wn * WTN + 8 * j + 2 * t + e) * a.ws_cols) & 1) << (2 * j + e);
#endif

    int acc[MTILES][NTILES][4];
#if !I8_DEBUG_ACC
    // Running output y (chunks added in order, from -0: the identity of IEEE addition) and the open chunk's sum,
    // which its first block sets (no add: the chunk sum begins with its first term, as reference.scaled_sum).
    float csum[MTILES][NTILES][4], yacc[MTILES][NTILES][4];
#pragma unroll
    for (int i = 0; i < MTILES; ++i)
#pragma unroll
        for (int j = 0; j < NTILES; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) yacc[i][j][r] = -0.f;
#endif

    // Blocks in chunks of I8_CHUNK: unrolled by chunk, so whether a block opens its chunk is known at compile time.
    for (int c0 = 0; c0 < a.NB; c0 += I8_CHUNK) {
#pragma unroll
        for (int kb = 0; kb < I8_CHUNK; ++kb) {
            const int b = c0 + kb;
            if (b >= a.NB) break;
            cp_async_wait<I8_STAGES - 3>();  // this thread's copies of block b + 1 have landed
            __syncthreads();                 // everybody's; block b - 1's stage and unpacked tile are free
            {
                const int nx = b + I8_STAGES - 1;
                char* st = smem + (nx % I8_STAGES) * STAGE_BYTES;
                if (nx < a.NB) {
                    load_weights(a, st, n0, nx);
                    load_acts(a, st, m0, nx);
                }
                cp_async_commit();
            }
            if (b + 1 < a.NB)
                unpack_weights(smem + ((b + 1) % I8_STAGES) * STAGE_BYTES, wu_buf + ((b + 1) & 1) * WU_BYTES);

            const char* st = smem + (b % I8_STAGES) * STAGE_BYTES;
            const u32 sa = smem_addr(st) + a_off, sb = smem_addr(wu_buf + (b & 1) * WU_BYTES) + b_off;
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                u32 af[MTILES][4], bf[NTILES][2];
#pragma unroll
                for (int i = 0; i < MTILES; ++i)
                    ldmatrix_x4(sa + i * 16 * A_STRIDE + ks * 32, af[i][0], af[i][1], af[i][2], af[i][3]);
#pragma unroll
                for (int j = 0; j < NTILES; j += 2)
                    ldmatrix_x4(sb + j * 8 * WU_STRIDE + ks * 32, bf[j][0], bf[j][1], bf[j + 1][0], bf[j + 1][1]);
#pragma unroll
                for (int i = 0; i < MTILES; ++i)
#pragma unroll
                    for (int j = 0; j < NTILES; ++j) {
                        if (ks == 0) imma_first(acc[i][j], af[i], bf[j][0], bf[j][1]);
                        else imma(acc[i][j], af[i], bf[j][0], bf[j][1]);
                    }
            }
            // Block b's epilogue. C fragment r: token g (r < 2) or g + 8, weight row 2t + (r & 1).
#if I8_DEBUG_ACC
#pragma unroll
            for (int i = 0; i < MTILES; ++i)
#pragma unroll
                for (int j = 0; j < NTILES; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const int tok = m0 + wm * WTM + 16 * i + g + 8 * (r >> 1);
                        const int row = n0 + wn * WTN + 8 * j + 2 * t + (r & 1);
                        if (tok < a.M && row < a.N)
                            ((int*)a.y)[((size_t)b * a.M + tok) * a.N + row] = acc[i][j][r] - MAGIC;
                    }
#else
            const float* sxs = (const float*)(st + STAGE_SX) + wm * WTM + g;
            const u32* sws = (const u32*)(st + STAGE_SW) + wn * WTN + 2 * t;
            const int bpar = (b * a.w_step) & 1;  // with the row's parity: which half of the 4-byte word
            float swv[NTILES][2];
#pragma unroll
            for (int j = 0; j < NTILES; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const u32 word = sws[8 * j + e];
                    swv[j][e] = half_to_float((u16)(((wpar >> (2 * j + e)) & 1) != bpar ? word >> 16 : word));
                }
#pragma unroll
            for (int i = 0; i < MTILES; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float sxv = sxs[16 * i + 8 * h];
#pragma unroll
                    for (int j = 0; j < NTILES; ++j)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int r = 2 * h + e;
                            chunk_add_term(csum[i][j][r], acc[i][j][r], sxv, swv[j][e], kb);
                        }
                }
#endif
        }
#if !I8_DEBUG_ACC
#pragma unroll
        for (int i = 0; i < MTILES; ++i)  // the chunk is complete (or K ended): add it to y, in chunk order
#pragma unroll
            for (int j = 0; j < NTILES; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) yacc[i][j][r] = fadd_ieee(yacc[i][j][r], csum[i][j][r]);
#endif
    }
    cp_async_wait<0>();
    pdl_trigger();  // the next kernel may be scheduled during the stores

#if !I8_DEBUG_ACC
#pragma unroll
    for (int i = 0; i < MTILES; ++i)
#pragma unroll
        for (int j = 0; j < NTILES; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int tok = m0 + wm * WTM + 16 * i + g + 8 * h, row = n0 + wn * WTN + 8 * j + 2 * t;
                if (tok < a.M && row < a.N) store_pair(a, tok, row, yacc[i][j][2 * h], yacc[i][j][2 * h + 1]);
            }
#endif
}
#else  // I8_WGMMA
// ================================================================ the GEMM on Hopper's warpgroup MMA (sm_90a)
// Opt-in (int8_kernel.WGMMA_TILE): exact, but on the H100 no faster than the mma.sync loop above (0.97-1.01x at
// M = 512..4096, docs/kernel.md): both are latency-bound at 8 warps per SM, the epilogue and unpack being the same.
// Same numerics, same packed records, same activation codes; the MMAs are wgmma.m64n128k32.s8, asynchronous, with
// both operands read from shared memory by the tensor cores, and the next block's unpack runs while they do.
// CTA: I8_BM / 64 warpgroups, each 64 tokens x 128 weight rows (its block accumulator, chunk sum and running
// output are 64 registers each). Operands are K-major in the 128-byte swizzle: a 128-K block is one 128-byte row per
// token / weight row, 8-row groups of 1024 bytes, 16-byte chunk c of row r stored at chunk c ^ (r % 8) (the
// pattern the wgmma descriptor's swizzle mode 1 reads; a k32 step is the descriptor's start address + 32 bytes).
// Per block b: wgmma(b) issued -> wait for block b + 1's copies -> unpack it -> proxy fence -> refill a stage ->
// wait for wgmma(b) -> epilogue of b.
#define WGS (I8_BM / 64)
#define WTHREADS (128 * WGS)
#define W_STAGE_A 0                                   // I8_BM token rows of 128 B, swizzled
#define W_STAGE_WP (I8_BM * 128)                      // I8_BN packed records, WP_STRIDE apart
#define W_STAGE_SX (W_STAGE_WP + I8_BN * WP_STRIDE)   // I8_BM float activation scales
#define W_STAGE_SW (W_STAGE_SX + I8_BM * 4)           // I8_BN 4-byte words holding the fp16 weight scales
#define W_STAGE_BYTES ((W_STAGE_SW + I8_BN * 4 + 1023) / 1024 * 1024)
#define W_WU_BYTES (I8_BN * 128)                      // one unpacked int8 weight tile, swizzled
#define W_SWF (2 * W_WU_BYTES)                        // two rows of I8_BN float weight scales (blocks b, b + 1)
#define W_HEAD ((W_SWF + 2 * I8_BN * 4 + 1023) / 1024 * 1024)

static_assert(I8_BM % 64 == 0 && WGS >= 1 && WGS <= 2, "wgmma: one or two warpgroups of 64 tokens");
static_assert(I8_BN == 128 || I8_WGMMA == 2, "wgmma: the instruction, the epilogue and the register budget are for "
              "128 rows");  // the warp-specialized kernel: 64 rows per consumer warpgroup, W_ROWS below
static_assert((I8_BN * 4) % WTHREADS == 0 && I8_STAGES >= 3, "wgmma tile");
static_assert(I8_WGMMA == 1 || (I8_BM == 128 && I8_STAGES >= 3 && I8_STAGES <= 6), "warp-specialized: 3-6 stages");

__device__ __forceinline__ unsigned long long wg_desc(u32 saddr) {
    // start address >> 4 (bits 0-13), leading offset 1 (unused by a swizzled K-major operand), stride offset
    // 1024 B >> 4 between 8-row groups (bits 32-45), swizzle mode 1 = 128 B (bits 62-63)
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Generic-proxy writes to shared memory (cp.async landings, the unpack's stores) made visible to the async proxy
// that wgmma reads through; each thread fences its own writes before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The 64 accumulator registers of an m64n128 wgmma: the PTX operand list %0..%63 and the asm operands d[0..63] with
// constraint c ("+r": read and written, "=r": written only). Both wrappers below use them.
#define WG_D64_PTX \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_D64_OPERANDS(c) \
    c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), \
    c(d[8]), c(d[9]), c(d[10]), c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15]), \
    c(d[16]), c(d[17]), c(d[18]), c(d[19]), c(d[20]), c(d[21]), c(d[22]), c(d[23]), \
    c(d[24]), c(d[25]), c(d[26]), c(d[27]), c(d[28]), c(d[29]), c(d[30]), c(d[31]), \
    c(d[32]), c(d[33]), c(d[34]), c(d[35]), c(d[36]), c(d[37]), c(d[38]), c(d[39]), \
    c(d[40]), c(d[41]), c(d[42]), c(d[43]), c(d[44]), c(d[45]), c(d[46]), c(d[47]), \
    c(d[48]), c(d[49]), c(d[50]), c(d[51]), c(d[52]), c(d[53]), c(d[54]), c(d[55]), \
    c(d[56]), c(d[57]), c(d[58]), c(d[59]), c(d[60]), c(d[61]), c(d[62]), c(d[63])

// d (+)= A(64 x 32 s8) . B(128 x 32 s8)^T; scale_d == 0 starts from zero (a block's first k32 step).
__device__ __forceinline__ void wgmma_m64n128k32(int (&d)[64], unsigned long long desc_a, unsigned long long desc_b,
                                                 int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
        WG_D64_PTX
        "}, %64, %65, p;\n}\n"
        : WG_D64_OPERANDS("+r")
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// This thread's share of every stage's copies, fixed for the whole K loop: its addresses are worked out once, and a
// block only adds b * (record or row stride). (Strided loops like load_weights' took ~700 SASS instructions per
// refill here, these ~75, static counts; the kernel got 9% slower, not faster: it is latency-bound, docs/kernel.md.)
// Weights: WTHREADS / I8_BN threads per row, 6 / that many 16-byte chunks each; activations: two threads per
// token, four chunks each; weight scales: threads 0 .. I8_BN - 1; activation scales: the last I8_BM threads.
#define W_TPR (WTHREADS / I8_BN)
#define W_CPT (6 / W_TPR)
static_assert(I8_WGMMA == 2 || (WTHREADS == 2 * I8_BM && (W_TPR == 1 || W_TPR == 2)), "wgmma copy plan");
struct WgCopies {
    const uint4* w;          // the thread's first weight chunk of block 0 (a row's records are 16 * 6 chunks apart)
    const signed char* x;    // its first activation chunk of block 0 (blocks are 128 bytes apart)
    const u16* ws;           // weight scale row, or null
    const float* sx;         // activation scale row, or null
    u32 w_dst, x_dst;        // stage offsets of the first chunks
    int x_sw;                // the token's swizzle (tok % 8) and first chunk
    bool w_live;
};
__device__ __forceinline__ WgCopies wg_copies(const Args& a, int m0, int n0) {
    WgCopies c;
    const int tid = threadIdx.x, row = tid / W_TPR, first = (tid % W_TPR) * W_CPT;
    c.w_live = n0 + row < a.N;
    c.w = a.qweight + rec_index(c.w_live ? n0 + row : 0, 0, a.NB) * 6 + first;
    c.w_dst = W_STAGE_WP + row * WP_STRIDE + first * 16;
    const int tok = tid >> 1, live = m0 + tok < a.M;
    c.x = a.xq + (size_t)(live ? m0 + tok : 0) * a.NB * 128 + (tid & 1) * 64;
    c.x_dst = W_STAGE_A + tok * 128;
    c.x_sw = (tok & 7) | (live ? 0 : 8) | ((tid & 1) << 4);
    c.ws = tid < I8_BN && n0 + tid < a.N ? a.w_scales + (size_t)(n0 + tid) * a.ws_cols : nullptr;
    const int stok = tid - (WTHREADS - I8_BM);
    c.sx = stok >= 0 && m0 + stok < a.M ? a.sx + (size_t)(m0 + stok) * a.NB : nullptr;
    return c;
}
__device__ __forceinline__ void wg_load_weights(const Args& a, const WgCopies& c, u32 st, int b) {
    if (c.w_live) {
#pragma unroll
        for (int i = 0; i < W_CPT; ++i) cp_async16(st + c.w_dst + i * 16, c.w + (size_t)b * REC_GROUP * 6 + i);
    }
    if (c.ws) {
        const size_t e = (size_t)b * a.w_step;  // the row's start parity is folded in by wg_unpack
        cp_async4(st + W_STAGE_SW + threadIdx.x * 4, (const u16*)((size_t)(c.ws + e) & ~(size_t)3));
    }
}
__device__ __forceinline__ void wg_load_acts(const WgCopies& c, u32 st, int b) {
    const bool live = !(c.x_sw & 8);
    const int half = (c.x_sw >> 4) * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i)
        cp_async16_zfill(st + c.x_dst + (((half + i) ^ (c.x_sw & 7)) << 4), c.x + (size_t)b * 128 + i * 16, live);
    if (c.sx) cp_async4(st + W_STAGE_SX + (threadIdx.x - (WTHREADS - I8_BM)) * 4, c.sx + b);
}
// One unpacked step of a weight row (unpack_step's registers for 32-K word w) into the row's 128 bytes of a swizzled
// tile: logical 16-byte chunk c at chunk c ^ (row % 8) (wg_desc's 128-byte swizzle).
__device__ __forceinline__ void store_swizzled_step(char* dst_row, int row, int w, const u32 (&r)[8]) {
    *(uint4*)(dst_row + (((2 * w) ^ (row & 7)) << 4)) = make_uint4(r[0], r[2], r[4], r[6]);
    *(uint4*)(dst_row + (((2 * w + 1) ^ (row & 7)) << 4)) = make_uint4(r[1], r[3], r[5], r[7]);
}
// The fp16 weight scale of (row, block b), from the aligned 4-byte word the copies brought, as float.
__device__ __forceinline__ float weight_scale_of(const Args& a, u32 word, int row, int b) {
    const size_t e = (size_t)row * a.ws_cols + (size_t)b * a.w_step;  // which half of the word
    return half_to_float((u16)((e & 1) ? word >> 16 : word));
}

// A warpgroup's m64n128 fragment, 64 registers per thread: register i holds token 16 wq + g + 8 ((i >> 1) & 1) of the
// warpgroup's 64 tokens (from tok0) and row 8 (i >> 2) + 2t + (i & 1) of its 128 rows (from n0); wq is the warp in
// the warpgroup, g and t the lane's quad and place in it. i8_gemm_wgmma stores its tiles through these; in the
// warp-specialized kernel (weights as operand A) the fragment's 64 are weight rows and its 128 tokens: TRANSPOSED,
// tok0 is then the warpgroup's first weight row and n0 its first token (its outputs go through ws_store).
template <bool TRANSPOSED = false>
__device__ __forceinline__ void wg_store_acc(const Args& a, const int (&acc)[64], int tok0, int n0, int b) {
    const int lane = threadIdx.x & 31, wq = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 64; ++i) {  // debug: block b's int32 accumulators
        const int m = tok0 + 16 * wq + g + 8 * ((i >> 1) & 1), n = n0 + 8 * (i >> 2) + 2 * t + (i & 1);
        const int tok = TRANSPOSED ? n : m, row = TRANSPOSED ? m : n;
        if (tok < a.M && row < a.N) ((int*)a.y)[((size_t)b * a.M + tok) * a.N + row] = acc[i];
    }
}
__device__ __forceinline__ void wg_store_out(const Args& a, const float (&yacc)[64], int tok0, int n0) {
    const int lane = threadIdx.x & 31, wq = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 64; i += 2) {
        const int tok = tok0 + 16 * wq + g + 8 * ((i >> 1) & 1), row = n0 + 8 * (i >> 2) + 2 * t;
        if (tok < a.M && row < a.N) store_pair(a, tok, row, yacc[i], yacc[i + 1]);
    }
}

// Block b's packed records -> the swizzled int8 tile (same transpose as unpack_weights), and its weight scales as
// floats (the epilogue then reads two rows' scales with one 8-byte load). Rows past N hold stale bits: never stored.
__device__ __forceinline__ void wg_unpack(const Args& a, const char* st, char* wu, float* swf, int n0, int b) {
#pragma unroll
    for (int it = 0; it < I8_BN * 4 / WTHREADS; ++it) {
        const int item = threadIdx.x + it * WTHREADS, row = item >> 2, w = item & 3;
        u32 r[8];
        unpack_step((const u32*)(st + W_STAGE_WP + row * WP_STRIDE) + w, r);
        store_swizzled_step(wu + row * 128, row, w, r);
    }
    for (int row = threadIdx.x; row < I8_BN; row += WTHREADS)
        swf[row] = weight_scale_of(a, *(const u32*)(st + W_STAGE_SW + row * 4), n0 + row, b);
}

#if I8_WGMMA == 1
extern "C" __global__ void __launch_bounds__(WTHREADS, 1)
i8_gemm_wgmma(const uint4* qweight, const u16* w_scales, const signed char* xq, const float* sx, const void* bias,
              void* y, int M, int N, int NB, int ws_cols, int w_step, int bias_f32) {
    const Args a{qweight, w_scales, xq, sx, bias, y, M, N, NB, ws_cols, w_step, bias_f32};
    extern __shared__ __align__(1024) char smem_raw[];
    char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzle atoms need 1024 alignment
    char* wu_buf = smem;
    float* swf_buf = (float*)(smem + W_SWF);
    char* stages = smem + W_HEAD;
    const int wg = threadIdx.x >> 7;
#if !I8_DEBUG_ACC
    const int lane = threadIdx.x & 31, wq = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;  // the epilogue's
#endif
    const int m0 = blockIdx.y * I8_BM, n0 = blockIdx.x * I8_BN;

    const WgCopies cp = wg_copies(a, m0, n0);
    const u32 stages_addr = smem_addr(stages);
#pragma unroll
    for (int s = 0; s < I8_STAGES - 1; ++s)
        if (s < a.NB) wg_load_weights(a, cp, stages_addr + s * W_STAGE_BYTES, s);
    pdl_wait();
#pragma unroll
    for (int s = 0; s < I8_STAGES - 1; ++s) {
        if (s < a.NB) wg_load_acts(cp, stages_addr + s * W_STAGE_BYTES, s);
        cp_async_commit();
    }
    cp_async_wait<I8_STAGES - 2>();
    __syncthreads();
    wg_unpack(a, stages, wu_buf, swf_buf, n0, 0);
    fence_proxy_async();
    __syncthreads();

    int acc[64];  // fragment i: token 16 wq + g + 8 ((i >> 1) & 1) of the warpgroup, row 8 (i >> 2) + 2t + (i & 1)
#if !I8_DEBUG_ACC
    float csum[64], yacc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) yacc[i] = -0.f;
#endif
    const u32 a_base = stages_addr + W_STAGE_A + wg * 64 * 128, b_base = smem_addr(wu_buf);

    for (int c0 = 0; c0 < a.NB; c0 += I8_CHUNK) {
#pragma unroll
        for (int kb = 0; kb < I8_CHUNK; ++kb) {
            const int b = c0 + kb;
            if (b >= a.NB) break;
            const u32 sa = a_base + (b % I8_STAGES) * W_STAGE_BYTES, sb = b_base + (b & 1) * W_WU_BYTES;
            wgmma_fence();  // the epilogue's reads of acc come before these MMAs overwrite it
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) wgmma_m64n128k32(acc, wg_desc(sa + 32 * ks), wg_desc(sb + 32 * ks), ks);
            wgmma_commit();
            cp_async_wait<I8_STAGES - 3>();  // this thread's copies of block b + 1 have landed
            __syncthreads();                 // everybody's
            if (b + 1 < a.NB)  // into the tile wgmma(b - 1) read, complete since the last iteration's wait
                wg_unpack(a, stages + ((b + 1) % I8_STAGES) * W_STAGE_BYTES, wu_buf + ((b + 1) & 1) * W_WU_BYTES,
                          swf_buf + ((b + 1) & 1) * I8_BN, n0, b + 1);
            // The proxy fence is MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC in SASS and stalls (Nsight Compute): the refill
            // goes out after it, not before (5-7% faster on the H100, 4096^3 and 28672 x 8192 x 4096, two runs).
            fence_proxy_async();
            {
                const int nx = b + I8_STAGES - 1;  // its stage held block b - 1: free since the last barrier
                const u32 st = stages_addr + (nx % I8_STAGES) * W_STAGE_BYTES;
                if (nx < a.NB) {
                    wg_load_weights(a, cp, st, nx);
                    wg_load_acts(cp, st, nx);
                }
                cp_async_commit();
            }
            wgmma_wait0();
#if I8_DEBUG_ACC
            wg_store_acc(a, acc, m0 + wg * 64, n0, b);
#else
            const float* sxs =
                (const float*)(stages + (b % I8_STAGES) * W_STAGE_BYTES + W_STAGE_SX) + wg * 64 + 16 * wq + g;
            const float sxv[2] = {sxs[0], sxs[8]};
            const float2* swp = (const float2*)(swf_buf + (b & 1) * I8_BN + 2 * t);
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                const float2 sw = swp[4 * j];  // rows 8j + 2t and 8j + 2t + 1
#pragma unroll
                for (int i = 4 * j; i < 4 * j + 4; ++i)  // wgmma started from 0: the bias is added here
                    chunk_add_term(csum[i], acc[i] + MAGIC, sxv[(i >> 1) & 1], (i & 1) ? sw.y : sw.x, kb);
            }
#endif
            __syncthreads();  // unpack(b + 1) and the copies of b + 1 published; stage b and its scales free
        }
#if !I8_DEBUG_ACC
#pragma unroll
        for (int i = 0; i < 64; ++i) yacc[i] = fadd_ieee(yacc[i], csum[i]);  // the chunk, in chunk order
#endif
    }
    cp_async_wait<0>();
    pdl_trigger();

#if !I8_DEBUG_ACC
    wg_store_out(a, yacc, m0 + wg * 64, n0);
#endif
}
#endif  // I8_WGMMA == 1

#if I8_WGMMA == 2
// ================================================================ the warp-specialized wgmma GEMM (sm_90a)
// int8_kernel.WS_TILE, the default from 65 tokens on Hopper: exact; on the H100 1.3-1.4x the previous warp-specialized
// kernel (which unpacked into shared memory) and about 1.8-2.1x the mma.sync loop (docs/kernel.md).
// The weights are wgmma's operand A, from registers: each consumer thread unpacks its own two weight rows' records
// (unpack_planes as in the register-fed decode kernel, but its select form) straight into A fragments, so no
// unpacked tile goes through shared memory and no warp waits for another's unpack. The activations are operand B
// (128 tokens x 128 K, the tiled layout's swizzled rows, one bulk copy); the tiled layout orders K to match the
// fragments (common.cuh, tiled_act_byte). The CTA: W_ROWS (I8_BN: 128, or 64 where 128-row tiles leave SMs idle)
// weight rows x 128 tokens, a producer warpgroup and one consumer warpgroup per 64 rows, mbarriers only:
// - warpgroup 0: warps 0-2 copy (warp 3 only gives its registers back). For block q each waits until stage
//   q % I8_STAGES is released (`empty`); then warp 0 bulk-copies the block's activation codes and scales, warp 1 the
//   packed records of the tile's rows (lane g the 16-row group g, 1536 contiguous bytes), warp 2 cp.asyncs the
//   words holding the W_ROWS weight scales, all completing on the stage's `full`; the scales go to a ring of twice as
//   many slots (W_SCALES says why).
// - warpgroups 1 (and 2), the consumers (W_CONSUMER_REGS registers), 64 weight rows x 128 tokens each: per chunk of two
//   blocks, block c0's rows unpacked and its four wgmma issued, then block c0 + 1's (its unpack overlapping the first
//   block's MMAs), then each block's epilogue as its MMAs complete (the first overlapping the second's MMAs), each
//   stage released by one arrival per consumer warp after its epilogue. A finished tile goes out through the
//   consumer warps' shared-memory buffers (ws_store).
// Persistent: grid = min(tiles, SMs); a CTA takes tiles blockIdx.x, + gridDim.x, ..., token tiles fastest (the CTAs
// in flight share weight tiles and read the activations from L2). The stage ring runs on across tiles.
// Same numerics and records as the kernels above (the accumulator starts from 0; its exact conversion to float is
// the int-to-float of a |value| < 2^24). With I8_DEBUG_ACC the block accumulators are stored instead.
#define W_ROWS I8_BN                  // weight rows per tile: 128 or 64
#define W_ROWS_SHIFT (W_ROWS == 128 ? 7 : 6)
#define W_CWG (W_ROWS / 64)           // consumer warpgroups
static_assert(W_ROWS == 128 || W_ROWS == 64, "ws: 64 or 128 weight rows per tile");
#define W_A 0                         // 128 token rows of 128 B, swizzled: the tiled activation codes
#define W_R (128 * 128)               // the tile's packed records (groups of 16 rows, 1536 B each, as in qweight)
#define W_STAGE (W_R + W_ROWS * 96)   // 28 KB (22 KB): stage s at s * W_STAGE keeps the swizzle atoms' 1024 alignment
// The blocks' scales in a ring of 2 * I8_STAGES slots after the stages (block q: slot q % (2 * I8_STAGES)), each
// slot the 128 float activation scales (W_SX) and the W_ROWS 4-byte words holding the rows' fp16 weight scales (W_SW).
// Twice as many slots as stages: the copy warps refill block q's slot only once every consumer warp has released
// block q + I8_STAGES, a later pass of the chunk loop, by which time the warp has used every scale it loaded for
// block q. The mbarrier arrival alone does not wait for the warp's outstanding shared-memory loads: with the
// scales in the stage, a load issued before a stage's release could still be pending when the copy engine refilled
// the stage, and it then read the next block's scales (a race seen on the H100, docs/kernel.md).
#define W_SCALES (I8_STAGES * W_STAGE)
#define W_SX 0
#define W_SW (128 * 4)
#define W_SLOT (128 * 4 + W_ROWS * 4)
// Block q's stage is q % I8_STAGES; its barrier phase parity, the pass of the stage ring it is in:
__device__ __forceinline__ int ws_parity(int q) { return (q / I8_STAGES) & 1; }
// Block q's slot: q % (2 * I8_STAGES), written as its stage and parity (the values the barrier waits use).
__device__ __forceinline__ u32 ws_slot(int q) { return q % I8_STAGES + I8_STAGES * ws_parity(q); }
#define W_OUT (W_SCALES + 2 * I8_STAGES * W_SLOT)  // each consumer warp's finished outputs, 128 tokens x 16 rows
#define W_BARS (W_OUT + (W_ROWS / 16) * 128 * 32)  // full[I8_STAGES], empty[I8_STAGES]
#define W_THREADS (128 * (1 + W_CWG))
#define W_PRODUCER_REGS 24            // setmaxnreg's least; the copy warps need few
#define W_CONSUMER_REGS 240
// The registers per thread a launch of W_THREADS can get (a multiple of 8, at most 255): 168 for 384 threads, 248
// for 256 (ptxas gave the 64-row build 240). setmaxnreg moves registers between the warpgroups within that pool.
#define W_LAUNCH_REGS ((65536 / W_THREADS < 255 ? 65536 / W_THREADS : 255) / 8 * 8)
static_assert(128 * W_PRODUCER_REGS + 128 * W_CWG * W_CONSUMER_REGS <= W_THREADS * W_LAUNCH_REGS, "ws register plan");
#ifdef I8_WS_SMEM  // int8_kernel.Int8Config.smem_bytes: what the launch allocates
static_assert(I8_WS_SMEM == 1024 + W_BARS + 2 * I8_STAGES * 8, "int8_kernel.py's smem plan differs");
#endif
static_assert(I8_CHUNK == 2, "ws: the consumers pair a chunk's blocks");

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Returns once the barrier's phase of this parity has completed (a fresh barrier: parity 1 at once).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred p;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// One arrival that also expects `bytes` more of bulk-copy transactions before the phase can complete.
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// A bulk copy (the copy engine; 16-byte aligned, a multiple of 16 bytes) that completes its bytes on `bar`.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

__device__ __forceinline__ void cp_async_mbar_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// d = A . B^T for one k32 step: A (64 weight rows x 32 K, s8) from registers a0..a3 (the m16n8k32 fragment of each
// warp's 16 rows: rows g, g + 8 at K slots 4t.., then 16 + 4t..), B (128 tokens x 32 K) from shared memory;
// scale_d == 0 starts from zero (a block's first step).
__device__ __forceinline__ void wgmma_ra(int (&d)[64], u32 a0, u32 a1, u32 a2, u32 a3, unsigned long long desc_b,
                                         int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
        WG_D64_PTX
        "}, {%64, %65, %66, %67}, %68, p;\n}\n"
        : WG_D64_OPERANDS("+r")
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "r"(scale_d));
}
// Weight rows r0 and r0 + 8 of a stage's records: word t of planes 0..5 (physical k = 32t .. 32t + 31), unpacked so
// that byte i of ra[p] is the code of k = 32t + p + 8i. K step s then takes ra[2s] and ra[2s + 1] (k = 32t + 2s +
// 8i and + 1): its MMA slots 4t + i and 16 + 4t + i, which the tiled activations hold at the same K bytes. The
// block's four k32 steps are issued into d (registers ra, rb stay untouched until they complete).
__device__ __forceinline__ void ws_block(int (&d)[64], u32 (&ra)[8], u32 (&rb)[8], const char* st, u32 st_addr,
                                         int r0, int t) {
    const u32* p0 = (const u32*)(st + W_R + r0 * 96) + t;
    const u32* p1 = (const u32*)(st + W_R + (r0 + 8) * 96) + t;
#pragma unroll
    for (int j = 0; j < 6; ++j) {
        ra[j] = p0[4 * j];
        rb[j] = p1[4 * j];
    }
    unpack_planes<true>(ra);
    unpack_planes<true>(rb);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s)
        wgmma_ra(d, ra[2 * s], rb[2 * s], ra[2 * s + 1], rb[2 * s + 1], wg_desc(st_addr + W_A + 32 * s), s);
    wgmma_commit();
}
// One block's epilogue for a consumer thread. Accumulator i: weight row r0 + 8 ((i >> 1) & 1) of the tile, token
// 8 (i >> 2) + 2t + (i & 1). Into the chunk sum (chunk_add, the canonical order), or, debug, stored as they are.
__device__ __forceinline__ void ws_epilogue(const Args& a, const int (&acc)[64], float (&csum)[64], const char* sc,
                                            int r0, int m0, int n0, int b, int kb) {
#if I8_DEBUG_ACC
    wg_store_acc<true>(a, acc, n0 + 64 * ((threadIdx.x >> 7) - 1), m0, b);  // the consumer warpgroup's 64 rows
#else
    const int t = threadIdx.x & 3;
    const float sw0 = weight_scale_of(a, *(const u32*)(sc + W_SW + r0 * 4), n0 + r0, b);
    const float sw1 = weight_scale_of(a, *(const u32*)(sc + W_SW + (r0 + 8) * 4), n0 + r0 + 8, b);
    const float2* sxp = (const float2*)(sc + W_SX) + t;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const float2 sx = sxp[4 * j];  // tokens 8j + 2t, 8j + 2t + 1
#pragma unroll
        for (int i = 4 * j; i < 4 * j + 4; ++i)  // (float)acc is exact: |acc| < 2^24
            chunk_add(csum[i], (float)acc[i], (i & 1) ? sx.y : sx.x, ((i >> 1) & 1) ? sw1 : sw0, kb);
    }
#endif
}
__device__ __forceinline__ void stmatrix_x4_trans(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                 ::"r"(addr), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
}
// The finished tile: each output once, + bias, one rounding. A consumer warp's 16 rows x 128 tokens go through its
// 4 KB at W_OUT token-major (stmatrix .trans: token tok's 16 rows are 32 bytes, its two 16-byte halves swapped when
// tok % 8 >= 4 so a matrix's 8 tokens hit distinct banks), then out as 16-byte stores: 8 rows of one token each.
__device__ __forceinline__ void ws_store(const Args& a, float (&yacc)[64], u32 base, int r0, int m0, int n0) {
    const int lane = threadIdx.x & 31, cw = (threadIdx.x >> 5) - 4;  // consumer warp: rows 16cw .. 16cw + 15
    if (a.bias) {
        const float b0 = n0 + r0 < a.N ? bias_at(a.bias, a.bias_f32, n0 + r0) : 0.f;
        const float b1 = n0 + r0 + 8 < a.N ? bias_at(a.bias, a.bias_f32, n0 + r0 + 8) : 0.f;
#pragma unroll
        for (int i = 0; i < 64; ++i) yacc[i] = fadd_ieee(yacc[i], ((i >> 1) & 1) ? b1 : b0);
    }
    const int swz = ((lane & 7) >> 2) ^ ((lane >> 3) & 1);  // lane's row (token % 8) and matrix half (lane / 8 % 2)
    const u32 out = base + W_OUT + cw * 4096 + (8 * ((lane >> 4) & 1) + (lane & 7)) * 32 + 16 * swz;
#pragma unroll
    for (int j = 0; j < 16; j += 2)  // matrices: tokens 8j.. rows 0-7, rows 8-15, then tokens 8j + 8.. the same
        stmatrix_x4_trans(out + 8 * j * 32, pack_pair(yacc[4 * j], yacc[4 * j + 1]),
                          pack_pair(yacc[4 * j + 2], yacc[4 * j + 3]), pack_pair(yacc[4 * j + 4], yacc[4 * j + 5]),
                          pack_pair(yacc[4 * j + 6], yacc[4 * j + 7]));
    __syncwarp();
    const u32 in = base + W_OUT + cw * 4096;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int tok = 16 * i + (lane >> 1), h = lane & 1, row = n0 + 16 * cw + 8 * h;
        uint4 v;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(in + tok * 32 + 16 * (h ^ ((tok >> 2) & 1))));
        if (m0 + tok < a.M && row < a.N) *(uint4*)((u16*)a.y + (size_t)(m0 + tok) * a.N + row) = v;
    }
    __syncwarp();  // read before the next tile's stmatrix
}

extern "C" __global__ void __launch_bounds__(W_THREADS, 1)
i8_gemm_ws(const uint4* qweight, const u16* w_scales, const signed char* xq, const float* sx, const void* bias,
           void* y, int M, int N, int NB, int ws_cols, int w_step, int bias_f32) {
    const Args a{qweight, w_scales, xq, sx, bias, y, M, N, NB, ws_cols, w_step, bias_f32};
    extern __shared__ __align__(1024) char smem_raw[];
    char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzle atoms need 1024 alignment
    const u32 base = smem_addr(smem), full = base + W_BARS, empty = full + 8 * I8_STAGES;
    const int wg = threadIdx.x >> 7;
    const int m_tiles = (M + 127) >> 7, tiles = m_tiles * ((N + W_ROWS - 1) >> W_ROWS_SHIFT);
    if (threadIdx.x == 0) {
        for (int s = 0; s < I8_STAGES; ++s) {
            mbar_init(full + 8 * s, 2 + 32);  // two copy warps' expect_tx arrivals, the third's 32 cp.async lanes
            mbar_init(empty + 8 * s, 4 * W_CWG);  // one arrival per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    pdl_wait();  // xq and sx are the quantize kernel's output; y may still be read by the kernel before

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(W_PRODUCER_REGS));
        // Three copy warps, each waiting on `empty` itself: 0 the activations, 1 the records, 2 the scale words
        // (one warp doing all three was 1.11-1.19x slower: its issue bound the consumers). Block q is stage
        // q % I8_STAGES, numbered on across tiles.
        if (threadIdx.x < 96) {
            const int cwp = threadIdx.x >> 5, lane = threadIdx.x & 31;
            int q = 0;
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int mt = tile % m_tiles, n0 = (tile / m_tiles) * W_ROWS;
                const int groups = min(W_ROWS / 16, (N - n0) >> 4);  // N % 16 == 0
                const uint4* rec = qweight + rec_index(n0 + 16 * (lane & 7), 0, NB) * 6;  // group lane, block 0
                int swe[W_ROWS / 32];  // rows lane + 32i: first weight-scale element, -1 past N (N * ws_cols < 2^31)
#pragma unroll
                for (int i = 0; i < W_ROWS / 32; ++i)
                    swe[i] = n0 + lane + 32 * i < N ? (n0 + lane + 32 * i) * ws_cols : -1;
                for (int b = 0; b < NB; ++b, ++q) {
                    const int s = q % I8_STAGES;
                    const u32 st = base + s * W_STAGE, sc = base + W_SCALES + ws_slot(q) * W_SLOT;
                    const u32 bar = full + 8 * s;
                    mbar_wait(empty + 8 * s, ws_parity(q) ^ 1);  // block q - I8_STAGES released
                    if (cwp == 0) {  // a complete_tx may come before an expect_tx: the pending arrival holds the phase
                        if (lane == 0) {
                            const size_t tb = (size_t)mt * NB + b;
                            mbar_expect_tx(bar, 128 * 128 + 128 * 4);
                            bulk_copy(st + W_A, xq + tb * 128 * 128, 128 * 128, bar);
                            bulk_copy(sc + W_SX, sx + tb * 128, 128 * 4, bar);
                        }
                    } else if (cwp == 1) {
                        if (lane == 0) mbar_expect_tx(bar, groups * 1536);
                        if (lane < groups) bulk_copy(st + W_R + lane * 1536, rec + (size_t)b * 96, 1536, bar);
                    } else {
#pragma unroll
                        for (int i = 0; i < W_ROWS / 32; ++i)
                            if (swe[i] >= 0)
                                cp_async4(sc + W_SW + (lane + 32 * i) * 4, w_scales + ((swe[i] + b * w_step) & ~1));
                        cp_async_mbar_arrive(bar);
                    }
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(W_CONSUMER_REGS));
        const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        const int r0 = 64 * (wg - 1) + 16 * ((threadIdx.x >> 5) & 3) + g;  // this thread's first row in the tile
        int q = 0;
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const int m0 = (tile % m_tiles) * 128, n0 = (tile / m_tiles) * W_ROWS;
            int acc0[64];
            float csum[64];
            u32 ra0[8], rb0[8];
            // a debug build runs one block at a time and stores no sums: these are then unused
            [[maybe_unused]] int acc1[64];
            [[maybe_unused]] float yacc[64];
            [[maybe_unused]] u32 ra1[8], rb1[8];
#pragma unroll
            for (int i = 0; i < 64; ++i) yacc[i] = -0.f;  // -0: the identity of IEEE addition
            // Block q's scale slot.
            auto scales = [&](int qb) { return smem + W_SCALES + ws_slot(qb) * W_SLOT; };
            // Stage s's MMAs are done and its records were unpacked: one arrival per warp frees it (W_SCALES says
            // why the scales are not in it).
            auto release = [&](int s) {
                __syncwarp();
                if (lane == 0) mbar_arrive(empty + 8 * s);
            };
            // One block alone: an odd last block, or every block of a debug build (which then keeps one
            // accumulator live: with two, its stores spill).
            auto single = [&](int b) {
                const int s0 = q % I8_STAGES;
                mbar_wait(full + 8 * s0, ws_parity(q));
                ws_block(acc0, ra0, rb0, smem + s0 * W_STAGE, base + s0 * W_STAGE, r0, t);
                wgmma_wait0();
                ws_epilogue(a, acc0, csum, scales(q), r0, m0, n0, b, 0);
                release(s0);
                ++q;
            };
#if I8_DEBUG_ACC
            for (int b = 0; b < NB; ++b) single(b);
#else
            // Whole chunks (I8_CHUNK == 2); an odd last block after the loop (inside it, ptxas saw a path leaving an
            // MMA in flight and injected a wait, C7517).
            int c0 = 0;
            for (; c0 + 1 < NB; c0 += 2, q += 2) {
                const int s0 = q % I8_STAGES, s1 = (q + 1) % I8_STAGES;
                mbar_wait(full + 8 * s0, ws_parity(q));
                ws_block(acc0, ra0, rb0, smem + s0 * W_STAGE, base + s0 * W_STAGE, r0, t);
                mbar_wait(full + 8 * s1, ws_parity(q + 1));
                ws_block(acc1, ra1, rb1, smem + s1 * W_STAGE, base + s1 * W_STAGE, r0, t);
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
                ws_epilogue(a, acc0, csum, scales(q), r0, m0, n0, c0, 0);
                release(s0);
                wgmma_wait0();
                ws_epilogue(a, acc1, csum, scales(q + 1), r0, m0, n0, c0 + 1, 1);
                release(s1);
#pragma unroll
                for (int i = 0; i < 64; ++i) yacc[i] = fadd_ieee(yacc[i], csum[i]);  // the chunk, in chunk order
            }
            if (c0 < NB) {  // an odd block count: the last chunk is one block
                single(c0);
#pragma unroll
                for (int i = 0; i < 64; ++i) yacc[i] = fadd_ieee(yacc[i], csum[i]);
            }
#endif
            if (tile + (int)gridDim.x >= tiles) pdl_trigger();  // this CTA's last tile: its stores remain
#if !I8_DEBUG_ACC
            ws_store(a, yacc, base, r0, m0, n0);
#endif
        }
    }
}
#endif  // I8_WGMMA == 2
#endif  // I8_WGMMA
