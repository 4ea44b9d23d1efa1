// runtime.cpp: the execution model of the gpuconv CPU emulator.
//
// Every CUDA thread runs on a fiber. The fibers of a launch live on the OS thread that called
// run_grid and the blocks of the grid run one after another, so fibers switch only inside this file:
// at __syncthreads, at a warp intrinsic, and when a thread exits. A fiber is a *worker*: it runs
// threads back to back until one of them blocks, then that thread keeps the fiber and the next thread
// gets another one; a kernel without barriers needs one fiber in all.
//
// Fidelity rules (each hides real GPU bugs if missing):
//  - shared memory is filled with the launch's fill byte at every block start;
//  - between barriers, threads run in the launch's schedule (forward, reverse or seeded random);
//  - a __syncthreads phase must be reached from one call site; threads that have exited count as
//    arrived (on sm_70+ a barrier waits for the non-exited threads only);
//  - warp intrinsics are rendezvous of the lanes named in the mask, with the mask rule checked and
//    shfl.sync's semantics taken from the PTX ISA pseudocode;
//  - nothing runnable while threads wait is a deadlock; no progress for watchdog_seconds (a spin on
//    another thread or block) fires a signal that abandons the block: both are errors, not hangs.
// Errors never abort the process: fail() records a report and switches back to run_grid's stack.
//
// Built once per mode: -DGPUCONV_EMULATE_RACE adds the shared-memory race detector and
// -DGPUCONV_EMULATE_PROFILE the memory-traffic profile (in both the kernel is compiled with
// -fsanitize=thread, whose __tsan_* hooks are implemented at the end of this file, with no libtsan);
// under -fsanitize=address the fiber switches are annotated for AddressSanitizer.
#include "emu_runtime.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define GPUCONV_EXPORT extern "C" __attribute__((visibility("default")))

namespace gpuconv_emu {
namespace {

// ===== context switch ===========================================================================
#if defined(__x86_64__)
// Saves the callee-saved registers, the SSE control/status word and the x87 control word on the
// current stack, stores rsp in *from and resumes *to. Out of line so the compiler treats it as an
// ordinary call that clobbers all caller-saved state.
struct Context {
    void* sp;
};
extern "C" void gpuconv_emu_switch(Context* from, Context* to);
extern "C" void gpuconv_emu_fiber_entry();
asm(R"(
    .text
    .globl gpuconv_emu_switch
    .hidden gpuconv_emu_switch
    .type gpuconv_emu_switch, @function
gpuconv_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw (%rsp)
    movq %rsp, (%rdi)
    movq (%rsi), %rsp
    fldcw (%rsp)
    ldmxcsr 8(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpuconv_emu_switch, .-gpuconv_emu_switch

    .globl gpuconv_emu_fiber_entry
    .hidden gpuconv_emu_fiber_entry
    .type gpuconv_emu_fiber_entry, @function
gpuconv_emu_fiber_entry:
    movq %rbx, %rdi
    callq *%r12
    ud2
    .size gpuconv_emu_fiber_entry, .-gpuconv_emu_fiber_entry
)");

// The first switch into a fiber "returns" into gpuconv_emu_fiber_entry with rsp 16-byte aligned,
// which calls entry(argument): the callee then sees rsp = 8 (mod 16), as the ABI requires.
void make_context(Context* context, char* stack, size_t size, void (*entry)(void*), void* argument) {
    auto top = reinterpret_cast<uintptr_t>(stack + size - 64) & ~uintptr_t(15);
    auto* slot = reinterpret_cast<uint64_t*>(top) - 9;  // x87 cw, mxcsr, r15..r12, rbx, rbp, return
    std::memset(slot, 0, 9 * sizeof(uint64_t));
    slot[0] = 0x037f;                                 // x87: default control word
    slot[1] = 0x1f80;                                 // SSE: all exceptions masked, round to nearest
    slot[5] = reinterpret_cast<uint64_t>(entry);      // r12
    slot[6] = reinterpret_cast<uint64_t>(argument);   // rbx
    slot[8] = reinterpret_cast<uint64_t>(&gpuconv_emu_fiber_entry);
    context->sp = slot;
}
#else
}  // namespace
}  // namespace gpuconv_emu

#include <ucontext.h>
namespace gpuconv_emu {
namespace {
// Portable fallback: swapcontext costs a signal-mask syscall per switch (about 20x slower).
struct Context {
    ucontext_t uc;
};
void gpuconv_emu_switch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
void (*g_entry)(void*);
void fiber_entry_trampoline(unsigned high, unsigned low) {
    g_entry(reinterpret_cast<void*>((uintptr_t(high) << 32) | low));
}
void make_context(Context* context, char* stack, size_t size, void (*entry)(void*), void* argument) {
    getcontext(&context->uc);
    context->uc.uc_stack.ss_sp = stack;
    context->uc.uc_stack.ss_size = size;
    context->uc.uc_link = nullptr;
    g_entry = entry;
    auto bits = reinterpret_cast<uintptr_t>(argument);
    makecontext(&context->uc, reinterpret_cast<void (*)()>(fiber_entry_trampoline), 2,
                unsigned(bits >> 32), unsigned(bits));
}
#endif

// ===== fibers ===================================================================================
constexpr size_t kStackBytes = 256 << 10;  // ASan and -O0 (coverage) frames are large
constexpr int kWatchdogSignal = 47;        // a real-time signal nobody else in the process uses

struct Fiber {
    Context context;
    char* mapping = nullptr;  // guard page, then the stack
    char* stack = nullptr;
    size_t stack_size = 0;
};

enum class State : uint8_t { kUnstarted, kRunnable, kRunning, kAtBarrier, kAtWarp, kExited };

enum class WarpOpKind : uint8_t { kSync, kShuffle, kBallot, kMma, kLdmatrix };

struct WarpOp {
    WarpOpKind kind;
    ShuffleMode mode;
    unsigned mask;
    int b, c;  // shfl.sync operands: lane/delta and the clamp/segment word; mma: the MmaKind;
               // ldmatrix: the matrix count and whether transposed
    uint64_t value, result;
    const void* in = nullptr;  // mma: the lane's a, b, c registers; ldmatrix: its row address
    void* out = nullptr;       // mma: its d registers; ldmatrix: its destination registers
    uintptr_t pc = 0;          // ldmatrix: the return address into the kernel (profile mode)
};

// The registers one lane hands to mma.sync.
struct MmaOperands {
    uint32_t a[4], b[2];
    float c[4];
};

// One cp.async in flight: it belongs to group `group` (the thread's committed groups when it started).
struct AsyncCopy {
    char* dst;
    const char* src;
    uint32_t bytes, src_bytes, group;
    uintptr_t pc;  // the return address into the kernel, for the race detector's report
};

struct Thread {
    ThreadIndex index;
    int linear;
    State state;
    Fiber* fiber;
    const char* file;  // where it waits
    int line;
    WarpOp op;
    int barrier_result;
    uint32_t committed_groups;            // cp.async groups this thread has committed
    std::vector<AsyncCopy> async_copies;  // started, not yet landed, in issue order
};

struct Warp {
    unsigned waiting;  // lanes blocked in a warp intrinsic
    unsigned exited;   // lanes that have exited or do not exist
    uint32_t epoch;    // completed rendezvous, for the race detector
};

#ifdef GPUCONV_EMULATE_RACE
struct Access {
    int32_t thread = -1;
    uint32_t epoch = 0;
    uint32_t warp_epoch = 0;
    uintptr_t pc = 0;
};
struct ByteShadow {
    Access write, read, other_read;  // two readers, so that a write-after-read names another thread
};
#endif

#ifdef GPUCONV_EMULATE_PROFILE
// ---- profile: what a GPU's memory system would do with each warp-level access ------------------
enum Space : uint8_t { kGlobal = 0, kShared = 1 };
enum Kind : uint8_t { kLoad = 0, kStore = 1, kAtomic = 2, kCpAsync = 3 };  // PROFILE_KINDS in Python

// One lane's access, in the order the lane made it.
struct LaneAccess {
    uintptr_t pc;  // the instrumented instruction (a return address inside the kernel's code)
    uintptr_t address;
    uint32_t size;
    uint32_t epoch;  // the block's barrier epoch (__syncthreads completed) when the lane made it
    Space space;
    Kind kind;
};

// Counters of one static access (pc, space, kind, bytes per lane), summed over warp-level requests.
struct ProfileKey {
    uintptr_t pc;  // offset in the module
    uint32_t bytes;
    uint8_t space, kind;
    bool operator<(const ProfileKey& o) const {
        return std::tie(pc, bytes, space, kind) < std::tie(o.pc, o.bytes, o.space, o.kind);
    }
};
struct ProfileCounts {
    uint64_t requests = 0, lanes = 0, sectors = 0, wavefronts = 0, ideal = 0;
};
std::map<ProfileKey, ProfileCounts> g_profile;  // guarded by g_launch_mutex, like every launch
#endif

struct Launch;
thread_local Launch* t_launch;
std::atomic<uint64_t> g_switches{0};  // for the benchmark: fiber switches since the module loaded
thread_local const ThreadIndex* t_index;

const char* op_name(const WarpOp& op) {
    if (op.kind == WarpOpKind::kSync) return "__syncwarp";
    if (op.kind == WarpOpKind::kMma) return "mma.sync";
    if (op.kind == WarpOpKind::kLdmatrix) return "ldmatrix.sync";
    if (op.kind == WarpOpKind::kBallot) return "__ballot_sync/__any_sync/__all_sync";
    static const char* const shuffles[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                           "__shfl_xor_sync"};
    return shuffles[op.mode];
}

struct SharedRange {
    char* begin;
    char* end;
};

struct Launch {
    const LaunchConfig& config;
    std::vector<SharedRange> statics;  // the static __shared__ variables, in address order
    size_t static_size = 0;            // their bytes in all
    char* dynamic_begin;
    ThreadBody body;
    void* closure;

    int thread_count = 0;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<int> order;     // schedule order of the threads' first start
    std::vector<int> released;  // scratch: threads a barrier or rendezvous releases
    size_t next_unstarted = 0;
    std::deque<Thread*> run_queue;
    std::mt19937_64 rng;
    uint3 block_idx{0, 0, 0};

    int arrived = 0, exited = 0;
    Thread* first_arrival = nullptr;
    BarrierReduce reduce = kReduceNone;
    int reduce_value = 0;
    uint32_t barrier_epoch = 0;

    std::vector<Fiber*> fibers, idle;
    Context main{};
    Context* running = &main;
    void* main_stack_bottom = nullptr;
    size_t main_stack_size = 0;

    std::atomic<uint64_t> progress{0};
    uint64_t switches = 0;
    int status = kOk;
    std::string report;

#ifdef GPUCONV_EMULATE_RACE
    std::vector<ByteShadow> shadow;
#endif
#ifdef GPUCONV_EMULATE_PROFILE
    std::vector<std::vector<LaneAccess>> lane_accesses;  // per thread of the running block
#endif

    Launch(const LaunchConfig& c, ThreadBody b, void* cl, char* dyn)
        : config(c), dynamic_begin(dyn), body(b), closure(cl), rng(c.seed) {
        Dl_info info{};
        dladdr(reinterpret_cast<void*>(&module_base_marker), &info);
        auto* base = static_cast<char*>(info.dli_fbase);
        for (uint64_t i = 0; i < c.shared_variable_count; ++i) {
            char* begin = base + c.shared_variables[2 * i];
            statics.push_back(SharedRange{begin, begin + c.shared_variables[2 * i + 1]});
            static_size += c.shared_variables[2 * i + 1];
        }
    }
    static void module_base_marker() {}

    // Offset of a shared-memory byte: the static variables laid end to end in address order, then
    // the dynamic shared memory; SIZE_MAX for any other address.
    size_t shared_offset(const char* p) const {
        size_t offset = 0;
        for (const SharedRange& r : statics) {
            if (p >= r.begin && p < r.end) return offset + size_t(p - r.begin);
            offset += size_t(r.end - r.begin);
        }
        if (p >= dynamic_begin && p < dynamic_begin + config.dynamic_shared_bytes) {
            return static_size + size_t(p - dynamic_begin);
        }
        return SIZE_MAX;
    }

    ~Launch() {
        for (Fiber* f : fibers) {
#ifdef __SANITIZE_ADDRESS__
            // ASan keeps the poison of the fiber's last frames; a library mapped here later would
            // inherit it and report a false stack-buffer-overflow.
            __asan_unpoison_memory_region(f->stack, f->stack_size);
#endif
            munmap(f->mapping, f->stack_size + size_t(sysconf(_SC_PAGESIZE)));
            delete f;
        }
    }

    // ---- messages ------------------------------------------------------------------------------
    std::string thread_name(const Thread& t) const {
        char text[64];
        std::snprintf(text, sizeof text, "thread (%u,%u,%u)", t.index.thread_idx.x,
                      t.index.thread_idx.y, t.index.thread_idx.z);
        return text;
    }
    std::string where() const {
        char text[512];
        std::snprintf(text, sizeof text, "kernel '%s' block (%u,%u,%u)", config.kernel_name,
                      block_idx.x, block_idx.y, block_idx.z);
        return text;
    }
    // "0-15, 17" for linear thread indices.
    static std::string ranges(const std::vector<int>& ids) {
        std::string text;
        for (size_t i = 0; i < ids.size();) {
            size_t j = i;
            while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
            text += (text.empty() ? "" : ", ") + std::to_string(ids[i]);
            if (j > i) text += "-" + std::to_string(ids[j]);
            i = j + 1;
        }
        return text;
    }

    // Records the report and abandons the block: back to run_grid's stack, never returns.
    [[noreturn]] void fail(int code, const char* format, ...) __attribute__((format(printf, 3, 4))) {
        char text[2048];
        va_list args;
        va_start(args, format);
        std::vsnprintf(text, sizeof text, format, args);
        va_end(args);
        status = code;
        report = text;
        transfer(&main);
        __builtin_unreachable();
    }

    // ---- switching ---------------------------------------------------------------------------
    void transfer(Context* to) {
        Context* from = running;
        running = to;
        ++switches;
#ifdef __SANITIZE_ADDRESS__
        void* fake_stack = nullptr;
        if (to == &main) {
            __sanitizer_start_switch_fiber(&fake_stack, main_stack_bottom, main_stack_size);
        } else {
            Fiber* f = fiber_of(to);
            __sanitizer_start_switch_fiber(&fake_stack, f->stack, f->stack_size);
        }
        gpuconv_emu_switch(from, to);
        __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
        gpuconv_emu_switch(from, to);
#endif
    }
    static Fiber* fiber_of(Context* c) { return reinterpret_cast<Fiber*>(c); }  // context is first

    static void fiber_main(void* argument) {
#ifdef __SANITIZE_ADDRESS__
        __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
        auto* fiber = static_cast<Fiber*>(argument);
        Launch* launch = t_launch;
        for (;;) {
            while (launch->next_unstarted < launch->order.size()) {
                Thread* t = &launch->threads[launch->order[launch->next_unstarted++]];
                launch->run(t, fiber);
            }
            launch->idle.push_back(fiber);
            launch->wait_until_runnable(nullptr, &fiber->context);
        }
    }

    Fiber* new_fiber() {
        size_t page = size_t(sysconf(_SC_PAGESIZE));
        void* mapping = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mapping == MAP_FAILED) {
            fail(kLaunchError, "%s: cannot map a %zu KiB fiber stack (%zu fibers exist): %s",
                 where().c_str(), kStackBytes >> 10, fibers.size(), std::strerror(errno));
        }
        mprotect(mapping, page, PROT_NONE);  // the guard page turns a stack overflow into SIGSEGV
#ifdef __SANITIZE_ADDRESS__
        // The range may hold an earlier fiber's stack, whose frames ASan still marks as poisoned.
        ASAN_UNPOISON_MEMORY_REGION(static_cast<char*>(mapping) + page, kStackBytes);
#endif
        auto* f = new Fiber;
        f->mapping = static_cast<char*>(mapping);
        f->stack = f->mapping + page;
        f->stack_size = kStackBytes;
        make_context(&f->context, f->stack, f->stack_size, &fiber_main, f);
        fibers.push_back(f);
        return f;
    }

    // The context to run next: a released thread, else a fiber for the next unstarted thread, else
    // run_grid's own stack (nothing runnable).
    Context* pick_next() {
        if (!run_queue.empty()) {
            Thread* t = run_queue.front();
            run_queue.pop_front();
            t->state = State::kRunning;
            t_index = &t->index;
            return &t->fiber->context;
        }
        if (next_unstarted < order.size()) {
            if (idle.empty()) return &new_fiber()->context;
            Fiber* f = idle.back();
            idle.pop_back();
            return &f->context;
        }
        return &main;
    }

    // Called on the fiber `self` by a blocked thread t (or by an idle worker, t == nullptr).
    void wait_until_runnable(Thread* t, Context* self) {
        Context* next = pick_next();
        if (next != self) transfer(next);
        if (t) t_index = &t->index;
    }

    void run(Thread* t, Fiber* fiber) {
        t->fiber = fiber;
        t->state = State::kRunning;
        t_index = &t->index;
        body(closure);
        t->state = State::kExited;
        ++exited;
        progress.fetch_add(1, std::memory_order_relaxed);
        Warp& warp = warps[t->linear >> 5];
        warp.exited |= 1u << (t->linear & 31);
        release_barrier_if_complete();
        // A waiting group may have been waiting for this lane only.
        for (unsigned pending = warp.waiting; pending;) {
            const Thread& waiter = threads[(t->linear & ~31) + __builtin_ctz(pending)];
            pending &= ~waiter.op.mask;
            complete_warp_op_if_ready(t->linear >> 5, waiter.op.mask);
        }
    }

    // ---- schedule ----------------------------------------------------------------------------
    void reorder() {
        for (int i = 0; i < thread_count; ++i) order[size_t(i)] = i;
        if (config.schedule == kReverse) std::reverse(order.begin(), order.end());
        if (config.schedule == kRandom) std::shuffle(order.begin(), order.end(), rng);
    }

    void make_runnable_in_order(State waiting_state, int first, int count) {
        released.clear();
        for (int i = first; i < first + count; ++i) {
            if (threads[size_t(i)].state == waiting_state) released.push_back(i);
        }
        if (config.schedule == kReverse) std::reverse(released.begin(), released.end());
        if (config.schedule == kRandom) std::shuffle(released.begin(), released.end(), rng);
        for (int i : released) {
            threads[size_t(i)].state = State::kRunnable;
            run_queue.push_back(&threads[size_t(i)]);
        }
    }

    // ---- barriers ------------------------------------------------------------------------------
    int syncthreads(BarrierReduce kind, int predicate, const char* file, int line) {
        Thread* t = current();
        if (arrived == 0) {
            first_arrival = t;
            reduce = kind;
            reduce_value = kind == kReduceAnd ? 1 : 0;
        } else if (line != first_arrival->line || kind != reduce ||
                   (file != first_arrival->file && std::strcmp(file, first_arrival->file) != 0)) {
            fail(kDivergence,
                 "divergent __syncthreads in %s: %s reached the barrier at %s:%d while %s waits at "
                 "%s:%d in the same phase (a barrier in divergent code is undefined on the GPU)",
                 where().c_str(), thread_name(*t).c_str(), file, line,
                 thread_name(*first_arrival).c_str(), first_arrival->file, first_arrival->line);
        }
        t->file = file;
        t->line = line;
        t->state = State::kAtBarrier;
        ++arrived;
        if (kind == kReduceCount) reduce_value += predicate != 0;
        if (kind == kReduceAnd) reduce_value &= predicate != 0;
        if (kind == kReduceOr) reduce_value |= predicate != 0;
        release_barrier_if_complete();
        wait_until_runnable(t, &t->fiber->context);
        return t->barrier_result;
    }

    void release_barrier_if_complete() {
        if (arrived == 0 || arrived + exited < thread_count) return;
        for (Thread& t : threads) {
            if (t.state == State::kAtBarrier) t.barrier_result = reduce_value;
        }
        make_runnable_in_order(State::kAtBarrier, 0, thread_count);
        arrived = 0;
        ++barrier_epoch;
        progress.fetch_add(1, std::memory_order_relaxed);
    }

    // ---- warp intrinsics ---------------------------------------------------------------------
    uint64_t warp_op(const WarpOp& op, const char* file, int line) {
        Thread* t = current();
        int lane = t->linear & 31, w = t->linear >> 5;
        Warp& warp = warps[size_t(w)];
        if (!((op.mask >> lane) & 1)) {
            fail(kWarpError,
                 "%s: %s (lane %d) calls %s at %s:%d with mask 0x%08x, which does not name its own "
                 "lane",
                 where().c_str(), thread_name(*t).c_str(), lane, op_name(op), file, line, op.mask);
        }
        // All non-exited lanes named in the mask must execute the same intrinsic with the same mask.
        for (unsigned pending = warp.waiting; pending; pending &= pending - 1) {
            int other_lane = __builtin_ctz(pending);
            const Thread& other = threads[size_t(w * 32 + other_lane)];
            bool related = ((op.mask >> other_lane) & 1) || ((other.op.mask >> lane) & 1);
            if (related && (other.op.mask != op.mask || other.op.kind != op.kind ||
                            other.op.mode != op.mode ||
                            (op.kind >= WarpOpKind::kMma && (other.op.b != op.b || other.op.c != op.c)))) {
                fail(kWarpError,
                     "%s: %s calls %s at %s:%d with mask 0x%08x while %s waits in %s at %s:%d with "
                     "mask 0x%08x (lanes named in a mask must execute the same intrinsic with the "
                     "same mask)",
                     where().c_str(), thread_name(*t).c_str(), op_name(op), file, line, op.mask,
                     thread_name(other).c_str(), op_name(other.op), other.file, other.line,
                     other.op.mask);
            }
        }
        t->op = op;
        t->file = file;
        t->line = line;
        t->state = State::kAtWarp;
        warp.waiting |= 1u << lane;
        complete_warp_op_if_ready(w, op.mask);
        wait_until_runnable(t, &t->fiber->context);
        return t->op.result;
    }

    void complete_warp_op_if_ready(int w, unsigned mask) {
        Warp& warp = warps[size_t(w)];
        unsigned members = mask & ~warp.exited;
        if ((warp.waiting & members) != members || members == 0) return;
        Thread* lanes = &threads[size_t(w * 32)];
        const WarpOp& op = lanes[__builtin_ctz(members)].op;
        if (op.kind == WarpOpKind::kBallot) {
            unsigned ballot = 0;
            for (unsigned m = members; m; m &= m - 1) {
                int lane = __builtin_ctz(m);
                ballot |= unsigned(lanes[lane].op.value != 0) << lane;
            }
            for (unsigned m = members; m; m &= m - 1) lanes[__builtin_ctz(m)].op.result = ballot;
        } else if (op.kind == WarpOpKind::kMma || op.kind == WarpOpKind::kLdmatrix) {
            if (members != 0xffffffffu) {
                fail(kWarpError,
                     "%s: %s at %s:%d is .aligned: all 32 lanes of warp %d must execute it, but "
                     "lanes 0x%08x do not (exited, or past the block's last thread)",
                     where().c_str(), op_name(op), lanes[__builtin_ctz(members)].file,
                     lanes[__builtin_ctz(members)].line, w, ~members);
            }
            if (op.kind == WarpOpKind::kMma) complete_mma(lanes, MmaKind(op.b));
            else complete_ldmatrix(lanes, op.b, op.c != 0);
        } else if (op.kind == WarpOpKind::kShuffle) {
            for (unsigned m = members; m; m &= m - 1) {
                int lane = __builtin_ctz(m);
                Thread& reader = lanes[lane];
                int source = shuffle_source(reader.op, lane);
                if (!((members >> source) & 1)) {
                    fail(kWarpError,
                         "%s: %s (lane %d) reads lane %d in %s at %s:%d, but lane %d %s (mask 0x%08x)",
                         where().c_str(), thread_name(reader).c_str(), lane, source,
                         op_name(reader.op), reader.file, reader.line, source,
                         (mask >> source) & 1 ? "has exited" : "is not named in the mask", mask);
                }
                reader.op.result = lanes[source].op.value;
            }
        }
        warp.waiting &= ~members;
        ++warp.epoch;
        progress.fetch_add(1, std::memory_order_relaxed);
        for (unsigned m = members; m; m &= m - 1) lanes[__builtin_ctz(m)].state = State::kAtWarp;
        make_runnable_in_order(State::kAtWarp, w * 32, std::min(32, thread_count - w * 32));
    }

    // ---- tensor cores ------------------------------------------------------------------------
    // Fragment layouts from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
    // type", "... for mma.m16n8k8"), with g = lane / 4 and t = lane % 4:
    //   m16n8k16 A (16×16, two 16-bit values a register, lower column in the low half):
    //     a0 row g, cols 2t, 2t+1; a1 row g+8; a2 row g, cols 2t+8, 2t+9; a3 row g+8, cols 2t+8, 2t+9
    //   m16n8k16 B (16×8): b0 rows 2t, 2t+1, col g; b1 rows 2t+8, 2t+9, col g
    //   m16n8k8 tf32 A (16×8): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
    //   m16n8k8 tf32 B (8×8): b0 (t, g), b1 (t+4, g)
    //   C and D (16×8 float): c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
    // Products of the input types are exact in float; they are summed in float in k order and
    // added to c (the hardware's internal order is unspecified: compare with tolerances).
    static float element(MmaKind kind, uint32_t reg, int half) {
        if (kind == kMmaTf32) return bits_to_float(reg);
        const uint32_t bits = half ? reg >> 16 : reg & 0xffffu;
        return kind == kMmaF16 ? half_to_float(uint16_t(bits)) : bits_to_float(bits << 16);
    }

    void complete_mma(Thread* lanes, MmaKind kind) {
        const int K = kind == kMmaTf32 ? 8 : 16;
        float A[16][16], B[16][8];
        for (int lane = 0; lane < 32; ++lane) {
            const auto& o = *static_cast<const MmaOperands*>(lanes[lane].op.in);
            const int g = lane / 4, t = lane % 4;
            if (kind == kMmaTf32) {
                A[g][t] = element(kind, o.a[0], 0), A[g + 8][t] = element(kind, o.a[1], 0);
                A[g][t + 4] = element(kind, o.a[2], 0), A[g + 8][t + 4] = element(kind, o.a[3], 0);
                B[t][g] = element(kind, o.b[0], 0), B[t + 4][g] = element(kind, o.b[1], 0);
                continue;
            }
            for (int h = 0; h < 2; ++h) {
                A[g][2 * t + h] = element(kind, o.a[0], h);
                A[g + 8][2 * t + h] = element(kind, o.a[1], h);
                A[g][2 * t + 8 + h] = element(kind, o.a[2], h);
                A[g + 8][2 * t + 8 + h] = element(kind, o.a[3], h);
                B[2 * t + h][g] = element(kind, o.b[0], h);
                B[2 * t + 8 + h][g] = element(kind, o.b[1], h);
            }
        }
        for (int lane = 0; lane < 32; ++lane) {
            const auto& o = *static_cast<const MmaOperands*>(lanes[lane].op.in);
            auto* d = static_cast<float*>(lanes[lane].op.out);
            const int g = lane / 4, t = lane % 4;
            for (int r = 0; r < 4; ++r) {
                const int row = g + (r >= 2 ? 8 : 0), col = 2 * t + (r & 1);
                float sum = 0.0f;
                for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
                d[r] = o.c[r] + sum;
            }
        }
    }

    // ldmatrix: matrix i's row r (eight 16-bit values, 16 bytes) is at the address lane 8i + r
    // gives. Lane l gets in register i: without .trans, row l/4, columns 2(l%4) and 2(l%4)+1;
    // with .trans, column l/4 of rows 2(l%4) and 2(l%4)+1 (the fragment of the transpose).
    void complete_ldmatrix(Thread* lanes, int matrices, bool trans) {
        for (int lane = 0; lane < 8 * matrices; ++lane) {
            const auto* row = static_cast<const char*>(lanes[lane].op.in);
            if (shared_offset(row) == SIZE_MAX || shared_offset(row + 15) == SIZE_MAX) {
                fail(kWarpError, "%s: ldmatrix at %s:%d: lane %d's row address %p is not in shared "
                     "memory", where().c_str(), lanes[lane].file, lanes[lane].line, lane,
                     static_cast<const void*>(row));
            }
            if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
                fail(kWarpError, "%s: ldmatrix at %s:%d: lane %d's row address %p is not 16-byte "
                     "aligned (each row is 16 bytes; the PTX ISA requires the alignment)",
                     where().c_str(), lanes[lane].file, lanes[lane].line, lane,
                     static_cast<const void*>(row));
            }
            note_lane_read(lanes[lane], row, 16);
        }
        for (int lane = 0; lane < 32; ++lane) {
            auto* out = static_cast<uint32_t*>(lanes[lane].op.out);
            for (int i = 0; i < matrices; ++i) {
                const int base = 8 * i;
                if (!trans) {
                    std::memcpy(&out[i], static_cast<const char*>(lanes[base + lane / 4].op.in) + 4 * (lane % 4), 4);
                } else {
                    uint16_t lo, hi;
                    const int col = lane / 4, row = 2 * (lane % 4);
                    std::memcpy(&lo, static_cast<const char*>(lanes[base + row].op.in) + 2 * col, 2);
                    std::memcpy(&hi, static_cast<const char*>(lanes[base + row + 1].op.in) + 2 * col, 2);
                    out[i] = uint32_t(lo) | uint32_t(hi) << 16;
                }
            }
        }
    }

    // A shared-memory read the runtime makes for a lane (ldmatrix): seen by the race detector and
    // the profile as that lane's 16-byte load at its call site.
    void note_lane_read(const Thread& lane, const void* address, size_t size) {
#ifdef GPUCONV_EMULATE_RACE
        shared_access_by(lane, address, size, false, 0);
#elif defined(GPUCONV_EMULATE_PROFILE)
        lane_accesses[size_t(lane.linear)].push_back(
            LaneAccess{lane.op.pc, reinterpret_cast<uintptr_t>(address), uint32_t(size), barrier_epoch,
                       kShared, kLoad});
#else
        (void)lane, (void)address, (void)size;
#endif
    }

    // ---- cp.async ------------------------------------------------------------------------------
    // A copy starts: its destination turns to NaN bytes (on a GPU it holds stale or partial data
    // until the wait), and the race detector sees a write there now, as the hardware may write any
    // time before the wait; the profile counts the global read and the shared write here, at the
    // instruction. The bytes move when a wait covers the copy's group (land_async_copies).
    void async_copy(char* dst, const char* src, int bytes, int src_bytes, const char* file, int line,
                    uintptr_t pc) {
        Thread* t = current();
        if (shared_offset(dst) == SIZE_MAX || shared_offset(dst + bytes - 1) == SIZE_MAX) {
            fail(kAddress, "%s: %s: cp.async at %s:%d writes %d bytes at %p, which are not all in "
                 "shared memory", where().c_str(), thread_name(*t).c_str(), file, line, bytes,
                 static_cast<void*>(dst));
        }
        if (reinterpret_cast<uintptr_t>(dst) % uintptr_t(bytes) != 0 ||
            (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % uintptr_t(bytes) != 0)) {
            fail(kAddress, "%s: %s: cp.async at %s:%d copies %d bytes from %p to %p; both addresses "
                 "must be %d-byte aligned", where().c_str(), thread_name(*t).c_str(), file, line,
                 bytes, static_cast<const void*>(src), static_cast<void*>(dst), bytes);
        }
        fill_bytes(dst, dst + bytes, 0xff);  // NaN in every float type
#ifdef GPUCONV_EMULATE_RACE
        shared_access_by(*t, dst, size_t(bytes), true, pc);
#elif defined(GPUCONV_EMULATE_PROFILE)
        // A zero-fill reads nothing: its global side is a 0-byte marker, so that the lane's k-th
        // execution of the instruction stays its k-th global request too.
        auto& accesses = lane_accesses[size_t(t->linear)];
        accesses.push_back(LaneAccess{pc, reinterpret_cast<uintptr_t>(src), uint32_t(src_bytes > 0 ? bytes : 0),
                                      barrier_epoch, kGlobal, kCpAsync});
        accesses.push_back(LaneAccess{pc, reinterpret_cast<uintptr_t>(dst), uint32_t(bytes), barrier_epoch,
                                      kShared, kCpAsync});
#endif
        t->async_copies.push_back(
            AsyncCopy{dst, src, uint32_t(bytes), uint32_t(src_bytes), t->committed_groups, pc});
    }

    // cp.async.wait_group n: every copy of the committed groups but the n newest lands, in issue
    // order, as this thread's write to shared memory now (read of global memory: under asan the
    // memcpy is checked).
    void land_async_copies(int newest_in_flight) {
        Thread* t = current();
        auto in_flight = t->async_copies.begin();
        for (const AsyncCopy& c : t->async_copies) {
            if (c.group + uint32_t(newest_in_flight) >= t->committed_groups) {
                *in_flight++ = c;
                continue;
            }
            std::memcpy(c.dst, c.src, c.src_bytes);
            std::memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
#ifdef GPUCONV_EMULATE_RACE
            shared_access_by(*t, c.dst, c.bytes, true, c.pc);
#endif
        }
        t->async_copies.erase(in_flight, t->async_copies.end());
    }

    // The source lane of shfl.sync, from the PTX ISA pseudocode (c = segment mask << 8 | clamp).
    static int shuffle_source(const WarpOp& op, int lane) {
        int segment_mask = (op.c >> 8) & 31, clamp = op.c & 31, b = op.b & 31;
        int max_lane = (lane & segment_mask) | (clamp & ~segment_mask);
        int min_lane = lane & segment_mask;
        int j = lane;
        bool in_range = false;
        switch (op.mode) {
            case kShflUp: j = lane - b; in_range = j >= max_lane; break;
            case kShflDown: j = lane + b; in_range = j <= max_lane; break;
            case kShflXor: j = lane ^ b; in_range = j <= max_lane; break;
            case kShflIdx: j = min_lane | (b & ~segment_mask); in_range = j <= max_lane; break;
        }
        return in_range ? j : lane;
    }

    // t_index points at the running thread's index, the first member of its Thread.
    Thread* current() const { return const_cast<Thread*>(reinterpret_cast<const Thread*>(t_index)); }

    // ---- blocks --------------------------------------------------------------------------------
    void fill_shared() {
        for (const SharedRange& r : statics) fill_bytes(r.begin, r.end, config.fill_byte);
        fill_bytes(dynamic_begin, dynamic_begin + config.dynamic_shared_bytes, config.fill_byte);
    }

    // Not memset, and not instrumented: under ASan the static section holds poisoned redzones
    // between the variables, and their contents do not matter.
    __attribute__((no_sanitize_address)) static void fill_bytes(char* begin, char* end, int byte) {
        uint64_t pattern;
        std::memset(&pattern, byte, sizeof pattern);
        auto* p = reinterpret_cast<volatile char*>(begin);
        for (; p < end && reinterpret_cast<uintptr_t>(p) % 8; ++p) *p = char(byte);
        for (; p + 8 <= end; p += 8) *reinterpret_cast<volatile uint64_t*>(p) = pattern;
        for (; p < end; ++p) *p = char(byte);
    }

    void run_block(uint3 block) {
        block_idx = block;
        const dim3 block_dim(config.block[0], config.block[1], config.block[2]);
        const dim3 grid_dim(config.grid[0], config.grid[1], config.grid[2]);
        for (int i = 0; i < thread_count; ++i) {
            Thread& t = threads[size_t(i)];
            unsigned x = unsigned(i) % block_dim.x, y = unsigned(i) / block_dim.x % block_dim.y,
                     z = unsigned(i) / (block_dim.x * block_dim.y);
            t = Thread{};
            t.index = ThreadIndex{uint3{x, y, z}, block, block_dim, grid_dim};
            t.linear = i;
            t.state = State::kUnstarted;
        }
        for (size_t w = 0; w < warps.size(); ++w) {
            int lanes = std::min(32, thread_count - int(w) * 32);
            warps[w] = Warp{0, lanes == 32 ? 0u : ~0u << lanes, 0};
        }
        arrived = exited = 0;
        ++barrier_epoch;  // accesses of the previous block never race with this one
        reorder();
        next_unstarted = 0;
        fill_shared();
        Context* next = pick_next();
        if (next != &main) transfer(next);
        // Back on run_grid's stack: done, failed, or nothing runnable while threads wait.
        if (status == kOk && exited < thread_count) report_deadlock();
#ifdef GPUCONV_EMULATE_PROFILE
        if (status == kOk) profile_block();
#endif
        progress.fetch_add(1, std::memory_order_relaxed);
    }

    void report_deadlock() {
        std::string text = "deadlock in " + where() + ": no thread can run.";
        std::vector<int> barrier, exited_ids;
        for (const Thread& t : threads) {
            if (t.state == State::kAtBarrier) barrier.push_back(t.linear);
            if (t.state == State::kExited) exited_ids.push_back(t.linear);
        }
        if (!barrier.empty()) {
            text += " Threads " + ranges(barrier) + " wait at __syncthreads (" + first_arrival->file +
                    ":" + std::to_string(first_arrival->line) + ").";
        }
        for (size_t w = 0; w < warps.size(); ++w) {
            std::vector<int> waiting;
            const Thread* example = nullptr;
            for (unsigned m = warps[w].waiting; m; m &= m - 1) {
                example = &threads[w * 32 + size_t(__builtin_ctz(m))];
                waiting.push_back(example->linear);
            }
            if (!example) continue;
            text += " Threads " + ranges(waiting) + " wait in " + op_name(example->op) + " (" +
                    example->file + ":" + std::to_string(example->line) + ") for lanes of mask 0x";
            char mask[16];
            std::snprintf(mask, sizeof mask, "%08x", example->op.mask);
            text += std::string(mask) + ".";
        }
        if (!exited_ids.empty()) text += " Threads " + ranges(exited_ids) + " have exited.";
        text += " (Linear thread index = x + y*blockDim.x + z*blockDim.x*blockDim.y.)";
        status = kDeadlock;
        report = text;
    }

#ifdef GPUCONV_EMULATE_RACE
    // ---- race detector -----------------------------------------------------------------------
    // A hazard is two accesses to one shared byte from different threads in one barrier interval,
    // at least one a write (compute-sanitizer racecheck's definition). Lanes of one warp are also
    // ordered by a completed warp rendezvous (__syncwarp, shuffles, votes).
    bool concurrent(const Access& previous, const Thread& t) const {
        if (previous.thread < 0 || previous.thread == t.linear || previous.epoch != barrier_epoch) {
            return false;
        }
        return !((previous.thread >> 5) == (t.linear >> 5) &&
                 previous.warp_epoch != warps[size_t(t.linear >> 5)].epoch);
    }

    void shared_access(const void* address, size_t size, bool write, uintptr_t pc) {
        shared_access_by(*current(), address, size, write, pc);
    }

    void shared_access_by(const Thread& t, const void* address, size_t size, bool write, uintptr_t pc) {
        const size_t offset = shared_offset(static_cast<const char*>(address));
        if (offset == SIZE_MAX) return;
        const Access now{t.linear, barrier_epoch, warps[size_t(t.linear >> 5)].epoch, pc};
        for (size_t i = 0; i < size && offset + i < shadow.size(); ++i) {
            ByteShadow& s = shadow[offset + i];
            if (concurrent(s.write, t)) report_race(write ? "write-after-write" : "read-after-write", now, s.write, write, offset, size);
            if (write) {
                if (concurrent(s.read, t)) report_race("write-after-read", now, s.read, true, offset, size);
                if (concurrent(s.other_read, t)) report_race("write-after-read", now, s.other_read, true, offset, size);
                s.write = now;
            } else if (s.read.thread == t.linear || !concurrent(s.read, t)) {
                s.read = now;
            } else {
                s.other_read = now;
            }
        }
    }

    // Addresses are reported as "[pc:0x...]" offsets into the module; Python turns them into
    // file:line with addr2line, and "static shared memory offset N" into the variable's name.
    [[noreturn]] void report_race(const char* hazard, const Access& now, const Access& previous,
                                  bool write, size_t offset, size_t size) {
        char location[96];
        if (offset < static_size) {
            std::snprintf(location, sizeof location, "static shared memory offset %zu", offset);
        } else {
            std::snprintf(location, sizeof location, "dynamic shared memory offset %zu",
                          offset - static_size);
        }
        bool previous_wrote = std::strcmp(hazard, "write-after-read") != 0;
        fail(kRace,
             "shared-memory race (%s hazard) in %s: %s %s %zu bytes at %s [pc:%#lx], which %s %s "
             "[pc:%#lx] in the same barrier interval (no barrier orders the two accesses)",
             hazard, where().c_str(), thread_name(threads[size_t(now.thread)]).c_str(),
             write ? "writes" : "reads", size, location, module_offset(now.pc),
             thread_name(threads[size_t(previous.thread)]).c_str(),
             previous_wrote ? "wrote" : "read", module_offset(previous.pc));
    }

    static unsigned long module_offset(uintptr_t pc) {
        Dl_info info{};
        dladdr(reinterpret_cast<void*>(&module_offset), &info);
        return static_cast<unsigned long>(pc - reinterpret_cast<uintptr_t>(info.dli_fbase));
    }
#endif
#ifdef GPUCONV_EMULATE_PROFILE
    // ---- profile -----------------------------------------------------------------------------
    void profile_access(const void* address, size_t size, Kind kind, uintptr_t pc) {
        auto a = reinterpret_cast<uintptr_t>(address);
        Space space;
        if (shared_offset(static_cast<const char*>(address)) != SIZE_MAX) {
            space = kShared;
        } else {
            bool global = false;
            for (uint64_t i = 0; i < config.global_range_count && !global; ++i) {
                global = a >= config.global_ranges[2 * i] && a < config.global_ranges[2 * i + 1];
            }
            if (!global) return;  // the stack or the parameters: registers on a GPU
            space = kGlobal;
        }
        lane_accesses[size_t(current()->linear)].push_back(
            LaneAccess{pc, a, uint32_t(size), barrier_epoch, space, kind});
    }

    // A warp-level request is the k-th execution of one static access in one barrier interval by
    // the lanes of one warp (lanes that skip it, or exited, are inactive in it). On a GPU a request
    // is one execution of one instruction by the warp's active lanes; here an instruction is a pc
    // of the g++ build, where profile builds unroll `#pragma unroll` loops as nvcc does (_build.py),
    // so that each element of an unrolled loop is its own pc. Keying on the barrier epoch too keeps
    // a lane that skips an execution (a predicated load) from shifting its pairing past the next
    // __syncthreads. What stays approximate: within one barrier interval, a lane that skips the
    // j-th trip of a loop that stays a loop (`#pragma unroll 1`, a trip count known only at run
    // time, a loop nvcc unrolls without a pragma) pairs its later trips with the others' earlier
    // ones; the kernels' such loops (store_run) let every lane take part in every trip.
    // Counted at the end of each block.
    void profile_block() {
        Dl_info info{};
        dladdr(reinterpret_cast<void*>(&module_base_marker), &info);
        const auto base = reinterpret_cast<uintptr_t>(info.dli_fbase);
        struct Request {
            const LaneAccess* first;
            std::vector<std::pair<int, const LaneAccess*>> lanes;  // (lane, its access)
        };
        // (pc, space, epoch): a cp.async is one instruction with a global and a shared side
        typedef std::tuple<uintptr_t, Space, uint32_t> Instruction;
        for (int w0 = 0; w0 < thread_count; w0 += 32) {
            std::vector<Request> requests;
            std::map<std::pair<Instruction, uint32_t>, size_t> index;  // (instruction, k) -> request
            for (int lane = 0; lane < 32 && w0 + lane < thread_count; ++lane) {
                std::map<Instruction, uint32_t> executions;
                for (const LaneAccess& access : lane_accesses[size_t(w0 + lane)]) {
                    const Instruction instruction{access.pc, access.space, access.epoch};
                    const auto key = std::make_pair(instruction, executions[instruction]++);
                    if (access.size == 0) continue;  // a cp.async zero-fill's global side
                    auto found = index.emplace(key, requests.size());
                    if (found.second) requests.push_back(Request{&access, {}});
                    requests[found.first->second].lanes.emplace_back(lane, &access);
                }
            }
            for (const Request& r : requests) {
                ProfileCounts& c = g_profile[ProfileKey{r.first->pc - base, r.first->size,
                                                        r.first->space, r.first->kind}];
                c.requests += 1;
                c.lanes += r.lanes.size();
                if (r.first->space == kShared) {
                    c.wavefronts += wavefronts(r.lanes);
                    // The bytes need 128 a wavefront, and every phase with an active lane takes one.
                    c.ideal += std::max<uint64_t>((distinct_bytes(r.lanes, 4) + 127) / 128,
                                                  active_phases(r.lanes));
                } else {
                    c.sectors += distinct_bytes(r.lanes, 32) / 32;
                    c.ideal += (distinct_bytes(r.lanes, 1) + 31) / 32;
                }
            }
        }
        for (auto& accesses : lane_accesses) accesses.clear();
    }

    // Bytes covered by the lanes' accesses, counted in aligned units of `unit` bytes: unit 32 gives
    // 32 × the sectors touched, unit 4 four times the distinct words, unit 1 the distinct bytes.
    static size_t distinct_bytes(const std::vector<std::pair<int, const LaneAccess*>>& lanes,
                                 uintptr_t unit) {
        std::vector<uintptr_t> units;
        for (const auto& lane : lanes) {
            uintptr_t a = lane.second->address, end = a + lane.second->size;
            for (uintptr_t u = a / unit; u <= (end - 1) / unit; ++u) units.push_back(u);
        }
        std::sort(units.begin(), units.end());
        return size_t(std::unique(units.begin(), units.end()) - units.begin()) * unit;
    }

    static int lanes_per_phase(uint32_t size) { return size <= 4 ? 32 : int(128 / size); }

    static uint64_t active_phases(const std::vector<std::pair<int, const LaneAccess*>>& lanes) {
        const int per_phase = lanes_per_phase(lanes.front().second->size);
        uint32_t phases = 0;
        for (const auto& lane : lanes) phases |= 1u << (lane.first / per_phase);
        return uint64_t(__builtin_popcount(phases));
    }

    // Shared memory serves a request in phases of 128 bytes of lanes (32 lanes of 4-byte accesses,
    // 16 of 8-byte, 8 of 16-byte, by lane index); a phase takes as many wavefronts as the most
    // distinct 4-byte words its lanes touch in any one of the 32 banks (a word read by several lanes
    // is read once; atomics on one word serialise, so for them every lane counts).
    static uint64_t wavefronts(const std::vector<std::pair<int, const LaneAccess*>>& lanes) {
        const bool atomic = lanes.front().second->kind == kAtomic;
        const int per_phase = lanes_per_phase(lanes.front().second->size);
        uint64_t total = 0;
        for (int phase = 0; phase * per_phase < 32; ++phase) {
            std::vector<uintptr_t> words[32];
            for (const auto& lane : lanes) {
                if (lane.first / per_phase != phase) continue;
                uintptr_t a = lane.second->address, end = a + lane.second->size;
                for (uintptr_t word = a / 4; word <= (end - 1) / 4; ++word) words[word % 32].push_back(word);
            }
            size_t worst = 0;
            for (auto& bank : words) {
                std::sort(bank.begin(), bank.end());
                const auto distinct = atomic ? bank.end() : std::unique(bank.begin(), bank.end());
                worst = std::max(worst, size_t(distinct - bank.begin()));
            }
            total += worst;
        }
        return total;
    }

#endif
};

std::mutex g_launch_mutex;  // one launch at a time per module: shared memory is per module
alignas(256) char g_dynamic_shared[227 * 1024];  // the largest opt-in dynamic size (sm_90)

// ===== watchdog =================================================================================
void on_watchdog_signal(int) {
    Launch* launch = t_launch;
    if (!launch || launch->running == &launch->main) return;
    const Thread* t = launch->current();
    launch->fail(kDeadlock,
                 "watchdog: %s made no progress for %.1f s; %s was running and never reached a "
                 "barrier or exit. A spin-wait on a flag that another block (blocks run one after "
                 "another here) or another thread must set deadlocks under cooperative scheduling.",
                 launch->where().c_str(), launch->config.watchdog_seconds,
                 launch->thread_name(*t).c_str());
}

class Watchdog {
public:
    Watchdog(Launch& launch) : launch_(launch), runner_(pthread_self()) {
        static std::once_flag installed;
        std::call_once(installed, [] {
            struct sigaction action {};
            action.sa_handler = on_watchdog_signal;
            action.sa_flags = SA_NODEFER;  // the handler switches away and never returns
            sigaction(kWatchdogSignal, &action, nullptr);
        });
        thread_ = std::thread([this] { watch(); });
    }
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        wake_.notify_one();
        thread_.join();
    }

private:
    void watch() {
        using clock = std::chrono::steady_clock;
        const auto limit = std::chrono::duration<double>(launch_.config.watchdog_seconds);
        uint64_t seen = launch_.progress.load();
        auto since = clock::now();
        std::unique_lock<std::mutex> lock(mutex_);
        while (!wake_.wait_for(lock, std::chrono::milliseconds(20), [this] { return done_; })) {
            uint64_t now_progress = launch_.progress.load();
            if (now_progress != seen) {
                seen = now_progress;
                since = clock::now();
            } else if (clock::now() - since > limit) {
                pthread_kill(runner_, kWatchdogSignal);
                since = clock::now();  // fire again later if the runner was between blocks
            }
        }
    }

    Launch& launch_;
    pthread_t runner_;
    std::thread thread_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool done_ = false;
};

void main_stack_bounds(void** bottom, size_t* size) {
    pthread_attr_t attr;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, bottom, size);
    pthread_attr_destroy(&attr);
}

}  // namespace

// ===== the interface used by kernels ===========================================================
const ThreadIndex* current_thread() { return t_index; }
void* dynamic_shared() { return g_dynamic_shared; }

int syncthreads(BarrierReduce reduce, int predicate, const char* file, int line) {
    __asm__ __volatile__("" ::: "memory");
    return t_launch->syncthreads(reduce, predicate, file, line);
}

void syncwarp(unsigned mask, const char* file, int line) {
    t_launch->warp_op(WarpOp{WarpOpKind::kSync, kShflIdx, mask, 0, 0, 0, 0}, file, line);
}

uint64_t warp_shuffle(unsigned mask, uint64_t value, ShuffleMode mode, int lane_or_delta, int width,
                      const char* file, int line) {
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        t_launch->fail(kWarpError, "%s: %s at %s:%d with width %d (must be a power of 2 up to 32)",
                       t_launch->where().c_str(), mode == kShflIdx ? "__shfl_sync" : "a shuffle", file,
                       line, width);
    }
    // The c operand CUDA's intrinsics pass to shfl.sync: segment mask, and the clamp lane.
    int c = ((32 - width) << 8) | (mode == kShflUp ? 0 : 31);
    return t_launch->warp_op(WarpOp{WarpOpKind::kShuffle, mode, mask, lane_or_delta, c, value, 0},
                             file, line);
}

unsigned warp_ballot(unsigned mask, int predicate, const char* file, int line) {
    return unsigned(t_launch->warp_op(
        WarpOp{WarpOpKind::kBallot, kShflIdx, mask, 0, 0, uint64_t(predicate != 0), 0}, file, line));
}

void profile_atomic(const void* address, size_t size, void* pc) {
#ifdef GPUCONV_EMULATE_PROFILE
    if (t_launch && t_index) t_launch->profile_access(address, size, kAtomic, reinterpret_cast<uintptr_t>(pc));
#else
    (void)address, (void)size, (void)pc;
#endif
}

void warp_mma(MmaKind kind, const uint32_t a[4], const uint32_t b[2], const float c[4], float d[4],
              const char* file, int line) {
    MmaOperands operands;
    std::memcpy(operands.a, a, sizeof operands.a);
    std::memcpy(operands.b, b, sizeof operands.b);
    std::memcpy(operands.c, c, sizeof operands.c);
    float result[4];
    WarpOp op{WarpOpKind::kMma, kShflIdx, 0xffffffffu, int(kind), 0, 0, 0};
    op.in = &operands;
    op.out = result;
    t_launch->warp_op(op, file, line);
    std::memcpy(d, result, sizeof result);
}

void warp_ldmatrix(int matrices, bool trans, const void* row, uint32_t out[4], const char* file,
                   int line) {
    uint32_t result[4] = {};
    WarpOp op{WarpOpKind::kLdmatrix, kShflIdx, 0xffffffffu, matrices, trans, 0, 0};
    op.in = row;
    op.out = result;
    op.pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    t_launch->warp_op(op, file, line);
    std::memcpy(out, result, sizeof(uint32_t) * size_t(matrices));
}

void async_copy(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
    t_launch->async_copy(static_cast<char*>(dst), static_cast<const char*>(src), bytes, src_bytes,
                         file, line, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
}

void async_copy_commit() { ++t_launch->current()->committed_groups; }

void async_copy_wait(int newest_in_flight) { t_launch->land_async_copies(newest_in_flight); }

// ---- conversions to the tensor cores' input types (kernels/mma.cuh's emulation path) -----------
float bits_to_float(uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

static uint32_t float_bits(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    return bits;
}

// IEEE binary16, round to nearest even (cvt.rn.f16.f32): subnormal halves kept, overflow to inf,
// NaN stays NaN.
uint16_t float_to_half(float v) {
    const uint32_t x = float_bits(v), sign = (x >> 16) & 0x8000u;
    const uint32_t magnitude = x & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return uint16_t(sign | 0x7e00u);          // NaN
    if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);         // rounds past 65504: inf
    if (magnitude < 0x38800000u) {                                          // below 2^-14: subnormal
        // Scale so the half's unit (2^-24) is 1.0, then round to nearest even as float does.
        const float scaled = bits_to_float(magnitude) * 16777216.0f;
        return uint16_t(sign | uint32_t(std::nearbyint(scaled)));
    }
    // Normal: drop 13 mantissa bits with round to nearest even, rebias the exponent (127 -> 15).
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {
        const float v = float(mantissa) * 5.9604644775390625e-8f;  // subnormal: mantissa × 2^-24
        return sign ? -v : v;
    }
    if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
    return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// bfloat16: the top 16 bits of the float, rounded to nearest even (cvt.rn.bf16.f32); NaN kept quiet.
uint16_t float_to_bfloat16(float v) {
    const uint32_t x = float_bits(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// TF32 as cvt.rna.tf32.f32: 10 mantissa bits, round to nearest with ties away from zero; the
// result is a float whose low 13 bits are zero. Inf and NaN pass.
uint32_t float_to_tf32(float v) {
    const uint32_t x = float_bits(v);
    if ((x & 0x7f800000u) == 0x7f800000u) return x;
    return (x + 0x1000u) & 0xffffe000u;
}

unsigned active_mask() {
    const Launch* launch = t_launch;
    return ~launch->warps[size_t(launch->current()->linear >> 5)].exited;
}

int run_grid(const LaunchConfig* config, ThreadBody body, void* closure, char* error,
             size_t error_size) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    const LaunchConfig& c = *config;
    long threads = long(c.block[0]) * c.block[1] * c.block[2];
    if (threads < 1 || threads > 1024 || c.grid[0] < 1 || c.grid[1] < 1 || c.grid[2] < 1 ||
        c.dynamic_shared_bytes > sizeof g_dynamic_shared) {
        std::snprintf(error, error_size,
                      "kernel '%s': invalid launch: grid (%u,%u,%u), block (%u,%u,%u), %llu bytes of "
                      "dynamic shared memory (limits: 1-1024 threads, at most %zu bytes)",
                      c.kernel_name, c.grid[0], c.grid[1], c.grid[2], c.block[0], c.block[1],
                      c.block[2], (unsigned long long)c.dynamic_shared_bytes, sizeof g_dynamic_shared);
        return kLaunchError;
    }
#ifdef __SANITIZE_ADDRESS__
    // Bytes past the launch's dynamic size are out of bounds, as on the GPU.
    ASAN_UNPOISON_MEMORY_REGION(g_dynamic_shared, c.dynamic_shared_bytes);
    ASAN_POISON_MEMORY_REGION(g_dynamic_shared + c.dynamic_shared_bytes,
                              sizeof g_dynamic_shared - c.dynamic_shared_bytes);
#endif
    Launch launch(c, body, closure, g_dynamic_shared);
    launch.thread_count = int(threads);
    launch.threads.resize(size_t(threads));
    launch.warps.resize(size_t((threads + 31) / 32));
    launch.order.resize(size_t(threads));
    main_stack_bounds(&launch.main_stack_bottom, &launch.main_stack_size);
#ifdef GPUCONV_EMULATE_RACE
    launch.shadow.resize(launch.static_size + c.dynamic_shared_bytes);
#endif
#ifdef GPUCONV_EMULATE_PROFILE
    launch.lane_accesses.resize(size_t(threads));
#endif
    Launch* outer = t_launch;
    t_launch = &launch;
    {
        Watchdog watchdog(launch);
        for (unsigned z = 0; z < c.grid[2] && launch.status == kOk; ++z)
            for (unsigned y = 0; y < c.grid[1] && launch.status == kOk; ++y)
                for (unsigned x = 0; x < c.grid[0] && launch.status == kOk; ++x)
                    launch.run_block(uint3{x, y, z});
    }
    t_launch = outer;
    t_index = nullptr;
    g_switches.fetch_add(launch.switches, std::memory_order_relaxed);
    if (launch.status != kOk) std::snprintf(error, error_size, "%s", launch.report.c_str());
    return launch.status;
}

}  // namespace gpuconv_emu

GPUCONV_EXPORT unsigned long long gpuconv_switch_count() { return gpuconv_emu::g_switches.load(); }

#if defined(GPUCONV_EMULATE_RACE) || defined(GPUCONV_EMULATE_PROFILE)
// ===== the hooks of -fsanitize=thread, without libtsan ============================================
// Every memory access of the kernel calls one of these (race mode tracks shared memory, profile
// mode shared and global memory). The pc is the instruction after the access, inside the kernel.
namespace {
void track(const void* address, size_t size, bool write, void* pc) {
    if (gpuconv_emu::t_launch && gpuconv_emu::t_index) {
#ifdef GPUCONV_EMULATE_RACE
        gpuconv_emu::t_launch->shared_access(address, size, write, reinterpret_cast<uintptr_t>(pc));
#else
        gpuconv_emu::t_launch->profile_access(address, size, write ? gpuconv_emu::kStore : gpuconv_emu::kLoad,
                                              reinterpret_cast<uintptr_t>(pc));
#endif
    }
}
}  // namespace

#define GPUCONV_EMU_TSAN_HOOKS(n)                                                                                       \
    extern "C" void __tsan_read##n(void* p) { track(p, n, false, __builtin_return_address(0)); }                        \
    extern "C" void __tsan_write##n(void* p) { track(p, n, true, __builtin_return_address(0)); }                        \
    extern "C" void __tsan_unaligned_read##n(void* p) { track(p, n, false, __builtin_return_address(0)); }              \
    extern "C" void __tsan_unaligned_write##n(void* p) { track(p, n, true, __builtin_return_address(0)); }
GPUCONV_EMU_TSAN_HOOKS(1)
GPUCONV_EMU_TSAN_HOOKS(2)
GPUCONV_EMU_TSAN_HOOKS(4)
GPUCONV_EMU_TSAN_HOOKS(8)
GPUCONV_EMU_TSAN_HOOKS(16)
#undef GPUCONV_EMU_TSAN_HOOKS
extern "C" void __tsan_read_range(void* p, unsigned long size) { track(p, size, false, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void* p, unsigned long size) { track(p, size, true, __builtin_return_address(0)); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void*, void*) {}
extern "C" void __tsan_vptr_read(void*) {}
#endif

#ifdef GPUCONV_EMULATE_PROFILE
// ===== the profile's counters, read by gpuconv.emulate.Module.counters() =========================
struct GpuconvProfileRow {  // mirrored by gpuconv/emulate/_launch.py (ctypes)
    uint64_t pc, bytes, space, kind, requests, lanes, sectors, wavefronts, ideal;
};
GPUCONV_EXPORT unsigned long gpuconv_profile_rows(GpuconvProfileRow* rows, unsigned long capacity) {
    std::lock_guard<std::mutex> lock(gpuconv_emu::g_launch_mutex);
    unsigned long n = 0;
    for (const auto& entry : gpuconv_emu::g_profile) {
        if (n < capacity) {
            const auto& k = entry.first;
            const auto& c = entry.second;
            rows[n] = GpuconvProfileRow{k.pc, k.bytes, k.space, k.kind, c.requests, c.lanes,
                                        c.sectors, c.wavefronts, c.ideal};
        }
        ++n;
    }
    return n;
}
GPUCONV_EXPORT void gpuconv_profile_reset() {
    std::lock_guard<std::mutex> lock(gpuconv_emu::g_launch_mutex);
    gpuconv_emu::g_profile.clear();
}
#endif
