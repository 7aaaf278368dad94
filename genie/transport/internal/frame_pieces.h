// File: genie/transport/internal/frame_pieces.h
// The pieces of one outgoing frame (its head, then the payload's pieces) and how much of them
// has gone out: what the byte streams' WriteFrame walks, TcpStream into sendmsg's iovecs,
// ShmStream into its ring. Views only, no allocation.
//
//   FramePieces pieces(head, head_size, payload);
//   while (!pieces.done()) {
//     const transport::Piece rest = pieces.rest();  // never empty
//     pieces.Advance(Put(rest.data, rest.size));    // Put: how many bytes it took
//   }
#ifndef GENIE_TRANSPORT_INTERNAL_FRAME_PIECES_H_
#define GENIE_TRANSPORT_INTERNAL_FRAME_PIECES_H_

#include <sys/uio.h>

#include <cstddef>

#include "absl/types/span.h"
#include "genie/transport/frame.h"

namespace genie::transport_internal {

class FramePieces {
 public:
  // The views must outlive this.
  FramePieces(const unsigned char* head, std::size_t head_size,
              absl::Span<const transport::Piece> payload)
      : head_{head, head_size}, payload_(payload), count_(payload.size() + 1) {
    SkipFinished();
  }

  // Whether every byte has gone out.
  bool done() const { return index_ == count_; }

  // What is left of the current piece; never empty unless done().
  transport::Piece rest() const {
    const transport::Piece p = at(index_);
    return {static_cast<const unsigned char*>(p.data) + offset_, p.size - offset_};
  }

  // Points up to `max_iov` entries of `iov` at what is left, one per non-empty piece from the
  // current one on; returns how many it filled.
  int Gather(iovec* iov, int max_iov) const {
    int n_iov = 0;
    for (std::size_t i = index_; i < count_ && n_iov < max_iov; ++i) {
      const transport::Piece p = at(i);
      const std::size_t skip = (i == index_) ? offset_ : 0;
      if (p.size == skip) continue;
      iov[n_iov].iov_base = const_cast<char*>(static_cast<const char*>(p.data) + skip);
      iov[n_iov].iov_len = p.size - skip;
      ++n_iov;
    }
    return n_iov;
  }

  // Marks the next `n` bytes as gone out; `n` is at most what is left.
  void Advance(std::size_t n) {
    while (n > 0) {
      const std::size_t room = at(index_).size - offset_;
      if (n < room) {
        offset_ += n;
        return;
      }
      n -= room;
      ++index_;
      offset_ = 0;
    }
    SkipFinished();
  }

 private:
  // Index 0 is the head, index i >= 1 is payload[i - 1].
  transport::Piece at(std::size_t i) const { return i == 0 ? head_ : payload_[i - 1]; }

  // Steps past pieces with nothing left (empty ones included), so the current one has bytes.
  void SkipFinished() {
    while (index_ < count_ && at(index_).size == offset_) {
      ++index_;
      offset_ = 0;
    }
  }

  transport::Piece head_;
  absl::Span<const transport::Piece> payload_;
  std::size_t count_;
  std::size_t index_ = 0;   // the current piece
  std::size_t offset_ = 0;  // how much of it has gone out
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_FRAME_PIECES_H_
