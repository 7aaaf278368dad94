// File: genie/core/timeline_test.cc
#include "genie/core/timeline.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace genie::timeline {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Each test starts its own window: Start() leaves out what earlier tests recorded.
TEST(Timeline, WritesSpansOfEveryThreadWithTheirNamesAndArguments) {
  Start();
  {
    Span s("outer step", "nodes", 207);
    Instant("flush", "part", 3);
  }
  std::thread t([] {
    NameThread("node \"session\" 1");
    Span s("execute");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  });
  t.join();
  const int gpu = Track("GPU cuda:0");
  EXPECT_EQ(Track("GPU cuda:0"), gpu);
  RecordOn(gpu, "kernels", NowNanos() - 1000, NowNanos(), "bytes", 4096);
  Stop();
  Instant("after stop");  // not recorded
  EXPECT_EQ(GetStats().recorded, 4);

  const std::string path = TempPath("timeline.json");
  ASSERT_TRUE(Write(path).ok());
  const std::string json = ReadAll(path);
  EXPECT_TRUE(absl::StartsWith(json, "{\"traceEvents\":[")) << json;
  EXPECT_EQ(Count(json, "\"ph\":\"X\""), 3) << json;
  EXPECT_EQ(Count(json, "\"ph\":\"i\""), 1) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"name\":\"outer step\"")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"args\":{\"nodes\":207}")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"args\":{\"part\":3}")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"args\":{\"bytes\":4096}")) << json;
  EXPECT_FALSE(absl::StrContains(json, "after stop")) << json;
  // The thread's name is escaped, and its track and the GPU's are named.
  EXPECT_TRUE(absl::StrContains(json, "\"name\":\"node \\\"session\\\" 1\"")) << json;
  EXPECT_TRUE(
      absl::StrContains(json, absl::StrCat("\"tid\":", gpu, ",\"args\":{\"name\":\"GPU cuda:0\"")))
      << json;
  // Events carry this process's id and this thread's kernel id.
  EXPECT_TRUE(absl::StrContains(
      json, absl::StrCat("\"pid\":", ::getpid(), ",\"tid\":", ::syscall(SYS_gettid), ",\"ts\":")))
      << json;
  // The other thread's span lasted at least the 2 ms it slept.
  const size_t at = json.find("\"name\":\"execute\"");
  ASSERT_NE(at, std::string::npos);
  const size_t dur = json.find("\"dur\":", at);
  ASSERT_NE(dur, std::string::npos);
  EXPECT_GE(std::atof(json.c_str() + dur + 6), 2000.0) << json.substr(at, 200);
}

TEST(Timeline, StartBeginsANewWindowAndOffRecordsNothing) {
  Start();
  Instant("old");
  Stop();
  { Span s("while off"); }
  Start();
  Instant("new");
  Stop();
  EXPECT_EQ(GetStats().recorded, 1);
  const std::string path = TempPath("window.json");
  ASSERT_TRUE(Write(path).ok());
  const std::string json = ReadAll(path);
  EXPECT_TRUE(absl::StrContains(json, "\"name\":\"new\""));
  EXPECT_FALSE(absl::StrContains(json, "\"name\":\"old\""));
  EXPECT_FALSE(absl::StrContains(json, "while off"));
}

TEST(Timeline, AFullLogDropsAndCountsTheRest) {
  Start();
  std::thread t([] {
    for (size_t i = 0; i < kEventsPerThread + 5; ++i) Record("e", 1 + NowNanos(), NowNanos() + 2);
  });
  t.join();
  Stop();
  EXPECT_GE(GetStats().dropped, 5);
  EXPECT_GE(GetStats().recorded, static_cast<int64_t>(kEventsPerThread));
}

// A process that starts threads one after another (a node's connections) does not keep
// the log of every thread that ever recorded: an ended thread's events are written until
// the next Start, which frees its log.
TEST(Timeline, TheLogsOfEndedThreadsAreWrittenThenFreedByTheNextStart) {
  Start();
  Instant("main");  // this thread's log, which stays
  const int64_t base = GetStats().thread_logs;
  for (int k = 0; k < 8; ++k) std::thread([] { Instant("short-lived"); }).join();
  Stop();
  EXPECT_EQ(GetStats().thread_logs, base + 8);
  const std::string path = TempPath("ended.json");
  ASSERT_TRUE(Write(path).ok());
  EXPECT_EQ(Count(ReadAll(path), "\"name\":\"short-lived\""), 8);
  Start();
  EXPECT_EQ(GetStats().thread_logs, base);
  Instant("main again");
  std::thread([] { Instant("after"); }).join();
  Stop();
  EXPECT_EQ(GetStats().recorded, 2);
  EXPECT_EQ(GetStats().thread_logs, base + 1);
}

TEST(Timeline, AnUnwritablePathSaysWhichAndWhy) {
  const absl::Status s = Write("/nonexistent-folder/t.json");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(s.message(), "/nonexistent-folder/t.json")) << s;
}

}  // namespace
}  // namespace genie::timeline
