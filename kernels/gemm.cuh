// gemm.cuh: the tiled implicit-GEMM main loop that fprop, dgrad and wgrad share.
//
// A block computes a BM×BN tile of one group's GEMM output C = A·B, reducing over BK-deep k-tiles:
//
//   block   BM×BN, (BM/WM)·(BN/WN) warps;
//   warp    WM×WN, its 32 lanes a LANES_M × LANES_N grid (lane_m fastest);
//   thread  TM×TN accumulators, as (TM/V)×(TN/V) sub-tiles of V×V, V = 16 bytes / sizeof(T)
//           (4 floats, 2 doubles). Sub-tile (u, v) of a lane sits at rows
//           warp_m·WM + u·LANES_M·V + lane_m·V + [0, V) and columns likewise: a warp's lanes tile
//           each sub-tile row of the warp tile side by side, so one k step of a thread is
//           TM/V + TN/V 128-bit shared loads (LDS.128) feeding TM·TN FMAs.
//
// Shared memory holds A k-major (a_tile[k][m]) and B (b_tile[k][n]), each row padded by V elements
// (16 bytes), in STAGES buffers. Bank conflicts, worked out (4-byte banks, 32 of them):
//   - main-loop loads: a warp's LDS.128 of a_tile[k] reads LANES_M distinct 16-byte vectors that
//     lie side by side (≤ 32 consecutive words), each 8-lane phase at most that: one wavefront per
//     phase, the ideal. b_tile likewise with LANES_N.
//   - staging stores (or cp.async writes, the same addresses) along the tile's row (StagingMap with
//     KFast = false): 32 lanes store 32 consecutive elements of one row: conflict-free for 4-byte
//     T; 8-byte T: 16 lanes a phase, 32 consecutive words.
//   - staging stores along the reduction (KFast = true, BK = 8): a warp stores 8 rows k × 4 columns
//     x (float) or, per 16-lane phase, 8 × 2 (double). The word of (k, x) is k·(BX + V) + x
//     (times 2 for double); BX is a multiple of 32 words' worth, so the bank is 4k + x (float) or
//     4k + 2x (+1) (double): all 32 banks distinct. The padding of V elements is what spreads the
//     rows; it also keeps every row 16-byte aligned for LDS.128.
//
// Pipeline (GemmStaging), one __syncthreads per k-tile either way:
//   - STAGES = 2: the next k-tile's global loads go into registers before the current tile's math
//     and are stored to the other shared buffer after it, so the loads' latency hides behind the
//     FMAs.
//   - STAGES = 3 or 4 (sm_80+): cp.async copies global → shared with no register round trip, into a
//     ring of STAGES buffers, as CUTLASS's multistage main loop: STAGES - 1 k-tiles are in flight
//     before the first math, and each k-tile waits for its oldest copy group, so a load has
//     STAGES - 1 k-tiles of math to land in, not one.
//
// An operand is fed by an *iterator* (one per op and operand, in the op's .cu file):
//   static constexpr bool KFast;       // staging order (StagingMap); the one with coalesced reads
//   ElementSource<T> source(int i, int k_remaining);  // where staged element i of the current
//                                      // k-tile comes from; invalid (zero) if its k >= k_remaining
//   void load(T (&v)[ELEMS], int k_remaining);  // the ELEMS elements into registers
//   void advance();                    // to the next k-tile
// It reads x, w or dy, gives zero in the padding or outside a stride phase, and steps its
// reduction coordinates from one k-tile to the next without a division (ReductionDigits).
// The epilogue is a functor called with the finished accumulators; Tile::row / Tile::col say which
// output element each accumulator holds.
#pragma once
#include "common.cuh"

template <typename T, int BM_, int BN_, int BK_, int WM_, int WN_, int TM_, int TN_, int STAGES_ = 2>
struct GemmTile {
    typedef T Element;
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, TM = TM_, TN = TN_;
    static constexpr int STAGES = STAGES_;  // shared buffers of k-tiles: see the pipeline above
    static constexpr int V = 16 / sizeof(T);  // elements per 128-bit shared load
    static constexpr int PAD = V;             // row padding: see the bank-conflict note above
    static constexpr int LANES_M = WM / TM, LANES_N = WN / TN;
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static_assert(LANES_M * LANES_N == 32, "a warp's lanes tile the warp tile exactly");
    static_assert(TM % V == 0 && TN % V == 0, "thread tiles are whole V×V sub-tiles");
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % TM == 0 && WN % TN == 0, "tiles nest");
    static_assert(BK == 8, "the KFast staging's bank-conflict analysis assumes BK = 8");
    static_assert(STAGES >= 2 && STAGES <= 4, "2 (registers) or 3-4 (cp.async) stages");

    // The output element accumulator acc[i][j] of this thread holds: (row(i), col(j)) of the tile.
    static __device__ __forceinline__ int row(int i) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp % WARPS_M) * WM + (i / V) * (LANES_M * V) + (lane % LANES_M) * V + i % V;
    }
    static __device__ __forceinline__ int col(int j) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp / WARPS_M) * WN + (j / V) * (LANES_N * V) + (lane / LANES_M) * V + j % V;
    }
};

// Which elements of a BK×BX operand tile thread t stages: ELEMS of them, element i at (k(t, i),
// x(t, i)). KFast: consecutive threads take consecutive k (k = t mod BK, fixed per thread) and the
// thread steps along x by THREADS/BK. Otherwise consecutive threads take consecutive x (fixed per
// thread) and the thread steps along k by THREADS/BX.
template <int BK, int BX, int THREADS, bool KFast>
struct StagingMap {
    static constexpr int ELEMS = BK * BX / THREADS;
    static constexpr int STEP = KFast ? THREADS / BK : THREADS / BX;
    static_assert(KFast ? THREADS % BK == 0 : THREADS % BX == 0, "one fixed coordinate per thread");
    static_assert(ELEMS * THREADS == BK * BX, "the threads cover the tile exactly");
    static __device__ __forceinline__ int k(int i) {
        return KFast ? threadIdx.x % BK : threadIdx.x / BX + i * STEP;
    }
    static __device__ __forceinline__ int x(int i) {
        return KFast ? threadIdx.x / BK + i * STEP : threadIdx.x % BX;
    }
};

// A reduction index as three digits (hi, mid, lo) of the mixed radix (·, MID, LO): fprop's
// (c, r, s), dgrad's (k, tap row, tap column), wgrad's (n, p, q). Set once with divisions, then
// advanced by a fixed step given as its own digits (each below its radix): a digit overflows at
// most once, so a compare and a subtraction carry it.
struct ReductionDigits {
    int hi, mid, lo;

    // I = int where the index fits (a 32-bit division), index_t where it may not.
    template <typename I>
    __device__ __forceinline__ static ReductionDigits of(I k, int mid_radix, int lo_radix) {
        const I hi_and_mid = k / lo_radix;
        return ReductionDigits{(int)(hi_and_mid / mid_radix), (int)(hi_and_mid % mid_radix),
                               (int)(k % lo_radix)};
    }
    __device__ __forceinline__ void add(const ReductionDigits& step, int mid_radix, int lo_radix) {
        lo += step.lo;
        mid += step.mid;
        hi += step.hi;
        if (lo >= lo_radix) {
            lo -= lo_radix;
            mid++;
        }
        if (mid >= mid_radix) {
            mid -= mid_radix;
            hi++;
        }
    }
};

// Where a staged element comes from: its address in x, w or dy, valid = false where the element is
// zero (padding, outside a stride phase, past the tile's edge or the reduction); the address is
// then not read.
template <typename T>
struct ElementSource {
    const T* address;
    bool valid;
};

// One k step of the warp-level product: the thread's TM values of A and TN values of B, loaded as
// 128-bit vectors, and their TM·TN products added to acc in place (k order fixed: deterministic).
template <class Tile, typename T>
__device__ __forceinline__ void warp_tile_product(T (&acc)[Tile::TM][Tile::TN],
                                                  const T (&a_tile)[Tile::BK][Tile::BM + Tile::PAD],
                                                  const T (&b_tile)[Tile::BK][Tile::BN + Tile::PAD]) {
    constexpr int V = Tile::V;
    const int a_col = Tile::row(0), b_col = Tile::col(0);
#pragma unroll
    for (int k = 0; k < Tile::BK; k++) {
        T a[Tile::TM], b[Tile::TN];
#pragma unroll
        for (int u = 0; u < Tile::TM / V; u++)
            load_vector16(&a[u * V], &a_tile[k][a_col + u * Tile::LANES_M * V]);
#pragma unroll
        for (int u = 0; u < Tile::TN / V; u++)
            load_vector16(&b[u * V], &b_tile[k][b_col + u * Tile::LANES_N * V]);
#pragma unroll
        for (int i = 0; i < Tile::TM; i++)
#pragma unroll
            for (int j = 0; j < Tile::TN; j++) acc[i][j] += a[i] * b[j];
    }
}

// Store a thread's staged elements (registers) to its places in a shared operand tile.
template <class Map, int BK, int BX, typename T>
__device__ __forceinline__ void store_staged(T (&tile)[BK][BX], const T (&v)[Map::ELEMS]) {
#pragma unroll
    for (int i = 0; i < Map::ELEMS; i++) tile[Map::k(i)][Map::x(i)] = v[i];
}

// Start the cp.async copies of a thread's staged elements of the iterator's current k-tile into
// their places in a shared operand tile (zero-filled where invalid).
template <class Iter, int BK, int BX, typename T>
__device__ __forceinline__ void copy_staged_async(T (&tile)[BK][BX], const Iter& it, int k_remaining) {
    typedef typename Iter::Map Map;
#pragma unroll
    for (int i = 0; i < Map::ELEMS; i++) {
        const ElementSource<T> e = it.source(i, k_remaining);
        cp_async_zfill<sizeof(T)>(&tile[Map::k(i)][Map::x(i)], e.address, e.valid);
    }
}

// The shared memory of the main loop: both operand tiles, STAGES buffers each. The kernel declares
// it (`__shared__ __align__(16) GemmShared<Tile> shared;`), so that its static shared memory is its
// own: a __shared__ inside implicit_gemm would belong to no kernel in particular.
template <class Tile>
struct GemmShared {
    typename Tile::Element a_tile[Tile::STAGES][Tile::BK][Tile::BM + Tile::PAD];
    typename Tile::Element b_tile[Tile::STAGES][Tile::BK][Tile::BN + Tile::PAD];
};

// How k-tiles reach shared memory: the one part of the main loop that depends on STAGES. Both
// versions give the loop the same steps, `read` naming the buffer its math reads:
//   start(reduction, k_tiles)  the first k-tile in shared memory and visible to the block (later
//             ones on their way);
//   fetch(k_remaining)  advance the iterators and issue the global reads of the next k-tile to
//             fetch, which has k_remaining elements of the reduction left;
//   land()    after the math on `read`: the next k-tile in shared memory, visible, `read` on it;
//   finish()  nothing in flight any more.
template <class Tile, class IterA, class IterB, bool Async = (Tile::STAGES > 2)>
struct GemmStaging;

// STAGES = 2: through registers. fetch() loads k-tile t + 1 while the math runs on k-tile t; land()
// stores it to the other buffer, which was last read before the previous barrier.
template <class Tile, class IterA, class IterB>
struct GemmStaging<Tile, IterA, IterB, false> {
    typedef typename Tile::Element T;
    GemmShared<Tile>& shared;
    IterA& a;
    IterB& b;
    int read = 0;
    T a_staged[IterA::Map::ELEMS], b_staged[IterB::Map::ELEMS];

    __device__ __forceinline__ void start(int reduction, int k_tiles) {
        if (k_tiles == 0) return;
        a.load(a_staged, reduction);
        b.load(b_staged, reduction);
        store_staged<typename IterA::Map>(shared.a_tile[0], a_staged);
        store_staged<typename IterB::Map>(shared.b_tile[0], b_staged);
        __syncthreads();
    }
    __device__ __forceinline__ void fetch(int k_remaining) {
        a.advance();  // issue the next tile's global loads now; they land while we multiply
        b.advance();
        a.load(a_staged, k_remaining);
        b.load(b_staged, k_remaining);
    }
    __device__ __forceinline__ void land() {
        store_staged<typename IterA::Map>(shared.a_tile[read ^ 1], a_staged);
        store_staged<typename IterB::Map>(shared.b_tile[read ^ 1], b_staged);
        __syncthreads();
        read ^= 1;
    }
    __device__ __forceinline__ void finish() {}
};

// STAGES = 3 or 4: cp.async into a ring of STAGES buffers, one commit group per k-tile. start()
// issues k-tiles 0 .. STAGES-2; while the math runs on k-tile t, fetch() issues k-tile t + STAGES-1
// into the buffer k-tile t - 1 left (read by every thread before the last barrier), and land()
// waits until only the STAGES - 2 newest groups are in flight: k-tile t + 1 has landed. Past the
// reduction's end the copies zero-fill (k_remaining <= 0), so the loop holds no branch around them.
template <class Tile, class IterA, class IterB>
struct GemmStaging<Tile, IterA, IterB, true> {
    static constexpr int STAGES = Tile::STAGES;
    GemmShared<Tile>& shared;
    IterA& a;
    IterB& b;
    int read = 0, write = 0;

    static __device__ __forceinline__ int next(int stage) { return stage + 1 == STAGES ? 0 : stage + 1; }
    __device__ __forceinline__ void issue(int k_remaining) {
        copy_staged_async(shared.a_tile[write], a, k_remaining);
        copy_staged_async(shared.b_tile[write], b, k_remaining);
        cp_async_commit();
        write = next(write);
    }
    __device__ __forceinline__ void start(int reduction, int) {
        issue(reduction);
#pragma unroll
        for (int stage = 1; stage < STAGES - 1; stage++) fetch(reduction - stage * Tile::BK);
        cp_async_wait<STAGES - 2>();
        __syncthreads();
    }
    __device__ __forceinline__ void fetch(int k_remaining) {
        a.advance();
        b.advance();
        issue(k_remaining);
    }
    __device__ __forceinline__ void land() {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        read = next(read);
    }
    // The copies past the reduction's end: a shared-memory epilogue (after its own barrier) may
    // then reuse the buffers.
    __device__ __forceinline__ void finish() { cp_async_wait<0>(); }
};

// The main loop: acc = A·B over a reduction of `reduction` elements (acc starts at zero), then
// epilogue(acc). A reduction of 0 gives the epilogue zeros.
template <class Tile, class IterA, class IterB, class Epilogue>
__device__ __forceinline__ void implicit_gemm(GemmShared<Tile>& shared, IterA& a, IterB& b,
                                              int reduction, const Epilogue& epilogue) {
    typedef typename Tile::Element T;
    T acc[Tile::TM][Tile::TN] = {};
    GemmStaging<Tile, IterA, IterB> staging{shared, a, b};
    const int k_tiles = (reduction + Tile::BK - 1) / Tile::BK;
    staging.start(reduction, k_tiles);
    // Every k-tile but the last: fetch the k-tile STAGES - 1 ahead of the one multiplied (k-tile
    // tile - 1) while multiplying it. The last is peeled off below, so the loop body holds no
    // branch around its loads and stores.
    for (int tile = 1; tile < k_tiles; tile++) {
        staging.fetch(reduction - (tile + Tile::STAGES - 2) * Tile::BK);
        warp_tile_product<Tile>(acc, shared.a_tile[staging.read], shared.b_tile[staging.read]);
        staging.land();
    }
    if (k_tiles > 0) warp_tile_product<Tile>(acc, shared.a_tile[staging.read], shared.b_tile[staging.read]);
    staging.finish();  // every copy has landed: none can overwrite what the epilogue stages
    epilogue(acc, shared);  // the operand tiles are free now: an epilogue may stage through them
}

// ---- The epilogue through shared memory --------------------------------------------------------
//
// implicit_gemm ends with epilogue(acc, shared): once every warp is past its last k-tile the
// operand tiles are free, and an epilogue may stage the block's output tile through them. Why:
// in the thread tiles above, a warp's store of one accumulator is LANES_N columns × LANES_M rows,
// V elements apart, which covers whole 32-byte sectors only when the output's rows start on sector
// boundaries (fprop: P·Q a multiple of a sector's elements; dgrad: W, and stride 1 along it;
// wgrad: C/groups·R·S). store_through_shared re-lays the tile so that a warp stores along the
// output's contiguous dimension: one *line* at a time (an output channel of y or dx, whose
// *positions* are the tile's rows M: AlongM; a row k of dw, whose positions are the tile's
// columns N), its lanes on consecutive positions. The op's store_line cuts the line into *runs*,
// stretches contiguous in memory (an image, a row of a stride phase), and store_run starts each
// run's warp stores on a sector boundary: only a run's first and last store touch a partial
// sector, which is the ideal for any P·Q and alignment whenever a run spans more than one store.
//
// The block tile does not fit in the operand tiles (128×128 floats are 64 KiB), so it goes in
// passes. A *slice* is every thread's accumulators of one thread-tile column j (AlongM: TM values
// of one output channel a thread) or row i: SLICE_LINES lines (one per warp and lane across the
// lines) of POSITIONS values. A pass stages as many slices as fit, a thread writing each V×V
// sub-tile as one 16-byte vector (STS.128), then each warp stores whole lines from shared memory.
//
// Bank conflicts (4-byte banks; a 16-byte access is served in phases of 8 lanes). lane_m is the
// fastest lane coordinate, so a phase's 8 lanes are PHASE_LINES lines × 8/PHASE_LINES vectors of
// consecutive positions: 32/PHASE_LINES consecutive words of each of its lines. A line is POSITIONS
// (a multiple of 32 words) plus a pad of 32/PHASE_LINES words (mod 32), so the phase's lines lie
// side by side across the 32 banks: conflict-free, and every vector stays 16-byte aligned (the pad
// is a multiple of 4 words). E.g. fprop, 128×128 float: PHASE_LINES = 2 (lanes 0-3 along M, 4-7
// the next channel), pad 16; wgrad: PHASE_LINES = 4, pad 8. Reading a line back, a warp's lanes
// take consecutive positions: 32 consecutive words a phase, conflict-free too.

// The unit global memory is served in; where p lies in its sector, in elements of T.
constexpr int SECTOR_BYTES = 32;
template <typename T>
__device__ __forceinline__ int sector_lead(const T* p) {
    return (int)(reinterpret_cast<unsigned long long>(p) % SECTOR_BYTES / sizeof(T));
}

template <class Tile, bool AlongM>
struct StagedTile {
    static constexpr int V = Tile::V;
    static constexpr int POSITIONS = AlongM ? Tile::BM : Tile::BN;
    static constexpr int LANES_LINE = AlongM ? Tile::LANES_N : Tile::LANES_M;  // lanes across lines
    static constexpr int WARPS_LINE = AlongM ? Tile::WARPS_N : Tile::WARPS_M;
    static constexpr int WARP_LINES = AlongM ? Tile::WN : Tile::WM;
    static constexpr int SLICE_LINES = WARPS_LINE * LANES_LINE;
    static constexpr int SLICES = AlongM ? Tile::TN : Tile::TM;
    static constexpr int PHASE_M = Tile::LANES_M < 8 ? Tile::LANES_M : 8;  // lane_m values a phase
    static constexpr int PHASE_LINES = AlongM ? 8 / PHASE_M : PHASE_M;
    static constexpr int PAD = (32 / PHASE_LINES) % 32 * 4 / (int)sizeof(typename Tile::Element);
    static constexpr int LINE_STRIDE = POSITIONS + PAD;
    static_assert(POSITIONS * sizeof(typename Tile::Element) % 128 == 0,
                  "a line spans whole rows of the 32 banks");

    // The most slices (a divisor of SLICES) whose lines fit in `capacity` elements.
    static constexpr __host__ __device__ int slices_per_pass(int capacity) {
        int best = 1;
        for (int d = 1; d <= SLICES; d++)
            if (SLICES % d == 0 && d * SLICE_LINES * LINE_STRIDE <= capacity) best = d;
        return best;
    }
    // The tile row (AlongM: column) held by line `line` of a pass whose first slice is `first`:
    // Tile::row / Tile::col of the warp and lane that staged it.
    static __device__ __forceinline__ int line_index(int first, int line) {
        const int s = first + line / SLICE_LINES, warp = line % SLICE_LINES / LANES_LINE,
                  lane = line % LANES_LINE;
        return warp * WARP_LINES + (s / V) * (LANES_LINE * V) + lane * V + s % V;
    }
};

// The block's output tile through `shared` (the main loop's, about to be overwritten): for every
// line, out.store_line(line, staged), called by all lanes of one warp, with `line` the tile column
// (AlongM) or row and `staged` its POSITIONS values, position t being tile row (column) t.
template <class Tile, bool AlongM, class Shared, class Output>
__device__ __forceinline__ void store_through_shared(
    const typename Tile::Element (&acc)[Tile::TM][Tile::TN], Shared& shared, const Output& out) {
    typedef typename Tile::Element T;
    typedef StagedTile<Tile, AlongM> Staged;
    constexpr int V = Tile::V, SLICE_ELEMS = Staged::SLICE_LINES * Staged::LINE_STRIDE;
    static_assert(SLICE_ELEMS * sizeof(T) <= sizeof(Shared), "a slice fits in the operand tiles");
    constexpr int PER_PASS = Staged::slices_per_pass(sizeof(Shared) / sizeof(T));
    T* lines = reinterpret_cast<T*>(&shared);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int my_line = AlongM ? (warp / Tile::WARPS_M) * Tile::LANES_N + lane / Tile::LANES_M
                               : (warp % Tile::WARPS_M) * Tile::LANES_M + lane % Tile::LANES_M;
    __syncthreads();  // every warp is past its last k-tile's reads of the operand tiles
#pragma unroll
    for (int pass = 0; pass < Staged::SLICES / PER_PASS; pass++) {
#pragma unroll
        for (int q = 0; q < PER_PASS; q++) {
            const int s = pass * PER_PASS + q;
            T* line = lines + (q * Staged::SLICE_LINES + my_line) * Staged::LINE_STRIDE;
            if constexpr (AlongM) {
#pragma unroll
                for (int u = 0; u < Tile::TM / V; u++) {
                    T column[V];
#pragma unroll
                    for (int v = 0; v < V; v++) column[v] = acc[u * V + v][s];
                    store_vector16(&line[Tile::row(u * V)], column);
                }
            } else {
#pragma unroll
                for (int u = 0; u < Tile::TN / V; u++)
                    store_vector16(&line[Tile::col(u * V)], &acc[s][u * V]);
            }
        }
        __syncthreads();
        for (int l = warp; l < PER_PASS * Staged::SLICE_LINES; l += Tile::THREADS / 32)
            out.store_line(Staged::line_index(pass * PER_PASS, l), lines + l * Staged::LINE_STRIDE);
        if (pass + 1 < Staged::SLICES / PER_PASS) __syncthreads();  // the next pass overwrites
    }
}

// One run of a staged line: src[0, len) (+ bias when has_bias, then Activation) to dst[0],
// dst[step], ..., dst[(len-1)·step], by the lanes of a warp, Width consecutive values a lane:
// 1, or V in one 128-bit load and store (then step is 1 and dst, src and len are whole vectors).
// The warp's stores start on dst's sector, so that each covers whole sectors but the run's first
// and last. With step > 1 a store's 32 values span step times their bytes: above the ideal, which
// counts the bytes alone, but in the fewest sectors that span allows. Lanes past either end of
// the run repeat its first or last value (the same value to the same address: no extra sector,
// no branch), so every lane takes part in every store, as the profile's grouping assumes.
template <int Width, int Activation, typename T>
__device__ __forceinline__ void store_run(T* dst, int step, const T* src, int len, bool has_bias,
                                          T bias) {
    static_assert(Width == 1 || Width * sizeof(T) == 16, "a lane stores a value or a vector");
    const int lead = sector_lead(dst) / step;  // values of dst's sector before dst
#pragma unroll 1  // one store a trip: the epilogue's code stays small
    for (int first = -lead; first < len; first += 32 * Width) {  // one warp store each
        int t = first + (int)(threadIdx.x % 32) * Width;
        t = t < 0 ? 0 : t > len - Width ? len - Width : t;
        T v[Width];
        if constexpr (Width == 1) v[0] = src[t];
        else load_vector16(v, src + t);
#pragma unroll
        for (int w = 0; w < Width; w++) {
            if (has_bias) v[w] += bias;  // (no + 0: -0 stays -0)
            v[w] = activate<Activation>(v[w]);
        }
        if constexpr (Width == 1) dst[(index_t)t * step] = v[0];
        else store_vector16(dst + t, v);
    }
}

// The bias of this thread's TN tile columns, bias[first + Tile::col(j)], for the epilogues that
// store straight from the accumulators; columns from `columns` on are left alone. A sub-tile's V
// columns are V consecutive channels: one 128-bit load where aligned, so that a warp's load is
// LANES_N·V consecutive values (a value a lane would spread 32 distinct bytes over 128).
template <class Tile>
__device__ __forceinline__ void load_tile_bias(typename Tile::Element (&b)[Tile::TN],
                                               const typename Tile::Element* bias, int first,
                                               int columns) {
    constexpr int V = Tile::V;
    const bool vector = aligned16(bias + first);
#pragma unroll
    for (int u = 0; u < Tile::TN / V; u++) {
        const int col = Tile::col(u * V);
        if (vector && col + V <= columns) {
            load_vector16(&b[u * V], &bias[first + col]);
            continue;
        }
#pragma unroll
        for (int v = 0; v < V; v++)
            if (col + v < columns) b[u * V + v] = bias[first + col + v];
    }
}

// The direct way of the epilogues whose lines run along M (fprop, dgrad): a V×V sub-tile's V rows
// are V consecutive outputs of each of its columns, stored as one 128-bit vector a column straight
// from the accumulators (+ bias[first + column] when there is a bias, then Activation).
// out.direct_at(u, col) is where row u·V of tile column col goes; rows from `rows` on and columns
// from `columns` on are outside the output.
template <class Tile, int Activation, class Output>
__device__ __forceinline__ void store_direct(
    const typename Tile::Element (&acc)[Tile::TM][Tile::TN], const typename Tile::Element* bias,
    int first, int rows, int columns, const Output& out) {
    typedef typename Tile::Element T;
    constexpr int V = Tile::V;
    T b[Tile::TN] = {};
    if (bias != nullptr) load_tile_bias<Tile>(b, bias, first, columns);
#pragma unroll
    for (int u = 0; u < Tile::TM / V; u++) {  // rows come in whole vectors: all in or all out
        if (Tile::row(u * V) >= rows) continue;
#pragma unroll
        for (int j = 0; j < Tile::TN; j++) {
            if (Tile::col(j) >= columns) continue;
            T column[V];
#pragma unroll
            for (int v = 0; v < V; v++) {
                column[v] = acc[u * V + v][j];
                if (bias != nullptr) column[v] += b[j];  // (no + 0: -0 stays -0)
                column[v] = activate<Activation>(column[v]);
            }
            store_vector16(out.direct_at(u, Tile::col(j)), column);
        }
    }
}
