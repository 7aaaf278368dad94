// File: genie/transport/auth_test.cc
// Key loading (files, GENIE_KEY) and the HMAC proofs against OpenSSL's HMAC-SHA256.
#include "genie/transport/auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "genie/transport/internal/auth_crypto.h"
#include "genie/transport/testing/transport_testing.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

using testing::Contains;

std::string WriteFile(const std::string& name, const std::string& contents, mode_t mode) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir ? dir : "/tmp") + "/" + name;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
  }
  chmod(path.c_str(), mode);
  return path;
}

TEST(LoadKeyFile, ReadsKeyAndTrimsTrailingNewline) {
  const std::string path = WriteFile("good.key", "0123456789abcdefXYZ\n", 0600);
  auto key = LoadKeyFile(path);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(*key, "0123456789abcdefXYZ");
}

TEST(LoadKeyFile, MissingFile) {
  auto key = LoadKeyFile("/nonexistent/genie.key");
  EXPECT_TRUE(absl::IsNotFound(key.status())) << key.status();
  EXPECT_TRUE(Contains(key.status(), "/nonexistent/genie.key")) << key.status();
}

TEST(LoadKeyFile, RefusesGroupOrWorldReadable) {
  const std::string path = WriteFile("open.key", "0123456789abcdef0123", 0644);
  auto key = LoadKeyFile(path);
  EXPECT_TRUE(absl::IsPermissionDenied(key.status())) << key.status();
  EXPECT_TRUE(Contains(key.status(), "chmod 600")) << key.status();
}

TEST(LoadKeyFile, RefusesEmptyAndShortKeys) {
  auto empty = LoadKeyFile(WriteFile("empty.key", "\n", 0600));
  EXPECT_TRUE(absl::IsInvalidArgument(empty.status())) << empty.status();
  EXPECT_TRUE(Contains(empty.status(), "empty")) << empty.status();
  auto short_key = LoadKeyFile(WriteFile("short.key", "abc", 0600));
  EXPECT_TRUE(absl::IsInvalidArgument(short_key.status())) << short_key.status();
  EXPECT_TRUE(Contains(short_key.status(), "at least 16")) << short_key.status();
}

TEST(LoadKeyFromEnv, UnsetShortAndGood) {
  unsetenv("GENIE_TEST_KEY");
  EXPECT_TRUE(absl::IsNotFound(LoadKeyFromEnv("GENIE_TEST_KEY").status()));
  setenv("GENIE_TEST_KEY", "short", 1);
  EXPECT_TRUE(absl::IsInvalidArgument(LoadKeyFromEnv("GENIE_TEST_KEY").status()));
  setenv("GENIE_TEST_KEY", "a-long-enough-shared-secret\n", 1);
  auto key = LoadKeyFromEnv("GENIE_TEST_KEY");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(*key, "a-long-enough-shared-secret");
}

TEST(AuthCrypto, ProofsAreHmacSha256AndDistinct) {
  namespace ti = transport_internal;
  const std::string key = "0123456789abcdef";
  const std::string challenge(32, 'c');
  const std::string nonce(32, 'n');
  const std::string client = ti::ClientProof(key, challenge, nonce);
  const std::string server = ti::ServerProof(key, challenge, nonce);
  EXPECT_EQ(client.size(), 32u);
  EXPECT_EQ(server.size(), 32u);
  EXPECT_NE(client, server);
  EXPECT_TRUE(ti::ProofEquals(client, ti::ClientProof(key, challenge, nonce)));
  EXPECT_FALSE(ti::ProofEquals(client, ti::ClientProof("0123456789abcdeX", challenge, nonce)));
  EXPECT_FALSE(ti::ProofEquals(client, client.substr(1)));
  auto r1 = ti::RandomBytes(32);
  auto r2 = ti::RandomBytes(32);
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_NE(*r1, *r2);
}

}  // namespace
}  // namespace genie::transport
