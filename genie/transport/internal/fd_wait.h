// File: genie/transport/internal/fd_wait.h
// What the socket-based streams (tcp_stream, shm_stream) share: errno text, waiting on a
// descriptor until a deadline, and accepting a connection before a deadline.
#ifndef GENIE_TRANSPORT_INTERNAL_FD_WAIT_H_
#define GENIE_TRANSPORT_INTERNAL_FD_WAIT_H_

#include <sys/socket.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "genie/transport/internal/unique_fd.h"

namespace genie::transport_internal {

std::string ErrnoText(int err);

// Waits until `fd` is ready for `events` or `deadline` passes (DeadlineExceeded, no message:
// callers add context). POLLERR/POLLHUP count as ready: the next syscall reports them.
absl::Status WaitFd(int fd, short events, absl::Time deadline);

// Accepts one connection on the non-blocking listening socket `listen_fd` before `deadline`;
// the socket is non-blocking and close-on-exec, `addr`/`len` (may be null) get the peer's
// address. DeadlineExceeded (no message) when none came; Internal naming what failed.
absl::StatusOr<UniqueFd> AcceptBefore(int listen_fd, sockaddr* addr, socklen_t* len,
                                      absl::Time deadline);

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_FD_WAIT_H_
