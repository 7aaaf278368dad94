// File: genie/core/timeline.h
// Genie's timeline: spans and instants from every thread of a process (the client's
// capture, its dispatches and reads, a node's runs, the GPU's work), written as a Chrome
// trace-event file that chrome://tracing and ui.perfetto.dev open. Off by default; when off,
// recording costs one relaxed atomic load.
//
//   GENIE_TIMELINE=/tmp/client.json ./my_program      # written when the process exits
//   GENIE_TIMELINE=/tmp/node.json genie-node ...      # a node's side, same clock
//   GENIE_TIMELINE=/tmp/t-%p.json ...                 # %p: the process id
//
//   // Or from code:
//   genie::timeline::Start();
//   { genie::timeline::Span s("dispatch", "nodes", n); ... }
//   genie::timeline::Stop();
//   GENIE_RETURN_IF_ERROR(genie::timeline::Write("/tmp/t.json"));
//
// Timestamps are CLOCK_MONOTONIC (std::chrono::steady_clock), shared by every process of a
// host, so a client's file and its node's merge into one timeline (their "traceEvents"
// arrays concatenated; each event carries its pid). Each thread records into a log of its
// own (no lock per event); a log holds kEventsPerThread events over the thread's life (a
// new Start does not free room) and drops the rest, counting them (Write puts the count in
// the file's metadata). The log of a thread that ended stays until the next Start, whose
// window it can no longer record in, frees it. Names and argument names must be string
// literals (or otherwise outlive the process's last Write): only pointers are kept.
// This header does not include libtorch.
#ifndef GENIE_CORE_TIMELINE_H_
#define GENIE_CORE_TIMELINE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace genie::timeline {

inline constexpr size_t kEventsPerThread = size_t{1} << 18;

namespace timeline_internal {
extern std::atomic<bool> g_on;
}  // namespace timeline_internal

inline bool Enabled() { return timeline_internal::g_on.load(std::memory_order_relaxed); }

inline int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Starts recording. Events recorded before the latest Start are not written.
void Start();
// Stops recording (what was recorded stays for Write).
void Stop();
// Writes every thread's events since the latest Start as a Chrome trace-event JSON file.
// Safe while other threads record: an event still being written is left out.
absl::Status Write(const std::string& path);

// Names the calling thread in the timeline (copied).
void NameThread(const std::string& name);
// A track of its own, named `name` (for work that is not a thread's, such as a GPU's): its
// id goes to RecordOn. The same name gives the same id.
int Track(const std::string& name);

// Records a span [begin_ns, end_ns) of the calling thread, or of track `track`. `arg_name`
// may be null (no argument).
void Record(const char* name, int64_t begin_ns, int64_t end_ns, const char* arg_name = nullptr,
            int64_t arg = 0);
void RecordOn(int track, const char* name, int64_t begin_ns, int64_t end_ns,
              const char* arg_name = nullptr, int64_t arg = 0);
// A point in time on the calling thread.
void Instant(const char* name, const char* arg_name = nullptr, int64_t arg = 0);

struct Stats {
  int64_t recorded = 0;     // since the latest Start, all threads
  int64_t dropped = 0;      // refused by a full log, ever
  int64_t thread_logs = 0;  // logs held: threads that recorded, less those freed by a Start
};
Stats GetStats();

// A span from construction to destruction, recorded when the timeline was on at its start.
class Span {
 public:
  explicit Span(const char* name, const char* arg_name = nullptr, int64_t arg = 0)
      : name_(name), arg_name_(arg_name), arg_(arg), begin_(Enabled() ? NowNanos() : 0) {}
  ~Span() {
    if (begin_ != 0) Record(name_, begin_, NowNanos(), arg_name_, arg_);
  }
  // The argument, when it is only known at the end (bytes received, ...).
  void set_arg(int64_t arg) { arg_ = arg; }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* name_;
  const char* arg_name_;
  int64_t arg_;
  int64_t begin_;
};

}  // namespace genie::timeline

#endif  // GENIE_CORE_TIMELINE_H_
