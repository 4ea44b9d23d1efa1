// The interface between emulated kernels (kernels/cuda_emu.h) and the runtime (runtime.cpp).
//
// Kernel code calls these functions; Python calls the generated gpuconv_launch_<i> entry points,
// which call run_grid. Everything here is plain data so that Python can mirror LaunchConfig with
// ctypes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace gpuconv_emu {

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// What threadIdx, blockIdx, blockDim and gridDim read: the running fiber's own copy.
struct ThreadIndex {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

enum Schedule : int32_t { kForward = 0, kReverse = 1, kRandom = 2 };

// Mirrored by gpuconv/emulate/_launch.py (ctypes): keep the two in step.
struct LaunchConfig {
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t dynamic_shared_bytes;
    int32_t schedule;
    int32_t fill_byte;         // every shared-memory byte at block start
    uint64_t seed;             // for kRandom
    double watchdog_seconds;   // no progress for this long -> error instead of a hang
    const char* kernel_name;   // for messages
    // Profile mode: the [begin, end) byte ranges of the launch's array arguments. An access inside
    // one is a global-memory access; one outside them and outside shared memory (a fiber's stack,
    // the kernel's parameters) is a register or parameter access on the GPU and is not counted.
    const uint64_t* global_ranges;
    uint64_t global_range_count;
    // The module's static __shared__ variables: (offset from the module's load address, size)
    // pairs in address order, found in its symbol table by gpuconv.emulate (GCC places a template
    // function's static locals in their own COMDAT sections, whatever section attribute they carry).
    const uint64_t* shared_variables;
    uint64_t shared_variable_count;
};

// Error codes returned by run_grid; Python maps each to an exception class.
enum Status : int32_t {
    kOk = 0,
    kLaunchError = 1,      // bad configuration
    kDeadlock = 2,         // nothing runnable, or the watchdog fired
    kDivergence = 3,       // __syncthreads from different call sites in one phase
    kWarpError = 4,        // warp intrinsic: mask rule broken, bad width, inactive source lane
    kRace = 5,             // shared-memory hazard (race mode)
    kAddress = 6,          // an address the instruction cannot take (cp.async outside shared memory)
};

enum ShuffleMode : int32_t { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3 };
enum BarrierReduce : int32_t { kReduceNone = 0, kReduceCount = 1, kReduceAnd = 2, kReduceOr = 3 };

using ThreadBody = void (*)(void* closure);

// Runs every block of the grid; returns a Status and writes a report into error on failure.
int run_grid(const LaunchConfig* config, ThreadBody body, void* closure, char* error,
             size_t error_size);

const ThreadIndex* current_thread() __attribute__((pure));
void* dynamic_shared();

int syncthreads(BarrierReduce reduce, int predicate, const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
uint64_t warp_shuffle(unsigned mask, uint64_t value, ShuffleMode mode, int lane_or_delta, int width,
                      const char* file, int line);
unsigned warp_ballot(unsigned mask, int predicate, const char* file, int line);
unsigned active_mask();

// Tensor-core warp collectives (kernels/mma.cuh): all 32 lanes of the warp take part, each with its
// own fragment registers laid out as the PTX ISA says (see runtime.cpp).
enum MmaKind : int32_t {
    kMmaF16 = 0,   // mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
    kMmaBf16 = 1,  // mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
    kMmaTf32 = 2,  // mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
};
void warp_mma(MmaKind kind, const uint32_t a[4], const uint32_t b[2], const float c[4], float d[4],
              const char* file, int line);
// ldmatrix.sync.aligned.m8n8.x{matrices}[.trans].shared.b16: lanes 8i..8i+7 give the row addresses
// of matrix i; each lane gets one 32-bit register per matrix.
void warp_ldmatrix(int matrices, bool trans, const void* row, uint32_t out[4], const char* file,
                   int line);

// The conversions behind mma.cuh's cvt helpers, rounding as the hardware does (runtime.cpp).
uint16_t float_to_half(float v);
uint16_t float_to_bfloat16(float v);
uint32_t float_to_tf32(float v);
float half_to_float(uint16_t h);
float bits_to_float(uint32_t bits);

// cp.async (kernels/common.cuh), per thread as in the PTX ISA: async_copy starts a copy of `bytes`
// from global src (its first src_bytes; the rest zero) to shared dst in the thread's open group,
// async_copy_commit closes that group, async_copy_wait(n) lands every committed group but the n
// newest. A copy's destination holds NaN bytes from its start until it lands.
void async_copy(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line);
void async_copy_commit();
void async_copy_wait(int newest_in_flight);

// Profile mode: an atomic access by the running thread (pc: the return address into its caller).
void profile_atomic(const void* address, size_t size, void* pc);

}  // namespace gpuconv_emu
