// File: genie/transport/options.h
// Run-time settings every Connection takes at creation (timeouts); compile-time settings live
// in the policy (policies.h).
//
//   genie::transport::ConnectionOptions options;
//   options.send_timeout = absl::Seconds(5);
//   auto conn = Connection<Tcp>::Connect("127.0.0.1", port, absl::Seconds(2), options);
#ifndef GENIE_TRANSPORT_OPTIONS_H_
#define GENIE_TRANSPORT_OPTIONS_H_

#include "absl/time/time.h"

namespace genie::transport {

struct ConnectionOptions {
  // How long one Send may wait for the peer to drain (a stuck peer gives DeadlineExceeded).
  absl::Duration send_timeout = absl::Seconds(30);
  // How long ReceivePayload / the payload part of Receive may wait for the rest of a frame
  // whose header arrived.
  absl::Duration payload_timeout = absl::Seconds(30);
  // Socket transports: when a receive finds nothing, keep retrying it for this long before
  // sleeping in poll(). Trades a spinning core for the wake-up latency of a blocked thread
  // (tens of microseconds per message in a VM); zero (the default) never spins.
  absl::Duration busy_poll = absl::ZeroDuration();
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_OPTIONS_H_
