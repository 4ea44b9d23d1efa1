// The cp.async helpers of kernels/common.cuh on one block, for tests/test_cp_async.py: when data
// lands, zero-fill, the groups of wait_group N, and the misuses the emulator refuses.
#include "common.cuh"

// Each thread owns Bytes bytes of each of three shared regions and copies them from src (region r
// from src + r·n) in two committed groups and one left open; valid[r][t] == 0 zero-fills its copy.
// seen[step][region] is the thread's view of the regions after each step (n bytes each).
template <int Bytes>
__global__ void copy_in_groups(const unsigned char* __restrict__ src, const int* __restrict__ valid,
                               unsigned char* __restrict__ seen) {
    __shared__ __align__(16) unsigned char regions[3][32 * 16];
    const int t = threadIdx.x, n = blockDim.x * Bytes;
    auto snapshot = [&](int step) {
        for (int r = 0; r < 3; r++)
            for (int b = 0; b < Bytes; b++)
                seen[(step * 3 + r) * n + t * Bytes + b] = regions[r][t * Bytes + b];
    };
    for (int r = 0; r < 3; r++) {
        cp_async_zfill<Bytes>(&regions[r][t * Bytes], src + r * n + t * Bytes, valid[r * blockDim.x + t] != 0);
        if (r < 2) cp_async_commit();
    }
    __syncthreads();
    snapshot(0);  // a barrier does not wait for copies: nothing has landed
    cp_async_wait<1>();
    snapshot(1);  // group 0 (region 0) landed, group 1 in flight
    cp_async_wait<0>();
    snapshot(2);  // groups 0 and 1; region 2's copy is in no committed group yet
    cp_async_commit();
    cp_async_wait<0>();
    snapshot(3);  // everything
}

// out[t] = x[(t + 1) mod blockDim.x] through shared memory: thread t copies x[t] (zero when
// t >= copies), waits for it, and reads its neighbour's element, after a barrier when Barrier.
// Without the barrier the neighbour's copy may not have landed yet: a race.
template <bool Barrier>
__global__ void rotate_through_shared(const float* __restrict__ x, float* __restrict__ out, int copies) {
    __shared__ float row[64];
    const int t = threadIdx.x;
    cp_async_zfill<4>(&row[t], x + t, t < copies);
    cp_async_commit();
    cp_async_wait<0>();
    if (Barrier) __syncthreads();
    out[t] = row[(t + 1) % blockDim.x];
}

// A copy whose destination is global memory (misuse 0) or a shared address 2 bytes off a 4-byte
// boundary (misuse 1): both fault on a GPU.
__global__ void misaddressed_copy(const float* __restrict__ x, float* __restrict__ out, int misuse) {
    __shared__ float row[32];
    void* dst = misuse == 0 ? static_cast<void*>(out) : static_cast<void*>(reinterpret_cast<char*>(row) + 2);
    cp_async_zfill<4>(dst, x, true);
    cp_async_commit();
    cp_async_wait<0>();
    out[threadIdx.x] = row[threadIdx.x];
}
