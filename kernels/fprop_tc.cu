// fprop_tc.cu: the forward convolution y = activation(conv2d(x, w) + bias) on tensor cores, for
// float16 and bfloat16 (float32 accumulation) and float32 in TF32: the implicit GEMM of
// fprop_implicit_gemm (fprop.cu: M = N·P·Q pixels, N = K/groups channels, reduction C·R·S), with
// the same iterators gathering A from x and B from w where they lie (NCHW, no transpose kernel),
// on gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs fprop.cu in float32.
// A block owns BM pixels × BN output channels of one group; FpropTensorEpilogue adds the bias and
// applies the activation (a run-time argument here) in float32, then rounds once to y's type.
// Staging (the host's choice, STAGING_*): fprop_implicit_gemm's iterators; the tap-major ones
// below (C/groups a multiple of BK), w read 16 bytes a load (FpropFilterVectorIterator: the host
// reorders w to [K][R][S][C/groups], so that the tap-major reduction lies contiguous in it); the
// halo staging.
#include "fprop.cu"
#include "gemm_tc.cuh"

// FpropFilterIterator with 128-bit loads, tap-major: B[(r,s,c), k] = w[k, (r,s,c)] of w reordered
// by the host to [K][R][S][C/groups] (1×1: w as it is), each thread a run of VEC consecutive
// (r,s,c) of one output channel (a row is contiguous along the reduction) per load
// (VectorStagingMap). Assumes C/groups a multiple of BK and w 16-byte aligned (the host sees to
// both: STAGING_TAP_MAJOR_VECTOR), so every run is whole inside the reduction or wholly past it.
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

// The halo staging (STAGING_HALO: float16 and bfloat16 with BK = 32 channels, float32 in TF32 with
// BK = 16; R·S > 1, C/groups a multiple of BK, W even; the host checks these and the patch's
// size). The reduction runs block by block of BK channels,
// and within a block tap by tap: k-tile (block, tap). Every tap of a block reads the same rows of
// x, shifted: the block's *patch*, staged to shared memory once, from which each of the R·S
// k-tiles reads A directly, a tap being an offset. The patch holds every position of the padded
// input that the block's pixels reach: padded rows g = n·Hp + p·stride_h + r·dil_h (Hp padded rows
// an image, so g runs on without a gap from image to image) from the block's first pixel row to
// its last pixel row's last tap, each all Wp padded columns (and one more before them where the
// left padding is odd, and one after to make the row even, so that positions pair up on even
// columns of x). A position holds its BK channels contiguous, so that any pixel at any tap, stride
// or dilation is one 16-byte ldmatrix row (8 channels, or 4 in TF32), and x is read NCHW as it
// lies. A position's row is BK·size + 16 = 80 bytes in every kind: eight
// consecutive positions (a phase of ldmatrix or of the staging's 16-byte stores) start on
// distinct 16-byte bank groups, 5i mod 8. The patch is double-buffered: during block j's R·S
// k-tiles each thread stages one unit a k-tile of block j + 1's patch, so a patch costs one unit a
// thread a k-tile it serves. A unit is 16 bytes of channels of two neighbouring positions: a load
// a channel, a plane apart, of the pair (the two positions lie side by side in x: W even, the pair
// on an even column, both in x or both in its padding; 4 bytes of a 16-bit type, 8 of floats),
// split into two 16-byte stores (store_position_pair; TF32 rounds there).
// B is w reordered by the host to [K][R][S][C/groups] (and rounded to TF32 there in that kind): a
// k-tile is BK contiguous channels of one tap for each output channel, 16-byte cp.async copies
// (FpropHaloFilterIterator).
// The shared memory is B's 2·128·80 bytes, the position table and the two patch buffers, each as
// many positions as the problem's largest patch (up to HALO_POSITIONS): at most 99 KB, above
// the 48 KiB of a static array. The kernel takes it as the launch's dynamic shared memory, sized
// by the host for the problem (halo_shared_bytes): patches of up to 384 positions (ResNet-50's
// res3 and res4) leave room for two blocks an SM on sm_80, and up to 496 (res2) on sm_90.
#define HALO_POSITIONS 496  // the most positions a patch may have (halo_fits): 100,832 bytes in all,
                            // within the 99 KB a block may take on sm_86 and sm_89

template <class Tile>
struct HaloPatch {
    typedef typename Tile::Element T;
    static constexpr int PITCH = Tile::BK + 16 / sizeof(T);  // elements a position: 80 bytes, see above
    int source[HALO_POSITIONS / 2];  // each pair's offset in x in pairs of elements (channel 0), -1 in
                                     // the padding
    // The two buffers, each the block's patch (2·pairs positions) long: a launch's dynamic shared
    // memory ends where the problem's largest patch's second buffer does, short of this array's end.
    T patch[2 * HALO_POSITIONS][PITCH];
};

template <class Tile>
struct FpropHaloIterator {
    typedef typename Tile::Element T;
    typedef HaloPatch<Tile> Shared;
    static constexpr bool KFast = true;  // the warps read A k-contiguous (ldmatrix, no .trans)
    static constexpr int PITCH = Shared::PITCH, WARPS = Tile::THREADS / 32;
    static constexpr int UNIT = 16 / sizeof(T);  // channels a unit, of a pair of positions: 16 bytes each
    static constexpr int PAIRS_A_TILE = Tile::THREADS / (Tile::BK / UNIT);  // a unit a thread a k-tile
    static_assert(Tile::BK == 4 * UNIT && WARPS % 2 == 0, "four units a pair");
    // A unit's registers: channel j of both positions, (the first) in entry j: a word of two 16-bit
    // elements (low half first), or two floats.
    typedef typename Select<sizeof(T) == 2, unsigned, uint2>::type Staged;
    struct Map {  // the main loop's staging registers: one unit; the block's pixels from x(0) = 0
        static constexpr int ELEMS = UNIT;
        static __device__ __forceinline__ int x(int) { return 0; }
    };
    const Staged* x_lo;    // image n_lo, channel 0 of the group, as pairs of elements
    const int* sources;    // Shared::source, once stage_first has filled it
    index_t g_lo, n_lo;    // the patch's first padded row; the image of the block's first pixel
    int H, W, Hp, Wp, pad_top, pad_left, CHW, HW, pairs, blocks, taps, S;
    int first_column;  // the patch column of padded column 0: 1 where pad_left is odd, else 0
    int tap_step_s, tap_step_r;  // patch bytes from tap (r, s) to (r, s + 1); from (r, S) to (r + 1, 0)
    int block, tap, s, tap_offset;  // the k-tile being computed: its tap's (.., s) and patch bytes
    int buffer_bytes, read_buffer;  // a patch buffer's bytes (2·pairs positions); block's, 0 or that
    int channel_offset;             // x pairs of elements from channel 0 to this thread's unit of
                                    // block + 1
    int unit_pair, chunk;           // this thread's unit at tap 0: pair and which UNIT channels
    int row[Tile::FRAGS_M];  // this lane's ldmatrix row in the patch (tap (0, 0), bytes), each mma tile i

    __device__ FpropHaloIterator(const T* x_g, index_t m_base, index_t M, int C, int C_per_group, int H_, int W_,
                                 int R, int S_, int Q, index_t PQ, int stride_h, int stride_w, int pad_top_,
                                 int pad_left_, int dil_h, int dil_w)
        : H(H_), W(W_), pad_top(pad_top_), pad_left(pad_left_), CHW(C * H_ * W_), HW(H_ * W_),
          blocks(C_per_group / Tile::BK), taps(R * S_), S(S_), block(-1), tap(0), s(0), tap_offset(0) {
        const int P = (int)(PQ / Q);
        Hp = (P - 1) * stride_h + (R - 1) * dil_h + 1;
        first_column = pad_left & 1;
        Wp = ((Q - 1) * stride_w + (S - 1) * dil_w + 1 + first_column + 1) / 2 * 2;  // pairs a row
        tap_step_s = dil_w * PITCH * (int)sizeof(T);
        tap_step_r = (dil_h * Wp - S * dil_w) * PITCH * (int)sizeof(T);
        // A pixel row (n, p) is padded row n·Hp + p·stride_h at tap r = 0.
        const index_t row_lo = m_base / Q, row_hi = ((m_base + Tile::BM < M ? m_base + Tile::BM : M) - 1) / Q;
        n_lo = row_lo / P;
        g_lo = n_lo * Hp + row_lo % P * stride_h;
        const index_t g_hi = row_hi / P * Hp + row_hi % P * stride_h + (R - 1) * dil_h;
        pairs = (int)(g_hi - g_lo + 1) * Wp / 2;
        buffer_bytes = 2 * pairs * PITCH * (int)sizeof(T);
        read_buffer = buffer_bytes;  // block -1's: the prologue stages block 0 into buffer 0
        x_lo = reinterpret_cast<const Staged*>(x_g + n_lo * CHW);
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, matrix = lane / 8;
        // A quarter-warp stores 4 pairs × 2 chunks of UNIT channels: 16-byte stores 80·2 bytes apart
        // in pairs and 16 in chunks, 2i + c mod 8: the 8 bank groups once. Warps 0, 1 (2, 3) take
        // chunks 0-1 (2-3).
        unit_pair = (warp / 2) * 16 + (lane / 8) * 4 + lane % 4;
        chunk = (warp % 2) * 2 + (lane / 4) % 2;
        channel_offset = chunk * UNIT * HW / 2;  // block 0's, which the prologue stages as block -1's next
        // ldmatrix rows: lane l gives row l % 8 of matrix l / 8, (pixels 0-7, channels 0..UNIT-1),
        // (8-15, 0..UNIT-1), (0-7, UNIT..), (8-15, UNIT..) of its A block (load_a_fragment's order).
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++) {
            const index_t m = m_base + (warp % Tile::WARPS_M) * Tile::WM + i * 16 + (matrix % 2) * 8 + lane % 8;
            int position = 0;  // a pixel past M reads any position; the epilogue drops it
            if (m < M) {
                const index_t pixel_row = m / Q;
                const index_t g = pixel_row / P * Hp + pixel_row % P * stride_h;
                position = (int)(g - g_lo) * Wp + first_column + (int)(m % Q) * stride_w;
            }
            row[i] = (position * PITCH + (matrix / 2) * UNIT) * (int)sizeof(T);
        }
    }
    // This thread's unit of the next block's patch at the current tap: its UNIT channels of a
    // pair, entry j channel j of both positions, or zeros in the padding; nothing past the last
    // block or the patch's pairs.
    __device__ __forceinline__ int unit() const { return unit_pair + tap * PAIRS_A_TILE; }
    __device__ __forceinline__ bool staging() const { return block + 1 < blocks && unit() < pairs; }
    __device__ __forceinline__ void load(Staged (&v)[Map::ELEMS], int) const {
        const int from = staging() ? sources[unit()] : -1;
        load_strided_or_zero(v, x_lo, from + channel_offset, HW / 2, from >= 0);
    }
    __device__ __forceinline__ void advance() {}  // store steps the k-tile
    // The unit into the next block's patch, then on to the next k-tile.
    __device__ __forceinline__ void store(Shared& shared, const Staged (&v)[Map::ELEMS]) {
        if (staging())
            store_position_pair<Tile::KIND>(reinterpret_cast<char*>(&shared.patch[2 * unit()][chunk * UNIT])
                                                    + (buffer_bytes - read_buffer),
                                            PITCH * (int)sizeof(T), v);
        tap_offset += tap_step_s;
        if (++s == S) s = 0, tap_offset += tap_step_r;
        if (++tap == taps) {
            tap = 0, tap_offset = 0, block++, channel_offset += Tile::BK * HW / 2;
            read_buffer = buffer_bytes - read_buffer;
        }
    }
    // The prologue: the table of the positions' sources, then block 0's whole patch, staged as
    // the k-tiles of a block -1 would stage it.
    __device__ __forceinline__ void stage_first(Shared& shared, Staged (&v)[Map::ELEMS]) {
        for (int pair = threadIdx.x; pair < pairs; pair += Tile::THREADS) {
            const index_t g = g_lo + 2 * pair / Wp;
            // the pair's first column of x: even (W even), so both lie in x or both outside it
            const int h = (int)(g % Hp) - pad_top, w = 2 * pair % Wp - first_column - pad_left;
            const bool inside = (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
            shared.source[pair] = inside ? ((int)(g / Hp - n_lo) * CHW + h * W + w) / 2 : -1;
        }
        sources = shared.source;
        __syncthreads();
        for (int t = 0; t < taps; t++) {
            load(v, 0);
            store(shared, v);
        }
    }
};

// What the warps read for k-tile (block, tap): the block's patch, shifted by the tap.
template <class Tile>
struct HaloView {
    const FpropHaloIterator<Tile>& a;
    const char* tap_origin;
};
template <int Kind, class Tile, typename T, int E>
__device__ __forceinline__ void stage_first(FpropHaloIterator<Tile>& a, HaloPatch<Tile>& shared, T (&v)[E], int) {
    a.stage_first(shared, v);
}
template <class Tile, typename T, int E>
__device__ __forceinline__ void load_operand(FpropHaloIterator<Tile>& a, HaloPatch<Tile>&, int, T (&v)[E], int) {
    a.load(v, 0);
}
template <int Kind, class Tile, typename T, int E>
__device__ __forceinline__ void stage_operand(FpropHaloIterator<Tile>& a, HaloPatch<Tile>& shared, int,
                                              const T (&v)[E]) {
    a.store(shared, v);
}
template <class Tile>
__device__ __forceinline__ HaloView<Tile> operand_view(const FpropHaloIterator<Tile>& a,
                                                       const HaloPatch<Tile>& shared, int) {
    return {a, reinterpret_cast<const char*>(&shared.patch[0][0]) + a.read_buffer + a.tap_offset};
}
template <int Kind, bool KFast, class Tile>
__device__ __forceinline__ void load_a_fragment(unsigned (&a)[4], const HaloView<Tile>& view, int k0, int, int i) {
    ldmatrix_x4<false>(a, view.tap_origin + view.a.row[i] + k0 * (int)sizeof(typename Tile::Element));
}

// B of the halo staging: w reordered by the host to [K][R·S][C/groups], so that a k-tile (BK
// channels of one tap) of an output channel is 64 contiguous bytes, in the patch's k-tile order
// (tap by tap within a block). cp.async copies it straight to shared memory (VectorStagingMap's
// 16-byte runs, no registers, so no rounding: in TF32 the host's reordered w is rounded already):
// issued before a k-tile's math, waited for after it; an output channel past K copies zeros.
template <class Tile>
struct FpropHaloFilterIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef VectorStagingMap<Tile::BK, Tile::BN, Tile::THREADS, 16 / sizeof(T)> Map;
    static constexpr int RUNS = Map::ELEMS / Map::VEC;
    const T* w_t;        // this thread's first run of the next k-tile
    int run_stride;      // Map::STEP output channels: STEP·R·S·C/groups elements (< 2^31: halo_fits)
    int live;            // runs r < live have an output channel
    int channels, wrap;  // elements from a tap's k-tile to the next tap's; from the last tap's to
                         // the next block's tap 0
    const FpropHaloIterator<Tile>& a;  // its digits: the k-tile computed (the main loop advances
                                       // B before A stages and steps)

    __device__ FpropHaloFilterIterator(const T* w_g, int k_base, int K_per_group, int C_per_group, int RS,
                                       const FpropHaloIterator<Tile>& a_)
        : w_t(w_g + (index_t)(k_base + Map::x(0)) * RS * C_per_group + Map::k(0)),
          run_stride(Map::STEP * RS * C_per_group),
          live((K_per_group - k_base - Map::x(0) + Map::STEP - 1) / Map::STEP), channels(C_per_group),
          wrap(Tile::BK - (RS - 1) * C_per_group), a(a_) {}
    template <class Operand>
    __device__ __forceinline__ void copy(Operand& tile) const {
#pragma unroll
        for (int r = 0; r < RUNS; r++)
            cp_async_zfill<16>(&tile.at(Map::k(r * Map::VEC), Map::x(r * Map::VEC)), w_t + r * run_stride, r < live);
        cp_async_commit();
    }
    __device__ __forceinline__ void advance() { w_t += a.tap + 1 == a.taps ? wrap : channels; }
};

template <int Kind, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_first(FpropHaloFilterIterator<Tile>& b,
                                            DoubleBuffered<Tile, FpropHaloFilterIterator<Tile>, BX>& shared,
                                            T (&)[E], int) {
    b.copy(shared.tile[0]);
    cp_async_wait<0>();
}
template <class Tile, int BX, typename T, int E>
__device__ __forceinline__ void load_operand(FpropHaloFilterIterator<Tile>& b,
                                             DoubleBuffered<Tile, FpropHaloFilterIterator<Tile>, BX>& shared,
                                             int buffer, T (&)[E], int) {
    b.copy(shared.tile[buffer]);
}
template <int Kind, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_operand(FpropHaloFilterIterator<Tile>&,
                                              DoubleBuffered<Tile, FpropHaloFilterIterator<Tile>, BX>&, int,
                                              const T (&)[E]) {
    cp_async_wait<0>();  // this thread's copies landed; the main loop's barrier then shows them to all
}

template <class Tile>
__device__ __forceinline__ FpropHaloIterator<Tile> make_iterator(
        FpropHaloIterator<Tile>*, const typename Tile::Element* x_g, index_t m, index_t M, int C, int C_per_group,
        int H, int W, int R, int S, int Q, index_t PQ, int stride_h, int stride_w, int pad_top, int pad_left,
        int dil_h, int dil_w) {
    return FpropHaloIterator<Tile>(x_g, m, M, C, C_per_group, H, W, R, S, Q, PQ, stride_h, stride_w, pad_top,
                                   pad_left, dil_h, dil_w);
}
template <class Tile>
__device__ __forceinline__ FpropHaloFilterIterator<Tile> make_iterator(
        FpropHaloFilterIterator<Tile>*, const typename Tile::Element* w_g, int k_base, int K_per_group,
        int C_per_group, int R, int S, const FpropHaloIterator<Tile>& a) {
    return FpropHaloFilterIterator<Tile>(w_g, k_base, K_per_group, C_per_group, R * S, a);
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
    static_assert(Staging != STAGING_TAP_MAJOR, "fprop's tap-major staging reads w 16 bytes a load: "
                                                "STAGING_TAP_MAJOR_VECTOR (the host reorders w)");
    constexpr bool TapMajor = Staging != STAGING_PLAIN, Halo = Staging == STAGING_HALO;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group), as fprop_implicit_gemm.
    const int k_tiles = (K_per_group + BN - 1) / BN;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    // Iterators: the halo pair, the tap-major pair (B by 128-bit loads), or fprop_implicit_gemm's.
    typedef typename Select<Halo, FpropHaloIterator<Tile>,
                            typename Select<TapMajor, FpropTapActivationIterator<Tile>,
                                            FpropActivationIterator<Tile>>::type>::type IterA;
    typedef typename Select<Halo, FpropHaloFilterIterator<Tile>,
                            typename Select<TapMajor, FpropFilterVectorIterator<Tile>,
                                            FpropFilterIterator<Tile>>::type>::type IterB;
    const T* x_g = x + (index_t)g * C_per_group * H * W;
    const T* w_g = w + (index_t)g * K_per_group * CRS;
    IterA a = make_iterator((IterA*)nullptr, x_g, m_base + IterA::Map::x(0), M, C, C_per_group, H, W, R, S, Q,
                            PQ, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
    IterB b = make_iterator((IterB*)nullptr, w_g, k_base, K_per_group, C_per_group, R, S, a);
    const FpropTensorEpilogue<Tile> epilogue{y, bias, m_base, M, PQ, K, g * K_per_group + k_base,
                                             K_per_group - k_base, activation};
    // The main loop's shared memory: a static variable, or the launch's dynamic shared memory
    // for the halo tile's (above 48 KiB; the host passes its size).
    typedef TensorShared<Tile, IterA, IterB> Shared;
    __shared__ __align__(16) typename Select<Halo, char, Shared>::type static_shared;
    extern __shared__ __align__(16) unsigned char dynamic_shared[];
    Shared& shared = *reinterpret_cast<Shared*>(Halo ? (void*)dynamic_shared : (void*)&static_shared);
    tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging, Kind)>(shared, a, b, CRS, epilogue);
}
