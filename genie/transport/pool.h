// File: genie/transport/pool.h
// A tensor pool in shared memory beside a connection's rings (Shm with P::kPoolBytes > 0):
// one memfd the connecting side creates and both sides map, so a tensor's bytes are placed
// once and read or written where they lie, instead of being copied into a ring and out again.
//
// The connecting side (the client) owns the pool: it allocates blocks (PoolAllocator, best
// fit over free ranges, 4 KiB granules) and names them to the peer as (offset, bytes)
// references inside its messages (genie/plan/messages.h); the peer only checks that a
// reference lies inside the pool and reads or writes it. A block goes back to the pool when
// its last PoolBlock reference dies, so an output tensor that aliases a block may outlive
// the run, the executor and the connection (the mapping stays until the last block is gone).
//
//   std::shared_ptr<SharedPool> pool = conn.pool();            // null: no pool
//   std::shared_ptr<PoolBlock> block = pool->Allocate(nbytes);  // null: full, use the ring
//   std::memcpy(block->data(), src, nbytes);
//   ... send {block->offset(), nbytes} to the peer; keep `block` until the peer answered ...
//
// Generic code reads the pool of any connection with PoolOf(conn) (null for transports
// without one). No libtorch here.
#ifndef GENIE_TRANSPORT_POOL_H_
#define GENIE_TRANSPORT_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"

namespace genie::transport {

// Offsets and sizes in a region of `bytes`, in granules of `granule` bytes (a power of two;
// every offset handed out is a multiple of it). Best fit: the smallest free range that
// holds the request, split from its start; freed ranges merge with free neighbours. Not
// thread-safe (SharedPool locks around it).
class PoolAllocator {
 public:
  explicit PoolAllocator(std::uint64_t bytes, std::uint64_t granule = 4096);

  // The offset of a block of at least `nbytes` (> 0), or nullopt when no free range holds it.
  std::optional<std::uint64_t> Allocate(std::uint64_t nbytes);
  // Returns a block Allocate handed out; false (and nothing changes) for any other offset.
  bool Free(std::uint64_t offset);

  std::uint64_t capacity() const { return capacity_; }
  std::uint64_t free_bytes() const { return free_bytes_; }
  std::uint64_t largest_free() const;
  std::size_t blocks() const { return used_.size(); }
  std::size_t free_ranges() const { return free_by_offset_.size(); }

 private:
  void AddFree(std::uint64_t offset, std::uint64_t length);
  void RemoveFree(std::uint64_t offset, std::uint64_t length);

  std::uint64_t capacity_;
  std::uint64_t granule_;
  std::uint64_t free_bytes_;
  absl::btree_map<std::uint64_t, std::uint64_t> free_by_offset_;               // offset -> length
  absl::btree_set<std::pair<std::uint64_t, std::uint64_t>> free_by_size_;     // (length, offset)
  absl::flat_hash_map<std::uint64_t, std::uint64_t> used_;                    // offset -> length
};

class PoolBlock;

// One mapped pool: its memory, and on the owning side the allocator over it. Thread-safe.
class SharedPool : public std::enable_shared_from_this<SharedPool> {
 public:
  struct Stats {
    std::uint64_t capacity = 0;
    std::uint64_t free_bytes = 0;
    std::uint64_t largest_free = 0;
    std::size_t blocks = 0;
    std::int64_t allocations = 0;
    std::int64_t refusals = 0;  // Allocate found no room (the caller used the ring)
    bool closed = false;
  };

  // Adopts `bytes` of mapped memory at `base` (unmapped when the pool is destroyed; a null
  // base is never unmapped, for tests over ordinary memory).
  static std::shared_ptr<SharedPool> Adopt(void* base, std::uint64_t bytes,
                                           bool unmap_at_end = true);
  ~SharedPool();
  SharedPool(const SharedPool&) = delete;
  SharedPool& operator=(const SharedPool&) = delete;

  unsigned char* base() const { return base_; }
  std::uint64_t bytes() const { return bytes_; }

  // A block of at least `nbytes` (> 0) that leaves at least `keep_free` bytes free, or null
  // when there is no such room or the pool is closed: the caller then sends through the ring.
  std::shared_ptr<PoolBlock> Allocate(std::uint64_t nbytes, std::uint64_t keep_free = 0);
  // No allocation succeeds from now on. For a connection that was lost while the peer may
  // still read or write blocks of an unfinished run: nothing is ever placed there again.
  void Close();

  // Whether [p, p + n) lies inside the pool, and its offset there.
  bool Contains(const void* p, std::size_t n) const {
    const auto* c = static_cast<const unsigned char*>(p);
    return base_ != nullptr && c >= base_ && n <= bytes_ &&
           static_cast<std::uint64_t>(c - base_) <= bytes_ - n;
  }
  std::uint64_t OffsetOf(const void* p) const {
    return static_cast<std::uint64_t>(static_cast<const unsigned char*>(p) - base_);
  }

  Stats stats() const;

 private:
  friend class PoolBlock;
  SharedPool(void* base, std::uint64_t bytes, bool unmap_at_end);
  void Free(std::uint64_t offset);

  unsigned char* base_;
  std::uint64_t bytes_;
  bool unmap_at_end_;
  // std::mutex rather than absl::Mutex: the system Abseil is not built with ThreadSanitizer,
  // which then cannot see its ordering.
  mutable std::mutex mu_;
  PoolAllocator allocator_;  // guarded by mu_
  bool closed_ = false;      // guarded by mu_
  std::int64_t allocations_ = 0;
  std::int64_t refusals_ = 0;
};

// One allocated block; returns to its pool when destroyed (and keeps the pool mapped until
// then).
class PoolBlock {
 public:
  PoolBlock(std::shared_ptr<SharedPool> pool, std::uint64_t offset, std::uint64_t bytes)
      : pool_(std::move(pool)), offset_(offset), bytes_(bytes) {}
  ~PoolBlock() { pool_->Free(offset_); }
  PoolBlock(const PoolBlock&) = delete;
  PoolBlock& operator=(const PoolBlock&) = delete;

  unsigned char* data() const { return pool_->base() + offset_; }
  std::uint64_t offset() const { return offset_; }
  std::uint64_t bytes() const { return bytes_; }  // as requested (the granule may hold more)
  const std::shared_ptr<SharedPool>& pool() const { return pool_; }

 private:
  std::shared_ptr<SharedPool> pool_;
  std::uint64_t offset_;
  std::uint64_t bytes_;
};

namespace pool_internal {
template <class Conn, class = void>
struct HasPool : std::false_type {};
template <class Conn>
struct HasPool<Conn, std::void_t<decltype(std::declval<const Conn&>().pool())>> : std::true_type {};
}  // namespace pool_internal

// The shared pool of `conn`, or null when its transport has none (Tcp, InProcess) or it was
// created without one (P::kPoolBytes == 0).
template <class Conn>
std::shared_ptr<SharedPool> PoolOf(const Conn& conn) {
  if constexpr (pool_internal::HasPool<Conn>::value) {
    return conn.pool();
  } else {
    (void)conn;
    return nullptr;
  }
}

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_POOL_H_
