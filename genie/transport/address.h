// File: genie/transport/address.h
// "host:port" as users and peers write node addresses: an IPv6 host in brackets
// ("[::1]:7070", the brackets dropped), a decimal port of 1..65535 (0 too where allowed: a
// listener's "any free port"). One parser for the client, the node, genie-smi and peer
// transfers; each caller words its own error around the InvalidArgument returned here.
#ifndef GENIE_TRANSPORT_ADDRESS_H_
#define GENIE_TRANSPORT_ADDRESS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace genie::transport {

struct HostPort {
  std::string host;  // without IPv6 brackets
  uint16_t port = 0;
};

// InvalidArgument (naming `address`) without a colon, with an empty host, or with a port
// that is not all digits or out of range.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address, bool allow_port_zero = false);

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_ADDRESS_H_
