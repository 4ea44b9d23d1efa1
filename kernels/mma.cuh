// mma.cuh: the tensor-core vocabulary of the tiled kernels — rounding to the input types, ldmatrix
// and mma.sync — each one small device function whose GPU body is one PTX instruction. sm_80 and
// newer only (cvt to bf16x2 and TF32 and the bf16/TF32 mma shapes need it): a source that includes
// this file is compiled for those architectures, and an sm_75 GPU runs the SIMT kernels.
//
// Fragments are PTX's: a 32-bit register holds one float (TF32) or two 16-bit values (float16,
// bfloat16; the lower column or row in the low half). Which lane holds which element is fixed by
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 / m16n8k8"); with g = lane / 4, t = lane % 4 the
// accumulators c0..c3 hold (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1) of the 16×8 tile.
//
// Under the emulator (GPUCONV_EMULATE) each helper calls the runtime, where mma and ldmatrix are
// warp collectives that follow those layouts to the letter, so a wrong fragment index gives the
// same wrong answer on the CPU as on a GPU, and the conversions round as the hardware does.
#pragma once
#include "common.cuh"

// Two floats rounded to float16 (cvt.rn: nearest even), packed lo | hi << 16.
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
#ifdef GPUCONV_EMULATE
    return unsigned(::gpuconv_emu::float_to_half(lo)) | unsigned(::gpuconv_emu::float_to_half(hi)) << 16;
#else
    unsigned packed;
    // cvt.rn.f16x2.f32 d, a, b puts a in the upper half.
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    return packed;
#endif
}

// Two floats rounded to bfloat16 (cvt.rn: nearest even), packed lo | hi << 16.
__device__ __forceinline__ unsigned pack_bfloat162(float lo, float hi) {
#ifdef GPUCONV_EMULATE
    return unsigned(::gpuconv_emu::float_to_bfloat16(lo)) |
           unsigned(::gpuconv_emu::float_to_bfloat16(hi)) << 16;
#else
    unsigned packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    return packed;
#endif
}

// A float rounded to TF32 (cvt.rna: nearest, ties away from zero): 10 mantissa bits, as float bits.
__device__ __forceinline__ unsigned to_tf32(float v) {
#ifdef GPUCONV_EMULATE
    return ::gpuconv_emu::float_to_tf32(v);
#else
    unsigned rounded;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(rounded) : "f"(v));
    return rounded;
#endif
}

// The input kinds of the tensor-core kernels (their first template argument; the host's
// TENSOR_KINDS names the same numbers): float16 and bfloat16 stored as 16-bit patterns
// (unsigned short: NVRTC has no cuda_fp16.h here), the TF32 kinds as float.
#define TENSOR_FLOAT16 0
#define TENSOR_BFLOAT16 1
#define TENSOR_TF32 2
#define TENSOR_TF32X3 3  // float32 as a TF32 high part and a TF32 remainder, three products

// A float16 or bfloat16 bit pattern as float (exact: float holds every value of both).
__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
#ifdef GPUCONV_EMULATE
    return ::gpuconv_emu::half_to_float(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}
__device__ __forceinline__ float bfloat16_bits_to_float(unsigned short b) {
    return __uint_as_float(unsigned(b) << 16);  // bfloat16 is float's upper half
}

// Two words' 16-bit halves regrouped (prmt): the low halves (a's in the low half of the result),
// and the high halves.
__device__ __forceinline__ unsigned low_halves(unsigned a, unsigned b) {
#ifdef GPUCONV_EMULATE
    return (a & 0xffffu) | b << 16;
#else
    return __byte_perm(a, b, 0x5410);
#endif
}
__device__ __forceinline__ unsigned high_halves(unsigned a, unsigned b) {
#ifdef GPUCONV_EMULATE
    return a >> 16 | (b & 0xffff0000u);
#else
    return __byte_perm(a, b, 0x7632);
#endif
}

// ldmatrix.x4 / .x4.trans: four 8×8 matrices of 16-bit values from shared memory; lanes 8i..8i+7
// give the 16-byte-aligned addresses of matrix i's eight rows, lane l receives in r[i] row l/4,
// columns 2(l%4) and 2(l%4)+1 of matrix i (of its transpose with .trans).
template <bool Trans>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::warp_ldmatrix(4, Trans, row, r, __FILE__, __LINE__);
#else
    const unsigned address = (unsigned)__cvta_generic_to_shared(row);
    if (Trans) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    }
#endif
}

// ldmatrix.x2.trans: two 8×8 matrices, rows from lanes 0-15 (the others' addresses unused), as
// ldmatrix_x4 (wgrad's halo tile: the ninth tap's B fragment alone).
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::warp_ldmatrix(2, true, row, r, __FILE__, __LINE__);
#else
    const unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(address));
#endif
}

// d = a·b + c for one warp: a 16×16 (float16 or bfloat16, row-major fragments), b 16×8
// (column-major), c and d 16×8 float.
template <bool BFloat16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                             const float (&c)[4]) {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::warp_mma(BFloat16 ? ::gpuconv_emu::kMmaBf16 : ::gpuconv_emu::kMmaF16, a, b, c, d,
                            __FILE__, __LINE__);
#else
    if (BFloat16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                     : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                       "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                     : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                       "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
    }
#endif
}

// d = a·b + c for one warp in TF32: a 16×8, b 8×8, c and d 16×8 float; each a and b register holds
// one TF32 value (to_tf32).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                 const float (&c)[4]) {
#ifdef GPUCONV_EMULATE
    ::gpuconv_emu::warp_mma(::gpuconv_emu::kMmaTf32, a, b, c, d, __FILE__, __LINE__);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}
