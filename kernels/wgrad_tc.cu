// wgrad_tc.cu: the weight gradient dw = conv2d_weight(x, dy) on tensor cores, for float16 and
// bfloat16 (float32 accumulation) and float32 in TF32: the implicit GEMM of wgrad_implicit_gemm
// (wgrad.cu: M = K/groups output channels, N = C/groups·R·S taps, reduction N·P·Q pixels, split-K
// over blockIdx.z), with the same iterators reading dy and x where they lie (NCHW, no transpose
// kernel), on gemm_tc.cuh's tensor-core main loop. sm_80+ only; an older GPU runs wgrad.cu.
// 3×3 filters take the halo staging (below): x staged once a k-tile for all 9 taps, a
// block all taps of 32 channels; the others the tap-major or plain iterators, a block one tap.
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

// A of the halo staging: WgradGradientVectorIterator's runs, 8 bytes (P·Q a multiple of 4, so
// that res4's 14×14 takes it; 16-byte ones would cost an instruction a k-tile less) copied by
// cp.async straight to shared memory, no registers: issued before a k-tile's math, waited for
// after it; a run past the reduction or the output channels copies zeros. Its pointer steps BK
// pixels a k-tile and an image's other channels where the run leaves an image (P·Q ≥ BK: once).
// A quarter-warp's copies land in 8 rows 80 bytes apart, a half-warp's in both 8-byte halves of
// 16 bytes of them: the 32 banks once, conflict-free.
template <class Tile>
struct WgradGradientCopyIterator {
    typedef typename Tile::Element T;
    static constexpr bool KFast = true;
    typedef VectorStagingMap<Tile::BK, Tile::BM, Tile::THREADS, 8 / sizeof(T)> Map;
    const T* dy_t;        // this thread's first run of the k-tile
    index_t image_step;   // from an image's end to the next image's start, same channel: (K - 1)·P·Q
    int channel_stride;   // Map::STEP output channels: STEP·P·Q elements
    int channels_left, pixel, PQ;  // pixel: the run's p·Q + q

    __device__ WgradGradientCopyIterator(const T* dy_g, index_t e, int k_base, int K_per_group, int K, int P, int Q)
        : image_step((index_t)(K - 1) * P * Q), channel_stride(Map::STEP * P * Q),
          channels_left(K_per_group - k_base), pixel((int)(e % (P * Q))), PQ(P * Q) {
        dy_t = dy_g + (e / PQ) * K * PQ + (index_t)(k_base + Map::x(0)) * PQ + pixel;
    }
    template <class Operand>
    __device__ __forceinline__ void copy(Operand& tile, int k_remaining) const {
        const bool live = Map::k(0) < k_remaining;
#pragma unroll
        for (int u = 0; u < Map::ELEMS / Map::VEC; u++)
            cp_async_zfill<8>(&tile.at(Map::k(u * Map::VEC), Map::x(u * Map::VEC)), dy_t + u * channel_stride,
                              live && Map::x(u * Map::VEC) < channels_left);
        cp_async_commit();
    }
    __device__ __forceinline__ void advance() {
        dy_t += Tile::BK;
        pixel += Tile::BK;
        if (pixel >= PQ) pixel -= PQ, dy_t += image_step;
    }
};
template <int Kind, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_first(WgradGradientCopyIterator<Tile>& a,
                                            DoubleBuffered<Tile, WgradGradientCopyIterator<Tile>, BX>& shared,
                                            T (&)[E], int reduction) {
    a.copy(shared.tile[0], reduction);
    cp_async_wait<0>();
}
template <class Tile, int BX, typename T, int E>
__device__ __forceinline__ void load_operand(WgradGradientCopyIterator<Tile>& a,
                                             DoubleBuffered<Tile, WgradGradientCopyIterator<Tile>, BX>& shared,
                                             int buffer, T (&)[E], int k_remaining) {
    a.copy(shared.tile[buffer], k_remaining);
}
template <int Kind, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_operand(WgradGradientCopyIterator<Tile>&,
                                              DoubleBuffered<Tile, WgradGradientCopyIterator<Tile>, BX>&, int,
                                              const T (&)[E]) {
    cp_async_wait<0>();  // this thread's copies landed; the main loop's barrier shows them to all
}

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

// ---- The halo staging (STAGING_HALO): x staged once a k-tile for every tap ----
// For filters of WGRAD_HALO_TAPS taps (3×3; wgrad_halo_fits on the host). A block
// owns BM output channels × 32 input channels × all 9 taps: BN = 288 GEMM columns, 8 warps of
// 64 × 72, warp (i, o) output channels 64i.. and channel octet o (channels 8o..8o+7) at every tap,
// an mma tile of 8 columns a tap: column 72o + 8·tap + c of the block is channel 8o + c at that
// tap. A is dy copied 8 bytes at a time (WgradGradientCopyIterator). B[(n,p,q), (c,r,s)]
// = x[n, c, p·stride_h - pad_top + r·dil_h, q·stride_w - pad_left + s·dil_w] is staged once a
// k-tile as a patch of x, as fprop's halo patch (HaloPatch) is: the padded rows
// g = n·Hp + p·stride_h + r·dil_h that the
// k-tile's BK pixels reach (Hp padded rows an image), each of Wp padded columns (one more before
// them where pad_left is odd, and one after to make the row even), a position holding the
// block's 32 channels contiguous in 80 bytes. Pixel j at tap (r, s) is then the 16-byte row
// position(j) + r·dil_h·Wp + s·dil_w of each octet, which ldmatrix.trans turns into B's
// fragments (k: pixels, n: channels): a position is staged once for the 9 taps that read it
// where the tap-major staging stages each pixel once a tap, 16 bits at a time. Each buffer of the
// double-buffered patch has its k-tile's table of its BK pixels' positions, written by threads
// 0..BK-1 (a pixel each). A unit is 8 channels of two neighbouring positions, as
// FpropHaloIterator's: 8 four-byte loads, two 16-byte stores; a thread stages up to
// WgradHaloIterator::SLOTS units a k-tile. P·Q ≥ BK (the host checks), so a k-tile's pixels lie
// in at most two images. Pixels past the reduction (the last split's last k-tile) are pixels of
// an image N, all padding: their positions are zeros, as their dy is.
// Slots units a thread a k-tile stage a patch of up to Slots·THREADS / 2 positions: STAGING_HALO
// takes 2 (256 positions), STAGING_HALO_WIDE 3 (384: stride 2 on images 14 to 28 wide), whose
// third unit costs its loop a fifth more instructions.
// Where W is odd a pair of positions is not one word of x, and where P·Q is not a multiple of 4
// dy's runs are not 8-byte ones (ResNet-50's res5, 7×7): STAGING_HALO_ODD loads each position of
// a unit with its own 2-byte loads (Halves), the pair packed into the same words, and reads dy an
// element a load (WgradGradientStridedIterator, through registers); one unit a thread (patches of
// up to 128 positions), which leaves the registers those staging loads take.
#define WGRAD_HALO_TAPS 9

template <class Tile, int Slots>
struct WgradHaloPatch {
    typedef typename Tile::Element T;
    static constexpr int PITCH = 32 + 8;  // elements a position: 80 bytes, as HaloPatch's
    int position[2][Tile::BK];            // each buffer's pixels: position(j) at tap (0, 0), bytes
    T patch[2][Slots * Tile::THREADS / 2][PITCH];
};

template <class Tile, int Slots, bool Halves = false>
struct WgradHaloIterator {
    typedef typename Tile::Element T;
    typedef WgradHaloPatch<Tile, Slots> Shared;
    static constexpr bool KFast = false;  // the warps read B by ldmatrix.trans
    static constexpr int PITCH = Shared::PITCH, UNIT = 8, SLOTS = Slots;
    // x's addressing: words (pairs of elements, a unit's loads), or Halves, elements
    static constexpr int PER_WORD = Halves ? 1 : 2;
    typedef typename Select<Halves, T, unsigned>::type Word;
    static constexpr int SLOT_BYTES = Tile::THREADS / 4 * 2 * PITCH * (int)sizeof(T);  // a slot's pairs on
    static_assert(Tile::BN == 32 * WGRAD_HALO_TAPS && Tile::WN == 8 * WGRAD_HALO_TAPS && Tile::BK == 32,
                  "a block: 32 channels at every tap, a warp an octet of them");
    typedef unsigned Staged;  // a unit's registers: channel j of both positions, word j
    struct Map {
        static constexpr int ELEMS = SLOTS * UNIT;
    };
    const Word* x_c;              // x's words (Halves: elements), image 0, the block's first channel
    ReductionDigits first, step;  // the k-tile's first pixel (n, p, q); BK pixels as digits
    int pixel_rows, pixel_columns;  // thread j < BK's pixel from the first: j / Q rows, j % Q columns
    int image_words, plane_words;  // C·H·W / PER_WORD (< 2^31 / 2, wgrad_halo_fits), H·W / PER_WORD
    int N, H, W, P, Q, Hp, Wp, pad_top, first_column, stride_h, stride_w;
    int row[SLOTS], column[SLOTS];  // each unit's patch row (-1 past the patch) and x column (its first position's)
    int channel_words, store_bytes;  // the units' octet's offset in x (words); the first unit's bytes in a buffer
    int tap_bytes[(WGRAD_HALO_TAPS + 1) / 2];  // this lane's taps of each pair of mma tiles, at its
                                                // warp's octet: ldmatrix's bytes from a pixel's row

    __device__ WgradHaloIterator(const T* x_c_, index_t e, int N_, int C, int H_, int W_, int R, int S, int P_,
                                 int Q_, int stride_h_, int stride_w_, int pad_top_, int pad_left, int dil_h,
                                 int dil_w, int positions)
        : x_c(reinterpret_cast<const Word*>(x_c_)), first(ReductionDigits::of(e, P_, Q_)),
          step(ReductionDigits::of(Tile::BK, P_, Q_)), pixel_rows(threadIdx.x % Tile::BK / Q_),
          pixel_columns(threadIdx.x % Tile::BK % Q_),
          image_words(C * H_ * W_ / PER_WORD), plane_words(H_ * W_ / PER_WORD), N(N_), H(H_), W(W_), P(P_), Q(Q_),
          pad_top(pad_top_), stride_h(stride_h_), stride_w(stride_w_) {
        Hp = (P - 1) * stride_h + (R - 1) * dil_h + 1;
        first_column = pad_left & 1;
        Wp = ((Q - 1) * stride_w + (S - 1) * dil_w + 1 + first_column + 1) / 2 * 2;
        // Unit u: 16 consecutive units are 4 pairs × 4 octets, a quarter-warp 4 pairs × 2 octets:
        // 16-byte stores 160 bytes apart in pairs and 16 in octets, the 8 bank groups once. Slot
        // s is unit threadIdx.x + s·THREADS: THREADS / 4 pairs on, the same octet.
        const int u = threadIdx.x, first_pair = u / 16 * 4 + u % 4, unit_octet = u / 8 % 2 * 2 + u / 4 % 2;
        channel_words = unit_octet * UNIT * plane_words;
        store_bytes = (2 * first_pair * PITCH + unit_octet * UNIT) * (int)sizeof(T);
#pragma unroll
        for (int s = 0; s < SLOTS; s++) {
            const int pair = first_pair + s * Tile::THREADS / 4;
            row[s] = pair < positions / 2 ? pair / (Wp / 2) : -1;
            column[s] = 2 * (pair % (Wp / 2)) - first_column - pad_left;  // even: a pair lies in x or
                                                                           // outside it (W even)
        }
        // ldmatrix.x4's lanes 16-31 read the pair's second tile; the warp's octet is 16 bytes in
        const int lane_taps = threadIdx.x % 32 / 16, octet = threadIdx.x / 32 / Tile::WARPS_M;
#pragma unroll
        for (int t = 0; t < (WGRAD_HALO_TAPS + 1) / 2; t++) {
            const int tap = min(2 * t + lane_taps, WGRAD_HALO_TAPS - 1);  // the ninth: lanes 0-15 alone
            tap_bytes[t] = ((tap / S) * dil_h * Wp + tap % S * dil_w) * PITCH * (int)sizeof(T) + octet * 16;
        }
    }
    // The next k-tile's units: 8 channels of a pair of positions, zeros in the padding.
    __device__ __forceinline__ void load(Staged (&v)[Map::ELEMS], int) const {
        const Word* x_n = x_c + (index_t)first.hi * image_words;
#pragma unroll
        for (int s = 0; s < SLOTS; s++) {
            if (row[s] < 0) continue;  // past the patch's pairs
            int h = first.mid * stride_h + row[s], image = 0;  // of image first.hi; past Hp the next's
            if (h >= Hp) h -= Hp, image = 1;
            h -= pad_top;
            const bool inside =
                    first.hi + image < N && (unsigned)h < (unsigned)H && (unsigned)column[s] < (unsigned)W;
            // int: two images of x (wgrad_halo_fits); h·W + column even where W is (words: a shift,
            // not a signed division's two more instructions; a negative offset is never loaded)
            const int offset = image * image_words + ((h * W + column[s]) >> (PER_WORD / 2)) + channel_words;
            Staged(&unit)[UNIT] = *reinterpret_cast<Staged(*)[UNIT]>(&v[s * UNIT]);
            if constexpr (Halves) {  // each position its own loads: the second may lie past x's row
                T first_position[UNIT], second[UNIT];
                load_strided_or_zero(first_position, x_n, offset, plane_words, inside);
                load_strided_or_zero(second, x_n, offset + 1, plane_words, inside && column[s] + 1 < W);
#pragma unroll
                for (int j = 0; j < UNIT; j++) unit[j] = first_position[j] | unsigned(second[j]) << 16;
            } else {
                load_strided_or_zero(unit, x_n, offset, plane_words, inside);
            }
        }
    }
    __device__ __forceinline__ void advance() {
        first.add(step, P, Q);
    }
    // The units into `buffer`, and the k-tile's pixel table.
    __device__ __forceinline__ void store(Shared& shared, int buffer, const Staged (&v)[Map::ELEMS]) const {
        char* patch = reinterpret_cast<char*>(&shared.patch[buffer][0][0]);
#pragma unroll
        for (int s = 0; s < SLOTS; s++) {
            if (row[s] < 0) continue;
            store_position_pair<Tile::KIND>(patch + store_bytes + s * SLOT_BYTES, PITCH * (int)sizeof(T),
                                            &v[s * UNIT]);
        }
        if (threadIdx.x < Tile::BK) {  // pixel j's patch row: its padded row from the k-tile's first's
            int q = first.lo + pixel_columns, rows = pixel_rows;
            if (q >= Q) q -= Q, rows++;
            // in the next image: Hp padded rows an image, of which its pixel rows reach P·stride_h
            const int patch_row = rows * stride_h + (first.mid + rows >= P ? Hp - P * stride_h : 0);
            shared.position[buffer][threadIdx.x] =
                    ((patch_row * Wp + first_column + q * stride_w) * PITCH) * (int)sizeof(T);
        }
    }
};

// What the warps read for a k-tile: the buffer, and this lane's ldmatrix rows (its pixel of each
// k-step) at tap (0, 0).
template <class Tile, int Slots, bool Halves>
struct WgradHaloView {
    const WgradHaloIterator<Tile, Slots, Halves>& b;
    const char* patch;
    int row[Tile::BK / Tile::MMA_K];
};
template <int Kind, class Tile, int Slots, bool Halves, typename T, int E>
__device__ __forceinline__ void stage_first(WgradHaloIterator<Tile, Slots, Halves>& b,
                                            WgradHaloPatch<Tile, Slots>& shared, T (&v)[E], int) {
    b.load(v, 0);
    b.store(shared, 0, v);
}
template <class Tile, int Slots, bool Halves, typename T, int E>
__device__ __forceinline__ void load_operand(WgradHaloIterator<Tile, Slots, Halves>& b, WgradHaloPatch<Tile, Slots>&,
                                             int, T (&v)[E], int) {
    b.load(v, 0);
}
template <int Kind, class Tile, int Slots, bool Halves, typename T, int E>
__device__ __forceinline__ void stage_operand(WgradHaloIterator<Tile, Slots, Halves>& b,
                                              WgradHaloPatch<Tile, Slots>& shared, int buffer, const T (&v)[E]) {
    b.store(shared, buffer, v);
}
template <class Tile, int Slots, bool Halves>
__device__ __forceinline__ WgradHaloView<Tile, Slots, Halves> operand_view(
        const WgradHaloIterator<Tile, Slots, Halves>& b, const WgradHaloPatch<Tile, Slots>& shared, int buffer) {
    // ldmatrix.x4's matrices: (pixels 0-7, tile j), (8-15, j), (0-7, j + 1), (8-15, j + 1)
    const int lane = threadIdx.x % 32, pixel = lane / 8 % 2 * 8 + lane % 8;
    WgradHaloView<Tile, Slots, Halves> view{b, reinterpret_cast<const char*>(&shared.patch[buffer][0][0]), {}};
#pragma unroll
    for (int k = 0; k < Tile::BK / Tile::MMA_K; k++) view.row[k] = shared.position[buffer][k * Tile::MMA_K + pixel];
    return view;
}
template <int Kind, bool KFast, class Tile, int Slots, bool Halves>
__device__ __forceinline__ void load_b_fragments(unsigned (&b0)[2], unsigned (&b1)[2],
                                                 const WgradHaloView<Tile, Slots, Halves>& view, int k0, int, int j) {
    const char* row = view.patch + view.row[k0 / Tile::MMA_K] + view.b.tap_bytes[j / 2];
    if (j + 1 == WGRAD_HALO_TAPS) {  // the ninth tap alone: lanes 0-15's rows
        ldmatrix_x2_trans(b0, row);
        return;
    }
    unsigned r[4];
    ldmatrix_x4<true>(r, row);
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// This split's partial tile into its slice of the workspace (dw's layout): accumulator (row, col)
// at out[row·C/groups·R·S + column(col)], column(col) = col·column_stride (column_stride: 1, or R·S
// for tap-major columns); the halo tile's column 72o + 8·tap + c (Halo) is channel 8o + c at that
// tap, (8o + c)·9 + tap, and every one exists (C/groups a multiple of 32).
template <class Tile, bool Halo = false>
struct WgradTensorEpilogue {
    float* out;  // the block's first element: partial[z][g·K/groups + k_base][its first column]
    int CRS, column_stride, rows_left, cols_left;

    __device__ __forceinline__ int column(int j, int e) const {
        if (!Halo) return Tile::col(j, e) * column_stride;
        const int c = Tile::col(0, e) / Tile::WN * 8 + Tile::col(0, e) % Tile::WN;  // its channel
        return c * WGRAD_HALO_TAPS + j;
    }
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
                        if (Halo || Tile::col(j, e) < cols_left)
                            out[(index_t)row * CRS + column(j, e)] = acc[i][j][2 * h + e];
            }
    }
};

// Assumes P·Q + BK < 2^31 and chunk + BK < 2^31 (checked on the host), as wgrad_implicit_gemm.
// Staging (STAGING_*, the host's choice): the halo staging above (blockIdx.x names a tile of 32
// channels at every tap; its tile 128 × 288 alone, with `positions` the problem's patch,
// wgrad_halo_positions); tap-major where C/groups is a multiple of BK (blockIdx.x names a tap
// (r, s) and a tile of BN channels, B from WgradTapActivationIterator), and with dy read 16 bytes
// a load (WgradGradientVectorIterator); otherwise BN consecutive (c,r,s) from
// WgradActivationIterator and dy an element a load (WgradGradientStridedIterator).
template <int Kind, int Staging, int BM, int BN, int BK, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<Kind, BM, BN, BK, WM, WN>::THREADS, 1)
wgrad_tensor_core(const typename TensorStorage<Kind>::type* __restrict__ x,
                  const typename TensorStorage<Kind>::type* __restrict__ dy, float* __restrict__ partial,
                  int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dil_h, int dil_w, int groups, index_t chunk, int positions) {
    typedef TensorTile<Kind, BM, BN, BK, WM, WN> Tile;
    constexpr bool Halo = Staging == STAGING_HALO || Staging == STAGING_HALO_WIDE || Staging == STAGING_HALO_ODD;
    constexpr bool TapMajor = Staging != STAGING_PLAIN && !Halo;
    constexpr bool VectorDy = Staging == STAGING_TAP_MAJOR_VECTOR;
    const int C_per_group = C / groups, K_per_group = K / groups, CRS = C_per_group * R * S;
    // The block's rows and split, as wgrad_implicit_gemm.
    const int k_tiles = (K_per_group + BM - 1) / BM;
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BM;
    const index_t npq = (index_t)N * P * Q, red_begin = blockIdx.z * chunk;
    const int reduction = (int)((red_begin + chunk < npq ? red_begin + chunk : npq) - red_begin);
    typedef typename Select<Halo && Staging != STAGING_HALO_ODD, WgradGradientCopyIterator<Tile>,
                            typename Select<VectorDy, WgradGradientVectorIterator<Tile>,
                                            WgradGradientStridedIterator<Tile>>::type>::type IterA;
    IterA a(dy + (index_t)g * K_per_group * P * Q, red_begin + IterA::Map::k(0), k_base, K_per_group, K, P, Q);
    const typename Tile::Element* x_g = x + (index_t)g * C_per_group * H * W;
    float* out = partial + (index_t)blockIdx.z * K * CRS + (index_t)(g * K_per_group + k_base) * CRS;
    if constexpr (Halo) {  // the launch's dynamic shared memory (above 48 KiB), wgrad_halo_shared_bytes
        const int c_base = blockIdx.x * 32;
        typedef WgradHaloIterator<Tile, Staging == STAGING_HALO_WIDE ? 3 : Staging == STAGING_HALO ? 2 : 1,
                                  Staging == STAGING_HALO_ODD> IterB;
        IterB b(x_g + (index_t)c_base * H * W, red_begin, N, C, H, W, R, S, P, Q, stride_h, stride_w, pad_top,
                pad_left, dil_h, dil_w, positions);
        const WgradTensorEpilogue<Tile, true> epilogue{out + c_base * WGRAD_HALO_TAPS, CRS, 1, K_per_group - k_base,
                                                       C_per_group - c_base};
        extern __shared__ __align__(16) unsigned char dynamic_shared[];
        auto& shared = *reinterpret_cast<TensorShared<Tile, IterA, IterB>*>(dynamic_shared);
        tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging, Kind)>(shared, a, b, reduction, epilogue);
    } else if constexpr (TapMajor) {  // (constexpr: one __shared__ tile pair an instance)
        const int c_tiles = (C_per_group + BN - 1) / BN;
        const int tap = blockIdx.x / c_tiles, c_base = (blockIdx.x % c_tiles) * BN;
        typedef WgradTapActivationIterator<Tile> IterB;
        IterB b(x_g, red_begin + IterB::Map::k(0), c_base, C_per_group, C, H, W, tap / S, tap % S, P, Q,
                stride_h, stride_w, pad_top, pad_left, dil_h, dil_w);
        const WgradTensorEpilogue<Tile> epilogue{out + c_base * R * S + tap, CRS, R * S, K_per_group - k_base,
                                                 C_per_group - c_base};
        __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
        tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging, Kind)>(shared, a, b, reduction, epilogue);
    } else {
        const int crs_base = blockIdx.x * BN;
        typedef WgradActivationIterator<Tile> IterB;
        IterB b(x_g, red_begin + IterB::Map::k(0), crs_base, CRS, C, H, W, R, S, P, Q, stride_h, stride_w, pad_top,
                pad_left, dil_h, dil_w);
        const WgradTensorEpilogue<Tile> epilogue{out + crs_base, CRS, 1, K_per_group - k_base, CRS - crs_base};
        __shared__ __align__(16) TensorShared<Tile, IterA, IterB> shared;
        tensor_implicit_gemm<Tile, k_tiles_an_iteration(Staging, Kind)>(shared, a, b, reduction, epilogue);
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
