// Memory-access patterns with known GPU costs, for the emulator's profile mode. Each access of
// interest sits alone on a line marked "// P:<name>"; tests/test_profile.py finds the line by its
// marker and compares the counters with the costs worked out by hand there.

// Launch: one block of blockDim.x <= 32 threads (one warp, maybe partial); x holds at least 1024
// floats, x4 at least 32 float4, out blockDim.x floats.
__global__ void patterns(const float* __restrict__ x, const float4* __restrict__ x4,
                         float* __restrict__ out) {
    __shared__ float s[1024];
    __shared__ float tile[32][32];
    __shared__ float padded[32][33];
    __shared__ double s2[32];
    __shared__ float4 s4[32];
    const int lane = threadIdx.x;
    for (int i = lane; i < 1024; i += blockDim.x) s[i] = x[i];
    for (int i = lane; i < 32 * 32; i += blockDim.x) tile[i / 32][i % 32] = x[i];
    for (int i = lane; i < 32 * 33; i += blockDim.x) padded[i / 33][i % 33] = x[i % 1024];
    s2[lane] = x[lane];
    s4[lane] = x4[lane];
    __syncthreads();
    float acc = 0.0f;
    acc += s[lane];                    // P:shared_conflict_free
    acc += s[lane * 2];                // P:shared_2way
    acc += s[lane * 32];               // P:shared_32way
    acc += s[0];                       // P:shared_broadcast
    acc += float(s2[lane]);            // P:shared_8byte
    const float4 v = s4[lane];         // P:shared_16byte
    acc += v.x + v.y + v.z + v.w;
    acc += tile[lane][3];              // P:tile_column
    acc += padded[lane][3];            // P:padded_column
    acc += x[lane];                    // P:global_contiguous
    acc += x[lane * 32];               // P:global_strided
    acc += x[7];                       // P:global_same
    const float4 g = x4[lane];         // P:global_float4
    acc += g.x + g.y + g.z + g.w;
    if (lane % 2 == 0) acc += x[64 + lane] + s[64 + lane];  // P:divergent
    out[lane] = acc;                   // P:store
}

// Launch: one block of one warp; x holds at least 256 floats, out 32. Two k-tiles, a barrier
// each, of four staged elements: element i of tile t is x[t·128 + i·32 + lane], skipped (zero)
// by the odd lanes for element 1 of tile 0, as fprop's gather skips the padding's taps.
__global__ void skipping(const float* __restrict__ x, float* __restrict__ out) {
    const int lane = threadIdx.x;
    float acc = 0.0f;
    for (int tile = 0; tile < 2; tile++) {
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const bool valid = lane % 2 == 0 || i != 1 || tile != 0;
            v[i] = valid ? x[tile * 128 + i * 32 + lane] : 0.0f;  // P:skipping
        }
        __syncthreads();
        acc += v[0] + v[1] + v[2] + v[3];
    }
    out[lane] = acc;
}
