// fprop_tc.cu: the forward convolution y = activation(conv2d(x, w) + bias) on tensor cores, for
// float16 and bfloat16 (float32 accumulation) and float32 in TF32: the implicit GEMM of
// fprop_implicit_gemm (fprop.cu: M = N·P·Q pixels, N = K/groups channels, reduction C·R·S), with
// the same iterators gathering A from x and B from w where they lie (NCHW, no transpose kernel),
// on gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs fprop.cu in float32.
// A block owns BM pixels × BN output channels of one group; FpropTensorEpilogue adds the bias and
// applies the activation in float32, then rounds once to y's type.
#include "fprop.cu"
#include "gemm_tc.cuh"

template <class Tile, int Activation>
struct FpropTensorEpilogue {
    typedef typename Tile::Element T;
    T* y;
    const T* bias;
    index_t m_base, M, PQ;
    int K, k_first, channels_left;  // k_first: the block's first output channel (of all groups)

    __device__ __forceinline__ void operator()(const float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4]) const {
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const index_t m = m_base + Tile::row(i, h);
                if (m >= M) continue;
                const index_t n = m / PQ, pq = m % PQ;
#pragma unroll
                for (int j = 0; j < Tile::FRAGS_N; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int col = Tile::col(j, e);
                        if (col >= channels_left) continue;
                        float v = acc[i][j][2 * h + e];
                        if (bias != nullptr) v += to_float(Tile::KIND, bias[k_first + col]);
                        y[(n * K + k_first + col) * PQ + pq] = rounded<Tile::KIND>(activate<Activation>(v));
                    }
            }
    }
};

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
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group), as fprop_implicit_gemm.
    const int k_tiles = (K_per_group + BN - 1) / BN;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    typedef FpropActivationIterator<Tile> IterA;
    typedef FpropFilterIterator<Tile> IterB;
    IterA a(x + (index_t)g * C_per_group * H * W, m_base + IterA::Map::x(0), M, C, H, W, R, S, Q, PQ,
            stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    IterB b(w + (index_t)g * K_per_group * CRS, k_base, K_per_group, CRS);
    const FpropTensorEpilogue<Tile, Activation> epilogue{y, bias, m_base, M, PQ, K, g * K_per_group + k_base,
                                                         K_per_group - k_base};
    __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
    tensor_implicit_gemm<Tile>(shared, a, b, CRS, epilogue);
}
