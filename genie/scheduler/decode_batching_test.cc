// File: genie/scheduler/decode_batching_test.cc
// The rules of BatchDecodeStreams on small hand-built decode graphs (no libtorch): what is
// batched, how each stream reads its rows of a batched result, and every refusal. The
// numbers (each stream equal to its lone run) are checked on GPT-2 in
// tests/scheduler/decode_batching_test.cc.
#include "genie/scheduler/decode_batching.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "genie/core/testing/graph_builder.h"

namespace genie::scheduler {
namespace {

using core::Arg;
using core::BufferId;
using core::BufferKind;
using core::NodeId;
using core::TensorRef;
using core::testing::GraphBuilder;
using core::testing::Mat;
using semantic::PatternKind;

TensorRef View3(BufferId b, int64_t a, int64_t c, int64_t d) {
  return TensorRef::Contiguous(b, core::DType::kFloat32, {a, c, d});
}

// How a toy stream appends to its cache.
enum class Append {
  kIndexCopy,           // cache.index_copy_(0, pos, h)
  kIndexPut,            // cache[:, pos] = h: index_put_(cache, {None, pos}, h, false)
  kIndexPutAccumulate,  // cache[:, pos] += h: index_put_(cache, {None, pos}, h, true)
  kCopyFromCache,       // cache[1] = cache[0]: copy_ whose source reads the cache
  kIndexAdd,            // cache.index_add_(0, pos, h): adds again when run again
};

// Streams of a toy decode step: h = x @ W; cache[pos] = h (KV-cache append);
// y = attention(h as a query of length 1, cache, cache). Semantics are written by hand.
struct ToyDecode {
  GraphBuilder b;
  semantic::GraphSemantics s;
  BufferId w = 0;
  std::vector<BufferId> caches, results;

  explicit ToyDecode(int streams, bool shared_weight = true, int append_dim_of_stream_1 = 0,
                     Append how = Append::kIndexCopy) {
    w = b.Buffer(16, BufferKind::kResident, "fc.weight", 1);
    const BufferId other_w =
        shared_weight ? w : b.Buffer(16, BufferKind::kResident, "fc2.weight", 2);
    for (int i = 0; i < streams; ++i) {
      const BufferId x = b.Buffer(4, BufferKind::kHostInput, "", 100 + i);
      const BufferId pos = b.Buffer(1, BufferKind::kHostInput, "", 200 + i, core::DType::kInt64);
      const BufferId cache = b.Buffer(32, BufferKind::kResident, "", 300 + i);
      const BufferId h = b.Buffer(4);
      const BufferId y = b.Buffer(4);
      Op(b.Op("aten::matmul", {View3(x, 1, 1, 4), Mat(i == 1 ? other_w : w, 4, 4)},
              View3(h, 1, 1, 4)),
         PatternKind::kNone);
      const TensorRef pos_ref = TensorRef::Contiguous(pos, core::DType::kInt64, {1});
      if (how == Append::kIndexCopy || how == Append::kIndexAdd) {
        std::vector<Arg> append = {Arg::Tensor(Mat(cache, 8, 4)),
                                   Arg::Int(i == 1 ? append_dim_of_stream_1 : 0),
                                   Arg::Tensor(pos_ref), Arg::Tensor(Mat(h, 1, 4))};
        Op(b.Op(how == Append::kIndexAdd ? "aten::index_add_" : "aten::index_copy_",
                std::move(append), {Mat(cache, 8, 4)}, nullptr, {cache}),
           PatternKind::kKvCacheAppend);
      } else if (how == Append::kCopyFromCache) {
        TensorRef row1 = Mat(cache, 1, 4);
        row1.storage_offset = 4;
        Op(b.Op("aten::copy_", {Arg::Tensor(row1), Arg::Tensor(Mat(cache, 1, 4))}, {row1}, nullptr,
                {cache}),
           PatternKind::kKvCacheAppend);
      } else {
        // The None entry is a view of no buffer, as capture stores it.
        std::vector<Arg> append = {Arg::Tensor(View3(cache, 1, 8, 4)),
                                   Arg::OptionalTensorList({TensorRef{}, pos_ref}, {0, 1}),
                                   Arg::Tensor(View3(h, 1, 1, 4)),
                                   Arg::Bool(how == Append::kIndexPutAccumulate)};
        Op(b.Op("aten::index_put_", std::move(append), {View3(cache, 1, 8, 4)}, nullptr, {cache}),
           PatternKind::kKvCacheAppend);
      }
      Op(b.Op("aten::scaled_dot_product_attention",
              {View3(h, 1, 1, 4), View3(cache, 1, 8, 4), View3(cache, 1, 8, 4)}, View3(y, 1, 1, 4)),
         PatternKind::kAttention);
      b.graph().outputs().push_back(View3(y, 1, 1, 4));
      caches.push_back(cache);
      results.push_back(h);
    }
    s.phase_of_graph = semantic::PhaseKind::kDecode;
  }
  void Op(NodeId id, PatternKind p) {
    s.pattern.resize(id + 1, PatternKind::kNone);
    s.phase.resize(id + 1, semantic::PhaseKind::kDecode);
    s.pattern[id] = p;
  }
  int Count(const core::Graph& g, const std::string& op) const {
    int n = 0;
    for (const core::Node& node : g.nodes()) n += g.OpName(node.op) == op;
    return n;
  }
};

TEST(BatchDecodeStreamsTest, StacksTheStreamsRowsAndSlicesTheResult) {
  ToyDecode t(3);
  ASSERT_TRUE(t.b.graph().Validate().ok());
  absl::StatusOr<BatchedDecode> out = BatchDecodeStreams(t.b.graph(), {}, t.s);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->streams, 3);
  EXPECT_EQ(out->batched_ops, 1);
  EXPECT_EQ(out->ops_per_stream, 3);
  const core::Graph& g = out->graph;
  EXPECT_TRUE(g.Validate().ok());
  EXPECT_EQ(t.Count(g, "aten::matmul"), 1);
  EXPECT_EQ(t.Count(g, "aten::cat"), 1);
  EXPECT_EQ(t.Count(g, "aten::index_copy_"), 3);
  // The cat stacks the three [1, 1, 4] rows along dim 0; the matmul makes [3, 1, 4].
  const core::Node& cat = g.node(0);
  ASSERT_EQ(g.OpName(cat.op), "aten::cat");
  ASSERT_EQ(cat.args[0].tensors.size(), 3u);
  EXPECT_EQ(cat.outputs[0].sizes, (core::Dims{3, 1, 4}));
  const core::Node& mm = g.node(1);
  EXPECT_EQ(mm.args[0].tensors[0].buffer, cat.outputs[0].buffer);
  EXPECT_EQ(g.buffer(mm.args[1].tensors[0].buffer).name, "fc.weight");
  EXPECT_EQ(mm.outputs[0].sizes, (core::Dims{3, 1, 4}));
  // Stream i's append reads its rows: the batched buffer at offset 4 i.
  for (int i = 0; i < 3; ++i) {
    const core::Node& append = g.node(2 + i);
    ASSERT_EQ(g.OpName(append.op), "aten::index_copy_");
    EXPECT_EQ(append.args[3].tensors[0].buffer, mm.outputs[0].buffer);
    EXPECT_EQ(append.args[3].tensors[0].storage_offset, 4 * i);
    EXPECT_EQ(g.buffer(append.writes[0]).handle, 300u + i);  // its own cache
  }
  // The per-stream results are gone (slices now); everything else kept its identity.
  for (BufferId h : t.results) EXPECT_EQ(out->new_of_old[h], core::kNoBuffer);
  EXPECT_EQ(g.buffer(out->new_of_old[t.w]).handle, 1u);
  EXPECT_EQ(g.outputs().size(), 3u);
}

TEST(BatchDecodeStreamsTest, KeptResultIsCopiedOutOfTheBatch) {
  ToyDecode t(2);
  const std::vector<BufferId> keep = {t.caches[0], t.caches[1], t.results[1]};
  absl::StatusOr<BatchedDecode> out = BatchDecodeStreams(t.b.graph(), keep, t.s);
  ASSERT_TRUE(out.ok()) << out.status();
  const core::Graph& g = out->graph;
  ASSERT_EQ(out->keep.size(), 3u);
  const BufferId kept = out->new_of_old[t.results[1]];
  ASSERT_NE(kept, core::kNoBuffer);
  EXPECT_EQ(out->keep[2], kept);
  const core::Node& last = g.nodes().back();
  EXPECT_EQ(g.OpName(last.op), "aten::clone");
  EXPECT_EQ(last.outputs[0].buffer, kept);
  EXPECT_EQ(last.args[0].tensors[0].storage_offset, 4);  // stream 1's rows
  EXPECT_EQ(g.buffer(kept).producer, last.id);
}

// An index_put_ append whose indices hold None (cache[:, pos] = h) batches; the None
// entry stays a view of no buffer and the present one reads the stream's own position.
TEST(BatchDecodeStreamsTest, IndexPutAppendWithNoneIndexIsBatched) {
  ToyDecode t(2, /*shared_weight=*/true, /*append_dim_of_stream_1=*/0, Append::kIndexPut);
  ASSERT_TRUE(t.b.graph().Validate().ok());
  absl::StatusOr<BatchedDecode> out = BatchDecodeStreams(t.b.graph(), {}, t.s);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->streams, 2);
  EXPECT_EQ(out->batched_ops, 1);
  const core::Graph& g = out->graph;
  ASSERT_EQ(t.Count(g, "aten::index_put_"), 2);
  int i = 0;
  for (const core::Node& node : g.nodes()) {
    if (g.OpName(node.op) != "aten::index_put_") continue;
    const Arg& indices = node.args[1];
    ASSERT_EQ(indices.kind, core::ArgKind::kOptionalTensorList);
    ASSERT_EQ(indices.present, (std::vector<uint8_t>{0, 1}));
    EXPECT_EQ(indices.tensors[0].buffer, core::kNoBuffer);            // None, untouched
    EXPECT_EQ(g.buffer(indices.tensors[1].buffer).handle, 200u + i);  // its own position
    EXPECT_EQ(g.buffer(node.writes[0]).handle, 300u + i);             // its own cache
    EXPECT_EQ(node.args[2].tensors[0].storage_offset, 4 * i);         // its rows of the batch
    ++i;
  }
}

TEST(BatchDecodeStreamsTest, RefusesWhatItDoesNotUnderstand) {
  auto refusal = [](ToyDecode& t, std::vector<BufferId> keep = {}) {
    absl::StatusOr<BatchedDecode> out = BatchDecodeStreams(t.b.graph(), keep, t.s);
    EXPECT_FALSE(out.ok());
    if (!out.ok()) {
      EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
    }
    return out.ok() ? std::string() : std::string(out.status().message());
  };
  {
    ToyDecode t(2);
    t.s.phase_of_graph = semantic::PhaseKind::kPrefill;
    EXPECT_NE(refusal(t).find("not an LLM decode step (phase prefill)"), std::string::npos);
  }
  {
    ToyDecode t(1);
    EXPECT_NE(refusal(t).find("one decode stream"), std::string::npos);
  }
  {
    ToyDecode t(2, /*shared_weight=*/false);  // stream 1 multiplies by another matrix
    EXPECT_NE(refusal(t).find("no weight matmul shared by the streams"), std::string::npos);
  }
  {
    ToyDecode t(2, /*shared_weight=*/true, /*append_dim_of_stream_1=*/1);  // not the same step
    EXPECT_NE(refusal(t).find("stream 1 differs from stream 0 at its op 1"), std::string::npos);
  }
  {
    ToyDecode t(2);  // no attention recognised: not a decode stream
    for (PatternKind& p : t.s.pattern) p = p == PatternKind::kAttention ? PatternKind::kNone : p;
    EXPECT_NE(refusal(t).find("has no decode attention"), std::string::npos);
  }
  {
    ToyDecode t(2);  // a resident write that is not a KV-cache append: a rerun would differ
    for (PatternKind& p : t.s.pattern)
      p = p == PatternKind::kKvCacheAppend ? PatternKind::kNone : p;
    EXPECT_NE(refusal(t).find("is not a KV-cache append"), std::string::npos);
  }
  {
    // KV-cache appends that a retry of a failed batched run would not rewrite the same.
    ToyDecode t(2, true, 0, Append::kIndexPutAccumulate);
    EXPECT_NE(refusal(t).find("accumulates (accumulate=True)"), std::string::npos);
  }
  {
    ToyDecode t(2, true, 0, Append::kCopyFromCache);
    const std::string why = refusal(t);
    EXPECT_NE(why.find("which it writes, in its argument 1"), std::string::npos) << why;
  }
  {
    ToyDecode t(2, true, 0, Append::kIndexAdd);  // labelled a KV-cache append, not a repeatable one
    EXPECT_NE(refusal(t).find("is not an index_copy_, index_put_ or copy_"), std::string::npos);
  }
  {
    // The weight is written in the graph: not a weight, so nothing to batch.
    ToyDecode t(2);
    core::Graph& g = t.b.graph();
    const BufferId src = t.b.Buffer(16, BufferKind::kHostInput, "", 9);
    core::Node copy;
    copy.op = g.InternOp("aten::copy_");
    copy.args = {Arg::Tensor(Mat(t.w, 4, 4)), Arg::Tensor(Mat(src, 4, 4))};
    copy.outputs = {Mat(t.w, 4, 4)};
    copy.writes = {t.w};
    t.Op(g.AddNode(std::move(copy)), PatternKind::kKvCacheAppend);
    EXPECT_FALSE(refusal(t).empty());
  }
}

TEST(BatchDecodeStreamsTest, OneDimensionalActivationIsNotStacked) {
  // x [4] @ W [4, 4] is a vector product: stacking rows would change its meaning.
  GraphBuilder b;
  semantic::GraphSemantics s;
  s.phase_of_graph = semantic::PhaseKind::kDecode;
  const BufferId w = b.Buffer(16, BufferKind::kResident, "fc.weight", 1);
  for (int i = 0; i < 2; ++i) {
    const BufferId x = b.Buffer(4, BufferKind::kHostInput, "", 10 + i);
    const BufferId cache = b.Buffer(32, BufferKind::kResident, "", 20 + i);
    const BufferId h = b.Buffer(4), y = b.Buffer(4);
    b.Op("aten::matmul", {TensorRef::Contiguous(x, core::DType::kFloat32, {4}), Mat(w, 4, 4)},
         TensorRef::Contiguous(h, core::DType::kFloat32, {4}));
    std::vector<Arg> append = {Arg::Tensor(Mat(cache, 8, 4)), Arg::Int(0),
                               Arg::Tensor(Mat(h, 1, 4))};
    b.Op("aten::index_copy_", std::move(append), {Mat(cache, 8, 4)}, nullptr, {cache});
    b.Op("aten::scaled_dot_product_attention",
         {View3(h, 1, 1, 4), View3(cache, 1, 8, 4), View3(cache, 1, 8, 4)}, View3(y, 1, 1, 4));
    b.graph().outputs().push_back(View3(y, 1, 1, 4));
    s.pattern.insert(s.pattern.end(),
                     {PatternKind::kNone, PatternKind::kKvCacheAppend, PatternKind::kAttention});
  }
  absl::StatusOr<BatchedDecode> out = BatchDecodeStreams(b.graph(), {}, s);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("no weight matmul"), std::string::npos) << out.status();
}

// Runs requests for the batcher tests: records which graphs ran, and fails batched ones
// (any graph but `captured`) and captured ones when told to.
struct FakeRun {
  const core::Graph* captured = nullptr;
  absl::Status batched_error;   // returned for a batched graph unless ok
  absl::Status captured_error;  // returned for the captured graph unless ok
  std::vector<const core::Graph*> seen;

  absl::StatusOr<core::ExecuteResult> operator()(const core::ExecuteRequest& r,
                                                 const semantic::GraphSemantics&) {
    seen.push_back(r.graph);
    if (r.graph != captured && !batched_error.ok()) return batched_error;
    if (r.graph == captured && !captured_error.ok()) return captured_error;
    core::ExecuteResult result;
    result.outputs.resize(r.graph->outputs().size());
    return result;
  }
  // Whether the last Execute ran its graph as captured only (no batched attempt).
  bool RanCapturedOnly() const { return seen.size() == 1 && seen[0] == captured; }
};

core::ExecuteRequest RequestFor(ToyDecode& t, uint64_t fingerprint,
                                std::vector<BufferId> keep = {}) {
  core::ExecuteRequest request;
  request.graph = &t.b.graph();
  request.fingerprint = fingerprint;
  request.keep = std::move(keep);
  return request;
}

// The batcher: non-decode graphs pass through; a batched run that fails runs again as
// captured and its answer is what Execute returns; after a failure that is the batched
// graph's (not transient), that fingerprint runs as captured without trying the batched
// graph again (the refusal says why).
TEST(DecodeBatcherTest, PassesOtherGraphsAndFallsBackOnFailure) {
  ToyDecode t(2);
  DecodeBatcher batcher;
  const core::ExecuteRequest request = RequestFor(t, 77);
  FakeRun fake{&t.b.graph(), absl::InternalError("kernel failed")};
  absl::StatusOr<core::ExecuteResult> r = batcher.Execute(request, t.s, std::ref(fake));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(fake.seen.size(), 2u);
  EXPECT_NE(fake.seen[0], &t.b.graph());  // the batched graph first
  EXPECT_EQ(fake.seen[1], &t.b.graph());  // then as captured
  DecodeBatchingStats stats = batcher.stats();
  EXPECT_EQ(stats.fallbacks, 1);
  EXPECT_EQ(stats.batched_runs, 0);
  EXPECT_EQ(stats.last_fallback, "kernel failed");

  // The next step of that program is not attempted batched.
  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(request, t.s, std::ref(fake)).ok());
  EXPECT_TRUE(fake.RanCapturedOnly());
  stats = batcher.stats();
  EXPECT_EQ(stats.fallbacks, 1);
  EXPECT_EQ(stats.not_batched, 1);
  EXPECT_EQ(stats.last_refusal,
            "a batched run of 2 streams failed where the unbatched run of the same graph ran: "
            "kernel failed");

  // Another program whose batched run succeeds.
  fake.batched_error = absl::OkStatus();
  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(RequestFor(t, 78), t.s, std::ref(fake)).ok());
  ASSERT_EQ(fake.seen.size(), 1u);
  EXPECT_NE(fake.seen[0], &t.b.graph());
  stats = batcher.stats();
  EXPECT_EQ(stats.batched_runs, 1);
  EXPECT_EQ(stats.batch_sizes, (std::map<int, int64_t>{{2, 1}}));

  semantic::GraphSemantics prefill = t.s;
  prefill.phase_of_graph = semantic::PhaseKind::kPrefill;
  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(request, prefill, std::ref(fake)).ok());
  EXPECT_TRUE(fake.RanCapturedOnly());
  EXPECT_EQ(batcher.stats().other_graphs, 1);
  EXPECT_NE(batcher.stats().ToString().find("1 of 3 decode steps batched (2 streams x1)"),
            std::string::npos)
      << batcher.stats().ToString();
}

// A batched run that fails in a way a retry can outlive (a lost connection) is tried again
// on the next step; a success resets the count; only kMaxTransientFailures (3) of those in
// a row make the fingerprint run as captured for good.
TEST(DecodeBatcherTest, TransientFailuresAreForgivenUntilTheyRepeat) {
  ToyDecode t(2);
  DecodeBatcher batcher;
  const core::ExecuteRequest request = RequestFor(t, 77);
  FakeRun fake{&t.b.graph(), absl::UnavailableError("node lost")};
  const auto step = [&] {
    fake.seen.clear();
    EXPECT_TRUE(batcher.Execute(request, t.s, std::ref(fake)).ok());
    return fake.seen.size();  // 2: batched, failed, then as captured; 1: one of the two
  };
  EXPECT_EQ(step(), 2u);
  EXPECT_EQ(step(), 2u);  // tried batched again
  fake.batched_error = absl::OkStatus();
  EXPECT_EQ(step(), 1u);  // ran batched: the count starts over
  EXPECT_EQ(batcher.stats().batched_runs, 1);
  fake.batched_error = absl::DeadlineExceededError("node late");
  EXPECT_EQ(step(), 2u);
  EXPECT_EQ(step(), 2u);
  EXPECT_EQ(step(), 2u);  // the third in a row: refused from now on
  EXPECT_EQ(step(), 1u);
  EXPECT_TRUE(fake.RanCapturedOnly());
  const DecodeBatchingStats stats = batcher.stats();
  EXPECT_EQ(stats.fallbacks, 5);
  EXPECT_EQ(stats.not_batched, 1);
  EXPECT_EQ(stats.last_refusal,
            "a batched run of 2 streams failed where the unbatched run of the same graph ran, "
            "3 times in a row: node late");
}

// When the captured run fails too, its error says that a batched run failed first, and
// the program is still batched next time (the failure was not the batched graph's).
TEST(DecodeBatcherTest, FailedRetryKeepsTheBatchedFailure) {
  ToyDecode t(2);
  DecodeBatcher batcher;
  const core::ExecuteRequest request = RequestFor(t, 77);
  FakeRun fake{&t.b.graph(), absl::UnavailableError("batched lost"),
               absl::InvalidArgumentError("token 50262")};
  absl::StatusOr<core::ExecuteResult> r = batcher.Execute(request, t.s, std::ref(fake));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(),
            "token 50262; after a batched run of 2 streams failed: batched lost");
  EXPECT_EQ(fake.seen.size(), 2u);

  fake.batched_error = fake.captured_error = absl::OkStatus();
  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(request, t.s, std::ref(fake)).ok());
  ASSERT_EQ(fake.seen.size(), 1u);
  EXPECT_NE(fake.seen[0], &t.b.graph());
  EXPECT_EQ(batcher.stats().batched_runs, 1);
}

// A plan is used only for the keep it was made for; a plan of another graph under the
// same fingerprint is dropped (the request runs as captured, the next one is batched).
TEST(DecodeBatcherTest, PlanOfAnotherKeepOrGraphRunsAsCaptured) {
  ToyDecode t(2);
  DecodeBatcher batcher;
  FakeRun fake{&t.b.graph()};
  ASSERT_TRUE(batcher.Execute(RequestFor(t, 77), t.s, std::ref(fake)).ok());
  EXPECT_EQ(batcher.stats().batched_runs, 1);

  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(RequestFor(t, 77, {t.results[1]}), t.s, std::ref(fake)).ok());
  EXPECT_TRUE(fake.RanCapturedOnly());
  DecodeBatchingStats stats = batcher.stats();
  EXPECT_EQ(stats.not_batched, 1);
  EXPECT_NE(stats.last_refusal.find("made for another keep"), std::string::npos)
      << stats.last_refusal;

  ToyDecode other(3);
  fake.captured = &other.b.graph();
  fake.seen.clear();
  absl::StatusOr<core::ExecuteResult> r =
      batcher.Execute(RequestFor(other, 77), other.s, std::ref(fake));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(fake.RanCapturedOnly());
  stats = batcher.stats();
  EXPECT_EQ(stats.not_batched, 2);
  EXPECT_NE(stats.last_refusal.find("fingerprint collision"), std::string::npos)
      << stats.last_refusal;

  fake.seen.clear();
  ASSERT_TRUE(batcher.Execute(RequestFor(other, 77), other.s, std::ref(fake)).ok());
  ASSERT_EQ(fake.seen.size(), 1u);
  EXPECT_NE(fake.seen[0], &other.b.graph());  // a plan of its own, batched
  EXPECT_EQ(batcher.stats().batch_sizes, (std::map<int, int64_t>{{2, 1}, {3, 1}}));
}

}  // namespace
}  // namespace genie::scheduler
