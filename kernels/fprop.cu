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

// Bias, activation and the store of y[n, k, p, q] for this thread's accumulators. Each V×V
// sub-tile's rows are V consecutive pixels. When P·Q is a multiple of V (and y 16-byte aligned),
// those V pixels lie in one image, side by side and aligned: one 128-bit store per channel, so a
// warp's store covers whole 32-byte sectors. Otherwise one store per element, the pixel stepped
// from the sub-tile's first, which is decoded here, before the main loop: 64-bit division is a
// subroutine call, and registers live across one spill.
template <class Tile, int Activation>
struct FpropEpilogue {
    typedef typename Tile::Element T;
    static constexpr int V = Tile::V, SUB_M = Tile::TM / V;
    T* y;
    const T* bias;
    index_t m_base, M, PQ, n[SUB_M], pq[SUB_M];
    int K, k_first, channels_left;  // k_first: the block's first output channel (of all groups)
    bool vector_store;

    __device__ FpropEpilogue(T* y_, const T* bias_, index_t m_base_, index_t M_, index_t PQ_, int K_,
                             int k_first_, int channels_left_)
        : y(y_), bias(bias_), m_base(m_base_), M(M_), PQ(PQ_), K(K_), k_first(k_first_),
          channels_left(channels_left_), vector_store(PQ_ % V == 0 && aligned16(y_)) {
#pragma unroll
        for (int u = 0; u < SUB_M; u++) {
            const index_t m = m_base + Tile::row(u * V);
            n[u] = m / PQ;
            pq[u] = m % PQ;
        }
    }
    __device__ __forceinline__ T value(const T (&acc)[Tile::TM][Tile::TN], int i, int j) const {
        T v = acc[i][j];
        if (bias != nullptr) v += bias[k_first + Tile::col(j)];
        return activate<Activation>(v);
    }
    // Fully unrolled, so acc stays in registers (a loop left rolled would index it dynamically).
    __device__ __forceinline__ void operator()(const T (&acc)[Tile::TM][Tile::TN]) const {
#pragma unroll
        for (int u = 0; u < SUB_M; u++) {
            if (vector_store) {  // M is a multiple of V too: the sub-tile is all in or all out
                if (m_base + Tile::row(u * V) >= M) continue;
#pragma unroll
                for (int j = 0; j < Tile::TN; j++) {
                    if (Tile::col(j) >= channels_left) continue;
                    T out[V];
#pragma unroll
                    for (int v = 0; v < V; v++) out[v] = value(acc, u * V + v, j);
                    store_vector16(&y[(n[u] * K + k_first + Tile::col(j)) * PQ + pq[u]], out);
                }
                continue;
            }
            index_t n_i = n[u], pq_i = pq[u];
#pragma unroll
            for (int v = 0; v < V; v++) {
                const int i = u * V + v;
                if (m_base + Tile::row(i) < M) {
#pragma unroll
                    for (int j = 0; j < Tile::TN; j++) {
                        if (Tile::col(j) >= channels_left) continue;
                        y[(n_i * K + k_first + Tile::col(j)) * PQ + pq_i] = value(acc, i, j);
                    }
                }
                if (++pq_i == PQ) {
                    pq_i = 0;
                    n_i++;
                }
            }
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
