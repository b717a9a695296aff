// The kernel bench's memory-roofline op (flexq_cli/kernel_bench.py, op "stream"): reads n16 16-byte words once and
// does nothing else, so its time is what a layer op that had only its packed weight bytes to read would take in the
// same harness (launch, L2 flushed before it, graph replay). The loads are used, so they are not dead code: each CTA
// writes the wrapping 32-bit sum of the words it read to partial[blockIdx.x], which the bench checks against torch.
//
// SR_UNROLL loads of 16 bytes are in flight per thread (grid-stride, one stride apart); the grid and block sizes
// are the launcher's. Compiled at run time by CuPy RawModule (NVRTC), like the GEMMs.

#ifndef SR_UNROLL
#define SR_UNROLL 4
#endif

extern "C" __global__ void stream_read(const uint4* __restrict__ p, long long n16, unsigned* __restrict__ partial) {
    const long long st = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned a = 0;
    for (; i + (SR_UNROLL - 1) * st < n16; i += SR_UNROLL * st) {
        uint4 v[SR_UNROLL];
#pragma unroll
        for (int u = 0; u < SR_UNROLL; ++u) v[u] = __ldcs(p + i + u * st);  // streaming: evict first
#pragma unroll
        for (int u = 0; u < SR_UNROLL; ++u) a += v[u].x + v[u].y + v[u].z + v[u].w;
    }
    for (; i < n16; i += st) {
        const uint4 v = __ldcs(p + i);
        a += v.x + v.y + v.z + v.w;
    }
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    __shared__ unsigned warp_sum[32];
    if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned s = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += warp_sum[w];
        partial[blockIdx.x] = s;
    }
}
