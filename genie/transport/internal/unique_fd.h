// File: genie/transport/internal/unique_fd.h
// RAII owner of a POSIX file descriptor: closed on destruction, movable, not copyable.
#ifndef GENIE_TRANSPORT_INTERNAL_UNIQUE_FD_H_
#define GENIE_TRANSPORT_INTERNAL_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace genie::transport_internal {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);  // close(2) may report EINTR; the fd is released regardless
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_UNIQUE_FD_H_
