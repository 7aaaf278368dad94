// File: genie/transport/traits.h
// Reading transport policies: `transport_traits<P>` (settings with detected defaults),
// `is_transport_policy_v<T>` (the C++17 concept, by detection), and the closed primary
// templates `Connection<P>` / `Listener<P>`. Each backend specializes them in its own
// header (inprocess.h, tcp.h, shm.h); a policy without a backend fails to compile with a sentence.
//
//   template <class P>
//   void Describe() {
//     static_assert(genie::transport::is_transport_policy_v<P>, "P is not a transport policy");
//     using T = genie::transport::transport_traits<P>;
//     std::cout << T::name << " max frame " << T::max_frame_bytes << "\n";
//   }
#ifndef GENIE_TRANSPORT_TRAITS_H_
#define GENIE_TRANSPORT_TRAITS_H_

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "genie/core/type_traits.h"
#include "genie/transport/policies.h"

namespace genie::transport {
namespace traits_internal {

template <class P, class = void>
struct BackendOf {
  using type = void;
};
template <class P>
struct BackendOf<P, std::void_t<typename P::Backend>> {
  using type = typename P::Backend;
};

template <class P, class = void>
struct NameOf {
  static constexpr std::string_view value = "unnamed";
};
template <class P>
struct NameOf<P, std::void_t<decltype(P::kName)>> {
  static constexpr std::string_view value = P::kName;
};

template <class P, class = void>
struct MaxFrameBytesOf {
  static constexpr std::uint64_t value = std::uint64_t{1} << 30;
};
template <class P>
struct MaxFrameBytesOf<P, std::void_t<decltype(P::kMaxFrameBytes)>> {
  static constexpr std::uint64_t value = P::kMaxFrameBytes;
};

template <class P, class = void>
struct ZeroCopySendOf : std::false_type {};
template <class P>
struct ZeroCopySendOf<P, std::void_t<decltype(P::kZeroCopySend)>>
    : std::bool_constant<P::kZeroCopySend> {};

template <class P, class = void>
struct NoDelayOf : std::true_type {};
template <class P>
struct NoDelayOf<P, std::void_t<decltype(P::kNoDelay)>> : std::bool_constant<P::kNoDelay> {};

template <class P, class = void>
struct SocketBufferBytesOf : std::integral_constant<int, 0> {};
template <class P>
struct SocketBufferBytesOf<P, std::void_t<decltype(P::kSocketBufferBytes)>>
    : std::integral_constant<int, P::kSocketBufferBytes> {};

template <class P, class = void>
struct RingBytesOf {
  static constexpr std::uint64_t value = std::uint64_t{16} << 20;
};
template <class P>
struct RingBytesOf<P, std::void_t<decltype(P::kRingBytes)>> {
  static constexpr std::uint64_t value = P::kRingBytes;
};

template <class P, class = void>
struct PoolBytesOf {
  static constexpr std::uint64_t value = 0;
};
template <class P>
struct PoolBytesOf<P, std::void_t<decltype(P::kPoolBytes)>> {
  static constexpr std::uint64_t value = P::kPoolBytes;
};

template <class P, class = void>
struct PoolMinBytesOf {
  static constexpr std::uint64_t value = std::uint64_t{64} << 10;
};
template <class P>
struct PoolMinBytesOf<P, std::void_t<decltype(P::kPoolMinBytes)>> {
  static constexpr std::uint64_t value = P::kPoolMinBytes;
};

template <class P, class = void>
struct LanesOf : std::integral_constant<int, 1> {};
template <class P>
struct LanesOf<P, std::void_t<decltype(P::kLanes)>> : std::integral_constant<int, P::kLanes> {};

template <class P, class = void>
struct StripeMinBytesOf {
  static constexpr std::uint64_t value = std::uint64_t{1} << 20;
};
template <class P>
struct StripeMinBytesOf<P, std::void_t<decltype(P::kStripeMinBytes)>> {
  static constexpr std::uint64_t value = P::kStripeMinBytes;
};

template <class P, class = void>
struct LanesByCoresOf : std::false_type {};
template <class P>
struct LanesByCoresOf<P, std::void_t<decltype(P::kLanesByCores)>>
    : std::bool_constant<P::kLanesByCores> {};

template <class T, class = void>
struct IsPolicy : std::false_type {};
template <class T>
struct IsPolicy<T, std::void_t<typename T::Backend>>
    : std::bool_constant<std::is_class_v<typename T::Backend> &&
                         std::is_base_of_v<typename T::Backend, T>> {};

}  // namespace traits_internal

// True for a class that names its backend tag (`using Backend = Tcp;`) and is that tag or a
// refinement of it. Every class template over a policy static_asserts this first.
template <class T>
inline constexpr bool is_transport_policy_v = traits_internal::IsPolicy<T>::value;

// A policy's settings, each with a default when the policy does not declare it.
template <class P>
struct transport_traits {
  // The backend tag (InProcess, Tcp, ...) whose Connection/Listener implement P; void if none.
  using backend = typename traits_internal::BackendOf<P>::type;
  // Short lowercase name for logs and errors. Default "unnamed".
  static constexpr std::string_view name = traits_internal::NameOf<P>::value;
  // Largest payload one frame may carry; larger frames are refused. Default 1 GiB.
  static constexpr std::uint64_t max_frame_bytes = traits_internal::MaxFrameBytesOf<P>::value;
  // True when Send gathers straight from caller memory (no staging copy). Default false.
  static constexpr bool zero_copy_send = traits_internal::ZeroCopySendOf<P>::value;
  // Socket transports: TCP_NODELAY. Default true.
  static constexpr bool no_delay = traits_internal::NoDelayOf<P>::value;
  // Socket transports: SO_SNDBUF/SO_RCVBUF bytes; 0 keeps kernel autotuning. Default 0.
  static constexpr int socket_buffer_bytes = traits_internal::SocketBufferBytesOf<P>::value;
  // Tcp: sockets a client asks the node for, the connection's own included (OpenLanes in
  // tcp.h); large frames are striped over them, each lane copied by its own thread. The node
  // may grant fewer. Default 1 (one socket).
  static constexpr int lanes = traits_internal::LanesOf<P>::value;
  // Tcp with lanes: ask for no more lanes than half the cores this process may run on (at
  // least 1): on a 2-core machine the lanes' threads cost more than they copy. Default false.
  static constexpr bool lanes_by_cores = traits_internal::LanesByCoresOf<P>::value;
  // Tcp with lanes: frames with at least this many payload bytes are striped. Default 1 MiB.
  static constexpr std::uint64_t stripe_min_bytes = traits_internal::StripeMinBytesOf<P>::value;
  // Shared-memory transports: bytes of each direction's ring. Default 16 MiB.
  static constexpr std::uint64_t ring_bytes = traits_internal::RingBytesOf<P>::value;
  // Shared-memory transports: bytes of the connection's tensor pool (pool.h); 0 = none.
  // Default 0.
  static constexpr std::uint64_t pool_bytes = traits_internal::PoolBytesOf<P>::value;
  // Tensors of at least this many bytes go through the pool when there is one. Default 64 KiB.
  static constexpr std::uint64_t pool_min_bytes = traits_internal::PoolMinBytesOf<P>::value;
};

// One end of a framed, full-duplex link. Closed: each backend specializes
// `Connection<P, BackendTag>` in its own header.
template <class P, class Backend = typename transport_traits<P>::backend>
class Connection {
  static_assert(core::dependent_false<P>::value,
                "no connection for this transport policy: include the backend's header "
                "(genie/transport/tcp.h, shm.h, inprocess.h) or use a policy from policies.h");
};

// Accepts incoming connections for a policy. Closed like Connection.
template <class P, class Backend = typename transport_traits<P>::backend>
class Listener {
  static_assert(core::dependent_false<P>::value,
                "no listener for this transport policy: include the backend's header "
                "(genie/transport/tcp.h, shm.h) or use a policy from policies.h");
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_TRAITS_H_
