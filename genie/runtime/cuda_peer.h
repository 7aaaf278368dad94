// File: genie/runtime/cuda_peer.h
// Node to node on one host without the client and without the network: one genie-node
// exports a device buffer through CUDA IPC, another genie-node (its own process, its own
// GPU) copies it straight into its own device memory (over NVLink/PCIe, peer to peer).
//
// Protocol (the control messages travel over the nodes' authenticated connection):
//   exporter (node A, cuda:0)                     importer (node B, cuda:1)
//   d = exporter->Export(base, off, n, stream, owner)   // event recorded after the producer's work
//   send d.Encode()  ───────────────────────────►  d = CudaIpcDescriptor::Decode(bytes)
//                                                  importer->CopyIn(d, dst, stream)
//                                                  // waits for A's event, copies, syncs
//   exporter->Release(d.export_id)  ◄───────────── ack
// The exporter holds `owner` (keeping the caching allocator from reusing the memory) until
// the ack; the importer has closed its mapping before it acks.
//
//   GENIE_ASSIGN_OR_RETURN(auto exporter, runtime::CudaIpcExporter::Create(/*device=*/0));
//   GENIE_ASSIGN_OR_RETURN(runtime::CudaIpcDescriptor d,
//                          exporter->Export(base, offset, t.nbytes(), stream, owner));
//
// Builds without CUDA: then Create returns Unimplemented. This header does not include
// libtorch or CUDA.
#ifndef GENIE_RUNTIME_CUDA_PEER_H_
#define GENIE_RUNTIME_CUDA_PEER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace genie::runtime {

// What the exporting node sends so a node on the same host can read one device buffer.
struct CudaIpcDescriptor {
  static constexpr size_t kHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t / cudaIpcEventHandle_t)
  std::array<char, kHandleBytes> memory{};  // the allocation holding the buffer
  std::array<char, kHandleBytes> event{};   // recorded after the producer's writes
  uint64_t offset = 0;                      // of the buffer in the allocation
  uint64_t nbytes = 0;
  int32_t device = 0;                       // the exporter's device ordinal
  int32_t pid = 0;                          // the exporter's process
  uint64_t export_id = 0;

  std::string Encode() const;
  // Checks the size and fields; never trusts what a peer sent.
  static absl::StatusOr<CudaIpcDescriptor> Decode(absl::string_view bytes);
};

class CudaIpcExporter {
 public:
  static absl::StatusOr<std::unique_ptr<CudaIpcExporter>> Create(int device);
  ~CudaIpcExporter();
  CudaIpcExporter(const CudaIpcExporter&) = delete;
  CudaIpcExporter& operator=(const CudaIpcExporter&) = delete;

  // Exports `nbytes` at `offset` in the device allocation starting at `base` (cudaMalloc's
  // pointer; for a tensor of libtorch's caching allocator,
  // c10::cuda::CUDACachingAllocator::getBaseAllocation), readable once the work queued so
  // far on `stream` (a cudaStream_t; null: the legacy default stream) is done. Holds
  // `owner` until Release.
  absl::StatusOr<CudaIpcDescriptor> Export(void* base, uint64_t offset, uint64_t nbytes,
                                           void* stream, std::shared_ptr<const void> owner);
  // The importer's ack: the memory may be reused. NotFound for an unknown id.
  absl::Status Release(uint64_t export_id);
  size_t pending() const;

 private:
  struct Pending;
  explicit CudaIpcExporter(int device);
  int device_;
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Pending>> pending_;
  std::vector<void*> free_events_;  // interprocess cudaEvent_t, reused after Release
};

class CudaIpcImporter {
 public:
  static absl::StatusOr<std::unique_ptr<CudaIpcImporter>> Create(int device);
  ~CudaIpcImporter() = default;

  // Copies the exported bytes into `dst` (`d.nbytes` of this importer's device memory) on
  // `stream` after the exporter's event, and returns once the copy is complete and the
  // mapping is closed: the caller may then ack. `dst_capacity` bounds what is written.
  absl::Status CopyIn(const CudaIpcDescriptor& d, void* dst, uint64_t dst_capacity, void* stream);

 private:
  explicit CudaIpcImporter(int device) : device_(device) {}
  int device_;
};

// Copies `nbytes` between two buffers of the current device on `stream` (a cudaStream_t)
// and returns once the copy is complete. Unimplemented without CUDA.
absl::Status CopyOnDevice(void* dst, const void* src, uint64_t nbytes, void* stream);

// Whether `host` names this machine's loopback interface ("127.x.y.z", "localhost", "::1"):
// a peer there shares this host's GPUs, so CUDA IPC can reach its device memory.
bool IsLoopbackHost(absl::string_view host);

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_CUDA_PEER_H_
