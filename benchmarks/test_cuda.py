"""GPU benchmarks: every loss × {value, value_and_grad} × size × dtype on a CUDA GPU, side by side
with CuPy (the NumPy baselines of fastloss.bench.cases, run by CuPy), PyTorch CUDA (forward, and
forward + backward) and a device-to-device copy of the same bytes (the ceiling). Each result
carries bytes moved, GB/s and the fraction of the ceiling (extra_info), grouped by loss and size.

A timed call is the call followed by a device synchronisation, so it holds the launch overhead
as well as the GPU's time (which dominates from about 2**20 elements). Skipped without a GPU:
the simulator's times mean nothing (tests/test_bench.py runs the same code under it).
"""
import functools

import pytest

from fastloss.bench import gpu
from fastloss.bench.cases import CASES

from conftest import cached_inputs


def _real_gpu():
    try:
        return not gpu.simulated() and bool(gpu.cuda_module())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")

ELEMENTWISE = [n for n, c in CASES.items() if not c.rows]
ROWS = [n for n, c in CASES.items() if c.rows]
IMPLS = ["fastloss", "cupy", "torch"]


@functools.lru_cache(maxsize=1)
def _device_inputs(name, shape, dtype):
    return gpu.device_inputs(*cached_inputs(name, shape, dtype))


@pytest.fixture(scope="session")
def copy_ceilings():
    """Device-copy GB/s per byte count, measured once per session (in the same run)."""
    return {}


def _run(benchmark, copy_ceilings, name, shape, dtype, op, impl):
    sync = gpu.cuda_module().synchronize
    pred, target = _device_inputs(name, shape, dtype)
    fns = gpu.calls(name, pred, target, op)
    if impl not in fns:
        pytest.skip(f"{impl} with CUDA is not installed")
    fn = fns[impl]

    def call():
        fn()
        sync()

    host_pred, host_target = cached_inputs(name, shape, dtype)
    key = int(host_pred.nbytes + host_target.nbytes)
    if key not in copy_ceilings and not benchmark.disabled:
        copy_ceilings[key] = gpu.copy_ceiling(key)
    benchmark.group = f"{name} {'x'.join(map(str, shape))} {dtype} {op} cuda"
    benchmark(call)
    nbytes = CASES[name].bytes_moved(host_pred, host_target, op)
    benchmark.extra_info.update(bytes=nbytes, impl=impl, loss=name, op=op, dtype=dtype, backend="cuda")
    if not benchmark.disabled and benchmark.stats is not None:
        med = benchmark.stats.stats.median
        benchmark.extra_info["gbps"] = nbytes / med / 1e9
        benchmark.extra_info["fraction_of_ceiling"] = nbytes / med / 1e9 / copy_ceilings[key]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(benchmark, copy_ceilings, name, dtype, op, impl, case_shape):
    _run(benchmark, copy_ceilings, name, case_shape, dtype, op, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ROWS)
def test_rows(benchmark, copy_ceilings, name, dtype, op, impl, case_shape):
    _run(benchmark, copy_ceilings, name, case_shape, dtype, op, impl)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_copy_ceiling(benchmark, dtype, case_shape):
    """The device-to-device copy itself, for the record (its GB/s is the ceiling)."""
    import numpy as np

    cuda = gpu.cuda_module()
    n = int(np.prod(case_shape))
    src = cuda.device_array(n, dtype)
    dst = cuda.device_array(n, dtype)

    def copy():
        dst.copy_to_device(src)
        cuda.synchronize()

    benchmark.group = f"copy {'x'.join(map(str, case_shape))} {dtype} cuda"
    benchmark(copy)
    if not benchmark.disabled and benchmark.stats is not None:
        benchmark.extra_info["gbps"] = 2 * src.nbytes / benchmark.stats.stats.median / 1e9
