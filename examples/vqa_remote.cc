// File: examples/vqa_remote.cc
// The running example: a VQA model (ViT-style vision encoder, BERT-style text encoder,
// cross-attention fusion, answer head; seeded random weights) answers batches of
// questions on a Genie node. It checks every answer against local libtorch, runs the
// same work through the semantics-blind baseline, and reports what Genie saw and did.
//
//   bazel run //examples:vqa_remote                          # embedded node on loopback
//   bazel run //examples:vqa_remote -- --node=10.0.0.7:7070 --key-file=/etc/genie/key
//   bazel run //examples:vqa_remote -- --embedded_nodes=2      # placed across two nodes
//   bazel run //examples:vqa_remote -- --nodes=10.0.0.7:7070,10.0.0.8:7070 --key-file=F
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/frontend/remote_device.h"

ABSL_FLAG(std::string, node, "", "HOST:PORT of a running genie-node; empty starts an embedded node on 127.0.0.1");
ABSL_FLAG(std::string, nodes, "",
          "HOST:PORT,HOST:PORT,... of running genie-nodes: the model is placed across them by "
          "modality (vision, language, fusion), tensors crossing nodes go node to node");
ABSL_FLAG(int, embedded_nodes, 1,
          "embedded nodes to start on 127.0.0.1 when no --node/--nodes is given; 2 or more "
          "places the model across them");
ABSL_FLAG(std::string, key_file, "", "file holding the node's shared key (chmod 600); default $GENIE_KEY");
ABSL_FLAG(int, steps, 8, "question batches to answer (each checked against local libtorch)");
ABSL_FLAG(int, timed_batches, 32,
          "batches answered again after the checked ones, for the latency line: the median of "
          "these is the steady state, without the first batches' program loads and uploads");
ABSL_FLAG(int, batch, 4, "questions (and images) per batch");
ABSL_FLAG(bool, compare_blind, true, "also run the semantics-blind baseline and compare");
ABSL_FLAG(double, tolerance, 1e-5, "largest max-abs difference from local libtorch accepted (fp32)");

namespace {

using genie::examples::Bytes;
using genie::examples::Median;
namespace models = genie::models;

struct Batch {
  torch::Tensor images;     // [batch, 3, H, W]
  torch::Tensor questions;  // [batch, seq] int64
  torch::Tensor expected;   // [batch, answers], local eager
};

struct Outcome {
  std::vector<double> step_ms;   // the checked batches, the first ones included
  std::vector<double> timed_ms;  // --timed_batches more, after them
  double max_error = 0;
  genie::transport::TrafficSnapshot wire;
  genie::scheduler::DataTraffic data;
  std::vector<genie::PipelineRecord> records;
  genie::frontend::CaptureStats capture;
  std::vector<std::string> nodes;
  bool embedded = false;
  genie::scheduler::PlacementStats placement;
  std::vector<genie::runtime::PeerStats> peers;
};

template <class Deployment>
absl::StatusOr<Outcome> Answer(const char* label, const models::VqaConfig& config,
                               const std::vector<Batch>& batches, genie::SessionOptions options,
                               bool print) {
  Outcome out;
  GENIE_ASSIGN_OR_RETURN(auto session, genie::Session<Deployment>::Start(options));
  out.nodes = session->node_descriptions();
  out.embedded = session->embedded();
  const torch::Device device(session->device());
  models::Vqa model(config);  // the same seed: the same weights as the local reference
  model->eval();
  model->to(device);
  genie::frontend::NameParameters(*model);
  genie::frontend::ResetCaptureStats();
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor answers = model->forward(batches[i].images.to(device), batches[i].questions.to(device));
    torch::Tensor got = answers.to(torch::kCPU);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    out.step_ms.push_back(ms);
    const double err = (got - batches[i].expected).abs().max().item<double>();
    out.max_error = std::max(out.max_error, err);
    if (!print) continue;
    std::printf("  [%s] batch %zu/%zu: %7.2f ms, max abs error %.2e, answers %s\n", label, i + 1,
                batches.size(), ms, err,
                [&] {
                  std::string s;
                  torch::Tensor a = got.argmax(-1);
                  for (int64_t k = 0; k < a.size(0); ++k) s += (k ? "," : "") + std::to_string(a[k].item<int64_t>());
                  return s;
                }()
                    .c_str());
    std::fflush(stdout);
  }
  GENIE_RETURN_IF_ERROR(session->Join());
  out.capture = genie::frontend::GetCaptureStats();
  out.wire = session->traffic();
  out.data = session->data_traffic();
  out.records = session->TakeRecords();
  out.placement = session->placement();
  out.peers = session->embedded_peer_stats();
  // The steady state: the same batches again, answers read back and checked. What the
  // report counts per batch (bytes, records) was taken above, over the checked batches.
  const int timed = absl::GetFlag(FLAGS_timed_batches);
  for (int i = 0; i < timed; ++i) {
    const Batch& b = batches[static_cast<size_t>(i) % batches.size()];
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor got = model->forward(b.images.to(device), b.questions.to(device)).to(torch::kCPU);
    out.timed_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    out.max_error = std::max(out.max_error, (got - b.expected).abs().max().item<double>());
  }
  GENIE_RETURN_IF_ERROR(session->Join());
  return out;
}

// The first round's outcome is the report's; later rounds add their steady-state timings
// and their answers' errors.
void PoolRound(absl::StatusOr<Outcome>& pooled, Outcome round) {
  if (!pooled.ok()) {
    pooled = std::move(round);
    return;
  }
  pooled->timed_ms.insert(pooled->timed_ms.end(), round.timed_ms.begin(), round.timed_ms.end());
  pooled->max_error = std::max(pooled->max_error, round.max_error);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Answers visual questions with a VQA model on a Genie node, checks the answers against "
      "local libtorch and reports what Genie saw and did.\n  vqa_remote [--node=HOST:PORT "
      "--key_file=F] [--steps=N --batch=B]");
  genie::examples::AcceptDashedFlags(argc, argv);  // --key-file as well as --key_file
  absl::ParseCommandLine(argc, argv);
  torch::NoGradGuard no_grad;
  at::set_num_threads(1);  // the embedded node and the client share this machine

  models::VqaConfig config;
  const int steps = absl::GetFlag(FLAGS_steps), batch = absl::GetFlag(FLAGS_batch);
  if (steps < 1 || batch < 1) {
    std::fprintf(stderr, "vqa_remote: --steps and --batch must be 1 or more (got %d and %d)\n",
                 steps, batch);
    return 2;
  }
  const std::vector<std::string> node_list =
      absl::StrSplit(absl::GetFlag(FLAGS_nodes), ',', absl::SkipEmpty());
  if (!node_list.empty() && !absl::GetFlag(FLAGS_node).empty()) {
    std::fprintf(stderr, "vqa_remote: give --node or --nodes, not both\n");
    return 2;
  }
  absl::StatusOr<genie::SessionOptions> options = genie::examples::SessionOptionsFromFlags(
      node_list.empty() ? absl::GetFlag(FLAGS_node) : node_list.front(), absl::GetFlag(FLAGS_key_file));
  if (!options.ok()) {
    std::fprintf(stderr, "vqa_remote: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  if (!node_list.empty()) options->nodes = node_list;
  options->embedded_nodes = absl::GetFlag(FLAGS_embedded_nodes);
  const bool placed = options->nodes.size() > 1 || (options->nodes.empty() && options->embedded_nodes > 1);

  // The questions, and the answers local libtorch gives.
  torch::manual_seed(1234);
  models::Vqa local(config);
  local->eval();
  std::vector<Batch> batches;
  std::vector<double> local_ms;
  for (int i = 0; i < steps; ++i) {
    Batch b;
    b.images = torch::randn({batch, config.vision.channels, config.vision.image_size, config.vision.image_size});
    b.questions = torch::randint(1, config.language.vocab_size, {batch, 12}, torch::kLong);
    b.questions.narrow(1, 9, 3).fill_(config.language.pad_id);  // padded questions
    const auto t0 = std::chrono::steady_clock::now();
    b.expected = local->forward(b.images, b.questions);
    local_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    batches.push_back(std::move(b));
  }
  // Local libtorch's steady state, timed as the sessions' is.
  const int timed = absl::GetFlag(FLAGS_timed_batches);
  if (timed > 0) local_ms.clear();
  for (int i = 0; i < timed; ++i) {
    const Batch& b = batches[static_cast<size_t>(i) % batches.size()];
    const auto t0 = std::chrono::steady_clock::now();
    local->forward(b.images, b.questions);
    local_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  int64_t params = 0;
  for (const auto& p : local->parameters()) params += p.numel();
  std::printf("Genie VQA: %d batches of %d questions; model %.2f M parameters (%s fp32)\n", steps, batch,
              params / 1e6, Bytes(params * 4.0).c_str());

  // Genie, then the baseline, then (for the steady-state latency) both once more in the
  // same order: the medians pool the two rounds, so a slow spell of a shared machine is
  // less likely to fall on one side only.
  const bool compare = absl::GetFlag(FLAGS_compare_blind);
  const int rounds = compare && timed > 0 ? 2 : 1;
  absl::StatusOr<Outcome> genie, blind;
  for (int round = 0; round < rounds; ++round) {
    const bool print = round == 0;
    absl::StatusOr<Outcome> g = placed ? Answer<genie::examples::PlacedDeployment>(
                                             "genie", config, batches, *options, print)
                                       : Answer<genie::examples::SemanticDeployment>(
                                             "genie", config, batches, *options, print);
    if (!g.ok()) {
      std::fprintf(stderr, "vqa_remote: %s\n", std::string(g.status().message()).c_str());
      return 1;
    }
    PoolRound(genie, *std::move(g));
    if (!compare) continue;
    absl::StatusOr<Outcome> b =
        Answer<genie::examples::BlindDeployment>("blind", config, batches, *options, print);
    if (!b.ok()) {
      std::fprintf(stderr, "vqa_remote: blind baseline: %s\n",
                   std::string(b.status().message()).c_str());
      return 1;
    }
    PoolRound(blind, *std::move(b));
  }

  const Outcome& g = *genie;
  const double tolerance = absl::GetFlag(FLAGS_tolerance);
  const bool parity = g.max_error <= tolerance && (!blind.ok() || blind->max_error <= tolerance);
  std::printf("\n== What Genie saw and did ==\n");
  std::printf("nodes      : %s%s\n",
              g.nodes.empty() ? "?" : absl::StrJoin(g.nodes, ", ").c_str(),
              g.embedded ? " (embedded, loopback)" : "");
  std::printf("parity     : max abs error %.2e vs local libtorch (limit %.0e): %s\n", g.max_error, tolerance,
              parity ? "OK" : "FAILED");
  std::printf("capture    : %lld ops captured, %lld views (no data, no node), capture cache %lld hits / %lld misses, "
              "%lld graphs run, %lld program-cache hits, %lld CPU fallbacks\n",
              (long long)g.capture.ops_captured, (long long)g.capture.views, (long long)g.capture.cache_hits,
              (long long)g.capture.cache_misses, (long long)g.capture.flushes,
              (long long)g.capture.program_cache_hits, (long long)g.capture.cpu_fallbacks);
  if (!g.records.empty()) {
    const genie::PipelineRecord& r = g.records.back();
    std::printf("analysis   : %s\n", r.summary.c_str());
    std::printf("modules    : %s\n", genie::examples::Modules(r.modules).c_str());
    if (!placed) {
      std::printf("placement  : every module on %s: weights resident after the first batch; only "
                  "images and questions go up, answers come back\n",
                  g.nodes.empty() ? "the node" : g.nodes[0].c_str());
    }
  }
  if (placed) {
    std::printf("placement  : by modality across %d nodes; weights resident where first used\n",
                g.placement.num_nodes);
    for (const genie::scheduler::ModulePlacement& m : g.placement.modules) {
      const int k = g.placement.NodeOf(m.module);
      std::printf("             %-10s (%s) on node %d (%s)\n", m.module.c_str(),
                  genie::semantic::ModalityName(m.modality), k,
                  k >= 0 && k < static_cast<int>(g.nodes.size()) ? g.nodes[k].c_str() : "?");
    }
    int64_t peer_sent = 0;
    for (const genie::runtime::PeerStats& p : g.peers) peer_sent += p.bytes_sent;
    std::printf("node->node : %s in %lld transfers (%s per batch), never through the client%s\n",
                Bytes(static_cast<double>(g.placement.node_to_node_bytes)).c_str(),
                static_cast<long long>(g.placement.transfers),
                Bytes(g.placement.node_to_node_bytes / static_cast<double>(steps)).c_str(),
                g.peers.empty() ? "" : absl::StrCat("; the nodes counted ", Bytes(static_cast<double>(peer_sent)), " sent").c_str());
    int64_t connections = 0;
    for (const genie::runtime::PeerStats& p : g.peers) connections += p.connections_opened;
    std::printf("overlap    : %lld parts in %lld batches, up to %lld running at once on different nodes%s\n",
                static_cast<long long>(g.placement.parts), static_cast<long long>(g.placement.runs),
                static_cast<long long>(g.placement.max_parts_in_flight),
                g.peers.empty() ? "" : absl::StrCat("; ", connections, " node-to-node connection(s), reused").c_str());
  }
  const double n = static_cast<double>(steps);
  // Steady state where there is one (--timed_batches), else every checked batch.
  auto latency = [timed](const Outcome& o) { return Median(timed > 0 ? o.timed_ms : o.step_ms); };
  std::printf("latency    : median per batch%s: genie %.2f ms",
              timed > 0 ? absl::StrCat(" over ", g.timed_ms.size(), " after the checked ones (",
                                       rounds, rounds > 1 ? " rounds)" : " round)")
                              .c_str()
                        : "",
              latency(g));
  if (blind.ok()) {
    std::printf(" | blind %.2f ms (genie/blind %.2fx)", latency(*blind),
                latency(g) / latency(*blind));
  }
  std::printf(" | local libtorch %.2f ms\n", Median(local_ms));
  std::printf("bytes      : genie %s on the wire (%s per batch): %s\n", Bytes(genie::examples::WireBytes(g.wire)).c_str(),
              Bytes(genie::examples::WireBytes(g.wire) / n).c_str(), genie::examples::DataTrafficLine(g.data, 1).c_str());
  if (blind.ok()) {
    std::printf("             blind %s on the wire (%s per batch): %s\n", Bytes(genie::examples::WireBytes(blind->wire)).c_str(),
                Bytes(genie::examples::WireBytes(blind->wire) / n).c_str(),
                genie::examples::DataTrafficLine(blind->data, 1).c_str());
    std::printf("             genie/blind %.3fx bytes: %s saved\n",
                double(genie::examples::WireBytes(g.wire)) / double(genie::examples::WireBytes(blind->wire)),
                Bytes(double(genie::examples::WireBytes(blind->wire)) - double(genie::examples::WireBytes(g.wire))).c_str());
  }
  return parity ? 0 : 1;
}
