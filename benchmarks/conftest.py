"""pytest-benchmark suite: every loss × {value, value_and_grad} × size × dtype, side by side with
NumPy (CuPy on the GPU), PyTorch and the bandwidth ceiling (same case table as `fastloss bench`).

Run:   python -m pytest benchmarks --benchmark-group-by=group --benchmark-columns=median,ops
Smoke: python -m pytest benchmarks --benchmark-disable   (CI: smallest sizes only, one call each)
"""
import functools

import numpy as np
import pytest

from fastloss.bench.cases import CASES, ELEMENTWISE_SIZES, ROW_SHAPES


def _shapes(rows, smoke):
    if rows:
        return [ROW_SHAPES[0]] if smoke else list(ROW_SHAPES)
    return [(n,) for n in (ELEMENTWISE_SIZES[:1] if smoke else ELEMENTWISE_SIZES)]


def pytest_generate_tests(metafunc):
    """``name`` and ``case_shape`` together: every loss at the sizes of its kind (elementwise
    lengths or row shapes); ``case_shape`` alone: the elementwise sizes."""
    if "case_shape" not in metafunc.fixturenames:
        return
    smoke = metafunc.config.getoption("benchmark_disable", False)
    if "name" in metafunc.fixturenames:
        pairs = [(name, shape) for name, case in CASES.items() for shape in _shapes(case.rows, smoke)]
        metafunc.parametrize("name,case_shape", pairs,
                             ids=[f"{name}-{'x'.join(map(str, shape))}" for name, shape in pairs])
    else:
        shapes = _shapes(False, smoke)
        metafunc.parametrize("case_shape", shapes, ids=["x".join(map(str, s)) for s in shapes])


@functools.lru_cache(maxsize=2)
def cached_inputs(name, shape, dtype):
    return CASES[name].inputs(shape, np.dtype(dtype), np.random.default_rng(0))


@pytest.fixture(scope="session")
def ceilings():
    """GB/s of the ceiling per (backend, bytes), measured once per session (in the same run)."""
    return {}


def record(benchmark, ceilings, measure_ceiling, backend, name, shape, dtype, op, impl, fn):
    """Benchmark ``fn`` (one call of ``impl``) and put in extra_info the bytes a one-pass
    implementation moves, the GB/s and the fraction of the ceiling, which ``measure_ceiling(nbytes)``
    gives for the bytes of pred and target (once per size and backend in a session)."""
    pred, target = cached_inputs(name, shape, dtype)
    key = (backend, int(pred.nbytes + target.nbytes))
    if key not in ceilings and not benchmark.disabled:
        ceilings[key] = measure_ceiling(key[1])
    benchmark.group = f"{name} {'x'.join(map(str, shape))} {dtype} {op} {backend}"
    benchmark(fn)
    nbytes = CASES[name].bytes_moved(pred, target, op)
    benchmark.extra_info.update(bytes=nbytes, impl=impl, loss=name, op=op, dtype=dtype, backend=backend)
    if not benchmark.disabled and benchmark.stats is not None:
        gbps = nbytes / benchmark.stats.stats.median / 1e9
        benchmark.extra_info["gbps"] = gbps
        benchmark.extra_info["fraction_of_ceiling"] = gbps / ceilings[key]
