// File: tests/e2e/node_process.h
// Starts the real genie-node binary as a child process for tests and benchmarks: finds it in
// Bazel runfiles, writes the key to a chmod-600 file, listens on an ephemeral loopback port
// (read from the node's first stdout line), and stops or kills it on request.
//
//   // BUILD: data = ["//genie/runtime:genie-node"]
//   GENIE_ASSIGN_OR_RETURN(std::unique_ptr<e2e::NodeProcess> node,
//                          e2e::NodeProcess::Start(key, {"--memory_budget=4096"}));
//   auto exec = client::RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", node->port(), key);
//   node->Kill(SIGKILL);  // or let the destructor stop it with SIGTERM
#ifndef GENIE_TESTS_E2E_NODE_PROCESS_H_
#define GENIE_TESTS_E2E_NODE_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace genie::e2e {

class NodeProcess {
 public:
  // Starts genie-node with --listen=127.0.0.1:0 --key_file=<temp file holding key> and
  // `flags`; waits up to `startup` for its "listening on" line. The node's stderr goes to
  // this process's stderr unless `stderr_path` names a file.
  static absl::StatusOr<std::unique_ptr<NodeProcess>> Start(
      const std::string& key, const std::vector<std::string>& flags = {},
      absl::Duration startup = absl::Seconds(60), const std::string& stderr_path = "");

  // $GENIE_NODE, else genie/runtime/genie-node in this binary's runfiles.
  static absl::StatusOr<std::string> FindBinary();

  ~NodeProcess();
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& key_file() const { return key_file_; }

  // Sends `signal` and waits up to `wait` for the process to end; returns its wait status
  // (or DeadlineExceeded, after which it is SIGKILLed).
  absl::StatusOr<int> Signal(int signal, absl::Duration wait = absl::Seconds(10));

 private:
  NodeProcess() = default;

  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string dir_;
  std::string key_file_;
};

// A private temporary directory (under $TEST_TMPDIR when set).
absl::StatusOr<std::string> MakeTempDir();
// Writes `key` to `path` with mode 0600.
absl::Status WriteKeyFile(const std::string& path, const std::string& key);

}  // namespace genie::e2e

#endif  // GENIE_TESTS_E2E_NODE_PROCESS_H_
