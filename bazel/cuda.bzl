"""cuda_library: compiles .cu files with nvcc and exposes them as a C/C++ library.

Bazel 4 has no CUDA rules and rules_cuda cannot be downloaded here, so this is the
project's own: one nvcc action per source, the objects archived with the C++
toolchain's `ar`, and a CcInfo returned so cc_library / cc_binary / cc_test can
depend on the result like on any other C library.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")

NVCC = "/usr/local/cuda/bin/nvcc"

# sm_90a carries the Hopper-only instructions (wgmma, setmaxnreg); compute_90 PTX
# keeps newer GPUs working through the driver JIT; sm_80 keeps Ampere correct.
DEFAULT_GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
    "-gencode=arch=compute_90a,code=sm_90a",
]

def _mode_flags(ctx):
    mode = ctx.var["COMPILATION_MODE"]
    if mode == "opt":
        # --config=lineinfo (--define=DA_LINEINFO=1): optimized code with the
        # source-line tables Nsight Compute's source view needs (the machine
        # code is the same).
        lineinfo = ["-lineinfo"] if ctx.var.get("DA_LINEINFO") == "1" else []
        return ["-O3", "-DNDEBUG"] + lineinfo
    if mode == "dbg":
        return ["-g", "-O0", "-lineinfo"]
    return ["-O2", "-lineinfo"]

def _cuda_library_impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    feature_configuration = cc_common.configure_features(
        ctx = ctx,
        cc_toolchain = cc_toolchain,
        requested_features = ctx.features,
        unsupported_features = ctx.disabled_features,
    )
    dep_infos = [dep[CcInfo] for dep in ctx.attr.deps]
    dep_ctx = cc_common.merge_cc_infos(cc_infos = dep_infos).compilation_context

    include_flags = ["-I.", "-I" + ctx.bin_dir.path]
    for inc in dep_ctx.includes.to_list() + dep_ctx.quote_includes.to_list() + dep_ctx.system_includes.to_list():
        include_flags.append("-I" + inc)
    define_flags = ["-D" + d for d in dep_ctx.defines.to_list()]

    inputs = depset(
        direct = ctx.files.srcs + ctx.files.hdrs + ctx.files.private_hdrs,
        transitive = [dep_ctx.headers],
    )
    objects = []
    for src in ctx.files.srcs:
        obj = ctx.actions.declare_file("_objs/%s/%s.o" % (ctx.label.name, src.basename))
        args = ctx.actions.args()
        args.add_all([
            "-c",
            src.path,
            "-o",
            obj.path,
            "-ccbin",
            cc_toolchain.compiler_executable,
            "-std=c++17",
            "-Xcompiler",
            "-fPIC",
            "--expt-relaxed-constexpr",
        ])
        args.add_all(ctx.attr.gencode or DEFAULT_GENCODE)
        args.add_all(_mode_flags(ctx))
        args.add_all(include_flags)
        args.add_all(define_flags)
        args.add_all(ctx.attr.copts)
        # nvcc names its temporary files after its PID. Sandboxed actions run in
        # their own PID namespace (nvcc is often PID 2) but share /tmp, so two nvcc
        # actions in parallel collide ("cannot open module id file
        # /tmp/tmpxft_00000002_..."). Each action gets a private TMPDIR.
        ctx.actions.run_shell(
            command = 'tmp=$(mktemp -d) || exit 1; TMPDIR="$tmp" %s "$@"; rc=$?; rm -rf "$tmp"; exit $rc' % NVCC,
            arguments = [args],
            inputs = inputs,
            outputs = [obj],
            mnemonic = "NvccCompile",
            progress_message = "nvcc %s" % src.short_path,
            use_default_shell_env = True,
        )
        objects.append(obj)

    archive = ctx.actions.declare_file("lib%s.a" % ctx.label.name)
    ar_args = ctx.actions.args()
    ar_args.add("rcs")
    ar_args.add(archive)
    ar_args.add_all(objects)
    ctx.actions.run(
        executable = cc_toolchain.ar_executable,
        arguments = [ar_args],
        inputs = depset(objects, transitive = [cc_toolchain.all_files]),
        outputs = [archive],
        mnemonic = "CudaArchive",
        use_default_shell_env = True,
    )

    library = cc_common.create_library_to_link(
        actions = ctx.actions,
        feature_configuration = feature_configuration,
        cc_toolchain = cc_toolchain,
        static_library = archive,
        alwayslink = ctx.attr.alwayslink,
    )
    linker_input = cc_common.create_linker_input(
        owner = ctx.label,
        libraries = depset([library]),
        user_link_flags = depset(ctx.attr.linkopts),
    )
    own = CcInfo(
        compilation_context = cc_common.create_compilation_context(
            headers = depset(ctx.files.hdrs),
        ),
        linking_context = cc_common.create_linking_context(
            linker_inputs = depset([linker_input]),
        ),
    )
    return [
        DefaultInfo(files = depset([archive])),
        cc_common.merge_cc_infos(direct_cc_infos = [own], cc_infos = dep_infos),
    ]

cuda_library = rule(
    implementation = _cuda_library_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"]),
        "hdrs": attr.label_list(allow_files = [".h", ".cuh"]),
        "private_hdrs": attr.label_list(allow_files = [".h", ".cuh"]),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
        # nvcc -gencode flags; empty means DEFAULT_GENCODE. Code without Hopper-only
        # instructions can drop sm_90a (the sm_90 build runs there) to halve nvcc time.
        "gencode": attr.string_list(),
        "linkopts": attr.string_list(),
        "alwayslink": attr.bool(default = False),
        "_cc_toolchain": attr.label(default = Label("@bazel_tools//tools/cpp:current_cc_toolchain")),
    },
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    fragments = ["cpp"],
    incompatible_use_toolchain_transition = True,
)
