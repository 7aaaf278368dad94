// File: genie/plan/messages_test.cc
// The client <-> node messages: round trips, and refusal of every truncation, oversized
// counts, wrong versions, wrong types and random bytes (seeded).
#include "genie/plan/messages.h"

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace genie::plan {
namespace {

RunMessage SampleRun() {
  RunMessage m;
  m.program_id = 42;
  m.binding.release = {1, 2, 3};
  m.binding.resident_handles = {77};
  m.binding.keep_handles = {99, 100};
  m.uploads = {{1, UploadClass::kWeights, 256},
               {0, UploadClass::kActivations, 64},
               {4, UploadClass::kActivations, 0},
               {5, UploadClass::kActivations, 1 << 20, 8192}};  // in the tensor pool
  m.outputs_in_pool = {{0, 1 << 21, 64}, {2, 1 << 22, 8}};
  return m;
}

ResultMessage SampleResult() {
  ResultMessage m;
  m.stats.program_cache_hit = true;
  m.stats.nodes_executed = 12;
  m.stats.bytes_uploaded = 320;
  m.stats.bytes_downloaded = 64;
  m.stats.resident_bytes = 4096;
  m.node_micros = 150;
  m.output_bytes = {64, 0, 8};
  m.pooled_outputs = {0, 2};
  return m;
}

NodeStatusMessage SampleNodeStatus() {
  NodeStatusMessage m;
  m.device = "cuda:1";
  m.uptime_micros = 90'000'000;
  m.open_sessions = 3;
  m.sessions_served = 17;
  m.runs = 1234;
  m.run_errors = 2;
  m.bytes_received = 5 << 20;
  m.bytes_sent = 3 << 20;
  m.programs_cached = 9;
  m.resident_bytes = 1 << 30;
  m.memory_budget_bytes = int64_t{8} << 30;
  m.gpu = true;
  m.gpu_allocated_bytes = 600 << 20;
  m.gpu_reserved_bytes = 800 << 20;
  m.gpu_free_bytes = int64_t{70} << 30;
  m.gpu_total_bytes = int64_t{80} << 30;
  m.graph_replays = 1000;
  return m;
}

// Every message kind, encoded, with a decoder that reports only success or failure.
struct Sample {
  std::string name;
  std::string bytes;
  std::function<absl::Status(absl::string_view, const MessageLimits&)> decode;
};

std::vector<Sample> Samples() {
  std::vector<Sample> s;
  s.push_back({"NodeInfo", EncodeNodeInfo({"cpu", 64 << 20, 64, 0}),
               [](absl::string_view b, const MessageLimits& l) { return DecodeNodeInfo(b, l).status(); }});
  s.push_back({"LoadProgram", EncodeLoadProgram(7, "program-bytes"),
               [](absl::string_view b, const MessageLimits& l) {
                 return DecodeLoadProgram(b, l).status();
               }});
  s.push_back({"Run", EncodeRun(SampleRun()), [](absl::string_view b, const MessageLimits& l) {
                 RunMessage m;
                 return DecodeRun(b, l, &m);
               }});
  s.push_back({"Result", EncodeResult(SampleResult()),
               [](absl::string_view b, const MessageLimits& l) {
                 ResultMessage m;
                 return DecodeResult(b, l, &m);
               }});
  s.push_back({"Error", EncodeError(absl::ResourceExhaustedError("budget"), false),
               [](absl::string_view b, const MessageLimits& l) { return DecodeError(b, l).status(); }});
  s.push_back({"StatusQuery", EncodeStatusQuery(),
               [](absl::string_view b, const MessageLimits&) { return DecodeStatusQuery(b); }});
  s.push_back({"NodeStatus", EncodeNodeStatus(SampleNodeStatus()),
               [](absl::string_view b, const MessageLimits& l) {
                 return DecodeNodeStatus(b, l).status();
               }});
  return s;
}

TEST(MessagesTest, RunRoundTrip) {
  const RunMessage m = SampleRun();
  const std::string bytes = EncodeRun(m);
  EXPECT_EQ(*PeekMessageType(bytes), MessageType::kRun);
  RunMessage back;
  back.uploads.resize(100);  // reused and cleared
  ASSERT_TRUE(DecodeRun(bytes, MessageLimits(), &back).ok());
  EXPECT_EQ(back.program_id, 42u);
  EXPECT_EQ(back.binding.release, m.binding.release);
  EXPECT_EQ(back.binding.resident_handles, m.binding.resident_handles);
  EXPECT_EQ(back.binding.keep_handles, m.binding.keep_handles);
  ASSERT_EQ(back.uploads.size(), 4u);
  EXPECT_EQ(back.uploads[0].buffer, 1u);
  EXPECT_EQ(back.uploads[0].upload_class, UploadClass::kWeights);
  EXPECT_EQ(back.uploads[1].nbytes, 64u);
  EXPECT_FALSE(back.uploads[1].pooled());
  EXPECT_TRUE(back.uploads[3].pooled());
  EXPECT_EQ(back.uploads[3].pool_offset, 8192u);
  ASSERT_EQ(back.outputs_in_pool.size(), 2u);
  EXPECT_EQ(back.outputs_in_pool[1].output, 2u);
  EXPECT_EQ(back.outputs_in_pool[1].pool_offset, 1u << 22);
  EXPECT_EQ(back.outputs_in_pool[1].nbytes, 8u);
  EXPECT_EQ(EncodeRun(back), bytes);
}

TEST(MessagesTest, OtherRoundTrips) {
  auto info = DecodeNodeInfo(EncodeNodeInfo({"cuda:0", 123, 9, 1 << 20}));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device, "cuda:0");
  EXPECT_EQ(info->max_program_bytes, 123u);
  EXPECT_EQ(info->max_cached_programs, 9u);
  EXPECT_EQ(info->memory_budget_bytes, 1 << 20);

  const std::string program(1000, 'p');
  const std::string encoded = EncodeLoadProgram(9, program);  // `program` views into it
  auto load = DecodeLoadProgram(encoded);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->program_id, 9u);
  EXPECT_EQ(std::string(load->program), program);

  ResultMessage r;
  ASSERT_TRUE(DecodeResult(EncodeResult(SampleResult()), MessageLimits(), &r).ok());
  EXPECT_TRUE(r.stats.program_cache_hit);
  EXPECT_EQ(r.stats.nodes_executed, 12);
  EXPECT_EQ(r.stats.resident_bytes, 4096);
  EXPECT_EQ(r.node_micros, 150);
  EXPECT_EQ(r.output_bytes, (std::vector<uint64_t>{64, 0, 8}));
  EXPECT_EQ(r.pooled_outputs, (std::vector<uint32_t>{0, 2}));

  auto e = DecodeError(EncodeError(absl::NotFoundError("no such program"), true));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->code, absl::StatusCode::kNotFound);
  EXPECT_TRUE(e->unknown_program);
  EXPECT_EQ(e->message, "no such program");
  EXPECT_EQ(e->ToStatus(), absl::NotFoundError("no such program"));
  MessageLimits small;
  small.max_error_bytes = 4;
  auto cut = DecodeError(EncodeError(absl::InternalError("a long message"), false, small), small);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(cut->message, "a lo");
}

TEST(MessagesTest, StatusRoundTrips) {
  const std::string query = EncodeStatusQuery();
  EXPECT_EQ(query.size(), MaxStatusQueryBytes());
  EXPECT_EQ(*PeekMessageType(query), MessageType::kStatusQuery);
  EXPECT_TRUE(DecodeStatusQuery(query).ok());

  const std::string bytes = EncodeNodeStatus(SampleNodeStatus());
  EXPECT_EQ(*PeekMessageType(bytes), MessageType::kNodeStatus);
  EXPECT_EQ(MessageTypeName(MessageType::kNodeStatus), std::string("NodeStatus"));
  auto m = DecodeNodeStatus(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->device, "cuda:1");
  EXPECT_EQ(m->uptime_micros, 90'000'000);
  EXPECT_EQ(m->open_sessions, 3u);
  EXPECT_EQ(m->sessions_served, 17u);
  EXPECT_EQ(m->runs, 1234u);
  EXPECT_EQ(m->run_errors, 2u);
  EXPECT_EQ(m->bytes_received, 5u << 20);
  EXPECT_EQ(m->bytes_sent, 3u << 20);
  EXPECT_EQ(m->programs_cached, 9u);
  EXPECT_EQ(m->resident_bytes, 1 << 30);
  EXPECT_EQ(m->memory_budget_bytes, int64_t{8} << 30);
  EXPECT_TRUE(m->gpu);
  EXPECT_EQ(m->gpu_allocated_bytes, 600 << 20);
  EXPECT_EQ(m->gpu_reserved_bytes, 800 << 20);
  EXPECT_EQ(m->gpu_free_bytes, int64_t{70} << 30);
  EXPECT_EQ(m->gpu_total_bytes, int64_t{80} << 30);
  EXPECT_EQ(m->graph_replays, 1000u);
  EXPECT_EQ(EncodeNodeStatus(*m), bytes);
  EXPECT_LE(bytes.size(), MaxNodeStatusBytes(MessageLimits()));

  NodeStatusMessage cpu;  // a CPU node: no GPU figures
  cpu.device = "cpu";
  auto c = DecodeNodeStatus(EncodeNodeStatus(cpu));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->gpu);
  EXPECT_EQ(c->gpu_total_bytes, 0);
}

TEST(MessagesTest, BadNodeStatusFieldsAreRefused) {
  // GPU figures on a node without a GPU.
  NodeStatusMessage m = SampleNodeStatus();
  m.gpu = false;
  absl::Status s = DecodeNodeStatus(EncodeNodeStatus(m)).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(std::string(s.message()).find("no GPU"), std::string::npos) << s;
  // More free than total, a negative size, a gpu flag of 2, an over-long device name.
  m = SampleNodeStatus();
  m.gpu_free_bytes = m.gpu_total_bytes + 1;
  EXPECT_FALSE(DecodeNodeStatus(EncodeNodeStatus(m)).ok());
  m = SampleNodeStatus();
  m.resident_bytes = -1;
  EXPECT_FALSE(DecodeNodeStatus(EncodeNodeStatus(m)).ok());
  m = SampleNodeStatus();
  m.uptime_micros = -5;
  EXPECT_FALSE(DecodeNodeStatus(EncodeNodeStatus(m)).ok());
  std::string flag = EncodeNodeStatus(SampleNodeStatus());
  // prefix(3) + device(4 + 6) + uptime(8) + sessions(4 + 8) + seven u64/i64 (56): the flag.
  const size_t flag_at = 3 + 4 + 6 + 8 + 4 + 8 + 7 * 8;
  ASSERT_EQ(flag[flag_at], 1);
  flag[flag_at] = 2;
  s = DecodeNodeStatus(flag).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(std::string(s.message()).find("gpu flag"), std::string::npos) << s;
  MessageLimits small;
  small.max_string_bytes = 3;
  EXPECT_FALSE(DecodeNodeStatus(EncodeNodeStatus(SampleNodeStatus()), small).ok());
  // A query with anything after its prefix, and a NodeStatus with a trailing byte.
  EXPECT_FALSE(DecodeStatusQuery(EncodeStatusQuery() + "x").ok());
  EXPECT_FALSE(DecodeNodeStatus(EncodeNodeStatus(SampleNodeStatus()) + '\0').ok());
}

TEST(MessagesTest, EveryTruncationIsRefused) {
  for (const Sample& s : Samples()) {
    ASSERT_TRUE(s.decode(s.bytes, MessageLimits()).ok()) << s.name;
    for (size_t n = 0; n < s.bytes.size(); ++n) {
      EXPECT_FALSE(s.decode(s.bytes.substr(0, n), MessageLimits()).ok())
          << s.name << " cut to " << n << " bytes";
    }
    EXPECT_FALSE(s.decode(s.bytes + '\0', MessageLimits()).ok()) << s.name << " + trailing byte";
  }
}

TEST(MessagesTest, WrongVersionAndWrongTypeAreRefused) {
  for (const Sample& s : Samples()) {
    std::string wrong = s.bytes;
    wrong[0] = static_cast<char>(kMessageVersion + 1);
    absl::Status st = s.decode(wrong, MessageLimits());
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << s.name << ": " << st;
    EXPECT_NE(std::string(st.message()).find("version"), std::string::npos) << st;
    for (const Sample& other : Samples()) {
      if (other.name == s.name) continue;
      EXPECT_FALSE(other.decode(s.bytes, MessageLimits()).ok())
          << s.name << " decoded as " << other.name;
    }
  }
  std::string unknown_type = EncodeRun(SampleRun());
  unknown_type[2] = 77;
  EXPECT_FALSE(PeekMessageType(unknown_type).ok());
}

TEST(MessagesTest, OversizedCountsAndSizesAreRefused) {
  MessageLimits limits;
  limits.max_uploads = 2;
  RunMessage m;
  EXPECT_FALSE(DecodeRun(EncodeRun(SampleRun()), limits, &m).ok());  // 3 uploads
  limits = MessageLimits();
  limits.max_handles = 2;
  EXPECT_FALSE(DecodeRun(EncodeRun(SampleRun()), limits, &m).ok());  // 3 releases
  limits = MessageLimits();
  limits.max_bytes_per_upload = 100;
  EXPECT_FALSE(DecodeRun(EncodeRun(SampleRun()), limits, &m).ok());  // 256-byte upload
  limits = MessageLimits();
  limits.max_run_upload_bytes = 300;
  EXPECT_FALSE(DecodeRun(EncodeRun(SampleRun()), limits, &m).ok());  // 320 in all
  limits = MessageLimits();
  limits.max_outputs = 2;
  ResultMessage r;
  EXPECT_FALSE(DecodeResult(EncodeResult(SampleResult()), limits, &r).ok());
  limits = MessageLimits();
  limits.max_program_bytes = 10;
  absl::Status s = DecodeLoadProgram(EncodeLoadProgram(1, std::string(100, 'p')), limits).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("max_program_bytes"), std::string::npos) << s;

  // A hostile count that claims far more entries than the bytes hold: refused, no allocation.
  std::string huge = EncodeRun(RunMessage{});
  // prefix(3) + program id(8) + three empty handle lists(12) + upload count(4)
  // + pooled output count(4)
  ASSERT_EQ(huge.size(), 31u);
  huge[23] = huge[24] = huge[25] = static_cast<char>(0xff);
  huge[26] = static_cast<char>(0x7f);
  EXPECT_FALSE(DecodeRun(huge, MessageLimits(), &m).ok());
  huge = EncodeRun(RunMessage{});  // the same for the pooled outputs' count
  huge[27] = huge[28] = huge[29] = static_cast<char>(0xff);
  huge[30] = static_cast<char>(0x7f);
  EXPECT_FALSE(DecodeRun(huge, MessageLimits(), &m).ok());
  // Weights after activations, and an unknown upload class.
  RunMessage disordered = SampleRun();
  std::swap(disordered.uploads[0], disordered.uploads[1]);
  EXPECT_FALSE(DecodeRun(EncodeRun(disordered), MessageLimits(), &m).ok());
  RunMessage bad_class = SampleRun();
  bad_class.uploads[0].upload_class = static_cast<UploadClass>(9);
  EXPECT_FALSE(DecodeRun(EncodeRun(bad_class), MessageLimits(), &m).ok());
  // Invalid status codes in an Error.
  std::string bad_code = EncodeError(absl::InternalError("x"));
  bad_code[3] = 0;
  EXPECT_FALSE(DecodeError(bad_code).ok());
  bad_code[3] = 99;
  EXPECT_FALSE(DecodeError(bad_code).ok());
}

TEST(MessagesTest, RandomBytesAreRefused) {
  std::mt19937_64 rng(20261122);
  const std::vector<Sample> samples = Samples();
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes(rng() % 96, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    // Half the cases start with a valid prefix, to reach the field checks.
    if (i % 2 == 0 && bytes.size() >= 3) {
      bytes[0] = static_cast<char>(kMessageVersion);
      bytes[1] = 0;
      // (Not StatusQuery: its prefix alone is the whole message.)
      bytes[2] = static_cast<char>(i % 4 == 0 ? static_cast<int>(MessageType::kNodeStatus)
                                              : 1 + static_cast<int>(rng() % 5));
    }
    for (const Sample& s : samples) accepted += s.decode(bytes, MessageLimits()).ok();
  }
  // Random bytes almost never form a valid message; none may crash.
  EXPECT_LE(accepted, 5);
  // Mutating single bytes of valid messages: never a crash.
  for (const Sample& s : samples) {
    for (int i = 0; i < 2000; ++i) {
      std::string bytes = s.bytes;
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
      (void)s.decode(bytes, MessageLimits());
    }
  }
}

TEST(MessagesTest, GroupTransfersByClassAndFrameSize) {
  const std::vector<UploadEntry> entries = {{0, UploadClass::kWeights, 100},
                                            {1, UploadClass::kWeights, 0},
                                            {2, UploadClass::kWeights, 60},
                                            {3, UploadClass::kActivations, 10},
                                            {4, UploadClass::kActivations, 10}};
  std::vector<TransferFrame> frames = GroupTransfers(entries, 1 << 20);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].upload_class, UploadClass::kWeights);
  EXPECT_EQ(frames[0].first, 0u);
  EXPECT_EQ(frames[0].count, 3u);
  EXPECT_EQ(frames[0].bytes, 160u);
  EXPECT_EQ(frames[1].upload_class, UploadClass::kActivations);
  EXPECT_EQ(frames[1].bytes, 20u);
  frames = GroupTransfers(entries, 120);  // the 60-byte weight starts a new frame
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].bytes, 100u);
  EXPECT_EQ(frames[1].first, 2u);
  EXPECT_EQ(frames[1].bytes, 60u);
  EXPECT_TRUE(GroupTransfers({{0, UploadClass::kWeights, 0}}, 10).empty());
}

TEST(MessagesTest, PoolReferencesAreCheckedOnDecode) {
  RunMessage back;
  RunMessage run = SampleRun();
  run.uploads[3].nbytes = 0;  // a pooled entry of no bytes
  absl::Status s = DecodeRun(EncodeRun(run), MessageLimits(), &back);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("upload entry 3 references 0 pool bytes"), absl::string_view::npos) << s;
  run = SampleRun();
  run.uploads[3].pool_offset = ~uint64_t{0} - 10;  // offset + bytes wraps
  EXPECT_FALSE(DecodeRun(EncodeRun(run), MessageLimits(), &back).ok());
  run = SampleRun();
  run.outputs_in_pool = {{2, 0, 8}, {0, 4096, 64}};  // not increasing
  s = DecodeRun(EncodeRun(run), MessageLimits(), &back);
  EXPECT_NE(s.message().find("must increase"), absl::string_view::npos) << s;
  run.outputs_in_pool = {{0, 0, 0}};
  EXPECT_FALSE(DecodeRun(EncodeRun(run), MessageLimits(), &back).ok());

  ResultMessage result = SampleResult();
  ResultMessage decoded;
  result.pooled_outputs = {3};  // three outputs: index 3 is out of range
  EXPECT_FALSE(DecodeResult(EncodeResult(result), MessageLimits(), &decoded).ok());
  result.pooled_outputs = {2, 0};
  EXPECT_FALSE(DecodeResult(EncodeResult(result), MessageLimits(), &decoded).ok());
}

TEST(MessagesTest, CheckPoolReferencesAgainstThePool) {
  std::vector<std::pair<uint64_t, uint64_t>> scratch;
  const RunMessage run = SampleRun();  // 1 MiB upload at 8 KiB; outputs at 2 and 4 MiB
  EXPECT_TRUE(CheckPoolReferences(run, 8 << 20, &scratch).ok());
  // No pool on this connection.
  absl::Status s = CheckPoolReferences(run, 0, &scratch);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("has none"), absl::string_view::npos) << s;
  // Without references nothing is needed.
  RunMessage plain = SampleRun();
  plain.uploads.pop_back();
  plain.outputs_in_pool.clear();
  EXPECT_TRUE(CheckPoolReferences(plain, 0, &scratch).ok());
  // Outside the pool: the output at 4 MiB does not fit a 4 MiB pool.
  s = CheckPoolReferences(run, 4 << 20, &scratch);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("output 2 (8 bytes at pool offset 4194304) reaches outside"),
            absl::string_view::npos)
      << s;
  // Overlap: output 0 moved into the upload's block.
  RunMessage overlap = SampleRun();
  overlap.outputs_in_pool[0].pool_offset = 8192 + 1024;
  s = CheckPoolReferences(overlap, 8 << 20, &scratch);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("overlaps upload entry 3 (b5"), absl::string_view::npos) << s;
  // Touching ends do not overlap.
  overlap.outputs_in_pool[0].pool_offset = 8192 + (1 << 20);
  EXPECT_TRUE(CheckPoolReferences(overlap, 8 << 20, &scratch).ok());
  // A misaligned offset would make the node build misaligned tensors.
  RunMessage misaligned = SampleRun();
  misaligned.uploads[3].pool_offset = 4097;
  s = CheckPoolReferences(misaligned, 8 << 20, &scratch);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("upload entry 3 (b5, 1048576 bytes at pool offset 4097) is not at "
                             "a multiple of 64 bytes"),
            absl::string_view::npos)
      << s;
  EXPECT_NE(s.message().find("same Genie build"), absl::string_view::npos) << s;
  misaligned = SampleRun();
  misaligned.outputs_in_pool[1].pool_offset = (1 << 22) + 32;
  s = CheckPoolReferences(misaligned, 8 << 20, &scratch);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("output 2 (8 bytes at pool offset 4194336) is not at"),
            absl::string_view::npos)
      << s;
  misaligned.outputs_in_pool[1].pool_offset = (1 << 22) + 64;  // 64 is enough
  EXPECT_TRUE(CheckPoolReferences(misaligned, 8 << 20, &scratch).ok());
}

TEST(MessagesTest, PooledEntriesTravelInNoFrame) {
  const std::vector<UploadEntry> entries = {{0, UploadClass::kWeights, 100, 0},
                                            {1, UploadClass::kWeights, 50},
                                            {2, UploadClass::kActivations, 60, 4096},
                                            {3, UploadClass::kActivations, 10}};
  std::vector<TransferFrame> frames = GroupTransfers(entries, 1 << 20);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].first, 1u);
  EXPECT_EQ(frames[0].count, 1u);
  EXPECT_EQ(frames[0].bytes, 50u);
  EXPECT_EQ(frames[1].first, 3u);
  EXPECT_EQ(frames[1].count, 1u);
  EXPECT_EQ(frames[1].bytes, 10u);
  EXPECT_TRUE(GroupTransfers({{0, UploadClass::kWeights, 10, 0}}, 100).empty());
}

TEST(MessagesTest, APooledEntryIsNeverInsideAFrame) {
  // Outputs as the node sends them: [ring, pooled] and [ring, pooled, ring], one class.
  std::vector<UploadEntry> entries = {{0, UploadClass::kActivations, 64},
                                      {1, UploadClass::kActivations, 1 << 20, 4096}};
  std::vector<TransferFrame> frames = GroupTransfers(entries, 1 << 30);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].first, 0u);
  EXPECT_EQ(frames[0].count, 1u);
  EXPECT_EQ(frames[0].bytes, 64u);
  entries.push_back({2, UploadClass::kActivations, 32});
  entries.push_back({3, UploadClass::kActivations, 0});
  frames = GroupTransfers(entries, 1 << 30);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].count, 1u);
  EXPECT_EQ(frames[1].first, 2u);
  EXPECT_EQ(frames[1].count, 2u);  // the empty entry after it rides along
  EXPECT_EQ(frames[1].bytes, 32u);
  for (const TransferFrame& f : frames) {
    for (uint32_t k = f.first; k < f.first + f.count; ++k) EXPECT_FALSE(entries[k].pooled()) << k;
  }
}

TEST(MessagesTest, PeerMessagesRoundTripAndRefuseBadFields) {
  PeerSendMessage send;
  send.handle = 7;
  send.dtype = core::DType::kFloat16;
  send.numel = 10;
  send.peer_host = "10.0.0.2";
  send.peer_port = 7071;
  send.peer_handle = 9;
  send.release = true;
  const std::string bytes = EncodePeerSend(send);
  EXPECT_LE(bytes.size(), MaxPeerSendBytes({}));
  absl::StatusOr<PeerSendMessage> back = DecodePeerSend(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->handle, 7u);
  EXPECT_EQ(back->dtype, core::DType::kFloat16);
  EXPECT_EQ(back->nbytes(), 20u);
  EXPECT_EQ(back->peer_host, "10.0.0.2");
  EXPECT_EQ(back->peer_port, 7071);
  EXPECT_EQ(back->peer_handle, 9u);
  EXPECT_TRUE(back->release);
  EXPECT_EQ(*PeekMessageType(bytes), MessageType::kPeerSend);
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodePeerSend(bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(DecodePeerSend(bytes + "x").ok());
  auto refused = [](PeerSendMessage m) { return !DecodePeerSend(EncodePeerSend(m)).ok(); };
  PeerSendMessage m = send;
  m.handle = 0;
  EXPECT_TRUE(refused(m));
  m = send;
  m.peer_handle = 0;
  EXPECT_TRUE(refused(m));
  m = send;
  m.numel = -1;
  EXPECT_TRUE(refused(m));
  m = send;
  m.numel = int64_t{1} << 40;
  EXPECT_TRUE(refused(m));
  m = send;
  m.peer_host = "";
  EXPECT_TRUE(refused(m));
  m = send;
  m.peer_port = 0;
  EXPECT_TRUE(refused(m));
  m = send;
  m.dtype = static_cast<core::DType>(200);
  EXPECT_TRUE(refused(m));
  std::string bad_flag = bytes;
  bad_flag.back() = 2;
  EXPECT_FALSE(DecodePeerSend(bad_flag).ok());

  PeerPutMessage put{5, core::DType::kInt64, 3};
  const std::string put_bytes = EncodePeerPut(put);
  EXPECT_LE(put_bytes.size(), MaxPeerPutBytes({}));
  absl::StatusOr<PeerPutMessage> put_back = DecodePeerPut(put_bytes);
  ASSERT_TRUE(put_back.ok()) << put_back.status();
  EXPECT_EQ(put_back->handle, 5u);
  EXPECT_EQ(put_back->nbytes(), 24u);
  EXPECT_FALSE(DecodePeerPut(bytes).ok());      // a PeerSend is not a PeerPut
  EXPECT_FALSE(DecodePeerSend(put_bytes).ok());
  for (size_t n = 0; n < put_bytes.size(); ++n) EXPECT_FALSE(DecodePeerPut(put_bytes.substr(0, n)).ok());

  // Over CUDA IPC: the descriptor travels in the message, bounded.
  PeerPutMessage ipc{6, core::DType::kFloat32, 1024};
  ipc.cuda_ipc = std::string(164, '\x5a');
  const std::string ipc_bytes = EncodePeerPut(ipc);
  EXPECT_LE(ipc_bytes.size(), MaxPeerPutBytes({}));
  absl::StatusOr<PeerPutMessage> ipc_back = DecodePeerPut(ipc_bytes);
  ASSERT_TRUE(ipc_back.ok()) << ipc_back.status();
  EXPECT_EQ(ipc_back->cuda_ipc, ipc.cuda_ipc);
  EXPECT_TRUE(put_back->cuda_ipc.empty());
  ipc.cuda_ipc = std::string(PeerPutMessage::kMaxCudaIpcBytes + 1, 'x');
  EXPECT_FALSE(DecodePeerPut(EncodePeerPut(ipc)).ok());
}

}  // namespace
}  // namespace genie::plan
