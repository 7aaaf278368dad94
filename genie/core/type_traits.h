// File: genie/core/type_traits.h
// Small compile-time helpers shared across Genie.
//
// `dependent_false<T...>` is a false that depends on its arguments, so a closed primary
// template's static_assert fires only when that template is instantiated:
//
//   template <typename Policy>
//   struct Executor {
//     static_assert(genie::core::dependent_false<Policy>::value,
//                   "no executor for this transport policy; include its header");
//   };
//   template <>
//   struct Executor<Tcp> { ... };
#ifndef GENIE_CORE_TYPE_TRAITS_H_
#define GENIE_CORE_TYPE_TRAITS_H_

#include <type_traits>

namespace genie::core {

template <typename... T>
struct dependent_false : std::false_type {};

template <typename... T>
inline constexpr bool dependent_false_v = dependent_false<T...>::value;

}  // namespace genie::core

#endif  // GENIE_CORE_TYPE_TRAITS_H_
