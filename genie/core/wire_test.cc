// File: genie/core/wire_test.cc
// ByteWriter/ByteReader: exact little-endian bytes, round trips, and refusals that name
// what was truncated or oversized.
#include "genie/core/wire.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "genie/core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace genie::core {
namespace {

using ::testing::HasSubstr;

TEST(ByteWriterTest, WritesLittleEndianFixedWidths) {
  ByteWriter w;
  w.WriteU8(0xab);
  w.WriteU16(0x0102);
  w.WriteU32(0x01020304);
  w.WriteI64(-2);
  EXPECT_EQ(w.bytes(), std::string("\xab\x02\x01\x04\x03\x02\x01"
                                   "\xfe\xff\xff\xff\xff\xff\xff\xff",
                                   15));
  w.WriteString("hi");
  EXPECT_EQ(w.bytes().substr(15), std::string("\x02\x00\x00\x00hi", 6));
  EXPECT_TRUE(w.status().ok());
}

TEST(ByteWireTest, RoundTripsEveryType) {
  ByteWriter w;
  w.WriteRaw("MAGC");
  w.WriteU8(7);
  w.WriteU16(65535);
  w.WriteU32(0xdeadbeef);
  w.WriteU64(0x0123456789abcdefULL);
  w.WriteI64(std::numeric_limits<int64_t>::min());
  w.WriteF64(-0.0);
  w.WriteF64(std::numeric_limits<double>::quiet_NaN());
  w.WriteU8(1);
  w.WriteString("hello");
  w.WriteU8Span(std::vector<uint8_t>{1, 0, 1});
  w.WriteU32Span(std::vector<uint32_t>{9, 10});
  w.WriteI64Span(std::vector<int64_t>{2, -8});
  w.WriteF64Span(std::vector<double>{0.5, 1e300});
  std::string bytes = w.Release();

  ByteReader r(bytes);
  ASSERT_TRUE(r.Expect("MAGC", "magic").ok());
  EXPECT_EQ(*r.ReadU8("a"), 7);
  EXPECT_EQ(*r.ReadU16("b"), 65535);
  EXPECT_EQ(*r.ReadU32("c"), 0xdeadbeefu);
  EXPECT_EQ(*r.ReadU64("d"), 0x0123456789abcdefULL);
  EXPECT_EQ(*r.ReadI64("e"), std::numeric_limits<int64_t>::min());
  double z = *r.ReadF64("f");
  EXPECT_EQ(z, 0.0);
  EXPECT_TRUE(std::signbit(z));
  EXPECT_TRUE(std::isnan(*r.ReadF64("g")));
  EXPECT_EQ(*r.ReadBool("h"), true);
  EXPECT_EQ(*r.ReadString("i"), "hello");
  std::vector<uint8_t> u8s;
  ASSERT_TRUE(r.ReadU8List("j", &u8s).ok());
  EXPECT_EQ(u8s, (std::vector<uint8_t>{1, 0, 1}));
  std::vector<uint32_t> u32s;
  ASSERT_TRUE(r.ReadU32List("k", &u32s).ok());
  EXPECT_EQ(u32s, (std::vector<uint32_t>{9, 10}));
  absl::InlinedVector<int64_t, 6> i64s = {99};  // cleared first
  ASSERT_TRUE(r.ReadI64List("l", &i64s).ok());
  EXPECT_EQ(i64s, (absl::InlinedVector<int64_t, 6>{2, -8}));
  std::vector<double> f64s;
  ASSERT_TRUE(r.ReadF64List("m", &f64s).ok());
  EXPECT_EQ(f64s, (std::vector<double>{0.5, 1e300}));
  EXPECT_TRUE(r.ExpectEnd("message").ok());
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(ByteReaderTest, TruncationNamesWhatAndWhere) {
  std::string bytes("\x01\x02", 2);
  ByteReader r(bytes);
  absl::StatusOr<uint32_t> v = r.ReadU32("node count");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(v.status().message(), HasSubstr("'node count' needs 4 bytes at offset 0, 2 left"));
  EXPECT_EQ(r.offset(), 0u);  // a failed read consumes nothing
}

TEST(ByteReaderTest, EveryPrefixOfAStringIsRefused) {
  ByteWriter w;
  w.WriteString("abcdef");
  std::string bytes = w.Release();
  for (size_t n = 0; n < bytes.size(); ++n) {
    ByteReader r(std::string_view(bytes).substr(0, n));
    absl::StatusOr<std::string> s = r.ReadString("name");
    ASSERT_FALSE(s.ok()) << "prefix " << n;
    EXPECT_THAT(s.status().message(), HasSubstr("'name'"));
  }
}

TEST(ByteReaderTest, OversizedCountRefusedBeforeAllocating) {
  ByteWriter w;
  w.WriteU32(0xffffffffu);  // a hostile count with nothing behind it
  std::string bytes = w.Release();
  std::vector<int64_t> out;
  ByteReader r(bytes);
  absl::Status s = r.ReadI64List("sizes", &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("'sizes' count 4294967295"));
  EXPECT_THAT(s.message(), HasSubstr("max_count"));
  EXPECT_EQ(out.capacity(), 0u);  // nothing was reserved
}

TEST(ByteReaderTest, CountLargerThanTheBytesLeftIsRefused) {
  ByteWriter w;
  w.WriteU32(1000);  // under the limit, but only 8 bytes follow
  w.WriteI64(1);
  std::string bytes = w.Release();
  std::vector<int64_t> out;
  ByteReader r(bytes);
  absl::Status s = r.ReadI64List("strides", &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("'strides' count 1000"));
  EXPECT_EQ(out.capacity(), 0u);
}

TEST(ByteReaderTest, LimitsAreConfigurable) {
  ByteWriter w;
  w.WriteString("abcdef");
  w.WriteI64Span(std::vector<int64_t>{1, 2, 3});
  std::string bytes = w.Release();
  WireLimits tight;
  tight.max_string_bytes = 5;
  tight.max_count = 2;
  ByteReader r(bytes, tight);
  absl::StatusOr<std::string> s = r.ReadString("op name");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.status().message(), HasSubstr("'op name' length 6"));
  EXPECT_THAT(s.status().message(), HasSubstr("max_string_bytes"));

  ByteReader r2(std::string_view(bytes).substr(10), tight);
  std::vector<int64_t> out;
  EXPECT_EQ(r2.ReadI64List("dims", &out).code(), absl::StatusCode::kResourceExhausted);
}

TEST(ByteWriterTest, OverLimitSequenceMakesStatusAnError) {
  WireLimits tight;
  tight.max_count = 2;
  tight.max_string_bytes = 3;
  ByteWriter w(tight);
  w.WriteI64Span(std::vector<int64_t>{1, 2});
  EXPECT_TRUE(w.status().ok());
  w.WriteI64Span(std::vector<int64_t>{1, 2, 3});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kResourceExhausted);
  ByteWriter w2(tight);
  w2.WriteString("abcd");
  EXPECT_THAT(w2.status().message(), HasSubstr("max_string_bytes"));
}

TEST(ByteReaderTest, ExpectRefusesWrongMagic) {
  ByteReader r("XXXXrest");
  absl::Status s = r.Expect("GNIE", "magic");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("wrong magic"));
  ByteReader short_reader("GN");
  EXPECT_EQ(short_reader.Expect("GNIE", "magic").code(), absl::StatusCode::kOutOfRange);
}

TEST(ByteReaderTest, BoolMustBeZeroOrOne) {
  ByteReader r("\x02");
  absl::StatusOr<bool> b = r.ReadBool("flag");
  EXPECT_THAT(b.status().message(), HasSubstr("not a bool"));
}

TEST(ByteReaderTest, TrailingBytesRefused) {
  ByteReader r("ab");
  ASSERT_TRUE(r.ReadU8("x").ok());
  absl::Status s = r.ExpectEnd("hello message");
  EXPECT_THAT(s.message(), HasSubstr("1 unexpected bytes after the end of hello message"));
}

absl::StatusOr<std::string> ReadGreeting(std::string_view bytes) {
  ByteReader r(bytes);
  GENIE_RETURN_IF_ERROR(r.Expect("HI", "magic"));
  GENIE_ASSIGN_OR_RETURN(std::string name, r.ReadString("name"));
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("greeting"));
  return name;
}

TEST(ByteReaderTest, ComposesWithStatusMacros) {
  ByteWriter w;
  w.WriteRaw("HI");
  w.WriteString("genie");
  EXPECT_EQ(*ReadGreeting(w.bytes()), "genie");
  EXPECT_FALSE(ReadGreeting(w.bytes().substr(0, 5)).ok());
}

}  // namespace
}  // namespace genie::core
