/*
 * cuda_emulator.h: just enough of CUDA to run the kernels in kernels/*.cu on the CPU, one
 * block after another, every GPU thread a cooperative fiber (ucontext) of one OS thread.
 * Used by benchmarks/kernel_lab/cuda_emulator.py; the GPU tests remain the real check.
 *
 * What it models: threadIdx/blockIdx/blockDim/gridDim, __shared__ (a static shared by the
 * fibers of the running block), __syncthreads (all threads of the block), __syncwarp and
 * the full-mask warp shuffles (all 32 lanes of the warp), atomicAdd, the float builtins
 * the kernels use. A fiber runs until it reaches a barrier, so a missing barrier shows up
 * as wrong results (thread 0 runs ahead of everybody), and a barrier that not all threads
 * of its scope reach is reported as a deadlock.
 * What it does not model: the GPU memory model, real warp scheduling, fast-math or FMA
 * contraction differences, timing, resource limits (registers, 48 KiB of shared memory).
 */
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include <ucontext.h>

struct uint3_emu { unsigned x, y, z; };

namespace emu {

enum State { READY, WAIT_BLOCK, WAIT_WARP, DONE };

struct Thread {
    ucontext_t ctx;
    std::vector<char> stack;
    State state = READY;
    uint3_emu tid;
    int linear = 0;
};

struct Block {
    std::vector<Thread> threads;
    std::vector<uint64_t> slots;  // one shuffle slot per thread
    ucontext_t scheduler;
};

inline Block* g_block = nullptr;
inline Thread* g_cur = nullptr;
inline uint3_emu g_block_idx, g_block_dim, g_grid_dim;
inline const std::function<void()>* g_body = nullptr;
inline std::string g_error;

inline void wait(State s) {
    g_cur->state = s;
    swapcontext(&g_cur->ctx, &g_block->scheduler);
}

inline void trampoline() {
    (*g_body)();
    g_cur->state = DONE;
    // returning switches to uc_link (the scheduler)
}

// Runs one block to completion; returns false (and sets g_error) on a deadlock.
inline bool run_block(int n_threads) {
    Block& blk = *g_block;
    while (true) {
        bool ran = false;
        for (int i = 0; i < n_threads; i++) {
            Thread& t = blk.threads[i];
            if (t.state != READY) continue;
            g_cur = &t;
            swapcontext(&blk.scheduler, &t.ctx);
            ran = true;
            if (!g_error.empty()) return false;
        }
        if (ran) continue;
        int done = 0, at_block = 0;
        for (int i = 0; i < n_threads; i++) {
            done += blk.threads[i].state == DONE;
            at_block += blk.threads[i].state == WAIT_BLOCK;
        }
        if (done == n_threads) return true;
        bool released = false;
        for (int w0 = 0; w0 < n_threads; w0 += 32) {
            int w1 = std::min(w0 + 32, n_threads), at_warp = 0, exited = 0;
            for (int i = w0; i < w1; i++) {
                at_warp += blk.threads[i].state == WAIT_WARP;
                exited += blk.threads[i].state == DONE;
            }
            if (at_warp > 0 && at_warp + exited == w1 - w0) {
                if (exited > 0) {
                    g_error = "warp-level barrier or shuffle reached by only part of warp " +
                              std::to_string(w0 / 32) + " (other lanes exited)";
                    return false;
                }
                for (int i = w0; i < w1; i++) blk.threads[i].state = READY;
                released = true;
            }
        }
        if (released) continue;
        if (at_block > 0 && at_block + done == n_threads) {
            for (int i = 0; i < n_threads; i++)
                if (blk.threads[i].state == WAIT_BLOCK) blk.threads[i].state = READY;
            continue;
        }
        g_error = "deadlock: threads wait at barriers that the others never reach "
                  "(a __syncthreads or a shuffle inside divergent code?)";
        return false;
    }
}

// Runs body() as a kernel over grid x block. Returns 0, or 1 with g_error set.
inline int launch(uint3_emu grid, uint3_emu block, const std::function<void()>& body,
                  size_t stack_bytes = 64 * 1024) {
    g_error.clear();
    const int n = block.x * block.y * block.z;
    if (n < 1 || n > 1024 || n % 32 != 0) {
        g_error = "block of " + std::to_string(n) + " threads: the emulator wants 32..1024, "
                  "a multiple of 32";
        return 1;
    }
    Block blk;
    blk.threads.resize(n);
    blk.slots.resize(n);
    for (auto& t : blk.threads) t.stack.resize(stack_bytes);
    g_block = &blk;
    g_body = &body;
    g_grid_dim = grid;
    g_block_dim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                g_block_idx = {bx, by, bz};
                for (int i = 0; i < n; i++) {
                    Thread& t = blk.threads[i];
                    t.linear = i;
                    t.tid = {(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y),
                             (unsigned)(i / (block.x * block.y))};
                    t.state = READY;
                    getcontext(&t.ctx);
                    t.ctx.uc_stack.ss_sp = t.stack.data();
                    t.ctx.uc_stack.ss_size = t.stack.size();
                    t.ctx.uc_link = &blk.scheduler;
                    makecontext(&t.ctx, trampoline, 0);
                }
                if (!run_block(n)) {
                    g_error += " in block (" + std::to_string(bx) + ", " + std::to_string(by) +
                               ", " + std::to_string(bz) + ")";
                    g_block = nullptr;
                    return 1;
                }
            }
    g_block = nullptr;
    return 0;
}

template <class T> inline T shuffle(unsigned mask, T v, int src_lane_of_warp) {
    if (mask != 0xffffffffu) {
        g_error = "the emulator supports full-mask shuffles only";
    }
    static_assert(sizeof(T) <= 8, "shuffle of a type over 8 bytes");
    const int lane = g_cur->linear % 32, w0 = g_cur->linear - lane;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    g_block->slots[g_cur->linear] = bits;
    wait(WAIT_WARP);  // everybody has written
    bits = g_block->slots[w0 + (src_lane_of_warp & 31)];
    wait(WAIT_WARP);  // everybody has read: the slots may be reused
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace emu

#define threadIdx (emu::g_cur->tid)
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

inline void __syncthreads() { emu::wait(emu::WAIT_BLOCK); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; emu::wait(emu::WAIT_WARP); }
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu::shuffle(mask, v, (emu::g_cur->linear % 32) ^ lane_mask);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    return emu::shuffle(mask, v, src_lane);
}
inline float atomicAdd(float* address, float v) {  // one OS thread: a plain add is atomic
    float old = *address;
    *address = old + v;
    return old;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __int_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
