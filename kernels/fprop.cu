// fprop.cu: the forward convolution y = activation(conv2d(x, w) + bias).
//
// As an implicit GEMM (per group): M = N·P·Q output pixels, N = K output channels, reduction
// K = C·R·S (C and K per group), with A[m, (c,r,s)] = x[n, c, p·stride_h - pad_top + r·dil_h, ...]
// read straight from x (no im2col) and zero where the tap falls into the padding.
//
// fprop_direct: one thread per output element y[n,k,p,q]; it sums over its group's C/groups
// channels and the R·S taps in a fixed order (r, s, c), then adds the bias and applies the
// activation (the fused epilogue). Any stride, asymmetric padding, dilation and groups.
//
// fprop_implicit_gemm: the tiled GEMM. A block owns a BM×BN tile of one group's output (BM output
// pixels m = (n,p,q) × BN output channels) and (BM/TM)·(BN/TN) threads, each a TM×TN register tile.
// The reduction runs over (c,r,s) in steps of BK: the block stages A[BK][BM] (gathered from x,
// zero in the padding and past the edges) and B[BK][BN] (from w) in shared memory, then every
// thread does BK rank-1 updates of its register tile: each staged value is read by BN/TN (A) or
// BM/TM (B) threads. The reduction order is fixed ((c,r,s) ascending), so results are bitwise
// reproducible. Tile shapes come from TILES["fprop"] in gpuconv/backends/kernel_backend.py.
#include "common.cuh"

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

template <typename T, int Activation, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
fprop_implicit_gemm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                    T* __restrict__ y,
                    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                    int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int groups) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    __shared__ T a_tile[BK][BM];
    __shared__ T b_tile[BK][BN];
    const int C_per_group = C / groups, K_per_group = K / groups;
    const int RS = R * S, CRS = C_per_group * RS;
    const index_t PQ = (index_t)P * Q, M = N * PQ;
    // blockIdx.y enumerates (group, tile of BN channels within the group).
    const int k_tiles = (int)ceil_div(K_per_group, BN);
    const int g = blockIdx.y / k_tiles, k_base = (blockIdx.y % k_tiles) * BN;
    const index_t m_base = (index_t)blockIdx.x * BM;
    const T* x_g = x + (index_t)g * C_per_group * H * W;
    const T* w_g = w + (index_t)g * K_per_group * CRS;
    // Neighbouring threads own neighbouring output pixels: the epilogue's stores along q coalesce.
    const int thread_m = (threadIdx.x % (BM / TM)) * TM;
    const int thread_n = (threadIdx.x / (BM / TM)) * TN;

    // Staging roles. THREADS is a multiple of BM and BK, so in the strided loops below a thread
    // always stages the same output pixel of A (column a_j) and the same tap of B (row b_i):
    // its pixel's (n, p, q) is decoded once, here, not per element (64-bit division is slow).
    static_assert(THREADS % BM == 0 && THREADS % BK == 0, "staging assumes THREADS % BM, BK == 0");
    const int a_j = threadIdx.x % BM, b_i = threadIdx.x % BK;
    const index_t a_m = m_base + a_j;
    const index_t a_n = a_m / PQ, a_pq = a_m % PQ;
    // Row and column of x that tap (0, 0) of pixel a_m reads; tap (r, s) adds (r·dil_h, s·dil_w).
    const int a_h0 = (int)(a_pq / Q) * stride_h - pad_top;
    const int a_w0 = (int)(a_pq % Q) * stride_w - pad_left;
    const T* x_a = x_g + a_n * C * H * W;
    // The epilogue's first pixel, decoded before acc is live: 64-bit division is a subroutine
    // call, and registers live across it spill.
    const index_t m0 = m_base + thread_m;
    index_t n = m0 / PQ, pq = m0 % PQ;

    T acc[TM][TN] = {};
    for (int crs_base = 0; crs_base < CRS; crs_base += BK) {
        // Stage A[i][a_j] = x at tap crs_base+i of pixel a_m. Consecutive threads take
        // consecutive pixels, i.e. neighbouring q, so the loads coalesce along x's rows.
        for (int i = threadIdx.x / BM; i < BK; i += THREADS / BM) {
            const int crs = crs_base + i;
            T v = T(0);
            if (crs < CRS && a_m < M) {
                const int c = crs / RS, r = (crs / S) % R, s = crs % S;
                // Same tap formula as fprop_direct: outside [0,H)×[0,W) is padding, zero.
                const int h = a_h0 + r * dil_h, wi = a_w0 + s * dil_w;
                if (h >= 0 && h < H && wi >= 0 && wi < W) v = x_a[((index_t)c * H + h) * W + wi];
            }
            a_tile[i][a_j] = v;
        }
        // Stage B[b_i][j] = w[k_base+j, crs_base+b_i]; consecutive threads take consecutive taps,
        // contiguous in w's (c,r,s) rows.
        for (int j = threadIdx.x / BK; j < BN; j += THREADS / BK) {
            const int crs = crs_base + b_i, k = k_base + j;
            b_tile[b_i][j] = (crs < CRS && k < K_per_group) ? w_g[(index_t)k * CRS + crs] : T(0);
        }
        __syncthreads();
        accumulate_tile_product(acc, a_tile, b_tile, thread_m, thread_n);
        __syncthreads();  // before the next step overwrites the tiles others are still reading
    }

    // Epilogue: bias, activation, store; rows past M and channels past the group are not ours.
    // The thread's TM pixels are consecutive: step (n, pq) along from the first.
    // Fully unrolled, so acc stays in registers (a loop left rolled would index it dynamically).
#pragma unroll
    for (int tm = 0; tm < TM; tm++) {
        if (m0 + tm < M) {
#pragma unroll
            for (int tn = 0; tn < TN; tn++) {
                const int k_in_group = k_base + thread_n + tn;
                if (k_in_group >= K_per_group) continue;
                const int k = g * K_per_group + k_in_group;
                T v = acc[tm][tn];
                if (bias != nullptr) v += bias[k];
                y[(n * K + k) * PQ + pq] = activate<Activation>(v);
            }
        }
        if (++pq == PQ) {
            pq = 0;
            n++;
        }
    }
}
