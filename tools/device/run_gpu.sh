#!/usr/bin/env bash
# File: tools/device/run_gpu.sh
# Builds Genie's GPU targets here with --config=cuda, packs them for a GPU machine
# (tools/device/pack.sh; BAZEL_OUTPUT_BASE picks the output base), adds the scripts that
# run there, and prints the command to run there. On the GPU machine:
#   device_pack/gpu_all.sh $OUT                    # every GPU test and benchmark, logs in $OUT
#   device_pack/run.sh gpu_test                    # CUDA parity, streams, graphs
#   device_pack/run.sh cuda_peer_test              # node to node over CUDA IPC (2 GPUs)
#   device_pack/run.sh gpu_benchmark --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#   device_pack/run.sh capture_benchmark       # client capture cost on the GPU host's (quiet) CPU
#   GENIE_BENCH_DEVICE=cuda:0 device_pack/run.sh decode_batching_benchmark   # N decode streams, batched vs not
#   python3 device_pack/rpc_vs_genie.py --pack=device_pack --out=$OUT   # against PyTorch RPC
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/device/pack.sh --config=cuda --config=opt \
  //tests/gpu:gpu_test //tests/gpu:cuda_peer_test //tests/gpu:shm_pool_gpu_test //benchmarks:gpu_benchmark \
  //benchmarks/rpc:export_weights //genie/runtime:genie-node \
  //examples:vqa_remote //examples:gpt2_decode //benchmarks:capture_benchmark \
  //benchmarks:scheduler_benchmark //benchmarks:decode_batching_benchmark \
  //genie/transport:transport_benchmark //benchmarks:shm_pool_benchmark //tools/smi:genie-smi
cp benchmarks/rpc/rpc_vs_genie.py tools/device/gpu_all.sh device_pack/
chmod +x device_pack/gpu_all.sh
cat <<'MSG'
Packed into device_pack/. Run on the GPU machine from the copied tree, e.g.:
  device_pack/gpu_all.sh $OUT
MSG
