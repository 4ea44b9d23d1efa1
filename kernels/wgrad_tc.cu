// wgrad_tc.cu: the weight gradient dw = conv2d_weight(x, dy) on tensor cores, for float16 and
// bfloat16 (float32 accumulation) and float32 in TF32: the implicit GEMM of wgrad_implicit_gemm
// (wgrad.cu: M = K/groups output channels, N = C/groups·R·S taps, reduction N·P·Q pixels, split-K
// over blockIdx.z), with the same iterators reading dy and x where they lie (NCHW, no transpose
// kernel), on gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs wgrad.cu.
//
// Each split writes its float32 partial tile to its slice of a float32 workspace
// partial[splits][K][C/groups·R·S] (TF32 with one split: dw itself), and wgrad_tensor_reduce sums
// the slices in the fixed order z = 0, 1, ... and rounds once to dw's type: no float atomics,
// bitwise reproducible, and a half-type dw is rounded once, not once per split.
#include "wgrad.cu"
#include "gemm_tc.cuh"

// WgradGradientIterator with 128-bit loads: A[k, (n,p,q)] = dy[n, k, p, q], each thread a run of
// VEC consecutive pixels of one output channel per load (VectorStagingMap). Assumes P·Q a multiple
// of VEC and dy 16-byte aligned (the host checks: STAGING_TAP_MAJOR_VECTOR); a run starts at a
// multiple of VEC (splits and k-tiles start at multiples of BK), so it lies in one image.
template <class Tile>
struct WgradGradientVectorIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef VectorStagingMap<Tile::BK, Tile::BM, Tile::THREADS, 16 / sizeof(T)> Map;
    static constexpr int VEC = Map::VEC;
    const T* dy_k;           // dy[0, k_base + Map::x(0), 0, 0] of the group
    index_t image_stride;    // one image of dy: K·P·Q elements
    int channel_stride;      // Map::STEP output channels: STEP·P·Q elements
    int channels_left, PQ;
    ReductionDigits pixel, step;  // this thread's run start (n, 0, p·Q + q); BK as digits

    __device__ WgradGradientVectorIterator(const T* dy_g, index_t e, int k_base, int K_per_group, int K,
                                           int P, int Q)
        : dy_k(dy_g + (index_t)(k_base + Map::x(0)) * P * Q), image_stride((index_t)K * P * Q),
          channel_stride(Map::STEP * P * Q), channels_left(K_per_group - k_base), PQ(P * Q),
          pixel(ReductionDigits::of(e, 1, P * Q)), step(ReductionDigits::of(Tile::BK, 1, P * Q)) {}
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
        const bool live = Map::k(0) < k_remaining;
        const T* dy_t = dy_k + pixel.hi * image_stride + pixel.lo;
#pragma unroll
        for (int u = 0; u < Map::ELEMS / VEC; u++) {
            if (live && Map::x(u * VEC) < channels_left) {
                load16(&v[u * VEC], dy_t + u * channel_stride);
            } else {
#pragma unroll
                for (int e = 0; e < VEC; e++) v[u * VEC + e] = T(0);
            }
        }
    }
    __device__ __forceinline__ void advance() { pixel.add(step, 1, PQ); }
};

// WgradGradientIterator with its loads stepping a pointer from element to element
// (load_strided_live: no multiply or channel compare an element): A where dy takes no 16-byte loads.
template <class Tile>
struct WgradGradientStridedIterator : WgradGradientIterator<Tile> {
    typedef WgradGradientIterator<Tile> Base;
    typedef typename Base::Map Map;
    int live;  // the elements i whose channel x(i) exists, i < live

    __device__ WgradGradientStridedIterator(const typename Tile::Element* dy_g, index_t e, int k_base,
                                            int K_per_group, int K, int P, int Q)
        : Base(dy_g, e, k_base, K_per_group, K, P, Q),
          live((K_per_group - k_base - Map::x(0) + Map::STEP - 1) / Map::STEP) {}
    __device__ __forceinline__ void load(typename Tile::Element (&v)[Map::ELEMS], int k_remaining) const {
        load_strided_live<false>(v, this->dy_k + this->npq.hi * this->image_stride + this->npq.mid * this->Q +
                                        this->npq.lo, this->channel_stride, Map::k(0) < k_remaining ? live : 0);
    }
};

// B[(n,p,q), c] = x[n, c, p·stride_h - pad_top + r·dil_h, q·stride_w - pad_left + s·dil_w] for the
// block's one tap (r, s) (tap-major columns: a block's BN columns are BN channels of one tap), staged
// as WgradActivationIterator's (one pixel a k-tile, several channels): the pixel's tap lands inside
// x or in the padding for all of them, one bounds check a k-tile, and they lie H·W·STEP apart.
template <class Tile>
struct WgradTapActivationIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef StagingMap<Tile::BK, Tile::BN, Tile::THREADS, KFast> Map;
    const T* x_c;            // image 0 of x, channel c_base + Map::x(0) of the group
    index_t image_stride;    // one image of x: C·H·W elements
    int tap_h, tap_w;        // r·dil_h, s·dil_w
    int live, H, W, P, Q, stride_h, stride_w, pad_top, pad_left, element_stride;  // live: as FpropTapFilterIterator's
    ReductionDigits npq, step;

    __device__ WgradTapActivationIterator(const T* x_g, index_t e, int c_base, int C_per_group, int C, int H_,
                                          int W_, int r, int s, int P_, int Q_, int stride_h_, int stride_w_,
                                          int pad_top_, int pad_left_, int dil_h, int dil_w)
        : x_c(x_g + (index_t)(c_base + Map::x(0)) * H_ * W_), image_stride((index_t)C * H_ * W_),
          tap_h(r * dil_h), tap_w(s * dil_w), live((C_per_group - c_base - Map::x(0) + Map::STEP - 1) / Map::STEP),
          H(H_), W(W_), P(P_), Q(Q_), stride_h(stride_h_), stride_w(stride_w_), pad_top(pad_top_),
          pad_left(pad_left_), element_stride(Map::STEP * H_ * W_), npq(ReductionDigits::of(e, P_, Q_)),
          step(ReductionDigits::of(Tile::BK, P_, Q_)) {}
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
        const int h = npq.mid * stride_h - pad_top + tap_h, w = npq.lo * stride_w - pad_left + tap_w;
        const bool inside = Map::k(0) < k_remaining && (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        load_strided_or_zero(v, x_c + npq.hi * image_stride, h * W + w, element_stride, inside, live);  // int: C·H·W < 2^31
    }
    __device__ __forceinline__ void advance() { npq.add(step, P, Q); }
};

// This split's partial tile into its slice of the workspace (dw's layout): accumulator (row, col)
// at out[row·C/groups·R·S + col·column_stride] (column_stride: 1, or R·S for tap-major columns).
template <class Tile>
struct WgradTensorEpilogue {
    float* out;  // the block's first element: partial[z][g·K/groups + k_base][its first column]
    int CRS, column_stride, rows_left, cols_left;

    __device__ __forceinline__ void operator()(const float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4]) const {
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = Tile::row(i, h);
                if (row >= rows_left) continue;
#pragma unroll
                for (int j = 0; j < Tile::FRAGS_N; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                        if (Tile::col(j, e) < cols_left)
                            out[(index_t)row * CRS + Tile::col(j, e) * column_stride] = acc[i][j][2 * h + e];
            }
    }
};

// Assumes P·Q + BK < 2^31 and chunk + BK < 2^31 (checked on the host), as wgrad_implicit_gemm.
// Staging (STAGING_*, the host's choice): tap-major where C/groups is a multiple of BK (blockIdx.x
// names a tap (r, s) and a tile of BN channels, B from WgradTapActivationIterator), and with dy read
// 16 bytes a load (WgradGradientVectorIterator); otherwise BN consecutive (c,r,s) from
// WgradActivationIterator and dy an element a load (WgradGradientStridedIterator).
template <int Kind, int Staging, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
wgrad_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ x,
                  const typename TensorStorage<Kind>::type* __restrict__ dy, float* __restrict__ partial,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups, index_t chunk) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    constexpr bool TapMajor = Staging != STAGING_PLAIN, VectorDy = Staging == STAGING_TAP_MAJOR_VECTOR;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    // The block's rows and split, as wgrad_implicit_gemm.
    const int k_tiles = (K_per_group + BM - 1) / BM;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BM;
    const index_t npq = (index_t)N * P * Q, red_begin = blockIdx.z * chunk;
    const int reduction = (int)((red_begin + chunk < npq ? red_begin + chunk : npq) - red_begin);
    typedef typename Select<VectorDy, WgradGradientVectorIterator<Tile>, WgradGradientStridedIterator<Tile>>::type
        IterA;
    IterA a(dy + (index_t)g * K_per_group * P * Q, red_begin + IterA::Map::k(0), k_base, K_per_group, K, P, Q);
    const typename Tile::Element* x_g = x + (index_t)g * C_per_group * H * W;
    float* out = partial + (index_t)blockIdx.z * K * CRS + (index_t)(g * K_per_group + k_base) * CRS;
    if constexpr (TapMajor) {  // (constexpr: one __shared__ tile pair an instance)
        const int c_tiles = (C_per_group + BN - 1) / BN;
        const int tap = blockIdx.x / c_tiles, c_base = (blockIdx.x % c_tiles) * BN;
        typedef WgradTapActivationIterator<Tile> IterB;
        IterB b(x_g, red_begin + IterB::Map::k(0), c_base, C_per_group, C, H, W, tap / S, tap % S, P, Q,
                stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
        const WgradTensorEpilogue<Tile> epilogue{out + c_base * R * S + tap, CRS, R * S, K_per_group - k_base,
                                                 C_per_group - c_base};
        __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
        tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging)>(shared, a, b, reduction, epilogue);
    } else {
        const int crs_base = blockIdx.x * BN;
        typedef WgradActivationIterator<Tile> IterB;
        IterB b(x_g, red_begin + IterB::Map::k(0), crs_base, CRS, C, H, W, R, S, P, Q, stride_h, stride_w, pad_top,
                pad_left, dil_h, dil_w);
        const WgradTensorEpilogue<Tile> epilogue{out + crs_base, CRS, 1, K_per_group - k_base, CRS - crs_base};
        __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
        tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging)>(shared, a, b, reduction, epilogue);
    }
}

// dw[i] = Σ_z partial[z][i] in float32, summed in the order z = 0, 1, ..., splits-1 (bitwise
// reproducible), rounded once to dw's type.
template <int Kind>
__global__ void wgrad_tensor_reduce(const float* __restrict__ partial,
                                    typename TensorStorage<Kind>::type* __restrict__ dw, index_t size,
                                    int splits) {
    for (index_t i = global_thread_index(); i < size; i += grid_stride()) {
        float acc = partial[i];
        for (int z = 1; z < splits; z++) acc += partial[z * size + i];
        dw[i] = rounded<Kind>(acc);
    }
}
