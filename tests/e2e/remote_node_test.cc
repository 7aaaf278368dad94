// File: tests/e2e/remote_node_test.cc
// End to end across processes: the real genie-node binary as a child process, the libtorch
// frontend capturing a torch::nn module on remote_accelerator, RemoteExecutor<Tcp> carrying
// the graphs over loopback. Checks results against eager CPU, that weights cross the wire
// once, that a wrong key and malformed frames are refused while other clients keep working,
// that a killed node gives a prompt error naming it (over Tcp and over Shm), that the
// memory budget is enforced, and that large inputs go ahead of the graphs that read them
// (or are snapshots where they cannot).
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "genie/client/remote_executor.h"
#include "genie/frontend/remote_device.h"
#include "genie/plan/messages.h"
#include "genie/runtime/interpreter.h"
#include "genie/transport/auth.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"
#include "tests/e2e/node_process.h"

namespace genie::e2e {
namespace {

using client::RemoteExecutor;
using transport::Direction;
using transport::MessageKind;
using transport::Tcp;
using transport::TrafficClass;

const std::string kKey = "e2e-remote-node-key-0123456789abcdef";

torch::Device Remote() { return torch::Device(std::string(frontend::EnsureRegistered()) + ":0"); }

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

torch::nn::Sequential SmallNet() {
  return torch::nn::Sequential(torch::nn::Linear(8, 16),
                               torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})),
                               torch::nn::GELU(), torch::nn::Linear(16, 4));
}

class RemoteNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    auto node = NodeProcess::Start(kKey);
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = std::move(*node);
  }
  void TearDown() override {
    frontend::SetExecutor(std::make_shared<runtime::Interpreter>());
    node_.reset();
  }
  std::shared_ptr<RemoteExecutor<Tcp>> Connect(client::RemoteExecutorOptions options = {}) {
    auto exec = RemoteExecutor<Tcp>::Connect("127.0.0.1", node_->port(), kKey, options);
    EXPECT_TRUE(exec.ok()) << exec.status();
    if (!exec.ok()) return nullptr;
    return std::shared_ptr<RemoteExecutor<Tcp>>(std::move(*exec));
  }
  // A small captured computation through the frontend on the installed executor.
  void ExpectFrontendWorks() {
    torch::Tensor a = torch::randn({4, 6});
    torch::Tensor r = (torch::relu(a.to(Remote())) * 3 + 1).to(torch::kCPU);
    EXPECT_LE(MaxAbsDiff(r, torch::relu(a) * 3 + 1), 1e-6);
  }

  torch::NoGradGuard no_grad_;
  std::unique_ptr<NodeProcess> node_;
};

TEST_F(RemoteNodeTest, ModuleMatchesEagerAndWeightsCrossTheWireOnce) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  EXPECT_EQ(exec->Describe(), absl::StrCat("genie-node 127.0.0.1:", node_->port(), " (cpu)"));
  frontend::SetExecutor(exec);

  torch::nn::Sequential net = SmallNet();
  torch::Tensor x1 = torch::randn({5, 8});
  torch::Tensor x2 = torch::randn({5, 8});
  torch::Tensor expected1 = net->forward(x1);
  torch::Tensor expected2 = net->forward(x2);
  int64_t param_bytes = 0;
  for (const torch::Tensor& p : net->parameters()) param_bytes += p.nbytes();
  net->to(Remote());
  frontend::NameParameters(*net, "mlp");

  const transport::TrafficSnapshot t0 = exec->traffic();
  torch::Tensor y1 = net->forward(x1.to(Remote())).to(torch::kCPU);
  const transport::TrafficSnapshot t1 = exec->traffic();
  torch::Tensor y2 = net->forward(x2.to(Remote())).to(torch::kCPU);
  const transport::TrafficSnapshot t2 = exec->traffic();

  EXPECT_LE(MaxAbsDiff(y1, expected1), 1e-5);
  EXPECT_LE(MaxAbsDiff(y2, expected2), 1e-5);
  const transport::TrafficSnapshot first = t1 - t0, second = t2 - t1;
  EXPECT_GE(first.Bytes(Direction::kSent, TrafficClass::kWeights), static_cast<uint64_t>(param_bytes))
      << first.ToString();
  EXPECT_EQ(second.Bytes(Direction::kSent, TrafficClass::kWeights), 0u) << second.ToString();
  EXPECT_GE(second.Bytes(Direction::kSent, TrafficClass::kActivations), static_cast<uint64_t>(x2.nbytes()))
      << second.ToString();
  EXPECT_GE(second.Bytes(Direction::kReceived, TrafficClass::kActivations),
            static_cast<uint64_t>(y2.nbytes()))
      << second.ToString();
  std::printf("first forward: %s\nsecond forward: %s\n", first.ToString().c_str(),
              second.ToString().c_str());
}

// What the executor was handed, per graph: its nodes, uploaded bytes and kept buffers.
struct SeenGraph {
  size_t nodes = 0;
  uint64_t upload_bytes = 0;
  size_t kept = 0;
};
void ObserveGraphs(std::vector<SeenGraph>* seen) {
  frontend::SetGraphObserver([seen](const core::Graph& g, const core::ExecuteRequest& r) {
    SeenGraph s{g.nodes().size(), 0, r.keep.size()};
    for (const core::Upload& u : r.uploads) s.upload_bytes += u.bytes.nbytes;
    seen->push_back(s);
  });
}
size_t UploadsAhead(const std::vector<SeenGraph>& seen) {
  size_t n = 0;
  for (const SeenGraph& s : seen) n += s.nodes == 0 && s.kept == 1 && s.upload_bytes > 0;
  return n;
}

// `.to(remote)` of 1 MiB or more over Tcp is sent at once from the caller's memory, as a run
// of no nodes that keeps it on the node; the graph that reads it uploads nothing more. The
// value is the one of the moment of `.to()`, however the caller changes its tensor after.
TEST_F(RemoteNodeTest, LargeUploadsGoAheadOfTheGraphThatReadsThem) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  std::vector<SeenGraph> seen;
  ObserveGraphs(&seen);
  const int64_t rows = 512, cols = 1024;  // 2 MiB of fp32
  for (int step = 0; step < 3; ++step) {
    seen.clear();
    torch::Tensor a = torch::randn({rows, cols});
    const torch::Tensor expected = (a * 3).sum(1);
    const transport::TrafficSnapshot before = exec->traffic();
    torch::Tensor ra = a.to(Remote());
    const transport::TrafficSnapshot sent = exec->traffic() - before;
    ASSERT_EQ(UploadsAhead(seen), 1u) << "step " << step;
    EXPECT_EQ(seen[0].upload_bytes, static_cast<uint64_t>(a.nbytes()));
    // On the wire before anything was read.
    EXPECT_GE(sent.Bytes(Direction::kSent, TrafficClass::kActivations),
              static_cast<uint64_t>(a.nbytes()))
        << sent.ToString();
    a.mul_(-7);  // after `.to()`: the node holds the earlier values
    torch::Tensor r = (ra * 3).sum(1).to(torch::kCPU);
    EXPECT_LE(MaxAbsDiff(r, expected), 1e-3) << "step " << step;
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_GT(seen[1].nodes, 0u);
    EXPECT_LT(seen[1].upload_bytes, 64u) << "the graph uploaded its input again";  // scalars only
  }
  frontend::SetGraphObserver(nullptr);
}

// Where an upload cannot go ahead it is snapshotted as before, with the same values: a
// storage the graph under construction still reads in its earlier version, a tensor that
// requires grad (a module's parameter), a small one, and an executor that never does it.
TEST_F(RemoteNodeTest, UploadsThatCannotGoAheadAreSnapshots) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  std::vector<SeenGraph> seen;
  ObserveGraphs(&seen);
  torch::Tensor a = torch::randn({512, 1024});
  torch::Tensor b = torch::randn({512, 1024});
  torch::Tensor c = torch::randn({512, 1024});
  torch::Tensor ra = a.to(Remote());
  EXPECT_EQ(UploadsAhead(seen), 1u);
  (void)ra.sum().item<float>();    // the node answered everything: nothing outstanding
  torch::Tensor doubled = ra * 2;  // reads a's values, resident on the node
  ra.copy_(b);                     // a new version while that read is not yet run
  ra.copy_(c);                     // and another
  EXPECT_EQ(UploadsAhead(seen), 1u) << "overtook a graph that reads an earlier version";
  EXPECT_LE(MaxAbsDiff(doubled.to(torch::kCPU), a * 2), 1e-5);
  EXPECT_LE(MaxAbsDiff(ra.to(torch::kCPU), c), 0.0);

  seen.clear();
  torch::Tensor w = torch::randn({512, 1024}, torch::requires_grad());
  EXPECT_LE(MaxAbsDiff((w.to(Remote()) + 1).to(torch::kCPU), w.detach() + 1), 1e-6);
  torch::Tensor small = torch::randn({256, 1023});  // just under 1 MiB
  EXPECT_LE(MaxAbsDiff((small.to(Remote()) + 1).to(torch::kCPU), small + 1), 1e-6);
  EXPECT_EQ(UploadsAhead(seen), 0u);

  client::RemoteExecutorOptions never;
  never.upload_ahead_min_bytes = 0;
  std::shared_ptr<RemoteExecutor<Tcp>> plain = Connect(never);
  ASSERT_NE(plain, nullptr);
  frontend::SetExecutor(plain);
  seen.clear();
  EXPECT_LE(MaxAbsDiff((b.to(Remote()) - 1).to(torch::kCPU), b - 1), 1e-6);
  EXPECT_EQ(UploadsAhead(seen), 0u);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_GE(seen[0].upload_bytes, static_cast<uint64_t>(b.nbytes()));  // with the run
  frontend::SetGraphObserver(nullptr);
}

TEST_F(RemoteNodeTest, WrongKeyIsRefusedAndTheNodeKeepsServing) {
  auto wrong = RemoteExecutor<Tcp>::Connect("127.0.0.1", node_->port(),
                                            "not-the-node-key-0123456789abcdef");
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  const std::string msg(wrong.status().message());
  EXPECT_NE(msg.find(absl::StrCat("127.0.0.1:", node_->port())), std::string::npos) << msg;
  EXPECT_NE(msg.find("key"), std::string::npos) << msg;

  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  ExpectFrontendWorks();
}

// A raw, authenticated connection to the node, for sending what no client sends.
transport::Connection<Tcp> RawClient(uint16_t port, bool authenticate = true) {
  auto conn = transport::Connection<Tcp>::Connect("127.0.0.1", port, absl::Seconds(5));
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (authenticate) {
    absl::Status s = transport::AuthenticateClient(*conn, kKey, absl::Seconds(5));
    EXPECT_TRUE(s.ok()) << s;
  }
  return std::move(*conn);
}

// The node answers with an Error (when `want_error`) and closes the connection, promptly.
void ExpectRefused(transport::Connection<Tcp>& conn, bool want_error) {
  auto header = conn.ReceiveHeader(absl::Seconds(10));
  if (want_error) {
    ASSERT_TRUE(header.ok()) << header.status();
    ASSERT_EQ(header->kind, MessageKind::kError);
    std::string payload(header->payload_bytes, '\0');
    ASSERT_TRUE(conn.ReceivePayload(payload.data(), payload.size()).ok());
    auto e = plan::DecodeError(payload);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_FALSE(e->message.empty());
    header = conn.ReceiveHeader(absl::Seconds(10));
  }
  ASSERT_FALSE(header.ok());
  EXPECT_FALSE(absl::IsDeadlineExceeded(header.status())) << "node did not close: " << header.status();
}

TEST_F(RemoteNodeTest, MalformedFramesAreRefusedWhileAnotherClientWorks) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  ExpectFrontendWorks();
  {  // Random bytes instead of a frame, before authentication.
    auto conn = RawClient(node_->port(), /*authenticate=*/false);
    std::string junk(64, '\0');
    uint32_t s = 7;
    for (char& c : junk) c = static_cast<char>((s = s * 1664525u + 1013904223u) >> 24);
    ASSERT_TRUE(conn.WriteRawForTesting(junk).ok());
    ExpectRefused(conn, /*want_error=*/false);
  }
  ExpectFrontendWorks();
  {  // Random bytes after authentication (not a valid frame header).
    auto conn = RawClient(node_->port());
    ASSERT_TRUE(conn.WriteRawForTesting(std::string(48, '\x5a')).ok());
    ExpectRefused(conn, /*want_error=*/false);
  }
  {  // A Run of a wrong message version.
    auto conn = RawClient(node_->port());
    std::string run = plan::EncodeRun(plan::RunMessage{});
    run[0] = 42;
    ASSERT_TRUE(conn.SendBytes(MessageKind::kRun, 1, run).ok());
    ExpectRefused(conn, /*want_error=*/true);
  }
  ExpectFrontendWorks();
  {  // A truncated Run message.
    auto conn = RawClient(node_->port());
    plan::RunMessage m;
    m.binding.release = {1, 2, 3};
    const std::string run = plan::EncodeRun(m);
    ASSERT_TRUE(conn.SendBytes(MessageKind::kRun, 1, run.substr(0, run.size() / 2)).ok());
    ExpectRefused(conn, /*want_error=*/true);
  }
  {  // An oversized frame: a LoadProgram announcing 900 MiB.
    auto conn = RawClient(node_->port());
    transport::FrameHeader h;
    h.kind = MessageKind::kLoadProgram;
    h.payload_bytes = uint64_t{900} << 20;
    unsigned char head[transport::kFrameHeaderBytes];
    transport::EncodeFrameHeader(h, head);
    ASSERT_TRUE(conn.WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(head), sizeof(head))).ok());
    ExpectRefused(conn, /*want_error=*/true);
  }
  {  // A frame cut short: the header promises 100 bytes, 10 come, then the client leaves.
    auto conn = RawClient(node_->port());
    transport::FrameHeader h;
    h.kind = MessageKind::kRun;
    h.payload_bytes = 100;
    unsigned char head[transport::kFrameHeaderBytes];
    transport::EncodeFrameHeader(h, head);
    ASSERT_TRUE(conn.WriteRawForTesting(absl::string_view(reinterpret_cast<char*>(head), sizeof(head))).ok());
    ASSERT_TRUE(conn.WriteRawForTesting(std::string(10, '\1')).ok());
    conn.Close();
  }
  {  // Random payloads in every message kind the node takes.
    for (MessageKind kind : {MessageKind::kLoadProgram, MessageKind::kRun}) {
      auto conn = RawClient(node_->port());
      std::string junk(300, '\0');
      uint32_t s = static_cast<uint32_t>(kind);
      for (char& c : junk) c = static_cast<char>((s = s * 22695477u + 1u) >> 24);
      ASSERT_TRUE(conn.SendBytes(kind, 1, junk).ok());
      ExpectRefused(conn, /*want_error=*/true);
    }
  }
  ExpectFrontendWorks();
  // The well-behaved client's connection was never disturbed.
  torch::nn::Sequential net = SmallNet();
  torch::Tensor x = torch::randn({3, 8});
  torch::Tensor expected = net->forward(x);
  net->to(Remote());
  frontend::NameParameters(*net, "net");
  EXPECT_LE(MaxAbsDiff(net->forward(x.to(Remote())), expected), 1e-5);
}

TEST_F(RemoteNodeTest, KilledNodeGivesPromptErrorNamingTheNode) {
  client::RemoteExecutorOptions options;
  options.run_timeout = absl::Seconds(30);  // death must be noticed long before this
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect(options);
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  torch::nn::Sequential net = SmallNet();
  net->to(Remote());
  frontend::NameParameters(*net, "mlp");
  (void)net->forward(torch::randn({2, 8}).to(Remote())).to(torch::kCPU);

  ASSERT_TRUE(node_->Signal(SIGKILL).ok());
  const std::string where = absl::StrCat("127.0.0.1:", node_->port());
  const auto start = std::chrono::steady_clock::now();
  try {
    (void)net->forward(torch::randn({2, 8}).to(Remote())).to(torch::kCPU);
    FAIL() << "running on a killed node must raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(where), std::string::npos) << msg;
    EXPECT_NE(msg.find("genie-node"), std::string::npos) << msg;
    std::printf("frontend error after SIGKILL: %s\n", msg.c_str());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));

  // The executor itself says Unavailable, at once, on every later call.
  core::Graph g;
  core::BufferId in = g.AddBuffer(core::Buffer{core::DType::kFloat32, 4, core::BufferKind::kHostInput});
  core::BufferId out = g.AddBuffer(core::Buffer{core::DType::kFloat32, 4});
  core::Node n;
  n.op = g.InternOp("aten::relu");
  n.args = {core::Arg::Tensor(core::TensorRef::Contiguous(in, core::DType::kFloat32, {4}))};
  n.outputs = {core::TensorRef::Contiguous(out, core::DType::kFloat32, {4})};
  g.AddNode(n);
  g.outputs().push_back(core::TensorRef::Contiguous(out, core::DType::kFloat32, {4}));
  const std::string data(16, '\0');
  core::ExecuteRequest req;
  req.graph = &g;
  req.uploads = {{in, core::HostBytes{data.data(), data.size(), nullptr}}};
  const auto again = std::chrono::steady_clock::now();
  auto r = exec->Execute(req);
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(where), std::string::npos) << r.status();
  EXPECT_LT(std::chrono::steady_clock::now() - again, std::chrono::seconds(1));
}

// Data sent ahead to a node that was killed: `.to()` itself does not fail (a copy has no
// error to give), the read that follows does, naming the node.
TEST_F(RemoteNodeTest, UploadAheadToAKilledNodeFailsTheNextRead) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  ExpectFrontendWorks();
  ASSERT_TRUE(node_->Signal(SIGKILL).ok());
  const std::string where = absl::StrCat("127.0.0.1:", node_->port());
  torch::Tensor big = torch::randn({512, 1024});
  torch::Tensor rbig;
  ASSERT_NO_THROW(rbig = big.to(Remote()));
  try {
    (void)(rbig + 1).to(torch::kCPU);
    ADD_FAILURE() << "reading from a killed node must raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(where), std::string::npos) << msg;
  }
}

TEST_F(RemoteNodeTest, SigtermStopsTheNodeCleanlyWithAClientConnected) {
  std::shared_ptr<RemoteExecutor<Tcp>> exec = Connect();
  ASSERT_NE(exec, nullptr);
  frontend::SetExecutor(exec);
  ExpectFrontendWorks();
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<int> status = node_->Signal(SIGTERM, absl::Seconds(5));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  // The client learns at its next run, with an error naming the node.
  torch::Tensor a = torch::randn({4});
  EXPECT_THROW((void)(a.to(Remote()) + 1).to(torch::kCPU), c10::Error);
}

// The node binary with --shm_socket: a client of this host over shared memory runs a module,
// and a node killed with SIGKILL is noticed at once (its socket hangs up), named by its path.
TEST(GenieNodeShmTest, ModuleRunsOverShmAndAKilledNodeIsAPromptError) {
  torch::NoGradGuard no_grad;
  const std::string path = absl::StrCat("/tmp/genie-e2e-", getpid(), ".sock");
  auto node = NodeProcess::Start(kKey, {"--shm_socket=" + path});
  ASSERT_TRUE(node.ok()) << node.status();
  client::RemoteExecutorOptions options;
  options.run_timeout = absl::Seconds(30);  // death must be noticed long before this
  auto connected = RemoteExecutor<transport::Shm>::Connect(path, kKey, options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::shared_ptr<RemoteExecutor<transport::Shm>> exec = std::move(*connected);
  frontend::SetExecutor(exec);
  torch::manual_seed(0);
  torch::nn::Sequential net = SmallNet();
  const torch::Tensor x = torch::randn({2, 8});
  const torch::Tensor want = net->forward(x);
  net->to(Remote());
  frontend::NameParameters(*net, "mlp");
  for (int i = 0; i < 2; ++i) {
    EXPECT_LE(MaxAbsDiff(net->forward(x.to(Remote())).to(torch::kCPU), want), 1e-5);
  }
  ASSERT_TRUE((*node)->Signal(SIGKILL).ok());
  const auto start = std::chrono::steady_clock::now();
  try {
    (void)net->forward(x.to(Remote())).to(torch::kCPU);
    ADD_FAILURE() << "running on a killed node must raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("shm:" + path), std::string::npos) << msg;
    std::printf("frontend error after SIGKILL over shm: %s\n", msg.c_str());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  frontend::SetExecutor(std::make_shared<runtime::Interpreter>());
}

TEST(GenieNodeBinaryTest, HelpListsTheFlags) {
  absl::StatusOr<std::string> binary = NodeProcess::FindBinary();
  ASSERT_TRUE(binary.ok()) << binary.status();
  FILE* p = ::popen(absl::StrCat(*binary, " --help 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  ::pclose(p);
  for (const char* flag : {"--listen", "--key_file", "--memory_budget", "--device", "--threads",
                           "--max_program_bytes", "--shm_socket"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " missing from --help:\n" << out;
  }
}

// A node started with --memory_budget, installed as the frontend's executor.
class RemoteNodeBudgetTest : public ::testing::Test {
 protected:
  void Start(int64_t budget_bytes) {
    auto node = NodeProcess::Start(kKey, {absl::StrCat("--memory_budget=", budget_bytes)});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = std::move(*node);
    auto exec = RemoteExecutor<Tcp>::Connect("127.0.0.1", node_->port(), kKey);
    ASSERT_TRUE(exec.ok()) << exec.status();
    frontend::SetExecutor(std::shared_ptr<RemoteExecutor<Tcp>>(std::move(*exec)));
  }
  void TearDown() override { frontend::SetExecutor(std::make_shared<runtime::Interpreter>()); }
  // `over` reads something over the budget: it raises RESOURCE_EXHAUSTED naming the flag
  // (and `what`, when given), and small work still runs on the same connection.
  void ExpectRefusedThenSmallWorkRuns(const std::function<void()>& over,
                                      const std::string& what = "") {
    try {
      over();
      ADD_FAILURE() << "a run over the node's memory budget must raise";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      EXPECT_NE(msg.find("RESOURCE_EXHAUSTED"), std::string::npos) << msg;
      EXPECT_NE(msg.find("--memory_budget"), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
    torch::Tensor a = torch::randn({4});
    EXPECT_LE(MaxAbsDiff((a.to(Remote()) + 1).to(torch::kCPU), a + 1), 1e-6);
  }

  torch::NoGradGuard no_grad_;
  std::unique_ptr<NodeProcess> node_;
};

TEST_F(RemoteNodeBudgetTest, MemoryBudgetExceededIsResourceExhausted) {
  Start(4096);
  torch::nn::Linear big(64, 64);  // 16.6 KiB of weights > 4 KiB budget
  big->to(Remote());
  frontend::NameParameters(*big, "big");
  ExpectRefusedThenSmallWorkRuns([&] {
    (void)big->forward(torch::randn({2, 64}).to(Remote())).to(torch::kCPU);
  });
}

// What was sent ahead and refused by the node fails the read that follows.
TEST_F(RemoteNodeBudgetTest, UploadAheadOverTheBudgetFailsTheNextRead) {
  Start(1 << 20);
  torch::Tensor big = torch::randn({512, 1024});  // 2 MiB > 1 MiB budget
  torch::Tensor rbig = big.to(Remote());
  ExpectRefusedThenSmallWorkRuns([&] { (void)(rbig + 1).to(torch::kCPU); },
                                 "keeping 2097152 bytes of host data sent ahead");
}

}  // namespace
}  // namespace genie::e2e
