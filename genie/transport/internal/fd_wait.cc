// File: genie/transport/internal/fd_wait.cc
#include "genie/transport/internal/fd_wait.h"

#include <errno.h>
#include <poll.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace genie::transport_internal {

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status WaitFd(int fd, short events, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("");
    pollfd pfd{fd, events, 0};
    const timespec ts = absl::ToTimespec(left);
    const int rc = ppoll(&pfd, 1, &ts, nullptr);
    if (rc > 0) return absl::OkStatus();
    if (rc == 0) continue;  // re-check the deadline
    if (errno == EINTR) continue;
    return absl::InternalError(absl::StrCat("poll failed: ", ErrnoText(errno)));
  }
}

absl::StatusOr<UniqueFd> AcceptBefore(int listen_fd, sockaddr* addr, socklen_t* len,
                                      absl::Time deadline) {
  const socklen_t capacity = len != nullptr ? *len : 0;
  for (;;) {
    if (len != nullptr) *len = capacity;
    UniqueFd fd(accept4(listen_fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd.valid()) return fd;
    const int err = errno;
    if (err == EINTR || err == ECONNABORTED) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      return absl::InternalError(absl::StrCat("accept failed: ", ErrnoText(err)));
    }
    if (absl::Status s = WaitFd(listen_fd, POLLIN, deadline); !s.ok()) return s;
  }
}

}  // namespace genie::transport_internal
