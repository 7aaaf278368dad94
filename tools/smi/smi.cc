// File: tools/smi/smi.cc
// genie-smi's library (smi.h): one short authenticated connection per node, and the table
// and JSON renderings of what the nodes said.
#include "tools/smi/smi.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "genie/transport/address.h"
#include "genie/transport/auth.h"
#include "genie/transport/frame.h"
#include "genie/transport/tcp.h"

namespace genie::smi {
namespace {

using transport::MessageKind;
using TcpConnection = transport::Connection<transport::Tcp>;

absl::Status Unreachable(const std::string& node, const absl::Status& cause) {
  return absl::UnavailableError(
      absl::StrCat("cannot reach genie-node ", node, ": ", cause.message(),
                   ". Check that genie-node runs there (genie-node --listen=", node,
                   " --key_file=...) and that the network lets you through"));
}

// One answer frame of at most `max_bytes`, its payload read.
absl::StatusOr<transport::Frame> ReceiveAnswer(TcpConnection& conn, const std::string& node,
                                               absl::string_view asked, uint64_t max_bytes,
                                               absl::Duration timeout) {
  absl::StatusOr<transport::FrameHeader> header = conn.ReceiveHeader(timeout);
  if (!header.ok()) {
    if (absl::IsDeadlineExceeded(header.status())) {
      return absl::DeadlineExceededError(
          absl::StrCat("genie-node ", node, " did not answer ", asked, " within ",
                       absl::FormatDuration(timeout), " (is it overloaded or stuck?)"));
    }
    return Unreachable(node, header.status());
  }
  if (header->payload_bytes > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "genie-node ", node, " answered ", asked, " with a ",
        transport::MessageKindName(header->kind), " frame of ", header->payload_bytes,
        " bytes, above the ", max_bytes, " allowed; run the same Genie release on both sides"));
  }
  transport::Frame f;
  f.header = *header;
  f.payload.resize(static_cast<size_t>(header->payload_bytes));
  absl::Status s = conn.ReceivePayload(f.payload.data(), f.payload.size());
  if (!s.ok()) return Unreachable(node, s);
  return f;
}

// A kError answer, as the node's own words.
std::string ErrorText(const transport::Frame& f, const plan::MessageLimits& limits) {
  absl::StatusOr<plan::ErrorMessage> e = plan::DecodeError(f.payload, limits);
  return e.ok() ? e->message : absl::StrCat("an unreadable error (", e.status().message(), ")");
}

absl::StatusOr<plan::NodeStatusMessage> Query(const NodeAddress& address, absl::string_view key,
                                              const QueryOptions& options) {
  const std::string node = address.name();
  transport::ConnectionOptions conn_options;
  conn_options.send_timeout = options.timeout;
  conn_options.payload_timeout = options.timeout;
  absl::StatusOr<TcpConnection> conn =
      TcpConnection::Connect(address.host, address.port, options.timeout, conn_options);
  if (!conn.ok()) return Unreachable(node, conn.status());
  absl::Status auth = transport::AuthenticateClient(*conn, key, options.timeout);
  if (absl::IsUnauthenticated(auth)) {
    return absl::UnauthenticatedError(absl::StrCat(
        "genie-node ", node, " refused the key: ", auth.message(),
        ". Use the node's key (--key_file=PATH or GENIE_KEY, the same as genie-node's)"));
  }
  if (absl::IsInvalidArgument(auth)) return auth;  // the key itself (too short)
  if (absl::IsDeadlineExceeded(auth)) {
    return absl::DeadlineExceededError(
        absl::StrCat("genie-node ", node, " did not finish the handshake within ",
                     absl::FormatDuration(options.timeout), ": ", auth.message(),
                     " (is that port a genie-node?)"));
  }
  if (!auth.ok()) return Unreachable(node, auth);

  // The node's message version first: NodeInfo has kept its layout in every version.
  absl::Status s = conn->SendBytes(MessageKind::kPing, 1, "");
  if (!s.ok()) return Unreachable(node, s);
  const plan::MessageLimits& limits = options.limits;
  absl::StatusOr<transport::Frame> pong = ReceiveAnswer(
      *conn, node, "a ping", std::max(plan::MaxNodeInfoBytes(limits), plan::MaxErrorBytes(limits)),
      options.timeout);
  if (!pong.ok()) return pong.status();
  if (pong->header.kind == MessageKind::kError) {
    return absl::FailedPreconditionError(
        absl::StrCat("genie-node ", node, " refused a ping: ", ErrorText(*pong, limits)));
  }
  absl::StatusOr<plan::NodeInfoMessage> info =
      pong->header.kind == MessageKind::kPong
          ? plan::DecodeNodeInfo(pong->payload, limits)
          : absl::InvalidArgumentError(absl::StrCat("expected kPong, got ",
                                                    transport::MessageKindName(pong->header.kind)));
  if (!info.ok()) {
    absl::StatusOr<plan::MessageType> type = plan::PeekMessageType(pong->payload);
    if (!type.ok() && absl::StrContains(type.status().message(), "version")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "genie-node ", node, " speaks another message version: ", type.status().message()));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("genie-node ", node, " sent a malformed greeting: ", info.status().message()));
  }

  s = conn->SendBytes(MessageKind::kStats, 2, plan::EncodeStatusQuery());
  if (!s.ok()) return Unreachable(node, s);
  absl::StatusOr<transport::Frame> answer = ReceiveAnswer(
      *conn, node, "the status query",
      std::max(plan::MaxNodeStatusBytes(limits), plan::MaxErrorBytes(limits)), options.timeout);
  if (!answer.ok()) return answer.status();
  if (answer->header.kind == MessageKind::kError) {
    // It took our ping at our version, so it is a node from before status queries.
    return absl::FailedPreconditionError(absl::StrCat(
        "genie-node ", node, " (", info->device,
        ") does not answer status queries: it runs an older Genie release (it said: ",
        ErrorText(*answer, limits), "). Upgrade genie-node to this genie-smi's release"));
  }
  absl::StatusOr<plan::NodeStatusMessage> status =
      answer->header.kind == MessageKind::kStats
          ? plan::DecodeNodeStatus(answer->payload, limits)
          : absl::InvalidArgumentError(absl::StrCat(
                "expected kStats, got ", transport::MessageKindName(answer->header.kind)));
  (void)conn->SendBytes(MessageKind::kGoodbye, 0, "");
  conn->Close();
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("genie-node ", node, " sent a malformed status: ", status.status().message(),
                     ". Run the same Genie release on the node and here"));
  }
  return status;
}

// JSON string literal for `s` (UTF-8 passes through; control characters escaped).
std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace

std::string NodeAddress::name() const {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

absl::StatusOr<std::vector<NodeAddress>> ParseNodes(absl::string_view list) {
  std::vector<NodeAddress> nodes;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    absl::StatusOr<transport::HostPort> node = transport::ParseHostPort(entry);
    if (!node.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("node '", entry, "' is not HOST:PORT (e.g. 10.0.0.7:7070 or [::1]:7070)"));
    }
    nodes.push_back(NodeAddress{std::move(node->host), node->port});
  }
  return nodes;
}

NodeReport QueryNode(const NodeAddress& node, absl::string_view key, const QueryOptions& options) {
  return NodeReport{node.name(), Query(node, key, options)};
}

std::string FormatBytes(uint64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  if (n < (uint64_t{1} << 20)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  if (n < (uint64_t{1} << 30)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  return absl::StrFormat("%.2f GiB", n / 1073741824.0);
}

std::string FormatUptime(int64_t micros) {
  const int64_t s = micros / 1000000;
  if (s < 60) return absl::StrFormat("%.1fs", micros / 1e6);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s / 3600) % 24);
}

std::string FormatTable(const std::vector<NodeReport>& reports) {
  const std::vector<std::string> header = {
      "NODE",           "DEVICE",       "UPTIME",   "SESSIONS", "RUNS",   "ERRORS",
      "RECEIVED",       "SENT",         "PROGRAMS", "RESIDENT", "BUDGET", "GPU USED/RESERVED",
      "GPU FREE/TOTAL", "GRAPH REPLAYS"};
  std::vector<std::vector<std::string>> rows;
  for (const NodeReport& r : reports) {
    if (!r.status.ok()) continue;
    const plan::NodeStatusMessage& m = *r.status;
    std::vector<std::string> row = {
        r.node,
        m.device,
        FormatUptime(m.uptime_micros),
        absl::StrCat(m.open_sessions),
        absl::StrCat(m.runs),
        absl::StrCat(m.run_errors),
        FormatBytes(m.bytes_received),
        FormatBytes(m.bytes_sent),
        absl::StrCat(m.programs_cached),
        FormatBytes(static_cast<uint64_t>(m.resident_bytes)),
        m.memory_budget_bytes == 0 ? "none"
                                   : FormatBytes(static_cast<uint64_t>(m.memory_budget_bytes)),
        m.gpu ? absl::StrCat(FormatBytes(static_cast<uint64_t>(m.gpu_allocated_bytes)), " / ",
                             FormatBytes(static_cast<uint64_t>(m.gpu_reserved_bytes)))
              : "-",
        m.gpu ? absl::StrCat(FormatBytes(static_cast<uint64_t>(m.gpu_free_bytes)), " / ",
                             FormatBytes(static_cast<uint64_t>(m.gpu_total_bytes)))
              : "-",
        m.gpu ? absl::StrCat(m.graph_replays) : "-"};
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  size_t node_width = width[0];
  for (const NodeReport& r : reports) node_width = std::max(node_width, r.node.size());
  width[0] = node_width;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < cells.size(); ++c) {
      if (c > 0) out += "  ";
      out += cells[c];
      if (c + 1 < cells.size()) out.append(width[c] - cells[c].size(), ' ');
    }
    return out + "\n";
  };
  std::string out = line(header);
  size_t next_row = 0;
  for (const NodeReport& r : reports) {
    if (r.status.ok()) {
      out += line(rows[next_row++]);
    } else {
      out += absl::StrCat(r.node, std::string(node_width - r.node.size(), ' '),
                          "  error: ", r.status.status().message(), "\n");
    }
  }
  return out;
}

std::string FormatJson(const std::vector<NodeReport>& reports) {
  std::vector<std::string> nodes;
  for (const NodeReport& r : reports) {
    if (!r.status.ok()) {
      nodes.push_back(absl::StrCat("{\"node\":", JsonString(r.node), ",\"ok\":false,\"code\":",
                                   JsonString(absl::StatusCodeToString(r.status.status().code())),
                                   ",\"error\":", JsonString(r.status.status().message()), "}"));
      continue;
    }
    const plan::NodeStatusMessage& m = *r.status;
    const std::string gpu = m.gpu ? absl::StrCat("{\"allocated_bytes\":", m.gpu_allocated_bytes,
                                                 ",\"reserved_bytes\":", m.gpu_reserved_bytes,
                                                 ",\"free_bytes\":", m.gpu_free_bytes,
                                                 ",\"total_bytes\":", m.gpu_total_bytes,
                                                 ",\"graph_replays\":", m.graph_replays, "}")
                                  : "null";
    nodes.push_back(absl::StrCat(
        "{\"node\":", JsonString(r.node), ",\"ok\":true,\"device\":", JsonString(m.device),
        ",\"uptime_seconds\":", absl::StrFormat("%.3f", m.uptime_micros / 1e6),
        ",\"open_sessions\":", m.open_sessions, ",\"sessions_served\":", m.sessions_served,
        ",\"runs\":", m.runs, ",\"run_errors\":", m.run_errors,
        ",\"bytes_received\":", m.bytes_received, ",\"bytes_sent\":", m.bytes_sent,
        ",\"programs_cached\":", m.programs_cached, ",\"resident_bytes\":", m.resident_bytes,
        ",\"memory_budget_bytes\":", m.memory_budget_bytes, ",\"gpu\":", gpu, "}"));
  }
  return absl::StrCat("{\"nodes\":[", absl::StrJoin(nodes, ","), "]}\n");
}

}  // namespace genie::smi
