// File: genie/transport/internal/tcp_stream.h
// Kernel TCP sockets as a byte Stream for FramedConnection (see framed_connection.h):
// non-blocking fds, poll-based deadlines, gathered sendmsg, EINTR and partial writes handled.
// Setup (connect, listen, accept) lives in tcp_stream.cc; so do the I/O loops, reached by plain
// (non-virtual) calls.
//
// Lanes: a stream may have extra sockets to the same peer attached (AttachLanes; the
// handshake that makes them is tcp.h's OpenLanes/AcceptLanes). A striped frame (frame.h)
// spreads its payload over all of them; each lane's share is copied through the kernel by a
// thread of its own (one for sending, one for receiving, started when the lanes are
// prepared, before the handshake commits to them), so a large
// tensor crosses several cores' worth of copy bandwidth instead of one.
#ifndef GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_
#define GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

// Bytes of the random token an offer carries and each lane presents in its hello (after a
// magic and its index).
inline constexpr std::size_t kLaneTokenBytes = 16;
inline constexpr int kMaxLanes = 16;

class LaneSet;

class TcpStream {
 public:
  static absl::StatusOr<TcpStream> Connect(absl::string_view host, std::uint16_t port,
                                           absl::Duration timeout, const SocketSettings& settings);

  TcpStream(TcpStream&&) noexcept;
  TcpStream& operator=(TcpStream&&) noexcept;
  ~TcpStream();

  absl::Status WriteFrame(const unsigned char* head, std::size_t head_size,
                          absl::Span<const transport::Piece> payload, absl::Time deadline,
                          std::size_t* written);
  absl::Status Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got);
  // Shuts this socket and every lane down; safe from another thread.
  void Shutdown();
  // ConnectionOptions::busy_poll.
  void set_busy_poll(absl::Duration d) { busy_poll_ = d; }
  const std::string& peer() const { return peer_; }
  int fd() const { return fd_.get(); }
  // The numeric addresses of this socket's two ends, without port or brackets.
  std::string LocalHost() const;
  std::string PeerHost() const;

  // Sockets in all: this one plus the attached lanes.
  int lane_count() const;
  // Starts the threads for `count` lanes (two each), before the handshake commits to them:
  // ResourceExhausted when the process cannot start them (nothing is left prepared).
  absl::Status PrepareLanes(int count);
  // Attaches `lanes` (lanes 1..n, in order; PrepareLanes(n) first); both ends must attach the
  // same number before either sends a striped frame. Once only.
  void AttachLanes(std::vector<TcpStream> lanes);
  // Stops the threads PrepareLanes started when the lanes will not be attached.
  void DropPreparedLanes();
  // A striped frame: the head and lane 0's share of `payload` on this socket, lane k's share
  // on lane k, all at once. *written counts every lane's bytes. Any error shuts every socket
  // down: the frame is torn and the connection cannot go on.
  absl::Status WriteStriped(const unsigned char* head, std::size_t head_size,
                            absl::Span<const transport::Piece> payload, absl::Time deadline,
                            std::size_t* written);
  // The next `n` bytes at `offset` of a striped frame of `frame_bytes` payload bytes, read from
  // the lanes that carry them (the caller reads the first share, lane threads the others).
  absl::Status ReadStriped(void* dst, std::size_t n, std::uint64_t frame_bytes,
                           std::uint64_t offset, absl::Time deadline, std::size_t* got);

 private:
  friend class TcpListenSocket;
  TcpStream(UniqueFd fd, std::string peer);

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
  std::unique_ptr<LaneSet> lanes_;  // never null but in a moved-from stream
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
  // Accepts the `count` lanes of an offer made with `token`: each must come from
  // `peer_host` and present the token and a distinct index in [1, count] before `deadline`
  // (its hello within a second of connecting); sockets that do not are closed and waited
  // past. Cancelled as soon as `abort_fd` (the connection itself) turns readable: the client
  // gave up on its lanes, or left. Returned in lane order.
  absl::StatusOr<std::vector<TcpStream>> AcceptLanes(int count, absl::string_view token,
                                                     const std::string& peer_host, int abort_fd,
                                                     absl::Time deadline);
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

// Connects lanes `1..count` to host:port (an offer's), each introducing itself with its index
// and `token`.
absl::StatusOr<std::vector<TcpStream>> ConnectLanes(const std::string& host, std::uint16_t port,
                                                    int count, absl::string_view token,
                                                    absl::Time deadline,
                                                    const SocketSettings& settings);

// The payload of a kLanes frame, the same shape in all three steps of the handshake (tcp.h):
// the client's request (lanes wanted), the node's offer (lanes granted, the port to connect
// them to, the token they present) and the node's answer (lanes attached, and why fewer).
// A client that cannot connect its lanes says so with a request for 1 lane, and the node
// stops waiting for them.
struct LaneMessage {
  int lanes = 1;
  std::uint16_t port = 0;
  std::uint32_t wait_ms = 0;  // offer: how long the node waits for the lanes
  std::string token;          // kLaneTokenBytes, or empty
  std::string note;
};
std::string EncodeLaneMessage(const LaneMessage& m);
absl::StatusOr<LaneMessage> DecodeLaneMessage(absl::string_view bytes);
inline constexpr std::size_t kMaxLaneMessageBytes = 1024;

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_TCP_STREAM_H_
