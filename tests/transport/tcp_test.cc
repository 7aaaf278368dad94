// File: tests/transport/tcp_test.cc
// Tcp-only behaviour the conformance suite cannot express: ports, connect/accept errors,
// send timeouts against a peer that stops reading.
#include "genie/transport/tcp.h"

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
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
  for (absl::Duration delay : {absl::ZeroDuration(), absl::Microseconds(500), absl::Milliseconds(20)}) {
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

}  // namespace
}  // namespace genie::transport
