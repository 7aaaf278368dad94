// File: tools/smi/smi.h
// genie-smi's library: asks genie-nodes for their status (plan::StatusQuery over an
// authenticated Tcp connection, answered with plan::NodeStatusMessage) and renders the
// answers as a table or as JSON. A node that cannot be asked gets a report whose status says
// what happened and what to do; the other nodes' reports are unaffected.
//
//   GENIE_ASSIGN_OR_RETURN(std::vector<smi::NodeAddress> nodes,
//                          smi::ParseNodes("10.0.0.7:7070,10.0.0.8:7070"));
//   std::vector<smi::NodeReport> reports;
//   for (const smi::NodeAddress& n : nodes) reports.push_back(smi::QueryNode(n, key));
//   std::cout << smi::FormatTable(reports);   // one row per node
//   std::cout << smi::FormatJson(reports);    // {"nodes":[...]} on one line
#ifndef GENIE_TOOLS_SMI_SMI_H_
#define GENIE_TOOLS_SMI_SMI_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "genie/plan/messages.h"

namespace genie::smi {

struct NodeAddress {
  std::string host;
  uint16_t port = 0;
  std::string name() const;  // "host:port", "[v6]:port"
};

// "host:port[,host:port...]" ("[v6]:port" too); InvalidArgument naming the bad entry.
absl::StatusOr<std::vector<NodeAddress>> ParseNodes(absl::string_view list);

struct QueryOptions {
  absl::Duration timeout = absl::Seconds(5);  // connecting, the handshake, each answer
  plan::MessageLimits limits;
};

struct NodeReport {
  std::string node;  // NodeAddress::name()
  // The node's answer, or why there is none, with what to do: Unavailable (not reachable),
  // Unauthenticated (the key), FailedPrecondition (an older node or another message
  // version), InvalidArgument (a malformed answer), DeadlineExceeded (no answer in time).
  absl::StatusOr<plan::NodeStatusMessage> status;
};

// Connects to `node`, authenticates with `key`, checks the node's message version (kPing),
// asks for its status and says goodbye. Never touches any session on the node.
NodeReport QueryNode(const NodeAddress& node, absl::string_view key,
                     const QueryOptions& options = {});

// A header and one row per report; a report without status is a row "NODE  error: ...".
// GPU columns read "-" on nodes without a GPU.
std::string FormatTable(const std::vector<NodeReport>& reports);
// {"nodes":[{"node":..., "ok":true, ...,"gpu":null|{...}}, {"node":...,"ok":false,
// "error":...}]} on one line, with a newline.
std::string FormatJson(const std::vector<NodeReport>& reports);

// "512 B", "1.5 KiB", "3.2 GiB"; "1h02m", "3m07s", "12.3s".
std::string FormatBytes(uint64_t n);
std::string FormatUptime(int64_t micros);

}  // namespace genie::smi

#endif  // GENIE_TOOLS_SMI_SMI_H_
