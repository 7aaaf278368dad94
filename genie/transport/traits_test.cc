// File: genie/transport/traits_test.cc
// transport_traits and is_transport_policy_v against minimal fake policies, and the backend
// each real policy (and a refinement) selects.
#include "genie/transport/traits.h"

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "genie/transport/inprocess.h"
#include "genie/transport/policies.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"

namespace genie::transport {
namespace {

// Only a backend tag: every setting defaults.
struct BarePolicy {
  using Backend = BarePolicy;
};

// Every setting declared.
struct FullPolicy {
  using Backend = FullPolicy;
  static constexpr std::string_view kName = "full";
  static constexpr std::uint64_t kMaxFrameBytes = 4096;
  static constexpr bool kZeroCopySend = true;
  static constexpr bool kNoDelay = false;
  static constexpr int kSocketBufferBytes = 1 << 20;
  static constexpr std::uint64_t kRingBytes = 1 << 16;
};

// A refinement of Tcp: inherits the tag, overrides one setting.
struct TcpSmallFrames : Tcp {
  static constexpr std::uint64_t kMaxFrameBytes = 1024;
};

struct NotAPolicy {};
struct WrongBackend {  // names a backend it does not derive from
  using Backend = Tcp;
};

static_assert(!is_transport_policy_v<int>, "int is not a policy");
static_assert(!is_transport_policy_v<NotAPolicy>, "a class without Backend is not a policy");
static_assert(!is_transport_policy_v<WrongBackend>, "must derive from its Backend");
static_assert(is_transport_policy_v<BarePolicy>);
static_assert(is_transport_policy_v<FullPolicy>);
static_assert(is_transport_policy_v<TcpSmallFrames>);
static_assert(is_transport_policy_v<InProcess> && is_transport_policy_v<Tcp> &&
              is_transport_policy_v<Shm> && is_transport_policy_v<Ucx> &&
              is_transport_policy_v<Dpdk>);

static_assert(std::is_same_v<transport_traits<NotAPolicy>::backend, void>);
static_assert(std::is_same_v<transport_traits<TcpSmallFrames>::backend, Tcp>);
static_assert(std::is_same_v<transport_traits<Shm>::backend, Shm>);

TEST(TransportTraits, DefaultsWhenPolicyDeclaresNothing) {
  using T = transport_traits<BarePolicy>;
  EXPECT_EQ(T::name, "unnamed");
  EXPECT_EQ(T::max_frame_bytes, std::uint64_t{1} << 30);
  EXPECT_FALSE(T::zero_copy_send);
  EXPECT_TRUE(T::no_delay);
  EXPECT_EQ(T::socket_buffer_bytes, 0);
  EXPECT_EQ(T::ring_bytes, std::uint64_t{16} << 20);
  EXPECT_EQ(T::lanes, 1);
  EXPECT_EQ(T::stripe_min_bytes, std::uint64_t{1} << 20);
}

TEST(TransportTraits, ReadsDeclaredSettings) {
  using T = transport_traits<FullPolicy>;
  EXPECT_EQ(T::name, "full");
  EXPECT_EQ(T::max_frame_bytes, 4096u);
  EXPECT_TRUE(T::zero_copy_send);
  EXPECT_FALSE(T::no_delay);
  EXPECT_EQ(T::socket_buffer_bytes, 1 << 20);
  EXPECT_EQ(T::ring_bytes, 1u << 16);
}

TEST(TransportTraits, RefinementInheritsTagAndOverridesSetting) {
  using T = transport_traits<TcpSmallFrames>;
  EXPECT_EQ(T::name, "tcp");
  EXPECT_EQ(T::max_frame_bytes, 1024u);
  EXPECT_TRUE(T::zero_copy_send);
}

TEST(TransportTraits, RealPolicies) {
  EXPECT_EQ(transport_traits<InProcess>::name, "inprocess");
  EXPECT_EQ(transport_traits<Tcp>::name, "tcp");
  EXPECT_EQ(transport_traits<Shm>::name, "shm");
  EXPECT_EQ(transport_traits<Ucx>::name, "ucx");
  EXPECT_EQ(transport_traits<Dpdk>::name, "dpdk");
  EXPECT_TRUE(transport_traits<Tcp>::zero_copy_send);
  EXPECT_FALSE(transport_traits<InProcess>::zero_copy_send);
  EXPECT_EQ(transport_traits<Shm>::ring_bytes, Shm::kRingBytes);
  EXPECT_EQ(transport_traits<Shm>::pool_bytes, std::uint64_t{256} << 20);
  EXPECT_EQ(transport_traits<ShmRingsOnly>::pool_bytes, 0u);
  EXPECT_EQ(transport_traits<Tcp>::pool_bytes, 0u);  // undeclared: no pool
  EXPECT_EQ(transport_traits<Tcp>::pool_min_bytes, std::uint64_t{64} << 10);
  EXPECT_EQ(transport_traits<Tcp>::lanes, 4);
  EXPECT_EQ(transport_traits<TcpOneSocket>::lanes, 1);
  EXPECT_TRUE(transport_traits<Tcp>::lanes_by_cores);
  EXPECT_FALSE(transport_traits<Shm>::lanes_by_cores);
  EXPECT_EQ(transport_traits<Shm>::lanes, 1);
  static_assert(std::is_same_v<transport_traits<TcpOneSocket>::backend, Tcp>);
}
static_assert(std::is_same_v<transport_traits<ShmRingsOnly>::backend, Shm>);

// A refinement of Shm picks its ring size; the connection's rings have it.
struct ShmTinyRings : Shm {
  static constexpr std::uint64_t kRingBytes = 8192;
};
static_assert(std::is_same_v<transport_traits<ShmTinyRings>::backend, Shm>);
static_assert(transport_traits<ShmTinyRings>::ring_bytes == 8192);

// A refinement selects its parent's backend and carries its own settings.
TEST(TransportTraits, RefinementUsesParentBackendWithItsOwnMaxFrame) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  static_assert(std::is_same_v<Connection<TcpSmallFrames>::Policy, TcpSmallFrames>);
  static_assert(Connection<TcpSmallFrames>::kTransportName == "tcp");
  auto listener = Listener<TcpSmallFrames>::Create("127.0.0.1", 0);
  ASSERT_TRUE(listener.ok()) << listener.status();
  auto client =
      Connection<TcpSmallFrames>::Connect("127.0.0.1", listener->port(), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string big(2048, 'x');
  absl::Status s = client->SendBytes(MessageKind::kTransfer, 1, big);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("max frame size of 1024"), std::string_view::npos) << s;
}

// Uncommenting either line must fail to compile with "no connection for this transport
// policy" (closed primary template):
//   Connection<Ucx> no_backend_yet;
//   Connection<NotAPolicy> not_a_policy;

}  // namespace
}  // namespace genie::transport
