// fprop_tc.cu: the forward convolution y = activation(conv2d(x, w) + bias) on tensor cores, for
// float16 and bfloat16 (float32 accumulation) and float32 in TF32: the implicit GEMM of
// fprop_implicit_gemm (fprop.cu: M = N·P·Q pixels, N = K/groups channels, reduction C·R·S), with
// the same iterators gathering A from x and B from w where they lie (NCHW, no transpose kernel),
// on gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs fprop.cu in float32.
// A block owns BM pixels × BN output channels of one group; FpropTensorEpilogue adds the bias and
// applies the activation (a run-time argument here) in float32, then rounds once to y's type.
// Staging (the host's choice, STAGING_*): fprop_implicit_gemm's iterators; the tap-major ones
// below (C/groups a multiple of BK); those with w read 16 bytes a load (FpropFilterVectorIterator:
// 1×1 filters, w 16-byte aligned).
#include "fprop.cu"
#include "gemm_tc.cuh"

// FpropFilterIterator with 128-bit loads: B[(c,r,s), k] = w[k, (c,r,s)], each thread a run of
// VEC consecutive (c,r,s) of one output channel (w's rows are contiguous along C·R·S) per load
// (VectorStagingMap). Assumes C/groups·R·S a multiple of VEC and w 16-byte aligned (the host
// checks: STAGING_TAP_MAJOR_VECTOR), so every run is whole inside the reduction or wholly past it.
template <class Tile>
struct FpropFilterVectorIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef VectorStagingMap<Tile::BK, Tile::BN, Tile::THREADS, 16 / sizeof(T)> Map;
    static constexpr int VEC = Map::VEC;
    const T* w_t;             // w[k_base + Map::x(0), this thread's first (c,r,s)]
    index_t channel_stride;   // Map::STEP output channels: STEP·C·R·S elements
    int channels_left;

    __device__ FpropFilterVectorIterator(const T* w_g, int k_base, int K_per_group, int CRS)
        : w_t(w_g + (index_t)(k_base + Map::x(0)) * CRS + Map::k(0)),
          channel_stride((index_t)Map::STEP * CRS), channels_left(K_per_group - k_base) {}
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
        const bool live = Map::k(0) < k_remaining;
        const T* w_u = w_t;
#pragma unroll
        for (int u = 0; u < Map::ELEMS / VEC; u++, w_u += channel_stride) {
            if (live && Map::x(u * VEC) < channels_left) {
                load16(&v[u * VEC], w_u);
            } else {
#pragma unroll
                for (int e = 0; e < VEC; e++) v[u * VEC + e] = T(0);
            }
        }
    }
    __device__ __forceinline__ void advance() { w_t += Tile::BK; }
};

// The tap-major iterators: the reduction in the order (r, s, c) rather than (c, r, s), a k-tile
// being BK channels of one tap (TapMajorDigits; C/groups a multiple of BK, checked on the host).
// A pixel's tap then lands inside x or in the padding for the whole k-tile: one bounds check a
// k-tile instead of one an element, and the staged elements of a thread lie a fixed stride apart
// (STEP channels), so an element costs an address and a load, no digits or predicate of its own.
// A[m, (r,s,c)] = x[n, c, h0 + r·dil_h, w0 + s·dil_w], staged as FpropActivationIterator's.
template <class Tile>
struct FpropTapActivationIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = false;  // consecutive threads, consecutive pixels: coalesced
    typedef StagingMap<Tile::BK, Tile::BM, Tile::THREADS, KFast> Map;
    const T* x_n;  // image n of the pixel, channel Map::k(0) of the group; null past the GEMM's M rows
    int h0, w0, H, W, S, dil_h, dil_w, C_per_group, HW, element_stride;  // STEP channels: STEP·H·W
    TapMajorDigits tap;

    __device__ FpropTapActivationIterator(const T* x_g, index_t m, index_t M, int C, int C_per_group_,
                                          int H_, int W_, int S_, int Q, index_t PQ, int stride_h,
                                          int stride_w, int pad_top, int pad_left, int dil_h_, int dil_w_)
        : H(H_), W(W_), S(S_), dil_h(dil_h_), dil_w(dil_w_), C_per_group(C_per_group_), HW(H_ * W_),
          element_stride(Map::STEP * H_ * W_), tap{0, 0, 0} {
        const index_t n = m / PQ, pq = m % PQ;
        x_n = m < M ? x_g + n * C * HW + Map::k(0) * HW : nullptr;
        h0 = (int)(pq / Q) * stride_h - pad_top;
        w0 = (int)(pq % Q) * stride_w - pad_left;
    }
    // Every k-tile is full (k_remaining >= BK).
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int) const {
        const int h = h0 + tap.r * dil_h, w = w0 + tap.s * dil_w;
        const bool inside = x_n != nullptr && (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        load_strided_or_zero(v, x_n, tap.channel * HW + h * W + w, element_stride, inside);  // int: C·H·W < 2^31
    }
    __device__ __forceinline__ void advance() { tap.advance(Tile::BK, C_per_group, S); }
};

// B[(r,s,c), k] = w[k, c, r, s], staged as FpropFilterIterator's (one channel a k-tile, several k).
// Its tap is the activation iterator's: A's digits, advanced by A (the main loop advances A before
// either loads), so that a k-tile steps one copy of them, not two.
template <class Tile>
struct FpropTapFilterIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef StagingMap<Tile::BK, Tile::BN, Tile::THREADS, KFast> Map;
    const T* w_t;             // w[k_base + Map::x(0), Map::k(0), 0, 0]
    index_t channel_stride;   // Map::STEP output channels: STEP·C·R·S elements
    int live, RS, S;  // live: the elements i whose channel x(i) exists, i < live
    const TapMajorDigits& tap;  // FpropTapActivationIterator's

    __device__ FpropTapFilterIterator(const T* w_g, int k_base, int K_per_group, int C_per_group, int R, int S_,
                                      const TapMajorDigits& activation_tap)
        : w_t(w_g + ((index_t)(k_base + Map::x(0)) * C_per_group + Map::k(0)) * R * S_),
          channel_stride((index_t)Map::STEP * C_per_group * R * S_),
          live((K_per_group - k_base - Map::x(0) + Map::STEP - 1) / Map::STEP), RS(R * S_), S(S_),
          tap(activation_tap) {}
    // Every k-tile is full (k_remaining >= BK).
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int) const {
        load_strided_live<true>(v, w_t + tap.channel * RS + tap.r * S + tap.s, channel_stride, live);
    }
    __device__ __forceinline__ void advance() {}  // A advances the tap
};

// The kernel's iterators from its arguments, one overload an iterator (their constructors take
// what each needs); the first argument only names the type, B's last is the A iterator.
template <class Tile>
__device__ __forceinline__ FpropActivationIterator<Tile> make_iterator(
        FpropActivationIterator<Tile>*, const typename Tile::Element* x_g, index_t m, index_t M, int C, int,
        int H, int W, int R, int S, int Q, index_t PQ, int stride_h, int stride_w, int pad_top, int pad_left,
        int dil_h, int dil_w) {
    return FpropActivationIterator<Tile>(x_g, m, M, C, H, W, R, S, Q, PQ, stride_h, stride_w, pad_top, pad_left,
                                         dil_h, dil_w);
}
template <class Tile>
__device__ __forceinline__ FpropTapActivationIterator<Tile> make_iterator(
        FpropTapActivationIterator<Tile>*, const typename Tile::Element* x_g, index_t m, index_t M, int C,
        int C_per_group, int H, int W, int, int S, int Q, index_t PQ, int stride_h, int stride_w, int pad_top,
        int pad_left, int dil_h, int dil_w) {
    return FpropTapActivationIterator<Tile>(x_g, m, M, C, C_per_group, H, W, S, Q, PQ, stride_h, stride_w,
                                            pad_top, pad_left, dil_h, dil_w);
}
template <class Tile, class IterA>
__device__ __forceinline__ FpropFilterIterator<Tile> make_iterator(FpropFilterIterator<Tile>*,
                                                                   const typename Tile::Element* w_g, int k_base,
                                                                   int K_per_group, int C_per_group, int R, int S,
                                                                   const IterA&) {
    return FpropFilterIterator<Tile>(w_g, k_base, K_per_group, C_per_group * R * S);
}
template <class Tile, class IterA>
__device__ __forceinline__ FpropFilterVectorIterator<Tile> make_iterator(
        FpropFilterVectorIterator<Tile>*, const typename Tile::Element* w_g, int k_base, int K_per_group,
        int C_per_group, int R, int S, const IterA&) {
    return FpropFilterVectorIterator<Tile>(w_g, k_base, K_per_group, C_per_group * R * S);
}
template <class Tile>
__device__ __forceinline__ FpropTapFilterIterator<Tile> make_iterator(
        FpropTapFilterIterator<Tile>*, const typename Tile::Element* w_g, int k_base, int K_per_group,
        int C_per_group, int R, int S, const FpropTapActivationIterator<Tile>& a) {
    return FpropTapFilterIterator<Tile>(w_g, k_base, K_per_group, C_per_group, R, S, a.tap);
}

// activate<Activation>(v) for a run-time activation (ACTIVATION_*): the tensor-core fprop takes it
// as an argument, not a template argument (a third as many instances to compile), and the branch
// is the epilogue's, once an element, outside the main loop.
__device__ __forceinline__ float activated(float v, int activation) {
    if (activation == ACTIVATION_RELU) return activate<ACTIVATION_RELU>(v);
    if (activation == ACTIVATION_SIGMOID) return activate<ACTIVATION_SIGMOID>(v);
    return v;
}

template <class Tile>
struct FpropTensorEpilogue {
    typedef typename Tile::Element T;
    T* y;
    const T* bias;
    index_t m_base, M, PQ;
    int K, k_first, channels_left;  // k_first: the block's first output channel (of all groups)
    int activation;

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
                        y[(n * K + k_first + col) * PQ + pq] = rounded<Tile::KIND>(activated(v, activation));
                    }
            }
    }
};

template <int Kind, int Staging, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
fprop_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ x,
                  const typename TensorStorage<Kind>::type* __restrict__ w,
                  const typename TensorStorage<Kind>::type* __restrict__ bias,
                  typename TensorStorage<Kind>::type* __restrict__ y,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups, int activation) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    typedef typename Tile::Element T;
    constexpr bool TapMajor = Staging != STAGING_PLAIN, VectorW = Staging == STAGING_TAP_MAJOR_VECTOR;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group), as fprop_implicit_gemm.
    const int k_tiles = (K_per_group + BN - 1) / BN;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    // Iterators: the tap-major pair, or fprop_implicit_gemm's; B by 128-bit loads where VectorW.
    typedef typename Select<TapMajor, FpropTapActivationIterator<Tile>, FpropActivationIterator<Tile>>::type
        IterA;
    typedef typename Select<VectorW, FpropFilterVectorIterator<Tile>,
                            typename Select<TapMajor, FpropTapFilterIterator<Tile>,
                                            FpropFilterIterator<Tile>>::type>::type IterB;
    const T* x_g = x + (index_t)g * C_per_group * H * W;
    const T* w_g = w + (index_t)g * K_per_group * CRS;
    IterA a = make_iterator((IterA*)nullptr, x_g, m_base + IterA::Map::x(0), M, C, C_per_group, H, W, R, S, Q,
                            PQ, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    IterB b = make_iterator((IterB*)nullptr, w_g, k_base, K_per_group, C_per_group, R, S, a);
    const FpropTensorEpilogue<Tile> epilogue{y, bias, m_base, M, PQ, K, g * K_per_group + k_base,
                                             K_per_group - k_base, activation};
    __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
    tensor_implicit_gemm<Tile>(shared, a, b, CRS, epilogue);
}
