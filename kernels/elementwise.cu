// elementwise.cu: the bias gradient and the activations with their backwards.
//
// bias_grad: db[k] = Σ_{n,p,q} dy[n,k,p,q], the column sums of fprop's GEMM output (M = N·P·Q
// rows, K columns). One block per k: thread t sums the elements t, t + 256, ... of channel k's
// N·P·Q values (neighbouring threads read neighbouring pixels: coalesced), then the block adds the
// 256 partial sums by a shared-memory tree. Both orders are fixed, so no atomics and bitwise
// reproducible results whatever the schedule.
//
// relu, relu_backward, sigmoid, sigmoid_backward: one thread per element (grid-stride), any
// shape, flattened to n elements.
#include "common.cuh"

// The host launches bias_grad with exactly BIAS_GRAD_THREADS threads a block (a power of two, for
// the tree).
#define BIAS_GRAD_THREADS 256

template <typename T>
__global__ void __launch_bounds__(BIAS_GRAD_THREADS)
bias_grad(const T* __restrict__ dy, T* __restrict__ db, int N, int K, index_t PQ) {
    __shared__ T partial[BIAS_GRAD_THREADS];
    for (index_t k = blockIdx.x; k < K; k += gridDim.x) {
        // Element i of channel k is pixel j of image n, i = n·PQ + j. Thread t starts at i = t and
        // steps i by the block size, that is by step_n images and step_j < PQ pixels, then carries
        // j into n at most once: a constant number of steps per element whatever P·Q (a division
        // per element would be a subroutine call). Both quotients are of numbers below 257, so
        // PQ is capped at 257 for them: 32-bit divisions, once per thread and channel. n is 64-bit:
        // it passes N (up to 2^31 - 1) by up to a step before the loop ends.
        const int pq_capped = PQ > BIAS_GRAD_THREADS ? BIAS_GRAD_THREADS + 1 : (int)PQ;
        const int step_n = BIAS_GRAD_THREADS / pq_capped;
        const index_t step_j = BIAS_GRAD_THREADS - step_n * PQ;
        index_t n = (int)threadIdx.x / pq_capped;
        index_t j = threadIdx.x - n * PQ;
        T acc = T(0);
        while (n < N) {
            acc += dy[(n * K + k) * PQ + j];
            n += step_n;
            j += step_j;
            if (j >= PQ) {
                j -= PQ;
                n++;
            }
        }
        partial[threadIdx.x] = acc;
        __syncthreads();
        for (int half = BIAS_GRAD_THREADS / 2; half > 0; half /= 2) {
            if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) db[k] = partial[0];
        __syncthreads();  // partial[0] is read before the next k overwrites it
    }
}

template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, index_t n) {
    for (index_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = activate<ACTIVATION_RELU>(x[i]);
    }
}

// The gradient of relu at x: 0 where x <= 0, else dy (0 at x = 0 and dy at x = NaN, as PyTorch's
// threshold_backward).
template <typename T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                              index_t n) {
    for (index_t i = global_thread_index(); i < n; i += grid_stride()) {
        dx[i] = x[i] <= T(0) ? T(0) : dy[i];
    }
}

template <typename T>
__global__ void sigmoid_forward(const T* __restrict__ x, T* __restrict__ y, index_t n) {
    for (index_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = activate<ACTIVATION_SIGMOID>(x[i]);
    }
}

// The gradient of sigmoid from its output y = sigmoid(x): dy·y·(1 - y).
template <typename T>
__global__ void sigmoid_backward(const T* __restrict__ dy, const T* __restrict__ y,
                                 T* __restrict__ dx, index_t n) {
    for (index_t i = global_thread_index(); i < n; i += grid_stride()) {
        dx[i] = dy[i] * (T(1) - y[i]) * y[i];  // PyTorch's order: the same rounding
    }
}
