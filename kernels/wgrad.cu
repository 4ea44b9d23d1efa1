// wgrad.cu: the weight gradient dw = conv2d_weight(x, dy).
//
// As an implicit GEMM (per group): M = K output channels, N = C·R·S (C per group), reduction
// K = N·P·Q, with A[k, (n,p,q)] = dy[n, k, p, q] and B[(n,p,q), (c,r,s)] =
// x[n, c, p·stride_h - pad_top + r·dil_h, ...] read straight from x and zero where the tap falls
// into the padding.
//
// wgrad_direct: one thread per element dw[k,c,r,s]; it sums dy[n,k,p,q]·x[...] over the whole
// N·P·Q reduction in a fixed order (n, p, q): no atomics, bitwise reproducible. The reduction is
// long (it is the batch times the image), so this kernel is the obviously-right fallback.
//
// wgrad_implicit_gemm + wgrad_reduce_splits: the shared main loop of gemm.cuh with the long
// reduction split across blocks (split-K). The dw GEMM is small (K × C·R·S) and its reduction long,
// so one block per output tile would leave most of a GPU idle: blockIdx.z = split z takes reduction
// steps [z·chunk, (z+1)·chunk) and writes its partial dw tile to its own slice of a workspace
// partial[splits][K][C/groups·R·S]; wgrad_reduce_splits then sums the slices in the fixed order
// z = 0, 1, ... (no float atomics), so the result is bitwise reproducible. The host picks splits and
// chunk from the problem alone; with one split the GEMM writes dw directly. A block owns BM output
// channels × BN taps (c,r,s) of one group. Both iterators stage along the reduction (consecutive
// threads, consecutive pixels (n, p, q): coalesced along dy's and x's rows) and step their pixel's
// (n, p, q) by BK per k-tile without a division: WgradGradientIterator reads A from dy,
// WgradActivationIterator gathers B from x (fprop's tap rule, zero in the padding; each staged
// element's tap is fixed, decoded once). WgradEpilogue stores the partial tile. Tile shapes come
// from TILES["wgrad"] in kernel_backend.py.
#include "gemm.cuh"

template <typename T>
__global__ void wgrad_direct(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw,
                             int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                             int stride_h, int stride_w, int pad_top, int pad_left,
                             int dil_h, int dil_w, int groups) {
    const int C_per_group = C / groups, K_per_group = K / groups;
    const index_t total = (index_t)K * C_per_group * R * S;
    for (index_t i = global_thread_index(); i < total; i += grid_stride()) {
        const int s = (int)(i % S);
        const int r = (int)((i / S) % R);
        const int c_in_group = (int)((i / ((index_t)R * S)) % C_per_group);
        const int k = (int)(i / ((index_t)C_per_group * R * S));
        // dw[k, c_in_group] pairs output channel k with input channel c of k's group.
        const int c = (k / K_per_group) * C_per_group + c_in_group;
        T acc = T(0);
        for (int n = 0; n < N; n++) {
            const T* x_nc = x + ((index_t)n * C + c) * H * W;
            const T* dy_nk = dy + ((index_t)n * K + k) * P * Q;
            for (int p = 0; p < P; p++) {
                // Output row p meets input row p·stride_h - pad_top + r·dil_h through tap r.
                const int h = p * stride_h - pad_top + r * dil_h;
                if (h < 0 || h >= H) continue;
                for (int q = 0; q < Q; q++) {
                    const int wi = q * stride_w - pad_left + s * dil_w;
                    if (wi < 0 || wi >= W) continue;
                    acc += dy_nk[(index_t)p * Q + q] * x_nc[(index_t)h * W + wi];
                }
            }
        }
        dw[i] = acc;
    }
}

// A[k, (n,p,q)] = dy[n, k, p, q] for this thread's staged elements: one pixel (n, p, q) a k-tile,
// several output channels k.
template <class Tile>
struct WgradGradientIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;  // consecutive threads, consecutive pixels: coalesced
    typedef StagingMap<Tile::BK, Tile::BM, Tile::THREADS, KFast> Map;
    const T* dy_k;           // dy[0, k_base + Map::x(0), 0, 0] of the group
    index_t image_stride;    // one image of dy: K·P·Q elements
    int channel_stride;      // Map::STEP output channels: STEP·P·Q elements
    int channels_left, P, Q;
    ReductionDigits npq, step;  // this thread's pixel (n, p, q); BK as digits

    __device__ WgradGradientIterator(const T* dy_g, index_t e, int k_base, int K_per_group, int K,
                                     int P_, int Q_)
        : image_stride((index_t)K * P_ * Q_), channel_stride(Map::STEP * P_ * Q_),
          channels_left(K_per_group - k_base), P(P_), Q(Q_), npq(ReductionDigits::of(e, P_, Q_)),
          step(ReductionDigits::of(Tile::BK, P_, Q_)) {
        dy_k = dy_g + (index_t)(k_base + Map::x(0)) * P * Q;
    }
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        const T* dy_t = dy_k + npq.hi * image_stride + npq.mid * Q + npq.lo;
        return {dy_t + i * channel_stride, Map::k(0) < k_remaining && Map::x(i) < channels_left};
    }
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ElementSource<T> e = source(i, k_remaining);
            v[i] = e.valid ? *e.address : T(0);  // its own line: the profile's row of this operand
        }
    }
    // The image pointer moves with n: one multiply a k-tile, not one per element.
    __device__ __forceinline__ void advance() { npq.add(step, P, Q); }
};

// B[(n,p,q), (c,r,s)] = x[n, c, p·stride_h - pad_top + r·dil_h, q·stride_w - pad_left + s·dil_w]
// for this thread's staged elements: one pixel (n, p, q) a k-tile, several taps (c, r, s), each
// decoded once into its offset in an image of x and its row and column shift.
template <class Tile>
struct WgradActivationIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef StagingMap<Tile::BK, Tile::BN, Tile::THREADS, KFast> Map;
    const T* x_g;                      // channel 0 of the group in image 0 of x
    index_t image_stride;              // one image of x: C·H·W elements
    int tap_offset[Map::ELEMS];        // c·H·W + r·dil_h·W + s·dil_w (int: C·H·W < 2^31)
    int tap_h[Map::ELEMS], tap_w[Map::ELEMS];  // r·dil_h, s·dil_w
    int taps_left, H, W, P, Q, stride_h, stride_w, pad_top, pad_left;
    ReductionDigits npq, step;

    __device__ WgradActivationIterator(const T* x_g_, index_t e, int crs_base, int CRS, int C,
                                       int H_, int W_, int R, int S, int P_, int Q_,
                                       int stride_h_, int stride_w_, int pad_top_, int pad_left_,
                                       int dil_h, int dil_w)
        : x_g(x_g_), image_stride((index_t)C * H_ * W_), taps_left(CRS - crs_base), H(H_), W(W_), P(P_),
          Q(Q_), stride_h(stride_h_), stride_w(stride_w_), pad_top(pad_top_), pad_left(pad_left_),
          npq(ReductionDigits::of(e, P_, Q_)), step(ReductionDigits::of(Tile::BK, P_, Q_)) {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ReductionDigits crs = ReductionDigits::of(crs_base + Map::x(i), R, S);
            tap_h[i] = crs.mid * dil_h;
            tap_w[i] = crs.lo * dil_w;
            tap_offset[i] = (crs.hi * H + tap_h[i]) * W + tap_w[i];
        }
    }
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        // Tap (0, 0) of output pixel (p, q) reads x at (h0, w0); tap (r, s) adds its shift.
        const int h0 = npq.mid * stride_h - pad_top, w0 = npq.lo * stride_w - pad_left;
        const T* x_n = x_g + npq.hi * image_stride;
        const int pixel = h0 * W + w0;  // may be < 0: only added to a tap that lands inside
        const bool inside = (unsigned)(h0 + tap_h[i]) < (unsigned)H &&
                            (unsigned)(w0 + tap_w[i]) < (unsigned)W;
        return {x_n + (pixel + tap_offset[i]),
                Map::k(0) < k_remaining && Map::x(i) < taps_left && inside};
    }
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ElementSource<T> e = source(i, k_remaining);
            v[i] = e.valid ? *e.address : T(0);  // its own line: the profile's row of this operand
        }
    }
    __device__ __forceinline__ void advance() { npq.add(step, P, Q); }
};

// This split's partial dw tile into its slice of the workspace (dw's layout: rows k of CRS taps).
// A V×V sub-tile's columns are V consecutive taps of one row. When C/groups·R·S is a multiple of a
// sector's elements (and the workspace starts a sector) the LANES_N lanes of a row store LANES_N·V
// consecutive taps from a sector boundary: whole sectors, one 128-bit store a lane and row,
// straight from the accumulators. Otherwise through shared memory (store_through_shared, gemm.cuh):
// a warp stores one row's taps at a time from its first sector, 128-bit when CRS is a multiple
// of V (workspace 16-byte aligned), else one value a lane.
template <class Tile>
struct WgradEpilogue {
    typedef typename Tile::Element T;
    static constexpr int V = Tile::V, SECTOR = SECTOR_BYTES / sizeof(T);
    T* out;  // the block's first element: partial[z][g·K/groups + k_base][crs_base]
    int CRS, rows_left, cols_left;

    template <class Shared>
    __device__ __forceinline__ void operator()(const T (&acc)[Tile::TM][Tile::TN],
                                               Shared& shared) const {
        if (CRS % SECTOR != 0 || sector_lead(out) != 0) {
            store_through_shared<Tile, false>(acc, shared, *this);
            return;
        }
#pragma unroll
        for (int i = 0; i < Tile::TM; i++) {
            if (Tile::row(i) >= rows_left) continue;
#pragma unroll
            for (int u = 0; u < Tile::TN / V; u++)  // cols_left is a multiple of V: all in or out
                if (Tile::col(u * V) < cols_left)
                    store_vector16(&out[(index_t)Tile::row(i) * CRS + Tile::col(u * V)],
                                   &acc[i][u * V]);
        }
    }
    // Row `row` of the tile, staged[t] being tap crs_base + t: one run.
    __device__ __forceinline__ void store_line(int row, const T* staged) const {
        if (row >= rows_left) return;
        T* dst = out + (index_t)row * CRS;
        const int taps = cols_left < Tile::BN ? cols_left : Tile::BN;
        if (CRS % V == 0 && aligned16(out))
            store_run<V, ACTIVATION_NONE>(dst, 1, staged, taps, false, T(0));
        else store_run<1, ACTIVATION_NONE>(dst, 1, staged, taps, false, T(0));
    }
};

// Assumes P·Q + BK < 2^31 and chunk + BK < 2^31 (checked on the host).
template <typename T, int BM, int BN, int BK, int WM, int WN, int TM, int TN,
          int STAGES>
__global__ void __launch_bounds__(GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES>::THREADS, 1)
wgrad_implicit_gemm(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ partial,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups, index_t chunk) {
    typedef GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES> Tile;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    // blockIdx.x: tile of BN taps (c,r,s); blockIdx.y: (group, tile of BM output channels).
    const int k_tiles = (K_per_group + BM - 1) / BM;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BM;
    const int crs_base = blockIdx.x * BN;
    // This split's share of the reduction: pixels [red_begin, red_end) of the N·P·Q.
    const index_t npq = (index_t)N * P * Q, red_begin = blockIdx.z * chunk;
    const int reduction = (int)((red_begin + chunk < npq ? red_begin + chunk : npq) - red_begin);
    typedef WgradGradientIterator<Tile> IterA;
    typedef WgradActivationIterator<Tile> IterB;
    IterA a(dy + (index_t)g * K_per_group * P * Q, red_begin + IterA::Map::k(0), k_base,
            K_per_group, K, P, Q);
    IterB b(x + (index_t)g * C_per_group * H * W, red_begin + IterB::Map::k(0), crs_base, CRS, C,
            H, W, R, S, P, Q, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    const WgradEpilogue<Tile> epilogue{
        partial + (index_t)blockIdx.z * K * CRS + (index_t)(g * K_per_group + k_base) * CRS +
            crs_base,
        CRS, K_per_group - k_base, CRS - crs_base};
    __shared__ __align__(16) GemmShared<Tile> shared;
    implicit_gemm<Tile>(shared, a, b, reduction, epilogue);
}

// dw[i] = Σ_z partial[z][i], summed in the order z = 0, 1, ..., splits-1 (bitwise reproducible).
template <typename T>
__global__ void wgrad_reduce_splits(const T* __restrict__ partial, T* __restrict__ dw,
                                    index_t size, int splits) {
    for (index_t i = global_thread_index(); i < size; i += grid_stride()) {
        T acc = partial[i];
        for (int z = 1; z < splits; z++) acc += partial[z * size + i];
        dw[i] = acc;
    }
}
