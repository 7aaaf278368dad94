// File: genie/client/session.cc
// The non-template parts of Session: the embedded node and address parsing.
#include "genie/client/session.h"

#include <unistd.h>

#include <atomic>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "genie/transport/address.h"
#include "genie/transport/internal/auth_crypto.h"

namespace genie::session_internal {

absl::StatusOr<std::unique_ptr<EmbeddedNode>> EmbeddedNode::Start(const std::string& key,
                                                                  runtime::NodeOptions options) {
  GENIE_ASSIGN_OR_RETURN(std::unique_ptr<runtime::NodeServer> server,
                         runtime::NodeServer::Create("127.0.0.1", 0, key, std::move(options)));
  std::unique_ptr<EmbeddedNode> node(new EmbeddedNode());
  node->server_ = std::move(server);
  runtime::NodeServer* raw = node->server_.get();
  node->thread_ = std::thread([raw] { raw->Serve(); });
  return node;
}

EmbeddedNode::~EmbeddedNode() {
  if (server_) server_->Shutdown();
  if (thread_.joinable()) thread_.join();
}

std::string EmbeddedNode::address() const {
  return absl::StrCat(server_->host(), ":", server_->port());
}

std::string EmbeddedNode::shm_address() const { return absl::StrCat("shm:", server_->shm_socket()); }

runtime::PeerStats EmbeddedNode::peer_stats() const { return server_->peer_stats(); }
runtime::RunGate::Stats EmbeddedNode::gate_stats() const { return server_->gate_stats(); }

absl::StatusOr<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& address) {
  absl::StatusOr<transport::HostPort> node = transport::ParseHostPort(address);
  if (!node.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("node address '", address, "' is not HOST:PORT (e.g. 10.0.0.7:7070)"));
  }
  return std::make_pair(std::move(node->host), node->port);
}

absl::StatusOr<std::string> ParseShmAddress(const std::string& address) {
  if (!absl::StartsWith(address, "shm:") || address.size() == 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "node address '", address,
        "' is not shm:PATH (e.g. shm:/tmp/genie-node.sock, the node's --shm_socket)"));
  }
  return address.substr(4);
}

std::string EmbeddedShmSocketPath() {
  static std::atomic<int> counter{0};
  return absl::StrCat("/tmp/genie-embedded-", getpid(), "-", counter++, ".sock");
}

absl::StatusOr<std::string> RandomKey() {
  GENIE_ASSIGN_OR_RETURN(std::string bytes, transport_internal::RandomBytes(32));
  return absl::BytesToHexString(bytes);
}

}  // namespace genie::session_internal
