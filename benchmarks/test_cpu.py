"""CPU benchmarks. Each result carries bytes moved, GB/s and the fraction of the streaming-read
ceiling measured in the same run (extra_info), grouped by loss and size."""
import numpy as np
import pytest

from fastloss.bench import runner
from fastloss.bench.cases import torch_baselines

from conftest import cached_inputs, record

TORCH = torch_baselines()


@pytest.mark.parametrize("impl", ["fastloss", "numpy", "torch"])
@pytest.mark.parametrize("op", ["value", "value_and_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss(benchmark, ceilings, name, case_shape, dtype, op, impl):
    pred, target = cached_inputs(name, case_shape, dtype)
    fns = runner.cpu_calls(name, pred, target, op, TORCH)
    if impl not in fns:
        pytest.skip("PyTorch not installed")
    record(benchmark, ceilings, runner.read_ceiling, "cpu", name, case_shape, dtype, op, impl, fns[impl])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ceiling(benchmark, dtype, case_shape):
    """The streaming read itself, for the record (its GB/s is the ceiling)."""
    from fastloss.kernels.cpu_stream import stream_sum
    buf = np.ones(2 * int(np.prod(case_shape)), dtype=dtype)
    benchmark.group = f"ceiling {'x'.join(map(str, case_shape))} {dtype}"
    benchmark(stream_sum, buf)
    if not benchmark.disabled and benchmark.stats is not None:
        benchmark.extra_info["gbps"] = buf.nbytes / benchmark.stats.stats.median / 1e9
