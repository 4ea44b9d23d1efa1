// Kernels with one planted bug each; tests/test_emulator.py checks that the emulator catches it.
#include "common.cuh"  // cp.async

// The reduction of correct.cu without the barrier inside the loop: a read-after-write race on
// `partial` that forward order may hide (race mode reports it).
__global__ void sum_missing_barrier(const float* x, float* out) {
    __shared__ float partial[64];
    int t = threadIdx.x;
    partial[t] = x[t];
    __syncthreads();
    for (int stride = 32; stride > 0; stride >>= 1) {
        if (t < stride) partial[t] += partial[t + stride];
    }
    if (t == 0) out[0] = partial[0];
}

// Reads one element past the end of x (asan mode: heap-buffer-overflow).
__global__ void read_past_end(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + x[i + 1];
}

// Shifts a row left through an 8x8 tile but reads tile[r][c + 1] for c = 7: inside the object
// (it is tile[r + 1][0]), so only the bounds check sees it.
__global__ void tile_off_by_one(const float* x, float* out) {
    __shared__ float tile[8][8];
    int r = threadIdx.y, c = threadIdx.x;
    tile[r][c] = x[r * 8 + c];
    __syncthreads();
    out[r * 8 + c] = tile[r][c + 1];
}

// Two barriers on the two sides of a branch: undefined on the GPU.
__global__ void divergent_barrier(float* out) {
    int t = threadIdx.x;
    if (t < 16) {
        __syncthreads();
        out[t] = 1.0f;
    } else {
        __syncthreads();
        out[t] = 2.0f;
    }
}

// Half of the shared array is never written, but all of it is read.
__global__ void read_uninitialised(const float* x, float* out) {
    __shared__ float staged[64];
    int t = threadIdx.x;
    if (t < 32) staged[t] = x[t];
    __syncthreads();
    out[t] = staged[t];
}

// A warp reduction whose mask names only the low half of the warp.
__global__ void shuffle_wrong_mask(const float* x, float* out) {
    float v = x[threadIdx.x];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, offset);
    out[threadIdx.x] = v;
}

// Block 0 waits for a flag that block 1 sets: blocks run one after another here (and need not be
// co-resident on a GPU), so this never finishes.
__global__ void spin_on_other_block(int* flag, int* out) {
    if (blockIdx.x == 1) atomicExch(flag, 1);
    else while (atomicAdd(flag, 0) == 0) {}
    out[blockIdx.x] = 1;
}

// Lane 0 waits at __syncthreads while lanes 1-31 wait for it in a shuffle: nothing can run.
__global__ void barrier_versus_shuffle(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_sync(0xffffffffu, v, 0);
    out[threadIdx.x] = v;
}

// The two bugs above inside templates: GCC places a template's static locals in COMDAT sections
// whatever section attribute they carry, so the emulator must find them in the symbol table to
// fill them at block start and watch them for races.
template <int THREADS>
__global__ void sum_missing_barrier_in_template(const float* x, float* out) {
    __shared__ float partial[THREADS];
    int t = threadIdx.x;
    partial[t] = x[t];
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) partial[t] += partial[t + stride];
    }
    if (t == 0) out[0] = partial[0];
}

template <class T>
__global__ void read_uninitialised_in_template(const T* x, T* out) {
    __shared__ T staged[64];
    int t = threadIdx.x;
    if (t < 32) staged[t] = x[t];
    __syncthreads();
    out[t] = staged[t];
}

// out[t] = x[(t + 1) mod blockDim.x] staged by cp.async. WaitForCopy = false is the bug: the copy is
// committed but never waited for, and the barrier alone does not make it land, so the neighbour's
// element is still in flight (NaN under the emulator, stale data on a GPU). <true> is its correct
// twin.
template <bool WaitForCopy>
__global__ void stage_without_cp_async_wait(const float* x, float* out) {
    __shared__ float row[64];
    const int t = threadIdx.x;
    cp_async_zfill<4>(&row[t], x + t, true);
    cp_async_commit();
    if (WaitForCopy) cp_async_wait<0>();
    __syncthreads();
    out[t] = row[(t + 1) % blockDim.x];
}
