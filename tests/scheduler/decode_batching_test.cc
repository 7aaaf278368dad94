// File: tests/scheduler/decode_batching_test.cc
// Phase-aware decode batching end to end: GPT-2 generation streams captured into one graph
// per step run batched (scheduler::DecodeBatching) on an embedded node, and every stream's
// logits equal the same stream run alone on local libtorch (fp32, 1e-5). Also: what is
// never batched (prefill, graphs without decode streams, streams that differ), the rewrite
// itself (each weight matmul once), a batched run that fails, and a stream that fails.
#include <torch/torch.h>

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "examples/models/models.h"
#include "genie/client/pipeline.h"
#include "genie/client/session.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/scheduler/decode_batching.h"
#include "genie/scheduler/policies.h"
#include "genie/semantic/semantics.h"
#include "genie/transport/tcp.h"

namespace genie {
namespace {

namespace models = genie::models;
using scheduler::DecodeBatching;
using scheduler::JustInTimeTransfers;
using scheduler::KvCacheColocation;
using scheduler::ResidentWeights;

using Batched = Pipeline<Annotations<semantic::Phase>, Analyzers<semantic::PhaseDetector, semantic::WorkloadClassifier>,
                         scheduler::SemanticScheduler<ResidentWeights, KvCacheColocation, JustInTimeTransfers,
                                                      DecodeBatching>,
                         transport::Tcp>;
using PlacedBatched = Pipeline<Annotations<semantic::Phase>, Analyzers<semantic::PhaseDetector, semantic::WorkloadClassifier>,
                               scheduler::SemanticScheduler<ResidentWeights, KvCacheColocation, JustInTimeTransfers,
                                                            scheduler::ModalityPlacement, DecodeBatching>,
                               transport::Tcp>;
using Unbatched = Pipeline<Annotations<semantic::Phase>, Analyzers<semantic::PhaseDetector, semantic::WorkloadClassifier>,
                           scheduler::SemanticScheduler<ResidentWeights, KvCacheColocation, JustInTimeTransfers>,
                           transport::Tcp>;

constexpr double kTolerance = 1e-5;

double MaxError(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a - b).abs().max().item<double>();
}

// Each stream generated alone on local libtorch: the reference every remote run must meet.
struct Reference {
  std::vector<torch::Tensor> prompts;                   // [1, L_s], different lengths
  std::vector<std::vector<torch::Tensor>> tokens;       // [stream][step]: [1, 1]
  std::vector<std::vector<torch::Tensor>> logits;       // [stream][step]: [1, 1, V]
};

Reference Generate(const models::Gpt2Config& config, const std::vector<int>& prompt_lengths, int steps,
                   models::KvCacheMode mode) {
  torch::manual_seed(11);
  models::Gpt2 local(config);
  Reference ref;
  for (int length : prompt_lengths) {
    ref.prompts.push_back(torch::randint(0, config.vocab_size, {1, length}, torch::kLong));
    models::KvCache cache = local->NewCache(1, mode, torch::kCPU);
    torch::Tensor logits = local->forward(ref.prompts.back(), &cache, 0);
    ref.tokens.emplace_back();
    ref.logits.emplace_back();
    for (int t = 0; t < steps; ++t) {
      ref.tokens.back().push_back(logits.select(1, -1).argmax(-1).view({1, 1}));
      logits = local->forward(ref.tokens.back().back(), &cache, cache.length);
      ref.logits.back().push_back(logits);
    }
  }
  return ref;
}

// The streams on the remote device: one model, one KV cache per stream.
struct Streams {
  Streams(const models::Gpt2Config& config, const Reference& ref, models::KvCacheMode mode) : model(config) {
    const torch::Device device(frontend::kDeviceName);
    model->to(device);
    frontend::NameParameters(*model);
    for (const torch::Tensor& prompt : ref.prompts) {
      caches.push_back(model->NewCache(1, mode, device));
      // Prefill alone per stream (a prefill graph: never batched).
      (void)model->forward(prompt.to(device), &caches.back(), 0).to(torch::kCPU);
    }
  }
  // Step `t` of the streams in `which`, captured as one graph and read back in one run.
  std::vector<torch::Tensor> Step(const Reference& ref, int t, const std::vector<int>& which) {
    const torch::Device device(frontend::kDeviceName);
    std::vector<torch::Tensor> logits;
    for (int s : which) {
      logits.push_back(model->forward(ref.tokens[s][t].to(device), &caches[s], caches[s].length));
    }
    return frontend::ToCpu(logits);
  }
  models::Gpt2 model;
  std::vector<models::KvCache> caches;
};

class DecodeBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    frontend::EnsureRegistered();
    at::set_num_threads(1);
  }
  c10::InferenceMode inference_;
};

// Three streams at different positions, batched every step, each equal to its lone run;
// the same streams without DecodeBatching give the same logits.
TEST_F(DecodeBatchingTest, BatchedStreamsMatchEachStreamRunAlone) {
  models::Gpt2Config config;
  const int steps = 4;
  const std::vector<int> lengths = {3, 7, 12};
  const Reference ref = Generate(config, lengths, steps, models::KvCacheMode::kStatic);
  std::vector<std::vector<torch::Tensor>> unbatched(lengths.size());
  {
    auto session = Session<Unbatched>::Start({}).value();
    Streams streams(config, ref, models::KvCacheMode::kStatic);
    for (int t = 0; t < steps; ++t) {
      std::vector<torch::Tensor> out = streams.Step(ref, t, {0, 1, 2});
      for (size_t s = 0; s < out.size(); ++s) unbatched[s].push_back(out[s]);
    }
    EXPECT_EQ(session->decode_batching().batched_runs, 0);
  }
  auto session = Session<Batched>::Start({}).value();
  Streams streams(config, ref, models::KvCacheMode::kStatic);
  for (int t = 0; t < steps; ++t) {
    std::vector<torch::Tensor> out = streams.Step(ref, t, {0, 1, 2});
    ASSERT_EQ(out.size(), 3u);
    for (int s = 0; s < 3; ++s) {
      EXPECT_LE(MaxError(out[s], ref.logits[s][t]), kTolerance) << "stream " << s << " step " << t;
      EXPECT_LE(MaxError(out[s], unbatched[s][t]), kTolerance) << "stream " << s << " step " << t;
    }
  }
  ASSERT_TRUE(session->Join().ok());
  const scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, steps) << stats.ToString();
  EXPECT_EQ(stats.decode_graphs, steps);
  EXPECT_EQ(stats.streams_batched, 3 * steps);
  EXPECT_EQ(stats.batch_sizes, (std::map<int, int64_t>{{3, steps}}));
  // Per layer: qkv, attention proj, fc, mlp proj; then the tied lm head.
  EXPECT_EQ(stats.ops_batched, steps * (4 * config.depth + 1));
  EXPECT_EQ(stats.fallbacks, 0);
  EXPECT_GE(stats.other_graphs, 3) << "the three prefills";  // never batched
}

// Composed with ModalityPlacement in a two-node session: the batched graph is what gets
// placed (a language-only model lands on one node, KV caches with their attention).
TEST_F(DecodeBatchingTest, ComposesWithPlacementOnTwoNodes) {
  models::Gpt2Config config;
  const int steps = 3;
  const Reference ref = Generate(config, {3, 8}, steps, models::KvCacheMode::kStatic);
  SessionOptions options;
  options.embedded_nodes = 2;
  auto session = Session<PlacedBatched>::Start(options).value();
  Streams streams(config, ref, models::KvCacheMode::kStatic);
  for (int t = 0; t < steps; ++t) {
    std::vector<torch::Tensor> out = streams.Step(ref, t, {0, 1});
    for (int s = 0; s < 2; ++s) {
      EXPECT_LE(MaxError(out[s], ref.logits[s][t]), kTolerance) << "stream " << s << " step " << t;
    }
  }
  ASSERT_TRUE(session->Join().ok());
  const scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, steps) << stats.ToString();
  EXPECT_EQ(stats.batch_sizes, (std::map<int, int64_t>{{2, steps}}));
}

// The rewrite itself: each weight matmul of the step runs once, over the stacked rows.
TEST_F(DecodeBatchingTest, EachWeightMatmulRunsOnceForAllStreams) {
  models::Gpt2Config config;
  const Reference ref = Generate(config, {4, 9}, 1, models::KvCacheMode::kStatic);
  core::Graph captured;
  std::vector<core::BufferId> keep;
  frontend::SetGraphObserver([&](const core::Graph& g, const core::ExecuteRequest& r) {
    captured = g;
    keep = r.keep;
  });
  Streams streams(config, ref, models::KvCacheMode::kStatic);  // local interpreter: no session
  (void)streams.Step(ref, 0, {0, 1});
  frontend::SetGraphObserver(nullptr);
  const semantic::GraphSemantics s = semantic::Analyze(captured, keep);
  ASSERT_EQ(s.phase_of_graph, semantic::PhaseKind::kDecode);
  absl::StatusOr<scheduler::BatchedDecode> b = scheduler::BatchDecodeStreams(captured, keep, s);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->streams, 2);
  EXPECT_EQ(b->batched_ops, 4 * config.depth + 1);
  auto count = [](const core::Graph& g, const std::string& op) {
    int n = 0;
    for (const core::Node& node : g.nodes()) n += g.OpName(node.op) == op;
    return n;
  };
  EXPECT_EQ(count(captured, "aten::matmul"), 2 * 4 * config.depth);
  EXPECT_EQ(count(b->graph, "aten::matmul"), 4 * config.depth);
  EXPECT_EQ(count(b->graph, "aten::linear"), 1);
  EXPECT_EQ(count(b->graph, "aten::cat"), 4 * config.depth + 1);
  // Per stream parts stay per stream: both KV-cache appends and attentions of each stream.
  EXPECT_EQ(count(b->graph, "aten::index_copy_"), count(captured, "aten::index_copy_"));
  EXPECT_EQ(count(b->graph, "aten::scaled_dot_product_attention"),
            count(captured, "aten::scaled_dot_product_attention"));
  // Every weight matrix is read by one matmul of the batched graph (by two, one per
  // stream, in the captured one); embedding lookups stay per stream.
  auto matmul_readers = [](const core::Graph& g, const std::string& name) {
    int readers = 0;
    for (const core::Node& node : g.nodes()) {
      const std::string& op = g.OpName(node.op);
      if (op != "aten::matmul" && op != "aten::linear") continue;
      bool reads = false;
      node.ForEachInput([&](const core::TensorRef& t) { reads |= g.buffer(t.buffer).name == name; });
      readers += reads;
    }
    return readers;
  };
  int weights = 0;
  for (const core::Buffer& buf : captured.buffers()) {
    if (buf.name.empty() || matmul_readers(captured, buf.name) == 0) continue;
    ++weights;
    EXPECT_EQ(matmul_readers(captured, buf.name), 2) << buf.name;
    EXPECT_EQ(matmul_readers(b->graph, buf.name), 1) << buf.name;
  }
  EXPECT_EQ(weights, 4 * config.depth + 1);
  EXPECT_EQ(b->graph.outputs().size(), captured.outputs().size());
  EXPECT_EQ(b->semantics.phase_of_graph, semantic::PhaseKind::kDecode);
}

// Prefill (queries longer than 1) is never batched, even with two streams in one graph.
TEST_F(DecodeBatchingTest, PrefillIsNeverBatched) {
  models::Gpt2Config config;
  const Reference ref = Generate(config, {5, 5}, 1, models::KvCacheMode::kStatic);
  auto session = Session<Batched>::Start({}).value();
  const torch::Device device(frontend::kDeviceName);
  torch::manual_seed(11);
  models::Gpt2 model(config);
  model->to(device);
  frontend::NameParameters(*model);
  std::vector<models::KvCache> caches;
  std::vector<torch::Tensor> logits;
  for (const torch::Tensor& prompt : ref.prompts) {
    caches.push_back(model->NewCache(1, models::KvCacheMode::kStatic, device));
    logits.push_back(model->forward(prompt.to(device), &caches.back(), 0));
  }
  std::vector<torch::Tensor> out = frontend::ToCpu(logits);
  models::Gpt2 local(config);
  for (size_t s = 0; s < out.size(); ++s) {
    models::KvCache cache = local->NewCache(1, models::KvCacheMode::kStatic, torch::kCPU);
    EXPECT_LE(MaxError(out[s], local->forward(ref.prompts[s], &cache, 0)), kTolerance);
  }
  const scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, 0);
  EXPECT_EQ(stats.decode_graphs, 0);
  EXPECT_GE(stats.other_graphs, 1);
}

// Graphs batching does not understand run as captured, with the reason kept.
TEST_F(DecodeBatchingTest, UnknownPatternsAreNotBatched) {
  models::Gpt2Config config;
  auto session = Session<Batched>::Start({}).value();
  const torch::Device device(frontend::kDeviceName);
  // Two independent MLP rows read together: no attention, no KV cache, not a decode step.
  torch::manual_seed(3);
  torch::nn::Linear fc(8, 8);
  const torch::Tensor a = torch::randn({1, 8}), b = torch::randn({1, 8});
  const torch::Tensor ya = fc(a), yb = fc(b);
  fc->to(device);
  frontend::NameParameters(*fc);
  std::vector<torch::Tensor> out = frontend::ToCpu({fc(a.to(device)), fc(b.to(device))});
  EXPECT_LE(MaxError(out[0], ya), kTolerance);
  EXPECT_LE(MaxError(out[1], yb), kTolerance);
  scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.decode_graphs, 0);
  EXPECT_EQ(stats.batched_runs, 0);
  // ToCpu takes remote tensors only, and says which argument is not.
  try {
    (void)frontend::ToCpu({fc(a.to(device)), a});
    ADD_FAILURE() << "ToCpu accepted a CPU tensor";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 1 is cpu, not a remote_accelerator tensor"), std::string::npos)
        << e.what();
  }

  // Growing caches of different lengths: the streams' steps differ in shape (refused);
  // one stream alone: nothing to batch. Both still give each stream's own logits.
  const Reference ref = Generate(config, {3, 6}, 2, models::KvCacheMode::kGrowing);
  Streams streams(config, ref, models::KvCacheMode::kGrowing);
  std::vector<torch::Tensor> both = streams.Step(ref, 0, {0, 1});
  EXPECT_LE(MaxError(both[0], ref.logits[0][0]), kTolerance);
  EXPECT_LE(MaxError(both[1], ref.logits[1][0]), kTolerance);
  stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, 0);
  EXPECT_EQ(stats.not_batched, 1);
  EXPECT_NE(stats.last_refusal.find("not the same decode step"), std::string::npos) << stats.last_refusal;
  std::vector<torch::Tensor> one = streams.Step(ref, 1, {0});
  EXPECT_LE(MaxError(one[0], ref.logits[0][1]), kTolerance);
  stats = session->decode_batching();
  EXPECT_EQ(stats.not_batched, 2);
  EXPECT_NE(stats.last_refusal.find("one decode stream"), std::string::npos) << stats.last_refusal;
}

// A decode step of its own whose KV-cache append is an index_put_ with a None index
// (cache[:, p] = q: indices {None, p}), as attention code often writes it.
struct ToyStepImpl : torch::nn::Module {
  static constexpr int64_t kDim = 8, kLength = 4;
  ToyStepImpl()
      : embed(register_module("embed", torch::nn::Embedding(16, kDim))),
        proj(register_module("proj", torch::nn::Linear(kDim, kDim))),
        head(register_module("head", torch::nn::Linear(kDim, 16))) {}
  // One step at position `p` of token `token` [1, 1] of the stream whose cache is `cache`
  // [1, kLength, kDim].
  torch::Tensor Step(const torch::Tensor& token, torch::Tensor& cache, int64_t p) {
    const torch::Tensor q = proj(embed(token));  // [1, 1, kDim]
    cache.index_put_(
        c10::List<c10::optional<at::Tensor>>({c10::nullopt, torch::full({1}, p, torch::kLong)}), q);
    const torch::Tensor kv = cache.view({1, 1, kLength, kDim});
    return head(
        at::scaled_dot_product_attention(q.view({1, 1, 1, kDim}), kv, kv));  // [1, 1, 1, 16]
  }
  torch::nn::Embedding embed;
  torch::nn::Linear proj, head;
};

TEST_F(DecodeBatchingTest, IndexPutAppendWithNoneIndexIsBatched) {
  using Toy = ToyStepImpl;
  const int steps = 3;
  const std::vector<int64_t> start = {0, 1};  // each stream's first position
  torch::manual_seed(5);
  auto local = std::make_shared<Toy>();
  std::vector<std::vector<torch::Tensor>> x(2), expected(2);  // [stream][step]: tokens, logits
  for (int s = 0; s < 2; ++s) {
    torch::Tensor cache = torch::zeros({1, Toy::kLength, Toy::kDim});
    for (int t = 0; t < steps; ++t) {
      x[s].push_back(torch::randint(0, 16, {1, 1}, torch::kLong));
      expected[s].push_back(local->Step(x[s][t], cache, start[s] + t));
    }
  }
  auto session = Session<Batched>::Start({}).value();
  const torch::Device device(frontend::kDeviceName);
  auto remote = std::make_shared<Toy>();
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < remote->parameters().size(); ++k)
    remote->parameters()[k].copy_(local->parameters()[k]);
  remote->to(device);
  frontend::NameParameters(*remote);
  std::vector<torch::Tensor> caches;
  for (int s = 0; s < 2; ++s) {
    // Step 0 alone per stream (one stream: not batched); it leaves the cache resident.
    caches.push_back(torch::zeros({1, Toy::kLength, Toy::kDim}).to(device));
    std::vector<torch::Tensor> out =
        frontend::ToCpu({remote->Step(x[s][0].to(device), caches[s], start[s])});
    EXPECT_LE(MaxError(out[0], expected[s][0]), kTolerance) << "stream " << s;
  }
  for (int t = 1; t < steps; ++t) {
    std::vector<torch::Tensor> out =
        frontend::ToCpu({remote->Step(x[0][t].to(device), caches[0], start[0] + t),
                         remote->Step(x[1][t].to(device), caches[1], start[1] + t)});
    for (int s = 0; s < 2; ++s) {
      EXPECT_LE(MaxError(out[s], expected[s][t]), kTolerance) << "stream " << s << " step " << t;
    }
  }
  ASSERT_TRUE(session->Join().ok());
  const scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, steps - 1) << stats.ToString();
  EXPECT_EQ(stats.batch_sizes, (std::map<int, int64_t>{{2, steps - 1}}));
  EXPECT_EQ(stats.ops_batched, 2 * (steps - 1));  // proj and head
  EXPECT_EQ(stats.fallbacks, 0);
}

// A node that runs the first batched graph it sees (the batched graph has a cat of several
// stream rows) and then loses its reply: the batched run's KV-cache appends are all done
// when the step runs again unbatched, so they must be safe to repeat.
class LoseFirstBatchedReply final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    for (const core::Node& n : request.graph->nodes()) {
      if (request.graph->OpName(n.op) == "aten::cat" && !lost_.exchange(true)) {
        absl::StatusOr<core::ExecuteResult> ran = interpreter_.Execute(request);
        if (!ran.ok()) return ran.status();
        return absl::UnavailableError("test: reply of a batched run lost");
      }
    }
    return interpreter_.Execute(request);
  }
  std::string Describe() const override { return "loses the reply of the first batched run"; }

 private:
  std::atomic<bool> lost_{false};
  runtime::Interpreter interpreter_;
};

TEST_F(DecodeBatchingTest, FailedBatchedRunFallsBackWithoutLosingResults) {
  models::Gpt2Config config;
  const Reference ref = Generate(config, {2, 5, 8}, 3, models::KvCacheMode::kStatic);
  auto pipeline = std::make_shared<PipelineExecutor<Batched>>(
      std::vector<std::shared_ptr<core::Executor>>{std::make_shared<LoseFirstBatchedReply>()});
  std::shared_ptr<core::Executor> previous = frontend::GetExecutor();
  frontend::SetExecutor(pipeline);
  {
    Streams streams(config, ref, models::KvCacheMode::kStatic);
    // Step 0 ran batched (its appends done), lost its reply and ran again unbatched; every
    // stream's logits of that step and the later ones are its lone run's.
    for (int t = 0; t < 3; ++t) {
      std::vector<torch::Tensor> out = streams.Step(ref, t, {0, 1, 2});
      for (int s = 0; s < 3; ++s) {
        EXPECT_LE(MaxError(out[s], ref.logits[s][t]), kTolerance) << "stream " << s << " step " << t;
      }
    }
  }
  ASSERT_TRUE(frontend::Join().ok());
  frontend::SetExecutor(previous);
  const scheduler::DecodeBatchingStats stats = pipeline->decode_batching();
  EXPECT_EQ(stats.fallbacks, 1) << stats.ToString();
  EXPECT_NE(stats.last_fallback.find("reply of a batched run lost"), std::string::npos)
      << stats.last_fallback;
  EXPECT_EQ(stats.decode_graphs, 3);
  // A lost reply is a failure a retry can outlive: the later steps (the same program) ran
  // batched again.
  EXPECT_EQ(stats.batched_runs, 2) << stats.ToString();
  EXPECT_EQ(stats.not_batched, 0) << stats.ToString();
}

// A stream that fails (a token id outside the vocabulary) fails the read it is part of,
// as it would unbatched; the other streams' caches are intact, so they go on to exactly
// their lone-run logits.
TEST_F(DecodeBatchingTest, FailingStreamDoesNotCorruptTheOthers) {
  models::Gpt2Config config;
  const Reference ref = Generate(config, {2, 5, 8}, 3, models::KvCacheMode::kStatic);
  auto session = Session<Batched>::Start({}).value();
  Streams streams(config, ref, models::KvCacheMode::kStatic);
  std::vector<torch::Tensor> out = streams.Step(ref, 0, {0, 1, 2});
  for (int s = 0; s < 3; ++s) EXPECT_LE(MaxError(out[s], ref.logits[s][0]), kTolerance);

  const torch::Device device(frontend::kDeviceName);
  std::vector<torch::Tensor> logits;
  std::vector<int64_t> lengths;
  for (int s = 0; s < 3; ++s) {
    lengths.push_back(streams.caches[s].length);
    const torch::Tensor token = s == 1 ? torch::full({1, 1}, config.vocab_size + 5, torch::kLong) : ref.tokens[s][1];
    logits.push_back(streams.model->forward(token.to(device), &streams.caches[s], streams.caches[s].length));
  }
  EXPECT_THROW(frontend::ToCpu(logits), c10::Error);
  (void)session->Join();
  scheduler::DecodeBatchingStats stats = session->decode_batching();
  EXPECT_EQ(stats.fallbacks, 1) << stats.ToString();

  // Streams 0 and 2 take step 1 again at the same positions, then step 2.
  for (int s : {0, 2}) streams.caches[s].length = lengths[s];
  for (int t = 1; t < 3; ++t) {
    out = streams.Step(ref, t, {0, 2});
    EXPECT_LE(MaxError(out[0], ref.logits[0][t]), kTolerance) << "step " << t;
    EXPECT_LE(MaxError(out[1], ref.logits[2][t]), kTolerance) << "step " << t;
  }
  stats = session->decode_batching();
  EXPECT_EQ(stats.batched_runs, 3);
  EXPECT_EQ(stats.batch_sizes, (std::map<int, int64_t>{{3, 1}, {2, 2}}));
}

}  // namespace
}  // namespace genie
