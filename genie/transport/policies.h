// File: genie/transport/policies.h
// Transport policies: tag types with tiny constexpr settings, one per transport. Nothing
// else lives here. Code reads a policy only through transport_traits<P> (traits.h), so a
// setting a policy leaves out gets its documented default.
//
// A refinement inherits its tag and overrides a setting; it still selects its parent's
// backend, because `Backend` is inherited:
//
//   struct TcpHugeFrames : genie::transport::Tcp {
//     static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{8} << 30;
//   };
//   auto conn = genie::transport::Connection<TcpHugeFrames>::Connect("127.0.0.1", port,
//                                                                    absl::Seconds(5));
#ifndef GENIE_TRANSPORT_POLICIES_H_
#define GENIE_TRANSPORT_POLICIES_H_

#include <cstdint>
#include <string_view>

namespace genie::transport {

// In-memory queues between two connections of one process (tests, baselines).
struct InProcess {
  using Backend = InProcess;
  static constexpr std::string_view kName = "inprocess";
  static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{1} << 30;  // 1 GiB
  static constexpr bool kZeroCopySend = false;  // the payload is copied into the queue
};

// Kernel TCP sockets: the default everywhere.
struct Tcp {
  using Backend = Tcp;
  static constexpr std::string_view kName = "tcp";
  static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{1} << 30;  // 1 GiB
  static constexpr bool kZeroCopySend = true;  // gather write straight from caller memory
  static constexpr bool kNoDelay = true;       // TCP_NODELAY
  // SO_SNDBUF / SO_RCVBUF; 0 keeps the kernel's autotuning.
  static constexpr int kSocketBufferBytes = 4 << 20;
  // Sockets a client opens to a node in all (tcp.h's lanes; the node may grant fewer), and the
  // frames striped over them: one stream is copied through the kernel by one core a side,
  // about 4-5 GB/s, so a 4.8 MB upload over loopback took 1.1 ms on one socket and 0.35 ms on
  // four (BENCHMARKS.md).
  static constexpr int kLanes = 4;
  static constexpr std::uint64_t kStripeMinBytes = std::uint64_t{1} << 20;
  // At most half the client's usable cores: a 2-core machine asks for none (there the lanes'
  // threads slowed the semantics-blind baseline's 2.8 MB a batch from 1.88 to 2.05 ms).
  static constexpr bool kLanesByCores = true;
};

// Tcp on one socket per connection: no lanes, nothing striped.
struct TcpOneSocket : Tcp {
  static constexpr int kLanes = 1;
};

// Same host: two single-producer/single-consumer byte rings in a shared memfd per
// connection, set up over a Unix-domain socket (shm.h). A frame's bytes are copied twice
// (into the ring, out to the receiver's memory) and never cross the kernel. Beside the rings,
// a tensor pool (pool.h) in a second memfd: tensors of at least kPoolMinBytes are placed
// there once and read or written in place (no ring copies); 0 bytes: no pool.
struct Shm {
  using Backend = Shm;
  static constexpr std::string_view kName = "shm";
  static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{1} << 30;
  static constexpr bool kZeroCopySend = true;  // gathered from caller memory into the ring
  // Bytes of each direction's ring (the connecting side chooses; a frame larger than the ring
  // streams through it in chunks). Default 16 MiB: an upload of a few MB never waits.
  static constexpr std::uint64_t kRingBytes = std::uint64_t{16} << 20;
  // Bytes of the connection's tensor pool (the connecting side chooses; 0: none). Pages are
  // touched only when used.
  static constexpr std::uint64_t kPoolBytes = std::uint64_t{256} << 20;
  // Tensors smaller than this go through the ring (placing them saves less than it costs).
  static constexpr std::uint64_t kPoolMinBytes = std::uint64_t{64} << 10;
};

// Shm without a tensor pool: every byte goes through the rings.
struct ShmRingsOnly : Shm {
  static constexpr std::uint64_t kPoolBytes = 0;
};

// UCX: RDMA/RoCE/GPUDirect where hardware exists; tcp/shm/cma otherwise. Not written yet.
struct Ucx {
  using Backend = Ucx;
  static constexpr std::string_view kName = "ucx";
  static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{1} << 30;
  static constexpr bool kZeroCopySend = true;
};

// DPDK userspace frames over memif or af_packet. Not written yet.
struct Dpdk {
  using Backend = Dpdk;
  static constexpr std::string_view kName = "dpdk";
  static constexpr std::uint64_t kMaxFrameBytes = std::uint64_t{1} << 30;
  static constexpr bool kZeroCopySend = true;
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_POLICIES_H_
