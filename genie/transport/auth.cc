// File: genie/transport/auth.cc
// Key loading and the OpenSSL pieces of the auth handshake (see auth.h, internal/auth_crypto.h).
#include "genie/transport/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "genie/transport/internal/auth_crypto.h"
#include "genie/transport/internal/unique_fd.h"

namespace genie::transport {
namespace {

absl::string_view TrimTrailingSpace(absl::string_view s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

absl::Status ValidateKey(absl::string_view key) {
  if (key.empty()) {
    return absl::InvalidArgumentError(
        "authentication key is empty: make one with `head -c 32 /dev/urandom | base64 > key`");
  }
  if (key.size() < kMinKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("authentication key is %d bytes, at least %d are required (32 random bytes "
                        "recommended: `head -c 32 /dev/urandom | base64 > key`)",
                        key.size(), kMinKeyBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LoadKeyFile(const std::string& path) {
  transport_internal::UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    const std::string message =
        absl::StrFormat("cannot open key file %s: %s", path, std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InternalError(message);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    return absl::InternalError(
        absl::StrFormat("cannot stat key file %s: %s", path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrFormat("key file %s is not a regular file", path));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "key file %s is accessible by group or others (mode %04o): run `chmod 600 %s`", path,
        st.st_mode & 07777, path));
  }
  if (st.st_size > 64 * 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("key file %s is %d bytes: too large for a key", path, st.st_size));
  }
  std::string data;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n > 0) {
      data.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    return absl::InternalError(
        absl::StrFormat("cannot read key file %s: %s", path, std::strerror(errno)));
  }
  const absl::string_view key = TrimTrailingSpace(data);
  absl::Status valid = ValidateKey(key);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("key file ", path, ": ", valid.message()));
  }
  return std::string(key);
}

absl::StatusOr<std::string> LoadKeyFromEnv(const char* var) {
  const char* value = std::getenv(var);
  if (value == nullptr) {
    return absl::NotFoundError(absl::StrCat("environment variable ", var,
                                            " is not set: set it to the shared key or use a "
                                            "key file"));
  }
  const absl::string_view key = TrimTrailingSpace(value);
  absl::Status valid = ValidateKey(key);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", var, ": ", valid.message()));
  }
  return std::string(key);
}

}  // namespace genie::transport

namespace genie::transport_internal {
namespace {

std::string Hmac(absl::string_view key, absl::string_view message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
           &len) == nullptr) {
    // Only on library failure (out of memory): an empty proof never verifies.
    return std::string();
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

}  // namespace

absl::StatusOr<std::string> RandomBytes(std::size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    return absl::InternalError(absl::StrCat("RAND_bytes failed: OpenSSL error ", ERR_get_error()));
  }
  return out;
}

std::string ClientProof(absl::string_view key, absl::string_view challenge,
                        absl::string_view client_nonce) {
  return Hmac(key, absl::StrCat(challenge, client_nonce, kAuthProtocol));
}

std::string ServerProof(absl::string_view key, absl::string_view challenge,
                        absl::string_view client_nonce) {
  return Hmac(key, absl::StrCat(client_nonce, challenge, kAuthProtocol, " server"));
}

bool ProofEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace genie::transport_internal
