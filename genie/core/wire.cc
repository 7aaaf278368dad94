// File: genie/core/wire.cc
// The cold half of wire.h: counted sequences and error messages.
#include "genie/core/wire.h"

#include "absl/strings/str_cat.h"

namespace genie::core {
namespace {

// Debian's Abseil has its own string_view type (ABSL_USES_STD_STRING_VIEW is off).
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

void ByteWriter::WriteCount(size_t n, std::string_view what) {
  if (n > limits_.max_count && status_.ok()) {
    status_ = absl::ResourceExhaustedError(absl::StrCat(
        "cannot encode '", Sv(what), "': ", n, " elements exceed the limit of ", limits_.max_count,
        " (WireLimits::max_count); raise the limit on both ", "sides or split the message"));
  }
  WriteU32(static_cast<uint32_t>(n));
}

void ByteWriter::WriteString(std::string_view s) {
  if (s.size() > limits_.max_string_bytes && status_.ok()) {
    status_ = absl::ResourceExhaustedError(
        absl::StrCat("cannot encode a string of ", s.size(), " bytes: over the limit of ",
                     limits_.max_string_bytes, " (WireLimits::max_string_bytes)"));
  }
  WriteU32(static_cast<uint32_t>(s.size()));
  WriteRaw(s);
}

void ByteWriter::WriteU8Span(absl::Span<const uint8_t> v) {
  WriteCount(v.size(), "u8 span");
  for (uint8_t x : v) WriteU8(x);
}

void ByteWriter::WriteU32Span(absl::Span<const uint32_t> v) {
  WriteCount(v.size(), "u32 span");
  for (uint32_t x : v) WriteU32(x);
}

void ByteWriter::WriteI64Span(absl::Span<const int64_t> v) {
  WriteCount(v.size(), "i64 span");
  for (int64_t x : v) WriteI64(x);
}

void ByteWriter::WriteF64Span(absl::Span<const double> v) {
  WriteCount(v.size(), "f64 span");
  for (double x : v) WriteF64(x);
}

absl::Status ByteReader::Truncated(std::string_view what, size_t needed) const {
  return absl::OutOfRangeError(absl::StrCat("truncated input: '", Sv(what), "' needs ", needed,
                                            " bytes at offset ", pos_, ", ", remaining(),
                                            " left; the message was cut short or is corrupt"));
}

absl::StatusOr<bool> ByteReader::ReadBool(std::string_view what) {
  absl::StatusOr<uint8_t> v = ReadU8(what);
  if (!v.ok()) return v.status();
  if (*v > 1) {
    return absl::InvalidArgumentError(absl::StrCat("'", Sv(what), "' at offset ", pos_ - 1, " is ",
                                                   static_cast<int>(*v), ", not a bool (0 or 1)"));
  }
  return *v == 1;
}

absl::StatusOr<std::string_view> ByteReader::ReadRaw(size_t n, std::string_view what) {
  if (remaining() < n) return Truncated(what, n);
  std::string_view v = bytes_.substr(pos_, n);
  pos_ += n;
  return v;
}

absl::Status ByteReader::Expect(std::string_view expected, std::string_view what) {
  if (remaining() < expected.size()) return Truncated(what, expected.size());
  if (bytes_.substr(pos_, expected.size()) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("wrong ", Sv(what), " at offset ", pos_,
                     ": these bytes are not the expected format (check what produced them)"));
  }
  pos_ += expected.size();
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ByteReader::ReadCount(std::string_view what, size_t min_element_bytes) {
  size_t at = pos_;
  absl::StatusOr<uint32_t> n = ReadU32(what);
  if (!n.ok()) return n.status();
  if (*n > limits_.max_count) {
    return absl::ResourceExhaustedError(
        absl::StrCat("'", Sv(what), "' count ", *n, " at offset ", at, " exceeds the limit of ",
                     limits_.max_count,
                     " (WireLimits::max_count); the input is corrupt or needs a larger "
                     "limit"));
  }
  if (min_element_bytes > 0 && *n > remaining() / min_element_bytes) {
    return absl::OutOfRangeError(
        absl::StrCat("truncated input: '", Sv(what), "' count ", *n, " at offset ", at,
                     " needs at least ", static_cast<uint64_t>(*n) * min_element_bytes, " bytes, ",
                     remaining(), " left; the message was cut short or is corrupt"));
  }
  return *n;
}

absl::StatusOr<std::string_view> ByteReader::ReadStringView(std::string_view what) {
  size_t at = pos_;
  absl::StatusOr<uint32_t> n = ReadU32(what);
  if (!n.ok()) return n.status();
  if (*n > limits_.max_string_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("'", Sv(what), "' length ", *n, " at offset ", at, " exceeds the limit of ",
                     limits_.max_string_bytes,
                     " bytes (WireLimits::max_string_bytes); the input is corrupt "
                     "or needs a larger limit"));
  }
  return ReadRaw(*n, what);
}

absl::Status ByteReader::ExpectEnd(std::string_view what) const {
  if (remaining() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        remaining(), " unexpected bytes after the end of ", Sv(what), " at offset ", pos_));
  }
  return absl::OkStatus();
}

}  // namespace genie::core
