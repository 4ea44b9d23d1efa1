// Kernels that are right: each must give NumPy's answer under every schedule, fill and mode.

// out[c][r] = in[r][c] for an rows x cols matrix, through a TILE x (TILE+1) tile in dynamic shared
// memory (the +1 column avoids bank conflicts on a GPU). Launch: block (TILE, TILE),
// shared_mem = TILE * (TILE + 1) * sizeof(float).
template <int TILE>
__global__ void transpose(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
    extern __shared__ float tile[];
    int c = blockIdx.x * TILE + threadIdx.x, r = blockIdx.y * TILE + threadIdx.y;
    if (r < rows && c < cols) tile[threadIdx.y * (TILE + 1) + threadIdx.x] = in[r * cols + c];
    __syncthreads();
    int out_r = blockIdx.x * TILE + threadIdx.y, out_c = blockIdx.y * TILE + threadIdx.x;
    if (out_r < cols && out_c < rows) out[out_r * rows + out_c] = tile[threadIdx.x * (TILE + 1) + threadIdx.y];
}

// out[block] = sum of the block's grid-stride slice of x: a tree reduction in static shared memory.
template <class T, int THREADS>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ out, int n) {
    __shared__ T partial[THREADS];
    int t = threadIdx.x;
    T acc = 0;
    for (int i = blockIdx.x * THREADS + t; i < n; i += THREADS * gridDim.x) acc += x[i];
    partial[t] = acc;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// out[warp] = sum over the warp's 32 values with shuffles; lane 0 of each warp also gets the warp's
// maximum through __shfl_sync broadcast and a ballot of positive values.
__global__ void warp_sum(const float* __restrict__ x, float* __restrict__ sums, unsigned* __restrict__ ballots) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    v = __shfl_sync(0xffffffffu, v, 0);  // broadcast lane 0's total
    unsigned positive = __ballot_sync(0xffffffffu, x[i] > 0.0f);
    if ((threadIdx.x & 31) == 0) {
        sums[i / 32] = v;
        ballots[i / 32] = positive;
    }
}

// counts[b] += number of x in bin b (x in [0, BINS)): per-block histogram in shared memory with
// shared atomics, then one global atomic per bin.
template <int BINS>
__global__ void histogram(const int* __restrict__ x, unsigned* __restrict__ counts, int n) {
    __shared__ unsigned local[BINS];
    for (int b = threadIdx.x; b < BINS; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        atomicAdd(&local[x[i]], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < BINS; b += blockDim.x) atomicAdd(&counts[b], local[b]);
}

// c[M][N] = a[M][K] b[K][N], 64x64 tile per block, 256 threads each computing 4x4 outputs, through
// 64x16 / 16x64 shared tiles: the shape of the implicit-GEMM kernels (benchmark and tests).
__global__ void gemm64(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                       int M, int N, int K) {
    __shared__ float as[16][64];
    __shared__ float bs[16][64];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int row0 = blockIdx.y * 64, col0 = blockIdx.x * 64;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int i = threadIdx.x; i < 64 * 16; i += 256) {
            int r = i / 16, k = i % 16;
            as[k][r] = a[(row0 + r) * K + k0 + k];
            int kk = i / 64, cc = i % 64;
            bs[kk][cc] = b[(k0 + kk) * N + col0 + cc];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 16; ++k)
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += as[k][ty * 4 + i] * bs[k][tx * 4 + j];
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) c[(row0 + ty * 4 + i) * N + col0 + tx * 4 + j] = acc[i][j];
}

// Many barriers, no work: the benchmark's fiber-switch rate.
__global__ void barriers(int rounds) {
    for (int i = 0; i < rounds; ++i) __syncthreads();
}
