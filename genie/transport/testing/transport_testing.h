// File: genie/transport/testing/transport_testing.h
// What the transport tests share: a reproducible byte pattern to send and check, and a test
// of an error message's wording. Test-only.
//
//   const std::vector<unsigned char> data = transport::testing::Pattern(1 << 20, /*seed=*/7);
//   EXPECT_TRUE(transport::testing::Contains(status, "timed out")) << status;
#ifndef GENIE_TRANSPORT_TESTING_TRANSPORT_TESTING_H_
#define GENIE_TRANSPORT_TESTING_TRANSPORT_TESTING_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace genie::transport::testing {

// `n` bytes from a linear congruential generator: the same for the same seed, different for
// different seeds.
inline std::vector<unsigned char> Pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = static_cast<unsigned char>(x >> 24);
  }
  return v;
}

// Whether the status's message contains `what`.
inline bool Contains(const absl::Status& s, absl::string_view what) {
  return s.message().find(what) != absl::string_view::npos;
}

}  // namespace genie::transport::testing

#endif  // GENIE_TRANSPORT_TESTING_TRANSPORT_TESTING_H_
