// fprop.cu: the forward convolution y = activation(conv2d(x, w) + bias).
//
// As an implicit GEMM (per group): M = N·P·Q output pixels, N = K output channels, reduction
// K = C·R·S (C and K per group), with A[m, (c,r,s)] = x[n, c, p·stride_h - pad_top + r·dil_h, ...]
// read straight from x (no im2col) and zero where the tap falls into the padding, and
// B[(c,r,s), k] = w[k, c, r, s].
//
// fprop_direct: one thread per output element y[n,k,p,q]; it sums over its group's C/groups
// channels and the R·S taps in a fixed order (r, s, c), then adds the bias and applies the
// activation (the fused epilogue). Any stride, asymmetric padding, dilation and groups.
//
// fprop_implicit_gemm: the shared main loop of gemm.cuh (block, warp and thread tiles, 128-bit
// shared loads, double-buffered k-tiles or, with STAGES 3-4 on sm_80+, a cp.async ring) fed by
// two iterators: FpropActivationIterator gathers A
// from x (consecutive threads stage consecutive pixels: loads coalesce along x's rows; each staged
// element keeps its (c, r, s) and steps it by BK per k-tile, no division), FpropFilterIterator
// reads B from w (consecutive threads stage consecutive (c,r,s), contiguous in w). A block owns
// BM output pixels × BN output channels of one group; FpropEpilogue adds the bias, applies the
// activation and stores y. The reduction order is fixed ((c,r,s) ascending), so results are bitwise
// reproducible. Tile shapes come from TILES["fprop"] in gpuconv/backends/kernel_backend.py.
#include "gemm.cuh"

template <typename T, int Activation>
__global__ void fprop_direct(const T* __restrict__ x, const T* __restrict__ w,
                             const T* __restrict__ bias, T* __restrict__ y,
                             int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                             int stride_h, int stride_w, int pad_top, int pad_left,
                             int dil_h, int dil_w, int groups) {
    const int C_per_group = C / groups, K_per_group = K / groups;
    const index_t total = (index_t)N * K * P * Q;
    for (index_t i = global_thread_index(); i < total; i += grid_stride()) {
        const int q = (int)(i % Q);
        const int p = (int)((i / Q) % P);
        const int k = (int)((i / ((index_t)P * Q)) % K);
        const int n = (int)(i / ((index_t)K * P * Q));
        // Output channel k belongs to group k / K_per_group, which reads that group's C/groups
        // input channels starting at c0.
        const int c0 = (k / K_per_group) * C_per_group;
        const T* x_n = x + ((index_t)n * C + c0) * H * W;
        const T* w_k = w + (index_t)k * C_per_group * R * S;
        T acc = T(0);
        for (int r = 0; r < R; r++) {
            // Tap r of output row p reads input row p·stride_h - pad_top + r·dil_h; outside
            // [0, H) it reads padding (zero) and contributes nothing.
            const int h = p * stride_h - pad_top + r * dil_h;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < S; s++) {
                const int wi = q * stride_w - pad_left + s * dil_w;
                if (wi < 0 || wi >= W) continue;
                for (int c = 0; c < C_per_group; c++) {
                    acc += x_n[((index_t)c * H + h) * W + wi] * w_k[((index_t)c * R + r) * S + s];
                }
            }
        }
        if (bias != nullptr) acc += bias[k];
        y[i] = activate<Activation>(acc);
    }
}

// A[m, (c,r,s)] for this thread's staged elements: one pixel m (fixed), the k-tile's (c, r, s).
template <class Tile>
struct FpropActivationIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = false;  // consecutive threads, consecutive pixels: coalesced
    typedef StagingMap<Tile::BK, Tile::BM, Tile::THREADS, KFast> Map;
    const T* x_n;  // image n of the pixel, channel 0 of the group; null past the GEMM's M rows
    int h0, w0;    // the input row and column that tap (0, 0) of the pixel reads
    int H, W, R, S, dil_h, dil_w;
    ReductionDigits crs[Map::ELEMS], step;  // (c, r, s) of each staged element; BK as digits

    __device__ FpropActivationIterator(const T* x_g, index_t m, index_t M, int C, int H_, int W_,
                                       int R_, int S_, int Q, index_t PQ, int stride_h,
                                       int stride_w, int pad_top, int pad_left, int dil_h_,
                                       int dil_w_)
        : H(H_), W(W_), R(R_), S(S_), dil_h(dil_h_), dil_w(dil_w_) {
        const index_t n = m / PQ, pq = m % PQ;
        x_n = m < M ? x_g + n * C * H * W : nullptr;
        h0 = (int)(pq / Q) * stride_h - pad_top;
        w0 = (int)(pq % Q) * stride_w - pad_left;
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) crs[i] = ReductionDigits::of(Map::k(i), R, S);
        step = ReductionDigits::of(Tile::BK, R, S);
    }
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        const int k_live = x_n != nullptr ? k_remaining : 0;  // a pixel past M loads nothing
        // The tap rule of fprop_direct; unsigned compares test 0 <= h < H in one.
        const int h = h0 + crs[i].mid * dil_h, w = w0 + crs[i].lo * dil_w;
        const bool inside = (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        // One int offset (C·H·W < 2^31) added to the pointer once: one wide multiply-add.
        return {x_n + ((crs[i].hi * H + h) * W + w), Map::k(i) < k_live && inside};
    }
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ElementSource<T> e = source(i, k_remaining);
            v[i] = e.valid ? *e.address : T(0);  // its own line: the profile's row of this operand
        }
    }
    __device__ __forceinline__ void advance() {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) crs[i].add(step, R, S);
    }
};

// B[(c,r,s), k] = w[k, (c,r,s)] for this thread's staged elements: one (c,r,s) a k-tile, several k.
template <class Tile>
struct FpropFilterIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;  // consecutive threads, consecutive (c,r,s): contiguous in w
    typedef StagingMap<Tile::BK, Tile::BN, Tile::THREADS, KFast> Map;
    const T* w_t;             // w[k_base + Map::x(0), this thread's (c,r,s)]
    index_t channel_stride;   // Map::STEP output channels: STEP·C·R·S elements of w
    int channels_left;        // output channels of the group from this block's first on

    __device__ FpropFilterIterator(const T* w_g, int k_base, int K_per_group, int CRS)
        : w_t(w_g + (index_t)(k_base + Map::x(0)) * CRS + Map::k(0)),
          channel_stride((index_t)Map::STEP * CRS), channels_left(K_per_group - k_base) {}
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        return {w_t + i * channel_stride, Map::k(0) < k_remaining && Map::x(i) < channels_left};
    }
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ElementSource<T> e = source(i, k_remaining);
            v[i] = e.valid ? *e.address : T(0);  // its own line: the profile's row of this operand
        }
    }
    __device__ __forceinline__ void advance() { w_t += Tile::BK; }
};

// Bias, activation and the store of y[n, k, p, q], one of two ways (the block's choice, so that
// every thread meets store_through_shared's barriers):
//  - direct, when P·Q is a multiple of a sector's elements and y starts a sector: each V×V
//    sub-tile's rows are V consecutive pixels of one image, and the LANES_M lanes of a channel
//    store LANES_M·V consecutive pixels from a multiple of LANES_M·V: whole sectors, one 128-bit
//    store a lane and channel straight from the accumulators;
//  - through shared memory otherwise (store_through_shared, gemm.cuh): a warp stores one channel's
//    pixels at a time, in runs of one image each (contiguous in y), the stores starting on the
//    run's sector: 128-bit when P·Q is a multiple of V (and y 16-byte aligned), else one value a
//    lane. The bias is then one value a channel, read by the whole warp at once.
// The block's first pixel (for the runs) and each sub-tile's (for the direct way) are decoded
// here, before the main loop: a 64-bit division is a subroutine call, and after the main loop it
// would run with every accumulator live.
template <class Tile, int Activation>
struct FpropEpilogue {
    typedef typename Tile::Element T;
    static constexpr int V = Tile::V, SECTOR = SECTOR_BYTES / sizeof(T);
    T* y;
    const T* bias;
    index_t PQ, pq_first;   // the block's first pixel is (n_first, pq_first)
    index_t n_sub[Tile::TM / Tile::V], pq_sub[Tile::TM / Tile::V];  // each sub-tile's first
    int K, k_first, channels_left, n_first, pixels;  // pixels: of the tile inside M
    bool direct_store, vector_store;

    __device__ FpropEpilogue(T* y_, const T* bias_, index_t m_base, index_t M, index_t PQ_, int K_,
                             int k_first_, int channels_left_)
        : y(y_), bias(bias_), PQ(PQ_), pq_first(m_base % PQ_), K(K_), k_first(k_first_),
          channels_left(channels_left_), n_first((int)(m_base / PQ_)),
          pixels((int)(M - m_base < Tile::BM ? M - m_base : Tile::BM)),
          direct_store(PQ_ % SECTOR == 0 && sector_lead(y_) == 0),
          vector_store(PQ_ % V == 0 && aligned16(y_)) {
#pragma unroll
        for (int u = 0; u < Tile::TM / V; u++) {
            const index_t m = m_base + Tile::row(u * V);
            n_sub[u] = m / PQ;
            pq_sub[u] = m % PQ;
        }
    }
    template <class Shared>
    __device__ __forceinline__ void operator()(const T (&acc)[Tile::TM][Tile::TN],
                                               Shared& shared) const {
        if (direct_store)
            store_direct<Tile, Activation>(acc, bias, k_first, pixels, channels_left, *this);
        else
            store_through_shared<Tile, true>(acc, shared, *this);
    }
    // Where pixel row u·V of output channel k_first + col goes (store_direct).
    __device__ __forceinline__ T* direct_at(int u, int col) const {
        return &y[(n_sub[u] * K + k_first + col) * PQ + pq_sub[u]];
    }
    // Output channel k_first + col of the tile's pixels, staged[t] being pixel t: one run an image.
    __device__ __forceinline__ void store_line(int col, const T* staged) const {
        if (col >= channels_left) return;
        const int k = k_first + col;
        const bool has_bias = bias != nullptr;
        const T b = has_bias ? bias[k] : T(0);
        T* image = y + ((index_t)n_first * K + k) * PQ;  // channel k of the run's image
        index_t pq = pq_first;
        for (int t = 0; t < pixels; pq = 0, image += (index_t)K * PQ) {
            const int run = (int)(PQ - pq < pixels - t ? PQ - pq : pixels - t);
            if (vector_store) store_run<V, Activation>(image + pq, 1, staged + t, run, has_bias, b);
            else store_run<1, Activation>(image + pq, 1, staged + t, run, has_bias, b);
            t += run;
        }
    }
};

template <typename T, int Activation, int BM, int BN, int BK, int WM, int WN, int TM, int TN,
          int STAGES>
__global__ void __launch_bounds__(GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES>::THREADS, 1)
fprop_implicit_gemm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                    T* __restrict__ y,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups) {
    typedef GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES> Tile;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group).
    const int k_tiles = (K_per_group + BN - 1) / BN;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    typedef FpropActivationIterator<Tile> IterA;
    IterA a(x + (index_t)g * C_per_group * H * W, m_base + IterA::Map::x(0), M, C, H, W, R, S, Q,
            PQ, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    FpropFilterIterator<Tile> b(w + (index_t)g * K_per_group * CRS, k_base, K_per_group, CRS);
    const FpropEpilogue<Tile, Activation> epilogue(y, bias, m_base, M, PQ, K,
                                                   g * K_per_group + k_base, K_per_group - k_base);
    __shared__ __align__(16) GemmShared<Tile> shared;
    implicit_gemm<Tile>(shared, a, b, CRS, epilogue);
}
