// File: genie/transport/internal/auth_crypto.h
// The cryptographic pieces of the auth handshake (auth.h), over OpenSSL libcrypto: random
// nonces, HMAC-SHA256 proofs, constant-time comparison. Nothing home-made.
#ifndef GENIE_TRANSPORT_INTERNAL_AUTH_CRYPTO_H_
#define GENIE_TRANSPORT_INTERNAL_AUTH_CRYPTO_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace genie::transport_internal {

inline constexpr std::size_t kAuthNonceBytes = 32;
inline constexpr std::size_t kAuthProofBytes = 32;  // SHA-256
inline constexpr absl::string_view kAuthProtocol = "genie-v1";

// `n` bytes from RAND_bytes.
absl::StatusOr<std::string> RandomBytes(std::size_t n);

// HMAC(key, challenge || client_nonce || "genie-v1"): the client's answer.
std::string ClientProof(absl::string_view key, absl::string_view challenge,
                        absl::string_view client_nonce);

// HMAC(key, client_nonce || challenge || "genie-v1 server"): the server's proof to the client.
// Different order and label from ClientProof, so one side's proof can't be replayed as the
// other's.
std::string ServerProof(absl::string_view key, absl::string_view challenge,
                        absl::string_view client_nonce);

// Constant-time equality (CRYPTO_memcmp); false when sizes differ.
bool ProofEquals(absl::string_view a, absl::string_view b);

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_AUTH_CRYPTO_H_
