// File: genie/transport/shm.h
// The Shm backend: Connection<P> and Listener<P> for Shm and its refinements, between two
// processes of one host. A Unix-domain socket is the rendezvous; the bytes go through two
// rings in a shared memfd (one per direction, P::kRingBytes each), copied in from the
// sender's pieces and out into the receiver's memory, with eventfd wake-ups after a short
// spin. With P::kPoolBytes > 0 the connecting side also creates a tensor pool (pool.h) that
// both sides map: pool() on either end; code above the transport places tensors there and
// sends references instead of bytes. A peer that exits or dies is seen at once (the socket hangs up). Frame semantics are
// those of frame.h, shared with every backend; authenticate on top as for Tcp (auth.h).
//
//   using genie::transport::Shm;
//   GENIE_ASSIGN_OR_RETURN(auto listener, Listener<Shm>::Create("/tmp/genie-node.sock"));
//   // ... another process of the same host:
//   GENIE_ASSIGN_OR_RETURN(auto client,
//                          Connection<Shm>::Connect("/tmp/genie-node.sock", absl::Seconds(5)));
//   GENIE_ASSIGN_OR_RETURN(auto server, listener.Accept(absl::Seconds(5)));
//   GENIE_RETURN_IF_ERROR(client.SendBytes(MessageKind::kPing, /*request_id=*/7, "hi"));
//   GENIE_ASSIGN_OR_RETURN(Frame f, server.Receive(absl::Seconds(1)));
//
// A refinement picks the ring and pool sizes:
//   struct ShmSmallRings : Shm { static constexpr std::uint64_t kRingBytes = 1 << 20; };
//   ShmRingsOnly (policies.h) has no pool.
#ifndef GENIE_TRANSPORT_SHM_H_
#define GENIE_TRANSPORT_SHM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "genie/transport/internal/framed_handle.h"
#include "genie/transport/internal/shm_stream.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/pool.h"
#include "genie/transport/traits.h"

namespace genie::transport {

template <class P>
class Listener<P, Shm>;

template <class P>
class Connection<P, Shm>
    : public transport_internal::FramedHandle<P, transport_internal::ShmStream> {
  static_assert(is_transport_policy_v<P>, "Connection<P>: P is not a transport policy");
  static_assert(transport_traits<P>::ring_bytes >= transport_internal::kShmMinRingBytes &&
                    transport_traits<P>::ring_bytes <= transport_internal::kShmMaxRingBytes,
                "Connection<P, Shm>: P::kRingBytes must be within [4 KiB, 1 GiB]");
  static_assert(transport_traits<P>::pool_bytes == 0 ||
                    (transport_traits<P>::pool_bytes >= transport_internal::kShmMinPoolBytes &&
                     transport_traits<P>::pool_bytes <= transport_internal::kShmMaxPoolBytes &&
                     transport_traits<P>::pool_bytes % 4096 == 0),
                "Connection<P, Shm>: P::kPoolBytes must be 0 (no pool) or a multiple of 4 KiB "
                "within [1 MiB, 64 GiB]");
  using Base = transport_internal::FramedHandle<P, transport_internal::ShmStream>;

 public:
  // Connects to the node's Unix socket at `socket_path` (same host) and hands it the rings.
  // InvalidArgument for a bad path, Unavailable when nothing listens there,
  // DeadlineExceeded after `timeout`.
  static absl::StatusOr<Connection> Connect(absl::string_view socket_path, absl::Duration timeout,
                                            const ConnectionOptions& options = {}) {
    transport_internal::ShmSettings settings;
    settings.ring_bytes = transport_traits<P>::ring_bytes;
    settings.pool_bytes = transport_traits<P>::pool_bytes;
    absl::StatusOr<transport_internal::ShmStream> stream =
        transport_internal::ShmStream::Connect(socket_path, timeout, settings);
    if (!stream.ok()) return stream.status();
    stream->set_busy_poll(options.busy_poll);
    return Connection(std::move(*stream), options);
  }

  // The connection's tensor pool (the connecting side allocates in it; both sides read and
  // write it); null when the client asked for none. The accepting side sees the client's
  // pool whatever its own policy says.
  std::shared_ptr<SharedPool> pool() const { return Base::stream().pool(); }

 private:
  friend class Listener<P, Shm>;
  using Base::Base;
};

template <class P>
class Listener<P, Shm> {
  static_assert(is_transport_policy_v<P>, "Listener<P>: P is not a transport policy");

 public:
  using Policy = P;

  // Listens on the Unix socket `socket_path` (replacing a stale socket file; refusing one a
  // live process listens on). The file is removed when the listener goes away.
  static absl::StatusOr<Listener> Create(absl::string_view socket_path) {
    absl::StatusOr<transport_internal::ShmListenSocket> socket =
        transport_internal::ShmListenSocket::Create(socket_path);
    if (!socket.ok()) return socket.status();
    return Listener(std::move(*socket));
  }

  Listener(Listener&&) noexcept = default;
  Listener& operator=(Listener&&) noexcept = default;

  // Waits up to `timeout` for a client (DeadlineExceeded when none came). A client whose
  // rings fail validation is refused with an error naming it; call Accept again.
  absl::StatusOr<Connection<P, Shm>> Accept(absl::Duration timeout,
                                            const ConnectionOptions& options = {}) {
    absl::StatusOr<transport_internal::ShmStream> stream = socket_.Accept(timeout);
    if (!stream.ok()) return stream.status();
    stream->set_busy_poll(options.busy_poll);
    return Connection<P, Shm>(std::move(*stream), options);
  }

  const std::string& path() const { return socket_.path(); }

 private:
  explicit Listener(transport_internal::ShmListenSocket socket) : socket_(std::move(socket)) {}

  transport_internal::ShmListenSocket socket_;
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_SHM_H_
