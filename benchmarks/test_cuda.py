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

from conftest import cached_inputs, record


def _real_gpu():
    try:
        return not gpu.simulated() and bool(gpu.cuda_module())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")


@functools.lru_cache(maxsize=1)
def _device_inputs(name, shape, dtype):
    return gpu.device_inputs(*cached_inputs(name, shape, dtype))


@pytest.mark.parametrize("impl", ["fastloss", "cupy", "torch"])
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss(benchmark, ceilings, name, case_shape, dtype, op, impl):
    sync = gpu.cuda_module().synchronize
    pred, target = _device_inputs(name, case_shape, dtype)
    fns = gpu.calls(name, pred, target, op)
    if impl not in fns:
        pytest.skip(f"{impl} with CUDA is not installed")
    fn = fns[impl]

    def call():
        fn()
        sync()

    record(benchmark, ceilings, gpu.copy_ceiling, "cuda", name, case_shape, dtype, op, impl, call)


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
