// File: genie/transport/internal/inprocess_stream.h
// Two in-memory byte pipes (mutex + condition variable) joining a pair of streams in one
// process: the Stream behind Connection<InProcess> (see framed_connection.h). Each write is
// copied into the peer's queue as one chunk; the queue is unbounded, so sends never block.
#ifndef GENIE_TRANSPORT_INTERNAL_INPROCESS_STREAM_H_
#define GENIE_TRANSPORT_INTERNAL_INPROCESS_STREAM_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/transport/frame.h"

namespace genie::transport_internal {

struct InProcessPipe;  // inprocess_stream.cc

class InProcessStream {
 public:
  static std::pair<InProcessStream, InProcessStream> CreatePair();

  InProcessStream(InProcessStream&&) = default;
  InProcessStream& operator=(InProcessStream&& other) noexcept {
    if (this != &other) {
      Shutdown();
      out_ = std::move(other.out_);
      in_ = std::move(other.in_);
      peer_ = std::move(other.peer_);
    }
    return *this;
  }
  ~InProcessStream() { Shutdown(); }

  absl::Status WriteFrame(const unsigned char* head, std::size_t head_size,
                          absl::Span<const transport::Piece> payload, absl::Time deadline,
                          std::size_t* written);
  absl::Status Read(void* dst, std::size_t n, absl::Time deadline, std::size_t* got);
  void Shutdown();
  const std::string& peer() const { return peer_; }

 private:
  InProcessStream(std::shared_ptr<InProcessPipe> out, std::shared_ptr<InProcessPipe> in,
                  std::string peer)
      : out_(std::move(out)), in_(std::move(in)), peer_(std::move(peer)) {}

  std::shared_ptr<InProcessPipe> out_;  // we write, the peer reads
  std::shared_ptr<InProcessPipe> in_;   // the peer writes, we read
  std::string peer_;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_INPROCESS_STREAM_H_
