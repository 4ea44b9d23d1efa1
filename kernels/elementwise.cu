// elementwise.cu: the bias gradient and the activations with their backwards.
//
// bias_grad: db[k] = Σ_{n,p,q} dy[n,k,p,q], the column sums of fprop's GEMM output (M = N·P·Q
// rows, K columns). One thread per k sums its N·P·Q values in a fixed order (n, then the P·Q
// contiguous pixels): no atomics, bitwise reproducible.
//
// relu, relu_backward, sigmoid, sigmoid_backward: one thread per element (grid-stride), any
// shape, flattened to n elements.
#include "common.cuh"

template <typename T>
__global__ void bias_grad(const T* __restrict__ dy, T* __restrict__ db, int N, int K, index_t PQ) {
    for (index_t k = global_thread_index(); k < K; k += grid_stride()) {
        T acc = T(0);
        for (int n = 0; n < N; n++) {
            const T* dy_nk = dy + ((index_t)n * K + k) * PQ;
            for (index_t j = 0; j < PQ; j++) acc += dy_nk[j];
        }
        db[k] = acc;
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
