// File: tools/smi/smi_test.cc
// genie-smi's library against a CPU genie-node started in process: its figures before and
// after a program ran through a real client session, the table and JSON, and a clear
// report for each node that cannot be asked (wrong key, nothing listening, a truncated or
// older node's answer, another message version), the other nodes still reported.
#include "tools/smi/smi.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "genie/client/remote_executor.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/plan/messages.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/auth.h"
#include "genie/transport/frame.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"

namespace genie::smi {
namespace {

using core::testing::Borrow;
using core::testing::Floats;
using core::testing::GraphBuilder;
using core::testing::Mat;
using transport::MessageKind;
using TcpConnection = transport::Connection<transport::Tcp>;

const std::string kKey = "smi-test-key-0123456789abcdef0123";

// A CPU genie-node on loopback, served on a thread.
struct Node {
  std::unique_ptr<runtime::NodeServer> server;
  std::thread thread;
  static std::unique_ptr<Node> Start() {
    runtime::NodeOptions options;
    options.log_runs = false;
    options.log_connections = false;
    auto created = runtime::NodeServer::Create("127.0.0.1", 0, kKey, options);
    if (!created.ok()) {
      ADD_FAILURE() << created.status();
      return nullptr;
    }
    auto n = std::make_unique<Node>();
    n->server = std::move(*created);
    n->thread = std::thread([raw = n->server.get()] { raw->Serve(); });
    return n;
  }
  NodeAddress address() const { return NodeAddress{"127.0.0.1", server->port()}; }
  ~Node() {
    server->Shutdown();
    thread.join();
  }
};

// A port where nothing listens (a listener opened and closed).
uint16_t DeadPort() {
  auto l = transport::Listener<transport::Tcp>::Create("127.0.0.1", 0);
  EXPECT_TRUE(l.ok());
  return l.ok() ? l->port() : 1;
}

// A node that authenticates, answers the ping with `pong` (a NodeInfo payload) and the
// status query with a frame of `kind` holding `answer`: stands for broken or older nodes.
struct FakeNode {
  std::optional<transport::Listener<transport::Tcp>> listener;
  std::thread thread;
  FakeNode(std::string pong, MessageKind kind, std::string answer) {
    auto l = transport::Listener<transport::Tcp>::Create("127.0.0.1", 0);
    EXPECT_TRUE(l.ok());
    listener.emplace(std::move(*l));
    thread = std::thread([this, pong, kind, answer] {
      auto conn = listener->Accept(absl::Seconds(10));
      if (!conn.ok()) return;
      if (!transport::AuthenticateServer(*conn, kKey, absl::Seconds(5)).ok()) return;
      auto ping = conn->Receive(absl::Seconds(5));
      if (!ping.ok() || ping->header.kind != MessageKind::kPing) return;
      (void)conn->SendBytes(MessageKind::kPong, ping->header.request_id, pong);
      auto query = conn->Receive(absl::Seconds(5));
      if (!query.ok() || query->header.kind != MessageKind::kStats) return;
      (void)conn->SendBytes(kind, query->header.request_id, answer);
      (void)conn->Receive(absl::Seconds(5));  // until the client goes
    });
  }
  NodeAddress address() const { return NodeAddress{"127.0.0.1", listener->port()}; }
  ~FakeNode() { thread.join(); }
};

// z = x @ w + b: x [2,8] uploaded, w [8,8] and b [2,8] parameters (or resident).
struct MmAdd {
  core::Graph g;
  core::BufferId x, w, b, y, z;
  explicit MmAdd(bool weights_resident) {
    const core::BufferKind wk =
        weights_resident ? core::BufferKind::kResident : core::BufferKind::kParameter;
    GraphBuilder gb(&g);
    x = gb.Buffer(16, core::BufferKind::kHostInput);
    w = gb.Buffer(64, wk, "fc.weight", 11);
    b = gb.Buffer(16, wk, "fc.bias", 12);
    y = gb.Buffer(16);
    z = gb.Buffer(16);
    gb.Op("aten::mm", {Mat(x, 2, 8), Mat(w, 8, 8)}, Mat(y, 2, 8));
    gb.Op("aten::add.Tensor",
          {core::Arg::Tensor(Mat(y, 2, 8)), core::Arg::Tensor(Mat(b, 2, 8)), core::Arg::Int(1)},
          {Mat(z, 2, 8)});
    g.outputs().push_back(Mat(z, 2, 8));
  }
};

std::string CpuNodeInfo() { return plan::EncodeNodeInfo({"cpu", 64 << 20, 256, 0}); }

TEST(SmiTest, ParseNodes) {
  auto nodes = ParseNodes("10.0.0.7:7070, [::1]:7071,localhost:1");
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 3u);
  EXPECT_EQ((*nodes)[0].host, "10.0.0.7");
  EXPECT_EQ((*nodes)[0].port, 7070);
  EXPECT_EQ((*nodes)[1].host, "::1");
  EXPECT_EQ((*nodes)[1].name(), "[::1]:7071");
  EXPECT_EQ((*nodes)[2].name(), "localhost:1");
  for (const char* bad :
       {"", "host", "host:", ":7070", "host:0", "host:70000", "a:1,,b:2", "host:12x"}) {
    auto r = ParseNodes(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << bad;
  }
}

TEST(SmiTest, FiguresMoveWhenAClientRunsAProgram) {
  std::unique_ptr<Node> node = Node::Start();
  ASSERT_TRUE(node);
  NodeReport before = QueryNode(node->address(), kKey);
  ASSERT_TRUE(before.status.ok()) << before.status.status();
  EXPECT_EQ(before.node, node->address().name());
  EXPECT_EQ(before.status->device, "cpu");
  EXPECT_EQ(before.status->open_sessions, 0u);
  EXPECT_EQ(before.status->runs, 0u);
  EXPECT_EQ(before.status->programs_cached, 0u);
  EXPECT_EQ(before.status->resident_bytes, 0);
  // A CPU node: no GPU figures, and the table and JSON say so.
  EXPECT_FALSE(before.status->gpu);
  EXPECT_EQ(before.status->gpu_allocated_bytes, 0);
  EXPECT_EQ(before.status->gpu_reserved_bytes, 0);
  EXPECT_EQ(before.status->gpu_free_bytes, 0);
  EXPECT_EQ(before.status->gpu_total_bytes, 0);
  EXPECT_EQ(before.status->graph_replays, 0u);
  EXPECT_TRUE(absl::StrContains(FormatJson({before}), "\"gpu\":null")) << FormatJson({before});

  // z = x @ w + b with w and b kept on the node, through a real client session.
  const MmAdd first(false);
  const MmAdd later(true);  // w and b resident from the first run
  const std::string xs = Floats(16, 1.0f), ws = Floats(64, 0.5f), bs = Floats(16, 0.25f);
  core::ExecuteRequest req;
  req.graph = &first.g;
  req.fingerprint = 7;
  req.uploads = {{first.x, Borrow(xs)}, {first.w, Borrow(ws)}, {first.b, Borrow(bs)}};
  req.keep = {first.w, first.b};
  auto client =
      client::RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", node->server->port(), kKey);
  ASSERT_TRUE(client.ok()) << client.status();
  auto ran = (*client)->Execute(req);
  ASSERT_TRUE(ran.ok()) << ran.status();

  NodeReport after = QueryNode(node->address(), kKey);  // while the client's session is open
  ASSERT_TRUE(after.status.ok()) << after.status.status();
  EXPECT_EQ(after.status->open_sessions, 1u);
  EXPECT_EQ(after.status->runs, 1u);
  EXPECT_EQ(after.status->run_errors, 0u);
  EXPECT_EQ(after.status->programs_cached, 1u);
  EXPECT_EQ(after.status->resident_bytes, 256 + 64);  // w and b
  EXPECT_GE(after.status->bytes_received, before.status->bytes_received + 64 + 256 + 64);
  EXPECT_GE(after.status->bytes_sent, before.status->bytes_sent + 64);
  EXPECT_FALSE(after.status->gpu);

  const std::string table = FormatTable({before, after});
  EXPECT_TRUE(absl::StartsWith(table, "NODE")) << table;
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 3) << table;
  EXPECT_TRUE(absl::StrContains(table, "320 B")) << table;  // resident
  const std::string json = FormatJson({after});
  EXPECT_TRUE(absl::StrContains(json, "\"runs\":1,")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"resident_bytes\":320,")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"ok\":true")) << json;

  // The client's session was not disturbed by the queries: its weights are still there.
  core::ExecuteRequest step;
  step.graph = &later.g;
  step.fingerprint = 8;
  step.uploads = {{later.x, Borrow(xs)}};
  auto again = (*client)->Execute(step);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->outputs.at(0).nbytes, ran->outputs.at(0).nbytes);
}

TEST(SmiTest, AWrongKeyIsAnAuthErrorAndTheOtherNodesStillPrint) {
  std::unique_ptr<Node> node = Node::Start();
  ASSERT_TRUE(node);
  NodeReport wrong = QueryNode(node->address(), "another-key-0123456789abcdef0123");
  ASSERT_FALSE(wrong.status.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(wrong.status.status())) << wrong.status.status();
  EXPECT_TRUE(absl::StrContains(wrong.status.status().message(), "refused the key"))
      << wrong.status.status();
  EXPECT_TRUE(absl::StrContains(wrong.status.status().message(), "--key_file"))
      << wrong.status.status();
  NodeReport dead = QueryNode(NodeAddress{"127.0.0.1", DeadPort()}, kKey);
  ASSERT_FALSE(dead.status.ok());
  EXPECT_TRUE(absl::IsUnavailable(dead.status.status())) << dead.status.status();
  EXPECT_TRUE(absl::StrContains(dead.status.status().message(), "genie-node runs there"))
      << dead.status.status();
  NodeReport good = QueryNode(node->address(), kKey);
  ASSERT_TRUE(good.status.ok()) << good.status.status();

  const std::string table = FormatTable({wrong, good, dead});
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << table;
  EXPECT_TRUE(absl::StrContains(lines[1], "error: genie-node")) << table;
  EXPECT_TRUE(absl::StrContains(lines[2], " cpu ")) << table;
  EXPECT_TRUE(absl::StrContains(lines[3], "error: cannot reach")) << table;
  const std::string json = FormatJson({wrong, good});
  EXPECT_TRUE(absl::StrContains(json, "\"ok\":false,\"code\":\"UNAUTHENTICATED\"")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"ok\":true")) << json;
}

TEST(SmiTest, ATruncatedStatusIsRefused) {
  const std::string status = plan::EncodeNodeStatus(plan::NodeStatusMessage{"cpu"});
  FakeNode fake(CpuNodeInfo(), MessageKind::kStats, status.substr(0, status.size() - 5));
  NodeReport r = QueryNode(fake.address(), kKey);
  ASSERT_FALSE(r.status.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(r.status.status())) << r.status.status();
  EXPECT_TRUE(absl::StrContains(r.status.status().message(), "malformed status"))
      << r.status.status();
  EXPECT_TRUE(absl::StrContains(r.status.status().message(), "truncated")) << r.status.status();
}

TEST(SmiTest, ANodeFromBeforeStatusQueriesIsNamedOlder) {
  // What a node of the previous release answers: an Error for the unexpected kStats frame.
  FakeNode fake(CpuNodeInfo(), MessageKind::kError,
                plan::EncodeError(absl::InvalidArgumentError(
                    "unexpected kStats frame (this node takes kPing, kLoadProgram, kRun, ...)")));
  NodeReport r = QueryNode(fake.address(), kKey);
  ASSERT_FALSE(r.status.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status.status())) << r.status.status();
  EXPECT_TRUE(absl::StrContains(r.status.status().message(), "older Genie release"))
      << r.status.status();
  EXPECT_TRUE(absl::StrContains(r.status.status().message(), "Upgrade genie-node"))
      << r.status.status();
}

TEST(SmiTest, AnotherMessageVersionIsNamed) {
  std::string pong = CpuNodeInfo();
  pong[0] = static_cast<char>(plan::kMessageVersion - 1);
  FakeNode fake(pong, MessageKind::kStats, "");
  NodeReport r = QueryNode(fake.address(), kKey);
  ASSERT_FALSE(r.status.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status.status())) << r.status.status();
  EXPECT_TRUE(absl::StrContains(r.status.status().message(), "message version"))
      << r.status.status();
}

TEST(SmiTest, Formats) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 30), "3.00 GiB");
  EXPECT_EQ(FormatUptime(12'300'000), "12.3s");
  EXPECT_EQ(FormatUptime(int64_t{187} * 1'000'000), "3m07s");
  EXPECT_EQ(FormatUptime(int64_t{3720} * 1'000'000), "1h02m");
  plan::NodeStatusMessage gpu;
  gpu.device = "cuda:0";
  gpu.gpu = true;
  gpu.gpu_allocated_bytes = 1 << 20;
  gpu.gpu_reserved_bytes = 2 << 20;
  gpu.gpu_free_bytes = int64_t{70} << 30;
  gpu.gpu_total_bytes = int64_t{80} << 30;
  gpu.graph_replays = 42;
  const NodeReport r{"gpu-host:7070", gpu};
  EXPECT_TRUE(absl::StrContains(FormatTable({r}), "1.0 MiB / 2.0 MiB")) << FormatTable({r});
  EXPECT_TRUE(absl::StrContains(FormatTable({r}), "70.00 GiB / 80.00 GiB")) << FormatTable({r});
  EXPECT_TRUE(absl::StrContains(FormatJson({r}), "\"graph_replays\":42}")) << FormatJson({r});
  const NodeReport quoted{"a:1", absl::UnavailableError("say \"hi\"\n")};
  EXPECT_TRUE(absl::StrContains(FormatJson({quoted}), R"("error":"say \"hi\"\n")"))
      << FormatJson({quoted});
}

}  // namespace
}  // namespace genie::smi
