// File: genie/transport/address.cc
#include "genie/transport/address.h"

#include <charconv>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace genie::transport {

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address, bool allow_port_zero) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon != absl::string_view::npos && colon > 0 && colon + 1 < address.size()) {
    const char* end = address.data() + address.size();
    auto [ptr, ec] = std::from_chars(address.data() + colon + 1, end, port);
    if (ec != std::errc() || ptr != end) port = -1;
  }
  absl::string_view host = colon == absl::string_view::npos ? "" : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (port < (allow_port_zero ? 0 : 1) || port > 65535 || host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port"));
  }
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

}  // namespace genie::transport
