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
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "genie/transport/internal/fd_wait.h"
#include "genie/transport/internal/frame_pieces.h"

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
  if (settings.buffer_bytes > 0) {
    const int n = settings.buffer_bytes;
    // Best effort: the kernel caps these at net.core.{w,r}mem_max.
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof(n));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof(n));
  }
  return absl::OkStatus();
}

bool IsPeerGone(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

}  // namespace

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

}  // namespace genie::transport_internal
