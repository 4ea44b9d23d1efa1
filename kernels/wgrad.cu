// wgrad.cu: the weight gradient dw = conv2d_weight(x, dy).
//
// As an implicit GEMM (per group): M = K output channels, N = C·R·S (C per group), reduction
// K = N·P·Q, with B[(n,p,q), (c,r,s)] = x[n, c, p·stride_h - pad_top + r·dil_h, ...] read straight
// from x and zero where the tap falls into the padding.
//
// wgrad_direct: one thread per element dw[k,c,r,s]; it sums dy[n,k,p,q]·x[...] over the whole
// N·P·Q reduction in a fixed order (n, p, q): no atomics, bitwise reproducible. The reduction is
// long (it is the batch times the image), so this kernel is the obviously-right fallback, not the
// fast path.
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
