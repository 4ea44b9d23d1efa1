// Tensor-core helpers of kernels/mma.cuh on one warp, for tests/test_tensor_cores.py: kernels that
// must match NumPy, then planted bugs the emulator must show.
#include "mma.cuh"

// Rounds x (n floats) to float16, bfloat16 and TF32 as the fragments hold them; the 16-bit
// results come back as the low halves of packed registers.
__global__ void round_inputs(const float* __restrict__ x, unsigned* __restrict__ half,
                             unsigned* __restrict__ bfloat, unsigned* __restrict__ tf32, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        half[i] = pack_half2(x[i], 0.0f);
        bfloat[i] = pack_bfloat162(x[i], 0.0f);
        tf32[i] = to_tf32(x[i]);
    }
}

// d[16][8] = a[16][K] b[K][8] + c[16][8] (row-major floats in global memory) by one mma of one
// warp, each lane gathering its fragment registers straight from global memory by the PTX layout.
// Kind: 0 float16 (K = 16), 1 bfloat16 (K = 16), 2 TF32 (K = 8).
template <int Kind>
__global__ void mma_from_global(const float* __restrict__ a, const float* __restrict__ b,
                                const float* __restrict__ c, float* __restrict__ d) {
    constexpr int K = Kind == 2 ? 8 : 16;
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned ra[4], rb[2];
    if (Kind == 2) {
        ra[0] = to_tf32(a[g * K + t]), ra[1] = to_tf32(a[(g + 8) * K + t]);
        ra[2] = to_tf32(a[g * K + t + 4]), ra[3] = to_tf32(a[(g + 8) * K + t + 4]);
        rb[0] = to_tf32(b[t * 8 + g]), rb[1] = to_tf32(b[(t + 4) * 8 + g]);
    } else {
        auto pack = [](float lo, float hi) { return Kind == 1 ? pack_bfloat162(lo, hi) : pack_half2(lo, hi); };
        ra[0] = pack(a[g * K + 2 * t], a[g * K + 2 * t + 1]);
        ra[1] = pack(a[(g + 8) * K + 2 * t], a[(g + 8) * K + 2 * t + 1]);
        ra[2] = pack(a[g * K + 2 * t + 8], a[g * K + 2 * t + 9]);
        ra[3] = pack(a[(g + 8) * K + 2 * t + 8], a[(g + 8) * K + 2 * t + 9]);
        rb[0] = pack(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
        rb[1] = pack(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
    }
    const float rc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                         c[(g + 8) * 8 + 2 * t + 1]};
    float rd[4];
    if (Kind == 2) mma_m16n8k8_tf32(rd, ra, rb, rc);
    else mma_m16n8k16<Kind == 1>(rd, ra, rb, rc);
    d[g * 8 + 2 * t] = rd[0], d[g * 8 + 2 * t + 1] = rd[1];
    d[(g + 8) * 8 + 2 * t] = rd[2], d[(g + 8) * 8 + 2 * t + 1] = rd[3];
}

// d[16][16] = a[16][16] b[16][16] in float16 through shared memory: a's fragments by ldmatrix.x4,
// b's by ldmatrix.x4.trans (b is stored k-major, its fragments are column-major), two mma for the
// two 8-column halves of d. Without the __syncwarp (SyncWarp = false: a planted bug) lanes read rows
// that other lanes wrote with nothing ordering the two: a race.
template <bool SyncWarp>
__global__ void mma_through_ldmatrix(const float* __restrict__ a, const float* __restrict__ b,
                                     float* __restrict__ d) {
    __shared__ __align__(16) unsigned short a_tile[16][8 * 2];  // 16 rows of 16 halves
    __shared__ __align__(16) unsigned short b_tile[16][8 * 2];
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    for (int i = lane; i < 16 * 16; i += 32) {
        a_tile[i / 16][i % 16] = (unsigned short)(pack_half2(a[i], 0.0f) & 0xffffu);
        b_tile[i / 16][i % 16] = (unsigned short)(pack_half2(b[i], 0.0f) & 0xffffu);
    }
    if (SyncWarp) __syncwarp();
    // Lane l gives row l % 8 of matrix l / 8; a's matrices are (rows 0-7 | 8-15) × (cols 0-7 | 8-15)
    // in the order a0..a3 wants; b's are (k 0-7 | 8-15) × (n 0-7 | 8-15), k first.
    const int matrix = lane / 8, row = lane % 8;
    unsigned ra[4], rb[4];
    ldmatrix_x4<false>(ra, &a_tile[(matrix % 2) * 8 + row][(matrix / 2) * 8]);
    ldmatrix_x4<true>(rb, &b_tile[(matrix % 2) * 8 + row][(matrix / 2) * 8]);
    for (int half = 0; half < 2; half++) {
        const unsigned fragment_b[2] = {rb[2 * half], rb[2 * half + 1]};
        const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        float rd[4];
        mma_m16n8k16<false>(rd, ra, fragment_b, zero);
        d[g * 16 + half * 8 + 2 * t] = rd[0], d[g * 16 + half * 8 + 2 * t + 1] = rd[1];
        d[(g + 8) * 16 + half * 8 + 2 * t] = rd[2], d[(g + 8) * 16 + half * 8 + 2 * t + 1] = rd[3];
    }
}

// ---- planted bugs ----

// Stores the accumulators with the lane roles swapped ((t, g) for (g, t)): a wrong fragment
// mapping gives a wrong result, on the CPU as on a GPU.
__global__ void mma_wrong_fragment(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    const unsigned ra[4] = {to_tf32(a[g * 8 + t]), to_tf32(a[(g + 8) * 8 + t]),
                            to_tf32(a[g * 8 + t + 4]), to_tf32(a[(g + 8) * 8 + t + 4])};
    const unsigned rb[2] = {to_tf32(b[t * 8 + g]), to_tf32(b[(t + 4) * 8 + g])};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float rd[4];
    mma_m16n8k8_tf32(rd, ra, rb, zero);
    d[t * 8 + 2 * g % 8] = rd[0], d[t * 8 + (2 * g + 1) % 8] = rd[1];
    d[(t + 8) * 8 + 2 * g % 8] = rd[2], d[(t + 8) * 8 + (2 * g + 1) % 8] = rd[3];
}

// ldmatrix with row addresses 2 bytes off the 16-byte alignment the PTX ISA requires.
__global__ void ldmatrix_misaligned(unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned short tile[32][16];
    const int lane = threadIdx.x;
    for (int i = 0; i < 16; i++) tile[lane][i] = (unsigned short)i;
    __syncwarp();
    unsigned r[4];
    ldmatrix_x4<false>(r, &tile[lane][1]);
    out[lane] = r[0];
}
