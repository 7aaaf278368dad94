// File: genie/transport/internal/shm_stream.h
// Shared memory between two processes of one host as a byte Stream for FramedConnection (see
// framed_connection.h).
//
// Rendezvous: the connecting side creates a sealed memfd holding two single-producer /
// single-consumer byte rings (one per direction), four eventfds (per ring: "data" rung by
// the producer, "space" rung by the consumer) and, when asked for, a second sealed memfd
// for the tensor pool (pool.h), and passes them over a Unix-domain socket with SCM_RIGHTS;
// the accepting side validates (sizes, seals, kinds) and maps them. After that the socket carries
// no bytes: it stays open only so either side sees the other's death (POLLHUP/POLLRDHUP).
//
// Data path: WriteFrame copies the gathered pieces into the ring in chunks, publishing each
// chunk (a store of `head`) so the reader copies out while the writer copies in; a
// frame larger than the ring streams through it. A side that finds nothing to do spins
// briefly (plus ConnectionOptions::busy_poll), then sets its "sleeping" word and waits in
// ppoll() on its eventfd and the socket until the deadline; the other side rings the eventfd
// only when that word is set (Dekker-style, sequentially consistent), so an active stream
// makes no system calls. Shutdown sets this side's "closed" word in the shared header, rings
// every eventfd and shuts the socket down; the reader drains what was written before a close
// before it reports the close, so no byte is lost.
#ifndef GENIE_TRANSPORT_INTERNAL_SHM_STREAM_H_
#define GENIE_TRANSPORT_INTERNAL_SHM_STREAM_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/transport/frame.h"
#include "genie/transport/internal/unique_fd.h"
#include "genie/transport/pool.h"

namespace genie::transport_internal {

struct ShmSettings {
  std::uint64_t ring_bytes = std::uint64_t{16} << 20;  // each direction
  std::uint64_t pool_bytes = 0;                        // the tensor pool; 0 = none
};

// Smallest and largest ring a connecting side may ask for.
inline constexpr std::uint64_t kShmMinRingBytes = 4096;
inline constexpr std::uint64_t kShmMaxRingBytes = std::uint64_t{1} << 30;
// Smallest and largest tensor pool (besides 0, no pool).
inline constexpr std::uint64_t kShmMinPoolBytes = std::uint64_t{1} << 20;
inline constexpr std::uint64_t kShmMaxPoolBytes = std::uint64_t{64} << 30;

struct ShmRegionHeader;  // shm_stream.cc
struct ShmRing;

// Owns one mmap'ed region: unmapped on destruction, movable.
class ShmMapping {
 public:
  ShmMapping() = default;
  ShmMapping(void* base, std::size_t size) : base_(base), size_(size) {}
  ShmMapping(ShmMapping&& other) noexcept;
  ShmMapping& operator=(ShmMapping&& other) noexcept;
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;
  ~ShmMapping();

  unsigned char* base() const { return static_cast<unsigned char*>(base_); }
  std::size_t size() const { return size_; }
  // Gives up ownership: the caller unmaps.
  void* Release() {
    size_ = 0;
    void* base = base_;
    base_ = nullptr;
    return base;
  }

 private:
  void* base_ = nullptr;
  std::size_t size_ = 0;
};

class ShmStream {
 public:
  // Connects to the Unix socket at `path`, creates the rings (settings.ring_bytes each) and
  // hands them over. InvalidArgument for a bad path or ring size, Unavailable when nothing
  // listens there, DeadlineExceeded after `timeout`.
  static absl::StatusOr<ShmStream> Connect(absl::string_view path, absl::Duration timeout,
                                           const ShmSettings& settings);

  ShmStream(ShmStream&&) = default;
  ShmStream& operator=(ShmStream&&) = default;
  // Shuts down (the peer's next read reports the close) and unmaps.
  ~ShmStream();

  absl::Status WriteFrame(const unsigned char* head, std::size_t head_size,
                          absl::Span<const transport::Piece> payload, absl::Time deadline,
                          std::size_t* written);
  absl::Status Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got);
  void Shutdown();
  // ConnectionOptions::busy_poll: spin this much longer before sleeping.
  void set_busy_poll(absl::Duration d) { busy_poll_ = d; }
  const std::string& peer() const { return peer_; }
  std::uint64_t ring_bytes() const { return ring_bytes_; }
  // The connection's tensor pool (both sides map it); null without one.
  const std::shared_ptr<transport::SharedPool>& pool() const { return pool_; }

 private:
  friend class ShmListenSocket;
  enum Side : int { kConnector = 0, kAcceptor = 1 };
  ShmStream(ShmMapping map, UniqueFd socket, UniqueFd eventfds[4], Side side, std::string peer,
            std::shared_ptr<transport::SharedPool> pool);

  // Waits until `ready()` holds, the peer goes away or `deadline` passes. Returns OK when
  // ready() holds; Unavailable when the peer closed or died (the caller re-checks its ring
  // first); DeadlineExceeded (no message) on time.
  template <class Ready>
  absl::Status Wait(Ready ready, std::atomic<std::uint32_t>* sleeping_word, int eventfd, absl::Time deadline);
  bool PeerClosed() const;
  bool SelfClosed() const;
  absl::Status ClosedStatus() const;
  absl::Status Corrupted(const char* what) const;

  ShmMapping map_;
  ShmRegionHeader* header_ = nullptr;
  ShmRing* tx_ = nullptr;  // this side produces
  ShmRing* rx_ = nullptr;  // this side consumes
  unsigned char* tx_data_ = nullptr;
  unsigned char* rx_data_ = nullptr;
  std::uint64_t ring_bytes_ = 0;
  Side side_ = kConnector;
  UniqueFd socket_;
  UniqueFd tx_data_efd_;   // rung by us after producing
  UniqueFd tx_space_efd_;  // we wait on it for room
  UniqueFd rx_data_efd_;   // we wait on it for bytes
  UniqueFd rx_space_efd_;  // rung by us after consuming
  std::string peer_;  // "shm /run/genie.sock" or "shm /run/genie.sock (pid 42)"
  absl::Duration busy_poll_ = absl::ZeroDuration();
  std::shared_ptr<transport::SharedPool> pool_;
};

class ShmListenSocket {
 public:
  // Listens on the Unix socket `path`. A stale socket file that nobody listens on is replaced;
  // a live one is refused (Unavailable: another node uses it). The file is removed when the
  // listener is destroyed.
  static absl::StatusOr<ShmListenSocket> Create(absl::string_view path);

  ShmListenSocket(ShmListenSocket&& other) noexcept;
  ShmListenSocket& operator=(ShmListenSocket&& other) noexcept;
  ~ShmListenSocket();

  // Waits up to `timeout` for a client and its rings. A client whose rings fail validation
  // is refused (InvalidArgument / FailedPrecondition naming it); the listener goes on.
  absl::StatusOr<ShmStream> Accept(absl::Duration timeout);
  const std::string& path() const { return path_; }

 private:
  ShmListenSocket(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  UniqueFd fd_;
  std::string path_;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_SHM_STREAM_H_
