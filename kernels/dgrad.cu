// dgrad.cu: the input gradient dx = conv2d_input(dy, w) (+ bias), which is also the forward pass of
// conv_transpose2d (its input is dy[N,K,P,Q], its output dx[N,C,H,W], its bias one value per C).
//
// As an implicit GEMM (per group): M = N·H·W input pixels, N = C input channels, reduction
// K = K·R·S, of which each input pixel meets only the taps (r, s) whose output pixel (p, q) exists:
// with stride > 1 most taps land between output pixels and are skipped, never multiplied by zero.
// P and Q are the problem's, not recomputed from H and W: for conv_transpose2d with output_padding
// they are given, so both kernels bounds-check every (p, q).
//
// dgrad_direct: one thread per element dx[n,c,h,w]; instead of scattering dy through w (the
// transpose of fprop, which would need atomics) it gathers from the taps that hit a real dy
// element, in a fixed order (r, s, k), then adds the bias if there is one.
//
// dgrad_implicit_gemm (assumes a phase's N·Hp·Wp pixels + BM < 2^31, checked on the host): the
// shared main loop of gemm.cuh, one launch for all stride phases. Input pixels with the same
// (h mod stride_h, w mod stride_w) meet the same taps (see phase_taps), so blockIdx.z names a phase
// and the block runs that phase's dense GEMM: M = N·Hp·Wp pixels h = phase_h + i·stride_h,
// w = phase_w + j·stride_w, reduction over K/groups × (the phase's taps) only. One launch with the
// phase in blockIdx.z rather than a launch per phase: phases differ in size by at most one row and
// one column, so the few blocks past a smaller phase's end return at once. A block owns BM pixels ×
// BN input channels of one group. DgradGradientIterator gathers A from dy (consecutive threads,
// consecutive pixels; zero where (p, q) falls outside [0,P)×[0,Q)), DgradFilterIterator reads B
// from w; each steps its (k, tap row, tap column) by BK per k-tile without a division.
// DgradEpilogue adds the bias and stores dx. The reduction order is fixed ((k, r, s) ascending),
// so results are bitwise reproducible. Tile shapes come from TILES["dgrad"] in
// gpuconv/backends/kernel_backend.py.
#include "gemm.cuh"

template <typename T>
__global__ void dgrad_direct(const T* __restrict__ dy, const T* __restrict__ w,
                             const T* __restrict__ bias, T* __restrict__ dx,
                             int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                             int stride_h, int stride_w, int pad_top, int pad_left,
                             int dil_h, int dil_w, int groups) {
    const int C_per_group = C / groups, K_per_group = K / groups;
    const index_t total = (index_t)N * C * H * W;
    for (index_t i = global_thread_index(); i < total; i += grid_stride()) {
        const int wi = (int)(i % W);
        const int h = (int)((i / W) % H);
        const int c = (int)((i / ((index_t)H * W)) % C);
        const int n = (int)(i / ((index_t)C * H * W));
        // Input channel c belongs to group g; it is channel c_in_group of that group's weights,
        // which are read by the group's K/groups output channels starting at k0.
        const int g = c / C_per_group, c_in_group = c - g * C_per_group, k0 = g * K_per_group;
        const T* dy_n = dy + ((index_t)n * K + k0) * P * Q;
        const T* w_c = w + ((index_t)k0 * C_per_group + c_in_group) * R * S;
        T acc = T(0);
        for (int r = 0; r < R; r++) {
            // fprop's tap r of output row p reads row h = p·stride_h - pad_top + r·dil_h, so row h
            // receives from tap r exactly when h + pad_top - r·dil_h = p·stride_h for an integer p
            // in [0, P): non-negative, divisible by the stride, and below P after dividing.
            const int ph = h + pad_top - r * dil_h;
            if (ph < 0 || ph % stride_h != 0 || ph / stride_h >= P) continue;
            const int p = ph / stride_h;
            for (int s = 0; s < S; s++) {
                const int qw = wi + pad_left - s * dil_w;
                if (qw < 0 || qw % stride_w != 0 || qw / stride_w >= Q) continue;
                const int q = qw / stride_w;
                for (int k = 0; k < K_per_group; k++) {
                    // w[k0+k, c_in_group, r, s]: consecutive k are C_per_group·R·S apart.
                    acc += dy_n[((index_t)k * P + p) * Q + q] *
                           w_c[((index_t)k * C_per_group * R + r) * S + s];
                }
            }
        }
        if (bias != nullptr) acc += bias[c];
        dx[i] = acc;
    }
}

// The taps of one stride phase along one axis (rows shown; columns are the same with S, Q).
// Row h receives from tap r when h + pad - r·dil = p·stride (dgrad_direct). For the rows
// h = phase + i·stride that divisibility depends on the phase only: tap r belongs to the phase
// when (phase + pad - r·dil) ≡ 0 (mod stride). r·dil mod stride repeats with period
// stride / gcd(stride, dil), so the phase's taps are r = first + t·step, t in [0, count), and
// row i meets tap t at p = (phase + i·stride + pad - r·dil) / stride = i + p0 - t·dp, with
// p0 the division for t = 0 (exact) and dp = step·dil / stride = dil / gcd.
struct PhaseTaps {
    int first, count, step;  // the taps r = first + t·step, t in [0, count)
    int p0, dp;              // row i of the phase meets tap t at p = i + p0 - t·dp
};

__device__ __forceinline__ PhaseTaps phase_taps(int phase, int pad, int stride, int dil, int R) {
    int gcd = stride, rem = dil;
    while (rem != 0) { const int next = gcd % rem; gcd = rem; rem = next; }
    PhaseTaps t;
    t.step = stride / gcd;
    t.first = 0;
    while (t.first < R && (phase + pad - t.first * dil) % stride != 0) t.first++;
    t.count = t.first < R ? (R - 1 - t.first) / t.step + 1 : 0;
    t.p0 = (phase + pad - t.first * dil) / stride;  // used only when count > 0: then exact
    t.dp = dil / gcd;
    return t;
}

// A phase's taps as the radices of the reduction digits (k, tap row, tap column). A phase with no
// taps never loads (its reduction is empty), but its iterators are still built: radix 1 keeps
// their decode free of a division by zero.
__device__ __forceinline__ int tap_radix(const PhaseTaps& t) { return t.count > 0 ? t.count : 1; }

// A[m, (k, t_r, t_s)] = dy[n, k, p, q] for this thread's pixel m = (n, i, j) of the phase, with
// (p, q) = (i + p0_r - t_r·dp_r, j + p0_s - t_s·dp_s) (phase_taps), zero outside dy.
template <class Tile>
struct DgradGradientIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = false;  // consecutive threads, consecutive pixels: coalesced
    typedef StagingMap<Tile::BK, Tile::BM, Tile::THREADS, KFast> Map;
    const T* dy_n;  // image n, channel 0 of the group; null past the phase's pixels
    int p0, q0;     // the dy row and column that tap (0, 0) of the pixel reads
    int P, Q, dp_r, dp_s, radix_r, radix_s;
    ReductionDigits krs[Map::ELEMS], step;  // (k, t_r, t_s) of each staged element; BK as digits

    __device__ DgradGradientIterator(const T* dy_g, int m, int M, int HWp, int Wp, int K, int P_,
                                     int Q_, const PhaseTaps& tap_r, const PhaseTaps& tap_s)
        : P(P_), Q(Q_), dp_r(tap_r.dp), dp_s(tap_s.dp), radix_r(tap_radix(tap_r)),
          radix_s(tap_radix(tap_s)) {
        const int n = m / HWp, ij = m % HWp;
        dy_n = m < M ? dy_g + (index_t)n * K * P * Q : nullptr;
        p0 = ij / Wp + tap_r.p0;
        q0 = ij % Wp + tap_s.p0;
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++)
            krs[i] = ReductionDigits::of(Map::k(i), radix_r, radix_s);
        step = ReductionDigits::of(Tile::BK, radix_r, radix_s);
    }
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        const int k_live = dy_n != nullptr ? k_remaining : 0;  // a pixel past M loads nothing
        const int p = p0 - krs[i].mid * dp_r, q = q0 - krs[i].lo * dp_s;
        const bool inside = (unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q;
        // One int offset (K·P·Q < 2^31) added to the pointer once: one wide multiply-add.
        return {dy_n + ((krs[i].hi * P + p) * Q + q), Map::k(i) < k_live && inside};
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
        for (int i = 0; i < Map::ELEMS; i++) krs[i].add(step, radix_r, radix_s);
    }
};

// B[(k, t_r, t_s), c] = w[k, c, first_r + t_r·step_r, first_s + t_s·step_s] for this thread's
// staged elements: one (k, t_r, t_s) a k-tile, several c.
template <class Tile>
struct DgradFilterIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef StagingMap<Tile::BK, Tile::BN, Tile::THREADS, KFast> Map;
    const T* w_c;            // w[0, c_base + Map::x(0), 0, 0] of the group
    index_t filter_stride;   // one output channel k of w: C/groups·R·S elements
    int channel_stride;      // Map::STEP input channels: STEP·R·S elements
    int channels_left, S, first_r, step_r, first_s, step_s, radix_r, radix_s;
    ReductionDigits krs, step;  // this thread's (k, t_r, t_s); BK as digits

    __device__ DgradFilterIterator(const T* w_g, int c_base, int C_per_group, int R, int S_,
                                   const PhaseTaps& tap_r, const PhaseTaps& tap_s)
        : w_c(w_g + (index_t)(c_base + Map::x(0)) * R * S_),
          filter_stride((index_t)C_per_group * R * S_), channel_stride(Map::STEP * R * S_),
          channels_left(C_per_group - c_base), S(S_), first_r(tap_r.first), step_r(tap_r.step),
          first_s(tap_s.first), step_s(tap_s.step), radix_r(tap_radix(tap_r)),
          radix_s(tap_radix(tap_s)) {
        krs = ReductionDigits::of(Map::k(0), radix_r, radix_s);
        step = ReductionDigits::of(Tile::BK, radix_r, radix_s);
    }
    __device__ __forceinline__ ElementSource<T> source(int i, int k_remaining) const {
        const int r = first_r + krs.mid * step_r, s = first_s + krs.lo * step_s;
        const T* w_t = w_c + krs.hi * filter_stride + r * S + s;
        return {w_t + i * channel_stride, Map::k(0) < k_remaining && Map::x(i) < channels_left};
    }
    __device__ __forceinline__ void load(T (&v)[Map::ELEMS], int k_remaining) const {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i++) {
            const ElementSource<T> e = source(i, k_remaining);
            v[i] = e.valid ? *e.address : T(0);  // its own line: the profile's row of this operand
        }
    }
    __device__ __forceinline__ void advance() { krs.add(step, radix_r, radix_s); }
};

// The bias and the store of dx[n, c, phase_h + i·stride_h, phase_w + j·stride_w]. The phase's
// pixels are walked as *rows* (n, i) of ROW pixels j: with stride 1 a row is a whole image (its
// H·W pixels are contiguous in dx), otherwise one row of the phase (Wp pixels, stride_w apart).
// One of two ways, the block's choice (FpropEpilogue's, with rows for images):
//  - direct, when stride_w = 1, W is a multiple of a sector's elements and dx starts a sector:
//    each V×V sub-tile's rows are V consecutive pixels of one row of dx and the LANES_M lanes of a
//    channel store LANES_M·V of them from a sector boundary: one 128-bit store a lane and channel;
//  - through shared memory otherwise: a warp stores one channel's pixels at a time, one run a row,
//    128-bit when stride_w = 1 and W is a multiple of V (dx 16-byte aligned), else a value a lane.
//    With stride_w > 1 a row's pixels lie stride_w apart in dx: a warp's store spans stride_w
//    times its bytes, inherent to storing one phase (the other phases' blocks fill the gaps).
// The block's first pixel (for the runs) and each sub-tile's (for the direct way) are decoded
// here, before the main loop.
template <class Tile>
struct DgradEpilogue {
    typedef typename Tile::Element T;
    static constexpr int V = Tile::V, SECTOR = SECTOR_BYTES / sizeof(T);
    T* dx;
    const T* bias;
    int row_pixels, image_rows;      // pixels j of a row, rows i of an image
    int n_first, i_first, j_first;   // the block's first pixel
    int n_sub[Tile::TM / Tile::V], i_sub[Tile::TM / Tile::V], j_sub[Tile::TM / Tile::V];
    int phase_h, phase_w, stride_h, stride_w, H, W, C, c_first, channels_left, pixels;
    bool direct_store, vector_store;

    __device__ DgradEpilogue(T* dx_, const T* bias_, int m_base, int M, int Hp, int Wp,
                             int phase_h_, int phase_w_, int stride_h_, int stride_w_, int H_,
                             int W_, int C_, int c_first_, int channels_left_)
        : dx(dx_), bias(bias_), phase_h(phase_h_), phase_w(phase_w_), stride_h(stride_h_),
          stride_w(stride_w_), H(H_), W(W_), C(C_), c_first(c_first_),
          channels_left(channels_left_), pixels(M - m_base < Tile::BM ? M - m_base : Tile::BM),
          direct_store(stride_w_ == 1 && W_ % SECTOR == 0 && sector_lead(dx_) == 0),
          vector_store(stride_w_ == 1 && W_ % V == 0 && aligned16(dx_)) {
        const bool whole_image = stride_h_ == 1 && stride_w_ == 1;
        row_pixels = whole_image ? Hp * Wp : Wp;
        image_rows = whole_image ? 1 : Hp;
        const int row = m_base / row_pixels;
        n_first = row / image_rows;
        i_first = row % image_rows;
        j_first = m_base % row_pixels;
#pragma unroll
        for (int u = 0; u < Tile::TM / V; u++) {  // each sub-tile's first pixel, for the direct way
            const int m = m_base + Tile::row(u * V), sub_row = m / row_pixels;
            n_sub[u] = sub_row / image_rows;
            i_sub[u] = sub_row % image_rows;
            j_sub[u] = m % row_pixels;
        }
    }
    // Pixel (n, i, j) of channel c in dx.
    __device__ __forceinline__ T* at(int n, int i, int j, int c) const {
        return dx + (((index_t)n * C + c) * H + phase_h + i * stride_h) * W + phase_w +
               (index_t)j * stride_w;
    }
    // A phase with no taps still lands here (acc = 0): its pixels get the bias alone.
    template <class Shared>
    __device__ __forceinline__ void operator()(const T (&acc)[Tile::TM][Tile::TN],
                                               Shared& shared) const {
        if (direct_store)
            store_direct<Tile, ACTIVATION_NONE>(acc, bias, c_first, pixels, channels_left, *this);
        else
            store_through_shared<Tile, true>(acc, shared, *this);
    }
    // Where pixel row u·V of input channel c_first + col goes (store_direct).
    __device__ __forceinline__ T* direct_at(int u, int col) const {
        return at(n_sub[u], i_sub[u], j_sub[u], c_first + col);
    }
    // Input channel c_first + col of the tile's pixels, staged[t] being pixel t: one run a row.
    __device__ __forceinline__ void store_line(int col, const T* staged) const {
        if (col >= channels_left) return;
        const int c = c_first + col;
        const bool has_bias = bias != nullptr;
        const T b = has_bias ? bias[c] : T(0);
        int n = n_first, i = i_first, j = j_first;
        for (int t = 0; t < pixels; j = 0) {
            const int run = row_pixels - j < pixels - t ? row_pixels - j : pixels - t;
            T* dst = at(n, i, j, c);
            if (vector_store) store_run<V, ACTIVATION_NONE>(dst, 1, staged + t, run, has_bias, b);
            else store_run<1, ACTIVATION_NONE>(dst, stride_w, staged + t, run, has_bias, b);
            t += run;
            if (++i == image_rows) {
                i = 0;
                n++;
            }
        }
    }
};

template <typename T, int BM, int BN, int BK, int WM, int WN, int TM, int TN,
          int STAGES>
__global__ void __launch_bounds__(GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES>::THREADS, 1)
dgrad_implicit_gemm(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ bias,
                    T* __restrict__ dx,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups) {
    typedef GemmTile<T, BM, BN, BK, WM, WN, TM, TN, STAGES> Tile;
    const int C_per_group = C / groups, K_per_group = K / groups;
    // This block's phase: rows h ≡ phase_h (mod stride_h), columns w ≡ phase_w (mod stride_w),
    // i.e. h = phase_h + i·stride_h for i in [0, Hp) (Hp = 0 when phase_h >= H).
    const int phase_h = blockIdx.z / stride_w, phase_w = blockIdx.z % stride_w;
    const int Hp = (H - phase_h + stride_h - 1) / stride_h, Wp = (W - phase_w + stride_w - 1) / stride_w;
    // Pixels are indexed in 32 bits: the host runs this kernel only when N·Hp·Wp + BM < 2^31 (else
    // dgrad_direct), and a 64-bit division is a subroutine call.
    const int M = N * Hp * Wp, m_base = blockIdx.x * BM;
    if (m_base >= M) return;  // the grid spans the largest phase; the whole block leaves together
    const PhaseTaps tap_r = phase_taps(phase_h, pad_top, stride_h, dil_h, R);
    const PhaseTaps tap_s = phase_taps(phase_w, pad_left, stride_w, dil_w, S);
    // blockIdx.y enumerates (group, tile of BN input channels within the group).
    const int c_tiles = (C_per_group + BN - 1) / BN;
    const int g = blockIdx.y / c_tiles, c_base = (blockIdx.y % c_tiles) * BN;
    typedef DgradGradientIterator<Tile> IterA;
    IterA a(dy + (index_t)g * K_per_group * P * Q, m_base + IterA::Map::x(0), M, Hp * Wp, Wp, K, P,
            Q, tap_r, tap_s);
    DgradFilterIterator<Tile> b(w + (index_t)g * K_per_group * C_per_group * R * S, c_base,
                                C_per_group, R, S, tap_r, tap_s);
    const DgradEpilogue<Tile> epilogue(dx, bias, m_base, M, Hp, Wp, phase_h, phase_w, stride_h,
                                       stride_w, H, W, C, g * C_per_group + c_base,
                                       C_per_group - c_base);
    __shared__ __align__(16) GemmShared<Tile> shared;
    implicit_gemm<Tile>(shared, a, b, K_per_group * tap_r.count * tap_s.count, epilogue);
}
