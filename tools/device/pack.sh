#!/usr/bin/env bash
# File: tools/device/pack.sh
# Builds Bazel targets here and packs them for a GPU machine (H100/H200), which has
# torch 2.11 but no Bazel and no Debian -dev libraries:
#   device_pack/bin/<name>   the binaries
#   device_pack/lib/         the shared libraries they need that are not glibc/libstdc++/torch
#   device_pack/run.sh       runs a packed binary against the GPU machine's torch libraries
# Usage:
#   tools/device/pack.sh [bazel flags] //tools/device:cuda_check //benchmarks:foo ...
# then, with the device tool: run(command="device_pack/run.sh cuda_check", carry=["device_pack"])
set -euo pipefail
cd "$(dirname "$0")/../.."

flags=()
targets=()
for a in "$@"; do
  if [[ "$a" == --* || "$a" == -c ]]; then flags+=("$a"); else targets+=("$a"); fi
done
[[ ${#targets[@]} -gt 0 ]] || { echo "usage: $0 [bazel flags] //pkg:target ..." >&2; exit 2; }

# BAZEL_OUTPUT_BASE: build in that output base (a worktree of its own, say).
startup=()
[[ -n "${BAZEL_OUTPUT_BASE:-}" ]] && startup=(--output_base="$BAZEL_OUTPUT_BASE")
bazel "${startup[@]}" build -c opt "${flags[@]}" "${targets[@]}"
# Ask Bazel where outputs are: the bazel-bin symlink may point at another output base.
bin="$(bazel "${startup[@]}" info -c opt "${flags[@]}" bazel-bin 2>/dev/null)"
out=device_pack
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
for t in "${targets[@]}"; do
  pkg="${t#//}"; pkg="${pkg%%:*}"; name="${t##*:}"
  cp -L "$bin/$pkg/$name" "$out/bin/$name"
  chmod u+w "$out/bin/$name"
  # Copy the non-system, non-torch libraries the binary resolves here (resolved from its
  # own location, so Bazel's _solib libraries of dynamically linked tests come along).
  ldd "$bin/$pkg/$name" | awk '/=> \// {print $3}' | while read -r lib; do
    base=$(basename "$lib")
    case "$base" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++*|libgcc_s*) ;;
      libtorch*|libc10*|libgomp*|libcu*|libnv*|libcudnn*|libnccl*|libutil.so*) ;;
      *) [[ "$lib" == */site-packages/* ]] || cp -Ln "$lib" "$out/lib/$base" 2>/dev/null || true ;;
    esac
  done
done
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a packed binary against the GPU machine's torch 2.11 (TORCH_LIB overrides).
here="$(cd "$(dirname "$0")" && pwd)"
TORCH_LIB="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
export LD_LIBRARY_PATH="$here/lib:$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$1"; shift
exec "$here/bin/$bin" "$@"
RUN
chmod +x "$out/run.sh"
du -sh "$out"
ls "$out/bin" "$out/lib"
