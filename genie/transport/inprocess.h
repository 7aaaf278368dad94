// File: genie/transport/inprocess.h
// The InProcess backend: a connected pair of Connection<P> in one process over in-memory
// queues, with the frame semantics of every backend (timeouts, close, validation, counters).
// For tests and as a baseline; the payload is copied once into the queue.
//
//   using genie::transport::InProcess;
//   auto [client, server] = *Connection<InProcess>::CreatePair();
//   GENIE_RETURN_IF_ERROR(client.SendBytes(MessageKind::kPing, 1, "hi"));
//   GENIE_ASSIGN_OR_RETURN(Frame f, server.Receive(absl::Seconds(1)));
#ifndef GENIE_TRANSPORT_INPROCESS_H_
#define GENIE_TRANSPORT_INPROCESS_H_

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
#include "genie/transport/internal/framed_connection.h"
#include "genie/transport/internal/inprocess_stream.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/traits.h"

namespace genie::transport {

template <class P>
class Connection<P, InProcess> {
  static_assert(is_transport_policy_v<P>, "Connection<P>: P is not a transport policy");
  using Impl = transport_internal::FramedConnection<transport_internal::InProcessStream>;

 public:
  using Policy = P;
  static constexpr std::string_view kTransportName = transport_traits<P>::name;

  // Two connections joined to each other: what one sends, the other receives.
  static absl::StatusOr<std::pair<Connection, Connection>> CreatePair(
      const ConnectionOptions& options = {}) {
    auto streams = transport_internal::InProcessStream::CreatePair();
    return std::pair<Connection, Connection>(Connection(std::move(streams.first), options),
                                             Connection(std::move(streams.second), options));
  }

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;

  absl::Status Send(MessageKind kind, std::uint64_t request_id, absl::Span<const Piece> payload,
                    TrafficClass traffic = TrafficClass::kControl) {
    return impl_->Send(kind, request_id, payload, traffic);
  }
  absl::Status SendBytes(MessageKind kind, std::uint64_t request_id, absl::string_view payload,
                         TrafficClass traffic = TrafficClass::kControl) {
    const Piece piece{payload.data(), payload.size()};
    return impl_->Send(kind, request_id, absl::MakeConstSpan(&piece, 1), traffic);
  }
  absl::StatusOr<FrameHeader> ReceiveHeader(absl::Duration timeout) {
    return impl_->ReceiveHeader(timeout);
  }
  absl::Status ReceivePayload(void* dst, std::size_t size) {
    return impl_->ReceivePayload(dst, size);
  }
  absl::Status DiscardPayload() { return impl_->DiscardPayload(); }
  absl::StatusOr<Frame> Receive(absl::Duration timeout) { return impl_->Receive(timeout); }

  void Close() { impl_->Close(); }
  bool broken() const { return impl_->broken(); }
  absl::Status status() const { return impl_->status(); }
  const TrafficCounters& counters() const { return impl_->counters(); }
  const std::string& peer() const { return impl_->peer(); }
  absl::Status WriteRawForTesting(absl::string_view bytes) {
    return impl_->WriteRawForTesting(bytes);
  }

 private:
  Connection(transport_internal::InProcessStream stream, const ConnectionOptions& options)
      : impl_(std::make_unique<Impl>(
            std::move(stream), transport_internal::FramedParams{
                                   transport_traits<P>::max_frame_bytes,
                                   absl::string_view(kTransportName.data(), kTransportName.size()),
                                   options.send_timeout, options.payload_timeout})) {}

  std::unique_ptr<Impl> impl_;
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_INPROCESS_H_
