// File: genie/runtime/interpreter.cc
// The ATen interpreter: resolves a graph's ops once into a Program, then runs nodes in
// capture order on real tensors. Each buffer has a root tensor; every op argument is a
// view of a root rebuilt with as_strided (or the root itself when the geometry matches).
#include "genie/runtime/interpreter.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>

#include <cstring>
#include <list>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "genie/core/status.h"

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
};

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

}  // namespace

struct Interpreter::Impl {
  InterpreterOptions options;
  at::Device device = at::kCPU;
  mutable std::mutex mu;
  absl::flat_hash_map<uint64_t, at::Tensor> resident;
  absl::flat_hash_map<uint64_t, std::shared_ptr<const Program>> programs;
  std::list<uint64_t> program_order;

  int64_t ResidentBytes() const {
    int64_t total = 0;
    for (const auto& [h, t] : resident) total += static_cast<int64_t>(t.storage().nbytes());
    return total;
  }

  absl::StatusOr<std::shared_ptr<const Program>> Prepare(const core::Graph& g, uint64_t fp,
                                                         bool* hit) {
    auto it = programs.find(fp);
    if (fp != 0 && it != programs.end() && it->second->ops.size() == g.num_ops()) {
      *hit = true;
      return it->second;
    }
    *hit = false;
    auto p = std::make_shared<Program>();
    for (core::OpId id = 0; id < g.num_ops(); ++id) {
      GENIE_ASSIGN_OR_RETURN(c10::OperatorHandle h, Resolve(g.OpName(id)));
      std::vector<bool> gens;
      for (const c10::Argument& a : h.schema().arguments()) {
        c10::TypePtr t = a.real_type();
        if (t->kind() == c10::TypeKind::OptionalType) t = t->containedType(0);
        gens.push_back(t->kind() == c10::TypeKind::GeneratorType);
      }
      bool aliasing = false;
      for (const c10::Argument& r : h.schema().returns()) aliasing |= r.alias_info() != nullptr;
      p->ops.push_back(h);
      p->generator_args.push_back(std::move(gens));
      p->returns_alias_args.push_back(aliasing);
    }
    if (fp != 0) {
      programs[fp] = p;
      program_order.push_back(fp);
      while (programs.size() > options.max_cached_programs && !program_order.empty()) {
        programs.erase(program_order.front());
        program_order.pop_front();
      }
    }
    return std::shared_ptr<const Program>(p);
  }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& req) {
    if (req.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
    const core::Graph& g = *req.graph;
    std::lock_guard<std::mutex> lock(mu);
    c10::InferenceMode inference;
    core::ExecuteResult result;

    bool hit = false;
    GENIE_ASSIGN_OR_RETURN(std::shared_ptr<const Program> program, Prepare(g, req.fingerprint, &hit));
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
        return absl::InvalidArgumentError(absl::StrCat("upload for buffer b", b.id, " has ",
                                                       u.bytes.nbytes, " bytes, expected ", b.nbytes()));
      }
      at::Tensor t = at::empty({b.numel}, at::TensorOptions().dtype(ToScalarType(b.dtype)).device(device));
      if (u.bytes.nbytes) {
        if (device.is_cpu()) {
          std::memcpy(t.data_ptr(), u.bytes.data, u.bytes.nbytes);
        } else {
          at::Tensor host = at::from_blob(const_cast<void*>(u.bytes.data), {b.numel},
                                          at::TensorOptions().dtype(ToScalarType(b.dtype)));
          t.copy_(host);
        }
      }
      roots[b.id] = std::move(t);
    }

    auto view = [&](const TensorRef& r) -> absl::StatusOr<at::Tensor> {
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
        return absl::InvalidArgumentError(absl::StrCat("a view of buffer b", r.buffer,
                                                       " reaches past its storage"));
      }
      return root.as_strided(at::IntArrayRef(r.sizes.data(), r.sizes.size()),
                             at::IntArrayRef(r.strides.data(), r.strides.size()), r.storage_offset);
    };

    torch::jit::Stack stack;
    torch::jit::Stack alive;  // arguments of an op whose returns alias them
    for (const core::Node& n : g.nodes()) {
      const c10::OperatorHandle& op = program->ops[n.op];
      const std::vector<bool>& gens = program->generator_args[n.op];
      stack.clear();
      for (size_t j = 0; j < n.args.size(); ++j) {
        const Arg& a = n.args[j];
        switch (a.kind) {
          case ArgKind::kNone:
            stack.emplace_back();
            break;
          case ArgKind::kTensor: {
            GENIE_ASSIGN_OR_RETURN(at::Tensor t, view(a.tensors[0]));
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
              GENIE_ASSIGN_OR_RETURN(at::Tensor t, view(r));
              l.push_back(std::move(t));
            }
            stack.emplace_back(std::move(l));
            break;
          }
          case ArgKind::kOptionalTensorList: {
            c10::List<std::optional<at::Tensor>> l;
            for (size_t k = 0; k < a.tensors.size(); ++k) {
              if (k < a.present.size() && a.present[k]) {
                GENIE_ASSIGN_OR_RETURN(at::Tensor t, view(a.tensors[k]));
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
      if (program->returns_alias_args[n.op]) {
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
        if (SameGeometry(t, r) &&
            static_cast<int64_t>(t.storage().nbytes()) >= b.nbytes()) {
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
      ++result.stats.nodes_executed;
    }

    for (const TensorRef& r : g.outputs()) {
      GENIE_ASSIGN_OR_RETURN(at::Tensor t, view(r));
      at::Tensor host = t.to(at::kCPU).contiguous();
      auto owner = std::make_shared<at::Tensor>(host);
      result.outputs.push_back(core::HostBytes{host.data_ptr(), static_cast<size_t>(host.nbytes()),
                                               std::shared_ptr<const void>(owner, owner.get())});
      result.stats.bytes_downloaded += static_cast<int64_t>(host.nbytes());
    }
    for (core::BufferId b : req.keep) {
      if (b >= roots.size() || !roots[b].defined()) continue;
      const uint64_t h = g.buffer(b).handle;
      if (h != 0) resident[h] = roots[b];
    }
    // After the run: this graph may still have read storages that died during capture.
    for (uint64_t h : req.release) resident.erase(h);
    result.stats.bytes_uploaded = upload_bytes;
    result.stats.resident_bytes = ResidentBytes();
    return result;
  }

  std::string Describe() const { return absl::StrCat("local ATen interpreter (", device.str(), ")"); }
};

Interpreter::Interpreter(InterpreterOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->device = at::Device(options.device);
  impl_->options = std::move(options);
}

Interpreter::~Interpreter() = default;

absl::StatusOr<core::ExecuteResult> Interpreter::Execute(const core::ExecuteRequest& request) {
  return impl_->Execute(request);
}

std::string Interpreter::Describe() const { return impl_->Describe(); }

int64_t Interpreter::resident_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->ResidentBytes();
}

size_t Interpreter::resident_buffers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->resident.size();
}

size_t Interpreter::cached_programs() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->programs.size();
}

}  // namespace genie::runtime
