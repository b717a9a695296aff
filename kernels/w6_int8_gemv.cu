// W6A6 / W6A8 linear for decode-sized M (1..8 or 1..16 tokens) on INT8 tensor cores, weights straight to registers.
//
// Same numerics as w6_int8_gemm.cu, btc_gemm.cu and flexq_cli/reference.py, bit for bit: per 128-wide K block b the
// exact int32 dot product acc_b, term_b = (float)acc_b * (sx * sw) (two rounded multiplies), chunk sums of GV_CHUNK
// blocks in block order, the chunk sums in chunk order, + bias, one rounding. Same inputs as the INT8 GEMM: the
// packed 6-bit records (the only copy of the weights) and i8_act_quant's int8 activation codes and scales.
//
// Why a second kernel: at a few tokens a layer is a stream of weight bytes. The GEMM kernels stage weights through
// shared memory behind CTA barriers and run 8 warps per SM; this one has no shared memory in the main loop and no
// barrier: each warp loads its weight words with plain loads into registers, some blocks ahead, unpacks them to
// int8 in registers (unpack_planes) and feeds them to mma.sync as the A operand, so many independent warps keep
// loads in flight.
//
// ---- Fragments and the K order -------------------------------------------------------------------------------
// mma.m16n8k32.s8: A = 16 weight rows x 32 K, B = 32 K x 8 tokens. Thread (g = lane/4, t = lane%4) holds A rows g
// and g+8 at K slots 4t..4t+3 (a0, a1) and 16+4t..16+4t+3 (a2, a3), and B column g at the same slots (b0, b1).
// Thread t loads, for both its rows, word t of the six planes of the (row, block) record: K word t of the block,
// physical k = 32t + 0..31. unpack_planes turns them into r[p], byte i = code of k = 32t + p + 8i. MMA step s
// (0..3) uses a0/a1 = r[2s] of rows g/g+8 and a2/a3 = r[2s+1], so slot 4t+i of step s is physical k = 32t + 2s + 8i
// and slot 16+4t+i is 32t + 2s+1 + 8i. i8_act_quant stores physical k = 32e + 2t' + r + 8i at byte
// 32e + 16r + 4t' + i of the block (w6_int8_gemm.cu, top): with e = t and t' = s, b0 of step s is the 4 bytes at
// 32t + 4s and b1 those at 32t + 16 + 4s. So thread t reads bytes 32t..32t+31 of its token's block, unchanged.
//
// ---- Work ----------------------------------------------------------------------------------------------------
// CTA: GV_RT row tiles of 16 rows x GV_KW warps per row tile; the warps of a row tile split its K chunks into
// contiguous ranges (warp w: chunks [ceil(w NC / KW), ...)). Warp 0 of a row tile keeps the running output over
// its chunks (a prefix of the canonical order); the other warps store each chunk sum in shared memory (slot
// c - c1 + 1, c1 = warp 0's end), and after one barrier a thread per output adds slot 0, 1, 2, ... in order.
// GV_MT token tiles of 8 share each unpacked weight fragment (M <= 8 * GV_MT). GV_DEPTH blocks (a multiple of the
// chunk) are loaded ahead per warp.
//
// ---- The ring (GV_RING > 0) ------------------------------------------------------------------------------------
// The weights instead come through a ring of GV_RING blocks per warp in shared memory: cp.async copies each block's
// 16 x 96 bytes (three 16-byte pieces per lane, one commit group per block), cp.async.wait_group + __syncwarp make
// the oldest block visible, and three ldmatrix.x4 hand thread (g, t) exactly the twelve words the register path
// loads (word t of planes 0..5 of rows g and g + 8), so everything after is the same. Bytes in flight then cost
// shared memory, not registers, and GV_RING blocks of every warp are requested before pdl_wait. Only the warp's
// own lanes touch its ring: no CTA barrier. Scales and activation codes stay GV_DEPTH ahead in registers (the
// scales' lines are prefetched into L2 GV_RING ahead, GV_SWPF).
//
// Compiled at run time by CuPy RawModule (NVRTC); flexq_cli/int8_kernel.py (GemvConfig) is the one source of truth
// for the -D options below.

#ifndef GV_KW
#define GV_KW 4
#endif
#ifndef GV_RT
#define GV_RT 1
#endif
#ifndef GV_MT
#define GV_MT 1
#endif
#ifndef GV_DEPTH
#define GV_DEPTH 2
#endif
#ifndef GV_MINB
#define GV_MINB 1  // CTAs per SM the registers must allow (__launch_bounds__)
#endif
#ifndef GV_BF16
#define GV_BF16 0
#endif
#ifndef GV_DEBUG_ACC
#define GV_DEBUG_ACC 0
#endif
#ifndef GV_CHUNK
#define GV_CHUNK 2  // primitives.EPILOGUE_CHUNK_BLOCKS (int8_kernel.py always passes it)
#endif
#ifndef GV_RING
#define GV_RING 0  // 0: weights loaded into registers GV_DEPTH blocks ahead; > 0: a per-warp ring of that many blocks
#endif
#ifndef GV_SWPF
#define GV_SWPF 1  // with the ring: prefetch the weight scales into L2 as far ahead as the weights
#endif

#define FQ_BF16 GV_BF16
#include "common.cuh"

#define THREADS (32 * GV_KW * GV_RT)
#define ROWS (16 * GV_RT)       // weight rows per CTA
#define COLS (8 * GV_MT)        // token columns per CTA

static_assert(GV_MT == 1 || GV_MT == 2, "token tiles: 8 or 16 tokens");
static_assert(GV_DEPTH % GV_CHUNK == 0 && GV_DEPTH >= GV_CHUNK, "blocks in flight: whole epilogue chunks");
static_assert(THREADS <= 1024, "at most 1024 threads per CTA");
static_assert(GV_RING == 0 || (GV_RING % GV_DEPTH == 0 && GV_RING <= 8), "ring: whole multiples of the depth");

// The ring: per warp GV_RING stages of one 128-K block of its 16 rows, each row's 96-byte record at a GV_RING_ROW
// (112-byte) stride, so the 8 rows one ldmatrix phase reads start 28 words apart and cover the 32 banks once.
#ifndef GV_RING_ROW
#define GV_RING_ROW 112  // int8_kernel.RING_ROW_BYTES (int8_kernel.py always passes it)
#endif
static_assert(GV_RING_ROW % 16 == 0 && GV_RING_ROW >= 96, "ring rows: whole 16-byte pieces of a 96-byte record");
#define RING_ROW GV_RING_ROW
#define RING_STAGE (16 * RING_ROW)
#define RING_BYTES (THREADS / 32 * GV_RING * RING_STAGE)

#ifndef GV_L2PF
#define GV_L2PF 1  // L2 prefetch size of the weight loads: 0 none, 1 128 B, 2 256 B (A/B: scripts/gpu_int8_gemv.py)
#endif
__device__ __forceinline__ u32 ldg_nc(const u32* p) {  // read-only weights: the neighbouring plane shares the sector
    u32 v;
#if GV_L2PF == 2
    asm volatile("ld.global.nc.L2::256B.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
#elif GV_L2PF == 1
    asm volatile("ld.global.nc.L2::128B.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
#else
    asm volatile("ld.global.nc.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
#endif
    return v;
}

// One block's operands of one thread: its two rows' plane words and weight scales (read-only: may be loaded before
// pdl_wait), its token columns' 32 code bytes and scales (written by the kernel before: after pdl_wait).
struct Blk {
#if !GV_RING
    u32 w[2][6];        // rows g, g + 8: word t of planes 0..5 (with the ring: in shared memory)
#endif
    u16 sw[2];          // rows g, g + 8
    uint4 x[GV_MT][2];  // token 8i + g: bytes 32t .. 32t + 15, 32t + 16 .. 32t + 31
    float sx[GV_MT][2]; // tokens 8i + 2t, 8i + 2t + 1
};

__device__ __forceinline__ void load_w(Blk& k, const u32* wrow0, const u32* wrow1, const u16* srow0, const u16* srow1,
                                       int b, int w_step) {
#if !GV_RING
#pragma unroll
    for (int j = 0; j < 6; ++j) {
        k.w[0][j] = ldg_nc(wrow0 + b * REC_GROUP * 24 + 4 * j);
        k.w[1][j] = ldg_nc(wrow1 + b * REC_GROUP * 24 + 4 * j);
    }
#endif
    k.sw[0] = srow0[b * w_step];
    k.sw[1] = srow1[b * w_step];
}
// Tokens past M read token M - 1 (a column that is never stored): no branch, no zero fill.
__device__ __forceinline__ void load_x(Blk& k, const signed char* xq, const float* sx, int NB,
                                       const int (&xtok)[GV_MT], const int (&stok)[GV_MT][2], int b) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int i = 0; i < GV_MT; ++i) {
        const uint4* src = (const uint4*)(xq + ((size_t)xtok[i] * NB + b) * 128 + 32 * t);
        k.x[i][0] = src[0];
        k.x[i][1] = src[1];
        k.sx[i][0] = sx[(size_t)stok[i][0] * NB + b];
        k.sx[i][1] = sx[(size_t)stok[i][1] * NB + b];
    }
}

#if GV_RING
// One block's 16 x 96 weight bytes of a warp's rows into ring stage `dst`: 96 16-byte pieces, three per lane
// (piece c = lane + 32i: row c / 6, bytes 16 (c % 6) of its record), one commit group per block (empty past the
// warp's range, so that cp.async.wait_group GV_RING - 1 always means "the oldest block has landed").
struct RingCopy {
    const char* src[3];  // the pieces' bytes in block 0
    u32 dst[3];          // their offsets in a stage
};
__device__ __forceinline__ void ring_issue(const RingCopy& c, u32 stage, int b, bool live) {
    if (live) {
#pragma unroll
        for (int i = 0; i < 3; ++i)
            asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n"
                         ::"r"(stage + c.dst[i]), "l"(c.src[i] + (size_t)b * REC_GROUP * 96));
    }
    cp_async_commit();
}
// Thread (g, t)'s twelve plane words of a stage: word t of planes 0..5 of rows g and g + 8. ldmatrix hands thread
// (g, t) word t of row g of each 8 x 16-byte matrix; the matrices are (rows 0..7 | 8..15) x planes, three x4 loads.
__device__ __forceinline__ void ring_read(u32 stage, const u32 (&off)[3], u32 (&r0)[8], u32 (&r1)[8]) {
    ldmatrix_x4(stage + off[0], r0[0], r0[1], r0[2], r0[3]);
    ldmatrix_x4(stage + off[1], r0[4], r0[5], r1[0], r1[1]);
    ldmatrix_x4(stage + off[2], r1[2], r1[3], r1[4], r1[5]);
}
#endif

// qweight (N, NB*24) packed records (rec_index: 16-row groups, block-major: a warp's 16 rows of one block are 1,536
// contiguous bytes); w_scales (N, ws_cols) float16; xq (M, NB*128) and sx (M, NB) from i8_act_quant; bias (N,)
// float32 (bias_f32) or the output dtype, or null; y (M, N) output dtype, debug: (NB, M, N) int32 block
// accumulators. w_step: 1 for weight groups of 128, 0 for one scale per row.
extern "C" __global__ void __launch_bounds__(THREADS, GV_MINB)
i8_gemv(const u32* qweight, const u16* w_scales, const signed char* xq, const float* sx, const void* bias, void* y,
        int M, int N, int NB, int ws_cols, int w_step, int bias_f32) {
    extern __shared__ __align__(16) unsigned char smem[];  // the ring (GV_RING), then the slots
    // (slot, ROWS, COLS): warp 0's running sum, later chunk sums (maybe_unused: a GV_DEBUG_ACC build has no sums)
    [[maybe_unused]] float* slots = (float*)(smem + RING_BYTES);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int rt = warp / GV_KW, kw = warp % GV_KW;
    const int n0 = blockIdx.x * ROWS + 16 * rt;  // N % 16 == 0: a row tile is whole or absent
    const int NC = (NB + GV_CHUNK - 1) / GV_CHUNK;
    const int c_lo = (kw * NC + GV_KW - 1) / GV_KW, c_hi = ((kw + 1) * NC + GV_KW - 1) / GV_KW;
    [[maybe_unused]] const int c1 = (NC + GV_KW - 1) / GV_KW;  // warp 0's end
    const bool live = n0 < N;
    const int b_lo = c_lo * GV_CHUNK, b_hi = live ? min(c_hi * GV_CHUNK, NB) : b_lo;

    const int row0 = min(n0 + g, N - 1), row1 = min(n0 + g + 8, N - 1);
    const u32* wrow0 = qweight + rec_index(row0, 0, NB) * 24 + t;
    const u32* wrow1 = qweight + rec_index(row1, 0, NB) * 24 + t;
    const u16* srow0 = w_scales + (size_t)row0 * ws_cols;
    const u16* srow1 = w_scales + (size_t)row1 * ws_cols;
    int xtok[GV_MT], stok[GV_MT][2];
#pragma unroll
    for (int i = 0; i < GV_MT; ++i) {
        xtok[i] = min(8 * i + g, M - 1);
        stok[i][0] = min(8 * i + 2 * t, M - 1);
        stok[i][1] = min(8 * i + 2 * t + 1, M - 1);
    }

#if GV_RING
    const u32 ring = smem_addr(smem) + warp * GV_RING * RING_STAGE;
    RingCopy rc;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int c = lane + 32 * i, r = c / 6, p = c % 6;
        rc.src[i] = (const char*)qweight + rec_index(min(n0 + r, N - 1), 0, NB) * 96 + 16 * p;
        rc.dst[i] = r * RING_ROW + 16 * p;
    }
    const u32 mi = lane >> 3, ri = lane & 7;  // this lane's ldmatrix row address: matrix mi, row ri
    const u32 off[3] = {ri * RING_ROW + 16 * mi,
                        (mi < 2 ? ri : 8 + ri) * RING_ROW + 16 * (mi < 2 ? 4 + mi : mi - 2),
                        (8 + ri) * RING_ROW + 16 * (2 + mi)};
#pragma unroll
    for (int d = 0; d < GV_RING; ++d) ring_issue(rc, ring + d * RING_STAGE, b_lo + d, b_lo + d < b_hi);
#define STEP GV_RING
#else
#define STEP GV_DEPTH
#endif
    Blk buf[GV_DEPTH];
#pragma unroll
    for (int d = 0; d < GV_DEPTH; ++d)
        if (b_lo + d < b_hi) load_w(buf[d], wrow0, wrow1, srow0, srow1, b_lo + d, w_step);
    pdl_wait();
#pragma unroll
    for (int d = 0; d < GV_DEPTH; ++d)
        if (b_lo + d < b_hi) load_x(buf[d], xq, sx, NB, xtok, stok, b_lo + d);

    // C fragment r of token tile i: row g + 8 (r >> 1), token 8i + 2t + (r & 1)
    [[maybe_unused]] float csum[GV_MT][4], yacc[GV_MT][4];  // unused in a GV_DEBUG_ACC build (it stores no sums)
#pragma unroll
    for (int i = 0; i < GV_MT; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) yacc[i][r] = -0.f;  // -0: the identity of IEEE addition

    for (int base = b_lo; base < b_hi; base += STEP) {
#pragma unroll
        for (int d = 0; d < STEP; ++d) {
            const int b = base + d;
            if (b >= b_hi) break;
            const Blk cur = buf[d % GV_DEPTH];
            if (b + GV_DEPTH < b_hi) {
                load_w(buf[d % GV_DEPTH], wrow0, wrow1, srow0, srow1, b + GV_DEPTH, w_step);
                load_x(buf[d % GV_DEPTH], xq, sx, NB, xtok, stok, b + GV_DEPTH);
            }
            u32 r0[8], r1[8];
#if GV_RING
            cp_async_wait<GV_RING - 1>();  // this lane's pieces of block b have landed
            __syncwarp();                  // and the other lanes' are visible
            ring_read(ring + d * RING_STAGE, off, r0, r1);
            __syncwarp();                  // every lane has read the stage before it is refilled
            ring_issue(rc, ring + d * RING_STAGE, b + GV_RING, b + GV_RING < b_hi);
#if GV_SWPF
            if (t == 0 && b + GV_RING < b_hi) {
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(srow0 + (b + GV_RING) * w_step));
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(srow1 + (b + GV_RING) * w_step));
            }
#endif
#else
#pragma unroll
            for (int j = 0; j < 6; ++j) {
                r0[j] = cur.w[0][j];
                r1[j] = cur.w[1][j];
            }
#endif
            unpack_planes(r0);
            unpack_planes(r1);
            int acc[GV_MT][4];
#pragma unroll
            for (int i = 0; i < GV_MT; ++i) {
                const u32 xl[4] = {cur.x[i][0].x, cur.x[i][0].y, cur.x[i][0].z, cur.x[i][0].w};
                const u32 xh[4] = {cur.x[i][1].x, cur.x[i][1].y, cur.x[i][1].z, cur.x[i][1].w};
#pragma unroll
                for (int s = 0; s < 4; ++s) {
                    const u32 af[4] = {r0[2 * s], r1[2 * s], r0[2 * s + 1], r1[2 * s + 1]};  // a0..a3 of step s
                    if (s == 0) imma_first(acc[i], af, xl[0], xh[0]);
                    else imma(acc[i], af, xl[s], xh[s]);
                }
            }
#if GV_DEBUG_ACC
#pragma unroll
            for (int i = 0; i < GV_MT; ++i)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int tok = 8 * i + 2 * t + (r & 1), row = n0 + g + 8 * (r >> 1);
                    if (tok < M) ((int*)y)[((size_t)b * M + tok) * N + row] = acc[i][r] - MAGIC;
                }
#else
            const float sw0 = half_to_float(cur.sw[0]), sw1 = half_to_float(cur.sw[1]);
            const int kb = d % GV_CHUNK;  // compile-time: ranges start at chunk boundaries, STEP is whole chunks
#pragma unroll
            for (int i = 0; i < GV_MT; ++i)
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    chunk_add_term(csum[i][r], acc[i][r], cur.sx[i][r & 1], (r >> 1) ? sw1 : sw0, kb);
            if (kb == GV_CHUNK - 1 || b == b_hi - 1) {  // the chunk is complete (or K ended)
                if (kw == 0) {
#pragma unroll
                    for (int i = 0; i < GV_MT; ++i)
#pragma unroll
                        for (int r = 0; r < 4; ++r) yacc[i][r] = fadd_ieee(yacc[i][r], csum[i][r]);
                } else {
                    float* sl = slots + ((size_t)(b / GV_CHUNK - c1 + 1) * ROWS + 16 * rt + g) * COLS + 2 * t;
#pragma unroll
                    for (int i = 0; i < GV_MT; ++i) {
                        *(float2*)(sl + 8 * i) = make_float2(csum[i][0], csum[i][1]);
                        *(float2*)(sl + 8 * COLS + 8 * i) = make_float2(csum[i][2], csum[i][3]);
                    }
                }
            }
#endif
        }
    }
    pdl_trigger();  // the next kernel may be scheduled during the reduction and the stores
#if !GV_DEBUG_ACC
    if (kw == 0) {
        float* sl = slots + ((size_t)16 * rt + g) * COLS + 2 * t;
#pragma unroll
        for (int i = 0; i < GV_MT; ++i) {
            *(float2*)(sl + 8 * i) = make_float2(yacc[i][0], yacc[i][1]);
            *(float2*)(sl + 8 * COLS + 8 * i) = make_float2(yacc[i][2], yacc[i][3]);
        }
    }
    __syncthreads();
    // One thread per (token, row): slot 0 (warp 0's prefix), then the later chunks' sums in chunk order.
    const int nslots = NC - c1 + 1;
    for (int o = threadIdx.x; o < ROWS * COLS; o += THREADS) {
        const int tok = o / ROWS, r = o % ROWS, row = blockIdx.x * ROWS + r;
        if (tok >= M || row >= N) continue;
        float v = slots[r * COLS + tok];
        for (int s = 1; s < nslots; ++s) v = fadd_ieee(v, slots[((size_t)s * ROWS + r) * COLS + tok]);
        if (bias) v = fadd_ieee(v, bias_at(bias, bias_f32, row));
        ((u16*)y)[(size_t)tok * N + row] = from_float(v);
    }
#endif
}
