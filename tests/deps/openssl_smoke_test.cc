// Proves libcrypto links: HMAC-SHA256 against RFC 4231 test case 2.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace {

TEST(OpensslSmoke, HmacSha256MatchesRfc4231) {
  const std::string key = "Jefe";
  const std::string msg = "what do ya want for nothing?";
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ASSERT_NE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                 reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len),
            nullptr);
  ASSERT_EQ(len, 32u);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    hex += kHex[out[i] >> 4];
    hex += kHex[out[i] & 15];
  }
  EXPECT_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

}  // namespace
