#!/usr/bin/env bash
# File: tools/device/gpu_all.sh
# Runs on the GPU machine (packed by tools/device/run_gpu.sh): every GPU test and
# benchmark, one log each under $1 (default $OUT), the tail of each on stdout.
#   device_pack/gpu_all.sh $OUT            # all
#   device_pack/gpu_all.sh $OUT gpu_test   # only the named steps
#   BENCH_FILTER='genie_remote/|local_cuda/' device_pack/gpu_all.sh $OUT gpu_benchmark rpc
#   GENIE_CASE=genie_remote_inference GENIE_RPC_INFERENCE=1 device_pack/gpu_all.sh $OUT
set -u
out="${1:-${OUT:-.}}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
# OpenMP keeps its default waiting policy, as a user's program has it: Genie's own host copies
# avoid the OpenMP threads (an earlier OMP_WAIT_POLICY=PASSIVE here hid that they did not).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
py=/opt/torch/.venv/bin/python
[[ -x "$py" ]] || py=python3
want=" $* "
step() {
  local name="$1" limit="$2"
  shift 2
  [[ "$want" == "  " || "$want" == *" $name "* ]] || return 0
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "=== $name: rc=$? in $((SECONDS - t0)) s"
  tail -n "${TAIL_LINES:-25}" "$out/$name.log"
}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
step gpu_test 240 "$here/run.sh" gpu_test
step cuda_peer_test 120 "$here/run.sh" cuda_peer_test
step shm_pool_gpu_test 120 "$here/run.sh" shm_pool_gpu_test
# BENCH_FILTER: a --benchmark_filter regex for the benchmark step (default: all).
step gpu_benchmark 400 "$here/run.sh" gpu_benchmark --benchmark_filter="${BENCH_FILTER:-.}" \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/gpu_benchmark.json" --benchmark_out_format=json
# Where a GPT-2 decode step's time goes on the node (interpreter phases, stderr).
step profile 120 env GENIE_INTERPRETER_PROFILE=1 "$here/run.sh" gpu_benchmark \
  --benchmark_filter='Gpt2SmallDecode/genie_remote/' --benchmark_min_time=1
# N GPT-2 decode streams on a cuda:0 node, batched (DecodeBatching) against unbatched.
step decode_batching 400 env GENIE_BENCH_DEVICE=cuda:0 "$here/run.sh" decode_batching_benchmark \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/decode_batching.json" --benchmark_out_format=json
genie_json=()
[[ -s "$out/gpu_benchmark.json" ]] && genie_json=(--genie_json="$out/gpu_benchmark.json")
# GENIE_CASE: the gpu_benchmark case(s) compared with RPC (comma-separated); with
# GENIE_RPC_INFERENCE=1 the RPC worker runs under torch.inference_mode (as the *_inference
# cases run under c10::InferenceMode), otherwise under torch.no_grad. GENIE_RPC_PRECISIONS=
# fp32,tf32 also runs RPC with TF32 on, for the gpu_benchmark cases named *_tf32.
step rpc 300 env PYTHONUNBUFFERED=1 "$py" "$here/rpc_vs_genie.py" --pack="$here" --out="$out" \
  --genie_case="${GENIE_CASE:-genie_remote}" "${genie_json[@]}"
