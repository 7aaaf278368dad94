// File: genie/core/graph_test.cc
// The graph IR: views, listing, checks, dependencies with in-place ops, liveness and
// dead-code elimination, fingerprints, and the binary form against hostile input.
#include "genie/core/graph.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "genie/core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace genie::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TensorRef F32(BufferId b, std::initializer_list<int64_t> sizes) {
  return TensorRef::Contiguous(b, DType::kFloat32, sizes);
}

TensorRef Strided(BufferId b, std::initializer_list<int64_t> sizes,
                  std::initializer_list<int64_t> strides, int64_t offset = 0) {
  TensorRef t;
  t.buffer = b;
  t.dtype = DType::kFloat32;
  t.sizes.assign(sizes.begin(), sizes.end());
  t.strides.assign(strides.begin(), strides.end());
  t.storage_offset = offset;
  return t;
}

Buffer MakeBuffer(int64_t numel, BufferKind kind = BufferKind::kIntermediate, std::string name = "",
                  uint64_t handle = 0, DType dtype = DType::kFloat32) {
  Buffer b;
  b.dtype = dtype;
  b.numel = numel;
  b.kind = kind;
  b.name = std::move(name);
  b.handle = handle;
  return b;
}

// Appends `op` reading `args`, writing `writes` in place, producing `outputs`.
NodeId AddOp(Graph& g, std::string_view op, std::vector<Arg> args, std::vector<TensorRef> outputs,
             std::vector<BufferId> writes = {}, std::string_view scope = "") {
  Node n;
  n.op = g.InternOp(op);
  n.args = std::move(args);
  n.outputs = std::move(outputs);
  n.writes = std::move(writes);
  n.scope = g.InternScope(scope);
  return g.AddNode(std::move(n));
}

// The graph whose listing DumpIsExact pins down.
Graph SmallGraph(std::string_view mm = "aten::mm", std::string_view fc_scope = "encoder.fc1") {
  Graph g;
  BufferId x = g.AddBuffer(MakeBuffer(16, BufferKind::kHostInput, "", 0x2a));
  BufferId w = g.AddBuffer(MakeBuffer(64, BufferKind::kParameter, "encoder.fc1.weight", 7));
  BufferId y = g.AddBuffer(MakeBuffer(16));
  BufferId s = g.AddBuffer(MakeBuffer(1));
  BufferId c = g.AddBuffer(MakeBuffer(32));
  AddOp(g, mm, {Arg::Tensor(F32(x, {2, 8})), Arg::Tensor(Strided(w, {8, 8}, {1, 8}))},
        {F32(y, {2, 8})}, {}, fc_scope);
  AddOp(g, "aten::add_.Scalar", {Arg::Tensor(F32(y, {2, 8})), Arg::Double(0.1), Arg::Int(1)},
        {F32(y, {2, 8})}, {y}, fc_scope);
  AddOp(g, "aten::sum.dim_IntList",
        {Arg::Tensor(Strided(y, {8}, {1}, 8)), Arg::IntList({0}), Arg::Bool(false), Arg::None()},
        {F32(s, {})});
  AddOp(g, "aten::cat", {Arg::TensorList({F32(y, {2, 8}), F32(x, {2, 8})}), Arg::Int(0)},
        {F32(c, {4, 8})}, {}, "decoder");
  g.outputs() = {F32(s, {}), F32(c, {4, 8})};
  return g;
}

// Every argument kind, every buffer kind, odd doubles and strings.
Graph RichGraph() {
  Graph g = SmallGraph();
  BufferId kv = g.AddBuffer(MakeBuffer(128, BufferKind::kResident, "", 0xfeedULL));
  BufferId idx = g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput, "ids", 3, DType::kInt64));
  BufferId out = g.AddBuffer(MakeBuffer(8, BufferKind::kIntermediate, "", 0, DType::kBFloat16));
  TensorRef idx_ref = TensorRef::Contiguous(idx, DType::kInt64, {4});
  AddOp(g, "aten::index_put_",
        {Arg::Tensor(F32(kv, {4, 32})), Arg::OptionalTensorList({idx_ref, TensorRef()}, {1, 0}),
         Arg::Tensor(Strided(kv, {4, 32}, {32, 1}, 0)), Arg::Bool(true)},
        {F32(kv, {4, 32})}, {kv}, "decoder.layers.0.attn");
  AddOp(g, "genie::everything",
        {Arg::None(), Arg::Int(-5), Arg::Double(-0.0),
         Arg::Double(std::numeric_limits<double>::quiet_NaN()), Arg::String("tab\there \"q\""),
         Arg::DoubleList({0.5, 1e-300, std::numeric_limits<double>::infinity()}),
         Arg::BoolList({1, 0, 1}), Arg::Device(kRemoteDeviceType, 0), Arg::Device(0, -1),
         Arg::Complex(1.0, -2.5), Arg::Tensor(F32(kv, {2}))},
        {TensorRef::Contiguous(out, DType::kBFloat16, {2, 4})}, {}, "decoder");
  g.outputs().push_back(TensorRef::Contiguous(out, DType::kBFloat16, {8}));
  return g;
}

// ---- Views and dtypes ---------------------------------------------------------------

TEST(DTypeTest, SizesNamesAndCodes) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kComplexDouble), 16u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  EXPECT_STREQ(DTypeName(DType::kFloat32), "f32");
  EXPECT_STREQ(DTypeName(DType::kInt64), "i64");
  EXPECT_STREQ(DTypeName(DType::kBFloat16), "bf16");
  EXPECT_TRUE(IsKnownDType(11));
  EXPECT_TRUE(IsKnownDType(15));
  EXPECT_FALSE(IsKnownDType(12));
  EXPECT_FALSE(IsKnownDType(255));
}

TEST(TensorRefTest, ContiguousGeometry) {
  TensorRef t = F32(3, {2, 3, 4});
  EXPECT_THAT(t.strides, ElementsAre(12, 4, 1));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.required_storage_numel(), 24);
  EXPECT_THAT(ContiguousStrides({0, 5}), ElementsAre(5, 1));
  EXPECT_EQ(F32(0, {}).numel(), 1);
  EXPECT_EQ(F32(0, {}).required_storage_numel(), 1);
}

TEST(TensorRefTest, StridedAndOffsetViews) {
  TensorRef transposed = Strided(0, {3, 2}, {1, 3});
  EXPECT_FALSE(transposed.is_contiguous());
  EXPECT_EQ(transposed.required_storage_numel(), 6);
  TensorRef sliced = Strided(0, {2}, {1}, 5);
  EXPECT_TRUE(sliced.is_contiguous());  // contiguity ignores the offset
  EXPECT_EQ(sliced.required_storage_numel(), 7);
  EXPECT_TRUE(Strided(0, {1, 4}, {99, 1}).is_contiguous());  // size-1 dims ignore strides
  EXPECT_EQ(Strided(0, {0, 4}, {4, 1}, 9).required_storage_numel(), 0);
  TensorRef expanded = Strided(0, {4, 3}, {0, 1});  // broadcast
  EXPECT_EQ(expanded.required_storage_numel(), 3);
  EXPECT_NE(transposed, Strided(0, {3, 2}, {1, 3}, 1));
  EXPECT_EQ(transposed, Strided(0, {3, 2}, {1, 3}));
}

TEST(ArgTest, FactoriesAndEquality) {
  EXPECT_EQ(Arg::Int(3), Arg::Int(3));
  EXPECT_NE(Arg::Int(3), Arg::Int(4));
  EXPECT_NE(Arg::Int(1), Arg::Bool(true));                          // same payload, different kind
  EXPECT_EQ(Arg::Double(std::nan("")), Arg::Double(std::nan("")));  // bitwise
  EXPECT_NE(Arg::Double(0.0), Arg::Double(-0.0));
  EXPECT_EQ(Arg::Device(kRemoteDeviceType, 1).ints, (std::vector<int64_t>{20, 1}));
  EXPECT_EQ(Arg::Complex(1, 2).doubles, (std::vector<double>{1, 2}));
  Arg stray = Arg::Int(5);
  stray.doubles = {9.0};  // not part of a kInt: ignored
  EXPECT_EQ(stray, Arg::Int(5));
  EXPECT_NE(Arg::OptionalTensorList({F32(0, {1})}, {1}),
            Arg::OptionalTensorList({F32(0, {1})}, {0}));
  EXPECT_EQ(Arg::Tensor(F32(1, {2})), Arg::Tensor(F32(1, {2})));
  EXPECT_NE(Arg::Tensor(F32(1, {2})), Arg::Tensor(F32(2, {2})));
}

TEST(NodeTest, InputsSkipAbsentOptionalTensors) {
  Node n;
  n.args = {Arg::Tensor(F32(0, {1})), Arg::Int(2),
            Arg::OptionalTensorList({F32(1, {1}), F32(2, {1}), F32(3, {1})}, {1, 0, 1}),
            Arg::TensorList({F32(4, {1})})};
  std::vector<BufferId> ids;
  for (const TensorRef* t : n.Inputs()) ids.push_back(t->buffer);
  EXPECT_THAT(ids, ElementsAre(0, 1, 3, 4));
}

// ---- Graph --------------------------------------------------------------------------

TEST(GraphTest, InternsOpsAndScopes) {
  Graph g;
  EXPECT_EQ(g.num_scopes(), 1u);
  EXPECT_EQ(g.ScopeName(0), "");
  EXPECT_EQ(g.InternScope(""), 0u);
  EXPECT_EQ(g.InternScope("a.b"), 1u);
  EXPECT_EQ(g.InternScope("a.b"), 1u);
  EXPECT_EQ(g.InternOp("aten::mm"), 0u);
  EXPECT_EQ(g.InternOp("aten::add.Tensor"), 1u);
  EXPECT_EQ(g.InternOp("aten::mm"), 0u);
  EXPECT_EQ(g.OpName(1), "aten::add.Tensor");
  EXPECT_EQ(g.num_ops(), 2u);
}

TEST(GraphTest, AddNodeSetsIdsAndFirstProducer) {
  Graph g = SmallGraph();
  EXPECT_EQ(g.buffer(2).id, 2u);
  EXPECT_EQ(g.node(1).id, 1u);
  EXPECT_EQ(g.buffer(2).producer, 0u);  // %1 (add_) outputs b2 too, but %0 made it
  EXPECT_EQ(g.buffer(0).producer, kNoNode);
  EXPECT_EQ(g.buffer(4).producer, 3u);
  EXPECT_EQ(g.buffer(1).nbytes(), 256);
  EXPECT_TRUE(g.Validate().ok()) << g.Validate();
}


TEST(GraphTest, CopiesShareNodesUntilOneChanges) {
  const Graph original = SmallGraph();
  const std::string before = original.Dump();
  Graph copy = original;
  EXPECT_EQ(&copy.nodes(), &original.nodes());  // shared, not copied
  copy.mutable_buffer(0).handle = 0x99;         // buffers are the copy's own
  BufferId extra = copy.AddBuffer(MakeBuffer(16));
  AddOp(copy, "aten::relu", {Arg::Tensor(F32(2, {2, 8}))}, {F32(extra, {2, 8})}, {}, "new.scope");
  EXPECT_NE(&copy.nodes(), &original.nodes());
  EXPECT_EQ(copy.nodes().size(), original.nodes().size() + 1);
  EXPECT_EQ(copy.OpName(copy.nodes().back().op), "aten::relu");
  EXPECT_EQ(original.Dump(), before);  // neither nodes, names nor handles changed
  EXPECT_EQ(original.buffer(0).handle, 0x2au);
  EXPECT_EQ(original.num_ops() + 1, copy.num_ops());
  EXPECT_TRUE(copy.Validate().ok()) << copy.Validate();
}

TEST(GraphTest, PrefixKeepsLeadingNodesAndBuffers) {
  const Graph g = SmallGraph();
  Graph p = g.Prefix(/*num_nodes=*/2, /*num_buffers=*/3);
  ASSERT_EQ(p.nodes().size(), 2u);
  ASSERT_EQ(p.buffers().size(), 3u);
  for (NodeId n = 0; n < 2; ++n) EXPECT_EQ(p.DumpNode(n), g.DumpNode(n));
  for (BufferId b = 0; b < 3; ++b) EXPECT_EQ(p.DumpBuffer(b), g.DumpBuffer(b));
  EXPECT_EQ(g.Prefix(2, 4).buffer(3).producer, kNoNode);  // made by %2, not in the prefix
  EXPECT_EQ(p.num_ops(), 2u);     // mm and add_, not sum and cat
  EXPECT_EQ(p.num_scopes(), 2u);  // "" and encoder.fc1, not decoder
  EXPECT_TRUE(p.outputs().empty());
  EXPECT_TRUE(p.Validate().ok()) << p.Validate();
  // Growing the prefix leaves the graph it came from alone.
  BufferId c = p.AddBuffer(MakeBuffer(32));
  AddOp(p, "aten::cat", {Arg::TensorList({F32(2, {2, 8}), F32(0, {2, 8})}), Arg::Int(0)},
        {F32(c, {4, 8})});
  EXPECT_EQ(g.nodes().size(), 4u);
  EXPECT_EQ(g.Prefix(100, 100).Dump(), [&] {
    Graph all = g;
    all.outputs().clear();
    return all.Dump();
  }());
}
TEST(GraphTest, DumpIsExact) {
  EXPECT_EQ(SmallGraph().Dump(),
            "graph: 5 buffers, 4 nodes, 2 outputs\n"
            "b0: host_input f32[16] handle=0x2a\n"
            "b1: parameter f32[64] \"encoder.fc1.weight\" handle=0x7\n"
            "b2: intermediate f32[16] <- %0\n"
            "b3: intermediate f32[1] <- %2\n"
            "b4: intermediate f32[32] <- %3\n"
            "%0 = aten::mm(b0:f32[2,8], b1:f32[8,8]{strides=[1,8]}) -> b2:f32[2,8]"
            "  @encoder.fc1\n"
            "%1 = aten::add_.Scalar(b2:f32[2,8], 0.1, 1) -> b2:f32[2,8]  writes(b2)"
            "  @encoder.fc1\n"
            "%2 = aten::sum.dim_IntList(b2:f32[8]{offset=8}, [0], false, None) -> b3:f32[]\n"
            "%3 = aten::cat([b2:f32[2,8], b0:f32[2,8]], 0) -> b4:f32[4,8]  @decoder\n"
            "outputs: b3:f32[], b4:f32[4,8]\n");
}

TEST(GraphTest, DumpShowsEveryArgumentKind) {
  Graph g = RichGraph();
  std::string dump = g.Dump();
  EXPECT_THAT(dump, HasSubstr("%4 = aten::index_put_(b5:f32[4,32], [b6:i64[4], None], "
                              "b5:f32[4,32], true) -> b5:f32[4,32]  writes(b5)  "
                              "@decoder.layers.0.attn\n"));
  EXPECT_THAT(dump, HasSubstr("%5 = genie::everything(None, -5, -0.0, nan, "
                              "\"tab\\there \\\"q\\\"\", [0.5,1e-300,inf], [true,false,true], "
                              "device(remote_accelerator:0), device(cpu), complex(1.0, -2.5), "
                              "b5:f32[2]) -> b7:bf16[2,4]  @decoder\n"));
  EXPECT_THAT(dump, HasSubstr("b5: resident f32[128] handle=0xfeed\n"));
  EXPECT_THAT(dump, HasSubstr("b6: host_input i64[4] \"ids\" handle=0x3\n"));
}

TEST(GraphTest, DumpSurvivesBadIds) {
  Graph g;
  Node n;
  n.op = 7;  // never interned
  n.scope = 9;
  n.args = {Arg::Tensor(F32(42, {1}))};
  g.AddNode(std::move(n));
  EXPECT_EQ(g.DumpNode(0), "%0 = ?(b42:f32[1]) -> ()  @?");
  EXPECT_FALSE(g.Validate().ok());
}

TEST(GraphTest, BannerExampleWorks) {
  // The usage example in graph.h's banner, verbatim.
  Graph g;
  BufferId x = g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kHostInput});
  BufferId w = g.AddBuffer(Buffer{DType::kFloat32, 64, BufferKind::kParameter, "fc.weight"});
  BufferId y = g.AddBuffer(Buffer{DType::kFloat32, 16});  // kIntermediate
  Node n;
  n.op = g.InternOp("aten::mm");
  n.args = {Arg::Tensor(TensorRef::Contiguous(x, DType::kFloat32, {2, 8})),
            Arg::Tensor(TensorRef::Contiguous(w, DType::kFloat32, {8, 8}))};
  n.outputs = {TensorRef::Contiguous(y, DType::kFloat32, {2, 8})};
  n.scope = g.InternScope("encoder.fc1");
  NodeId mm = g.AddNode(std::move(n));  // sets g.buffer(y).producer = mm
  g.outputs().push_back(g.node(mm).outputs[0]);
  ASSERT_TRUE(g.Validate().ok());
  EXPECT_EQ(g.Dump(),
            "graph: 3 buffers, 1 nodes, 1 outputs\n"
            "b0: host_input f32[16]\n"
            "b1: parameter f32[64] \"fc.weight\"\n"
            "b2: intermediate f32[16] <- %0\n"
            "%0 = aten::mm(b0:f32[2,8], b1:f32[8,8]) -> b2:f32[2,8]  @encoder.fc1\n"
            "outputs: b2:f32[2,8]\n");
  std::string bytes = Serialize(g);
  absl::StatusOr<Graph> back = Deserialize(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
}

// ---- Validate -----------------------------------------------------------------------

struct BadGraphCase {
  const char* name;
  std::function<void(Graph&)> break_it;
  const char* expected;
};

TEST(ValidateTest, CatchesBadIdsAndInconsistencies) {
  std::vector<BadGraphCase> cases = {
      {"input names a missing buffer",
       [](Graph& g) { AddOp(g, "aten::neg", {Arg::Tensor(F32(99, {1}))}, {}); },
       "names buffer b99 but the graph has 5 buffers"},
      {"output names a missing buffer",
       [](Graph& g) { AddOp(g, "aten::neg", {Arg::Tensor(F32(0, {1}))}, {F32(77, {1})}); },
       "output 0 names buffer b77"},
      {"graph output names a missing buffer", [](Graph& g) { g.outputs().push_back(F32(5, {})); },
       "graph output 2 names buffer b5"},
      {"op id out of range",
       [](Graph& g) {
         Node n;
         n.op = 1000;
         g.AddNode(std::move(n));
       },
       "node %4 has op id 1000 but 4 ops are interned"},
      {"scope id out of range",
       [](Graph& g) {
         Node n;
         n.op = 0;
         n.scope = 50;
         g.AddNode(std::move(n));
       },
       "has scope id 50"},
      {"view reaches past its buffer",
       [](Graph& g) { AddOp(g, "aten::neg", {Arg::Tensor(Strided(0, {4}, {1}, 13))}, {}); },
       "reaches past its buffer b0"},
      {"sizes and strides disagree",
       [](Graph& g) {
         AddOp(g, "aten::neg", {Arg::Tensor(Strided(0, {4, 1}, {1}))}, {});
       },
       "has 2 sizes but 1 strides"},
      {"negative stride",
       [](Graph& g) { AddOp(g, "aten::neg", {Arg::Tensor(Strided(0, {4}, {-1}, 3))}, {}); },
       "negative size or stride"},
      {"overflowing view",
       [](Graph& g) {
         AddOp(g, "aten::neg", {Arg::Tensor(Strided(0, {int64_t{1} << 40, 1 << 30}, {1 << 30, 1}))},
               {});
       },
       "reaches past its buffer"},
      {"write of a buffer the node does not read",
       [](Graph& g) { AddOp(g, "aten::zero_", {Arg::Tensor(F32(0, {16}))}, {}, {1}); },
       "writes b1 which is not one of its tensor arguments"},
      {"intermediate without producer", [](Graph& g) { g.AddBuffer(MakeBuffer(4)); },
       "buffer b5 is an intermediate but no node produces it"},
      {"producer that does not output the buffer",
       [](Graph& g) { g.mutable_buffer(0).producer = 1; },
       "names producer %1 which does not output it"},
      {"producer out of range", [](Graph& g) { g.mutable_buffer(3).producer = 40; },
       "names producer %40 but the graph has 4 nodes"},
      {"read before producer",
       [](Graph& g) {
         BufferId late = g.AddBuffer(MakeBuffer(4));
         AddOp(g, "aten::neg", {Arg::Tensor(F32(late, {4}))}, {F32(2, {4})}, {});
         AddOp(g, "aten::ones", {}, {F32(late, {4})});
       },
       "reads b5 before its producer %5"},
      {"unknown dtype", [](Graph& g) { g.mutable_buffer(0).dtype = static_cast<DType>(13); },
       "unknown dtype code 13"},
      {"bool argument holding 2",
       [](Graph& g) {
         Arg a = Arg::Bool(true);
         a.i = 2;
         AddOp(g, "aten::neg", {a}, {});
       },
       "is a bool holding 2"},
      {"tensor argument without a view",
       [](Graph& g) {
         Arg a = Arg::Tensor(F32(0, {1}));
         a.tensors.clear();
         AddOp(g, "aten::neg", {a}, {});
       },
       "is a Tensor with 0 views"},
      {"optional list with mismatched flags",
       [](Graph& g) { AddOp(g, "aten::index", {Arg::OptionalTensorList({F32(0, {1})}, {})}, {}); },
       "1 views but 0 present flags"},
  };
  for (const BadGraphCase& c : cases) {
    Graph g = SmallGraph();
    ASSERT_TRUE(g.Validate().ok());
    c.break_it(g);
    absl::Status s = g.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(s.message(), HasSubstr(c.expected)) << c.name;
  }
}

TEST(ValidateTest, AllowsDtypeReinterpretingViewsThatFit) {
  Graph g = SmallGraph();
  // b2 is 16 f32 = 64 bytes: 8 f64 fit, 9 do not.
  TensorRef as_f64 = TensorRef::Contiguous(2, DType::kFloat64, {8});
  AddOp(g, "aten::neg", {Arg::Tensor(as_f64)}, {});
  EXPECT_TRUE(g.Validate().ok()) << g.Validate();
  TensorRef too_big = TensorRef::Contiguous(2, DType::kFloat64, {9});
  AddOp(g, "aten::neg", {Arg::Tensor(too_big)}, {});
  EXPECT_FALSE(g.Validate().ok());
}

// ---- Dependencies and order ---------------------------------------------------------

// y = x.add(1); x.add_(2); z = x.mul(3); then w overwritten without being read.
struct InPlaceGraph {
  Graph g;
  BufferId x, y, z;
  NodeId add, add_, mul, refill;
};

InPlaceGraph MakeInPlaceGraph() {
  InPlaceGraph p;
  Graph& g = p.g;
  p.x = g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  p.y = g.AddBuffer(MakeBuffer(4));
  p.z = g.AddBuffer(MakeBuffer(4));
  p.add = AddOp(g, "aten::add.Scalar", {Arg::Tensor(F32(p.x, {4})), Arg::Int(1), Arg::Int(1)},
                {F32(p.y, {4})});
  p.add_ = AddOp(g, "aten::add_.Scalar", {Arg::Tensor(F32(p.x, {4})), Arg::Int(2), Arg::Int(1)},
                 {F32(p.x, {4})}, {p.x});
  p.mul = AddOp(g, "aten::mul.Scalar", {Arg::Tensor(F32(p.x, {4})), Arg::Int(3)}, {F32(p.z, {4})});
  // An op that returns y without reading it (an out= style overwrite): WAW on y.
  p.refill = AddOp(g, "genie::refill", {Arg::Tensor(F32(p.z, {4}))}, {F32(p.y, {4})});
  g.outputs() = {F32(p.y, {4}), F32(p.z, {4})};
  return p;
}

TEST(DependenciesTest, InPlaceOpsGiveRawWarWaw) {
  InPlaceGraph p = MakeInPlaceGraph();
  ASSERT_TRUE(p.g.Validate().ok()) << p.g.Validate();
  EXPECT_EQ(p.g.buffer(p.x).producer, kNoNode);  // add_ returns x but did not create it
  EXPECT_EQ(p.g.buffer(p.y).producer, p.add);    // refill returns y later; add made it
  std::vector<Dependency> deps = Dependencies(p.g);
  auto has = [&](NodeId from, NodeId to, BufferId b, DependencyKind kind) {
    return std::find(deps.begin(), deps.end(), Dependency{from, to, b, kind}) != deps.end();
  };
  EXPECT_TRUE(has(p.add, p.add_, p.x, DependencyKind::kWriteAfterRead));  // add_ after the read
  EXPECT_TRUE(has(p.add_, p.mul, p.x, DependencyKind::kReadAfterWrite));  // mul after the write
  EXPECT_TRUE(has(p.mul, p.refill, p.z, DependencyKind::kReadAfterWrite));
  EXPECT_TRUE(has(p.add, p.refill, p.y, DependencyKind::kWriteAfterWrite));
  EXPECT_FALSE(has(p.add, p.mul, p.x, DependencyKind::kReadAfterWrite));  // add only reads x
  EXPECT_EQ(deps.size(), 4u);
  EXPECT_STREQ(DependencyKindName(DependencyKind::kWriteAfterRead), "WAR");
}

TEST(TopologicalOrderTest, RespectsEveryDependency) {
  InPlaceGraph p = MakeInPlaceGraph();
  std::vector<NodeId> order = TopologicalOrder(p.g);
  ASSERT_EQ(order.size(), p.g.nodes().size());
  std::vector<size_t> position(order.size());
  for (size_t k = 0; k < order.size(); ++k) position[order[k]] = k;
  for (const Dependency& d : Dependencies(p.g)) {
    EXPECT_LT(position[d.from], position[d.to])
        << DependencyKindName(d.kind) << " %" << d.from << " -> %" << d.to;
  }
  EXPECT_THAT(order, ElementsAre(p.add, p.add_, p.mul, p.refill));
}

TEST(TopologicalOrderTest, IndependentNodesKeepCaptureOrder) {
  Graph g;
  BufferId x = g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  std::vector<BufferId> outs;
  for (int k = 0; k < 5; ++k) outs.push_back(g.AddBuffer(MakeBuffer(4)));
  for (int k = 0; k < 5; ++k)
    AddOp(g, "aten::neg", {Arg::Tensor(F32(x, {4}))}, {F32(outs[k], {4})});
  EXPECT_THAT(TopologicalOrder(g), ElementsAre(0, 1, 2, 3, 4));
  EXPECT_TRUE(Dependencies(g).empty());
}

TEST(TopologicalOrderTest, ProducerAppendedLateStillComesFirst) {
  // Capture appended the reader before the producer (Validate refuses this graph); the
  // order is computed from the edges, not copied from capture order.
  Graph g;
  BufferId a = g.AddBuffer(MakeBuffer(4));
  BufferId b = g.AddBuffer(MakeBuffer(4));
  BufferId c = g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  g.mutable_buffer(a).producer = 2;
  AddOp(g, "aten::neg", {Arg::Tensor(F32(a, {4}))}, {F32(b, {4})});  // %0 reads a
  AddOp(g, "aten::neg", {Arg::Tensor(F32(c, {4}))}, {});             // %1 independent
  AddOp(g, "aten::ones", {}, {F32(a, {4})});                         // %2 produces a
  EXPECT_THAT(TopologicalOrder(g), ElementsAre(1, 2, 0));
  EXPECT_THAT(g.Validate().message(), HasSubstr("before its producer"));
}

// ---- Liveness and dead-code elimination ----------------------------------------------

struct LivenessGraph {
  Graph g;
  BufferId x, kv, t, u, s, tmp, r, v;
};

LivenessGraph MakeLivenessGraph() {
  LivenessGraph p;
  Graph& g = p.g;
  p.x = g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  p.kv = g.AddBuffer(MakeBuffer(4, BufferKind::kResident, "", 99));
  p.t = g.AddBuffer(MakeBuffer(4));
  p.u = g.AddBuffer(MakeBuffer(4));
  p.s = g.AddBuffer(MakeBuffer(1));
  p.tmp = g.AddBuffer(MakeBuffer(4));
  p.r = g.AddBuffer(MakeBuffer(4));
  p.v = g.AddBuffer(MakeBuffer(4));
  auto x = F32(p.x, {4});
  AddOp(g, "aten::mul.Scalar", {Arg::Tensor(x), Arg::Int(2)}, {F32(p.t, {4})});  // %0
  AddOp(g, "aten::add_.Tensor", {Arg::Tensor(F32(p.kv, {4})), Arg::Tensor(F32(p.t, {4}))},
        {F32(p.kv, {4})}, {p.kv});                             // %1
  AddOp(g, "aten::neg", {Arg::Tensor(x)}, {F32(p.u, {4})});    // %2 dead
  AddOp(g, "aten::sum", {Arg::Tensor(x)}, {F32(p.s, {})});     // %3
  AddOp(g, "aten::exp", {Arg::Tensor(x)}, {F32(p.tmp, {4})});  // %4
  AddOp(g, "aten::add_.Scalar", {Arg::Tensor(F32(p.tmp, {4})), Arg::Int(1), Arg::Int(1)},
        {F32(p.tmp, {4})}, {p.tmp});                                                           // %5
  AddOp(g, "aten::mul.Scalar", {Arg::Tensor(F32(p.tmp, {4})), Arg::Int(2)}, {F32(p.r, {4})});  // %6
  AddOp(g, "aten::add_.Scalar", {Arg::Tensor(F32(p.tmp, {4})), Arg::Int(5), Arg::Int(1)},
        {F32(p.tmp, {4})}, {p.tmp});                         // %7 dead: after the last read
  AddOp(g, "aten::cos", {Arg::Tensor(x)}, {F32(p.v, {4})});  // %8 dead
  AddOp(g, "aten::add_.Scalar", {Arg::Tensor(F32(p.v, {4})), Arg::Int(1), Arg::Int(1)},
        {F32(p.v, {4})}, {p.v});  // %9 dead: v never read
  g.outputs() = {F32(p.s, {}), F32(p.r, {4})};
  return p;
}

TEST(LiveNodesTest, KeepsWritesToKeptAndLaterReadBuffers) {
  LivenessGraph p = MakeLivenessGraph();
  ASSERT_TRUE(p.g.Validate().ok()) << p.g.Validate();
  std::vector<BufferId> keep = {p.kv};
  EXPECT_THAT(LiveNodes(p.g, keep), ElementsAre(0, 1, 3, 4, 5, 6));
  // Without keep, the in-place update of the KV cache (and what feeds it) is dead.
  EXPECT_THAT(LiveNodes(p.g, {}), ElementsAre(3, 4, 5, 6));
}

TEST(LiveNodesTest, KeptBufferKeepsItsLastWriteOnly) {
  LivenessGraph p = MakeLivenessGraph();
  std::vector<BufferId> keep = {p.tmp};  // tmp's final contents include %7's write
  EXPECT_THAT(LiveNodes(p.g, keep), ElementsAre(3, 4, 5, 6, 7));
}

TEST(LiveNodesTest, OutputViewOfInPlaceResultKeepsTheWriteChain) {
  LivenessGraph p = MakeLivenessGraph();
  p.g.outputs() = {F32(p.v, {4})};
  EXPECT_THAT(LiveNodes(p.g, {}), ElementsAre(8, 9));
}

TEST(EliminateDeadCodeTest, DropsDeadNodesAndRenumbersDensely) {
  LivenessGraph p = MakeLivenessGraph();
  std::vector<BufferId> keep = {p.kv};
  std::vector<BufferId> old_to_new;
  Graph out = EliminateDeadCode(p.g, keep, &old_to_new);
  ASSERT_TRUE(out.Validate().ok()) << out.Validate() << "\n" << out.Dump();
  EXPECT_THAT(old_to_new, ElementsAre(0, 1, 2, kNoBuffer, 3, 4, 5, kNoBuffer));
  EXPECT_EQ(out.Dump(),
            "graph: 6 buffers, 6 nodes, 2 outputs\n"
            "b0: host_input f32[4]\n"
            "b1: resident f32[4] handle=0x63\n"
            "b2: intermediate f32[4] <- %0\n"
            "b3: intermediate f32[1] <- %2\n"
            "b4: intermediate f32[4] <- %3\n"
            "b5: intermediate f32[4] <- %5\n"
            "%0 = aten::mul.Scalar(b0:f32[4], 2) -> b2:f32[4]\n"
            "%1 = aten::add_.Tensor(b1:f32[4], b2:f32[4]) -> b1:f32[4]  writes(b1)\n"
            "%2 = aten::sum(b0:f32[4]) -> b3:f32[]\n"
            "%3 = aten::exp(b0:f32[4]) -> b4:f32[4]\n"
            "%4 = aten::add_.Scalar(b4:f32[4], 1, 1) -> b4:f32[4]  writes(b4)\n"
            "%5 = aten::mul.Scalar(b4:f32[4], 2) -> b5:f32[4]\n"
            "outputs: b3:f32[], b5:f32[4]\n");
  // Eliminating again changes nothing.
  std::vector<BufferId> keep2 = {old_to_new[p.kv]};
  EXPECT_EQ(EliminateDeadCode(out, keep2).Dump(), out.Dump());
}

// ---- Fingerprint --------------------------------------------------------------------

TEST(FingerprintTest, IgnoresHandlesAndNonParameterNames) {
  Graph a = SmallGraph();
  Graph b = SmallGraph();
  b.mutable_buffer(0).handle = 12345;  // a different decode step's input
  b.mutable_buffer(1).handle = 999;
  b.mutable_buffer(0).name = "step 2 input";
  EXPECT_EQ(a.Fingerprint(), b.Fingerprint());
  EXPECT_EQ(a.Fingerprint(), SmallGraph().Fingerprint());
}

TEST(FingerprintTest, ChangesWithStructure) {
  const uint64_t base = SmallGraph().Fingerprint();
  auto changed = [&](const std::function<void(Graph&)>& change) {
    Graph g = SmallGraph();
    change(g);
    return g.Fingerprint() != base;
  };
  // A shape: a different view of the same buffers.
  EXPECT_TRUE(changed([](Graph& g) { g.outputs()[1] = F32(4, {8, 4}); }));
  EXPECT_TRUE(changed([](Graph& g) { g.mutable_buffer(4).numel = 64; }));
  EXPECT_TRUE(changed([](Graph& g) { g.mutable_buffer(0).dtype = DType::kFloat16; }));
  EXPECT_TRUE(changed([](Graph& g) { g.mutable_buffer(0).kind = BufferKind::kResident; }));
  EXPECT_TRUE(changed([](Graph& g) { g.mutable_buffer(1).name = "decoder.fc1.weight"; }));
  EXPECT_TRUE(changed([](Graph& g) { g.outputs().pop_back(); }));
  // An op, a scope, an argument.
  EXPECT_NE(SmallGraph("aten::matmul").Fingerprint(), base);
  EXPECT_NE(SmallGraph("aten::mm", "encoder.fc2").Fingerprint(), base);
  EXPECT_TRUE(changed([](Graph& g) { AddOp(g, "aten::neg", {Arg::Tensor(F32(0, {16}))}, {}); }));
  Graph g1 = SmallGraph(), g2 = SmallGraph();
  AddOp(g1, "aten::add.Scalar", {Arg::Tensor(F32(0, {16})), Arg::Double(1.0)}, {});
  AddOp(g2, "aten::add.Scalar", {Arg::Tensor(F32(0, {16})), Arg::Double(2.0)}, {});
  EXPECT_NE(g1.Fingerprint(), g2.Fingerprint());
  Graph g3 = SmallGraph(), g4 = SmallGraph();
  AddOp(g3, "aten::add.Scalar", {Arg::Tensor(F32(0, {16})), Arg::Int(1)}, {});
  AddOp(g4, "aten::add.Scalar", {Arg::Tensor(F32(0, {16})), Arg::Bool(true)}, {});
  EXPECT_NE(g3.Fingerprint(), g4.Fingerprint());
}

// ---- Binary form --------------------------------------------------------------------

TEST(SerializeTest, RoundTripIsExact) {
  for (const Graph& g : {SmallGraph(), RichGraph(), Graph()}) {
    ASSERT_TRUE(g.Validate().ok()) << g.Validate();
    std::string bytes = Serialize(g);
    EXPECT_EQ(bytes, Serialize(g));  // deterministic
    absl::StatusOr<Graph> back = Deserialize(bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(Serialize(*back), bytes);
    EXPECT_EQ(back->Dump(), g.Dump());
    EXPECT_EQ(back->Fingerprint(), g.Fingerprint());
    ASSERT_EQ(back->nodes().size(), g.nodes().size());
    for (size_t k = 0; k < g.nodes().size(); ++k) {
      EXPECT_EQ(back->node(k).args, g.node(k).args);
      EXPECT_EQ(back->node(k).outputs, g.node(k).outputs);
      EXPECT_EQ(back->node(k).writes, g.node(k).writes);
    }
    for (size_t k = 0; k < g.buffers().size(); ++k) {
      EXPECT_EQ(back->buffer(k).handle, g.buffer(k).handle);
      EXPECT_EQ(back->buffer(k).producer, g.buffer(k).producer);
      EXPECT_EQ(back->buffer(k).name, g.buffer(k).name);
    }
  }
}

TEST(SerializeTest, StartsWithMagicAndVersion) {
  std::string bytes = Serialize(Graph());
  EXPECT_EQ(bytes.substr(0, 12), std::string("GNIEGRPH\x01\x00\x00\x00", 12));
}

TEST(DeserializeTest, EveryTruncationIsRefused) {
  std::string bytes = Serialize(RichGraph());
  for (size_t n = 0; n < bytes.size(); ++n) {
    absl::StatusOr<Graph> g = Deserialize(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(g.ok()) << "a prefix of " << n << " of " << bytes.size() << " bytes was accepted";
    EXPECT_THAT(g.status().message(), HasSubstr("Deserialize(graph)"));
  }
}

TEST(DeserializeTest, TrailingBytesAreRefused) {
  std::string bytes = Serialize(SmallGraph()) + "x";
  EXPECT_THAT(Deserialize(bytes).status().message(), HasSubstr("unexpected bytes"));
}

TEST(DeserializeTest, WrongMagicAndVersionAreNamed) {
  std::string bytes = Serialize(SmallGraph());
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  absl::Status s = Deserialize(bad_magic).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("wrong magic"));
  std::string bad_version = bytes;
  bad_version[8] = 2;
  s = Deserialize(bad_version).status();
  EXPECT_THAT(s.message(), HasSubstr("unsupported graph format version 2"));
  EXPECT_THAT(s.message(), HasSubstr("reads version 1"));
}

std::string Header() { return std::string("GNIEGRPH\x01\x00\x00\x00", 12); }

TEST(DeserializeTest, OversizedCountsAreRefusedWithoutAllocating) {
  // 4 billion op names with nothing behind them: refused on the count, before reserve.
  std::string bytes = Header() + std::string("\xff\xff\xff\xff", 4);
  absl::Status s = Deserialize(bytes).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("'op name count' count 4294967295"));
  // Under the limit but more than the bytes left could hold.
  bytes = Header() + std::string("\x00\x00\x01\x00", 4);  // 65536 op names
  s = Deserialize(bytes).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("'op name count' count 65536"));
  // Configurable limits apply.
  WireLimits tight;
  tight.max_count = 4;  // 4 op names pass, 5 buffers do not
  s = Deserialize(Serialize(SmallGraph()), tight).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("buffer count' count 5"));
  EXPECT_TRUE(Deserialize(Serialize(SmallGraph()), WireLimits()).ok());
}

TEST(DeserializeTest, UnknownEnumCodesAreRefused) {
  // An empty-op graph with one buffer: magic 8 + version 4 + op count 4 + scope count 4 +
  // scope "" 4 + buffer count 4 = offset 28 for the buffer's dtype, 37 for its kind.
  Graph g;
  g.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  std::string bytes = Serialize(g);
  ASSERT_TRUE(Deserialize(bytes).ok());
  std::string bad_dtype = bytes;
  bad_dtype[28] = 12;
  EXPECT_THAT(Deserialize(bad_dtype).status().message(), HasSubstr("unknown dtype code 12"));
  std::string bad_kind = bytes;
  bad_kind[37] = 4;
  EXPECT_THAT(Deserialize(bad_kind).status().message(), HasSubstr("unknown buffer kind code 4"));

  Graph h;
  BufferId b = h.AddBuffer(MakeBuffer(4, BufferKind::kHostInput));
  AddOp(h, "aten::neg", {Arg::Tensor(F32(b, {4}))}, {});
  std::string hb = Serialize(h);
  // The argument kind byte follows op id, scope id and argument count of node 0.
  size_t arg_kind = hb.size() - 4 /*outputs*/ - 4 /*writes*/ - 4 /*node outputs*/ -
                    (4 + 1 + 4 + 8 + 4 + 8 + 8) /*the view*/ - 4 /*tensor count*/ - 1;
  ASSERT_EQ(hb[arg_kind], static_cast<char>(ArgKind::kTensor));
  hb[arg_kind] = 13;
  EXPECT_THAT(Deserialize(hb).status().message(), HasSubstr("unknown argument kind code 13"));
}

TEST(DeserializeTest, IdsOutOfRangeAreRefusedByValidate) {
  Graph g;
  AddOp(g, "aten::neg", {Arg::Tensor(F32(3, {1}))}, {});  // no buffer 3
  absl::Status s = Deserialize(Serialize(g)).status();
  EXPECT_THAT(s.message(), HasSubstr("decoded graph is inconsistent"));
  EXPECT_THAT(s.message(), HasSubstr("names buffer b3"));
}

TEST(DeserializeTest, DuplicateNamesInTablesAreRefused) {
  Graph g;
  g.InternOp("aten::mm");
  std::string bytes = Serialize(g);
  // Rewrite the op table to hold "aten::mm" twice.
  std::string name(
      "\x08\x00\x00\x00"
      "aten::mm",
      12);
  std::string twice =
      Header() + std::string("\x02\x00\x00\x00", 4) + name + name + bytes.substr(12 + 4 + 12);
  EXPECT_THAT(Deserialize(twice).status().message(), HasSubstr("appears twice"));
}

TEST(DeserializeTest, RandomBytesNeverCrash) {
  std::mt19937 rng(20260122);
  std::uniform_int_distribution<int> byte(0, 255);
  int accepted = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes(rng() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(byte(rng));
    if (iter % 2 == 0 && bytes.size() >= 12) bytes.replace(0, 12, Header());  // get past magic
    absl::StatusOr<Graph> g = Deserialize(bytes);
    if (g.ok()) ++accepted;
  }
  EXPECT_EQ(accepted, 0);
}

TEST(DeserializeTest, MutatedMessagesAreRefusedOrValid) {
  const std::string valid = Serialize(RichGraph());
  std::mt19937 rng(7);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = valid;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xff);
    }
    absl::StatusOr<Graph> g = Deserialize(bytes);
    if (g.ok()) {
      // Whatever got through is a consistent graph that round-trips.
      EXPECT_TRUE(g->Validate().ok());
      EXPECT_EQ(Serialize(*g), bytes);
      (void)g->Dump();
      (void)TopologicalOrder(*g);
      (void)EliminateDeadCode(*g, {});
    }
  }
}

}  // namespace
}  // namespace genie::core
