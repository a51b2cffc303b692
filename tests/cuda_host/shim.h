// Host execution of the CUDA kernel text of ace_core.backends._cupy_source (tests only).
//
// The kernel source is compiled as C++ after this header: one host thread per CUDA thread of a
// block (pthreads), the blocks of a grid one after another on the same threads. __syncthreads() is
// a barrier of the block, __shfl_xor_sync an exchange through the warp's slots between two
// barriers of the warp, __shared__ storage is static (one block runs at a time), threadIdx,
// blockIdx, blockDim and gridDim are thread_local. A barrier that is not reached within the
// timeout (a __syncthreads in divergent code, a kernel that returns early on some threads) breaks
// every barrier of the launch and makes the launch fail instead of hanging.
#pragma once

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct ace_host_dim3 {
    unsigned int x, y, z;
};

inline thread_local ace_host_dim3 threadIdx{0, 0, 0};
inline thread_local ace_host_dim3 blockIdx{0, 0, 0};
inline thread_local ace_host_dim3 blockDim{1, 1, 1};
inline thread_local ace_host_dim3 gridDim{1, 1, 1};

inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline double __longlong_as_double(long long v) {
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace ace_host {

struct Broken {};  // thrown out of a kernel when its launch failed

struct Launch;
inline thread_local Launch* current = nullptr;
inline thread_local unsigned shuffle_turn = 0;  // which set of the warp's slots the next shuffle uses

// A futex barrier: the last thread to arrive bumps the generation and wakes the others. Waits are
// cut into short slices so that a broken launch (or the timeout) is noticed.
class Barrier {
  public:
    Barrier(int parties, std::chrono::milliseconds timeout, std::atomic<bool>* broken)
        : parties_(parties), timeout_(timeout), broken_(broken) {}

    void wait() {
        if (broken_->load(std::memory_order_acquire)) throw Broken{};
        const int generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == parties_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
            syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
                    nullptr, 0);
            return;
        }
        const auto deadline = std::chrono::steady_clock::now() + timeout_;
        while (generation_.load(std::memory_order_acquire) == generation) {
            if (broken_->load(std::memory_order_acquire) || std::chrono::steady_clock::now() > deadline)
                throw Broken{};
            struct timespec slice = {0, 50 * 1000 * 1000};
            syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAIT_PRIVATE, generation, &slice,
                    nullptr, 0);
        }
    }

    void wake() {
        syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr,
                0);
    }

  private:
    const int parties_;
    const std::chrono::milliseconds timeout_;
    std::atomic<bool>* broken_;
    std::atomic<int> arrived_{0};
    std::atomic<int> generation_{0};
};

struct Warp {
    Warp(std::chrono::milliseconds timeout, std::atomic<bool>* broken) : barrier(32, timeout, broken) {}
    Barrier barrier;
    uint64_t slots[2][32];  // two sets, used in turn: one barrier per shuffle suffices
};

struct Launch {
    Launch(unsigned grid_, unsigned block_, std::chrono::milliseconds timeout, void (*kernel_)(void**),
           void** args_)
        : grid(grid_),
          block(block_),
          kernel(kernel_),
          args(args_),
          syncthreads((int)block_, timeout, &broken),
          block_end((int)block_, timeout, &broken) {
        warps.reserve(block_ / 32);
        for (unsigned w = 0; w < block_ / 32; ++w) warps.emplace_back(new Warp(timeout, &broken));
    }
    ~Launch() {
        for (Warp* w : warps) delete w;
    }

    void fail(const std::string& why) {
        {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!broken.load()) error = why;
            broken.store(true, std::memory_order_release);
        }
        syncthreads.wake();
        block_end.wake();
        for (Warp* w : warps) w->barrier.wake();
    }

    const unsigned grid, block;
    void (*kernel)(void**);
    void** args;
    std::atomic<bool> broken{false};
    std::mutex error_mutex;
    std::string error;
    Barrier syncthreads;
    Barrier block_end;
    std::vector<Warp*> warps;
};

struct Worker {
    Launch* launch;
    unsigned thread;
};

inline void* run_thread(void* arg) {
    Worker* worker = static_cast<Worker*>(arg);
    Launch* launch = worker->launch;
    current = launch;
    shuffle_turn = 0;
    threadIdx = {worker->thread, 0, 0};
    blockDim = {launch->block, 1, 1};
    gridDim = {launch->grid, 1, 1};
    try {
        for (unsigned b = 0; b < launch->grid; ++b) {
            blockIdx = {b, 0, 0};
            launch->kernel(launch->args);
            launch->block_end.wait();  // the next block reuses the __shared__ storage
        }
    } catch (Broken&) {
        launch->fail("a barrier timed out: a __syncthreads or a warp shuffle not reached by every thread");
    } catch (std::exception& e) {
        launch->fail(e.what());
    }
    current = nullptr;
    return nullptr;
}

// Runs kernel(args) on a grid of `grid` blocks of `block` threads; 0 on success, else -1 with the
// reason in error.
inline int launch(void (*kernel)(void**), unsigned grid, unsigned block, void** args, long timeout_ms,
                  char* error, int error_size) {
    static std::mutex one_launch_at_a_time;  // __shared__ storage is static
    std::lock_guard<std::mutex> serial(one_launch_at_a_time);
    auto say = [&](const std::string& why) {
        snprintf(error, (size_t)error_size, "%s", why.c_str());
        return -1;
    };
    if (block == 0 || block > 1024 || block % 32 != 0)
        return say("blockDim.x must be a multiple of 32 in [32, 1024], got " + std::to_string(block));
    if (grid == 0) return say("gridDim.x must be at least 1");
    Launch state(grid, block, std::chrono::milliseconds(timeout_ms), kernel, args);
    std::vector<Worker> workers(block);
    std::vector<pthread_t> threads(block);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 18);
    unsigned started = 0;
    for (; started < block; ++started) {
        workers[started] = {&state, started};
        if (pthread_create(&threads[started], &attr, run_thread, &workers[started]) != 0) {
            state.fail("pthread_create failed");
            break;
        }
    }
    pthread_attr_destroy(&attr);
    for (unsigned t = 0; t < started; ++t) pthread_join(threads[t], nullptr);
    if (state.broken.load()) return say(state.error);
    return 0;
}

}  // namespace ace_host

template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 64 bits");
    ace_host::Launch* launch = ace_host::current;
    if (mask != 0xffffffffu || lane_mask < 0 || lane_mask > 31) {
        launch->fail("__shfl_xor_sync: only the full mask and lane masks 0..31 are emulated");
        throw ace_host::Broken{};
    }
    const unsigned lane = threadIdx.x & 31u;
    ace_host::Warp* warp = launch->warps[threadIdx.x >> 5];
    // A lane reuses a set of slots two shuffles later, when every lane has passed the barrier of the
    // shuffle in between and so has read this one.
    uint64_t* slots = warp->slots[ace_host::shuffle_turn];
    ace_host::shuffle_turn ^= 1u;
    memcpy(&slots[lane], &value, sizeof(T));
    warp->barrier.wait();
    T result;
    memcpy(&result, &slots[lane ^ (unsigned)lane_mask], sizeof(T));
    return result;
}

inline void __syncthreads() { ace_host::current->syncthreads.wait(); }
