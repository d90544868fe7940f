"""pytest-benchmark suite: every loss × {value, value_and_grad} × size × dtype, side by side with
NumPy, PyTorch and the bandwidth ceiling (same case table as `fastloss bench`).

Run:   python -m pytest benchmarks --benchmark-group-by=group --benchmark-columns=median,ops
Smoke: python -m pytest benchmarks --benchmark-disable   (CI: smallest sizes only, one call each)
"""
import functools

import numpy as np
import pytest

from fastloss.bench.cases import ELEMENTWISE_SIZES, ROW_SHAPES


def pytest_generate_tests(metafunc):
    if "case_shape" not in metafunc.fixturenames:
        return
    smoke = metafunc.config.getoption("benchmark_disable", False)
    rows = metafunc.function.__name__.endswith("_rows")
    if rows:
        shapes = [ROW_SHAPES[0]] if smoke else list(ROW_SHAPES)
    else:
        shapes = [(n,) for n in (ELEMENTWISE_SIZES[:1] if smoke else ELEMENTWISE_SIZES)]
    metafunc.parametrize("case_shape", shapes, ids=["x".join(map(str, s)) for s in shapes])


@functools.lru_cache(maxsize=2)
def cached_inputs(name, shape, dtype):
    from fastloss.bench.cases import CASES
    return CASES[name].inputs(shape, np.dtype(dtype), np.random.default_rng(0))


@pytest.fixture(scope="session")
def ceilings():
    """Streaming-read GB/s per byte count, measured once per session (in the same run)."""
    return {}
