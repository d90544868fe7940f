"""Every tuning knob and jit option of fastloss, in one place.

Why these fastmath flags: 'reassoc' lets LLVM vectorise reductions, 'contract' allows FMA and
'arcp' turns divisions by a loop invariant into multiplications. We never pass 'nnan' or 'ninf'
(nor fastmath=True, which implies them): NaN and Inf must propagate as IEEE arithmetic says.
"""
import os

FASTMATH = frozenset({"reassoc", "contract", "arcp"})

#: Options of the scalar loss functions (value, derivative, helpers) on the CPU. They are
#: inlined into the loop at Numba-IR level so that LLVM sees one loop body and vectorises it.
CPU_SCALAR = dict(fastmath=set(FASTMATH), inline="always", cache=True)

#: Options of the serial chunk kernels: release the GIL so callers may use Python threads.
CPU_KERNEL = dict(fastmath=set(FASTMATH), nogil=True, cache=True, boundscheck=None)

#: Options of the parallel drivers (prange over fixed chunks).
CPU_PARALLEL = dict(fastmath=set(FASTMATH), nogil=True, cache=True, parallel=True)

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
