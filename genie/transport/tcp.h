// File: genie/transport/tcp.h
// The Tcp backend: Connection<P> and Listener<P> for Tcp and its refinements, over kernel
// sockets (non-blocking, TCP_NODELAY, large buffers, poll-based timeouts, gathered sends
// straight from caller memory). Frame semantics are those of frame.h, shared with every
// backend.
//
//   using genie::transport::Tcp;
//   GENIE_ASSIGN_OR_RETURN(auto listener, Listener<Tcp>::Create("127.0.0.1", 0));
//   // ... another thread or process:
//   GENIE_ASSIGN_OR_RETURN(auto client,
//                          Connection<Tcp>::Connect("127.0.0.1", listener.port(),
//                                                   absl::Seconds(5)));
//   GENIE_ASSIGN_OR_RETURN(auto server, listener.Accept(absl::Seconds(5)));
//   GENIE_RETURN_IF_ERROR(client.SendBytes(MessageKind::kPing, /*request_id=*/7, "hi"));
//   GENIE_ASSIGN_OR_RETURN(FrameHeader h, server.ReceiveHeader(absl::Seconds(1)));
//   std::vector<char> buf(h.payload_bytes);
//   GENIE_RETURN_IF_ERROR(server.ReceivePayload(buf.data(), buf.size()));
#ifndef GENIE_TRANSPORT_TCP_H_
#define GENIE_TRANSPORT_TCP_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/framed_handle.h"
#include "genie/transport/internal/tcp_stream.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/traits.h"

namespace genie::transport {

template <class P>
class Listener<P, Tcp>;

template <class P>
class Connection<P, Tcp> : public transport_internal::FramedHandle<P, transport_internal::TcpStream> {
  static_assert(is_transport_policy_v<P>, "Connection<P>: P is not a transport policy");
  using Base = transport_internal::FramedHandle<P, transport_internal::TcpStream>;

 public:
  // Connects to host:port (IPv4 or IPv6 literal or name). Errors name host:port:
  // Unavailable on refusal, DeadlineExceeded after `timeout`.
  static absl::StatusOr<Connection> Connect(absl::string_view host, std::uint16_t port,
                                            absl::Duration timeout,
                                            const ConnectionOptions& options = {}) {
    absl::StatusOr<transport_internal::TcpStream> stream =
        transport_internal::TcpStream::Connect(host, port, timeout, Settings());
    if (!stream.ok()) return stream.status();
    stream->set_busy_poll(options.busy_poll);
    return Connection(std::move(*stream), options);
  }

 private:
  friend class Listener<P, Tcp>;
  using Base::Base;

  static transport_internal::SocketSettings Settings() {
    transport_internal::SocketSettings s;
    s.no_delay = transport_traits<P>::no_delay;
    s.buffer_bytes = transport_traits<P>::socket_buffer_bytes;
    return s;
  }
};

template <class P>
class Listener<P, Tcp> {
  static_assert(is_transport_policy_v<P>, "Listener<P>: P is not a transport policy");

 public:
  using Policy = P;

  // Listens on host:port; port 0 picks a free port (see port()). "127.0.0.1" for loopback.
  static absl::StatusOr<Listener> Create(absl::string_view host, std::uint16_t port) {
    absl::StatusOr<transport_internal::TcpListenSocket> socket =
        transport_internal::TcpListenSocket::Create(host, port, Connection<P, Tcp>::Settings());
    if (!socket.ok()) return socket.status();
    return Listener(std::move(*socket));
  }

  Listener(Listener&&) noexcept = default;
  Listener& operator=(Listener&&) noexcept = default;

  // Waits up to `timeout` for a client (DeadlineExceeded when none came).
  absl::StatusOr<Connection<P, Tcp>> Accept(absl::Duration timeout,
                                            const ConnectionOptions& options = {}) {
    absl::StatusOr<transport_internal::TcpStream> stream = socket_.Accept(timeout);
    if (!stream.ok()) return stream.status();
    stream->set_busy_poll(options.busy_poll);
    return Connection<P, Tcp>(std::move(*stream), options);
  }

  std::uint16_t port() const { return socket_.port(); }
  const std::string& address() const { return socket_.address(); }

 private:
  explicit Listener(transport_internal::TcpListenSocket socket) : socket_(std::move(socket)) {}

  transport_internal::TcpListenSocket socket_;
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_TCP_H_
