#!/usr/bin/env bash
# File: tools/device/run_gpu.sh
# Builds Genie's GPU targets here with --config=cuda, packs them for a GPU machine
# (tools/device/pack.sh), and prints the command to run there. On the GPU machine:
#   device_pack/run.sh gpu_test                    # CUDA parity tests
#   device_pack/run.sh gpu_benchmark --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#   device_pack/run.sh vqa_remote / gpt2_decode    # the examples (CPU node)
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/device/pack.sh --config=cuda --config=opt \
  //tests/gpu:gpu_test //benchmarks:gpu_benchmark //genie/runtime:genie-node \
  //examples:vqa_remote //examples:gpt2_decode
cat <<'MSG'
Packed into device_pack/. Run on the GPU machine from the copied tree, e.g.:
  device_pack/run.sh gpu_test && device_pack/run.sh gpu_benchmark --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
MSG
