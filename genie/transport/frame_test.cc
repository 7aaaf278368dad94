// File: genie/transport/frame_test.cc
// Frame header encoding/validation and TrafficCounters arithmetic and formatting.
#include "genie/transport/frame.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "genie/transport/counters.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

TEST(Frame, HeaderRoundTrip) {
  FrameHeader h;
  h.kind = MessageKind::kTransfer;
  h.traffic = TrafficClass::kKvCache;
  h.payload_bytes = 0x0102030405ull;
  h.request_id = 0xfedcba9876543210ull;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  EXPECT_EQ(wire[0], 0x47);  // 'G', little-endian magic
  auto back = DecodeFrameHeader(wire, std::uint64_t{1} << 40, "test");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, MessageKind::kTransfer);
  EXPECT_EQ(back->traffic, TrafficClass::kKvCache);
  EXPECT_EQ(back->payload_bytes, h.payload_bytes);
  EXPECT_EQ(back->request_id, h.request_id);
  EXPECT_FALSE(back->striped);

  h.striped = true;
  EncodeFrameHeader(h, wire);
  back = DecodeFrameHeader(wire, std::uint64_t{1} << 40, "test");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->striped);
  EXPECT_EQ(back->traffic, TrafficClass::kKvCache);  // the flag leaves the class alone
}

TEST(Frame, StripeChunksCoverThePayloadPageAligned) {
  for (std::uint64_t n : {std::uint64_t{1}, std::uint64_t{4096}, std::uint64_t{4816896},
                          std::uint64_t{3145728} + 7}) {
    for (int lanes : {1, 2, 3, 4, 8}) {
      const std::uint64_t c = StripeChunkBytes(n, lanes);
      EXPECT_EQ(c % 4096, 0u) << n << " " << lanes;
      EXPECT_GE(c * static_cast<std::uint64_t>(lanes), n) << n << " " << lanes;
      // Even: no lane carries a page more than an exact split would give it.
      const std::uint64_t exact = (n + lanes - 1) / static_cast<std::uint64_t>(lanes);
      EXPECT_LT(c, exact + 4096) << n << " " << lanes;
    }
  }
}

TEST(Frame, RefusesBadHeaders) {
  FrameHeader h;
  h.kind = MessageKind::kRun;
  unsigned char wire[kFrameHeaderBytes];

  EncodeFrameHeader(h, wire);
  wire[0] ^= 0xff;
  auto s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find("bad magic"), std::string_view::npos) << s;

  EncodeFrameHeader(h, wire);
  wire[4] = 9;
  s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("version 9"), std::string_view::npos) << s;

  EncodeFrameHeader(h, wire);
  wire[6] = 200;
  s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;

  EncodeFrameHeader(h, wire);
  wire[7] = 0x80;
  s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;

  EncodeFrameHeader(h, wire);
  wire[7] = 0x10;  // the first reserved bit after the striped flag
  s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;

  h.payload_bytes = 1025;
  EncodeFrameHeader(h, wire);
  s = DecodeFrameHeader(wire, 1024, "test").status();
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("max frame size of 1024"), std::string_view::npos) << s;
}

TEST(Frame, Names) {
  EXPECT_EQ(MessageKindName(MessageKind::kAuthResponse), "kAuthResponse");
  EXPECT_EQ(TrafficClassName(TrafficClass::kKvCache), "kv_cache");
}

TEST(TrafficCounters, SnapshotDeltaAndString) {
  TrafficCounters c;
  c.AddBytes(Direction::kSent, TrafficClass::kWeights, 3 << 20);
  c.AddFrame(Direction::kSent, TrafficClass::kWeights);
  const TrafficSnapshot before = c.Snapshot();
  c.AddBytes(Direction::kSent, TrafficClass::kControl, 24);
  c.AddFrame(Direction::kSent, TrafficClass::kControl);
  c.AddBytes(Direction::kReceived, TrafficClass::kActivations, 100);
  c.AddFrame(Direction::kReceived, TrafficClass::kActivations);
  const TrafficSnapshot delta = c.Snapshot() - before;
  EXPECT_EQ(delta.Bytes(Direction::kSent, TrafficClass::kWeights), 0u);
  EXPECT_EQ(delta.Bytes(Direction::kSent, TrafficClass::kControl), 24u);
  EXPECT_EQ(delta.TotalFrames(Direction::kSent), 1u);
  EXPECT_EQ(delta.TotalBytes(Direction::kReceived), 100u);
  EXPECT_EQ(delta.ToString(),
            "sent 24 B in 1 frames (control 24 B); received 100 B in 1 frames (activations "
            "100 B)");
  EXPECT_EQ(c.Snapshot().ToString(),
            "sent 3.00 MiB in 2 frames (control 24 B, weights 3.00 MiB); received 100 B in 1 "
            "frames (activations 100 B)");
  TrafficCounters copy = c;
  EXPECT_EQ(copy.Snapshot(), c.Snapshot());
}

}  // namespace
}  // namespace genie::transport
