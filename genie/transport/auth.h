// File: genie/transport/auth.h
// Mutual HMAC-SHA256 challenge-response authentication over any Connection, run right after
// connecting and before any other frame. Both ends hold the same secret key (a file or the
// GENIE_KEY environment variable); the key never crosses the wire.
//
//   client -> server  kHello        "genie-v1"
//   server -> client  kChallenge    32 random bytes (RAND_bytes)
//   client -> server  kAuthResponse client_nonce[32] || HMAC(key, challenge || client_nonce ||
//                                                             "genie-v1")
//   server -> client  kAuthOk       HMAC(key, client_nonce || challenge || "genie-v1 server")
//                or   kError        "authentication failed: key mismatch ..." and closes
//
// The client checks the server's proof too, so it never talks to a node without the key.
// Proofs are compared with CRYPTO_memcmp.
//
//   GENIE_ASSIGN_OR_RETURN(std::string key, LoadKeyFile("/etc/genie/key"));
//   GENIE_ASSIGN_OR_RETURN(auto conn, Connection<Tcp>::Connect(host, port, absl::Seconds(5)));
//   GENIE_RETURN_IF_ERROR(AuthenticateClient(conn, key, absl::Seconds(5)));
//   // the node side: GENIE_RETURN_IF_ERROR(AuthenticateServer(accepted, key, absl::Seconds(5)));
#ifndef GENIE_TRANSPORT_AUTH_H_
#define GENIE_TRANSPORT_AUTH_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "genie/core/status.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/auth_crypto.h"

namespace genie::transport {

// Keys shorter than this are refused (32 random bytes recommended).
inline constexpr std::size_t kMinKeyBytes = 16;
inline constexpr char kKeyEnvVar[] = "GENIE_KEY";

// OK if `key` is long enough to use; otherwise InvalidArgument saying why.
absl::Status ValidateKey(absl::string_view key);

// Reads a key file: its bytes minus trailing whitespace. Refuses a missing file (NotFound), a
// file readable or writable by group or others (PermissionDenied: chmod 600), and an empty or
// short key (InvalidArgument).
absl::StatusOr<std::string> LoadKeyFile(const std::string& path);

// The key in environment variable `var` (default GENIE_KEY), trailing whitespace removed.
// NotFound when unset; InvalidArgument when empty or short.
absl::StatusOr<std::string> LoadKeyFromEnv(const char* var = kKeyEnvVar);

namespace auth_internal {

// Receives one small frame of kind `want` (or kError, turned into Unauthenticated) before
// `deadline`. Frames larger than `max_bytes` are refused before their payload is read.
template <class Conn>
absl::StatusOr<Frame> ReceiveAuthFrame(Conn& conn, MessageKind want, std::size_t max_bytes,
                                       absl::Time deadline, absl::string_view side) {
  absl::StatusOr<FrameHeader> header = conn.ReceiveHeader(deadline - absl::Now());
  if (!header.ok()) {
    return absl::Status(
        header.status().code(),
        absl::StrCat("authentication (", side, ") with ", conn.peer(), " failed waiting for ",
                     MessageKindName(want), ": ", header.status().message()));
  }
  const bool is_error = header->kind == MessageKind::kError;
  if (header->kind != want && !is_error) {
    conn.Close();
    return absl::UnauthenticatedError(
        absl::StrCat("authentication (", side, ") with ", conn.peer(), " failed: expected ",
                     MessageKindName(want), ", got ", MessageKindName(header->kind),
                     " (is the peer running Genie authentication with the same protocol?)"));
  }
  const std::size_t limit = is_error ? 4096 : max_bytes;
  if (header->payload_bytes > limit) {
    conn.Close();
    return absl::UnauthenticatedError(absl::StrCat(
        "authentication (", side, ") with ", conn.peer(),
        " failed: ", MessageKindName(header->kind), " frame of ", header->payload_bytes,
        " bytes is larger than the handshake allows (", limit, ")"));
  }
  Frame frame;
  frame.header = *header;
  frame.payload.resize(static_cast<std::size_t>(header->payload_bytes));
  absl::Status s = conn.ReceivePayload(frame.payload.data(), frame.payload.size());
  if (!s.ok()) return s;
  if (is_error) {
    conn.Close();
    return absl::UnauthenticatedError(absl::StrCat("authentication (", side, ") with ", conn.peer(),
                                                   " refused by the peer: ", frame.payload));
  }
  return frame;
}

template <class Conn>
absl::Status RefuseAndClose(Conn& conn, absl::string_view message) {
  (void)conn.SendBytes(MessageKind::kError, 0, message);  // best effort: we close regardless
  conn.Close();
  return absl::UnauthenticatedError(absl::StrCat(message, " (peer ", conn.peer(), ")"));
}

}  // namespace auth_internal

// The client side of the handshake. OK when both ends proved they hold `key`; otherwise
// Unauthenticated (key mismatch, refused), DeadlineExceeded, or the transport's error, and
// the connection is closed.
template <class Conn>
absl::Status AuthenticateClient(Conn& conn, absl::string_view key, absl::Duration timeout) {
  namespace ti = ::genie::transport_internal;
  GENIE_RETURN_IF_ERROR(ValidateKey(key));
  const absl::Time deadline = absl::Now() + timeout;
  GENIE_RETURN_IF_ERROR(conn.SendBytes(MessageKind::kHello, 0, ti::kAuthProtocol));
  GENIE_ASSIGN_OR_RETURN(Frame challenge,
                         auth_internal::ReceiveAuthFrame(conn, MessageKind::kChallenge,
                                                         ti::kAuthNonceBytes, deadline, "client"));
  if (challenge.payload.size() != ti::kAuthNonceBytes) {
    conn.Close();
    return absl::UnauthenticatedError(
        absl::StrCat("authentication (client) with ", conn.peer(), " failed: challenge of ",
                     challenge.payload.size(), " bytes, expected ", ti::kAuthNonceBytes));
  }
  GENIE_ASSIGN_OR_RETURN(const std::string nonce, ti::RandomBytes(ti::kAuthNonceBytes));
  const std::string response = absl::StrCat(nonce, ti::ClientProof(key, challenge.payload, nonce));
  GENIE_RETURN_IF_ERROR(conn.SendBytes(MessageKind::kAuthResponse, 0, response));
  GENIE_ASSIGN_OR_RETURN(
      Frame ok, auth_internal::ReceiveAuthFrame(conn, MessageKind::kAuthOk, ti::kAuthProofBytes,
                                                deadline, "client"));
  if (!ti::ProofEquals(ok.payload, ti::ServerProof(key, challenge.payload, nonce))) {
    conn.Close();
    return absl::UnauthenticatedError(absl::StrCat(
        "authentication (client) failed: node ", conn.peer(),
        " accepted us but could not prove it holds the same key (key mismatch or impostor)"));
  }
  return absl::OkStatus();
}

// The node side. OK when the client proved it holds `key` (and was sent our proof);
// otherwise the client is told kError, the connection is closed, and Unauthenticated (or a
// timeout / transport error) is returned.
template <class Conn>
absl::Status AuthenticateServer(Conn& conn, absl::string_view key, absl::Duration timeout) {
  namespace ti = ::genie::transport_internal;
  GENIE_RETURN_IF_ERROR(ValidateKey(key));
  const absl::Time deadline = absl::Now() + timeout;
  GENIE_ASSIGN_OR_RETURN(Frame hello, auth_internal::ReceiveAuthFrame(conn, MessageKind::kHello, 64,
                                                                      deadline, "server"));
  if (hello.payload != ti::kAuthProtocol) {
    return auth_internal::RefuseAndClose(
        conn, absl::StrCat("authentication failed: unsupported protocol '", hello.payload,
                           "' (this node speaks ", ti::kAuthProtocol, ")"));
  }
  GENIE_ASSIGN_OR_RETURN(const std::string challenge, ti::RandomBytes(ti::kAuthNonceBytes));
  GENIE_RETURN_IF_ERROR(conn.SendBytes(MessageKind::kChallenge, 0, challenge));
  GENIE_ASSIGN_OR_RETURN(Frame response,
                         auth_internal::ReceiveAuthFrame(conn, MessageKind::kAuthResponse,
                                                         ti::kAuthNonceBytes + ti::kAuthProofBytes,
                                                         deadline, "server"));
  if (response.payload.size() != ti::kAuthNonceBytes + ti::kAuthProofBytes) {
    return auth_internal::RefuseAndClose(conn, "authentication failed: malformed kAuthResponse");
  }
  const absl::string_view payload = response.payload;
  const absl::string_view nonce = payload.substr(0, ti::kAuthNonceBytes);
  const absl::string_view proof = payload.substr(ti::kAuthNonceBytes);
  if (!ti::ProofEquals(proof, ti::ClientProof(key, challenge, nonce))) {
    return auth_internal::RefuseAndClose(
        conn,
        "authentication failed: key mismatch (the client's proof does not match this node's "
        "key; check GENIE_KEY or the key file on both sides)");
  }
  return conn.SendBytes(MessageKind::kAuthOk, 0, ti::ServerProof(key, challenge, nonce));
}

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_AUTH_H_
