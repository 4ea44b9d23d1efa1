// fprop.cu: the forward convolution y = activation(conv2d(x, w) + bias).
//
// As an implicit GEMM (per group): M = N·P·Q output pixels, N = K output channels, reduction
// K = C·R·S (C and K per group), with A[m, (c,r,s)] = x[n, c, p·stride_h - pad_top + r·dil_h, ...]
// read straight from x (no im2col) and zero where the tap falls into the padding.
//
// fprop_direct: one thread per output element y[n,k,p,q]; it sums over its group's C/groups
// channels and the R·S taps in a fixed order (r, s, c), then adds the bias and applies the
// activation (the fused epilogue). Any stride, asymmetric padding, dilation and groups.
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
