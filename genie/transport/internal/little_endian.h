// File: genie/transport/internal/little_endian.h
// Little-endian integers in wire bytes, as every Genie wire format writes them (frame headers,
// lane messages).
#ifndef GENIE_TRANSPORT_INTERNAL_LITTLE_ENDIAN_H_
#define GENIE_TRANSPORT_INTERNAL_LITTLE_ENDIAN_H_

#include <cstdint>

namespace genie::transport_internal {

// Writes the low `bytes` bytes of `v` to `out`, least significant first.
inline void PutLe(unsigned char* out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

// Reads `bytes` bytes from `in`, least significant first.
inline std::uint64_t GetLe(const unsigned char* in, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t{in[i]} << (8 * i);
  return v;
}

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_LITTLE_ENDIAN_H_
