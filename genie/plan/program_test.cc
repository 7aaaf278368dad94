// File: genie/plan/program_test.cc
// Lowering, binding, validation and the binary form of node programs.
#include "genie/plan/program.h"

#include <string>
#include <vector>

#include "genie/core/graph.h"
#include "genie/core/testing/graph_builder.h"
#include "gtest/gtest.h"

namespace genie::plan {
namespace {

using core::Arg;
using core::Buffer;
using core::BufferKind;
using core::DType;
using core::TensorRef;
using core::testing::GraphBuilder;
using core::testing::Mat;

// y = x @ w + r, with x uploaded, w a parameter, r resident; y kept and returned.
struct Fixture {
  core::Graph g;
  core::BufferId x, w, r, y, z;
  std::string x_bytes = std::string(2 * 8 * 4, 'x');
  std::string w_bytes = std::string(8 * 8 * 4, 'w');

  Fixture() {
    GraphBuilder b(&g);
    x = b.Buffer(16, BufferKind::kHostInput);
    w = b.Buffer(64, BufferKind::kParameter, "fc.weight");
    r = b.Buffer(16, BufferKind::kResident, "", 77);
    y = b.Buffer(16);
    z = b.Buffer(16, BufferKind::kIntermediate, "", 99);
    b.Op("aten::mm", {Mat(x, 2, 8), Mat(w, 8, 8)}, Mat(y, 2, 8));
    b.Op("aten::add.Tensor", {Arg::Tensor(Mat(y, 2, 8)), Arg::Tensor(Mat(r, 2, 8)), Arg::Int(1)},
         {Mat(z, 2, 8)});
    g.outputs().push_back(Mat(z, 2, 8));
  }

  core::ExecuteRequest Request() const {
    core::ExecuteRequest req;
    req.graph = &g;
    req.fingerprint = 1;
    // Activation first: lowering must put the weight first.
    req.uploads.push_back({x, core::HostBytes{x_bytes.data(), x_bytes.size(), nullptr}});
    req.uploads.push_back({w, core::HostBytes{w_bytes.data(), w_bytes.size(), nullptr}});
    req.keep = {z};
    req.release = {5, 6};
    return req;
  }
};

TEST(ProgramTest, LowerBuildsTables) {
  Fixture f;
  absl::StatusOr<Program> p = LowerProgram(f.Request());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->uploads.size(), 2u);
  EXPECT_EQ(p->uploads[0], (UploadSlot{f.w, 256, UploadClass::kWeights}));
  EXPECT_EQ(p->uploads[1], (UploadSlot{f.x, 64, UploadClass::kActivations}));
  ASSERT_EQ(p->outputs.size(), 1u);
  EXPECT_EQ(p->outputs[0].nbytes, 64u);
  ASSERT_EQ(p->keep.size(), 1u);
  EXPECT_EQ(p->keep[0], (ResidentSlot{f.z, 99}));
  ASSERT_EQ(p->resident.size(), 1u);
  EXPECT_EQ(p->resident[0], (ResidentSlot{f.r, 77}));
  EXPECT_EQ(p->upload_bytes(), 320);
  EXPECT_NE(p->Summary().find("2 nodes"), std::string::npos) << p->Summary();
}

TEST(ProgramTest, BindCollectsHandlesAndUploadOrder) {
  Fixture f;
  Program p = *LowerProgram(f.Request());
  // A later step: same structure, other storages.
  f.g.mutable_buffer(f.r).handle = 1234;
  f.g.mutable_buffer(f.z).handle = 5678;
  std::vector<uint32_t> order;
  absl::StatusOr<RunBinding> run = BindRun(p, f.Request(), &order);
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->release, (std::vector<uint64_t>{5, 6}));
  EXPECT_EQ(run->resident_handles, (std::vector<uint64_t>{1234}));
  EXPECT_EQ(run->keep_handles, (std::vector<uint64_t>{5678}));
  EXPECT_EQ(order, (std::vector<uint32_t>{1, 0}));
  ASSERT_TRUE(ApplyBinding(*run, &p).ok());
  EXPECT_EQ(p.graph.buffer(f.r).handle, 1234u);
  EXPECT_EQ(p.graph.buffer(f.z).handle, 5678u);
  EXPECT_EQ(p.resident[0].handle, 1234u);
}

TEST(ProgramTest, BindRefusesRequestThatDoesNotFit) {
  Fixture f;
  Program p = *LowerProgram(f.Request());
  core::ExecuteRequest fewer = f.Request();
  fewer.uploads.pop_back();
  EXPECT_TRUE(absl::IsFailedPrecondition(BindRun(p, fewer).status()));
  core::ExecuteRequest other_keep = f.Request();
  other_keep.keep = {f.y};
  EXPECT_TRUE(absl::IsFailedPrecondition(BindRun(p, other_keep).status()));
  RunBinding bad;
  EXPECT_TRUE(absl::IsInvalidArgument(ApplyBinding(bad, &p)));
}

TEST(ProgramTest, LowerRefusesBadUploads) {
  Fixture f;
  core::ExecuteRequest wrong_size = f.Request();
  wrong_size.uploads[0].bytes.nbytes = 3;
  absl::Status s = LowerProgram(wrong_size).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(std::string(s.message()).find("b0"), std::string::npos) << s;
  core::ExecuteRequest intermediate = f.Request();
  intermediate.uploads[0].buffer = f.y;
  intermediate.uploads[0].bytes.nbytes = 64;
  EXPECT_TRUE(absl::IsInvalidArgument(LowerProgram(intermediate).status()));
  core::ExecuteRequest twice = f.Request();
  twice.uploads[1] = twice.uploads[0];
  EXPECT_TRUE(absl::IsInvalidArgument(LowerProgram(twice).status()));
  core::ExecuteRequest bad_keep = f.Request();
  bad_keep.keep = {1000};
  EXPECT_TRUE(absl::IsInvalidArgument(LowerProgram(bad_keep).status()));
}

TEST(ProgramTest, EncodeDecodeRoundTrip) {
  Fixture f;
  Program p = *LowerProgram(f.Request());
  const std::string bytes = EncodeProgram(p);
  absl::StatusOr<Program> back = DecodeProgram(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->graph.Dump(), p.graph.Dump());
  EXPECT_EQ(back->graph.Fingerprint(), p.graph.Fingerprint());
  EXPECT_EQ(back->uploads, p.uploads);
  EXPECT_EQ(back->outputs, p.outputs);
  EXPECT_EQ(back->keep, p.keep);
  EXPECT_EQ(back->resident, p.resident);
  EXPECT_EQ(EncodeProgram(*back), bytes);
}

TEST(ProgramTest, DecodeRefusesEveryTruncationAndWrongVersion) {
  Fixture f;
  const std::string bytes = EncodeProgram(*LowerProgram(f.Request()));
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodeProgram(bytes.substr(0, n)).ok()) << "prefix of " << n << " bytes";
  }
  std::string wrong = bytes;
  wrong[8] = 9;  // version
  absl::Status s = DecodeProgram(wrong).status();
  EXPECT_NE(std::string(s.message()).find("version"), std::string::npos) << s;
  EXPECT_FALSE(DecodeProgram(bytes + "x").ok());
  MessageLimits tiny;
  tiny.max_program_bytes = 16;
  EXPECT_FALSE(DecodeProgram(bytes, tiny).ok());
}

TEST(ProgramTest, DecodeRefusesTablesThatContradictTheGraph) {
  Fixture f;
  Program p = *LowerProgram(f.Request());
  Program bad_size = p;
  bad_size.uploads[0].nbytes = 8;
  EXPECT_FALSE(DecodeProgram(EncodeProgram(bad_size)).ok());
  Program bad_class = p;
  bad_class.uploads[0].upload_class = UploadClass::kActivations;
  EXPECT_FALSE(DecodeProgram(EncodeProgram(bad_class)).ok());
  Program missing_resident = p;
  missing_resident.resident.clear();
  EXPECT_FALSE(DecodeProgram(EncodeProgram(missing_resident)).ok());
  Program bad_output = p;
  bad_output.outputs[0].nbytes = 1;
  EXPECT_FALSE(DecodeProgram(EncodeProgram(bad_output)).ok());
  Program bad_keep = p;
  bad_keep.keep[0].buffer = 4000;
  EXPECT_FALSE(DecodeProgram(EncodeProgram(bad_keep)).ok());
}

}  // namespace
}  // namespace genie::plan
