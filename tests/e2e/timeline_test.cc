// File: tests/e2e/timeline_test.cc
// The timeline across processes: a client recording with genie::timeline and a real
// genie-node started with --timeline, running a captured module over loopback Tcp. Both
// files must hold their side's spans, and, on the clock the two processes share, every run
// the node made must lie between the client's send of it and the end of its wait.
#include "genie/core/timeline.h"

#include <signal.h>
#include <torch/torch.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "genie/client/remote_executor.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/transport/tcp.h"
#include "gtest/gtest.h"
#include "tests/e2e/node_process.h"

namespace genie::e2e {
namespace {

const std::string kKey = "e2e-timeline-key-0123456789abcdef0123";

struct Event {
  std::string name;
  int pid = 0;
  double ts = 0, dur = 0;
};

// The events of a file Write made (one per line), spans and instants alike.
std::vector<Event> ReadEvents(const std::string& path) {
  std::ifstream in(path);
  std::vector<Event> out;
  const std::regex span(
      R"re(\{"name":"([^"]*)","pid":(\d+),"tid":-?\d+,"ts":([0-9.]+)(,"ph":"X","dur":([0-9.]+))?)re");
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (!std::regex_search(line, m, span)) continue;
    Event e;
    e.name = m[1];
    e.pid = std::stoi(m[2]);
    e.ts = std::stod(m[3]);
    e.dur = m[5].matched ? std::stod(m[5]) : 0;
    out.push_back(e);
  }
  return out;
}

std::vector<Event> Named(const std::vector<Event>& events, const std::string& name) {
  std::vector<Event> out;
  for (const Event& e : events) {
    if (e.name == name) out.push_back(e);
  }
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TimelineE2E, ClientAndNodeRecordTheirSidesOnOneClock) {
  torch::NoGradGuard no_grad;
  absl::StatusOr<std::string> dir = MakeTempDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string node_file = *dir + "/node.json";
  const std::string client_file = *dir + "/client.json";
  auto node = NodeProcess::Start(kKey, {"--timeline=" + node_file});
  ASSERT_TRUE(node.ok()) << node.status();
  auto exec = client::RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", (*node)->port(), kKey);
  ASSERT_TRUE(exec.ok()) << exec.status();
  frontend::SetExecutor(std::shared_ptr<client::RemoteExecutor<transport::Tcp>>(std::move(*exec)));

  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(8, 16), torch::nn::GELU(), torch::nn::Linear(16, 4));
  const torch::Device remote(std::string(frontend::EnsureRegistered()) + ":0");
  net->to(remote);
  const torch::Tensor x = torch::randn({4, 8});
  timeline::Start();
  for (int i = 0; i < 3; ++i) {
    torch::Tensor y = net->forward(x.to(remote));
    ASSERT_TRUE(frontend::Dispatch().ok());  // sent without waiting for the node
    (void)(y * 2).to(torch::kCPU);           // read on this thread
  }
  timeline::Stop();
  ASSERT_TRUE(timeline::Write(client_file).ok());
  frontend::SetExecutor(std::make_shared<runtime::Interpreter>());
  absl::StatusOr<int> stopped = (*node)->Signal(SIGTERM);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(WIFEXITED(*stopped) && WEXITSTATUS(*stopped) == 0) << *stopped;

  const std::vector<Event> client = ReadEvents(client_file);
  const std::vector<Event> server = ReadEvents(node_file);
  for (const char* name :
       {"capture, then dispatch", "capture, then read", "read results", "run on node", "send run",
        "wait for the node", "receive result", "snapshot upload"}) {
    EXPECT_FALSE(Named(client, name).empty()) << "client timeline lacks \"" << name << "\"";
  }
  for (const char* name : {"receive run", "run", "CPU ops", "send result"}) {
    EXPECT_FALSE(Named(server, name).empty()) << "node timeline lacks \"" << name << "\"";
  }
  EXPECT_NE(ReadAll(node_file).find("\"genie-node session\""), std::string::npos);
  ASSERT_FALSE(server.empty());
  EXPECT_NE(server[0].pid, client[0].pid);

  // Six runs (a dispatched part and a read per step), each inside a send..wait pair.
  const std::vector<Event> runs = Named(server, "run");
  const std::vector<Event> sends = Named(client, "send run");
  const std::vector<Event> waits = Named(client, "wait for the node");
  EXPECT_EQ(runs.size(), 6u);
  ASSERT_EQ(sends.size(), waits.size());
  for (const Event& r : runs) {
    bool inside = false;
    for (size_t k = 0; k < sends.size() && !inside; ++k) {
      inside = sends[k].ts <= r.ts && r.ts + r.dur <= waits[k].ts + waits[k].dur;
    }
    EXPECT_TRUE(inside) << "node run at " << r.ts << " us (" << r.dur
                        << " us) lies outside every send..wait of the client";
  }
}

}  // namespace
}  // namespace genie::e2e
