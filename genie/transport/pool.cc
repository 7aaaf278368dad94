// File: genie/transport/pool.cc
// PoolAllocator (best fit over btree-ordered free ranges) and SharedPool (pool.h).
#include "genie/transport/pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <iterator>

namespace genie::transport {

// ---- PoolAllocator ----------------------------------------------------------------------

PoolAllocator::PoolAllocator(std::uint64_t bytes, std::uint64_t granule)
    : capacity_(0), granule_(granule == 0 ? 1 : granule), free_bytes_(0) {
  // Only whole granules are handed out.
  capacity_ = bytes / granule_ * granule_;
  if (capacity_ > 0) AddFree(0, capacity_);
}

void PoolAllocator::AddFree(std::uint64_t offset, std::uint64_t length) {
  free_by_offset_.emplace(offset, length);
  free_by_size_.emplace(length, offset);
  free_bytes_ += length;
}

void PoolAllocator::RemoveFree(std::uint64_t offset, std::uint64_t length) {
  free_by_offset_.erase(offset);
  free_by_size_.erase({length, offset});
  free_bytes_ -= length;
}

std::optional<std::uint64_t> PoolAllocator::Allocate(std::uint64_t nbytes) {
  if (nbytes == 0 || nbytes > capacity_) return std::nullopt;
  const std::uint64_t length = (nbytes + granule_ - 1) / granule_ * granule_;
  // The smallest free range that holds it (lowest offset among equals).
  auto it = free_by_size_.lower_bound({length, 0});
  if (it == free_by_size_.end()) return std::nullopt;
  const std::uint64_t range_length = it->first;
  const std::uint64_t offset = it->second;
  RemoveFree(offset, range_length);
  if (range_length > length) AddFree(offset + length, range_length - length);
  used_.emplace(offset, length);
  return offset;
}

bool PoolAllocator::Free(std::uint64_t offset) {
  auto used = used_.find(offset);
  if (used == used_.end()) return false;
  std::uint64_t start = offset;
  std::uint64_t length = used->second;
  used_.erase(used);
  // Merge with the free range after it and the one before it.
  auto next = free_by_offset_.find(start + length);
  if (next != free_by_offset_.end()) {
    const std::uint64_t next_length = next->second;
    RemoveFree(start + length, next_length);
    length += next_length;
  }
  auto after = free_by_offset_.lower_bound(start);
  if (after != free_by_offset_.begin()) {
    auto before = std::prev(after);
    if (before->first + before->second == start) {
      const std::uint64_t before_start = before->first;
      const std::uint64_t before_length = before->second;
      RemoveFree(before_start, before_length);
      start = before_start;
      length += before_length;
    }
  }
  AddFree(start, length);
  return true;
}

std::uint64_t PoolAllocator::largest_free() const {
  return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
}

// ---- SharedPool -------------------------------------------------------------------------

SharedPool::SharedPool(void* base, std::uint64_t bytes, bool unmap_at_end)
    : base_(static_cast<unsigned char*>(base)),
      bytes_(bytes),
      unmap_at_end_(unmap_at_end),
      allocator_(bytes) {}

std::shared_ptr<SharedPool> SharedPool::Adopt(void* base, std::uint64_t bytes, bool unmap_at_end) {
  return std::shared_ptr<SharedPool>(new SharedPool(base, bytes, unmap_at_end));
}

SharedPool::~SharedPool() {
  if (unmap_at_end_ && base_ != nullptr) munmap(base_, bytes_);
}

std::shared_ptr<PoolBlock> SharedPool::Allocate(std::uint64_t nbytes, std::uint64_t keep_free) {
  std::optional<std::uint64_t> offset;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || nbytes == 0 || allocator_.free_bytes() < keep_free ||
        allocator_.free_bytes() - keep_free < nbytes) {
      ++refusals_;
      return nullptr;
    }
    offset = allocator_.Allocate(nbytes);
    if (!offset) {
      ++refusals_;
      return nullptr;
    }
    ++allocations_;
  }
  return std::make_shared<PoolBlock>(shared_from_this(), *offset, nbytes);
}

void SharedPool::Free(std::uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  (void)allocator_.Free(offset);
}

void SharedPool::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

SharedPool::Stats SharedPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s;
  s.capacity = allocator_.capacity();
  s.free_bytes = allocator_.free_bytes();
  s.largest_free = allocator_.largest_free();
  s.blocks = allocator_.blocks();
  s.allocations = allocations_;
  s.refusals = refusals_;
  s.closed = closed_;
  return s;
}

}  // namespace genie::transport
