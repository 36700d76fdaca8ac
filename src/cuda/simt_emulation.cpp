// The host runtime of simt_emulation.hpp: thread blocks as OS threads, barriers for __syncthreads
// and for each warp's collectives.
#include <algorithm>
#include <barrier>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

// After the standard headers: it defines CUDA's vocabulary as macros.
#include "cuda/simt_emulation.hpp"

namespace loraq::simt {
namespace {

constexpr int kWarp = 32;

struct Warp {
  Warp() : barrier(kWarp) {}
  std::barrier<> barrier;
  std::uint64_t slots[kWarp] = {};
  unsigned a[kWarp][4] = {}, b[kWarp][2] = {};  // mma fragments
};

struct Block {
  explicit Block(int threads) : barrier(threads) {}
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};

dim3 g_grid, g_block;
thread_local dim3 t_thread, t_block;
thread_local Block* t_current = nullptr;

struct PendingCopy {
  void* destination;
  const void* source;
  int bytes, source_bytes;
};
thread_local std::vector<PendingCopy> t_pending;  // this thread's cp.async copies not yet waited for

Warp& my_warp() { return *t_current->warps[t_thread.x / kWarp]; }
int my_lane() { return int(t_thread.x % kWarp); }

}  // namespace

const dim3& thread_index() { return t_thread; }
const dim3& block_index() { return t_block; }
const dim3& block_dim() { return g_block; }
const dim3& grid_dim() { return g_grid; }

void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  // The kernels index threads by x only (1-D blocks), which keeps the warp of a thread x / 32.
  const int threads = int(block.x * block.y * block.z);
  if (block.y != 1 || block.z != 1 || threads % kWarp != 0)
    throw std::logic_error("simt::launch: blocks must be 1-D and whole warps");
  g_grid = grid, g_block = block;
  // One OS thread per CUDA thread for the whole launch; they take the blocks in order, each block's
  // barriers fresh (an exited thread leaves them for good), and meet between blocks: __shared__
  // arrays are the block's only while no other block runs.
  const std::size_t blocks = std::size_t(grid.x) * grid.y * grid.z;
  std::vector<std::unique_ptr<Block>> state;
  for (std::size_t i = 0; i < blocks; ++i) {
    state.push_back(std::make_unique<Block>(threads));
    for (int w = 0; w < threads / kWarp; ++w) state.back()->warps.push_back(std::make_unique<Warp>());
  }
  std::barrier<> between(threads);
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::vector<std::thread> pool;
  pool.reserve(std::size_t(threads));
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (std::size_t i = 0; i < blocks; ++i) {
        Block& b = *state[i];
        t_thread = dim3(unsigned(t));
        t_block = dim3(unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / grid.x / grid.y));
        t_current = &b;
        try {
          body();
        } catch (...) {
          const std::lock_guard lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
        t_pending.clear();  // copies a thread never waited for: nothing reads them after its block
        // An exited thread no longer takes part in its block's or its warp's barriers.
        b.warps[std::size_t(t / kWarp)]->barrier.arrive_and_drop();
        b.barrier.arrive_and_drop();
        between.arrive_and_wait();
      }
    });
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

void sync_threads() { t_current->barrier.arrive_and_wait(); }

std::uint64_t warp_exchange(std::uint64_t mine, int lane) {
  Warp& w = my_warp();
  w.slots[my_lane()] = mine;
  w.barrier.arrive_and_wait();
  const std::uint64_t theirs = w.slots[lane];
  w.barrier.arrive_and_wait();  // nobody writes the slots again before every lane has read
  return theirs;
}

unsigned warp_max(unsigned mine) {
  Warp& w = my_warp();
  w.slots[my_lane()] = mine;
  w.barrier.arrive_and_wait();
  unsigned m = 0;
  for (int l = 0; l < kWarp; ++l) m = std::max(m, unsigned(w.slots[l]));
  w.barrier.arrive_and_wait();
  return m;
}

// PTX ISA, mma.m16n8k32 with .s8 operands (groupID = lane / 4, threadID_in_group = lane % 4; byte i
// of a register is its element i):
//   A (16 x 32, row): register r of lane l holds row groupID + 8 (r % 2), columns
//     4 threadID_in_group + 16 (r / 2) + 0..3;
//   B (32 x 8, col): register r of lane l holds column groupID, rows 4 threadID_in_group + 16 r + 0..3;
//   D (16 x 8): register r holds row groupID + 8 (r / 2), column 2 threadID_in_group + r % 2.
void mma_m16n8k32_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  Warp& w = my_warp();
  const int lane = my_lane();
  for (int r = 0; r < 4; ++r) w.a[lane][r] = a[r];
  for (int r = 0; r < 2; ++r) w.b[lane][r] = b[r];
  w.barrier.arrive_and_wait();
  auto a_at = [&](int row, int k) {
    const unsigned reg = w.a[(row % 8) * 4 + (k % 16) / 4][row / 8 + 2 * (k / 16)];
    return int(std::int8_t(reg >> (8 * (k % 4))));
  };
  auto b_at = [&](int k, int col) {
    const unsigned reg = w.b[col * 4 + (k % 16) / 4][k / 16];
    return int(std::int8_t(reg >> (8 * (k % 4))));
  };
  const int g = lane / 4, q = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * q + r % 2;
    int sum = 0;
    for (int k = 0; k < 32; ++k) sum += a_at(row, k) * b_at(k, col);
    d[r] = sum;
  }
  w.barrier.arrive_and_wait();  // the fragments stay until every lane has its D
}

void ldmatrix_x4(unsigned (&r)[4], const void* row) {
  Warp& w = my_warp();
  const int lane = my_lane();
  // A GPU needs each row 16-byte aligned (the PTX ISA); say so here rather than read it anyway.
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0)
    throw std::logic_error("ldmatrix: a row address is not 16-byte aligned");
  w.slots[lane] = reinterpret_cast<std::uintptr_t>(row);
  w.barrier.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const auto* source = reinterpret_cast<const unsigned char*>(w.slots[8 * i + lane / 4]) + 4 * (lane % 4);
    std::memcpy(&r[i], source, sizeof r[i]);
  }
  w.barrier.arrive_and_wait();  // nobody writes the slots again before every lane has read
}

void cp_async(void* destination, const void* source, int bytes, int source_bytes) {
  t_pending.push_back({destination, source, bytes, source_bytes});
}

void cp_async_wait_all() {
  for (const PendingCopy& c : t_pending) {
    std::memcpy(c.destination, c.source, std::size_t(c.source_bytes));
    std::memset(static_cast<char*>(c.destination) + c.source_bytes, 0, std::size_t(c.bytes - c.source_bytes));
  }
  t_pending.clear();
}

int atomic_load(const int* p) { return std::atomic_ref<int>(*const_cast<int*>(p)).load(); }

}  // namespace loraq::simt
