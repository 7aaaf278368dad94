// File: genie/transport/internal/framed_handle.h
// The public face every stream-based Connection<P, Backend> shares: the frame API
// (Send, ReceiveHeader, ReceivePayload, ...) forwarded to a FramedConnection over the
// backend's byte stream, with the policy's limits. A backend's Connection derives from
// it and adds only how streams are made (Connect, CreatePair, Accept).
#ifndef GENIE_TRANSPORT_INTERNAL_FRAMED_HANDLE_H_
#define GENIE_TRANSPORT_INTERNAL_FRAMED_HANDLE_H_

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
#include "genie/transport/options.h"
#include "genie/transport/traits.h"

namespace genie::transport_internal {

template <class P, class Stream>
class FramedHandle {
  using Impl = FramedConnection<Stream>;

 public:
  using Policy = P;
  static constexpr std::string_view kTransportName = transport::transport_traits<P>::name;

  FramedHandle(FramedHandle&&) noexcept = default;
  FramedHandle& operator=(FramedHandle&&) noexcept = default;

  // Sends one frame whose payload is the concatenation of `payload` (gathered, no copy).
  absl::Status Send(transport::MessageKind kind, std::uint64_t request_id,
                    absl::Span<const transport::Piece> payload,
                    transport::TrafficClass traffic = transport::TrafficClass::kControl) {
    return impl_->Send(kind, request_id, payload, traffic);
  }
  absl::Status SendBytes(transport::MessageKind kind, std::uint64_t request_id, absl::string_view payload,
                         transport::TrafficClass traffic = transport::TrafficClass::kControl) {
    const transport::Piece piece{payload.data(), payload.size()};
    return impl_->Send(kind, request_id, absl::MakeConstSpan(&piece, 1), traffic);
  }
  // Sends `frames` in order in one write where the backend can (one sendmsg on Tcp; frames
  // striped over lanes go out one by one); the receiver sees ordinary frames.
  absl::Status SendFrames(absl::Span<const transport::OutFrame> frames) {
    return impl_->SendFrames(frames);
  }
  // Waits up to `timeout` for the next frame's header (DeadlineExceeded when none came).
  absl::StatusOr<transport::FrameHeader> ReceiveHeader(absl::Duration timeout) {
    return impl_->ReceiveHeader(timeout);
  }
  // Reads the next `size` payload bytes of the current frame into `dst`; may be called
  // several times until the frame's payload_bytes are consumed.
  absl::Status ReceivePayload(void* dst, std::size_t size) { return impl_->ReceivePayload(dst, size); }
  absl::Status DiscardPayload() { return impl_->DiscardPayload(); }
  // ReceiveHeader + the payload into a fresh buffer.
  absl::StatusOr<transport::Frame> Receive(absl::Duration timeout) { return impl_->Receive(timeout); }

  void Close() { impl_->Close(); }
  bool broken() const { return impl_->broken(); }
  absl::Status status() const { return impl_->status(); }
  const transport::TrafficCounters& counters() const { return impl_->counters(); }
  const std::string& peer() const { return impl_->peer(); }
  // Sockets large frames are striped over (Tcp lanes, tcp.h); 1 for every other backend.
  int lane_count() const { return impl_->lane_count(); }
  absl::Status WriteRawForTesting(absl::string_view bytes) { return impl_->WriteRawForTesting(bytes); }

 protected:
  FramedHandle(Stream stream, const transport::ConnectionOptions& options)
      : impl_(std::make_unique<Impl>(
            std::move(stream),
            FramedParams{transport::transport_traits<P>::max_frame_bytes,
                         absl::string_view(kTransportName.data(), kTransportName.size()),
                         options.send_timeout, options.payload_timeout,
                         transport::transport_traits<P>::stripe_min_bytes})) {}

  // The backend's stream, for what only that backend has (Shm's tensor pool, Tcp's lanes).
  const Stream& stream() const { return impl_->stream(); }
  Stream& mutable_stream() { return impl_->stream(); }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_FRAMED_HANDLE_H_
