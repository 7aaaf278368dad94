// File: genie/core/annotations_test.cc
// annotation_traits, is_annotation_v and AnnotatedGraph, with minimal fake annotations.
#include "genie/core/annotations.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "genie/core/graph.h"
#include "genie/core/type_traits.h"
#include "gtest/gtest.h"

namespace genie::core {
namespace {

// Every optional member: a default constant and a ToString.
struct Phase {
  enum class Value : uint8_t { kUnknown = 0, kPrefill = 1, kDecode = 2 };
  using value_type = Value;
  static constexpr std::string_view kName = "phase";
  static constexpr value_type kDefault = Value::kUnknown;
  static std::string ToString(Value v) {
    switch (v) {
      case Value::kPrefill:
        return "prefill";
      case Value::kDecode:
        return "decode";
      default:
        return "unknown";
    }
  }
};

// A Default() function, no ToString (an enum prints as its code).
struct Modality {
  enum class Value : uint8_t { kUnknown = 0, kText = 1, kVision = 2 };
  using value_type = Value;
  static constexpr std::string_view kName = "modality";
  static value_type Default() { return Value::kText; }
};

// Only the required members; a string value prints as itself.
struct ModulePath {
  using value_type = std::string;
  static constexpr std::string_view kName = "module_path";
};

// kName as a C string; an arithmetic value prints as a number.
struct Cost {
  using value_type = double;
  static constexpr const char* kName = "cost";
};

struct Flag {
  using value_type = bool;
  static constexpr std::string_view kName = "flag";
};

// Not annotations.
struct NoName {
  using value_type = int;
};
struct NoValueType {
  static constexpr std::string_view kName = "x";
};
struct NameNotAString {
  using value_type = int;
  static constexpr int kName = 3;
};
struct UncopyableValue {
  struct Value {
    Value() = default;
    Value(const Value&) = delete;
  };
  using value_type = Value;
  static constexpr std::string_view kName = "u";
};

// ---- Compile-time checks ----------------------------------------------------------------

static_assert(is_annotation_v<Phase>);
static_assert(is_annotation_v<Modality>);
static_assert(is_annotation_v<ModulePath>);
static_assert(is_annotation_v<Cost>);
static_assert(!is_annotation_v<int>, "a plain type is not an annotation");
static_assert(!is_annotation_v<NoName>, "an annotation needs kName");
static_assert(!is_annotation_v<NoValueType>, "an annotation needs value_type");
static_assert(!is_annotation_v<NameNotAString>, "kName must be a string");
static_assert(!is_annotation_v<UncopyableValue>, "values are stored in columns: copyable");

static_assert(std::is_same_v<annotation_traits<Phase>::value_type, Phase::Value>);
static_assert(annotation_traits<Phase>::Name() == "phase");
static_assert(annotation_traits<Cost>::Name() == "cost");

using Deployment = AnnotatedGraph<ModulePath, Phase, Modality>;
static_assert(Deployment::Has<Phase>());
static_assert(Deployment::Has<ModulePath>());
static_assert(!Deployment::Has<Cost>(), "Cost was not composed");
static_assert(Deployment::num_annotations() == 3);
static_assert(AnnotatedGraph<>::num_annotations() == 0);
static_assert(!std::is_constructible_v<Deployment, Graph&&>, "a temporary graph would dangle");

// dependent_false closes a primary template without firing until it is instantiated.
template <typename T>
struct Closed {
  static_assert(dependent_false<T>::value, "no Closed<T> for this T");
};
template <>
struct Closed<int> {
  static constexpr int kValue = 1;
};
static_assert(Closed<int>::kValue == 1);
static_assert(!dependent_false<int, double>::value);
static_assert(!dependent_false_v<void>);

// ---- Traits -------------------------------------------------------------------------------

TEST(AnnotationTraitsTest, DetectedDefaults) {
  EXPECT_EQ(annotation_traits<Phase>::Default(), Phase::Value::kUnknown);     // kDefault
  EXPECT_EQ(annotation_traits<Modality>::Default(), Modality::Value::kText);  // Default()
  EXPECT_EQ(annotation_traits<ModulePath>::Default(), "");                    // value_type{}
  EXPECT_EQ(annotation_traits<Cost>::Default(), 0.0);
}

TEST(AnnotationTraitsTest, DetectedToString) {
  EXPECT_EQ(annotation_traits<Phase>::ToString(Phase::Value::kDecode), "decode");   // its own
  EXPECT_EQ(annotation_traits<Modality>::ToString(Modality::Value::kVision), "2");  // enum code
  EXPECT_EQ(annotation_traits<ModulePath>::ToString("encoder.fc1"), "encoder.fc1");
  EXPECT_EQ(annotation_traits<Cost>::ToString(1.5), "1.5");
  EXPECT_EQ(annotation_traits<Flag>::ToString(true), "true");
}

// ---- AnnotatedGraph ---------------------------------------------------------------------

Graph TwoNodes() {
  Graph g;
  Buffer in;
  in.kind = BufferKind::kHostInput;
  in.numel = 4;
  BufferId x = g.AddBuffer(in);
  Buffer out;
  out.numel = 4;
  BufferId y = g.AddBuffer(out);
  BufferId z = g.AddBuffer(out);
  Node a;
  a.op = g.InternOp("aten::neg");
  a.args = {Arg::Tensor(TensorRef::Contiguous(x, DType::kFloat32, {4}))};
  a.outputs = {TensorRef::Contiguous(y, DType::kFloat32, {4})};
  a.scope = g.InternScope("encoder");
  g.AddNode(std::move(a));
  Node b;
  b.op = g.InternOp("aten::exp");
  b.args = {Arg::Tensor(TensorRef::Contiguous(y, DType::kFloat32, {4}))};
  b.outputs = {TensorRef::Contiguous(z, DType::kFloat32, {4})};
  g.AddNode(std::move(b));
  g.outputs() = {TensorRef::Contiguous(z, DType::kFloat32, {4})};
  return g;
}

TEST(AnnotatedGraphTest, ColumnsStartAtDefaults) {
  Graph g = TwoNodes();
  Deployment annotated(g);
  EXPECT_EQ(&annotated.graph(), &g);
  EXPECT_EQ(annotated.column<Phase>().size(), 2u);
  EXPECT_EQ(annotated.Get<Phase>(1), Phase::Value::kUnknown);
  EXPECT_EQ(annotated.Get<Modality>(1), Modality::Value::kText);
  EXPECT_EQ(annotated.Get<ModulePath>(0), "");
}

TEST(AnnotatedGraphTest, SetThenGetPerNode) {
  Graph g = TwoNodes();
  Deployment annotated(g);
  annotated.Set<Phase>(0, Phase::Value::kDecode);
  annotated.Set<ModulePath>(0, "encoder");
  annotated.Set<Modality>(1, Modality::Value::kVision);
  EXPECT_EQ(annotated.Get<Phase>(0), Phase::Value::kDecode);
  EXPECT_EQ(annotated.Get<Phase>(1), Phase::Value::kUnknown);  // columns are per node
  EXPECT_EQ(annotated.Get<ModulePath>(0), "encoder");
  EXPECT_EQ(annotated.Get<Modality>(1), Modality::Value::kVision);
  EXPECT_EQ(annotated.column<Modality>()[0], Modality::Value::kText);
}

TEST(AnnotatedGraphTest, NodesAddedLaterReadDefaultsAndGrowOnSet) {
  Graph g = TwoNodes();
  AnnotatedGraph<Phase, Flag> annotated(g);
  Node c;
  c.op = g.InternOp("aten::sum");
  c.args = {Arg::Tensor(g.outputs()[0])};
  NodeId late = g.AddNode(std::move(c));
  EXPECT_EQ(annotated.Get<Phase>(late), Phase::Value::kUnknown);
  EXPECT_FALSE(annotated.Get<Flag>(late));  // a vector<bool> column reads by value
  annotated.Set<Flag>(late, true);
  EXPECT_TRUE(annotated.Get<Flag>(late));
  EXPECT_EQ(annotated.column<Phase>().size(), 3u);  // Set grew every column
}

TEST(AnnotatedGraphTest, DumpAppendsEachAnnotationInComposedOrder) {
  Graph g = TwoNodes();
  Deployment annotated(g);
  annotated.Set<ModulePath>(0, "encoder");
  annotated.Set<Phase>(0, Phase::Value::kPrefill);
  annotated.Set<Modality>(1, Modality::Value::kVision);
  EXPECT_EQ(annotated.Dump(),
            "graph: 3 buffers, 2 nodes, 1 outputs\n"
            "b0: host_input f32[4]\n"
            "b1: intermediate f32[4] <- %0\n"
            "b2: intermediate f32[4] <- %1\n"
            "%0 = aten::neg(b0:f32[4]) -> b1:f32[4]  @encoder"
            "  {module_path=encoder, phase=prefill, modality=1}\n"
            "%1 = aten::exp(b1:f32[4]) -> b2:f32[4]"
            "  {module_path=, phase=unknown, modality=2}\n"
            "outputs: b2:f32[4]\n");
  EXPECT_EQ(AnnotatedGraph<>(g).Dump(), g.Dump());
}

}  // namespace
}  // namespace genie::core
