// File: genie/transport/transport_benchmark.cc
// Transport throughput and latency: Tcp over loopback (with its lanes, and on one socket:
// TcpOneSocket) and Shm (shared-memory rings between
// two endpoints of one host) against the InProcess baseline, in one binary, same sizes. Throughput
// counts payload bytes delivered to the receiver's buffer (each iteration sends a 64 MiB batch of
// frames and waits for the receiver's acknowledgement), so a sender running ahead of its peer is
// not counted. Latency is a 64-byte ping-pong round trip, and one large message with its answer
// (BM_OneMessage: what a run's upload costs).
//
//   bazel run -c opt //genie/transport:transport_benchmark -- --benchmark_repetitions=5
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "genie/transport/inprocess.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"

namespace genie::transport {
namespace {

constexpr absl::Duration kWait = absl::Seconds(30);
constexpr std::size_t kBatchBytes = std::size_t{64} << 20;

template <class P>
absl::StatusOr<std::pair<Connection<P>, Connection<P>>> MakePair();

template <>
absl::StatusOr<std::pair<Connection<InProcess>, Connection<InProcess>>> MakePair<InProcess>() {
  return Connection<InProcess>::CreatePair();
}

// A Tcp pair; with lanes in the policy (Tcp has 4), the client opens them as a node's
// client does.
template <class P>
absl::StatusOr<std::pair<Connection<P>, Connection<P>>> MakeTcpPair() {
  auto listener = Listener<P>::Create("127.0.0.1", 0);
  if (!listener.ok()) return listener.status();
  auto client = Connection<P>::Connect("127.0.0.1", listener->port(), kWait);
  if (!client.ok()) return client.status();
  auto server = listener->Accept(kWait);
  if (!server.ok()) return server.status();
  if constexpr (transport_traits<P>::lanes > 1) {
    absl::StatusOr<LaneResult> opened = absl::UnknownError("not run");
    std::thread client_side([&] { opened = client->OpenLanes(kWait); });
    absl::StatusOr<FrameHeader> request = server->ReceiveHeader(kWait);
    absl::StatusOr<LaneResult> accepted =
        request.ok() ? server->AcceptLanes(*request, transport_traits<P>::lanes, kWait)
                     : request.status();
    client_side.join();
    if (!opened.ok()) return opened.status();
    if (!accepted.ok()) return accepted.status();
  }
  return std::pair<Connection<P>, Connection<P>>(std::move(*client), std::move(*server));
}

template <>
absl::StatusOr<std::pair<Connection<Tcp>, Connection<Tcp>>> MakePair<Tcp>() {
  return MakeTcpPair<Tcp>();
}

template <>
absl::StatusOr<std::pair<Connection<TcpOneSocket>, Connection<TcpOneSocket>>>
MakePair<TcpOneSocket>() {
  return MakeTcpPair<TcpOneSocket>();
}

template <>
absl::StatusOr<std::pair<Connection<Shm>, Connection<Shm>>> MakePair<Shm>() {
  const std::string path = "/tmp/genie-transport-benchmark-" + std::to_string(getpid()) + ".sock";
  auto listener = Listener<Shm>::Create(path);
  if (!listener.ok()) return listener.status();
  auto client = Connection<Shm>::Connect(path, kWait);
  if (!client.ok()) return client.status();
  auto server = listener->Accept(kWait);
  if (!server.ok()) return server.status();
  return std::pair<Connection<Shm>, Connection<Shm>>(std::move(*client), std::move(*server));
}

// Receives frames into one reused buffer; answers every kPing with a kPong; stops at kGoodbye.
template <class P>
// With `fresh`, every payload goes into memory allocated for it (as a client's output did
// before client_internal::HostBlockCache): the kernel then faults in each page as it copies.
void Sink(Connection<P>& conn, std::vector<unsigned char>& buffer, bool fresh = false) {
  for (;;) {
    auto header = conn.ReceiveHeader(kWait);
    if (!header.ok()) return;
    const std::unique_ptr<unsigned char[]> own(
        fresh ? new unsigned char[std::max<std::uint64_t>(header->payload_bytes, 1)] : nullptr);
    unsigned char* dst = fresh ? own.get() : buffer.data();
    if (!conn.ReceivePayload(dst, header->payload_bytes).ok()) return;
    if (header->kind == MessageKind::kGoodbye) return;
    if (header->kind == MessageKind::kPing) {
      if (!conn.SendBytes(MessageKind::kPong, header->request_id, "").ok()) return;
    }
  }
}

template <class P>
void BM_Throughput(benchmark::State& state) {
  const auto frame_bytes = static_cast<std::size_t>(state.range(0));
  auto pair = MakePair<P>();
  if (!pair.ok()) {
    state.SkipWithError(pair.status().ToString().c_str());
    return;
  }
  auto& [sender, receiver] = *pair;
  std::vector<unsigned char> source(frame_bytes, 0x5a);
  std::vector<unsigned char> sink(std::max<std::size_t>(frame_bytes, 64));
  std::thread sink_thread([&] { Sink(receiver, sink); });
  const Piece piece{source.data(), source.size()};
  const auto one = absl::MakeConstSpan(&piece, 1);
  const std::size_t frames_per_batch = std::max<std::size_t>(1, kBatchBytes / frame_bytes);
  std::uint64_t request_id = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < frames_per_batch; ++i) {
      if (!sender.Send(MessageKind::kTransfer, ++request_id, one, TrafficClass::kActivations)
               .ok()) {
        state.SkipWithError("send failed");
        break;
      }
    }
    // Wait until the receiver has the whole batch.
    if (!sender.SendBytes(MessageKind::kPing, ++request_id, "").ok() ||
        !sender.Receive(kWait).ok()) {
      state.SkipWithError("ack failed");
      break;
    }
  }
  (void)sender.SendBytes(MessageKind::kGoodbye, 0, "");
  sink_thread.join();
  state.SetBytesProcessed(
      static_cast<std::int64_t>(state.iterations() * frames_per_batch * frame_bytes));
  state.counters["frames/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * frames_per_batch), benchmark::Counter::kIsRate);
}

template <class P>
void BM_PingPong(benchmark::State& state) {
  auto pair = MakePair<P>();
  if (!pair.ok()) {
    state.SkipWithError(pair.status().ToString().c_str());
    return;
  }
  auto& [client, node] = *pair;
  std::vector<unsigned char> sink(4096);
  std::thread node_thread([&] { Sink(node, sink); });
  const std::string payload(64, 'p');
  const Piece piece{payload.data(), payload.size()};
  std::uint64_t request_id = 0;
  std::vector<unsigned char> reply(64);
  for (auto _ : state) {
    if (!client.Send(MessageKind::kPing, ++request_id, absl::MakeConstSpan(&piece, 1)).ok()) {
      state.SkipWithError("send failed");
      break;
    }
    auto header = client.ReceiveHeader(kWait);
    if (!header.ok() || !client.ReceivePayload(reply.data(), header->payload_bytes).ok()) {
      state.SkipWithError("receive failed");
      break;
    }
  }
  (void)client.SendBytes(MessageKind::kGoodbye, 0, "");
  node_thread.join();
}

// One message of `range(0)` bytes and the receiver's answer: the latency of a single upload
// (a run's inputs), where BM_Throughput streams frames back to back.
// range(1) = 1: the receiver takes each message into fresh memory (BM_OneMessageFresh).
template <class P>
void BM_OneMessage(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  const bool fresh = state.range(1) != 0;
  auto pair = MakePair<P>();
  if (!pair.ok()) {
    state.SkipWithError(pair.status().ToString().c_str());
    return;
  }
  auto& [client, node] = *pair;
  std::vector<unsigned char> sink(std::max<std::size_t>(bytes, 64));
  std::thread node_thread([&] { Sink(node, sink, fresh); });
  std::vector<unsigned char> source(bytes, 0x5a);
  const Piece piece{source.data(), source.size()};
  std::uint64_t request_id = 0;
  for (auto _ : state) {
    if (!client
             .Send(MessageKind::kTransfer, ++request_id, absl::MakeConstSpan(&piece, 1),
                   TrafficClass::kActivations)
             .ok() ||
        !client.SendBytes(MessageKind::kPing, ++request_id, "").ok() ||
        !client.Receive(kWait).ok()) {
      state.SkipWithError("send or answer failed");
      break;
    }
  }
  (void)client.SendBytes(MessageKind::kGoodbye, 0, "");
  node_thread.join();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

// 8 KiB (control-sized), 1 MiB, 4 MiB (an upload of ViT's images is 4.8 MB).
BENCHMARK_TEMPLATE(BM_Throughput, InProcess)
    ->Arg(8 << 10)
    ->Arg(1 << 20)
    ->Arg(4 << 20)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Throughput, Tcp)->Arg(8 << 10)->Arg(1 << 20)->Arg(4 << 20)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Throughput, TcpOneSocket)
    ->Arg(8 << 10)
    ->Arg(1 << 20)
    ->Arg(4 << 20)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Throughput, Shm)->Arg(8 << 10)->Arg(1 << 20)->Arg(4 << 20)->UseRealTime();
// ViT-B/16's batch of 8 images (8 x 3 x 224 x 224 fp32) and BERT's hidden states (8 x 128 x 768).
// Second argument 1: received into fresh memory each time instead of one reused buffer.
BENCHMARK_TEMPLATE(BM_OneMessage, InProcess)->Args({4816896, 0})->Args({3145728, 0})->UseRealTime();
BENCHMARK_TEMPLATE(BM_OneMessage, Tcp)
    ->Args({4816896, 0})
    ->Args({3145728, 0})
    ->Args({3145728, 1})
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_OneMessage, TcpOneSocket)
    ->Args({4816896, 0})
    ->Args({3145728, 0})
    ->Args({3145728, 1})
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_OneMessage, Shm)->Args({4816896, 0})->Args({3145728, 0})->UseRealTime();
BENCHMARK_TEMPLATE(BM_PingPong, InProcess)->UseRealTime();
BENCHMARK_TEMPLATE(BM_PingPong, Tcp)->UseRealTime();
BENCHMARK_TEMPLATE(BM_PingPong, Shm)->UseRealTime();

}  // namespace
}  // namespace genie::transport
