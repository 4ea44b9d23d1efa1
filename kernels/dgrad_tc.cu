// dgrad_tc.cu: the input gradient dx = conv2d_input(dy, w) (+ bias; also conv_transpose2d) on
// tensor cores, for float16 and bfloat16 (float32 accumulation) and float32 in TF32: the implicit
// GEMM of dgrad_implicit_gemm (dgrad.cu: one launch for every stride phase, blockIdx.z the phase,
// M = the phase's N·Hp·Wp pixels, N = C/groups channels, reduction over K/groups × the phase's taps
// only), with the same iterators reading dy and w where they lie (NCHW, no transpose kernel), on
// gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs dgrad.cu in float32.
// DgradTensorEpilogue adds the bias in float32 and rounds once to dx's type. Assumes, as
// dgrad_implicit_gemm, a phase's N·Hp·Wp pixels + BM < 2^31 (checked on the host). Staging
// (STAGING_*, the host's choice): dgrad_implicit_gemm's iterators, or the tap-major ones below
// (K/groups a multiple of BK; w reordered by the host to [C/groups][R][S][K/groups] a group).
#include "dgrad.cu"
#include "gemm_tc.cuh"

// The tap-major iterators: the reduction in the order (t_r, t_s, k) rather than (k, t_r, t_s), a
// k-tile being BK output channels of one tap of the phase (TapMajorDigits; K/groups a multiple of
// BK, checked on the host), as fprop_tc.cu's: one bounds check a k-tile, elements a fixed stride
// apart. A[m, (t_r, t_s, k)] = dy[n, k, p, q], staged as DgradGradientIterator's.
template <class Tile>
struct DgradTapGradientIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = false;  // consecutive threads, consecutive pixels: coalesced
    typedef StagingMap<Tile::BK, Tile::BM, Tile::THREADS, KFast> Map;
    const T* dy_n;  // image n, channel Map::k(0) of the group; null past the phase's pixels
    int p0, q0;     // the dy row and column that tap (0, 0) of the pixel reads
    int P, Q, dp_r, dp_s, K_per_group, taps_s, element_stride;  // STEP channels: STEP·P·Q
    TapMajorDigits tap;

    __device__ DgradTapGradientIterator(const T* dy_g, int m, int M, int HWp, int Wp, int K, int K_per_group_,
                                        int P_, int Q_, const PhaseTaps& tap_r, const PhaseTaps& tap_s)
        : P(P_), Q(Q_), dp_r(tap_r.dp), dp_s(tap_s.dp), K_per_group(K_per_group_), taps_s(tap_s.count),
          element_stride(Map::STEP * P_ * Q_), tap{0, 0, 0} {
        const int n = m / HWp, ij = m % HWp;
        dy_n = m < M ? dy_g + ((index_t)n * K + Map::k(0)) * P * Q : nullptr;
        p0 = ij / Wp + tap_r.p0;
        q0 = ij % Wp + tap_s.p0;
    }
    // Every k-tile is full (k_remaining >= BK).
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int) const {
        const int p = p0 - tap.r * dp_r, q = q0 - tap.s * dp_s;
        const bool inside = dy_n != nullptr && (unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q;
        load_strided_or_zero(v, dy_n, (tap.channel * P + p) * Q + q, element_stride, inside);  // int: K·P·Q < 2^31
    }
    __device__ __forceinline__ void advance() { tap.advance(Tile::BK, K_per_group, taps_s); }
};

// B[(t_r, t_s, k), c] = w[k, c, first_r + t_r·step_r, first_s + t_s·step_s] from w reordered by
// the host to [C/groups][R][S][K/groups] a group, so that a k-tile's BK output channels of one tap
// are contiguous for each input channel: runs of VEC consecutive k of one c a 16-byte load
// (VectorStagingMap; the host aligns w), a k-tile's tap its offset. Its tap is the gradient
// iterator's (A advances it).
template <class Tile>
struct DgradTapFilterIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef VectorStagingMap<Tile::BK, Tile::BN, Tile::THREADS, 16 / sizeof(T)> Map;
    static constexpr int VEC = Map::VEC;
    const T* w_c;            // w[c_base + Map::x(0)][0][0][Map::k(0)] of the group
    index_t channel_stride;  // Map::STEP input channels: STEP·R·S·K/groups elements
    int live, S, K_per_group, first_r, step_r, first_s, step_s;  // live: runs u < live have a channel
    const TapMajorDigits& tap;  // DgradTapGradientIterator's

    __device__ DgradTapFilterIterator(const T* w_g, int c_base, int C_per_group, int K_per_group_, int R, int S_,
                                      const PhaseTaps& tap_r, const PhaseTaps& tap_s,
                                      const TapMajorDigits& gradient_tap)
        : w_c(w_g + ((index_t)(c_base + Map::x(0)) * R * S_) * K_per_group_ + Map::k(0)),
          channel_stride((index_t)Map::STEP * R * S_ * K_per_group_),
          live((C_per_group - c_base - Map::x(0) + Map::STEP - 1) / Map::STEP), S(S_),
          K_per_group(K_per_group_), first_r(tap_r.first), step_r(tap_r.step), first_s(tap_s.first),
          step_s(tap_s.step), tap(gradient_tap) {}
    // Every k-tile is full (k_remaining >= BK).
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int) const {
        const T* w_t = w_c + ((first_r + tap.r * step_r) * S + first_s + tap.s * step_s) * K_per_group + tap.channel;
#pragma unroll
        for (int u = 0; u < Map::ELEMS / VEC; u++) {
            if (u < live) {
                load16(&v[u * VEC], w_t + u * channel_stride);
            } else {
#pragma unroll
                for (int e = 0; e < VEC; e++) v[u * VEC + e] = T(0);
            }
        }
    }
    __device__ __forceinline__ void advance() {}  // A advances the tap
};

// The kernel's iterators from its arguments, one overload an iterator (as fprop_tc.cu's).
template <class Tile>
__device__ __forceinline__ DgradGradientIterator<Tile> make_iterator(
        DgradGradientIterator<Tile>*, const typename Tile::Element* dy_g, int m, int M, int HWp, int Wp, int K, int,
        int P, int Q, const PhaseTaps& tap_r, const PhaseTaps& tap_s) {
    return DgradGradientIterator<Tile>(dy_g, m, M, HWp, Wp, K, P, Q, tap_r, tap_s);
}
template <class Tile>
__device__ __forceinline__ DgradTapGradientIterator<Tile> make_iterator(
        DgradTapGradientIterator<Tile>*, const typename Tile::Element* dy_g, int m, int M, int HWp, int Wp, int K,
        int K_per_group, int P, int Q, const PhaseTaps& tap_r, const PhaseTaps& tap_s) {
    return DgradTapGradientIterator<Tile>(dy_g, m, M, HWp, Wp, K, K_per_group, P, Q, tap_r, tap_s);
}
template <class Tile, class IterA>
__device__ __forceinline__ DgradFilterIterator<Tile> make_iterator(
        DgradFilterIterator<Tile>*, const typename Tile::Element* w_g, int c_base, int C_per_group, int R, int S,
        const PhaseTaps& tap_r, const PhaseTaps& tap_s, const IterA&) {
    return DgradFilterIterator<Tile>(w_g, c_base, C_per_group, R, S, tap_r, tap_s);
}
template <class Tile>
__device__ __forceinline__ DgradTapFilterIterator<Tile> make_iterator(
        DgradTapFilterIterator<Tile>*, const typename Tile::Element* w_g, int c_base, int C_per_group, int R,
        int S, const PhaseTaps& tap_r, const PhaseTaps& tap_s, const DgradTapGradientIterator<Tile>& a) {
    return DgradTapFilterIterator<Tile>(w_g, c_base, C_per_group, a.K_per_group, R, S, tap_r, tap_s, a.tap);
}

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

template <int Kind, int Staging, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
dgrad_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ dy,
                  const typename TensorStorage<Kind>::type* __restrict__ w,
                  const typename TensorStorage<Kind>::type* __restrict__ bias,
                  typename TensorStorage<Kind>::type* __restrict__ dx,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    constexpr bool TapMajor = Staging == STAGING_TAP_MAJOR;
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
    typedef typename Select<TapMajor, DgradTapGradientIterator<Tile>, DgradGradientIterator<Tile>>::type IterA;
    typedef typename Select<TapMajor, DgradTapFilterIterator<Tile>, DgradFilterIterator<Tile>>::type IterB;
    IterA a = make_iterator((IterA*)nullptr, dy + (index_t)g * K_per_group * P * Q, m_base + IterA::Map::x(0),
                            M, Hp * Wp, Wp, K, K_per_group, P, Q, tap_r, tap_s);
    IterB b = make_iterator((IterB*)nullptr, w + (index_t)g * K_per_group * C_per_group * R * S, c_base,
                            C_per_group, R, S, tap_r, tap_s, a);
    const DgradTensorEpilogue<Tile> epilogue{dx, bias, m_base, M, Hp, Wp, phase_h, phase_w, stride_h,
                                             stride_w, H, W, C, g * C_per_group + c_base,
                                             C_per_group - c_base};
    __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
    const int reduction = K_per_group * tap_r.count * tap_s.count;
    tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging, Kind)>(shared, a, b, reduction, epilogue);
}
