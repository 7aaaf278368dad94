// File: tests/transport/shm_test.cc
// Shm-only behaviour the conformance suite cannot express: a peer process that dies in the
// middle of a frame, frames larger than the ring (wrapping at every offset), send and payload
// deadlines against a stalled peer, socket-path errors, stale socket files, and clients whose
// rings fail validation.
#include "genie/transport/shm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/shm_stream.h"
#include "genie/transport/testing/transport_testing.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

using testing::Contains;
using testing::Pattern;

constexpr absl::Duration kWait = absl::Seconds(10);

// 64 KiB rings: every frame of these tests above that size streams through in pieces.
struct SmallRingShm : Shm {
  static constexpr std::uint64_t kRingBytes = 64 << 10;
};

std::string SocketPath() {
  static std::atomic<int> counter{0};
  return absl::StrCat("/tmp/genie-shm-test-", getpid(), "-", counter++);
}

template <class P>
std::pair<Connection<P>, Connection<P>> MakePair(const ConnectionOptions& options = {}) {
  const std::string path = SocketPath();
  auto listener = Listener<P>::Create(path);
  EXPECT_TRUE(listener.ok()) << listener.status();
  auto client = Connection<P>::Connect(path, kWait, options);
  EXPECT_TRUE(client.ok()) << client.status();
  auto server = listener->Accept(kWait, options);
  EXPECT_TRUE(server.ok()) << server.status();
  return {std::move(*client), std::move(*server)};
}

TEST(Shm, FramesLargerThanTheRingWrapAtEveryOffset) {
  auto [a, b] = MakePair<SmallRingShm>();
  // Odd sizes (several times the 64 KiB ring, and small ones between) so the ring wraps at
  // many different offsets, inside pieces and between them.
  const std::vector<std::size_t> sizes = {1, 65535, 65536, 65537, 300001, 7, 1 << 20, 99999};
  std::vector<std::vector<unsigned char>> sent;
  for (std::size_t i = 0; i < sizes.size(); ++i) sent.push_back(Pattern(sizes[i], i + 1));
  absl::Status send_status;
  std::thread sender([&] {
    for (std::size_t i = 0; i < sent.size() && send_status.ok(); ++i) {
      // Three gathered pieces per frame: a prefix, the body, a suffix.
      const std::string prefix = absl::StrCat("frame ", i, ":");
      const Piece pieces[] = {{prefix.data(), prefix.size()},
                              {sent[i].data(), sent[i].size()},
                              {"end", 3}};
      send_status = a.Send(MessageKind::kTransfer, i, pieces, TrafficClass::kActivations);
    }
  });
  for (std::size_t i = 0; i < sent.size(); ++i) {
    auto frame = b.Receive(kWait);
    ASSERT_TRUE(frame.ok()) << "frame " << i << ": " << frame.status();
    const std::string prefix = absl::StrCat("frame ", i, ":");
    ASSERT_EQ(frame->payload.size(), prefix.size() + sent[i].size() + 3) << i;
    EXPECT_EQ(frame->payload.substr(0, prefix.size()), prefix);
    EXPECT_EQ(0, std::memcmp(frame->payload.data() + prefix.size(), sent[i].data(),
                             sent[i].size()))
        << "frame " << i;
    EXPECT_EQ(frame->payload.substr(prefix.size() + sent[i].size()), "end");
  }
  sender.join();
  EXPECT_TRUE(send_status.ok()) << send_status;
}

TEST(Shm, PeerProcessExitsMidFrame) {
  const std::string path = SocketPath();
  auto listener = Listener<Shm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // A header promising 1000 bytes, 10 of them, then the process is gone without Close().
    auto conn = Connection<Shm>::Connect(path, kWait);
    if (!conn.ok()) _exit(2);
    FrameHeader h;
    h.kind = MessageKind::kTransfer;
    h.payload_bytes = 1000;
    unsigned char wire[kFrameHeaderBytes];
    EncodeFrameHeader(h, wire);
    std::string raw(reinterpret_cast<const char*>(wire), sizeof(wire));
    raw.append(10, 'p');
    _exit(conn->WriteRawForTesting(raw).ok() ? 0 : 3);
  }
  auto server = listener->Accept(kWait);
  ASSERT_TRUE(server.ok()) << server.status();
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << wstatus;
  auto header = server->ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  std::vector<char> dst(1000);
  const absl::Time start = absl::Now();
  absl::Status s = server->ReceivePayload(dst.data(), dst.size());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // seen through the socket, not a timeout
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(Contains(s, "exited or died")) << s;
  EXPECT_TRUE(Contains(s, "990 payload bytes of a frame missing")) << s;
  EXPECT_EQ(std::string(dst.data(), 10), std::string(10, 'p'));  // what was sent arrived
  EXPECT_TRUE(server->broken());
}

TEST(Shm, PeerKilledWhileStreamingAFrameLargerThanTheRing) {
  const std::string path = SocketPath();
  auto listener = Listener<SmallRingShm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  constexpr std::size_t kBytes = 4 << 20;  // 64 ring-fulls
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto conn = Connection<SmallRingShm>::Connect(path, kWait);
    if (!conn.ok()) _exit(2);
    const std::vector<unsigned char> data = Pattern(kBytes, 5);
    const Piece piece{data.data(), data.size()};
    (void)conn->Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&piece, 1));
    _exit(0);  // not reached before the kill: the parent stops reading
  }
  auto server = listener->Accept(kWait);
  ASSERT_TRUE(server.ok()) << server.status();
  auto header = server->ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->payload_bytes, kBytes);
  std::vector<unsigned char> dst(kBytes);
  ASSERT_TRUE(server->ReceivePayload(dst.data(), 256 << 10).ok());
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  absl::Status s = server->ReceivePayload(dst.data() + (256 << 10), kBytes - (256 << 10));
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(Contains(s, "exited or died")) << s;
  EXPECT_TRUE(Contains(s, "payload bytes of a frame missing")) << s;
  // Everything that did arrive is the child's data, in order.
  const std::vector<unsigned char> expected = Pattern(kBytes, 5);
  EXPECT_EQ(0, std::memcmp(dst.data(), expected.data(), 256 << 10));
}

TEST(Shm, SendDeadlineWhenThePeerStopsReading) {
  ConnectionOptions options;
  options.send_timeout = absl::Milliseconds(100);
  auto [a, b] = MakePair<SmallRingShm>(options);
  const std::vector<unsigned char> data(1 << 20, 0x11);  // 16 ring-fulls; b never reads
  const Piece piece{data.data(), data.size()};
  const absl::Time start = absl::Now();
  absl::Status s = a.Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&piece, 1));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_TRUE(Contains(s, "the peer has not read for too long")) << s;
  // Part of the frame went out: the stream is out of step and the connection broken.
  EXPECT_TRUE(Contains(s, absl::StrCat(64 << 10, " bytes of the frame went out"))) << s;
  EXPECT_TRUE(a.broken());
}

TEST(Shm, PayloadDeadlineWhenTheRestOfAFrameNeverComes) {
  ConnectionOptions options;
  options.payload_timeout = absl::Milliseconds(100);
  auto [a, b] = MakePair<Shm>(options);
  FrameHeader h;
  h.kind = MessageKind::kTransfer;
  h.payload_bytes = 100;
  unsigned char wire[kFrameHeaderBytes];
  EncodeFrameHeader(h, wire);
  ASSERT_TRUE(a.WriteRawForTesting(std::string(reinterpret_cast<const char*>(wire), sizeof(wire)) +
                                   "half")
                  .ok());
  auto header = b.ReceiveHeader(kWait);
  ASSERT_TRUE(header.ok()) << header.status();
  std::vector<char> dst(100);
  absl::Status s = b.ReceivePayload(dst.data(), dst.size());
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_TRUE(Contains(s, "receive timed out")) << s;
  EXPECT_TRUE(Contains(s, "96 payload bytes of a frame missing")) << s;
  EXPECT_TRUE(b.broken());
}

TEST(Shm, ConnectWithoutListenerSaysWhatToRun) {
  const std::string path = SocketPath();
  auto conn = Connection<Shm>::Connect(path, absl::Seconds(1));
  EXPECT_TRUE(absl::IsUnavailable(conn.status())) << conn.status();
  EXPECT_TRUE(Contains(conn.status(), path)) << conn.status();
  EXPECT_TRUE(Contains(conn.status(), "--shm_socket=")) << conn.status();
}

TEST(Shm, BadSocketPathsRefused) {
  const std::string too_long(200, 'x');
  auto conn = Connection<Shm>::Connect(too_long, absl::Seconds(1));
  EXPECT_TRUE(absl::IsInvalidArgument(conn.status())) << conn.status();
  EXPECT_TRUE(Contains(conn.status(), "Unix-socket limit")) << conn.status();
  auto listener = Listener<Shm>::Create("");
  EXPECT_TRUE(absl::IsInvalidArgument(listener.status())) << listener.status();
  EXPECT_TRUE(Contains(listener.status(), "empty")) << listener.status();
  // A ring size outside the limits (a policy cannot ask for one: a static_assert stops it).
  transport_internal::ShmSettings settings;
  settings.ring_bytes = 100;
  auto stream = transport_internal::ShmStream::Connect(SocketPath(), absl::Seconds(1), settings);
  EXPECT_TRUE(absl::IsInvalidArgument(stream.status())) << stream.status();
  EXPECT_TRUE(Contains(stream.status(), "ring size 100")) << stream.status();
}

TEST(Shm, LiveSocketRefusedStaleOneReplacedFileRemovedAtTheEnd) {
  const std::string path = SocketPath();
  {
    auto first = Listener<Shm>::Create(path);
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = Listener<Shm>::Create(path);
    EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
    EXPECT_TRUE(Contains(second.status(), "another process is listening")) << second.status();
    EXPECT_EQ(access(path.c_str(), F_OK), 0);
  }
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "the listener left its socket file behind";
  // A stale socket file (bound, never listened on, its process gone) is replaced.
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);
  }
  auto listener = Listener<Shm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  auto client = Connection<Shm>::Connect(path, kWait);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(listener->Accept(kWait).ok());
  // A regular file is never removed.
  const std::string file = SocketPath();
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  auto on_file = Listener<Shm>::Create(file);
  EXPECT_TRUE(absl::IsUnavailable(on_file.status())) << on_file.status();
  EXPECT_TRUE(Contains(on_file.status(), "not a socket")) << on_file.status();
  EXPECT_EQ(access(file.c_str(), F_OK), 0);
  unlink(file.c_str());
}

// Connects a raw Unix socket to `path` and sends `bytes` with the given fds.
int RawClient(const std::string& path, const std::string& bytes, const std::vector<int>& fds) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  if (sendmsg(fd, &msg, 0) < 0) return -1;
  return fd;
}

TEST(Shm, ListenerRefusesClientsWithoutValidRingsAndGoesOn) {
  const std::string path = SocketPath();
  auto listener = Listener<Shm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();

  // Not a Genie client at all.
  int raw = RawClient(path, "GET / HTTP/1.1\r\n\r\n", {});
  ASSERT_GE(raw, 0);
  auto refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "did not send a Genie shm hello")) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "(pid ")) << refused.status();
  close(raw);

  // The right hello, but the "region" is a pipe and the "eventfds" too.
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  std::string hello = "GENIESHM";
  const std::uint32_t version = 2, reserved = 0;
  const std::uint64_t ring = 1 << 20, no_pool = 0;
  hello.append(reinterpret_cast<const char*>(&version), 4);
  hello.append(reinterpret_cast<const char*>(&reserved), 4);
  hello.append(reinterpret_cast<const char*>(&ring), 8);
  hello.append(reinterpret_cast<const char*>(&no_pool), 8);
  raw = RawClient(path, hello, {p[0], p[0], p[0], p[0], p[0]});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "shared region")) << refused.status();
  close(raw);
  // Too few fds.
  raw = RawClient(path, hello, {p[0]});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "passed 1 file descriptors, not 5")) << refused.status();
  close(raw);
  // Another protocol version.
  std::string v3 = hello;
  v3[8] = 3;
  raw = RawClient(path, v3, {});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "version 3")) << refused.status();
  close(raw);
  // The hello of a version-1 client (no pool field) says which version it speaks.
  std::string v1 = hello.substr(0, 24);
  v1[8] = 1;
  raw = RawClient(path, v1, {p[0], p[0], p[0], p[0], p[0]});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "version 1")) << refused.status();
  close(raw);
  // A pool announced, but its "memfd" is a pipe.
  std::string pooled = hello.substr(0, 24);
  const std::uint64_t pool_bytes = 4 << 20;
  pooled.append(reinterpret_cast<const char*>(&pool_bytes), 8);
  raw = RawClient(path, pooled, {p[0], p[0], p[0], p[0], p[0]});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(Contains(refused.status(), "not 6 (rings, 4 eventfds, tensor pool)")) << refused.status();
  close(raw);
  close(p[0]);
  close(p[1]);

  // A real client still gets through, and frames flow.
  auto client = Connection<Shm>::Connect(path, kWait);
  ASSERT_TRUE(client.ok()) << client.status();
  auto server = listener->Accept(kWait);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(client->SendBytes(MessageKind::kPing, 3, "after refusals").ok());
  auto frame = server->Receive(kWait);
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->payload, "after refusals");
}

// A hello whose rings and eventfds are right but whose tensor pool is not: unsealed, or of
// another size than announced.
TEST(Shm, ListenerRefusesAPoolThatFailsValidation) {
  const std::string path = SocketPath();
  auto listener = Listener<Shm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  const std::uint64_t ring = 1 << 20, pool_bytes = 4 << 20;
  auto memfd = [](std::uint64_t bytes, bool seal) {
    int fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    if (seal) {
      EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    }
    return fd;
  };
  const int region = memfd(4096 + 2 * ring, true);
  int efd[4];
  for (int& e : efd) e = eventfd(0, EFD_CLOEXEC);
  std::string hello = "GENIESHM";
  const std::uint32_t version = 2, reserved = 0;
  hello.append(reinterpret_cast<const char*>(&version), 4);
  hello.append(reinterpret_cast<const char*>(&reserved), 4);
  hello.append(reinterpret_cast<const char*>(&ring), 8);
  hello.append(reinterpret_cast<const char*>(&pool_bytes), 8);

  const int unsealed = memfd(pool_bytes, false);
  int raw = RawClient(path, hello, {region, efd[0], efd[1], efd[2], efd[3], unsealed});
  ASSERT_GE(raw, 0);
  auto refused = listener->Accept(kWait);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "tensor pool is not a memfd sealed against shrinking"))
      << refused.status();
  close(raw);
  const int small = memfd(pool_bytes / 2, true);
  raw = RawClient(path, hello, {region, efd[0], efd[1], efd[2], efd[3], small});
  ASSERT_GE(raw, 0);
  refused = listener->Accept(kWait);
  EXPECT_TRUE(Contains(refused.status(), "tensor pool is not a 4194304-byte memfd")) << refused.status();
  close(raw);
  for (int fd : {region, efd[0], efd[1], efd[2], efd[3], unsealed, small}) close(fd);
}

TEST(Shm, AcceptTimesOutWithoutClient) {
  auto listener = Listener<Shm>::Create(SocketPath());
  ASSERT_TRUE(listener.ok()) << listener.status();
  auto conn = listener->Accept(absl::Milliseconds(50));
  EXPECT_TRUE(absl::IsDeadlineExceeded(conn.status())) << conn.status();
  EXPECT_TRUE(Contains(conn.status(), "no connection within")) << conn.status();
}

TEST(Shm, FullDuplexUnderLoadBothDirectionsAtOnce) {
  // Each side sends 8 MiB in 100 KiB frames through 64 KiB rings while receiving the other's:
  // both producers block on full rings at once and must not deadlock or lose a wake-up.
  auto [a, b] = MakePair<SmallRingShm>();
  constexpr int kFrames = 80;
  auto run = [](Connection<SmallRingShm>& conn, unsigned seed, absl::Status* send_status) {
    const std::vector<unsigned char> data = Pattern(100 << 10, seed);
    const Piece piece{data.data(), data.size()};
    for (int i = 0; i < kFrames && send_status->ok(); ++i) {
      *send_status = conn.Send(MessageKind::kTransfer, i, absl::MakeConstSpan(&piece, 1));
    }
  };
  absl::Status sa, sb;
  std::thread ta([&] { run(a, 1, &sa); });
  std::thread tb([&] { run(b, 2, &sb); });
  const std::vector<unsigned char> from_a = Pattern(100 << 10, 1);
  const std::vector<unsigned char> from_b = Pattern(100 << 10, 2);
  std::atomic<int> bad{0};
  std::thread ra([&] {
    for (int i = 0; i < kFrames; ++i) {
      auto f = a.Receive(kWait);
      if (!f.ok() || f->header.request_id != static_cast<std::uint64_t>(i) ||
          std::memcmp(f->payload.data(), from_b.data(), from_b.size()) != 0) {
        bad++;
        return;
      }
    }
  });
  for (int i = 0; i < kFrames; ++i) {
    auto f = b.Receive(kWait);
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_EQ(f->header.request_id, static_cast<std::uint64_t>(i));
    ASSERT_EQ(0, std::memcmp(f->payload.data(), from_a.data(), from_a.size()));
  }
  ra.join();
  ta.join();
  tb.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_TRUE(sa.ok()) << sa;
  EXPECT_TRUE(sb.ok()) << sb;
}

}  // namespace
}  // namespace genie::transport
