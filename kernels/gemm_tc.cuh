// gemm_tc.cuh: the tensor-core main loop that fprop_tc.cu, dgrad_tc.cu and wgrad_tc.cu share: the
// implicit GEMM of gemm.cuh (the same iterators, the same register-staged double-buffered k-tiles,
// one barrier a k-tile, the last peeled) with the warp's product on mma.sync instead of FFMA. It is
// a loop of its own rather than a policy of implicit_gemm so that the SIMT kernels' code stays as
// measured. sm_80+ only (mma.cuh): a source that includes it is compiled for those architectures
// alone (MIN_ARCH in gpuconv/backends/kernel_backend.py).
//
// Kinds: float16 and bfloat16 (m16n8k16, shared tiles hold the arrays' own 16-bit patterns),
// float32 in TF32 (m16n8k8, each element rounded by cvt.rna once, when staged) and float32 in
// TF32x3 (shared tiles hold float32; each fragment element is split into a TF32 high part and the
// TF32 rounding of the remainder, and a·b is a_lo·b_hi + a_hi·b_lo + a_hi·b_hi on m16n8k8: the
// dropped a_lo·b_lo is about 2^-22 of a product, float32 accuracy at three mma a product);
// float32 accumulation in every kind.
//
// Tiles: a block computes BM×BN of one group's GEMM output, (BM/WM)·(BN/WN) warps of WM×WN, each
// warp WM/16 × WN/8 mma tiles of 16×8. Accumulator c[2h + e] of mma tile (i, j) is row
// i·16 + 8h + g, column j·8 + 2t + e of the warp tile (g = lane / 4, t = lane % 4: PTX's layout);
// TensorTile::row and ::col say which element of the block tile that is.
//
// Shared memory: each operand tile is laid out as its iterator stages it (StagingMap), so a warp's
// staging store is 32 consecutive elements of one row:
//   KFast iterator (consecutive threads, consecutive k): rows of x (m for A, n for B), k
//     contiguous: tile[x][k], padded by 16 bytes. ldmatrix (no .trans) reads 8×8 blocks of it as
//     the fragments need them: A's are row-major, B's column-major, both k-contiguous (TF32 too:
//     8 rows of 4 floats).
//   otherwise (consecutive threads, consecutive x): tile[k][x], padded by 8 elements;
//     ldmatrix.trans turns its 8×8 blocks into the same fragments.
// fprop and dgrad stage A k-major ([k][m]) and B n-major ([n][k]); wgrad both k-contiguous.
// Bank conflicts, worked out (32 banks of 4 bytes), BK = 32 (or 16), BX a multiple of 64:
//   - ldmatrix: each 8-lane phase reads eight 16-byte rows. [k][x] rows are (BX + 8)·2 bytes =
//     BX/2 + 4 words apart, 4 mod 32: the 8 rows start at banks 4i, all 32 banks once. [x][k] rows
//     are (BK + 8)·2 = 80 bytes = 20 words apart: banks 20i mod 32 = {0, 20, 8, 28, 16, 4, 24, 12},
//     four banks each, all distinct (BK = 16: 48 bytes, 12 words, banks 12i mod 32 = {0, 12, 24,
//     4, 16, 28, 8, 20}, as distinct). TF32's [x][k] rows are (BK + 4)·4 bytes: 144 = 36 words
//     (4i mod 32) or, BK = 16, 80 (20i): as distinct.
//   - TF32 fragment loads of a [k][x] tile (lane (g, t) reads element (x + g, k + t)): rows are
//     BX + 8 words, 8 mod 32: bank 8t + g, all 32 distinct.
//   - staging stores: 32 consecutive elements of one row, 64 or 128 consecutive bytes.
#pragma once
#include "gemm.cuh"
#include "mma.cuh"

// Whether a kind takes float32 inputs on m16n8k8 (TF32, TF32x3).
__host__ __device__ constexpr bool tf32_kind(int kind) { return kind == TENSOR_TF32 || kind == TENSOR_TF32X3; }

template <int Kind, bool Float32 = tf32_kind(Kind)>
struct TensorStorage {
    typedef unsigned short type;  // float16 / bfloat16 bits
};
template <int Kind>
struct TensorStorage<Kind, true> {
    typedef float type;
};

template <int Kind, int BM_, int BN_, int BK_, int WM_, int WN_>
struct TensorTile {
    typedef typename TensorStorage<Kind>::type Element;
    static constexpr int KIND = Kind;
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
    static constexpr int MMA_K = tf32_kind(Kind) ? 8 : 16;  // k of one mma
    static constexpr int FRAGS_M = WM / 16, FRAGS_N = WN / 8;    // mma tiles of a warp
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 8 == 0, "tiles nest");
    static_assert(BK == 32 || BK == 16, "the bank-conflict analysis above assumes it");

    // Row and column in the block tile of accumulator acc[i][j][2h + e] of this thread.
    static __device__ __forceinline__ int row(int i, int h) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp % WARPS_M) * WM + i * 16 + h * 8 + lane / 4;
    }
    static __device__ __forceinline__ int col(int j, int e) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp / WARPS_M) * WN + j * 8 + 2 * (lane % 4) + e;
    }
};

// One operand's BK×BX tile in shared memory, laid out as its iterator stages it (see above).
template <typename T, int BK, int BX, bool KFast>
struct OperandTile;
template <typename T, int BK, int BX>
struct OperandTile<T, BK, BX, true> {  // tile[x][k]
    static_assert(BX % 64 == 0, "the bank-conflict analysis above assumes it");
    T data[BX][BK + 16 / sizeof(T)];
    __device__ __forceinline__ T& at(int k, int x) { return data[x][k]; }
    // The 16-byte row of 8×8 block (k0.., x0..) that lane row `row` gives ldmatrix: a row of x.
    __device__ __forceinline__ const T* matrix_row(int k0, int x0, int row) const { return &data[x0 + row][k0]; }
};
template <typename T, int BK, int BX>
struct OperandTile<T, BK, BX, false> {  // tile[k][x]
    static_assert(BX % 64 == 0, "the bank-conflict analysis above assumes it");
    T data[BK][BX + 8];
    __device__ __forceinline__ T& at(int k, int x) { return data[k][x]; }
    __device__ __forceinline__ const T& at(int k, int x) const { return data[k][x]; }
    __device__ __forceinline__ const T* matrix_row(int k0, int x0, int row) const { return &data[k0 + row][x0]; }
};

// An operand's shared memory: by default its k-tiles double-buffered, each laid out as the
// iterator stages it. An iterator that keeps a layout of its own (FpropHaloIterator) names it as
// its Shared type; it, or one that stages otherwise (by cp.async: FpropHaloFilterIterator),
// overloads the hooks of the main loop: stage_first (the first k-tile's staging), load_operand
// (a later k-tile's loads, issued before the current k-tile's math), stage_operand (its stores,
// after it) and operand_view (what the warps' fragment loads read for the k-tile computed).
template <class Tile, class Iter, int BX>
struct DoubleBuffered {
    OperandTile<typename Tile::Element, Tile::BK, BX, Iter::KFast> tile[2];
};
template <class T>
struct VoidOf {
    typedef void type;
};
template <class Tile, class Iter, int BX, class = void>
struct SharedOperand {
    typedef DoubleBuffered<Tile, Iter, BX> type;
};
template <class Tile, class Iter, int BX>
struct SharedOperand<Tile, Iter, BX, typename VoidOf<typename Iter::Shared>::type> {
    typedef typename Iter::Shared type;
};

// The type of an iterator's staging registers: the tile's element, or the iterator's Staged type
// (FpropHaloIterator: 32-bit words of two elements).
template <class Iter, typename T, class = void>
struct StagedOf {
    typedef T type;
};
template <class Iter, typename T>
struct StagedOf<Iter, T, typename VoidOf<typename Iter::Staged>::type> {
    typedef typename Iter::Staged type;
};

// The shared memory of the main loop. The kernel declares it
// (`__shared__ __align__(16) TensorShared<...> shared;`), as GemmShared. B first: A's may be a
// layout of its own of which a launch takes only the part its problem uses (HaloPatch).
template <class Tile, class IterA, class IterB>
struct TensorShared {
    typename SharedOperand<Tile, IterB, Tile::BN>::type b;
    typename SharedOperand<Tile, IterA, Tile::BM>::type a;
};

// A staged element as shared memory holds it: half types unchanged, float rounded to TF32 (TF32x3:
// unchanged, split at the fragment loads).
template <int Kind>
__device__ __forceinline__ unsigned short staged(unsigned short v) { return v; }
template <int Kind>
__device__ __forceinline__ float staged(float v) {
    return Kind == TENSOR_TF32X3 ? v : __uint_as_float(to_tf32(v));
}

// Which elements of a BK×BX operand tile thread t stages when its iterator loads 16 bytes at a
// time along k (VEC = 16 / sizeof(T) elements; KFast: the tile is [x][k]): runs of VEC consecutive
// k of one x, element i in run i / VEC. Eight consecutive threads take the same k-run of eight
// consecutive x, the next eight the next run: a quarter-warp's 128-bit shared stores then start
// rows 20 words (half types) or 36 words (TF32) apart, banks 20i or 4i mod 32, each four wide:
// all distinct, one wavefront a quarter-warp. Globally a warp reads whole 32-byte sectors.
template <int BK, int BX, int THREADS, int VEC_>
struct VectorStagingMap {
    static constexpr int VEC = VEC_, RUNS_K = BK / VEC;  // k-runs of a row
    static constexpr int ELEMS = BK * BX / THREADS, STEP = THREADS / RUNS_K;
    static_assert(THREADS % (8 * RUNS_K) == 0 && ELEMS % VEC == 0, "whole runs, eight rows a run");
    static __device__ __forceinline__ int k(int i) { return (threadIdx.x / 8) % RUNS_K * VEC + i % VEC; }
    static __device__ __forceinline__ int x(int i) {
        return threadIdx.x % 8 + threadIdx.x / (8 * RUNS_K) * 8 + (i / VEC) * STEP;
    }
};

// A if Condition, else B (NVRTC has no <type_traits>): a kernel's iterator by a template flag.
template <bool Condition, class A, class B>
struct Select {
    typedef A type;
};
template <class A, class B>
struct Select<false, A, B> {
    typedef B type;
};

// The staging variants of the tensor-core kernels (their Staging template argument; the host's
// STAGINGS names the same numbers, tensor_staging picks one per problem): the op's own iterators;
// the tap-major ones (the reduction's channels a multiple of BK); tap-major with 16-byte loads of
// the operand that lies contiguous along the reduction (fprop's w when R·S = 1, wgrad's dy);
// fprop's halo staging (x staged once a channel block as a patch that every tap reads, w
// reordered; fprop_tc.cu).
#define STAGING_PLAIN 0
#define STAGING_TAP_MAJOR 1
#define STAGING_TAP_MAJOR_VECTOR 2
#define STAGING_HALO 3
#define STAGING_HALO_WIDE 4  // wgrad's halo staging for patches of up to 384 positions
#define STAGING_HALO_ODD 5   // wgrad's halo staging where W or P·Q is odd: 2-byte loads, 128 positions

// k-tiles an iteration of the main loop (its unroll factor) for a staging and kind: 2 for the
// halo tiles, whose k-tile is 190 instructions around 64 HMMA on sm_80 (fprop's; wgrad's, about
// 300 around 72). Unrolled twice, the double buffer's index is a constant in each copy and the
// loop's counter and branch serve two k-tiles: fprop's is 36.3% HMMA instead of 33.7% (37.1% with
// the patch's read offset, FpropHaloIterator; see bench/results/sass-sm_80.md), at 255 registers
// and no spills. The other stagings stay at 1: measured unrolled, the tap-major tiles gain at most
// a point (14.2% → 14.9% on 128×128), TF32x3's spill, and the plain iterators lose (5.3% → 4.0%).
// So do TF32x3 on the halo tile (its split fragments) and wgrad's STAGING_HALO_ODD (its 2-byte
// staging registers): unrolled, each spills 40 bytes on sm_90.
__host__ __device__ constexpr int k_tiles_an_iteration(int staging, int kind) {
    return (staging == STAGING_HALO || staging == STAGING_HALO_WIDE) && kind != TENSOR_TF32X3 ? 2 : 1;
}

// A reduction index in tap-major order (r, s, channel), stepped a whole k-tile of BK channels at
// a time: the order of the *Tap* iterators, which need the channel count a multiple of BK (the
// host checks), so that a k-tile is BK channels of one tap and every k-tile is full.
struct TapMajorDigits {
    int channel, r, s;  // the k-tile's first channel and its tap

    __device__ __forceinline__ void advance(int BK, int channels, int S) {
        channel += BK;
        if (channel == channels) {
            channel = 0;
            if (++s == S) {
                s = 0;
                r++;
            }
        }
    }
};

// Zero as any element type of up to 16 bytes: a staging load whose element lies in the padding
// reads it here, so that the loads of a k-tile need no predicate (the tap-major iterators; the
// halo staging's pairs).
__device__ const uint4 zero_bytes = {0u, 0u, 0u, 0u};
template <typename T>
__device__ __forceinline__ const T* zero_element() {
    return reinterpret_cast<const T*>(&zero_bytes);
}

// The loads of the tap-major iterators: a thread's staged elements lie a fixed stride apart.
// Elements base[offset + i·stride] where `inside` (the tap lands inside the tensor), else zeros,
// with no predicate an element for that: outside, every load reads zero_element. Elements from
// `live` on (rows of the operand that do not exist, the same in every k-tile) are not written:
// they keep the staging registers' zeros (see load_strided_live); live = ELEMS folds away.
template <int ELEMS, typename T>
__device__ __forceinline__ void load_strided_or_zero(T (&v)[ELEMS], const T* base, int offset, int stride,
                                                     bool inside, int live = ELEMS) {
    const T* from = inside ? base : zero_element<T>();
    offset = inside ? offset : 0;
    stride = inside ? stride : 0;
#pragma unroll
    for (int i = 0; i < ELEMS; i++, offset += stride)
        if (i < live) v[i] = from[offset];
}
// Elements p[i·stride] for i < live (rows of the operand that exist), zeros after; the pointer
// steps from element to element, no 64-bit multiply an element. FixedLive: `live` is the same in
// every k-tile (the rows that exist), so the elements from live on are never written here: they
// keep the zeros the main loop's staging registers start with, and a k-tile spends no zeroing
// instruction on an element whose load is predicated off. Otherwise (live drops to 0 in the k-tile
// past the reduction: wgrad) they are zeroed each k-tile.
template <bool FixedLive, int ELEMS, typename T>
__device__ __forceinline__ void load_strided_live(T (&v)[ELEMS], const T* p, index_t stride, int live) {
#pragma unroll
    for (int i = 0; i < ELEMS; i++, p += stride) {
        if (i < live) v[i] = *p;
        else if (!FixedLive) v[i] = T(0);
    }
}

// Elements a staging map's runs hold: VEC of a VectorStagingMap, else 1.
template <class Map, class = void>
struct RunLength {
    static constexpr int value = 1;
};
template <class Map>
struct RunLength<Map, decltype(void(Map::VEC))> {
    static constexpr int value = Map::VEC;
};

// 16 bytes of global memory (a 16-byte-aligned address) into VEC elements, and VEC staged
// elements into 16 bytes of shared memory.
__device__ __forceinline__ void load16(unsigned short* dst, const unsigned short* src) {
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) dst[2 * i] = words[i] & 0xffffu, dst[2 * i + 1] = words[i] >> 16;
}
__device__ __forceinline__ void load16(float* dst, const float* src) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
}
template <int Kind>
__device__ __forceinline__ void store_staged16(unsigned short* dst, const unsigned short* v) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(v[0] | unsigned(v[1]) << 16, v[2] | unsigned(v[3]) << 16,
                                                v[4] | unsigned(v[5]) << 16, v[6] | unsigned(v[7]) << 16);
}
template <int Kind>
__device__ __forceinline__ void store_staged16(float* dst, const float* v) {
    *reinterpret_cast<float4*>(dst) = make_float4(staged<Kind>(v[0]), staged<Kind>(v[1]), staged<Kind>(v[2]),
                                                  staged<Kind>(v[3]));
}

// A unit of the halo stagings (fprop_tc.cu, wgrad_tc.cu) to shared memory: the 16-byte rows of
// two neighbouring positions, `pitch` bytes apart, from registers that hold channel j of both
// positions in entry j (loaded as one word or pair from NCHW x): 16-bit types' low halves, then
// high halves; floats' firsts, then seconds, each rounded as a staged element.
template <int Kind>
__device__ __forceinline__ void store_position_pair(char* first, int pitch, const unsigned* u) {
    *reinterpret_cast<uint4*>(first) = make_uint4(low_halves(u[0], u[1]), low_halves(u[2], u[3]),
                                                  low_halves(u[4], u[5]), low_halves(u[6], u[7]));
    *reinterpret_cast<uint4*>(first + pitch) = make_uint4(high_halves(u[0], u[1]), high_halves(u[2], u[3]),
                                                          high_halves(u[4], u[5]), high_halves(u[6], u[7]));
}
template <int Kind>
__device__ __forceinline__ void store_position_pair(char* first, int pitch, const uint2* u) {
    *reinterpret_cast<float4*>(first) = make_float4(
            staged<Kind>(__uint_as_float(u[0].x)), staged<Kind>(__uint_as_float(u[1].x)),
            staged<Kind>(__uint_as_float(u[2].x)), staged<Kind>(__uint_as_float(u[3].x)));
    *reinterpret_cast<float4*>(first + pitch) = make_float4(
            staged<Kind>(__uint_as_float(u[0].y)), staged<Kind>(__uint_as_float(u[1].y)),
            staged<Kind>(__uint_as_float(u[2].y)), staged<Kind>(__uint_as_float(u[3].y)));
}

// Store a thread's staged elements (registers) to their places in an operand tile: one element a
// store, or one 128-bit store a run of a VectorStagingMap.
template <int Kind, class Map, class Operand, typename T>
__device__ __forceinline__ void store_operand(Operand& tile, const T (&v)[Map::ELEMS]) {
    constexpr int VEC = RunLength<Map>::value;
    if (VEC > 1) {
#pragma unroll
        for (int i = 0; i < Map::ELEMS; i += VEC) store_staged16<Kind>(&tile.at(Map::k(i), Map::x(i)), &v[i]);
        return;
    }
#pragma unroll
    for (int i = 0; i < Map::ELEMS; i++) tile.at(Map::k(i), Map::x(i)) = staged<Kind>(v[i]);
}

// The default hooks of a DoubleBuffered operand (see SharedOperand): k-tile 0 loaded and stored to
// buffer 0; a k-tile's registers stored to `buffer`; the warps read tile[buffer].
template <int Kind, class Iter, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_first(Iter& it, DoubleBuffered<Tile, Iter, BX>& shared, T (&v)[E],
                                            int reduction) {
    it.load(v, reduction);
    store_operand<Kind, typename Iter::Map>(shared.tile[0], v);
}
template <class Iter, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void load_operand(Iter& it, DoubleBuffered<Tile, Iter, BX>&, int, T (&v)[E],
                                             int k_remaining) {
    it.load(v, k_remaining);
}
template <int Kind, class Iter, class Tile, int BX, typename T, int E>
__device__ __forceinline__ void stage_operand(Iter&, DoubleBuffered<Tile, Iter, BX>& shared, int buffer,
                                              const T (&v)[E]) {
    store_operand<Kind, typename Iter::Map>(shared.tile[buffer], v);
}
template <class Iter, class Tile, int BX>
__device__ __forceinline__ const OperandTile<typename Tile::Element, Tile::BK, BX, Iter::KFast>& operand_view(
        const Iter&, const DoubleBuffered<Tile, Iter, BX>& shared, int buffer) {
    return shared.tile[buffer];
}

// The k elements of a 16-byte ldmatrix row: 8 of a 16-bit type, 4 floats (TF32).
template <int Kind>
constexpr int ROW_K = 16 / (int)sizeof(typename TensorStorage<Kind>::type);

// A's fragments of the 16×MMA_K block at rows m, reduction k0 of a_tile, and B's of two 8-column
// blocks at columns n, n + 8 (b[0], b[1]): the PTX layouts. By ldmatrix.x4, lane l giving row
// l % 8 of matrix l / 8, each matrix 8 rows of 16 bytes (r = ROW_K elements): A's matrices are
// a0..a3 = (m 0-7, k 0..r-1), (m 8-15, k 0..r-1), (m 0-7, k r..2r-1), (m 8-15, k r..2r-1); B's
// (k 0..r-1, n 0-7), (k r..2r-1, n 0-7) (b[0]) and the same of n + 8 (b[1]); .trans where the
// tile is k-major. Lane (g, t) = (l / 4, l % 4) receives word t of row g of each matrix: two
// 16-bit elements, or one float, which is TF32's layout too (a = (g, t), (g+8, t), (g, t+4),
// (g+8, t+4) as (m, k); b = (k t, n g), (k t+4, n g)). A k-major TF32 tile (.trans moves 16-bit
// elements: fprop's and dgrad's A) is read by direct loads of those elements instead.
// (i and j: m's and n's mma tile of the warp, which a view with rows of its own, HaloView and
// WgradHaloView, goes by instead of m and n.)
template <int Kind, bool KFast, class Operand>
__device__ __forceinline__ void load_a_fragment(unsigned (&a)[4], const Operand& tile, int k0, int m, int) {
    const int lane = threadIdx.x % 32;
    if constexpr (tf32_kind(Kind) && !KFast) {  // a k-contiguous tile has no const element access
        const int g = lane / 4, t = lane % 4;
        a[0] = __float_as_uint(float(tile.at(k0 + t, m + g)));
        a[1] = __float_as_uint(float(tile.at(k0 + t, m + g + 8)));
        a[2] = __float_as_uint(float(tile.at(k0 + t + 4, m + g)));
        a[3] = __float_as_uint(float(tile.at(k0 + t + 4, m + g + 8)));
    } else {
        const int matrix = lane / 8;
        ldmatrix_x4<!KFast>(a, tile.matrix_row(k0 + (matrix / 2) * ROW_K<Kind>, m + (matrix % 2) * 8,
                                               lane % 8));
    }
}
template <int Kind, bool KFast, class Operand>
__device__ __forceinline__ void load_b_fragments(unsigned (&b0)[2], unsigned (&b1)[2], const Operand& tile,
                                                 int k0, int n, int) {
    static_assert(KFast || !tf32_kind(Kind), "every TF32 B tile is k-contiguous: ldmatrix reads it");
    const int lane = threadIdx.x % 32, matrix = lane / 8;
    unsigned r[4];
    ldmatrix_x4<!KFast>(r, tile.matrix_row(k0 + (matrix % 2) * ROW_K<Kind>, n + (matrix / 2) * 8, lane % 8));
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// Fragment registers of raw float32 (TF32x3) split in place: v into its TF32 rounding (hi, kept in
// v) and the TF32 rounding of the remainder (lo); v ≈ hi + lo to about 2^-22 of v. An infinite v
// has remainder 0, so that it multiplies as in float32.
template <int M, int E>
__device__ __forceinline__ void split_tf32(unsigned (&v)[M][E], unsigned (&lo)[M][E]) {
#pragma unroll
    for (int i = 0; i < M; i++)
#pragma unroll
        for (int e = 0; e < E; e++) {
            const float whole = __uint_as_float(v[i][e]);
            v[i][e] = to_tf32(whole);
            const float rest = whole - __uint_as_float(v[i][e]);
            lo[i][e] = to_tf32(rest == rest ? rest : 0.0f);  // ±inf: inf - inf is no remainder
        }
}

// One k-tile of the warp's product: acc[i][j] (the 16×8 mma tile i, j of the warp) += A·B over the
// tile's BK, in k order (deterministic); a_view and b_view are the operands' operand_view.
template <class Tile, class IterA, class IterB, class ViewA, class ViewB>
__device__ __forceinline__ void warp_mma_product(float (&acc)[Tile::FRAGS_M][Tile::FRAGS_N][4],
                                                 const ViewA& a_view, const ViewB& b_view) {
    constexpr int Kind = Tile::KIND;
    const int warp = threadIdx.x / 32;
    const int warp_m = (warp % Tile::WARPS_M) * Tile::WM, warp_n = (warp / Tile::WARPS_M) * Tile::WN;
    constexpr int B_FRAGS = (Tile::FRAGS_N + 1) / 2 * 2;  // b by pairs: an odd FRAGS_N loads one unused
#pragma unroll
    for (int kk = 0; kk < Tile::BK; kk += Tile::MMA_K) {
        unsigned a[Tile::FRAGS_M][4], b[B_FRAGS][2];
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
            load_a_fragment<Kind, IterA::KFast>(a[i], a_view, kk, warp_m + i * 16, i);
#pragma unroll
        for (int j = 0; j < Tile::FRAGS_N; j += 2)
            load_b_fragments<Kind, IterB::KFast>(b[j], b[j + 1], b_view, kk, warp_n + j * 8, j);
        if (Kind == TENSOR_TF32X3) {
            unsigned a_lo[Tile::FRAGS_M][4], b_lo[B_FRAGS][2];
            split_tf32(a, a_lo);
            split_tf32(b, b_lo);
#pragma unroll
            for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
                for (int j = 0; j < Tile::FRAGS_N; j++) {  // the small terms first
                    mma_m16n8k8_tf32(acc[i][j], a_lo[i], b[j], acc[i][j]);
                    mma_m16n8k8_tf32(acc[i][j], a[i], b_lo[j], acc[i][j]);
                }
        }
#pragma unroll
        for (int i = 0; i < Tile::FRAGS_M; i++)
#pragma unroll
            for (int j = 0; j < Tile::FRAGS_N; j++) {
                if (tf32_kind(Kind)) mma_m16n8k8_tf32(acc[i][j], a[i], b[j], acc[i][j]);
                else mma_m16n8k16<Kind == TENSOR_BFLOAT16>(acc[i][j], a[i], b[j], acc[i][j]);
            }
    }
}

// The main loop: acc = A·B over a reduction of `reduction` elements (acc starts at zero), then
// epilogue(acc), as gemm.cuh's implicit_gemm: the next k-tile's global loads in flight during this
// one's mma, stored to the other buffer after it; one barrier a k-tile, the last peeled. A
// reduction of 0 gives the epilogue zeros. The loop is unrolled KTilesAnIteration times
// (k_tiles_an_iteration).
template <class Tile, int KTilesAnIteration, class IterA, class IterB, class Epilogue>
__device__ __forceinline__ void tensor_implicit_gemm(TensorShared<Tile, IterA, IterB>& shared, IterA& a,
                                                     IterB& b, int reduction, const Epilogue& epilogue) {
    typedef typename Tile::Element T;
    typedef typename IterA::Map MapA;
    typedef typename IterB::Map MapB;
    constexpr int BK = Tile::BK;
    float acc[Tile::FRAGS_M][Tile::FRAGS_N][4] = {};
    typename StagedOf<IterA, T>::type a_staged[MapA::ELEMS] = {};  // zeros: see load_strided_live
    typename StagedOf<IterB, T>::type b_staged[MapB::ELEMS] = {};
    const int k_tiles = (reduction + BK - 1) / BK;
    if (k_tiles > 0) {
        stage_first<Tile::KIND>(a, shared.a, a_staged, reduction);
        stage_first<Tile::KIND>(b, shared.b, b_staged, reduction);
        __syncthreads();
    }
    int buffer = 0;
#pragma unroll (KTilesAnIteration)
    for (int tile = 1; tile < k_tiles; tile++) {
        a.advance();
        b.advance();
        load_operand(a, shared.a, buffer ^ 1, a_staged, reduction - tile * BK);
        load_operand(b, shared.b, buffer ^ 1, b_staged, reduction - tile * BK);
        warp_mma_product<Tile, IterA, IterB>(acc, operand_view(a, shared.a, buffer),
                                             operand_view(b, shared.b, buffer));
        // The other buffer was last read before the previous barrier: free to overwrite.
        stage_operand<Tile::KIND>(a, shared.a, buffer ^ 1, a_staged);
        stage_operand<Tile::KIND>(b, shared.b, buffer ^ 1, b_staged);
        __syncthreads();
        buffer ^= 1;
    }
    if (k_tiles > 0)
        warp_mma_product<Tile, IterA, IterB>(acc, operand_view(a, shared.a, buffer),
                                             operand_view(b, shared.b, buffer));
    epilogue(acc);
}

// An element of an input (x, w, dy, bias) as float, and a float rounded once to the output's type.
__device__ __forceinline__ float to_float(int kind, unsigned short v) {
    return kind == TENSOR_BFLOAT16 ? bfloat16_bits_to_float(v) : half_bits_to_float(v);
}
__device__ __forceinline__ float to_float(int, float v) { return v; }
template <int Kind>
__device__ __forceinline__ typename TensorStorage<Kind>::type rounded(float v) {
    if (tf32_kind(Kind)) return v;  // float32 output
    return (unsigned short)((Kind == TENSOR_BFLOAT16 ? pack_bfloat162(v, 0.0f) : pack_half2(v, 0.0f))
                            & 0xffffu);
}
