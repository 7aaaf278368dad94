// File: tests/e2e/node_process.cc
// fork/exec of genie-node for tests and benchmarks (node_process.h).
#include "tests/e2e/node_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace genie::e2e {
namespace {

bool IsExecutable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::string SelfExe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

absl::StatusOr<std::string> MakeTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/genie-node-XXXXXX");
  if (::mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, ": ", std::strerror(errno)));
  }
  return templ;
}

absl::Status WriteKeyFile(const std::string& path, const std::string& key) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  const bool ok = ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size());
  ::fchmod(fd, 0600);
  ::close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindBinaryImpl() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("GENIE_NODE")) candidates.push_back(env);
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr) {
    candidates.push_back(absl::StrCat(srcdir, "/", workspace != nullptr ? workspace : "genie",
                                      "/genie/runtime/genie-node"));
  }
  if (const char* runfiles = std::getenv("RUNFILES_DIR")) {
    candidates.push_back(absl::StrCat(runfiles, "/genie/genie/runtime/genie-node"));
  }
  const std::string self = SelfExe();
  if (!self.empty()) candidates.push_back(absl::StrCat(self, ".runfiles/genie/genie/runtime/genie-node"));
  candidates.push_back("genie/runtime/genie-node");  // `bazel run` starts in the runfiles tree
  for (const std::string& c : candidates) {
    if (IsExecutable(c)) return c;
  }
  return absl::NotFoundError(
      "genie-node not found in runfiles: add data = [\"//genie/runtime:genie-node\"] to the "
      "target, or set GENIE_NODE=/path/to/genie-node");
}

absl::StatusOr<std::string> NodeProcess::FindBinary() { return FindBinaryImpl(); }

absl::StatusOr<std::unique_ptr<NodeProcess>> NodeProcess::Start(
    const std::string& key, const std::vector<std::string>& flags, absl::Duration startup,
    const std::string& stderr_path) {
  absl::StatusOr<std::string> binary = FindBinary();
  if (!binary.ok()) return binary.status();
  std::unique_ptr<NodeProcess> node(new NodeProcess());
  absl::StatusOr<std::string> dir = MakeTempDir();
  if (!dir.ok()) return dir.status();
  node->dir_ = *dir;
  node->key_file_ = absl::StrCat(*dir, "/key");
  absl::Status written = WriteKeyFile(node->key_file_, key);
  if (!written.ok()) return written;

  std::vector<std::string> args = {*binary, "--listen=127.0.0.1:0",
                                   absl::StrCat("--key_file=", node->key_file_)};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  int err_fd = -1;
  if (!stderr_path.empty()) {
    err_fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    if (::getppid() != parent) ::_exit(127);
    ::dup2(out[1], STDOUT_FILENO);
    if (err_fd >= 0) ::dup2(err_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (err_fd >= 0) ::close(err_fd);
  node->pid_ = pid;

  // Read the first line: "genie-node listening on 127.0.0.1:PORT".
  std::string line;
  const absl::Time deadline = absl::Now() + startup;
  while (line.find('\n') == std::string::npos) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) break;
    pollfd p{out[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left_ms)) <= 0) continue;
    char buf[256];
    const ssize_t n = ::read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  const std::string prefix = "genie-node listening on ";
  const size_t colon = line.rfind(':', line.find('\n'));
  uint32_t port = 0;
  if (!absl::StartsWith(line, prefix) || colon == std::string::npos ||
      !absl::SimpleAtoi(line.substr(colon + 1, line.find('\n') - colon - 1), &port)) {
    (void)node->Signal(SIGKILL, absl::Seconds(5));
    return absl::UnavailableError(absl::StrCat("genie-node (", *binary,
                                               ") did not report its port; first output: '", line,
                                               "' (its stderr says why)"));
  }
  node->port_ = static_cast<uint16_t>(port);
  return node;
}

absl::StatusOr<int> NodeProcess::Signal(int signal, absl::Duration wait) {
  if (pid_ <= 0) return absl::FailedPreconditionError("genie-node is not running");
  ::kill(pid_, signal);
  const absl::Time deadline = absl::Now() + wait;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return status;
    }
    if (absl::Now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      return absl::DeadlineExceededError(
          absl::StrCat("genie-node did not exit within ", absl::FormatDuration(wait),
                       " of signal ", signal, "; killed it"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

NodeProcess::~NodeProcess() {
  if (pid_ > 0) (void)Signal(SIGTERM, absl::Seconds(10));
  if (!key_file_.empty()) ::unlink(key_file_.c_str());
  if (!dir_.empty()) ::rmdir(dir_.c_str());
}

}  // namespace genie::e2e
