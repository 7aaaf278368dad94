// File: genie/core/wire.h
// Bounds-checked little-endian byte encoding for Genie's binary formats (graphs, plans,
// network messages). Fixed widths only (no varints), so sizes are predictable and the
// bytes are the same on every host.
//
// ByteWriter appends to a std::string. Sequences (strings, spans) carry a u32 count
// prefix; a sequence longer than the writer's WireLimits makes the writer's status()
// an error instead of producing bytes a reader would refuse later.
//
// ByteReader reads a std::string_view it does not own. Every read names *what* it reads,
// so an error says what was truncated or oversized ("truncated input: 'node count' needs
// 4 bytes at offset 12, 2 left"). Counts are checked against WireLimits and against the
// bytes left before anything is allocated, so a hostile length never allocates.
//
//   ByteWriter w;
//   w.WriteRaw("GNIE");
//   w.WriteU32(1);
//   w.WriteString("hello");
//   w.WriteI64Span(std::vector<int64_t>{2, 8});
//   std::string bytes = w.Release();
//
//   ByteReader r(bytes);
//   GENIE_RETURN_IF_ERROR(r.Expect("GNIE", "magic"));
//   GENIE_ASSIGN_OR_RETURN(uint32_t version, r.ReadU32("version"));
//   GENIE_ASSIGN_OR_RETURN(std::string name, r.ReadString("name"));
//   std::vector<int64_t> sizes;
//   GENIE_RETURN_IF_ERROR(r.ReadI64List("sizes", &sizes));
//   GENIE_RETURN_IF_ERROR(r.ExpectEnd("hello message"));
#ifndef GENIE_CORE_WIRE_H_
#define GENIE_CORE_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace genie::core {

// What a reader accepts (and a writer produces). Raise them for legitimately large
// messages; they exist so a corrupt or hostile length is refused, not allocated.
struct WireLimits {
  uint32_t max_count = 1u << 24;         // elements in one counted sequence
  uint32_t max_string_bytes = 1u << 24;  // bytes in one string
};

class ByteWriter {
 public:
  ByteWriter() = default;
  explicit ByteWriter(WireLimits limits) : limits_(limits) {}

  void WriteU8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void WriteU16(uint16_t v) { WriteLittleEndian(v); }
  void WriteU32(uint32_t v) { WriteLittleEndian(v); }
  void WriteU64(uint64_t v) { WriteLittleEndian(v); }
  void WriteI64(int64_t v) { WriteLittleEndian(static_cast<uint64_t>(v)); }
  // The IEEE-754 bit pattern, so NaN payloads and -0.0 survive.
  void WriteF64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    WriteLittleEndian(bits);
  }
  // Bytes with no length prefix (magic numbers, payloads whose size is known).
  void WriteRaw(std::string_view bytes) { out_.append(bytes.data(), bytes.size()); }

  // A u32 element count; `what` names the sequence in the error if it is over the limit.
  void WriteCount(size_t n, std::string_view what = "sequence");
  // u32 byte count + bytes.
  void WriteString(std::string_view s);
  // u32 count + elements.
  void WriteU8Span(absl::Span<const uint8_t> v);
  void WriteU32Span(absl::Span<const uint32_t> v);
  void WriteI64Span(absl::Span<const int64_t> v);
  void WriteF64Span(absl::Span<const double> v);

  // OK unless a sequence was over the limits; the bytes are then unusable.
  const absl::Status& status() const { return status_; }
  size_t size() const { return out_.size(); }
  const std::string& bytes() const { return out_; }
  std::string Release() { return std::move(out_); }
  const WireLimits& limits() const { return limits_; }

 private:
  template <typename U>
  void WriteLittleEndian(U v) {
    char b[sizeof(U)];
    for (size_t k = 0; k < sizeof(U); ++k) b[k] = static_cast<char>((v >> (8 * k)) & 0xff);
    out_.append(b, sizeof(U));
  }

  std::string out_;
  WireLimits limits_;
  absl::Status status_;
};

class ByteReader {
 public:
  // `bytes` must outlive the reader (and any string_view it returns).
  explicit ByteReader(std::string_view bytes, WireLimits limits = WireLimits())
      : bytes_(bytes), limits_(limits) {}

  absl::StatusOr<uint8_t> ReadU8(std::string_view what) { return ReadLittleEndian<uint8_t>(what); }
  absl::StatusOr<uint16_t> ReadU16(std::string_view what) {
    return ReadLittleEndian<uint16_t>(what);
  }
  absl::StatusOr<uint32_t> ReadU32(std::string_view what) {
    return ReadLittleEndian<uint32_t>(what);
  }
  absl::StatusOr<uint64_t> ReadU64(std::string_view what) {
    return ReadLittleEndian<uint64_t>(what);
  }
  absl::StatusOr<int64_t> ReadI64(std::string_view what) {
    absl::StatusOr<uint64_t> v = ReadLittleEndian<uint64_t>(what);
    if (!v.ok()) return v.status();
    return static_cast<int64_t>(*v);
  }
  absl::StatusOr<double> ReadF64(std::string_view what) {
    absl::StatusOr<uint64_t> v = ReadLittleEndian<uint64_t>(what);
    if (!v.ok()) return v.status();
    double d;
    uint64_t bits = *v;
    std::memcpy(&d, &bits, sizeof(d));
    return d;
  }
  // A u8 that must be 0 or 1.
  absl::StatusOr<bool> ReadBool(std::string_view what);

  // `n` bytes, as a view into the input.
  absl::StatusOr<std::string_view> ReadRaw(size_t n, std::string_view what);
  // The next bytes must equal `expected` (a magic number); the error names `what`.
  absl::Status Expect(std::string_view expected, std::string_view what);

  // A u32 count of elements that each take at least `min_element_bytes` on the wire.
  // Refused when over WireLimits::max_count or when the bytes left cannot hold that many
  // elements, so the caller may reserve() the result.
  absl::StatusOr<uint32_t> ReadCount(std::string_view what, size_t min_element_bytes);
  // u32 byte count (<= WireLimits::max_string_bytes) + bytes.
  absl::StatusOr<std::string_view> ReadStringView(std::string_view what);
  absl::StatusOr<std::string> ReadString(std::string_view what) {
    absl::StatusOr<std::string_view> s = ReadStringView(what);
    if (!s.ok()) return s.status();
    return std::string(*s);
  }
  // u32 count + elements, appended to `out` after `out->clear()`. `Container` is any
  // sequence with clear/reserve/push_back (std::vector, absl::InlinedVector).
  template <typename Container>
  absl::Status ReadU8List(std::string_view what, Container* out) {
    return ReadList<uint8_t>(what, out);
  }
  template <typename Container>
  absl::Status ReadU32List(std::string_view what, Container* out) {
    return ReadList<uint32_t>(what, out);
  }
  template <typename Container>
  absl::Status ReadI64List(std::string_view what, Container* out) {
    return ReadList<int64_t>(what, out);
  }
  template <typename Container>
  absl::Status ReadF64List(std::string_view what, Container* out) {
    return ReadList<double>(what, out);
  }

  // Refuses trailing bytes after a complete `what`.
  absl::Status ExpectEnd(std::string_view what) const;

  size_t offset() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  const WireLimits& limits() const { return limits_; }

 private:
  absl::Status Truncated(std::string_view what, size_t needed) const;

  template <typename U>
  absl::StatusOr<U> ReadLittleEndian(std::string_view what) {
    if (remaining() < sizeof(U)) return Truncated(what, sizeof(U));
    U v = 0;
    for (size_t k = 0; k < sizeof(U); ++k) {
      v = static_cast<U>(v | (static_cast<U>(static_cast<uint8_t>(bytes_[pos_ + k])) << (8 * k)));
    }
    pos_ += sizeof(U);
    return v;
  }

  template <typename T, typename Container>
  absl::Status ReadList(std::string_view what, Container* out) {
    out->clear();
    absl::StatusOr<uint32_t> n = ReadCount(what, sizeof(T));
    if (!n.ok()) return n.status();
    out->reserve(*n);
    for (uint32_t k = 0; k < *n; ++k) {
      if constexpr (std::is_same_v<T, double>) {
        absl::StatusOr<double> v = ReadF64(what);
        if (!v.ok()) return v.status();
        out->push_back(*v);
      } else if constexpr (std::is_same_v<T, int64_t>) {
        absl::StatusOr<int64_t> v = ReadI64(what);
        if (!v.ok()) return v.status();
        out->push_back(*v);
      } else {
        absl::StatusOr<T> v = ReadLittleEndian<T>(what);
        if (!v.ok()) return v.status();
        out->push_back(*v);
      }
    }
    return absl::OkStatus();
  }

  std::string_view bytes_;
  size_t pos_ = 0;
  WireLimits limits_;
};

}  // namespace genie::core

#endif  // GENIE_CORE_WIRE_H_
