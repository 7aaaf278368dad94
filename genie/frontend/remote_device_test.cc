// File: genie/frontend/remote_device_test.cc
// The remote_accelerator device end to end in process: capture, materialization and the
// local ATen interpreter, each checked against eager CPU results.
#include "genie/frontend/remote_device.h"

#include <c10/core/impl/COW.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "genie/runtime/interpreter.h"

namespace genie::frontend {
namespace {

torch::Device Remote() { return torch::Device(std::string(EnsureRegistered()) + ":0"); }

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

class RemoteDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    ResetCaptureStats();
  }
  torch::NoGradGuard no_grad_;
};

TEST_F(RemoteDeviceTest, DeviceParsesAndTensorsMove) {
  torch::Device d("remote_accelerator:0");
  EXPECT_EQ(d.type(), c10::DeviceType::PrivateUse1);
  EXPECT_EQ(d.index(), 0);
  torch::Tensor x = torch::randn({3, 4});
  torch::Tensor r = x.to(d);
  EXPECT_EQ(r.device(), d);
  EXPECT_EQ(r.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(r.to(torch::kCPU), x));
}

// `.to(remote)` takes a snapshot: the bytes upload at the next run, but what they are is
// fixed when `.to()` returns. Dense sources are copied with memcpy, the others (strided,
// another dtype, a broadcast) through ATen; both must keep the values of that moment.
TEST_F(RemoteDeviceTest, UploadsAreSnapshotsOfTheirMoment) {
  torch::Tensor dense = torch::randn({64, 33});
  const torch::Tensor dense_then = dense.clone();
  torch::Tensor strided = torch::randn({33, 64}).transpose(0, 1);
  const torch::Tensor strided_then = strided.clone();
  torch::Tensor doubles = torch::randn({64, 33}, torch::kDouble);
  const torch::Tensor doubles_then = doubles.to(torch::kFloat);
  torch::Tensor r_dense = dense.to(Remote());
  torch::Tensor r_strided = strided.to(Remote());
  torch::Tensor r_doubles = torch::empty({64, 33}, torch::TensorOptions().device(Remote()));
  r_doubles.copy_(doubles);
  torch::Tensor r_broadcast = torch::empty({64, 33}, torch::TensorOptions().device(Remote()));
  torch::Tensor row = torch::randn({33});
  const torch::Tensor row_then = row.clone();
  r_broadcast.copy_(row);
  // The sources change before anything has run on the node.
  EXPECT_EQ(GetCaptureStats().flushes, 0);
  dense.add_(100);
  strided.mul_(-3);
  doubles.zero_();
  row.fill_(5);
  torch::Tensor sum = r_dense + r_strided + r_doubles + r_broadcast;
  EXPECT_LE(MaxAbsDiff(sum, dense_then + strided_then + doubles_then + row_then.expand({64, 33})),
            1e-5);
}

// A snapshot of a megabyte or more is copied by several threads: every byte arrives, at the
// edges of their pieces too (an odd size, not a multiple of their alignment).
TEST_F(RemoteDeviceTest, LargeUploadsAreWholeSnapshots) {
  for (int64_t n : {int64_t{(1 << 18) - 1}, int64_t{1 << 18}, int64_t{1200001}}) {
    torch::Tensor big = torch::arange(n, torch::kFloat) * 0.5 - 7;
    const torch::Tensor then = big.clone();
    torch::Tensor remote = big.to(Remote());
    big.fill_(1);
    EXPECT_TRUE(torch::equal(remote.to(torch::kCPU), then)) << n << " floats";
  }
}

// With SetCopyOnWriteSnapshots on and no staging memory from the executor (every transport
// but Shm's pool), a large snapshot is copy-on-write: nothing is copied at `.to()`; the caller's
// first write afterwards copies its own data first, so the upload still sees the values of that
// moment. Memory whose allocator keeps a context of its own (here borrowed with from_blob) is
// copied.
TEST_F(RemoteDeviceTest, LargeSnapshotsAreCopyOnWrite) {
  torch::Tensor off = torch::arange(int64_t{1} << 20, torch::kFloat);
  torch::Tensor copied = off.to(Remote());  // off by default: a copy
  EXPECT_FALSE(c10::impl::cow::is_cow_data_ptr(off.storage().data_ptr()));
  SetCopyOnWriteSnapshots(true);
  struct Off {
    ~Off() { SetCopyOnWriteSnapshots(false); }
  } restore;
  torch::Tensor big = torch::arange(int64_t{1} << 20, torch::kFloat);
  const torch::Tensor then = big.clone();
  const void* before = big.const_data_ptr();
  torch::Tensor remote = big.to(Remote());
  EXPECT_TRUE(c10::impl::cow::is_cow_data_ptr(big.storage().data_ptr()));
  EXPECT_EQ(big.const_data_ptr(), before);  // no copy so far
  big.add_(1);
  EXPECT_NE(big.const_data_ptr(), before);  // the write got its own copy
  EXPECT_TRUE(torch::equal(remote.to(torch::kCPU), then));
  EXPECT_TRUE(torch::equal(big, then + 1));

  std::vector<float> borrowed(1 << 18, 2.0f);
  torch::Tensor view = torch::from_blob(borrowed.data(), {1 << 18});
  torch::Tensor remote_view = view.to(Remote());
  EXPECT_FALSE(c10::impl::cow::is_cow_data_ptr(view.storage().data_ptr()));
  std::fill(borrowed.begin(), borrowed.end(), -1.0f);  // behind ATen's back
  EXPECT_TRUE(torch::equal(remote_view.to(torch::kCPU), torch::full({1 << 18}, 2.0f)));

  // A view into a larger storage is copied: a clone would keep the whole base shared.
  torch::Tensor base = torch::zeros({2, 1 << 18});
  torch::Tensor remote_row = base[1].to(Remote());
  EXPECT_FALSE(c10::impl::cow::is_cow_data_ptr(base.storage().data_ptr()));
  EXPECT_TRUE(torch::equal(copied.to(torch::kCPU), off));
  EXPECT_TRUE(torch::equal(remote_row.to(torch::kCPU), torch::zeros({1 << 18})));
}

TEST_F(RemoteDeviceTest, OpsAreCapturedNotComputedUntilRead) {
  torch::Tensor a = torch::randn({4, 8});
  torch::Tensor b = torch::randn({8, 5});
  torch::Tensor ra = a.to(Remote());
  torch::Tensor rb = b.to(Remote());
  torch::Tensor rc = torch::relu(torch::matmul(ra, rb) + 1.5);
  EXPECT_EQ(GetCaptureStats().flushes, 0);
  EXPECT_GE(GetCaptureStats().ops_captured, 3);
  EXPECT_NE(DumpPendingGraph().find("aten::matmul"), std::string::npos) << DumpPendingGraph();
  torch::Tensor expected = torch::relu(torch::matmul(a, b) + 1.5);
  EXPECT_LE(MaxAbsDiff(rc, expected), 1e-6);
  EXPECT_EQ(GetCaptureStats().flushes, 1);
}

TEST_F(RemoteDeviceTest, NarrowThenInPlaceAddMutatesBase) {
  torch::Tensor x = torch::arange(12, torch::kFloat).reshape({3, 4});
  torch::Tensor rx = x.to(Remote());
  rx.narrow(0, 1, 2).add_(10);
  x.narrow(0, 1, 2).add_(10);
  EXPECT_TRUE(torch::equal(rx.to(torch::kCPU), x));
}

TEST_F(RemoteDeviceTest, TransposeThenContiguous) {
  torch::Tensor x = torch::randn({5, 7});
  torch::Tensor r = x.to(Remote()).transpose(0, 1).contiguous();
  EXPECT_TRUE(r.is_contiguous());
  EXPECT_TRUE(torch::equal(r.to(torch::kCPU), x.transpose(0, 1).contiguous()));
}

TEST_F(RemoteDeviceTest, ViewOfAViewMutatedShowsInEveryAlias) {
  torch::Tensor x = torch::zeros({4, 6});
  torch::Tensor r = x.to(Remote());
  torch::Tensor v1 = r.view({2, 12});
  torch::Tensor v2 = v1.select(0, 1).narrow(0, 3, 4);  // a view of a view
  v2.mul_(0).add_(7);
  x.view({2, 12}).select(0, 1).narrow(0, 3, 4).mul_(0).add_(7);
  EXPECT_TRUE(torch::equal(r.to(torch::kCPU), x));
  EXPECT_TRUE(torch::equal(v1.to(torch::kCPU), x.view({2, 12})));
  EXPECT_GE(GetCaptureStats().views, 3);
}

TEST_F(RemoteDeviceTest, IndexPutAndIndexingAndGatherScatter) {
  torch::Tensor x = torch::randn({6, 4});
  torch::Tensor idx = torch::tensor({0, 2, 5}, torch::kLong);
  torch::Tensor vals = torch::randn({3, 4});
  torch::Tensor r = x.to(Remote());
  r.index_put_({idx.to(Remote())}, vals.to(Remote()));
  x.index_put_({idx}, vals);
  EXPECT_TRUE(torch::equal(r.to(torch::kCPU), x));

  torch::Tensor g_idx = torch::randint(0, 4, {6, 3}, torch::kLong);
  EXPECT_TRUE(torch::equal(torch::gather(r, 1, g_idx.to(Remote())).to(torch::kCPU), torch::gather(x, 1, g_idx)));
  torch::Tensor s = torch::zeros({6, 4}).scatter(1, g_idx, 1.0);
  torch::Tensor rs = torch::zeros({6, 4}, Remote()).scatter(1, g_idx.to(Remote()), 1.0);
  EXPECT_TRUE(torch::equal(rs.to(torch::kCPU), s));
  torch::Tensor sel = r.index({torch::indexing::Slice(1, 5, 2), torch::indexing::Slice()});
  EXPECT_TRUE(torch::equal(sel.to(torch::kCPU), x.index({torch::indexing::Slice(1, 5, 2), torch::indexing::Slice()})));
  torch::Tensor w = torch::where(r > 0, r, torch::zeros_like(r));
  EXPECT_TRUE(torch::equal(w.to(torch::kCPU), torch::where(x > 0, x, torch::zeros_like(x))));
}

TEST_F(RemoteDeviceTest, FactoriesTypePromotionCatStackReductions) {
  torch::Tensor a = torch::arange(10, torch::TensorOptions().device(Remote()).dtype(torch::kLong));
  torch::Tensor b = torch::ones({10}, torch::TensorOptions().device(Remote()));
  torch::Tensor c = a * 0.5 + b;  // long * double scalar -> float
  EXPECT_EQ(c.scalar_type(), torch::kFloat);
  torch::Tensor ec = torch::arange(10, torch::kLong) * 0.5 + torch::ones({10});
  EXPECT_TRUE(torch::equal(c.to(torch::kCPU), ec));
  torch::Tensor d = torch::cat({c, c * 2}, 0);
  torch::Tensor e = torch::stack({c, c}, 1);
  EXPECT_TRUE(torch::equal(d.to(torch::kCPU), torch::cat({ec, ec * 2}, 0)));
  EXPECT_TRUE(torch::equal(e.to(torch::kCPU), torch::stack({ec, ec}, 1)));
  EXPECT_NEAR(e.sum().item<double>(), torch::stack({ec, ec}, 1).sum().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(e.amax(0).to(torch::kCPU), torch::stack({ec, ec}, 1).amax(0)));
  EXPECT_EQ(c.to(torch::kDouble).scalar_type(), torch::kDouble);
  EXPECT_TRUE(torch::equal(torch::full({2, 2}, 3.0, Remote()).to(torch::kCPU), torch::full({2, 2}, 3.0)));
}

TEST_F(RemoteDeviceTest, ItemPrintingAndDataPtr) {
  torch::Tensor x = torch::randn({3, 3});
  torch::Tensor r = x.to(Remote());
  EXPECT_FLOAT_EQ(r.sum().item<float>(), x.sum().item<float>());
  std::ostringstream remote_text, local_text;
  remote_text << (r * 2).to(torch::kCPU);
  local_text << x * 2;
  EXPECT_EQ(remote_text.str(), local_text.str());
  std::ostringstream printed;
  printed << r * 2;  // printing a remote tensor materializes it
  EXPECT_NE(printed.str().find("remote_accelerator"), std::string::npos) << printed.str();
  // data_ptr is a device address, as on CUDA: non-null, stable, never host memory.
  EXPECT_NE(r.data_ptr(), nullptr);
  EXPECT_EQ(r.data_ptr(), r.view({9}).data_ptr());
}

TEST_F(RemoteDeviceTest, OpWithoutRemoteKernelRunsOnCpuWithCorrectResult) {
  torch::Tensor x = torch::tensor({0.f, 1.f, 0.f, 3.f, -2.f});
  torch::Tensor r = x.to(Remote()) * 2;
  torch::Tensor nz = torch::nonzero(r);  // data-dependent shape: no Meta kernel
  EXPECT_EQ(nz.device().type(), c10::DeviceType::PrivateUse1);
  EXPECT_TRUE(torch::equal(nz.to(torch::kCPU), torch::nonzero(x * 2)));
  EXPECT_GE(GetCaptureStats().cpu_fallbacks, 1);
  // The result keeps flowing through remote ops.
  EXPECT_TRUE(torch::equal((nz + 1).to(torch::kCPU), torch::nonzero(x * 2) + 1));
}

TEST_F(RemoteDeviceTest, ImpossibleOpRaisesErrorNamingTheOp) {
  torch::Tensor r = torch::randn({4, 4}).to(Remote());
  try {
    torch::Tensor s = r.to_sparse();
    (void)s.to(torch::kCPU);
    FAIL() << "to_sparse on remote_accelerator should fail";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("genie"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sparse"), std::string::npos) << msg;
  }
}

TEST_F(RemoteDeviceTest, CaptureCacheHitsOnRepeatAndMissesOnNewShape) {
  auto step = [](const torch::Tensor& x, const torch::Tensor& w) {
    return torch::softmax(torch::gelu(torch::matmul(x, w)), -1).sum(0);
  };
  torch::Tensor w = torch::randn({16, 16});
  torch::Tensor rw = w.to(Remote());
  ClearCaptureCache();
  torch::Tensor x1 = torch::randn({4, 16});
  torch::Tensor r1 = step(x1.to(Remote()), rw).to(torch::kCPU);
  CaptureStats first = GetCaptureStats();
  EXPECT_GT(first.cache_misses, 0);
  ResetCaptureStats();
  torch::Tensor x2 = torch::randn({4, 16});
  torch::Tensor r2 = step(x2.to(Remote()), rw).to(torch::kCPU);
  CaptureStats second = GetCaptureStats();
  EXPECT_EQ(second.cache_misses, 0);
  EXPECT_EQ(second.cache_hits, first.cache_misses);
  EXPECT_LE(MaxAbsDiff(r2, step(x2, w)), 1e-5);
  // The first run uploaded the weight, the second found it resident: from the second
  // on, the graphs are equal and the prepared program is reused.
  ResetCaptureStats();
  torch::Tensor x2b = torch::randn({4, 16});
  torch::Tensor r2b = step(x2b.to(Remote()), rw).to(torch::kCPU);
  EXPECT_EQ(GetCaptureStats().program_cache_hits, 1);
  EXPECT_EQ(GetCaptureStats().cache_misses, 0);
  EXPECT_LE(MaxAbsDiff(r2b, step(x2b, w)), 1e-5);
  ResetCaptureStats();
  torch::Tensor x3 = torch::randn({7, 16});  // new shape: recaptured correctly
  torch::Tensor r3 = step(x3.to(Remote()), rw).to(torch::kCPU);
  EXPECT_GT(GetCaptureStats().cache_misses, 0);
  EXPECT_LE(MaxAbsDiff(r3, step(x3, w)), 1e-5);
}

TEST_F(RemoteDeviceTest, CacheDisabledGivesSameResults) {
  SetCaptureCacheEnabled(false);
  torch::Tensor x = torch::randn({3, 5});
  torch::Tensor r = (x.to(Remote()).exp() - 1).to(torch::kCPU);
  EXPECT_EQ(GetCaptureStats().cache_hits, 0);
  SetCaptureCacheEnabled(true);
  EXPECT_LE(MaxAbsDiff(r, x.exp() - 1), 1e-6);
}

TEST_F(RemoteDeviceTest, RandomOpsFollowTheSeedingRule) {
  torch::manual_seed(42);
  torch::Tensor a = torch::randn({64}, Remote()).to(torch::kCPU);
  torch::manual_seed(42);
  torch::Tensor b = torch::randn({64}, Remote()).to(torch::kCPU);
  torch::Tensor c = torch::randn({64}, Remote()).to(torch::kCPU);
  EXPECT_TRUE(torch::equal(a, b));  // same client seed, same numbers
  EXPECT_FALSE(torch::equal(b, c));
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.5);
}

TEST_F(RemoteDeviceTest, ModuleToNamesParametersAndMatchesEager) {
  torch::nn::Sequential net(torch::nn::Linear(8, 16), torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})),
                            torch::nn::GELU(), torch::nn::Linear(16, 4));
  torch::Tensor x = torch::randn({5, 8});
  torch::Tensor expected = net->forward(x);
  net->to(Remote());
  NameParameters(*net, "mlp");
  std::vector<std::string> names;
  SetGraphObserver([&](const core::Graph& g, const core::ExecuteRequest&) {
    for (const core::Buffer& b : g.buffers()) {
      if (b.kind == core::BufferKind::kParameter) names.push_back(b.name);
    }
  });
  torch::Tensor y = net->forward(x.to(Remote()));
  EXPECT_LE(MaxAbsDiff(y, expected), 1e-5);
  SetGraphObserver(nullptr);
  EXPECT_NE(std::find(names.begin(), names.end(), "mlp.0.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "mlp.1.bias"), names.end());
  // Weights are resident after the first run: the second run uploads only the input.
  ResetCaptureStats();
  torch::Tensor y2 = net->forward(x.to(Remote())).to(torch::kCPU);
  EXPECT_EQ(GetCaptureStats().bytes_uploaded, static_cast<int64_t>(x.nbytes()));
  EXPECT_LE(MaxAbsDiff(y2, expected), 1e-5);
}

TEST_F(RemoteDeviceTest, ScopesNameTheOps) {
  torch::Tensor x = torch::randn({2, 2}).to(Remote());
  std::string dump;
  {
    Scope vision("vision");
    Scope block("block0");
    torch::Tensor y = x.exp();
    dump = DumpPendingGraph();
    (void)y.to(torch::kCPU);
  }
  EXPECT_NE(dump.find("vision.block0"), std::string::npos) << dump;
}

TEST_F(RemoteDeviceTest, StorageThatDiesDuringCaptureIsStillReadByItsGraph) {
  // A growing KV cache: the old cache storage dies while the graph that reads it
  // (cat onto it) is being captured; the executor must forget it only after the run.
  torch::Tensor first = torch::randn({2, 3});
  torch::Tensor cache = first.to(Remote()) * 1;
  ASSERT_TRUE(Flush().ok());  // the cache is resident now
  torch::Tensor step = torch::randn({1, 3});
  cache = torch::cat({cache, step.to(Remote())}, 0);  // the old storage dies here
  EXPECT_TRUE(torch::equal(cache.to(torch::kCPU), torch::cat({first, step}, 0)));
}

TEST_F(RemoteDeviceTest, DeadOpsAreEliminated) {
  torch::Tensor x = torch::randn({32, 32}).to(Remote());
  {
    torch::Tensor unused = torch::matmul(x, x);  // dies before anything is read
  }
  torch::Tensor y = (x + 1).to(torch::kCPU);
  EXPECT_GE(GetCaptureStats().nodes_eliminated, 1);
  EXPECT_TRUE(y.defined());
}

TEST_F(RemoteDeviceTest, CommonModulesMatchEager) {
  torch::Tensor img = torch::randn({2, 3, 8, 8});
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3).padding(1));
  torch::Tensor e_conv = conv->forward(img);
  conv->to(Remote());
  EXPECT_LE(MaxAbsDiff(conv->forward(img.to(Remote())), e_conv), 1e-5);

  torch::nn::MaxPool2d pool(torch::nn::MaxPool2dOptions(2));
  EXPECT_LE(MaxAbsDiff(pool->forward(img.to(Remote())), pool->forward(img)), 0);

  torch::Tensor ids = torch::randint(0, 20, {3, 5}, torch::kLong);
  torch::nn::Embedding emb(20, 6);
  torch::Tensor e_emb = emb->forward(ids);
  emb->to(Remote());
  EXPECT_LE(MaxAbsDiff(emb->forward(ids.to(Remote())), e_emb), 0);

  torch::nn::EmbeddingBag bag(torch::nn::EmbeddingBagOptions(20, 6).mode(torch::kSum));
  torch::Tensor flat = torch::randint(0, 20, {10}, torch::kLong);
  torch::Tensor offsets = torch::tensor({0, 3, 7}, torch::kLong);
  torch::Tensor e_bag = bag->forward(flat, offsets);
  bag->to(Remote());
  EXPECT_LE(MaxAbsDiff(bag->forward(flat.to(Remote()), offsets.to(Remote())), e_bag), 1e-5);

  torch::nn::MultiheadAttention mha(torch::nn::MultiheadAttentionOptions(8, 2));
  torch::Tensor q = torch::randn({4, 2, 8});  // [seq, batch, embed]
  auto e_mha = mha->forward(q, q, q);
  mha->to(Remote());
  torch::Tensor rq = q.to(Remote());
  auto r_mha = mha->forward(rq, rq, rq);
  EXPECT_LE(MaxAbsDiff(std::get<0>(r_mha), std::get<0>(e_mha)), 1e-5);
  EXPECT_LE(MaxAbsDiff(std::get<1>(r_mha), std::get<1>(e_mha)), 1e-5);

  torch::Tensor qs = torch::randn({2, 2, 5, 4});  // [batch, heads, seq, dim]
  torch::Tensor e_sdpa = at::scaled_dot_product_attention(qs, qs, qs, {}, 0.0, /*is_causal=*/true);
  torch::Tensor rqs = qs.to(Remote());
  torch::Tensor r_sdpa = at::scaled_dot_product_attention(rqs, rqs, rqs, {}, 0.0, true);
  EXPECT_NE(DumpPendingGraph().find("aten::scaled_dot_product_attention"), std::string::npos)
      << "attention must be captured as one node";
  EXPECT_LE(MaxAbsDiff(r_sdpa, e_sdpa), 1e-5);
  torch::Tensor c0 = torch::randn({2, 3, 5}), a0 = torch::randn({2, 3, 4}), b0 = torch::randn({2, 4, 5});
  EXPECT_LE(MaxAbsDiff(torch::baddbmm(c0.to(Remote()), a0.to(Remote()), b0.to(Remote()), 0.5, 2.0),
                       torch::baddbmm(c0, a0, b0, 0.5, 2.0)),
            1e-5);
  EXPECT_LE(MaxAbsDiff(torch::bmm(a0.to(Remote()), b0.to(Remote())), torch::bmm(a0, b0)), 1e-5);
  EXPECT_EQ(GetCaptureStats().cpu_fallbacks, 0) << "every module above runs remotely";
}

// Records each graph's dump by fingerprint: executors (a node's program cache) may reuse
// what they prepared for an equal fingerprint, so equal fingerprints must mean equal graphs.
class FingerprintAuditor final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    const std::string dump = request.graph->Dump();  // ops, arguments, views, outputs
    auto [it, inserted] = seen.emplace(request.fingerprint, dump);
    if (!inserted && it->second != dump) ++collisions;
    return inner.Execute(request);
  }
  std::string Describe() const override { return "fingerprint auditor"; }
  runtime::Interpreter inner;
  std::map<uint64_t, std::string> seen;
  int collisions = 0;
};

TEST_F(RemoteDeviceTest, EqualFingerprintsMeanEqualGraphs) {
  auto audit = std::make_shared<FingerprintAuditor>();
  SetExecutor(audit);
  torch::Tensor x = torch::arange(12, torch::kFloat).reshape({3, 4});
  torch::Tensor rx = x.to(Remote());
  ASSERT_TRUE(Flush().ok());
  // Same ops on the same storages, differing only in a scalar or in a view's offset.
  EXPECT_TRUE(torch::equal((rx + 1).to(torch::kCPU), x + 1));
  EXPECT_TRUE(torch::equal((rx + 2).to(torch::kCPU), x + 2));
  EXPECT_TRUE(torch::equal(rx.narrow(0, 0, 2).mul(3).to(torch::kCPU), x.narrow(0, 0, 2).mul(3)));
  EXPECT_TRUE(torch::equal(rx.narrow(0, 1, 2).mul(3).to(torch::kCPU), x.narrow(0, 1, 2).mul(3)));
  EXPECT_TRUE(torch::equal(rx.select(1, 0).to(torch::kCPU), x.select(1, 0)));
  EXPECT_TRUE(torch::equal(rx.select(1, 3).to(torch::kCPU), x.select(1, 3)));
  EXPECT_EQ(audit->collisions, 0);
  EXPECT_GE(audit->seen.size(), 6u);
  SetExecutor(std::make_shared<runtime::Interpreter>());
}

// What each executed graph was, for comparing a run with step replay against one without.
struct GraphLog {
  std::vector<std::string> dumps;
  std::vector<uint64_t> fingerprints;
  std::vector<size_t> uploads;
  std::vector<torch::Tensor> results;
  CaptureStats stats;
};

// Runs `steps(&log)` with step replay on or off, logging every graph executed.
template <class Steps>
GraphLog LogGraphs(bool replay, Steps&& steps) {
  SetStepReplayEnabled(replay);
  GraphLog log;
  SetGraphObserver([&](const core::Graph& g, const core::ExecuteRequest& r) {
    // Handles name this run's storages (a process-wide counter): compared by results.
    log.dumps.push_back(std::regex_replace(g.Dump(), std::regex("handle=0x[0-9a-f]+"), "handle=*"));
    log.fingerprints.push_back(r.fingerprint);
    log.uploads.push_back(r.uploads.size());
  });
  ResetCaptureStats();
  steps(&log);
  SetGraphObserver(nullptr);
  log.stats = GetCaptureStats();
  SetStepReplayEnabled(true);
  return log;
}

// The same graphs (structure, fingerprint, uploads) and the same results.
void ExpectSameRuns(const GraphLog& plain, const GraphLog& replayed) {
  ASSERT_EQ(replayed.dumps.size(), plain.dumps.size());
  for (size_t i = 0; i < plain.dumps.size(); ++i) {
    EXPECT_EQ(replayed.dumps[i], plain.dumps[i]) << "graph " << i;
    EXPECT_EQ(replayed.fingerprints[i], plain.fingerprints[i]) << "graph " << i;
    EXPECT_EQ(replayed.uploads[i], plain.uploads[i]) << "graph " << i;
  }
  ASSERT_EQ(replayed.results.size(), plain.results.size());
  for (size_t i = 0; i < plain.results.size(); ++i) {
    EXPECT_TRUE(torch::equal(replayed.results[i], plain.results[i])) << "result " << i;
  }
}

// Decode-like steps over a persistent state: repeats, new data, a changed scalar, a
// changed role of a storage (x + x instead of x + y), a write into a static cache, an
// extra live intermediate, and a different output read back.
void ReplayScenario(GraphLog* log) {
  torch::manual_seed(3);
  torch::Tensor w = torch::randn({8, 8});
  std::vector<torch::Tensor> xs;
  for (int i = 0; i < 9; ++i) xs.push_back(torch::randn({2, 8}));
  torch::Tensor rw = w.to(Remote());
  torch::Tensor cache = torch::zeros({4, 8}).to(Remote());  // a static cache, written in place
  auto step = [&](const torch::Tensor& x, double scale, bool self_add, int64_t slot,
                  torch::Tensor* extra) {
    torch::Tensor rx = x.to(Remote());
    torch::Tensor h = torch::matmul(rx, rw).mul(scale);
    h = self_add ? h + h : h + rx;
    h.relu_();
    cache.index_copy_(0, torch::tensor({slot}).to(Remote()), h.narrow(0, 0, 1));
    if (extra != nullptr) *extra = h * 2;  // stays alive past the step: kept
    return (h.sum(1) + cache.sum()).to(torch::kCPU);
  };
  torch::Tensor extra;
  log->results.push_back(step(xs[0], 0.5, false, 0, nullptr));
  log->results.push_back(step(xs[1], 0.5, false, 1, nullptr));  // same step, new data
  log->results.push_back(step(xs[2], 0.5, false, 2, nullptr));
  log->results.push_back(step(xs[3], 0.25, false, 3, nullptr));  // a scalar differs
  log->results.push_back(step(xs[4], 0.25, false, 0, nullptr));
  log->results.push_back(step(xs[5], 0.25, true, 1, nullptr));   // a storage in another role
  log->results.push_back(step(xs[6], 0.25, true, 2, &extra));   // one more buffer kept
  log->results.push_back(extra.to(torch::kCPU));
  log->results.push_back(step(xs[7], 0.25, true, 3, nullptr));
  log->results.push_back(cache.to(torch::kCPU));  // another output read back
  log->results.push_back(step(xs[8], 0.25, true, 0, nullptr));
}

TEST_F(RemoteDeviceTest, StepReplayBuildsTheGraphsCaptureWould) {
  GraphLog plain = LogGraphs(/*replay=*/false, ReplayScenario);
  GraphLog replayed = LogGraphs(/*replay=*/true, ReplayScenario);
  EXPECT_EQ(plain.stats.ops_replayed, 0);
  EXPECT_GT(replayed.stats.ops_replayed, plain.stats.ops_captured / 3);
  // Weights turning resident, the storage in another role, the extra kept buffer and the
  // step after the other output was read back. A changed scalar is not one (a wrapped
  // number is a host constant, so only its data differs), nor are the reads of `extra`
  // and of the cache: graphs of no ops, nothing to replay.
  EXPECT_GE(replayed.stats.replay_divergences, 3);
  EXPECT_EQ(replayed.stats.ops_captured, plain.stats.ops_captured);
  // matmul, add and index_copy_ replay through their typed kernels; mul by a wrapped
  // number (a host tensor) and relu_ take the boxed path.
  EXPECT_GT(replayed.stats.ops_unboxed, 0);
  EXPECT_LT(replayed.stats.ops_unboxed, replayed.stats.ops_replayed);
  EXPECT_EQ(plain.stats.ops_unboxed, 0);
  ExpectSameRuns(plain, replayed);
}

// Steps through the typed (unboxed) kernels where one argument at a time differs from
// the step before: a scalar, a view's geometry over the same storage, a tensor in
// another role, a None that becomes a tensor. Each differing step must leave the typed
// path and build exactly the graph capture builds without replay.
void UnboxedArgumentScenario(GraphLog* log) {
  torch::manual_seed(5);
  torch::Tensor w = torch::randn({8, 8});
  torch::Tensor b = torch::randn({8});
  torch::Tensor rw = w.to(Remote()), rb = b.to(Remote());
  torch::Tensor acc = torch::zeros({2, 8}).to(Remote());
  auto step = [&](const torch::Tensor& x, double alpha, bool transposed, bool self_role, bool bias) {
    torch::Tensor rx = x.to(Remote());
    torch::Tensor h = torch::matmul(rx, transposed ? rw.t() : rw);        // view geometry
    h = torch::add(h, self_role ? h : rx, alpha);                        // role and scalar
    h = torch::layer_norm(h, {8}, bias ? std::optional<torch::Tensor>(rb) : std::nullopt,
                          std::nullopt, 1e-5);                           // None vs tensor
    acc.add_(h, alpha);
    return (h.sum(1) + acc.sum()).to(torch::kCPU);
  };
  std::vector<torch::Tensor> xs;
  for (int i = 0; i < 10; ++i) xs.push_back(torch::randn({2, 8}));
  log->results.push_back(step(xs[0], 1.0, false, false, false));
  log->results.push_back(step(xs[1], 1.0, false, false, false));
  log->results.push_back(step(xs[2], 1.0, false, false, false));  // replays typed
  log->results.push_back(step(xs[3], 2.0, false, false, false));  // alpha differs
  log->results.push_back(step(xs[4], 2.0, false, false, false));
  log->results.push_back(step(xs[5], 2.0, true, false, false));   // w seen transposed
  log->results.push_back(step(xs[6], 2.0, true, false, false));
  log->results.push_back(step(xs[7], 2.0, true, true, false));    // h + h
  log->results.push_back(step(xs[8], 2.0, true, true, true));     // a bias appears
  log->results.push_back(step(xs[9], 2.0, true, true, true));
}

TEST_F(RemoteDeviceTest, UnboxedReplayChecksEveryArgument) {
  GraphLog plain = LogGraphs(/*replay=*/false, UnboxedArgumentScenario);
  GraphLog replayed = LogGraphs(/*replay=*/true, UnboxedArgumentScenario);
  EXPECT_GT(replayed.stats.ops_unboxed, 0);
  // alpha, the transposed view, the role and the bias: each ends a replay.
  EXPECT_GE(replayed.stats.replay_divergences, 4);
  ExpectSameRuns(plain, replayed);
}

// The hot ops' autograd kernels skip autograd only when it has nothing to record; with
// grad mode on and an input requiring grad, libtorch's own autograd kernels run.
TEST_F(RemoteDeviceTest, AutogradRecordsRemoteOpsOnlyWhenItMust) {
  torch::AutoGradMode grad(true);  // the fixture runs without grad
  torch::Tensor w = torch::randn({4, 4}).to(Remote()).requires_grad_();
  torch::Tensor x = torch::randn({2, 4}).to(Remote());
  {
    torch::NoGradGuard no_grad;
    torch::Tensor y = torch::matmul(x, w.t()).add_(x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_FALSE(w.t().requires_grad());
  }
  torch::Tensor v = w.t();
  EXPECT_TRUE(v.requires_grad());
  EXPECT_TRUE(v.is_view());
  torch::Tensor y = torch::matmul(x, v);
  ASSERT_TRUE(y.requires_grad());
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_NE(y.grad_fn()->name().find("Backward"), std::string::npos) << y.grad_fn()->name();
  torch::Tensor plain = torch::matmul(x, x.t());  // nothing requires grad: no history
  EXPECT_FALSE(plain.requires_grad());
  EXPECT_TRUE(torch::allclose(y.detach().to(torch::kCPU),
                              torch::matmul(x.to(torch::kCPU), w.detach().to(torch::kCPU).t())));
}

TEST_F(RemoteDeviceTest, DirectViewKernelsMatchCpu) {
  torch::Tensor x = torch::randn({3, 4, 5});
  torch::Tensor r = x.to(Remote());
  auto same = [](const torch::Tensor& remote, const torch::Tensor& cpu) {
    EXPECT_EQ(remote.sizes(), cpu.sizes());
    EXPECT_EQ(remote.strides(), cpu.strides());
    EXPECT_EQ(remote.storage_offset(), cpu.storage_offset());
    EXPECT_TRUE(torch::equal(remote.to(torch::kCPU), cpu));
  };
  same(r.transpose(-1, 0), x.transpose(-1, 0));
  same(r.select(1, -2), x.select(1, -2));
  same(r.select(-1, 3).t(), x.select(-1, 3).t());
  same(r.permute({2, 0, 1}), x.permute({2, 0, 1}));
  same(r.select(0, 1).select(0, 2).t(), x.select(0, 1).select(0, 2).t());  // 1-D t()
  same(r.narrow(1, 1, 2).transpose(0, 2).select(2, 1), x.narrow(1, 1, 2).transpose(0, 2).select(2, 1));
  // A view of a view, written through: the base sees it.
  r.permute({1, 2, 0}).select(0, 0).fill_(7);
  x.permute({1, 2, 0}).select(0, 0).fill_(7);
  EXPECT_TRUE(torch::equal(r.to(torch::kCPU), x));
  EXPECT_THROW(r.select(1, 4), c10::IndexError);
  EXPECT_THROW(r.permute({0, 0, 1}), c10::Error);
  EXPECT_THROW(r.permute({0, 1}), c10::Error);
  EXPECT_THROW(r.t(), c10::Error);
}

// Steps of two graphs each (a value is read back mid-step), so consecutive graphs
// differ: each replays from its own template.
void TwoGraphSteps(GraphLog* log) {
  torch::manual_seed(4);
  torch::Tensor w = torch::randn({8, 8});
  torch::Tensor rw = w.to(Remote());
  for (int i = 0; i < 5; ++i) {
    torch::Tensor x = torch::randn({2, 8});
    torch::Tensor h = torch::matmul(x.to(Remote()), rw).tanh();
    log->results.push_back(h.sum().to(torch::kCPU));  // graph A
    log->results.push_back((h * 2 + 1).relu().to(torch::kCPU));  // graph B
  }
}

TEST_F(RemoteDeviceTest, StepReplayFollowsStepsOfSeveralGraphs) {
  GraphLog plain = LogGraphs(/*replay=*/false, TwoGraphSteps);
  GraphLog replayed = LogGraphs(/*replay=*/true, TwoGraphSteps);
  // From the third step on, both graphs of a step replay whole.
  EXPECT_GE(replayed.stats.ops_replayed, 3 * 5);
  ExpectSameRuns(plain, replayed);
}

// Runs `steps` steps of six layers (18 nodes) on a resident weight with
// SetAutoDispatch(first, growth), checks each result against eager and returns each
// step's capture stats.
std::vector<CaptureStats> CutSteps(int64_t first, int64_t growth, int steps) {
  torch::Tensor w = torch::randn({16, 16});
  torch::Tensor rw = w.to(Remote());
  auto step = [](torch::Tensor x, const torch::Tensor& w) {
    for (int layer = 0; layer < 6; ++layer) x = torch::tanh(torch::matmul(x, w) + 0.5);  // 18 nodes
    return x;
  };
  EXPECT_TRUE(Flush().ok());
  SetAutoDispatch(first, growth);
  std::vector<CaptureStats> per_step;
  for (int i = 0; i < steps; ++i) {
    ResetCaptureStats();
    torch::Tensor x = torch::randn({2, 16});
    torch::Tensor got = step(x.to(Remote()), rw).to(torch::kCPU);
    per_step.push_back(GetCaptureStats());
    EXPECT_LE(MaxAbsDiff(got, step(x, w)), 1e-5) << "step " << i;
  }
  SetAutoDispatch(0);
  return per_step;
}

TEST_F(RemoteDeviceTest, AutoDispatchCutsLongStepsAndStaysCorrect) {
  int64_t flushes = 0, replayed = 0;
  for (const CaptureStats& s : CutSteps(5, 1, 4)) {
    flushes += s.flushes;
    replayed += s.ops_replayed;
  }
  EXPECT_GE(flushes, 4 * 4);  // every step is cut into parts of at most 5 nodes
  // The parts of a step differ from one another; each replays from its own template
  // (once the weight is resident and the part boundaries have been seen: a step's worth
  // at least, over the last steps).
  EXPECT_GE(replayed, 18);
}

// Parts that grow (2, 4, 8, ... nodes): each step is cut at the same places, so after the
// first steps every part replays whole, though parts start with the same op and key.
TEST_F(RemoteDeviceTest, AutoDispatchWithGrowingPartsReplaysEveryPart) {
  const std::vector<CaptureStats> per_step = CutSteps(2, 2, 6);
  for (size_t i = 3; i < per_step.size(); ++i) {
    EXPECT_EQ(per_step[i].flushes, 4) << "parts of 2, 4, 8 and the rest, step " << i;
    EXPECT_EQ(per_step[i].replay_divergences, 0) << "step " << i;
    EXPECT_GE(per_step[i].ops_replayed, per_step[i].ops_captured) << "step " << i;
  }
}

TEST_F(RemoteDeviceTest, StepReplayMatchesEagerOverManySteps) {
  torch::Tensor w = torch::randn({16, 16});
  torch::Tensor rw = w.to(Remote());
  torch::Tensor state = torch::zeros({1, 16});
  torch::Tensor rstate = state.to(Remote());
  ResetCaptureStats();
  for (int i = 0; i < 6; ++i) {
    torch::Tensor x = torch::randn({1, 16});
    state = torch::tanh(torch::matmul(x + state, w));
    rstate = torch::tanh(torch::matmul(x.to(Remote()) + rstate, rw));
    ASSERT_TRUE(Flush().ok());
  }
  EXPECT_LE(MaxAbsDiff(rstate, state), 1e-5);
  // The first step records; from the third on (the second finds the weight resident,
  // a different graph) every op replays.
  EXPECT_GE(GetCaptureStats().ops_replayed, 3 * 3);
}

TEST_F(RemoteDeviceTest, UploadOnlyDeadOpsReadSurvivesTheRun) {
  torch::Tensor x = torch::randn({6});
  torch::Tensor rx = x.to(Remote());  // uploaded lazily, with the first graph that reads it
  torch::Tensor y = torch::randn({6});
  for (int i = 0; i < 3; ++i) {
    // rx is in these graphs and stays alive, but only a dead op reads it: the run drops
    // that op and does not upload rx, so rx must still count as not uploaded.
    { torch::Tensor dead = rx * 3; }
    EXPECT_TRUE(torch::equal((y.to(Remote()) * 2).to(torch::kCPU), y * 2));
  }
  EXPECT_TRUE(torch::equal((rx + 1).to(torch::kCPU), x + 1));
}

TEST_F(RemoteDeviceTest, RandomOpsNeverReplay) {
  torch::manual_seed(5);
  std::vector<torch::Tensor> got;
  for (int i = 0; i < 3; ++i) got.push_back((torch::rand({32}, Remote()) + 1).to(torch::kCPU));
  EXPECT_FALSE(torch::equal(got[1], got[2]));  // each step draws a new seed
  torch::manual_seed(5);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::equal((torch::rand({32}, Remote()) + 1).to(torch::kCPU), got[i])) << i;
  }
}

// Hands back each output in fresh memory, marked exclusive or not; records where, and on
// which thread Execute ran.
class FreshOutputExecutor final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    threads.push_back(std::this_thread::get_id());
    absl::StatusOr<core::ExecuteResult> r = inner.Execute(request);
    if (!r.ok()) return r;
    for (core::HostBytes& hb : r->outputs) {
      auto fresh = std::make_shared<std::vector<char>>(static_cast<const char*>(hb.data),
                                                       static_cast<const char*>(hb.data) + hb.nbytes);
      hb = core::HostBytes{fresh->data(), fresh->size(), std::shared_ptr<const void>(fresh, fresh->data()),
                           exclusive};
      handed_out.push_back(fresh->data());
      alive.push_back(fresh);
    }
    return r;
  }
  std::string Describe() const override { return "fresh-output test executor"; }
  runtime::Interpreter inner;
  bool exclusive = true;
  std::vector<const void*> handed_out;
  std::vector<std::weak_ptr<std::vector<char>>> alive;
  std::vector<std::thread::id> threads;
};

TEST_F(RemoteDeviceTest, ReadsTakeOverExclusiveOutputsAndCopySharedOnes) {
  auto exec = std::make_shared<FreshOutputExecutor>();
  SetExecutor(exec);
  torch::Tensor x = torch::arange(6, torch::kFloat);
  torch::Tensor got = (x.to(Remote()) * 2).to(torch::kCPU);
  EXPECT_TRUE(torch::equal(got, x * 2));
  ASSERT_EQ(exec->handed_out.size(), 1u);
  EXPECT_EQ(got.data_ptr(), exec->handed_out[0]) << "an exclusive output is taken over, not copied";
  // Nothing was in flight, so the read ran the graph on this thread (no hand-off).
  ASSERT_EQ(exec->threads.size(), 1u);
  EXPECT_EQ(exec->threads[0], std::this_thread::get_id());
  ASSERT_FALSE(exec->alive[0].expired()) << "the tensor keeps the memory it took over";
  got = torch::Tensor();
  EXPECT_TRUE(exec->alive[0].expired()) << "and lets it go with the tensor";

  exec->exclusive = false;
  torch::Tensor copied = (x.to(Remote()) + 1).to(torch::kCPU);
  EXPECT_TRUE(torch::equal(copied, x + 1));
  ASSERT_EQ(exec->handed_out.size(), 2u);
  EXPECT_NE(copied.data_ptr(), exec->handed_out[1]) << "shared output bytes are copied out";
  SetExecutor(std::make_shared<runtime::Interpreter>());
}

// Wraps the interpreter; blocks each Execute until released, or fails it.
class GatedExecutor final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    started.fetch_add(1);
    gate.wait();
    if (fail) return absl::UnavailableError("node went away (test)");
    return inner.Execute(request);
  }
  std::string Describe() const override { return "gated test executor"; }
  runtime::Interpreter inner;
  std::shared_future<void> gate;
  std::atomic<int> started{0};
  bool fail = false;
};

TEST_F(RemoteDeviceTest, DispatchReturnsAtOnceAndReadsWaitForResults) {
  auto exec = std::make_shared<GatedExecutor>();
  std::promise<void> open;
  exec->gate = open.get_future().share();
  SetExecutor(exec);
  torch::Tensor x = torch::randn({16, 16});
  torch::Tensor r = torch::matmul(x.to(Remote()), x.to(Remote())).tanh();
  ASSERT_TRUE(Dispatch().ok());  // the executor is blocked: this must not wait for it
  for (int i = 0; i < 200 && exec->started.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(exec->started.load(), 1);
  torch::Tensor more = r * 2;  // capture continues while the first graph is in flight
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    open.set_value();
  });
  torch::Tensor got = more.to(torch::kCPU);  // waits for both graphs
  release.join();
  EXPECT_TRUE(Join().ok());
  EXPECT_LE(MaxAbsDiff(got, torch::matmul(x, x).tanh() * 2), 1e-5);
  EXPECT_EQ(exec->started.load(), 2);
  SetExecutor(std::make_shared<runtime::Interpreter>());
}

TEST_F(RemoteDeviceTest, DispatchedFailureSurfacesAtJoinAndAtTheNextRead) {
  auto exec = std::make_shared<GatedExecutor>();
  std::promise<void> open;
  open.set_value();
  exec->gate = open.get_future().share();
  exec->fail = true;
  SetExecutor(exec);
  torch::Tensor r = torch::randn({4}).to(Remote()) + 1;
  ASSERT_TRUE(Dispatch().ok());
  absl::Status joined = Join();
  EXPECT_EQ(joined.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(joined.message()).find("node went away"), std::string::npos) << joined;
  torch::Tensor s = torch::randn({4}).to(Remote()) * 3;
  try {
    (void)s.to(torch::kCPU);
    FAIL() << "reading through a failing executor should raise";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("gated test executor"), std::string::npos)
        << e.what_without_backtrace();
  }
  SetExecutor(std::make_shared<runtime::Interpreter>());
}

// Wraps the interpreter like a remote node that accepts dispatched graphs without waiting
// (core::Executor::AcceptsWithoutWaiting): records the threads it runs on and what Join
// asks it to drain.
class AcceptingExecutor final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    threads.push_back(std::this_thread::get_id());
    return inner.Execute(request);
  }
  std::string Describe() const override { return "accepting test executor"; }
  bool AcceptsWithoutWaiting() const override { return accepts; }
  absl::Status Drain() override {  // an error is reported once, as a node's would be
    ++drains;
    return std::exchange(drain_error, absl::OkStatus());
  }
  runtime::Interpreter inner;
  std::vector<std::thread::id> threads;
  bool accepts = true;
  int drains = 0;
  absl::Status drain_error;
};

TEST_F(RemoteDeviceTest, DispatchRunsOnTheCallingThreadForAnExecutorThatDoesNotWait) {
  for (bool accepts : {true, false}) {
    auto exec = std::make_shared<AcceptingExecutor>();
    exec->accepts = accepts;
    SetExecutor(exec);
    torch::Tensor x = torch::randn({8, 8});
    torch::Tensor r = torch::matmul(x.to(Remote()), x.to(Remote()));
    ASSERT_TRUE(Dispatch().ok());
    ASSERT_TRUE(Join().ok());
    ASSERT_EQ(exec->threads.size(), 1u);
    // Dispatched here only when the executor returns without waiting for the node.
    EXPECT_EQ(exec->threads[0] == std::this_thread::get_id(), accepts);
    EXPECT_LE(MaxAbsDiff((r + 1).to(torch::kCPU), torch::matmul(x, x) + 1), 1e-5);
    // Join also waits for what the executor accepted without waiting, and reports its error.
    EXPECT_GE(exec->drains, 1);
    exec->drain_error = absl::InternalError("a run dispatched earlier failed (test)");
    absl::Status joined = Join();
    EXPECT_TRUE(absl::IsInternal(joined)) << joined;
    SetExecutor(std::make_shared<runtime::Interpreter>());
  }
}

}  // namespace
}  // namespace genie::frontend
