// File: tests/capture/models_test.cc
// Model parity: every model of the zoo (examples/models) captured on remote_accelerator
// and run by the local executor must match eager CPU libtorch within 1e-5 (fp32), in one
// graph per forward with no CPU fallback, and a second forward must find the weights
// resident (it uploads only its inputs). The GPT-2 decode tests also check the capture
// cache and the program cache across steps.
//
// Built twice: models_test runs on the in-process executor; models_remote_test
// (GENIE_MODELS_ON_NODE) runs the same suite through a Session whose genie-node serves
// over loopback TCP, so every model's parity holds end to end over the wire.
#include "examples/models/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "genie/frontend/remote_device.h"
#ifdef GENIE_MODELS_ON_NODE
#include "examples/report.h"
#endif

namespace genie::models {
namespace {

#ifdef GENIE_MODELS_ON_NODE
// Every test of this binary runs on an embedded genie-node reached over TCP.
class NodeEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    SessionOptions options;
    options.embedded.log_connections = false;
    options.embedded.log_runs = false;
    auto s = Session<examples::SemanticDeployment>::Start(options);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = std::move(*s);
  }
  void TearDown() override { session_.reset(); }

 private:
  std::unique_ptr<Session<examples::SemanticDeployment>> session_;
};
::testing::Environment* const kNodeEnvironment = ::testing::AddGlobalTestEnvironment(new NodeEnvironment);
#endif

using frontend::CaptureStats;
using frontend::GetCaptureStats;
using frontend::ResetCaptureStats;

constexpr double kTolerance = 1e-5;
// Host scalars captured as 0-dim constants (wrapped numbers) upload a few bytes each.
constexpr int64_t kUploadSlack = 256;

torch::Device Remote() { return torch::Device(std::string(frontend::EnsureRegistered()) + ":0"); }

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kCPU).to(torch::kDouble))
      .abs()
      .max()
      .item<double>();
}

int64_t StateBytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const torch::Tensor& p : m.parameters()) n += p.nbytes();
  for (const torch::Tensor& b : m.buffers()) n += b.nbytes();
  return n;
}

void ExpectSameState(const torch::nn::Module& a, const torch::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    ASSERT_TRUE(pb.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
}

// Moves `remote` to the device and names its parameters.
void ToRemote(torch::nn::Module& remote, const std::string& name) {
  remote.to(Remote());
  frontend::NameParameters(remote, name);
}

void Report(const std::string& what, const CaptureStats& s) {
  std::printf(
      "[ %s ] ops_captured=%lld views=%lld cache_hits=%lld cache_misses=%lld "
      "cpu_shape_inferences=%lld "
      "flushes=%lld program_cache_hits=%lld bytes_uploaded=%lld\n",
      what.c_str(), static_cast<long long>(s.ops_captured), static_cast<long long>(s.views),
      static_cast<long long>(s.cache_hits), static_cast<long long>(s.cache_misses),
      static_cast<long long>(s.cpu_shape_inferences), static_cast<long long>(s.flushes),
      static_cast<long long>(s.program_cache_hits), static_cast<long long>(s.bytes_uploaded));
}

// Runs `forward` (moves its inputs to the device, returns a remote tensor) twice and
// checks both results against `expected`: one graph per forward, no CPU fallback, the
// first forward uploads the weights and the second only its inputs.
template <typename Forward>
void ExpectParityTwice(const std::string& what, const torch::nn::Module& remote,
                       const torch::Tensor& expected, int64_t input_bytes, Forward forward) {
  ResetCaptureStats();
  torch::Tensor first = forward();
  EXPECT_EQ(first.device().type(), c10::DeviceType::PrivateUse1);
  EXPECT_EQ(GetCaptureStats().flushes, 0)
      << what << ": captured ops ran before the result was read";
  EXPECT_LE(MaxAbsDiff(first, expected), kTolerance) << what;
  const CaptureStats s1 = GetCaptureStats();
  Report(what + " first", s1);
  EXPECT_EQ(s1.flushes, 1) << what;
  EXPECT_EQ(s1.cpu_fallbacks, 0) << what;
  EXPECT_GT(s1.ops_captured, 0) << what;
  EXPECT_GE(s1.bytes_uploaded, StateBytes(remote) / 2)
      << what << ": the first forward should upload the weights";

  ResetCaptureStats();
  torch::Tensor second = forward();
  EXPECT_LE(MaxAbsDiff(second, expected), kTolerance) << what;
  const CaptureStats s2 = GetCaptureStats();
  Report(what + " second", s2);
  EXPECT_EQ(s2.cpu_fallbacks, 0) << what;
  EXPECT_EQ(s2.cache_misses, 0) << what << ": same shapes, the capture cache should hit every op";
  EXPECT_EQ(s2.ops_captured, s1.ops_captured) << what;
  EXPECT_LE(s2.bytes_uploaded, input_bytes + kUploadSlack)
      << what << ": the second forward uploaded more than its inputs (weights are "
      << StateBytes(remote) << " bytes)";
}

class ModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    frontend::ClearCaptureCache();
    ResetCaptureStats();
  }
  torch::NoGradGuard no_grad_;
};

TEST_F(ModelsTest, SeededConstructionIsDeterministic) {
  Gpt2 a(Gpt2Config{}), b(Gpt2Config{});
  ExpectSameState(*a, *b);
  Gpt2Config other;
  other.seed = 99;
  Gpt2 c(other);
  EXPECT_FALSE(torch::equal(a->token_embed->weight, c->token_embed->weight));
  // The weights do not depend on the global generator's state.
  torch::manual_seed(5);
  Mlp m1(MlpConfig{});
  torch::manual_seed(6);
  Mlp m2(MlpConfig{});
  ExpectSameState(*m1, *m2);
  EXPECT_FALSE(m1->is_training());
}

TEST_F(ModelsTest, NamedConfigsHaveReferenceParameterCounts) {
  // The reference counts of GPT-2 small (tied head), ViT-B/16 (1000 classes) and
  // BERT-base without its pooler.
  EXPECT_EQ(ParameterCount(*Gpt2(Gpt2Config::Gpt2Small())), 124439808);
  EXPECT_EQ(ParameterCount(*ViT(ViTConfig::ViTBase16())), 86567656);
  EXPECT_EQ(ParameterCount(*BertEncoder(BertConfig::BertBase())), 109482240 - 590592);
}

TEST_F(ModelsTest, MlpMatchesEager) {
  Mlp eager(MlpConfig{}), remote(MlpConfig{});
  ToRemote(*remote, "mlp");
  torch::Tensor x = torch::randn({8, 64});
  torch::Tensor expected = eager(x);
  ExpectParityTwice("mlp", *remote, expected, x.nbytes(), [&] { return remote(x.to(Remote())); });
}

TEST_F(ModelsTest, ViTBlockMatchesEager) {
  ViTBlock eager(64, 4, 4), remote(64, 4, 4);
  InitParameters(*eager, 11);
  InitParameters(*remote, 11);
  ExpectSameState(*eager, *remote);
  ToRemote(*remote, "block");
  torch::Tensor x = torch::randn({2, 17, 64});  // [batch, tokens, dim]
  torch::Tensor expected = eager(x);
  ExpectParityTwice("vit_block", *remote, expected, x.nbytes(),
                    [&] { return remote(x.to(Remote())); });
}

TEST_F(ModelsTest, ViTEncoderMatchesEager) {
  ViT eager(ViTConfig{}), remote(ViTConfig{});
  ToRemote(*remote, "vit");
  torch::Tensor images = torch::randn({2, 3, 32, 32});
  torch::Tensor expected = eager(images);
  ExpectParityTwice("vit", *remote, expected, images.nbytes(),
                    [&] { return remote(images.to(Remote())); });
}

// Ids with padding at the end of the second sequence, and two segments.
std::pair<torch::Tensor, torch::Tensor> BertInputs(const BertConfig& c) {
  torch::Tensor ids = torch::randint(1, c.vocab_size, {2, 12}, torch::kLong);
  ids.index_put_({1, torch::indexing::Slice(8, torch::indexing::None)}, c.pad_id);
  torch::Tensor segments = torch::zeros({2, 12}, torch::kLong);
  segments.index_put_({torch::indexing::Slice(), torch::indexing::Slice(6, torch::indexing::None)},
                      1);
  return {ids, segments};
}

TEST_F(ModelsTest, BertEncoderLayerMatchesEager) {
  BertConfig config;
  BertLayer eager(config.dim, config.heads, config.ffn_dim),
      remote(config.dim, config.heads, config.ffn_dim);
  InitParameters(*eager, 12);
  InitParameters(*remote, 12);
  ToRemote(*remote, "layer");
  torch::Tensor x = torch::randn({2, 12, config.dim});
  torch::Tensor mask = torch::ones({2, 1, 1, 12}, torch::kBool);
  mask.index_put_({1, 0, 0, torch::indexing::Slice(8, torch::indexing::None)}, false);
  torch::Tensor expected = eager(x, mask);
  ExpectParityTwice("bert_layer", *remote, expected, x.nbytes() + mask.nbytes(),
                    [&] { return remote(x.to(Remote()), mask.to(Remote())); });
}

TEST_F(ModelsTest, BertEncoderMatchesEager) {
  BertConfig config;
  BertEncoder eager(config), remote(config);
  ToRemote(*remote, "bert");
  auto [ids, segments] = BertInputs(config);
  torch::Tensor expected = eager(ids, segments);
  ExpectParityTwice("bert", *remote, expected, ids.nbytes() + segments.nbytes(),
                    [&] { return remote(ids.to(Remote()), segments.to(Remote())); });
}

TEST_F(ModelsTest, SmallCnnWithoutMaxPoolMatchesEager) {
  SmallCnnConfig config;
  config.max_pool = false;
  SmallCnn eager(config), remote(config);
  ToRemote(*remote, "cnn");
  torch::Tensor images = torch::randn({2, 3, 16, 16});
  torch::Tensor expected = eager(images);
  ExpectParityTwice("cnn_no_pool", *remote, expected, images.nbytes(),
                    [&] { return remote(images.to(Remote())); });
}

// Regression: a multi-output out= op (aten::max_pool2d_with_indices.out, which
// max_pool2d reaches on PrivateUse1) returns references to its arguments; shape
// inference used to read them after the boxed call had dropped the arguments.
TEST_F(ModelsTest, MaxPool2dOnRemote) {
  torch::Tensor x = torch::randn({2, 4, 8, 8});
  EXPECT_LE(MaxAbsDiff(torch::max_pool2d(x.to(Remote()), {2, 2}), torch::max_pool2d(x, {2, 2})), 0);
}

TEST_F(ModelsTest, SmallCnnMatchesEager) {
  SmallCnn eager(SmallCnnConfig{}), remote(SmallCnnConfig{});
  ToRemote(*remote, "cnn");
  torch::Tensor images = torch::randn({2, 3, 16, 16});
  torch::Tensor expected = eager(images);
  ExpectParityTwice("cnn", *remote, expected, images.nbytes(),
                    [&] { return remote(images.to(Remote())); });
}

TEST_F(ModelsTest, EmbeddingBagRecommenderMatchesEager) {
  RecommenderConfig config;
  EmbeddingBagRecommender eager(config), remote(config);
  ToRemote(*remote, "dlrm");
  const int64_t batch = 4;
  torch::Tensor dense = torch::randn({batch, config.dense_features});
  std::vector<torch::Tensor> ids, offsets;
  int64_t input_bytes = dense.nbytes();
  for (size_t t = 0; t < config.table_rows.size(); ++t) {
    // Bags of 1..3 ids per sample.
    torch::Tensor lengths = torch::randint(1, 4, {batch}, torch::kLong);
    offsets.push_back(
        torch::cat({torch::zeros({1}, torch::kLong), lengths.cumsum(0).narrow(0, 0, batch - 1)}));
    ids.push_back(
        torch::randint(0, config.table_rows[t], {lengths.sum().item<int64_t>()}, torch::kLong));
    input_bytes += ids.back().nbytes() + offsets.back().nbytes();
  }
  torch::Tensor expected = eager(dense, ids, offsets);
  ExpectParityTwice("dlrm", *remote, expected, input_bytes, [&] {
    std::vector<torch::Tensor> rids, roffsets;
    for (const torch::Tensor& t : ids) rids.push_back(t.to(Remote()));
    for (const torch::Tensor& t : offsets) roffsets.push_back(t.to(Remote()));
    return remote(dense.to(Remote()), rids, roffsets);
  });
}

TEST_F(ModelsTest, VqaMatchesEagerAndNamesModalities) {
  VqaConfig config;
  Vqa eager(config), remote(config);
  ToRemote(*remote, "");
  for (const std::string prefix : {"vision.", "language.", "fusion.", "head."}) {
    bool found = false;
    for (const auto& item : remote->named_parameters())
      found = found || item.key().rfind(prefix, 0) == 0;
    EXPECT_TRUE(found) << prefix;
  }
  torch::Tensor images = torch::randn({2, 3, 32, 32});
  torch::Tensor question = BertInputs(config.language).first;
  std::vector<std::string> names;
  frontend::SetGraphObserver([&](const core::Graph& g, const core::ExecuteRequest&) {
    for (const core::Buffer& b : g.buffers()) {
      if (b.kind == core::BufferKind::kParameter) names.push_back(b.name);
    }
  });
  torch::Tensor expected = eager(images, question);
  ExpectParityTwice("vqa", *remote, expected, images.nbytes() + question.nbytes(),
                    [&] { return remote(images.to(Remote()), question.to(Remote())); });
  frontend::SetGraphObserver(nullptr);
  for (const std::string prefix : {"vision.", "language.", "fusion.", "head."}) {
    bool found = false;
    for (const std::string& n : names) found = found || n.rfind(prefix, 0) == 0;
    EXPECT_TRUE(found) << "no parameter named " << prefix << "* reached the executor";
  }
}

// Regression: a resident storage that dies while a pending graph still reads it (a
// growing KV cache replacing its keys) must be released only after that graph ran.
TEST_F(ModelsTest, ResidentTensorFreedBeforeFlush) {
  torch::Tensor a = torch::randn({4});
  torch::Tensor r = a.to(Remote());
  (void)(r + 1).to(torch::kCPU);  // r is now resident on the executor
  torch::Tensor y = r * 2;        // captured, reads r
  r.reset();                      // r's storage dies before the graph runs
  EXPECT_LE(MaxAbsDiff(y, a * 2), 0);
}

// GPT-2 decoding: a 4-token prefill, then `steps` greedy decode steps (the next token is
// eager's argmax, fed to both models). Parity is checked at every step; `per_step` sees
// each decode step's capture stats.
template <typename PerStep>
void DecodeAndCompare(KvCacheMode mode, int steps, PerStep per_step) {
  Gpt2Config config;
  Gpt2 eager(config), remote(config);
  remote->to(Remote());
  frontend::NameParameters(*remote, "gpt2");
  KvCache eager_cache = eager->NewCache(1, mode, torch::kCPU);
  KvCache remote_cache = remote->NewCache(1, mode, Remote());
  torch::Tensor prompt = torch::randint(0, config.vocab_size, {1, 4}, torch::kLong);
  torch::Tensor expected = eager(prompt, &eager_cache, 0);
  torch::Tensor got = remote(prompt.to(Remote()), &remote_cache, 0).to(torch::kCPU);
  ASSERT_LE(MaxAbsDiff(got, expected), kTolerance) << "prefill";
  std::vector<torch::Tensor> tokens = {prompt};
  std::vector<torch::Tensor> step_logits;
  for (int step = 0; step < steps; ++step) {
    torch::Tensor next = expected.select(1, -1).argmax(-1).view({1, 1});  // [1, 1]
    tokens.push_back(next);
    const int64_t position = eager_cache.length;
    expected = eager(next, &eager_cache, position);
    ResetCaptureStats();
    got = remote(next.to(Remote()), &remote_cache, position).to(torch::kCPU);
    const CaptureStats stats = GetCaptureStats();
    EXPECT_LE(MaxAbsDiff(got, expected), kTolerance) << "decode step " << step;
    EXPECT_EQ(stats.cpu_fallbacks, 0) << "decode step " << step;
    EXPECT_EQ(stats.flushes, 1) << "decode step " << step;
    per_step(step, stats);
    step_logits.push_back(expected);
  }
  EXPECT_EQ(remote_cache.length, 4 + steps);
  // The cache is right: a full causal forward over the whole sequence, with no cache,
  // gives the same logits at every decoded position.
  torch::Tensor all = eager(torch::cat(tokens, 1));  // [1, 4 + steps, vocab]
  for (int step = 0; step < steps; ++step) {
    EXPECT_LE(MaxAbsDiff(all.narrow(1, 4 + step, 1), step_logits[step]), kTolerance)
        << "step " << step;
  }
}

TEST_F(ModelsTest, Gpt2GrowingKvCacheMatchesEagerEveryStep) {
  std::vector<int64_t> misses;
  DecodeAndCompare(KvCacheMode::kGrowing, 20, [&](int step, const CaptureStats& s) {
    if (step == 0 || step == 19) Report("gpt2 growing step " + std::to_string(step), s);
    misses.push_back(s.cache_misses);
  });
  // The cache grows each step, so shape inference runs again for the attention ops.
  for (size_t i = 0; i < misses.size(); ++i) EXPECT_GT(misses[i], 0) << "step " << i;
}

TEST_F(ModelsTest, Gpt2StaticKvCacheMatchesEagerAndHitsBothCaches) {
  DecodeAndCompare(KvCacheMode::kStatic, 20, [&](int step, const CaptureStats& s) {
    if (step <= 2 || step == 19) Report("gpt2 static step " + std::to_string(step), s);
    if (step < 2) return;
    // Identical shapes every step: no shape inference, and the prepared program is reused.
    EXPECT_EQ(s.cache_misses, 0) << "step " << step;
    EXPECT_GT(s.cache_hits, 0) << "step " << step;
    EXPECT_EQ(s.program_cache_hits, 1) << "step " << step;
    // And the step replays the last one: every op is checked against it, no node built.
    EXPECT_GE(s.ops_replayed, s.ops_captured) << "step " << step;
    EXPECT_EQ(s.replay_divergences, 0) << "step " << step;
    EXPECT_LE(s.bytes_uploaded, 2 * 8 + kUploadSlack)
        << "step " << step << ": more than the token and position";
  });
}

TEST_F(ModelsTest, Gpt2StaticAndGrowingCachesAgree) {
  Gpt2 model(Gpt2Config{});
  KvCache growing = model->NewCache(2, KvCacheMode::kGrowing, torch::kCPU);
  KvCache fixed = model->NewCache(2, KvCacheMode::kStatic, torch::kCPU);
  torch::Tensor ids = torch::randint(0, 512, {2, 9}, torch::kLong);
  torch::Tensor a = model(ids.narrow(1, 0, 5), &growing, 0);
  torch::Tensor b = model(ids.narrow(1, 0, 5), &fixed, 0);
  EXPECT_LE(MaxAbsDiff(a, b), kTolerance);
  // A multi-token step after a prefill uses the explicit causal mask in both modes.
  a = model(ids.narrow(1, 5, 4), &growing, 5);
  b = model(ids.narrow(1, 5, 4), &fixed, 5);
  EXPECT_LE(MaxAbsDiff(a, b), kTolerance);
  EXPECT_LE(MaxAbsDiff(b, model(ids).narrow(1, 5, 4)), kTolerance);
  EXPECT_THROW(model(ids.narrow(1, 0, 1), &fixed, 3),
               c10::Error);  // position must follow the cache
}

}  // namespace
}  // namespace genie::models
