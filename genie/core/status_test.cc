// File: genie/core/status_test.cc
// GENIE_RETURN_IF_ERROR / GENIE_ASSIGN_OR_RETURN propagate errors and assign values.
#include "genie/core/status.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace genie::core {
namespace {

absl::Status FailIf(bool fail) {
  return fail ? absl::NotFoundError("no such thing") : absl::OkStatus();
}

absl::StatusOr<int> Half(int v) {
  if (v % 2 != 0) return absl::InvalidArgumentError("odd");
  return v / 2;
}

absl::Status Chain(bool fail, int* reached) {
  *reached = 0;
  GENIE_RETURN_IF_ERROR(FailIf(fail));
  *reached = 1;
  return absl::OkStatus();
}

absl::StatusOr<int> Quarter(int v) {
  GENIE_ASSIGN_OR_RETURN(int half, Half(v));
  GENIE_ASSIGN_OR_RETURN(int quarter, Half(half));  // two in one scope: distinct temporaries
  return quarter;
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int v) { return std::make_unique<int>(v); }

absl::StatusOr<int> Unbox(int v) {
  std::unique_ptr<int> box;
  GENIE_ASSIGN_OR_RETURN(box, MakeBox(v));  // assigns to an existing, move-only variable
  return *box;
}

TEST(StatusMacrosTest, ReturnIfErrorPropagatesAndContinues) {
  int reached = -1;
  absl::Status s = Chain(true, &reached);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such thing");
  EXPECT_EQ(reached, 0);
  EXPECT_TRUE(Chain(false, &reached).ok());
  EXPECT_EQ(reached, 1);
}

TEST(StatusMacrosTest, AssignOrReturnAssignsValues) {
  absl::StatusOr<int> q = Quarter(12);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, 3);
}

TEST(StatusMacrosTest, AssignOrReturnPropagatesErrors) {
  EXPECT_EQ(Quarter(7).status().code(), absl::StatusCode::kInvalidArgument);  // first call
  EXPECT_EQ(Quarter(6).status().message(), "odd");                            // second call
}

TEST(StatusMacrosTest, AssignOrReturnMovesIntoExistingVariable) {
  absl::StatusOr<int> v = Unbox(41);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 41);
}

}  // namespace
}  // namespace genie::core
