// File: examples/gpt2_decode.cc
// A small GPT-2-style decoder generates tokens on a Genie node with its KV cache kept
// there. Each token's logits are checked against local libtorch running the same
// tokens; the same generation through the semantics-blind baseline shows what keeping
// the cache next to decode saves.
//
//   bazel run //examples:gpt2_decode                                  # embedded node
//   bazel run //examples:gpt2_decode -- --tokens=64 --cache=growing
//   bazel run //examples:gpt2_decode -- --node=10.0.0.7:7070 --key-file=/etc/genie/key
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/frontend/remote_device.h"

ABSL_FLAG(std::string, node, "", "HOST:PORT of a running genie-node; empty starts an embedded node on 127.0.0.1");
ABSL_FLAG(std::string, key_file, "", "file holding the node's shared key (chmod 600); default $GENIE_KEY");
ABSL_FLAG(int, tokens, 20, "tokens to generate after the prompt");
ABSL_FLAG(int, prompt, 8, "prompt length in tokens");
ABSL_FLAG(std::string, cache, "static", "KV cache: 'static' (preallocated, fixed shapes) or 'growing' (cat)");
ABSL_FLAG(bool, compare_blind, true, "also run the semantics-blind baseline and compare");
ABSL_FLAG(double, tolerance, 1e-5, "largest max-abs logit difference from local libtorch accepted (fp32)");

namespace {

using genie::examples::Bytes;
using genie::examples::Median;
namespace models = genie::models;

struct Reference {
  torch::Tensor prompt;                // [1, prompt]
  std::vector<torch::Tensor> tokens;   // greedy tokens, [1, 1] each
  std::vector<torch::Tensor> logits;   // per step: prefill [1, prompt, V], then [1, 1, V]
};

struct Outcome {
  std::vector<double> token_ms;
  double prefill_ms = 0;
  double max_error = 0;
  genie::transport::TrafficSnapshot wire_after_prefill, wire;
  genie::scheduler::DataTraffic data;
  std::vector<genie::PipelineRecord> records;
  genie::frontend::CaptureStats capture;
  std::string node;
};

template <class Deployment>
absl::StatusOr<Outcome> Generate(const char* label, const models::Gpt2Config& config, models::KvCacheMode mode,
                                 const Reference& ref, genie::SessionOptions options) {
  Outcome out;
  GENIE_ASSIGN_OR_RETURN(auto session, genie::Session<Deployment>::Start(options));
  out.node = session->node_descriptions().at(0);
  const torch::Device device(session->device());
  models::Gpt2 model(config);
  model->eval();
  model->to(device);
  genie::frontend::NameParameters(*model);
  models::KvCache cache = model->NewCache(1, mode, device);

  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor logits = model->forward(ref.prompt.to(device), &cache, 0).to(torch::kCPU);
  out.prefill_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  out.max_error = (logits - ref.logits[0]).abs().max().item<double>();
  out.wire_after_prefill = session->traffic();
  genie::frontend::ResetCaptureStats();
  for (size_t i = 0; i < ref.tokens.size(); ++i) {
    t0 = std::chrono::steady_clock::now();
    logits = model->forward(ref.tokens[i].to(device), &cache, cache.length).to(torch::kCPU);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    out.token_ms.push_back(ms);
    const double err = (logits - ref.logits[i + 1]).abs().max().item<double>();
    out.max_error = std::max(out.max_error, err);
    if ((i + 1) % 5 == 0 || i + 1 == ref.tokens.size()) {
      std::printf("  [%s] token %zu/%zu: %6.2f ms, max abs error %.2e\n", label, i + 1, ref.tokens.size(), ms, err);
      std::fflush(stdout);
    }
  }
  GENIE_RETURN_IF_ERROR(session->Join());
  out.capture = genie::frontend::GetCaptureStats();
  out.wire = session->traffic();
  out.data = session->data_traffic();
  out.records = session->TakeRecords();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Generates tokens with a GPT-2-style decoder on a Genie node (KV cache on the node), checks "
      "each token's logits against local libtorch and compares with the semantics-blind baseline.");
  genie::examples::AcceptDashedFlags(argc, argv);  // --key-file as well as --key_file
  absl::ParseCommandLine(argc, argv);
  torch::NoGradGuard no_grad;
  at::set_num_threads(1);
  const std::string cache_flag = absl::GetFlag(FLAGS_cache);
  if (cache_flag != "static" && cache_flag != "growing") {
    std::fprintf(stderr, "gpt2_decode: --cache must be 'static' or 'growing', got '%s'\n", cache_flag.c_str());
    return 2;
  }
  const models::KvCacheMode mode = cache_flag == "static" ? models::KvCacheMode::kStatic : models::KvCacheMode::kGrowing;
  models::Gpt2Config config;
  const int tokens = absl::GetFlag(FLAGS_tokens), prompt = absl::GetFlag(FLAGS_prompt);
  config.max_positions = std::max<int64_t>(config.max_positions, prompt + tokens + 1);
  absl::StatusOr<genie::SessionOptions> options =
      genie::examples::SessionOptionsFromFlags(absl::GetFlag(FLAGS_node), absl::GetFlag(FLAGS_key_file));
  if (!options.ok()) {
    std::fprintf(stderr, "gpt2_decode: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  // Local libtorch generates greedily; the remote runs follow the same tokens.
  torch::manual_seed(7);
  models::Gpt2 local(config);
  local->eval();
  Reference ref;
  ref.prompt = torch::randint(0, config.vocab_size, {1, prompt}, torch::kLong);
  models::KvCache local_cache = local->NewCache(1, mode, torch::kCPU);
  std::vector<double> local_ms;
  ref.logits.push_back(local->forward(ref.prompt, &local_cache, 0));
  for (int i = 0; i < tokens; ++i) {
    ref.tokens.push_back(ref.logits.back().select(1, -1).argmax(-1).view({1, 1}));
    const auto t0 = std::chrono::steady_clock::now();
    ref.logits.push_back(local->forward(ref.tokens.back(), &local_cache, local_cache.length));
    local_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  int64_t params = 0;
  for (const auto& p : local->parameters()) params += p.numel();
  std::printf("Genie GPT-2 decode: prompt %d, %d tokens, %s KV cache; model %.2f M parameters\n", prompt, tokens,
              cache_flag.c_str(), params / 1e6);

  absl::StatusOr<Outcome> genie = Generate<genie::examples::SemanticDeployment>("genie", config, mode, ref, *options);
  if (!genie.ok()) {
    std::fprintf(stderr, "gpt2_decode: %s\n", std::string(genie.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<Outcome> blind;
  if (absl::GetFlag(FLAGS_compare_blind)) {
    blind = Generate<genie::examples::BlindDeployment>("blind", config, mode, ref, *options);
    if (!blind.ok()) {
      std::fprintf(stderr, "gpt2_decode: blind baseline: %s\n", std::string(blind.status().message()).c_str());
      return 1;
    }
  }
  const Outcome& g = *genie;
  const double tolerance = absl::GetFlag(FLAGS_tolerance);
  const bool parity = g.max_error <= tolerance && (!blind.ok() || blind->max_error <= tolerance);
  int prefill = 0, decode = 0;
  for (const genie::PipelineRecord& r : g.records) {
    prefill += r.phase == genie::semantic::PhaseKind::kPrefill;
    decode += r.phase == genie::semantic::PhaseKind::kDecode;
  }
  std::printf("\n== What Genie saw and did ==\n");
  std::printf("node       : %s\n", g.node.c_str());
  std::printf("parity     : max abs logit error %.2e over %d tokens (limit %.0e): %s\n", g.max_error, tokens, tolerance,
              parity ? "OK" : "FAILED");
  std::printf("phases     : %d prefill graph, %d decode graphs recognised from the graphs\n", prefill, decode);
  if (!g.records.empty()) std::printf("last step  : %s\n", g.records.back().summary.c_str());
  std::printf("capture    : decode steps: %lld ops, capture cache %lld hits / %lld misses, %lld of %d graphs reused "
              "a prepared program\n",
              (long long)g.capture.ops_captured, (long long)g.capture.cache_hits, (long long)g.capture.cache_misses,
              (long long)g.capture.program_cache_hits, tokens);
  std::printf("latency    : prefill %.2f ms; median per token: genie %.2f ms", g.prefill_ms, Median(g.token_ms));
  if (blind.ok()) {
    std::printf(" | blind %.2f ms (genie/blind %.2fx)", Median(blind->token_ms), Median(g.token_ms) / Median(blind->token_ms));
  }
  std::printf(" | local libtorch %.2f ms\n", Median(local_ms));
  const double n = tokens;
  const double g_decode = double(genie::examples::WireBytes(g.wire) - genie::examples::WireBytes(g.wire_after_prefill));
  std::printf("bytes      : genie %s per decode token on the wire; whole run: %s\n", Bytes(g_decode / n).c_str(),
              genie::examples::DataTrafficLine(g.data, 1).c_str());
  if (blind.ok()) {
    const double b_decode =
        double(genie::examples::WireBytes(blind->wire) - genie::examples::WireBytes(blind->wire_after_prefill));
    std::printf("             blind %s per decode token on the wire; whole run: %s\n", Bytes(b_decode / n).c_str(),
                genie::examples::DataTrafficLine(blind->data, 1).c_str());
    std::printf("             genie/blind %.4fx bytes per decode token\n", g_decode / b_decode);
  }
  return parity ? 0 : 1;
}
