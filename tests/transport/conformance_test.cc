// File: tests/transport/conformance_test.cc
// One conformance suite for the transport concept, instantiated for every backend
// (TYPED_TEST_SUITE over the policies): frames, gather sends, receive into caller memory,
// ordering, byte accounting, timeouts, peer close, refusal of bad frames, authentication.
// A new backend joins by adding a PairMaker specialization and its policy to TransportPolicies.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "genie/transport/auth.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/inprocess.h"
#include "genie/transport/policies.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"
#include "genie/transport/testing/transport_testing.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

using testing::Contains;
using testing::Pattern;

template <class P>
using ConnPair = std::pair<Connection<P>, Connection<P>>;

// Makes a connected pair (first = client side, second = server side) for one policy.
template <class P>
struct PairMaker;

template <>
struct PairMaker<InProcess> {
  static absl::StatusOr<ConnPair<InProcess>> Make(const ConnectionOptions& options) {
    return Connection<InProcess>::CreatePair(options);
  }
};

// A loopback pair for a Tcp policy.
template <class P>
struct TcpPairMaker {
  static absl::StatusOr<ConnPair<P>> Make(const ConnectionOptions& options) {
    auto listener = Listener<P>::Create("127.0.0.1", 0);
    if (!listener.ok()) return listener.status();
    // The kernel completes the handshake from the backlog, so connect-then-accept works on
    // one thread.
    auto client = Connection<P>::Connect("127.0.0.1", listener->port(), absl::Seconds(5), options);
    if (!client.ok()) return client.status();
    auto server = listener->Accept(absl::Seconds(5), options);
    if (!server.ok()) return server.status();
    return ConnPair<P>(std::move(*client), std::move(*server));
  }
};

template <>
struct PairMaker<Tcp> : TcpPairMaker<Tcp> {};

// Tcp with lanes: the pair opens 4 sockets in all, and every frame of 64 KiB or more is
// striped over them, so the suite's large frames, gathers and split receives cross lanes.
struct TcpLanes4 : Tcp {
  static constexpr int kLanes = 4;
  static constexpr std::uint64_t kStripeMinBytes = std::uint64_t{64} << 10;
  static constexpr bool kLanesByCores = false;  // lanes on any machine
};

template <>
struct PairMaker<TcpLanes4> {
  static absl::StatusOr<ConnPair<TcpLanes4>> Make(const ConnectionOptions& options) {
    absl::StatusOr<ConnPair<TcpLanes4>> pair = TcpPairMaker<TcpLanes4>::Make(options);
    if (!pair.ok()) return pair.status();
    Connection<TcpLanes4>& client = pair->first;
    Connection<TcpLanes4>& server = pair->second;
    absl::StatusOr<LaneResult> opened = absl::UnknownError("not run");
    std::thread client_side([&] { opened = client.OpenLanes(absl::Seconds(5)); });
    absl::StatusOr<FrameHeader> request = server.ReceiveHeader(absl::Seconds(5));
    absl::StatusOr<LaneResult> accepted =
        request.ok() ? server.AcceptLanes(*request, 8, absl::Seconds(5)) : request.status();
    client_side.join();
    if (!opened.ok()) return opened.status();
    if (!accepted.ok()) return accepted.status();
    if (opened->lanes != 4 || accepted->lanes != 4 || client.lane_count() != 4 ||
        server.lane_count() != 4) {
      return absl::InternalError(absl::StrCat("lanes: client ", opened->lanes, " (", opened->note,
                                              "), server ", accepted->lanes, " (", accepted->note,
                                              ")"));
    }
    return pair;
  }
};

// Shm with its tensor pool (the default) and without one (ShmRingsOnly): the frames are the
// same either way.
template <class P>
struct ShmPairMaker {
  static absl::StatusOr<ConnPair<P>> Make(const ConnectionOptions& options) {
    static std::atomic<int> counter{0};
    const std::string path =
        "/tmp/genie-conformance-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    auto listener = Listener<P>::Create(path);
    if (!listener.ok()) return listener.status();
    // The rings travel in the client's first message, which waits in the socket until
    // Accept: connect-then-accept works on one thread.
    auto client = Connection<P>::Connect(path, absl::Seconds(5), options);
    if (!client.ok()) return client.status();
    auto server = listener->Accept(absl::Seconds(5), options);
    if (!server.ok()) return server.status();
    if ((client->pool() != nullptr) != (transport_traits<P>::pool_bytes != 0) ||
        (server->pool() != nullptr) != (transport_traits<P>::pool_bytes != 0)) {
      return absl::InternalError("the connection's pool does not match the policy");
    }
    return ConnPair<P>(std::move(*client), std::move(*server));
  }
};

template <>
struct PairMaker<Shm> : ShmPairMaker<Shm> {};
template <>
struct PairMaker<ShmRingsOnly> : ShmPairMaker<ShmRingsOnly> {};

template <class P>
class TransportConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pair = PairMaker<P>::Make(options_);
    ASSERT_TRUE(pair.ok()) << pair.status();
    a_.emplace(std::move(pair->first));
    b_.emplace(std::move(pair->second));
  }
  Connection<P>& a() { return *a_; }
  Connection<P>& b() { return *b_; }

  ConnectionOptions options_;
  std::optional<Connection<P>> a_;
  std::optional<Connection<P>> b_;
};

using TransportPolicies = ::testing::Types<InProcess, Tcp, TcpLanes4, Shm, ShmRingsOnly>;

class PolicyNames {
 public:
  template <class P>
  static std::string GetName(int) {
    if (std::is_same_v<P, ShmRingsOnly>) return "shm_rings_only";
    if (std::is_same_v<P, TcpLanes4>) return "tcp_lanes";
    return std::string(transport_traits<P>::name);
  }
};

TYPED_TEST_SUITE(TransportConformance, TransportPolicies, PolicyNames);

constexpr absl::Duration kWait = absl::Seconds(10);
const std::string kKey = "0123456789abcdef0123456789abcdef";

TYPED_TEST(TransportConformance, SmallFrameRoundTrip) {
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kRun, 42, "hello node").ok());
  auto frame = this->b().Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->header.kind, MessageKind::kRun);
  EXPECT_EQ(frame->header.request_id, 42u);
  EXPECT_EQ(frame->header.traffic, TrafficClass::kControl);
  EXPECT_EQ(frame->payload, "hello node");
  // And back the other way, with an empty payload.
  ASSERT_TRUE(this->b().SendBytes(MessageKind::kPong, 43, "").ok());
  auto pong = this->a().Receive(kWait);
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
  EXPECT_EQ(pong->header.payload_bytes, 0u);
}

TYPED_TEST(TransportConformance, LargeFrame64MiBIntoCallerMemory) {
  constexpr std::size_t kBytes = std::size_t{64} << 20;
  const std::vector<unsigned char> data = Pattern(kBytes, 7);
  absl::Status send_status;
  std::thread sender([&] {
    const Piece piece{data.data(), data.size()};
    send_status = this->a().Send(MessageKind::kTransfer, 9, absl::MakeConstSpan(&piece, 1),
                                 TrafficClass::kWeights);
  });
  auto header = this->b().ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->payload_bytes, kBytes);
  EXPECT_EQ(header->traffic, TrafficClass::kWeights);
  std::vector<unsigned char> dst(kBytes);  // the caller's final buffer
  EXPECT_TRUE(this->b().ReceivePayload(dst.data(), dst.size()).ok());
  sender.join();
  ASSERT_TRUE(send_status.ok()) << send_status;
  EXPECT_TRUE(dst == data);
}

TYPED_TEST(TransportConformance, LargeGatheredFrameReadInUnevenSlices) {
  // 3 MiB and 5 bytes from 7 pieces, read back in slices whose edges fall anywhere (on a
  // connection with lanes, across lane boundaries), then a small frame: the stream stays in
  // step and both sides count the same bytes.
  std::vector<std::vector<unsigned char>> buffers;
  std::vector<Piece> pieces;
  std::vector<unsigned char> expected;
  for (std::size_t size :
       {std::size_t{1}, std::size_t{700001}, std::size_t{0}, std::size_t{1} << 20,
        std::size_t{4093}, std::size_t{1300000}, std::size_t{93062}}) {
    buffers.push_back(Pattern(size, static_cast<unsigned>(size)));
  }
  for (const auto& buf : buffers) {
    pieces.push_back({buf.data(), buf.size()});
    expected.insert(expected.end(), buf.begin(), buf.end());
  }
  ASSERT_EQ(expected.size(), std::size_t{3145733});
  const TrafficSnapshot sent_before = this->a().counters().Snapshot();
  absl::Status send_status;
  std::thread sender([&] {
    send_status = this->a().Send(MessageKind::kTransfer, 11, pieces, TrafficClass::kActivations);
    if (send_status.ok()) send_status = this->a().SendBytes(MessageKind::kPing, 12, "after");
  });
  auto header = this->b().ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->payload_bytes, expected.size());
  std::vector<unsigned char> got(expected.size());
  std::size_t at = 0;
  for (std::size_t slice : {std::size_t{3}, std::size_t{786429}, std::size_t{5},
                            std::size_t{1000000}, std::size_t{1}}) {
    ASSERT_TRUE(this->b().ReceivePayload(got.data() + at, slice).ok());
    at += slice;
  }
  ASSERT_TRUE(this->b().ReceivePayload(got.data() + at, got.size() - at).ok());
  auto next = this->b().Receive(kWait);
  sender.join();
  ASSERT_TRUE(send_status.ok()) << send_status;
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->payload, "after");
  EXPECT_TRUE(got == expected);
  const TrafficSnapshot sent = this->a().counters().Snapshot() - sent_before;
  const TrafficSnapshot received = this->b().counters().Snapshot();
  EXPECT_EQ(sent.Bytes(Direction::kSent, TrafficClass::kActivations),
            received.Bytes(Direction::kReceived, TrafficClass::kActivations));
}

TYPED_TEST(TransportConformance, GatherSendOfManyPieces) {
  // Several pieces of different sizes, one empty, more pieces than one iovec window.
  std::vector<std::vector<unsigned char>> buffers;
  std::vector<Piece> pieces;
  std::string expected;
  for (int i = 0; i < 150; ++i) {
    buffers.push_back(Pattern(static_cast<std::size_t>(i * 37 % 1000), i));
  }
  buffers[3].clear();
  for (const auto& buf : buffers) {
    pieces.push_back({buf.data(), buf.size()});
    expected.append(buf.begin(), buf.end());
  }
  ASSERT_TRUE(this->a().Send(MessageKind::kLoadProgram, 5, pieces).ok());
  auto frame = this->b().Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->header.payload_bytes, expected.size());
  EXPECT_TRUE(frame->payload == expected);
}

TYPED_TEST(TransportConformance, PayloadSplitAcrossCallerBuffers) {
  const std::string meta = "shape=[2,3]";
  const std::vector<unsigned char> tensor = Pattern(4096, 3);
  const Piece pieces[] = {{meta.data(), meta.size()}, {tensor.data(), tensor.size()}};
  ASSERT_TRUE(this->a().Send(MessageKind::kResult, 77, pieces, TrafficClass::kActivations).ok());
  auto header = this->b().ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  std::string got_meta(meta.size(), '\0');
  std::vector<unsigned char> got_tensor(tensor.size());
  ASSERT_TRUE(this->b().ReceivePayload(got_meta.data(), got_meta.size()).ok());
  // Asking for more than the frame holds is refused without breaking the connection.
  absl::Status too_much = this->b().ReceivePayload(got_tensor.data(), tensor.size() + 1);
  EXPECT_TRUE(absl::IsInvalidArgument(too_much)) << too_much;
  EXPECT_FALSE(this->b().broken());
  // A header before the payload is consumed is refused too.
  EXPECT_TRUE(absl::IsFailedPrecondition(this->b().ReceiveHeader(kWait).status()));
  ASSERT_TRUE(this->b().ReceivePayload(got_tensor.data(), got_tensor.size()).ok());
  EXPECT_EQ(got_meta, meta);
  EXPECT_TRUE(got_tensor == tensor);
}

TYPED_TEST(TransportConformance, DiscardPayloadKeepsStreamInStep) {
  const std::vector<unsigned char> junk = Pattern(100000, 1);
  const Piece piece{junk.data(), junk.size()};
  ASSERT_TRUE(this->a().Send(MessageKind::kStats, 1, absl::MakeConstSpan(&piece, 1)).ok());
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kPing, 2, "next").ok());
  ASSERT_TRUE(this->b().ReceiveHeader(kWait).ok());
  ASSERT_TRUE(this->b().DiscardPayload().ok());
  auto next = this->b().Receive(kWait);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->header.request_id, 2u);
  EXPECT_EQ(next->payload, "next");
}

TYPED_TEST(TransportConformance, ManyFramesInOrderWithRequestIds) {
  constexpr int kFrames = 2000;
  absl::Status send_status;
  std::thread sender([&] {
    for (int i = 0; i < kFrames && send_status.ok(); ++i) {
      const std::string payload = std::to_string(i);
      send_status = this->a().SendBytes(i % 2 ? MessageKind::kRun : MessageKind::kRelease,
                                        std::uint64_t{1000000} + i, payload,
                                        static_cast<TrafficClass>(i % kNumTrafficClasses));
    }
  });
  for (int i = 0; i < kFrames; ++i) {
    auto frame = this->b().Receive(kWait);
    ASSERT_TRUE(frame.ok()) << "frame " << i << ": " << frame.status();
    ASSERT_EQ(frame->header.request_id, std::uint64_t{1000000} + i);
    ASSERT_EQ(frame->header.kind, i % 2 ? MessageKind::kRun : MessageKind::kRelease);
    ASSERT_EQ(frame->header.traffic, static_cast<TrafficClass>(i % kNumTrafficClasses));
    ASSERT_EQ(frame->payload, std::to_string(i));
  }
  sender.join();
  EXPECT_TRUE(send_status.ok()) << send_status;
}

// Several frames in one write (a node's Result and its outputs, a client's Run and its
// uploads) arrive as ordinary frames, in order, counted per class; a batch with a frame
// large enough to stripe over Tcp lanes goes out frame by frame and arrives the same way.
TYPED_TEST(TransportConformance, FramesSentTogetherArriveAsOrdinaryFramesInOrder) {
  for (const std::size_t big : {std::size_t{100000}, std::size_t{3} << 20}) {
    SCOPED_TRACE(big);
    const TrafficSnapshot a0 = this->a().counters().Snapshot();
    const TrafficSnapshot b0 = this->b().counters().Snapshot();
    const std::string run = "run message";
    const std::vector<unsigned char> x = Pattern(big, 3), y = Pattern(777, 5);
    const Piece run_piece{run.data(), run.size()};
    const Piece uploads[] = {{x.data(), x.size()}, {y.data(), y.size()}};
    const OutFrame frames[] = {{MessageKind::kRun, 7, &run_piece, 1, TrafficClass::kControl},
                               {MessageKind::kTransfer, 7, uploads, 2, TrafficClass::kActivations},
                               {MessageKind::kTransfer, 7, nullptr, 0, TrafficClass::kKvCache}};
    absl::Status send_status;
    std::thread sender([&] { send_status = this->a().SendFrames(frames); });
    auto first = this->b().Receive(kWait);
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(first->header.kind, MessageKind::kRun);
    EXPECT_EQ(first->header.request_id, 7u);
    EXPECT_EQ(first->payload, run);
    auto second = this->b().ReceiveHeader(kWait);
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(second->kind, MessageKind::kTransfer);
    EXPECT_EQ(second->traffic, TrafficClass::kActivations);
    ASSERT_EQ(second->payload_bytes, x.size() + y.size());
    std::vector<unsigned char> got(x.size() + y.size());
    ASSERT_TRUE(this->b().ReceivePayload(got.data(), got.size()).ok());
    EXPECT_TRUE(std::equal(x.begin(), x.end(), got.begin()));
    EXPECT_TRUE(std::equal(y.begin(), y.end(), got.begin() + x.size()));
    auto third = this->b().Receive(kWait);
    ASSERT_TRUE(third.ok()) << third.status();
    EXPECT_EQ(third->header.traffic, TrafficClass::kKvCache);
    EXPECT_EQ(third->header.payload_bytes, 0u);
    sender.join();
    ASSERT_TRUE(send_status.ok()) << send_status;
    const TrafficSnapshot da = this->a().counters().Snapshot() - a0;
    const TrafficSnapshot db = this->b().counters().Snapshot() - b0;
    EXPECT_EQ(da.TotalFrames(Direction::kSent), 3u);
    EXPECT_EQ(da.Bytes(Direction::kSent, TrafficClass::kActivations),
              x.size() + y.size() + kFrameHeaderBytes);
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      const auto tc = static_cast<TrafficClass>(c);
      EXPECT_EQ(da.Bytes(Direction::kSent, tc), db.Bytes(Direction::kReceived, tc)) << c;
      EXPECT_EQ(da.Frames(Direction::kSent, tc), db.Frames(Direction::kReceived, tc)) << c;
    }
  }
}

TYPED_TEST(TransportConformance, CountersAgreePerClassAndDirection) {
  const TrafficSnapshot a0 = this->a().counters().Snapshot();
  const TrafficSnapshot b0 = this->b().counters().Snapshot();
  const std::vector<unsigned char> w = Pattern(10000, 1);
  const Piece weights{w.data(), w.size()};
  ASSERT_TRUE(
      this->a()
          .Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&weights, 1), TrafficClass::kWeights)
          .ok());
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kRun, 2, "run", TrafficClass::kControl).ok());
  ASSERT_TRUE(
      this->a()
          .SendBytes(MessageKind::kTransfer, 3, std::string(500, 'k'), TrafficClass::kKvCache)
          .ok());
  ASSERT_TRUE(
      this->b()
          .SendBytes(MessageKind::kResult, 2, std::string(300, 'r'), TrafficClass::kActivations)
          .ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(this->b().Receive(kWait).ok());
  ASSERT_TRUE(this->a().Receive(kWait).ok());

  const TrafficSnapshot da = this->a().counters().Snapshot() - a0;
  const TrafficSnapshot db = this->b().counters().Snapshot() - b0;
  for (int c = 0; c < kNumTrafficClasses; ++c) {
    const auto tc = static_cast<TrafficClass>(c);
    EXPECT_EQ(da.Bytes(Direction::kSent, tc), db.Bytes(Direction::kReceived, tc)) << c;
    EXPECT_EQ(db.Bytes(Direction::kSent, tc), da.Bytes(Direction::kReceived, tc)) << c;
    EXPECT_EQ(da.Frames(Direction::kSent, tc), db.Frames(Direction::kReceived, tc)) << c;
    EXPECT_EQ(db.Frames(Direction::kSent, tc), da.Frames(Direction::kReceived, tc)) << c;
  }
  EXPECT_EQ(da.Bytes(Direction::kSent, TrafficClass::kWeights), 10000 + kFrameHeaderBytes);
  EXPECT_EQ(da.Bytes(Direction::kSent, TrafficClass::kControl), 3 + kFrameHeaderBytes);
  EXPECT_EQ(da.Bytes(Direction::kSent, TrafficClass::kKvCache), 500 + kFrameHeaderBytes);
  EXPECT_EQ(da.Bytes(Direction::kReceived, TrafficClass::kActivations), 300 + kFrameHeaderBytes);
  EXPECT_EQ(da.TotalFrames(Direction::kSent), 3u);
  EXPECT_NE(da.ToString().find("weights"), std::string::npos) << da.ToString();
}

TYPED_TEST(TransportConformance, IdleReceiveTimesOutPromptlyAndStaysUsable) {
  const absl::Time start = absl::Now();
  auto header = this->b().ReceiveHeader(absl::Milliseconds(100));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsDeadlineExceeded(header.status())) << header.status();
  EXPECT_GE(took, absl::Milliseconds(95));
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_FALSE(this->b().broken());
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kPing, 1, "still here").ok());
  auto frame = this->b().Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload, "still here");
}

TYPED_TEST(TransportConformance, PeerCloseIsAClearErrorNotAHang) {
  this->a().Close();
  const absl::Time start = absl::Now();
  auto header = this->b().ReceiveHeader(kWait);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(absl::IsUnavailable(header.status())) << header.status();
  EXPECT_TRUE(Contains(header.status(), "peer closed the connection")) << header.status();
  // The closing side refuses further use with its own clear error.
  absl::Status s = this->a().SendBytes(MessageKind::kPing, 1, "x");
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_TRUE(Contains(s, "closed by this side")) << s;
  // The other side's sends fail (maybe after what the kernel already buffered).
  absl::Status send;
  for (int i = 0; i < 100 && send.ok(); ++i) {
    send = this->b().SendBytes(MessageKind::kPing, 1, std::string(4096, 'x'));
  }
  EXPECT_FALSE(send.ok());
}

TYPED_TEST(TransportConformance, PeerDestroyedMidFrame) {
  // Header promises 1000 bytes; the peer sends 10 and goes away.
  FrameHeader h;
  h.kind = MessageKind::kTransfer;
  h.payload_bytes = 1000;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  std::string raw(reinterpret_cast<const char*>(wire), sizeof(wire));
  raw.append(10, 'p');
  ASSERT_TRUE(this->a().WriteRawForTesting(raw).ok());
  this->a_.reset();
  auto header = this->b().ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  std::vector<char> dst(1000);
  absl::Status s = this->b().ReceivePayload(dst.data(), dst.size());
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(Contains(s, "990 payload bytes of a frame missing")) << s;
  EXPECT_TRUE(this->b().broken());
}

TYPED_TEST(TransportConformance, BadMagicRefusedAndConnectionBroken) {
  ASSERT_TRUE(this->a().WriteRawForTesting("GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok());
  auto header = this->b().ReceiveHeader(kWait);
  EXPECT_TRUE(absl::IsDataLoss(header.status())) << header.status();
  EXPECT_TRUE(Contains(header.status(), "bad magic")) << header.status();
  EXPECT_TRUE(this->b().broken());
  auto again = this->b().Receive(kWait);
  EXPECT_TRUE(Contains(again.status(), "connection is broken")) << again.status();
  // The refusing side closed: the sender learns it.
  auto peer_view = this->a().ReceiveHeader(kWait);
  EXPECT_TRUE(absl::IsUnavailable(peer_view.status())) << peer_view.status();
}

TYPED_TEST(TransportConformance, BadVersionRefused) {
  FrameHeader h;
  h.kind = MessageKind::kPing;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  wire[4] = 0x07;  // version 7
  ASSERT_TRUE(
      this->a()
          .WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(wire), sizeof(wire)))
          .ok());
  auto header = this->b().ReceiveHeader(kWait);
  EXPECT_TRUE(absl::IsFailedPrecondition(header.status())) << header.status();
  EXPECT_TRUE(Contains(header.status(), "version 7")) << header.status();
  EXPECT_TRUE(this->b().broken());
}

TYPED_TEST(TransportConformance, OversizedHeaderRefused) {
  FrameHeader h;
  h.kind = MessageKind::kTransfer;
  h.payload_bytes = transport_traits<TypeParam>::max_frame_bytes + 1;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  ASSERT_TRUE(
      this->a()
          .WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(wire), sizeof(wire)))
          .ok());
  auto header = this->b().ReceiveHeader(kWait);
  EXPECT_TRUE(absl::IsResourceExhausted(header.status())) << header.status();
  EXPECT_TRUE(Contains(header.status(), "max frame size")) << header.status();
  EXPECT_TRUE(this->b().broken());
}

TYPED_TEST(TransportConformance, OversizedSendRefusedLocally) {
  // 17 pieces aliasing one 64 MiB buffer: 1088 MiB, above the 1 GiB max; nothing is written.
  std::vector<unsigned char> block(std::size_t{64} << 20);
  std::vector<Piece> pieces(17, Piece{block.data(), block.size()});
  absl::Status s = this->a().Send(MessageKind::kTransfer, 1, pieces, TrafficClass::kWeights);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(Contains(s, "max frame size")) << s;
  EXPECT_FALSE(this->a().broken());
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kPing, 2, "ok").ok());
  auto frame = this->b().Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->header.request_id, 2u);
}

// Runs the server side on a thread, the client side here.
template <class P>
std::pair<absl::Status, absl::Status> Handshake(Connection<P>& client, Connection<P>& server,
                                                const std::string& client_key,
                                                const std::string& server_key) {
  absl::Status server_status;
  std::thread t([&] { server_status = AuthenticateServer(server, server_key, kWait); });
  absl::Status client_status = AuthenticateClient(client, client_key, kWait);
  t.join();
  return {client_status, server_status};
}

TYPED_TEST(TransportConformance, AuthSucceedsAndFramesStillFlow) {
  const TrafficSnapshot before = this->a().counters().Snapshot();  // a lane handshake's frames
  auto [client, server] = Handshake(this->a(), this->b(), kKey, kKey);
  ASSERT_TRUE(client.ok()) << client;
  ASSERT_TRUE(server.ok()) << server;
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kRun, 11, "after auth").ok());
  auto frame = this->b().Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload, "after auth");
  ASSERT_TRUE(this->b().SendBytes(MessageKind::kResult, 11, "reply").ok());
  auto reply = this->a().Receive(kWait);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->payload, "reply");
  // The handshake is control traffic, counted like any other.
  const TrafficSnapshot sent = this->a().counters().Snapshot() - before;
  EXPECT_EQ(sent.Frames(Direction::kSent, TrafficClass::kControl), 3u);
}

TYPED_TEST(TransportConformance, AuthWrongKeyRefusedOnBothSides) {
  auto [client, server] =
      Handshake(this->a(), this->b(), kKey, std::string("another key of 32 bytes........"));
  EXPECT_TRUE(absl::IsUnauthenticated(client)) << client;
  EXPECT_TRUE(absl::IsUnauthenticated(server)) << server;
  EXPECT_TRUE(Contains(client, "key mismatch")) << client;
  EXPECT_TRUE(Contains(server, "key mismatch")) << server;
  EXPECT_TRUE(this->a().broken());
  EXPECT_TRUE(this->b().broken());
}

TYPED_TEST(TransportConformance, AuthClientRejectsServerWithoutKey) {
  // An impostor node: answers with a challenge and a kAuthOk whose proof is garbage.
  std::thread impostor([&] {
    auto hello = this->b().Receive(kWait);
    if (!hello.ok()) return;
    (void)this->b().SendBytes(MessageKind::kChallenge, 0, std::string(32, 'c'));
    auto response = this->b().Receive(kWait);
    if (!response.ok()) return;
    (void)this->b().SendBytes(MessageKind::kAuthOk, 0, std::string(32, 'z'));
  });
  absl::Status s = AuthenticateClient(this->a(), kKey, kWait);
  impostor.join();
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
  EXPECT_TRUE(Contains(s, "could not prove")) << s;
  EXPECT_TRUE(this->a().broken());
}

TYPED_TEST(TransportConformance, AuthServerRefusesUnauthenticatedTraffic) {
  ASSERT_TRUE(this->a().SendBytes(MessageKind::kRun, 1, "sneaky").ok());
  absl::Status s = AuthenticateServer(this->b(), kKey, kWait);
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
  EXPECT_TRUE(Contains(s, "expected kHello, got kRun")) << s;
}

TYPED_TEST(TransportConformance, AuthTimesOutWhenClientIsSilent) {
  const absl::Time start = absl::Now();
  absl::Status s = AuthenticateServer(this->b(), kKey, absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TYPED_TEST(TransportConformance, AuthRefusesShortKey) {
  absl::Status s = AuthenticateClient(this->a(), "short", kWait);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(Contains(s, "at least 16")) << s;
}

}  // namespace
}  // namespace genie::transport
