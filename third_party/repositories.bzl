"""Repository rules that wrap Genie's real dependencies as they are installed on this
machine by tools/setup.sh. Nothing is downloaded at build time.

- libtorch: the PyPI torch 2.11.0 wheel, found through $LIBTORCH_HOME or python3.
- system libraries (Abseil, Eigen, GoogleTest, Google Benchmark, OpenSSL, rdma-core)
  from Debian's -dev packages; UCX and DPDK through pkg-config.
- CUDA: /usr/local/cuda (or $CUDA_HOME) when present; only used with --config=cuda.

Each generated repository exposes `//:<name>` as a cc_library and a `defs.bzl` with
`AVAILABLE` (bool) and `COPTS` (flags that must reach every compile that includes
its headers, e.g. DPDK's `-include rte_config.h` and ISA flags).
"""

_LIBDIR = "/usr/lib/x86_64-linux-gnu"

def _fail_or_warn(ctx, msg):
    if ctx.attr.required:
        fail(msg + "\nRun tools/setup.sh to install Genie's dependencies.")
    print("genie: " + msg)  # buildifier: disable=print

def _link_include_dirs(ctx, dirs):
    """Symlinks absolute include dirs into the repository; returns relative names."""
    rel = []
    for i, d in enumerate(dirs):
        if not ctx.path(d).exists:
            continue
        name = "inc%d" % i
        ctx.symlink(d, name)
        rel.append(name)
    return rel

def _pkg_config(ctx, args):
    res = ctx.execute(["pkg-config"] + args)
    if res.return_code != 0:
        return None
    return res.stdout.strip().split(" ")

def _write_library(ctx, available, includes, linkopts, copts, defines = [], extra = {}):
    hdr_globs = []
    for inc in includes:
        hdr_globs += [inc + "/**/*.h", inc + "/**/*.hpp", inc + "/**/*.hh", inc + "/**"]
    ctx.file("BUILD.bazel", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "{name}",
    hdrs = glob({globs}, exclude_directories = 1, allow_empty = True),
    includes = {includes},
    linkopts = {linkopts},
    defines = {defines},
)
""".format(
        name = ctx.attr.target_name,
        globs = repr(hdr_globs),
        includes = repr(includes),
        linkopts = repr(linkopts),
        defines = repr(defines),
    ) + "".join(["""
cc_library(
    name = "{}",
    deps = [":{}"],
    linkopts = {},
)
""".format(n, ctx.attr.target_name if hasattr(ctx.attr, "target_name") else "cuda", repr(l if available else [])) for n, l in extra.items()]))
    ctx.file("defs.bzl", "AVAILABLE = {}\nCOPTS = {}\n".format(available, repr(copts)))

def _system_library_impl(ctx):
    includes = []
    linkopts = list(ctx.attr.linkopts)
    copts = []
    available = True
    if ctx.attr.pkg_config:
        cflags = _pkg_config(ctx, ["--cflags", ctx.attr.pkg_config])
        libs = _pkg_config(ctx, ["--libs", ctx.attr.pkg_config])
        if cflags == None or libs == None:
            _fail_or_warn(ctx, "pkg-config cannot find '%s'." % ctx.attr.pkg_config)
            available = False
            cflags, libs = [], []
        abs_includes = []
        skip = False
        for i, flag in enumerate(cflags):
            if skip:
                copts.append(flag)
                skip = False
            elif flag.startswith("-I"):
                abs_includes.append(flag[2:])
            elif flag == "-include":
                copts.append(flag)
                skip = True
            elif flag:
                copts.append(flag)
        includes = _link_include_dirs(ctx, abs_includes)
        linkopts = [l for l in libs if l] + linkopts
    else:
        for probe in ctx.attr.probe_files:
            if not ctx.path(probe).exists:
                _fail_or_warn(ctx, "%s not found (needed by @%s)." % (probe, ctx.name))
                available = False
        includes = _link_include_dirs(ctx, ctx.attr.include_dirs)
    if ctx.attr.lib_glob:
        res = ctx.execute(["sh", "-c", "cd %s && ls %s" % (_LIBDIR, ctx.attr.lib_glob)])
        names = [l.strip() for l in res.stdout.split("\n") if l.strip().endswith(".so")]
        if not names:
            _fail_or_warn(ctx, "no %s/%s found." % (_LIBDIR, ctx.attr.lib_glob))
        linkopts += ["-l" + n[len("lib"):-len(".so")] for n in names]
    if not available:
        includes, linkopts, copts = [], [], []
    _write_library(ctx, available, includes, linkopts, copts, extra = ctx.attr.extra_targets)

system_library = repository_rule(
    implementation = _system_library_impl,
    attrs = {
        "target_name": attr.string(mandatory = True),
        "include_dirs": attr.string_list(),
        "linkopts": attr.string_list(),
        "pkg_config": attr.string(),
        "probe_files": attr.string_list(),
        "lib_glob": attr.string(),
        # Further targets that depend on the main one and add link options (e.g. *_main).
        "extra_targets": attr.string_list_dict(),
        "required": attr.bool(default = True),
    },
    local = True,
)

def _find_torch(ctx):
    home = ctx.os.environ.get("LIBTORCH_HOME", "")
    if home:
        return home
    python = ctx.which("python3")
    if python == None:
        return None
    res = ctx.execute([python, "-c", "import importlib.util, os; s = importlib.util.find_spec('torch'); print(os.path.dirname(s.origin) if s else '')"])
    out = res.stdout.strip()
    return out if res.return_code == 0 and out else None

def _libtorch_impl(ctx):
    root = _find_torch(ctx)
    if root == None or not ctx.path(root + "/include/ATen/ATen.h").exists:
        fail("libtorch not found: set LIBTORCH_HOME or run tools/setup.sh (installs torch==2.11.0 from PyPI).")
    lib = root + "/lib"
    ctx.symlink(root + "/include", "include")
    has_cuda = ctx.path(lib + "/libtorch_cuda.so").exists
    # Linked by absolute path rather than as srcs: libtorch_cpu.so finds the NVIDIA
    # wheels through DT_RPATH=$ORIGIN/../../nvidia/..., which only resolves when it is
    # loaded from its real directory, not from Bazel's _solib symlink farm.
    ctx.file("BUILD.bazel", """
package(default_visibility = ["//visibility:public"])

_HDRS = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh"], allow_empty = True)

cc_library(
    name = "libtorch",
    hdrs = _HDRS,
    includes = ["include", "include/torch/csrc/api/include"],
    linkopts = [
        "-L{lib}", "-Wl,-rpath,{lib}",
        "-Wl,--push-state,--no-as-needed", "-ltorch_cpu", "-lc10", "-Wl,--pop-state",
    ],
)

# CUDA kernels of libtorch; registered by static initialisers, hence --no-as-needed.
cc_library(
    name = "libtorch_cuda",
    deps = [":libtorch"],
    linkopts = {cuda_linkopts},
)
""".format(
        lib = lib,
        cuda_linkopts = repr(["-L" + lib, "-Wl,--push-state,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--pop-state"] if has_cuda else []),
    ))
    version = ctx.execute(["cat", root + "/version.py"]).stdout
    ctx.file("defs.bzl", "TORCH_ROOT = {}\nHAS_CUDA = {}\nVERSION_PY = {}\n".format(repr(root), has_cuda, repr(version)))

libtorch_repository = repository_rule(
    implementation = _libtorch_impl,
    environ = ["LIBTORCH_HOME", "PATH"],
    local = True,
)

def _cuda_impl(ctx):
    home = ctx.os.environ.get("CUDA_HOME", "/usr/local/cuda")
    available = ctx.path(home + "/include/cuda_runtime.h").exists
    if not available:
        _write_library(ctx, False, [], [], [])
        return
    ctx.symlink(home + "/include", "cuda_include")
    _write_library(
        ctx,
        True,
        ["cuda_include"],
        ["-L%s/lib64" % home, "-Wl,-rpath,%s/lib64" % home, "-lcudart"],
        [],
    )

cuda_repository = repository_rule(
    implementation = _cuda_impl,
    attrs = {"target_name": attr.string(default = "cuda"), "required": attr.bool(default = False)},
    environ = ["CUDA_HOME"],
    local = True,
)

def genie_dependencies():
    """Declares every third-party repository Genie builds against."""
    libtorch_repository(name = "libtorch")
    system_library(
        name = "absl",
        target_name = "absl",
        probe_files = ["/usr/include/absl/status/statusor.h"],
        # Debian ships Abseil as ~60 shared libraries; all are linked.
        lib_glob = "libabsl_*.so",
    )
    system_library(
        name = "eigen",
        target_name = "eigen",
        include_dirs = ["/usr/include/eigen3"],
        probe_files = ["/usr/include/eigen3/Eigen/Core"],
    )
    system_library(
        name = "gtest",
        target_name = "gtest",
        probe_files = [_LIBDIR + "/libgtest.a", _LIBDIR + "/libgmock.a"],
        linkopts = ["-lgmock", "-lgtest", "-lpthread"],
        extra_targets = {"gtest_main": ["-lgtest_main", "-lgmock", "-lgtest", "-lpthread"]},
    )
    system_library(
        name = "benchmark",
        target_name = "benchmark",
        probe_files = ["/usr/include/benchmark/benchmark.h"],
        linkopts = ["-lbenchmark", "-lpthread"],
        extra_targets = {"benchmark_main": ["-lbenchmark_main", "-lbenchmark", "-lpthread"]},
    )
    system_library(
        name = "openssl",
        target_name = "crypto",
        probe_files = ["/usr/include/openssl/hmac.h"],
        linkopts = ["-lcrypto"],
    )
    system_library(
        name = "rdma_core",
        target_name = "rdma_core",
        probe_files = ["/usr/include/infiniband/verbs.h", "/usr/include/rdma/rdma_cma.h"],
        linkopts = ["-libverbs", "-lrdmacm"],
    )
    system_library(name = "ucx", target_name = "ucx", pkg_config = "ucx")
    system_library(name = "dpdk", target_name = "dpdk", pkg_config = "libdpdk")
    cuda_repository(name = "cuda")
