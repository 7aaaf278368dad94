// File: genie/transport/internal/tcp_stream.h
// Kernel TCP sockets as a byte Stream for FramedConnection (see framed_connection.h):
// non-blocking fds, poll-based deadlines, gathered sendmsg, EINTR and partial writes handled.
// Setup (connect, listen, accept) lives in tcp_stream.cc; so do the I/O loops, reached by plain
// (non-virtual) calls.
#ifndef GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_
#define GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/unique_fd.h"

namespace genie::transport_internal {

struct SocketSettings {
  bool no_delay = true;
  int buffer_bytes = 0;  // SO_SNDBUF / SO_RCVBUF; 0 = kernel autotuning
};

class TcpStream {
 public:
  static absl::StatusOr<TcpStream> Connect(absl::string_view host, std::uint16_t port,
                                           absl::Duration timeout, const SocketSettings& settings);

  TcpStream(TcpStream&&) = default;
  TcpStream& operator=(TcpStream&&) = default;

  absl::Status WriteFrame(const unsigned char* head, std::size_t head_size,
                          absl::Span<const transport::Piece> payload, absl::Time deadline,
                          std::size_t* written);
  absl::Status Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got);
  void Shutdown();
  // ConnectionOptions::busy_poll.
  void set_busy_poll(absl::Duration d) { busy_poll_ = d; }
  const std::string& peer() const { return peer_; }
  int fd() const { return fd_.get(); }

 private:
  friend class TcpListenSocket;
  TcpStream(UniqueFd fd, std::string peer) : fd_(std::move(fd)), peer_(std::move(peer)) {}

  // A reader waiting for a large payload sleeps until this much is queued (SO_RCVLOWAT),
  // at most a quarter of the socket's receive buffer, in slices of kReceiveLowWaterSlice.
  static constexpr std::size_t kReceiveLowWaterCap = std::size_t{256} << 10;
  static constexpr absl::Duration kReceiveLowWaterSlice = absl::Milliseconds(10);
  std::size_t ReceiveLowWaterFor(std::size_t needed) const;
  void SetReceiveLowWater(std::size_t bytes);

  UniqueFd fd_;
  std::string peer_;  // "tcp 127.0.0.1:4242"
  absl::Duration busy_poll_ = absl::ZeroDuration();
  int receive_low_water_ = 1;  // the socket's SO_RCVLOWAT (the kernel's default is 1)
};

class TcpListenSocket {
 public:
  // Binds and listens on host:port (port 0 picks a free port). `settings` apply to accepted
  // sockets (buffer sizes are set on the listening socket so the window scale matches).
  static absl::StatusOr<TcpListenSocket> Create(absl::string_view host, std::uint16_t port,
                                                const SocketSettings& settings);

  TcpListenSocket(TcpListenSocket&&) = default;
  TcpListenSocket& operator=(TcpListenSocket&&) = default;

  absl::StatusOr<TcpStream> Accept(absl::Duration timeout);
  std::uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }  // "127.0.0.1:4242"

 private:
  TcpListenSocket(UniqueFd fd, std::uint16_t port, std::string address, SocketSettings settings)
      : fd_(std::move(fd)), port_(port), address_(std::move(address)), settings_(settings) {}

  UniqueFd fd_;
  std::uint16_t port_ = 0;
  std::string address_;
  SocketSettings settings_;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_
