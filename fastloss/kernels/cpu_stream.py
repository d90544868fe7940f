"""The CPU's bandwidth ceiling: a plain parallel streaming read, for benchmarks to compare with."""
import numpy as np
from numba import njit, prange

from .._config import CPU_PARALLEL


# The one kernel with 'reassoc': it defines the ceiling, so it must be the plainest fastest
# read, and its rounding does not matter. For the same reason it adds in the data's own dtype:
# a float64 sum of float32 data converts every vector, and that alone held the read to 29.6
# GB/s where the float32 sum moved 40.1 and mae's value 39.0 (2**25 float32, 2 threads, side by
# side, Intel AVX-512 VM): a ceiling that a loss beats by a third is no ceiling.
@njit(**dict(CPU_PARALLEL, fastmath={"reassoc"}))
def stream_sum(a):
    """Σ a in a's dtype: reads every byte of ``a`` once, in parallel, with a vectorised loop and
    nothing else."""
    s = a.dtype.type(0)
    for i in prange(a.size):
        s += a[i]
    return s
