// File: genie/transport/internal/shm_stream.cc
// Ring layout, rendezvous over a Unix socket (SCM_RIGHTS) and the copy loops behind ShmStream
// (see shm_stream.h for the protocol).
#include "genie/transport/internal/shm_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "genie/transport/internal/fd_wait.h"
#include "genie/transport/internal/frame_pieces.h"

namespace genie::transport_internal {

// One direction's indices, each on its own cache line. `head` and `tail` count bytes since the
// connection began (they never wrap in practice: 2^64 bytes); the byte at position p lives at
// data[p % ring_bytes].
struct ShmRing {
  alignas(64) std::atomic<std::uint64_t> head{0};               // written by the producer
  alignas(64) std::atomic<std::uint64_t> tail{0};               // written by the consumer
  alignas(64) std::atomic<std::uint32_t> consumer_sleeping{0};  // consumer waits for data
  alignas(64) std::atomic<std::uint32_t> producer_sleeping{0};  // producer waits for room
};

// Start of the shared region; ring r's bytes follow at kDataOffset + r * ring_bytes.
// Ring 0 carries connector -> acceptor, ring 1 acceptor -> connector.
struct ShmRegionHeader {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t reserved = 0;
  std::uint64_t ring_bytes = 0;
  std::uint64_t region_bytes = 0;
  alignas(64) std::atomic<std::uint32_t> closed[2] = {};  // per side: Shutdown() was called
  ShmRing rings[2];
};

namespace {

constexpr std::uint64_t kMagic = 0x4d48535f45494e47ULL;  // "GNIE_SHM" in little-endian bytes
constexpr std::uint32_t kVersion = 2;  // 2: the hello names a tensor pool
constexpr std::size_t kDataOffset = 4096;
static_assert(sizeof(ShmRegionHeader) <= kDataOffset, "header must fit before the rings");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "shared-memory atomics must be lock-free to work across processes");

// Bytes copied before publishing them: the reader copies out one chunk while the writer
// copies in the next.
constexpr std::uint64_t kChunkBytes = 256 << 10;
// How long a side with nothing to do spins before sleeping in ppoll().
constexpr absl::Duration kSpin = absl::Microseconds(20);
// How long Accept waits for a connected client's rings.
constexpr absl::Duration kHelloTimeout = absl::Seconds(2);
constexpr int kNumFds = 5;      // memfd + 4 eventfds
constexpr int kMaxFds = 6;      // ... + the pool's memfd

// Sent once by the connector, with the five fds (six with a pool) as SCM_RIGHTS.
struct Hello {
  char magic[8];
  std::uint32_t version;
  std::uint32_t reserved;
  std::uint64_t ring_bytes;
  std::uint64_t pool_bytes;  // 0: no pool (and no sixth fd)
};
constexpr char kHelloMagic[8] = {'G', 'E', 'N', 'I', 'E', 'S', 'H', 'M'};


inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void Ring(int eventfd) {
  const std::uint64_t one = 1;
  // EAGAIN means the counter is already huge: the waiter will wake anyway.
  ssize_t rc;
  do {
    rc = ::write(eventfd, &one, sizeof(one));
  } while (rc < 0 && errno == EINTR);
}

std::uint64_t RegionBytes(std::uint64_t ring_bytes) {
  const std::uint64_t page = 4096;
  return (kDataOffset + 2 * ring_bytes + page - 1) / page * page;
}

absl::Status CheckPath(absl::string_view path, absl::string_view what) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("shm ", what, ": the socket path is empty"));
  }
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shm ", what, " ", path, ": the socket path is ", path.size(),
        " bytes, above the Unix-socket limit of ", sizeof(sockaddr_un{}.sun_path) - 1,
        " (use a shorter path, e.g. under /tmp or /run)"));
  }
  return absl::OkStatus();
}

sockaddr_un UnixAddress(absl::string_view path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

absl::StatusOr<ShmMapping> MapRegion(int memfd, std::size_t bytes, bool populate = true) {
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                    MAP_SHARED | (populate ? MAP_POPULATE : 0), memfd, 0);
  if (base == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", bytes, " bytes of shared memory: ", ErrnoText(errno)));
  }
  return ShmMapping(base, bytes);
}

}  // namespace

// ---- ShmMapping -------------------------------------------------------------------------

ShmMapping::ShmMapping(ShmMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

ShmMapping& ShmMapping::operator=(ShmMapping&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

ShmMapping::~ShmMapping() {
  if (base_ != nullptr) munmap(base_, size_);
}

// ---- ShmStream --------------------------------------------------------------------------

ShmStream::ShmStream(ShmMapping map, UniqueFd socket, UniqueFd eventfds[4], Side side,
                     std::string peer, std::shared_ptr<transport::SharedPool> pool)
    : map_(std::move(map)),
      side_(side),
      socket_(std::move(socket)),
      peer_(std::move(peer)),
      pool_(std::move(pool)) {
  header_ = reinterpret_cast<ShmRegionHeader*>(map_.base());
  ring_bytes_ = header_->ring_bytes;
  const int tx = side == kConnector ? 0 : 1;
  const int rx = 1 - tx;
  tx_ = &header_->rings[tx];
  rx_ = &header_->rings[rx];
  tx_data_ = map_.base() + kDataOffset + tx * ring_bytes_;
  rx_data_ = map_.base() + kDataOffset + rx * ring_bytes_;
  // eventfds: [ring 0 data, ring 0 space, ring 1 data, ring 1 space].
  tx_data_efd_ = std::move(eventfds[2 * tx]);
  tx_space_efd_ = std::move(eventfds[2 * tx + 1]);
  rx_data_efd_ = std::move(eventfds[2 * rx]);
  rx_space_efd_ = std::move(eventfds[2 * rx + 1]);
}

ShmStream::~ShmStream() {
  if (map_.base() != nullptr) Shutdown();  // moved-from streams own nothing
}

bool ShmStream::PeerClosed() const {
  return header_->closed[1 - side_].load(std::memory_order_acquire) != 0;
}
bool ShmStream::SelfClosed() const {
  return header_->closed[side_].load(std::memory_order_acquire) != 0;
}

absl::Status ShmStream::ClosedStatus() const {
  if (SelfClosed()) {
    return absl::UnavailableError(absl::StrCat(peer_, ": connection was shut down by this side"));
  }
  if (PeerClosed()) return absl::UnavailableError(absl::StrCat(peer_, ": peer closed the connection"));
  return absl::UnavailableError(absl::StrCat(
      peer_, ": peer closed the connection (its process exited or died without closing; "
             "restart it and reconnect)"));
}

absl::Status ShmStream::Corrupted(const char* what) const {
  return absl::DataLossError(absl::StrCat(
      peer_, ": the shared ", what,
      " ring's indices are out of range: the peer broke the shm protocol (reconnect)"));
}

template <class Ready>
absl::Status ShmStream::Wait(Ready ready, std::atomic<std::uint32_t>* sleeping, int eventfd,
                             absl::Time deadline) {
  const absl::Time spin_until = std::min(deadline, absl::Now() + kSpin + busy_poll_);
  do {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return absl::OkStatus();
      if (PeerClosed() || SelfClosed()) return absl::UnavailableError("");
      CpuRelax();
    }
  } while (absl::Now() < spin_until);
  for (;;) {
    // Announce the sleep, then look again: the other side publishes, then reads `sleeping`,
    // all four accesses sequentially consistent, so one of us sees the other (no lost
    // wake-up). On x86 that costs one locked store per side; loads stay plain.
    sleeping->store(1, std::memory_order_seq_cst);
    if (ready()) {
      sleeping->store(0, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    if (PeerClosed() || SelfClosed()) {
      sleeping->store(0, std::memory_order_relaxed);
      return absl::UnavailableError("");
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      sleeping->store(0, std::memory_order_relaxed);
      return absl::DeadlineExceededError("");
    }
    pollfd fds[2] = {{eventfd, POLLIN, 0}, {socket_.get(), POLLIN | POLLRDHUP, 0}};
    const timespec ts = absl::ToTimespec(left);
    const int rc = ppoll(fds, 2, &ts, nullptr);
    const int err = errno;
    sleeping->store(0, std::memory_order_relaxed);
    if (rc < 0) {
      if (err == EINTR) continue;
      return absl::InternalError(absl::StrCat(peer_, ": poll failed: ", ErrnoText(err)));
    }
    if (fds[0].revents & POLLIN) {
      std::uint64_t count;
      // Non-blocking: drains the counter; EAGAIN (another wake-up took it) is harmless.
      if (::read(eventfd, &count, sizeof(count)) < 0 && errno != EAGAIN && errno != EINTR) {
        return absl::InternalError(
            absl::StrCat(peer_, ": reading the wake-up eventfd failed: ", ErrnoText(errno)));
      }
    }
    // The socket never carries bytes after the handshake: readable or hung up means the
    // peer shut down or its process is gone.
    if (fds[1].revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
      if (ready()) return absl::OkStatus();
      return absl::UnavailableError("");
    }
  }
}

absl::Status ShmStream::WriteFrame(const unsigned char* head, std::size_t head_size,
                                   absl::Span<const transport::Piece> payload, absl::Time deadline,
                                   std::size_t* written) {
  *written = 0;
  FramePieces pieces(head, head_size, payload);
  std::uint64_t pos = tx_->head.load(std::memory_order_relaxed);  // only we write it
  for (;;) {
    if (pieces.done()) return absl::OkStatus();
    if (PeerClosed() || SelfClosed()) return ClosedStatus();
    const std::uint64_t tail = tx_->tail.load(std::memory_order_acquire);
    const std::uint64_t used = pos - tail;
    if (used > ring_bytes_) return Corrupted("send");
    if (used == ring_bytes_) {
      absl::Status s = Wait([&] { return tx_->tail.load(std::memory_order_seq_cst) != tail; },
                            &tx_->producer_sleeping, tx_space_efd_.get(), deadline);
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(
            absl::StrCat(peer_, ": send timed out: the peer has not read for too long (", *written,
                         " bytes of the frame went out)"));
      }
      if (absl::IsUnavailable(s)) {
        if (tx_->tail.load(std::memory_order_acquire) != tail && !PeerClosed() && !SelfClosed()) {
          continue;
        }
        return ClosedStatus();
      }
      if (!s.ok()) return s;
      continue;
    }
    // Copy up to one chunk of the gathered pieces, then publish it.
    std::uint64_t budget = std::min(ring_bytes_ - used, kChunkBytes);
    std::uint64_t copied = 0;
    while (budget > 0 && !pieces.done()) {
      const transport::Piece p = pieces.rest();
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(p.size, budget));
      const unsigned char* src = static_cast<const unsigned char*>(p.data);
      const std::uint64_t at = (pos + copied) % ring_bytes_;
      const std::size_t first = static_cast<std::size_t>(std::min<std::uint64_t>(n, ring_bytes_ - at));
      std::memcpy(tx_data_ + at, src, first);
      if (first < n) std::memcpy(tx_data_, src + first, n - first);
      copied += n;
      budget -= n;
      pieces.Advance(n);
    }
    pos += copied;
    tx_->head.store(pos, std::memory_order_seq_cst);
    *written += static_cast<std::size_t>(copied);
    if (tx_->consumer_sleeping.load(std::memory_order_seq_cst) != 0) Ring(tx_data_efd_.get());
  }
}

absl::Status ShmStream::Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got) {
  *got = 0;
  unsigned char* out = static_cast<unsigned char*>(dst);
  std::uint64_t pos = rx_->tail.load(std::memory_order_relaxed);  // only we write it
  while (*got < n) {
    const std::uint64_t head = rx_->head.load(std::memory_order_acquire);
    const std::uint64_t avail = head - pos;
    if (avail > ring_bytes_) return Corrupted("receive");
    if (avail == 0) {
      if (SelfClosed()) return ClosedStatus();
      if (PeerClosed()) {
        // Bytes the peer wrote before closing are still delivered.
        if (rx_->head.load(std::memory_order_acquire) != pos) continue;
        return ClosedStatus();
      }
      absl::Status s = Wait([&] { return rx_->head.load(std::memory_order_seq_cst) != pos; },
                            &rx_->consumer_sleeping, rx_data_efd_.get(), deadline);
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(absl::StrCat(peer_, ": receive timed out"));
      }
      if (absl::IsUnavailable(s)) {
        if (rx_->head.load(std::memory_order_acquire) != pos && !SelfClosed()) continue;
        return ClosedStatus();
      }
      if (!s.ok()) return s;
      continue;
    }
    const std::size_t k =
        static_cast<std::size_t>(std::min<std::uint64_t>({avail, n - *got, kChunkBytes}));
    const std::uint64_t at = pos % ring_bytes_;
    const std::size_t first = static_cast<std::size_t>(std::min<std::uint64_t>(k, ring_bytes_ - at));
    std::memcpy(out + *got, rx_data_ + at, first);
    if (first < k) std::memcpy(out + *got + first, rx_data_, k - first);
    pos += k;
    *got += k;
    rx_->tail.store(pos, std::memory_order_seq_cst);
    if (rx_->producer_sleeping.load(std::memory_order_seq_cst) != 0) Ring(rx_space_efd_.get());
  }
  return absl::OkStatus();
}

void ShmStream::Shutdown() {
  if (header_ == nullptr) return;
  header_->closed[side_].store(1, std::memory_order_seq_cst);
  // Wake whoever sleeps on either ring, on either side.
  for (const UniqueFd* fd : {&tx_data_efd_, &tx_space_efd_, &rx_data_efd_, &rx_space_efd_}) {
    if (fd->valid()) Ring(fd->get());
  }
  if (socket_.valid()) (void)shutdown(socket_.get(), SHUT_RDWR);
}

absl::StatusOr<ShmStream> ShmStream::Connect(absl::string_view path, absl::Duration timeout,
                                             const ShmSettings& settings) {
  const absl::Time deadline = absl::Now() + timeout;
  if (absl::Status s = CheckPath(path, "connect to"); !s.ok()) return s;
  const std::string where = absl::StrCat("shm connect to ", path);
  if (settings.ring_bytes < kShmMinRingBytes || settings.ring_bytes > kShmMaxRingBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ring size ", settings.ring_bytes,
                                                   " bytes is outside [", kShmMinRingBytes, ", ",
                                                   kShmMaxRingBytes, "]"));
  }
  // The rings.
  const std::uint64_t region_bytes = RegionBytes(settings.ring_bytes);
  UniqueFd memfd(memfd_create("genie-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd.valid()) {
    return absl::InternalError(absl::StrCat(where, ": memfd_create failed: ", ErrnoText(errno)));
  }
  if (ftruncate(memfd.get(), static_cast<off_t>(region_bytes)) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        where, ": cannot size ", region_bytes, " bytes of shared memory: ", ErrnoText(errno),
        " (use a smaller ring: kRingBytes in the policy)"));
  }
  // Sealed so the acceptor knows the region cannot shrink under it (no SIGBUS).
  if (fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return absl::InternalError(absl::StrCat(where, ": sealing the memfd failed: ", ErrnoText(errno)));
  }
  absl::StatusOr<ShmMapping> map = MapRegion(memfd.get(), region_bytes);
  if (!map.ok()) return absl::Status(map.status().code(), absl::StrCat(where, ": ", map.status().message()));
  auto* header = new (map->base()) ShmRegionHeader();
  header->magic = kMagic;
  header->version = kVersion;
  header->ring_bytes = settings.ring_bytes;
  header->region_bytes = region_bytes;
  // The tensor pool: a second sealed memfd, mapped without touching its pages.
  UniqueFd pool_fd;
  std::shared_ptr<transport::SharedPool> pool;
  if (settings.pool_bytes != 0) {
    if (settings.pool_bytes < kShmMinPoolBytes || settings.pool_bytes > kShmMaxPoolBytes ||
        settings.pool_bytes % 4096 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": tensor pool size ", settings.pool_bytes, " bytes is not 0 or a multiple of 4 KiB in [",
          kShmMinPoolBytes, ", ", kShmMaxPoolBytes, "] (kPoolBytes in the policy)"));
    }
    pool_fd = UniqueFd(memfd_create("genie-shm-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!pool_fd.valid()) {
      return absl::InternalError(absl::StrCat(where, ": memfd_create for the tensor pool failed: ",
                                              ErrnoText(errno)));
    }
    if (ftruncate(pool_fd.get(), static_cast<off_t>(settings.pool_bytes)) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          where, ": cannot size a tensor pool of ", settings.pool_bytes, " bytes: ", ErrnoText(errno),
          " (use a smaller pool: kPoolBytes in the policy, 0 for none)"));
    }
    if (fcntl(pool_fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      return absl::InternalError(
          absl::StrCat(where, ": sealing the tensor pool's memfd failed: ", ErrnoText(errno)));
    }
    absl::StatusOr<ShmMapping> pool_map =
        MapRegion(pool_fd.get(), settings.pool_bytes, /*populate=*/false);
    if (!pool_map.ok()) {
      return absl::Status(pool_map.status().code(),
                          absl::StrCat(where, ": tensor pool: ", pool_map.status().message()));
    }
    void* base = pool_map->base();
    (void)pool_map->Release();
    pool = transport::SharedPool::Adopt(base, settings.pool_bytes);
  }
  UniqueFd eventfds[4];
  for (UniqueFd& fd : eventfds) {
    fd = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!fd.valid()) {
      return absl::InternalError(absl::StrCat(where, ": eventfd failed: ", ErrnoText(errno)));
    }
  }
  // The socket.
  UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!sock.valid()) {
    return absl::InternalError(absl::StrCat(where, ": socket() failed: ", ErrnoText(errno)));
  }
  const sockaddr_un addr = UnixAddress(path);
  for (;;) {
    if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN) {  // the listener's backlog is full: try again until the deadline
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(where, " timed out after ",
                                                        absl::FormatDuration(timeout),
                                                        " (the listener's backlog stayed full)"));
      }
      absl::SleepFor(absl::Milliseconds(1));
      continue;
    }
    return absl::UnavailableError(
        absl::StrCat(where, " failed: ", ErrnoText(err),
                     " (is a genie-node running with --shm_socket=", path, " on this host?)"));
  }
  // The hello with the five fds.
  Hello hello{};
  std::memcpy(hello.magic, kHelloMagic, sizeof(hello.magic));
  hello.version = kVersion;
  hello.ring_bytes = settings.ring_bytes;
  hello.pool_bytes = settings.pool_bytes;
  const int nfds = pool != nullptr ? kMaxFds : kNumFds;
  iovec iov{&hello, sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
  const int fds[kMaxFds] = {memfd.get(),       eventfds[0].get(), eventfds[1].get(),
                            eventfds[2].get(), eventfds[3].get(), pool_fd.get()};
  std::memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
  for (;;) {
    const ssize_t n = sendmsg(sock.get(), &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof(hello))) break;
    const int err = errno;
    if (n < 0 && err == EINTR) continue;
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
      absl::Status s = WaitFd(sock.get(), POLLOUT, deadline);
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(
            absl::StrCat(where, " timed out after ", absl::FormatDuration(timeout)));
      }
      if (!s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(absl::StrCat(
        where, ": handing over the rings failed: ", n < 0 ? ErrnoText(err) : "short write"));
  }
  return ShmStream(std::move(*map), std::move(sock), eventfds, kConnector,
                   absl::StrCat("shm ", path), std::move(pool));
}

// ---- ShmListenSocket --------------------------------------------------------------------

absl::StatusOr<ShmListenSocket> ShmListenSocket::Create(absl::string_view path) {
  if (absl::Status s = CheckPath(path, "listen on"); !s.ok()) return s;
  const std::string where = absl::StrCat("shm listen on ", path);
  const std::string path_str(path);
  const sockaddr_un addr = UnixAddress(path);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat(where, ": socket() failed: ", ErrnoText(errno)));
  }
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EADDRINUSE) {
      return absl::UnavailableError(absl::StrCat(where, ": bind failed: ", ErrnoText(errno)));
    }
    // Something is at the path: a live listener (refuse) or a stale file (replace).
    struct stat st {};
    if (stat(path_str.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
      return absl::UnavailableError(
          absl::StrCat(where, ": the path exists and is not a socket (choose another path)"));
    }
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe.valid() &&
        connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      return absl::UnavailableError(absl::StrCat(
          where, ": another process is listening there (another genie-node?); choose another "
                 "--shm_socket path"));
    }
    if (unlink(path_str.c_str()) != 0 ||
        bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::UnavailableError(absl::StrCat(
          where, ": cannot replace the stale socket file: ", ErrnoText(errno)));
    }
  }
  if (listen(fd.get(), 128) != 0) {
    const int err = errno;
    unlink(path_str.c_str());
    return absl::UnavailableError(absl::StrCat(where, ": listen failed: ", ErrnoText(err)));
  }
  return ShmListenSocket(std::move(fd), path_str);
}

ShmListenSocket::ShmListenSocket(ShmListenSocket&& other) noexcept
    : fd_(std::move(other.fd_)), path_(std::exchange(other.path_, std::string())) {}

ShmListenSocket& ShmListenSocket::operator=(ShmListenSocket&& other) noexcept {
  if (this != &other) {
    if (fd_.valid() && !path_.empty()) unlink(path_.c_str());
    fd_ = std::move(other.fd_);
    path_ = std::exchange(other.path_, std::string());
  }
  return *this;
}

ShmListenSocket::~ShmListenSocket() {
  if (fd_.valid() && !path_.empty()) unlink(path_.c_str());
}

absl::StatusOr<ShmStream> ShmListenSocket::Accept(absl::Duration timeout) {
  absl::StatusOr<UniqueFd> accepted =
      AcceptBefore(fd_.get(), nullptr, nullptr, absl::Now() + timeout);
  if (absl::IsDeadlineExceeded(accepted.status())) {
    return absl::DeadlineExceededError(absl::StrCat(
        "shm listener ", path_, ": no connection within ", absl::FormatDuration(timeout)));
  }
  if (!accepted.ok()) {
    return absl::Status(accepted.status().code(),
                        absl::StrCat("shm listener ", path_, ": ", accepted.status().message()));
  }
  UniqueFd sock = std::move(*accepted);
  ucred cred{};
  socklen_t cred_len = sizeof(cred);
  std::string peer = absl::StrCat("shm ", path_);
  if (getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0) {
    absl::StrAppend(&peer, " (pid ", cred.pid, ")");
  }
  auto refuse = [&](absl::StatusCode code, absl::string_view why) {
    return absl::Status(code, absl::StrCat("shm listener ", path_, ": refused client ", peer,
                                           ": ", why));
  };

  // The hello and its fds; the client sends them right after connecting.
  Hello hello{};
  iovec iov{&hello, sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const absl::Time hello_deadline = absl::Now() + kHelloTimeout;
  ssize_t n;
  for (;;) {
    n = recvmsg(sock.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      return refuse(absl::StatusCode::kUnavailable,
                    absl::StrCat("reading its rings failed: ", ErrnoText(err)));
    }
    absl::Status s = WaitFd(sock.get(), POLLIN, hello_deadline);
    if (absl::IsDeadlineExceeded(s)) {
      return refuse(absl::StatusCode::kDeadlineExceeded,
                    absl::StrCat("it sent no rings within ", absl::FormatDuration(kHelloTimeout)));
    }
    if (!s.ok()) return s;
  }
  // Own every fd that came, whatever else is wrong.
  UniqueFd fds[kMaxFds];
  int nfds = 0;
  bool extra_fds = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (nfds < kMaxFds) {
        fds[nfds++] = UniqueFd(fd);
      } else {
        close(fd);
        extra_fds = true;
      }
    }
  }
  // The version first (an older client's hello is shorter), then the whole hello.
  if (n < static_cast<ssize_t>(offsetof(Hello, ring_bytes)) ||
      std::memcmp(hello.magic, kHelloMagic, sizeof(hello.magic)) != 0) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  "it did not send a Genie shm hello (is it a Genie client of the same build?)");
  }
  if (hello.version != kVersion) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  absl::StrCat("it speaks shm protocol version ", hello.version, ", this node ",
                               kVersion, " (use the same Genie build on both sides)"));
  }
  if (n != static_cast<ssize_t>(sizeof(hello))) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("its hello is ", n, " bytes, not ", sizeof(hello)));
  }
  const int want_fds = hello.pool_bytes != 0 ? kMaxFds : kNumFds;
  if (nfds != want_fds || extra_fds || (msg.msg_flags & MSG_CTRUNC) != 0) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("it passed ", nfds, extra_fds ? "+" : "", " file descriptors, not ",
                               want_fds, hello.pool_bytes != 0 ? " (rings, 4 eventfds, tensor pool)" : ""));
  }
  if (hello.pool_bytes != 0 &&
      (hello.pool_bytes < kShmMinPoolBytes || hello.pool_bytes > kShmMaxPoolBytes ||
       hello.pool_bytes % 4096 != 0)) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("tensor pool size ", hello.pool_bytes, " is out of range: it must be 0 "
                               "(no pool) or a multiple of 4096 in [", kShmMinPoolBytes, ", ",
                               kShmMaxPoolBytes, "] bytes; client and node must run the same Genie "
                               "build (check Shm::kPoolBytes in the client's policy)"));
  }
  if (hello.ring_bytes < kShmMinRingBytes || hello.ring_bytes > kShmMaxRingBytes) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("ring size ", hello.ring_bytes, " is out of range"));
  }
  const std::uint64_t region_bytes = RegionBytes(hello.ring_bytes);
  struct stat st {};
  if (fstat(fds[0].get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != region_bytes) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("its shared region is not ", region_bytes, " bytes"));
  }
  const int seals = fcntl(fds[0].get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  "its shared region is not a memfd sealed against shrinking");
  }
  for (int i = 1; i < kNumFds; ++i) {
    // poll() accepts any fd; make sure these are eventfds (their /proc link names the kind).
    char link[64] = {};
    const std::string proc = absl::StrCat("/proc/self/fd/", fds[i].get());
    const ssize_t len = readlink(proc.c_str(), link, sizeof(link) - 1);
    if (len <= 0 || absl::string_view(link, static_cast<std::size_t>(len)) != "anon_inode:[eventfd]") {
      return refuse(absl::StatusCode::kInvalidArgument,
                    absl::StrCat("file descriptor ", i, " of its hello is not an eventfd"));
    }
  }
  std::shared_ptr<transport::SharedPool> pool;
  if (hello.pool_bytes != 0) {
    const int pool_fd = fds[kNumFds].get();
    struct stat pool_st {};
    if (fstat(pool_fd, &pool_st) != 0 || !S_ISREG(pool_st.st_mode) ||
        static_cast<std::uint64_t>(pool_st.st_size) != hello.pool_bytes) {
      return refuse(absl::StatusCode::kInvalidArgument,
                    absl::StrCat("its tensor pool is not a ", hello.pool_bytes, "-byte memfd"));
    }
    const int pool_seals = fcntl(pool_fd, F_GET_SEALS);
    if (pool_seals < 0 || (pool_seals & F_SEAL_SHRINK) == 0) {
      return refuse(absl::StatusCode::kInvalidArgument,
                    "its tensor pool is not a memfd sealed against shrinking");
    }
    absl::StatusOr<ShmMapping> pool_map = MapRegion(pool_fd, hello.pool_bytes, /*populate=*/false);
    if (!pool_map.ok()) {
      return refuse(pool_map.status().code(),
                    absl::StrCat("mapping its tensor pool: ", pool_map.status().message()));
    }
    void* base = pool_map->base();
    (void)pool_map->Release();
    pool = transport::SharedPool::Adopt(base, hello.pool_bytes);
  }
  absl::StatusOr<ShmMapping> map = MapRegion(fds[0].get(), region_bytes);
  if (!map.ok()) return refuse(map.status().code(), map.status().message());
  const auto* header = reinterpret_cast<const ShmRegionHeader*>(map->base());
  if (header->magic != kMagic || header->version != kVersion ||
      header->ring_bytes != hello.ring_bytes || header->region_bytes != region_bytes) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  "its shared region's header does not match its hello");
  }
  return ShmStream(std::move(*map), std::move(sock), fds + 1, ShmStream::kAcceptor, std::move(peer),
                   std::move(pool));
}

}  // namespace genie::transport_internal
