// File: genie/transport/counters.h
// Byte and frame accounting shared by every backend: per direction (sent / received) and per
// TrafficClass. Counters are relaxed atomics, so another thread (stats, genie-smi) may take a
// Snapshot while the connection runs; a snapshot difference gives what one step moved.
//
//   TrafficSnapshot before = conn.counters().Snapshot();
//   RunStep(conn);
//   TrafficSnapshot step = conn.counters().Snapshot() - before;
//   std::cout << step.ToString() << "\n";  // "sent 1.2 MiB (weights 1.2 MiB ...) ..."
#ifndef GENIE_TRANSPORT_COUNTERS_H_
#define GENIE_TRANSPORT_COUNTERS_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "genie/transport/frame.h"

namespace genie::transport {

enum class Direction : std::uint8_t { kSent = 0, kReceived = 1 };

// A plain copy of the counters at one moment.
struct TrafficSnapshot {
  std::uint64_t bytes[2][kNumTrafficClasses] = {};   // [direction][traffic class]
  std::uint64_t frames[2][kNumTrafficClasses] = {};  // [direction][traffic class]

  std::uint64_t Bytes(Direction d, TrafficClass c) const {
    return bytes[static_cast<int>(d)][static_cast<int>(c)];
  }
  std::uint64_t Frames(Direction d, TrafficClass c) const {
    return frames[static_cast<int>(d)][static_cast<int>(c)];
  }
  std::uint64_t TotalBytes(Direction d) const;
  std::uint64_t TotalFrames(Direction d) const;

  // "sent 1.50 MiB in 3 frames (control 72 B, weights 1.50 MiB); received 48 B in 2 frames
  // (control 48 B)": classes with no traffic are left out.
  std::string ToString() const;

  friend TrafficSnapshot operator-(const TrafficSnapshot& a, const TrafficSnapshot& b);
  friend TrafficSnapshot operator+(const TrafficSnapshot& a, const TrafficSnapshot& b);
  friend bool operator==(const TrafficSnapshot& a, const TrafficSnapshot& b);
  friend bool operator!=(const TrafficSnapshot& a, const TrafficSnapshot& b) { return !(a == b); }
};

// Live counters. Copying or moving takes a snapshot of the values (connections move at setup).
class TrafficCounters {
 public:
  TrafficCounters() = default;
  TrafficCounters(const TrafficCounters& other) { Restore(other.Snapshot()); }
  TrafficCounters& operator=(const TrafficCounters& other) {
    Restore(other.Snapshot());
    return *this;
  }

  // Adds `n` bytes of class `c` in direction `d` (header bytes included by the connections).
  void AddBytes(Direction d, TrafficClass c, std::uint64_t n) {
    bytes_[static_cast<int>(d)][static_cast<int>(c)].fetch_add(n, std::memory_order_relaxed);
  }
  void AddFrame(Direction d, TrafficClass c) {
    frames_[static_cast<int>(d)][static_cast<int>(c)].fetch_add(1, std::memory_order_relaxed);
  }

  TrafficSnapshot Snapshot() const;
  std::string ToString() const { return Snapshot().ToString(); }

 private:
  void Restore(const TrafficSnapshot& s);

  std::atomic<std::uint64_t> bytes_[2][kNumTrafficClasses] = {};
  std::atomic<std::uint64_t> frames_[2][kNumTrafficClasses] = {};
};

}  // namespace genie::transport

#endif  // GENIE_TRANSPORT_COUNTERS_H_
