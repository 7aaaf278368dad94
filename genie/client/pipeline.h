// File: genie/client/pipeline.h
// A deployment is one type: which annotations graph nodes carry, which analyzers fill
// them, which scheduler places and keeps data, which transport moves it.
//
//   using MyPipeline = genie::Pipeline<
//       genie::Annotations<genie::semantic::ModulePath, genie::semantic::Phase,
//                          genie::semantic::Modality>,
//       genie::Analyzers<genie::semantic::ModulePathAnalyzer, genie::semantic::PhaseDetector,
//                        genie::semantic::ModalityDetector, genie::semantic::WorkloadClassifier>,
//       genie::scheduler::SemanticScheduler<genie::scheduler::ResidentWeights,
//                                           genie::scheduler::KvCacheColocation,
//                                           genie::scheduler::JustInTimeTransfers>,
//       genie::transport::Tcp>;
//
//   genie::PipelineExecutor<MyPipeline> exec({node});   // a core::Executor
//
// Each parameter is checked: a wrong policy fails to compile with a sentence.
#ifndef GENIE_CLIENT_PIPELINE_H_
#define GENIE_CLIENT_PIPELINE_H_

#include <array>
#include <chrono>
#include <deque>
#include <iterator>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "genie/core/annotations.h"
#include "genie/core/executor.h"
#include "genie/core/status.h"
#include "genie/core/type_traits.h"
#include "genie/scheduler/scheduler.h"
#include "genie/semantic/semantics.h"
#include "genie/transport/traits.h"

namespace genie {

template <class... As>
struct Annotations {};
template <class... Zs>
struct Analyzers {};

// An analyzer: a tag with kName and static Annotate(AnnotatedGraph&, const GraphSemantics&).
template <class Z, class G, class = void>
struct is_analyzer_for : std::false_type {};
template <class Z, class G>
struct is_analyzer_for<Z, G,
                       std::void_t<decltype(Z::kName),
                                   decltype(Z::Annotate(std::declval<G&>(),
                                                        std::declval<const semantic::GraphSemantics&>()))>>
    : std::true_type {};

template <class AnnotationSet, class AnalyzerSet, class Scheduler, class Transport>
struct Pipeline {
  static_assert(core::dependent_false<AnnotationSet>::value,
                "write genie::Pipeline<genie::Annotations<...>, genie::Analyzers<...>, "
                "Scheduler, Transport>");
};

template <class... As, class... Zs, class Scheduler, class Transport>
struct Pipeline<Annotations<As...>, Analyzers<Zs...>, Scheduler, Transport> {
  using annotated_graph = core::AnnotatedGraph<As...>;
  using scheduler_policy = Scheduler;
  using transport_policy = Transport;

  static_assert((is_analyzer_for<Zs, annotated_graph>::value && ...),
                "every Analyzers<...> parameter needs kName and static "
                "Annotate(AnnotatedGraph&, const semantic::GraphSemantics&)");
  static_assert(scheduler::is_scheduler_policy_v<Scheduler>,
                "the third Pipeline parameter must be a scheduler policy: "
                "scheduler::BlindScheduler or scheduler::SemanticScheduler<...>");
  static_assert(transport::is_transport_policy_v<Transport>,
                "the fourth Pipeline parameter must be a transport policy (transport::Tcp, ...)");

  static void Annotate(annotated_graph& graph, const semantic::GraphSemantics& semantics) {
    (Zs::Annotate(graph, semantics), ...);
  }
};

template <class P>
struct is_pipeline : std::false_type {};
template <class... Ts>
struct is_pipeline<Pipeline<Ts...>> : std::true_type {};
template <class P>
inline constexpr bool is_pipeline_v = is_pipeline<P>::value;

// Ops of one top-level module ("vision", "language", ...) in a run.
struct ModuleRecord {
  std::string name;
  int64_t ops = 0;
  semantic::ModalityKind modality = semantic::ModalityKind::kUnknown;  // most common
};

// What the pipeline saw and decided, for reports.
struct PipelineRecord {
  semantic::WorkloadClass workload = semantic::WorkloadClass::kUnknown;
  semantic::PhaseKind phase = semantic::PhaseKind::kNone;
  std::vector<ModuleRecord> modules;  // in first-seen order
  std::string summary;        // GraphSemantics::Summary
  std::string annotated;      // AnnotatedGraph::Dump (only when record_dumps)
  double milliseconds = 0;    // analysis + execution on the node
  core::ExecuteStats stats;
};

// The executor a pipeline turns into: analysis (cached per graph fingerprint), the
// deployment's annotations, then the scheduler.
//
// Pipelined dispatch (`pipelined`, with ModalityPlacement on several nodes): a graph with
// no outputs (what frontend::Dispatch hands over: its results stay resident) is placed
// and queued on the nodes' lanes, and Execute returns at once, so the next batch is
// captured and placed while this one runs (batch i+1's vision on node 0 while batch i's
// fusion runs on node 1). A graph that reads its results back is placed behind the queued
// ones on each node, so it sees them. A queued run's failure is returned by the next
// Execute and by Drain() (Session::Join calls it), naming it as an earlier dispatched run;
// runs placed behind a failed one fail too (see PlacementExecutor). Queued runs report no
// ExecuteStats.
template <class P>
class PipelineExecutor final : public core::Executor {
  static_assert(is_pipeline_v<P>, "PipelineExecutor<P> needs a genie::Pipeline<...>");

 public:
  explicit PipelineExecutor(std::vector<std::shared_ptr<core::Executor>> nodes, bool record_dumps = false,
                            bool pipelined = false)
      : scheduled_(std::move(nodes)), record_dumps_(record_dumps), pipelined_(pipelined) {}
  ~PipelineExecutor() override { (void)Drain(); }

  // Waits for every queued run, and for the nodes' runs accepted without waiting
  // (core::Executor::Drain); the first failure among them since the last call.
  absl::Status Drain() override {
    absl::Status queued;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      Reap(/*wait_for=*/0);
      queued = TakeDeferred();
    }
    absl::Status nodes = scheduled_.Drain();
    return queued.ok() ? nodes : queued;
  }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    const auto start = std::chrono::steady_clock::now();
    if (request.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ReapFinished();
      GENIE_RETURN_IF_ERROR(TakeDeferred());
    }
    const Analysis& analysis = AnalysisFor(request);
    const semantic::GraphSemantics& semantics = analysis.semantics;
    scheduler::PlacementExecutor* placer = pipelined_ ? scheduled_.placer() : nullptr;
    if (placer != nullptr && request.graph->outputs().empty()) return Queue(*placer, request, semantics);
    absl::StatusOr<core::ExecuteResult> result = scheduled_.Execute(request, semantics);
    PipelineRecord record;
    record.workload = semantics.workload;
    record.phase = semantics.phase_of_graph;
    record.modules = analysis.modules;
    record.summary = analysis.summary;
    record.annotated = analysis.annotated;
    record.milliseconds =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (result.ok()) record.stats = result->stats;
    std::lock_guard<std::mutex> lock(mu_);
    if (records_.size() >= kMaxRecords) {
      records_.pop_front();
      ++records_dropped_;
    }
    records_.push_back(std::move(record));
    return result;
  }

  bool AcceptsWithoutWaiting() const override { return scheduled_.AcceptsWithoutWaiting(); }
  bool UploadsAhead(size_t nbytes) const override { return scheduled_.UploadsAhead(nbytes); }

  // Runs pipelined dispatch queued and returned from at once, since the start.
  int64_t queued_runs() const {
    std::lock_guard<std::mutex> lock(queue_mu_);
    return queued_runs_;
  }

  std::string Describe() const override { return scheduled_.Describe(); }
  // The node's staging memory: `.to(remote)` snapshots land in its shared tensor pool.
  core::HostBuffer Staging(size_t nbytes) override { return scheduled_.Staging(nbytes); }
  // What the scheduler shipped, by kind (weights, KV cache, activations).
  scheduler::DataTraffic traffic() const { return scheduled_.traffic(); }
  // Where modules ran and what went node to node (ModalityPlacement on several nodes).
  scheduler::PlacementStats placement() const { return scheduled_.placement(); }
  // What decode batching did (scheduler::DecodeBatching; zeros without it).
  scheduler::DecodeBatchingStats decode_batching() const { return scheduled_.decode_batching(); }

  // The scheduler itself: runs analysed graphs (Execute), and with ModalityPlacement on
  // several nodes keeps runs in flight (placer()->Submit / Wait).
  ::genie::scheduler::ScheduledExecutor<typename P::scheduler_policy>& scheduler() { return scheduled_; }

  // Records are kept for the latest kMaxRecords runs: a long-running client that never takes
  // them holds no more.
  static constexpr size_t kMaxRecords = 4096;
  // Records let go because nobody took them.
  int64_t records_dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return records_dropped_;
  }
  std::vector<PipelineRecord> TakeRecords() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<PipelineRecord> out(std::make_move_iterator(records_.begin()),
                                    std::make_move_iterator(records_.end()));
    records_.clear();
    return out;
  }

 private:
  static std::vector<ModuleRecord> ModulesOf(const semantic::GraphSemantics& s) {
    std::vector<ModuleRecord> out;
    std::vector<std::array<int64_t, 5>> votes;
    for (size_t n = 0; n < s.module.size(); ++n) {
      const std::string top = s.module[n].substr(0, s.module[n].find('.'));
      if (top.empty()) continue;
      size_t i = 0;
      while (i < out.size() && out[i].name != top) ++i;
      if (i == out.size()) {
        out.push_back({top, 0, semantic::ModalityKind::kUnknown});
        votes.push_back({});
      }
      ++out[i].ops;
      ++votes[i][static_cast<size_t>(s.modality[n])];
    }
    for (size_t i = 0; i < out.size(); ++i) {
      size_t best = 0;
      for (size_t m = 1; m < votes[i].size(); ++m) best = votes[i][m] > votes[i][best] ? m : best;
      out[i].modality = static_cast<semantic::ModalityKind>(best);
    }
    return out;
  }

  // A graph's analysis and what its records say about it, made once per fingerprint.
  struct Analysis {
    semantic::GraphSemantics semantics;
    std::vector<ModuleRecord> modules;
    std::string summary;
    std::string annotated;  // the deployment's annotations, with record_dumps only
  };
  const Analysis& AnalysisFor(const core::ExecuteRequest& request) {
    auto it = analyses_.find(request.fingerprint);
    if (request.fingerprint != 0 && it != analyses_.end()) return it->second;
    if (analyses_.size() >= kMaxAnalyses) analyses_.clear();
    Analysis a;
    a.semantics = semantic::Analyze(*request.graph, request.keep);
    a.modules = ModulesOf(a.semantics);
    a.summary = a.semantics.Summary(*request.graph);
    if (record_dumps_) {
      typename P::annotated_graph annotated(*request.graph);
      P::Annotate(annotated, a.semantics);
      a.annotated = annotated.Dump();
    }
    if (request.fingerprint == 0) {
      uncached_ = std::move(a);
      return uncached_;
    }
    return analyses_.emplace(request.fingerprint, std::move(a)).first->second;
  }

  // A run queued by pipelined dispatch, with copies of what it reads until it is done.
  struct Queued {
    core::Graph graph;
    core::ExecuteRequest request;
    semantic::GraphSemantics semantics;
    std::vector<std::string> copies;  // bytes of uploads that had no owner
    scheduler::PlacementExecutor::Ticket ticket;
  };

  absl::StatusOr<core::ExecuteResult> Queue(scheduler::PlacementExecutor& placer,
                                            const core::ExecuteRequest& request,
                                            const semantic::GraphSemantics& semantics) {
    auto q = std::make_unique<Queued>();
    q->graph = *request.graph;
    q->request = request;
    q->request.graph = &q->graph;
    q->semantics = semantics;
    size_t borrowed = 0;
    for (const core::Upload& u : request.uploads) borrowed += u.bytes.owner == nullptr;
    q->copies.reserve(borrowed);
    for (core::Upload& u : q->request.uploads) {
      if (u.bytes.owner != nullptr) continue;
      q->copies.emplace_back(static_cast<const char*>(u.bytes.data), u.bytes.nbytes);
      u.bytes.data = q->copies.back().data();
    }
    std::lock_guard<std::mutex> lock(queue_mu_);
    // At most the placer's depth queued: wait for the oldest.
    Reap(static_cast<size_t>(placer.pipeline_depth()) - 1);
    absl::StatusOr<scheduler::PlacementExecutor::Ticket> ticket = placer.Submit(q->request, q->semantics);
    if (!ticket.ok()) return ticket.status();
    q->ticket = *std::move(ticket);
    queue_.push_back(std::move(q));
    ++queued_runs_;
    return core::ExecuteResult{};
  }

  // Waits for queued runs, oldest first, until at most `wait_for` remain (under queue_mu_).
  void Reap(size_t wait_for) {
    while (queue_.size() > wait_for) {
      Collect(std::move(queue_.front()));
      queue_.pop_front();
    }
  }
  // Collects the queued runs that are done, oldest first, without waiting.
  void ReapFinished() {
    scheduler::PlacementExecutor* placer = scheduled_.placer();
    while (!queue_.empty() && placer != nullptr && placer->Finished(queue_.front()->ticket)) {
      Collect(std::move(queue_.front()));
      queue_.pop_front();
    }
  }
  void Collect(std::unique_ptr<Queued> q) {
    scheduler::PlacementExecutor* placer = scheduled_.placer();
    if (placer == nullptr) return;  // nothing is queued without a placer
    absl::StatusOr<core::ExecuteResult> r = placer->Wait(std::move(q->ticket));
    if (!r.ok() && deferred_.ok()) {
      deferred_ = absl::Status(r.status().code(), absl::StrCat("an earlier dispatched run failed: ",
                                                               r.status().message()));
    }
  }
  absl::Status TakeDeferred() { return std::exchange(deferred_, absl::OkStatus()); }

  static constexpr size_t kMaxAnalyses = 256;
  ::genie::scheduler::ScheduledExecutor<typename P::scheduler_policy> scheduled_;
  bool record_dumps_;
  bool pipelined_;
  mutable std::mutex queue_mu_;
  std::deque<std::unique_ptr<Queued>> queue_;  // oldest first
  absl::Status deferred_;                      // first failure of a reaped queued run
  int64_t queued_runs_ = 0;
  absl::flat_hash_map<uint64_t, Analysis> analyses_;
  Analysis uncached_;
  mutable std::mutex mu_;
  // The latest kMaxRecords runs' records; records_dropped_ counts the older ones let go.
  std::deque<PipelineRecord> records_;
  int64_t records_dropped_ = 0;
};

}  // namespace genie

#endif  // GENIE_CLIENT_PIPELINE_H_
