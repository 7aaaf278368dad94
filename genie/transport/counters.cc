// File: genie/transport/counters.cc
// TrafficCounters snapshots, differences and formatting (see counters.h).
#include "genie/transport/counters.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace genie::transport {
namespace {

std::string HumanBytes(std::uint64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024.0;
  int unit = 0;
  while (v >= 1024.0 && unit < 3) {
    v /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", v, kUnits[unit]);
}

}  // namespace

std::uint64_t TrafficSnapshot::TotalBytes(Direction d) const {
  std::uint64_t sum = 0;
  for (std::uint64_t b : bytes[static_cast<int>(d)]) sum += b;
  return sum;
}

std::uint64_t TrafficSnapshot::TotalFrames(Direction d) const {
  std::uint64_t sum = 0;
  for (std::uint64_t f : frames[static_cast<int>(d)]) sum += f;
  return sum;
}

std::string TrafficSnapshot::ToString() const {
  std::string out;
  for (Direction d : {Direction::kSent, Direction::kReceived}) {
    std::vector<std::string> classes;
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      const std::uint64_t b = bytes[static_cast<int>(d)][c];
      if (b == 0) continue;
      classes.push_back(
          absl::StrCat(TrafficClassName(static_cast<TrafficClass>(c)), " ", HumanBytes(b)));
    }
    absl::StrAppend(&out, out.empty() ? "" : "; ", d == Direction::kSent ? "sent " : "received ",
                    HumanBytes(TotalBytes(d)), " in ", TotalFrames(d), " frames");
    if (!classes.empty()) absl::StrAppend(&out, " (", absl::StrJoin(classes, ", "), ")");
  }
  return out;
}

namespace {
template <class Op>
TrafficSnapshot Combine(const TrafficSnapshot& a, const TrafficSnapshot& b, Op op) {
  TrafficSnapshot out;
  for (int d = 0; d < 2; ++d) {
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      out.bytes[d][c] = op(a.bytes[d][c], b.bytes[d][c]);
      out.frames[d][c] = op(a.frames[d][c], b.frames[d][c]);
    }
  }
  return out;
}
}  // namespace

TrafficSnapshot operator-(const TrafficSnapshot& a, const TrafficSnapshot& b) {
  return Combine(a, b, [](std::uint64_t x, std::uint64_t y) { return x - y; });
}

TrafficSnapshot operator+(const TrafficSnapshot& a, const TrafficSnapshot& b) {
  return Combine(a, b, [](std::uint64_t x, std::uint64_t y) { return x + y; });
}

bool operator==(const TrafficSnapshot& a, const TrafficSnapshot& b) {
  for (int d = 0; d < 2; ++d) {
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      if (a.bytes[d][c] != b.bytes[d][c] || a.frames[d][c] != b.frames[d][c]) return false;
    }
  }
  return true;
}

TrafficSnapshot TrafficCounters::Snapshot() const {
  TrafficSnapshot s;
  for (int d = 0; d < 2; ++d) {
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      s.bytes[d][c] = bytes_[d][c].load(std::memory_order_relaxed);
      s.frames[d][c] = frames_[d][c].load(std::memory_order_relaxed);
    }
  }
  return s;
}

void TrafficCounters::Restore(const TrafficSnapshot& s) {
  for (int d = 0; d < 2; ++d) {
    for (int c = 0; c < kNumTrafficClasses; ++c) {
      bytes_[d][c].store(s.bytes[d][c], std::memory_order_relaxed);
      frames_[d][c].store(s.frames[d][c], std::memory_order_relaxed);
    }
  }
}

}  // namespace genie::transport
