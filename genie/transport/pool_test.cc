// File: genie/transport/pool_test.cc
// PoolAllocator (best fit, splitting, merging, exhaustion, bad frees), SharedPool (blocks
// return on destruction, keep_free, Close, blocks outliving the pool's owner) and the pool of
// a Shm connection (both ends map the same bytes; none for ShmRingsOnly).
#include "genie/transport/pool.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "genie/transport/shm.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

constexpr std::uint64_t kKiB = 1024;

TEST(PoolAllocator, HandsOutGranuleAlignedDisjointBlocksUntilFull) {
  PoolAllocator a(64 * kKiB, 4 * kKiB);
  std::vector<std::uint64_t> got;
  for (int i = 0; i < 16; ++i) {
    std::optional<std::uint64_t> o = a.Allocate(1 + i % 3);  // tiny: one granule each
    ASSERT_TRUE(o.has_value()) << i;
    EXPECT_EQ(*o % (4 * kKiB), 0u);
    got.push_back(*o);
  }
  std::sort(got.begin(), got.end());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], i * 4 * kKiB);
  EXPECT_EQ(a.free_bytes(), 0u);
  EXPECT_FALSE(a.Allocate(1).has_value());  // full
  EXPECT_TRUE(a.Free(got[3]));
  EXPECT_EQ(a.Allocate(4 * kKiB), got[3]);  // the hole is reused
}

TEST(PoolAllocator, RefusesZeroOversizedAndUnknownFrees) {
  PoolAllocator a(64 * kKiB);
  EXPECT_FALSE(a.Allocate(0).has_value());
  EXPECT_FALSE(a.Allocate(64 * kKiB + 1).has_value());
  std::optional<std::uint64_t> o = a.Allocate(8 * kKiB);
  ASSERT_TRUE(o.has_value());
  EXPECT_FALSE(a.Free(*o + 4 * kKiB));  // inside a block, not its start
  EXPECT_FALSE(a.Free(60 * kKiB));      // free space
  EXPECT_TRUE(a.Free(*o));
  EXPECT_FALSE(a.Free(*o));  // twice
  EXPECT_EQ(a.free_bytes(), 64 * kKiB);
  EXPECT_EQ(a.free_ranges(), 1u);
}

TEST(PoolAllocator, BestFitPicksTheSmallestHoleAndFreesMerge) {
  PoolAllocator a(40 * kKiB, 4 * kKiB);
  // [A 8][B 4][C 12][D 4][E 12]
  const std::uint64_t A = *a.Allocate(8 * kKiB), B = *a.Allocate(4 * kKiB), C = *a.Allocate(12 * kKiB),
                      D = *a.Allocate(4 * kKiB), E = *a.Allocate(12 * kKiB);
  EXPECT_EQ(a.free_bytes(), 0u);
  ASSERT_TRUE(a.Free(A));  // hole of 8
  ASSERT_TRUE(a.Free(C));  // hole of 12
  // 8 KiB fits both holes: best fit takes the 8 KiB one (A's), leaving C's 12 intact.
  EXPECT_EQ(a.Allocate(8 * kKiB), A);
  EXPECT_EQ(a.largest_free(), 12 * kKiB);
  // Freeing B and D merges B+C+D into one range of 20 KiB.
  ASSERT_TRUE(a.Free(B));
  ASSERT_TRUE(a.Free(D));
  EXPECT_EQ(a.largest_free(), 20 * kKiB);
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.Allocate(20 * kKiB), B);
  ASSERT_TRUE(a.Free(E));
  ASSERT_TRUE(a.Free(A));
  ASSERT_TRUE(a.Free(B));
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.largest_free(), 40 * kKiB);
  EXPECT_EQ(a.blocks(), 0u);
}

TEST(PoolAllocator, RandomWorkloadNeverOverlapsAndReturnsToOneRange) {
  const std::uint64_t cap = 1 << 20;
  PoolAllocator a(cap, 256);
  std::mt19937 rng(7);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> live;  // offset, requested
  for (int step = 0; step < 5000; ++step) {
    if (!live.empty() && (rng() % 3 == 0 || a.free_bytes() < cap / 8)) {
      const std::size_t k = rng() % live.size();
      ASSERT_TRUE(a.Free(live[k].first));
      live.erase(live.begin() + static_cast<long>(k));
      continue;
    }
    const std::uint64_t n = 1 + rng() % (cap / 16);
    std::optional<std::uint64_t> o = a.Allocate(n);
    if (!o) continue;
    ASSERT_LE(*o + n, cap);
    for (const auto& [off, len] : live) {
      ASSERT_TRUE(*o + n <= off || off + len <= *o) << "overlap at step " << step;
    }
    live.emplace_back(*o, n);
  }
  for (const auto& [off, len] : live) ASSERT_TRUE(a.Free(off));
  EXPECT_EQ(a.free_bytes(), cap);
  EXPECT_EQ(a.free_ranges(), 1u);
}

TEST(SharedPool, BlocksReturnWhenDroppedAndKeepFreeIsHonoured) {
  std::vector<unsigned char> memory(1 << 20);
  std::shared_ptr<SharedPool> pool = SharedPool::Adopt(memory.data(), memory.size(), false);
  std::shared_ptr<PoolBlock> a = pool->Allocate(300 * kKiB);
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(pool->Contains(a->data(), 300 * kKiB));
  EXPECT_EQ(pool->OffsetOf(a->data()), a->offset());
  EXPECT_FALSE(pool->Contains(a->data(), (1 << 20) + 1));
  EXPECT_FALSE(pool->Contains(memory.data() - 1, 1));
  // 700 KiB would leave less than the 100 KiB asked to stay free.
  EXPECT_EQ(pool->Allocate(700 * kKiB, 100 * kKiB), nullptr);
  EXPECT_NE(pool->Allocate(600 * kKiB, 100 * kKiB), nullptr);  // dropped at once
  EXPECT_EQ(pool->stats().blocks, 1u);
  a.reset();
  EXPECT_EQ(pool->stats().free_bytes, std::uint64_t{1} << 20);
  EXPECT_EQ(pool->stats().refusals, 1);
}

TEST(SharedPool, ClosedPoolRefusesButBlocksStayUsableAndKeepItAlive) {
  std::vector<unsigned char> memory(1 << 20);
  std::shared_ptr<SharedPool> pool = SharedPool::Adopt(memory.data(), memory.size(), false);
  std::shared_ptr<PoolBlock> b = pool->Allocate(4096);
  ASSERT_NE(b, nullptr);
  std::memset(b->data(), 0x5a, 4096);
  pool->Close();
  EXPECT_EQ(pool->Allocate(4096), nullptr);
  std::weak_ptr<SharedPool> weak = pool;
  pool.reset();  // the owner lets go; the block keeps the pool
  ASSERT_FALSE(weak.expired());
  EXPECT_EQ(b->data()[4095], 0x5a);
  b.reset();
  EXPECT_TRUE(weak.expired());
}

TEST(SharedPool, ConcurrentAllocateAndFreeFromManyThreads) {
  std::vector<unsigned char> memory(8 << 20);
  std::shared_ptr<SharedPool> pool = SharedPool::Adopt(memory.data(), memory.size(), false);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        std::shared_ptr<PoolBlock> b = pool->Allocate(4096 * (1 + (i + t) % 7));
        if (b == nullptr) continue;
        std::memset(b->data(), t, b->bytes());
        for (std::uint64_t k = 0; k < b->bytes(); k += 512) bad += b->data()[k] != t;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(pool->stats().blocks, 0u);
  EXPECT_EQ(pool->stats().free_bytes, std::uint64_t{8} << 20);
}

std::string SocketPath() {
  static std::atomic<int> counter{0};
  return absl::StrCat("/tmp/genie-pool-test-", getpid(), "-", counter++);
}

struct SmallPoolShm : Shm {
  static constexpr std::uint64_t kPoolBytes = std::uint64_t{4} << 20;
};

TEST(ShmPool, BothEndsMapTheSameBytesAndTheBlockOutlivesTheConnection) {
  const std::string path = SocketPath();
  auto listener = Listener<SmallPoolShm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  auto client = Connection<SmallPoolShm>::Connect(path, absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  auto server = listener->Accept(absl::Seconds(5));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<SharedPool> mine = client->pool();
  std::shared_ptr<SharedPool> theirs = PoolOf(*server);
  ASSERT_NE(mine, nullptr);
  ASSERT_NE(theirs, nullptr);
  EXPECT_EQ(mine->bytes(), SmallPoolShm::kPoolBytes);
  EXPECT_EQ(theirs->bytes(), SmallPoolShm::kPoolBytes);
  EXPECT_NE(mine->base(), theirs->base());  // two mappings of one memfd

  std::shared_ptr<PoolBlock> block = mine->Allocate(1 << 20);
  ASSERT_NE(block, nullptr);
  for (int i = 0; i < (1 << 20); ++i) block->data()[i] = static_cast<unsigned char>(i * 7);
  const unsigned char* seen = theirs->base() + block->offset();
  for (int i = 0; i < (1 << 20); i += 4093) ASSERT_EQ(seen[i], static_cast<unsigned char>(i * 7));
  // And back: the server writes, the client reads.
  std::memset(theirs->base() + block->offset(), 0xee, 4096);
  EXPECT_EQ(block->data()[100], 0xee);

  // The connections go; the block (an output tensor's memory) stays readable.
  mine.reset();
  theirs.reset();
  client->Close();
  server->Close();
  client = absl::UnavailableError("gone");
  server = absl::UnavailableError("gone");
  EXPECT_EQ(block->data()[100], 0xee);
  EXPECT_EQ(block->data()[5000], static_cast<unsigned char>(5000 * 7));
}

TEST(ShmPool, RingsOnlyPolicyAndOtherTransportsHaveNoPool) {
  const std::string path = SocketPath();
  auto listener = Listener<ShmRingsOnly>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  auto client = Connection<ShmRingsOnly>::Connect(path, absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  auto server = listener->Accept(absl::Seconds(5));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(client->pool(), nullptr);
  EXPECT_EQ(server->pool(), nullptr);
  // Frames still flow.
  ASSERT_TRUE(client->SendBytes(MessageKind::kPing, 1, "no pool").ok());
  auto f = server->Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->payload, "no pool");
}

TEST(ShmPool, PoolOfATransportWithoutOneIsNull) {
  struct NoPoolConn {};
  EXPECT_EQ(PoolOf(NoPoolConn{}), nullptr);
}

}  // namespace
}  // namespace genie::transport
