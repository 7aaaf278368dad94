// File: genie/transport/internal/tcp_stream.cc
// Socket setup and the non-blocking I/O loops behind TcpStream (see tcp_stream.h).
#include "genie/transport/internal/tcp_stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "genie/transport/internal/auth_crypto.h"
#include "genie/transport/internal/fd_wait.h"
#include "genie/transport/internal/frame_pieces.h"
#include "genie/transport/internal/little_endian.h"

namespace genie::transport_internal {
namespace {

constexpr int kMaxIov = 64;

std::string HostPort(absl::string_view host, std::uint16_t port) {
  if (host.find(':') != absl::string_view::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

std::string SockaddrText(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    return HostPort(buf, ntohs(in->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
    return HostPort(buf, ntohs(in6->sin6_port));
  }
  return "unknown-address";
}

absl::Status Configure(int fd, const SocketSettings& settings) {
  if (settings.no_delay) {
    const int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
      return absl::InternalError(absl::StrCat("setsockopt(TCP_NODELAY): ", ErrnoText(errno)));
    }
  }
  {
    // Lanes idle between large frames: keepalives stop a middlebox from forgetting them.
    const int on = 1, idle_s = 60, interval_s = 10, probes = 6;
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  }
  if (settings.buffer_bytes > 0) {
    const int n = settings.buffer_bytes;
    // Best effort: the kernel caps these at net.core.{w,r}mem_max.
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof(n));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof(n));
  }
  return absl::OkStatus();
}

bool IsPeerGone(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

std::string NumericHost(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  } else if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
  }
  return buf;
}

// A lane's hello: "GLNE" | u32 lane index | token.
constexpr std::uint32_t kLaneMagic = 0x454E4C47;
constexpr std::size_t kLaneHelloBytes = 8 + kLaneTokenBytes;
constexpr std::size_t kLaneMessageHeadBytes = 11;

// The bytes [begin, end) of the concatenation of `payload`, as pieces.
using Pieces = absl::InlinedVector<transport::Piece, 8>;
Pieces Slice(absl::Span<const transport::Piece> payload, std::uint64_t begin, std::uint64_t end) {
  Pieces out;
  std::uint64_t at = 0;
  for (const transport::Piece& p : payload) {
    const std::uint64_t lo = std::max(at, begin);
    const std::uint64_t hi = std::min(at + p.size, end);
    if (lo < hi) {
      out.push_back(
          {static_cast<const char*>(p.data) + (lo - at), static_cast<std::size_t>(hi - lo)});
    }
    at += p.size;
    if (at >= end) break;
  }
  return out;
}

}  // namespace

// One thread that runs one job at a time for a lane: started when the lanes are prepared,
// stopped and joined when the lane set goes.
class LaneWorker {
 public:
  LaneWorker() = default;
  LaneWorker(const LaneWorker&) = delete;
  LaneWorker& operator=(const LaneWorker&) = delete;
  ~LaneWorker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Starts the thread; false when the process cannot (std::system_error).
  bool Start() {
    try {
      thread_ = std::thread([this] { Loop(); });
      return true;
    } catch (const std::system_error&) {
      return false;
    }
  }

  // Runs `job` on the started thread.
  void Post(std::function<absl::Status()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
      has_job_ = true;
      done_ = false;
    }
    changed_.notify_all();
  }

  // The posted job's result, once it has run.
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return done_; });
    return result_;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<absl::Status()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        changed_.wait(lock, [this] { return has_job_ || stop_; });
        if (!has_job_) return;  // stopping with nothing to do
        job = std::move(job_);
        has_job_ = false;
      }
      absl::Status result = job();
      {
        std::lock_guard<std::mutex> lock(mu_);
        result_ = std::move(result);
        done_ = true;
      }
      changed_.notify_all();
    }
  }

  // std::mutex rather than absl::Mutex here and in the other stream and client classes: the
  // system Abseil is not built with ThreadSanitizer, which then cannot see its ordering.
  std::mutex mu_;
  std::condition_variable changed_;  // a job posted, done, or stop
  std::function<absl::Status()> job_;
  bool has_job_ = false;
  bool done_ = false;
  bool stop_ = false;
  absl::Status result_;
  std::thread thread_;
};

// A stream's lanes and their threads. The mutex guards the lane list against Shutdown from
// another thread while lanes are attached.
class LaneSet {
 public:
  absl::Status Prepare(int count) {
    std::vector<std::unique_ptr<LaneWorker>> senders, receivers;
    for (int k = 0; k < count; ++k) {
      senders.push_back(std::make_unique<LaneWorker>());
      receivers.push_back(std::make_unique<LaneWorker>());
      if (!senders.back()->Start() || !receivers.back()->Start()) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot start the threads of ", count, " lanes"));
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    senders_ = std::move(senders);
    receivers_ = std::move(receivers);
    return absl::OkStatus();
  }
  void Attach(std::vector<TcpStream> lanes) {
    std::lock_guard<std::mutex> lock(mu_);
    lanes_ = std::move(lanes);
  }
  void DropPrepared() {
    std::vector<std::unique_ptr<LaneWorker>> senders, receivers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!lanes_.empty()) return;  // attached: they stay
      senders.swap(senders_);
      receivers.swap(receivers_);
    }
    // Joined here, outside the lock.
  }
  void Shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    for (TcpStream& lane : lanes_) lane.Shutdown();
  }
  int size() const { return static_cast<int>(lanes_.size()); }
  // Lane k (1-based, as on the wire) and its threads; only between attach and destruction.
  TcpStream& lane(int k) { return lanes_[static_cast<std::size_t>(k - 1)]; }
  LaneWorker& sender(int k) { return *senders_[static_cast<std::size_t>(k - 1)]; }
  LaneWorker& receiver(int k) { return *receivers_[static_cast<std::size_t>(k - 1)]; }

 private:
  std::mutex mu_;
  std::vector<TcpStream> lanes_;
  std::vector<std::unique_ptr<LaneWorker>> senders_;
  std::vector<std::unique_ptr<LaneWorker>> receivers_;
};

namespace {

// Waits for the job posted to a lane's thread. Its failure becomes `*status` unless one came
// first, and shuts `stream` and every lane down, so the other lanes' I/O ends at once.
void JoinLaneJob(LaneWorker& worker, TcpStream& stream, absl::Status* status) {
  absl::Status s = worker.Wait();
  if (!s.ok() && status->ok()) {
    *status = std::move(s);
    stream.Shutdown();
  }
}

}  // namespace

TcpStream::TcpStream(UniqueFd fd, std::string peer)
    : fd_(std::move(fd)), peer_(std::move(peer)), lanes_(std::make_unique<LaneSet>()) {}
TcpStream::TcpStream(TcpStream&&) noexcept = default;
TcpStream& TcpStream::operator=(TcpStream&&) noexcept = default;
TcpStream::~TcpStream() {
  // Lane threads stop before the sockets they use close.
  lanes_.reset();
}

absl::StatusOr<TcpStream> TcpStream::Connect(absl::string_view host, std::uint16_t port,
                                             absl::Duration timeout,
                                             const SocketSettings& settings) {
  const std::string target = HostPort(host, port);
  const absl::Time deadline = absl::Now() + timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  const std::string host_str(host);
  const std::string port_str = std::to_string(port);
  const int gai = getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &result);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tcp connect to ", target, ": cannot resolve host: ", gai_strerror(gai)));
  }
  absl::Status last = absl::UnavailableError(absl::StrCat("tcp connect to ", target, " failed"));
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = absl::InternalError(
          absl::StrCat("tcp connect to ", target, ": socket() failed: ", ErrnoText(errno)));
      continue;
    }
    absl::Status s = Configure(fd.get(), settings);
    if (!s.ok()) {
      last = s;
      continue;
    }
    int rc;
    do {
      rc = connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EINPROGRESS) {
      last = absl::UnavailableError(absl::StrCat("tcp connect to ", target,
                                                 " failed: ", ErrnoText(errno),
                                                 " (is a Genie node listening there?)"));
      continue;
    }
    if (rc != 0) {
      s = WaitFd(fd.get(), POLLOUT, deadline);
      if (absl::IsDeadlineExceeded(s)) {
        last = absl::DeadlineExceededError(absl::StrCat(
            "tcp connect to ", target, " timed out after ", absl::FormatDuration(timeout)));
        break;  // the deadline covers all addresses
      }
      if (!s.ok()) {
        last = s;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) {
        last = absl::UnavailableError(absl::StrCat("tcp connect to ", target,
                                                   " failed: ", ErrnoText(err),
                                                   " (is a Genie node listening there?)"));
        continue;
      }
    }
    freeaddrinfo(result);
    return TcpStream(std::move(fd), absl::StrCat("tcp ", target));
  }
  freeaddrinfo(result);
  return last;
}

absl::Status TcpStream::WriteFrame(const unsigned char* head, std::size_t head_size,
                                   absl::Span<const transport::Piece> payload, absl::Time deadline,
                                   std::size_t* written) {
  *written = 0;
  // No allocation: iovecs are built in windows on the stack.
  FramePieces pieces(head, head_size, payload);
  for (;;) {
    if (pieces.done()) return absl::OkStatus();
    iovec iov[kMaxIov];
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(pieces.Gather(iov, kMaxIov));
    // sendmsg is writev plus MSG_NOSIGNAL: a dead peer gives EPIPE instead of SIGPIPE.
    const ssize_t n = sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n > 0) {
      *written += static_cast<std::size_t>(n);
      pieces.Advance(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      absl::Status s = WaitFd(fd_.get(), POLLOUT, deadline);
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(
            absl::StrCat(peer_, ": send timed out: the peer has not read for too long (", *written,
                         " bytes of the frame went out)"));
      }
      if (!s.ok()) return s;
      continue;
    }
    const int err = errno;
    if (IsPeerGone(err)) {
      return absl::UnavailableError(
          absl::StrCat(peer_, ": peer closed the connection (", ErrnoText(err), ")"));
    }
    return absl::InternalError(absl::StrCat(peer_, ": send failed: ", ErrnoText(err)));
  }
}

absl::Status TcpStream::Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got) {
  *got = 0;
  char* out = static_cast<char*>(dst);
  bool low_water = true;  // waits may use a receive low-water mark (SetReceiveLowWater)
  while (*got < n) {
    const ssize_t r = recv(fd_.get(), out + *got, n - *got, 0);
    if (r > 0) {
      *got += static_cast<std::size_t>(r);
      continue;
    }
    if (r == 0) {
      return absl::UnavailableError(absl::StrCat(peer_, ": peer closed the connection"));
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (busy_poll_ > absl::ZeroDuration()) {
        // Spin on recv for a while before sleeping (ConnectionOptions::busy_poll).
        const absl::Time until = std::min(deadline, absl::Now() + busy_poll_);
        ssize_t spun = -1;
        while (absl::Now() < until) {
          spun = recv(fd_.get(), out + *got, n - *got, 0);
          if (spun >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) break;
        }
        if (spun > 0) {
          *got += static_cast<std::size_t>(spun);
          continue;
        }
        if (spun == 0)
          return absl::UnavailableError(absl::StrCat(peer_, ": peer closed the connection"));
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          const int err = errno;
          return absl::InternalError(absl::StrCat(peer_, ": receive failed: ", ErrnoText(err)));
        }
      }
      // Sleep until a useful amount has arrived, not the first segment: without this a
      // multi-megabyte payload wakes the reader once per segment the sender's kernel
      // queues. The mark never exceeds what this read still needs (which the peer is
      // sending) nor a quarter of the receive buffer. Kernels before 5.8 could still hold
      // back a mark the window cannot fill, so a wait under a mark is cut into slices; a
      // slice that ends empty turns the mark off for the rest of this read.
      SetReceiveLowWater(low_water ? ReceiveLowWaterFor(n - *got) : 1);
      const absl::Time until = receive_low_water_ > 1
                                   ? std::min(deadline, absl::Now() + kReceiveLowWaterSlice)
                                   : deadline;
      absl::Status s = WaitFd(fd_.get(), POLLIN, until);
      if (absl::IsDeadlineExceeded(s) && until < deadline) {
        low_water = false;
        continue;
      }
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(absl::StrCat(peer_, ": receive timed out"));
      }
      if (!s.ok()) return s;
      continue;
    }
    const int err = errno;
    if (IsPeerGone(err)) {
      return absl::UnavailableError(
          absl::StrCat(peer_, ": peer closed the connection (", ErrnoText(err), ")"));
    }
    return absl::InternalError(absl::StrCat(peer_, ": receive failed: ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

std::size_t TcpStream::ReceiveLowWaterFor(std::size_t needed) const {
  std::size_t mark = std::min(needed, kReceiveLowWaterCap);
  if (mark <= 1) return 1;
  int rcvbuf = 0;
  socklen_t len = sizeof(rcvbuf);
  if (getsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len) != 0 || rcvbuf <= 0) return 1;
  return std::max<std::size_t>(1, std::min(mark, static_cast<std::size_t>(rcvbuf) / 4));
}

void TcpStream::SetReceiveLowWater(std::size_t bytes) {
  const int mark = static_cast<int>(std::max<std::size_t>(bytes, 1));
  if (mark == receive_low_water_) return;
  // Best effort: without it the read still completes, waking more often.
  if (setsockopt(fd_.get(), SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof(mark)) == 0) {
    receive_low_water_ = mark;
  }
}

void TcpStream::Shutdown() {
  if (fd_.valid()) (void)shutdown(fd_.get(), SHUT_RDWR);
  if (lanes_ != nullptr) lanes_->Shutdown();
}

std::string TcpStream::LocalHost() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return NumericHost(ss);
}

std::string TcpStream::PeerHost() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return NumericHost(ss);
}

int TcpStream::lane_count() const { return lanes_ == nullptr ? 1 : 1 + lanes_->size(); }

absl::Status TcpStream::PrepareLanes(int count) { return lanes_->Prepare(count); }

void TcpStream::DropPreparedLanes() { lanes_->DropPrepared(); }

void TcpStream::AttachLanes(std::vector<TcpStream> lanes) {
  for (TcpStream& lane : lanes) lane.set_busy_poll(busy_poll_);
  lanes_->Attach(std::move(lanes));
}

absl::Status TcpStream::WriteStriped(const unsigned char* head, std::size_t head_size,
                                     absl::Span<const transport::Piece> payload,
                                     absl::Time deadline, std::size_t* written) {
  *written = 0;
  std::uint64_t frame_bytes = 0;
  for (const transport::Piece& p : payload) frame_bytes += p.size;
  const int lanes = lane_count();
  const std::uint64_t chunk = transport::StripeChunkBytes(frame_bytes, lanes);
  std::vector<std::size_t> lane_written(static_cast<std::size_t>(lanes), 0);
  std::vector<Pieces> shares(static_cast<std::size_t>(lanes));
  int posted = 0;
  for (int k = 1; k < lanes; ++k) {
    const std::uint64_t begin = chunk * static_cast<std::uint64_t>(k);
    if (begin >= frame_bytes) break;
    shares[k] = Slice(payload, begin, std::min(frame_bytes, begin + chunk));
    lanes_->sender(k).Post([this, k, &shares, &lane_written, deadline] {
      return lanes_->lane(k).WriteFrame(nullptr, 0, shares[k], deadline, &lane_written[k]);
    });
    posted = k;
  }
  const Pieces first = Slice(payload, 0, std::min(frame_bytes, chunk));
  absl::Status status = WriteFrame(head, head_size, first, deadline, &lane_written[0]);
  if (!status.ok()) Shutdown();  // the lanes' writes end at once
  for (int k = 1; k <= posted; ++k) JoinLaneJob(lanes_->sender(k), *this, &status);
  for (std::size_t n : lane_written) *written += n;
  return status;
}

absl::Status TcpStream::ReadStriped(void* dst, std::size_t n, std::uint64_t frame_bytes,
                                    std::uint64_t offset, absl::Time deadline, std::size_t* got) {
  *got = 0;
  const int lanes = lane_count();
  const std::uint64_t chunk = transport::StripeChunkBytes(frame_bytes, lanes);
  const std::uint64_t end = offset + n;
  char* out = static_cast<char*>(dst);
  std::vector<std::size_t> lane_got(static_cast<std::size_t>(lanes), 0);
  // The first lane the range touches is read here; the others by their threads.
  int mine = -1;
  std::uint64_t mine_lo = 0, mine_hi = 0;
  absl::InlinedVector<int, kMaxLanes> posted;
  for (int k = 0; k < lanes; ++k) {
    const std::uint64_t lo = std::max(offset, chunk * static_cast<std::uint64_t>(k));
    const std::uint64_t hi =
        std::min({end, chunk * static_cast<std::uint64_t>(k + 1), frame_bytes});
    if (lo >= hi) continue;
    if (mine < 0) {
      mine = k;
      mine_lo = lo;
      mine_hi = hi;
      continue;
    }
    lanes_->receiver(k).Post(
        [this, k, dst = out + (lo - offset), size = hi - lo, deadline, &lane_got] {
          return lanes_->lane(k).Read(dst, static_cast<std::size_t>(size), deadline, &lane_got[k]);
        });
    posted.push_back(k);
  }
  absl::Status status;
  if (mine >= 0) {
    TcpStream& own = mine == 0 ? *this : lanes_->lane(mine);
    status = own.Read(out + (mine_lo - offset), static_cast<std::size_t>(mine_hi - mine_lo),
                      deadline, &lane_got[static_cast<std::size_t>(mine)]);
    if (!status.ok()) Shutdown();
  }
  for (int k : posted) JoinLaneJob(lanes_->receiver(k), *this, &status);
  for (std::size_t g : lane_got) *got += g;
  return status;
}

absl::StatusOr<TcpListenSocket> TcpListenSocket::Create(absl::string_view host, std::uint16_t port,
                                                        const SocketSettings& settings) {
  const std::string target = HostPort(host, port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* result = nullptr;
  const std::string host_str(host);
  const std::string port_str = std::to_string(port);
  const int gai =
      getaddrinfo(host.empty() ? nullptr : host_str.c_str(), port_str.c_str(), &hints, &result);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tcp listen on ", target, ": cannot resolve host: ", gai_strerror(gai)));
  }
  absl::Status last = absl::UnavailableError(absl::StrCat("tcp listen on ", target, " failed"));
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = absl::InternalError(
          absl::StrCat("tcp listen on ", target, ": socket() failed: ", ErrnoText(errno)));
      continue;
    }
    const int one = 1;
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    absl::Status s = Configure(fd.get(), settings);  // accepted sockets inherit the buffers
    if (!s.ok()) {
      last = s;
      continue;
    }
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = absl::UnavailableError(
          absl::StrCat("tcp listen on ", target, ": bind failed: ", ErrnoText(errno)));
      continue;
    }
    if (listen(fd.get(), 128) != 0) {
      last = absl::UnavailableError(
          absl::StrCat("tcp listen on ", target, ": listen failed: ", ErrnoText(errno)));
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
      last = absl::InternalError(
          absl::StrCat("tcp listen on ", target, ": getsockname failed: ", ErrnoText(errno)));
      continue;
    }
    const std::uint16_t bound_port = ss.ss_family == AF_INET6
                                         ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    freeaddrinfo(result);
    return TcpListenSocket(std::move(fd), bound_port, SockaddrText(ss), settings);
  }
  freeaddrinfo(result);
  return last;
}

absl::StatusOr<TcpStream> TcpListenSocket::Accept(absl::Duration timeout) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  absl::StatusOr<UniqueFd> fd =
      AcceptBefore(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, absl::Now() + timeout);
  if (absl::IsDeadlineExceeded(fd.status())) {
    return absl::DeadlineExceededError(absl::StrCat(
        "tcp listener ", address_, ": no connection within ", absl::FormatDuration(timeout)));
  }
  if (!fd.ok()) {
    return absl::Status(fd.status().code(),
                        absl::StrCat("tcp listener ", address_, ": ", fd.status().message()));
  }
  absl::Status s = Configure(fd->get(), settings_);
  if (!s.ok()) return s;
  return TcpStream(std::move(*fd), absl::StrCat("tcp ", SockaddrText(ss)));
}

namespace {

// Milliseconds until `deadline` for poll(), rounded up, at least 0.
int PollTimeoutMs(absl::Time deadline) {
  const absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
  return static_cast<int>(std::min<std::int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

}  // namespace

absl::StatusOr<std::vector<TcpStream>> TcpListenSocket::AcceptLanes(int count,
                                                                    absl::string_view token,
                                                                    const std::string& peer_host,
                                                                    int abort_fd,
                                                                    absl::Time deadline) {
  std::vector<std::optional<TcpStream>> slots(static_cast<std::size_t>(count));
  int have = 0;
  int refused = 0;
  const auto failed = [&](absl::StatusCode code, absl::string_view why) {
    return absl::Status(
        code,
        absl::StrCat(have, " of ", count, " lanes came to ", address_, " ", why,
                     refused > 0 ? absl::StrCat(" (", refused, " refused: wrong hello)") : ""));
  };
  while (have < count) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    UniqueFd fd(
        accept4(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err != EAGAIN && err != EWOULDBLOCK) {
        return failed(absl::StatusCode::kInternal,
                      absl::StrCat("before accept failed: ", ErrnoText(err)));
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return failed(absl::StatusCode::kDeadlineExceeded, "in time");
      }
      pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {abort_fd, POLLIN, 0}};
      const int rc = poll(fds, abort_fd >= 0 ? 2 : 1, PollTimeoutMs(deadline));
      if (rc < 0 && errno != EINTR) {
        return failed(absl::StatusCode::kInternal,
                      absl::StrCat("before poll failed: ", ErrnoText(errno)));
      }
      if (abort_fd >= 0 && fds[1].revents != 0) {
        return failed(absl::StatusCode::kCancelled, "before the client stopped waiting for them");
      }
      continue;
    }
    if (NumericHost(ss) != peer_host || !Configure(fd.get(), settings_).ok()) {
      ++refused;
      continue;
    }
    TcpStream lane(std::move(fd), absl::StrCat("tcp ", SockaddrText(ss)));
    // A lane says hello at once; one that connects and stays silent is refused after a
    // second, or as soon as the client stops waiting.
    const absl::Time hello_by = std::min(deadline, absl::Now() + absl::Seconds(1));
    pollfd wait[2] = {{lane.fd(), POLLIN, 0}, {abort_fd, POLLIN, 0}};
    int ready;
    do {
      ready = poll(wait, abort_fd >= 0 ? 2 : 1, PollTimeoutMs(hello_by));
    } while (ready < 0 && errno == EINTR);
    if (abort_fd >= 0 && ready > 0 && wait[1].revents != 0) {
      return failed(absl::StatusCode::kCancelled, "before the client stopped waiting for them");
    }
    unsigned char hello[kLaneHelloBytes];
    std::size_t got = 0;
    if (ready <= 0 || !lane.Read(hello, sizeof(hello), hello_by, &got).ok()) {
      ++refused;
      continue;
    }
    const auto magic = static_cast<std::uint32_t>(GetLe(hello, 4));
    const auto index = static_cast<std::int64_t>(GetLe(hello + 4, 4));
    const absl::string_view presented(reinterpret_cast<const char*>(hello + 8), kLaneTokenBytes);
    if (magic != kLaneMagic || index < 1 || index > count ||
        slots[static_cast<std::size_t>(index - 1)].has_value() || !ProofEquals(presented, token)) {
      ++refused;  // closed as `lane` goes
      continue;
    }
    lane.peer_ = absl::StrCat(lane.peer_, " (lane ", index, ")");
    slots[static_cast<std::size_t>(index - 1)].emplace(std::move(lane));
    ++have;
  }
  std::vector<TcpStream> lanes;
  lanes.reserve(slots.size());
  for (std::optional<TcpStream>& slot : slots) lanes.push_back(std::move(*slot));
  return lanes;
}

absl::StatusOr<std::vector<TcpStream>> ConnectLanes(const std::string& host, std::uint16_t port,
                                                    int count, absl::string_view token,
                                                    absl::Time deadline,
                                                    const SocketSettings& settings) {
  if (token.size() != kLaneTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a lane token has ", kLaneTokenBytes, " bytes, not ", token.size()));
  }
  std::vector<TcpStream> lanes;
  for (int k = 1; k <= count; ++k) {
    absl::StatusOr<TcpStream> lane = TcpStream::Connect(
        host, port, std::max(deadline - absl::Now(), absl::ZeroDuration()), settings);
    if (!lane.ok()) {
      return absl::Status(lane.status().code(),
                          absl::StrCat("lane ", k, " of ", count, ": ", lane.status().message()));
    }
    unsigned char hello[kLaneHelloBytes];
    PutLe(hello, kLaneMagic, 4);
    PutLe(hello + 4, static_cast<std::uint64_t>(k), 4);
    std::memcpy(hello + 8, token.data(), kLaneTokenBytes);
    std::size_t written = 0;
    absl::Status s = lane->WriteFrame(hello, sizeof(hello), {}, deadline, &written);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("lane ", k, " of ", count, ": ", s.message()));
    }
    lanes.push_back(std::move(*lane));
  }
  return lanes;
}

std::string EncodeLaneMessage(const LaneMessage& m) {
  // u32 lanes | u16 port | u32 wait_ms | u8 token bytes | token | note
  std::string out(kLaneMessageHeadBytes, '\0');
  auto* head = reinterpret_cast<unsigned char*>(out.data());
  PutLe(head, static_cast<std::uint64_t>(m.lanes), 4);
  PutLe(head + 4, m.port, 2);
  PutLe(head + 6, m.wait_ms, 4);
  head[10] = static_cast<unsigned char>(m.token.size());
  out += m.token;
  out += m.note.substr(0, kMaxLaneMessageBytes - std::min(out.size(), kMaxLaneMessageBytes));
  return out;
}

absl::StatusOr<LaneMessage> DecodeLaneMessage(absl::string_view bytes) {
  const auto* in = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < kLaneMessageHeadBytes || bytes.size() > kMaxLaneMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a kLanes message of ", bytes.size(), " bytes (",
                                                   kLaneMessageHeadBytes, " to ",
                                                   kMaxLaneMessageBytes, " expected)"));
  }
  LaneMessage m;
  const std::uint64_t lanes = GetLe(in, 4);
  const std::size_t token_bytes = in[10];
  if (lanes < 1 || lanes > static_cast<std::uint64_t>(kMaxLanes) ||
      (token_bytes != 0 && token_bytes != kLaneTokenBytes) ||
      kLaneMessageHeadBytes + token_bytes > bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a malformed kLanes message (", lanes,
                                                   " lanes, a token of ", token_bytes,
                                                   " bytes); lanes are 1 to ", kMaxLanes));
  }
  m.lanes = static_cast<int>(lanes);
  m.port = static_cast<std::uint16_t>(GetLe(in + 4, 2));
  m.wait_ms = static_cast<std::uint32_t>(GetLe(in + 6, 4));
  m.token = std::string(bytes.substr(kLaneMessageHeadBytes, token_bytes));
  m.note = std::string(bytes.substr(kLaneMessageHeadBytes + token_bytes));
  return m;
}

}  // namespace genie::transport_internal
