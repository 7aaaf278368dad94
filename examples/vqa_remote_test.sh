#!/usr/bin/env bash
# Smoke test of the quick start's example: vqa_remote answers on an embedded node, every
# answer matches local libtorch, and Genie ships at most half the blind baseline's bytes
# (issue 5's VQA goal; bytes are deterministic, unlike latency, which only benchmarks show).
set -euo pipefail
bin="$1"
out="$("$bin" --steps=3 --timed_batches=2 2>&1)" || { echo "$out"; echo "vqa_remote exited non-zero"; exit 1; }
echo "$out"
grep -q '^parity     : .*: OK$' <<<"$out" || { echo "FAIL: no parity OK line"; exit 1; }
ratio="$(sed -n 's/^ *genie\/blind \([0-9.]*\)x bytes.*/\1/p' <<<"$out")"
[[ -n "$ratio" ]] || { echo "FAIL: no genie/blind bytes line"; exit 1; }
awk -v r="$ratio" 'BEGIN { exit !(r <= 0.5) }' || { echo "FAIL: genie/blind bytes ${ratio}x > 0.5x"; exit 1; }
grep -q '^latency    : median per batch over 4 after the checked ones (2 rounds): genie' <<<"$out" ||
  { echo "FAIL: no steady-state latency line"; exit 1; }
# Bad flags get a clear error and exit 2, not a crash.
err="${TEST_TMPDIR:-$(mktemp -d)}/err.txt"
set +e
"$bin" --steps=0 >/dev/null 2>"$err"
rc=$?
set -e
[[ $rc -eq 2 ]] && grep -q 'must be 1 or more' "$err" || { cat "$err"; echo "FAIL: --steps=0 gave rc $rc"; exit 1; }
echo "vqa_remote smoke test: OK (bytes ${ratio}x of blind)"
