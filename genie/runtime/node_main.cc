// File: genie/runtime/node_main.cc
// genie-node: the process that runs captured graphs for remote clients.
//
//   GENIE_KEY=$(cat key) genie-node --listen=0.0.0.0:7070 --memory_budget=$((8<<30))
//   genie-node --listen=127.0.0.1:0 --key_file=/etc/genie/key   # port 0: any free port
//   genie-node --shm_socket=/tmp/genie-node.sock ...  # also clients of this host over shm
//
// The first line on stdout is "genie-node listening on HOST:PORT" (flushed), so a parent
// process can read the port; with --shm_socket the second says "genie-node listening for
// shared-memory clients on PATH". Logs go to stderr. SIGTERM / SIGINT stop it cleanly.
#include <signal.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "genie/core/timeline.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/address.h"
#include "genie/transport/auth.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "host:port to listen on; port 0 picks a free port (printed on the first stdout line)");
ABSL_FLAG(std::string, key_file, "",
          "file holding the shared secret (chmod 600); if empty, the GENIE_KEY environment "
          "variable is used");
ABSL_FLAG(int64_t, memory_budget, 0,
          "bytes each client session may keep resident plus upload per run; 0 = unlimited");
ABSL_FLAG(std::string, device, "cpu", "where graphs run: cpu (cuda:N on CUDA builds)");
ABSL_FLAG(int32_t, threads, 0,
          "ATen intra-op threads for each client session's ops (set per session thread); 0: "
          "per program, 1 when all its ops are small (below ATen's grain of 32768 elements), "
          "else libtorch's default");
ABSL_FLAG(int32_t, cpu_lanes, 0,
          "on cpu, threads per session for a program's independent branches (e.g. a VQA "
          "model's vision and language encoders), joined where a node reads both; 1: every op "
          "on the session thread; 0: 2 where the machine has 2 or more cores (below 4 cores, only "
          "for programs whose ops run on one intra-op thread)");
ABSL_FLAG(int64_t, max_program_bytes, int64_t{64} << 20,
          "largest program (encoded graph and tables) a client may load");
ABSL_FLAG(int32_t, max_cached_programs, 256,
          "programs cached per connection; the least recently run is evicted first");
ABSL_FLAG(bool, log_runs, true, "log one line per run to stderr");
ABSL_FLAG(int32_t, run_slots, 0,
          "runs of all clients executing at once; 0 = no limit. With a limit, waiting runs "
          "are admitted LLM decode steps first (see --decode_first)");
ABSL_FLAG(bool, decode_first, true,
          "with --run_slots: admit decode steps (recognised from the program) ahead of "
          "waiting prefills and other runs; false: in arrival order");
ABSL_FLAG(std::string, timeline, "",
          "record this node's timeline (runs, uploads, waits for the GPU, the GPU's work) and "
          "write it to this file as a Chrome trace when the node stops (open it in "
          "ui.perfetto.dev); the GENIE_TIMELINE environment variable does the same");
ABSL_FLAG(int64_t, peer_inbox_bytes, int64_t{1} << 30,
          "bytes other nodes may push here that no run has read yet; a push above it is "
          "refused with an error naming the sizes; 0 = unlimited");
ABSL_FLAG(int64_t, max_registered_pool_bytes, int64_t{1} << 30,
          "on CUDA: page-lock (cudaHostRegister) a Shm client's tensor pool only up to this "
          "size (and not above --memory_budget when set); a larger pool is used through "
          "staging copies; 0 = never page-lock");
ABSL_FLAG(int32_t, cuda_streams, 4,
          "on cuda:N, CUDA streams per program: independent branches run concurrently (1: one "
          "stream)");
ABSL_FLAG(bool, cuda_graphs, true,
          "on cuda:N, capture a program into a CUDA graph on its second run and replay it "
          "(programs with random, syncing or CPU ops stay eager); --nocuda_graphs turns it off");
ABSL_FLAG(bool, peer_cuda_ipc, true,
          "on cuda:N, send to peer nodes on this host (loopback addresses) GPU to GPU through "
          "CUDA IPC; --nopeer_cuda_ipc sends through host memory over TCP");
ABSL_FLAG(std::string, shm_socket, "",
          "also accept clients of this host over shared memory (transport::Shm) on this Unix "
          "socket path, e.g. /tmp/genie-node.sock; empty: TCP only");
ABSL_FLAG(int32_t, max_lanes, 0,
          "TCP sockets a client may open in all: large tensors are striped over them, each "
          "copied by its own thread (1: one socket per client; 0: half this machine's "
          "usable cores, at most 8)");
ABSL_FLAG(int32_t, peer_lanes, 0,
          "TCP sockets this node asks another node for when it sends it tensors directly "
          "(1: one socket; 0: as a client asks, up to 4 and at most half this machine's usable "
          "cores)");
ABSL_FLAG(int32_t, busy_poll_us, 0,
          "spin this many microseconds on a client's socket before sleeping while waiting for "
          "its next message (lower latency per run for a spinning core); 0 never spins");

namespace {

std::atomic<bool> g_stop{false};

extern "C" void OnSignal(int) { g_stop.store(true); }

int Fail(const std::string& message) {
  std::fprintf(stderr, "genie-node: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "runs Genie graphs for remote clients.\n"
      "  genie-node --listen=127.0.0.1:0 --key_file=KEY [--memory_budget=BYTES] [--threads=N]\n"
      "The key comes from --key_file or the GENIE_KEY environment variable.");
  absl::FlagsUsageConfig usage;
  // --help lists this file's flags (the binary's name differs from the source's).
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "node_main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  const std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<genie::transport::HostPort> address =
      genie::transport::ParseHostPort(listen, /*allow_port_zero=*/true);
  if (!address.ok()) {
    return Fail(absl::StrCat("--listen=", listen, " is not host:port (e.g. 127.0.0.1:7070)"));
  }
  const std::string host = address->host;
  const uint32_t port = address->port;

  const std::string key_file = absl::GetFlag(FLAGS_key_file);
  absl::StatusOr<std::string> key = key_file.empty() ? genie::transport::LoadKeyFromEnv()
                                                     : genie::transport::LoadKeyFile(key_file);
  if (!key.ok()) {
    return Fail(absl::StrCat("no usable key: ", key.status().ToString(),
                             ". Pass --key_file=PATH (chmod 600) or set GENIE_KEY"));
  }

  genie::runtime::NodeOptions options;
  options.device = absl::GetFlag(FLAGS_device);
#ifdef GENIE_WITH_CUDA
  const bool device_ok = options.device == "cpu" || absl::StartsWith(options.device, "cuda:");
#else
  const bool device_ok = options.device == "cpu";
#endif
  if (!device_ok) {
    return Fail(absl::StrCat("--device=", options.device,
                             " is not supported by this build (cpu; cuda:N needs --config=cuda)"));
  }
  options.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget);
  if (options.memory_budget_bytes < 0) return Fail("--memory_budget must be >= 0");
  const int64_t max_program = absl::GetFlag(FLAGS_max_program_bytes);
  if (max_program <= 0 || max_program > (int64_t{1} << 30)) {
    return Fail("--max_program_bytes must be in (0, 1 GiB]");
  }
  options.limits.max_program_bytes = static_cast<uint64_t>(max_program);
  const int32_t max_programs = absl::GetFlag(FLAGS_max_cached_programs);
  if (max_programs <= 0) return Fail("--max_cached_programs must be > 0");
  options.max_cached_programs = static_cast<uint32_t>(max_programs);
  options.log_runs = absl::GetFlag(FLAGS_log_runs);
  options.peer_inbox_bytes = absl::GetFlag(FLAGS_peer_inbox_bytes);
  if (options.peer_inbox_bytes < 0) return Fail("--peer_inbox_bytes must be >= 0");
  options.max_registered_pool_bytes = absl::GetFlag(FLAGS_max_registered_pool_bytes);
  if (options.max_registered_pool_bytes < 0)
    return Fail("--max_registered_pool_bytes must be >= 0");
  options.run_slots = absl::GetFlag(FLAGS_run_slots);
  if (options.run_slots < 0) return Fail("--run_slots must be >= 0");
  options.decode_first = absl::GetFlag(FLAGS_decode_first);
  options.cuda_streams = absl::GetFlag(FLAGS_cuda_streams);
  if (options.cuda_streams < 1 || options.cuda_streams > 16)
    return Fail("--cuda_streams must be in [1, 16]");
  options.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  options.peer_cuda_ipc = absl::GetFlag(FLAGS_peer_cuda_ipc);
  const int32_t busy_poll_us = absl::GetFlag(FLAGS_busy_poll_us);
  if (busy_poll_us < 0 || busy_poll_us > 1000000)
    return Fail("--busy_poll_us must be in [0, 1000000]");
  options.busy_poll = absl::Microseconds(busy_poll_us);
  options.max_lanes = absl::GetFlag(FLAGS_max_lanes);
  if (options.max_lanes < 0 || options.max_lanes > 16)
    return Fail("--max_lanes must be in [0, 16] (0: automatic)");
  options.peer_lanes = absl::GetFlag(FLAGS_peer_lanes);
  if (options.peer_lanes < 0 || options.peer_lanes > 16)
    return Fail("--peer_lanes must be in [0, 16] (0: automatic)");
  options.shm_socket = absl::GetFlag(FLAGS_shm_socket);
  const int32_t threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0) return Fail("--threads must be >= 0 (0: automatic)");
  options.intra_op_threads = threads;
  options.cpu_lanes = absl::GetFlag(FLAGS_cpu_lanes);
  if (options.cpu_lanes < 0 || options.cpu_lanes > 16)
    return Fail("--cpu_lanes must be in [0, 16] (0: automatic)");

  absl::StatusOr<std::unique_ptr<genie::runtime::NodeServer>> server =
      genie::runtime::NodeServer::Create(host, static_cast<uint16_t>(port), std::move(*key),
                                         options);
  if (!server.ok()) return Fail(server.status().ToString());

  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  std::printf("genie-node listening on %s:%d\n", (*server)->host().c_str(), (*server)->port());
  if (!(*server)->shm_socket().empty()) {
    std::printf("genie-node listening for shared-memory clients on %s\n",
                (*server)->shm_socket().c_str());
  }
  std::fflush(stdout);
  std::fprintf(stderr,
               "genie-node: device %s, %d intra-op threads per session (0: automatic), memory "
               "budget %s, max program %lld bytes, "
               "%d CUDA streams, CUDA graphs %s\n",
               options.device.c_str(), threads,
               options.memory_budget_bytes == 0
                   ? "unlimited"
                   : absl::StrCat(options.memory_budget_bytes, " bytes").c_str(),
               static_cast<long long>(max_program), options.cuda_streams,
               options.cuda_graphs ? "on" : "off");
  const std::string timeline_path = absl::GetFlag(FLAGS_timeline);
  if (!timeline_path.empty()) genie::timeline::Start();
  (*server)->Serve(&g_stop);
  if (!timeline_path.empty()) {
    genie::timeline::Stop();
    const absl::Status wrote = genie::timeline::Write(timeline_path);
    if (!wrote.ok()) return Fail(std::string(wrote.message()));
    std::fprintf(stderr, "genie-node: timeline written to %s\n", timeline_path.c_str());
  }
  std::fprintf(stderr, "genie-node: stopped\n");
  return 0;
}
