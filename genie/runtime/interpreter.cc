// File: genie/runtime/interpreter.cc
// The ATen interpreter: resolves a graph's ops once into a Program, then runs nodes in
// topological order on real tensors. Each buffer has a root tensor; every op argument is a
// view of a root rebuilt with as_strided (or the root itself when the geometry matches).
//
// On CUDA (see interpreter.h): lanes of the program's StreamPlan run on the interpreter's
// own streams; each run forks from the main stream (every lane waits for it) and joins
// back (the main stream waits for every lane) before outputs are read. Buffers live in
// `roots` until the run's host side ends and every later run starts after that join, so a
// block freed by the caching allocator on one lane's stream is only reused on that stream
// after every other lane finished with it (the fork/join keeps cross-stream tensors alive
// instead of recordStream).
#include "genie/runtime/interpreter.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "genie/core/status.h"
#include "genie/core/timeline.h"
#include "genie/runtime/cpu_lanes.h"
#include "genie/runtime/stream_plan.h"

#if GENIE_WITH_CUDA
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace genie::runtime {
namespace {

using core::Arg;
using core::ArgKind;
using core::BufferKind;
using core::TensorRef;

// What plan load computes once per distinct graph: resolved operators and, per op,
// which arguments are generator seeds.
struct Program {
  std::vector<c10::OperatorHandle> ops;           // by OpId
  std::vector<std::vector<bool>> generator_args;  // by OpId, by argument index
  // By OpId: the op returns references to its arguments (out= variants). libtorch's
  // boxed wrappers drop the arguments before the returns are read, so the caller must
  // keep them alive across the call.
  std::vector<bool> returns_alias_args;
  StreamPlan streams;         // one lane unless on CUDA with cuda_streams > 1
  std::string graph_blocker;  // non-empty: why this program is never a CUDA graph
  std::vector<bool> written;  // by BufferId: some node writes it in place or produces it
};

// Ops that synchronize with the host or whose output sizes depend on data: never captured.
bool SyncsOrDataDependent(const std::string& op) {
  static const char* const kDeny[] = {
      "aten::_local_scalar_dense",
      "aten::item",
      "aten::nonzero",
      "aten::nonzero_numpy",
      "aten::argwhere",
      "aten::masked_select",
      "aten::unique",
      "aten::_unique",
      "aten::_unique2",
      "aten::unique_consecutive",
      "aten::unique_dim",
      "aten::repeat_interleave",
      "aten::equal",
      "aten::is_nonzero",
      "aten::allclose",
      "aten::bincount",
      "aten::histc",
      "aten::multinomial",
      "aten::randperm",
      "aten::_assert_async",
      "aten::cpu",
      "aten::_copy_from_and_resize",
      "aten::resize_",
      "aten::set_",
  };
  const std::string base = op.substr(0, op.find('.'));
  for (const char* d : kDeny) {
    if (base == d) return true;
  }
  return false;
}

std::atomic<int64_t> g_graph_captures{0};
std::atomic<int64_t> g_graph_replays{0};
std::atomic<int64_t> g_graph_refusals{0};
std::atomic<int64_t> g_graph_drops{0};
std::atomic<int64_t> g_multi_stream_runs{0};
std::atomic<int64_t> g_cross_stream_waits{0};
std::atomic<int64_t> g_cpu_multi_lane_runs{0};

#if GENIE_WITH_CUDA
// CUDA interpreters alive in the process, and a lock that graph captures hold shared: the
// caching allocator refuses (an internal assertion) to empty its cache while any capture is
// under way on the device, so ~Interpreter empties it only when it was the last CUDA
// interpreter and no capture holds the lock.
std::atomic<int> g_live_cuda_interpreters{0};
std::shared_mutex g_capture_mu;

// The streams of interpreters that ended, for the next interpreters on their device. The
// caching allocator keeps freed blocks per stream, and cuBLAS a workspace per stream: a
// stream destroyed with its interpreter strands them for good (about 12 GB of reserved
// memory per ViT-B/16 session on an H100, so a node serving one session after another ran
// out of memory after six). A stream serves one interpreter at a time, and comes back only
// once its work is done.
class StreamRecycler {
 public:
  static StreamRecycler& Get() {
    static StreamRecycler* r = new StreamRecycler();  // leaked: streams outlive every session
    return *r;
  }
  absl::StatusOr<cudaStream_t> Take(c10::DeviceIndex device) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<cudaStream_t>& free = free_[device];
      if (!free.empty()) {
        cudaStream_t s = free.back();
        free.pop_back();
        return s;
      }
    }
    c10::cuda::CUDAGuard guard(device);
    cudaStream_t s = nullptr;
    const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cudaStreamCreate on cuda:", device, " failed: ", cudaGetErrorString(e)));
    }
    return s;
  }
  // `s` has no work queued (the caller synchronized it).
  void Give(cudaStream_t s, c10::DeviceIndex device) {
    std::lock_guard<std::mutex> lock(mu_);
    free_[device].push_back(s);
  }

 private:
  std::mutex mu_;
  absl::flat_hash_map<c10::DeviceIndex, std::vector<cudaStream_t>> free_;
};

// A stream of our own (not the pool's, which other sessions share: capturing one of those
// could capture another session's work), taken from the StreamRecycler and given back,
// synchronized, when it goes.
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create(c10::DeviceIndex device) {
    GENIE_ASSIGN_OR_RETURN(cudaStream_t s, StreamRecycler::Get().Take(device));
    return CudaStream(s, device);
  }
  CudaStream(CudaStream&& o) noexcept : stream_(o.stream_), device_(o.device_) {
    o.stream_ = nullptr;
  }
  CudaStream& operator=(CudaStream&& o) noexcept {
    std::swap(stream_, o.stream_);
    std::swap(device_, o.device_);
    return *this;
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream() {
    if (stream_ != nullptr && cudaStreamSynchronize(stream_) == cudaSuccess) {
      StreamRecycler::Get().Give(stream_, device_);
    }  // a stream that cannot be synchronized is left alone, never reused
  }
  void Synchronize() const {
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  }
  c10::cuda::CUDAStream get() const { return c10::cuda::getStreamFromExternal(stream_, device_); }

 private:
  CudaStream(cudaStream_t s, c10::DeviceIndex d) : stream_(s), device_(d) {}
  cudaStream_t stream_ = nullptr;
  c10::DeviceIndex device_ = 0;
};

// A CUDA graph that can say whether its capture ended. Once it has, the graph releases its
// memory pools itself (CUDAGraph::reset); before, nothing does, which AbortCapture mends.
struct CapturedGraph : at::cuda::CUDAGraph {
  bool capture_ended() const { return capture_ended_; }
};

// Per-program CUDA state: the events of its StreamPlan and its captured graph.
struct CudaProgramState {
  std::vector<at::cuda::CUDAEvent> events;
  int eager_runs = 0;
  int captures = 0;
  bool refusal_counted = false;
  std::string blocker;  // set when capture failed or the warm-up left tensors off the GPU
  std::unique_ptr<CapturedGraph> graph;
  std::vector<at::Tensor> roots;  // every buffer as captured (static inputs and outputs)
  std::vector<std::pair<core::BufferId, const void*>> resident_ptrs;
  // Resident inputs the graph reads from a private copy, refreshed before each replay
  // (and copied back after it when the program writes them): they moved between runs
  // (tensors that cross a cut of an auto-dispatched step are new each step).
  std::vector<core::BufferId> copied_in;
  std::vector<core::BufferId> upload_ids;
  size_t num_buffers = 0;
};
constexpr int kMaxRecaptures = 3;
#endif

absl::StatusOr<c10::OperatorHandle> Resolve(const std::string& qualified) {
  const size_t dot = qualified.find('.');
  const std::string name = qualified.substr(0, dot);
  const std::string overload = dot == std::string::npos ? "" : qualified.substr(dot + 1);
  auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  if (!handle) {
    return absl::NotFoundError(absl::StrCat("operator ", qualified,
                                            " is not known to this node's libtorch; upgrade the "
                                            "node to the client's torch version"));
  }
  return *handle;
}

at::ScalarType ToScalarType(core::DType d) { return static_cast<at::ScalarType>(d); }

bool SameGeometry(const at::Tensor& t, const TensorRef& r) {
  return t.scalar_type() == ToScalarType(r.dtype) && t.storage_offset() == r.storage_offset &&
         t.sizes() == at::IntArrayRef(r.sizes.data(), r.sizes.size()) &&
         t.strides() == at::IntArrayRef(r.strides.data(), r.strides.size());
}

// In-place uploads (core::Upload::in_place) must start where libtorch's own CPU allocations
// would; others are copied.
constexpr uintptr_t kInPlaceAlignment = 64;

// Whether `t`'s storage lies in the memory of one of the request's in-place uploads.
bool InCallerMemory(const at::Tensor& t, const core::ExecuteRequest& req) {
  if (!t.defined() || !t.has_storage()) return false;
  const auto* data = static_cast<const char*>(t.storage().data());
  for (const core::Upload& u : req.uploads) {
    const auto* begin = static_cast<const char*>(u.bytes.data);
    if (u.in_place && data >= begin && data < begin + u.bytes.nbytes) return true;
  }
  return false;
}

}  // namespace

struct Interpreter::Impl {
  InterpreterOptions options;
  std::atomic<int64_t> graph_replays{0};  // this interpreter's share of g_graph_replays
  at::Device device = at::kCPU;
  mutable std::mutex mu;
  absl::flat_hash_map<uint64_t, at::Tensor> resident;
  // What the last ExecuteRetiring left for ReleaseRetired.
  std::vector<at::Tensor> retired;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Program>> programs;
  std::unique_ptr<CpuLanes> cpu_lanes;  // started on the first multi-lane CPU run
  std::list<uint64_t> program_order;
#if GENIE_WITH_CUDA
  std::vector<CudaStream> streams;  // [0] is the main stream
  absl::flat_hash_map<uint64_t, std::unique_ptr<CudaProgramState>> cuda_states;  // by fingerprint
  size_t captured_graphs = 0;
  // PinnedUploadArena: page-locked host memory a node receives uploads into; runs copy from
  // it to the device directly. `arena_copied` follows the last run's copies out of it.
  at::Tensor upload_arena;
  std::unique_ptr<at::cuda::CUDAEvent> arena_copied;
  bool arena_in_flight = false;
  // RegisterHostMemory: page-locked ranges (a client's shared tensor pool) that uploads are
  // copied from and outputs into by DMA. A run that touched one waits for its copies before
  // it returns, whatever its outcome: the client reuses the memory once the node answered.
  std::vector<std::pair<const char*, uint64_t>> registered;
  bool registered_in_flight = false;
  // This run wrote outputs into registered memory (their copies need the whole run), or
  // only read uploads from it: then the node waits for `registered_copied`, recorded after
  // the uploads' copies, and not for the run's compute.
  bool registered_outputs = false;
  bool registered_uploads_recorded = false;
  std::unique_ptr<at::cuda::CUDAEvent> registered_copied;
  // GENIE_INTERPRETER_PROFILE=1: per-phase times, printed to stderr every 200 runs.
  struct Profile {
    bool on = std::getenv("GENIE_INTERPRETER_PROFILE") != nullptr;
    int64_t runs = 0, replays = 0;
    double host_us = 0, sync_us = 0, gpu_us = 0;
    std::unique_ptr<at::cuda::CUDAEvent> start, stop;
  } profile;
  // The timeline's GPU track (core/timeline.h): each run's work on the main stream, between
  // two timing events. The events are placed in host time at the next sync: the last one
  // completed just before the sync returned, and the others lie at their elapsed times
  // before it.
  struct GpuSpan {
    std::unique_ptr<at::cuda::CUDAEvent> start, stop;
    const char* name;
    int64_t nodes;
  };
  struct GpuTimeline {
    int track = -1;
    std::vector<std::unique_ptr<at::cuda::CUDAEvent>> spare;
    std::vector<GpuSpan> pending;
  } gpu_timeline;

  std::unique_ptr<at::cuda::CUDAEvent> TimingEvent(const c10::cuda::CUDAStream& stream) {
    std::unique_ptr<at::cuda::CUDAEvent> e;
    if (gpu_timeline.spare.empty()) {
      e = std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault);
    } else {
      e = std::move(gpu_timeline.spare.back());
      gpu_timeline.spare.pop_back();
    }
    e->record(stream);
    return e;
  }

  // After a sync of the main stream that `stop` was recorded on: puts the pending spans on
  // the GPU track.
  void PlaceGpuSpans(int64_t synced_ns) {
    if (gpu_timeline.pending.empty()) return;
    if (gpu_timeline.track < 0) {
      // One track per interpreter (a node's session): sessions' streams overlap in time.
      static std::atomic<int> interpreters{0};
      gpu_timeline.track = timeline::Track(
          absl::StrCat("GPU ", device.str(), ", session ", interpreters.fetch_add(1) + 1));
    }
    const at::cuda::CUDAEvent& anchor = *gpu_timeline.pending.back().stop;
    for (GpuSpan& s : gpu_timeline.pending) {
      const auto at = [&](at::cuda::CUDAEvent& e) {
        return synced_ns - static_cast<int64_t>(1e6 * e.elapsed_time(anchor));
      };
      timeline::RecordOn(gpu_timeline.track, s.name, at(*s.start), at(*s.stop), "nodes", s.nodes);
      gpu_timeline.spare.push_back(std::move(s.start));
      gpu_timeline.spare.push_back(std::move(s.stop));
    }
    gpu_timeline.pending.clear();
  }
#endif

  ~Impl() {
#if GENIE_WITH_CUDA
    // Every stream idle before any goes back to the StreamRecycler: a block freed on one of
    // them may still have been read on another (see the top of this file).
    for (const CudaStream& s : streams) s.Synchronize();
#endif
  }

  int64_t ResidentBytes() const {
    int64_t total = 0;
    for (const auto& [h, t] : resident) total += static_cast<int64_t>(t.storage().nbytes());
    return total;
  }

  void Forget(uint64_t fp) {
    programs.erase(fp);
#if GENIE_WITH_CUDA
    auto it = cuda_states.find(fp);
    if (it != cuda_states.end()) {
      if (it->second->graph) --captured_graphs;
      cuda_states.erase(it);
    }
#endif
  }

  absl::StatusOr<std::shared_ptr<Program>> Prepare(const core::Graph& g, uint64_t fp, bool* hit) {
    auto it = programs.find(fp);
    if (fp != 0 && it != programs.end() && it->second->ops.size() == g.num_ops() &&
        it->second->streams.lane.size() == g.nodes().size()) {
      *hit = true;
      return it->second;
    }
    *hit = false;
    if (fp != 0 && it != programs.end()) Forget(fp);  // same key, another graph
    auto p = std::make_shared<Program>();
    for (core::OpId id = 0; id < g.num_ops(); ++id) {
      GENIE_ASSIGN_OR_RETURN(c10::OperatorHandle h, Resolve(g.OpName(id)));
      std::vector<bool> gens;
      bool has_generator = false;
      for (const c10::Argument& a : h.schema().arguments()) {
        c10::TypePtr t = a.real_type();
        if (t->kind() == c10::TypeKind::OptionalType) t = t->containedType(0);
        gens.push_back(t->kind() == c10::TypeKind::GeneratorType);
        has_generator |= gens.back();
      }
      bool aliasing = false;
      for (const c10::Argument& r : h.schema().returns()) aliasing |= r.alias_info() != nullptr;
      p->ops.push_back(h);
      p->generator_args.push_back(std::move(gens));
      p->returns_alias_args.push_back(aliasing);
      if (p->graph_blocker.empty() && has_generator) {
        p->graph_blocker = absl::StrCat(g.OpName(id), " takes a generator (random op)");
      }
      if (p->graph_blocker.empty() && SyncsOrDataDependent(g.OpName(id))) {
        p->graph_blocker = absl::StrCat(g.OpName(id), " synchronizes or has data-dependent sizes");
      }
    }
    if (p->graph_blocker.empty()) {
      for (const core::Node& n : g.nodes()) {
        for (const Arg& a : n.args) {
          if (a.kind == ArgKind::kDevice &&
              !(a.ints.size() == 2 && a.ints[0] == core::kRemoteDeviceType)) {
            p->graph_blocker =
                absl::StrCat("op %", n.id, " ", g.OpName(n.op), " names another device");
            break;
          }
        }
        if (!p->graph_blocker.empty()) break;
      }
    }
    p->streams =
        device.is_cuda()
            ? PlanStreams(g, options.cuda_streams)
            : PlanBranches(g, options.automatic_cpu_lanes
                                  ? AutomaticLanesFor(options.cpu_lanes, at::get_num_threads())
                                  : options.cpu_lanes);
    if (device.is_cuda()) {
      p->written.assign(g.buffers().size(), false);
      for (const core::Node& n : g.nodes()) {
        for (core::BufferId b : n.writes) {
          if (b < p->written.size()) p->written[b] = true;
        }
        for (const TensorRef& r : n.outputs) {
          if (r.buffer < p->written.size()) p->written[r.buffer] = true;
        }
      }
    }
    if (fp != 0) {
      programs[fp] = p;
      program_order.push_back(fp);
      while (programs.size() > options.max_cached_programs && !program_order.empty()) {
        Forget(program_order.front());
        program_order.pop_front();
      }
    }
    return p;
  }

  absl::StatusOr<at::Tensor> View(const std::vector<at::Tensor>& roots, const TensorRef& r) const {
    if (r.buffer >= roots.size() || !roots[r.buffer].defined()) {
      return absl::FailedPreconditionError(
          absl::StrCat("buffer b", r.buffer, " is read before anything produced it"));
    }
    const at::Tensor& root = roots[r.buffer];
    if (SameGeometry(root, r)) return root;
    if (root.scalar_type() != ToScalarType(r.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("buffer b", r.buffer, " holds ",
                                                     c10::toString(root.scalar_type()),
                                                     " but is read as ", core::DTypeName(r.dtype)));
    }
    if (r.required_storage_numel() * static_cast<int64_t>(root.itemsize()) >
        static_cast<int64_t>(root.storage().nbytes())) {
      return absl::InvalidArgumentError(
          absl::StrCat("a view of buffer b", r.buffer, " reaches past its storage"));
    }
    return root.as_strided(at::IntArrayRef(r.sizes.data(), r.sizes.size()),
                           at::IntArrayRef(r.strides.data(), r.strides.size()), r.storage_offset);
  }

  // Runs one node on the current stream; binds its fresh outputs into `roots`.
  absl::Status RunNode(const core::Graph& g, const Program& program, const core::Node& n,
                       std::vector<at::Tensor>& roots, torch::jit::Stack& stack,
                       torch::jit::Stack& alive) {
    const c10::OperatorHandle& op = program.ops[n.op];
    const std::vector<bool>& gens = program.generator_args[n.op];
    stack.clear();
    for (size_t j = 0; j < n.args.size(); ++j) {
      const Arg& a = n.args[j];
      switch (a.kind) {
        case ArgKind::kNone:
          stack.emplace_back();
          break;
        case ArgKind::kTensor: {
          GENIE_ASSIGN_OR_RETURN(at::Tensor t, View(roots, a.tensors[0]));
          if (a.i == 1) {
            t = t.alias();
            t.unsafeGetTensorImpl()->set_wrapped_number(true);
          }
          stack.emplace_back(std::move(t));
          break;
        }
        case ArgKind::kTensorList: {
          c10::List<at::Tensor> l;
          for (const TensorRef& r : a.tensors) {
            GENIE_ASSIGN_OR_RETURN(at::Tensor t, View(roots, r));
            l.push_back(std::move(t));
          }
          stack.emplace_back(std::move(l));
          break;
        }
        case ArgKind::kOptionalTensorList: {
          c10::List<std::optional<at::Tensor>> l;
          for (size_t k = 0; k < a.tensors.size(); ++k) {
            if (k < a.present.size() && a.present[k]) {
              GENIE_ASSIGN_OR_RETURN(at::Tensor t, View(roots, a.tensors[k]));
              l.push_back(std::move(t));
            } else {
              l.push_back(std::nullopt);
            }
          }
          stack.emplace_back(std::move(l));
          break;
        }
        case ArgKind::kInt:
          if (j < gens.size() && gens[j]) {
            // The seeding rule (genie/frontend): a fresh generator of this device seeded
            // with the seed the client drew.
            at::Generator gen = at::globalContext().defaultGenerator(device).clone();
            gen.set_current_seed(static_cast<uint64_t>(a.i));
            stack.emplace_back(std::move(gen));
          } else {
            stack.emplace_back(a.i);
          }
          break;
        case ArgKind::kDouble:
          stack.emplace_back(a.d);
          break;
        case ArgKind::kBool:
          stack.emplace_back(a.i != 0);
          break;
        case ArgKind::kString:
          stack.emplace_back(a.s);
          break;
        case ArgKind::kIntList:
          stack.emplace_back(a.ints);
          break;
        case ArgKind::kDoubleList:
          stack.emplace_back(a.doubles);
          break;
        case ArgKind::kBoolList: {
          c10::List<bool> l;
          for (int64_t b : a.ints) l.push_back(b != 0);
          stack.emplace_back(std::move(l));
          break;
        }
        case ArgKind::kDevice:
          if (a.ints.size() == 2 && a.ints[0] == core::kRemoteDeviceType) {
            stack.emplace_back(device);
          } else if (a.ints.size() == 2) {
            stack.emplace_back(c10::Device(static_cast<c10::DeviceType>(a.ints[0]),
                                           static_cast<c10::DeviceIndex>(a.ints[1])));
          } else {
            return absl::InvalidArgumentError("malformed device argument");
          }
          break;
        case ArgKind::kComplex:
          stack.emplace_back(c10::complex<double>(a.doubles.at(0), a.doubles.at(1)));
          break;
      }
    }
    if (program.returns_alias_args[n.op]) {
      alive.assign(stack.begin(), stack.end());
    } else {
      alive.clear();
    }
    try {
      op.callBoxed(&stack);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("op %", n.id, " ", g.OpName(n.op), " failed on ",
                                              Describe(), ": ", e.what_without_backtrace()));
    }
    // Bind fresh outputs to their buffers, in flattened order.
    size_t k = 0;
    auto bind = [&](const at::Tensor& t) -> absl::Status {
      if (k >= n.outputs.size()) return absl::OkStatus();
      const TensorRef& r = n.outputs[k++];
      if (!t.defined() || r.buffer >= roots.size() || g.buffer(r.buffer).producer != n.id ||
          roots[r.buffer].defined()) {
        return absl::OkStatus();
      }
      const core::Buffer& b = g.buffer(r.buffer);
      if (SameGeometry(t, r) && static_cast<int64_t>(t.storage().nbytes()) >= b.nbytes()) {
        roots[r.buffer] = t;
      } else {
        // The kernel chose other strides than Meta inference: lay it out as captured.
        at::Tensor root = at::empty({b.numel}, t.options());
        root.as_strided(at::IntArrayRef(r.sizes.data(), r.sizes.size()),
                        at::IntArrayRef(r.strides.data(), r.strides.size()), r.storage_offset)
            .copy_(t);
        roots[r.buffer] = std::move(root);
      }
      return absl::OkStatus();
    };
    for (const c10::IValue& v : stack) {
      if (v.isTensor()) {
        GENIE_RETURN_IF_ERROR(bind(v.toTensor()));
      } else if (v.isTensorList()) {
        for (const at::Tensor& t : v.toTensorList()) GENIE_RETURN_IF_ERROR(bind(t));
      } else if (v.isNone()) {
        ++k;
      }
    }
    return absl::OkStatus();
  }

  // The program's branches on the calling thread and cpu_lanes - 1 workers (cpu_lanes.h).
  absl::Status RunCpuLanes(const core::Graph& g, const Program& program,
                           std::vector<at::Tensor>& roots) {
    const int lanes = program.streams.num_lanes;
    if (cpu_lanes == nullptr || cpu_lanes->workers() < lanes - 1) {
      cpu_lanes.reset();
      cpu_lanes = std::make_unique<CpuLanes>(std::max(lanes, options.cpu_lanes) - 1);
    }
    std::vector<torch::jit::Stack> stacks(2 * static_cast<size_t>(lanes));  // stack, alive
    auto run = [&](core::NodeId id, int lane) {
      return RunNode(g, program, g.node(id), roots, stacks[2 * lane], stacks[2 * lane + 1]);
    };
    g_cpu_multi_lane_runs.fetch_add(1, std::memory_order_relaxed);
    return cpu_lanes->Run(program.streams, run);
  }

#if GENIE_WITH_CUDA
  absl::Status EnsureStreams() {
    const size_t want = static_cast<size_t>(std::clamp(options.cuda_streams, 1, 16));
    while (streams.size() < want) {
      GENIE_ASSIGN_OR_RETURN(CudaStream s, CudaStream::Create(device.index()));
      streams.push_back(std::move(s));
    }
    return absl::OkStatus();
  }

  // Runs every node: lane by lane on the interpreter's streams, forked from and joined back
  // into the main stream (the current stream on entry), or all on the main stream.
  absl::Status RunNodesCuda(const core::Graph& g, const Program& program, CudaProgramState& state,
                            std::vector<at::Tensor>& roots, int64_t* executed) {
    const StreamPlan& plan = program.streams;
    torch::jit::Stack stack, alive;
    if (!plan.multi_lane()) {
      for (core::NodeId id : plan.order) {
        GENIE_RETURN_IF_ERROR(RunNode(g, program, g.node(id), roots, stack, alive));
        ++*executed;
      }
      return absl::OkStatus();
    }
    const int lanes = std::min<int>(plan.num_lanes, static_cast<int>(streams.size()));
    if (state.events.size() < plan.num_events + 2) state.events.resize(plan.num_events + 2);
    at::cuda::CUDAEvent& fork = state.events[plan.num_events];
    at::cuda::CUDAEvent& join = state.events[plan.num_events + 1];
    const c10::cuda::CUDAStream main = streams[0].get();
    std::vector<c10::cuda::CUDAStream> lane_streams;
    lane_streams.reserve(lanes);
    for (int l = 0; l < lanes; ++l) lane_streams.push_back(streams[l].get());
    fork.record(main);
    for (int l = 1; l < lanes; ++l) fork.block(lane_streams[l]);
    absl::Status status = absl::OkStatus();
    int current = 0;
    for (core::NodeId id : plan.order) {
      const int l = plan.lane[id] % lanes;
      if (l != current) {
        c10::cuda::setCurrentCUDAStream(lane_streams[l]);
        current = l;
      }
      for (uint32_t e : plan.waits[id]) state.events[e].block(lane_streams[l]);
      status = RunNode(g, program, g.node(id), roots, stack, alive);
      if (!status.ok()) break;
      if (plan.record_after[id] != StreamPlan::kNoEvent) {
        state.events[plan.record_after[id]].record(lane_streams[l]);
      }
      ++*executed;
    }
    c10::cuda::setCurrentCUDAStream(main);
    // Join even after an error: the next run must start after everything queued here.
    for (int l = 1; l < lanes; ++l) {
      join.record(lane_streams[l]);
      join.block(main);
    }
    g_multi_stream_runs.fetch_add(1, std::memory_order_relaxed);
    g_cross_stream_waits.fetch_add(plan.cross_lane_waits, std::memory_order_relaxed);
    return status;
  }

  bool InArena(const core::HostBytes& b) const {
    if (!upload_arena.defined()) return false;
    const char* lo = static_cast<const char*>(upload_arena.data_ptr());
    const char* p = static_cast<const char*>(b.data);
    return p >= lo && p + b.nbytes <= lo + upload_arena.nbytes();
  }

  bool InRegistered(const void* data, size_t nbytes) const {
    const char* p = static_cast<const char*>(data);
    for (const auto& [lo, n] : registered) {
      if (p >= lo && nbytes <= n && static_cast<uint64_t>(p - lo) <= n - nbytes) return true;
    }
    return false;
  }

  // Host bytes -> pinned staging buffer -> `dst` with a non-blocking copy on the current
  // stream. The caching host allocator reuses staging buffers once their copy is done.
  static void StageUpload(const core::HostBytes& src, at::Tensor& dst) {
    at::Tensor pinned =
        at::empty({dst.numel()}, at::TensorOptions().dtype(dst.scalar_type()).pinned_memory(true));
    std::memcpy(pinned.data_ptr(), src.data, src.nbytes);
    dst.copy_(pinned, /*non_blocking=*/true);
  }

  // Same dtype and geometry (what a private copy of `b` can take from `a`).
  static bool SameLayout(const at::Tensor& a, const at::Tensor& b) {
    return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
           a.strides() == b.strides() && a.storage_offset() == b.storage_offset();
  }

  // A copy of `t` in memory of its own, with t's storage layout (views of it by storage
  // offset and strides read the same elements), on the current stream.
  static at::Tensor PrivateCopy(const at::Tensor& t) {
    const int64_t numel = static_cast<int64_t>(t.storage().nbytes() / t.itemsize());
    at::Tensor p =
        at::empty({numel}, t.options()).as_strided(t.sizes(), t.strides(), t.storage_offset());
    p.copy_(t, /*non_blocking=*/true);
    return p;
  }

  // Ends the capture of `graph`, which failed on stream `s`, and gives its memory pool
  // back. CUDAGraph::capture_begin routes the device's and the pinned host allocator's
  // allocations into the pool; capture_end stops that, and the graph releases the pool only
  // once its capture ended. A capture that failed before either would otherwise stay under
  // way for both allocators for the life of the process: every later free with cross-stream
  // uses deferred for good, emptyCache refused, and the host allocator holding a filter
  // over the destroyed graph.
  static void AbortCapture(c10::cuda::CUDAStream s, const CapturedGraph& graph,
                           at::cuda::MempoolId_t pool) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s.stream(), &st) == cudaSuccess &&
        st != cudaStreamCaptureStatusNone) {
      cudaGraph_t g = nullptr;
      (void)cudaStreamEndCapture(s.stream(), &g);
      if (g != nullptr) (void)cudaGraphDestroy(g);
    }
    (void)cudaGetLastError();
    // Each step may have nothing to undo (capture_begin failed before registering the
    // pool, or capture_end already stopped the routing): the allocators say so by
    // throwing, which is not an error here.
    auto quietly = [](auto&& step) {
      try {
        step();
      } catch (const std::exception&) {
      }
    };
    at::HostAllocator* host = at::getHostAllocator(at::kCUDA);
    quietly([&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(s.device_index(), pool); });
    quietly([&] { host->end_allocate_to_pool(pool); });
    if (graph.capture_ended()) return;  // the graph releases its pools when destroyed
    quietly([&] { c10::cuda::CUDACachingAllocator::releasePool(s.device_index(), pool); });
    quietly([&] { host->release_pool(pool); });
  }
#endif

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& req, bool retire) {
    if (req.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
    const core::Graph& g = *req.graph;
    std::lock_guard<std::mutex> lock(mu);
    c10::InferenceMode inference;
    core::ExecuteResult result;
    retired.clear();  // what an earlier ExecuteRetiring left, if not released yet

    bool hit = false;
    GENIE_ASSIGN_OR_RETURN(std::shared_ptr<Program> program, Prepare(g, req.fingerprint, &hit));
    result.stats.program_cache_hit = hit;

    int64_t upload_bytes = 0;
    for (const core::Upload& u : req.uploads) upload_bytes += static_cast<int64_t>(u.bytes.nbytes);
    if (options.memory_budget_bytes > 0 &&
        ResidentBytes() + upload_bytes > options.memory_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory budget exceeded on ", Describe(), ": ", ResidentBytes(), " bytes resident + ",
          upload_bytes, " uploaded > budget ", options.memory_budget_bytes,
          "; release tensors or start the node with a larger --memory_budget"));
    }

    std::vector<at::Tensor> roots(g.buffers().size());
    for (const core::Buffer& b : g.buffers()) {
      if (b.kind != BufferKind::kResident) continue;
      auto it = resident.find(b.handle);
      if (it == resident.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "buffer b", b.id, " (handle ", b.handle, ", ", b.name.empty() ? "unnamed" : b.name,
            ") is not resident on ", Describe(),
            ": it was released or the node restarted; re-upload it (move the tensor again)"));
      }
      roots[b.id] = it->second;
    }
    for (const core::Upload& u : req.uploads) {
      if (u.buffer >= g.buffers().size()) {
        return absl::InvalidArgumentError(absl::StrCat("upload names buffer b", u.buffer,
                                                       " but the graph has ", g.buffers().size()));
      }
      const core::Buffer& b = g.buffer(u.buffer);
      if (static_cast<int64_t>(u.bytes.nbytes) != b.nbytes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "upload for buffer b", b.id, " has ", u.bytes.nbytes, " bytes, expected ", b.nbytes()));
      }
    }

    if (device.is_cuda()) {
#if GENIE_WITH_CUDA
      absl::Status ran = ExecuteCuda(g, req, *program, roots, result);
      if (registered_in_flight) {
        // Copies from or into registered memory are done before the caller hears back,
        // also when the run failed half way. A run that only read uploads from it waits for
        // those copies alone, not for its compute.
        const bool uploads_only = ran.ok() && !registered_outputs && registered_uploads_recorded;
        registered_in_flight = registered_outputs = registered_uploads_recorded = false;
        if (uploads_only) {
          timeline::Span wait_span("wait for uploads (shared pool)");
          registered_copied->synchronize();
        } else if (!streams.empty()) {
          timeline::Span wait_span("wait for GPU (shared pool)");
          streams[0].get().synchronize();
          if (timeline::Enabled()) PlaceGpuSpans(timeline::NowNanos());
        }
      }
      GENIE_RETURN_IF_ERROR(ran);
#else
      return absl::UnimplementedError(
          absl::StrCat(Describe(), ": this build has no CUDA; rebuild with --config=cuda"));
#endif
    } else {
      for (const core::Upload& u : req.uploads) {
        const core::Buffer& b = g.buffer(u.buffer);
        const at::TensorOptions options =
            at::TensorOptions().dtype(ToScalarType(b.dtype)).device(device);
        if (u.in_place && u.bytes.nbytes != 0 &&
            reinterpret_cast<uintptr_t>(u.bytes.data) % kInPlaceAlignment == 0) {
          // The caller's memory (core::Upload::in_place): no copy; kept buffers are copied out.
          roots[b.id] = at::from_blob(const_cast<void*>(u.bytes.data), {b.numel}, options);
          continue;
        }
        at::Tensor t = at::empty({b.numel}, options);
        if (u.bytes.nbytes) std::memcpy(t.data_ptr(), u.bytes.data, u.bytes.nbytes);
        roots[b.id] = std::move(t);
      }
      timeline::Span ops_span("CPU ops", "nodes", static_cast<int64_t>(g.nodes().size()));
      if (program->streams.multi_lane()) {
        GENIE_RETURN_IF_ERROR(RunCpuLanes(g, *program, roots));
        result.stats.nodes_executed += static_cast<int64_t>(program->streams.order.size());
      } else {
        torch::jit::Stack stack, alive;
        for (core::NodeId id : program->streams.order) {
          GENIE_RETURN_IF_ERROR(RunNode(g, *program, g.node(id), roots, stack, alive));
          ++result.stats.nodes_executed;
        }
      }
      for (size_t i = 0; i < g.outputs().size(); ++i) {
        GENIE_ASSIGN_OR_RETURN(at::Tensor t, View(roots, g.outputs()[i]));
        const core::HostDestination* to = i < req.output_to.size() ? &req.output_to[i] : nullptr;
        if (to != nullptr && to->data != nullptr && to->nbytes == static_cast<size_t>(t.nbytes())) {
          // Straight into the caller's memory (a client's shared pool): one copy.
          at::Tensor dst = at::from_blob(to->data, t.sizes(), t.options().device(at::kCPU));
          dst.copy_(t);
          result.outputs.push_back(core::HostBytes{to->data, to->nbytes, nullptr});
          result.stats.bytes_downloaded += static_cast<int64_t>(to->nbytes);
          continue;
        }
        at::Tensor host = t.contiguous();
        auto owner = std::make_shared<at::Tensor>(host);
        result.outputs.push_back(core::HostBytes{host.data_ptr(),
                                                 static_cast<size_t>(host.nbytes()),
                                                 std::shared_ptr<const void>(owner, owner.get())});
        result.stats.bytes_downloaded += static_cast<int64_t>(host.nbytes());
      }
      for (core::BufferId b : req.keep) {
        if (b >= roots.size() || !roots[b].defined()) continue;
        const uint64_t h = g.buffer(b).handle;
        if (h == 0) continue;
        // Memory that is the caller's only for this run (in-place uploads, or an op's
        // output that returned one of them) is copied before it stays.
        resident[h] = InCallerMemory(roots[b], req) ? roots[b].clone() : roots[b];
      }
    }
    // After the run: this graph may still have read storages that died during capture.
    if (retire) {
      // Freed by ReleaseRetired, once the caller has answered.
      for (uint64_t h : req.release) {
        auto it = resident.find(h);
        if (it == resident.end()) continue;
        retired.push_back(std::move(it->second));
        resident.erase(it);
      }
      retired.insert(retired.end(), std::make_move_iterator(roots.begin()),
                     std::make_move_iterator(roots.end()));
    } else {
      for (uint64_t h : req.release) resident.erase(h);
    }
    result.stats.bytes_uploaded = upload_bytes;
    result.stats.resident_bytes = ResidentBytes();
    return result;
  }

#if GENIE_WITH_CUDA
  absl::Status ExecuteCuda(const core::Graph& g, const core::ExecuteRequest& req,
                           const Program& program, std::vector<at::Tensor>& roots,
                           core::ExecuteResult& result) {
    const auto host_start = std::chrono::steady_clock::now();
    c10::cuda::CUDAGuard device_guard(device.index());
    GENIE_RETURN_IF_ERROR(EnsureStreams());
    const c10::cuda::CUDAStream main = streams[0].get();
    c10::cuda::CUDAStreamGuard stream_guard(main);
    // Bounded: spans of runs that never sync are dropped past a few thousand.
    std::unique_ptr<at::cuda::CUDAEvent> gpu_start =
        timeline::Enabled() && gpu_timeline.pending.size() < 4096 ? TimingEvent(main) : nullptr;

    std::unique_ptr<CudaProgramState> scratch;
    CudaProgramState* state = nullptr;
    if (req.fingerprint != 0) {
      std::unique_ptr<CudaProgramState>& s = cuda_states[req.fingerprint];
      if (!s) s = std::make_unique<CudaProgramState>();
      state = s.get();
    } else {
      scratch = std::make_unique<CudaProgramState>();
      state = scratch.get();
    }

    std::vector<core::BufferId> upload_ids;
    upload_ids.reserve(req.uploads.size());
    for (const core::Upload& u : req.uploads) upload_ids.push_back(u.buffer);

    enum class Mode { kEager, kCapture, kReplay } mode = Mode::kEager;
    // A run of no nodes (an upload sent ahead, kept) has nothing to replay.
    const bool graphable = options.cuda_graphs && req.fingerprint != 0 && !g.nodes().empty() &&
                           program.graph_blocker.empty() && state->blocker.empty();
    if (graphable && state->graph) {
      bool same = state->num_buffers == g.buffers().size() && state->upload_ids == upload_ids;
      std::vector<core::BufferId> moved;
      for (const auto& [b, ptr] : state->resident_ptrs) {
        if (b >= roots.size() || !roots[b].defined()) {
          same = false;
          break;
        }
        if (roots[b].data_ptr() != ptr) moved.push_back(b);
      }
      for (core::BufferId b : state->copied_in) {
        same =
            same && b < roots.size() && roots[b].defined() && SameLayout(roots[b], state->roots[b]);
      }
      if (same && moved.empty()) {
        mode = Mode::kReplay;
      } else {
        // Resident inputs moved (or another upload set): the graph's addresses are stale.
        state->graph.reset();
        state->roots.clear();
        --captured_graphs;
        g_graph_drops.fetch_add(1, std::memory_order_relaxed);
        // Inputs that moved are read from a private copy from now on (refreshed before each
        // replay, and copied back after it where the program writes them), so the graph
        // survives their moving again.
        if (same) state->copied_in.insert(state->copied_in.end(), moved.begin(), moved.end());
        if (profile.on) {
          std::fprintf(stderr,
                       "genie interpreter: program %llu: CUDA graph dropped (%zu resident inputs "
                       "moved, %s)\n",
                       static_cast<unsigned long long>(req.fingerprint), moved.size(),
                       !same ? "another upload set or input layout" : "copied in from now on");
        }
        if (state->captures >= kMaxRecaptures) {
          state->blocker = "its resident inputs keep moving between runs";
        } else if (same && captured_graphs < options.max_cuda_graphs) {
          mode = Mode::kCapture;
        }
      }
    } else if (graphable && state->eager_runs >= 1 && captured_graphs < options.max_cuda_graphs) {
      mode = Mode::kCapture;
    } else if (options.cuda_graphs && req.fingerprint != 0 && state->eager_runs >= 1 &&
               !state->refusal_counted &&
               (!program.graph_blocker.empty() || !state->blocker.empty())) {
      // Counted once per program, when it would otherwise have been captured.
      state->refusal_counted = true;
      g_graph_refusals.fetch_add(1, std::memory_order_relaxed);
      if (profile.on) {
        std::fprintf(
            stderr, "genie interpreter: program %llu stays eager: %s\n",
            static_cast<unsigned long long>(req.fingerprint),
            (program.graph_blocker.empty() ? state->blocker : program.graph_blocker).c_str());
      }
    }

    // Uploads: non-blocking on the main stream, straight from the pinned upload arena or
    // through pinned staging. A replay copies into the graph's static input tensors.
    bool from_arena = false;
    const int64_t uploads_begin = timeline::Enabled() ? timeline::NowNanos() : 0;
    for (const core::Upload& u : req.uploads) {
      const core::Buffer& b = g.buffer(u.buffer);
      at::Tensor t =
          mode == Mode::kReplay
              ? state->roots[b.id]
              : at::empty({b.numel},
                          at::TensorOptions().dtype(ToScalarType(b.dtype)).device(device));
      const bool registered_src = u.bytes.nbytes != 0 && InRegistered(u.bytes.data, u.bytes.nbytes);
      registered_in_flight |= registered_src;
      if (u.bytes.nbytes != 0 && (registered_src || InArena(u.bytes))) {
        const cudaError_t e = cudaMemcpyAsync(t.data_ptr(), u.bytes.data, u.bytes.nbytes,
                                              cudaMemcpyHostToDevice, main.stream());
        if (e != cudaSuccess) {
          (void)cudaGetLastError();
          main.synchronize();  // earlier copies out of the arena finish before it is reused
          return absl::InternalError(absl::StrCat("uploading buffer b", b.id, " to ", Describe(),
                                                  " failed: ", cudaGetErrorString(e)));
        }
        from_arena |= !registered_src;
      } else if (u.bytes.nbytes != 0) {
        StageUpload(u.bytes, t);
      }
      roots[b.id] = std::move(t);
    }
    if (uploads_begin != 0) {
      timeline::Record("uploads", uploads_begin, timeline::NowNanos(), "count",
                       static_cast<int64_t>(req.uploads.size()));
    }
    if (registered_in_flight) {
      if (!registered_copied)
        registered_copied = std::make_unique<at::cuda::CUDAEvent>(cudaEventDisableTiming);
      registered_copied->record(main);
      registered_uploads_recorded = true;
    }
    if (from_arena) {
      if (!arena_copied)
        arena_copied = std::make_unique<at::cuda::CUDAEvent>(cudaEventDisableTiming);
      arena_copied->record(main);
      arena_in_flight = true;
    }

    if (mode == Mode::kCapture) {
      // Inputs of the capture: what is in roots now (residents and static uploads), the
      // copied-in residents replaced by private copies.
      std::vector<at::Tensor> inputs = roots;
      for (core::BufferId b : state->copied_in) {
        if (b < roots.size() && roots[b].defined()) roots[b] = PrivateCopy(roots[b]);
      }
      auto graph = std::make_unique<CapturedGraph>();
      absl::Status status = absl::OkStatus();
      int64_t executed = 0;
      std::shared_lock<std::shared_mutex> capturing(g_capture_mu);  // no emptyCache meanwhile
      // The capture's memory pool is named here so that a failed capture can give it back.
      const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
      timeline::Span capture_span("capture CUDA graph", "nodes",
                                  static_cast<int64_t>(g.nodes().size()));
      try {
        graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
        status = RunNodesCuda(g, program, *state, roots, &executed);
        if (status.ok()) graph->capture_end();
      } catch (const std::exception& e) {
        status = absl::InternalError(e.what());
      }
      if (!status.ok()) AbortCapture(main, *graph, pool);
      if (status.ok()) {
        state->graph = std::move(graph);
        state->roots = roots;
        state->num_buffers = g.buffers().size();
        state->upload_ids = upload_ids;
        state->resident_ptrs.clear();
        for (const core::Buffer& b : g.buffers()) {
          if (b.kind != BufferKind::kResident) continue;
          if (std::find(state->copied_in.begin(), state->copied_in.end(), b.id) !=
              state->copied_in.end()) {
            roots[b.id] = inputs[b.id];  // the run goes on with the resident itself
          } else {
            state->resident_ptrs.emplace_back(b.id, roots[b.id].data_ptr());
          }
        }
        ++state->captures;
        ++captured_graphs;
        g_graph_captures.fetch_add(1, std::memory_order_relaxed);
        mode = Mode::kReplay;
      } else {
        // Not capturable: run this and every later run of the program eagerly.
        graph.reset();
        state->blocker = absl::StrCat("capture failed: ", status.message());
        state->refusal_counted = true;
        g_graph_refusals.fetch_add(1, std::memory_order_relaxed);
        if (profile.on) {
          std::fprintf(stderr, "genie interpreter: program %llu stays eager: %s\n",
                       static_cast<unsigned long long>(req.fingerprint), state->blocker.c_str());
        }
        roots = std::move(inputs);
        mode = Mode::kEager;
      }
    }

    if (profile.on && !profile.start) {
      profile.start = std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault);
      profile.stop = std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault);
    }
    if (profile.on) profile.start->record(main);
    if (mode == Mode::kReplay) {
      if (state->roots.size() == roots.size()) {
        for (size_t b = 0; b < roots.size(); ++b) {
          if (!roots[b].defined()) roots[b] = state->roots[b];
        }
      }
      for (core::BufferId b : state->copied_in)
        state->roots[b].copy_(roots[b], /*non_blocking=*/true);
      try {
        timeline::Span replay_span("replay CUDA graph", "nodes",
                                   static_cast<int64_t>(g.nodes().size()));
        state->graph->replay();
      } catch (const c10::Error& e) {
        return absl::InternalError(absl::StrCat("CUDA graph replay failed on ", Describe(), ": ",
                                                e.what_without_backtrace()));
      }
      // What the graph wrote into its private copies goes back to the residents themselves.
      for (core::BufferId b : state->copied_in) {
        if (b < program.written.size() && program.written[b])
          roots[b].copy_(state->roots[b], /*non_blocking=*/true);
      }
      g_graph_replays.fetch_add(1, std::memory_order_relaxed);
      graph_replays.fetch_add(1, std::memory_order_relaxed);
      result.stats.nodes_executed = static_cast<int64_t>(g.nodes().size());
    } else {
      int64_t executed = 0;
      {
        timeline::Span launch_span("launch ops", "nodes", static_cast<int64_t>(g.nodes().size()));
        GENIE_RETURN_IF_ERROR(RunNodesCuda(g, program, *state, roots, &executed));
      }
      result.stats.nodes_executed = executed;
      ++state->eager_runs;
      if (options.cuda_graphs && state->blocker.empty() && program.graph_blocker.empty()) {
        for (const at::Tensor& t : roots) {
          if (t.defined() && !t.is_cuda()) {
            state->blocker = "a tensor of its warm-up run stayed on the CPU (CPU fallback)";
            break;
          }
        }
      }
    }

    if (profile.on) profile.stop->record(main);
    // Outputs: device -> pinned staging, non-blocking on the main stream (after the join),
    // then one wait for the main stream: the only host sync of a run.
    // An output with a destination in registered memory (output_to) goes there by DMA; its
    // contiguous device copy is kept in `hosts` until the sync.
    std::vector<at::Tensor> hosts;
    hosts.reserve(g.outputs().size());
    std::vector<bool> placed(g.outputs().size(), false);
    for (size_t i = 0; i < g.outputs().size(); ++i) {
      GENIE_ASSIGN_OR_RETURN(at::Tensor t, View(roots, g.outputs()[i]));
      const core::HostDestination* to = i < req.output_to.size() ? &req.output_to[i] : nullptr;
      if (to != nullptr && to->data != nullptr && to->nbytes == static_cast<size_t>(t.nbytes()) &&
          t.is_cuda()) {
        at::Tensor c = t.contiguous();
        registered_in_flight = registered_outputs = true;
        if (to->nbytes != 0) {
          const cudaError_t e = cudaMemcpyAsync(to->data, c.data_ptr(), to->nbytes,
                                                cudaMemcpyDeviceToHost, main.stream());
          if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return absl::InternalError(
                absl::StrCat("copying output ", i, " of ", Describe(),
                             " to the host failed: ", cudaGetErrorString(e)));
          }
        }
        placed[i] = true;
        hosts.push_back(std::move(c));
        continue;
      }
      at::Tensor host = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
      host.copy_(t, /*non_blocking=*/true);
      hosts.push_back(std::move(host));
    }
    // What stays: stream-ordered after the run, so kept before the host waits for it (a
    // replay's copies of its graph's memory are enqueued while the GPU still works).
    for (core::BufferId b : req.keep) {
      if (b >= roots.size() || !roots[b].defined()) continue;
      const uint64_t h = g.buffer(b).handle;
      if (h == 0) continue;
      // The graph's own memory is overwritten by the next replay: keep a copy.
      const bool graph_memory = mode == Mode::kReplay && g.buffer(b).kind != BufferKind::kResident;
      resident[h] = graph_memory ? roots[b].clone() : roots[b];
    }
    if (gpu_start != nullptr) {
      gpu_timeline.pending.push_back(
          GpuSpan{std::move(gpu_start), TimingEvent(main),
                  mode == Mode::kReplay ? "GPU run (graph)" : "GPU run (eager)",
                  static_cast<int64_t>(g.nodes().size())});
    }
    const auto sync_start = std::chrono::steady_clock::now();
    if (!hosts.empty()) {
      timeline::Span wait_span("wait for GPU", "outputs", static_cast<int64_t>(hosts.size()));
      main.synchronize();
      if (timeline::Enabled()) PlaceGpuSpans(timeline::NowNanos());
    }
    timeline::Span collect_span("collect outputs", "outputs", static_cast<int64_t>(hosts.size()));
    if (profile.on) {
      const auto end = std::chrono::steady_clock::now();
      profile.stop->synchronize();
      ++profile.runs;
      profile.replays += mode == Mode::kReplay;
      profile.host_us += std::chrono::duration<double, std::micro>(end - host_start).count();
      profile.sync_us += std::chrono::duration<double, std::micro>(end - sync_start).count();
      profile.gpu_us += 1000.0 * profile.start->elapsed_time(*profile.stop);
      if (profile.runs == 200) {
        std::fprintf(stderr,
                     "genie interpreter profile (%s): 200 runs, %lld replayed; per run: %.1f us in "
                     "Execute (host), %.1f us of it waiting for the GPU, %.1f us GPU from first "
                     "op to join\n",
                     device.str().c_str(), static_cast<long long>(profile.replays),
                     profile.host_us / 200, profile.sync_us / 200, profile.gpu_us / 200);
        profile.runs = profile.replays = 0;
        profile.host_us = profile.sync_us = profile.gpu_us = 0;
      }
    }
    for (size_t i = 0; i < hosts.size(); ++i) {
      if (placed[i]) {
        const core::HostDestination& to = req.output_to[i];
        result.outputs.push_back(core::HostBytes{to.data, to.nbytes, nullptr});
        result.stats.bytes_downloaded += static_cast<int64_t>(to.nbytes);
        continue;
      }
      at::Tensor& host = hosts[i];
      auto owner = std::make_shared<at::Tensor>(std::move(host));
      result.outputs.push_back(core::HostBytes{owner->data_ptr(),
                                               static_cast<size_t>(owner->nbytes()),
                                               std::shared_ptr<const void>(owner, owner.get()),
                                               /*exclusive=*/true});  // fresh pinned memory
      result.stats.bytes_downloaded += static_cast<int64_t>(owner->nbytes());
    }
    return absl::OkStatus();
  }
#endif

  std::string Describe() const {
    return absl::StrCat("local ATen interpreter (", device.str(), ")");
  }
};

Interpreter::Interpreter(InterpreterOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->device = at::Device(options.device);
  impl_->options = std::move(options);
#if GENIE_WITH_CUDA
  if (impl_->device.is_cuda()) g_live_cuda_interpreters.fetch_add(1);
#endif
}

Interpreter::~Interpreter() {
#if GENIE_WITH_CUDA
  const bool cuda = impl_->device.is_cuda();
  impl_.reset();
  if (!cuda || g_live_cuda_interpreters.fetch_sub(1) != 1) return;
  // The last CUDA interpreter of the process ended: the memory of the CUDA graphs of ended
  // sessions (private pools, which the caching allocator frees only when asked) and the
  // blocks they cached go back to the device, for later sessions and other processes.
  // Without it a node's reserved memory grew by about 6 GB with every ViT-B/16 session.
  // Not while other interpreters run (freeing synchronizes the device, and a capture under
  // way would make the allocator refuse), and never fatal: a refusal (for example a capture
  // of the application's own) leaves the memory to the allocator's own release on demand.
  std::unique_lock<std::shared_mutex> no_capture(g_capture_mu, std::try_to_lock);
  if (!no_capture.owns_lock()) return;
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "genie: the CUDA caching allocator was not emptied: %s\n", e.what());
  }
#endif
}

absl::StatusOr<core::ExecuteResult> Interpreter::Execute(const core::ExecuteRequest& request) {
  return impl_->Execute(request, /*retire=*/false);
}

absl::StatusOr<core::ExecuteResult> Interpreter::ExecuteRetiring(
    const core::ExecuteRequest& request) {
  return impl_->Execute(request, /*retire=*/true);
}

std::string Interpreter::Describe() const { return impl_->Describe(); }

absl::StatusOr<Interpreter::DeviceBuffer> Interpreter::ResidentDeviceBuffer(uint64_t handle) {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  if (!impl_->device.is_cuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(), " holds no device memory to export"));
  }
  auto it = impl_->resident.find(handle);
  if (it == impl_->resident.end()) {
    return absl::NotFoundError(absl::StrCat("handle ", handle, " is not resident on ", Describe()));
  }
  c10::cuda::CUDAGuard guard(impl_->device.index());
  GENIE_RETURN_IF_ERROR(impl_->EnsureStreams());
  at::Tensor t = it->second.is_contiguous() ? it->second : it->second.contiguous();
  size_t segment = 0;
  void* base = c10::cuda::CUDACachingAllocator::getBaseAllocation(t.data_ptr(), &segment);
  DeviceBuffer d;
  d.base = base;
  d.offset = static_cast<uint64_t>(static_cast<char*>(t.data_ptr()) - static_cast<char*>(base));
  d.nbytes = static_cast<uint64_t>(t.nbytes());
  d.stream = impl_->streams[0].get().stream();
  auto owner = std::make_shared<at::Tensor>(std::move(t));
  d.owner = std::shared_ptr<const void>(owner, owner.get());
  return d;
#else
  (void)handle;
  return absl::UnimplementedError("exporting device memory needs a build with --config=cuda");
#endif
}

absl::Status Interpreter::AdoptDeviceBuffer(
    uint64_t handle, core::DType dtype, int64_t numel,
    absl::FunctionRef<absl::Status(void* dst, uint64_t nbytes, void* stream)> fill) {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  if (!impl_->device.is_cuda()) {
    return absl::FailedPreconditionError(absl::StrCat(Describe(), " cannot adopt device memory"));
  }
  if (numel < 0) return absl::InvalidArgumentError("negative element count");
  c10::cuda::CUDAGuard guard(impl_->device.index());
  GENIE_RETURN_IF_ERROR(impl_->EnsureStreams());
  const c10::cuda::CUDAStream main = impl_->streams[0].get();
  c10::cuda::CUDAStreamGuard stream_guard(main);
  at::Tensor t =
      at::empty({numel}, at::TensorOptions().dtype(ToScalarType(dtype)).device(impl_->device));
  const int64_t budget = impl_->options.memory_budget_bytes;
  if (budget > 0 && impl_->ResidentBytes() + static_cast<int64_t>(t.nbytes()) > budget) {
    return absl::ResourceExhaustedError(absl::StrCat("adopting handle ", handle, " (", t.nbytes(),
                                                     " bytes) exceeds the memory budget of ",
                                                     Describe()));
  }
  GENIE_RETURN_IF_ERROR(fill(t.data_ptr(), static_cast<uint64_t>(t.nbytes()), main.stream()));
  impl_->resident[handle] = std::move(t);
  return absl::OkStatus();
#else
  (void)handle;
  (void)dtype;
  (void)numel;
  (void)fill;
  return absl::UnimplementedError("adopting device memory needs a build with --config=cuda");
#endif
}

absl::Status Interpreter::RegisterHostMemory(void* base, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  Impl& m = *impl_;
  if (!m.device.is_cuda() || base == nullptr || bytes == 0) return absl::OkStatus();
  for (const auto& [lo, n] : m.registered) {
    if (lo == base) return absl::OkStatus();
  }
  c10::cuda::CUDAGuard guard(m.device.index());
  const cudaError_t e = cudaHostRegister(base, bytes, cudaHostRegisterDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cannot page-lock ", bytes,
                                                     " bytes of shared memory on ", Describe(),
                                                     ": ", cudaGetErrorString(e)));
  }
  m.registered.emplace_back(static_cast<const char*>(base), bytes);
  return absl::OkStatus();
#else
  (void)base;
  (void)bytes;
  return absl::OkStatus();
#endif
}

void Interpreter::UnregisterHostMemory(void* base) {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  Impl& m = *impl_;
  for (auto it = m.registered.begin(); it != m.registered.end(); ++it) {
    if (it->first != base) continue;
    c10::cuda::CUDAGuard guard(m.device.index());
    if (!m.streams.empty()) m.streams[0].get().synchronize();
    (void)cudaHostUnregister(base);
    (void)cudaGetLastError();
    m.registered.erase(it);
    return;
  }
#else
  (void)base;
#endif
}

bool Interpreter::IsRegisteredHostMemory(const void* data, uint64_t nbytes) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  return impl_->InRegistered(data, static_cast<size_t>(nbytes));
#else
  (void)data;
  (void)nbytes;
  return false;
#endif
}

absl::StatusOr<char*> Interpreter::PinnedUploadArena(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(impl_->mu);
#if GENIE_WITH_CUDA
  Impl& m = *impl_;
  if (!m.device.is_cuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(), " takes uploads from ordinary memory"));
  }
  c10::cuda::CUDAGuard guard(m.device.index());
  if (m.arena_in_flight) {
    // The last run's copies out of the arena must be done before it is overwritten.
    m.arena_copied->synchronize();
    m.arena_in_flight = false;
  }
  constexpr uint64_t kKeepBytes = uint64_t{64} << 20;
  const uint64_t have =
      m.upload_arena.defined() ? static_cast<uint64_t>(m.upload_arena.nbytes()) : 0;
  if (have < bytes || (have > kKeepBytes && have > 2 * bytes)) {
    m.upload_arena = at::Tensor();
    if (bytes == 0) return nullptr;
    try {
      // Rounded up to 1 MiB so that slightly larger uploads reuse it.
      const int64_t size =
          static_cast<int64_t>((bytes + (uint64_t{1} << 20) - 1) & ~((uint64_t{1} << 20) - 1));
      m.upload_arena = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    } catch (const c10::Error& e) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", bytes, " bytes of page-locked memory for a run's uploads on ",
          Describe(), ": ", e.what_without_backtrace()));
    }
  }
  return m.upload_arena.defined() ? static_cast<char*>(m.upload_arena.data_ptr()) : nullptr;
#else
  (void)bytes;
  return absl::FailedPreconditionError(
      absl::StrCat(Describe(), " takes uploads from ordinary memory"));
#endif
}

void Interpreter::ReleaseRetired() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->retired.empty()) return;
  timeline::Span span("free the run's tensors", "tensors",
                      static_cast<int64_t>(impl_->retired.size()));
  impl_->retired.clear();
}

int64_t Interpreter::resident_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->ResidentBytes();
}

size_t Interpreter::resident_buffers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->resident.size();
}

int64_t Interpreter::graph_replays() const {
  return impl_->graph_replays.load(std::memory_order_relaxed);
}

size_t Interpreter::cached_programs() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->programs.size();
}

}  // namespace genie::runtime

namespace genie::runtime {

InterpreterCounters GetInterpreterCounters() {
  InterpreterCounters c;
  c.graph_captures = g_graph_captures.load(std::memory_order_relaxed);
  c.graph_replays = g_graph_replays.load(std::memory_order_relaxed);
  c.graph_refusals = g_graph_refusals.load(std::memory_order_relaxed);
  c.graph_drops = g_graph_drops.load(std::memory_order_relaxed);
  c.multi_stream_runs = g_multi_stream_runs.load(std::memory_order_relaxed);
  c.cross_stream_waits = g_cross_stream_waits.load(std::memory_order_relaxed);
  c.cpu_multi_lane_runs = g_cpu_multi_lane_runs.load(std::memory_order_relaxed);
  return c;
}

}  // namespace genie::runtime
