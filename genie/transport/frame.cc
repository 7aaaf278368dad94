// File: genie/transport/frame.cc
// Frame header encoding and validation (see frame.h).
#include "genie/transport/frame.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "genie/transport/internal/little_endian.h"

namespace genie::transport {

using transport_internal::GetLe;
using transport_internal::PutLe;

absl::string_view MessageKindName(MessageKind kind) {
  switch (kind) {
    case MessageKind::kHello:
      return "kHello";
    case MessageKind::kChallenge:
      return "kChallenge";
    case MessageKind::kAuthResponse:
      return "kAuthResponse";
    case MessageKind::kAuthOk:
      return "kAuthOk";
    case MessageKind::kLoadProgram:
      return "kLoadProgram";
    case MessageKind::kRun:
      return "kRun";
    case MessageKind::kResult:
      return "kResult";
    case MessageKind::kRelease:
      return "kRelease";
    case MessageKind::kError:
      return "kError";
    case MessageKind::kPing:
      return "kPing";
    case MessageKind::kPong:
      return "kPong";
    case MessageKind::kTransfer:
      return "kTransfer";
    case MessageKind::kStats:
      return "kStats";
    case MessageKind::kGoodbye:
      return "kGoodbye";
    case MessageKind::kPeerSend:
      return "kPeerSend";
    case MessageKind::kPeerPut:
      return "kPeerPut";
    case MessageKind::kLanes:
      return "kLanes";
  }
  return "kind(unknown)";
}

absl::string_view TrafficClassName(TrafficClass traffic) {
  switch (traffic) {
    case TrafficClass::kControl:
      return "control";
    case TrafficClass::kWeights:
      return "weights";
    case TrafficClass::kActivations:
      return "activations";
    case TrafficClass::kKvCache:
      return "kv_cache";
  }
  return "unknown";
}

void EncodeFrameHeader(const FrameHeader& header, unsigned char out[kFrameHeaderBytes]) {
  PutLe(out + 0, kFrameMagic, 4);
  PutLe(out + 4, kFrameVersion, 2);
  out[6] = static_cast<unsigned char>(header.kind);
  out[7] =
      static_cast<unsigned char>((static_cast<std::uint8_t>(header.traffic) & kTrafficClassMask) |
                                 (header.striped ? kStripedFlag : 0));
  PutLe(out + 8, header.payload_bytes, 8);
  PutLe(out + 16, header.request_id, 8);
}

absl::StatusOr<FrameHeader> DecodeFrameHeader(const unsigned char in[kFrameHeaderBytes],
                                              std::uint64_t max_frame_bytes,
                                              absl::string_view transport_name) {
  const auto magic = static_cast<std::uint32_t>(GetLe(in, 4));
  if (magic != kFrameMagic) {
    return absl::DataLossError(absl::StrFormat(
        "%s: refused frame with bad magic 0x%08x (expected 0x%08x): the peer is not a Genie "
        "transport or the stream is corrupt; connection closed",
        transport_name, magic, kFrameMagic));
  }
  const auto version = static_cast<std::uint16_t>(GetLe(in + 4, 2));
  if (version != kFrameVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: refused frame with wire version %d; this build speaks version %d (client and "
        "node must run matching Genie builds); connection closed",
        transport_name, version, kFrameVersion));
  }
  const std::uint8_t kind = in[6];
  if (kind == 0 || kind > kMaxMessageKind) {
    return absl::DataLossError(absl::StrFormat(
        "%s: refused frame with unknown message kind %d; connection closed", transport_name, kind));
  }
  const std::uint8_t flags = in[7];
  const std::uint8_t traffic = flags & kTrafficClassMask;
  if ((flags & ~(kTrafficClassMask | kStripedFlag)) != 0 || traffic >= kNumTrafficClasses) {
    return absl::DataLossError(absl::StrFormat(
        "%s: refused frame with invalid flags 0x%02x; connection closed", transport_name, flags));
  }
  FrameHeader header;
  header.kind = static_cast<MessageKind>(kind);
  header.traffic = static_cast<TrafficClass>(traffic);
  header.payload_bytes = GetLe(in + 8, 8);
  header.request_id = GetLe(in + 16, 8);
  header.striped = (flags & kStripedFlag) != 0;
  if (header.payload_bytes > max_frame_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: refused %s frame of %d payload bytes: above this transport's max frame size of "
        "%d bytes; connection closed",
        transport_name, MessageKindName(header.kind), header.payload_bytes, max_frame_bytes));
  }
  return header;
}

}  // namespace genie::transport
