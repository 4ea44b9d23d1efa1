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

// ---- cp.async (sm_80 and newer): global → shared copies that bypass the registers ------------
// cp_async_zfill<B>(dst, src, valid) starts copying B bytes (4, 8 or 16; dst and src B-aligned) from
// global src to shared dst, or writes B zero bytes when !valid (src-size 0: src is not read). The
// copy lands at an unknown time: it is visible to this thread after cp_async_wait<N>() covers its
// group, and to the block after that wait and a __syncthreads. cp_async_commit() closes this
// thread's current group; cp_async_wait<N>() waits until at most the N newest committed groups are
// still in flight. Templates and inline functions only, so a source compiled for sm_75 that does not
// use them emits none of these instructions. The emulator (GPUCONV_EMULATE) lands a group's bytes
// only at the wait that covers it, the destination holding NaN until then, so a missing wait reads
// NaN on the CPU as it reads stale data on a GPU.
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* shared_dst, const void* global_src, bool valid) {
    static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::async_copy(shared_dst, global_src, Bytes, valid ? Bytes : 0, __FILE__, __LINE__);
#else
    const unsigned dst = (unsigned)__cvta_generic_to_shared(shared_dst);
    const int src_bytes = valid ? Bytes : 0;
    // .cg (L2 only) takes 16 bytes alone; .ca (L1 too) all three sizes.
    if (Bytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(global_src),
                     "r"(src_bytes));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(dst), "l"(global_src),
                     "n"(Bytes), "r"(src_bytes));
    }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::async_copy_commit();
#else
    asm volatile("cp.async.commit_group;" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::async_copy_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
