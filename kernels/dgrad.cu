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
// tiled GEMM, one launch for all stride phases. Input pixels with the same
// (h mod stride_h, w mod stride_w) meet the same taps (see phase_taps), so blockIdx.z names a phase
// and the block runs that phase's dense GEMM: M = N·Hp·Wp pixels h = phase_h + i·stride_h,
// w = phase_w + j·stride_w, reduction over K/groups × (the phase's taps) only. One launch with the
// phase in blockIdx.z rather than a launch per phase: phases differ in size by at most one row and
// one column, so the few blocks past a smaller phase's end return at once. The tiling is
// fprop_implicit_gemm's: a block owns BM pixels × BN input channels of one group, each of its
// (BM/TM)·(BN/TN) threads a TM×TN register tile; A[BK][BM] (gathered from dy, zero where (p, q)
// falls outside [0,P)×[0,Q)) and B[BK][BN] (from w) are staged in shared memory. The reduction
// order is fixed ((k, r, s) ascending), so results are bitwise reproducible. Tile shapes come from
// TILES["dgrad"] in gpuconv/backends/kernel_backend.py.
#include "common.cuh"

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

// The launch bound's min-blocks of 1 lets ptxas use the ~115 registers this kernel wants: left to its
// own occupancy heuristic it capped the 64×64 float tile at 80 and spilled.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), 1)
dgrad_implicit_gemm(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ bias,
                    T* __restrict__ dx,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    __shared__ T a_tile[BK][BM];
    __shared__ T b_tile[BK][BN];
    const int C_per_group = C / groups, K_per_group = K / groups;
    // This block's phase: rows h ≡ phase_h (mod stride_h), columns w ≡ phase_w (mod stride_w),
    // i.e. h = phase_h + i·stride_h for i in [0, Hp) (Hp = 0 when phase_h >= H).
    const int phase_h = blockIdx.z / stride_w, phase_w = blockIdx.z % stride_w;
    // (32-bit on purpose: common.cuh's 64-bit ceil_div would be a division subroutine call.)
    const int Hp = (H - phase_h + stride_h - 1) / stride_h, Wp = (W - phase_w + stride_w - 1) / stride_w;
    const index_t HWp = (index_t)Hp * Wp, M = N * HWp;
    const index_t m_base = (index_t)blockIdx.x * BM;
    if (m_base >= M) return;  // the grid spans the largest phase; the whole block leaves together
    const PhaseTaps tap_r = phase_taps(phase_h, pad_top, stride_h, dil_h, R);
    const PhaseTaps tap_s = phase_taps(phase_w, pad_left, stride_w, dil_w, S);
    const int taps = tap_r.count * tap_s.count, KRS = K_per_group * taps;
    // blockIdx.y enumerates (group, tile of BN input channels within the group).
    const int c_tiles = (C_per_group + BN - 1) / BN;
    const int g = blockIdx.y / c_tiles, c_base = (blockIdx.y % c_tiles) * BN;
    const T* dy_g = dy + (index_t)g * K_per_group * P * Q;
    const T* w_g = w + (index_t)g * K_per_group * C_per_group * R * S;
    // Neighbouring threads own neighbouring pixels of the phase (j, then i): stores along w.
    const int thread_m = (threadIdx.x % (BM / TM)) * TM;
    const int thread_n = (threadIdx.x / (BM / TM)) * TN;

    // Staging roles, as in fprop_implicit_gemm: a thread always stages pixel a_m of A (column
    // a_j) and reduction row b_i of B, so its pixel (n, i, j) is decoded once, here.
    static_assert(THREADS % BM == 0 && THREADS % BK == 0, "staging assumes THREADS % BM, BK == 0");
    const int a_j = threadIdx.x % BM, b_i = threadIdx.x % BK;
    const index_t a_m = m_base + a_j;
    // Pixels are decoded in 32 bits: the host runs this kernel only when N·Hp·Wp + BM < 2^31 (else
    // dgrad_direct), and a 64-bit division is a subroutine call whose live registers spill.
    const int n_base = (int)m_base / (int)HWp;
    const int ij_base = (int)m_base - n_base * (int)HWp;
    const index_t a_n = n_base + (ij_base + a_j) / (int)HWp;
    const int a_ij = (ij_base + a_j) % (int)HWp;
    // dy row / column that tap t = 0 of pixel a_m reads; tap t subtracts t·dp (phase_taps).
    const int a_p0 = a_ij / Wp + tap_r.p0, a_q0 = a_ij % Wp + tap_s.p0;
    const T* dy_a = dy_g + a_n * K * P * Q;
    // The epilogue's first pixel (n, i, j).
    const index_t m0 = m_base + thread_m;
    index_t n = n_base + (ij_base + thread_m) / (int)HWp;
    int i = (ij_base + thread_m) % (int)HWp, j = i % Wp;
    i /= Wp;

    T acc[TM][TN] = {};
    for (int krs_base = 0; krs_base < KRS; krs_base += BK) {
        // Stage A[e][a_j] = dy at reduction index krs_base+e = (k, t_r, t_s) of pixel a_m,
        // zero where (p, q) falls outside dy (padding, or conv_transpose2d's output_padding).
        for (int e = threadIdx.x / BM; e < BK; e += THREADS / BM) {
            const int krs = krs_base + e;
            T v = T(0);
            if (krs < KRS && a_m < M) {
                const int k = krs / taps, t = krs % taps;
                const int p = a_p0 - (t / tap_s.count) * tap_r.dp;
                const int q = a_q0 - (t % tap_s.count) * tap_s.dp;
                if (p >= 0 && p < P && q >= 0 && q < Q) v = dy_a[((index_t)k * P + p) * Q + q];
            }
            a_tile[e][a_j] = v;
        }
        // Stage B[b_i][c] = w[k, c_base+c, r, s] for the reduction index krs_base+b_i.
        const int krs = krs_base + b_i;
        const int k = krs / taps, t = krs % taps;
        const int r = tap_r.first + (t / tap_s.count) * tap_r.step;
        const int s = tap_s.first + (t % tap_s.count) * tap_s.step;
        for (int c = threadIdx.x / BK; c < BN; c += THREADS / BK) {
            const bool live = krs < KRS && c_base + c < C_per_group;
            b_tile[b_i][c] = live ? w_g[(((index_t)k * C_per_group + c_base + c) * R + r) * S + s]
                                  : T(0);
        }
        __syncthreads();
        accumulate_tile_product(acc, a_tile, b_tile, thread_m, thread_n);
        __syncthreads();  // before the next step overwrites the tiles others are still reading
    }

    // Epilogue: bias, store to dx[n, c, phase_h + i·stride_h, phase_w + j·stride_w]. A phase with
    // no taps still lands here (acc = 0): its pixels get the bias alone. The thread's TM pixels
    // are consecutive in the phase: step (n, i, j) along from the first.
#pragma unroll
    for (int tm = 0; tm < TM; tm++) {
        if (m0 + tm < M) {
            const index_t hw = (index_t)(phase_h + i * stride_h) * W + phase_w + j * stride_w;
#pragma unroll
            for (int tn = 0; tn < TN; tn++) {
                const int c_in_group = c_base + thread_n + tn;
                if (c_in_group >= C_per_group) continue;
                const int c = g * C_per_group + c_in_group;
                T v = acc[tm][tn];
                if (bias != nullptr) v += bias[c];
                dx[(n * C + c) * H * W + hw] = v;
            }
        }
        if (++j == Wp) {
            j = 0;
            if (++i == Hp) {
                i = 0;
                n++;
            }
        }
    }
}
