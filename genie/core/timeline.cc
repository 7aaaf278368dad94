// File: genie/core/timeline.cc
#include "genie/core/timeline.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace genie::timeline {
namespace timeline_internal {
std::atomic<bool> g_on{false};
}  // namespace timeline_internal

namespace {

struct Event {
  const char* name;
  const char* arg_name;  // null: no argument
  int64_t begin_ns;
  int64_t end_ns;  // < 0: an instant
  int64_t arg;
  int32_t tid;
  uint32_t window;  // the Start it was recorded after
};

// One thread's events: chunks allocated as they fill, published through `size` (the reader
// sees only events whose writes happened before the store that counted them).
constexpr size_t kChunkEvents = 4096;
constexpr size_t kChunks = kEventsPerThread / kChunkEvents;
static_assert(kEventsPerThread % kChunkEvents == 0);

struct ThreadLog {
  int32_t tid = 0;
  std::string name;  // under Registry::mu
  std::unique_ptr<Event[]> chunks[kChunks];
  std::atomic<size_t> size{0};
  bool ended = false;  // under Registry::mu: its thread exited; the next Start frees it
};

// Above any thread id (Linux's pid_max is at most 2^22), so a track's id is never a thread's.
constexpr int kFirstTrack = 1 << 30;

struct Registry {
  std::mutex mu;
  std::vector<std::unique_ptr<ThreadLog>> logs;  // a thread's until the Start after it ended
  std::vector<std::string> tracks;               // id kFirstTrack + index
  std::atomic<uint32_t> window{0};               // counts Starts
  std::atomic<int64_t> dropped{0};
};

Registry& Reg() {
  static Registry* r = new Registry();  // outlives threads that record during exit
  return *r;
}

thread_local ThreadLog* t_log = nullptr;

// Marks the thread's log ended when the thread exits. The thread never writes it again: an
// event recorded later in its exit (another thread_local's destructor) opens a new log.
struct LogRetirer {
  ~LogRetirer() {
    if (t_log == nullptr) return;
    std::lock_guard<std::mutex> lock(Reg().mu);
    t_log->ended = true;
    t_log = nullptr;
  }
};
thread_local LogRetirer t_retirer;

ThreadLog& Mine() {
  if (t_log == nullptr) {
    (void)&t_retirer;  // constructed with the log: destroyed when the thread exits
    auto log = std::make_unique<ThreadLog>();
    log->tid = static_cast<int32_t>(::syscall(SYS_gettid));
    Registry& r = Reg();
    std::lock_guard<std::mutex> lock(r.mu);
    t_log = log.get();
    r.logs.push_back(std::move(log));
  }
  return *t_log;
}

void Append(const Event& e) {
  ThreadLog& log = Mine();
  const size_t n = log.size.load(std::memory_order_relaxed);
  if (n >= kEventsPerThread) {
    Reg().dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::unique_ptr<Event[]>& chunk = log.chunks[n / kChunkEvents];
  if (chunk == nullptr) chunk.reset(new Event[kChunkEvents]);
  chunk[n % kChunkEvents] = e;
  log.size.store(n + 1, std::memory_order_release);
}

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", static_cast<int>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

std::string ProcessName() {
  std::string name = "genie";
  if (FILE* f = std::fopen("/proc/self/comm", "r")) {
    char buf[64] = {};
    if (std::fgets(buf, sizeof(buf), f) != nullptr) {
      name = buf;
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
    }
    std::fclose(f);
  }
  return name;
}

// GENIE_TIMELINE=path: record from the start, write at exit.
const char* g_exit_path = nullptr;
void WriteAtExit() {
  Stop();
  absl::Status s = Write(g_exit_path);
  if (!s.ok()) {
    std::fprintf(stderr, "genie: GENIE_TIMELINE: %s\n", std::string(s.message()).c_str());
  } else {
    std::fprintf(stderr, "genie: timeline written to %s (open it in ui.perfetto.dev)\n",
                 g_exit_path);
  }
}
std::string* g_exit_path_storage = nullptr;
[[maybe_unused]] const bool g_from_env = [] {
  const char* path = std::getenv("GENIE_TIMELINE");
  if (path == nullptr || *path == '\0') return false;
  // "%p" becomes the process id: processes that inherit the variable write files of their own.
  g_exit_path_storage = new std::string(path);  // lives until exit
  for (size_t at = g_exit_path_storage->find("%p"); at != std::string::npos;
       at = g_exit_path_storage->find("%p", at)) {
    g_exit_path_storage->replace(at, 2, std::to_string(::getpid()));
  }
  g_exit_path = g_exit_path_storage->c_str();
  Start();
  std::atexit(WriteAtExit);
  return true;
}();

}  // namespace

void Start() {
  Registry& r = Reg();
  {
    // Logs of threads that ended hold only events of earlier windows, which Write skips.
    std::lock_guard<std::mutex> lock(r.mu);
    r.logs.erase(std::remove_if(r.logs.begin(), r.logs.end(),
                                [](const std::unique_ptr<ThreadLog>& log) { return log->ended; }),
                 r.logs.end());
  }
  r.window.fetch_add(1, std::memory_order_relaxed);
  timeline_internal::g_on.store(true, std::memory_order_relaxed);
}

void Stop() { timeline_internal::g_on.store(false, std::memory_order_relaxed); }

void NameThread(const std::string& name) {
  ThreadLog& log = Mine();
  std::lock_guard<std::mutex> lock(Reg().mu);
  log.name = name;
}

int Track(const std::string& name) {
  Registry& r = Reg();
  std::lock_guard<std::mutex> lock(r.mu);
  for (size_t k = 0; k < r.tracks.size(); ++k) {
    if (r.tracks[k] == name) return kFirstTrack + static_cast<int>(k);
  }
  r.tracks.push_back(name);
  return kFirstTrack + static_cast<int>(r.tracks.size() - 1);
}

void Record(const char* name, int64_t begin_ns, int64_t end_ns, const char* arg_name, int64_t arg) {
  if (!Enabled()) return;
  Append(Event{name, arg_name, begin_ns, end_ns < begin_ns ? begin_ns : end_ns, arg, Mine().tid,
               Reg().window.load(std::memory_order_relaxed)});
}

void RecordOn(int track, const char* name, int64_t begin_ns, int64_t end_ns, const char* arg_name,
              int64_t arg) {
  if (!Enabled()) return;
  Append(Event{name, arg_name, begin_ns, end_ns < begin_ns ? begin_ns : end_ns, arg, track,
               Reg().window.load(std::memory_order_relaxed)});
}

void Instant(const char* name, const char* arg_name, int64_t arg) {
  if (!Enabled()) return;
  Append(Event{name, arg_name, NowNanos(), -1, arg, Mine().tid,
               Reg().window.load(std::memory_order_relaxed)});
}

Stats GetStats() {
  Registry& r = Reg();
  const uint32_t window = r.window.load(std::memory_order_relaxed);
  Stats s;
  s.dropped = r.dropped.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(r.mu);
  s.thread_logs = static_cast<int64_t>(r.logs.size());
  for (const auto& log : r.logs) {
    const size_t n = log->size.load(std::memory_order_acquire);
    for (size_t i = 0; i < n; ++i) {
      s.recorded += log->chunks[i / kChunkEvents][i % kChunkEvents].window == window;
    }
  }
  return s;
}

absl::Status Write(const std::string& path) {
  Registry& r = Reg();
  const uint32_t window = r.window.load(std::memory_order_relaxed);
  const int pid = static_cast<int>(::getpid());
  std::string out = "{\"traceEvents\":[\n";
  bool first = true;
  auto begin_event = [&] {
    if (!first) out.append(",\n");
    first = false;
  };
  begin_event();
  absl::StrAppend(&out, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":", pid,
                  ",\"tid\":0,\"args\":{\"name\":");
  AppendJsonString(&out, absl::StrCat(ProcessName(), " (pid ", pid, ")"));
  out.append("}}");
  {
    std::lock_guard<std::mutex> lock(r.mu);
    for (size_t k = 0; k < r.tracks.size(); ++k) {
      begin_event();
      absl::StrAppend(&out, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":", pid,
                      ",\"tid\":", kFirstTrack + static_cast<int>(k), ",\"args\":{\"name\":");
      AppendJsonString(&out, r.tracks[k]);
      out.append("}}");
    }
    for (const auto& log : r.logs) {
      if (!log->name.empty()) {
        begin_event();
        absl::StrAppend(&out, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":", pid,
                        ",\"tid\":", log->tid, ",\"args\":{\"name\":");
        AppendJsonString(&out, log->name);
        out.append("}}");
      }
      const size_t n = log->size.load(std::memory_order_acquire);
      for (size_t i = 0; i < n; ++i) {
        const Event& e = log->chunks[i / kChunkEvents][i % kChunkEvents];
        if (e.window != window) continue;
        begin_event();
        out.append("{\"name\":");
        AppendJsonString(&out, e.name);
        absl::StrAppendFormat(&out, ",\"pid\":%d,\"tid\":%d,\"ts\":%.3f", pid, e.tid,
                              static_cast<double>(e.begin_ns) / 1e3);
        if (e.end_ns < 0) {
          out.append(",\"ph\":\"i\",\"s\":\"t\"");
        } else {
          absl::StrAppendFormat(&out, ",\"ph\":\"X\",\"dur\":%.3f",
                                static_cast<double>(e.end_ns - e.begin_ns) / 1e3);
        }
        if (e.arg_name != nullptr) {
          out.append(",\"args\":{");
          AppendJsonString(&out, e.arg_name);
          absl::StrAppend(&out, ":", e.arg, "}");
        }
        out.append("}");
      }
    }
  }
  absl::StrAppend(&out, "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"dropped_events\":",
                  r.dropped.load(std::memory_order_relaxed), "}}\n");
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot open ", path,
                     " to write the timeline; check that its folder exists "
                     "and is writable"));
  }
  const size_t wrote = std::fwrite(out.data(), 1, out.size(), f);
  const bool closed = std::fclose(f) == 0;
  if (wrote != out.size() || !closed) {
    return absl::DataLossError(
        absl::StrCat("writing the timeline to ", path, " failed part-way (disk full?)"));
  }
  return absl::OkStatus();
}

}  // namespace genie::timeline
