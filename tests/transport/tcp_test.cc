// File: tests/transport/tcp_test.cc
// Tcp-only behaviour the conformance suite cannot express: ports, connect/accept errors,
// send timeouts against a peer that stops reading, large payloads that trickle in.
#include "genie/transport/tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "genie/core/cpu_cores.h"
#include "genie/transport/internal/tcp_stream.h"
#include "genie/transport/testing/transport_testing.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

using testing::Contains;

TEST(Tcp, EphemeralPortsAreDistinctAndReported) {
  auto l1 = Listener<Tcp>::Create("127.0.0.1", 0);
  auto l2 = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l1.ok()) << l1.status();
  ASSERT_TRUE(l2.ok()) << l2.status();
  EXPECT_NE(l1->port(), 0);
  EXPECT_NE(l1->port(), l2->port());
  EXPECT_EQ(l1->address(), absl::StrCat("127.0.0.1:", l1->port()));
}

TEST(Tcp, ConnectRefusedNamesHostAndPort) {
  std::uint16_t port;
  {
    auto l = Listener<Tcp>::Create("127.0.0.1", 0);
    ASSERT_TRUE(l.ok()) << l.status();
    port = l->port();
  }  // closed: nothing listens there now
  auto c = Connection<Tcp>::Connect("127.0.0.1", port, absl::Seconds(2));
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsUnavailable(c.status())) << c.status();
  EXPECT_TRUE(Contains(c.status(), absl::StrCat("127.0.0.1:", port))) << c.status();
  EXPECT_TRUE(Contains(c.status(), "refused")) << c.status();
}

TEST(Tcp, BadHostIsAClearError) {
  auto c = Connection<Tcp>::Connect("not a host name", 1, absl::Seconds(2));
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "cannot resolve")) << c.status();
}

TEST(Tcp, PortInUseIsAClearError) {
  auto l1 = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l1.ok()) << l1.status();
  auto l2 = Listener<Tcp>::Create("127.0.0.1", l1->port());
  ASSERT_FALSE(l2.ok());
  EXPECT_TRUE(Contains(l2.status(), "bind failed")) << l2.status();
  EXPECT_TRUE(Contains(l2.status(), absl::StrCat(":", l1->port()))) << l2.status();
}

TEST(Tcp, AcceptTimesOut) {
  auto l = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  const absl::Time start = absl::Now();
  auto c = l->Accept(absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(c.status())) << c.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(Tcp, PeersNameEachOther) {
  auto l = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  auto c = Connection<Tcp>::Connect("127.0.0.1", l->port(), absl::Seconds(2));
  ASSERT_TRUE(c.ok()) << c.status();
  auto s = l->Accept(absl::Seconds(2));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(c->peer(), absl::StrCat("tcp 127.0.0.1:", l->port()));
  EXPECT_EQ(s->peer().rfind("tcp 127.0.0.1:", 0), 0u) << s->peer();
}

// ConnectionOptions::busy_poll: frames still arrive whether they come during the spin or
// after it, and an idle receive still times out at its deadline.
TEST(Tcp, BusyPollReceivesAndStillTimesOut) {
  ConnectionOptions options;
  options.busy_poll = absl::Milliseconds(2);
  auto l = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  auto client = Connection<Tcp>::Connect("127.0.0.1", l->port(), absl::Seconds(2), options);
  ASSERT_TRUE(client.ok()) << client.status();
  auto server = l->Accept(absl::Seconds(2), options);
  ASSERT_TRUE(server.ok()) << server.status();
  for (absl::Duration delay :
       {absl::ZeroDuration(), absl::Microseconds(500), absl::Milliseconds(20)}) {
    std::thread sender([&] {
      absl::SleepFor(delay);
      ASSERT_TRUE(client->SendBytes(MessageKind::kPing, 7, "hello").ok());
    });
    absl::StatusOr<FrameHeader> h = server->ReceiveHeader(absl::Seconds(5));
    sender.join();
    ASSERT_TRUE(h.ok()) << h.status();
    std::string payload(h->payload_bytes, '\0');
    ASSERT_TRUE(server->ReceivePayload(payload.data(), payload.size()).ok());
    EXPECT_EQ(payload, "hello");
  }
  absl::StatusOr<FrameHeader> idle = server->ReceiveHeader(absl::Milliseconds(50));
  EXPECT_TRUE(absl::IsDeadlineExceeded(idle.status())) << idle.status();
  EXPECT_FALSE(server->broken()) << "an idle timeout leaves the connection usable";
}

TEST(Tcp, SendTimesOutWhenPeerStopsReading) {
  ConnectionOptions options;
  options.send_timeout = absl::Milliseconds(200);
  auto l = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  auto c = Connection<Tcp>::Connect("127.0.0.1", l->port(), absl::Seconds(2), options);
  ASSERT_TRUE(c.ok()) << c.status();
  auto s = l->Accept(absl::Seconds(2));  // never reads
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<unsigned char> big(std::size_t{256} << 20);  // far above socket buffers
  const Piece piece{big.data(), big.size()};
  const absl::Time start = absl::Now();
  absl::Status st = c->Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&piece, 1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  EXPECT_TRUE(Contains(st, "send timed out")) << st;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(c->broken());  // part of a frame went out: the stream is out of step
}

// A reader waiting for a large payload sleeps until a good part of it has arrived
// (SO_RCVLOWAT), never more than it still needs: a payload whose last bytes trickle in a few
// at a time is still received whole, and a small frame right after a large one is not held
// back by the large one's mark.
TEST(Tcp, TrickledPayloadArrivesWholeAndSmallFramesAfterItAreNotHeld) {
  auto l = Listener<Tcp>::Create("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  const int raw = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(raw, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(l->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(raw, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto server = l->Accept(absl::Seconds(2));
  ASSERT_TRUE(server.ok()) << server.status();

  constexpr std::size_t kBig = std::size_t{2} << 20;  // far above the low-water cap
  std::vector<unsigned char> payload(kBig);
  for (std::size_t i = 0; i < kBig; ++i) payload[i] = static_cast<unsigned char>(i * 131 + 7);
  auto write_all = [raw](const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = write(raw, p, n);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  };
  std::thread sender([&] {
    unsigned char head[kFrameHeaderBytes];
    EncodeFrameHeader({MessageKind::kTransfer, TrafficClass::kActivations, kBig, 1}, head);
    ASSERT_TRUE(write_all(head, sizeof(head)));
    // Most of it at once, then the last 64 KiB in 1 KiB pieces a millisecond apart.
    const std::size_t bulk = kBig - (std::size_t{64} << 10);
    ASSERT_TRUE(write_all(payload.data(), bulk));
    for (std::size_t at = bulk; at < kBig; at += 1024) {
      absl::SleepFor(absl::Milliseconds(1));
      ASSERT_TRUE(write_all(payload.data() + at, 1024));
    }
    absl::SleepFor(absl::Milliseconds(20));  // the reader is waiting on an empty socket
    EncodeFrameHeader({MessageKind::kPing, TrafficClass::kControl, 5, 2}, head);
    ASSERT_TRUE(write_all(head, sizeof(head)));
    ASSERT_TRUE(write_all("hello", 5));
  });
  absl::StatusOr<FrameHeader> h = server->ReceiveHeader(absl::Seconds(10));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->payload_bytes, kBig);
  std::vector<unsigned char> got(kBig);
  ASSERT_TRUE(server->ReceivePayload(got.data(), got.size()).ok());
  EXPECT_EQ(got, payload);
  // A mark left at the large read's value would hold this 29-byte frame until the deadline.
  const absl::Time start = absl::Now();
  absl::StatusOr<FrameHeader> ping = server->ReceiveHeader(absl::Seconds(5));
  ASSERT_TRUE(ping.ok()) << ping.status();
  std::string hello(ping->payload_bytes, '\0');
  ASSERT_TRUE(server->ReceivePayload(hello.data(), hello.size()).ok());
  EXPECT_EQ(hello, "hello");
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  sender.join();
  close(raw);
}

// ---- Lanes --------------------------------------------------------------------------------

// Asks for 3 sockets in all and stripes every non-empty frame.
struct TcpLanes3 : Tcp {
  static constexpr int kLanes = 3;
  static constexpr std::uint64_t kStripeMinBytes = 1;
  static constexpr bool kLanesByCores = false;  // lanes on any machine
};

// A loopback pair: a client of policy C connected to a server of policy S.
template <class C, class S>
absl::Status ConnectPair(std::optional<Connection<C>>* client,
                         std::optional<Connection<S>>* server) {
  auto listener = Listener<S>::Create("127.0.0.1", 0);
  if (!listener.ok()) return listener.status();
  auto c = Connection<C>::Connect("127.0.0.1", listener->port(), absl::Seconds(5));
  if (!c.ok()) return c.status();
  auto s = listener->Accept(absl::Seconds(5));
  if (!s.ok()) return s.status();
  client->emplace(std::move(*c));
  server->emplace(std::move(*s));
  return absl::OkStatus();
}

struct LanePair {
  std::optional<Connection<TcpLanes3>> client, server;
  absl::StatusOr<LaneResult> opened = absl::UnknownError("not run");
  absl::StatusOr<LaneResult> accepted = absl::UnknownError("not run");
};

// A connected pair whose client opened lanes with a server granting at most `max_lanes`.
LanePair MakeLanePair(int max_lanes) {
  LanePair p;
  if (absl::Status s = ConnectPair(&p.client, &p.server); !s.ok()) {
    p.opened = p.accepted = s;
    return p;
  }
  std::thread client_side([&] { p.opened = p.client->OpenLanes(absl::Seconds(5)); });
  absl::StatusOr<FrameHeader> request = p.server->ReceiveHeader(absl::Seconds(5));
  p.accepted = request.ok() ? p.server->AcceptLanes(*request, max_lanes, absl::Seconds(5))
                            : request.status();
  client_side.join();
  return p;
}

// `bytes` from a to b and back, intact.
void RoundTrip(Connection<TcpLanes3>& a, Connection<TcpLanes3>& b, std::size_t bytes) {
  const std::vector<unsigned char> data = testing::Pattern(bytes, 5);
  for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
    absl::Status sent;
    std::thread sender([&, from = from] {
      const Piece piece{data.data(), data.size()};
      sent = from->Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&piece, 1));
    });
    auto frame = to->Receive(absl::Seconds(10));
    sender.join();
    ASSERT_TRUE(sent.ok()) << sent;
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_EQ(frame->payload.size(), data.size());
    EXPECT_EQ(std::memcmp(frame->payload.data(), data.data(), data.size()), 0);
  }
}

TEST(TcpLanes, OpenedAndUsedInBothDirections) {
  LanePair p = MakeLanePair(8);
  ASSERT_TRUE(p.opened.ok()) << p.opened.status();
  ASSERT_TRUE(p.accepted.ok()) << p.accepted.status();
  EXPECT_EQ(p.opened->lanes, 3) << p.opened->note;
  EXPECT_EQ(p.client->lane_count(), 3);
  EXPECT_EQ(p.server->lane_count(), 3);
  RoundTrip(*p.client, *p.server, (std::size_t{3} << 20) + 17);
  RoundTrip(*p.client, *p.server, 5);  // a share smaller than a page: one lane carries it all
}

TEST(TcpLanes, DefaultTcpAsksForAtMostHalfTheCores) {
  const int expected = std::min(4, std::max(1, core::UsableCores() / 2));
  std::optional<Connection<Tcp>> client, server;
  ASSERT_TRUE(ConnectPair(&client, &server).ok());
  absl::StatusOr<LaneResult> opened = absl::UnknownError("not run");
  std::thread client_side([&] { opened = client->OpenLanes(absl::Seconds(5)); });
  if (expected > 1) {  // otherwise the client asks for nothing
    absl::StatusOr<FrameHeader> request = server->ReceiveHeader(absl::Seconds(5));
    ASSERT_TRUE(request.ok()) << request.status();
    ASSERT_TRUE(server->AcceptLanes(*request, 8, absl::Seconds(5)).ok());
  }
  client_side.join();
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(client->lane_count(), expected) << core::UsableCores() << " cores";
  EXPECT_EQ(server->lane_count(), expected);
}

TEST(TcpLanes, ServerGrantsFewerOrNone) {
  LanePair two = MakeLanePair(2);
  ASSERT_TRUE(two.opened.ok()) << two.opened.status();
  EXPECT_EQ(two.opened->lanes, 2);
  EXPECT_EQ(two.server->lane_count(), 2);
  RoundTrip(*two.client, *two.server, std::size_t{1} << 20);

  LanePair one = MakeLanePair(1);
  ASSERT_TRUE(one.opened.ok()) << one.opened.status();
  EXPECT_EQ(one.opened->lanes, 1);
  EXPECT_TRUE(Contains(absl::Status(absl::StatusCode::kUnknown, one.opened->note), "limit is 1"))
      << one.opened->note;
  EXPECT_EQ(one.client->lane_count(), 1);
  RoundTrip(*one.client, *one.server, std::size_t{1} << 20);
}

// The client side of a lane handshake by hand: request, offer, then `connect(offer, client)`
// does what the client does with the offer, then the server's answer.
struct ByHand {
  std::optional<Connection<Tcp>> client;
  std::optional<Connection<TcpLanes3>> server;
  absl::StatusOr<LaneResult> accepted = absl::UnknownError("not run");
  absl::StatusOr<transport_internal::LaneMessage> answer = absl::UnknownError("not run");
};

// What a client whose lanes failed sends: a kLanes frame with no lanes and why.
absl::Status SendGiveUp(Connection<Tcp>& client, const std::string& why) {
  transport_internal::LaneMessage give_up;
  give_up.note = why;
  return client.SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(give_up));
}

template <class F>
ByHand LanesByHand(F connect) {
  ByHand h;
  if (absl::Status s = ConnectPair(&h.client, &h.server); !s.ok()) {
    h.accepted = s;
    return h;
  }
  std::thread server_side([&] {
    absl::StatusOr<FrameHeader> request = h.server->ReceiveHeader(absl::Seconds(5));
    h.accepted = request.ok() ? h.server->AcceptLanes(*request, 8, absl::Milliseconds(500))
                              : request.status();
  });
  transport_internal::LaneMessage request;
  request.lanes = 3;
  if (h.client->SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(request))
          .ok()) {
    auto offer = h.client->Receive(absl::Seconds(5));
    if (offer.ok()) {
      auto m = transport_internal::DecodeLaneMessage(offer->payload);
      if (m.ok()) {
        connect(*m, *h.client);
        auto answer = h.client->Receive(absl::Seconds(5));
        h.answer =
            answer.ok() ? transport_internal::DecodeLaneMessage(answer->payload) : answer.status();
      }
    }
  }
  server_side.join();
  return h;
}

TEST(TcpLanes, LanesThatNeverComeLeaveOneSocket) {
  ByHand h = LanesByHand([](const transport_internal::LaneMessage& offer, Connection<Tcp>&) {
    EXPECT_EQ(offer.lanes, 3);
    EXPECT_EQ(offer.token.size(), transport_internal::kLaneTokenBytes);
  });
  ASSERT_TRUE(h.accepted.ok()) << h.accepted.status();
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  EXPECT_EQ(h.accepted->lanes, 1);
  EXPECT_EQ(h.answer->lanes, 1);
  EXPECT_TRUE(Contains(absl::UnknownError(h.answer->note), "0 of 2 lanes came")) << h.answer->note;
  EXPECT_EQ(h.server->lane_count(), 1);
  // The connection goes on, unstriped.
  ASSERT_TRUE(h.client->SendBytes(MessageKind::kPing, 3, std::string(2 << 20, 'x')).ok());
  auto frame = h.server->Receive(absl::Seconds(5));
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload.size(), std::size_t{2} << 20);
}

TEST(TcpLanes, AGiveUpAfterTheServersAnswerGetsNoSecondAnswer) {
  ByHand h = LanesByHand([](const transport_internal::LaneMessage&, Connection<Tcp>&) {});
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  EXPECT_EQ(h.answer->lanes, 1);  // the server stopped waiting and answered
  // The client's give-up, late: the server takes it and says nothing.
  ASSERT_TRUE(SendGiveUp(*h.client, "lanes timed out").ok());
  absl::StatusOr<FrameHeader> late = h.server->ReceiveHeader(absl::Seconds(5));
  ASSERT_TRUE(late.ok()) << late.status();
  absl::StatusOr<LaneResult> taken = h.server->AcceptLanes(*late, 8, absl::Seconds(1));
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->lanes, 1);
  auto nothing = h.client->ReceiveHeader(absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(nothing.status())) << nothing.status();
  ASSERT_TRUE(h.client->SendBytes(MessageKind::kPing, 5, "on").ok());
  auto frame = h.server->Receive(absl::Seconds(5));
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload, "on");
}

TEST(TcpLanes, LanesWithTheWrongTokenAreRefused) {
  ByHand h = LanesByHand([](const transport_internal::LaneMessage& offer, Connection<Tcp>&) {
    std::string wrong = offer.token;
    wrong[0] = static_cast<char>(wrong[0] ^ 1);
    auto lanes = transport_internal::ConnectLanes("127.0.0.1", offer.port, 2, wrong,
                                                  absl::Now() + absl::Seconds(2), {});
    EXPECT_TRUE(lanes.ok()) << lanes.status();  // connected; the server refuses them
  });
  ASSERT_TRUE(h.accepted.ok()) << h.accepted.status();
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  EXPECT_EQ(h.answer->lanes, 1);
  EXPECT_TRUE(Contains(absl::UnknownError(h.answer->note), "2 refused: wrong hello"))
      << h.answer->note;
  EXPECT_EQ(h.server->lane_count(), 1);
}

TEST(TcpLanes, AClientThatGivesUpIsAnsweredAtOnce) {
  const absl::Time start = absl::Now();
  ByHand h = LanesByHand([](const transport_internal::LaneMessage&, Connection<Tcp>& client) {
    ASSERT_TRUE(SendGiveUp(client, "lane port unreachable").ok());
  });
  ASSERT_TRUE(h.accepted.ok()) << h.accepted.status();
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(400));  // not the server's 500 ms wait
  EXPECT_EQ(h.answer->lanes, 1);
  EXPECT_TRUE(Contains(absl::UnknownError(h.answer->note),
                       "the client could not connect its lanes: lane port unreachable"))
      << h.answer->note;
  // The give-up was consumed: the next frame is the client's next message.
  ASSERT_TRUE(h.client->SendBytes(MessageKind::kPing, 4, "next").ok());
  auto frame = h.server->Receive(absl::Seconds(5));
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload, "next");
}

// A lane socket that connects and says nothing does not hold the server past the client's
// give-up: the server watches the connection while it waits for a hello.
TEST(TcpLanes, ASilentLaneDoesNotHoldUpAGiveUp) {
  std::optional<transport_internal::TcpStream> silent;
  const absl::Time start = absl::Now();
  ByHand h =
      LanesByHand([&](const transport_internal::LaneMessage& offer, Connection<Tcp>& client) {
        auto lane =
            transport_internal::TcpStream::Connect("127.0.0.1", offer.port, absl::Seconds(2), {});
        ASSERT_TRUE(lane.ok()) << lane.status();
        silent.emplace(std::move(*lane));
        absl::SleepFor(absl::Milliseconds(50));  // the server has taken it and waits for its hello
        ASSERT_TRUE(SendGiveUp(client, "lane 2 unreachable").ok());
      });
  ASSERT_TRUE(h.accepted.ok()) << h.accepted.status();
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  // Not the server's 500 ms wait, which a hello read blind to the give-up would use up.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(400));
  EXPECT_EQ(h.answer->lanes, 1);
  EXPECT_TRUE(Contains(absl::UnknownError(h.answer->note), "lane 2 unreachable")) << h.answer->note;
}

// Threads of this process, from /proc.
int ThreadCount() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++n;
  }
  return n;
}

// A handshake cut short (the client leaves after the offer) closes the connection and stops
// the lane threads the server prepared, not only when the connection is destroyed.
TEST(TcpLanes, AHandshakeCutShortStopsThePreparedLaneThreads) {
  const int before = ThreadCount();
  ByHand h = LanesByHand(
      [](const transport_internal::LaneMessage&, Connection<Tcp>& client) { client.Close(); });
  EXPECT_FALSE(h.accepted.ok());
  ASSERT_TRUE(h.server.has_value());
  EXPECT_TRUE(h.server->broken());
  // At most as many as before: threads of earlier tests may still be ending.
  EXPECT_LE(ThreadCount(), before) << "lane threads outlived the failed handshake";
}

TEST(TcpLanes, ALaneFromAnotherAddressIsRefused) {
  ByHand h = LanesByHand([](const transport_internal::LaneMessage& offer, Connection<Tcp>&) {
    // The right token and index, from 127.0.0.2 instead of the connection's 127.0.0.1.
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(0x7f000002);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)), 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(offer.port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    unsigned char hello[24] = {0x47, 0x4c, 0x4e, 0x45, 1, 0, 0, 0};  // "GLNE", lane 1
    std::memcpy(hello + 8, offer.token.data(), offer.token.size());
    ASSERT_EQ(write(fd, hello, sizeof(hello)), static_cast<ssize_t>(sizeof(hello)));
    absl::SleepFor(absl::Milliseconds(700));  // past the server's wait, the socket still open
    close(fd);
  });
  ASSERT_TRUE(h.answer.ok()) << h.answer.status();
  EXPECT_EQ(h.answer->lanes, 1);
  EXPECT_TRUE(Contains(absl::UnknownError(h.answer->note), "1 refused")) << h.answer->note;
  EXPECT_EQ(h.server->lane_count(), 1);
}

TEST(TcpLanes, StripedFrameWithoutLanesIsRefused) {
  std::optional<Connection<Tcp>> a, b;
  ASSERT_TRUE(ConnectPair(&a, &b).ok());
  FrameHeader h;
  h.kind = MessageKind::kTransfer;
  h.payload_bytes = 8192;
  h.striped = true;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  ASSERT_TRUE(
      a->WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(wire), sizeof(wire))).ok());
  auto header = b->ReceiveHeader(absl::Seconds(5));
  EXPECT_TRUE(absl::IsDataLoss(header.status())) << header.status();
  EXPECT_TRUE(Contains(header.status(), "lanes this connection does not have")) << header.status();
  EXPECT_TRUE(b->broken());
}

TEST(TcpLanes, ReceiverGoneMidStripedFrameFailsTheSender) {
  LanePair p = MakeLanePair(8);
  ASSERT_TRUE(p.opened.ok()) << p.opened.status();
  ASSERT_EQ(p.client->lane_count(), 3);
  const std::vector<unsigned char> data = testing::Pattern(std::size_t{64} << 20, 9);
  absl::Status sent;
  std::thread sender([&] {
    const Piece piece{data.data(), data.size()};
    sent = p.client->Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&piece, 1));
  });
  auto header = p.server->ReceiveHeader(absl::Seconds(5));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_TRUE(header->striped);
  std::vector<unsigned char> some(1 << 20);
  ASSERT_TRUE(p.server->ReceivePayload(some.data(), some.size()).ok());
  const absl::Time start = absl::Now();
  p.server.reset();  // every socket of the receiving side closes
  sender.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(sent.ok());
  EXPECT_TRUE(p.client->broken());
}

}  // namespace
}  // namespace genie::transport
