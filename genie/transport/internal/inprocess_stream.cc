// File: genie/transport/internal/inprocess_stream.cc
// The in-memory pipes behind InProcessStream (see inprocess_stream.h).
#include "genie/transport/internal/inprocess_stream.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace genie::transport_internal {

struct InProcessPipe {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<char>> chunks;  // guarded by mu
  std::size_t front_offset = 0;          // bytes of chunks.front() already read
  bool closed = false;                   // guarded by mu; set by either end's Shutdown
};

std::pair<InProcessStream, InProcessStream> InProcessStream::CreatePair() {
  auto a_to_b = std::make_shared<InProcessPipe>();
  auto b_to_a = std::make_shared<InProcessPipe>();
  return {InProcessStream(a_to_b, b_to_a, "inprocess peer b"),
          InProcessStream(b_to_a, a_to_b, "inprocess peer a")};
}

absl::Status InProcessStream::WriteFrame(const unsigned char* head, std::size_t head_size,
                                         absl::Span<const transport::Piece> payload,
                                         absl::Time deadline, std::size_t* written) {
  *written = 0;
  if (out_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(peer_, ": moved from"));
  std::size_t total = head_size;
  for (const transport::Piece& p : payload) total += p.size;
  std::vector<char> chunk(total);
  char* at = chunk.data();
  if (head_size != 0) std::memcpy(at, head, head_size);
  at += head_size;
  for (const transport::Piece& p : payload) {
    if (p.size != 0) std::memcpy(at, p.data, p.size);
    at += p.size;
  }
  {
    std::lock_guard<std::mutex> lock(out_->mu);
    if (out_->closed) {
      return absl::UnavailableError(absl::StrCat(peer_, ": peer closed the connection"));
    }
    if (total != 0) out_->chunks.push_back(std::move(chunk));
  }
  out_->cv.notify_all();
  *written = total;
  return absl::OkStatus();
}

absl::Status InProcessStream::Read(void* dst, std::size_t n, absl::Time deadline,
                                   std::size_t* got) {
  *got = 0;
  if (in_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(peer_, ": moved from"));
  char* out = static_cast<char*>(dst);
  InProcessPipe& pipe = *in_;
  std::unique_lock<std::mutex> lock(pipe.mu);
  while (*got < n) {
    if (!pipe.chunks.empty()) {
      std::vector<char>& front = pipe.chunks.front();
      const std::size_t take = std::min(n - *got, front.size() - pipe.front_offset);
      std::memcpy(out + *got, front.data() + pipe.front_offset, take);
      *got += take;
      pipe.front_offset += take;
      if (pipe.front_offset == front.size()) {
        pipe.chunks.pop_front();
        pipe.front_offset = 0;
      }
      continue;
    }
    if (pipe.closed) {
      return absl::UnavailableError(absl::StrCat(peer_, ": peer closed the connection"));
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(peer_, ": receive timed out"));
    }
    pipe.cv.wait_for(lock, absl::ToChronoNanoseconds(left));
  }
  return absl::OkStatus();
}

void InProcessStream::Shutdown() {
  for (InProcessPipe* pipe : {out_.get(), in_.get()}) {
    if (pipe == nullptr) continue;
    {
      std::lock_guard<std::mutex> lock(pipe->mu);
      pipe->closed = true;
    }
    pipe->cv.notify_all();
  }
}

}  // namespace genie::transport_internal
