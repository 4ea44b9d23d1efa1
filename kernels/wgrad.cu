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
// wgrad_implicit_gemm + wgrad_reduce_splits: the tiled GEMM with the long reduction split across
// blocks (split-K). The dw GEMM is small (K × C·R·S) and its reduction long, so one block per
// output tile would leave most of a GPU idle: blockIdx.z = split z takes reduction steps
// [z·chunk, (z+1)·chunk) and writes its partial dw tile to its own slice of a workspace
// partial[splits][K][C/groups·R·S]; wgrad_reduce_splits then sums the slices in the fixed order
// z = 0, 1, ... (no float atomics), so the result is bitwise reproducible. The host picks splits and
// chunk from the problem alone; with one split the GEMM writes dw directly. Tiling as in
// fprop_implicit_gemm: a block owns BM output channels × BN taps (c,r,s) of one group, each of its
// (BM/TM)·(BN/TN) threads a TM×TN register tile; A[BK][BM] (from dy) and B[BK][BN] (gathered from
// x) are staged in shared memory. Tile shapes come from TILES["wgrad"] in kernel_backend.py.
#include "common.cuh"

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

// Assumes P·Q + BK < 2^31 (checked on the host): the per-image pixel index is an int.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
wgrad_implicit_gemm(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ partial,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups, index_t chunk) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    __shared__ T a_tile[BK][BM];
    __shared__ T b_tile[BK][BN];
    const int C_per_group = C / groups, K_per_group = K / groups;
    const int RS = R * S, CRS = C_per_group * RS, PQ = P * Q;
    // blockIdx.x: tile of BN taps (c,r,s); blockIdx.y: (group, tile of BM output channels).
    const int k_tiles = (int)ceil_div(K_per_group, BM);
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BM;
    const int crs_base = blockIdx.x * BN;
    // This split's share of the reduction: steps [red_begin, red_end) of the N·P·Q pixels.
    const index_t red_begin = blockIdx.z * chunk;
    const index_t red_end = red_begin + chunk < (index_t)N * PQ ? red_begin + chunk : (index_t)N * PQ;
    const T* x_g = x + (index_t)g * C_per_group * H * W;
    const T* dy_g = dy + (index_t)g * K_per_group * PQ;
    // Neighbouring threads own neighbouring taps: the epilogue's stores along dw's rows coalesce.
    const int thread_n = (threadIdx.x % (BN / TN)) * TN;
    const int thread_m = (threadIdx.x / (BN / TN)) * TM;

    // Staging role: a thread always stages reduction row e_i of both tiles (THREADS % BK == 0), so
    // consecutive threads read consecutive pixels (coalesced along dy's and x's rows), and the
    // thread's pixel (n, pq) is decoded once here and then advanced by BK each step.
    static_assert(THREADS % BK == 0, "staging assumes THREADS % BK == 0");
    const int e_i = threadIdx.x % BK;
    index_t e = red_begin + e_i;
    int n = (int)(e / PQ), pq = (int)(e % PQ);

    T acc[TM][TN] = {};
    for (index_t red_base = red_begin; red_base < red_end; red_base += BK) {
        const bool live = e < red_end;
        // Tap (0, 0) of output pixel (p, q) reads x at (p·stride_h - pad_top, q·stride_w - pad_left).
        const int h0 = (pq / Q) * stride_h - pad_top, w0 = (pq % Q) * stride_w - pad_left;
        const T* dy_e = dy_g + (index_t)n * K * PQ + pq;
        const T* x_e = x_g + (index_t)n * C * H * W;
        // Stage A[e_i][k] = dy[n, k_base+k, p, q]: one output channel is P·Q apart from the next.
        for (int k = threadIdx.x / BK; k < BM; k += THREADS / BK) {
            a_tile[e_i][k] = live && k_base + k < K_per_group ? dy_e[(index_t)(k_base + k) * PQ]
                                                              : T(0);
        }
        // Stage B[e_i][j] = x at tap crs_base+j of output pixel (n, p, q): fprop's gather.
        for (int j = threadIdx.x / BK; j < BN; j += THREADS / BK) {
            const int crs = crs_base + j;
            T v = T(0);
            if (live && crs < CRS) {
                const int c = crs / RS, r = (crs / S) % R, s = crs % S;
                const int h = h0 + r * dil_h, wi = w0 + s * dil_w;
                if (h >= 0 && h < H && wi >= 0 && wi < W) v = x_e[((index_t)c * H + h) * W + wi];
            }
            b_tile[e_i][j] = v;
        }
        __syncthreads();
        accumulate_tile_product(acc, a_tile, b_tile, thread_m, thread_n);
        __syncthreads();  // before the next step overwrites the tiles others are still reading
        // Advance this thread's pixel by BK; with P·Q < BK that may cross several images.
        e += BK;
        pq += BK;
        if (pq >= PQ) {
            n += pq / PQ;
            pq %= PQ;
        }
    }

    // Epilogue: this split's partial dw tile into its slice of the workspace (dw's layout).
    T* out = partial + (index_t)blockIdx.z * K * CRS;
#pragma unroll
    for (int tm = 0; tm < TM; tm++) {
        const int k_in_group = k_base + thread_m + tm;
        if (k_in_group >= K_per_group) continue;
        const index_t row = (index_t)(g * K_per_group + k_in_group) * CRS;
#pragma unroll
        for (int tn = 0; tn < TN; tn++) {
            if (crs_base + thread_n + tn < CRS) out[row + crs_base + thread_n + tn] = acc[tm][tn];
        }
    }
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
