// Proves Debian's Abseil 20220623 links: StatusOr, flat_hash_map, StrFormat.
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace {

absl::StatusOr<int> ParsePositive(int v) {
  if (v <= 0) return absl::InvalidArgumentError(absl::StrFormat("%d is not positive", v));
  return v;
}

TEST(AbslSmoke, StatusOrCarriesValueOrError) {
  EXPECT_EQ(*ParsePositive(3), 3);
  absl::StatusOr<int> bad = ParsePositive(-2);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "-2 is not positive");
}

TEST(AbslSmoke, FlatHashMapStoresAndFinds) {
  absl::flat_hash_map<std::string, int> m;
  for (int i = 0; i < 1000; ++i) m[absl::StrFormat("k%d", i)] = i;
  EXPECT_EQ(m.size(), 1000u);
  EXPECT_EQ(m.at("k777"), 777);
}

}  // namespace
