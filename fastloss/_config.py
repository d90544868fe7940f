"""Every tuning knob and jit option of fastloss, in one place.

Why no fastmath flags on the CPU kernels: 'reassoc' and 'contract' let LLVM round differently in
different loops (a sum vectorised with another interleave, an FMA formed in one kernel and not in
the other), so ``value_and_grad`` would not match ``loss(...)`` and ``loss.grad(...)`` bit for
bit, nor one CPU another. Reductions instead accumulate into ``LANES`` explicit lanes, which LLVM
vectorises without reassociation. 'nnan'/'ninf' (and fastmath=True) are never used anywhere: NaN
and Inf must propagate as IEEE arithmetic says.
"""
import os
import threading

#: Lanes of a vectorised reduction: element i of a block is added into lane i % LANES.
LANES = 64

#: Elements per block of an elementwise kernel: values are computed into a buffer of this
#: size (in L1) and then added into the lanes.
BLOCK = 1024

#: error_model="numpy": a division by zero gives inf or NaN as IEEE says, instead of Python's
#: ZeroDivisionError, whose check is a branch in the loop that stops vectorisation.

#: Options of the scalar loss functions (value, derivative, helpers) on the CPU. They are
#: inlined into the loop at Numba-IR level so that LLVM sees one loop body and vectorises it.
CPU_SCALAR = dict(inline="always", cache=True, error_model="numpy")

#: Options of the serial chunk kernels: release the GIL so callers may use Python threads.
CPU_KERNEL = dict(nogil=True, cache=True, error_model="numpy")

#: Options of the parallel drivers (prange over fixed chunks).
CPU_PARALLEL = dict(nogil=True, cache=True, parallel=True, error_model="numpy")

#: Elements per chunk of a reduction. The partitioning depends on this number alone, never on
#: the thread count, so a reduction gives bitwise identical results whatever NUMBA_NUM_THREADS
#: is. Inputs of at most one chunk run serially: a parallel launch costs microseconds that a
#: small call cannot win back.
CHUNK = 1 << 15


def cache_dir():
    """Folder of the generated kernel modules (Numba writes its cache beside them)."""
    env = os.environ.get("FASTLOSS_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastloss")


# -- CUDA (fastloss._cuda, kernels/cuda_*.py) -----------------------------------------------------
# Read when a kernel module is generated or a call is launched, never at import: numba-cuda is
# imported only when the first device array arrives. Block size, shuffle use and the jit options
# are written into each generated module's text, so changing them builds separate kernels (and
# a separate disk cache) rather than reusing stale ones.

#: Threads per block of every CUDA kernel: a power of two from 32 to 1024.
CUDA_BLOCK = 256

#: Elements per thread an elementwise launch aims for before it adds blocks; up to
#: CUDA_MAX_BLOCKS blocks, beyond which threads loop (grid-stride). The partition of a reduction
#: depends on n and these numbers only, so every result is bitwise identical run to run.
CUDA_ITEMS_PER_THREAD = 4

#: Most blocks of one launch (one wave on an H100: 132 SMs x 8 blocks of 256 threads). Also the
#: most partial sums the finishing block adds up.
CUDA_MAX_BLOCKS = 1024

#: Row losses (cross_entropy, multi_margin): one thread per row up to this many classes, a warp
#: per row above it, ...
CUDA_ROW_THREAD_MAX_C = 32

#: ... and a whole block per row (online softmax over the row, block reductions) from this
#: many classes on.
CUDA_ROW_BLOCK_MIN_C = 1024

#: Check class labels on the device: a small kernel over the labels, then one 8-byte read that
#: waits for the caller's stream (after the row kernel; before it when ``out=`` is given, so that
#: bad labels leave ``out`` untouched). False skips both: rows with bad labels then give NaN.
CUDA_CHECK_LABELS = True

#: Use warp shuffles in block reductions (real GPUs). The CUDA simulator has none, so it always
#: uses the shared-memory tree; setting False makes a real GPU run the simulator's path too.
CUDA_WARP_SHUFFLE = True

#: Launch compiled kernels directly (cuda.core launch with pre-marshalled arguments) instead of
#: through the Numba dispatcher (which types and wraps every argument on every call).
CUDA_FAST_LAUNCH = True

#: error_model="numpy": a division by zero gives inf or NaN as IEEE says, instead of Python's
#: ZeroDivisionError, whose check is a branch in the loop that stops vectorisation.

#: Options of the scalar loss functions (device functions) and of the kernels. No fastmath:
#: NaN and Inf must propagate as on the CPU. (The simulator ignores what it does not know.)
CUDA_SCALAR = dict(device=True, forceinline=True)
CUDA_KERNEL = dict()


#: Held around every parallel (prange) launch. Numba's threading layers are not all safe for
#: launches from several Python threads at once (the workqueue layer aborts the process), and a
#: parallel launch already uses every core: callers on many threads queue here, while serial
#: (small) calls, which release the GIL, run side by side.
PARALLEL_LOCK = threading.Lock()
