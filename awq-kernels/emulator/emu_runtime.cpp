// The CPU emulator's kernel runtime: runs a kernel of the registry on a grid, one block at a time, each CUDA
// thread of the block a fiber with its own stack. A fiber runs until it reaches a barrier (__syncthreads), a
// warp-collective operation (shuffles, ballots, mma.sync, ldmatrix, __syncwarp) or its end; the scheduler
// then runs the next fiber, and releases a barrier once every live thread of the block (or lane of the warp)
// waits at it. Threads that wait at different barriers are a deadlock, reported as such. cp.async copies
// stay pending in their thread until its cp.async.wait_group, so data read too early is visibly stale.
//
// x86-64 only (the context switch below); single OS thread per launch, launches serialized by a mutex.
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "emu_device.h"
#include "emu_runtime.h"

extern "C" void emu_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers and the stack pointer of the running context in *save_sp, loads
// load_sp and returns into that context (System V x86-64).
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

uint3 block_idx;
dim3 block_dim, grid_dim;

namespace {

constexpr size_t STACK_BYTES = 256 << 10;  // a thread's locals (the attention kernels hold large fragments)
constexpr size_t PAGE = 4096;
constexpr int SLOT_BYTES = 64;

enum class Wait { None, Block, Warp, Exited };

struct Copy {
    void* dst;
    const void* src;
    int n;
    long group;
};

struct Fiber {
    void* sp = nullptr;
    unsigned char* stack = nullptr;  // lowest usable byte; a PROT_NONE guard page lies below it
    uint3 tid{};
    int lane = 0, warp = 0;
    Wait wait = Wait::None;
    std::vector<Copy> copies;
    long committed = 0;  // cp.async groups committed so far
};

struct Warp {
    unsigned char slots[32][SLOT_BYTES];
    unsigned char snapshot[32][SLOT_BYTES];
    unsigned live = 0;
    // Counts the warp's collectives; an mma decodes its operands once per collective, for every lane.
    unsigned long epoch = 0, decoded = ~0ul;
    float a[16][16], b[16][8];
};

std::mutex launch_mutex;
std::vector<Fiber> fibers;
std::vector<Warp> warps;
Fiber* current = nullptr;
void* scheduler_sp = nullptr;
const EmuKernel* running = nullptr;
void** running_params = nullptr;
std::vector<unsigned char> dynamic_smem;

void apply(const Copy& c) {
    std::memcpy(c.dst, c.src, (size_t)c.n);
    std::memset(static_cast<unsigned char*>(c.dst) + c.n, 0, 16 - (size_t)c.n);
}

void finish_copies(Fiber& f) {
    for (const Copy& c : f.copies) apply(c);
    f.copies.clear();
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield(Wait why) {
    current->wait = why;
    emu_switch(&current->sp, scheduler_sp);
}

[[noreturn]] void fiber_main() {
    running->thunk(running_params);
    finish_copies(*current);
    warps[current->warp].live &= ~(1u << current->lane);
    yield(Wait::Exited);
    std::abort();  // an exited fiber is never resumed
}

// Stacks for `n` fibers, kept between launches.
void ensure_stacks(size_t n) {
    while (fibers.size() < n) {
        Fiber f;
        void* mem = mmap(nullptr, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (mem == MAP_FAILED) {
            std::perror("emulator: mapping a fiber stack");
            std::abort();
        }
        mprotect(mem, PAGE, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
        f.stack = static_cast<unsigned char*>(mem) + PAGE;
        fibers.push_back(std::move(f));
    }
}

// A fresh context whose first switch enters fiber_main with the stack aligned as after a call.
void prepare(Fiber& f) {
    auto top = reinterpret_cast<uintptr_t>(f.stack + STACK_BYTES) & ~uintptr_t(15);
    auto* p = reinterpret_cast<uint64_t*>(top);
    *--p = 0;                                              // fiber_main's (never used) return address
    *--p = reinterpret_cast<uint64_t>(&fiber_main);        // popped by emu_switch's ret
    for (int i = 0; i < 6; ++i) *--p = 0;                  // rbp, rbx, r12-r15
    f.sp = p;
    f.wait = Wait::None;
    f.copies.clear();
    f.committed = 0;
}

const char* name_of(Wait w) {
    switch (w) {
        case Wait::Block: return "__syncthreads";
        case Wait::Warp: return "a warp collective";
        case Wait::Exited: return "exit";
        default: return "running";
    }
}

// The order in which a scheduling round runs the block's threads: by index (the default), or per
// EMU_SCHEDULE=reverse or =random (a fresh permutation each round, seeded by EMU_SEED), to expose a missing
// barrier that the index order happens to hide.
enum class Schedule { Index, Reverse, Random };

Schedule schedule_from_env() {
    const char* v = std::getenv("EMU_SCHEDULE");
    if (v != nullptr && std::strcmp(v, "reverse") == 0) return Schedule::Reverse;
    if (v != nullptr && std::strcmp(v, "random") == 0) return Schedule::Random;
    return Schedule::Index;
}

const Schedule schedule = schedule_from_env();
uint64_t rng_state = [] {
    const char* v = std::getenv("EMU_SEED");
    return v != nullptr ? std::strtoull(v, nullptr, 10) * 2654435761u + 1 : 88172645463325252ull;
}();

uint64_t next_random() {  // xorshift64
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

void order_round(std::vector<size_t>& order, size_t threads) {
    order.resize(threads);
    for (size_t i = 0; i < threads; ++i) order[i] = schedule == Schedule::Reverse ? threads - 1 - i : i;
    if (schedule == Schedule::Random)
        for (size_t i = threads - 1; i > 0; --i) std::swap(order[i], order[next_random() % (i + 1)]);
}

// Runs one block to completion; false after reporting a deadlock.
bool run_block(size_t threads) {
    size_t live = threads;
    std::vector<size_t> order;
    while (live > 0) {
        order_round(order, threads);
        for (size_t i : order) {
            Fiber& f = fibers[i];
            if (f.wait != Wait::None) continue;
            current = &f;
            emu_switch(&scheduler_sp, f.sp);
            if (f.wait == Wait::Exited) --live;
        }
        current = nullptr;
        if (live == 0) break;
        bool released = false;
        // A warp whose live lanes all wait at a collective goes on.
        for (size_t w = 0; w < warps.size(); ++w) {
            const unsigned lanes = warps[w].live;
            if (lanes == 0) continue;
            bool all = true;
            for (int l = 0; l < 32 && all; ++l)
                if ((lanes >> l) & 1u) all = fibers[w * 32 + l].wait == Wait::Warp;
            if (!all) continue;
            // Every live lane has deposited: the lanes read the deposits from a snapshot, so a lane that runs
            // ahead to the warp's next collective cannot overwrite them before a slower lane has read them.
            std::memcpy(warps[w].snapshot, warps[w].slots, sizeof warps[w].slots);
            ++warps[w].epoch;
            for (int l = 0; l < 32; ++l)
                if ((lanes >> l) & 1u) fibers[w * 32 + l].wait = Wait::None;
            released = true;
        }
        if (released) continue;
        // The block goes on once every live thread waits at __syncthreads.
        bool all = true;
        for (size_t i = 0; i < threads && all; ++i)
            all = fibers[i].wait == Wait::Block || fibers[i].wait == Wait::Exited;
        if (all) {
            for (size_t i = 0; i < threads; ++i)
                if (fibers[i].wait == Wait::Block) fibers[i].wait = Wait::None;
            continue;
        }
        std::fprintf(stderr, "emulator: deadlock in %s, block (%u, %u, %u):", running->name, block_idx.x,
                     block_idx.y, block_idx.z);
        for (size_t i = 0; i < threads; ++i)
            if (i == 0 || fibers[i].wait != fibers[i - 1].wait)
                std::fprintf(stderr, " thread %zu at %s;", i, name_of(fibers[i].wait));
        std::fprintf(stderr, "\n");
        return false;
    }
    return true;
}

}  // namespace

const uint3& thread_idx() { return current->tid; }

void* dynamic_shared() { return dynamic_smem.data(); }

void sync_threads() { yield(Wait::Block); }

int lane_id() { return current->lane; }

unsigned live_lanes() { return warps[current->warp].live; }

const unsigned char* warp_gather(const void* mine, size_t bytes) {
    Warp& w = warps[current->warp];
    if (bytes > 0) std::memcpy(w.slots[current->lane], mine, bytes);
    yield(Wait::Warp);  // resumed once every live lane has deposited (run_block takes the snapshot)
    return &w.snapshot[0][0];
}

void cp_async(void* dst, const void* src, int n) {
    current->copies.push_back(Copy{dst, src, n, current->committed});
}

void cp_async_commit() { ++current->committed; }

void cp_async_wait(int pending_groups) {
    // Groups 0..committed - pending_groups - 1 must be complete; later ones (and uncommitted copies) may
    // stay in flight.
    const long done_below = current->committed - pending_groups;
    std::vector<Copy>& c = current->copies;
    size_t keep = 0;
    for (size_t i = 0; i < c.size(); ++i) {
        if (c[i].group < done_below)
            apply(c[i]);
        else
            c[keep++] = c[i];
    }
    c.resize(keep);
}

void mma_m16n8k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, bool bf16) {
    struct Frag {
        unsigned a[4], b[2];
    } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    const unsigned char* all = warp_gather(&mine, sizeof mine);
    Warp& w = warps[current->warp];
    if (w.decoded != w.epoch) {
        // A (16 x 16, row-major fragments): element (r, k) sits in lane 4·(r % 8) + (k % 8) / 2, register
        // (r / 8) + 2·(k / 8), half k % 2. B (16 x 8): element (k, n) in lane 4·n + (k % 8) / 2, register
        // k / 8, half k % 2.
        auto half = [&](unsigned word, int hi) {
            const unsigned short h = (unsigned short)(word >> (16 * hi));
            return bf16 ? bf16_bits_to_f32(h) : f16_bits_to_f32(h);
        };
        for (int lane = 0; lane < 32; ++lane) {
            Frag f;
            std::memcpy(&f, all + SLOT_BYTES * lane, sizeof f);
            const int g = lane / 4, t = lane % 4;
            for (int reg = 0; reg < 4; ++reg)
                for (int hi = 0; hi < 2; ++hi)
                    w.a[g + 8 * (reg % 2)][2 * t + hi + 8 * (reg / 2)] = half(f.a[reg], hi);
            for (int reg = 0; reg < 2; ++reg)
                for (int hi = 0; hi < 2; ++hi) w.b[2 * t + hi + 8 * reg][g] = half(f.b[reg], hi);
        }
        w.decoded = w.epoch;
    }
    // C/D: lane (g, t) holds (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
    const int lane = current->lane, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i / 2), n = 2 * t + (i % 2);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += w.a[r][k] * w.b[k][n];
        c[i] = acc;
    }
}

void ldmatrix_x4(unsigned (&r)[4], const void* row, bool trans) {
    const unsigned char* all = warp_gather(&row, sizeof row);
    auto row_of = [&](int lane) {
        const unsigned short* p;
        std::memcpy(&p, all + SLOT_BYTES * lane, sizeof p);
        return p;
    };
    const int lane = current->lane;
    for (int i = 0; i < 4; ++i) {
        if (!trans) {  // row lane / 4 of matrix i, elements 2·(lane % 4) and the next
            const unsigned short* p = row_of(8 * i + lane / 4);
            r[i] = (unsigned)p[2 * (lane % 4)] | ((unsigned)p[2 * (lane % 4) + 1] << 16);
        } else {  // column lane / 4, rows 2·(lane % 4) and the next
            const unsigned short* p0 = row_of(8 * i + 2 * (lane % 4));
            const unsigned short* p1 = row_of(8 * i + 2 * (lane % 4) + 1);
            r[i] = (unsigned)p0[lane / 4] | ((unsigned)p1[lane / 4] << 16);
        }
    }
}

}  // namespace emu

int emu_launch(const EmuKernel* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
               unsigned bz, size_t dynamic_shared, void** params) {
    using namespace emu;
    std::lock_guard<std::mutex> lock(launch_mutex);
    const size_t threads = (size_t)bx * by * bz;
    if (threads == 0 || threads > 1024) {
        std::fprintf(stderr, "emulator: %s launched with %zu threads per block\n", kernel->name, threads);
        return 1;
    }
    ensure_stacks(threads);
    warps.assign((threads + 31) / 32, Warp{});
    dynamic_smem.assign(dynamic_shared + 16, 0xff);
    running = kernel;
    running_params = params;
    block_dim = dim3{bx, by, bz};
    grid_dim = dim3{gx, gy, gz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                block_idx = uint3{x, y, z};
                std::memset(dynamic_smem.data(), 0xff, dynamic_smem.size());  // shared memory starts as garbage
                for (auto& w : warps) w.live = 0;
                for (size_t i = 0; i < threads; ++i) {
                    Fiber& f = fibers[i];
                    f.tid = uint3{(unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / ((size_t)bx * by))};
                    f.lane = (int)(i % 32);
                    f.warp = (int)(i / 32);
                    warps[f.warp].live |= 1u << f.lane;
                    prepare(f);
                }
                if (!run_block(threads)) return 2;
            }
    running = nullptr;
    return 0;
}
