// File: examples/gpt2_decode.cc
// A small GPT-2-style decoder generates tokens on a Genie node with its KV cache kept
// there. Each token's logits are checked against local libtorch running the same
// tokens; the same generation through the semantics-blind baseline shows what keeping
// the cache next to decode saves. With --streams=N, N streams (prompts of different
// lengths, so different positions) then decode together, one graph per step read back in
// one run, with their weight matmuls batched (scheduler::DecodeBatching) and without;
// each stream is checked against local libtorch running it alone.
//
//   bazel run //examples:gpt2_decode                                  # embedded node
//   bazel run //examples:gpt2_decode -- --tokens=64 --cache=growing
//   bazel run //examples:gpt2_decode -- --streams=4
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
ABSL_FLAG(int, streams, 1, "with N > 1, also decode N streams together, batched and unbatched");
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

// Local libtorch generates greedily from `prompt`; remote runs follow the same tokens.
Reference MakeReference(models::Gpt2& local, models::KvCacheMode mode, torch::Tensor prompt, int tokens,
                        std::vector<double>* token_ms = nullptr) {
  Reference ref;
  ref.prompt = std::move(prompt);
  models::KvCache cache = local->NewCache(1, mode, torch::kCPU);
  ref.logits.push_back(local->forward(ref.prompt, &cache, 0));
  for (int i = 0; i < tokens; ++i) {
    ref.tokens.push_back(ref.logits.back().select(1, -1).argmax(-1).view({1, 1}));
    const auto t0 = std::chrono::steady_clock::now();
    ref.logits.push_back(local->forward(ref.tokens.back(), &cache, cache.length));
    if (token_ms != nullptr) {
      token_ms->push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return ref;
}

struct StreamsOutcome {
  std::vector<double> step_ms;  // one token of every stream
  double max_error = 0;
  genie::scheduler::DecodeBatchingStats batching;
};

// The streams of `refs` decode together: each step captures every stream's forward and
// reads all their logits back in one run (frontend::ToCpu).
template <class Deployment>
absl::StatusOr<StreamsOutcome> GenerateStreams(const models::Gpt2Config& config, models::KvCacheMode mode,
                                               const std::vector<Reference>& refs, genie::SessionOptions options) {
  StreamsOutcome out;
  GENIE_ASSIGN_OR_RETURN(auto session, genie::Session<Deployment>::Start(options));
  const torch::Device device(session->device());
  models::Gpt2 model(config);
  model->eval();
  model->to(device);
  genie::frontend::NameParameters(*model);
  std::vector<models::KvCache> caches;
  for (const Reference& ref : refs) {  // prefill: one graph per stream, never batched
    caches.push_back(model->NewCache(1, mode, device));
    torch::Tensor logits = model->forward(ref.prompt.to(device), &caches.back(), 0).to(torch::kCPU);
    out.max_error = std::max(out.max_error, (logits - ref.logits[0]).abs().max().item<double>());
  }
  std::vector<torch::Tensor> logits(refs.size());
  for (size_t i = 0; i < refs[0].tokens.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t s = 0; s < refs.size(); ++s) {
      logits[s] = model->forward(refs[s].tokens[i].to(device), &caches[s], caches[s].length);
    }
    std::vector<torch::Tensor> host = genie::frontend::ToCpu(logits);
    out.step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    for (size_t s = 0; s < refs.size(); ++s) {
      out.max_error = std::max(out.max_error, (host[s] - refs[s].logits[i + 1]).abs().max().item<double>());
    }
  }
  GENIE_RETURN_IF_ERROR(session->Join());
  out.batching = session->decode_batching();
  return out;
}

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
  const int streams = absl::GetFlag(FLAGS_streams);
  if (streams < 1 || prompt < 1 || tokens < 1) {
    std::fprintf(stderr, "gpt2_decode: --streams, --prompt and --tokens must be at least 1\n");
    return 2;
  }
  // Stream s has a prompt of prompt + s tokens.
  config.max_positions = std::max<int64_t>(config.max_positions, prompt + streams + tokens);
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
  std::vector<double> local_ms;
  const Reference ref =
      MakeReference(local, mode, torch::randint(0, config.vocab_size, {1, prompt}, torch::kLong), tokens, &local_ms);
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
  if (streams == 1) return parity ? 0 : 1;

  // N streams decoding together, batched and unbatched.
  std::vector<Reference> refs = {ref};
  for (int s = 1; s < streams; ++s) {
    refs.push_back(MakeReference(local, mode, torch::randint(0, config.vocab_size, {1, prompt + s}, torch::kLong), tokens));
  }
  absl::StatusOr<StreamsOutcome> batched =
      GenerateStreams<genie::examples::SemanticBatchedDeployment>(config, mode, refs, *options);
  absl::StatusOr<StreamsOutcome> unbatched =
      batched.ok() ? GenerateStreams<genie::examples::SemanticDeployment>(config, mode, refs, *options) : batched;
  if (!unbatched.ok()) {
    std::fprintf(stderr, "gpt2_decode: %d streams: %s\n", streams, std::string(unbatched.status().message()).c_str());
    return 1;
  }
  const bool streams_parity = batched->max_error <= tolerance && unbatched->max_error <= tolerance;
  const double b_ms = Median(batched->step_ms), u_ms = Median(unbatched->step_ms);
  std::printf("\n== %d streams decoding together (prompts of %d..%d tokens: different positions) ==\n", streams, prompt,
              prompt + streams - 1);
  std::printf("parity     : max abs logit error %.2e over %d streams x %d tokens, each against local libtorch "
              "running it alone (limit %.0e): %s\n",
              std::max(batched->max_error, unbatched->max_error), streams, tokens, tolerance,
              streams_parity ? "OK" : "FAILED");
  std::printf("batching   : %s\n", batched->batching.ToString().c_str());
  std::printf("latency    : median per step (a token of every stream): batched %.2f ms | unbatched %.2f ms "
              "(batched/unbatched %.2fx); %.0f vs %.0f tokens/s\n",
              b_ms, u_ms, b_ms / u_ms, streams * 1e3 / b_ms, streams * 1e3 / u_ms);
  return parity && streams_parity ? 0 : 1;
}
