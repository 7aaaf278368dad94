// File: genie/transport/frame.h
// The message model every transport implements identically. A connection carries *frames*:
// a fixed 24-byte header followed by `payload_bytes` of payload.
//
//   wire header (little-endian):  u32 magic | u16 version | u8 kind | u8 flags |
//                                 u64 payload_bytes | u64 request_id
//   flags bits 0..2: TrafficClass of the frame (the receiver counts the same class);
//   flags bit 3: the payload is striped across the connection's lanes (Tcp lanes, tcp.h):
//                lane k carries bytes [k*c, (k+1)*c) for c = StripeChunkBytes(payload, lanes),
//                the header and lane 0's bytes travel on the connection itself;
//   flags bits 4..7: reserved, must be zero.
//
// Sending is a gather of Pieces (tensor memory goes out without a staging copy):
//
//   float* weights = ...;
//   genie::transport::Piece pieces[] = {{&meta, sizeof(meta)}, {weights, n * sizeof(float)}};
//   GENIE_RETURN_IF_ERROR(conn.Send(MessageKind::kTransfer, request_id, pieces,
//                                   TrafficClass::kWeights));
#ifndef GENIE_TRANSPORT_FRAME_H_
#define GENIE_TRANSPORT_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace genie::transport {

enum class MessageKind : std::uint8_t {
  kHello = 1,
  kChallenge = 2,
  kAuthResponse = 3,
  kAuthOk = 4,
  kLoadProgram = 5,
  kRun = 6,
  kResult = 7,
  kRelease = 8,
  kError = 9,
  kPing = 10,
  kPong = 11,
  kTransfer = 12,
  kStats = 13,
  kGoodbye = 14,   // orderly shutdown notice
  kPeerSend = 15,  // client -> node: send a resident buffer to another node
  kPeerPut = 16,   // node -> node: keep these bytes for the client's next run
  kLanes = 17,     // client <-> node: open a Tcp connection's extra lanes (tcp.h)
};
inline constexpr std::uint8_t kMaxMessageKind = 17;

// What the bytes of a frame are for; counted separately per direction.
enum class TrafficClass : std::uint8_t {
  kControl = 0,
  kWeights = 1,
  kActivations = 2,
  kKvCache = 3,
};
inline constexpr int kNumTrafficClasses = 4;

// "kRun", "kTransfer", ...; "kind(200)" for values outside the enum.
absl::string_view MessageKindName(MessageKind kind);
// "control", "weights", "activations", "kv_cache".
absl::string_view TrafficClassName(TrafficClass traffic);

inline constexpr std::uint32_t kFrameMagic = 0x454E4547;  // "GENE" on the wire
inline constexpr std::uint16_t kFrameVersion = 2;         // 2: kLanes and striped frames
inline constexpr std::size_t kFrameHeaderBytes = 24;
inline constexpr std::uint8_t kTrafficClassMask = 0x07;
inline constexpr std::uint8_t kStripedFlag = 0x08;

// One contiguous piece of a gathered send: `size` bytes at `data`, borrowed for the call.
struct Piece {
  const void* data;
  std::size_t size;
};

// One frame of a batch sent in one write (Connection::SendFrames); `payload` is borrowed
// for the call.
struct OutFrame {
  MessageKind kind;
  std::uint64_t request_id;
  const Piece* pieces;
  std::size_t num_pieces;
  TrafficClass traffic;
};

// Frames to send together (Connection::SendFrames), built in order: Begin a frame, then Add
// its payload's pieces. Reused across sends; frames() is valid until the next Clear.
class FrameBatch {
 public:
  void Clear() {
    pieces_.clear();
    frames_.clear();
    starts_.clear();
  }
  void Begin(MessageKind kind, std::uint64_t request_id, TrafficClass traffic) {
    starts_.push_back(pieces_.size());
    frames_.push_back(OutFrame{kind, request_id, nullptr, 0, traffic});
  }
  // Appends `size` bytes at `data` (borrowed until the send) to the frame begun last.
  void Add(const void* data, std::size_t size) { pieces_.push_back(Piece{data, size}); }
  // The frames, pointing into the pieces added (laid out here, once all are in).
  const std::vector<OutFrame>& frames() {
    for (std::size_t i = 0; i < frames_.size(); ++i) {
      const std::size_t end = i + 1 < starts_.size() ? starts_[i + 1] : pieces_.size();
      frames_[i].pieces = pieces_.data() + starts_[i];
      frames_[i].num_pieces = end - starts_[i];
    }
    return frames_;
  }

 private:
  std::vector<Piece> pieces_;
  std::vector<OutFrame> frames_;
  std::vector<std::size_t> starts_;  // each frame's first piece
};

// A decoded, validated header.
struct FrameHeader {
  MessageKind kind = MessageKind::kPing;
  TrafficClass traffic = TrafficClass::kControl;
  std::uint64_t payload_bytes = 0;
  std::uint64_t request_id = 0;
  bool striped = false;  // the payload is spread over the connection's lanes (bit 3)
};

// Bytes of payload each lane of a striped frame carries (the last one may carry less):
// the payload split evenly over `lanes`, rounded up to 4 KiB so lanes start page-aligned in
// page-aligned memory. Sender and receiver compute the same.
inline std::uint64_t StripeChunkBytes(std::uint64_t payload_bytes, int lanes) {
  constexpr std::uint64_t kAlign = 4096;
  const std::uint64_t n = static_cast<std::uint64_t>(lanes < 1 ? 1 : lanes);
  const std::uint64_t even = (payload_bytes + n - 1) / n;
  return (even + kAlign - 1) / kAlign * kAlign;
}

// A whole frame with its payload copied out (Connection::Receive).
struct Frame {
  FrameHeader header;
  std::string payload;
};

// Writes the 24-byte wire header for `header` into `out`.
void EncodeFrameHeader(const FrameHeader& header, unsigned char out[kFrameHeaderBytes]);

// Parses and validates a wire header: magic, version, kind, flags, and payload size against
// `max_frame_bytes`. The error names what was wrong and the transport (`transport_name`).
absl::StatusOr<FrameHeader> DecodeFrameHeader(const unsigned char in[kFrameHeaderBytes],
                                              std::uint64_t max_frame_bytes,
                                              absl::string_view transport_name);

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_FRAME_H_
