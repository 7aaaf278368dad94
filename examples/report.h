// File: examples/report.h
// Shared pieces of the examples: the two deployments they compare (Genie's semantic
// pipeline and the semantics-blind baseline), session options from flags, and the
// formatting of what Genie saw and did.
//
//   auto opts = genie::examples::SessionOptionsFromFlags(node, key_file);
//   auto session = genie::Session<genie::examples::SemanticDeployment>::Start(*opts);
//   std::cout << genie::examples::Bytes(1536) << "\n";   // "1.5 KiB"
#ifndef GENIE_EXAMPLES_REPORT_H_
#define GENIE_EXAMPLES_REPORT_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "genie/client/pipeline.h"
#include "genie/client/session.h"
#include "genie/transport/auth.h"

namespace genie::examples {

// Every semantic deployment below annotates and analyses the same way; they differ in the
// scheduler's optimizations and the transport.
template <class Scheduler, class Transport>
using AnalyzedPipeline = Pipeline<
    Annotations<semantic::ModulePath, semantic::Phase, semantic::Modality, semantic::Pattern>,
    Analyzers<semantic::ModulePathAnalyzer, semantic::PhaseDetector, semantic::ModalityDetector,
              semantic::PatternRecognizer, semantic::WorkloadClassifier>,
    Scheduler, Transport>;

using SemanticDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers>,
    transport::Tcp>;

// The same over one TCP socket per connection (transport::TcpOneSocket, no lanes): the
// baseline lanes are measured against.
using SemanticOneSocketDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers>,
    transport::TcpOneSocket>;

// The same with the decode steps of several streams in one graph batched on the node
// (scheduler::DecodeBatching: the streams' weight matmuls run once per step).
using SemanticBatchedDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers, scheduler::DecodeBatching>,
    transport::Tcp>;

// The same with the client on the node's host reaching it over shared memory
// (transport::Shm; an embedded node gets its own Unix socket).
using SemanticShmDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers>,
    transport::Shm>;

// The same over shared memory without the tensor pool (every byte through the rings): the
// baseline the pool is measured against.
using SemanticShmRingsDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers>,
    transport::ShmRingsOnly>;

// The same across several nodes: modules placed by modality, crossing tensors node to node.
using PlacedDeployment = AnalyzedPipeline<
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers, scheduler::ModalityPlacement>,
    transport::Tcp>;

// API remoting without semantics: nothing resident, every buffer shipped each segment.
using BlindDeployment = Pipeline<Annotations<>, Analyzers<>, scheduler::BlindScheduler, transport::Tcp>;

// `node` empty: an embedded node on loopback. Otherwise HOST:PORT with the key from
// `key_file` (or $GENIE_KEY).
inline absl::StatusOr<SessionOptions> SessionOptionsFromFlags(const std::string& node,
                                                              const std::string& key_file) {
  SessionOptions options;
  options.embedded.log_connections = false;
  options.embedded.log_runs = false;
  if (node.empty()) return options;
  options.nodes = {node};
  if (!key_file.empty()) {
    GENIE_ASSIGN_OR_RETURN(options.key, transport::LoadKeyFile(key_file));
  } else {
    GENIE_ASSIGN_OR_RETURN(options.key, transport::LoadKeyFromEnv());
  }
  return options;
}

// Lets users spell flags with dashes (--key-file) as well as underscores (--key_file):
// rewrites the names of "--long-flag[=value]" arguments in place, before "--".
inline void AcceptDashedFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* a = argv[i];
    if (a[0] != '-' || a[1] != '-') continue;
    if (a[2] == '\0') break;  // "--": what follows is not flags
    for (char* c = a + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

inline std::string Bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", b) : absl::StrFormat("%.1f %s", b, unit[u]);
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

inline uint64_t WireBytes(const transport::TrafficSnapshot& t) {
  return t.TotalBytes(transport::Direction::kSent) + t.TotalBytes(transport::Direction::kReceived);
}

// "vision 96 ops (vision), language 88 ops (language), fusion 40 ops (fusion)"
inline std::string Modules(const std::vector<ModuleRecord>& modules) {
  std::string out;
  for (const ModuleRecord& m : modules) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", m.name, " ", m.ops, " ops (",
                    semantic::ModalityName(m.modality), ")");
  }
  return out.empty() ? "(no named modules)" : out;
}

inline std::string DataTrafficLine(const scheduler::DataTraffic& t, double per) {
  std::string out;
  for (int c = 0; c < 3; ++c) {
    const auto sc = static_cast<scheduler::StorageClass>(c);
    absl::StrAppend(&out, c ? ", " : "", scheduler::StorageClassName(sc), " ", Bytes(t.of(sc) / per));
  }
  return out;
}

}  // namespace genie::examples

#endif  // GENIE_EXAMPLES_REPORT_H_
