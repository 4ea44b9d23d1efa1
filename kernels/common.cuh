// common.cuh: the few helpers every gpuconv kernel shares.
//
// Tensors are NCHW and C-contiguous: x[N,C,H,W], w[K,C/groups,R,S], y[N,K,P,Q]. Sizes are passed
// as int (each one < 2^31, checked on the host) but every linear index and offset is 64-bit
// (`index_t`), so a tensor of more than 2^31 elements is addressed correctly.
//
// NVRTC has no system headers and the emulator force-includes kernels/cuda_emu.h (which defines
// GPUCONV_EMULATE), so this file includes nothing. Anything hardware-specific goes behind a small
// __device__ function here, with an emulation path where the host compiler needs one.
#pragma once

typedef long long index_t;

// Activations fused into epilogues: template arguments, so the choice costs nothing per element.
// The host side (gpuconv/backends/kernel_backend.py) names the same numbers.
#define ACTIVATION_NONE 0
#define ACTIVATION_RELU 1
#define ACTIVATION_SIGMOID 2

__host__ __device__ __forceinline__ index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// The first linear index this thread owns and the step to its next one. Kernels loop
//     for (index_t i = global_thread_index(); i < n; i += grid_stride())
// so a grid capped below the hardware limit still covers any n (the host caps the grid size).
__device__ __forceinline__ index_t global_thread_index() {
    return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_stride() { return (index_t)gridDim.x * blockDim.x; }

// exp in the precision of T: expf for float (exp would promote to double on the GPU).
__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }

template <typename T>
__device__ __forceinline__ T sigmoid_t(T v) { return T(1) / (T(1) + exp_t(-v)); }

template <int Activation, typename T>
__device__ __forceinline__ T activate(T v) {
    if (Activation == ACTIVATION_RELU) return v < T(0) ? T(0) : v;  // NaN passes, as torch.relu
    if (Activation == ACTIVATION_SIGMOID) return sigmoid_t(v);
    return v;
}

// One 128-bit load (LDS.128 from shared memory, LDG.128 from global) of 16 consecutive bytes at a
// 16-byte-aligned address: 4 floats or 2 doubles, unpacked into dst.
__device__ __forceinline__ void load_vector16(float* dst, const float* src) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
}
__device__ __forceinline__ void load_vector16(double* dst, const double* src) {
    const double2 v = *reinterpret_cast<const double2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
}
// One 128-bit store (STG.128) of 4 floats or 2 doubles to a 16-byte-aligned address.
__device__ __forceinline__ void store_vector16(float* dst, const float* src) {
    *reinterpret_cast<float4*>(dst) = make_float4(src[0], src[1], src[2], src[3]);
}
__device__ __forceinline__ void store_vector16(double* dst, const double* src) {
    *reinterpret_cast<double2*>(dst) = make_double2(src[0], src[1]);
}

// Whether p is 16-byte aligned (a vector access may use it).
__device__ __forceinline__ bool aligned16(const void* p) {
    return reinterpret_cast<unsigned long long>(p) % 16 == 0;
}
