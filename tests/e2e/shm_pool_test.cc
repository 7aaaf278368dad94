// File: tests/e2e/shm_pool_test.cc
// The Shm tensor pool end to end, with an in-process NodeServer on a Unix socket: runs
// through the pool give bit-for-bit the results of runs through the rings (and of the local
// interpreter); a full pool falls back to the rings; outputs alias their pool blocks and
// outlive the executor and the node; the frontend's `.to(remote)` snapshot lands in the pool
// and its output tensor aliases a block; malformed references are refused with an Error and
// the session goes on; a node lost mid-run retires the pool.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "examples/report.h"
#include "genie/client/remote_executor.h"
#include "genie/client/session.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/frontend/remote_device.h"
#include "genie/plan/messages.h"
#include "genie/plan/program.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/auth.h"
#include "genie/transport/pool.h"
#include "genie/transport/shm.h"
#include "gtest/gtest.h"

namespace genie::e2e {
namespace {

using client::RemoteExecutor;
using core::Arg;
using core::BufferKind;
using core::testing::Borrow;
using core::testing::GraphBuilder;
using core::testing::Vec;
using transport::MessageKind;
using transport::Shm;
using transport::ShmRingsOnly;

const std::string kKey = "shm-pool-test-key-0123456789abcdef";
constexpr int64_t kN = 256 * 1024;  // floats: 1 MiB per large tensor

// A pool that holds exactly one 1 MiB tensor.
struct OneMiBPoolShm : Shm {
  static constexpr uint64_t kPoolBytes = uint64_t{1} << 20;
};

std::string Pattern(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = scale * static_cast<float>((i * 7919) % 1000 - 500);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// y = x * w (1 MiB each; w a parameter kept under handle 21, or resident), s = a + a (64 B).
struct Scale {
  core::Graph g;
  core::BufferId x, w, a, y, s;
  explicit Scale(bool resident) {
    GraphBuilder gb(&g);
    w = gb.Buffer(kN, resident ? BufferKind::kResident : BufferKind::kParameter, "w", 21);
    x = gb.Buffer(kN, BufferKind::kHostInput);
    a = gb.Buffer(16, BufferKind::kHostInput);
    y = gb.Buffer(kN);
    s = gb.Buffer(16);
    gb.Op("aten::mul.Tensor", {Arg::Tensor(Vec(x, kN)), Arg::Tensor(Vec(w, kN))}, {Vec(y, kN)});
    gb.Op("aten::add.Tensor", {Arg::Tensor(Vec(a, 16)), Arg::Tensor(Vec(a, 16)), Arg::Int(1)},
          {Vec(s, 16)});
    g.outputs().push_back(Vec(y, kN));
    g.outputs().push_back(Vec(s, 16));
  }
};

struct Data {
  std::string w = Pattern(kN, 0.5f);
  std::string x = Pattern(kN, 0.25f);
  std::string x2 = Pattern(kN, -1.5f);
  std::string a = Pattern(16, 2.0f);
};

core::ExecuteRequest First(const Scale& m, const Data& d) {
  core::ExecuteRequest r;
  r.graph = &m.g;
  r.fingerprint = 3001;
  r.uploads = {{m.w, Borrow(d.w)}, {m.x, Borrow(d.x)}, {m.a, Borrow(d.a)}};
  r.keep = {m.w};
  return r;
}

core::ExecuteRequest Later(const Scale& m, const Data& d) {
  core::ExecuteRequest r;
  r.graph = &m.g;
  r.fingerprint = 3002;
  r.uploads = {{m.x, Borrow(d.x2)}, {m.a, Borrow(d.a)}};
  return r;
}

std::string Bytes(const core::HostBytes& h) {
  return std::string(static_cast<const char*>(h.data), h.nbytes);
}

// A genie-node in this process, listening on a Unix socket (and loopback Tcp).
class PoolNode {
 public:
  PoolNode() {
    runtime::NodeOptions options;
    options.log_runs = false;
    options.log_connections = false;
    static std::atomic<int> counter{0};
    options.shm_socket = absl::StrCat("/tmp/genie-pool-e2e-", getpid(), "-", counter++, ".sock");
    auto server = runtime::NodeServer::Create("127.0.0.1", 0, kKey, options);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { server_->Serve(); });
  }
  ~PoolNode() { Stop(); }
  void Stop() {
    if (!server_) return;
    server_->Shutdown();
    thread_.join();
    server_.reset();
  }
  const std::string& path() const { return server_->shm_socket(); }

  template <class P>
  std::shared_ptr<RemoteExecutor<P>> Connect() {
    auto c = RemoteExecutor<P>::Connect(path(), kKey);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::shared_ptr<RemoteExecutor<P>>(std::move(*c)) : nullptr;
  }

 private:
  std::unique_ptr<runtime::NodeServer> server_;
  std::thread thread_;
};

TEST(ShmPoolTest, PoolAndRingsGiveTheSameBytesAsTheLocalInterpreter) {
  PoolNode node;
  Data d;
  Scale first(false), later(true);
  runtime::Interpreter local;
  auto want1 = local.Execute(First(first, d));
  ASSERT_TRUE(want1.ok()) << want1.status();
  auto want2 = local.Execute(Later(later, d));
  ASSERT_TRUE(want2.ok()) << want2.status();

  auto pooled = node.Connect<Shm>();
  auto rings = node.Connect<ShmRingsOnly>();
  ASSERT_NE(pooled, nullptr);
  ASSERT_NE(rings, nullptr);
  ASSERT_NE(pooled->pool(), nullptr);
  EXPECT_EQ(rings->pool(), nullptr);
  for (auto* exec : {static_cast<core::Executor*>(pooled.get()), static_cast<core::Executor*>(rings.get())}) {
    auto got1 = exec->Execute(First(first, d));
    ASSERT_TRUE(got1.ok()) << got1.status();
    ASSERT_EQ(got1->outputs.size(), 2u);
    EXPECT_EQ(Bytes(got1->outputs[0]), Bytes(want1->outputs[0]));
    EXPECT_EQ(Bytes(got1->outputs[1]), Bytes(want1->outputs[1]));
    for (int step = 0; step < 3; ++step) {  // w resident on the node
      auto got2 = exec->Execute(Later(later, d));
      ASSERT_TRUE(got2.ok()) << got2.status();
      EXPECT_EQ(Bytes(got2->outputs[0]), Bytes(want2->outputs[0]));
      EXPECT_EQ(Bytes(got2->outputs[1]), Bytes(want2->outputs[1]));
      EXPECT_TRUE(got2->outputs[0].exclusive);
    }
  }
  // The pooled run sent w and x (1 MiB each) and received y through the pool; the small
  // tensors went through the ring. Both executors count the same bytes moved.
  using transport::Direction;
  using transport::TrafficClass;
  const transport::TrafficSnapshot in_pool = pooled->pool_traffic();
  EXPECT_EQ(in_pool.Bytes(Direction::kSent, TrafficClass::kWeights), uint64_t{1} << 20);
  EXPECT_EQ(in_pool.Bytes(Direction::kSent, TrafficClass::kActivations), uint64_t{4} << 20);
  EXPECT_EQ(in_pool.Bytes(Direction::kReceived, TrafficClass::kActivations), uint64_t{4} << 20);
  EXPECT_EQ(rings->pool_traffic().TotalBytes(Direction::kSent), 0u);
  const transport::TrafficSnapshot ring_only = pooled->traffic() - in_pool;
  EXPECT_LT(ring_only.TotalBytes(Direction::kSent), uint64_t{64} << 10);
  EXPECT_LT(ring_only.TotalBytes(Direction::kReceived), uint64_t{64} << 10);
  // The same bytes, less the one weights frame's header the pool saved.
  EXPECT_EQ(pooled->traffic().Bytes(Direction::kSent, TrafficClass::kWeights) + transport::kFrameHeaderBytes,
            rings->traffic().Bytes(Direction::kSent, TrafficClass::kWeights));
  // Nothing holds a block once the results are gone.
  EXPECT_EQ(pooled->pool()->stats().blocks, 0u);
}

TEST(ShmPoolTest, AnOutputAliasesItsBlockAndOutlivesTheExecutorAndTheNode) {
  Data d;
  Scale first(false);
  runtime::Interpreter local;
  auto want = local.Execute(First(first, d));
  ASSERT_TRUE(want.ok()) << want.status();
  std::optional<core::ExecuteResult> kept;
  std::weak_ptr<transport::SharedPool> pool;
  {
    PoolNode node;
    auto exec = node.Connect<Shm>();
    ASSERT_NE(exec, nullptr);
    auto got = exec->Execute(First(first, d));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(exec->pool()->Contains(got->outputs[0].data, got->outputs[0].nbytes));
    EXPECT_FALSE(exec->pool()->Contains(got->outputs[1].data, got->outputs[1].nbytes));  // 64 B: ring
    EXPECT_EQ(exec->pool()->stats().blocks, 1u);
    pool = exec->pool();
    kept = std::move(*got);
  }  // the executor, its connection and the node are gone
  ASSERT_FALSE(pool.expired());
  EXPECT_EQ(Bytes(kept->outputs[0]), Bytes(want->outputs[0]));
  kept.reset();
  EXPECT_TRUE(pool.expired());  // the last block unmapped the pool
}

TEST(ShmPoolTest, AFullPoolFallsBackToTheRings) {
  PoolNode node;
  Data d;
  Scale first(false), later(true);
  runtime::Interpreter local;
  auto want1 = local.Execute(First(first, d));
  auto want2 = local.Execute(Later(later, d));
  ASSERT_TRUE(want1.ok() && want2.ok());
  auto exec = node.Connect<OneMiBPoolShm>();
  ASSERT_NE(exec, nullptr);
  // Room for one tensor: w goes through the pool, x and y through the rings.
  auto got1 = exec->Execute(First(first, d));
  ASSERT_TRUE(got1.ok()) << got1.status();
  EXPECT_EQ(Bytes(got1->outputs[0]), Bytes(want1->outputs[0]));
  EXPECT_EQ(exec->pool_traffic().TotalBytes(transport::Direction::kSent), uint64_t{1} << 20);
  EXPECT_EQ(exec->pool_traffic().TotalBytes(transport::Direction::kReceived), 0u);
  // The whole pool held elsewhere: everything through the rings, nothing fails.
  std::shared_ptr<transport::PoolBlock> hog = exec->pool()->Allocate(uint64_t{1} << 20);
  ASSERT_NE(hog, nullptr);
  const transport::TrafficSnapshot before = exec->pool_traffic();
  auto got2 = exec->Execute(Later(later, d));
  ASSERT_TRUE(got2.ok()) << got2.status();
  EXPECT_EQ(Bytes(got2->outputs[0]), Bytes(want2->outputs[0]));
  EXPECT_EQ(exec->pool_traffic(), before);
  EXPECT_TRUE(exec->Staging(uint64_t{1} << 20).data == nullptr);
  EXPECT_GT(exec->pool()->stats().refusals, 0);
  // Room again: x goes through the pool (y, 1 MiB too, finds it taken by then and comes
  // through the ring).
  hog.reset();
  auto got3 = exec->Execute(Later(later, d));
  ASSERT_TRUE(got3.ok()) << got3.status();
  EXPECT_EQ(Bytes(got3->outputs[0]), Bytes(want2->outputs[0]));
  EXPECT_GT(exec->pool_traffic().TotalBytes(transport::Direction::kSent),
            before.TotalBytes(transport::Direction::kSent));
}

TEST(ShmPoolTest, FrontendSnapshotLandsInThePoolAndTheOutputAliasesABlock) {
  torch::NoGradGuard no_grad;
  PoolNode node;
  auto exec = node.Connect<Shm>();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  const torch::Device remote(std::string(frontend::EnsureRegistered()) + ":0");
  const torch::Tensor x = torch::randn({kN});
  const torch::Tensor w = torch::randn({kN});
  const torch::Tensor want = x * w + 1.0;
  for (int i = 0; i < 3; ++i) {
    const int64_t allocations = exec->pool()->stats().allocations;
    const transport::TrafficSnapshot traffic = exec->traffic(), in_pool = exec->pool_traffic();
    torch::Tensor got = (x.to(remote) * w.to(remote) + 1.0).to(torch::kCPU);
    EXPECT_TRUE(torch::equal(got, want));
    // The output tensor is the pool block the node wrote.
    EXPECT_TRUE(exec->pool()->Contains(got.data_ptr(), static_cast<size_t>(got.nbytes())));
    // Two snapshots staged in the pool plus one output block, and no upload copied at send
    // time (that would be a fourth allocation).
    EXPECT_EQ(exec->pool()->stats().allocations - allocations, 3);
    const transport::TrafficSnapshot ring = (exec->traffic() - traffic) - (exec->pool_traffic() - in_pool);
    EXPECT_LT(ring.TotalBytes(transport::Direction::kSent), uint64_t{64} << 10);
    EXPECT_LT(ring.TotalBytes(transport::Direction::kReceived), uint64_t{64} << 10);
  }
  frontend::SetExecutor(std::make_shared<runtime::Interpreter>());
  EXPECT_EQ(exec->pool()->stats().blocks, 0u);
}

// Outputs in the order [s, y] and [s, y, t] (s, t 64 B through the ring; y 1 MiB into its
// pool block): the ring outputs share no frame with the pooled one and land where they belong.
struct SmallFirst {
  core::Graph g;
  core::BufferId x, w, a, y, s, t;
  explicit SmallFirst(bool small_after) {
    GraphBuilder gb(&g);
    w = gb.Buffer(kN, BufferKind::kParameter, "w", 31);
    x = gb.Buffer(kN, BufferKind::kHostInput);
    a = gb.Buffer(16, BufferKind::kHostInput);
    y = gb.Buffer(kN);
    s = gb.Buffer(16);
    t = gb.Buffer(16);
    gb.Op("aten::mul.Tensor", {Arg::Tensor(Vec(x, kN)), Arg::Tensor(Vec(w, kN))}, {Vec(y, kN)});
    gb.Op("aten::add.Tensor", {Arg::Tensor(Vec(a, 16)), Arg::Tensor(Vec(a, 16)), Arg::Int(1)},
          {Vec(s, 16)});
    gb.Op("aten::mul.Tensor", {Arg::Tensor(Vec(a, 16)), Arg::Tensor(Vec(a, 16))}, {Vec(t, 16)});
    g.outputs().push_back(Vec(s, 16));
    g.outputs().push_back(Vec(y, kN));
    if (small_after) g.outputs().push_back(Vec(t, 16));
  }
  core::ExecuteRequest Request(const Data& d, uint64_t fingerprint) const {
    core::ExecuteRequest r;
    r.graph = &g;
    r.fingerprint = fingerprint;
    r.uploads = {{w, Borrow(d.w)}, {x, Borrow(d.x)}, {a, Borrow(d.a)}};
    return r;
  }
};

TEST(ShmPoolTest, RingOutputsBeforeAndAfterAPooledOneLandInPlace) {
  PoolNode node;
  Data d;
  auto exec = node.Connect<Shm>();
  ASSERT_NE(exec, nullptr);
  runtime::Interpreter local;
  uint64_t fingerprint = 3100;
  for (bool small_after : {false, true}) {
    SCOPED_TRACE(small_after ? "[ring, pooled, ring]" : "[ring, pooled]");
    SmallFirst m(small_after);
    auto want = local.Execute(m.Request(d, ++fingerprint));
    ASSERT_TRUE(want.ok()) << want.status();
    for (int step = 0; step < 2; ++step) {  // the program sent, then cached
      auto got = exec->Execute(m.Request(d, fingerprint));
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->outputs.size(), want->outputs.size());
      for (size_t k = 0; k < want->outputs.size(); ++k) {
        EXPECT_EQ(Bytes(got->outputs[k]), Bytes(want->outputs[k])) << "output " << k;
      }
      EXPECT_TRUE(exec->pool()->Contains(got->outputs[1].data, got->outputs[1].nbytes));
      EXPECT_FALSE(exec->pool()->Contains(got->outputs[0].data, got->outputs[0].nbytes));
    }
  }
  EXPECT_EQ(exec->pool()->stats().blocks, 0u);
}

// Through a Session (the pipeline and scheduler between the frontend and the executor): the
// snapshot is staged in the pool and the outputs come back through it; over the rings-only
// policy nothing goes through a pool. Results equal local libtorch either way.
template <class D>
void SessionRoundTrip(bool pooled) {
  torch::NoGradGuard no_grad;
  SessionOptions options;
  options.embedded.log_connections = false;
  options.embedded.log_runs = false;
  auto session = Session<D>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device remote((*session)->device());
  const torch::Tensor x = torch::randn({8, 3, 64, 64});  // 393 KiB
  for (int i = 0; i < 3; ++i) {
    torch::Tensor got = (x.to(remote) * 2.0 - 1.0).to(torch::kCPU);
    EXPECT_TRUE(torch::equal(got, x * 2.0 - 1.0));
  }
  const transport::TrafficSnapshot in_pool = (*session)->pool_traffic();
  const uint64_t bytes = 3 * static_cast<uint64_t>(x.nbytes());
  EXPECT_EQ(in_pool.TotalBytes(transport::Direction::kSent), pooled ? bytes : 0);
  EXPECT_EQ(in_pool.TotalBytes(transport::Direction::kReceived), pooled ? bytes : 0);
  EXPECT_GE((*session)->traffic().TotalBytes(transport::Direction::kSent), bytes);
}

TEST(ShmPoolTest, SessionsOverThePoolAndOverTheRings) {
  SessionRoundTrip<examples::SemanticShmDeployment>(/*pooled=*/true);
  SessionRoundTrip<examples::SemanticShmRingsDeployment>(/*pooled=*/false);
}

// ---- A raw client: references no Genie client sends -------------------------------------

template <class P>
class RawPoolClient {
 public:
  explicit RawPoolClient(const std::string& path) {
    auto c = transport::Connection<P>::Connect(path, absl::Seconds(5));
    EXPECT_TRUE(c.ok()) << c.status();
    conn_.emplace(std::move(*c));
    EXPECT_TRUE(transport::AuthenticateClient(*conn_, kKey, absl::Seconds(5)).ok());
    // Program 5: the Scale graph with w resident (first uploaded by a run of program 4).
    for (auto [id, resident] : {std::pair<uint64_t, bool>{4, false}, {5, true}}) {
      Scale& m = resident ? later_ : first_;
      core::ExecuteRequest r = resident ? Later(m, d_) : First(m, d_);
      auto program = plan::LowerProgram(r);
      EXPECT_TRUE(program.ok()) << program.status();
      auto binding = plan::BindRun(*program, r);
      EXPECT_TRUE(binding.ok()) << binding.status();
      bindings_[resident] = *binding;
      EXPECT_TRUE(
          conn_->SendBytes(MessageKind::kLoadProgram, 1, plan::EncodeLoadProgram(id, plan::EncodeProgram(*program)))
              .ok());
    }
  }
  transport::Connection<P>& conn() { return *conn_; }

  // A run of program 5 (x at `x_offset` in the pool when not kNotPooled, `a` through the
  // ring, y reserved at `y_offset` when set); returns the node's answer's kind and message.
  std::pair<MessageKind, std::string> Run(uint64_t id, uint64_t x_offset, std::optional<uint64_t> y_offset) {
    plan::RunMessage run;
    run.program_id = 5;
    run.binding = bindings_[true];
    run.uploads = {{later_.x, plan::UploadClass::kActivations, kN * 4, x_offset},
                   {later_.a, plan::UploadClass::kActivations, 64}};
    if (x_offset == plan::kNotPooled) run.uploads[0].pool_offset = plan::kNotPooled;
    if (y_offset) run.outputs_in_pool = {{0, *y_offset, kN * 4}};
    EXPECT_TRUE(conn_->SendBytes(MessageKind::kRun, id, plan::EncodeRun(run)).ok());
    std::vector<transport::Piece> pieces;
    if (!run.uploads[0].pooled()) pieces.push_back({d_.x2.data(), d_.x2.size()});
    pieces.push_back({d_.a.data(), d_.a.size()});
    EXPECT_TRUE(conn_->Send(MessageKind::kTransfer, id, pieces, transport::TrafficClass::kActivations).ok());
    auto f = conn_->Receive(absl::Seconds(10));
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return {MessageKind::kGoodbye, ""};
    if (f->header.kind == MessageKind::kError) {
      auto e = plan::DecodeError(f->payload);
      return {MessageKind::kError, e.ok() ? e->ToStatus().ToString() : "undecodable"};
    }
    plan::ResultMessage result;
    EXPECT_TRUE(plan::DecodeResult(f->payload, {}, &result).ok());
    // The outputs not in the pool follow in one frame.
    uint64_t ring_bytes = 0;
    for (size_t k = 0; k < result.output_bytes.size(); ++k) {
      bool in_pool = false;
      for (uint32_t p : result.pooled_outputs) in_pool |= p == k;
      if (!in_pool) ring_bytes += result.output_bytes[k];
    }
    auto out = conn_->Receive(absl::Seconds(10));
    EXPECT_TRUE(out.ok()) << out.status();
    if (out.ok()) {
      EXPECT_EQ(out->payload.size(), ring_bytes);
    }
    return {f->header.kind, absl::StrCat(result.pooled_outputs.size(), " pooled")};
  }

  Data d_;
  Scale first_{false}, later_{true};
  plan::RunBinding bindings_[2];
  std::optional<transport::Connection<P>> conn_;
};

TEST(ShmPoolTest, MalformedReferencesAreRefusedAndTheSessionGoesOn) {
  PoolNode node;
  RawPoolClient<Shm> raw(node.path());
  // Program 4 once, through the rings: w becomes resident.
  {
    plan::RunMessage run;
    run.program_id = 4;
    run.binding = raw.bindings_[false];
    run.uploads = {{raw.first_.w, plan::UploadClass::kWeights, kN * 4},
                   {raw.first_.x, plan::UploadClass::kActivations, kN * 4},
                   {raw.first_.a, plan::UploadClass::kActivations, 64}};
    ASSERT_TRUE(raw.conn().SendBytes(MessageKind::kRun, 1, plan::EncodeRun(run)).ok());
    transport::Piece w{raw.d_.w.data(), raw.d_.w.size()};
    ASSERT_TRUE(raw.conn().Send(MessageKind::kTransfer, 1, absl::MakeConstSpan(&w, 1),
                                transport::TrafficClass::kWeights).ok());
    transport::Piece xa[] = {{raw.d_.x.data(), raw.d_.x.size()}, {raw.d_.a.data(), raw.d_.a.size()}};
    ASSERT_TRUE(raw.conn().Send(MessageKind::kTransfer, 1, xa, transport::TrafficClass::kActivations).ok());
    auto f = raw.conn().Receive(absl::Seconds(10));
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_EQ(f->header.kind, MessageKind::kResult);
    ASSERT_TRUE(raw.conn().Receive(absl::Seconds(10)).ok());  // the outputs
  }
  const uint64_t pool_bytes = Shm::kPoolBytes;
  std::shared_ptr<transport::SharedPool> pool = raw.conn().pool();
  ASSERT_NE(pool, nullptr);
  std::memcpy(pool->base() + 4096, raw.d_.x2.data(), raw.d_.x2.size());

  // Outside the pool.
  auto [kind, message] = raw.Run(2, pool_bytes - 4096, std::nullopt);
  EXPECT_EQ(kind, MessageKind::kError);
  EXPECT_NE(message.find("reaches outside the connection's"), std::string::npos) << message;
  // The output's block overlaps the upload's.
  std::tie(kind, message) = raw.Run(3, 4096, 4096 + 8192);
  EXPECT_EQ(kind, MessageKind::kError);
  EXPECT_NE(message.find("overlaps"), std::string::npos) << message;
  // A good run on the same session: x from the pool, y into it.
  std::tie(kind, message) = raw.Run(4, 4096, uint64_t{8} << 20);
  ASSERT_EQ(kind, MessageKind::kResult) << message;
  EXPECT_EQ(message, "1 pooled");
  runtime::Interpreter local;
  ASSERT_TRUE(local.Execute(First(raw.first_, raw.d_)).ok());
  auto want = local.Execute(Later(raw.later_, raw.d_));
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(std::memcmp(pool->base() + (uint64_t{8} << 20), want->outputs[0].data, kN * 4), 0);
}

TEST(ShmPoolTest, AReferenceOnAConnectionWithoutAPoolIsRefused) {
  PoolNode node;
  RawPoolClient<ShmRingsOnly> raw(node.path());
  auto [kind, message] = raw.Run(2, 4096, std::nullopt);
  EXPECT_EQ(kind, MessageKind::kError);
  EXPECT_NE(message.find("FAILED_PRECONDITION"), std::string::npos) << message;
  EXPECT_NE(message.find("this connection has none"), std::string::npos) << message;
  // Still in step.
  ASSERT_TRUE(raw.conn().SendBytes(MessageKind::kPing, 9, "").ok());
  auto pong = raw.conn().Receive(absl::Seconds(5));
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
}

TEST(ShmPoolTest, ANodeLostMidRunRetiresThePool) {
  // A fake node: authenticates, answers the ping, takes the Run and its bytes, then dies
  // without answering.
  static std::atomic<int> counter{0};
  const std::string path = absl::StrCat("/tmp/genie-pool-lost-", getpid(), "-", counter++, ".sock");
  auto listener = transport::Listener<Shm>::Create(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::thread fake([&] {
    auto conn = listener->Accept(absl::Seconds(10));
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE(transport::AuthenticateServer(*conn, kKey, absl::Seconds(5)).ok());
    auto ping = conn->Receive(absl::Seconds(5));
    ASSERT_TRUE(ping.ok());
    ASSERT_TRUE(conn->SendBytes(MessageKind::kPong, ping->header.request_id,
                                plan::EncodeNodeInfo({"cpu", 64 << 20, 64, 0})).ok());
    for (int frames = 0; frames < 3; ++frames) {  // LoadProgram, Run, the ring's transfer
      auto f = conn->Receive(absl::Seconds(5));
      ASSERT_TRUE(f.ok()) << f.status();
    }
    conn->Close();  // gone mid-run
  });
  auto exec = RemoteExecutor<Shm>::Connect(path, kKey);
  ASSERT_TRUE(exec.ok()) << exec.status();
  Data d;
  Scale first(false);
  auto got = (*exec)->Execute(First(first, d));
  fake.join();
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsUnavailable(got.status())) << got.status();
  // The node may still have been writing y's block: nothing of that pool is handed out again.
  EXPECT_TRUE((*exec)->pool()->stats().closed);
  EXPECT_TRUE((*exec)->Staging(uint64_t{1} << 20).data == nullptr);
  EXPECT_EQ((*exec)->pool()->Allocate(4096), nullptr);
}

}  // namespace
}  // namespace genie::e2e
