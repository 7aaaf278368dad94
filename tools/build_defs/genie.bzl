"""Genie's C++ rules: every target is built through these so flags live in one place.

    load("//tools/build_defs:genie.bzl", "genie_cc_library", "genie_cc_test")

    genie_cc_library(name = "graph", srcs = ["graph.cc"], hdrs = ["graph.h"])
    genie_cc_test(name = "graph_test", srcs = ["graph_test.cc"], deps = [":graph"])

genie_cc_library also makes `<name>_headers_test`, which compiles each public header
alone in its own translation unit (twice, to check its include guard).
"""

load("@dpdk//:defs.bzl", DPDK_COPTS = "COPTS")

# Warnings are errors in Genie's own code; third-party headers come in through
# -isystem (cc_library.includes), so their warnings stay out.
GENIE_COPTS = [
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]

# For code that includes DPDK headers (pkg-config's -include rte_config.h, ISA flags).
GENIE_DPDK_COPTS = DPDK_COPTS

def _header_test(name, hdrs, deps, copts, tags):
    srcs = []
    for i, h in enumerate(hdrs):
        if not h.endswith(".h"):
            continue
        path = native.package_name() + "/" + h
        src = "%s_hdr%d.cc" % (name, i)
        native.genrule(
            name = "%s_hdr%d" % (name, i),
            outs = [src],
            cmd = "printf '#include \"%s\"\\n#include \"%s\"\\n' > $@" % (path, path),
            testonly = True,
        )
        srcs.append(src)
    if not srcs:
        return
    native.cc_test(
        name = name,
        srcs = srcs,
        copts = GENIE_COPTS + copts,
        deps = deps + ["@gtest//:gtest_main"],
        tags = tags,
        size = "small",
    )

def genie_cc_library(name, srcs = [], hdrs = [], deps = [], copts = [], header_test = True, testonly = False, **kwargs):
    native.cc_library(
        name = name,
        srcs = srcs,
        hdrs = hdrs,
        deps = deps,
        copts = GENIE_COPTS + copts,
        testonly = testonly,
        **kwargs
    )
    if header_test and hdrs:
        _header_test(name + "_headers_test", hdrs, [":" + name], copts, kwargs.get("tags", []))

def genie_cc_binary(name, srcs = [], deps = [], copts = [], **kwargs):
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps,
        copts = GENIE_COPTS + copts,
        **kwargs
    )

def genie_cc_test(name, srcs = [], deps = [], copts = [], main = True, size = "small", **kwargs):
    """A GoogleTest test; `main = False` when the test brings its own main()."""
    native.cc_test(
        name = name,
        srcs = srcs,
        deps = deps + (["@gtest//:gtest_main"] if main else ["@gtest//:gtest"]),
        copts = GENIE_COPTS + copts,
        size = size,
        **kwargs
    )

def genie_cc_benchmark(name, srcs = [], deps = [], copts = [], tags = [], **kwargs):
    """A Google Benchmark binary: built by `bazel build //...`, never run by `bazel test`."""
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps + ["@benchmark//:benchmark_main"],
        copts = GENIE_COPTS + copts,
        testonly = True,
        tags = tags + ["benchmark"],
        **kwargs
    )
