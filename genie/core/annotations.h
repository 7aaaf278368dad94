// File: genie/core/annotations.h
// Compile-time composed per-node annotations over a Graph.
//
// An annotation is a tag type naming one fact about a node (its module path, its phase,
// its modality). A deployment composes the ones it wants as template parameters and
// gets one column per annotation, structure-of-arrays, indexed by NodeId; nothing else
// is stored, and asking for an annotation that was not composed does not compile.
//
// The contract of an annotation type A, read only through annotation_traits<A>:
//   using value_type = ...;                          required; copyable
//   static constexpr std::string_view kName = "...";  required; the key in dumps
//   static constexpr value_type kDefault = ...;       optional; or
//   static value_type Default();                      optional; else value_type{}
//   static std::string ToString(const value_type&);   optional; else arithmetic values
//                                                     print as numbers, enums as their
//                                                     code, strings as themselves
//
//   struct Phase {
//     enum class Value : uint8_t { kUnknown, kPrefill, kDecode };
//     using value_type = Value;
//     static constexpr std::string_view kName = "phase";
//     static constexpr value_type kDefault = Value::kUnknown;
//     static std::string ToString(Value v) { return v == Value::kDecode ? "decode" : "..."; }
//   };
//
//   genie::core::AnnotatedGraph<ModulePath, Phase> annotated(graph);  // graph outlives it
//   annotated.Set<Phase>(node_id, Phase::Value::kDecode);
//   if (annotated.Get<Phase>(node_id) == Phase::Value::kDecode) { ... }
//   static_assert(decltype(annotated)::Has<Phase>());
//   annotated.Get<Modality>(node_id);  // compile error: Modality was not composed
//   std::cout << annotated.Dump();      // "%3 = aten::mm(...) -> ...  {module_path=fc1,
//   phase=decode}"
#ifndef GENIE_CORE_ANNOTATIONS_H_
#define GENIE_CORE_ANNOTATIONS_H_

#include <cassert>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "genie/core/graph.h"

namespace genie::core {
namespace annotations_internal {

template <typename A, typename = void>
struct HasValueType : std::false_type {};
template <typename A>
struct HasValueType<A, std::void_t<typename A::value_type>> : std::true_type {};

template <typename A, typename = void>
struct HasName : std::false_type {};
template <typename A>
struct HasName<A, std::void_t<decltype(A::kName)>>
    : std::is_convertible<decltype(A::kName), std::string_view> {};

template <typename A, typename = void>
struct HasDefaultFunction : std::false_type {};
template <typename A>
struct HasDefaultFunction<A, std::void_t<decltype(A::Default())>>
    : std::is_convertible<decltype(A::Default()), typename A::value_type> {};

template <typename A, typename = void>
struct HasDefaultConstant : std::false_type {};
template <typename A>
struct HasDefaultConstant<A, std::void_t<decltype(A::kDefault)>>
    : std::is_convertible<decltype(A::kDefault), typename A::value_type> {};

template <typename A, typename = void>
struct HasToString : std::false_type {};
template <typename A>
struct HasToString<
    A, std::void_t<decltype(A::ToString(std::declval<const typename A::value_type&>()))>>
    : std::is_convertible<decltype(A::ToString(std::declval<const typename A::value_type&>())),
                          std::string> {};

template <typename A, bool = HasValueType<A>::value>
struct HasCopyableValue : std::false_type {};
template <typename A>
struct HasCopyableValue<A, true> : std::is_copy_constructible<typename A::value_type> {};

template <typename T, typename... Ts>
inline constexpr bool kContains = (std::is_same_v<T, Ts> || ...);

template <typename... Ts>
struct AllDistinct : std::true_type {};
template <typename T, typename... Ts>
struct AllDistinct<T, Ts...>
    : std::bool_constant<!kContains<T, Ts...> && AllDistinct<Ts...>::value> {};

template <typename T, typename... Ts>
constexpr size_t IndexOf() {
  size_t index = 0;
  bool found = false;
  ((found = found || std::is_same_v<T, Ts>, index += found ? 0 : 1), ...);
  return index;
}

template <typename T>
struct TypeTag {
  using type = T;
};

}  // namespace annotations_internal

// True for a type that meets the annotation contract above (detected, not declared).
template <typename T>
struct is_annotation : std::bool_constant<annotations_internal::HasValueType<T>::value &&
                                          annotations_internal::HasName<T>::value &&
                                          annotations_internal::HasCopyableValue<T>::value> {};
template <typename T>
inline constexpr bool is_annotation_v = is_annotation<T>::value;

// The only way Genie reads an annotation type: detected members, with defaults.
template <typename A>
struct annotation_traits {
  static_assert(is_annotation_v<A>,
                "not an annotation: it needs `using value_type = ...;` (copyable) and "
                "`static constexpr std::string_view kName = \"...\";`");
  using value_type = typename A::value_type;

  static constexpr std::string_view Name() { return A::kName; }

  static value_type Default() {
    if constexpr (annotations_internal::HasDefaultFunction<A>::value) {
      return A::Default();
    } else if constexpr (annotations_internal::HasDefaultConstant<A>::value) {
      return A::kDefault;
    } else {
      return value_type{};
    }
  }

  static std::string ToString(const value_type& v) {
    if constexpr (annotations_internal::HasToString<A>::value) {
      return A::ToString(v);
    } else if constexpr (std::is_same_v<value_type, bool>) {
      return v ? "true" : "false";
    } else if constexpr (std::is_arithmetic_v<value_type>) {
      return absl::StrCat(v);
    } else if constexpr (std::is_enum_v<value_type>) {
      return absl::StrCat(static_cast<std::underlying_type_t<value_type>>(v));
    } else if constexpr (std::is_convertible_v<const value_type&, std::string_view>) {
      return std::string(std::string_view(v));
    } else {
      return "(no ToString)";
    }
  }
};

// A Graph plus one column per composed annotation. Holds the graph by pointer: the
// Graph must outlive this object. Columns start at each annotation's default and grow
// when Set names a node added to the graph later; Get on such a node gives the default.
template <typename... As>
class AnnotatedGraph {
  static_assert((is_annotation_v<As> && ...),
                "every AnnotatedGraph parameter must be an annotation type: one with "
                "`using value_type = ...;` and `static constexpr std::string_view kName`");
  static_assert(annotations_internal::AllDistinct<As...>::value,
                "an annotation is composed twice in AnnotatedGraph<...>; list each once");

  template <typename A>
  using Column = std::vector<typename annotation_traits<A>::value_type>;

 public:
  explicit AnnotatedGraph(const Graph& graph) : graph_(&graph) { Sync(); }
  explicit AnnotatedGraph(Graph&&) = delete;  // would dangle

  const Graph& graph() const { return *graph_; }

  // Whether this deployment composed annotation A.
  template <typename A>
  static constexpr bool Has() {
    return annotations_internal::kContains<A, As...>;
  }
  static constexpr size_t num_annotations() { return sizeof...(As); }

  template <typename A>
  typename Column<A>::const_reference Get(NodeId id) const {
    static_assert(Has<A>(),
                  "this AnnotatedGraph does not compose the annotation you asked for; add it "
                  "to the deployment's AnnotatedGraph<...> parameters");
    const Column<A>& column = std::get<Index<A>()>(columns_);
    if (id < column.size()) return column[id];
    static const typename annotation_traits<A>::value_type kDefault =
        annotation_traits<A>::Default();
    return kDefault;
  }

  // Precondition: `id` names a node of graph().
  template <typename A>
  void Set(NodeId id, typename annotation_traits<A>::value_type value) {
    static_assert(Has<A>(),
                  "this AnnotatedGraph does not compose the annotation you asked for; add it "
                  "to the deployment's AnnotatedGraph<...> parameters");
    assert(id < graph_->nodes().size() && "AnnotatedGraph::Set: node id is not in the graph");
    if (id >= graph_->nodes().size()) return;
    Column<A>& column = std::get<Index<A>()>(columns_);
    if (id >= column.size()) Sync();
    column[id] = std::move(value);
  }

  // The whole column, indexed by NodeId (may be shorter than the graph until Sync()).
  template <typename A>
  const Column<A>& column() const {
    static_assert(Has<A>(),
                  "this AnnotatedGraph does not compose the annotation you asked for; add it "
                  "to the deployment's AnnotatedGraph<...> parameters");
    return std::get<Index<A>()>(columns_);
  }

  // Grows every column to the graph's node count (nodes added since), with defaults.
  void Sync() {
    [[maybe_unused]] const size_t n = graph_->nodes().size();
    (Grow<As>(n), ...);
  }

  // Graph::Dump with `  {name=value, ...}` appended to each node line, in the order the
  // annotations were composed.
  std::string Dump() const {
    return graph_->Dump([this](NodeId id, std::string* line) {
      if constexpr (sizeof...(As) > 0) {
        line->append("  {");
        bool first = true;
        auto append = [&](auto tag) {
          using A = typename decltype(tag)::type;
          if (!first) line->append(", ");
          first = false;
          std::string_view name = annotation_traits<A>::Name();
          line->append(name.data(), name.size());
          line->append("=");
          line->append(annotation_traits<A>::ToString(Get<A>(id)));
        };
        (append(annotations_internal::TypeTag<As>{}), ...);
        line->append("}");
      }
    });
  }

 private:
  template <typename A>
  static constexpr size_t Index() {
    return annotations_internal::IndexOf<A, As...>();
  }

  template <typename A>
  void Grow(size_t n) {
    Column<A>& column = std::get<Index<A>()>(columns_);
    if (column.size() < n) column.resize(n, annotation_traits<A>::Default());
  }

  const Graph* graph_;
  std::tuple<Column<As>...> columns_;
};

}  // namespace genie::core

#endif  // GENIE_CORE_ANNOTATIONS_H_
