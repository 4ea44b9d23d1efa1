// fprop_tc.cu: the forward convolution y = activation(conv2d(x, w) + bias) on tensor cores
// (mma.sync), for float16 and bfloat16 (float32 accumulation) and float32 in TF32. sm_80+ only
// (mma.cuh): the host compiles this file for those architectures alone (MIN_ARCH in
// gpuconv/backends/kernel_backend.py), and an older GPU runs fprop.cu's kernels in float32.
//
// The same implicit GEMM as fprop_implicit_gemm (fprop.cu), with the same iterators gathering A from
// x and B from w where they lie (NCHW, no transpose kernel) and the same register-staged
// double-buffered main loop as gemm.cuh's implicit_gemm; what differs is the warp's product
// (mma.sync on fragments instead of FFMA on 128-bit shared loads), the shared-memory layout the
// fragments need, and the epilogue (the accumulators are PTX's fragment layout). It is a separate
// loop rather than a policy of implicit_gemm so that the SIMT kernels' code stays as measured.
//
// Tiles: a block computes BM pixels × BN output channels of one group, (BM/WM)·(BN/WN) warps of
// WM×WN, each warp WM/16 × WN/8 mma tiles of 16×8 (m16n8k16 for half types, m16n8k8 for TF32).
//
// Shared memory, both operands double-buffered, 16-bit for half types (the arrays' own bits) and
// float for TF32 (rounded by cvt.rna once, when staged):
//   a_tile[k][m]  A k-major, as fprop's iterator stages it (consecutive threads, consecutive pixels);
//                 half: ldmatrix.x4.trans turns 8×8 blocks of it into row-major A fragments;
//                 TF32: each lane loads its fragment elements (g, t) = (lane / 4, lane % 4).
//   b_tile[n][k]  B n-major (w's own order: consecutive threads, consecutive (c,r,s)); half:
//                 ldmatrix.x4 gives column-major B fragments directly; TF32: direct loads.
// Bank conflicts, worked out (32 banks of 4 bytes): rows are padded by PAD_A = 8 elements and
// PAD_B = 16 bytes.
//   - ldmatrix: each 8-lane phase reads eight 16-byte rows. a_tile rows are (BM + 8)·2 bytes apart:
//     BM = 64 → 36 words, BM = 128 → 68 words, both 4 mod 32, so the 8 rows start at banks 4i: all
//     32 banks once. b_tile rows are (BK + 8)·2 = 80 bytes = 20 words apart (BK = 32): rows at
//     banks 20i mod 32 = {0, 20, 8, 28, 16, 4, 24, 12}, four banks each: all distinct.
//   - TF32 fragment loads: a_tile[k + t][m + g] is word t·(BM + 8) + g, BM + 8 = 8 mod 32: bank
//     8t + g, all 32 distinct; b_tile[n + g][k + t] is word g·(BK + 4) + t, BK + 4 = 4 mod 32:
//     bank 4g + t, all distinct.
//   - staging stores: a warp stores 32 consecutive elements of one row (a_tile: 32 pixels of one
//     k, BM ≥ 32; b_tile: 32 consecutive k of one n, BK = 32): 64 or 128 consecutive bytes.
#include "fprop.cu"
#include "mma.cuh"

template <int Kind>
struct TensorStorage {
    typedef unsigned short type;  // float16 / bfloat16 bits
};
template <>
struct TensorStorage<TENSOR_TF32> {
    typedef float type;
};

template <int Kind, int BM_, int BN_, int BK_, int WM_, int WN_>
struct TensorTile {
    typedef typename TensorStorage<Kind>::type Element;
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
    static constexpr int MMA_K = Kind == TENSOR_TF32 ? 8 : 16;  // k of one mma
    static constexpr int FRAGS_M = WM / 16, FRAGS_N = WN / 8;    // mma tiles of a warp
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int PAD_A = 8, PAD_B = 16 / sizeof(Element);  // see the bank-conflict note
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "tiles nest");
    static_assert(BK == 32 && BM >= 32, "the staging stores' bank-conflict analysis assumes these");
};

template <class Tile>
struct TensorShared {
    typename Tile::Element a_tile[2][Tile::BK][Tile::BM + Tile::PAD_A];
    typename Tile::Element b_tile[2][Tile::BN][Tile::BK + Tile::PAD_B];
};

// A staged element as shared memory holds it: half types unchanged, float rounded to TF32.
__device__ __forceinline__ unsigned short staged(unsigned short v) { return v; }
__device__ __forceinline__ float staged(float v) { return __uint_as_float(to_tf32(v)); }

// Store a thread's staged elements of A (a_tile[k][m]) and B (b_tile[n][k]).
template <class Tile, class MapA, class MapB>
__device__ __forceinline__ void store_tensor_tiles(TensorShared<Tile>& shared, int buffer,
                                                   const typename Tile::Element (&a)[MapA::ELEMS],
                                                   const typename Tile::Element (&b)[MapB::ELEMS]) {
#pragma unroll
    for (int i = 0; i < MapA::ELEMS; i++) shared.a_tile[buffer][MapA::k(i)][MapA::x(i)] = staged(a[i]);
#pragma unroll
    for (int i = 0; i < MapB::ELEMS; i++) shared.b_tile[buffer][MapB::x(i)][MapB::k(i)] = staged(b[i]);
}

// One k-tile of the warp's product on tensor cores: acc[i][j] (the 16×8 mma tile i, j of the warp)
// += A·B over the tile's BK, in k order (deterministic).
template <int Kind, class Tile>
__device__ __forceinline__ void warp_mma_product(float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4],
                                                 const TensorShared<Tile>& shared, int buffer) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = (warp % Tile::WARPS_M) * Tile::WM, warp_n = (warp / Tile::WARPS_M) * Tile::WN;
    const auto& a_tile = shared.a_tile[buffer];
    const auto& b_tile = shared.b_tile[buffer];
#pragma unroll
    for (int kk = 0; kk < Tile::BK; kk += Tile::MMA_K) {
        unsigned a[Tile::FRAGS_M][4], b[Tile::FRAGS_N][2];
        if (Kind == TENSOR_TF32) {
            const int g = lane / 4, t = lane % 4;  // a: (g, t), (g+8, t), (g, t+4), (g+8, t+4)
#pragma unroll
            for (int i = 0; i < Tile::FRAGS_M; i++) {
                const int m = warp_m + i * 16 + g;
                a[i][0] = __float_as_uint(float(a_tile[kk + t][m]));
                a[i][1] = __float_as_uint(float(a_tile[kk + t][m + 8]));
                a[i][2] = __float_as_uint(float(a_tile[kk + t + 4][m]));
                a[i][3] = __float_as_uint(float(a_tile[kk + t + 4][m + 8]));
            }
#pragma unroll
            for (int j = 0; j < Tile::FRAGS_N; j++) {  // b: (k t, n g), (k t+4, n g)
                b[j][0] = __float_as_uint(float(b_tile[warp_n + j * 8 + g][kk + t]));
                b[j][1] = __float_as_uint(float(b_tile[warp_n + j * 8 + g][kk + t + 4]));
            }
        } else {
            // Lane l gives row l % 8 of 8×8 matrix l / 8. A (.trans of k-major rows): matrices
            // (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15) are a0..a3.
            // B (n-major rows): (n 0-7, k 0-7), (n 0-7, k 8-15) are b0, b1 of one 8-column
            // tile, the next two those of the next.
            const int matrix = lane / 8, row = lane % 8;
#pragma unroll
            for (int i = 0; i < Tile::FRAGS_M; i++)
                ldmatrix_x4<true>(a[i], &a_tile[kk + (matrix / 2) * 8 + row]
                                               [warp_m + i * 16 + (matrix % 2) * 8]);
#pragma unroll
            for (int j = 0; j < Tile::FRAGS_N; j += 2) {
                unsigned pair[4];
                ldmatrix_x4<false>(pair, &b_tile[warp_n + j * 8 + (matrix / 2) * 8 + row]
                                                [kk + (matrix % 2) * 8]);
                b[j][0] = pair[0], b[j][1] = pair[1], b[j + 1][0] = pair[2], b[j + 1][1] = pair[3];
            }
        }
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
            for (int j = 0; j < Tile::FRAGS_N; j++) {
                if (Kind == TENSOR_TF32) mma_m16n8k8_tf32(acc[i][j], a[i], b[j], acc[i][j]);
                else mma_m16n8k16<Kind == TENSOR_BFLOAT16>(acc[i][j], a[i], b[j], acc[i][j]);
            }
    }
}

// An element of x, w or bias as float, and a float rounded once to y's type.
__device__ __forceinline__ float to_float(int kind, unsigned short v) {
    return kind == TENSOR_BFLOAT16 ? bfloat16_bits_to_float(v) : half_bits_to_float(v);
}
__device__ __forceinline__ float to_float(int, float v) { return v; }
template <int Kind>
__device__ __forceinline__ typename TensorStorage<Kind>::type rounded(float v) {
    if (Kind == TENSOR_TF32) return v;  // float32 output
    return (unsigned short)((Kind == TENSOR_BFLOAT16 ? pack_bfloat162(v, 0.0f) : pack_half2(v, 0.0f))
                            & 0xffffu);
}

// Bias and activation in float32 and the one rounding to y's type, for each accumulator: c[2h + e]
// of mma tile (i, j) is row i·16 + 8h + g, column j·8 + 2t + e of the warp tile.
template <int Kind, int Activation, class Tile>
__device__ __forceinline__ void store_tensor_epilogue(
        const float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4], typename Tile::Element* y,
        const typename Tile::Element* bias, index_t m_base, index_t M, index_t PQ, int K,
        int k_first, int channels_left) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int warp_m = (warp % Tile::WARPS_M) * Tile::WM, warp_n = (warp / Tile::WARPS_M) * Tile::WN;
#pragma unroll
    for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const index_t m = m_base + warp_m + i * 16 + h * 8 + g;
            if (m >= M) continue;
            const index_t n = m / PQ, pq = m % PQ;
#pragma unroll
            for (int j = 0; j < Tile::FRAGS_N; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int col = warp_n + j * 8 + 2 * t + e;
                    if (col >= channels_left) continue;
                    float v = acc[i][j][2 * h + e];
                    if (bias != nullptr) v += to_float(Kind, bias[k_first + col]);
                    y[(n * K + k_first + col) * PQ + pq] = rounded<Kind>(activate<Activation>(v));
                }
        }
}

template <int Kind, int Activation, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
fprop_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ x,
                  const typename TensorStorage<Kind>::type* __restrict__ w,
                  const typename TensorStorage<Kind>::type* __restrict__ bias,
                  typename TensorStorage<Kind>::type* __restrict__ y,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    typedef typename Tile::Element T;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group), as fprop_implicit_gemm.
    const int k_tiles_n = (K_per_group + BN - 1) / BN;
    const int g = blockIdx.y / k_tiles_n, k_base = (blockIdx.y % k_tiles_n) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    typedef FpropActivationIterator<Tile> IterA;
    typedef FpropFilterIterator<Tile> IterB;
    typedef typename IterA::Map MapA;
    typedef typename IterB::Map MapB;
    IterA a(x + (index_t)g * C_per_group * H * W, m_base + MapA::x(0), M, C, H, W, R, S, Q, PQ,
            stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    IterB b(w + (index_t)g * K_per_group * CRS, k_base, K_per_group, CRS);
    __shared__ __align__(16) TensorShared<Tile> shared;

    // The main loop of gemm.cuh's implicit_gemm: the next k-tile's loads in flight during this
    // one's mma, stored to the other buffer after it; one barrier a k-tile, the last peeled.
    float acc[Tile::FRAGS_M][Tile::FRAGS_N][4] = {};
    T a_staged[MapA::ELEMS], b_staged[MapB::ELEMS];
    const int k_tiles = (CRS + BK - 1) / BK;
    if (k_tiles > 0) {
        a.load(a_staged, CRS);
        b.load(b_staged, CRS);
        store_tensor_tiles<Tile, MapA, MapB>(shared, 0, a_staged, b_staged);
        __syncthreads();
    }
    int buffer = 0;
    for (int tile = 1; tile < k_tiles; tile++) {
        a.advance();
        b.advance();
        a.load(a_staged, CRS - tile * BK);
        b.load(b_staged, CRS - tile * BK);
        warp_mma_product<Kind, Tile>(acc, shared, buffer);
        store_tensor_tiles<Tile, MapA, MapB>(shared, buffer ^ 1, a_staged, b_staged);
        __syncthreads();
        buffer ^= 1;
    }
    if (k_tiles > 0) warp_mma_product<Kind, Tile>(acc, shared, buffer);
    store_tensor_epilogue<Kind, Activation, Tile>(acc, y, bias, m_base, M, PQ, K,
                                                  g * K_per_group + k_base, K_per_group - k_base);
}
