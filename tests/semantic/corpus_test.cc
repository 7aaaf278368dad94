// File: tests/semantic/corpus_test.cc
// A labelled corpus of captured graphs (the model zoo in variants of size, depth,
// batch and sequence length) and the accuracy of semantic::Analyze on it: workload
// class and LLM phase. Labels come from how each graph was made, never from the graph.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "examples/models/models.h"
#include "genie/frontend/remote_device.h"
#include "genie/semantic/semantics.h"

namespace genie {
namespace {

using semantic::PhaseKind;
using semantic::WorkloadClass;

struct Sample {
  std::string name;
  WorkloadClass label;
  PhaseKind phase;
  core::Graph graph;
  std::vector<core::BufferId> keep;
};

torch::Device Remote() { return torch::Device(std::string(frontend::EnsureRegistered()) + ":0"); }

// Runs `body` and returns the largest graph it executed (a forward is one graph unless
// something materializes midway).
std::pair<core::Graph, std::vector<core::BufferId>> CaptureLargest(const std::function<void()>& body) {
  std::vector<std::pair<core::Graph, std::vector<core::BufferId>>> seen;
  frontend::SetGraphObserver([&](const core::Graph& g, const core::ExecuteRequest& r) {
    seen.emplace_back(g, r.keep);
  });
  body();
  frontend::SetGraphObserver(nullptr);
  size_t best = 0;
  for (size_t i = 1; i < seen.size(); ++i) {
    if (seen[i].first.nodes().size() > seen[best].first.nodes().size()) best = i;
  }
  EXPECT_FALSE(seen.empty());
  return seen.empty() ? std::make_pair(core::Graph(), std::vector<core::BufferId>()) : seen[best];
}

void Add(std::vector<Sample>* corpus, std::string name, WorkloadClass label, PhaseKind phase,
         const std::function<void()>& body) {
  auto [graph, keep] = CaptureLargest(body);
  corpus->push_back({std::move(name), label, phase, std::move(graph), std::move(keep)});
}

std::vector<Sample> BuildCorpus() {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  std::vector<Sample> corpus;
  const torch::Device dev = Remote();

  for (int64_t layers : {1, 3}) {
    for (int64_t batch : {2, 16}) {
      models::MlpConfig c;
      c.layers = layers;
      models::Mlp m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "mlp", WorkloadClass::kUnknown, PhaseKind::kNone,
          [&] { (void)m->forward(torch::randn({batch, c.in_dim}).to(dev)).to(torch::kCPU); });
    }
  }
  for (int64_t depth : {1, 2}) {
    for (int64_t batch : {1, 2, 3}) {
      models::ViTConfig c;
      c.depth = depth;
      models::ViT m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "vit", WorkloadClass::kVisionTransformer, PhaseKind::kNone, [&] {
        (void)m->forward(torch::randn({batch, 3, c.image_size, c.image_size}).to(dev)).to(torch::kCPU);
      });
    }
  }
  for (int64_t depth : {1, 2}) {
    for (int64_t seq : {6, 12, 20}) {
      models::BertConfig c;
      c.depth = depth;
      models::BertEncoder m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "bert", WorkloadClass::kTextEncoder, PhaseKind::kNone, [&] {
        (void)m->forward(torch::randint(1, c.vocab_size, {2, seq}, torch::kLong).to(dev)).to(torch::kCPU);
      });
    }
  }
  for (std::vector<int64_t> widths : {std::vector<int64_t>{8}, std::vector<int64_t>{16, 32}}) {
    for (int64_t batch : {1, 4}) {
      models::SmallCnnConfig c;
      c.widths = widths;
      models::SmallCnn m(c);
      m->eval();
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "cnn", WorkloadClass::kVisionCnn, PhaseKind::kNone,
          [&] { (void)m->forward(torch::randn({batch, 3, 16, 16}).to(dev)).to(torch::kCPU); });
    }
  }
  for (int64_t tables : {2, 3}) {
    for (int64_t batch : {2, 8}) {
      models::RecommenderConfig c;
      c.table_rows.resize(tables);
      models::EmbeddingBagRecommender m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "recommender", WorkloadClass::kRecommender, PhaseKind::kNone, [&] {
        std::vector<torch::Tensor> ids, offsets;
        for (int64_t t = 0; t < tables; ++t) {
          ids.push_back(torch::randint(0, c.table_rows[t], {batch * 3}, torch::kLong).to(dev));
          offsets.push_back((torch::arange(batch, torch::kLong) * 3).to(dev));
        }
        (void)m->forward(torch::randn({batch, c.dense_features}).to(dev), ids, offsets).to(torch::kCPU);
      });
    }
  }
  for (int64_t fusion_depth : {1, 2}) {
    for (int64_t batch : {1, 2}) {
      models::VqaConfig c;
      c.fusion_depth = fusion_depth;
      models::Vqa m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      Add(&corpus, "vqa", WorkloadClass::kMultimodalFusion, PhaseKind::kNone, [&] {
        torch::Tensor img = torch::randn({batch, 3, c.vision.image_size, c.vision.image_size}).to(dev);
        torch::Tensor q = torch::randint(1, c.language.vocab_size, {batch, 7}, torch::kLong).to(dev);
        (void)m->forward(img, q).to(torch::kCPU);
      });
    }
  }
  for (models::KvCacheMode mode : {models::KvCacheMode::kGrowing, models::KvCacheMode::kStatic}) {
    for (auto [depth, prompt, batch] : {std::tuple<int64_t, int64_t, int64_t>{1, 5, 1}, {2, 9, 2}}) {
      models::Gpt2Config c;
      c.depth = depth;
      models::Gpt2 m(c);
      m->to(dev);
      frontend::NameParameters(*m);
      models::KvCache cache = m->NewCache(batch, mode, dev);
      const std::string tag = mode == models::KvCacheMode::kGrowing ? "gpt2-growing" : "gpt2-static";
      torch::Tensor ids = torch::randint(0, c.vocab_size, {batch, prompt}, torch::kLong);
      torch::Tensor next;
      Add(&corpus, tag + "-prefill", WorkloadClass::kLlmPrefill, PhaseKind::kPrefill, [&] {
        torch::Tensor logits = m->forward(ids.to(dev), &cache, 0).to(torch::kCPU);
        next = logits.select(1, prompt - 1).argmax(-1, true);
      });
      for (int step = 0; step < 3; ++step) {
        Add(&corpus, tag + "-decode", WorkloadClass::kLlmDecode, PhaseKind::kDecode, [&] {
          torch::Tensor logits = m->forward(next.to(dev), &cache, cache.length).to(torch::kCPU);
          next = logits.select(1, 0).argmax(-1, true);
        });
      }
    }
  }
  return corpus;
}

class CorpusTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { corpus_ = new std::vector<Sample>(BuildCorpus()); }
  static void TearDownTestSuite() { delete corpus_; }
  static std::vector<Sample>* corpus_;
};
std::vector<Sample>* CorpusTest::corpus_ = nullptr;

TEST_F(CorpusTest, HasAtLeastFortyLabelledGraphs) {
  EXPECT_GE(corpus_->size(), 40u);
  for (const Sample& s : *corpus_) EXPECT_GT(s.graph.nodes().size(), 0u) << s.name;
}

TEST_F(CorpusTest, WorkloadClassAndPhaseAccuracyAtLeast95Percent) {
  int workload_right = 0, phase_right = 0;
  std::map<std::string, std::pair<int, int>> per_model;  // right, total
  for (const Sample& s : *corpus_) {
    semantic::GraphSemantics sem = semantic::Analyze(s.graph, s.keep);
    const bool w = sem.workload == s.label;
    const bool p = sem.phase_of_graph == s.phase;
    workload_right += w;
    phase_right += p;
    auto& pm = per_model[s.name];
    pm.first += w && p;
    pm.second += 1;
    if (!w || !p) {
      ADD_FAILURE() << s.name << ": expected " << semantic::WorkloadName(s.label) << "/"
                    << semantic::PhaseName(s.phase) << ", got " << sem.Summary(s.graph);
    }
  }
  const double n = static_cast<double>(corpus_->size());
  std::cout << "corpus: " << corpus_->size() << " graphs; workload accuracy "
            << 100.0 * workload_right / n << "%, phase accuracy " << 100.0 * phase_right / n << "%\n";
  for (const auto& [name, rt] : per_model) {
    std::cout << "  " << name << ": " << rt.first << "/" << rt.second << "\n";
  }
  EXPECT_GE(workload_right / n, 0.95);
  EXPECT_GE(phase_right / n, 0.95);
}

TEST_F(CorpusTest, VqaOpsCarryModulePathsAndModalities) {
  for (const Sample& s : *corpus_) {
    if (s.name != "vqa") continue;
    semantic::GraphSemantics sem = semantic::Analyze(s.graph, s.keep);
    std::map<std::string, int> modality_of_top;  // top-level module -> modality seen
    bool vision = false, language = false, fusion = false;
    for (core::NodeId n = 0; n < s.graph.nodes().size(); ++n) {
      const std::string& m = sem.module[n];
      if (m.rfind("vision", 0) == 0 && sem.modality[n] == semantic::ModalityKind::kVision) vision = true;
      if (m.rfind("language", 0) == 0 && sem.modality[n] == semantic::ModalityKind::kLanguage) language = true;
      if (m.rfind("fusion", 0) == 0 && sem.modality[n] == semantic::ModalityKind::kFusion) fusion = true;
    }
    EXPECT_TRUE(vision && language && fusion) << sem.Summary(s.graph);
  }
}

TEST_F(CorpusTest, ResidentWeightsStillNameTheirModules) {
  for (const Sample& s : *corpus_) {
    if (s.phase != PhaseKind::kDecode) continue;  // decode steps read resident weights only
    semantic::GraphSemantics sem = semantic::Analyze(s.graph, s.keep);
    bool named_block = false;
    for (const std::string& m : sem.module) named_block |= m.rfind("blocks.", 0) == 0;
    EXPECT_TRUE(named_block) << s.name << ": " << sem.Summary(s.graph);
  }
}

TEST_F(CorpusTest, DecodeGraphsFindTheKvCacheAndItsAppends) {
  for (const Sample& s : *corpus_) {
    if (s.phase != PhaseKind::kDecode) continue;
    semantic::GraphSemantics sem = semantic::Analyze(s.graph, s.keep);
    EXPECT_FALSE(sem.kv_cache.empty()) << s.name;
    EXPECT_EQ(sem.max_query_len, 1) << s.name;
    bool append = false;
    for (semantic::PatternKind p : sem.pattern) append |= p == semantic::PatternKind::kKvCacheAppend;
    EXPECT_TRUE(append) << s.name << ": " << sem.Summary(s.graph);
  }
}

}  // namespace
}  // namespace genie
