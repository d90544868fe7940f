"""CPU benchmarks. Each result carries bytes moved, GB/s and the fraction of the streaming-read
ceiling measured in the same run (extra_info), grouped by loss and size."""
import numpy as np
import pytest

import fastloss as fl
from fastloss.bench import runner
from fastloss.bench.cases import CASES, torch_baselines

from conftest import cached_inputs

ELEMENTWISE = [n for n, c in CASES.items() if not c.rows]
ROWS = [n for n, c in CASES.items() if c.rows]
IMPLS = ["fastloss", "numpy", "torch"]
TORCH = torch_baselines()


def _run(benchmark, ceilings, name, shape, dtype, op, impl):
    case = CASES[name]
    pred, target = cached_inputs(name, shape, dtype)
    opts = dict(case.options)
    if impl == "fastloss":
        loss = fl.LOSSES[name]
        if op == "value":
            fn = lambda: loss(pred, target, **opts)  # noqa: E731
        else:
            out = np.empty_like(pred)
            fn = lambda: loss.value_and_grad(pred, target, out=out, **opts)  # noqa: E731
    elif impl == "numpy":
        fn = (lambda: case.numpy_value(pred, target)) if op == "value" else (lambda: case.numpy_vg(pred, target))
    else:
        if name not in TORCH:
            pytest.skip("PyTorch not installed")
        import torch
        fn = runner.torch_call(TORCH[name], torch.from_numpy(pred), torch.from_numpy(target), op != "value")
    key = int(pred.nbytes + target.nbytes)
    if key not in ceilings and not benchmark.disabled:
        ceilings[key] = runner.read_ceiling(key)
    benchmark.group = f"{name} {'x'.join(map(str, shape))} {dtype} {op}"
    benchmark(fn)
    nbytes = case.bytes_moved(pred, target, op)
    benchmark.extra_info.update(bytes=nbytes, impl=impl, loss=name, op=op, dtype=dtype)
    if not benchmark.disabled and benchmark.stats is not None:
        med = benchmark.stats.stats.median
        benchmark.extra_info["gbps"] = nbytes / med / 1e9
        benchmark.extra_info["fraction_of_ceiling"] = nbytes / med / 1e9 / ceilings[key]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(benchmark, ceilings, name, dtype, op, impl, case_shape):
    _run(benchmark, ceilings, name, case_shape, dtype, op, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ROWS)
def test_rows(benchmark, ceilings, name, dtype, op, impl, case_shape):
    _run(benchmark, ceilings, name, case_shape, dtype, op, impl)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ceiling(benchmark, dtype, case_shape):
    """The streaming read itself, for the record (its GB/s is the ceiling)."""
    from fastloss.kernels.cpu_stream import stream_sum
    buf = np.ones(2 * int(np.prod(case_shape)), dtype=dtype)
    benchmark.group = f"ceiling {'x'.join(map(str, case_shape))} {dtype}"
    benchmark(stream_sum, buf)
    if not benchmark.disabled and benchmark.stats is not None:
        benchmark.extra_info["gbps"] = buf.nbytes / benchmark.stats.stats.median / 1e9
