// File: genie/client/remote_executor_test.cc
// RemoteExecutor against fake nodes (no libtorch): connect and authentication errors name
// the node, a node that closes mid-session gives Unavailable at once, a node that stops
// answering gives DeadlineExceeded within the run timeout, never a hang; the connection is
// then given up and later calls fail fast.
#include "genie/client/remote_executor.h"

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "genie/core/graph.h"
#include "genie/plan/messages.h"
#include "genie/transport/auth.h"
#include "genie/transport/inprocess.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"

namespace genie::client {
namespace {

using transport::Connection;
using transport::InProcess;
using transport::MessageKind;

const std::string kKey = "remote-executor-test-key-0123456789";

// relu(x) on 16 floats.
struct Relu {
  core::Graph g;
  core::BufferId x;
  std::string data = std::string(64, '\1');
  Relu() {
    x = g.AddBuffer(core::Buffer{core::DType::kFloat32, 16, core::BufferKind::kHostInput});
    core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, 16});
    core::Node n;
    n.op = g.InternOp("aten::relu");
    n.args = {core::Arg::Tensor(core::TensorRef::Contiguous(x, core::DType::kFloat32, {16}))};
    n.outputs = {core::TensorRef::Contiguous(y, core::DType::kFloat32, {16})};
    g.AddNode(n);
    g.outputs().push_back(core::TensorRef::Contiguous(y, core::DType::kFloat32, {16}));
  }
  core::ExecuteRequest Request() const {
    core::ExecuteRequest req;
    req.graph = &g;
    req.fingerprint = 9;
    req.uploads = {{x, core::HostBytes{data.data(), data.size(), nullptr}}};
    return req;
  }
};

// A fake node: authenticates, answers the ping, then does `behaviour` with the connection.
template <class Behaviour>
std::thread FakeNode(Connection<InProcess> server, Behaviour behaviour) {
  return std::thread([server = std::move(server), behaviour]() mutable {
    if (!transport::AuthenticateServer(server, kKey, absl::Seconds(5)).ok()) return;
    auto ping = server.Receive(absl::Seconds(5));
    if (!ping.ok()) return;
    plan::NodeInfoMessage info;
    info.device = "fake";
    info.max_program_bytes = 1 << 20;
    info.max_cached_programs = 4;
    (void)server.SendBytes(MessageKind::kPong, ping->header.request_id, plan::EncodeNodeInfo(info));
    behaviour(server);
  });
}

absl::StatusOr<std::unique_ptr<RemoteExecutor<InProcess>>> AttachTo(
    Connection<InProcess> client, absl::Duration run_timeout = absl::Seconds(30)) {
  RemoteExecutorOptions options;
  options.run_timeout = run_timeout;
  options.io_timeout = absl::Seconds(2);
  return RemoteExecutor<InProcess>::Attach(std::move(client), "10.9.8.7:7070", kKey, options);
}

TEST(HostBlockCacheTest, ReusesTheMemoryOfOutputsThatDied) {
  auto memory = std::make_shared<client_internal::HostBlockCache>();
  constexpr size_t kMiB = size_t{1} << 20;
  const char* first = nullptr;
  const char* second = nullptr;
  {
    std::shared_ptr<char> a = memory->Get(3 * kMiB);
    std::shared_ptr<char> b = memory->Get(3 * kMiB);  // `a` is alive: other memory
    first = a.get();
    second = b.get();
    EXPECT_NE(second, first);
  }
  // Both freed blocks come back, one each.
  std::shared_ptr<char> again = memory->Get(3 * kMiB - 100);
  std::shared_ptr<char> other = memory->Get(3 * kMiB);
  EXPECT_TRUE((again.get() == first && other.get() == second) ||
              (again.get() == second && other.get() == first));
  // A block a quarter or more larger than asked is not taken for it.
  std::shared_ptr<char> small = memory->Get(kMiB);
  EXPECT_NE(small.get(), first);
  // Memory that outlives its HostBlockCache is freed, not returned.
  std::shared_ptr<char> late = memory->Get(2 * kMiB);
  memory.reset();
  late.reset();
}

TEST(RemoteExecutorTest, ConnectRefusedNamesTheNode) {
  // A port nobody listens on: take a free one and close it.
  uint16_t port = 0;
  {
    auto l = transport::Listener<transport::Tcp>::Create("127.0.0.1", 0);
    ASSERT_TRUE(l.ok());
    port = l->port();
  }
  auto r = RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", port, kKey);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(absl::StrCat("127.0.0.1:", port)),
            std::string::npos)
      << r.status();
}

TEST(RemoteExecutorTest, WrongKeyIsUnauthenticated) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::thread node([server = std::move(pair->second)]() mutable {
    (void)transport::AuthenticateServer(server, kKey, absl::Seconds(5));
  });
  auto r = RemoteExecutor<InProcess>::Attach(std::move(pair->first), "10.9.8.7:7070",
                                             "a-different-key-0123456789abcdef");
  node.join();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(r.status())) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("10.9.8.7:7070"), std::string::npos);
  EXPECT_NE(std::string(r.status().message()).find("same key"), std::string::npos);
}

TEST(RemoteExecutorTest, NodeThatClosesGivesUnavailableAtOnce) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<int> frames{0};
  std::thread node = FakeNode(std::move(pair->second), [&](Connection<InProcess>& c) {
    // Read the LoadProgram, Run and transfer frames, then die.
    for (int i = 0; i < 3; ++i) {
      if (c.Receive(absl::Seconds(5)).ok()) ++frames;
    }
    c.Close();
  });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->Describe(), "genie-node 10.9.8.7:7070 (fake)");
  Relu relu;
  const absl::Time start = absl::Now();
  auto got = (*r)->Execute(relu.Request());
  node.join();
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsUnavailable(got.status())) << got.status();
  EXPECT_NE(std::string(got.status().message()).find("10.9.8.7:7070"), std::string::npos)
      << got.status();
  EXPECT_NE(std::string(got.status().message()).find("restart"), std::string::npos);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(frames.load(), 3);
  // Later calls fail at once with the same error.
  auto again = (*r)->Execute(relu.Request());
  EXPECT_TRUE(absl::IsUnavailable(again.status())) << again.status();
  EXPECT_EQ(again.status(), got.status());
}

TEST(RemoteExecutorTest, NodeThatStopsAnsweringTimesOut) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<bool> release{false};
  std::thread node = FakeNode(std::move(pair->second), [&](Connection<InProcess>& c) {
    while (!release.load()) absl::SleepFor(absl::Milliseconds(10));
    c.Close();
  });
  auto r = AttachTo(std::move(pair->first), absl::Milliseconds(300));
  ASSERT_TRUE(r.ok()) << r.status();
  Relu relu;
  const absl::Time start = absl::Now();
  auto got = (*r)->Execute(relu.Request());
  const absl::Duration took = absl::Now() - start;
  release = true;
  node.join();
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(got.status())) << got.status();
  EXPECT_NE(std::string(got.status().message()).find("run_timeout"), std::string::npos);
  EXPECT_LT(took, absl::Seconds(3));
}

TEST(RemoteExecutorTest, AnswerOfTheWrongKindClosesTheConnection) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::thread node = FakeNode(std::move(pair->second), [&](Connection<InProcess>& c) {
    uint64_t id = 0;
    for (int i = 0; i < 3; ++i) {
      auto f = c.Receive(absl::Seconds(5));
      if (f.ok()) id = f->header.request_id;
    }
    (void)c.SendBytes(MessageKind::kPong, id, "not a result");
  });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  Relu relu;
  auto got = (*r)->Execute(relu.Request());
  node.join();
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsUnavailable(got.status())) << got.status();
  EXPECT_NE(std::string(got.status().message()).find("cannot accept"), std::string::npos);
}

// relu(x) kept on the node: a part of a step without outputs (what the frontend dispatches
// while it captures the rest).
struct ReluPart : Relu {
  ReluPart() { g.outputs().clear(); }
  core::ExecuteRequest Request() const {
    core::ExecuteRequest req = Relu::Request();
    req.fingerprint = 10;
    req.keep = {1};
    req.may_defer = true;
    return req;
  }
};

// A fake node that answers each Run with `answer(run_index, id, connection)` once its
// uploads arrived, and counts the runs it was sent.
template <class Answer>
std::thread AnsweringNode(Connection<InProcess> server, std::atomic<int>* runs, Answer answer) {
  return FakeNode(std::move(server), [runs, answer](Connection<InProcess>& c) mutable {
    for (;;) {
      auto f = c.Receive(absl::Seconds(5));
      if (!f.ok() || f->header.kind == MessageKind::kGoodbye) return;
      if (f->header.kind != MessageKind::kRun) continue;
      auto upload = c.Receive(absl::Seconds(5));  // the one kTransfer frame of x
      if (!upload.ok()) return;
      answer(runs->fetch_add(1), f->header.request_id, c);
    }
  });
}

void SendResult(Connection<InProcess>& c, uint64_t id, int64_t nodes, bool with_output) {
  plan::ResultMessage m;
  m.stats.nodes_executed = nodes;
  if (with_output) m.output_bytes = {64};
  (void)c.SendBytes(MessageKind::kResult, id, plan::EncodeResult(m));
  if (with_output) {
    const std::string y(64, '\2');
    (void)c.SendBytes(MessageKind::kTransfer, id, y, transport::TrafficClass::kActivations);
  }
}

TEST(RemoteExecutorTest, ARunWithoutOutputsIsNotWaitedForAndItsAnswerIsReadBeforeTheNextRead) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<int> runs{0};
  std::atomic<bool> may_answer{false};
  std::thread node = AnsweringNode(
      std::move(pair->second), &runs, [&](int k, uint64_t id, Connection<InProcess>& c) {
        // The part is answered only after Execute returned.
        while (k == 0 && !may_answer.load()) absl::SleepFor(absl::Milliseconds(1));
        SendResult(c, id, /*nodes=*/k == 0 ? 5 : 1, /*with_output=*/k == 1);
      });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  ReluPart part;
  auto sent = (*r)->Execute(part.Request());
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(sent->outputs.empty());
  may_answer = true;
  Relu relu;
  auto read = (*r)->Execute(relu.Request());
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->outputs.size(), 1u);
  EXPECT_EQ(static_cast<const char*>(read->outputs[0].data)[0], '\2');
  // The part's nodes count with the read that followed it.
  EXPECT_EQ(read->stats.nodes_executed, 6);
  EXPECT_TRUE((*r)->Drain().ok());
  (*r)->Close();
  node.join();
  EXPECT_EQ(runs.load(), 2);
}

TEST(RemoteExecutorTest, AFailedDeferredRunFailsTheNextReadWhichIsNotStarted) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<int> runs{0};
  std::thread node = AnsweringNode(
      std::move(pair->second), &runs, [&](int k, uint64_t id, Connection<InProcess>& c) {
        if (k == 0) {
          (void)c.SendBytes(MessageKind::kError, id,
                            plan::EncodeError(absl::InternalError("op %0 aten::relu failed")));
        } else {
          SendResult(c, id, 1, /*with_output=*/true);
        }
      });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  ReluPart part;
  ASSERT_TRUE((*r)->Execute(part.Request()).ok());
  Relu relu;
  auto read = (*r)->Execute(relu.Request());
  ASSERT_FALSE(read.ok());
  EXPECT_TRUE(absl::IsInternal(read.status())) << read.status();
  const std::string message(read.status().message());
  EXPECT_NE(message.find("dispatched earlier"), std::string::npos) << message;
  EXPECT_NE(message.find("aten::relu failed"), std::string::npos) << message;
  EXPECT_NE(message.find("not started"), std::string::npos) << message;
  // The connection goes on: the read runs when asked again, and only then reaches the node.
  auto again = (*r)->Execute(relu.Request());
  ASSERT_TRUE(again.ok()) << again.status();
  (*r)->Close();
  node.join();
  EXPECT_EQ(runs.load(), 2);
}

TEST(RemoteExecutorTest, ADeferredRunWhoseProgramTheNodeEvictedLoadsItAgainNextTime) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<int> loads{0}, runs{0};
  std::thread node = FakeNode(std::move(pair->second), [&](Connection<InProcess>& c) {
    for (;;) {
      auto f = c.Receive(absl::Seconds(5));
      if (!f.ok() || f->header.kind == MessageKind::kGoodbye) return;
      if (f->header.kind == MessageKind::kLoadProgram) ++loads;
      if (f->header.kind != MessageKind::kRun) continue;
      if (!c.Receive(absl::Seconds(5)).ok()) return;  // the upload of x
      if (runs.fetch_add(1) == 1) {                   // the second run of the part: "evicted"
        (void)c.SendBytes(MessageKind::kError, f->header.request_id,
                          plan::EncodeError(absl::NotFoundError("unknown program"),
                                            /*unknown_program=*/true));
      } else {
        SendResult(c, f->header.request_id, 1, /*with_output=*/false);
      }
    }
  });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  ReluPart part;
  ASSERT_TRUE((*r)->Execute(part.Request()).ok());
  ASSERT_TRUE((*r)->Execute(part.Request()).ok());  // the node will say it lost the program
  absl::Status drained = (*r)->Drain();
  EXPECT_TRUE(absl::IsNotFound(drained)) << drained;
  EXPECT_NE(std::string(drained.message()).find("evicted"), std::string::npos) << drained;
  EXPECT_EQ(loads.load(), 1);
  ASSERT_TRUE((*r)->Execute(part.Request()).ok());
  EXPECT_TRUE((*r)->Drain().ok());
  (*r)->Close();
  node.join();
  EXPECT_EQ(loads.load(), 2) << "the program is loaded again after the node evicted it";
  EXPECT_EQ(runs.load(), 3);
}

// relu(x) kept on the node over 100,000 floats: its upload (400 KB) is above what a run may
// send behind unanswered runs.
struct BigReluPart {
  static constexpr int64_t kN = 100000;
  core::Graph g;
  core::BufferId x;
  std::string data = std::string(4 * kN, '\1');
  BigReluPart() {
    x = g.AddBuffer(core::Buffer{core::DType::kFloat32, kN, core::BufferKind::kHostInput});
    core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, kN});
    core::Node n;
    n.op = g.InternOp("aten::relu");
    n.args = {core::Arg::Tensor(core::TensorRef::Contiguous(x, core::DType::kFloat32, {kN}))};
    n.outputs = {core::TensorRef::Contiguous(y, core::DType::kFloat32, {kN})};
    g.AddNode(n);
  }
  core::ExecuteRequest Request() const {
    core::ExecuteRequest req;
    req.graph = &g;
    req.fingerprint = 11;
    req.uploads = {{x, core::HostBytes{data.data(), data.size(), nullptr}}};
    req.keep = {1};
    req.may_defer = true;
    return req;
  }
};

TEST(RemoteExecutorTest, ALargeRunGoesUnwaitedOnlyWhenEveryEarlierRunWasAnswered) {
  auto pair = Connection<InProcess>::CreatePair();
  ASSERT_TRUE(pair.ok());
  std::atomic<int> runs{0};
  std::atomic<bool> may_answer{false};
  std::thread node = AnsweringNode(std::move(pair->second), &runs,
                                   [&](int, uint64_t id, Connection<InProcess>& c) {
                                     while (!may_answer.load())
                                       absl::SleepFor(absl::Milliseconds(1));
                                     SendResult(c, id, 1, /*with_output=*/false);
                                   });
  auto r = AttachTo(std::move(pair->first));
  ASSERT_TRUE(r.ok()) << r.status();
  BigReluPart big;
  // Nothing outstanding: the large run is sent and not waited for.
  ASSERT_TRUE((*r)->Execute(big.Request()).ok());
  // Behind it, a second large one waits for both answers.
  std::atomic<bool> returned{false};
  std::thread second([&] {
    EXPECT_TRUE((*r)->Execute(big.Request()).ok());
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(returned.load()) << "a large run behind an unanswered one must wait";
  may_answer = true;
  second.join();
  EXPECT_TRUE(returned.load());
  EXPECT_TRUE((*r)->Drain().ok());
  (*r)->Close();
  node.join();
  EXPECT_EQ(runs.load(), 2);
}

TEST(RemoteExecutorTest, DrainReturnsADeferredErrorAndZeroDeferralWaitsForEveryRun) {
  for (size_t max_deferred : {size_t{64}, size_t{0}}) {
    auto pair = Connection<InProcess>::CreatePair();
    ASSERT_TRUE(pair.ok());
    std::atomic<int> runs{0};
    std::thread node = AnsweringNode(
        std::move(pair->second), &runs, [&](int, uint64_t id, Connection<InProcess>& c) {
          (void)c.SendBytes(MessageKind::kError, id,
                            plan::EncodeError(absl::ResourceExhaustedError("over budget")));
        });
    RemoteExecutorOptions options;
    options.max_deferred_runs = max_deferred;
    auto r =
        RemoteExecutor<InProcess>::Attach(std::move(pair->first), "10.9.8.7:7070", kKey, options);
    ASSERT_TRUE(r.ok()) << r.status();
    ReluPart part;
    auto sent = (*r)->Execute(part.Request());
    if (max_deferred == 0) {
      // Waited for: the node's own error, at once.
      ASSERT_FALSE(sent.ok());
      EXPECT_TRUE(absl::IsResourceExhausted(sent.status())) << sent.status();
      EXPECT_TRUE((*r)->Drain().ok());
    } else {
      ASSERT_TRUE(sent.ok()) << sent.status();
      absl::Status drained = (*r)->Drain();
      EXPECT_TRUE(absl::IsResourceExhausted(drained)) << drained;
      EXPECT_NE(std::string(drained.message()).find("dispatched earlier"), std::string::npos);
      EXPECT_TRUE((*r)->Drain().ok());  // reported once
    }
    (*r)->Close();
    node.join();
    EXPECT_EQ(runs.load(), 1);
  }
}

}  // namespace
}  // namespace genie::client
