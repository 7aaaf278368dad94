// File: genie/runtime/cuda_peer.cc
// CUDA IPC between genie-node processes on one host (see cuda_peer.h).
#include "genie/runtime/cuda_peer.h"

#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "genie/core/status.h"
#include "genie/core/wire.h"

#if GENIE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace genie::runtime {
namespace {

constexpr uint32_t kDescriptorMagic = 0x43495043;  // "CIPC"

#if GENIE_WITH_CUDA
absl::Status CudaError(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}

// An event opened from another process's handle; destroyed on scope exit.
class OpenedEvent {
 public:
  static absl::StatusOr<OpenedEvent> Open(const std::array<char, 64>& bytes) {
    cudaIpcEventHandle_t h;
    std::memcpy(&h, bytes.data(), sizeof(h));
    cudaEvent_t e = nullptr;
    GENIE_RETURN_IF_ERROR(CudaError(cudaIpcOpenEventHandle(&e, h), "cudaIpcOpenEventHandle"));
    return OpenedEvent(e);
  }
  OpenedEvent(OpenedEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  OpenedEvent(const OpenedEvent&) = delete;
  ~OpenedEvent() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
  }
  cudaEvent_t get() const { return event_; }

 private:
  explicit OpenedEvent(cudaEvent_t e) : event_(e) {}
  cudaEvent_t event_ = nullptr;
};

// Another process's allocation mapped into this one; closed on scope exit.
class OpenedMemory {
 public:
  static absl::StatusOr<OpenedMemory> Open(const std::array<char, 64>& bytes) {
    cudaIpcMemHandle_t h;
    std::memcpy(&h, bytes.data(), sizeof(h));
    void* p = nullptr;
    GENIE_RETURN_IF_ERROR(CudaError(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
                                    "cudaIpcOpenMemHandle"));
    return OpenedMemory(p);
  }
  OpenedMemory(OpenedMemory&& o) noexcept : base_(std::exchange(o.base_, nullptr)) {}
  OpenedMemory(const OpenedMemory&) = delete;
  ~OpenedMemory() {
    if (base_ != nullptr) (void)cudaIpcCloseMemHandle(base_);
  }
  char* base() const { return static_cast<char*>(base_); }

 private:
  explicit OpenedMemory(void* p) : base_(p) {}
  void* base_ = nullptr;
};
#endif

}  // namespace

std::string CudaIpcDescriptor::Encode() const {
  core::ByteWriter w;
  w.WriteU32(kDescriptorMagic);
  w.WriteRaw(std::string_view(memory.data(), memory.size()));
  w.WriteRaw(std::string_view(event.data(), event.size()));
  w.WriteU64(offset);
  w.WriteU64(nbytes);
  w.WriteU32(static_cast<uint32_t>(device));
  w.WriteU32(static_cast<uint32_t>(pid));
  w.WriteU64(export_id);
  return w.Release();
}

absl::StatusOr<CudaIpcDescriptor> CudaIpcDescriptor::Decode(absl::string_view bytes) {
  constexpr size_t kSize = 4 + 2 * kHandleBytes + 8 + 8 + 4 + 4 + 8;
  if (bytes.size() != kSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA IPC descriptor of ", bytes.size(), " bytes, expected ", kSize));
  }
  core::ByteReader r(std::string_view(bytes.data(), bytes.size()));
  CudaIpcDescriptor d;
  GENIE_ASSIGN_OR_RETURN(uint32_t magic, r.ReadU32("magic"));
  if (magic != kDescriptorMagic) return absl::InvalidArgumentError("not a CUDA IPC descriptor");
  GENIE_ASSIGN_OR_RETURN(std::string_view mem, r.ReadRaw(kHandleBytes, "memory handle"));
  GENIE_ASSIGN_OR_RETURN(std::string_view ev, r.ReadRaw(kHandleBytes, "event handle"));
  std::memcpy(d.memory.data(), mem.data(), kHandleBytes);
  std::memcpy(d.event.data(), ev.data(), kHandleBytes);
  GENIE_ASSIGN_OR_RETURN(d.offset, r.ReadU64("offset"));
  GENIE_ASSIGN_OR_RETURN(d.nbytes, r.ReadU64("nbytes"));
  GENIE_ASSIGN_OR_RETURN(uint32_t device, r.ReadU32("device"));
  GENIE_ASSIGN_OR_RETURN(uint32_t pid, r.ReadU32("pid"));
  GENIE_ASSIGN_OR_RETURN(d.export_id, r.ReadU64("export id"));
  d.device = static_cast<int32_t>(device);
  d.pid = static_cast<int32_t>(pid);
  if (d.device < 0 || d.device > 1024) return absl::InvalidArgumentError("CUDA IPC descriptor names a bad device");
  if (d.offset > (uint64_t{1} << 48) || d.nbytes > (uint64_t{1} << 48)) {
    return absl::InvalidArgumentError("CUDA IPC descriptor with an impossible offset or size");
  }
  return d;
}

struct CudaIpcExporter::Pending {
  std::shared_ptr<const void> owner;
  void* event = nullptr;
};

CudaIpcExporter::CudaIpcExporter(int device) : device_(device) {}

CudaIpcExporter::~CudaIpcExporter() {
#if GENIE_WITH_CUDA
  for (auto& [id, p] : pending_) free_events_.push_back(p->event);
  for (void* e : free_events_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e));
#endif
}

absl::StatusOr<std::unique_ptr<CudaIpcExporter>> CudaIpcExporter::Create(int device) {
#if GENIE_WITH_CUDA
  int count = 0;
  GENIE_RETURN_IF_ERROR(CudaError(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", device, " does not exist (", count, " devices)"));
  }
  return std::unique_ptr<CudaIpcExporter>(new CudaIpcExporter(device));
#else
  return absl::UnimplementedError("CUDA IPC needs a build with --config=cuda");
#endif
}

absl::StatusOr<CudaIpcDescriptor> CudaIpcExporter::Export(void* base, uint64_t offset, uint64_t nbytes,
                                                          void* stream, std::shared_ptr<const void> owner) {
#if GENIE_WITH_CUDA
  GENIE_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
  CudaIpcDescriptor d;
  cudaIpcMemHandle_t mh;
  GENIE_RETURN_IF_ERROR(CudaError(cudaIpcGetMemHandle(&mh, base), "cudaIpcGetMemHandle"));
  std::memcpy(d.memory.data(), &mh, sizeof(mh));
  std::lock_guard<std::mutex> lock(mu_);
  cudaEvent_t event = nullptr;
  if (!free_events_.empty()) {
    event = static_cast<cudaEvent_t>(free_events_.back());
    free_events_.pop_back();
  } else {
    GENIE_RETURN_IF_ERROR(CudaError(
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventInterprocess), "cudaEventCreate"));
  }
  absl::Status s = CudaError(cudaEventRecord(event, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
  cudaIpcEventHandle_t eh;
  if (s.ok()) s = CudaError(cudaIpcGetEventHandle(&eh, event), "cudaIpcGetEventHandle");
  if (!s.ok()) {
    free_events_.push_back(event);
    return s;
  }
  std::memcpy(d.event.data(), &eh, sizeof(eh));
  d.offset = offset;
  d.nbytes = nbytes;
  d.device = device_;
  d.pid = static_cast<int32_t>(getpid());
  d.export_id = next_id_++;
  auto p = std::make_unique<Pending>();
  p->owner = std::move(owner);
  p->event = event;
  pending_.emplace(d.export_id, std::move(p));
  return d;
#else
  return absl::UnimplementedError("CUDA IPC needs a build with --config=cuda");
#endif
}

absl::Status CudaIpcExporter::Release(uint64_t export_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(export_id);
  if (it == pending_.end()) {
    return absl::NotFoundError(absl::StrCat("CUDA IPC export ", export_id, " is not pending (acked twice?)"));
  }
  free_events_.push_back(it->second->event);
  pending_.erase(it);
  return absl::OkStatus();
}

size_t CudaIpcExporter::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

absl::StatusOr<std::unique_ptr<CudaIpcImporter>> CudaIpcImporter::Create(int device) {
#if GENIE_WITH_CUDA
  int count = 0;
  GENIE_RETURN_IF_ERROR(CudaError(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", device, " does not exist (", count, " devices)"));
  }
  return std::unique_ptr<CudaIpcImporter>(new CudaIpcImporter(device));
#else
  return absl::UnimplementedError("CUDA IPC needs a build with --config=cuda");
#endif
}

absl::Status CudaIpcImporter::CopyIn(const CudaIpcDescriptor& d, void* dst, uint64_t dst_capacity,
                                     void* stream) {
#if GENIE_WITH_CUDA
  if (d.nbytes > dst_capacity) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA IPC transfer of ", d.nbytes,
                                                   " bytes into a buffer of ", dst_capacity));
  }
  if (d.pid == static_cast<int32_t>(getpid())) {
    return absl::FailedPreconditionError("CUDA IPC handles cannot be opened in the process that exported them");
  }
  GENIE_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
  GENIE_ASSIGN_OR_RETURN(OpenedMemory mem, OpenedMemory::Open(d.memory));
  GENIE_ASSIGN_OR_RETURN(OpenedEvent ready, OpenedEvent::Open(d.event));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GENIE_RETURN_IF_ERROR(CudaError(cudaStreamWaitEvent(s, ready.get(), 0), "cudaStreamWaitEvent"));
  // Unified addressing: the copy engine reads the peer GPU's memory directly.
  GENIE_RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(dst, mem.base() + d.offset, d.nbytes, cudaMemcpyDeviceToDevice, s),
                                  "cudaMemcpyAsync (peer)"));
  // The mapping may close (and the exporter reuse the memory) only after the copy.
  return CudaError(cudaStreamSynchronize(s), "cudaStreamSynchronize");
#else
  return absl::UnimplementedError("CUDA IPC needs a build with --config=cuda");
#endif
}

absl::Status CopyOnDevice(void* dst, const void* src, uint64_t nbytes, void* stream) {
#if GENIE_WITH_CUDA
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GENIE_RETURN_IF_ERROR(
      CudaError(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync (device)"));
  return CudaError(cudaStreamSynchronize(s), "cudaStreamSynchronize");
#else
  (void)dst;
  (void)src;
  (void)nbytes;
  (void)stream;
  return absl::UnimplementedError("device copies need a build with --config=cuda");
#endif
}

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || absl::StartsWith(host, "127.");
}

}  // namespace genie::runtime
