// File: genie/runtime/interpreter.h
// Executes captured graphs with ATen: the engine behind the in-process executor and the
// genie-node process. Buffers of a run live as at::Tensors; those the request keeps stay
// resident by handle (weights uploaded once, KV caches that never travel). Programs are
// prepared once per fingerprint: operator handles are resolved then, never per op per run.
//
//   runtime::Interpreter cpu;                                  // ATen on the CPU
//   absl::StatusOr<core::ExecuteResult> r = cpu.Execute(request);
//
// This header does not include libtorch.
#ifndef GENIE_RUNTIME_INTERPRETER_H_
#define GENIE_RUNTIME_INTERPRETER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "genie/core/executor.h"

namespace genie::runtime {

struct InterpreterOptions {
  std::string device = "cpu";      // "cpu" or "cuda:N"
  int64_t memory_budget_bytes = 0;  // resident + uploaded bytes allowed; 0 = unlimited
  size_t max_cached_programs = 256;
};

class Interpreter final : public core::Executor {
 public:
  explicit Interpreter(InterpreterOptions options = {});
  ~Interpreter() override;

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override;
  std::string Describe() const override;

  int64_t resident_bytes() const;
  size_t resident_buffers() const;
  size_t cached_programs() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_INTERPRETER_H_
