// File: tests/e2e/multi_node_test.cc
// The VQA model across two genie-nodes (embedded, on loopback TCP; once with the client on
// shared memory) through
// SemanticScheduler<..., ModalityPlacement>: answers match eager CPU, the vision encoder
// runs on node 0 and the language encoder on node 1, the tensors that cross nodes go node
// to node (the nodes count them; the client's traffic holds only inputs, answers and
// weights), and every weight goes up exactly once, to one node.
#include <torch/torch.h>

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "examples/models/models.h"
#include "tests/e2e/node_process.h"
#include "genie/client/session.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/scheduler/policies.h"
#include "genie/semantic/semantics.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"

namespace genie {
namespace {

// Modules placed by modality across the nodes, the tensors that cross them sent node to node;
// `Transport` is how the client reaches each node (the nodes reach each other over TCP). Like
// examples::PlacedDeployment, but without the pattern annotation and recognizer.
template <class Transport>
using PlacedOver = Pipeline<
    Annotations<semantic::ModulePath, semantic::Phase, semantic::Modality>,
    Analyzers<semantic::ModulePathAnalyzer, semantic::PhaseDetector, semantic::ModalityDetector,
              semantic::WorkloadClassifier>,
    scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                 scheduler::JustInTimeTransfers, scheduler::ModalityPlacement>,
    Transport>;

using Placed = PlacedOver<transport::Tcp>;
// The same with the client reaching each node over shared memory.
using PlacedShm = PlacedOver<transport::Shm>;

template <class Deployment>
void VqaAcrossTwoNodesByModality() {
  models::VqaConfig config;
  models::Vqa local(config);
  local->eval();
  torch::manual_seed(99);
  constexpr int kSteps = 3;
  constexpr int64_t kBatch = 2, kSeq = 12;
  std::vector<torch::Tensor> images, questions, expected;
  for (int i = 0; i < kSteps; ++i) {
    images.push_back(torch::randn(
        {kBatch, config.vision.channels, config.vision.image_size, config.vision.image_size}));
    questions.push_back(torch::randint(1, config.language.vocab_size, {kBatch, kSeq}, torch::kLong));
    questions.back().narrow(1, 9, 3).fill_(config.language.pad_id);
    torch::NoGradGuard no_grad;
    expected.push_back(local->forward(images.back(), questions.back()));
  }
  int64_t parameter_bytes = 0;
  for (const torch::Tensor& p : local->parameters()) parameter_bytes += p.numel() * p.element_size();
  for (const torch::Tensor& b : local->buffers()) parameter_bytes += b.numel() * b.element_size();

  SessionOptions options;
  options.embedded_nodes = 2;
  absl::StatusOr<std::unique_ptr<Session<Deployment>>> session = Session<Deployment>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device device((*session)->device());
  models::Vqa model(config);
  model->eval();
  model->to(device);
  frontend::NameParameters(*model);

  int64_t input_bytes = 0, answer_bytes = 0;
  for (int i = 0; i < kSteps; ++i) {
    torch::Tensor got = model->forward(images[i].to(device), questions[i].to(device)).to(torch::kCPU);
    ASSERT_TRUE(got.sizes() == expected[i].sizes());
    const double err = (got - expected[i]).abs().max().item<double>();
    EXPECT_LE(err, 1e-5) << "step " << i;
    input_bytes += images[i].numel() * 4 + questions[i].numel() * 8;
    answer_bytes += got.numel() * 4;
  }
  ASSERT_TRUE((*session)->Join().ok());

  const scheduler::PlacementStats placement = (*session)->placement();
  std::printf("%s", placement.last_report.c_str());
  EXPECT_EQ(placement.num_nodes, 2);
  EXPECT_GE(placement.runs, kSteps);
  EXPECT_EQ(placement.NodeOf("vision"), 0);
  EXPECT_EQ(placement.NodeOf("language"), 1);
  for (const scheduler::ModulePlacement& m : placement.modules) {
    int nodes_used = 0;
    for (int64_t ops : m.ops_per_node) nodes_used += ops > 0;
    EXPECT_EQ(nodes_used, 1) << "module " << m.module << " was split across nodes";
  }
  EXPECT_GT(placement.transfers, 0);
  EXPECT_GT(placement.node_to_node_bytes, 0);

  // The nodes moved the crossing tensors themselves.
  const std::vector<runtime::PeerStats> peers = (*session)->embedded_peer_stats();
  ASSERT_EQ(peers.size(), 2u);
  EXPECT_EQ(peers[0].bytes_sent + peers[1].bytes_sent, placement.node_to_node_bytes);
  EXPECT_EQ(peers[0].bytes_received + peers[1].bytes_received, placement.node_to_node_bytes);

  // The client shipped inputs up and answers down, weights once, and nothing else.
  const scheduler::DataTraffic data = (*session)->data_traffic();
  using scheduler::StorageClass;
  EXPECT_EQ(data.up[static_cast<int>(StorageClass::kActivation)], input_bytes);
  EXPECT_EQ(data.down[static_cast<int>(StorageClass::kActivation)], answer_bytes);
  EXPECT_EQ(data.up[static_cast<int>(StorageClass::kWeight)], parameter_bytes);
  EXPECT_EQ(data.of(StorageClass::kKvCache), 0);
  const transport::TrafficSnapshot wire = (*session)->traffic();
  const uint64_t activations_on_wire =
      wire.Bytes(transport::Direction::kSent, transport::TrafficClass::kActivations) +
      wire.Bytes(transport::Direction::kReceived, transport::TrafficClass::kActivations);
  // Framing adds a little; not even one crossing tensor went through the client.
  EXPECT_GE(activations_on_wire, static_cast<uint64_t>(input_bytes + answer_bytes));
  EXPECT_LT(activations_on_wire, static_cast<uint64_t>(input_bytes + answer_bytes +
                                                       placement.node_to_node_bytes / placement.transfers));
  std::printf("client: %s\nclient data: %s\nnode to node: %lld bytes in %lld transfers\n",
              wire.ToString().c_str(), data.ToString().c_str(),
              static_cast<long long>(placement.node_to_node_bytes),
              static_cast<long long>(placement.transfers));
}

TEST(MultiNodeTest, VqaAcrossTwoNodesByModality) { VqaAcrossTwoNodesByModality<Placed>(); }

TEST(MultiNodeTest, VqaAcrossTwoNodesByModalityClientOverShm) {
  VqaAcrossTwoNodesByModality<PlacedShm>();
}

// Pipelined dispatch: each batch is dispatched (queued on the nodes, Dispatch returns at
// once) and the previous batch's answers are read while it runs; the answers still match
// and every batch went through the queue. (That parts overlap is asserted deterministically
// in genie/scheduler/placement_executor_test.cc.)
TEST(MultiNodeTest, VqaBatchesPipelineAcrossTwoNodesThroughTheFrontend) {
  models::VqaConfig config;
  models::Vqa local(config);
  local->eval();
  torch::manual_seed(7);
  constexpr int kSteps = 6;
  std::vector<torch::Tensor> images, questions, expected;
  for (int i = 0; i < kSteps; ++i) {
    images.push_back(torch::randn(
        {2, config.vision.channels, config.vision.image_size, config.vision.image_size}));
    questions.push_back(torch::randint(1, config.language.vocab_size, {2, 12}, torch::kLong));
    torch::NoGradGuard no_grad;
    expected.push_back(local->forward(images.back(), questions.back()));
  }
  SessionOptions options;
  options.embedded_nodes = 2;
  options.pipelined = true;
  options.embedded.log_runs = false;
  absl::StatusOr<std::unique_ptr<Session<Placed>>> session = Session<Placed>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device device((*session)->device());
  torch::NoGradGuard no_grad;
  models::Vqa model(config);
  model->eval();
  model->to(device);
  frontend::NameParameters(*model);
  std::vector<torch::Tensor> answers(kSteps);
  for (int i = 0; i <= kSteps; ++i) {
    if (i < kSteps) {
      answers[i] = model->forward(images[i].to(device), questions[i].to(device));
      ASSERT_TRUE((*session)->Dispatch().ok());
    }
    if (i > 0) {
      torch::Tensor got = answers[i - 1].to(torch::kCPU);
      EXPECT_LE((got - expected[i - 1]).abs().max().item<double>(), 1e-5) << "batch " << i - 1;
    }
  }
  ASSERT_TRUE((*session)->Join().ok());
  EXPECT_GE((*session)->pipeline().queued_runs(), kSteps);
  const scheduler::PlacementStats placement = (*session)->placement();
  EXPECT_EQ(placement.NodeOf("vision"), 0);
  EXPECT_EQ(placement.NodeOf("language"), 1);
  std::printf("pipelined: %lld runs, %lld parts, %lld started beside another run's part\n",
              static_cast<long long>(placement.runs), static_cast<long long>(placement.parts),
              static_cast<long long>(placement.pipelined_parts));
}

int CountLines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos;
  return n;
}

// The same across two genie-node processes: node 0 pushes to node 1 itself (its log says
// so), and the answers still match.
TEST(MultiNodeTest, VqaAcrossTwoNodeProcesses) {
  const std::string key = "e2e-multi-node-key-0123456789abcdef";
  absl::StatusOr<std::string> dir = e2e::MakeTempDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string log0 = *dir + "/node0.log", log1 = *dir + "/node1.log";
  auto node0 = e2e::NodeProcess::Start(key, {}, absl::Seconds(60), log0);
  auto node1 = e2e::NodeProcess::Start(key, {}, absl::Seconds(60), log1);
  ASSERT_TRUE(node0.ok()) << node0.status();
  ASSERT_TRUE(node1.ok()) << node1.status();

  models::VqaConfig config;
  models::Vqa local(config);
  torch::manual_seed(5);
  const torch::Tensor images = torch::randn(
      {2, config.vision.channels, config.vision.image_size, config.vision.image_size});
  const torch::Tensor questions = torch::randint(1, config.language.vocab_size, {2, 12}, torch::kLong);
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = local->forward(images, questions);
  }
  constexpr int kSteps = 2;
  {
    SessionOptions options;
    options.key = key;
    options.nodes = {absl::StrCat("127.0.0.1:", (*node0)->port()),
                     absl::StrCat("127.0.0.1:", (*node1)->port())};
    absl::StatusOr<std::unique_ptr<Session<Placed>>> session = Session<Placed>::Start(options);
    ASSERT_TRUE(session.ok()) << session.status();
    const torch::Device device((*session)->device());
    models::Vqa model(config);
    model->eval();
    model->to(device);
    frontend::NameParameters(*model);
    for (int i = 0; i < kSteps; ++i) {
      torch::Tensor got = model->forward(images.to(device), questions.to(device)).to(torch::kCPU);
      EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5) << "step " << i;
    }
    ASSERT_TRUE((*session)->Join().ok());
    const scheduler::PlacementStats placement = (*session)->placement();
    EXPECT_EQ(placement.NodeOf("vision"), 0);
    EXPECT_EQ(placement.NodeOf("language"), 1);
    EXPECT_EQ(placement.transfers, kSteps);
    EXPECT_GT(placement.node_to_node_bytes, 0);
  }
  (void)(*node0)->Signal(SIGTERM);
  (void)(*node1)->Signal(SIGTERM);
  EXPECT_EQ(CountLines(log0, "genie-node: sent handle"), kSteps);
  EXPECT_EQ(CountLines(log1, "genie-node: received handle"), kSteps);
}

// An LLM decode keeps its KV cache with its attention: all of GPT-2 (language) runs on one
// node, the static cache stays resident there across steps, nothing crosses nodes.
TEST(MultiNodeTest, Gpt2DecodeKeepsItsKvCacheOnOneNode) {
  models::Gpt2Config config;
  models::Gpt2 local(config);
  torch::NoGradGuard no_grad;
  const torch::Tensor prompt = torch::randint(0, config.vocab_size, {1, 6}, torch::kLong);
  constexpr int kDecodeSteps = 4;
  std::vector<torch::Tensor> expected, tokens;
  {
    models::KvCache cache = local->NewCache(1, models::KvCacheMode::kStatic, torch::kCPU);
    torch::Tensor logits = local->forward(prompt, &cache, 0);
    expected.push_back(logits);
    for (int i = 0; i < kDecodeSteps; ++i) {
      torch::Tensor next = logits.select(1, logits.size(1) - 1).argmax(-1, /*keepdim=*/true);
      tokens.push_back(next);
      logits = local->forward(next, &cache, prompt.size(1) + i);
      expected.push_back(logits);
    }
  }

  SessionOptions options;
  options.embedded_nodes = 2;
  options.embedded.run_slots = 1;  // runs admitted by the node's phase-aware gate
  absl::StatusOr<std::unique_ptr<Session<Placed>>> session = Session<Placed>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device device((*session)->device());
  models::Gpt2 model(config);
  model->to(device);
  frontend::NameParameters(*model);
  models::KvCache cache = model->NewCache(1, models::KvCacheMode::kStatic, device);
  torch::Tensor got = model->forward(prompt.to(device), &cache, 0).to(torch::kCPU);
  EXPECT_LE((got - expected[0]).abs().max().item<double>(), 1e-5);
  for (int i = 0; i < kDecodeSteps; ++i) {
    got = model->forward(tokens[i].to(device), &cache, prompt.size(1) + i).to(torch::kCPU);
    EXPECT_LE((got - expected[i + 1]).abs().max().item<double>(), 1e-5) << "decode step " << i;
  }
  ASSERT_TRUE((*session)->Join().ok());

  const scheduler::PlacementStats placement = (*session)->placement();
  std::printf("%s", placement.last_report.c_str());
  ASSERT_FALSE(placement.modules.empty());
  for (const scheduler::ModulePlacement& m : placement.modules) {
    EXPECT_EQ(placement.NodeOf(m.module), placement.NodeOf(placement.modules[0].module))
        << "module " << m.module;
  }
  EXPECT_EQ(placement.node_to_node_bytes, 0);
  EXPECT_EQ((*session)->data_traffic().of(scheduler::StorageClass::kKvCache), 0);
  // The node recognised the decode steps from the programs themselves (the prefill is not
  // one) and admitted them as such.
  int64_t admitted = 0, decode = 0;
  for (const runtime::RunGate::Stats& g : (*session)->embedded_gate_stats()) {
    admitted += g.admitted;
    decode += g.decode_admitted;
  }
  EXPECT_EQ(decode, kDecodeSteps);
  EXPECT_GT(admitted, decode);
}

// One node with two CPU lanes (NodeOptions::cpu_lanes): the vision and language encoders
// of each batch run on two threads of the node, joined at fusion; the answers are the bytes
// a one-lane node gives and match eager CPU.
// Only sessions whose nodes all run on GPUs cut steps into parts
// (SessionOptions::gpu_dispatch_first_part); on CPU nodes the frontend's setting stays
// what the program made it, during the session and after.
TEST(MultiNodeTest, SessionsOnCpuNodesLeaveAutoDispatchAlone) {
  frontend::SetAutoDispatch(7, 3);
  {
    SessionOptions options;
    options.embedded.log_runs = false;
    absl::StatusOr<std::unique_ptr<Session<Placed>>> session = Session<Placed>::Start(options);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ(frontend::GetAutoDispatch(), (std::pair<int64_t, int64_t>{7, 3}));
  }
  EXPECT_EQ(frontend::GetAutoDispatch(), (std::pair<int64_t, int64_t>{7, 3}));
  frontend::SetAutoDispatch(0);
}

TEST(MultiNodeTest, VqaBranchesOnTwoLanesOfOneNode) {
  using Semantic = Pipeline<
      Annotations<semantic::ModulePath, semantic::Phase, semantic::Modality>,
      Analyzers<semantic::ModulePathAnalyzer, semantic::PhaseDetector, semantic::ModalityDetector,
                semantic::WorkloadClassifier>,
      scheduler::SemanticScheduler<scheduler::ResidentWeights, scheduler::KvCacheColocation,
                                   scheduler::JustInTimeTransfers>,
      transport::Tcp>;
  models::VqaConfig config;
  models::Vqa local(config);
  local->eval();
  torch::manual_seed(5);
  constexpr int kSteps = 3;
  std::vector<torch::Tensor> images, questions, expected;
  for (int i = 0; i < kSteps; ++i) {
    images.push_back(torch::randn({4, config.vision.channels, config.vision.image_size, config.vision.image_size}));
    questions.push_back(torch::randint(1, config.language.vocab_size, {4, 12}, torch::kLong));
    torch::NoGradGuard no_grad;
    expected.push_back(local->forward(images.back(), questions.back()));
  }
  auto answers = [&](int lanes) {
    std::vector<torch::Tensor> out;
    SessionOptions options;
    options.embedded.cpu_lanes = lanes;
    options.embedded.log_runs = false;
    absl::StatusOr<std::unique_ptr<Session<Semantic>>> session = Session<Semantic>::Start(options);
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return out;
    const torch::Device device((*session)->device());
    models::Vqa model(config);  // the same seed: the same weights as `local`
    model->eval();
    model->to(device);
    frontend::NameParameters(*model);
    for (int i = 0; i < kSteps; ++i) {
      out.push_back(model->forward(images[i].to(device), questions[i].to(device)).to(torch::kCPU));
    }
    EXPECT_TRUE((*session)->Join().ok());
    return out;
  };
  const std::vector<torch::Tensor> one = answers(1);
  const int64_t before = runtime::GetInterpreterCounters().cpu_multi_lane_runs;
  const std::vector<torch::Tensor> two = answers(2);
  EXPECT_EQ(runtime::GetInterpreterCounters().cpu_multi_lane_runs - before, kSteps);
  ASSERT_EQ(one.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(two.size(), static_cast<size_t>(kSteps));
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_TRUE(torch::equal(one[i], two[i])) << "step " << i;
    EXPECT_LE((two[i] - expected[i]).abs().max().item<double>(), 1e-5) << "step " << i;
  }
}

}  // namespace
}  // namespace genie
