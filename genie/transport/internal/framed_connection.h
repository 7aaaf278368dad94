// File: genie/transport/internal/framed_connection.h
// The frame protocol over any reliable byte stream, written once so every stream backend
// (InProcess, Tcp) behaves identically: header encode/validate, gather send, two-step
// receive, byte accounting, broken-connection state. Backends wrap it in their
// Connection<P, Tag> specialization.
//
// A Stream provides (all non-virtual):
//   absl::Status WriteFrame(const unsigned char* head, size_t head_size,
//                           absl::Span<const Piece> payload, absl::Time deadline,
//                           size_t* written);   // all or error; *written = bytes that went out
//   absl::Status Read(void* dst, size_t n, absl::Time deadline, size_t* got);
//                                               // exactly n bytes or error; *got = bytes read
//                                               // DeadlineExceeded on time, Unavailable on close
//   void Shutdown();                            // both directions; safe from another thread
//   const std::string& peer() const;            // "tcp 127.0.0.1:4242", for messages
// and may provide lanes (TcpStream does): int lane_count() const, WriteStriped, ReadStriped.
// With more than one lane, frames of at least FramedParams::stripe_min_bytes are striped.
#ifndef GENIE_TRANSPORT_INTERNAL_FRAMED_CONNECTION_H_
#define GENIE_TRANSPORT_INTERNAL_FRAMED_CONNECTION_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/options.h"

namespace genie::transport_internal {

using transport::Direction;
using transport::FrameHeader;
using transport::MessageKind;
using transport::Piece;
using transport::TrafficClass;

// Precomputed once at connection setup; the hot path reads only this.
struct FramedParams {
  std::uint64_t max_frame_bytes = 0;
  absl::string_view transport_name;
  absl::Duration send_timeout;
  absl::Duration payload_timeout;
  std::uint64_t stripe_min_bytes = 0;  // with lanes: stripe frames at least this large
};

// Whether a Stream has lanes (lane_count, WriteStriped, ReadStriped).
template <class S, class = void>
struct StreamHasLanes : std::false_type {};
template <class S>
struct StreamHasLanes<S, std::void_t<decltype(std::declval<const S&>().lane_count())>>
    : std::true_type {};

// Thread model: at most one thread sending and one thread receiving at a time (full duplex);
// Close() and counters() from any thread.
template <class Stream>
class FramedConnection {
 public:
  FramedConnection(Stream stream, const FramedParams& params)
      : stream_(std::move(stream)), params_(params) {}
  FramedConnection(const FramedConnection&) = delete;
  FramedConnection& operator=(const FramedConnection&) = delete;

  absl::Status Send(MessageKind kind, std::uint64_t request_id, absl::Span<const Piece> payload,
                    TrafficClass traffic) {
    if (broken_.load(std::memory_order_acquire)) return BrokenStatus();
    std::uint64_t payload_bytes = 0;
    for (const Piece& p : payload) payload_bytes += p.size;
    if (payload_bytes > params_.max_frame_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          stream_.peer(), ": cannot send a ", transport::MessageKindName(kind), " frame of ",
          payload_bytes, " payload bytes: above the ", params_.transport_name,
          " max frame size of ", params_.max_frame_bytes, " bytes (split the transfer)"));
    }
    FrameHeader header;
    header.kind = kind;
    header.traffic = traffic;
    header.payload_bytes = payload_bytes;
    header.request_id = request_id;
    if constexpr (StreamHasLanes<Stream>::value) {
      header.striped = payload_bytes >= params_.stripe_min_bytes && stream_.lane_count() > 1;
    }
    unsigned char head[transport::kFrameHeaderBytes];
    transport::EncodeFrameHeader(header, head);
    if constexpr (StreamHasLanes<Stream>::value) {
      if (header.striped) {
        size_t written = 0;
        absl::Status s = stream_.WriteStriped(head, sizeof(head), payload,
                                              absl::Now() + params_.send_timeout, &written);
        counters_.AddBytes(Direction::kSent, traffic, written);
        if (!s.ok()) return Break(s);  // a torn striped frame: the lanes are out of step
        counters_.AddFrame(Direction::kSent, traffic);
        return absl::OkStatus();
      }
    }
    return SendEncoded(head, sizeof(head), payload, traffic, /*count_frame=*/true);
  }

  // Sends `frames` in order with one write of the stream (one sendmsg on Tcp) instead of one
  // each: a reply and its transfer frames, a request and its uploads. Frames this stream
  // stripes over lanes go out one by one through Send. The receiver reads ordinary frames.
  absl::Status SendFrames(absl::Span<const transport::OutFrame> frames) {
    if (broken_.load(std::memory_order_acquire)) return BrokenStatus();
    bool one_by_one = frames.size() < 2;
    for (const transport::OutFrame& f : frames) {
      std::uint64_t bytes = 0;
      for (std::size_t k = 0; k < f.num_pieces; ++k) bytes += f.pieces[k].size;
      if (bytes > params_.max_frame_bytes) one_by_one = true;  // Send refuses it by name
      if constexpr (StreamHasLanes<Stream>::value) {
        if (bytes >= params_.stripe_min_bytes && stream_.lane_count() > 1) one_by_one = true;
      }
    }
    if (one_by_one) {
      for (const transport::OutFrame& f : frames) {
        absl::Status s =
            Send(f.kind, f.request_id, absl::MakeConstSpan(f.pieces, f.num_pieces), f.traffic);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }
    // Every header after the first travels as a piece of the one gathered write.
    heads_.resize(frames.size() * transport::kFrameHeaderBytes);
    gathered_.clear();
    for (std::size_t i = 0; i < frames.size(); ++i) {
      const transport::OutFrame& f = frames[i];
      FrameHeader header;
      header.kind = f.kind;
      header.traffic = f.traffic;
      header.request_id = f.request_id;
      for (std::size_t k = 0; k < f.num_pieces; ++k) header.payload_bytes += f.pieces[k].size;
      unsigned char* head = heads_.data() + i * transport::kFrameHeaderBytes;
      transport::EncodeFrameHeader(header, head);
      if (i > 0) gathered_.push_back(Piece{head, transport::kFrameHeaderBytes});
      gathered_.insert(gathered_.end(), f.pieces, f.pieces + f.num_pieces);
    }
    size_t written = 0;
    absl::Status s = stream_.WriteFrame(heads_.data(), transport::kFrameHeaderBytes, gathered_,
                                        absl::Now() + params_.send_timeout, &written);
    // Bytes by class as far as they went out (a frame counts once all of it did).
    size_t left = written;
    for (const transport::OutFrame& f : frames) {
      size_t bytes = transport::kFrameHeaderBytes;
      for (std::size_t k = 0; k < f.num_pieces; ++k) bytes += f.pieces[k].size;
      const size_t out = std::min(bytes, left);
      counters_.AddBytes(Direction::kSent, f.traffic, out);
      if (out == bytes) counters_.AddFrame(Direction::kSent, f.traffic);
      left -= out;
    }
    if (!s.ok()) {
      if (written == 0 && absl::IsDeadlineExceeded(s)) return s;  // nothing went out
      return Break(s);
    }
    return absl::OkStatus();
  }

  // Sockets this connection stripes large frames over (1: none).
  int lane_count() const {
    if constexpr (StreamHasLanes<Stream>::value) {
      return stream_.lane_count();
    } else {
      return 1;
    }
  }

  // Writes bytes that are not a valid frame: for tests of the receiver's validation.
  absl::Status WriteRawForTesting(absl::string_view bytes) {
    if (broken_.load(std::memory_order_acquire)) return BrokenStatus();
    return SendEncoded(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), {},
                       TrafficClass::kControl, /*count_frame=*/false);
  }

  absl::StatusOr<FrameHeader> ReceiveHeader(absl::Duration timeout) {
    if (broken_.load(std::memory_order_acquire)) return BrokenStatus();
    if (payload_left_ != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          stream_.peer(), ": ReceiveHeader called with ", payload_left_,
          " payload bytes of the previous frame unread (ReceivePayload or DiscardPayload first)"));
    }
    const absl::Time deadline = absl::Now() + timeout;
    size_t got = 0;
    absl::Status s = stream_.Read(head_ + head_got_, sizeof(head_) - head_got_, deadline, &got);
    head_got_ += got;
    if (!s.ok()) {
      if (absl::IsDeadlineExceeded(s)) {
        // Partial header bytes stay buffered: the next call resumes, the stream stays in step.
        return absl::DeadlineExceededError(
            absl::StrCat(stream_.peer(), ": no frame within ", absl::FormatDuration(timeout)));
      }
      if (head_got_ != 0) {
        s = absl::Status(s.code(), absl::StrCat(s.message(), " (in the middle of a frame header)"));
      }
      return Break(s);
    }
    head_got_ = 0;
    absl::StatusOr<FrameHeader> header =
        transport::DecodeFrameHeader(head_, params_.max_frame_bytes, params_.transport_name);
    if (!header.ok()) {
      return Break(absl::Status(header.status().code(),
                                absl::StrCat(stream_.peer(), ": ", header.status().message())));
    }
    if (header->striped && lane_count() <= 1) {
      return Break(absl::DataLossError(absl::StrCat(
          stream_.peer(), ": refused a ", transport::MessageKindName(header->kind),
          " frame striped over lanes this connection does not have (the peer attached lanes "
          "this side did not); connection closed")));
    }
    counters_.AddFrame(Direction::kReceived, header->traffic);
    counters_.AddBytes(Direction::kReceived, header->traffic, transport::kFrameHeaderBytes);
    payload_left_ = header->payload_bytes;
    payload_traffic_ = header->traffic;
    frame_bytes_ = header->striped ? header->payload_bytes : 0;
    return header;
  }

  absl::Status ReceivePayload(void* dst, std::size_t size) {
    if (broken_.load(std::memory_order_acquire)) return BrokenStatus();
    if (size > payload_left_) {
      return absl::InvalidArgumentError(absl::StrCat(stream_.peer(), ": ReceivePayload of ", size,
                                                     " bytes but only ", payload_left_,
                                                     " payload bytes are left in this frame"));
    }
    size_t got = 0;
    const absl::Time deadline = absl::Now() + params_.payload_timeout;
    absl::Status s;
    if constexpr (StreamHasLanes<Stream>::value) {
      s = frame_bytes_ != 0 ? stream_.ReadStriped(dst, size, frame_bytes_,
                                                  frame_bytes_ - payload_left_, deadline, &got)
                            : stream_.Read(dst, size, deadline, &got);
    } else {
      s = stream_.Read(dst, size, deadline, &got);
    }
    counters_.AddBytes(Direction::kReceived, payload_traffic_, got);
    payload_left_ -= got;
    if (!s.ok()) {
      // A frame cut short leaves the stream out of step: nothing after it can be trusted.
      return Break(absl::Status(s.code(), absl::StrCat(s.message(), " (", payload_left_,
                                                       " payload bytes of a frame missing)")));
    }
    return absl::OkStatus();
  }

  absl::Status DiscardPayload() {
    unsigned char sink[16 * 1024];
    while (payload_left_ != 0) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(payload_left_, sizeof(sink)));
      absl::Status s = ReceivePayload(sink, n);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<transport::Frame> Receive(absl::Duration timeout) {
    absl::StatusOr<FrameHeader> header = ReceiveHeader(timeout);
    if (!header.ok()) return header.status();
    transport::Frame frame;
    frame.header = *header;
    frame.payload.resize(static_cast<std::size_t>(header->payload_bytes));
    absl::Status s = ReceivePayload(frame.payload.data(), frame.payload.size());
    if (!s.ok()) return s;
    return frame;
  }

  // Closes both directions; the peer's next receive reports the close. Idempotent.
  void Close() {
    (void)Break(absl::FailedPreconditionError(
                    absl::StrCat(stream_.peer(), ": connection was closed by this side")),
                /*local_close=*/true);
  }

  bool broken() const { return broken_.load(std::memory_order_acquire); }
  // OK while usable; otherwise the error that broke the connection.
  absl::Status status() const {
    if (!broken()) return absl::OkStatus();
    return BrokenStatus();
  }
  const transport::TrafficCounters& counters() const { return counters_; }
  const std::string& peer() const { return stream_.peer(); }
  Stream& stream() { return stream_; }
  const Stream& stream() const { return stream_; }

 private:
  absl::Status SendEncoded(const unsigned char* head, std::size_t head_size,
                           absl::Span<const Piece> payload, TrafficClass traffic,
                           bool count_frame) {
    size_t written = 0;
    absl::Status s =
        stream_.WriteFrame(head, head_size, payload, absl::Now() + params_.send_timeout, &written);
    counters_.AddBytes(Direction::kSent, traffic, written);
    if (!s.ok()) {
      if (written == 0 && absl::IsDeadlineExceeded(s)) return s;  // nothing went out
      return Break(s);
    }
    if (count_frame) counters_.AddFrame(Direction::kSent, traffic);
    return absl::OkStatus();
  }

  // Records the first fatal error, shuts the stream down, returns `s`.
  // Later calls report it as "connection is broken: <first error>".
  absl::Status Break(absl::Status s, bool local_close = false) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_status_.ok()) {
        broken_status_ =
            local_close
                ? s
                : absl::Status(s.code(), absl::StrCat("connection is broken: ", s.message()));
      }
      broken_.store(true, std::memory_order_release);
    }
    stream_.Shutdown();
    return s;
  }

  absl::Status BrokenStatus() const {
    std::lock_guard<std::mutex> lock(mu_);
    return broken_status_;
  }

  Stream stream_;
  const FramedParams params_;
  transport::TrafficCounters counters_;
  std::atomic<bool> broken_{false};
  mutable std::mutex mu_;
  absl::Status broken_status_;  // guarded by mu_

  // SendFrames' scratch (sending thread only): encoded headers, gathered pieces.
  std::vector<unsigned char> heads_;
  std::vector<Piece> gathered_;

  // Receive side (receiving thread only).
  unsigned char head_[transport::kFrameHeaderBytes];
  std::size_t head_got_ = 0;
  std::uint64_t payload_left_ = 0;
  std::uint64_t frame_bytes_ = 0;  // the current frame's payload bytes when striped, else 0
  TrafficClass payload_traffic_ = TrafficClass::kControl;
};

}  // namespace genie::transport_internal

#endif  // GENIE_TRANSPORT_INTERNAL_FRAMED_CONNECTION_H_
