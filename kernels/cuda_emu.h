// cuda_emu.h: lets an unmodified .cu file compile as C++ for the gpuconv CPU emulator.
//
// Force-included by gpuconv.emulate (g++ -x c++ -include cuda_emu.h); never include it from a kernel.
// Every CUDA thread runs as a fiber of the runtime (gpuconv/emulate/runtime.cpp), so threadIdx and
// friends are read from the running fiber, and every barrier or warp intrinsic is a rendezvous that
// may switch fibers. Kernels may test GPUCONV_EMULATE to pick an emulation path for constructs that
// have no C++ spelling (inline PTX: mma, ldmatrix, cp.async).
#pragma once

#include <math.h>  // the C++ wrapper: brings the float overloads (exp(float), ...) to global scope

#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu_runtime.h"

#define GPUCONV_EMULATE 1

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
// alignas() is rejected where CUDA puts __align__ (between storage class and type).
#define __align__(n) __attribute__((aligned(n)))
// Static storage, found after linking in the symbol table (function-local statics, and whatever
// lands in the named section: GCC ignores the section of a template function's static locals), so
// the runtime can refill it at every block start and the race detector and profile know it. `used`
// keeps GCC from assuming that an opaque call (a barrier, a fiber switch) cannot modify it.
// `extern __shared__` is rewritten by the Python side before compiling (see gpuconv.emulate),
// because `extern` cannot be combined with `static`.
#define __shared__ static __attribute__((section("gpuconv_shared"), used))

using gpuconv_emu::dim3;
using gpuconv_emu::uint3;

#define threadIdx (::gpuconv_emu::current_thread()->thread_idx)
#define blockIdx (::gpuconv_emu::current_thread()->block_idx)
#define blockDim (::gpuconv_emu::current_thread()->block_dim)
#define gridDim (::gpuconv_emu::current_thread()->grid_dim)
constexpr int warpSize = 32;

// ---- barriers and warp intrinsics (macros so that reports name the caller's line) ------------
#define __syncthreads() ((void)::gpuconv_emu::syncthreads(::gpuconv_emu::kReduceNone, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) ::gpuconv_emu::syncthreads(::gpuconv_emu::kReduceCount, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::gpuconv_emu::syncthreads(::gpuconv_emu::kReduceAnd, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::gpuconv_emu::syncthreads(::gpuconv_emu::kReduceOr, (p), __FILE__, __LINE__)
// __VA_OPT__, not ##__VA_ARGS__: under -std=c++17 (not gnu++17) the comma of an empty list stays.
#define __syncwarp(...) ::gpuconv_emu::syncwarp_at(__FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(...) ::gpuconv_emu::shuffle_at(__FILE__, __LINE__, ::gpuconv_emu::kShflIdx, __VA_ARGS__)
#define __shfl_up_sync(...) ::gpuconv_emu::shuffle_at(__FILE__, __LINE__, ::gpuconv_emu::kShflUp, __VA_ARGS__)
#define __shfl_down_sync(...) ::gpuconv_emu::shuffle_at(__FILE__, __LINE__, ::gpuconv_emu::kShflDown, __VA_ARGS__)
#define __shfl_xor_sync(...) ::gpuconv_emu::shuffle_at(__FILE__, __LINE__, ::gpuconv_emu::kShflXor, __VA_ARGS__)
#define __ballot_sync(mask, p) ::gpuconv_emu::warp_ballot((mask), (p), __FILE__, __LINE__)
#define __any_sync(mask, p) (::gpuconv_emu::warp_ballot((mask), (p), __FILE__, __LINE__) != 0u)
#define __all_sync(mask, p) (::gpuconv_emu::warp_ballot((mask), !(p), __FILE__, __LINE__) == 0u)
#define __activemask() ::gpuconv_emu::active_mask()

namespace gpuconv_emu {

inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
    syncwarp(mask, file, line);
}

// One shuffle of any 1-8 byte value (CUDA splits 8-byte values into two 32-bit shuffles: same result).
template <class T>
inline T shuffle_at(const char* file, int line, ShuffleMode mode, unsigned mask, T value,
                    int lane_or_delta, int width = 32) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a 1-8 byte value");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = warp_shuffle(mask, bits, mode, lane_or_delta, width, file, line);
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

}  // namespace gpuconv_emu

// ---- memory fences, loads, atomics ------------------------------------------------------------
// Fibers of a block share one OS thread and switch only inside the runtime, so a fence is just a
// compiler barrier; atomics are still real atomics so that blocks may later run on several threads.
#define __threadfence() __asm__ __volatile__("" ::: "memory")
#define __threadfence_block() __asm__ __volatile__("" ::: "memory")

template <class T>
inline T __ldg(const T* p) { return *p; }

// Not instrumented in race mode: atomics are never hazards (as in compute-sanitizer's racecheck).
// Profile mode counts each atomic as one access of its caller's line: out of line, so that the
// return address is in the caller.
#ifdef GPUCONV_EMULATE_PROFILE
#define GPUCONV_EMU_ATOMIC __attribute__((no_sanitize_thread, noinline))
#define GPUCONV_EMU_PROFILE_ATOMIC(p) ::gpuconv_emu::profile_atomic((p), sizeof(*(p)), __builtin_return_address(0))
#else
#define GPUCONV_EMU_ATOMIC __attribute__((no_sanitize_thread)) inline
#define GPUCONV_EMU_PROFILE_ATOMIC(p) ((void)0)
#endif

#define GPUCONV_EMU_INT_ATOMICS(T)                                                                      \
    GPUCONV_EMU_ATOMIC T atomicAdd(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }  \
    GPUCONV_EMU_ATOMIC T atomicSub(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }  \
    GPUCONV_EMU_ATOMIC T atomicAnd(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }  \
    GPUCONV_EMU_ATOMIC T atomicOr(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }    \
    GPUCONV_EMU_ATOMIC T atomicXor(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }  \
    GPUCONV_EMU_ATOMIC T atomicExch(T* p, T v) { GPUCONV_EMU_PROFILE_ATOMIC(p); return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); } \
    GPUCONV_EMU_ATOMIC T atomicCAS(T* p, T expected, T desired) {                                     \
        GPUCONV_EMU_PROFILE_ATOMIC(p);                                                                 \
        __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
        return expected;                                                                               \
    }                                                                                                  \
    GPUCONV_EMU_ATOMIC T atomicMax(T* p, T v) {                                                       \
        GPUCONV_EMU_PROFILE_ATOMIC(p);                                                                 \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                  \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                    \
    }                                                                                                  \
    GPUCONV_EMU_ATOMIC T atomicMin(T* p, T v) {                                                       \
        GPUCONV_EMU_PROFILE_ATOMIC(p);                                                                 \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                  \
        while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                    \
    }
GPUCONV_EMU_INT_ATOMICS(int)
GPUCONV_EMU_INT_ATOMICS(unsigned)
GPUCONV_EMU_INT_ATOMICS(unsigned long long)
#undef GPUCONV_EMU_INT_ATOMICS

// Floating-point add as a compare-and-swap loop on the bit pattern, like sm_5x's double atomicAdd.
template <class F, class Bits>
__attribute__((no_sanitize_thread)) inline F gpuconv_emu_atomic_add_float(F* p, F v) {
    Bits* bits = reinterpret_cast<Bits*>(p);
    Bits old = __atomic_load_n(bits, __ATOMIC_RELAXED), sum;
    F old_value;
    do {
        std::memcpy(&old_value, &old, sizeof(F));
        F new_value = old_value + v;
        std::memcpy(&sum, &new_value, sizeof(F));
    } while (!__atomic_compare_exchange_n(bits, &old, sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old_value;
}
GPUCONV_EMU_ATOMIC float atomicAdd(float* p, float v) {
    GPUCONV_EMU_PROFILE_ATOMIC(p);
    return gpuconv_emu_atomic_add_float<float, uint32_t>(p, v);
}
GPUCONV_EMU_ATOMIC double atomicAdd(double* p, double v) {
    GPUCONV_EMU_PROFILE_ATOMIC(p);
    return gpuconv_emu_atomic_add_float<double, uint64_t>(p, v);
}
GPUCONV_EMU_ATOMIC float atomicExch(float* p, float v) {
    GPUCONV_EMU_PROFILE_ATOMIC(p);
    float old;
    __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
    return old;
}

// ---- vector types (CUDA's sizes and alignments) -----------------------------------------------
#define GPUCONV_EMU_VEC2(T, name, align)                                                          \
    struct __attribute__((aligned(align))) name { T x, y; };                                       \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define GPUCONV_EMU_VEC3(T, name)                                                                  \
    struct name { T x, y, z; };                                                                    \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define GPUCONV_EMU_VEC4(T, name, align)                                                          \
    struct __attribute__((aligned(align))) name { T x, y, z, w; };                                 \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
GPUCONV_EMU_VEC2(float, float2, 8)
GPUCONV_EMU_VEC3(float, float3)
GPUCONV_EMU_VEC4(float, float4, 16)
GPUCONV_EMU_VEC2(double, double2, 16)
GPUCONV_EMU_VEC3(double, double3)
GPUCONV_EMU_VEC4(double, double4, 16)  // CUDA 13 aligns double4 to 16 (double4_16a) by default
GPUCONV_EMU_VEC2(int, int2, 8)
GPUCONV_EMU_VEC3(int, int3)
GPUCONV_EMU_VEC4(int, int4, 16)
GPUCONV_EMU_VEC2(unsigned, uint2, 8)
GPUCONV_EMU_VEC4(unsigned, uint4, 16)
#undef GPUCONV_EMU_VEC2
#undef GPUCONV_EMU_VEC3
#undef GPUCONV_EMU_VEC4
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---- math beyond <math.h> ----------------------------------------------------------------------
// CUDA's min/max accept mixed argument types (common type) and, for floats, ignore a NaN like fminf.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
    using T = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<T>::value) return fmin(T(a), T(b));
    else return T(b) < T(a) ? T(b) : T(a);
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
    using T = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<T>::value) return fmax(T(a), T(b));
    else return T(a) < T(b) ? T(b) : T(a);
}
// The fast intrinsics are approximations on the GPU; here they are exact: compare with tolerances.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline double __longlong_as_double(long long v) { double f; std::memcpy(&f, &v, 8); return f; }
inline long long __double_as_longlong(double f) { long long v; std::memcpy(&v, &f, 8); return v; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned __brev(unsigned v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(v);
}
inline int __mul24(int a, int b) { return int((long long)(a << 8 >> 8) * (b << 8 >> 8)); }
inline int __umulhi(unsigned a, unsigned b) { return int((unsigned long long)a * b >> 32); }

// ---- the glue between a kernel and Python ------------------------------------------------------

namespace gpuconv_emu {

// One parameter's kind and size, e.g. "p8" (pointer), "i4" (int), "f8" (double), "s24" (struct):
// Python checks every argument against these, because a mismatch is silently wrong on a GPU.
template <class T>
constexpr char parameter_kind() {
    if constexpr (std::is_pointer<T>::value) return 'p';
    else if constexpr (std::is_same<T, bool>::value) return 'b';
    else if constexpr (std::is_floating_point<T>::value) return 'f';
    else if constexpr (std::is_enum<T>::value) return parameter_kind<std::underlying_type_t<T>>();
    else if constexpr (std::is_integral<T>::value) return std::is_signed<T>::value ? 'i' : 'u';
    else return 's';
}

template <class... P>
const char* signature(void (*)(P...)) {
    static char text[16 * sizeof...(P) + 1];
    char* out = text;
    ((out += std::snprintf(out, 16, "%s%c%zu", out == text ? "" : ",",
                           parameter_kind<std::decay_t<P>>(), sizeof(std::decay_t<P>))),
     ...);
    return text;
}

template <class... P>
struct KernelCall {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> arguments;

    static void run_thread(void* self) {
        auto* call = static_cast<KernelCall*>(self);
        std::apply(call->kernel, call->arguments);  // each thread gets its own copies, as on a GPU
    }
};

// args[i] points at the bytes of argument i (Python checked kinds and sizes against signature()).
template <class... P>
int launch(const LaunchConfig* config, void (*kernel)(P...), void** args, char* error, size_t error_size) {
    KernelCall<P...> call{kernel, {}};
    std::apply([&](auto&... argument) {
        size_t i = 0;
        ((std::memcpy(&argument, args[i++], sizeof(argument))), ...);
    }, call.arguments);
    return run_grid(config, &KernelCall<P...>::run_thread, &call, error, error_size);
}

}  // namespace gpuconv_emu
