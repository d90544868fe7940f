"""Benchmark: libm-backed math.* against fastloss.kernels.vmath inside @njit loops.

    python benchmarks/bench_vmath.py [--n-log2 22] [--repeats 15]

Each row times the same element-wise loop ``out[i] = f(x[i])`` over 2**22
elements, compiled with the flags loss kernels use
(``fastmath={'reassoc', 'contract', 'arcp'}``), once calling ``math.<f>`` (a
scalar libm call per element: PyPI's llvmlite has no SVML) and once calling
``v<f>`` (inlined polynomial code the loop vectoriser can widen).  NumPy's
ufunc (``np.<f>(x, out=out)``) is shown for reference.  Times are the median of
``--repeats`` runs after a warm-up call, single-threaded.
"""

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    from fastloss.kernels.vmath import vexp, vexpm1, vlog, vlog1p
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastloss.kernels.vmath import vexp, vexpm1, vlog, vlog1p

import llvmlite.binding
import numba

FASTMATH = {"reassoc", "contract", "arcp"}


def make_loop(func):
    @numba.njit(fastmath=FASTMATH)
    def loop(x, out):
        for i in range(x.size):
            out[i] = func(x[i])

    return loop


# name -> (libm version, vmath version, numpy ufunc, input generator)
CASES = {
    "exp": (math.exp, vexp, np.exp, lambda rng, n: rng.uniform(-40.0, 40.0, n)),
    "log": (math.log, vlog, np.log, lambda rng, n: np.exp(rng.uniform(-20.0, 20.0, n))),
    "log1p": (math.log1p, vlog1p, np.log1p, lambda rng, n: rng.uniform(-0.9, 10.0, n)),
    "expm1": (math.expm1, vexpm1, np.expm1, lambda rng, n: rng.uniform(-5.0, 5.0, n)),
}


def median_time(fn, repeats):
    fn()  # warm-up: compilation, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-log2", type=int, default=22, help="elements = 2**N (22)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--funcs", default=",".join(CASES),
                        help="comma-separated subset of " + ",".join(CASES))
    args = parser.parse_args()
    n = 1 << args.n_log2
    rng = np.random.default_rng(0)

    llvm_cpu = numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()
    print(f"n = 2**{args.n_log2} = {n}, median of {args.repeats}; "
          f"numba {numba.__version__}, numpy {np.__version__}, "
          f"{platform.machine()}, CPU {llvm_cpu}")
    header = (f"{'func':<7}{'dtype':<9}{'math.* ms':>10}{'v* ms':>9}"
              f"{'speedup':>9}{'ns/elem v*':>12}{'numpy ms':>10}")
    print(header)
    print("-" * len(header))
    for name in args.funcs.split(","):
        libm_fn, v_fn, ufunc, gen = CASES[name]
        libm_loop, v_loop = make_loop(libm_fn), make_loop(v_fn)
        for dtype in (np.float32, np.float64):
            x = gen(rng, n).astype(dtype)
            out = np.empty_like(x)
            t_libm = median_time(lambda: libm_loop(x, out), args.repeats)
            t_v = median_time(lambda: v_loop(x, out), args.repeats)
            t_np = median_time(lambda: ufunc(x, out=out), args.repeats)
            print(f"{name:<7}{np.dtype(dtype).name:<9}{t_libm * 1e3:>10.2f}"
                  f"{t_v * 1e3:>9.2f}{t_libm / t_v:>8.1f}x{t_v / n * 1e9:>12.2f}"
                  f"{t_np * 1e3:>10.2f}")


if __name__ == "__main__":
    main()
