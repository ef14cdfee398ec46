"""ctypes mirror of the C ABI of libdilated_attention.so.

The structs below mirror attention/dilated_attention.h and mempool/da_mempool.h
field for field (order and types matter: ctypes lays them out as the C compiler
does). Every function the package calls gets its argtypes and restype here, so a
wrong argument is a TypeError in Python, not a crash in C.
"""
import ctypes
import os

# da_status (common/da_common.h)
STATUS_SUCCESS = 0
STATUS_NOT_SUPPORTED = 2
STATUS_NO_DEVICE = 5

# da_dtype
DTYPE_F16 = 1
DTYPE_BF16 = 2

# da_attention_mode, da_offset_policy
MODES = {"longnet": 0, "head_group": 1}
OFFSETS = {"default": 0, "head": 1, "group": 2, "block": 3}

# DA_MEMPOOL_HOST_DEVICE: da_mempool_default's device number of the host pool.
MEMPOOL_HOST_DEVICE = -1

LIBRARY_NAME = "libdilated_attention.so"


class DAError(RuntimeError):
    """A library call returned a status other than DA_STATUS_SUCCESS.

    Attributes: status (the da_status value), status_name ("DA_STATUS_..."),
    message (da_last_error()'s sentence) and function (the C function called).
    """

    def __init__(self, function, status, status_name, message):
        self.function = function
        self.status = status
        self.status_name = status_name
        self.message = message
        super().__init__("%s: %s: %s" % (function, status_name, message))


class AttentionParams(ctypes.Structure):
    _fields_ = [
        ("segment_lengths", ctypes.POINTER(ctypes.c_int)),
        ("num_segment_lengths", ctypes.c_int),
        ("dilation_rates", ctypes.POINTER(ctypes.c_int)),
        ("num_dilation_rates", ctypes.c_int),
        ("mode", ctypes.c_int),           # da_attention_mode
        ("offset_policy", ctypes.c_int),  # da_offset_policy
        ("causal", ctypes.c_int),
        ("softmax_scale", ctypes.c_float),
        ("num_heads", ctypes.c_int),
        ("num_kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int),
    ]


class AttentionBatch(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("seqlen", ctypes.c_int64),
        ("cu_seqlens", ctypes.POINTER(ctypes.c_int64)),
    ]


_size_t, _u64, _f64 = ctypes.c_size_t, ctypes.c_uint64, ctypes.c_double


class MempoolStats(ctypes.Structure):
    _fields_ = [
        ("allocated_bytes", _size_t),
        ("requested_bytes", _size_t),
        ("reserved_bytes", _size_t),
        ("cached_bytes", _size_t),
        ("pending_bytes", _size_t),
        ("peak_allocated_bytes", _size_t),
        ("peak_reserved_bytes", _size_t),
        ("live_allocations", _size_t),
        ("segments", _size_t),
        ("largest_free_block_bytes", _size_t),
        ("fragmentation", _f64),
        ("fragmentation_peak", _f64),
        ("allocations", _u64),
        ("frees", _u64),
        ("hits", _u64),
        ("misses", _u64),
        ("backend_allocs", _u64),
        ("backend_frees", _u64),
        ("backend_syncs", _u64),
        ("events_recorded", _u64),
        ("event_queries", _u64),
        ("oom_retries", _u64),
        ("pressure_cleanups", _u64),
        ("backend_ns", _u64),
    ]


_status = ctypes.c_int
_ptr = ctypes.c_void_p  # tensors (host or device): passed as integer addresses
_params_p = ctypes.POINTER(AttentionParams)
_batch_p = ctypes.POINTER(AttentionBatch)

_PROTOTYPES = {
    "da_status_string": (ctypes.c_char_p, [_status]),
    "da_last_error": (ctypes.c_char_p, []),
    "da_version_string": (ctypes.c_char_p, []),
    "da_attention_params_default": (AttentionParams, []),
    "da_attention_validate": (_status, [_params_p, _batch_p]),
    "da_attention_count_flops": (_status, [_params_p, _batch_p, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_double)]),
    "da_attention_forward_cpu": (_status, [_params_p, _batch_p] + [_ptr] * 5),
    "da_attention_backward_cpu": (_status, [_params_p, _batch_p] + [_ptr] * 9),
    "da_attention_cuda_supported": (_status, [_params_p, ctypes.c_int]),
    "da_attention_forward_cuda": (_status, [_params_p, _batch_p, ctypes.c_int] + [_ptr] * 6),
    "da_attention_backward_cuda": (_status, [_params_p, _batch_p, ctypes.c_int] + [_ptr] * 10),
    "da_mempool_default": (_status, [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]),
    "da_mempool_get_stats": (_status, [ctypes.c_void_p, ctypes.POINTER(MempoolStats)]),
    "da_mempool_reset_peak_stats": (_status, [ctypes.c_void_p]),
}

_lib = None


def _candidates():
    package_dir = os.path.dirname(os.path.abspath(__file__))
    python_dir = os.path.dirname(package_dir)
    repo_dir = os.path.dirname(python_dir)
    return [
        os.path.join(package_dir, LIBRARY_NAME),  # bundled inside the package
        os.path.join(python_dir, LIBRARY_NAME),   # next to the package
        os.path.join(repo_dir, "bazel-bin", LIBRARY_NAME),
    ]


def _check_sanitizer_runtime(path):
    # An ASan-instrumented library dlopen'ed into a process without the ASan
    # runtime makes the runtime kill the process ("ASan runtime does not come
    # first"); say so instead.
    with open(path, "rb") as f:
        if b"libasan.so" not in f.read():
            return
    with open("/proc/self/maps") as maps:
        if "libasan" in maps.read():
            return
    raise OSError("%s is built with AddressSanitizer (bazel --config=asan); load it with the "
                  "ASan runtime preloaded (LD_PRELOAD=$(gcc -print-file-name=libasan.so)) or "
                  "use an optimized build" % path)


def load_library(path=None):
    """Loads libdilated_attention.so and declares every function the package uses.

    Looks at, in order: `path`; the environment variable DA_LIBRARY; the package
    directory and the directory holding it; <repo>/bazel-bin. An explicit path
    or DA_LIBRARY that does not exist is an error (no fallback). Later calls of
    the package use the library loaded last. Returns the ctypes.CDLL.
    """
    global _lib
    explicit = path or os.environ.get("DA_LIBRARY")
    if explicit:
        if not os.path.isfile(explicit):
            source = "path" if path else "DA_LIBRARY"
            raise OSError("%s=%r: no such file" % (source, explicit))
        chosen = explicit
    else:
        tried = _candidates()
        chosen = next((c for c in tried if os.path.isfile(c)), None)
        if chosen is None:
            raise OSError("%s not found; tried %s. Build it with `bazel build "
                          "//:libdilated_attention.so` or set DA_LIBRARY to its path"
                          % (LIBRARY_NAME, ", ".join(tried)))
    _check_sanitizer_runtime(chosen)
    lib = ctypes.CDLL(os.path.abspath(chosen))
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lib
    return lib


def lib():
    """The loaded library, loading it on first use."""
    return _lib if _lib is not None else load_library()


def call(name, *args):
    """Calls a library function; raises DAError on any status but success."""
    library = lib()
    status = getattr(library, name)(*args)
    if status != STATUS_SUCCESS:
        # Read the sentence first: it is valid until the next library call.
        message = library.da_last_error().decode("utf-8", "replace")
        status_name = library.da_status_string(status).decode("ascii", "replace")
        raise DAError(name, status, status_name, message)


def status_of(name, *args):
    """Calls a status-returning function; returns (status, status_name, sentence)."""
    library = lib()
    status = getattr(library, name)(*args)
    message = library.da_last_error().decode("utf-8", "replace") if status else ""
    return status, library.da_status_string(status).decode("ascii", "replace"), message
