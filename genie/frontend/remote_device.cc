// File: genie/frontend/remote_device.cc
// The remote_accelerator backend for libtorch: device registration, a DeviceGuard, an
// allocator of lazy storages, and the kernels that capture ATen ops into a core::Graph.
//
// How a tensor is represented: its storage comes from RemoteAllocator, whose DataPtr
// context is a StorageContext holding a session-wide handle; the data pointer is an
// opaque device address that is never dereferenced (like a CUDA pointer on the host).
// Views share the storage and carry their geometry on the TensorImpl, so they need no
// graph node: an executor rebuilds any view with as_strided on the buffer.
//
// Capture path (CaptureFallback, boxed, for every op without an explicit kernel here):
//   key = (op, input geometry, scalar args) -> the capture cache gives each output's
//   kind (fresh / view of arg j / in-place on arg j) and geometry; on a miss the op runs
//   on Meta tensors once. Outputs become remote tensors, and a node is appended.
// Materialization (_copy_from to CPU, _local_scalar_dense, ops with no remote kernel)
// runs the captured graph on the installed core::Executor and fetches the bytes.
#include "genie/frontend/remote_device.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/ops/_lazy_clone.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/_to_copy_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/COW.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/thread_pool.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/container/node_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "genie/core/cpu_cores.h"
#include "genie/core/timeline.h"
#include "genie/runtime/interpreter.h"

namespace genie::frontend {
namespace {

using core::Arg;
using core::BufferId;
using core::BufferKind;
using core::TensorRef;

bool IsRemote(const at::Tensor& t);

constexpr c10::DeviceType kRemote = c10::DeviceType::PrivateUse1;
// Opaque device addresses handed out as data pointers; never dereferenced.
constexpr uintptr_t kDeviceAddressBase = 0x7e0000000000ull;

static_assert(static_cast<int>(core::DType::kFloat32) == static_cast<int>(at::kFloat));
static_assert(static_cast<int>(core::DType::kBFloat16) == static_cast<int>(at::kBFloat16));
static_assert(static_cast<int>(core::DType::kBool) == static_cast<int>(at::kBool));
static_assert(static_cast<int>(core::DType::kInt64) == static_cast<int>(at::kLong));
static_assert(core::kRemoteDeviceType == static_cast<int64_t>(c10::DeviceType::PrivateUse1));

core::DType ToDType(at::ScalarType t) {
  TORCH_CHECK(core::IsKnownDType(static_cast<uint8_t>(t)), "genie: dtype ", t,
              " is not supported on remote_accelerator");
  return static_cast<core::DType>(t);
}

// ---------------------------------------------------------------------------------
// Device guard: virtual device indices; no streams or events of its own.
thread_local c10::DeviceIndex current_device = 0;

c10::DeviceIndex VirtualDeviceCount() {
  static const c10::DeviceIndex count = [] {
    const char* env = std::getenv("GENIE_VIRTUAL_DEVICES");
    int n = env ? std::atoi(env) : 8;
    return static_cast<c10::DeviceIndex>(n > 0 && n < 128 ? n : 8);
  }();
  return count;
}

class RemoteGuardImpl final : public c10::impl::DeviceGuardImplInterface {
 public:
  c10::DeviceType type() const override { return kRemote; }
  c10::Device exchangeDevice(c10::Device d) const override {
    c10::Device old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(kRemote, current_device); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.type() == kRemote, "genie: expected a remote_accelerator device, got ", d);
    TORCH_CHECK(d.index() < VirtualDeviceCount(), "genie: remote_accelerator:", int(d.index()),
                " does not exist; ", int(VirtualDeviceCount()),
                " virtual devices are configured (GENIE_VIRTUAL_DEVICES)");
    if (d.index() >= 0) current_device = d.index();
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0) current_device = d.index();
  }
  c10::Stream getStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream exchangeStream(c10::Stream s) const override {
    return c10::Stream(c10::Stream::DEFAULT, s.device());
  }
  c10::DeviceIndex deviceCount() const noexcept override { return VirtualDeviceCount(); }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag)
      const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, RemoteGuardImpl);

// The device's default generator. torch::manual_seed seeds it; random ops draw their
// seeds from it (see ToArg), so the CPU generator's stream is left alone.
const at::Generator& DeviceGenerator() {
  static const at::Generator* gen =
      new at::Generator(at::make_generator<at::CPUGeneratorImpl>(c10::default_rng_seed_val));
  return *gen;
}

class RemoteHooks final : public at::PrivateUse1HooksInterface {
 public:
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override { return DeviceGenerator(); }
  at::Generator getNewGenerator(c10::DeviceIndex) const override {
    return at::make_generator<at::CPUGeneratorImpl>(c10::default_rng_seed_val);
  }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kRemote, current_device); }
  bool isPinnedPtr(const void*) const override { return false; }
  c10::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return VirtualDeviceCount(); }
  void resizePrivateUse1Bytes(const c10::Storage&, size_t) const override {
    TORCH_CHECK(false, "genie: storages of remote_accelerator tensors cannot be resized in place; "
                       "allocate a new tensor");
  }
};

// ---------------------------------------------------------------------------------
// Storages.
// What Genie knows of one remote storage; read and written under the capture mutex.
struct StorageContext {
  uint64_t handle;
  // The storage's buffer in the graph under construction, valid while `generation` equals
  // the capture context's graph generation: BufferFor's hit is a read.
  uint64_t generation = 0;
  BufferId buffer = core::kNoBuffer;
  // The last graph generation that gave the storage a buffer (any version of it): a graph
  // of that generation may still read what the node holds under `handle`.
  uint64_t seen_generation = 0;
  uint8_t dtype = 0;  // at::ScalarType code of that buffer
  bool resident = false;  // an earlier graph left its data on the executor
  std::string name;       // dotted parameter name (NameParameters), or empty
  at::Tensor pending;     // host data bound to it (an upload), until a run keeps it
};

void DeleteStorage(void* ctx);

class RemoteAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override;
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void*, const void*, std::size_t) const override {
    TORCH_CHECK(false, "genie: remote_accelerator storages hold no host data; copy them with .to()");
  }
};

RemoteAllocator& Allocator() {
  static RemoteAllocator* allocator = new RemoteAllocator();
  return *allocator;
}

struct SchemaInfo {
  std::string name;              // "aten::add.Tensor"
  int generator_arg = -1;        // index of a Generator? argument
  std::vector<int> return_alias;  // per return: index of the aliased argument or -1
  std::vector<bool> return_write;
  std::vector<int> write_args;   // arguments the op mutates
  bool supported_returns = true;  // every return is Tensor, Tensor[] or Tensor?
};

struct OutputSpec {
  enum class Kind : uint8_t { kFresh, kView, kInPlace, kNone };
  Kind kind = Kind::kFresh;
  int arg = -1;  // aliased argument for kView / kInPlace
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> sizes, strides;
  int64_t offset = 0;
  int64_t storage_nbytes = 0;
};

struct ReturnSpec {
  bool is_list = false;
  int first = 0;  // index into outputs
  int count = 1;
};

struct CachedOp {
  std::vector<ReturnSpec> returns;
  std::vector<OutputSpec> outputs;
  bool has_node = true;  // false when every output is a view and nothing is written
  const SchemaInfo* info = nullptr;  // the op's schema facts (node-stable storage)
  // The op's id in the graph under construction, valid for graph `op_generation`.
  mutable core::OpId op_id = 0;
  mutable uint64_t op_generation = 0;
};

// The capture cache is keyed by std::vector<int64_t> and looked up with a span over the
// key under construction (heterogeneous lookup), so a hit copies nothing.
struct KeyHash {
  using is_transparent = void;
  size_t operator()(absl::Span<const int64_t> k) const {
    return absl::Hash<absl::Span<const int64_t>>{}(k);
  }
};
struct KeyEq {
  using is_transparent = void;
  bool operator()(absl::Span<const int64_t> a, absl::Span<const int64_t> b) const { return a == b; }
};

// A growable int64 array written through pointers: one capacity check per tensor, not
// per element. Its storage is reused from op to op.
class KeyBuilder {
 public:
  void Clear() { len_ = 0; }
  C10_ALWAYS_INLINE int64_t* Extend(size_t n) {
    if (C10_UNLIKELY(len_ + n > buf_.size())) buf_.resize(std::max(2 * buf_.size(), len_ + n + 64));
    int64_t* p = buf_.data() + len_;
    len_ += n;
    return p;
  }
  void Push(int64_t v) { *Extend(1) = v; }
  absl::Span<const int64_t> span() const { return absl::MakeConstSpan(buf_.data(), len_); }

 private:
  std::vector<int64_t> buf_;
  size_t len_ = 0;
};

// Runs graphs on their executors in submission order, off the capturing thread, so a
// dispatch returns at once and capture of the next step overlaps execution; a graph for an
// executor that does not wait for its node (core::Executor::AcceptsWithoutWaiting) runs on
// the capturing thread when nothing is queued (RunHereOrSubmit).
class Worker {
 public:
  using Result = absl::StatusOr<core::ExecuteResult>;
  struct Job {
    std::shared_ptr<const core::Graph> graph;  // owns what request.graph points to
    core::ExecuteRequest request;
    std::shared_ptr<core::Executor> executor;
    std::promise<Result> done;
  };

  std::future<Result> Submit(std::unique_ptr<Job> job) {
    std::future<Result> f = job->done.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
    return f;
  }

  // Runs `job` on the calling thread when no submitted job is queued or running, so that
  // nothing submitted earlier reaches its executor after it; else runs nothing and returns
  // nullopt.
  std::optional<Result> RunHereIfIdle(Job& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!queue_.empty() || running_) return std::nullopt;
      running_ = true;
    }
    Result r = Execute(job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_ = false;
    }
    cv_.notify_one();  // jobs submitted meanwhile waited for this one
    return r;
  }

  // Runs `job` on the calling thread when no submitted job is queued or running (so order
  // holds), sparing the hand-off to the worker thread; else submits it. For an executor
  // that returns from a dispatched graph once it is handed on (AcceptsWithoutWaiting).
  std::future<Result> RunHereOrSubmit(std::unique_ptr<Job> job) {
    std::optional<Result> r = RunHereIfIdle(*job);
    if (!r.has_value()) return Submit(std::move(job));
    std::future<Result> f = job->done.get_future();
    job->done.set_value(std::move(*r));
    return f;
  }

  // Runs `job` on the calling thread when no submitted job is queued or running (so order
  // holds), sparing a caller that would only wait for it the two thread hand-offs; else
  // submits it and waits.
  Result RunNowOrWait(std::unique_ptr<Job> job) {
    if (std::optional<Result> r = RunHereIfIdle(*job)) return std::move(*r);
    timeline::Span wait("wait for the worker's runs");
    return Submit(std::move(job)).get();
  }

 private:
  // Never throws: a job that did (an executor's c10::Error) fails with its message, and the
  // worker's state stays consistent.
  static Result Execute(Job& job) {
    timeline::Span span("run on node", "nodes", static_cast<int64_t>(job.graph->nodes().size()));
    try {
      return job.executor->Execute(job.request);
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
  }

  void Loop() {
    timeline::NameThread("genie client worker");
    for (;;) {
      std::unique_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty() && !running_; });
        job = std::move(queue_.front());
        queue_.pop_front();
        running_ = true;
      }
      Result r = Execute(*job);
      {
        std::lock_guard<std::mutex> lock(mu_);
        running_ = false;
      }
      job->done.set_value(std::move(r));
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> queue_;
  bool running_ = false;  // a job is executing (on the worker or a RunNowOrWait caller)
  std::thread thread_;  // never joined: the context lives until exit
};

// The capture state: one graph under construction, storages by handle, residency.
class CaptureContext {
 public:
  static CaptureContext& Get() {
    static CaptureContext* ctx = new CaptureContext();  // leaked: storages die at exit
    return *ctx;
  }

  std::recursive_mutex mu;

  // --- storages ------------------------------------------------------------------
  uint64_t NewHandle() { return next_handle_.fetch_add(1, std::memory_order_relaxed); }
  void OnStorageFreed(StorageContext* sc) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (sc->generation == graph_generation_ && sc->buffer < buffer_owner_.size() &&
        buffer_owner_[sc->buffer] == sc) {
      buffer_owner_[sc->buffer] = nullptr;  // not kept: nothing can read it after the run
    }
    if (sc->resident) released_.push_back(sc->handle);
  }

  // --- capture -------------------------------------------------------------------
  void Capture(const c10::OperatorHandle& op, torch::jit::Stack* stack);
  void CopyFrom(const at::Tensor& self, const at::Tensor& dst);
  // The contiguous CPU copy of remote `self` (runs what it needs).
  at::Tensor Download(const at::Tensor& self);
  at::Scalar LocalScalarDense(const at::Tensor& self);
  void NameParameter(const at::Tensor& t, const std::string& name);

  // Runs the graph and returns `wanted` as CPU tensors (contiguous).
  std::vector<at::Tensor> Run(const std::vector<at::Tensor>& wanted);
  // Submits the graph without waiting (nothing is read back).
  void Dispatch();
  // Waits for every submitted graph; the first error since the last Join, if any.
  absl::Status Join();
  // Nodes in the graph under construction (while replaying, in the template's prefix).
  size_t captured_nodes() const {
    if (!replaying_) return graph.nodes().size();
    return cursor_ > 0 ? template_->events[cursor_ - 1].nodes_after : 0;
  }
  bool has_work() const { return captured_nodes() > 0 || !released_.empty(); }
  // SetAutoDispatch: hands the graph to the executor once it holds the part's node count:
  // auto_dispatch_nodes for a step's first part, times auto_dispatch_growth for each next
  // one (a step ends where its results are read).
  int64_t auto_dispatch_nodes = 0;
  int64_t auto_dispatch_growth = 1;
  int64_t next_part_nodes = 0;  // this part's count; 0: the step's first part
  void MaybeAutoDispatch() {
    if (auto_dispatch_nodes <= 0) return;
    if (next_part_nodes == 0) next_part_nodes = auto_dispatch_nodes;
    if (captured_nodes() < static_cast<size_t>(next_part_nodes)) return;
    Dispatch();
    next_part_nodes = std::min<int64_t>(next_part_nodes * auto_dispatch_growth, int64_t{1} << 40);
  }

  std::shared_ptr<core::Executor> executor() {
    if (!executor_) executor_ = std::make_shared<runtime::Interpreter>();
    return executor_;
  }
  // The old executor's dispatched runs finish first; a failure among them is reported by
  // the next Join.
  void set_executor(std::shared_ptr<core::Executor> e) {
    if (executor_ != nullptr) {
      Harvest(/*wait=*/true);
      absl::Status accepted = executor_->Drain();
      if (!accepted.ok() && first_error_.ok()) first_error_ = accepted;
    }
    executor_ = std::move(e);
  }

  CaptureStats stats;
  // View kernels (as_strided, view, _reshape_alias) count here without the mutex;
  // GetCaptureStats adds it to stats.views.
  std::atomic<int64_t> view_kernels{0};
  bool cache_enabled = true;
  bool replay_enabled = true;
  // Node-based: step templates point at entries, which must not move.
  absl::node_hash_map<std::vector<int64_t>, CachedOp, KeyHash, KeyEq> cache;
  GraphObserver observer;
  // The graph under construction. While a step replays its template, it stays empty
  // (the template stands for it); Materialize() makes it real.
  core::Graph graph;
  // Ends a replay in progress: the graph becomes the template's prefix captured so far.
  // `diverged`: because the capture stopped matching the template (counted in stats).
  void Materialize(bool diverged = false);
  // Drops the template (the capture cache it points into is changing).
  void ForgetTemplate();

  // Scope names (thread-local stack joined by '.'), interned lazily per graph.
  uint64_t scope_version = 1;

 private:
  CaptureContext() = default;

  static StorageContext* ContextOf(const at::Tensor& t) {
    const c10::DataPtr& dp = t.unsafeGetTensorImpl()->unsafe_storage().data_ptr();
    TORCH_CHECK(dp.get_deleter() == &DeleteStorage,
                "genie: a remote_accelerator tensor whose storage was not made by Genie's "
                "allocator (set_ or from_blob on this device are not supported)");
    return static_cast<StorageContext*>(dp.get_context());
  }
  const SchemaInfo& InfoFor(const c10::OperatorHandle& op);
  core::OpId OpIdFor(const c10::FunctionSchema* schema, const std::string& name);
  core::ScopeId CurrentScope();

  // The graph buffer of t's storage; `produced_here` registers a fresh output's storage
  // (otherwise a storage nothing wrote yet gets an allocation node).
  BufferId BufferFor(const at::Tensor& t, bool produced_here = false);
  TensorRef RefOf(const at::Tensor& t, bool produced_here = false);
  void FillRef(const at::Tensor& t, bool produced_here, TensorRef* r);
  BufferId NewBufferFor(const at::Tensor& t, StorageContext* sc, bool produced_here);
  BufferId AddHostConstant(const at::Tensor& cpu);
  // An empty CPU tensor for host data the next run uploads: in memory the executor lends
  // (Executor::Staging: a node's shared tensor pool, where the upload then costs no copy),
  // else ordinary memory.
  // The bytes of host tensor `src` as they are now, as a dense tensor of `sizes` and `dtype`
  // for a later upload: in the executor's shared pool, else copy-on-write (when on), else a
  // copy into memory the executor reuses or fresh memory.
  at::Tensor SnapshotForUpload(const at::Tensor& src, c10::IntArrayRef sizes, at::ScalarType dtype);
  Arg ToArg(const c10::IValue& v, int arg_index, const SchemaInfo& info);
  bool AppendKey(const c10::IValue& v);
  void AppendTensorKey(const at::Tensor& t);
  // The key of a remote-to-remote copy: both views (no op: a copy is not dispatched).
  void CopyKey(const at::Tensor& self, const at::Tensor& dst) {
    key_.Clear();
    AppendTensorKey(dst);
    AppendTensorKey(self);
  }
  void Chain(uint64_t v) { chain_ = absl::Hash<std::pair<uint64_t, uint64_t>>{}({chain_, v}); }
  void ChainNode(const core::Node& n);
  static at::Tensor ToMeta(const at::Tensor& t);
  bool InferWithCpu(const c10::OperatorHandle& op, const torch::jit::Stack& args,
                    torch::jit::Stack* out, std::string* error);
  std::optional<CachedOp> InferWithMeta(const c10::OperatorHandle& op, const SchemaInfo& info,
                                        const torch::jit::Stack& args, std::string* error);
  void CaptureMiss(const c10::OperatorHandle& op, torch::jit::Stack* stack, bool cacheable);
  void Emit(const c10::OperatorHandle& op, const CachedOp& spec, torch::jit::Stack* stack);
  // Makes the op's outputs from `spec`, calling `on_output(tensor, produced_here)` for
  // each defined one in order, and replaces the arguments on the stack with them.
  template <class OnOutput>
  void PushOutputs(const CachedOp& spec, size_t nargs, torch::jit::Stack* stack, OnOutput&& on_output);

  // --- step replay (see SetStepReplayEnabled) ----------------------------------------
  struct TraceEvent {
    const c10::FunctionSchema* schema = nullptr;  // nullptr: a remote-to-remote copy
    const CachedOp* spec = nullptr;               // a capture-cache entry
    uint32_t key_begin = 0, key_size = 0;         // in Trace::keys
    uint32_t nodes_after = 0, buffers_after = 0;  // graph size after the event
    uint64_t chain_after = 0;
  };
  struct Trace {
    std::vector<TraceEvent> events;
    std::vector<int64_t> keys;
    // Set when the traced graph was flushed:
    core::Graph graph;                         // as captured, with the outputs read back
    std::vector<BufferId> keep;                // kept buffers (capture ids, sorted)
    std::vector<BufferId> remap;               // capture id -> id in `run`
    std::vector<BufferId> run_keep;            // `keep` in `run`'s ids
    std::shared_ptr<const core::Graph> run;    // after dead-code elimination
    uint64_t fingerprint = 0;
    int64_t nodes_eliminated = 0;
    // The template the graph flushed after this one followed last time: a step cut into
    // parts (auto-dispatch) goes part to part, and parts may start alike.
    Trace* next = nullptr;
  };
  // A first reference, during replay, to a storage (or a host constant) in this graph.
  struct ReplayNew {
    StorageContext* sc = nullptr;     // null for a host constant
    const at::Tensor* host = nullptr;  // the host constant's tensor
    BufferId id = core::kNoBuffer;
  };
  void Record(const c10::FunctionSchema* schema, const CachedOp* spec, absl::Span<const int64_t> key);
  // Before the first op is replayed: switches to the template whose first event is this
  // one (schema, or null for a copy, and key_), if the current one's is not. False: none.
  bool FindTemplate(const c10::FunctionSchema* schema);
  // The first op of a graph, while replaying: replays it from the first template that
  // starts with it and takes it (the last part's successor first). False: none does.
  bool ReplayFirstOp(const c10::OperatorHandle& op, torch::jit::Stack* stack);
  void UseTemplate(Trace* t);
  bool TryReplay(const c10::OperatorHandle& op, const CachedOp& spec, torch::jit::Stack* stack);
  bool TryReplayCopy(const at::Tensor& self, const at::Tensor& dst);
  // Whether a typed argument of an op called through UnboxedKernel equals the template
  // node's argument `a`, as Emit would record it (scalars bit for bit, tensors by dtype,
  // geometry and buffer role). Equal arguments make the op the template's, so the capture
  // key, which is a function of them, needs no building. Host tensors and symbolic
  // values answer false: the boxed path takes them.
  bool MatchArg(const at::Tensor& t, const core::Arg& a) {
    if (!t.defined()) return a.kind == core::ArgKind::kNone;
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    if (a.kind != core::ArgKind::kTensor || a.tensors.size() != 1 || impl->device_type() != kRemote) {
      return false;
    }
    const TensorRef& r = a.tensors[0];
    const size_t dim = r.sizes.size();
    if (r.dtype != static_cast<core::DType>(t.scalar_type()) || impl->dim() != static_cast<int64_t>(dim) ||
        impl->storage_offset() != r.storage_offset) {
      return false;
    }
    const int64_t* sizes = impl->sizes().data();
    const int64_t* strides = impl->strides().data();
    for (size_t k = 0; k < dim; ++k) {
      if (sizes[k] != r.sizes[k] || strides[k] != r.strides[k]) return false;
    }
    const StorageContext* sc = ContextOf(t);
    if (sc->generation == graph_generation_) {  // seen in this graph: its buffer is fixed
      return sc->buffer == r.buffer && sc->dtype == static_cast<uint8_t>(t.scalar_type());
    }
    // A first reference: the template's buffer must be a storage's, not a host constant's.
    return template_->graph.buffer(r.buffer).handle != 0 && ReplayExpect(t, r.buffer);
  }
  bool MatchArg(const std::optional<at::Tensor>& t, const core::Arg& a) {
    return t.has_value() ? MatchArg(*t, a) : a.kind == core::ArgKind::kNone;
  }
  bool MatchArg(int64_t v, const core::Arg& a) { return a.kind == core::ArgKind::kInt && a.i == v; }
  bool MatchArg(const c10::SymInt& v, const core::Arg& a) {
    return !v.is_heap_allocated() && MatchArg(v.as_int_unchecked(), a);
  }
  bool MatchArg(bool v, const core::Arg& a) { return a.kind == core::ArgKind::kBool && a.i == (v ? 1 : 0); }
  bool MatchArg(double v, const core::Arg& a) {
    return a.kind == core::ArgKind::kDouble && std::memcmp(&v, &a.d, sizeof v) == 0;
  }
  bool MatchArg(const std::optional<double>& v, const core::Arg& a) {
    return v.has_value() ? MatchArg(*v, a) : a.kind == core::ArgKind::kNone;
  }
  bool MatchArg(const at::Scalar& v, const core::Arg& a) {  // recorded as the IValue it boxes to
    if (v.isFloatingPoint()) return MatchArg(v.toDouble(), a);
    if (v.isBoolean()) return MatchArg(v.toBool(), a);
    if (v.isIntegral(/*includeBool=*/false) && !v.isSymbolic()) return MatchArg(v.toLong(), a);
    return false;
  }
  bool MatchArg(c10::SymIntArrayRef v, const core::Arg& a) {
    if (a.kind != core::ArgKind::kIntList || a.ints.size() != v.size()) return false;
    for (size_t k = 0; k < v.size(); ++k) {
      if (v[k].is_heap_allocated() || v[k].as_int_unchecked() != a.ints[k]) return false;
    }
    return true;
  }
  bool MatchArg(c10::IntArrayRef v, const core::Arg& a) {
    return a.kind == core::ArgKind::kIntList && v == c10::IntArrayRef(a.ints);
  }
  bool MatchArg(const std::optional<c10::MemoryFormat>& v, const core::Arg& a) {  // an int
    return v.has_value() ? MatchArg(static_cast<int64_t>(*v), a) : a.kind == core::ArgKind::kNone;
  }
  bool MatchArg(std::string_view v, const core::Arg& a) {
    return a.kind == core::ArgKind::kString && a.s == v;
  }

 public:
  // The replay branch of Capture for an op called through UnboxedKernel, on its typed
  // arguments: no stack is built. True: the op matched the template's next event and
  // `*out` is its output; false: nothing changed, and the boxed path takes the op.
  template <class... Args>
  bool TryReplayUnboxed(const c10::FunctionSchema* schema, at::Tensor* out, const Args&... args);

 private:
  // Whether `t` gets buffer `expected` as capture would number it; queues first references.
  bool ReplayExpect(const at::Tensor& t, BufferId expected);
  void CommitReplayNew();
  void ReplayAssignOutput(const at::Tensor& t);
  // The template's id for the current scope path (the lookup runs when the path changes).
  core::ScopeId ReplayScope() {
    if (C10_UNLIKELY(replay_scope_version_ != scope_version)) LookUpReplayScope();
    return replay_scope_;
  }
  void LookUpReplayScope();
  std::unique_ptr<Worker::Job> PrepareReplayedJob(const std::vector<at::Tensor>& wanted);
  // The buffers whose storages outlive the graph (sorted); after the run they are resident.
  std::vector<BufferId> KeptBuffers() const;
  void MarkResident(const std::vector<BufferId>& keep, const std::vector<BufferId>& remap);
  // The job for `run`: uploads gathered, observer and dump called, releases handed over.
  std::unique_ptr<Worker::Job> FinishJob(std::shared_ptr<const core::Graph> run,
                                         const std::vector<BufferId>& run_keep,
                                         const std::vector<BufferId>& remap, uint64_t fingerprint);
  at::Tensor MakeOutput(const OutputSpec& spec, const at::Tensor* aliased);
  void UploadInto(const at::Tensor& dst, const at::Tensor& cpu_src);
  // Sends `src`, all of `dst`'s new contents, to the executor at once when it takes uploads
  // ahead (core::Executor::UploadsAhead): a run of no nodes uploads it straight from the
  // caller's memory and keeps it under dst's handle, which is resident from then on. False:
  // nothing was sent, snapshot it instead.
  bool UploadAhead(const at::Tensor& dst, const at::Tensor& src);
  void CpuFallback(const c10::OperatorHandle& op, const SchemaInfo& info,
                   torch::jit::Stack* stack, const std::string& reason);
  void ResetGraph();
  // Turns the captured graph into a job (dead code dropped, uploads gathered) and
  // books its effects (kept storages become resident); the graph is reset.
  std::unique_ptr<Worker::Job> PrepareJob(const std::vector<at::Tensor>& wanted);
  // With the timeline on: when the last graph was handed on (its capture span starts there).
  int64_t last_flush_ns_ = 0;
  // Folds finished dispatched jobs into the stats; keeps the first error.
  void Harvest(bool wait);
  void Account(const core::ExecuteResult& r);

  struct InFlight {
    std::future<Worker::Result> result;
    std::string what;  // for errors: "graph of 120 ops on <executor>"
  };
  Worker worker_;
  std::deque<InFlight> in_flight_;
  absl::Status first_error_;

  std::shared_ptr<core::Executor> executor_;
  std::atomic<uint64_t> next_handle_{1};
  std::vector<uint64_t> released_;
  absl::node_hash_map<const c10::FunctionSchema*, SchemaInfo> schema_info_;  // stable refs
  absl::flat_hash_set<std::string> warned_;

  // Per-graph state. graph_generation_ changes with every new graph (ResetGraph), which
  // invalidates every StorageContext's and CachedOp's per-graph ids at once.
  uint64_t graph_generation_ = 1;
  // Per buffer id of the graph under construction: the live storage whose current
  // version it is, or null (host constants, freed storages, overwritten versions).
  // Exactly the buffers to keep when the graph runs.
  std::vector<StorageContext*> buffer_owner_;
  absl::flat_hash_map<BufferId, at::Tensor> constants_;  // host constants (0-dim CPU args)
  absl::flat_hash_map<const c10::FunctionSchema*, core::OpId> op_ids_;
  uint64_t scope_cache_version_ = 0;
  core::ScopeId scope_cache_id_ = 0;
  uint64_t chain_ = 0;
  KeyBuilder key_;
  Trace recording_;            // this graph's events, while not replaying
  bool recording_ok_ = true;   // false once something not replayable was captured
  // Recently flushed graphs that can be replayed, least recently used first, and the one
  // the graph under construction is checked against (the last one used). A step made of
  // several graphs (read back in between) replays each from its own template.
  static constexpr size_t kMaxTemplates = 16;
  std::deque<std::unique_ptr<Trace>> templates_;
  Trace* template_ = nullptr;
  Trace* previous_ = nullptr;  // the template of the graph flushed last (null: none)
  // After a graph is flushed as template_: the previous graph's template learns its successor.
  void LinkTemplates() {
    if (previous_ != nullptr) previous_->next = template_;
    previous_ = template_;
  }
  bool replaying_ = false;
  size_t cursor_ = 0;                // next template event
  std::vector<uint64_t> replay_handles_;  // per buffer id so far: its storage's handle
  absl::InlinedVector<ReplayNew, 4> replay_new_;
  uint64_t replay_scope_version_ = 0;
  core::ScopeId replay_scope_ = 0;
  std::vector<uint64_t> chain_scratch_;  // values of one node for the chain hash
  torch::jit::Stack scratch_args_;  // arguments of the last CPU shape inference
};

bool IsDataDependent(const std::string& name);

thread_local std::vector<std::string> scope_stack;
thread_local std::string scope_path;

c10::DataPtr RemoteAllocator::allocate(size_t nbytes) {
  const uint64_t handle = CaptureContext::Get().NewHandle();
  auto* ctx = new StorageContext{handle};
  void* address = reinterpret_cast<void*>(kDeviceAddressBase + (handle << 24));
  return c10::DataPtr(address, ctx, &DeleteStorage, c10::Device(kRemote, current_device));
}

void DeleteStorage(void* ctx) {
  auto* sc = static_cast<StorageContext*>(ctx);
  CaptureContext::Get().OnStorageFreed(sc);
  delete sc;
}

at::Tensor NewRemoteTensor(at::ScalarType dtype, at::IntArrayRef sizes, at::IntArrayRef strides,
                           int64_t offset, int64_t storage_nbytes) {
  c10::Storage storage(c10::Storage::use_byte_size_t(), storage_nbytes,
                       Allocator().allocate(storage_nbytes), &Allocator(), /*resizable=*/true);
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
      caffe2::TypeMeta::fromScalarType(dtype));
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset);
  return t;
}

at::Tensor AliasOf(const at::Tensor& base, at::ScalarType dtype, at::IntArrayRef sizes,
                   at::IntArrayRef strides, int64_t offset) {
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      c10::TensorImpl::VIEW, c10::Storage(base.storage()), base.key_set(),
      caffe2::TypeMeta::fromScalarType(dtype));
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset);
  return t;
}

bool IsRemote(const at::Tensor& t) {
  return t.defined() && t.unsafeGetTensorImpl()->device_type() == kRemote;
}

const SchemaInfo& CaptureContext::InfoFor(const c10::OperatorHandle& op) {
  const c10::FunctionSchema* schema = &op.schema();
  auto it = schema_info_.find(schema);
  if (it != schema_info_.end()) return it->second;
  SchemaInfo info;
  info.name = schema->name();
  if (!schema->overload_name().empty()) absl::StrAppend(&info.name, ".", schema->overload_name());
  const auto& args = schema->arguments();
  for (size_t j = 0; j < args.size(); ++j) {
    c10::TypePtr t = args[j].real_type();
    if (t->kind() == c10::TypeKind::OptionalType) t = t->containedType(0);
    if (t->kind() == c10::TypeKind::GeneratorType) info.generator_arg = static_cast<int>(j);
    if (args[j].alias_info() && args[j].alias_info()->isWrite()) {
      info.write_args.push_back(static_cast<int>(j));
    }
  }
  for (const c10::Argument& r : schema->returns()) {
    int alias = -1;
    bool write = false;
    if (const c10::AliasInfo* ai = r.alias_info()) {
      for (size_t j = 0; j < args.size() && alias < 0; ++j) {
        const c10::AliasInfo* aj = args[j].alias_info();
        if (!aj) continue;
        for (const auto& s : ai->beforeSets()) {
          if (aj->beforeSets().count(s)) {
            alias = static_cast<int>(j);
            write = aj->isWrite();
            break;
          }
        }
      }
    }
    info.return_alias.push_back(alias);
    info.return_write.push_back(write);
    c10::TypePtr t = r.real_type();
    if (t->kind() == c10::TypeKind::OptionalType) t = t->containedType(0);
    const bool tensor = t->kind() == c10::TypeKind::TensorType;
    const bool list = t->kind() == c10::TypeKind::ListType &&
                      t->containedType(0)->kind() == c10::TypeKind::TensorType;
    if (!tensor && !list) info.supported_returns = false;
  }
  return schema_info_.emplace(schema, std::move(info)).first->second;
}

core::OpId CaptureContext::OpIdFor(const c10::FunctionSchema* schema, const std::string& name) {
  auto it = op_ids_.find(schema);
  if (it != op_ids_.end()) return it->second;
  core::OpId id = graph.InternOp(name);
  op_ids_.emplace(schema, id);
  return id;
}

core::ScopeId CaptureContext::CurrentScope() {
  if (scope_cache_version_ != scope_version) {
    scope_cache_id_ = graph.InternScope(scope_path);
    scope_cache_version_ = scope_version;
  }
  return scope_cache_id_;
}

BufferId CaptureContext::BufferFor(const at::Tensor& t, bool produced_here) {
  StorageContext* sc = ContextOf(t);
  if (C10_LIKELY(sc->generation == graph_generation_ &&
                 sc->dtype == static_cast<uint8_t>(t.scalar_type()))) {
    return sc->buffer;
  }
  return NewBufferFor(t, sc, produced_here);
}

BufferId CaptureContext::NewBufferFor(const at::Tensor& t, StorageContext* sc,
                                      bool produced_here) {
  const uint64_t h = sc->handle;
  // The context is current (ResetGraph and UploadInto end that): here the dtype differs.
  if (sc->generation == graph_generation_) {
    const core::DType held = graph.buffer(sc->buffer).dtype;
    TORCH_CHECK(held == ToDType(t.scalar_type()),
                "genie: a view that reinterprets a remote storage as ", t.scalar_type(),
                " (it holds ", core::DTypeName(held),
                ") is not supported; copy it with .to(dtype) instead");
    sc->dtype = static_cast<uint8_t>(t.scalar_type());
    return sc->buffer;
  }
  core::Buffer b;
  b.dtype = ToDType(t.scalar_type());
  b.numel = static_cast<int64_t>(t.storage().nbytes()) / static_cast<int64_t>(t.itemsize());
  b.handle = h;
  // A storage this op just allocated has no name, host data or residency yet.
  b.name = sc->name;
  const bool pending = sc->pending.defined(), resident = sc->resident;
  b.kind = pending ? (b.name.empty() ? BufferKind::kHostInput : BufferKind::kParameter)
                   : (resident ? BufferKind::kResident : BufferKind::kIntermediate);
  const BufferKind kind = b.kind;
  const int64_t numel = b.numel;
  const core::DType dtype = b.dtype;
  BufferId id = graph.AddBuffer(std::move(b));
  buffer_owner_.push_back(sc);
  sc->generation = sc->seen_generation = graph_generation_;
  sc->buffer = id;
  sc->dtype = static_cast<uint8_t>(t.scalar_type());
  if (pending) constants_[id] = sc->pending;  // survives the storage dying before the run
  Chain(static_cast<uint64_t>(kind) * 1000003u + static_cast<uint64_t>(numel) * 31u +
        static_cast<uint64_t>(dtype));
  if (!pending && !resident && !produced_here) {
    // A storage no op has written yet (torch::empty, resize_): allocate it where it runs.
    core::Node n;
    n.op = graph.InternOp("aten::empty.memory_format");
    n.args = {Arg::IntList({numel}), Arg::Int(static_cast<int64_t>(dtype)), Arg::None(),
              Arg::Device(core::kRemoteDeviceType, 0), Arg::None(), Arg::None()};
    n.outputs = {TensorRef::Contiguous(id, dtype, {numel})};
    n.scope = CurrentScope();
    ChainNode(n);
    graph.AddNode(std::move(n));
  }
  return id;
}

TensorRef CaptureContext::RefOf(const at::Tensor& t, bool produced_here) {
  TensorRef r;
  FillRef(t, produced_here, &r);
  return r;
}

void CaptureContext::FillRef(const at::Tensor& t, bool produced_here, TensorRef* r) {
  r->buffer = BufferFor(t, produced_here);
  // BufferFor checked the dtype against the buffer's, a known one.
  r->dtype = static_cast<core::DType>(t.scalar_type());
  const c10::IntArrayRef sizes = t.sizes(), strides = t.strides();
  const size_t dim = sizes.size();
  r->sizes.resize(dim);
  r->strides.resize(dim);
  if (dim > 0) {
    std::memcpy(r->sizes.data(), sizes.data(), dim * sizeof(int64_t));
    std::memcpy(r->strides.data(), strides.data(), dim * sizeof(int64_t));
  }
  r->storage_offset = t.storage_offset();
}

// Copies `src` (a host tensor, or any non-remote one ATen can copy from) into `dst`, fresh
// staging memory. A dense CPU source of the same dtype and sizes is one memcpy on the
// calling thread. at::Tensor::copy_ would spread a large copy over the intra-op (OpenMP)
// threads, whose workers then spin-wait for the next parallel region and take the CPU from
// the threads that drive the node: measured on the H100 host, ViT-B/16 over Shm took 12.8 ms
// a batch that way against 9.8 ms with OMP_WAIT_POLICY=PASSIVE (local CUDA: 9.2 ms;
// libtorch's own host-to-device copy does not use those threads either).
//
// A copy of at least kSplitCopyBytes is split between the calling thread and up to three
// helper threads that sleep while idle (c10::ThreadPool waits on a condition variable): one
// thread's memcpy does not reach the memory's bandwidth. Measured on the H100 host, ViT-B/16's
// 4.8 MB of images took 0.34 ms on one thread and 0.22 ms split (BENCHMARKS.md).
constexpr size_t kSplitCopyBytes = size_t{1} << 20;

void SplitMemcpy(void* dst, const void* src, size_t nbytes) {
  static c10::ThreadPool* const helpers = []() -> c10::ThreadPool* {
    const int n = std::min(3, core::UsableCores() - 1);
    return n > 0 ? new c10::ThreadPool(n) : nullptr;  // lives until exit
  }();
  if (helpers == nullptr || nbytes < kSplitCopyBytes) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  const size_t parts = helpers->size() + 1;
  const size_t chunk = (nbytes / parts + 63) & ~size_t{63};
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  // This copy's own count of pieces left (the pool may serve several callers at once).
  struct Latch {
    std::mutex mu;
    std::condition_variable cv;
    size_t left = 0;
  };
  auto latch = std::make_shared<Latch>();
  latch->left = (nbytes - 1) / chunk;  // pieces after the first
  for (size_t off = chunk; off < nbytes; off += chunk) {
    const size_t len = std::min(chunk, nbytes - off);
    helpers->run([d, s, off, len, latch] {
      std::memcpy(d + off, s + off, len);
      std::lock_guard<std::mutex> lock(latch->mu);
      if (--latch->left == 0) latch->cv.notify_one();
    });
  }
  std::memcpy(d, s, std::min(chunk, nbytes));
  std::unique_lock<std::mutex> lock(latch->mu);
  latch->cv.wait(lock, [&] { return latch->left == 0; });
}

// Whether `src`'s memory holds exactly the bytes of a dense tensor of `dtype` and `sizes`
// (a contiguous CPU tensor of them, with no lazy conjugation or negation), so they can be
// copied or sent as they lie.
bool IsDenseBytesOf(const at::Tensor& src, at::ScalarType dtype, c10::IntArrayRef sizes) {
  return src.device().is_cpu() && src.layout() == at::kStrided && src.has_storage() &&
         !src._is_zerotensor() && !src.is_quantized() && src.is_contiguous() &&
         src.scalar_type() == dtype && src.sizes() == sizes && !src.is_conj() && !src.is_neg();
}

void CopyToStaging(at::Tensor& dst, const at::Tensor& src) {
  if (IsDenseBytesOf(src, dst.scalar_type(), dst.sizes())) {
    const size_t nbytes = static_cast<size_t>(src.numel()) * src.element_size();
    timeline::Span span("snapshot upload", "bytes", static_cast<int64_t>(nbytes));
    if (nbytes > 0) SplitMemcpy(dst.data_ptr(), src.const_data_ptr(), nbytes);
    return;
  }
  timeline::Span span("snapshot upload (ATen copy)", "bytes", static_cast<int64_t>(dst.nbytes()));
  dst.copy_(src);
}

// Host data of at least this size is snapshotted copy-on-write when it can be (below: one
// memcpy costs less than the clone's bookkeeping).
constexpr size_t kLazySnapshotBytes = size_t{64} << 10;

std::atomic<bool> g_copy_on_write_snapshots{false};  // SetCopyOnWriteSnapshots

// With SetCopyOnWriteSnapshots on, a copy-on-write clone of `src` (c10::impl::cow): no bytes
// are copied now; whichever of the two is written first gets its own copy then (the
// caller's next in-place write to `src`, typically never). Undefined when off, or when `src`
// cannot be cloned so: not a dense contiguous CPU tensor of `dtype` and `sizes` spanning its
// whole storage (a view would keep its whole base shared), or memory not from the default
// CPU allocator (page-locked, borrowed, or loaded storage: c10 copies through the allocator).
at::Tensor LazySnapshot(const at::Tensor& src, c10::IntArrayRef sizes, at::ScalarType dtype) {
  if (!g_copy_on_write_snapshots.load(std::memory_order_relaxed) ||
      !IsDenseBytesOf(src, dtype, sizes) || src.storage_offset() != 0 ||
      static_cast<size_t>(src.nbytes()) != src.storage().nbytes() ||
      static_cast<size_t>(src.nbytes()) < kLazySnapshotBytes) {
    return at::Tensor();
  }
  const c10::StorageImpl& storage = *src.storage().unsafeGetStorageImpl();
  if (storage.allocator() != c10::GetCPUAllocator() ||
      (!c10::impl::cow::has_simple_data_ptr(storage) &&
       !c10::impl::cow::is_cow_data_ptr(storage.data_ptr()))) {
    return at::Tensor();
  }
  timeline::Span span("snapshot upload (copy-on-write)", "bytes",
                      static_cast<int64_t>(src.nbytes()));
  return at::_lazy_clone(src.detach());
}

at::Tensor CaptureContext::SnapshotForUpload(const at::Tensor& src, c10::IntArrayRef sizes,
                                             at::ScalarType dtype) {
  // Where the node reads it in place (a Shm pool) first; then, when the caller turned it on,
  // no copy at all; then memory the executor reuses; then fresh memory.
  const size_t nbytes =
      static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype);
  core::HostBuffer lent = nbytes != 0 ? executor()->Staging(nbytes) : core::HostBuffer{};
  const bool usable = lent.data != nullptr && lent.nbytes >= nbytes;
  if (!(usable && lent.shared)) {
    at::Tensor lazy = LazySnapshot(src, sizes, dtype);
    if (lazy.defined()) return lazy;
  }
  if (usable) {
    at::Tensor data = at::from_blob(
        lent.data, sizes, [owner = std::move(lent.owner)](void*) mutable { owner.reset(); },
        at::TensorOptions().dtype(dtype));
    CopyToStaging(data, src);
    return data;
  }
  at::Tensor data = at::empty(sizes, at::TensorOptions().dtype(dtype));
  CopyToStaging(data, src);
  return data;
}

BufferId CaptureContext::AddHostConstant(const at::Tensor& cpu) {
  at::Tensor data = SnapshotForUpload(cpu, cpu.sizes(), cpu.scalar_type());
  core::Buffer b;
  b.dtype = ToDType(data.scalar_type());
  b.numel = data.numel();
  b.kind = BufferKind::kHostInput;
  BufferId id = graph.AddBuffer(b);
  buffer_owner_.push_back(nullptr);
  constants_[id] = data;
  Chain(0xC0457A47u + static_cast<uint64_t>(b.numel));
  return id;
}

Arg CaptureContext::ToArg(const c10::IValue& v, int arg_index, const SchemaInfo& info) {
  if (arg_index == info.generator_arg) {
    // Seeding rule: each random op draws a 63-bit seed from the generator passed, else
    // from the device's default generator (seeded by torch::manual_seed); the executor
    // runs the op with a fresh generator seeded with it. Same client seed, same numbers
    // on any node; not the numbers eager CPU would draw.
    at::Generator gen = v.isNone() ? DeviceGenerator() : v.toGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return Arg::Int(static_cast<int64_t>(gen.get<at::CPUGeneratorImpl>()->random64() >> 1));
  }
  if (v.isNone()) return Arg::None();
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!t.defined()) return Arg::None();
    if (IsRemote(t)) return Arg::Tensor(RefOf(t));
    TORCH_CHECK(t.device().is_cpu(), "genie: ", info.name, " mixes remote_accelerator with ",
                t.device(), " tensors; move them with .to(remote device)");
    BufferId c = AddHostConstant(t);
    Arg a = Arg::Tensor(TensorRef::Contiguous(c, ToDType(t.scalar_type()),
                                              std::vector<int64_t>(t.sizes().begin(), t.sizes().end())));
    a.i = t.unsafeGetTensorImpl()->is_wrapped_number() ? 1 : 0;
    return a;
  }
  if (v.isTensorList()) {
    std::vector<TensorRef> refs;
    for (const at::Tensor& t : v.toTensorList().vec()) {
      TORCH_CHECK(IsRemote(t), "genie: ", info.name, " got a list mixing devices");
      refs.push_back(RefOf(t));
    }
    return Arg::TensorList(std::move(refs));
  }
  if (v.isIntList()) return Arg::IntList(v.toIntVector());
  if (v.isDoubleList()) return Arg::DoubleList(v.toDoubleVector());
  if (v.isBoolList()) {
    std::vector<int64_t> bits;
    for (bool b : v.toBoolList()) bits.push_back(b ? 1 : 0);
    return Arg::BoolList(std::move(bits));
  }
  if (v.isList()) {  // Tensor?[] (index, index_put_)
    std::vector<TensorRef> refs;
    std::vector<uint8_t> present;
    for (const c10::IValue& e : v.toListRef()) {
      if (e.isNone() || (e.isTensor() && !e.toTensor().defined())) {
        refs.emplace_back();
        present.push_back(0);
      } else {
        TORCH_CHECK(e.isTensor(), "genie: ", info.name, " has an unsupported list argument");
        const at::Tensor& t = e.toTensor();
        refs.push_back(IsRemote(t) ? RefOf(t)
                                   : TensorRef::Contiguous(AddHostConstant(t), ToDType(t.scalar_type()),
                                                           std::vector<int64_t>(t.sizes().begin(), t.sizes().end())));
        present.push_back(1);
      }
    }
    return Arg::OptionalTensorList(std::move(refs), std::move(present));
  }
  if (v.isBool()) return Arg::Bool(v.toBool());
  if (v.isInt()) return Arg::Int(v.toInt());
  if (v.isSymInt()) return Arg::Int(v.toSymInt().guard_int(__FILE__, __LINE__));
  if (v.isDouble()) return Arg::Double(v.toDouble());
  if (v.isComplexDouble()) {
    auto c = v.toComplexDouble();
    return Arg::Complex(c.real(), c.imag());
  }
  if (v.isString()) return Arg::String(v.toStringRef());
  if (v.isDevice()) {
    c10::Device d = v.toDevice();
    return Arg::Device(static_cast<int64_t>(d.type()), d.has_index() ? d.index() : -1);
  }
  TORCH_CHECK(false, "genie: ", info.name, " has an argument of type ", v.tagKind(),
              " that cannot be sent to a remote node");
}

// Appends what determines a tensor argument's part in output metadata: dtype, device,
// geometry and storage size.
void CaptureContext::AppendTensorKey(const at::Tensor& t) {
  if (!t.defined()) {
    key_.Push(-7);
    return;
  }
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  const c10::IntArrayRef sizes = impl->sizes(), strides = impl->strides();
  const size_t dim = sizes.size();
  int64_t* p = key_.Extend(4 + 2 * dim);
  *p++ = static_cast<int64_t>(t.scalar_type()) * 64 + static_cast<int64_t>(impl->device_type()) +
         (impl->is_wrapped_number() ? 1 << 20 : 0);
  *p++ = static_cast<int64_t>(dim);
  for (size_t k = 0; k < dim; ++k) *p++ = sizes[k];
  for (size_t k = 0; k < dim; ++k) *p++ = strides[k];
  *p++ = impl->storage_offset();
  *p = static_cast<int64_t>(impl->unsafe_storage().nbytes());
}

// Appends what determines output metadata. Returns false for argument kinds that make
// the op unsuitable for caching (they still capture; they just always run Meta).
bool CaptureContext::AppendKey(const c10::IValue& v) {
  if (v.isTensor()) {
    AppendTensorKey(v.toTensor());
  } else if (v.isNone()) {
    key_.Push(-1);
  } else if (v.isInt()) {
    int64_t* p = key_.Extend(2);
    p[0] = -2;
    p[1] = v.toInt();
  } else if (v.isBool()) {
    key_.Push(v.toBool() ? -3 : -4);
  } else if (v.isDouble()) {
    double d = v.toDouble();
    int64_t bits;
    std::memcpy(&bits, &d, sizeof bits);
    int64_t* p = key_.Extend(2);
    p[0] = -5;
    p[1] = bits;
  } else if (v.isIntList()) {
    const c10::List<int64_t> l = v.toIntList();
    int64_t* p = key_.Extend(1 + l.size());
    *p++ = -6 - static_cast<int64_t>(l.size()) * 16;
    for (int64_t x : l) *p++ = x;
  } else if (v.isDoubleList()) {
    auto l = v.toDoubleList();
    key_.Push(-13 - static_cast<int64_t>(l.size()) * 16);
    for (double d : l) {
      int64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      key_.Push(bits);
    }
  } else if (v.isBoolList()) {
    auto l = v.toBoolList();
    key_.Push(-14 - static_cast<int64_t>(l.size()) * 16);
    for (bool b : l) key_.Push(b ? 1 : 0);
  } else if (v.isTensorList()) {
    auto l = v.toTensorList();
    key_.Push(-8 - static_cast<int64_t>(l.size()) * 16);
    for (const at::Tensor& t : l) AppendTensorKey(t);
  } else if (v.isList()) {
    key_.Push(-9);
    for (const c10::IValue& e : v.toListRef()) {
      if (e.isTensor()) AppendTensorKey(e.toTensor());
      else key_.Push(-1);
    }
  } else if (v.isDevice()) {
    key_.Push(-10 - static_cast<int64_t>(v.toDevice().type()));
  } else if (v.isString()) {
    key_.Push(-11);
    key_.Push(static_cast<int64_t>(std::hash<std::string>{}(v.toStringRef())));
  } else if (v.isGenerator()) {
    key_.Push(-12);
  } else {
    return false;
  }
  return true;
}

// Everything a view is: buffer, dtype and geometry.
void AppendView(std::vector<uint64_t>* out, const TensorRef& t) {
  out->push_back(t.buffer);
  out->push_back(static_cast<uint64_t>(t.dtype) + (static_cast<uint64_t>(t.sizes.size()) << 8));
  for (int64_t v : t.sizes) out->push_back(static_cast<uint64_t>(v));
  for (int64_t v : t.strides) out->push_back(static_cast<uint64_t>(v));
  out->push_back(static_cast<uint64_t>(t.storage_offset));
}

uint64_t Bits(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  return bits;
}

// The chain is the program's identity for program caches (a node keeps programs by it):
// it covers every argument's value and every view's geometry, or two graphs differing
// only in a scalar or an offset would share a program. The node's values are gathered
// into a reused buffer and hashed once.
void CaptureContext::ChainNode(const core::Node& n) {
  std::vector<uint64_t>& v = chain_scratch_;
  v.clear();
  v.push_back(n.op);
  for (const Arg& a : n.args) {
    v.push_back(static_cast<uint64_t>(a.kind));
    v.push_back(static_cast<uint64_t>(a.i));
    v.push_back(Bits(a.d));
    if (!a.s.empty()) v.push_back(absl::Hash<std::string>{}(a.s));
    for (int64_t x : a.ints) v.push_back(static_cast<uint64_t>(x));
    for (double d : a.doubles) v.push_back(Bits(d));
    for (uint8_t p : a.present) v.push_back(p);
    for (const TensorRef& t : a.tensors) AppendView(&v, t);
  }
  v.push_back(0x6f757473ull + n.outputs.size());
  for (const TensorRef& t : n.outputs) AppendView(&v, t);
  for (BufferId b : n.writes) v.push_back(b);
  v.push_back(n.scope);
  Chain(absl::Hash<absl::Span<const uint64_t>>{}(absl::MakeConstSpan(v)));
}

// A copy of an argument stack with every tensor (lists and optional-tensor lists
// included) passed through `convert`, and remote device arguments replaced by `device`:
// how shape inference (Meta, CPU zeros) and the CPU fallback see an op's arguments.
template <class Convert>
torch::jit::Stack MapTensorArgs(const torch::jit::Stack& args, Convert&& convert, c10::Device device) {
  torch::jit::Stack out;
  out.reserve(args.size());
  for (const c10::IValue& v : args) {
    if (v.isTensor()) {
      out.emplace_back(convert(v.toTensor()));
    } else if (v.isTensorList()) {
      std::vector<at::Tensor> l;
      for (const at::Tensor& t : v.toTensorList()) l.push_back(convert(t));
      out.emplace_back(c10::List<at::Tensor>(l));
    } else if (v.isList() && !v.isIntList() && !v.isDoubleList() && !v.isBoolList()) {
      c10::List<std::optional<at::Tensor>> l;
      for (const c10::IValue& e : v.toListRef()) {
        if (e.isTensor()) l.push_back(convert(e.toTensor()));
        else l.push_back(std::nullopt);
      }
      out.emplace_back(l);
    } else if (v.isDevice() && v.toDevice().type() == kRemote) {
      out.emplace_back(device);
    } else {
      out.push_back(v);
    }
  }
  return out;
}

at::Tensor CaptureContext::ToMeta(const at::Tensor& t) {
  const int64_t storage_numel = static_cast<int64_t>(t.storage().nbytes()) / t.itemsize();
  at::Tensor base = at::empty({storage_numel}, at::TensorOptions().dtype(t.scalar_type()).device(at::kMeta));
  return base.as_strided(t.sizes(), t.strides(), t.storage_offset());
}

std::optional<CachedOp> CaptureContext::InferWithMeta(const c10::OperatorHandle& op,
                                                      const SchemaInfo& info,
                                                      const torch::jit::Stack& args,
                                                      std::string* error) {
  if (!info.supported_returns) {
    *error = "it returns a value that is not a tensor";
    return std::nullopt;
  }
  auto convert = [](const at::Tensor& t) { return IsRemote(t) ? ToMeta(t) : t; };
  torch::jit::Stack meta = MapTensorArgs(args, convert, at::kMeta);
  // out= returns alias their arguments: keep the converted arguments alive until the
  // outputs have been read.
  const torch::jit::Stack meta_args = meta;
  try {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(&meta);
  } catch (const c10::Error& e) {
    *error = e.what_without_backtrace();
    const bool no_meta_kernel = error->find("Meta kernel") != std::string::npos ||
                                error->find("fake impl") != std::string::npos;
    if (IsDataDependent(op.schema().name())) {
      *error = "its output shape depends on the data";
      return std::nullopt;
    }
    (void)no_meta_kernel;
    // libtorch has no C++ Meta kernel for this op (Python registers many), or its Meta
    // path is incomplete: infer the output metadata by running the CPU kernel once on
    // zeros of the same geometry.
    // Only on a cache miss; the result is cached like a Meta one.
    if (!InferWithCpu(op, args, &meta, error)) return std::nullopt;
    ++stats.cpu_shape_inferences;
  }
  ++stats.cache_misses;
  CachedOp spec;
  spec.has_node = !info.write_args.empty();
  const size_t nret = op.schema().returns().size();
  for (size_t i = 0; i < nret; ++i) {
    const c10::IValue& r = meta[i];
    ReturnSpec rs;
    rs.first = static_cast<int>(spec.outputs.size());
    auto add = [&](const at::Tensor& t) -> bool {
      OutputSpec o;
      if (!t.defined()) {
        o.kind = OutputSpec::Kind::kNone;
      } else {
        const int alias = info.return_alias[i];
        if (t.layout() != c10::kStrided) {
          *error = "it produces a non-strided tensor";
          return false;
        }
        o.kind = alias < 0 ? OutputSpec::Kind::kFresh
                           : (info.return_write[i] ? OutputSpec::Kind::kInPlace : OutputSpec::Kind::kView);
        o.arg = alias;
        o.dtype = t.scalar_type();
        o.sizes = t.sizes().vec();
        o.strides = t.strides().vec();
        o.offset = t.storage_offset();
        // The bytes the view reaches, from its geometry (inference storages are never
        // read: a Meta or scratch storage may be larger than what the output needs).
        o.storage_nbytes = static_cast<int64_t>(
            at::detail::computeStorageNbytes(t.sizes(), t.strides(), t.itemsize(), t.storage_offset()));
        if (o.kind == OutputSpec::Kind::kFresh) spec.has_node = true;
      }
      spec.outputs.push_back(std::move(o));
      return true;
    };
    if (r.isTensor()) {
      if (!add(r.toTensor())) return std::nullopt;
    } else if (r.isTensorList()) {
      rs.is_list = true;
      for (const at::Tensor& t : r.toTensorList()) {
        if (!add(t)) return std::nullopt;
      }
      rs.count = static_cast<int>(spec.outputs.size()) - rs.first;
    } else if (r.isNone()) {
      (void)add(at::Tensor());
    } else {
      *error = "it returns a value that is not a tensor";
      return std::nullopt;
    }
    spec.returns.push_back(rs);
  }
  return spec;
}

bool IsDataDependent(const std::string& name) {
  static const absl::flat_hash_set<std::string>* ops = new absl::flat_hash_set<std::string>{
      "aten::nonzero", "aten::nonzero_numpy", "aten::argwhere", "aten::masked_select",
      "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
      "aten::unique_dim_consecutive", "aten::bincount", "aten::repeat_interleave",
      "aten::_local_scalar_dense", "aten::item"};
  return ops->contains(name);
}

bool CaptureContext::InferWithCpu(const c10::OperatorHandle& op, const torch::jit::Stack& args,
                                  torch::jit::Stack* out, std::string* error) {
  auto zeros_like_view = [](const at::Tensor& t) -> at::Tensor {
    if (!IsRemote(t)) return t;
    const int64_t storage_numel = static_cast<int64_t>(t.storage().nbytes()) / t.itemsize();
    return at::zeros({storage_numel}, at::TensorOptions().dtype(t.scalar_type()))
        .as_strided(t.sizes(), t.strides(), t.storage_offset());
  };
  torch::jit::Stack cpu = MapTensorArgs(args, zeros_like_view, at::kCPU);
  scratch_args_ = cpu;  // out= returns alias the arguments: keep them alive (see InferWithMeta)
  try {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(&cpu);
  } catch (const c10::Error& e) {
    *error = absl::StrCat("no Meta kernel, and its CPU kernel refused zeros: ", e.what_without_backtrace());
    return false;
  }
  *out = std::move(cpu);
  return true;
}

at::Tensor CaptureContext::MakeOutput(const OutputSpec& o, const at::Tensor* aliased) {
  switch (o.kind) {
    case OutputSpec::Kind::kNone:
      return at::Tensor();
    case OutputSpec::Kind::kFresh:
      return NewRemoteTensor(o.dtype, o.sizes, o.strides, o.offset, o.storage_nbytes);
    case OutputSpec::Kind::kView:
      return AliasOf(*aliased, o.dtype, o.sizes, o.strides, o.offset);
    case OutputSpec::Kind::kInPlace: {
      at::Tensor self = *aliased;
      c10::TensorImpl* impl = self.unsafeGetTensorImpl();
      if (self.sizes() != at::IntArrayRef(o.sizes) || self.strides() != at::IntArrayRef(o.strides) ||
          self.storage_offset() != o.offset) {
        if (o.storage_nbytes > static_cast<int64_t>(self.storage().nbytes())) {
          TORCH_CHECK(self.storage().nbytes() == 0,
                      "genie: an op grew a remote tensor that already holds data; allocate "
                      "the output tensor with its final size instead");
          impl->set_storage_keep_dtype(c10::Storage(c10::Storage::use_byte_size_t(), o.storage_nbytes,
                                                    Allocator().allocate(o.storage_nbytes),
                                                    &Allocator(), true));
        }
        impl->set_sizes_and_strides(o.sizes, o.strides, o.offset);
      }
      return self;
    }
  }
  return at::Tensor();
}

void CaptureContext::Capture(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t nargs = op.schema().arguments().size();
  const c10::IValue* args = stack->data() + (stack->size() - nargs);  // read in place

  key_.Clear();
  key_.Push(reinterpret_cast<intptr_t>(&op.schema()));
  bool cacheable = cache_enabled;
  for (size_t j = 0; j < nargs; ++j) cacheable = AppendKey(args[j]) && cacheable;
  if (replaying_) {
    if (cacheable && cursor_ == 0 && ReplayFirstOp(op, stack)) return;
    if (cacheable && cursor_ > 0 && cursor_ < template_->events.size()) {
      const TraceEvent& e = template_->events[cursor_];
      if (e.schema == &op.schema() &&
          key_.span() == absl::MakeConstSpan(template_->keys.data() + e.key_begin, e.key_size) &&
          TryReplay(op, *e.spec, stack)) {
        ++stats.cache_hits;
        ++stats.ops_replayed;
        return;
      }
    }
    Materialize(/*diverged=*/true);
  }
  if (cacheable) {
    auto it = cache.find(key_.span());
    if (it != cache.end()) {
      ++stats.cache_hits;
      Emit(op, it->second, stack);
      Record(&op.schema(), &it->second, it->first);
      return;
    }
  }
  CaptureMiss(op, stack, cacheable);
}

void CaptureContext::CaptureMiss(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                                 bool cacheable) {
  const SchemaInfo& info = InfoFor(op);
  const size_t nargs = op.schema().arguments().size();
  const torch::jit::Stack args(stack->end() - static_cast<std::ptrdiff_t>(nargs), stack->end());
  std::vector<int64_t> key(key_.span().begin(), key_.span().end());
  std::string error;
  std::optional<CachedOp> fresh = InferWithMeta(op, info, args, &error);
  if (!fresh) {
    recording_ok_ = false;  // the step runs part of itself on the client: not replayable
    CpuFallback(op, info, stack, error);
    return;
  }
  fresh->info = &info;
  if (cacheable) {
    auto it = cache.emplace(std::move(key), std::move(*fresh)).first;
    Emit(op, it->second, stack);
    Record(&op.schema(), &it->second, it->first);
  } else {
    recording_ok_ = false;
    Emit(op, *fresh, stack);
  }
}

template <class OnOutput>
void CaptureContext::PushOutputs(const CachedOp& spec, size_t nargs, torch::jit::Stack* stack,
                                 OnOutput&& on_output) {
  const c10::IValue* args = stack->data() + (stack->size() - nargs);
  auto make = [&](const OutputSpec& o) -> at::Tensor {
    const at::Tensor* aliased = nullptr;
    if (o.arg >= 0) {
      const c10::IValue& a = args[o.arg];
      aliased = a.isTensor() ? &a.toTensor() : nullptr;
      if (!aliased && a.isTensorList()) {
        // Views of a list argument (rare): alias its first element.
        static thread_local at::Tensor first;
        first = a.toTensorList().get(0);
        aliased = &first;
      }
    }
    const c10::StorageImpl* before = aliased ? aliased->storage().unsafeGetStorageImpl() : nullptr;
    at::Tensor t = MakeOutput(o, aliased);
    if (t.defined()) {
      // Fresh outputs, and out= tensors that had to grow into a new storage, are
      // produced by this node.
      const bool produced_here = o.kind == OutputSpec::Kind::kFresh ||
                                 (o.kind == OutputSpec::Kind::kInPlace &&
                                  t.storage().unsafeGetStorageImpl() != before);
      on_output(t, produced_here);
    }
    return t;
  };
  c10::SmallVector<c10::IValue, 4> results;
  for (const ReturnSpec& rs : spec.returns) {
    if (rs.is_list) {
      c10::List<at::Tensor> list;
      list.reserve(rs.count);
      for (int k = 0; k < rs.count; ++k) list.push_back(make(spec.outputs[rs.first + k]));
      results.emplace_back(std::move(list));
    } else {
      results.emplace_back(rs.count > 0 ? make(spec.outputs[rs.first]) : at::Tensor());
    }
  }
  torch::jit::drop(*stack, nargs);  // the arguments die only now: outputs alias them
  for (c10::IValue& r : results) stack->push_back(std::move(r));
}

// Records the node (unless `spec` says the op only makes views) and replaces the op's
// arguments on the stack with its outputs, made from `spec`.
void CaptureContext::Emit(const c10::OperatorHandle& op, const CachedOp& spec,
                          torch::jit::Stack* stack) {
  const SchemaInfo& info = *spec.info;
  const size_t nargs = op.schema().arguments().size();
  const c10::IValue* args = stack->data() + (stack->size() - nargs);

  // The node: arguments are recorded before outputs exist (in-place ops read `self`).
  core::Node node;
  if (spec.has_node) {
    if (spec.op_generation != graph_generation_) {
      spec.op_id = OpIdFor(&op.schema(), info.name);
      spec.op_generation = graph_generation_;
    }
    node.op = spec.op_id;
    node.scope = CurrentScope();
    node.args.reserve(nargs);
    node.outputs.reserve(spec.outputs.size());
    for (size_t j = 0; j < nargs; ++j) {
      const c10::IValue& v = args[j];
      Arg& a = node.args.emplace_back();
      // The common kinds are built in place; ToArg does the rest (and the generator).
      if (static_cast<int>(j) != info.generator_arg) {
        if (v.isTensor()) {
          const at::Tensor& t = v.toTensor();
          if (t.defined() && IsRemote(t)) {
            a.kind = core::ArgKind::kTensor;
            FillRef(t, /*produced_here=*/false, &a.tensors.emplace_back());
            continue;
          }
        } else if (v.isInt()) {
          a.kind = core::ArgKind::kInt;
          a.i = v.toInt();
          continue;
        } else if (v.isBool()) {
          a.kind = core::ArgKind::kBool;
          a.i = v.toBool() ? 1 : 0;
          continue;
        } else if (v.isNone()) {
          continue;  // kNone
        } else if (v.isDouble()) {
          a.kind = core::ArgKind::kDouble;
          a.d = v.toDouble();
          continue;
        }
      }
      a = ToArg(v, static_cast<int>(j), info);
    }
    for (int j : info.write_args) {
      if (args[j].isTensor() && IsRemote(args[j].toTensor())) {
        node.writes.push_back(BufferFor(args[j].toTensor()));
      }
    }
  }
  PushOutputs(spec, nargs, stack, [&](const at::Tensor& t, bool produced_here) {
    if (spec.has_node) FillRef(t, produced_here, &node.outputs.emplace_back());
  });
  if (spec.has_node) {
    ChainNode(node);
    graph.AddNode(std::move(node));
    ++stats.ops_captured;
  } else {
    ++stats.views;
  }
}

// ---------------------------------------------------------------------------------
// Step replay.
void CaptureContext::Record(const c10::FunctionSchema* schema, const CachedOp* spec,
                            absl::Span<const int64_t> key) {
  if (!recording_ok_) return;
  TraceEvent& e = recording_.events.emplace_back();
  e.schema = schema;
  e.spec = spec;
  e.key_begin = static_cast<uint32_t>(recording_.keys.size());
  e.key_size = static_cast<uint32_t>(key.size());
  recording_.keys.insert(recording_.keys.end(), key.begin(), key.end());
  e.nodes_after = static_cast<uint32_t>(graph.nodes().size());
  e.buffers_after = static_cast<uint32_t>(graph.buffers().size());
  e.chain_after = chain_;
}

void CaptureContext::LookUpReplayScope() {
  // None: the scope is new, an id no template node has.
  const core::Graph& g = template_->graph;
  replay_scope_ = static_cast<core::ScopeId>(g.num_scopes());
  for (core::ScopeId s = 0; s < g.num_scopes(); ++s) {
    if (g.ScopeName(s) == scope_path) {
      replay_scope_ = s;
      break;
    }
  }
  replay_scope_version_ = scope_version;
}

bool CaptureContext::ReplayExpect(const at::Tensor& t, BufferId expected) {
  const core::Graph& g = template_->graph;
  const BufferId next = static_cast<BufferId>(replay_handles_.size() + replay_new_.size());
  if (!IsRemote(t)) {  // a host constant: a new kHostInput buffer (AddHostConstant)
    if (expected != next || expected >= g.buffers().size()) return false;
    const core::Buffer& b = g.buffer(expected);
    if (b.kind != BufferKind::kHostInput || b.numel != t.numel() ||
        b.dtype != ToDType(t.scalar_type()) || b.handle != 0) {
      return false;
    }
    replay_new_.push_back({nullptr, &t, expected});
    return true;
  }
  StorageContext* sc = ContextOf(t);
  if (sc->generation == graph_generation_) {
    return sc->buffer == expected && sc->dtype == static_cast<uint8_t>(t.scalar_type());
  }
  for (const ReplayNew& n : replay_new_) {
    if (n.sc == sc) return n.id == expected;  // a second reference in the same op
  }
  if (expected != next || expected >= g.buffers().size()) return false;
  // The buffer NewBufferFor would make must be the template's.
  const core::Buffer& b = g.buffer(expected);
  const bool pending = sc->pending.defined();
  const BufferKind kind = pending ? (sc->name.empty() ? BufferKind::kHostInput : BufferKind::kParameter)
                                  : (sc->resident ? BufferKind::kResident : BufferKind::kIntermediate);
  if (b.kind != kind || b.dtype != ToDType(t.scalar_type()) ||
      b.numel != static_cast<int64_t>(t.unsafeGetTensorImpl()->unsafe_storage().nbytes()) /
                     static_cast<int64_t>(t.itemsize()) ||
      b.name != sc->name) {
    return false;
  }
  replay_new_.push_back({sc, nullptr, expected});
  return true;
}

void CaptureContext::CommitReplayNew() {
  for (const ReplayNew& n : replay_new_) {
    buffer_owner_.push_back(n.sc);
    if (n.sc == nullptr) {
      replay_handles_.push_back(0);
      constants_[n.id] = n.host->contiguous().clone();
      continue;
    }
    replay_handles_.push_back(n.sc->handle);
    n.sc->generation = n.sc->seen_generation = graph_generation_;
    n.sc->buffer = n.id;
    n.sc->dtype = static_cast<uint8_t>(template_->graph.buffer(n.id).dtype);  // codes mirror c10
    if (n.sc->pending.defined()) constants_[n.id] = n.sc->pending;
  }
  replay_new_.clear();
}

void CaptureContext::ReplayAssignOutput(const at::Tensor& t) {
  StorageContext* sc = ContextOf(t);
  const BufferId id = static_cast<BufferId>(replay_handles_.size());
  replay_handles_.push_back(sc->handle);
  buffer_owner_.push_back(sc);
  sc->generation = sc->seen_generation = graph_generation_;
  sc->buffer = id;
  sc->dtype = static_cast<uint8_t>(t.scalar_type());
}

// The op matched the template's next event by schema and key (so its output metadata,
// scalars and views are the template's). What is left: the storages, which must play
// the template's roles, and the scope. Checks first, then commits; false changes nothing.
bool CaptureContext::TryReplay(const c10::OperatorHandle& op, const CachedOp& spec,
                               torch::jit::Stack* stack) {
  const TraceEvent& e = template_->events[cursor_];
  const SchemaInfo& info = *spec.info;
  const size_t nargs = op.schema().arguments().size();
  if (spec.has_node) {
    if (info.generator_arg >= 0) return false;  // draws a new seed: a different node
    const core::Node& tn = template_->graph.node(e.nodes_after - 1);
    if (tn.scope != ReplayScope() || tn.args.size() != nargs) return false;
    const c10::IValue* args = stack->data() + (stack->size() - nargs);
    replay_new_.clear();
    auto expect = [&](const at::Tensor& t, const core::Arg& a, size_t k) {
      return k < a.tensors.size() && ReplayExpect(t, a.tensors[k].buffer);
    };
    for (size_t j = 0; j < nargs; ++j) {
      const c10::IValue& v = args[j];
      const core::Arg& a = tn.args[j];
      if (v.isTensor()) {
        const at::Tensor& t = v.toTensor();
        if (t.defined() && !expect(t, a, 0)) return false;
      } else if (v.isTensorList()) {
        size_t k = 0;
        for (const at::Tensor& t : v.toTensorList()) {
          if (!IsRemote(t) || !expect(t, a, k++)) return false;
        }
      } else if (v.isList() && !v.isIntList() && !v.isDoubleList() && !v.isBoolList()) {
        size_t k = 0;
        for (const c10::IValue& el : v.toListRef()) {
          if (el.isTensor() && el.toTensor().defined() && !expect(el.toTensor(), a, k)) return false;
          ++k;
        }
      }
    }
    CommitReplayNew();
  }
  PushOutputs(spec, nargs, stack, [&](const at::Tensor& t, bool produced_here) {
    if (spec.has_node && produced_here) ReplayAssignOutput(t);
  });
  chain_ = e.chain_after;
  ++cursor_;
  if (spec.has_node) ++stats.ops_captured;
  else ++stats.views;
  return true;
}

bool CaptureContext::TryReplayCopy(const at::Tensor& self, const at::Tensor& dst) {
  CopyKey(self, dst);
  if (cursor_ == 0 && !FindTemplate(nullptr)) return false;
  if (cursor_ >= template_->events.size()) return false;
  const TraceEvent& e = template_->events[cursor_];
  if (e.schema != nullptr) return false;
  if (key_.span() != absl::MakeConstSpan(template_->keys.data() + e.key_begin, e.key_size)) return false;
  const core::Node& tn = template_->graph.node(e.nodes_after - 1);
  if (tn.scope != ReplayScope() || tn.args.size() != 3) return false;
  replay_new_.clear();
  if (!ReplayExpect(dst, tn.args[0].tensors[0].buffer) || !ReplayExpect(self, tn.args[1].tensors[0].buffer)) {
    return false;
  }
  CommitReplayNew();
  chain_ = e.chain_after;
  ++cursor_;
  ++stats.ops_captured;
  ++stats.ops_replayed;
  return true;
}

template <class T>
const at::Tensor* TensorArg(const T& v) {
  if constexpr (std::is_same_v<T, at::Tensor>) {
    return &v;
  } else if constexpr (std::is_same_v<T, std::optional<at::Tensor>>) {
    return v.has_value() ? &*v : nullptr;
  } else {
    return nullptr;
  }
}

template <class... Args>
bool CaptureContext::TryReplayUnboxed(const c10::FunctionSchema* schema, at::Tensor* out,
                                      const Args&... args) {
  // The first op of a graph picks its template by key (FindTemplate): the boxed path.
  if (!replaying_ || !cache_enabled || cursor_ == 0 || cursor_ >= template_->events.size()) return false;
  const TraceEvent& e = template_->events[cursor_];
  if (e.schema != schema) return false;
  const CachedOp& spec = *e.spec;
  if (!spec.has_node || spec.info->generator_arg >= 0 || spec.returns.size() != 1 ||
      spec.returns[0].is_list || spec.returns[0].count != 1) {
    return false;
  }
  const core::Node& tn = template_->graph.node(e.nodes_after - 1);
  if (tn.scope != ReplayScope() || tn.args.size() != sizeof...(Args)) return false;
  const OutputSpec& o = spec.outputs[spec.returns[0].first];
  const at::Tensor* tensors[] = {TensorArg(args)...};
  const at::Tensor* aliased = o.arg >= 0 ? tensors[o.arg] : nullptr;
  if ((o.kind == OutputSpec::Kind::kView || o.kind == OutputSpec::Kind::kInPlace) && !aliased) return false;
  replay_new_.clear();
  size_t j = 0;
  if (!(MatchArg(args, tn.args[j++]) && ...)) return false;
  CommitReplayNew();
  const c10::StorageImpl* before = aliased ? aliased->storage().unsafeGetStorageImpl() : nullptr;
  *out = MakeOutput(o, aliased);
  if (out->defined() && (o.kind == OutputSpec::Kind::kFresh ||
                         (o.kind == OutputSpec::Kind::kInPlace &&
                          out->storage().unsafeGetStorageImpl() != before))) {
    ReplayAssignOutput(*out);
  }
  chain_ = e.chain_after;
  ++cursor_;
  ++stats.ops_captured;
  ++stats.cache_hits;
  ++stats.ops_replayed;
  ++stats.ops_unboxed;
  return true;
}

void CaptureContext::Materialize(bool diverged) {
  if (!replaying_) return;
  replaying_ = false;
  if (diverged) {
    ++stats.replay_divergences;
    static const bool log = std::getenv("GENIE_LOG_REPLAY") != nullptr;
    if (log) {
      const size_t n = template_->events.size();
      const TraceEvent* e = cursor_ < n ? &template_->events[cursor_] : nullptr;
      std::fprintf(stderr, "genie: step replay stopped at event %zu of %zu (template: %s)\n", cursor_, n,
                   e == nullptr ? "ended; outputs or kept buffers differ"
                   : e->schema == nullptr ? "copy_"
                                          : e->spec->info->name.c_str());
    }
  }
  const Trace& t = *template_;
  const size_t k = cursor_;
  const TraceEvent* last = k > 0 ? &t.events[k - 1] : nullptr;
  TORCH_INTERNAL_ASSERT(replay_handles_.size() == (last ? last->buffers_after : 0u),
                        "genie: step replay lost track of buffers");
  graph = t.graph.Prefix(last ? last->nodes_after : 0, replay_handles_.size());
  for (BufferId b = 0; b < replay_handles_.size(); ++b) graph.mutable_buffer(b).handle = replay_handles_[b];
  chain_ = last ? last->chain_after : 0;
  recording_.events.assign(t.events.begin(), t.events.begin() + static_cast<std::ptrdiff_t>(k));
  recording_.keys.assign(t.keys.begin(),
                         t.keys.begin() + static_cast<std::ptrdiff_t>(last ? last->key_begin + last->key_size : 0));
  recording_ok_ = true;
}

void CaptureContext::ForgetTemplate() {
  Materialize();
  templates_.clear();
  template_ = nullptr;
  previous_ = nullptr;
  recording_ok_ = false;
}

bool CaptureContext::FindTemplate(const c10::FunctionSchema* schema) {
  auto starts_here = [&](const Trace& t) {
    const TraceEvent& e = t.events[0];
    return e.schema == schema && key_.span() == absl::MakeConstSpan(t.keys.data() + e.key_begin, e.key_size);
  };
  // The part that followed the last one the previous time comes first, then the last
  // template itself (a step of one graph), then the most recent others.
  if (Trace* next = template_->next; next != nullptr && next != template_ && starts_here(*next)) {
    template_ = next;
    replay_scope_version_ = 0;
    return true;
  }
  if (starts_here(*template_)) return true;
  for (auto it = templates_.rbegin(); it != templates_.rend(); ++it) {
    if (it->get() != template_ && starts_here(**it)) {
      template_ = it->get();
      replay_scope_version_ = 0;  // scope ids are the template's
      return true;
    }
  }
  return false;
}

bool CaptureContext::ReplayFirstOp(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  // Templates may start with the same op and key but take other kinds of buffers (a step's
  // first part reads an upload where a later part reads a tensor an earlier part left
  // resident): try each that starts here until one replays. A failed try changes nothing.
  const c10::FunctionSchema* schema = &op.schema();
  auto try_template = [&](Trace* t) {
    const TraceEvent& e = t->events[0];
    if (e.schema != schema || key_.span() != absl::MakeConstSpan(t->keys.data() + e.key_begin, e.key_size)) {
      return false;
    }
    template_ = t;
    replay_scope_version_ = 0;  // scope ids are the template's
    if (!TryReplay(op, *e.spec, stack)) return false;
    ++stats.cache_hits;
    ++stats.ops_replayed;
    return true;
  };
  Trace* const last = template_;
  if (last->next != nullptr && try_template(last->next)) return true;
  if (last->next != last && try_template(last)) return true;
  for (auto it = templates_.rbegin(); it != templates_.rend(); ++it) {
    if (it->get() != last && it->get() != last->next && try_template(it->get())) return true;
  }
  return false;
}

void CaptureContext::UseTemplate(Trace* t) {
  // Most recently used last; the least recently used goes when there are too many.
  auto it = std::find_if(templates_.begin(), templates_.end(),
                         [&](const std::unique_ptr<Trace>& p) { return p.get() == t; });
  if (it != templates_.end() && std::next(it) != templates_.end()) {
    std::unique_ptr<Trace> held = std::move(*it);
    templates_.erase(it);
    templates_.push_back(std::move(held));
  }
  template_ = t;
}

bool CaptureContext::UploadAhead(const at::Tensor& dst, const at::Tensor& src) {
  StorageContext* sc = ContextOf(dst);
  // Not when the graph under construction reads any earlier version of the storage (the
  // run would overtake it: the node keeps one version per handle), nor for parameters (a
  // module's weights go with its first run, as weights), nor for data that is not already
  // the bytes the storage needs.
  if (sc->seen_generation == graph_generation_ || !sc->name.empty() || src.requires_grad() ||
      !IsDenseBytesOf(src, dst.scalar_type(), dst.sizes())) {
    return false;
  }
  const size_t nbytes = static_cast<size_t>(src.nbytes());
  auto job = std::make_unique<Worker::Job>();
  job->executor = executor();
  if (nbytes == 0 || !job->executor->UploadsAhead(nbytes)) return false;
  auto graph_ahead = std::make_shared<core::Graph>();
  const core::DType dtype = ToDType(src.scalar_type());
  const BufferId id = graph_ahead->AddBuffer(
      core::Buffer{dtype, src.numel(), BufferKind::kHostInput, "", sc->handle});
  core::ExecuteRequest& req = job->request;
  req.graph = graph_ahead.get();
  req.fingerprint =
      absl::HashOf(std::string_view("genie upload ahead"), static_cast<int>(dtype), src.numel());
  // The caller's own memory: Execute has sent it when it returns (UploadsAhead's promise).
  req.uploads.push_back(
      {id, core::HostBytes{src.const_data_ptr(), nbytes, std::make_shared<at::Tensor>(src)}});
  req.keep = {id};
  req.may_defer = true;
  // No releases: the graph under construction may still read what they name.
  job->graph = std::move(graph_ahead);
  std::optional<Worker::Result> result;
  {
    timeline::Span span("upload ahead", "bytes", static_cast<int64_t>(nbytes));
    result = worker_.RunHereIfIdle(*job);
  }
  if (!result.has_value()) return false;  // dispatched graphs go first: snapshot instead
  if (observer) observer(*job->graph, req);
  if (!result->ok()) {
    // The bytes may not have arrived: the snapshot uploads them with the next run, which
    // fails the same way if the executor is gone.
    if (first_error_.ok()) {
      first_error_ = absl::Status(
          result->status().code(),
          absl::StrCat("uploading ", nbytes, " bytes ahead to ", job->executor->Describe(),
                       " failed: ", result->status().message()));
    }
    return false;
  }
  Account(**result);
  sc->pending = at::Tensor();
  sc->resident = true;
  return true;
}

void CaptureContext::UploadInto(const at::Tensor& dst, const at::Tensor& cpu_src) {
  const bool whole = dst.is_contiguous() && dst.storage_offset() == 0 &&
                     static_cast<size_t>(dst.numel() * dst.itemsize()) == dst.storage().nbytes();
  if (whole) {
    if (UploadAhead(dst, cpu_src)) return;
    // Overwrites the whole storage: bind it to a snapshot of the host data (a new
    // version with no dependence on the old one; the data uploads at the next run).
    at::Tensor data = SnapshotForUpload(cpu_src, dst.sizes(), dst.scalar_type());
    // Ops already captured keep reading the earlier version (its graph buffer); later
    // references get a new buffer bound to this data.
    StorageContext* sc = ContextOf(dst);
    if (sc->generation == graph_generation_ && buffer_owner_[sc->buffer] == sc) {
      buffer_owner_[sc->buffer] = nullptr;  // that version is overwritten: not kept
    }
    sc->generation = 0;  // the next reference gets the new buffer
    sc->pending = data;
    return;
  }
  at::Tensor src = cpu_src.to(dst.scalar_type()).expand(dst.sizes()).contiguous();
  Materialize();
  recording_ok_ = false;  // a node made outside the op stream: this step is not replayable
  core::Node n;
  n.op = graph.InternOp("aten::copy_");
  BufferId c = AddHostConstant(src);
  TensorRef dref = RefOf(dst);
  n.args = {Arg::Tensor(dref), Arg::Tensor(TensorRef::Contiguous(c, ToDType(src.scalar_type()), src.sizes().vec())),
            Arg::Bool(false)};
  n.outputs = {dref};
  n.writes = {dref.buffer};
  n.scope = CurrentScope();
  ChainNode(n);
  graph.AddNode(std::move(n));
  ++stats.ops_captured;
}

void CaptureContext::CopyFrom(const at::Tensor& self, const at::Tensor& dst) {
  if (IsRemote(self) && IsRemote(dst)) {
    if (replaying_) {
      if (TryReplayCopy(self, dst)) return;
      Materialize(/*diverged=*/true);
    }
    core::Node n;
    n.op = graph.InternOp("aten::copy_");
    TensorRef dref = RefOf(dst);
    n.args = {Arg::Tensor(dref), Arg::Tensor(RefOf(self)), Arg::Bool(false)};
    n.outputs = {dref};
    n.writes = {dref.buffer};
    n.scope = CurrentScope();
    ChainNode(n);
    graph.AddNode(std::move(n));
    ++stats.ops_captured;
    CopyKey(self, dst);
    Record(nullptr, nullptr, key_.span());
  } else if (IsRemote(dst)) {
    TORCH_CHECK(self.device().is_cpu(), "genie: copying from ", self.device(),
                " to remote_accelerator is not supported; copy through the CPU");
    UploadInto(dst, self);
  } else {
    TORCH_CHECK(dst.device().is_cpu(), "genie: copying remote_accelerator to ", dst.device(),
                " is not supported; copy to the CPU first");
    at::Tensor cpu = Run({self})[0];
    dst.copy_(cpu);
  }
}

at::Tensor CaptureContext::Download(const at::Tensor& self) { return Run({self})[0]; }

at::Scalar CaptureContext::LocalScalarDense(const at::Tensor& self) {
  return Run({self})[0].item();
}

void CaptureContext::NameParameter(const at::Tensor& t, const std::string& name) {
  if (!IsRemote(t)) return;
  StorageContext* sc = ContextOf(t);
  sc->name = name;
  if (sc->generation == graph_generation_) {
    Materialize();
    core::Buffer& b = graph.mutable_buffer(sc->buffer);
    b.name = name;
    if (b.kind == BufferKind::kHostInput) b.kind = BufferKind::kParameter;
  }
}

void CaptureContext::CpuFallback(const c10::OperatorHandle& op, const SchemaInfo& info,
                                 torch::jit::Stack* stack, const std::string& reason) {
  if (warned_.insert(info.name).second) {
    TORCH_WARN("genie: ", info.name, " cannot run on remote_accelerator (", reason,
               "); running it on the client CPU. Its inputs are fetched and its outputs "
               "uploaded, which costs a round trip.");
  }
  ++stats.cpu_fallbacks;
  const size_t nargs = op.schema().arguments().size();
  torch::jit::Stack args(stack->end() - static_cast<std::ptrdiff_t>(nargs), stack->end());

  // Fetch every remote tensor argument in one run.
  std::vector<at::Tensor> remote;
  for (const c10::IValue& v : args) {
    if (v.isTensor() && IsRemote(v.toTensor())) remote.push_back(v.toTensor());
    if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) if (IsRemote(t)) remote.push_back(t);
    }
    if (v.isList() && !v.isIntList() && !v.isDoubleList() && !v.isBoolList() && !v.isTensorList()) {
      for (const c10::IValue& e : v.toListRef()) {
        if (e.isTensor() && IsRemote(e.toTensor())) remote.push_back(e.toTensor());
      }
    }
  }
  std::vector<at::Tensor> local = remote.empty() ? std::vector<at::Tensor>() : Run(remote);
  size_t next = 0;
  auto to_cpu = [&](const at::Tensor& t) { return IsRemote(t) ? local[next++] : t; };
  torch::jit::Stack cpu = MapTensorArgs(args, to_cpu, at::kCPU);
  scratch_args_ = cpu;  // out= returns alias the arguments: keep them alive
  try {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(&cpu);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "genie: ", info.name, " cannot run on remote_accelerator (", reason,
                ") and running it on the client CPU failed too: ", e.what_without_backtrace());
  }
  torch::jit::drop(*stack, nargs);
  const size_t nret = op.schema().returns().size();
  for (size_t i = 0; i < nret; ++i) {
    const c10::IValue& r = cpu[i];
    const int alias = info.return_alias[i];
    auto upload = [&](const at::Tensor& t) -> at::Tensor {
      if (!t.defined()) return t;
      TORCH_CHECK(t.layout() == c10::kStrided, "genie: ", info.name, " produces a ", t.layout(),
                  " tensor; remote_accelerator holds strided tensors only. Run it on CPU "
                  "tensors (.to(torch::kCPU)) instead");
      at::Tensor out = NewRemoteTensor(t.scalar_type(), t.sizes(), c10::contiguous_strides(t.sizes()),
                                       0, static_cast<int64_t>(t.numel() * t.itemsize()));
      UploadInto(out, t);
      return out;
    };
    if (r.isTensor() && alias >= 0 && info.return_write[i] && args[alias].isTensor() &&
        IsRemote(args[alias].toTensor())) {
      const at::Tensor& dst = args[alias].toTensor();
      UploadInto(dst, r.toTensor());
      stack->emplace_back(dst);
    } else if (r.isTensor()) {
      stack->emplace_back(upload(r.toTensor()));
    } else if (r.isTensorList()) {
      std::vector<at::Tensor> l;
      for (const at::Tensor& t : r.toTensorList()) l.push_back(upload(t));
      stack->emplace_back(c10::List<at::Tensor>(l));
    } else {
      stack->push_back(r);
    }
  }
}

void CaptureContext::ResetGraph() {
  // The next graph is usually the same program again (a decode step): size it alike.
  const size_t nodes = graph.nodes().size(), buffers = graph.buffers().size();
  graph = core::Graph();
  graph.Reserve(nodes, buffers);
  ++graph_generation_;
  recording_.events.clear();
  recording_.keys.clear();
  recording_ok_ = cache_enabled && replay_enabled;
  replaying_ = template_ != nullptr && recording_ok_;
  cursor_ = 0;
  replay_handles_.clear();
  replay_scope_version_ = 0;
  buffer_owner_.clear();
  constants_.clear();
  op_ids_.clear();
  scope_cache_version_ = 0;
  chain_ = 0;
}

std::unique_ptr<Worker::Job> CaptureContext::PrepareJob(const std::vector<at::Tensor>& wanted) {
  if (timeline::Enabled()) {
    const int64_t now = timeline::NowNanos();
    if (last_flush_ns_ != 0) {
      // (No node count: a replayed step's graph is only materialized when it diverges.)
      timeline::Record(wanted.empty() ? "capture, then dispatch" : "capture, then read",
                       last_flush_ns_, now);
    }
    last_flush_ns_ = now;
  }
  if (replaying_) {
    if (std::unique_ptr<Worker::Job> job = PrepareReplayedJob(wanted)) return job;
    // A graph of no ops (reading back what an earlier part computed) replays nothing.
    Materialize(/*diverged=*/cursor_ > 0);
  }
  graph.outputs().clear();
  for (const at::Tensor& t : wanted) graph.outputs().push_back(RefOf(t));

  std::vector<BufferId> keep = KeptBuffers();
  std::vector<BufferId> remap;
  auto run = std::make_shared<const core::Graph>(core::EliminateDeadCode(graph, keep, &remap));
  const int64_t eliminated = static_cast<int64_t>(graph.nodes().size() - run->nodes().size());
  stats.nodes_eliminated += eliminated;
  std::vector<BufferId> run_keep;
  for (BufferId b : keep) {
    if (remap[b] != core::kNoBuffer) run_keep.push_back(remap[b]);
  }
  // The program's identity: the captured chain, what stays, and the views read back.
  std::vector<uint64_t>& tail = chain_scratch_;
  tail.assign(run_keep.begin(), run_keep.end());
  tail.push_back(0x6f757470ull + run->outputs().size());
  for (const TensorRef& o : run->outputs()) AppendView(&tail, o);
  const uint64_t fingerprint = absl::Hash<std::pair<uint64_t, uint64_t>>{}(
      {chain_, absl::Hash<absl::Span<const uint64_t>>{}(absl::MakeConstSpan(tail))});

  std::unique_ptr<Worker::Job> job = FinishJob(run, run_keep, remap, fingerprint);
  MarkResident(keep, remap);
  if (recording_ok_ && !recording_.events.empty()) {
    // This graph is the template the next capture replays.
    auto t = std::make_unique<Trace>();
    t->events = std::move(recording_.events);
    t->keys = std::move(recording_.keys);
    t->graph = graph;  // shares the nodes; `graph` is reset below
    t->keep = std::move(keep);
    t->remap = std::move(remap);
    t->run_keep = std::move(run_keep);
    t->run = std::move(run);
    t->fingerprint = fingerprint;
    t->nodes_eliminated = eliminated;
    templates_.push_back(std::move(t));
    if (templates_.size() > kMaxTemplates) {
      const Trace* gone = templates_.front().get();
      for (const std::unique_ptr<Trace>& kept : templates_) {
        if (kept->next == gone) kept->next = nullptr;
      }
      if (previous_ == gone) previous_ = nullptr;
      templates_.pop_front();
    }
    template_ = templates_.back().get();
    LinkTemplates();
  } else {
    previous_ = nullptr;
  }
  ResetGraph();
  return job;
}

// The step repeated the template to its end. It is the same program if it reads back
// the same views and keeps the same buffers: then the template's pruned graph runs with
// this step's storages, and nothing is rebuilt. Null when it is not the same program.
std::unique_ptr<Worker::Job> CaptureContext::PrepareReplayedJob(const std::vector<at::Tensor>& wanted) {
  const Trace& t = *template_;
  if (cursor_ != t.events.size() || wanted.size() != t.graph.outputs().size()) return nullptr;
  for (size_t i = 0; i < wanted.size(); ++i) {
    const at::Tensor& w = wanted[i];
    if (!IsRemote(w)) return nullptr;
    const StorageContext* sc = ContextOf(w);
    const TensorRef& o = t.graph.outputs()[i];
    if (sc->generation != graph_generation_ || sc->buffer != o.buffer ||
        o.dtype != ToDType(w.scalar_type()) || o.storage_offset != w.storage_offset() ||
        !std::equal(o.sizes.begin(), o.sizes.end(), w.sizes().begin(), w.sizes().end()) ||
        !std::equal(o.strides.begin(), o.strides.end(), w.strides().begin(), w.strides().end())) {
      return nullptr;
    }
  }
  std::vector<BufferId> keep = KeptBuffers();
  if (keep != t.keep) return nullptr;

  auto run = std::make_shared<core::Graph>(*t.run);  // shares the template's nodes
  for (BufferId b = 0; b < replay_handles_.size(); ++b) {
    if (t.remap[b] != core::kNoBuffer) run->mutable_buffer(t.remap[b]).handle = replay_handles_[b];
  }
  stats.nodes_eliminated += t.nodes_eliminated;
  std::unique_ptr<Worker::Job> job = FinishJob(std::move(run), t.run_keep, t.remap, t.fingerprint);
  MarkResident(keep, t.remap);
  UseTemplate(template_);
  LinkTemplates();
  ResetGraph();
  return job;
}

std::vector<BufferId> CaptureContext::KeptBuffers() const {
  std::vector<BufferId> keep;
  for (BufferId b = 0; b < buffer_owner_.size(); ++b) {
    if (buffer_owner_[b] != nullptr) keep.push_back(b);
  }
  return keep;
}

void CaptureContext::MarkResident(const std::vector<BufferId>& keep,
                                  const std::vector<BufferId>& remap) {
  // Executors run jobs in order, so later graphs may already name these as resident.
  // A kept buffer the run does not touch (host data nothing read yet) stays as it was:
  // its data uploads with the first graph that reads it.
  for (BufferId b : keep) {
    if (remap[b] == core::kNoBuffer) continue;
    StorageContext* sc = buffer_owner_[b];
    sc->resident = true;
    sc->pending = at::Tensor();
  }
}

std::unique_ptr<Worker::Job> CaptureContext::FinishJob(std::shared_ptr<const core::Graph> run,
                                                       const std::vector<BufferId>& run_keep,
                                                       const std::vector<BufferId>& remap,
                                                       uint64_t fingerprint) {
  auto job = std::make_unique<Worker::Job>();
  core::ExecuteRequest& req = job->request;
  req.graph = run.get();
  req.keep = run_keep;
  req.release = released_;
  req.fingerprint = fingerprint;
  // Uploads: whole storages bound to host data, and host constants.
  for (const auto& [old_id, data] : constants_) {
    const BufferId id = old_id < remap.size() ? remap[old_id] : core::kNoBuffer;
    if (id == core::kNoBuffer) continue;  // nothing live reads it
    auto owner = std::make_shared<at::Tensor>(data);
    // Read-only access: a copy-on-write snapshot stays shared with the caller's tensor.
    req.uploads.push_back(
        {id, core::HostBytes{data.const_data_ptr(), static_cast<size_t>(data.nbytes()),
                             std::shared_ptr<const void>(owner, owner.get())}});
  }
  std::sort(req.uploads.begin(), req.uploads.end(),
            [](const core::Upload& a, const core::Upload& b) { return a.buffer < b.buffer; });
  job->executor = executor();
  if (observer) observer(*run, req);
  static const bool dump = std::getenv("GENIE_DUMP_GRAPHS") != nullptr;
  if (dump) {
    std::fprintf(stderr, "genie: graph to %s (fingerprint %016llx, %zu uploads, %zu kept)\n%s\n",
                 job->executor->Describe().c_str(), static_cast<unsigned long long>(req.fingerprint),
                 req.uploads.size(), req.keep.size(), run->Dump().c_str());
  }
  released_.clear();
  job->graph = std::move(run);
  return job;
}

void CaptureContext::Account(const core::ExecuteResult& r) {
  ++stats.flushes;
  stats.nodes_executed += r.stats.nodes_executed;
  if (r.stats.program_cache_hit) ++stats.program_cache_hits;
  stats.bytes_uploaded += r.stats.bytes_uploaded;
  stats.bytes_downloaded += r.stats.bytes_downloaded;
}

void CaptureContext::Harvest(bool wait) {
  while (!in_flight_.empty()) {
    InFlight& f = in_flight_.front();
    if (!wait && f.result.wait_for(std::chrono::seconds(0)) != std::future_status::ready) break;
    Worker::Result r = f.result.get();
    if (r.ok()) {
      Account(*r);
    } else if (first_error_.ok()) {
      first_error_ = absl::Status(r.status().code(),
                                  absl::StrCat("running the dispatched ", f.what, " failed: ",
                                               r.status().message()));
    }
    in_flight_.pop_front();
  }
}

void CaptureContext::Dispatch() {
  std::unique_ptr<Worker::Job> job = PrepareJob({});
  job->request.may_defer = true;  // its failure is learnt at the next read or Join
  std::string what = absl::StrCat("graph of ", job->graph->nodes().size(), " ops on ",
                                  job->executor->Describe());
  const bool here = job->executor->AcceptsWithoutWaiting();
  in_flight_.push_back(
      {here ? worker_.RunHereOrSubmit(std::move(job)) : worker_.Submit(std::move(job)),
       std::move(what)});
  Harvest(/*wait=*/false);
}

absl::Status CaptureContext::Join() {
  Harvest(/*wait=*/true);
  absl::Status s = first_error_;
  first_error_ = absl::OkStatus();
  return s;
}

std::vector<at::Tensor> CaptureContext::Run(const std::vector<at::Tensor>& wanted) {
  next_part_nodes = 0;  // the step ends here: the next one starts with a first part
  std::unique_ptr<Worker::Job> job = PrepareJob(wanted);
  timeline::Span read_span("read results", "outputs", static_cast<int64_t>(wanted.size()));
  const size_t nodes = job->graph->nodes().size();
  const std::string where = job->executor->Describe();
  Worker::Result result = worker_.RunNowOrWait(std::move(job));
  // Everything dispatched before this graph has finished too (jobs run in order).
  absl::Status earlier = Join();
  TORCH_CHECK(earlier.ok(), "genie: ", earlier.message(),
              ". Results computed after it may be missing; move the inputs again and rerun.");
  TORCH_CHECK(result.ok(), "genie: running the captured graph (", nodes, " ops) on ", where,
              " failed: ", result.status().ToString(),
              ". Tensors it would have produced are unavailable; check the node and rerun.");
  Account(*result);

  std::vector<at::Tensor> out;
  TORCH_CHECK(result->outputs.size() == wanted.size(), "genie: executor returned ",
              result->outputs.size(), " outputs for ", wanted.size(), " requested");
  for (size_t i = 0; i < wanted.size(); ++i) {
    core::HostBytes& hb = result->outputs[i];
    const at::TensorOptions options = at::TensorOptions().dtype(wanted[i].scalar_type());
    const size_t expected = static_cast<size_t>(wanted[i].numel()) * c10::elementSize(wanted[i].scalar_type());
    TORCH_CHECK(hb.nbytes == expected, "genie: executor returned ", hb.nbytes,
                " bytes for an output of ", expected);
    if (hb.exclusive && hb.owner != nullptr && hb.nbytes != 0 &&
        reinterpret_cast<uintptr_t>(hb.data) % c10::elementSize(wanted[i].scalar_type()) == 0) {
      // The bytes are this result's alone (a block of a shared pool, or memory the remote
      // executor received them into): the tensor uses them in place.
      out.push_back(at::from_blob(
          const_cast<void*>(hb.data), wanted[i].sizes(),
          [owner = std::move(hb.owner)](void*) mutable { owner.reset(); }, options));
      continue;
    }
    at::Tensor t = at::empty(wanted[i].sizes(), options);
    if (hb.nbytes) std::memcpy(t.data_ptr(), hb.data, hb.nbytes);
    out.push_back(std::move(t));
  }
  if (timeline::Enabled()) last_flush_ns_ = timeline::NowNanos();  // capture resumes
  return out;
}

// ---------------------------------------------------------------------------------
// Kernels.
void CaptureFallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.Capture(op, stack);
  ctx.MaybeAutoDispatch();
}

at::Tensor EmptyMemoryFormat(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                             std::optional<c10::Layout> layout, std::optional<c10::Device> device,
                             std::optional<bool> pin_memory,
                             std::optional<c10::MemoryFormat> memory_format) {
  TORCH_CHECK(c10::layout_or_default(layout) == c10::Layout::Strided,
              "genie: remote_accelerator supports strided tensors only");
  TORCH_CHECK(!c10::pinned_memory_or_default(pin_memory), "genie: pinned memory is a CPU property");
  c10::DeviceGuard guard(c10::device_or_default(device));
  return at::detail::empty_generic(size, &Allocator(), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor EmptyStrided(c10::IntArrayRef size, c10::IntArrayRef stride,
                        std::optional<c10::ScalarType> dtype, std::optional<c10::Layout> layout,
                        std::optional<c10::Device> device, std::optional<bool> pin_memory) {
  TORCH_CHECK(c10::layout_or_default(layout) == c10::Layout::Strided,
              "genie: remote_accelerator supports strided tensors only");
  TORCH_CHECK(!c10::pinned_memory_or_default(pin_memory), "genie: pinned memory is a CPU property");
  c10::DeviceGuard guard(c10::device_or_default(device));
  return at::detail::empty_strided_generic(size, stride, &Allocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                           c10::dtype_or_default(dtype));
}

void CountView() {
  CaptureContext::Get().view_kernels.fetch_add(1, std::memory_order_relaxed);
}

at::Tensor AsStrided(const at::Tensor& self, c10::SymIntArrayRef size, c10::SymIntArrayRef stride,
                     std::optional<c10::SymInt> storage_offset) {
  CountView();
  return at::native::as_strided_tensorimpl(
      self, C10_AS_INTARRAYREF_SLOW(size), C10_AS_INTARRAYREF_SLOW(stride),
      storage_offset ? std::optional<int64_t>(storage_offset->guard_int(__FILE__, __LINE__))
                     : std::nullopt);
}

// The commonest views of a transformer step (t, transpose, select, permute), made
// directly: libtorch's own kernels for them go through the dispatcher again to as_strided.
using Geometry = c10::SmallVector<int64_t, 6>;

at::Tensor Restrided(const at::Tensor& self, const Geometry& sizes, const Geometry& strides,
                     int64_t offset) {
  CountView();
  return AliasOf(self, self.scalar_type(), sizes, strides, offset);
}

at::Tensor Transpose(const at::Tensor& self, int64_t dim0, int64_t dim1) {
  const int64_t n = self.dim();
  if (n == 0) return Restrided(self, {}, {}, self.storage_offset());
  dim0 = c10::maybe_wrap_dim(dim0, n);
  dim1 = c10::maybe_wrap_dim(dim1, n);
  Geometry sizes(self.sizes().begin(), self.sizes().end());
  Geometry strides(self.strides().begin(), self.strides().end());
  std::swap(sizes[dim0], sizes[dim1]);
  std::swap(strides[dim0], strides[dim1]);
  return Restrided(self, sizes, strides, self.storage_offset());
}

at::Tensor T(const at::Tensor& self) {
  TORCH_CHECK(self.dim() <= 2, "t() expects a tensor with <= 2 dimensions, but self is ",
              self.dim(), "D");
  return Transpose(self, 0, self.dim() < 2 ? 0 : 1);
}

at::Tensor Select(const at::Tensor& self, int64_t dim, c10::SymInt index_sym) {
  TORCH_CHECK_INDEX(self.dim() > 0, "select() cannot be applied to a 0-dim tensor.");
  dim = c10::maybe_wrap_dim(dim, self.dim());
  const int64_t size = self.size(dim);
  int64_t index = index_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_INDEX(index >= -size && index < size, "select(): index ", index,
                    " out of range for tensor of size ", self.sizes(), " at dimension ", dim);
  if (index < 0) index += size;
  Geometry sizes(self.sizes().begin(), self.sizes().end());
  Geometry strides(self.strides().begin(), self.strides().end());
  const int64_t offset = self.storage_offset() + index * strides[dim];
  sizes.erase(sizes.begin() + dim);
  strides.erase(strides.begin() + dim);
  return Restrided(self, sizes, strides, offset);
}

at::Tensor Permute(const at::Tensor& self, at::IntArrayRef dims) {
  const int64_t n = self.dim();
  TORCH_CHECK(static_cast<int64_t>(dims.size()) == n,
              "permute(): number of dimensions in the tensor input does not match the "
              "length of the desired ordering of dimensions i.e. input.dim() = ",
              n, " is not equal to len(dims) = ", dims.size());
  Geometry sizes(n), strides(n);
  c10::SmallVector<bool, 6> seen(n, false);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t d = c10::maybe_wrap_dim(dims[i], n);
    TORCH_CHECK(!seen[d], "permute(): duplicate dims are not allowed.");
    seen[d] = true;
    sizes[i] = self.size(d);
    strides[i] = self.stride(d);
  }
  return Restrided(self, sizes, strides, self.storage_offset());
}

at::Tensor View(const at::Tensor& self, c10::SymIntArrayRef size) {
  CountView();
  return at::native::view(self, C10_AS_INTARRAYREF_SLOW(size));
}

at::Tensor ReshapeAlias(const at::Tensor& self, c10::SymIntArrayRef size, c10::SymIntArrayRef stride) {
  CountView();
  return at::native::_reshape_alias(self, C10_AS_INTARRAYREF_SLOW(size), C10_AS_INTARRAYREF_SLOW(stride));
}

const at::Tensor& Resize(const at::Tensor& self, c10::SymIntArrayRef size,
                         std::optional<at::MemoryFormat> memory_format) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  c10::IntArrayRef sizes = C10_AS_INTARRAYREF_SLOW(size);
  c10::DimVector strides = c10::contiguous_strides(sizes);
  if (memory_format == at::MemoryFormat::ChannelsLast && sizes.size() == 4) {
    auto cl = c10::get_channels_last_strides_2d(sizes);
    strides.assign(cl.begin(), cl.end());
  }
  int64_t numel = c10::multiply_integers(sizes);
  const int64_t need = (numel + self.storage_offset()) * self.itemsize();
  c10::TensorImpl* impl = self.unsafeGetTensorImpl();
  if (need > static_cast<int64_t>(self.storage().nbytes())) {
    TORCH_CHECK(self.storage().nbytes() == 0,
                "genie: resize_ cannot grow a remote tensor that holds data (", self.sizes(), " -> ",
                sizes, "); allocate a new tensor instead");
    impl->set_storage_keep_dtype(c10::Storage(c10::Storage::use_byte_size_t(), need,
                                              Allocator().allocate(need), &Allocator(), true));
  }
  impl->set_sizes_and_strides(sizes, strides, self.storage_offset());
  return self;
}

at::Tensor CopyFrom(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.CopyFrom(self, dst);
  return dst;
}

at::Tensor CopyFromAndResize(const at::Tensor& self, const at::Tensor& dst) {
  if (dst.sizes() != self.sizes()) {
    if (IsRemote(dst)) {
      Resize(dst, c10::fromIntArrayRefSlow(self.sizes()), std::nullopt);
    } else {
      dst.resize_(self.sizes());
    }
  }
  return CopyFrom(self, dst, false);
}

// `.to(kCPU)` of a remote tensor: the run's output is the result itself (no copy into a
// fresh CPU tensor; over a Shm pool it is the pool block the node wrote). Anything else
// (another dtype, a memory format, a non-contiguous source, remote to remote) takes
// libtorch's own _to_copy, which ends in _copy_from.
at::Tensor ToCopy(const at::Tensor& self, std::optional<at::ScalarType> dtype,
                  std::optional<at::Layout> layout, std::optional<at::Device> device,
                  std::optional<bool> pin_memory, bool non_blocking,
                  std::optional<at::MemoryFormat> memory_format) {
  const bool plain_download =
      device.has_value() && device->is_cpu() && IsRemote(self) &&
      (!dtype.has_value() || *dtype == self.scalar_type()) &&
      c10::layout_or_default(layout) == c10::Layout::Strided && !pin_memory.value_or(false) &&
      self.is_contiguous() &&
      (!memory_format.has_value() || *memory_format == at::MemoryFormat::Preserve ||
       *memory_format == at::MemoryFormat::Contiguous);
  if (plain_download) {
    CaptureContext& ctx = CaptureContext::Get();
    std::lock_guard<std::recursive_mutex> lock(ctx.mu);
    return ctx.Download(self);
  }
  return at::native::_to_copy(self, dtype, layout, device, pin_memory, non_blocking, memory_format);
}

at::Scalar LocalScalarDense(const at::Tensor& self) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  return ctx.LocalScalarDense(self);
}

// torch::equal on two views of the same storage with the same geometry is true without
// looking at data (libtorch's MultiheadAttention asks this to detect self-attention);
// anything else needs the data and goes through the CPU fallback.
void Equal(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::Tensor& a = (*stack)[stack->size() - 2].toTensor();
  const at::Tensor& b = (*stack)[stack->size() - 1].toTensor();
  if (IsRemote(a) && IsRemote(b) && a.storage().is_alias_of(b.storage()) &&
      a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.strides() == b.strides() &&
      a.storage_offset() == b.storage_offset()) {
    torch::jit::drop(*stack, 2);
    stack->emplace_back(true);
    return;
  }
  CaptureFallback(op, stack);
}

bool HasCompatibleShallowCopyType(const at::Tensor& self, const at::Tensor& from) {
  if (self.unsafeGetTensorImpl()->has_compatible_shallow_copy_type(from.key_set())) return true;
  auto dense = [](const at::Tensor& t) {
    return t.layout() == c10::kStrided && (t.device().is_cpu() || t.device().type() == kRemote);
  };
  return dense(self) && dense(from);
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", TORCH_FN(EmptyMemoryFormat));
  m.impl("empty_strided", TORCH_FN(EmptyStrided));
  m.impl("as_strided", TORCH_FN(AsStrided));
  m.impl("view", TORCH_FN(View));
  m.impl("_reshape_alias", TORCH_FN(ReshapeAlias));
  m.impl("t", TORCH_FN(T));
  m.impl("transpose.int", TORCH_FN(Transpose));
  m.impl("select.int", TORCH_FN(Select));
  m.impl("permute", TORCH_FN(Permute));
  m.impl("resize_", TORCH_FN(Resize));
  m.impl("_copy_from", TORCH_FN(CopyFrom));
  m.impl("_copy_from_and_resize", TORCH_FN(CopyFromAndResize));
  m.impl("_to_copy", TORCH_FN(ToCopy));
  m.impl("_local_scalar_dense", TORCH_FN(LocalScalarDense));
  m.impl("_has_compatible_shallow_copy_type", TORCH_FN(HasCompatibleShallowCopyType));
  m.impl("equal", torch::CppFunction::makeFromBoxedFunction<&Equal>());
}

// The capture kernel of the hottest ops, unboxed: while a step replays, the op is checked
// against the template and its output made from typed arguments, with no argument stack
// built and no result unboxed (TryReplayUnboxed). Anything else (a miss, a divergence, no
// replay) boxes the arguments and takes the same path as every other op.
// The dispatcher's handle of an ATen op named by its at::_ops struct, looked up once.
template <class OpT>
const c10::OperatorHandle& OpHandle() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow(OpT::name, OpT::overload_name);
  return op;
}

template <class OpT, class Sig = typename OpT::schema>
struct UnboxedKernel;
template <class OpT, class Ret, class... Args>
struct UnboxedKernel<OpT, Ret(Args...)> {
  static_assert(std::is_same_v<Ret, at::Tensor> || std::is_same_v<Ret, at::Tensor&>,
                "UnboxedKernel serves ops with one tensor output");
  static Ret Call(Args... args) {
    const c10::OperatorHandle& op = OpHandle<OpT>();
    static const c10::FunctionSchema* const schema = &op.schema();
    CaptureContext& ctx = CaptureContext::Get();
    std::lock_guard<std::recursive_mutex> lock(ctx.mu);
    at::Tensor out;
    if (ctx.TryReplayUnboxed(schema, &out, args...)) {
      ctx.MaybeAutoDispatch();
      return Result(std::move(out), args...);
    }
    torch::jit::Stack stack = c10::impl::boxArgs<Args...>(args...);
    ctx.Capture(op, &stack);
    ctx.MaybeAutoDispatch();
    return Result(std::move(stack.back()).toTensor(), args...);
  }

 private:
  // An in-place op returns its first argument (as libtorch's boxed wrappers do).
  template <class First, class... Rest>
  static Ret Result(at::Tensor&& out, First&& first, Rest&&...) {
    if constexpr (std::is_same_v<Ret, at::Tensor&>) {
      (void)out;
      return first;
    } else {
      return std::move(out);
    }
  }
};

template <class T>
bool RequiresGrad(const T& v) {
  if constexpr (std::is_same_v<T, at::Tensor>) {
    return v.defined() && v.requires_grad();
  } else if constexpr (std::is_same_v<T, std::optional<at::Tensor>>) {
    return v.has_value() && v->defined() && v->requires_grad();
  } else {
    return false;
  }
}

// The autograd layer of the same ops on remote tensors. When autograd has nothing to
// record (grad mode off, as under torch::NoGradGuard, or no input requiring grad) the op
// goes straight to its capture kernel; libtorch's autograd kernel would only have checked
// that and redispatched (and, for an in-place op, bumped `self`'s version, done here).
// When autograd must record, the op runs the autograd kernel libtorch registers for every
// backend. Composites captured whole (linear, layer_norm, sdpa) have none and, as before,
// are captured whole in every mode (the AutogradPrivateUse1 fallthrough's behaviour).
template <class OpT, class Sig = typename OpT::schema>
struct AutogradKernel;
template <class OpT, class Ret, class... Args>
struct AutogradKernel<OpT, Ret(Args...)> {
  static Ret Call(Args... args) {
    if (c10::GradMode::is_enabled() && (RequiresGrad(args) || ...) && HasAutograd()) {
      return Record(args...);
    }
    if constexpr (std::is_same_v<Ret, at::Tensor&>) BumpVersion(args...);
    return UnboxedKernel<OpT>::Call(args...);
  }

  // The op through the autograd kernel libtorch registers for every backend.
  static Ret Record(Args... args) {
    torch::jit::Stack stack = c10::impl::boxArgs<Args...>(args...);
    OpHandle<OpT>().callBoxedForDispatchKey(c10::DispatchKey::Autograd, stack);
    if constexpr (std::is_same_v<Ret, at::Tensor&>) {
      return std::get<0>(std::forward_as_tuple(args...));
    } else {
      return std::move(stack.back()).toTensor();
    }
  }

  static bool HasAutograd() {
    static const bool has = OpHandle<OpT>().hasKernelForDispatchKey(c10::DispatchKey::Autograd);
    return has;
  }

 private:
  template <class First, class... Rest>
  static void BumpVersion(First& self, Rest&...) {
    self.unsafeGetTensorImpl()->bump_version();
  }
};

// The autograd layer of the direct views (Transpose, T, Select, Permute, View). With grad
// mode off the view is made at once: autograd's view bookkeeping (base, shared version
// counter, creation mode) only serves graphs that cannot be recorded then. With grad mode
// on, libtorch's own autograd and view kernels run, so remote views behave as any.
template <class OpT, auto Kernel, class Sig = typename OpT::schema>
struct AutogradViewKernel;
template <class OpT, auto Kernel, class... Args>
struct AutogradViewKernel<OpT, Kernel, at::Tensor(Args...)> {
  static at::Tensor Call(Args... args) {
    static_assert(std::is_same_v<decltype(Kernel(args...)), at::Tensor>);
    if (c10::GradMode::is_enabled()) return AutogradKernel<OpT>::Record(args...);  // views have one
    return Kernel(args...);
  }
};

// The ops with typed kernels: their at::_ops struct and their name for registration.
// Composites among them (sdpa, linear, matmul, layer_norm, embedding) are captured whole
// instead of decomposed: as one node each they keep the graph small and plain to analyze
// (attention is one node; sdpa would otherwise even ask _fused_sdp_choice, an int, which
// would force a round trip), and the node's own dispatcher picks the kernel (flash
// attention on CUDA, MKL on CPU). The rest are the hottest primitives of a transformer step.
#define GENIE_TYPED_OPS(X)                                          \
  X(scaled_dot_product_attention, "scaled_dot_product_attention")   \
  X(linear, "linear")                                               \
  X(matmul, "matmul")                                               \
  X(layer_norm, "layer_norm")                                       \
  X(embedding, "embedding")                                         \
  X(add_Tensor, "add.Tensor")                                       \
  X(add__Tensor, "add_.Tensor")                                     \
  X(mul_Tensor, "mul.Tensor")                                       \
  X(gelu, "gelu")                                                   \
  X(index_copy_, "index_copy_")                                     \
  X(addmm, "addmm")                                                 \
  X(mm, "mm")                                                       \
  X(bmm, "bmm")                                                     \
  X(_softmax, "_softmax")                                           \
  X(relu, "relu")                                                   \
  X(tanh, "tanh")                                                   \
  X(clone, "clone")

// Also captured whole, through the boxed kernel. convolution: out-of-tree backends would
// reach convolution_overrideable, which no executor implements.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  for (const char* op : {"convolution", "batch_norm", "group_norm", "embedding_bag.padding_idx"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&CaptureFallback>());
  }
#define GENIE_UNBOXED(op, name) m.impl(name, TORCH_FN(UnboxedKernel<at::_ops::op>::Call));
  GENIE_TYPED_OPS(GENIE_UNBOXED)
#undef GENIE_UNBOXED
}

TORCH_LIBRARY_IMPL(aten, AutogradPrivateUse1, m) {
#define GENIE_AUTOGRAD(op, name) m.impl(name, TORCH_FN(AutogradKernel<at::_ops::op>::Call));
  GENIE_TYPED_OPS(GENIE_AUTOGRAD)
#undef GENIE_AUTOGRAD
  m.impl("t", TORCH_FN((AutogradViewKernel<at::_ops::t, &T>::Call)));
  m.impl("transpose.int", TORCH_FN((AutogradViewKernel<at::_ops::transpose_int, &Transpose>::Call)));
  m.impl("select.int", TORCH_FN((AutogradViewKernel<at::_ops::select_int, &Select>::Call)));
  m.impl("permute", TORCH_FN((AutogradViewKernel<at::_ops::permute, &Permute>::Call)));
  m.impl("view", TORCH_FN((AutogradViewKernel<at::_ops::view, &View>::Call)));
}
#undef GENIE_TYPED_OPS

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&CaptureFallback>());
}

// Ops with no autograd kernel of their own fall through to the capture kernels: autograd
// records nothing for them on remote tensors (Genie runs inference; run it under
// torch::NoGradGuard or c10::InferenceMode). Ops with one record as on any device, the
// typed ones only when they must (AutogradKernel).
TORCH_LIBRARY_IMPL(_, AutogradPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }

// Structured ops reach an out-of-tree backend through CompositeExplicitAutogradNonFunctional
// wrappers that run the meta function, allocate the output (an extra empty node) and
// call the .out variant. Capturing the op itself skips all three: one node, with the
// executor's kernel allocating its output.
void CaptureStructuredOpsDirectly() {
  static torch::Library* library = new torch::Library(
      torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1, __FILE__, __LINE__);
  c10::Dispatcher& dispatcher = c10::Dispatcher::singleton();
  for (const c10::OperatorName& name :
       dispatcher.getAllOpNamesForDispatchKey(c10::DispatchKey::CompositeExplicitAutogradNonFunctional)) {
    std::optional<c10::OperatorHandle> op = dispatcher.findOp(name);
    if (!op || op->hasKernelForDispatchKey(c10::DispatchKey::PrivateUse1)) continue;
    absl::string_view base = name.name;
    if (!absl::ConsumePrefix(&base, "aten::")) continue;
    const std::string qualified =
        name.overload_name.empty() ? std::string(base) : absl::StrCat(base, ".", name.overload_name);
    library->impl(qualified.c_str(), torch::CppFunction::makeFromBoxedFunction<&CaptureFallback>());
  }
}

const bool kRegistered = [] {
  c10::register_privateuse1_backend(kDeviceName);
  at::RegisterPrivateUse1HooksInterface(new RemoteHooks());
  CaptureStructuredOpsDirectly();
  return true;
}();

}  // namespace

const char* EnsureRegistered() {
  (void)kRegistered;
  return kDeviceName;
}

void SetExecutor(std::shared_ptr<core::Executor> executor) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.set_executor(std::move(executor));
}

std::shared_ptr<core::Executor> GetExecutor() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  return ctx.executor();
}

std::vector<at::Tensor> ToCpu(const std::vector<at::Tensor>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].defined() && IsRemote(tensors[i]), "genie::frontend::ToCpu: tensor ", i, " is ",
                tensors[i].defined() ? tensors[i].device().str() : std::string("undefined"),
                ", not a remote_accelerator tensor; read CPU tensors directly");
  }
  if (tensors.empty()) return {};
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  return ctx.Run(tensors);
}

void NameParameters(const torch::nn::Module& module, std::string_view prefix) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  const std::string p = prefix.empty() ? "" : std::string(prefix) + ".";
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    ctx.NameParameter(item.value(), p + item.key());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    ctx.NameParameter(item.value(), p + item.key());
  }
}

Scope::Scope(std::string_view name) {
  scope_stack.emplace_back(name);
  scope_path = scope_path.empty() ? std::string(name) : scope_path + "." + std::string(name);
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ++ctx.scope_version;
}

Scope::~Scope() {
  scope_stack.pop_back();
  scope_path.clear();
  for (const std::string& s : scope_stack) scope_path += (scope_path.empty() ? "" : ".") + s;
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ++ctx.scope_version;
}

absl::Status Dispatch() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  if (!ctx.has_work()) return absl::OkStatus();
  try {
    ctx.Dispatch();
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return absl::OkStatus();
}

absl::Status Join() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  absl::Status s = ctx.Join();
  // The executor may have accepted dispatched runs without waiting for them (a remote
  // node's runs without outputs): wait for those too.
  absl::Status accepted = ctx.executor()->Drain();
  return s.ok() ? accepted : s;
}

absl::Status Flush() {
  absl::Status s = Dispatch();
  absl::Status j = Join();
  return s.ok() ? j : s;
}

CaptureStats GetCaptureStats() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  CaptureStats stats = ctx.stats;
  stats.views += ctx.view_kernels.load(std::memory_order_relaxed);
  return stats;
}

void ResetCaptureStats() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.stats = CaptureStats();
  ctx.view_kernels.store(0, std::memory_order_relaxed);
}

void SetCaptureCacheEnabled(bool enabled) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  if (!enabled) ctx.ForgetTemplate();
  ctx.cache_enabled = enabled;
}

void ClearCaptureCache() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.ForgetTemplate();  // it points into the cache
  ctx.cache.clear();
}

void SetAutoDispatch(int64_t nodes, int64_t growth) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.auto_dispatch_nodes = nodes < 0 ? 0 : nodes;
  ctx.auto_dispatch_growth = growth < 1 ? 1 : growth;
  ctx.next_part_nodes = 0;
}

void SetCopyOnWriteSnapshots(bool enabled) { g_copy_on_write_snapshots.store(enabled); }

std::pair<int64_t, int64_t> GetAutoDispatch() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  return {ctx.auto_dispatch_nodes, ctx.auto_dispatch_growth};
}

void SetStepReplayEnabled(bool enabled) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  if (!enabled) ctx.ForgetTemplate();
  ctx.replay_enabled = enabled;
}

void SetGraphObserver(GraphObserver observer) {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.observer = std::move(observer);
}

std::string DumpPendingGraph() {
  CaptureContext& ctx = CaptureContext::Get();
  std::lock_guard<std::recursive_mutex> lock(ctx.mu);
  ctx.Materialize();
  return ctx.graph.Dump();
}

}  // namespace genie::frontend
