// dgrad_tc.cu: the input gradient dx = conv2d_input(dy, w) (+ bias; also conv_transpose2d) on
// tensor cores, for float16 and bfloat16 (float32 accumulation) and float32 in TF32: the implicit
// GEMM of dgrad_implicit_gemm (dgrad.cu: one launch for every stride phase, blockIdx.z the phase,
// M = the phase's N·Hp·Wp pixels, N = C/groups channels, reduction over K/groups × the phase's taps
// only), with the same iterators reading dy and w where they lie (NCHW, no transpose kernel), on
// gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs dgrad.cu in float32.
// DgradTensorEpilogue adds the bias in float32 and rounds once to dx's type. Assumes, as
// dgrad_implicit_gemm, a phase's N·Hp·Wp pixels + BM < 2^31 (checked on the host).
#include "dgrad.cu"
#include "gemm_tc.cuh"

template <class Tile>
struct DgradTensorEpilogue {
    typedef typename Tile::Element T;
    T* dx;
    const T* bias;
    int m_base, M, Hp, Wp, phase_h, phase_w, stride_h, stride_w, H, W, C, c_first, channels_left;

    // A phase with no taps still lands here (acc = 0): its pixels get the bias alone.
    __device__ __forceinline__ void operator()(const float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4]) const {
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m_base + Tile::row(i, h);
                if (m >= M) continue;
                const int n = m / (Hp * Wp), ij = m % (Hp * Wp);
                const index_t hw = (index_t)(phase_h + ij / Wp * stride_h) * W + phase_w + ij % Wp * stride_w;
#pragma unroll
                for (int j = 0; j < Tile::FRAGS_N; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int col = Tile::col(j, e);
                        if (col >= channels_left) continue;
                        const int c = c_first + col;
                        float v = acc[i][j][2 * h + e];
                        if (bias != nullptr) v += to_float(Tile::KIND, bias[c]);
                        dx[((index_t)n * C + c) * H * W + hw] = rounded<Tile::KIND>(v);
                    }
            }
    }
};

template <int Kind, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
dgrad_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ dy,
                  const typename TensorStorage<Kind>::type* __restrict__ w,
                  const typename TensorStorage<Kind>::type* __restrict__ bias,
                  typename TensorStorage<Kind>::type* __restrict__ dx,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    const int C_per_group = C / groups, K_per_group = K / groups;
    // The phase and its pixels, as dgrad_implicit_gemm.
    const int phase_h = blockIdx.z / stride_w, phase_w = blockIdx.z % stride_w;
    const int Hp = (H - phase_h + stride_h - 1) / stride_h, Wp = (W - phase_w + stride_w - 1) / stride_w;
    const int M = N * Hp * Wp, m_base = blockIdx.x * BM;
    if (m_base >= M) return;  // the grid spans the largest phase; the whole block leaves together
    const PhaseTaps tap_r = phase_taps(phase_h, pad_top, stride_h, dil_h, R);
    const PhaseTaps tap_s = phase_taps(phase_w, pad_left, stride_w, dil_w, S);
    const int c_tiles = (C_per_group + BN - 1) / BN;
    const int g = blockIdx.y / c_tiles, c_base = (blockIdx.y % c_tiles) * BN;
    typedef DgradGradientIterator<Tile> IterA;
    typedef DgradFilterIterator<Tile> IterB;
    IterA a(dy + (index_t)g * K_per_group * P * Q, m_base + IterA::Map::x(0), M, Hp * Wp, Wp, K, P, Q,
            tap_r, tap_s);
    IterB b(w + (index_t)g * K_per_group * C_per_group * R * S, c_base, C_per_group, R, S, tap_r, tap_s);
    const DgradTensorEpilogue<Tile> epilogue{dx, bias, m_base, M, Hp, Wp, phase_h, phase_w, stride_h,
                                             stride_w, H, W, C, g * C_per_group + c_base,
                                             C_per_group - c_base};
    __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
    tensor_implicit_gemm<Tile>(shared, a, b, K_per_group * tap_r.count * tap_s.count, epilogue);
}
