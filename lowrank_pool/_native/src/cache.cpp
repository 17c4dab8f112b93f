// ∂X buffers. A fresh multi-MB buffer costs page faults on its first write, as much as the backward's arithmetic at
// large maps, so ∂X (kMinCachedBytes and larger) is allocated from a small cache of blocks this module owns: when
// autograd frees a ∂X its block returns here, and the next backward of the same size reuses it (the idea of PyTorch's
// CUDA caching allocator). Bound: at most kCachedPerSize freed blocks of one size, kCachedBlocks in all, and the limit
// in bytes that Python sets from LOWRANK_POOL_CACHE_MIB (0: no cache); the oldest freed block goes first.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>
#include <utility>

#include "kernel.h"
#include "tuning.h"

namespace lp {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kCachedBlocks = 4;

struct Cache {
  std::mutex mu;
  std::deque<std::pair<size_t, void*>> free_blocks;  // oldest first
  size_t bytes = 0;
  size_t limit = size_t(1024) << 20;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during interpreter shutdown
  return *c;
}

// Drops the oldest blocks until the cache holds at most `count` blocks and `bytes` bytes (the lock held)
void trim(Cache& c, size_t count, size_t bytes) {
  while (!c.free_blocks.empty() && (c.free_blocks.size() > count || c.bytes > bytes)) {
    std::free(c.free_blocks.front().second);
    c.bytes -= c.free_blocks.front().first;
    c.free_blocks.pop_front();
  }
}

void give_back(void* ptr, size_t nbytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (nbytes <= c.limit) {
      // at most kCachedPerSize of this size: the oldest of its size leaves first
      size_t same = 0;
      for (const auto& block : c.free_blocks) same += block.first == nbytes;
      for (auto it = c.free_blocks.begin(); same >= size_t(kCachedPerSize) && it != c.free_blocks.end();) {
        if (it->first == nbytes) {
          std::free(it->second);
          c.bytes -= it->first;
          it = c.free_blocks.erase(it);
          --same;
        } else {
          ++it;
        }
      }
      trim(c, kCachedBlocks - 1, c.limit - nbytes);
      c.free_blocks.emplace_back(nbytes, ptr);
      c.bytes += nbytes;
      return;
    }
  }
  std::free(ptr);
}

}  // namespace

at::Tensor cached_empty_like(const at::Tensor& like) {
  const size_t nbytes = (like.nbytes() + kAlign - 1) / kAlign * kAlign;
  Cache& c = cache();
  if (nbytes < size_t(kMinCachedBytes)) return at::empty_like(like, at::MemoryFormat::Contiguous);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.limit == 0) return at::empty_like(like, at::MemoryFormat::Contiguous);
    for (auto it = c.free_blocks.end(); it != c.free_blocks.begin();) {  // newest first
      --it;
      if (it->first == nbytes) {
        ptr = it->second;
        c.bytes -= nbytes;
        c.free_blocks.erase(it);
        break;
      }
    }
  }
  if (ptr == nullptr) {
    ptr = std::aligned_alloc(kAlign, nbytes);
    if (ptr == nullptr) throw std::bad_alloc();
  }
  return at::from_blob(
      ptr, like.sizes(), [nbytes](void* p) { give_back(p, nbytes); }, like.options());
}

int64_t cache_bytes(bool release) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const auto held = static_cast<int64_t>(c.bytes);
  if (release) trim(c, 0, 0);
  return held;
}

int64_t cache_blocks() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.free_blocks.size());
}

void set_cache_limit(int64_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.limit = bytes > 0 ? size_t(bytes) : 0;
  trim(c, kCachedBlocks, c.limit);
}

int64_t cache_limit() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.limit);
}

}  // namespace lp
