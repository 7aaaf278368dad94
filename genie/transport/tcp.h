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
//
// Lanes: one TCP stream is copied through the kernel by one core on each side (about 4-5 GB/s
// on loopback). A policy with kLanes > 1 asks the peer, after connecting (and authenticating),
// for that many sockets in all; frames of at least kStripeMinBytes are then striped over them,
// each lane's share copied by its own thread:
//
//   client:  GENIE_ASSIGN_OR_RETURN(LaneResult r, client.OpenLanes(absl::Seconds(5)));
//   server:  header = server.ReceiveHeader(...);   // kind kLanes
//            GENIE_ASSIGN_OR_RETURN(LaneResult r, server.AcceptLanes(*header, 8,
//            absl::Seconds(5)));
//
//   client -> server  kLanes  {lanes wanted}
//   server -> client  kLanes  {lanes granted, port, 16-byte token}   (granted 1: done)
//   client -> server  lanes 1..n-1 connect to that port, each sending "GLNE" | index | token
//                     (or, when it cannot connect them: kLanes {1 lane, why}, and the server
//                     stops waiting)
//   server -> client  kLanes  {lanes attached, and why fewer}
//
// The server listens for the lanes on a port of its own for this connection only, on the
// address the client reached, and takes a lane only with the token it offered (compared in
// constant time). A lane that does not come leaves the connection working on one socket.
#ifndef GENIE_TRANSPORT_TCP_H_
#define GENIE_TRANSPORT_TCP_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/core/cpu_cores.h"
#include "genie/core/status.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/auth_crypto.h"
#include "genie/transport/internal/framed_handle.h"
#include "genie/transport/internal/tcp_stream.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/traits.h"

namespace genie::transport {

template <class P>
class Listener<P, Tcp>;

// What a lane handshake ended with: the sockets the connection now has (1: no lanes) and, when
// fewer than asked, why.
struct LaneResult {
  int lanes = 1;
  std::string note;
};

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

  // Client side: asks the peer for transport_traits<P>::lanes sockets in all (with
  // lanes_by_cores, at most half this machine's usable cores), or for `want_lanes` when it
  // is 1 or more (up to 16), and attaches those it grants (see the top of this file). Lanes
  // that cannot be made leave the connection on one socket (LaneResult says why); an error
  // means the connection itself failed or the peer broke the handshake, and the connection
  // is closed.
  absl::StatusOr<LaneResult> OpenLanes(absl::Duration timeout, int want_lanes = 0) {
    constexpr int kWant = transport_traits<P>::lanes;
    static_assert(kWant >= 1 && kWant <= transport_internal::kMaxLanes,
                  "kLanes is 1 (one socket) to 16");
    int want = kWant;
    if constexpr (transport_traits<P>::lanes_by_cores) {
      want = std::min(want, std::max(1, core::UsableCores() / 2));
    }
    if (want_lanes > 0) want = std::min(want_lanes, transport_internal::kMaxLanes);
    if (want <= 1 || this->lane_count() > 1) return LaneResult{this->lane_count(), ""};
    const absl::Time deadline = absl::Now() + timeout;
    transport_internal::LaneMessage request;
    request.lanes = want;
    GENIE_RETURN_IF_ERROR(ClosingOnError(
        this->SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(request))));
    absl::StatusOr<transport_internal::LaneMessage> offer = ReceiveLaneMessage(deadline);
    if (!offer.ok()) return ClosingOnError(offer.status());
    if (offer->lanes <= 1) return LaneResult{1, offer->note};
    if (offer->lanes > want || offer->token.size() != transport_internal::kLaneTokenBytes) {
      return ClosingOnError(absl::DataLossError(
          absl::StrCat(this->peer(), ": offered ", offer->lanes, " lanes for ", want, " asked")));
    }
    const absl::Time lanes_by =
        std::min(deadline, absl::Now() + absl::Milliseconds(offer->wait_ms));
    const absl::Status prepared = this->mutable_stream().PrepareLanes(offer->lanes - 1);
    absl::StatusOr<std::vector<transport_internal::TcpStream>> lanes =
        prepared.ok()
            ? transport_internal::ConnectLanes(this->stream().PeerHost(), offer->port,
                                               offer->lanes - 1, offer->token, lanes_by, Settings())
            : prepared;
    if (!lanes.ok()) {
      // The node stops waiting for lanes when this arrives.
      transport_internal::LaneMessage give_up;
      give_up.note = std::string(lanes.status().message());
      GENIE_RETURN_IF_ERROR(ClosingOnError(
          this->SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(give_up))));
    }
    // The node answers once every lane came, once it read the give-up, or after its wait.
    absl::StatusOr<transport_internal::LaneMessage> answer =
        ReceiveLaneMessage(std::max(deadline, lanes_by + absl::Seconds(2)));
    if (!answer.ok()) return ClosingOnError(answer.status());
    if (!lanes.ok() || answer->lanes != offer->lanes) {
      this->mutable_stream().DropPreparedLanes();
      return LaneResult{1, !lanes.ok() ? std::string(lanes.status().message()) : answer->note};
    }
    AttachUnlessClosed(std::move(*lanes));
    return LaneResult{this->lane_count(), ""};
  }

  // Server side: answers the kLanes request whose header `request` was just received,
  // granting at most `max_lanes` sockets in all (1: none) and waiting for them at most
  // `timeout` (and 3 s). Errors as for OpenLanes.
  absl::StatusOr<LaneResult> AcceptLanes(const FrameHeader& request, int max_lanes,
                                         absl::Duration timeout) {
    if (request.kind != MessageKind::kLanes ||
        request.payload_bytes > transport_internal::kMaxLaneMessageBytes) {
      return ClosingOnError(absl::InvalidArgumentError(
          absl::StrCat(this->peer(), ": a lane request must be a kLanes frame of at most ",
                       transport_internal::kMaxLaneMessageBytes, " bytes")));
    }
    std::string payload(static_cast<std::size_t>(request.payload_bytes), '\0');
    GENIE_RETURN_IF_ERROR(ClosingOnError(this->ReceivePayload(payload.data(), payload.size())));
    absl::StatusOr<transport_internal::LaneMessage> wanted =
        transport_internal::DecodeLaneMessage(payload);
    if (!wanted.ok()) {
      return ClosingOnError(
          absl::InvalidArgumentError(absl::StrCat(this->peer(), ": ", wanted.status().message())));
    }
    if (wanted->lanes <= 1) {
      // A client's give-up that came after this side had stopped waiting and answered: the
      // client read that answer; nothing more to say.
      return LaneResult{this->lane_count(), ""};
    }
    if (this->lane_count() > 1) {
      return ClosingOnError(
          absl::FailedPreconditionError(absl::StrCat(this->peer(), ": asked for lanes twice")));
    }
    transport_internal::LaneMessage offer;
    offer.lanes = std::max(1, std::min({wanted->lanes, max_lanes, transport_internal::kMaxLanes}));
    if (offer.lanes <= 1) {
      offer.note = absl::StrCat("the peer grants one socket (its limit is ", max_lanes, ")");
    }
    const std::string local = this->stream().LocalHost();
    const std::string peer = this->stream().PeerHost();
    absl::StatusOr<transport_internal::TcpListenSocket> listener =
        absl::UnavailableError("no lanes");
    absl::StatusOr<std::string> token = std::string();
    if (offer.lanes > 1) {
      absl::Status why;
      if (local.empty() || peer.empty()) {
        why = absl::InternalError("the connection's addresses are unknown");
      } else {
        listener = transport_internal::TcpListenSocket::Create(local, 0, Settings());
        token = transport_internal::RandomBytes(transport_internal::kLaneTokenBytes);
        why = !listener.ok() ? listener.status()
              : !token.ok()  ? token.status()
                             : this->mutable_stream().PrepareLanes(offer.lanes - 1);
      }
      if (!why.ok()) {
        offer.note = absl::StrCat("the peer could not take lanes: ", why.message());
        offer.lanes = 1;
      }
    }
    const absl::Duration wait = std::clamp(timeout, absl::ZeroDuration(), absl::Seconds(3));
    if (offer.lanes > 1) {
      offer.port = listener->port();
      offer.token = *token;
      offer.wait_ms = static_cast<std::uint32_t>(absl::ToInt64Milliseconds(wait));
    }
    GENIE_RETURN_IF_ERROR(ClosingOnError(
        this->SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(offer))));
    if (offer.lanes <= 1) return LaneResult{1, offer.note};
    absl::StatusOr<std::vector<transport_internal::TcpStream>> lanes = listener->AcceptLanes(
        offer.lanes - 1, *token, peer, this->stream().fd(), absl::Now() + wait);
    transport_internal::LaneMessage answer;
    if (lanes.ok()) {
      answer.lanes = offer.lanes;
    } else if (absl::IsCancelled(lanes.status())) {
      // The client gave up (its give-up is the next frame) or left (reading fails).
      absl::StatusOr<transport_internal::LaneMessage> give_up =
          ReceiveLaneMessage(absl::Now() + timeout);
      if (!give_up.ok()) return ClosingOnError(give_up.status());
      answer.note = absl::StrCat("the client could not connect its lanes: ", give_up->note);
    } else {
      answer.note = std::string(lanes.status().message());
    }
    // Sent before the lanes are attached: the client reads it before it attaches its own.
    GENIE_RETURN_IF_ERROR(ClosingOnError(
        this->SendBytes(MessageKind::kLanes, 0, transport_internal::EncodeLaneMessage(answer))));
    if (lanes.ok()) {
      AttachUnlessClosed(std::move(*lanes));
    } else {
      this->mutable_stream().DropPreparedLanes();
    }
    return LaneResult{this->lane_count(), answer.note};
  }

 private:
  // `s`, closing the connection first when it is an error: a lane handshake cut short
  // leaves the two ends unsure whether they stripe. The lane threads it prepared stop.
  absl::Status ClosingOnError(absl::Status s) {
    if (!s.ok()) {
      this->Close();
      this->mutable_stream().DropPreparedLanes();
    }
    return s;
  }

  // Attaches `lanes`; a connection closed meanwhile (Close from another thread) shuts them
  // down at once.
  void AttachUnlessClosed(std::vector<transport_internal::TcpStream> lanes) {
    this->mutable_stream().AttachLanes(std::move(lanes));
    if (this->broken()) this->mutable_stream().Shutdown();
  }

  // The next frame, which must be a small kLanes frame.
  absl::StatusOr<transport_internal::LaneMessage> ReceiveLaneMessage(absl::Time deadline) {
    absl::StatusOr<FrameHeader> header =
        this->ReceiveHeader(std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!header.ok()) {
      return absl::Status(header.status().code(),
                          absl::StrCat("opening lanes: ", header.status().message()));
    }
    if (header->kind != MessageKind::kLanes ||
        header->payload_bytes > transport_internal::kMaxLaneMessageBytes) {
      return absl::DataLossError(absl::StrCat(
          this->peer(), ": expected a kLanes answer, got ", MessageKindName(header->kind), " of ",
          header->payload_bytes, " bytes (does the peer speak Genie lanes?); connection closed"));
    }
    std::string payload(static_cast<std::size_t>(header->payload_bytes), '\0');
    GENIE_RETURN_IF_ERROR(this->ReceivePayload(payload.data(), payload.size()));
    absl::StatusOr<transport_internal::LaneMessage> m =
        transport_internal::DecodeLaneMessage(payload);
    if (!m.ok()) {
      return absl::DataLossError(
          absl::StrCat(this->peer(), ": ", m.status().message(), "; connection closed"));
    }
    return m;
  }

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
