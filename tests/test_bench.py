"""The benchmark harness: its baselines compute what fastloss computes (else a speed-up would
compare different work), and ``fastloss bench`` runs on both backends and reports what it says.

The NumPy baselines in fastloss/bench/cases.py are written independently of the losses' math
(the way a user would write them), so agreeing with them also checks fastloss; the PyTorch
baselines are torch.nn.functional (or torchvision's formula written out).
"""
import json

import numpy as np
import pytest

import fastloss as fl
from fastloss import cli
from fastloss.bench import runner
from fastloss.bench.cases import CASES, torch_baselines

SHAPES = {False: (1000,), True: (16, 10)}


def _inputs(name, dtype="float64"):
    case = CASES[name]
    return case.inputs(SHAPES[case.rows], np.dtype(dtype), np.random.default_rng(3))


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_baselines_agree_with_fastloss(name):
    case = CASES[name]
    pred, target = _inputs(name)
    loss = fl.LOSSES[name]
    value, grad = loss.value_and_grad(pred, target, **case.options)
    np.testing.assert_allclose(value, case.numpy_value(pred, target), rtol=1e-12)
    ref_value, ref_grad = case.numpy_vg(pred, target)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_baselines_agree_with_fastloss(name):
    torch = pytest.importorskip("torch")
    fns = torch_baselines()
    case = CASES[name]
    pred, target = _inputs(name)
    value, grad = fl.LOSSES[name].value_and_grad(pred, target, **case.options)
    x = torch.from_numpy(pred).requires_grad_(True)
    tv = fns[name](x, torch.from_numpy(target))
    tv.backward()
    np.testing.assert_allclose(value, tv.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ceiling_reads_every_element_in_its_own_dtype(dtype):
    """The ceiling's read adds in the data's dtype: a float64 sum of float32 data converts every
    vector, which held the read below what mae's value moves (see kernels/cpu_stream.py)."""
    import numba

    from fastloss.kernels.cpu_stream import stream_sum

    a = np.arange(1, 3001, dtype=dtype)  # small integers: every order sums them exactly
    assert stream_sum(a) == 3000 * 3001 // 2
    assert stream_sum.overloads[(numba.typeof(a),)].signature.return_type == numba.from_dtype(dtype)
    assert stream_sum(a[:0]) == 0


def test_median_times_syncs_each_sample():
    calls, syncs = [], []
    times = runner.median_times([lambda: calls.append(1)], min_time=0.0, samples=3, sync=lambda: syncs.append(1))
    assert len(times) == 1 and times[0] > 0
    # two warm-up calls, each synchronised, then one synchronisation per sample
    assert len(syncs) == 2 + 3
    assert len(calls) >= 2 + 3


def _bench_json(tmp_path, *args):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", *args, "--samples", "1", "--min-time", "0.0001", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_cli_cpu(tmp_path, capsys):
    data = _bench_json(tmp_path, "--loss", "mse", "cross_entropy", "--size", "1024", "16x10", "--no-startup")
    res = data["results"]
    assert [(r["loss"], r["op"], r["shape"]) for r in res] == [
        ("mse", "value", [1024]), ("mse", "value_and_grad", [1024]),
        ("cross_entropy", "value", [16, 10]), ("cross_entropy", "value_and_grad", [16, 10])]
    for r in res:
        assert r["backend"] == "cpu" and r["dtype"] == "float32"
        assert r["fastloss_s"] > 0 and r["numpy_s"] > 0 and r["ceiling_gbps"] > 0
        assert r["gbps"] == pytest.approx(r["bytes"] / r["fastloss_s"] / 1e9)
        assert r["fraction_of_ceiling"] == pytest.approx(r["gbps"] / r["ceiling_gbps"])
        assert r["speedup_numpy"] == pytest.approx(r["numpy_s"] / r["fastloss_s"])
    # mse: pred and target read, the gradient written; cross_entropy: the float32 logits read
    # (twice with the gradient, which is written once) and the int64 labels read once
    assert [r["bytes"] for r in res] == [8 * 1024, 12 * 1024, 640 + 128, 3 * 640 + 128]
    assert data["hardware"]["cpus"] >= 1
    out = capsys.readouterr().out
    assert "vs NumPy" in out and "cross_entropy" in out


def test_warm_kernels_compiles_the_sweeps_kernels_into_the_cache(tmp_path, monkeypatch):
    """The sweep's kernels are compiled in worker processes, into the caches the sweep then
    loads from (the workers inherit the environment, and with it the cache folders)."""
    import glob
    import os

    monkeypatch.setenv("FASTLOSS_CACHE_DIR", str(tmp_path / "fastloss"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    steps = []
    runner.warm_kernels([("mse", (100,), "float32", "value"), ("huber", (50,), "float64", "value_and_grad"),
                         ("mse", (30,), "float32", "value_and_grad")], jobs=2, step=steps.append)
    assert sorted(steps) == ["compiled the kernels of huber", "compiled the kernels of mse"]
    modules = os.listdir(tmp_path / "fastloss" / "kernels")
    assert any(m.startswith("cpu_mse_float32_") for m in modules)
    assert any(m.startswith("cpu_huber_float64_") for m in modules)
    compiled = [os.path.basename(p) for p in glob.glob(str(tmp_path / "numba" / "**" / "*.nbc"), recursive=True)]
    for module, kernel in (("mse_float32", "value_chunk"), ("mse_float32", "both_chunk"),
                           ("huber_float64", "both_chunk")):
        assert any(module in c and f".{kernel}-" in c for c in compiled), (module, kernel, compiled)
    with pytest.raises(RuntimeError, match="no_such_loss"):
        runner.warm_kernels([("no_such_loss", (10,), "float32", "value")], jobs=1)


def test_cli_rejects_a_cuda_run_without_cuda(monkeypatch):
    from fastloss.bench import gpu

    def no_gpu():
        raise RuntimeError("no usable CUDA GPU")

    monkeypatch.setattr(gpu, "cuda_module", no_gpu)
    with pytest.raises(SystemExit, match="no usable CUDA GPU"):
        cli.main(["bench", "--backend", "cuda", "--loss", "mse"])


def test_cli_cuda_on_the_simulator(tmp_path, monkeypatch, capsys):
    """The GPU sweep's code under the CUDA simulator (timings meaningless, plumbing real)."""
    numba = pytest.importorskip("numba")
    if not numba.config.ENABLE_CUDASIM:
        pytest.skip("runs the CUDA sweep under NUMBA_ENABLE_CUDASIM=1 (on a GPU, run it for real)")
    from fastloss import _config
    for k, v in dict(CUDA_BLOCK=32, CUDA_MAX_BLOCKS=2, CUDA_ROW_BLOCK=32, CUDA_ROW_MAX_BLOCKS=2).items():
        monkeypatch.setattr(_config, k, v)
    data = _bench_json(tmp_path, "--backend", "cuda", "--loss", "mse", "kl_div", "--size", "64", "4x8")
    assert data["hardware"]["cuda"]["simulator"] is True
    res = data["results"]
    assert [(r["loss"], r["op"]) for r in res] == [("mse", "value"), ("mse", "value_and_grad"),
                                                   ("kl_div", "value"), ("kl_div", "value_and_grad")]
    for r in res:
        assert r["backend"] == "cuda" and r["fastloss_s"] > 0 and r["ceiling_gbps"] > 0
        assert "speedup_cupy" not in r and "speedup_torch" not in r  # neither runs on the simulator
    out = capsys.readouterr().out
    assert "simulator" in out and "no cupy" in out
