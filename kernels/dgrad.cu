// dgrad.cu: the input gradient dx = conv2d_input(dy, w) (+ bias), which is also the forward pass of
// conv_transpose2d (its input is dy[N,K,P,Q], its output dx[N,C,H,W], its bias one value per C).
//
// As an implicit GEMM (per group): M = N·H·W input pixels, N = C input channels, reduction
// K = K·R·S, of which each input pixel meets only the taps (r, s) whose output pixel (p, q) exists:
// with stride > 1 most taps land between output pixels and are skipped, never multiplied by zero.
//
// dgrad_direct: one thread per element dx[n,c,h,w]; instead of scattering dy through w (the
// transpose of fprop, which would need atomics) it gathers from the taps that hit a real dy
// element, in a fixed order (r, s, k), then adds the bias if there is one. P and Q are the problem's, not recomputed from H and W: for
// conv_transpose2d with output_padding they are given, so every (p, q) is bounds-checked.
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
