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
#include "genie/transport/internal/framed_handle.h"
#include "genie/transport/internal/inprocess_stream.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/traits.h"

namespace genie::transport {

template <class P>
class Connection<P, InProcess>
    : public transport_internal::FramedHandle<P, transport_internal::InProcessStream> {
  static_assert(is_transport_policy_v<P>, "Connection<P>: P is not a transport policy");
  using Base = transport_internal::FramedHandle<P, transport_internal::InProcessStream>;

 public:
  // Two connections joined to each other: what one sends, the other receives.
  static absl::StatusOr<std::pair<Connection, Connection>> CreatePair(
      const ConnectionOptions& options = {}) {
    auto streams = transport_internal::InProcessStream::CreatePair();
    return std::pair<Connection, Connection>(Connection(std::move(streams.first), options),
                                             Connection(std::move(streams.second), options));
  }

 private:
  using Base::Base;
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_INPROCESS_H_
