// File: tests/transport/tcp_test.cc
// Tcp-only behaviour the conformance suite cannot express: ports, connect/accept errors,
// send timeouts against a peer that stops reading, large payloads that trickle in.
#include "genie/transport/tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

}  // namespace
}  // namespace genie::transport
