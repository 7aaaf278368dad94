// File: tools/smi/genie_smi.cc
// genie-smi: what genie-nodes are doing, like nvidia-smi for GPUs: one row per node (device,
// uptime, open sessions, runs, bytes in and out, programs, resident bytes, GPU memory).
//
//   genie-smi --nodes=10.0.0.7:7070,10.0.0.8:7070 --key_file=/etc/genie/key
//   genie-smi --nodes=127.0.0.1:7070 --json            # one JSON object per poll, one line
//   genie-smi --nodes=127.0.0.1:7070 --watch=2         # every 2 seconds until interrupted
//
// A node that cannot be asked (not reachable, refuses the key, an older release) gets an
// error row saying what happened and what to do; the other nodes still print. The exit
// status is 0 when every node answered (the last poll, with --watch), 1 when one did not,
// 2 for bad flags or no usable key.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "genie/transport/auth.h"
#include "tools/smi/smi.h"

ABSL_FLAG(std::string, nodes, "127.0.0.1:7070", "genie-nodes to ask: host:port[,host:port...]");
ABSL_FLAG(std::string, key_file, "",
          "file holding the nodes' shared secret (chmod 600); if empty, the GENIE_KEY "
          "environment variable is used");
ABSL_FLAG(bool, json, false, "print JSON (one object per poll, on one line) instead of a table");
ABSL_FLAG(double, watch, 0, "ask again every this many seconds until interrupted; 0: once");
ABSL_FLAG(double, timeout, 5, "seconds to wait for each node (connecting, handshake, answer)");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "genie-smi: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "shows what genie-nodes are doing.\n"
      "  genie-smi --nodes=HOST:PORT[,HOST:PORT...] --key_file=KEY [--json] [--watch=SECONDS]\n"
      "The key comes from --key_file or the GENIE_KEY environment variable.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "genie_smi.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  absl::StatusOr<std::vector<genie::smi::NodeAddress>> nodes =
      genie::smi::ParseNodes(absl::GetFlag(FLAGS_nodes));
  if (!nodes.ok()) return Fail(absl::StrCat("--nodes: ", nodes.status().message()));
  const std::string key_file = absl::GetFlag(FLAGS_key_file);
  absl::StatusOr<std::string> key = key_file.empty() ? genie::transport::LoadKeyFromEnv()
                                                     : genie::transport::LoadKeyFile(key_file);
  if (!key.ok()) {
    return Fail(
        absl::StrCat("no usable key: ", key.status().message(),
                     ". Pass --key_file=PATH (chmod 600, the nodes' key) or set GENIE_KEY"));
  }
  const double watch = absl::GetFlag(FLAGS_watch);
  const double timeout = absl::GetFlag(FLAGS_timeout);
  if (!(watch >= 0)) return Fail("--watch must be >= 0 seconds (0: once)");
  if (!(timeout > 0)) return Fail("--timeout must be > 0 seconds");
  genie::smi::QueryOptions options;
  options.timeout = absl::Seconds(timeout);
  const bool json = absl::GetFlag(FLAGS_json);

  for (int poll = 0;; ++poll) {
    const absl::Time started = absl::Now();
    std::vector<genie::smi::NodeReport> reports;
    bool all_ok = true;
    for (const genie::smi::NodeAddress& node : *nodes) {
      reports.push_back(genie::smi::QueryNode(node, *key, options));
      all_ok = all_ok && reports.back().status.ok();
    }
    std::string out;
    if (json) {
      out = genie::smi::FormatJson(reports);
    } else {
      if (watch > 0) {
        out = absl::StrCat(poll > 0 ? "\n" : "",
                           absl::FormatTime("%Y-%m-%d %H:%M:%S", started, absl::LocalTimeZone()),
                           "\n");
      }
      out += genie::smi::FormatTable(reports);
    }
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    if (watch <= 0) return all_ok ? 0 : 1;
    absl::SleepFor(started + absl::Seconds(watch) - absl::Now());
  }
}
