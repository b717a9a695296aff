// Bit-serial BTC GEMM for W6A6 / W6A8 on Hopper (sm_90), plus the activation quantize-and-pack kernel.
//
//   y[m, n] = sum over 128-wide K blocks b of float(acc[b, m, n]) * (sx[m, b] * sw[n, b])  (+ bias[n])
//   acc[b, m, n] = sum_{k in block b} xq[m, k] * wq[n, k]      (exact int32, see flexq_cli/reference.py)
// in the format's canonical fp32 order (reference.scaled_sum), bit for bit: term_b = (float)acc * (sx * sw)
// (two rounded multiplies), chunk sums p_c of BTC_CHUNK consecutive blocks added in block order, y = the p_c
// added in chunk order, then + bias, then one rounding to fp16/bf16.
//
// Compiled at run time by CuPy RawModule (NVRTC); flexq_cli/btc.py is the one source of truth for the -D
// options below. Host-only headers are avoided on purpose (NVRTC has none): fp16/bf16 are handled as raw
// 16-bit words converted with cvt instructions.
//
// ---- Why one m16n8k256 MMA may only see ONE K block -------------------------------------------------------
// `mma.sync.m16n8k256.b1.and.popc` computes D = popc(A_k[0:128] & B_k[0:128]) + popc(A_k[128:256] & B_k[128:256])
// + C for a 16x8 tile. Each 128-wide K block has its own (activation scale x weight scale), so the two 128-bit
// K halves must never belong to two different blocks. Instead we fill the two halves with two different
// (weight plane i, activation plane j) pairs of the SAME block whose bit weights agree: same class s = i + j
// (weight 2^s) and the same two's-complement sign (negative iff exactly one of i, j is a sign plane: weight
// plane 5 has weight -32, activation plane A-1 has weight -2^(A-1)). A pair left over in a (class, sign) group
// takes a half on its own, the other half's B register is zero. W6A6: 36 plane products in 21 MMAs; W6A8: 48
// in 29 (the ideal 18 / 24 needs mixing classes, impossible without per-half weights).
//
// The bit weights are applied by Horner's rule: classes run from the highest s down to 0 and, before each
// class, the positive (P) and negative (Q) accumulators are doubled; the MMAs of class s add into P or Q
// through the MMA's C operand. At the end acc = P - Q is the exact block dot product.
//
// ---- Layouts -------------------------------------------------------------------------------------------------
// qweight (N, NB*24) uint32: one 96-byte record per (row, block): plane p (0..5) at bytes 16p..16p+15, bit k%32
//   of word (k%128)/32, records in groups of 16 rows, block-major (rec_index, common.cuh; flexq_cli/packing.py).
//   Weights are the MMA's A operand (16 rows of N per MMA).
// xpack (Mp, NB, A, 4) uint32: the same per-token record with A planes (A*16 bytes); Mp = M rounded up to 8,
//   padded tokens are zero. Activations are the MMA's B operand (8 tokens per MMA), so M <= 8 is one column
//   tile. sx (Mp, NB) float32: the activation scale of the group each block lies in (expanded per block, so the
//   GEMM does not care about act_group_size).
// Fragments: for m16n8k256 b1, thread (g = lane/4, t = lane%4) holds A rows g and g+8 and B column g, 32-bit
//   word t of each 128-bit half. ldmatrix (.b16, 8x8 matrices of 16-byte rows) gives thread (g, t) word t of
//   row g: exactly that, so one 16-byte (row, plane) chunk in shared memory is one fragment row.
//
// ---- Tiles (from btc.py) ----------------------------------------------------------------------------------
// CTA: BTC_WARPS warps x 16 weight rows, BTC_MT tokens, the K range of one split. Weights stream through a
//   BTC_STAGES-deep cp.async pipeline of BTC_KB blocks per stage: weights are read exactly once (decode is
//   memory bound), so 16-byte coalesced copies, L2 evict-first, and several stages in flight per CTA.
// Split-K (grid.y) fills the 132 SMs when N is small. Splits begin at chunk boundaries (btc.py), so each chunk
//   sum p_c is formed inside one CTA. Split 0 keeps the running y = ((p_0 + p_1) + ...) over its own chunks (a
//   prefix of the canonical order) and stores it in slot 0; every later split stores each of its chunk sums
//   p_c in its own slot (c - cps + 1, cps = chunks per split); the last CTA of a tile (a counter per tile,
//   reset by that CTA) adds the slots in order. The result equals the unsplit kernel and the reference bit for
//   bit whatever the tile/split configuration.

#ifndef BTC_ACT_BITS
#define BTC_ACT_BITS 8
#endif
#ifndef BTC_WARPS
#define BTC_WARPS 4
#endif
#ifndef BTC_KB
#define BTC_KB 2
#endif
#ifndef BTC_STAGES
#define BTC_STAGES 4
#endif
#ifndef BTC_MT
#define BTC_MT 8
#endif
#ifndef BTC_BF16
#define BTC_BF16 0
#endif
#ifndef BTC_PCT
#define BTC_PCT 0  // 0: tokens in the MMA's columns; 1, 2, 4, 8: activation planes in the columns, for <= PCT tokens
#endif
#ifndef BTC_FUSE
#define BTC_FUSE 0  // 1: the GEMM quantizes its own activations (plane columns, act groups of 128): no pack launch
#endif
#ifndef BTC_DEBUG_ACC
#define BTC_DEBUG_ACC 0
#endif
#ifndef BTC_PACK_WARPS
#define BTC_PACK_WARPS 4
#endif
#ifndef BTC_CHUNK
#define BTC_CHUNK 2  // primitives.EPILOGUE_CHUNK_BLOCKS (btc.py always passes it; the default only serves nvcc checks)
#endif

#define FQ_BF16 BTC_BF16
#include "common.cuh"

#define A_BITS BTC_ACT_BITS
#define W_BITS 6
#define QMAX ((1 << (A_BITS - 1)) - 1)
#define ROWS (16 * BTC_WARPS)
#define THREADS (32 * BTC_WARPS)
#define W_REC 96                              // bytes per (row, block) weight record: 6 planes x 16 B
#define X_REC (16 * A_BITS)                   // bytes per (token, block) activation record
// Shared-memory row strides padded by 16 bytes: a stride of 16 * odd makes the 8 rows an ldmatrix phase reads
// fall on 8 distinct 16-byte bank groups (96*KB + 16 = 16 * (6*KB + 1)), so ldmatrix is conflict free.
#define W_STRIDE (W_REC * BTC_KB + 16)
#define X_STRIDE (X_REC * BTC_KB + 16)
#define STAGE_W_BYTES (ROWS * W_STRIDE)
#define STAGE_BYTES (STAGE_W_BYTES + BTC_MT * X_STRIDE)

static_assert(A_BITS == 6 || A_BITS == 8, "activation bits must be 6 or 8");
static_assert(BTC_MT % 8 == 0, "tokens per CTA must be a multiple of 8");
static_assert(BTC_STAGES >= 2, "the pipeline needs two stages at least");
static_assert(BTC_CHUNK >= 1 && (BTC_CHUNK & (BTC_CHUNK - 1)) == 0, "epilogue chunk: a power of two of blocks");
static_assert(BTC_PCT == 0 || ((BTC_PCT & (BTC_PCT - 1)) == 0 && BTC_PCT <= 8 && BTC_MT == 8),
              "plane columns: PCT in 1, 2, 4, 8 tokens and an 8-token tile");
static_assert(!BTC_FUSE || BTC_PCT, "the fused activation pack is for the plane-column scheme (few tokens)");
// token rows of a stage that the MMAs read (plane columns read only the first PCT tokens)
#define X_TOKENS (BTC_PCT ? BTC_PCT : BTC_MT)
// fp32 outputs per thread: tokens in columns: (MT/8 column tiles) x 4 fragment values; plane columns: PCT tokens x
// rows g, g+8 (the same in the 4 lanes of a quad after the reduction; one lane owns each, see out_owned)
#define NOUT (BTC_PCT ? 2 * BTC_PCT : BTC_MT / 2)


// ================================================================ activation quantize-and-pack
// x (M, K) fp16/bf16 row-major, K the ORIGINAL width (the tail up to NB*128 is read as zeros: no padded copy).
// One warp per (token, block): lane l holds k = 128b + 32e + l for e = 0..3, so a warp ballot of bit p of
// element e is directly word e of plane p (bit l = k % 32). Scales and codes: quantize_block (common.cuh).
// whole_row != 0: one scale per token (act_group_size -1); then one CTA per token (grid.y must be 1).
extern "C" __global__ void __launch_bounds__(32 * BTC_PACK_WARPS)
btc_act_pack(const u16* __restrict__ x, u32* __restrict__ xpack, float* __restrict__ sx,
             int M, int K, int NB, int whole_row) {
    pdl_wait();     // x is the previous kernel's output; xpack/sx may still be read by the previous GEMM
    pdl_trigger();  // the GEMM may start its weight prefetch now (it waits for this grid before reading xpack)
    const int tok = blockIdx.x;  // 0 .. Mp-1; tokens >= M are padding and come out as zeros
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u16* xr = x + (size_t)tok * K;
    const bool live = tok < M;
    const float row_scale = whole_row ? cta_row_scale<BTC_PACK_WARPS>(xr, K, live, QMAX) : 0.f;
    for (int b = blockIdx.y * BTC_PACK_WARPS + warp; b < NB; b += gridDim.y * BTC_PACK_WARPS) {
        int q[4];
        const float s = quantize_block(xr, K, live, b, whole_row, row_scale, QMAX, q);
        const u32 mine = plane_word<A_BITS>(q, lane);
        if (lane < 4 * A_BITS) xpack[((size_t)tok * NB + b) * (4 * A_BITS) + lane] = mine;
        if (lane == 0) sx[(size_t)tok * NB + b] = s;
    }
}

// ================================================================ the plane-pair schedule (compile time)
struct Step {
    int w0, a0, w1, a1;  // half 0: weight plane w0 x activation plane a0; half 1: w1 x a1 (w1 < 0: empty half)
    int neg;             // 1: the pair's product is negative (exactly one sign plane): accumulate into Q
    int shift;           // 1: first MMA of its class: double P and Q first (Horner)
};
struct Schedule {
    Step s[40];
    int n;
};

__host__ __device__ constexpr Schedule make_schedule(int abits) {
    Schedule r{};
    r.n = 0;
    for (int cls = (W_BITS - 1) + (abits - 1); cls >= 0; --cls) {
        int first = 1;
        for (int neg = 0; neg < 2; ++neg) {
            int pw = -1, pa = -1;
            for (int i = 0; i < W_BITS; ++i) {
                const int j = cls - i;
                if (j < 0 || j >= abits) continue;
                const int ng = (i == W_BITS - 1) != (j == abits - 1);
                if (ng != neg) continue;
                if (pw < 0) { pw = i; pa = j; continue; }
                r.s[r.n] = Step{pw, pa, i, j, neg, first};
                r.n += 1; first = 0; pw = -1;
            }
            if (pw >= 0) { r.s[r.n] = Step{pw, pa, -1, -1, neg, first}; r.n += 1; first = 0; }
        }
    }
    return r;
}

constexpr Schedule kSched = make_schedule(A_BITS);
static_assert(kSched.n == (A_BITS == 6 ? 21 : 29), "unexpected MMA count");

__device__ __forceinline__ void bmma(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Step I of the schedule for all BTC_KB blocks of a stage at once, unrolled by template recursion so that every
// plane and block index is a compile-time constant (a run-time index into af/bf would put them in local memory).
// Why all blocks at once: Horner's rule makes one block's 21/29 MMAs a single dependency chain through P/Q, and a
// b1 MMA's latency is tens of cycles; BTC_KB independent chains, interleaved in program order, keep the tensor
// pipe busy (measured: one chain per warp ran at ~45-70% of the copy bandwidth, MMA-latency bound).
template <int I>
struct Steps {
    static __device__ __forceinline__ void run(const u32 (&af)[BTC_KB][W_BITS][2], const u32 (&bf)[BTC_KB][A_BITS],
                                               int (&P)[BTC_KB][4], int (&Q)[BTC_KB][4]) {
        constexpr Step st = kSched.s[I];
        constexpr int w1 = st.w1 < 0 ? st.w0 : st.w1;  // empty half: any A, B half is zero
#pragma unroll
        for (int kb = 0; kb < BTC_KB; ++kb) {
            if (st.shift) {
#pragma unroll
                for (int r = 0; r < 4; ++r) { P[kb][r] <<= 1; Q[kb][r] <<= 1; }
            }
            const u32 b1 = st.w1 < 0 ? 0u : bf[kb][st.a1 < 0 ? 0 : st.a1];
            if (st.neg) bmma(Q[kb], af[kb][st.w0][0], af[kb][st.w0][1], af[kb][w1][0], af[kb][w1][1], bf[kb][st.a0], b1);
            else        bmma(P[kb], af[kb][st.w0][0], af[kb][st.w0][1], af[kb][w1][0], af[kb][w1][1], bf[kb][st.a0], b1);
        }
        Steps<I + 1>::run(af, bf, P, Q);
    }
};
template <>
struct Steps<kSched.n> {
    static __device__ __forceinline__ void run(const u32 (&)[BTC_KB][W_BITS][2], const u32 (&)[BTC_KB][A_BITS],
                                               int (&)[BTC_KB][4], int (&)[BTC_KB][4]) {}
};

// ================================================================ the GEMM
// Kernel parameters, gathered in one struct inside the kernel (CuPy passes plain scalars and pointers).
struct Args {
    const uint4* qweight;  // (N, NB*24) uint32 as 16-byte chunks, 6 per record (rec_index)
    const u16* w_scales;   // (N, ws_cols) float16
    const uint4* xpack;    // (Mp, NB, A, 4) uint32 as (Mp, NB*A) 16-byte chunks
    const float* sx;       // (Mp, NB) float32
    const void* bias;      // (N,) float32 (bias_f32 = 1) or the output dtype, or null
    void* y;               // (M, N) output dtype; debug: (NB, M, N) int32 block accumulators
    float* partial;        // (slots, Mp, N) float32: split 0's prefix, then chunk sums (only when splits > 1)
    int* counters;         // (grid.x * grid.z) arrival counters, zero between launches
    const u16* x;          // BTC_FUSE: (M, K) fp16/bf16 activations, quantized inside the GEMM (else unused)
    int M, N, NB, ws_cols, w_step, blocks_per_split, bias_f32, K;
};

// Copy one stage (BTC_KB blocks starting at block b) of weights, then of activations, into shared memory. Split in
// two so that the prologue can prefetch weights before pdl_wait() (they are read-only for every kernel).
__device__ __forceinline__ void load_stage_w(const Args& a, char* st, int n0, int b, int kb_end,
                                             unsigned long long policy) {
    const int nkb = min(BTC_KB, kb_end - b);  // blocks of this stage inside the split's K range
    constexpr int WCH = BTC_KB * 6;           // 16-byte chunks per row in a full stage
    for (int c = threadIdx.x; c < ROWS * WCH; c += THREADS) {
        const int row = c / WCH, w = c % WCH, bi = w / 6;  // chunk w % 6 of the row's record of block b + bi
        if (bi < nkb && n0 + row < a.N)
            cp_async16(smem_addr(st + row * W_STRIDE + w * 16),
                       a.qweight + rec_index(n0 + row, b + bi, a.NB) * 6 + (w - 6 * bi), policy);
    }
}
__device__ __forceinline__ void load_stage_x(const Args& a, char* st, int m0, int Mp, int b, int kb_end) {
    const int nkb = min(BTC_KB, kb_end - b);
    constexpr int XCH = BTC_KB * A_BITS;
    char* xs = st + STAGE_W_BYTES;
    for (int c = threadIdx.x; c < X_TOKENS * XCH; c += THREADS) {
        const int tok = c / XCH, w = c % XCH;
        if (w < nkb * A_BITS && m0 + tok < Mp)
            cp_async16(smem_addr(xs + tok * X_STRIDE + w * 16), a.xpack + ((size_t)(m0 + tok) * a.NB + b) * A_BITS + w);
    }
}
__device__ __forceinline__ void load_stage(const Args& a, char* st, int n0, int m0, int Mp, int b, int kb_end,
                                           unsigned long long policy) {
    load_stage_w(a, st, n0, b, kb_end, policy);
    if (!BTC_FUSE) load_stage_x(a, st, m0, Mp, b, kb_end);
}

// The scales one step needs: weight rows `row`, `row + 8` and tokens tok0 + 8j + {0, 1} of blocks b0 .. b0+KB-1
// (zeros past the split's end or past M). Weight scales stay float16 until used.
#define SXN (BTC_PCT ? BTC_PCT : BTC_MT / 8)
struct StepScales {
    u16 sw[BTC_KB][2];
    float sx[SXN][BTC_KB][2];  // tokens in columns: tokens tok0 + 8j + {0, 1}; plane columns: token tok0 + j
};

// Output i of this thread: its token and row offsets (from m0 and the warp's first row) and whether this lane writes it.
__device__ __forceinline__ int out_tok(int i, int t) { return BTC_PCT ? i / 2 : 8 * (i / 4) + 2 * t + (i & 1); }
__device__ __forceinline__ int out_row(int i, int g) { return g + 8 * (BTC_PCT ? (i & 1) : ((i >> 1) & 1)); }
__device__ __forceinline__ bool out_owned(int i, int t) { return BTC_PCT ? (i & 3) == t : true; }

// Where this thread's scales are, worked out once: weight rows `row` and `row + 8`; the activation scales of its
// tokens tok0 + 8j + e (plane columns: tok0 + j) in sxp, rows of sx_row floats, block b at column b - b_base: a.sx
// (row NB, blocks from 0), or with BTC_FUSE the CTA's shared copy (row = blocks per split rounded up, blocks from
// the split's first; tokens from m0 = 0).
struct ScaleSrc {
    const u16* w;      // weight scales of row `row`
    int w8;            // row + 8: w + w8
    const float* x;    // token tok0's scale of block 0 (may lie before sxp when b_base > 0; never read there)
    int x_row;         // floats per token row
    u32 live;          // bit (j * 2 + e): that token is < M
};
__device__ __forceinline__ ScaleSrc scale_src(const Args& a, int row, int tok0, const float* sxp, int sx_row,
                                              int b_base) {
    ScaleSrc r{a.w_scales + (size_t)row * a.ws_cols, 8 * a.ws_cols, sxp + (ptrdiff_t)tok0 * sx_row - b_base, sx_row,
               0u};
#pragma unroll
    for (int j = 0; j < SXN; ++j)
#pragma unroll
        for (int e = 0; e < (BTC_PCT ? 1 : 2); ++e)
            if ((BTC_PCT ? tok0 + j : tok0 + 8 * j + e) < a.M) r.live |= 1u << (j * 2 + e);
    return r;
}
__device__ __forceinline__ void load_scales(const Args& a, const ScaleSrc& src, StepScales& s, int b0, int kb_end) {
#if !BTC_DEBUG_ACC
#pragma unroll
    for (int kb = 0; kb < BTC_KB; ++kb) {
        const int b = b0 + kb;
        const bool in = b < kb_end;
        const int wo = b * a.w_step;
        s.sw[kb][0] = in ? src.w[wo] : (u16)0;
        s.sw[kb][1] = in ? src.w[src.w8 + wo] : (u16)0;
#pragma unroll
        for (int j = 0; j < SXN; ++j)
#pragma unroll
            for (int e = 0; e < (BTC_PCT ? 1 : 2); ++e) {
                const int dt = BTC_PCT ? j : 8 * j + e;  // token offset from tok0
                s.sx[j][kb][e] = (in && (src.live >> (j * 2 + e) & 1u)) ? src.x[dt * src.x_row + b] : 0.f;
            }
    }
#endif
}

__device__ __forceinline__ void bmma0(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

// ---- Plane columns (BTC_PCT > 0, for few tokens) -------------------------------------------------------------
// With tokens in the columns, one token uses 1 of the MMA's 8 columns and a block costs 21/29 MMAs whatever M is.
// Here the columns carry (token, activation plane) slots instead and each column uses ONE K half: column c < 4
// pairs weight plane 2p (half 0) with slot 4q + c, column c >= 4 pairs weight plane 2p+1 (half 1) with slot
// 4q + c - 4; slot group q covers token q/2, activation planes 4(q%2) .. +3 (planes >= A_BITS are zero). Every
// D value is then ONE plane product popc(w_i & x_j) and gets its own integer weight +-2^(i+j), so a block costs
// 6 * PCT independent MMAs (no dependency chain, no Horner shifts): 6 instead of 29 at one token.
// Thread (g, t) holds columns 2t, 2t+1 (both in half t / 2): weight plane i = 2p + t/2, activation plane
// j = 4(q%2) + 2(t%2) + e, so i + j = (2p + 4(q%2) + e) + ct with ct = t/2 + 2(t%2): the D value of MMA p, slot
// half q%2 and column parity e is weighted 2^(2p + 4(q%2) + e), a compile-time shift (one LEA), and the thread's
// sum is shifted by ct once at the end. The sign, -1 iff exactly one sign plane is involved (weight plane 5: p = 2
// and t >= 2; activation plane A-1: q%2 = 1, e = 1 and t odd for A8, t even for A6), splits the terms into four
// sums that two per-thread factors +-1 combine: ((P + sa * P2) + sb * (Q + sa * Q2)) << ct. (A6's planes 6, 7 are
// zero columns: their D values are 0.) The four lanes of a quad hold different (i, j) of the same rows, so their
// integer sums are added with two shuffles: the block's exact dot product, before any float is formed.
#if BTC_PCT
__device__ __forceinline__ void pc_block(const u32 (&af)[W_BITS][2], u32 xaddr, u32 xstride, int g, int sa, int sb,
                                         int ct, int (&acc)[NOUT]) {
#pragma unroll
    for (int T = 0; T < BTC_PCT; ++T) {
        int P[2] = {0, 0}, P2[2] = {0, 0}, Q[2] = {0, 0}, Q2[2] = {0, 0};  // [h]: rows g, g + 8
#pragma unroll
        for (int qh = 0; qh < 2; ++qh) {
            // word t of (token T, plane 4qh + g%4); in A6 records planes 6, 7 do not exist (the next record's bytes)
            const bool live = A_BITS == 8 || qh == 0 || (g & 3) < 2;
            const u32 xw = live ? lds32(xaddr + T * xstride + qh * 64) : 0u;
            const u32 b0 = g < 4 ? xw : 0u, b1 = g < 4 ? 0u : xw;
#pragma unroll
            for (int p = 0; p < 3; ++p) {
                int d[4];
                bmma0(d, af[2 * p][0], af[2 * p][1], af[2 * p + 1][0], af[2 * p + 1][1], b0, b1);
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int v = d[2 * h + e] << (2 * p + 4 * qh + e);
                        if (qh == 1 && e == 1) {
                            if (p == 2) Q2[h] += v; else Q[h] += v;
                        } else {
                            if (p == 2) P2[h] += v; else P[h] += v;
                        }
                    }
            }
        }
        int r[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            r[h] = ((P[h] + sa * P2[h]) + sb * (Q[h] + sa * Q2[h])) << ct;
            r[h] += __shfl_xor_sync(0xffffffffu, r[h], 1);
            r[h] += __shfl_xor_sync(0xffffffffu, r[h], 2);
            acc[2 * T + h] = r[h];
        }
    }
}
#endif

// Block b's exact accumulator `acc` of output i into its chunk sum `cs`: term = (float)acc * (sx * sw), two rounded
// multiplies, added in block order (IEEE PTX ops: no FMA contraction, no flush to zero), as reference.scaled_sum.
// Debug: write acc itself.
__device__ __forceinline__ void block_epilogue(const Args& a, float& cs, int acc, const StepScales& sc, int i, int kb,
                                               int b, int tok, int row, bool owned) {
#if BTC_DEBUG_ACC
    if (owned && tok < a.M) ((int*)a.y)[((size_t)b * a.M + tok) * a.N + row] = acc;
#else
    const int h = BTC_PCT ? (i & 1) : ((i >> 1) & 1);  // row g or g + 8
    const float sxv = BTC_PCT ? sc.sx[i / 2][kb][0] : sc.sx[i / 4][kb][i & 1];
    const float s = fmul_ieee(sxv, half_to_float(sc.sw[kb][h]));
    cs = fadd_ieee(cs, fmul_ieee((float)acc, s));
#endif
}

// Block b closes its chunk (c = b / BTC_CHUNK): the chunk's last block, or the split's last (splits begin and end
// at chunk boundaries except the final one, which ends at NB).
__device__ __forceinline__ bool chunk_ends(int b, int kb_end) { return (b + 1) % BTC_CHUNK == 0 || b + 1 == kb_end; }

// A finished chunk sum: split 0 adds it to the running y (chunk order), a later split stores it in its slot
// (c - cps + 1) for the last CTA's in-order reduction. Sums start at -0.0f, the identity of IEEE addition
// (-0 + x == x for every x, +0 included), so each equals the sum that begins with its first term, as the reference.
__device__ __forceinline__ void chunk_flush(const Args& a, float& y, float& cs, int b, int tok, int row, bool owned,
                                            int Mp, int cps) {
#if !BTC_DEBUG_ACC
    if (blockIdx.y == 0)
        y = fadd_ieee(y, cs);
    else if (owned && tok < a.M)
        __stcg(a.partial + ((size_t)(b / BTC_CHUNK - cps + 1) * Mp + tok) * a.N + row, cs);
    cs = -0.f;
#endif
}

// The last CTA of a split tile: slot 0 (split 0's prefix) plus slots 1 .. slots-1 (chunk sums) in order. The loads
// are independent, so they go out eight at a time ahead of the dependent adds (one L2 round trip per eight).
__device__ __forceinline__ float reduce_slots(const float* p, size_t stride, int slots) {
    float y = __ldcg(p);
    int s = 1;
    for (; s + 8 <= slots; s += 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) v[u] = __ldcg(p + (s + u) * stride);
#pragma unroll
        for (int u = 0; u < 8; ++u) y = fadd_ieee(y, v[u]);
    }
    for (; s < slots; ++s) y = fadd_ieee(y, __ldcg(p + s * stride));
    return y;
}

extern "C" __global__ void __launch_bounds__(THREADS)
btc_gemm(const uint4* qweight, const u16* w_scales, const uint4* xpack, const float* sx, const void* bias, void* y,
         float* partial, int* counters, const u16* x, int M, int N, int NB, int ws_cols, int w_step,
         int blocks_per_split, int bias_f32, int K) {
    const Args a{qweight, w_scales, xpack, sx, bias, y, partial, counters, x, M, N, NB, ws_cols, w_step,
                 blocks_per_split, bias_f32, K};
    extern __shared__ __align__(128) char smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * ROWS, m0 = blockIdx.z * BTC_MT;
    const int Mp = (a.M + 7) & ~7;
    const int kb_begin = blockIdx.y * a.blocks_per_split;
    const int kb_end = min(a.NB, kb_begin + a.blocks_per_split);
    const int nsteps = (kb_end - kb_begin + BTC_KB - 1) / BTC_KB;
    const int wrow = n0 + warp * 16;  // this warp's first weight row
    const bool warp_live = wrow < a.N;  // N % 16 == 0, so a warp is all in or all out
    unsigned long long policy;  // weights are read exactly once: do not let them evict the activations from L2
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));

    const int cps = a.blocks_per_split / BTC_CHUNK;  // chunks per split (splits > 1: a multiple of BTC_CHUNK blocks)
    float yacc[NOUT], csum[NOUT];  // running y (split 0) and the open chunk's sum, see chunk_flush
#pragma unroll
    for (int i = 0; i < NOUT; ++i) yacc[i] = csum[i] = -0.f;

    // Prologue: the first stages' weights go out before pdl_wait() (overlapping the activation pack kernel), the
    // activations after it. Commit group s then holds stage s's activations (and, group 0, all prologue weights):
    // waiting for group s still means stage s has landed.
#pragma unroll
    for (int s = 0; s < BTC_STAGES - 1; ++s)
        if (s < nsteps) load_stage_w(a, smem + s * STAGE_BYTES, n0, kb_begin + s * BTC_KB, kb_end, policy);
    pdl_wait();
#pragma unroll
    for (int s = 0; s < BTC_STAGES - 1; ++s) {
        if (!BTC_FUSE && s < nsteps) load_stage_x(a, smem + s * STAGE_BYTES, m0, Mp, kb_begin + s * BTC_KB, kb_end);
        cp_async_commit();
    }
#if BTC_FUSE
    // The activation pack, done here: the split's blocks of the (at most BTC_PCT) tokens are quantized by the CTA's
    // warps into shared memory, one warp per (token, block) as btc_act_pack does (same codes and scales, bit for
    // bit), behind the stages (row of a token: the split's blocks rounded up to whole stages; the rounded-up
    // blocks stay unwritten and their results are discarded, as past kb_end in the unfused kernel).
    const int x_row_blocks = (a.blocks_per_split + BTC_KB - 1) / BTC_KB * BTC_KB;
    char* xf = smem + BTC_STAGES * STAGE_BYTES;
    float* sxf = (float*)(xf + BTC_PCT * x_row_blocks * X_REC);
    {
        const int nblk = kb_end - kb_begin;
        for (int w = warp; w < BTC_PCT * nblk; w += BTC_WARPS) {
            const int T = w / nblk, j = w - T * nblk;
            const bool live = m0 + T < a.M;
            int q[4];
            const float s = quantize_block(a.x + (size_t)(live ? m0 + T : 0) * a.K, a.K, live, kb_begin + j, 0, 0.f,
                                           QMAX, q);
            const u32 mine = plane_word<A_BITS>(q, lane);
            if (lane < 4 * A_BITS) ((u32*)(xf + (T * x_row_blocks + j) * X_REC))[lane] = mine;
            if (lane == 0) sxf[T * x_row_blocks + j] = s;
        }
    }
    __syncthreads();
    const float* sxp = sxf;
    const int sx_row = x_row_blocks, sx_b0 = kb_begin;
#else
    const float* sxp = a.sx;
    const int sx_row = a.NB, sx_b0 = 0;
#endif
#if BTC_PCT
    // the per-thread factors of pc_block's sums: sign of the weight sign plane's terms, of the activation sign
    // plane's terms, and the shift every term of this thread shares
    const int sa = t >= 2 ? -1 : 1, sb = ((t & 1) == (A_BITS == 8)) ? -1 : 1, ct = (t >> 1) + 2 * (t & 1);
#endif

    // ldmatrix row addresses. A: lane l feeds row (l & 7) + 8 * ((l >> 3) & 1) of plane pair member (l >> 4),
    // so the x4 result is {rows 0-7 plane p, rows 8-15 plane p, rows 0-7 plane p+1, rows 8-15 plane p+1}.
    const u32 a_lane_off = (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * W_STRIDE + (lane >> 4) * 16;
#if !BTC_PCT
    // B: lane l feeds token (l & 7) of plane (l >> 3): the x4 result is 4 consecutive planes of 8 tokens.
    const u32 b_lane_off = STAGE_W_BYTES + (lane & 7) * X_STRIDE + (lane >> 3) * 16;
#endif

    // Scales of the step being computed (cur) and of the next one (nxt), loaded one step ahead into registers so
    // that their global-memory latency hides behind a whole step of MMAs instead of stalling the epilogue.
    StepScales cur, nxt;
    const int tok0 = BTC_PCT ? m0 : m0 + 2 * t;
    const ScaleSrc ssrc = scale_src(a, wrow + g, tok0, sxp, sx_row, sx_b0);
    if (warp_live) load_scales(a, ssrc, nxt, kb_begin, kb_end);
    for (int step = 0; step < nsteps; ++step) {
        cp_async_wait<BTC_STAGES - 2>();
        __syncthreads();  // stage `step` landed for every thread; stage `step - 1` is free for everybody
        {
            const int nx = step + BTC_STAGES - 1;
            if (nx < nsteps)
                load_stage(a, smem + (nx % BTC_STAGES) * STAGE_BYTES, n0, m0, Mp, kb_begin + nx * BTC_KB, kb_end,
                           policy);
            cp_async_commit();
        }
        if (!warp_live) continue;
        const int b0 = kb_begin + step * BTC_KB;  // first block of this step; blocks >= kb_end are computed on
                                                  // stale shared memory and discarded (keeps the chains branch-free)
        cur = nxt;
        if (step + 1 < nsteps) load_scales(a, ssrc, nxt, b0 + BTC_KB, kb_end);
        const u32 st = smem_addr(smem + (step % BTC_STAGES) * STAGE_BYTES);
        u32 af[BTC_KB][W_BITS][2];
#pragma unroll
        for (int kb = 0; kb < BTC_KB; ++kb)
#pragma unroll
            for (int p = 0; p < W_BITS; p += 2)
                ldmatrix_x4(st + a_lane_off + kb * W_REC + p * 16, af[kb][p][0], af[kb][p][1], af[kb][p + 1][0],
                            af[kb][p + 1][1]);
#if BTC_PCT
#if BTC_FUSE
        const u32 xaddr = smem_addr(xf) + (b0 - kb_begin) * X_REC + (g & 3) * 16 + t * 4;
        const u32 xstride = x_row_blocks * X_REC;
#else
        const u32 xaddr = st + STAGE_W_BYTES + (g & 3) * 16 + t * 4;
        const u32 xstride = X_STRIDE;
#endif
#pragma unroll
        for (int kb = 0; kb < BTC_KB; ++kb) {
            int acc[NOUT];
            pc_block(af[kb], xaddr + kb * X_REC, xstride, g, sa, sb, ct, acc);
            const int b = b0 + kb;
            if (b >= kb_end) break;
#pragma unroll
            for (int i = 0; i < NOUT; ++i) block_epilogue(a, csum[i], acc[i], cur, i, kb, b, m0 + out_tok(i, t),
                                                         wrow + out_row(i, g), out_owned(i, t));
            if (chunk_ends(b, kb_end))
#pragma unroll
                for (int i = 0; i < NOUT; ++i) chunk_flush(a, yacc[i], csum[i], b, m0 + out_tok(i, t),
                                                           wrow + out_row(i, g), out_owned(i, t), Mp, cps);
        }
#else
#pragma unroll
        for (int j = 0; j < BTC_MT / 8; ++j) {
            if (m0 + j * 8 >= a.M) break;
            u32 bf[BTC_KB][A_BITS];
#pragma unroll
            for (int kb = 0; kb < BTC_KB; ++kb) {
                const u32 baddr = st + b_lane_off + j * 8 * X_STRIDE + kb * X_REC;
                ldmatrix_x4(baddr, bf[kb][0], bf[kb][1], bf[kb][2], bf[kb][3]);
#if A_BITS == 8
                ldmatrix_x4(baddr + 64, bf[kb][4], bf[kb][5], bf[kb][6], bf[kb][7]);
#else
                ldmatrix_x2(baddr + 64, bf[kb][4], bf[kb][5]);
#endif
            }
            int P[BTC_KB][4], Q[BTC_KB][4];
#pragma unroll
            for (int kb = 0; kb < BTC_KB; ++kb)
#pragma unroll
                for (int r = 0; r < 4; ++r) P[kb][r] = Q[kb][r] = 0;
            Steps<0>::run(af, bf, P, Q);
            // C fragment: r = 0, 1: row g, tokens 2t, 2t+1; r = 2, 3: row g+8, tokens 2t, 2t+1
#pragma unroll
            for (int kb = 0; kb < BTC_KB; ++kb) {
                const int b = b0 + kb;
                if (b >= kb_end) break;
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int i = 4 * j + r;
                    block_epilogue(a, csum[i], P[kb][r] - Q[kb][r], cur, i, kb, b, m0 + out_tok(i, t),
                                   wrow + out_row(i, g), true);
                }
                if (chunk_ends(b, kb_end))
#pragma unroll
                    for (int r = 0; r < 4; ++r) chunk_flush(a, yacc[4 * j + r], csum[4 * j + r], b,
                                                            m0 + out_tok(4 * j + r, t), wrow + out_row(4 * j + r, g),
                                                            true, Mp, cps);
            }
        }
#endif
    }
#if BTC_DEBUG_ACC
    (void)yacc;
    (void)csum;
    (void)cps;
#endif
    cp_async_wait<0>();  // nothing may still be writing shared memory when the CTA exits
    // The next kernel (the next layer's pack) may be scheduled now, during the epilogue and split-K reduction.
    // Not earlier: its CTAs would sit resident (waiting) beside a single-wave GEMM for its whole main loop.
    pdl_trigger();

#if !BTC_DEBUG_ACC
    const int splits = gridDim.y;
    if (splits > 1) {
        // split 0's running sum (its chunks, in order) goes to slot 0; the later splits' chunk sums are stored already
        if (blockIdx.y == 0 && warp_live)
#pragma unroll
            for (int i = 0; i < NOUT; ++i) {
                const int tok = m0 + out_tok(i, t), row = wrow + out_row(i, g);
                if (out_owned(i, t) && tok < a.M) __stcg(a.partial + (size_t)tok * a.N + row, yacc[i]);
            }
        __threadfence();
        __syncthreads();
        __shared__ int is_last;
        if (threadIdx.x == 0) {
            int* ctr = a.counters + blockIdx.z * gridDim.x + blockIdx.x;
            is_last = atomicAdd(ctr, 1) == splits - 1;
            if (is_last) *ctr = 0;  // self-resetting: ready for the next launch
        }
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        const int slots = (a.NB + BTC_CHUNK - 1) / BTC_CHUNK - cps + 1;
        if (warp_live)
#pragma unroll
            for (int i = 0; i < NOUT; ++i) {
                const int tok = m0 + out_tok(i, t), row = wrow + out_row(i, g);
                if (out_owned(i, t) && tok < a.M) yacc[i] = reduce_slots(a.partial + (size_t)tok * a.N + row,
                                                                         (size_t)Mp * a.N, slots);
            }
    }
    if (!warp_live) return;
#pragma unroll
    for (int i = 0; i < NOUT; ++i) {
        const int tok = m0 + out_tok(i, t), row = wrow + out_row(i, g);
        if (!out_owned(i, t) || tok >= a.M) continue;
        float v = yacc[i];
        if (a.bias) v = fadd_ieee(v, bias_at(a.bias, a.bias_f32, row));
        ((u16*)a.y)[(size_t)tok * a.N + row] = from_float(v);
    }
#endif
}
