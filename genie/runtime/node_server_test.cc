// File: genie/runtime/node_server_test.cc
// genie-node's session loop in process: a hand-built graph (aten::mm + aten::add) run
// through RemoteExecutor -> ServeConnection over InProcess and loopback Tcp must match
// runtime::Interpreter directly; residency, program caching, the memory budget, and the
// refusal of malformed messages (Error frame, then the connection closes).
#include "genie/runtime/node_server.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "genie/client/remote_executor.h"
#include "genie/core/cpu_cores.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/core/status.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/plan/messages.h"
#include "genie/plan/program.h"
#include "genie/runtime/cpu_lanes.h"
#include "genie/runtime/interpreter.h"
#include "genie/transport/auth.h"
#include "genie/transport/inprocess.h"
#include "genie/transport/pool.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"

namespace genie::runtime {
namespace {

using core::Arg;
using core::Buffer;
using core::BufferKind;
using core::DType;
using core::TensorRef;
using core::testing::Borrow;
using core::testing::Floats;
using core::testing::GraphBuilder;
using core::testing::Mat;
using core::testing::Vec;
using transport::Connection;
using transport::InProcess;
using transport::MessageKind;
using transport::Shm;
using transport::Tcp;

const std::string kKey = "node-server-test-key-0123456789abcdef";

// z = x @ w + b: x [2,8] uploaded, w [8,8] and b [2,8] parameters (or resident).
struct MmAdd {
  core::Graph g;
  core::BufferId x, w, b, y, z;

  explicit MmAdd(bool weights_resident) {
    const BufferKind wk = weights_resident ? BufferKind::kResident : BufferKind::kParameter;
    GraphBuilder gb(&g);
    x = gb.Buffer(16, BufferKind::kHostInput);
    w = gb.Buffer(64, wk, "fc.weight", 11);
    b = gb.Buffer(16, wk, "fc.bias", 12);
    y = gb.Buffer(16);
    z = gb.Buffer(16);
    gb.Op("aten::mm", {Mat(x, 2, 8), Mat(w, 8, 8)}, Mat(y, 2, 8));
    gb.Op("aten::add.Tensor", {Arg::Tensor(Mat(y, 2, 8)), Arg::Tensor(Mat(b, 2, 8)), Arg::Int(1)},
          {Mat(z, 2, 8)});
    g.outputs().push_back(Mat(z, 2, 8));
  }
};

struct Data {
  std::string x = Floats(16, 1.0f);
  std::string x2 = Floats(16, -2.0f);
  std::string w = Floats(64, 0.5f);
  std::string b = Floats(16, 0.25f);
};

// First step: uploads weights and keeps them. Later steps: weights resident.
core::ExecuteRequest FirstStep(const MmAdd& m, const Data& d, const std::string& x) {
  core::ExecuteRequest req;
  req.graph = &m.g;
  req.fingerprint = 1001;
  req.uploads = {{m.x, Borrow(x)}, {m.w, Borrow(d.w)}, {m.b, Borrow(d.b)}};
  req.keep = {m.w, m.b};
  return req;
}

core::ExecuteRequest LaterStep(const MmAdd& m, const std::string& x) {
  core::ExecuteRequest req;
  req.graph = &m.g;
  req.fingerprint = 1002;
  req.uploads = {{m.x, Borrow(x)}};
  return req;
}

// A session's MmAdd steps with their data, and what runtime::Interpreter computes for them:
// the reference a node's results must match. The first step uploads x with the weights and
// keeps them; a later step uploads x2 and finds the weights resident (the same values as a
// first step with x2).
struct MmAddSession {
  Data d;
  MmAdd first{false};
  MmAdd later{true};
  Interpreter local;
  core::ExecuteResult want_first;  // FirstStep(first, d, d.x)
  core::ExecuteResult want_later;  // then LaterStep(later, d.x2)

  // Runs the first step, then the later one, on `local`.
  absl::Status RunLocally() {
    GENIE_ASSIGN_OR_RETURN(want_first, local.Execute(FirstStep(first, d, d.x)));
    GENIE_ASSIGN_OR_RETURN(want_later, local.Execute(LaterStep(later, d.x2)));
    return absl::OkStatus();
  }
};

std::vector<float> AsFloats(const core::HostBytes& h) {
  std::vector<float> v(h.nbytes / sizeof(float));
  if (h.nbytes) std::memcpy(v.data(), h.data, h.nbytes);
  return v;
}

void ExpectSameOutputs(const core::ExecuteResult& got, const core::ExecuteResult& want) {
  ASSERT_EQ(got.outputs.size(), want.outputs.size());
  for (size_t k = 0; k < got.outputs.size(); ++k) {
    const std::vector<float> a = AsFloats(got.outputs[k]), b = AsFloats(want.outputs[k]);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6) << "output " << k << "[" << i << "]";
  }
}

// A session served on a thread over an InProcess pair.
struct InProcessNode {
  std::atomic<bool> stop{false};
  std::thread thread;
  absl::Status ended;
  std::optional<Connection<InProcess>> client_end;

  explicit InProcessNode(NodeOptions options = {}) {
    options.log_runs = false;
    auto pair = Connection<InProcess>::CreatePair();
    EXPECT_TRUE(pair.ok());
    client_end.emplace(std::move(pair->first));
    thread = std::thread([this, options, server = std::move(pair->second)]() mutable {
      ended = ServeConnection(server, kKey, options, stop);
    });
  }
  ~InProcessNode() {
    stop = true;
    if (client_end) client_end->Close();
    thread.join();
  }
  absl::StatusOr<std::unique_ptr<client::RemoteExecutor<InProcess>>> Attach(
      const std::string& key = kKey) {
    auto conn = std::move(*client_end);
    client_end.reset();
    client::RemoteExecutorOptions o;
    o.run_timeout = absl::Seconds(30);
    return client::RemoteExecutor<InProcess>::Attach(std::move(conn), "inprocess-node", key, o);
  }
};

TEST(NodeServerTest, MmAddMatchesInterpreterAndKeepsWeightsResident) {
  MmAddSession mm;
  const absl::Status reference = mm.RunLocally();
  ASSERT_TRUE(reference.ok()) << reference;

  InProcessNode node;
  auto remote = node.Attach();
  ASSERT_TRUE(remote.ok()) << remote.status();
  client::RemoteExecutor<InProcess>& r = **remote;
  EXPECT_EQ(r.Describe(), "genie-node inprocess-node (cpu)");
  EXPECT_EQ(r.node_info().device, "cpu");

  auto got1 = r.Execute(FirstStep(mm.first, mm.d, mm.d.x));
  ASSERT_TRUE(got1.ok()) << got1.status();
  ExpectSameOutputs(*got1, mm.want_first);
  EXPECT_FALSE(got1->stats.program_cache_hit);
  EXPECT_EQ(got1->stats.nodes_executed, 2);
  EXPECT_EQ(got1->stats.bytes_uploaded, 64 + 256 + 64);
  EXPECT_EQ(got1->stats.resident_bytes, 256 + 64);
  const transport::TrafficSnapshot after1 = r.traffic();
  EXPECT_EQ(after1.Bytes(transport::Direction::kSent, transport::TrafficClass::kWeights),
            320u + transport::kFrameHeaderBytes);
  EXPECT_EQ(after1.Bytes(transport::Direction::kSent, transport::TrafficClass::kActivations),
            64u + transport::kFrameHeaderBytes);
  EXPECT_EQ(after1.Bytes(transport::Direction::kReceived, transport::TrafficClass::kActivations),
            64u + transport::kFrameHeaderBytes);

  for (int step = 0; step < 3; ++step) {
    auto got2 = r.Execute(LaterStep(mm.later, mm.d.x2));
    ASSERT_TRUE(got2.ok()) << got2.status();
    ExpectSameOutputs(*got2, mm.want_later);
    EXPECT_EQ(got2->stats.program_cache_hit, step > 0);
  }
  const transport::TrafficSnapshot moved = r.traffic() - after1;
  EXPECT_EQ(moved.Bytes(transport::Direction::kSent, transport::TrafficClass::kWeights), 0u);
  EXPECT_EQ(moved.Frames(transport::Direction::kSent, transport::TrafficClass::kActivations), 3u);
}

TEST(NodeServerTest, RunsOverLoopbackTcpNodeServer) {
  NodeOptions options;
  options.log_runs = false;
  auto server = NodeServer::Create("127.0.0.1", 0, kKey, options);
  ASSERT_TRUE(server.ok()) << server.status();
  std::thread serving([&] { (*server)->Serve(); });
  MmAddSession mm;
  const absl::Status reference = mm.RunLocally();
  ASSERT_TRUE(reference.ok()) << reference;
  {
    auto a = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*server)->port(), kKey);
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*server)->port(), kKey);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*a)->Describe(), absl::StrCat("genie-node 127.0.0.1:", (*server)->port(), " (cpu)"));
    for (int i = 0; i < 2; ++i) {
      auto got_a = (*a)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
      ASSERT_TRUE(got_a.ok()) << got_a.status();
      ExpectSameOutputs(*got_a, mm.want_first);
      auto got_b = (*b)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
      ASSERT_TRUE(got_b.ok()) << got_b.status();
      ExpectSameOutputs(*got_b, mm.want_first);
    }
    EXPECT_EQ((*server)->active_sessions(), 2);
    // A wrong key is refused; the node keeps serving.
    auto wrong = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*server)->port(),
                                                      "another-key-0123456789abcdef0123");
    ASSERT_FALSE(wrong.ok());
    EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
    EXPECT_NE(std::string(wrong.status().message()).find("same key"), std::string::npos)
        << wrong.status();
    auto again = (*a)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
    EXPECT_TRUE(again.ok()) << again.status();
  }
  (*server)->Shutdown();
  serving.join();
  EXPECT_EQ((*server)->active_sessions(), 0);
}

// A client that asks for 8 sockets wherever it runs.
struct TcpAsksEight : Tcp {
  static constexpr int kLanes = 8;
  static constexpr bool kLanesByCores = false;
};

// The node grants what --max_lanes says, and by default half its own usable cores (at
// least one socket, at most 8), whatever the client asks for; the runs work either way.
TEST(NodeServerTest, GrantsLanesByItsOwnCoresUnlessToldHowMany) {
  MmAddSession mm;
  ASSERT_TRUE(mm.RunLocally().ok());
  for (int max_lanes : {0, 3, 1}) {
    SCOPED_TRACE(absl::StrCat("max_lanes ", max_lanes));
    NodeOptions options;
    options.log_runs = false;
    options.log_connections = false;
    options.max_lanes = max_lanes;
    const int want = max_lanes > 0 ? max_lanes : std::clamp(core::UsableCores() / 2, 1, 8);
    EXPECT_EQ(MaxLanesFor(options), want);
    auto server = NodeServer::Create("127.0.0.1", 0, kKey, options);
    ASSERT_TRUE(server.ok()) << server.status();
    std::thread serving([&] { (*server)->Serve(); });
    {
      auto c = client::RemoteExecutor<TcpAsksEight>::Connect("127.0.0.1", (*server)->port(), kKey);
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ((*c)->lanes(), want);
      auto got = (*c)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSameOutputs(*got, mm.want_first);
    }
    (*server)->Shutdown();
    serving.join();
  }
}

// A status query over a fresh authenticated Tcp connection, as genie-smi sends it.
absl::StatusOr<plan::NodeStatusMessage> QueryStatus(uint16_t port) {
  GENIE_ASSIGN_OR_RETURN(Connection<Tcp> conn,
                         Connection<Tcp>::Connect("127.0.0.1", port, absl::Seconds(5)));
  GENIE_RETURN_IF_ERROR(transport::AuthenticateClient(conn, kKey, absl::Seconds(5)));
  GENIE_RETURN_IF_ERROR(conn.SendBytes(MessageKind::kStats, 1, plan::EncodeStatusQuery()));
  GENIE_ASSIGN_OR_RETURN(transport::Frame f, conn.Receive(absl::Seconds(5)));
  (void)conn.SendBytes(MessageKind::kGoodbye, 0, "");
  if (f.header.kind != MessageKind::kStats) {
    return absl::InternalError(
        absl::StrCat("answer is ", transport::MessageKindName(f.header.kind)));
  }
  return plan::DecodeNodeStatus(f.payload);
}

TEST(NodeServerTest, StatusFromAFreshConnectionCountsEverySession) {
  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  auto server = NodeServer::Create("127.0.0.1", 0, kKey, options);
  ASSERT_TRUE(server.ok()) << server.status();
  std::thread serving([&] { (*server)->Serve(); });
  MmAddSession mm;
  ASSERT_TRUE(mm.RunLocally().ok());
  auto idle = QueryStatus((*server)->port());
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_EQ(idle->device, "cpu");
  EXPECT_EQ(idle->open_sessions, 0u);
  EXPECT_EQ(idle->runs, 0u);
  EXPECT_EQ(idle->programs_cached, 0u);
  EXPECT_EQ(idle->resident_bytes, 0);
  EXPECT_FALSE(idle->gpu);
  {
    auto a = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*server)->port(), kKey);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE((*a)->Execute(FirstStep(mm.first, mm.d, mm.d.x)).ok());  // keeps w, b
    auto busy = QueryStatus((*server)->port());  // while a's session is open
    ASSERT_TRUE(busy.ok()) << busy.status();
    EXPECT_EQ(busy->open_sessions, 1u);
    EXPECT_EQ(busy->sessions_served, 3u);  // idle's query, a, this query
    EXPECT_EQ(busy->runs, 1u);
    EXPECT_EQ(busy->run_errors, 0u);
    EXPECT_EQ(busy->programs_cached, 1u);
    EXPECT_EQ(busy->resident_bytes, 256 + 64);
    // a's uploads (384 bytes) and output (64), on top of what the first query moved.
    EXPECT_GE(busy->bytes_received, idle->bytes_received + 384);
    EXPECT_GE(busy->bytes_sent, idle->bytes_sent + 64);
    EXPECT_GT(busy->uptime_micros, idle->uptime_micros);
    // a's session was not disturbed: its weights are still resident.
    auto later = (*a)->Execute(LaterStep(mm.later, mm.d.x2));
    ASSERT_TRUE(later.ok()) << later.status();
    ExpectSameOutputs(*later, mm.want_later);
  }
  // a has gone: what it held left with it, what it did stays counted.
  absl::StatusOr<plan::NodeStatusMessage> after;
  for (int i = 0; i < 100; ++i) {  // its session ends on the node's thread
    after = QueryStatus((*server)->port());
    if (!after.ok() || after->open_sessions == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->open_sessions, 0u);
  EXPECT_EQ(after->runs, 2u);
  EXPECT_EQ(after->programs_cached, 0u);
  EXPECT_EQ(after->resident_bytes, 0);
  (*server)->Shutdown();
  serving.join();
}

TEST(NodeServerTest, ServesShmClientsOnItsUnixSocketBesideTcp) {
  NodeOptions options;
  options.log_runs = false;
  options.shm_socket = absl::StrCat("/tmp/genie-node-test-", getpid(), ".sock");
  auto server = NodeServer::Create("127.0.0.1", 0, kKey, options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->shm_socket(), options.shm_socket);
  // A second node cannot take the same socket path.
  auto clash = NodeServer::Create("127.0.0.1", 0, kKey, options);
  ASSERT_FALSE(clash.ok());
  EXPECT_NE(std::string(clash.status().message()).find("another process is listening"),
            std::string::npos)
      << clash.status();
  std::thread serving([&] { (*server)->Serve(); });
  MmAddSession mm;
  const absl::Status reference = mm.RunLocally();
  ASSERT_TRUE(reference.ok()) << reference;
  {
    auto shm = client::RemoteExecutor<Shm>::Connect(options.shm_socket, kKey);
    ASSERT_TRUE(shm.ok()) << shm.status();
    auto tcp = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*server)->port(), kKey);
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    EXPECT_EQ((*shm)->Describe(), absl::StrCat("genie-node shm:", options.shm_socket, " (cpu)"));
    auto got1 = (*shm)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
    ASSERT_TRUE(got1.ok()) << got1.status();
    ExpectSameOutputs(*got1, mm.want_first);
    for (int step = 0; step < 3; ++step) {  // weights stay resident in the shm session
      auto got2 = (*shm)->Execute(LaterStep(mm.later, mm.d.x2));
      ASSERT_TRUE(got2.ok()) << got2.status();
      ExpectSameOutputs(*got2, mm.want_later);
    }
    auto got_tcp = (*tcp)->Execute(FirstStep(mm.first, mm.d, mm.d.x));
    ASSERT_TRUE(got_tcp.ok()) << got_tcp.status();
    ExpectSameOutputs(*got_tcp, mm.want_first);
    EXPECT_EQ((*server)->active_sessions(), 2);
    // The same key rules apply over shared memory.
    auto wrong = client::RemoteExecutor<Shm>::Connect(options.shm_socket,
                                                      "another-key-0123456789abcdef0123");
    ASSERT_FALSE(wrong.ok());
    EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  }
  (*server)->Shutdown();
  serving.join();
  EXPECT_EQ((*server)->active_sessions(), 0);
  server->reset();
  // The node removed its socket: a client now gets a clear error naming the flag.
  auto gone = client::RemoteExecutor<Shm>::Connect(options.shm_socket, kKey);
  ASSERT_FALSE(gone.ok());
  EXPECT_TRUE(absl::IsUnavailable(gone.status())) << gone.status();
  EXPECT_NE(std::string(gone.status().message()).find("--shm_socket=" + options.shm_socket),
            std::string::npos)
      << gone.status();
}

TEST(NodeServerTest, MemoryBudgetGivesResourceExhaustedAndSessionGoesOn) {
  NodeOptions options;
  options.memory_budget_bytes = 200;  // the weights (320 bytes) do not fit
  InProcessNode node(options);
  auto remote = node.Attach();
  ASSERT_TRUE(remote.ok()) << remote.status();
  Data d;
  MmAdd first(false);
  auto r = (*remote)->Execute(FirstStep(first, d, d.x));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("memory_budget"), std::string::npos)
      << r.status();
  EXPECT_NE(std::string(r.status().message()).find("genie-node inprocess-node"), std::string::npos)
      << r.status();
  // Something that fits still runs on the same connection.
  GraphBuilder gb;
  core::Graph& g = gb.graph();
  const core::BufferId x = gb.Buffer(16, BufferKind::kHostInput);
  const core::BufferId y = gb.Buffer(16);
  gb.Op("aten::relu", {Vec(x, 16)}, Vec(y, 16));
  g.outputs().push_back(Vec(y, 16));
  core::ExecuteRequest req;
  req.graph = &g;
  req.uploads = {{x, Borrow(d.x)}};  // fingerprint 0: lowered every time
  auto ok = (*remote)->Execute(req);
  ASSERT_TRUE(ok.ok()) << ok.status();
  const std::vector<float> in = AsFloats(Borrow(d.x)), out = AsFloats(ok->outputs[0]);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], std::max(in[i], 0.0f));
}

TEST(NodeServerTest, OpErrorIsReportedAndSessionGoesOn) {
  InProcessNode node;
  auto remote = node.Attach();
  ASSERT_TRUE(remote.ok()) << remote.status();
  Data d;
  GraphBuilder gb;
  core::Graph& g = gb.graph();
  const core::BufferId x = gb.Buffer(16, BufferKind::kHostInput);
  const core::BufferId y = gb.Buffer(16);
  gb.Op("aten::no_such_op", {Vec(x, 16)}, Vec(y, 16));
  g.outputs().push_back(Vec(y, 16));
  core::ExecuteRequest req;
  req.graph = &g;
  req.fingerprint = 5;
  req.uploads = {{x, Borrow(d.x)}};
  auto r = (*remote)->Execute(req);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsNotFound(r.status())) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("aten::no_such_op"), std::string::npos);
  MmAdd first(false);
  EXPECT_TRUE((*remote)->Execute(FirstStep(first, d, d.x)).ok());
}

// ---- Node to node ---------------------------------------------------------------------

TEST(NodeServerTest, NodesSendResidentBuffersStraightToEachOther) {
  NodeOptions options;
  options.log_runs = false;
  auto node_a = NodeServer::Create("127.0.0.1", 0, kKey, options);
  auto node_b = NodeServer::Create("127.0.0.1", 0, kKey, options);
  auto stranger = NodeServer::Create("127.0.0.1", 0, "another-key-0123456789abcdef0123", options);
  ASSERT_TRUE(node_a.ok() && node_b.ok() && stranger.ok());
  std::thread serving_a([&] { (*node_a)->Serve(); });
  std::thread serving_b([&] { (*node_b)->Serve(); });
  std::thread serving_s([&] { (*stranger)->Serve(); });
  MmAddSession mm;
  const absl::Status reference = mm.RunLocally();
  ASSERT_TRUE(reference.ok()) << reference;
  {
    auto a = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*node_a)->port(), kKey);
    auto b = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", (*node_b)->port(), kKey);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE((*a)->Execute(FirstStep(mm.first, mm.d, mm.d.x)).ok());  // weights 11, 12 kept on A
    const transport::TrafficSnapshot client_before = (*a)->traffic() + (*b)->traffic();
    const std::string b_address = (*b)->peer_address();
    EXPECT_EQ(b_address, absl::StrCat("127.0.0.1:", (*node_b)->port()));
    auto sent_w = (*a)->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, b_address, 11, false});
    ASSERT_TRUE(sent_w.ok()) << sent_w.status();
    EXPECT_EQ(*sent_w, 256);
    auto sent_b = (*a)->SendToPeer(core::PeerSend{12, DType::kFloat32, 16, b_address, 12, true});
    ASSERT_TRUE(sent_b.ok()) << sent_b.status();
    // B runs with the weights A sent, as if they had always been resident there.
    auto got = (*b)->Execute(LaterStep(mm.later, mm.d.x2));
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameOutputs(*got, mm.want_later);
    // The bytes went node to node: the client sent and received control messages only.
    const transport::TrafficSnapshot moved = (*a)->traffic() + (*b)->traffic() - client_before;
    EXPECT_EQ(moved.Bytes(transport::Direction::kSent, transport::TrafficClass::kWeights), 0u);
    EXPECT_EQ((*node_a)->peer_stats().bytes_sent, 320);
    EXPECT_EQ((*node_a)->peer_stats().sends, 2);
    EXPECT_EQ((*node_b)->peer_stats().bytes_received, 320);
    // A released 12 after sending it; 11 is still there.
    auto gone = (*a)->SendToPeer(core::PeerSend{12, DType::kFloat32, 16, b_address, 13, false});
    EXPECT_TRUE(absl::IsFailedPrecondition(gone.status())) << gone.status();
    // A peer with another key refuses; a bad address is refused before anything is sent.
    auto refused = (*a)->SendToPeer(core::PeerSend{
        11, DType::kFloat32, 64, absl::StrCat("127.0.0.1:", (*stranger)->port()), 11, false});
    EXPECT_FALSE(refused.ok());
    EXPECT_NE(std::string(refused.status().message()).find("same key"), std::string::npos)
        << refused.status();
    EXPECT_TRUE(absl::IsInvalidArgument(
        (*a)->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, "nowhere", 11, false}).status()));
    // A dtype or size that differs from what is resident is refused too.
    EXPECT_FALSE((*a)->SendToPeer(core::PeerSend{11, DType::kFloat32, 65, b_address, 14, false}).ok());
    // And A's session goes on (12 was released there: upload the weights again).
    auto again = (*a)->Execute(FirstStep(mm.first, mm.d, mm.d.x2));
    ASSERT_TRUE(again.ok()) << again.status();
    ExpectSameOutputs(*again, mm.want_later);
  }
  (*node_a)->Shutdown();
  (*node_b)->Shutdown();
  (*stranger)->Shutdown();
  serving_a.join();
  serving_b.join();
  serving_s.join();
}

// Node B, served on its own thread until stopped.
struct ServedNode {
  std::unique_ptr<NodeServer> server;
  std::thread thread;
  static std::unique_ptr<ServedNode> Start(uint16_t port, NodeOptions options) {
    auto created = NodeServer::Create("127.0.0.1", port, kKey, options);
    if (!created.ok()) {
      ADD_FAILURE() << created.status();
      return nullptr;
    }
    auto n = std::make_unique<ServedNode>();
    n->server = std::move(*created);
    n->thread = std::thread([raw = n->server.get()] { raw->Serve(); });
    return n;
  }
  ~ServedNode() {
    server->Shutdown();
    thread.join();
  }
};

// A client of the node on `port` that ran the first MmAdd step (its buffer 11 stays there)
// and had the node send buffer 11 to `peer` `count` times, under handles first_handle, ...;
// null, with the failure reported, if any of it failed.
std::unique_ptr<client::RemoteExecutor<Tcp>> ClientSendingToPeer(uint16_t port, Data& d,
                                                                 const std::string& peer,
                                                                 uint64_t first_handle, int count) {
  MmAdd first(false);
  auto client = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", port, kKey);
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    return nullptr;
  }
  if (absl::Status s = (*client)->Execute(FirstStep(first, d, d.x)).status(); !s.ok()) {
    ADD_FAILURE() << s;
    return nullptr;
  }
  for (uint64_t h = first_handle; h < first_handle + static_cast<uint64_t>(count); ++h) {
    auto sent = (*client)->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, peer, h, false});
    if (!sent.ok()) {
      ADD_FAILURE() << sent.status();
      return nullptr;
    }
  }
  return std::move(*client);
}

TEST(NodeServerTest, PeerTransfersReuseOneConnectionAndReconnectWhenThePeerRestarts) {
  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  std::unique_ptr<ServedNode> a = ServedNode::Start(0, options);
  std::unique_ptr<ServedNode> b = ServedNode::Start(0, options);
  ASSERT_TRUE(a && b);
  const uint16_t b_port = b->server->port();
  const std::string b_address = absl::StrCat("127.0.0.1:", b_port);
  Data d;
  std::unique_ptr<client::RemoteExecutor<Tcp>> client =
      ClientSendingToPeer(a->server->port(), d, b_address, 100, 4);
  ASSERT_NE(client, nullptr);
  // Four transfers, one connection: opened once, reused three times; B serves one session.
  PeerStats st = a->server->peer_stats();
  EXPECT_EQ(st.connections_opened, 1);
  EXPECT_EQ(st.connections_reused, 3);
  // Lanes as a client asks: up to 4, at most half the usable cores, within B's grant.
  EXPECT_EQ(st.lanes_opened,
            std::min({4, std::max(1, core::UsableCores() / 2), MaxLanesFor(options)}) - 1);
  EXPECT_EQ(b->server->active_sessions(), 1);
  EXPECT_EQ(b->server->peer_stats().puts, 4);
  EXPECT_EQ(b->server->peer_stats().inbox_buffers, 4);

  // B restarts on the same port: the pooled connection is stale, replaced once.
  b.reset();
  b = ServedNode::Start(b_port, options);
  ASSERT_TRUE(b);
  auto sent = client->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, b_address, 200, false});
  ASSERT_TRUE(sent.ok()) << sent.status();
  st = a->server->peer_stats();
  EXPECT_EQ(st.connections_opened, 2);
  EXPECT_EQ(b->server->peer_stats().puts, 1);

  // B gone for good: a clear error naming the peer and what to check; A's session goes on.
  b.reset();
  sent = client->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, b_address, 201, false});
  ASSERT_FALSE(sent.ok());
  EXPECT_NE(std::string(sent.status().message()).find(b_address), std::string::npos) << sent.status();
  EXPECT_NE(std::string(sent.status().message()).find("is the peer node up"), std::string::npos)
      << sent.status();
  EXPECT_TRUE(client->Execute(LaterStep(MmAdd(true), d.x2)).ok());
}

// A node's connection to a peer node opens Tcp lanes as a client's does: as many as
// NodeOptions::peer_lanes asks and the peer's max_lanes grants; transfers go on over it.
TEST(NodeServerTest, PeerConnectionsOpenTheLanesThePeerGrants) {
  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  NodeOptions asking = options;
  asking.peer_lanes = 4;
  NodeOptions granting = options;
  granting.max_lanes = 3;
  std::unique_ptr<ServedNode> a = ServedNode::Start(0, asking);
  std::unique_ptr<ServedNode> b = ServedNode::Start(0, granting);
  ASSERT_TRUE(a && b);
  const std::string b_address = absl::StrCat("127.0.0.1:", b->server->port());
  Data d;
  ASSERT_NE(ClientSendingToPeer(a->server->port(), d, b_address, 100, 3), nullptr);
  const PeerStats st = a->server->peer_stats();
  EXPECT_EQ(st.connections_opened, 1);
  EXPECT_EQ(st.lanes_opened, 2) << "4 asked, 3 sockets granted: 2 lanes beside the first";
  EXPECT_EQ(b->server->peer_stats().puts, 3);
  EXPECT_EQ(b->server->peer_stats().inbox_buffers, 3);
}

TEST(NodeServerTest, PeerInboxIsBoundedRefusesAboveItAndLosesNothingItTook) {
  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  std::unique_ptr<ServedNode> a = ServedNode::Start(0, options);
  NodeOptions small = options;
  small.peer_inbox_bytes = 300;  // the weight (256 B) and the bias (64 B) do not fit together
  std::unique_ptr<ServedNode> b = ServedNode::Start(0, small);
  ASSERT_TRUE(a && b);
  const std::string b_address = absl::StrCat("127.0.0.1:", b->server->port());
  MmAddSession mm;
  const absl::Status reference = mm.RunLocally();
  ASSERT_TRUE(reference.ok()) << reference;
  auto ca = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", a->server->port(), kKey);
  auto cb = client::RemoteExecutor<Tcp>::Connect("127.0.0.1", b->server->port(), kKey);
  ASSERT_TRUE(ca.ok() && cb.ok());
  ASSERT_TRUE((*ca)->Execute(FirstStep(mm.first, mm.d, mm.d.x)).ok());
  ASSERT_TRUE((*ca)->SendToPeer(core::PeerSend{12, DType::kFloat32, 16, b_address, 12, false}).ok());
  auto refused = (*ca)->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, b_address, 11, false});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  const std::string why(refused.status().message());
  EXPECT_NE(why.find("--peer_inbox_bytes=300"), std::string::npos) << why;
  EXPECT_NE(why.find("holds 64 bytes in 1 buffers"), std::string::npos) << why;
  EXPECT_NE(why.find("(256 bytes)"), std::string::npos) << why;
  PeerStats st = b->server->peer_stats();
  EXPECT_EQ(st.puts_refused, 1);
  EXPECT_EQ(st.inbox_bytes, 64);  // what it took is still there

  // A run on B reads handle 12 (the inbox empties into B's session); then 11 fits.
  core::Graph read;
  const core::BufferId bias = read.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kResident, "", 12});
  read.outputs().push_back(TensorRef::Contiguous(bias, DType::kFloat32, {16}));
  core::ExecuteRequest r;
  r.graph = &read;
  r.fingerprint = 77;
  r.keep = {bias};
  auto got = (*cb)->Execute(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::string(static_cast<const char*>(got->outputs[0].data), got->outputs[0].nbytes),
            mm.d.b);
  EXPECT_EQ(b->server->peer_stats().inbox_bytes, 0);
  auto sent = (*ca)->SendToPeer(core::PeerSend{11, DType::kFloat32, 64, b_address, 11, false});
  ASSERT_TRUE(sent.ok()) << sent.status();
  auto step = (*cb)->Execute(LaterStep(mm.later, mm.d.x2));
  ASSERT_TRUE(step.ok()) << step.status();
  ExpectSameOutputs(*step, mm.want_later);
}

// The `numel` floats resident under `handle` on `interpreter`, as bytes.
std::string ReadResident(Interpreter& interpreter, uint64_t handle, int64_t numel) {
  core::Graph read;
  const core::BufferId r =
      read.AddBuffer(Buffer{DType::kFloat32, numel, BufferKind::kResident, "", handle});
  read.outputs().push_back(TensorRef::Contiguous(r, DType::kFloat32, {numel}));
  core::ExecuteRequest get;
  get.graph = &read;
  auto got = interpreter.Execute(get);
  if (!got.ok()) return got.status().ToString();
  return std::string(static_cast<const char*>(got->outputs[0].data), got->outputs[0].nbytes);
}

// Placement ends a part with aten::clone(x, memory_format=None) to keep a buffer's final
// version under its own handle (genie/scheduler/placement.cc): the node runs it.
TEST(NodeServerTest, TheCloneThatPlacementAddsRunsAndKeepsTheCopy) {
  Data d;
  GraphBuilder gb;
  core::Graph& g = gb.graph();
  const core::BufferId x = gb.Buffer(16, BufferKind::kHostInput);
  const core::BufferId c = gb.Buffer(16, BufferKind::kIntermediate, "", 77);
  gb.Op("aten::clone", {Arg::Tensor(Vec(x, 16)), Arg::None()}, {Vec(c, 16)});
  ASSERT_TRUE(g.Validate().ok());
  Interpreter interpreter;
  core::ExecuteRequest req;
  req.graph = &g;
  req.uploads = {{x, Borrow(d.x)}};
  req.keep = {c};
  ASSERT_TRUE(interpreter.Execute(req).ok());
  EXPECT_EQ(ReadResident(interpreter, 77, 16), d.x);
}

// x.add_(x) on an upload the request lends in place (a node's upload arena), kept as
// handle 5. Returns the caller's 16 floats after the run.
std::string DoubleInPlace(Interpreter& interpreter, float* caller, bool in_place) {
  GraphBuilder gb;
  core::Graph& g = gb.graph();
  const core::BufferId x = gb.Buffer(16, BufferKind::kHostInput, "", 5);
  gb.Op("aten::add_.Tensor", {Arg::Tensor(Vec(x, 16)), Arg::Tensor(Vec(x, 16)), Arg::Int(1)},
        {Vec(x, 16)}, nullptr, {x});
  g.outputs().push_back(Vec(x, 16));
  core::ExecuteRequest req;
  req.graph = &g;
  req.uploads = {{x, core::HostBytes{caller, 16 * sizeof(float), nullptr}, in_place}};
  req.keep = {x};
  auto ran = interpreter.Execute(req);
  EXPECT_TRUE(ran.ok()) << ran.status();
  return std::string(reinterpret_cast<const char*>(caller), 16 * sizeof(float));
}

TEST(NodeServerTest, UploadsLentInPlaceAreComputedOnWithoutACopyAndCopiedOutWhenKept) {
  const std::string x = Floats(16, 1.0f);
  std::string doubled(x.size(), '\0');
  for (size_t k = 0; k < 16; ++k) {
    float v;
    std::memcpy(&v, x.data() + 4 * k, 4);
    v += v;
    std::memcpy(doubled.data() + 4 * k, &v, 4);
  }
  alignas(64) float memory[17];
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "lent in place" : "copied");
    Interpreter interpreter;
    std::memcpy(memory, x.data(), x.size());
    // In place, the op wrote the caller's memory: the node computed on it, no copy.
    EXPECT_EQ(DoubleInPlace(interpreter, memory, in_place), in_place ? doubled : x);
    // What stays resident is the node's own copy: the caller's memory is reused after the
    // run (the next run's uploads land there).
    std::memset(memory, 0, sizeof(memory));
    EXPECT_EQ(ReadResident(interpreter, 5, 16), doubled);
  }
  // Memory not at libtorch's alignment is copied even when lent.
  Interpreter interpreter;
  std::memcpy(memory + 1, x.data(), x.size());
  EXPECT_EQ(DoubleInPlace(interpreter, memory + 1, true), x);
  EXPECT_EQ(ReadResident(interpreter, 5, 16), doubled);
}

// ---- Run admission --------------------------------------------------------------------

// One slot, held by a prefill; a prefill then two decodes arrive (each seen waiting
// before the next arrives); the order they are admitted in when the slot frees.
std::vector<std::string> AdmissionOrder(bool decode_first, RunGate::Stats* stats) {
  RunGate gate(1, decode_first);
  gate.Enter(false);
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<std::thread> threads;
  const std::vector<std::pair<bool, std::string>> arrivals = {
      {false, "prefill 2"}, {true, "decode 1"}, {true, "decode 2"}};
  for (size_t k = 0; k < arrivals.size(); ++k) {
    threads.emplace_back([&, k] {
      gate.Enter(arrivals[k].first);
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(arrivals[k].second);
      }
      gate.Leave();
    });
    while (gate.waiting() < static_cast<int>(k) + 1) std::this_thread::yield();
  }
  gate.Leave();
  for (std::thread& t : threads) t.join();
  *stats = gate.stats();
  return order;
}

TEST(RunGateTest, DecodeStepsGoAheadOfAWaitingPrefillAndRunBackToBack) {
  RunGate::Stats st;
  EXPECT_EQ(AdmissionOrder(true, &st),
            (std::vector<std::string>{"decode 1", "decode 2", "prefill 2"}));
  EXPECT_EQ(st.admitted, 4);
  EXPECT_EQ(st.decode_admitted, 2);
  EXPECT_EQ(st.decode_ahead, 2);
  EXPECT_EQ(st.waited, 3);
}

TEST(RunGateTest, WithoutDecodeFirstRunsAreAdmittedInArrivalOrder) {
  RunGate::Stats st;
  EXPECT_EQ(AdmissionOrder(false, &st),
            (std::vector<std::string>{"prefill 2", "decode 1", "decode 2"}));
  EXPECT_EQ(st.decode_ahead, 0);
}

TEST(RunGateTest, APrefillIsOvertakenAtMostKMaxOvertakesTimes) {
  RunGate gate(1, true);
  gate.Enter(false);  // held
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<std::thread> threads;
  const int decodes = RunGate::kMaxOvertakes + 3;
  auto arrive = [&](bool decode, std::string name, int waiting_after) {
    threads.emplace_back([&, decode, name] {
      gate.Enter(decode);
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(name);
      }
      gate.Leave();
    });
    while (gate.waiting() < waiting_after) std::this_thread::yield();
  };
  arrive(false, "prefill", 1);
  for (int k = 0; k < decodes; ++k) arrive(true, absl::StrCat("decode ", k), k + 2);
  gate.Leave();
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(order.size(), static_cast<size_t>(decodes + 1));
  EXPECT_EQ(order[RunGate::kMaxOvertakes], "prefill");
  EXPECT_EQ(order[0], "decode 0");
}

TEST(RunGateTest, WithTwoSlotsOtherRunsLeaveOneToDecodeSteps) {
  RunGate gate(2, true);
  gate.Enter(false);  // a prefill holds one slot
  std::atomic<bool> second_prefill_in{false};
  std::thread prefill([&] {
    gate.Enter(false);  // must wait: the last slot is for decode steps
    second_prefill_in = true;
    gate.Leave();
  });
  while (gate.waiting() < 1) std::this_thread::yield();
  gate.Enter(true);  // a decode step gets the last slot at once, ahead of the prefill
  EXPECT_FALSE(second_prefill_in.load());
  gate.Leave();
  gate.Leave();
  prefill.join();
  EXPECT_TRUE(second_prefill_in.load());
}

TEST(RunGateTest, NoSlotsMeansNoGate) {
  RunGate gate(0, true);
  gate.Enter(false);
  gate.Enter(true);  // would block with one slot
  gate.Leave();
  gate.Leave();
  EXPECT_EQ(gate.stats().admitted, 0);
}

// ---- Raw protocol: what a broken or hostile client sends ----------------------------

class RawClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_.emplace();
    conn_.emplace(std::move(*node_->client_end));
    node_->client_end.reset();
    ASSERT_TRUE(transport::AuthenticateClient(*conn_, kKey, absl::Seconds(5)).ok());
  }
  void TearDown() override {
    conn_->Close();
    node_.reset();
  }
  // The node's answer must be an Error with `code`, and then the connection closes.
  void ExpectErrorThenClose(absl::StatusCode code, absl::string_view contains = "") {
    auto f = conn_->Receive(absl::Seconds(5));
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_EQ(f->header.kind, MessageKind::kError);
    auto e = plan::DecodeError(f->payload);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->code, code) << e->message;
    EXPECT_NE(e->message.find(std::string(contains)), std::string::npos) << e->message;
    auto next = conn_->ReceiveHeader(absl::Seconds(5));
    EXPECT_FALSE(next.ok());
    EXPECT_FALSE(absl::IsDeadlineExceeded(next.status())) << next.status();
  }
  std::optional<InProcessNode> node_;
  std::optional<Connection<InProcess>> conn_;
};

TEST_F(RawClientTest, PingAnswersNodeInfo) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPing, 3, "").ok());
  auto f = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->header.kind, MessageKind::kPong);
  EXPECT_EQ(f->header.request_id, 3u);
  auto info = plan::DecodeNodeInfo(f->payload);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device, "cpu");
}

TEST_F(RawClientTest, WrongVersionRunIsRefused) {
  std::string run = plan::EncodeRun(plan::RunMessage{});
  run[0] = 9;
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kRun, 1, run).ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "version");
}

TEST_F(RawClientTest, TruncatedRunIsRefused) {
  const std::string run = plan::EncodeRun(plan::RunMessage{});
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kRun, 1, run.substr(0, run.size() - 3)).ok());
  ExpectErrorThenClose(absl::StatusCode::kOutOfRange, "truncated");
}

TEST_F(RawClientTest, OversizedFrameIsRefusedBeforeItsPayload) {
  // A header that announces 512 MiB for a Run; the payload never comes.
  transport::FrameHeader h;
  h.kind = MessageKind::kRun;
  h.payload_bytes = uint64_t{512} << 20;
  h.request_id = 1;
  unsigned char head[transport::kFrameHeaderBytes];
  transport::EncodeFrameHeader(h, head);
  ASSERT_TRUE(conn_->WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(head), sizeof(head))).ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "limit");
}

TEST_F(RawClientTest, RandomPayloadIsRefused) {
  std::string junk(200, '\0');
  uint32_t s = 12345;
  for (char& c : junk) c = static_cast<char>((s = s * 1664525u + 1013904223u) >> 24);
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kLoadProgram, 1, junk).ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument);
}

TEST_F(RawClientTest, UnexpectedKindIsRefused) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kRelease, 1, "x").ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "unexpected");
}

TEST_F(RawClientTest, StatusQueryIsAnsweredAndTheSessionGoesOn) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kStats, 4, plan::EncodeStatusQuery()).ok());
  auto f = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->header.kind, MessageKind::kStats);
  EXPECT_EQ(f->header.request_id, 4u);
  auto status = plan::DecodeNodeStatus(f->payload);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->device, "cpu");
  EXPECT_EQ(status->open_sessions, 0u);  // the asker is not counted
  EXPECT_EQ(status->sessions_served, 1u);
  EXPECT_EQ(status->runs, 0u);
  EXPECT_GT(status->bytes_received, 0u);  // the handshake
  // A CPU node has no GPU figures.
  EXPECT_FALSE(status->gpu);
  EXPECT_EQ(status->gpu_allocated_bytes, 0);
  EXPECT_EQ(status->gpu_reserved_bytes, 0);
  EXPECT_EQ(status->gpu_free_bytes, 0);
  EXPECT_EQ(status->gpu_total_bytes, 0);
  EXPECT_EQ(status->graph_replays, 0u);
  // Still in step.
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPing, 5, "").ok());
  auto pong = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
}

TEST_F(RawClientTest, TruncatedStatusQueryIsRefused) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kStats, 1, "x").ok());
  ExpectErrorThenClose(absl::StatusCode::kOutOfRange, "truncated");
}

TEST_F(RawClientTest, OversizedStatusQueryIsRefused) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kStats, 1, plan::EncodeStatusQuery() + "x").ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "limit");
}

TEST_F(RawClientTest, WrongVersionStatusQueryIsRefused) {
  std::string query = plan::EncodeStatusQuery();
  query[0] = 1;
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kStats, 1, query).ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "version");
}

TEST_F(RawClientTest, UnknownProgramIsAnErrorButTheSessionGoesOn) {
  plan::RunMessage run;
  run.program_id = 77;
  run.uploads = {{0, plan::UploadClass::kActivations, 8}};
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kRun, 1, plan::EncodeRun(run)).ok());
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kTransfer, 1, "12345678",
                               transport::TrafficClass::kActivations).ok());
  auto f = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->header.kind, MessageKind::kError);
  auto e = plan::DecodeError(f->payload);
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->unknown_program);
  EXPECT_EQ(e->code, absl::StatusCode::kNotFound);
  // Still in step: a ping is answered.
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPing, 2, "").ok());
  auto pong = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
}

TEST_F(RawClientTest, TransferOfTheWrongClassIsRefused) {
  plan::RunMessage run;
  run.program_id = 1;
  run.uploads = {{0, plan::UploadClass::kWeights, 8}};
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kRun, 1, plan::EncodeRun(run)).ok());
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kTransfer, 1, "12345678",
                               transport::TrafficClass::kActivations).ok());
  ExpectErrorThenClose(absl::StatusCode::kInvalidArgument, "weights");
}

}  // namespace
TEST_F(RawClientTest, TruncatedPeerSendIsRefused) {
  plan::PeerSendMessage m;
  m.handle = 1;
  m.numel = 4;
  m.peer_host = "127.0.0.1";
  m.peer_port = 9;
  m.peer_handle = 2;
  const std::string bytes = plan::EncodePeerSend(m);
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPeerSend, 1, bytes.substr(0, bytes.size() - 1)).ok());
  ExpectErrorThenClose(absl::StatusCode::kOutOfRange);
}

TEST_F(RawClientTest, PeerSendWithoutInboxIsAnErrorButTheSessionGoesOn) {
  plan::PeerSendMessage m;
  m.handle = 1;
  m.numel = 4;
  m.peer_host = "127.0.0.1";
  m.peer_port = 9;
  m.peer_handle = 2;
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPeerSend, 1, plan::EncodePeerSend(m)).ok());
  auto f = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->header.kind, MessageKind::kError);
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPing, 2, "").ok());
  auto pong = conn_->Receive(absl::Seconds(5));
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
}

TEST_F(RawClientTest, PeerPutWithoutInboxIsRefused) {
  ASSERT_TRUE(conn_->SendBytes(MessageKind::kPeerPut, 1,
                               plan::EncodePeerPut(plan::PeerPutMessage{5, DType::kFloat32, 1}))
                  .ok());
  ExpectErrorThenClose(absl::StatusCode::kFailedPrecondition, "no buffers from other nodes");
}

// A node on the CPU offered a buffer over CUDA IPC (PeerPut with a descriptor, no bytes
// follow) answers FailedPrecondition, which makes the sender send over TCP from then on;
// nothing lands in its inbox and the session goes on.
TEST(NodeServerTest, CpuNodeRefusesACudaIpcPutAndTheSessionGoesOn) {
  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  PeerInbox inbox;
  PeerPool pool(kKey, options, &inbox);
  std::atomic<bool> stop{false};
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  Connection<InProcess> conn = std::move(pair->first);
  std::thread node([&, server = std::move(pair->second)]() mutable {
    (void)ServeConnection(server, kKey, options, stop, &inbox, &pool);
  });
  ASSERT_TRUE(transport::AuthenticateClient(conn, kKey, absl::Seconds(5)).ok());
  plan::PeerPutMessage put{5, DType::kFloat32, 256};
  put.cuda_ipc = std::string(100, 'x');
  ASSERT_TRUE(conn.SendBytes(MessageKind::kPeerPut, 1, plan::EncodePeerPut(put)).ok());
  auto f = conn.Receive(absl::Seconds(5));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->header.kind, MessageKind::kError);
  auto e = plan::DecodeError(f->payload);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->code, absl::StatusCode::kFailedPrecondition) << e->message;
  EXPECT_NE(e->message.find("CUDA IPC"), std::string::npos) << e->message;
  EXPECT_EQ(inbox.stats().puts, 0);
  ASSERT_TRUE(conn.SendBytes(MessageKind::kPing, 2, "").ok());
  auto pong = conn.Receive(absl::Seconds(5));
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->header.kind, MessageKind::kPong);
  stop = true;
  conn.Close();
  node.join();
}

// The node page-locks a client's tensor pool only up to its limit: the client picks the
// pool's size.
TEST(NodeServerTest, MaxRegisteredPoolBytesIsTheSmallerOfTheLimitAndTheBudget) {
  NodeOptions options;
  EXPECT_EQ(MaxRegisteredPoolBytes(options), uint64_t{1} << 30);  // the default: 1 GiB
  options.memory_budget_bytes = int64_t{256} << 20;
  EXPECT_EQ(MaxRegisteredPoolBytes(options), uint64_t{256} << 20);
  options.memory_budget_bytes = int64_t{8} << 30;  // a larger budget does not raise it
  EXPECT_EQ(MaxRegisteredPoolBytes(options), uint64_t{1} << 30);
  options.max_registered_pool_bytes = int64_t{16} << 30;
  EXPECT_EQ(MaxRegisteredPoolBytes(options), uint64_t{8} << 30);
  options.max_registered_pool_bytes = 0;  // never
  EXPECT_EQ(MaxRegisteredPoolBytes(options), 0u);
}

// The node keeps the programs its client runs: with room for two, loading a third evicts
// the one run least recently, not the one loaded first (the client's cache is LRU too).
// y = x + other over n floats, x uploaded (bytes `xs`); `other` is x itself, or a resident
// buffer "r" (handle 21) when `resident_other`. Lowered, and bound to a run of it.
struct AddProgram {
  AddProgram(int64_t n, bool resident_other) : xs(Floats(n, 1.0f)) {
    GraphBuilder gb(&g);
    const core::BufferId r =
        resident_other ? gb.Buffer(n, BufferKind::kResident, "r", 21) : core::kNoBuffer;
    x = gb.Buffer(n, BufferKind::kHostInput);
    const core::BufferId y = gb.Buffer(n);
    gb.Op("aten::add.Tensor",
          {Arg::Tensor(Vec(x, n)), Arg::Tensor(Vec(resident_other ? r : x, n)), Arg::Int(1)},
          {Vec(y, n)});
    g.outputs().push_back(Vec(y, n));
    request.graph = &g;
    request.uploads = {{x, Borrow(xs)}};
    program = plan::LowerProgram(request);
    if (program.ok()) binding = plan::BindRun(*program, request);
  }
  core::Graph g;
  core::BufferId x = core::kNoBuffer;
  std::string xs;
  core::ExecuteRequest request;
  absl::StatusOr<plan::Program> program;
  absl::StatusOr<plan::RunBinding> binding = absl::FailedPreconditionError("not lowered");
};

TEST(NodeServerTest, ProgramCacheEvictsTheLeastRecentlyRunProgram) {
  constexpr int n = 8;
  AddProgram add(n, /*resident_other=*/false);
  ASSERT_TRUE(add.program.ok()) << add.program.status();
  ASSERT_TRUE(add.binding.ok()) << add.binding.status();
  const core::BufferId x = add.x;
  const std::string& xs = add.xs;
  const absl::StatusOr<plan::Program>& program = add.program;
  const absl::StatusOr<plan::RunBinding>& binding = add.binding;

  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  options.max_cached_programs = 2;
  node_internal::Session session(options, "test");
  auto load = [&](uint64_t id) {
    return session.Load(plan::EncodeLoadProgram(id, plan::EncodeProgram(*program)));
  };
  auto run = [&](uint64_t id, bool* unknown_program) -> absl::Status {
    plan::RunMessage m;
    m.program_id = id;
    m.binding = *binding;
    m.uploads = {{x, plan::UploadClass::kActivations, n * 4}};
    GENIE_ASSIGN_OR_RETURN(char* arena, session.UploadArena(n * 4));
    std::memcpy(arena, xs.data(), xs.size());
    *unknown_program = false;
    auto ran = session.Run(m, unknown_program);
    session.ReleaseRetired();
    return ran.status();
  };
  bool unknown = false;
  ASSERT_TRUE(load(1).ok());
  ASSERT_TRUE(load(2).ok());
  ASSERT_TRUE(run(1, &unknown).ok());  // 1 is now the more recent
  ASSERT_TRUE(load(3).ok());           // evicts 2
  EXPECT_TRUE(run(1, &unknown).ok());
  EXPECT_TRUE(run(3, &unknown).ok());
  const absl::Status evicted = run(2, &unknown);
  EXPECT_TRUE(absl::IsNotFound(evicted)) << evicted;
  EXPECT_TRUE(unknown);
  EXPECT_NE(evicted.message().find("evicted"), absl::string_view::npos) << evicted;
}

// A run whose output placement does not fit its program is refused before anything
// changes: the buffer another node pushed stays in the inbox for the next run.
TEST(NodeServerTest, AMalformedOutputPlacementIsRefusedAndConsumesNothing) {
  constexpr int n = 1024;  // floats
  AddProgram add(n, /*resident_other=*/true);
  ASSERT_TRUE(add.program.ok()) << add.program.status();
  ASSERT_TRUE(add.binding.ok()) << add.binding.status();
  const core::BufferId x = add.x;
  const std::string& xs = add.xs;
  const std::string rs = Floats(n, -0.5f);
  const absl::StatusOr<plan::Program>& program = add.program;
  const absl::StatusOr<plan::RunBinding>& binding = add.binding;

  NodeOptions options;
  options.log_runs = false;
  options.log_connections = false;
  PeerInbox inbox;
  PeerPool peers(kKey, options, &inbox);
  node_internal::Session session(options, "test");
  session.AttachPeers(kKey, &inbox, &peers);
  constexpr uint64_t kPoolBytes = uint64_t{1} << 20;
  void* memory = std::aligned_alloc(4096, kPoolBytes);
  ASSERT_NE(memory, nullptr);
  session.AttachPool(transport::SharedPool::Adopt(memory, kPoolBytes, /*unmap_at_end=*/false));
  ASSERT_TRUE(session.Load(plan::EncodeLoadProgram(5, plan::EncodeProgram(*program))).ok());
  PeerInbox::Entry pushed;
  pushed.numel = n;
  pushed.bytes = rs;
  ASSERT_TRUE(inbox.Put(binding->resident_handles.at(0), std::move(pushed)).ok());

  plan::RunMessage run;
  run.program_id = 5;
  run.binding = *binding;
  run.uploads = {{x, plan::UploadClass::kActivations, n * 4}};
  auto run_once = [&]() -> absl::StatusOr<const core::ExecuteResult*> {
    GENIE_RETURN_IF_ERROR(session.CheckPool(run));
    GENIE_ASSIGN_OR_RETURN(char* arena, session.UploadArena(n * 4));
    std::memcpy(arena, xs.data(), xs.size());
    bool unknown_program = false;
    return session.Run(run, &unknown_program);
  };
  for (plan::OutputPlacement bad : {plan::OutputPlacement{1, 4096, n * 4},     // no output 1
                                    plan::OutputPlacement{0, 4096, n * 4 - 64}}) {  // wrong size
    run.outputs_in_pool = {bad};
    auto refused = run_once();
    ASSERT_FALSE(refused.ok());
    EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
    EXPECT_NE(refused.status().message().find("pool bytes for output"), absl::string_view::npos)
        << refused.status();
    EXPECT_FALSE(inbox.empty()) << "a refused run took the pushed buffer";
  }
  // The session goes on: the good run reads the pushed buffer and writes y into its block.
  run.outputs_in_pool = {{0, 4096, n * 4}};
  auto good = run_once();
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(inbox.empty());
  std::vector<float> want(n);
  for (int i = 0; i < n; ++i) {
    want[i] = reinterpret_cast<const float*>(xs.data())[i] + reinterpret_cast<const float*>(rs.data())[i];
  }
  EXPECT_EQ(std::memcmp(static_cast<char*>(memory) + 4096, want.data(), n * 4), 0);
  EXPECT_EQ((*good)->outputs[0].data, static_cast<char*>(memory) + 4096);
  session.AttachPool(nullptr);
  std::free(memory);
}

}  // namespace genie::runtime
