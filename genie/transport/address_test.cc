// File: genie/transport/address_test.cc
#include "genie/transport/address.h"

#include "gtest/gtest.h"

namespace genie::transport {
namespace {

TEST(ParseHostPort, TakesHostsAndBracketedIpv6) {
  auto a = ParseHostPort("10.0.0.7:7070");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "10.0.0.7");
  EXPECT_EQ(a->port, 7070);
  auto b = ParseHostPort("[::1]:65535");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->port, 65535);
}

TEST(ParseHostPort, RefusesWhatIsNotHostPort) {
  for (const char* bad : {"", "7070", ":7070", "host:", "host:0", "host:65536", "host:70a",
                          "host:-1", "host: 70", "[]:70"}) {
    auto r = ParseHostPort(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << bad;
  }
}

TEST(ParseHostPort, PortZeroOnlyWhereAllowed) {
  EXPECT_FALSE(ParseHostPort("127.0.0.1:0").ok());
  auto any = ParseHostPort("127.0.0.1:0", /*allow_port_zero=*/true);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->port, 0);
}

}  // namespace
}  // namespace genie::transport
