// CUDA's execution model on the CPU, so that our kernels' own source runs in CI, where there is
// no GPU, against their CPU references.
//
// The emulated NVRTC (cuda_on_cpu.cpp) compiles a kernel file as C++ with this header first.
// A launch runs its blocks one after another; a block's threads are fibers on the launching
// thread, each running until it reaches a barrier (__syncthreads, __syncwarp, a shuffle) or
// returns. A barrier opens when every thread it waits for has reached it; the threads then run
// on in a seeded shuffled order, so that a kernel missing a barrier reads what its neighbours
// have not written yet and fails its test. What the emulation reports as a launch failure:
//   - barriers that can never open (threads of a warp at different barriers);
//   - a full-mask shuffle or __syncwarp in a warp some of whose lanes have returned (undefined
//     on a GPU);
//   - launch sizes a GPU refuses: a block over 1024 threads or over the kernel's
//     __launch_bounds__, grid y or z over 65535, dynamic shared memory over 48 KiB.
// Device memory is host memory whose end touches an inaccessible page (see cuda_on_cpu.cpp), so
// a read or write past a buffer's end stops the test.
//
// What it does not show: speed, the memory model of concurrent blocks (blocks run in turn),
// and floating-point differences of the GPU's own instructions (expf here is the C library's).

#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// Kernels test this to use the emulator's stand-ins for inline PTX (mma_bf16_16x8x16).
#define CUDA_ON_CPU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Static shared arrays are one per kernel and shared by the fibers of the block that runs.
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// The same bits as another type of the same size.
template <typename To, typename From>
__forceinline__ To bits_as(From from) {
    static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
    To to;
    memcpy(&to, &from, sizeof to);
    return to;
}
__forceinline__ float __int_as_float(int bits) { return bits_as<float>(bits); }
__forceinline__ float __uint_as_float(unsigned bits) { return bits_as<float>(bits); }
__forceinline__ int __float_as_int(float value) { return bits_as<int>(value); }
__forceinline__ unsigned __float_as_uint(float value) { return bits_as<unsigned>(value); }
__forceinline__ int min(int a, int b) { return a < b ? a : b; }
__forceinline__ int max(int a, int b) { return a > b ? a : b; }
__forceinline__ unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
__forceinline__ unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

namespace cuda_on_cpu {

constexpr unsigned WARP = 32;
constexpr size_t STACK_BYTES = 64 * 1024;
constexpr unsigned MAX_BLOCK_THREADS = 1024;
constexpr unsigned MAX_GRID_YZ = 65535;
constexpr unsigned MAX_DYNAMIC_SHARED = 48 * 1024;
// The most a lane gives to a warp exchange: an mma's six registers of A and B.
constexpr size_t EXCHANGE_BYTES = 24;

enum class Wait { None, Warp, Block, Done };

// Switching between a block's fibers. glibc's swapcontext makes a system call per switch (it
// saves the signal mask), and a warp shuffle switches 64 times, so on x86-64 a switch is a few
// instructions of our own: the callee-saved registers and the floating-point control words on
// the old stack, then the new stack.
#if defined(__x86_64__)
extern "C" void cuda_on_cpu_switch(void** save_stack, void* load_stack);
asm(R"(
    .text
    .globl cuda_on_cpu_switch
    .hidden cuda_on_cpu_switch
    .type cuda_on_cpu_switch, @function
cuda_on_cpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_on_cpu_switch, .-cuda_on_cpu_switch
)");

struct Context {
    void* stack = nullptr;
};

// A context that starts `entry` (which never returns) on `stack`: its first switch pops zeroed
// registers and default control words, then returns into `entry` with the stack aligned as a
// call would leave it.
inline void make_context(Context& context, char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    uint64_t* slot = reinterpret_cast<uint64_t*>(top - 16);
    *slot = (uint64_t)(uintptr_t)entry;
    for (int i = 1; i <= 6; ++i) slot[-i] = 0;
    const uint32_t control[2] = {0x1f80u, 0x037fu};  // MXCSR and the x87 control word at reset
    memcpy(&slot[-7], control, 8);
    context.stack = &slot[-7];
}

inline void switch_context(Context& from, Context& to) { cuda_on_cpu_switch(&from.stack, to.stack); }
#else
struct Context {
    ucontext_t context;
};

inline void make_context(Context& context, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&context.context);
    context.context.uc_stack.ss_sp = stack;
    context.context.uc_stack.ss_size = bytes;
    context.context.uc_link = nullptr;
    makecontext(&context.context, entry, 0);
}

inline void switch_context(Context& from, Context& to) { swapcontext(&from.context, &to.context); }
#endif

struct Fiber {
    Context context;
    char* stack;
    Wait wait;
    unsigned exchanges;  // warp exchanges this thread has made: picks the exchange's half
};

// One launch's state while its blocks run (the launching OS thread's).
struct Launch {
    dim3 grid, block;
    unsigned threads = 0, warps = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned> warp_live;  // lanes of each warp not yet returned
    // What the lanes of a warp exchange (a shuffle's value, an mma's fragments), EXCHANGE_BYTES
    // a lane: [warps][2][WARP]. Two halves, so an exchange needs one barrier: a lane writes half
    // (n % 2) of its n-th exchange, and cannot reach exchange n + 2 before every lane has read
    // exchange n.
    std::vector<unsigned char> exchange;
    std::vector<unsigned char> dynamic_shared;
    std::vector<unsigned> order;
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    unsigned current = 0;
    Context scheduler;
    void (*body)(void*) = nullptr;
    void* body_data = nullptr;
    std::string error;
};

inline thread_local Launch* running = nullptr;

// Stops the launch with `message`: the fiber is abandoned (kernels hold no resources).
[[noreturn]] inline void fail(const std::string& message) {
    Launch& launch = *running;
    if (launch.error.empty()) {
        char where[128];
        snprintf(where, sizeof where, " (block %u,%u,%u thread %u)", blockIdx.x, blockIdx.y,
                 blockIdx.z, launch.current);
        launch.error = message + where;
    }
    switch_context(launch.fibers[launch.current].context, launch.scheduler);
    __builtin_unreachable();
}

inline void wait_at(Wait wait) {
    Launch& launch = *running;
    launch.fibers[launch.current].wait = wait;
    switch_context(launch.fibers[launch.current].context, launch.scheduler);
}

inline void check_whole_warp(const char* what) {
    Launch& launch = *running;
    const unsigned warp = launch.current / WARP;
    const unsigned lanes = std::min(WARP, launch.threads - warp * WARP);
    if (launch.warp_live[warp] != lanes) {
        fail(std::string(what) + " with a full mask after lanes of warp " +
             std::to_string(warp) + " returned");
    }
}

inline void sync_warp() {
    check_whole_warp("__syncwarp");
    wait_at(Wait::Warp);
}

// Every lane of the warp gives `bytes` (at most EXCHANGE_BYTES) and sees every lane's, lane l's
// at l * EXCHANGE_BYTES of the result, after one warp barrier. `what` names the instruction in
// the error when lanes of the warp have returned (undefined on a GPU with a full mask).
inline const unsigned char* warp_exchange(const void* mine, size_t bytes, const char* what) {
    check_whole_warp(what);
    Launch& launch = *running;
    Fiber& fiber = launch.fibers[launch.current];
    const unsigned warp = launch.current / WARP, lane = launch.current % WARP;
    unsigned char* half =
        &launch.exchange[(warp * 2 + fiber.exchanges % 2) * WARP * EXCHANGE_BYTES];
    ++fiber.exchanges;
    memcpy(half + lane * EXCHANGE_BYTES, mine, bytes);
    wait_at(Wait::Warp);
    return half;
}

template <typename T>
T shuffle_xor(T value, int lane_mask) {
    static_assert(sizeof(T) <= EXCHANGE_BYTES, "a shuffle moves a lane's value");
    const unsigned char* lanes = warp_exchange(&value, sizeof(T), "__shfl_xor_sync");
    Launch& launch = *running;
    const unsigned warp = launch.current / WARP, lane = launch.current % WARP;
    const unsigned source = lane ^ (unsigned)lane_mask;
    // A source lane outside the warp (a partial last warp) gives the caller's own value.
    if (warp * WARP + source >= launch.threads) return value;
    T result;
    memcpy(&result, lanes + source * EXCHANGE_BYTES, sizeof(T));
    return result;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 as a warp executes it: every lane
// gives its fragments (a: 4 registers of 2 bf16 of A [16 x 16], row-major; b: 2 registers of
// B [16 x 8] by columns; c: 4 floats of C [16 x 8]) and gets its 4 floats of D = A B + C. The
// layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4: a[r] holds A[g + 8 (r % 2)][2t + 8 (r / 2) + {0, 1}], b[r] holds
// B[2t + 8 r + {0, 1}][g], c[r] is C[g + 8 (r / 2)][2t + r % 2]; the low half of a register is
// the lower column (or row) of its pair. Products of bf16 are exact in f32; the sums here run
// in k order, in f32.
inline float bf16_bits_to_float(unsigned bits) { return __uint_as_float(bits << 16); }

inline void mma_bf16_16x8x16(float* c, const unsigned* a, const unsigned* b) {
    const unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const unsigned char* lanes = warp_exchange(mine, sizeof mine, "mma.sync");
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < WARP; ++l) {
        unsigned words[6];
        memcpy(words, lanes + l * EXCHANGE_BYTES, sizeof words);
        const unsigned g = l / 4, t = l % 4;
        for (unsigned r = 0; r < 4; ++r) {
            const unsigned word = words[r];
            const unsigned row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
            A[row][col] = bf16_bits_to_float(word & 0xffffu);
            A[row][col + 1] = bf16_bits_to_float(word >> 16);
        }
        for (unsigned r = 0; r < 2; ++r) {
            const unsigned word = words[4 + r];
            const unsigned row = 2 * t + 8 * r;
            B[row][g] = bf16_bits_to_float(word & 0xffffu);
            B[row + 1][g] = bf16_bits_to_float(word >> 16);
        }
    }
    const unsigned lane = running->current % WARP, g = lane / 4, t = lane % 4;
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
        float sum = c[r];
        for (unsigned k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
        c[r] = sum;
    }
}

template <typename T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(running->dynamic_shared.data());
}

inline void set_thread_index(unsigned linear) {
    const dim3 block = running->block;
    threadIdx.x = linear % block.x;
    threadIdx.y = linear / block.x % block.y;
    threadIdx.z = linear / (block.x * block.y);
}

// A fiber's whole life: the kernel, then back to the scheduler for good.
inline void fiber_main() {
    Launch& launch = *running;
    launch.body(launch.body_data);
    launch.fibers[launch.current].wait = Wait::Done;
    --launch.warp_live[launch.current / WARP];
    switch_context(launch.fibers[launch.current].context, launch.scheduler);
    __builtin_unreachable();
}

inline uint64_t next_random(uint64_t& state) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

// Runs one block to its end; false when it failed (launch.error says why).
inline bool run_block(Launch& launch) {
    for (unsigned t = 0; t < launch.threads; ++t) {
        Fiber& fiber = launch.fibers[t];
        fiber.wait = Wait::None;
        fiber.exchanges = 0;
        make_context(fiber.context, fiber.stack, STACK_BYTES, fiber_main);
    }
    for (unsigned w = 0; w < launch.warps; ++w)
        launch.warp_live[w] = std::min(WARP, launch.threads - w * WARP);
    // Dynamic shared memory starts as garbage on a GPU: here, NaN bytes.
    memset(launch.dynamic_shared.data(), 0xff, launch.dynamic_shared.size());

    unsigned live = launch.threads;
    while (live > 0) {
        for (unsigned i = launch.threads; i > 1; --i)
            std::swap(launch.order[i - 1], launch.order[next_random(launch.seed) % i]);
        for (unsigned t : launch.order) {
            if (launch.fibers[t].wait != Wait::None) continue;
            launch.current = t;
            set_thread_index(t);
            switch_context(launch.scheduler, launch.fibers[t].context);
            if (!launch.error.empty()) return false;
        }
        // Everyone is now at a barrier or done: open the barriers every waiter has reached.
        live = 0;
        bool opened = false;
        std::vector<unsigned> at_block;
        for (unsigned w = 0; w < launch.warps; ++w) {
            const unsigned first = w * WARP, end = std::min(first + WARP, launch.threads);
            bool all_at_warp = true;
            for (unsigned t = first; t < end; ++t) {
                const Wait wait = launch.fibers[t].wait;
                if (wait == Wait::Done) continue;
                ++live;
                if (wait != Wait::Warp) all_at_warp = false;
                if (wait == Wait::Block) at_block.push_back(t);
            }
            if (all_at_warp && launch.warp_live[w] > 0) {
                for (unsigned t = first; t < end; ++t)
                    if (launch.fibers[t].wait == Wait::Warp) launch.fibers[t].wait = Wait::None;
                opened = true;
            }
        }
        if (!opened && live > 0 && at_block.size() == live) {
            for (unsigned t : at_block) launch.fibers[t].wait = Wait::None;
            opened = true;
        }
        if (!opened && live > 0) {
            launch.error = "threads wait at barriers that can never open (lanes of a warp at "
                           "different barriers, or __syncthreads in divergent code)";
            return false;
        }
    }
    return true;
}

// Runs `body` (the kernel call) over the whole grid; "" or why it failed. `most_threads` is
// the kernel's __launch_bounds__ (0: none), which a GPU holds a launch to.
inline std::string run_grid(dim3 grid, dim3 block, unsigned shared_bytes, unsigned most_threads,
                            void (*body)(void*), void* data) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_BLOCK_THREADS)
        return "a block of " + std::to_string(threads) + " threads (a GPU takes 1 to 1024)";
    if (most_threads != 0 && threads > most_threads)
        return "a block of " + std::to_string(threads) +
               " threads, past the kernel's __launch_bounds__ of " +
               std::to_string(most_threads);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > MAX_GRID_YZ || grid.z > MAX_GRID_YZ)
        return "a grid of (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
               std::to_string(grid.z) + ") (a GPU takes y and z up to 65535, none zero)";
    if (shared_bytes > MAX_DYNAMIC_SHARED)
        return std::to_string(shared_bytes) +
               " bytes of dynamic shared memory (48 KiB without opting in)";

    // Static shared arrays are one per kernel: one launch at a time in this library.
    static std::mutex one_launch;
    std::lock_guard<std::mutex> lock(one_launch);
    Launch launch;
    launch.grid = grid;
    launch.block = block;
    launch.threads = (unsigned)threads;
    launch.warps = (launch.threads + WARP - 1) / WARP;
    launch.fibers.resize(launch.threads);
    // Left uninitialised: a fiber's stack is written before it is read.
    std::unique_ptr<char[]> stacks(new char[(size_t)launch.threads * STACK_BYTES]);
    for (unsigned t = 0; t < launch.threads; ++t)
        launch.fibers[t].stack = stacks.get() + (size_t)t * STACK_BYTES;
    launch.warp_live.resize(launch.warps);
    launch.exchange.resize((size_t)launch.warps * 2 * WARP * EXCHANGE_BYTES);
    launch.dynamic_shared.resize(shared_bytes);
    for (unsigned t = 0; t < launch.threads; ++t) launch.order.push_back(t);
    launch.body = body;
    launch.body_data = data;

    Launch* outer = running;
    running = &launch;
    blockDim = block;
    gridDim = grid;
    bool ok = true;
    for (unsigned z = 0; z < grid.z && ok; ++z)
        for (unsigned y = 0; y < grid.y && ok; ++y)
            for (unsigned x = 0; x < grid.x && ok; ++x) {
                blockIdx = dim3{x, y, z};
                ok = run_block(launch);
            }
    running = outer;
    return launch.error;
}

// The kernel called with its parameters as cuLaunchKernel passes them: params[i] points to the
// i-th parameter's value.
template <typename... P, size_t... I>
void call_with(void (*kernel)(P...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<P>*>(params[I])...);
}

template <typename... P>
struct Call {
    void (*kernel)(P...);
    void** params;
    static void run(void* self) {
        auto* call = static_cast<Call*>(self);
        call_with(call->kernel, call->params, std::index_sequence_for<P...>{});
    }
};

// What the generated entry points call: 0, or 1 with the reason in `error`. `most_threads`
// is the kernel's __launch_bounds__ (0: none).
template <typename... P>
int launch(void (*kernel)(P...), const unsigned* sizes, void** params, char* error,
           size_t error_bytes, unsigned most_threads) {
    Call<P...> call{kernel, params};
    const std::string failure =
        run_grid(dim3{sizes[0], sizes[1], sizes[2]}, dim3{sizes[3], sizes[4], sizes[5]},
                 sizes[6], most_threads, &Call<P...>::run, &call);
    if (failure.empty()) return 0;
    snprintf(error, error_bytes, "%s", failure.c_str());
    return 1;
}

}  // namespace cuda_on_cpu

// The stand-in for the kernels' inline-PTX mma (they define it themselves unless CUDA_ON_CPU).
using cuda_on_cpu::mma_bf16_16x8x16;

#define __syncthreads() cuda_on_cpu::wait_at(cuda_on_cpu::Wait::Block)
#define __syncwarp(...) cuda_on_cpu::sync_warp()
#define __shfl_xor_sync(mask, value, lane_mask) cuda_on_cpu::shuffle_xor((value), (lane_mask))

__forceinline__ int atomicAdd(int* address, int value) {
    // Fibers of a block take turns at barriers only, so this is atomic among them.
    const int old = *address;
    *address = old + value;
    return old;
}
__forceinline__ unsigned atomicAdd(unsigned* address, unsigned value) {
    const unsigned old = *address;
    *address = old + value;
    return old;
}
__forceinline__ float atomicAdd(float* address, float value) {
    const float old = *address;
    *address = old + value;
    return old;
}
