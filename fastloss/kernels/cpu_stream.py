"""The CPU's bandwidth ceiling: a plain parallel streaming read, for benchmarks to compare with."""
from numba import njit, prange

from .._config import CPU_PARALLEL


# The one kernel with 'reassoc': it defines the ceiling, so it must be the plainest fastest
# read, and its rounding does not matter.
@njit(**dict(CPU_PARALLEL, fastmath={"reassoc"}))
def stream_sum(a):
    """Σ a: reads every byte of ``a`` once, in parallel, with a vectorised loop and nothing else."""
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s
