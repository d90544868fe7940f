"""Thread and process safety, cache robustness and determinism across thread counts (CPU)."""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastloss as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(name, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    t = rng.standard_normal(n).astype(np.float32)
    if name in ("hinge", "bce_with_logits"):
        t = (t > 0).astype(np.float32)
    return x, t


@pytest.mark.parametrize("n", [1000, 200_003], ids=["serial", "parallel"])
def test_many_threads_get_single_thread_results(n):
    """Python threads calling losses at once get bitwise the results of one thread."""
    names = ["mse", "huber", "hinge", "bce_with_logits"]
    jobs = [(name, seed) for seed in range(4) for name in names]
    expected = {}
    for name, seed in jobs:
        x, t = _inputs(name, n, seed)
        expected[name, seed] = fl.LOSSES[name].value_and_grad(x, t)
    got, errors = {}, []

    def work(name, seed):
        try:
            x, t = _inputs(name, n, seed)
            for _ in range(3):
                got[name, seed] = fl.LOSSES[name].value_and_grad(x, t)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for key, (v, g) in expected.items():
        gv, gg = got[key]
        assert gv.tobytes() == v.tobytes(), key
        assert np.array_equal(gg, g), key


_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastloss as fl
    rng = np.random.default_rng(0)
    n = 300_007  # several chunks: the parallel path
    x = rng.standard_normal(n).astype(np.float32)
    t = rng.standard_normal(n).astype(np.float32)
    out = {}
    for name in ["mse", "log_cosh", "quantile"]:
        v, g = fl.LOSSES[name].value_and_grad(x, t)
        out[name] = [float(v), float(np.float64(g.astype(np.float64).sum()))]
    logits = rng.standard_normal((300, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 300)
    v, g = fl.cross_entropy.value_and_grad(logits, labels)
    out["cross_entropy"] = [float(v), float(g.astype(np.float64).sum())]
    json.dump(out, sys.stdout)
""")


def _run(env_extra, cache):
    env = dict(os.environ, FASTLOSS_CACHE_DIR=str(cache), PYTHONPATH=ROOT, **env_extra)
    return subprocess.Popen([sys.executable, "-c", _SCRIPT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_processes_compile_the_same_kernels_at_once(tmp_path):
    """Two processes filling the same empty kernel cache at once both succeed and agree, and a
    third process then runs from that cache with the same results."""
    procs = [_run({}, tmp_path) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert outs[0] == outs[1]
    third = _run({}, tmp_path)
    stdout, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr
    assert json.loads(stdout) == outs[0]


def test_thread_count_changes_nothing(tmp_path):
    """Cached parallel kernels keep working when NUMBA_NUM_THREADS changes between runs, and
    the results are bitwise the same: the chunking never depends on the thread count."""
    results = []
    for threads in ("1", "2", "1"):
        p = _run({"NUMBA_NUM_THREADS": threads}, tmp_path)
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert results[0] == results[1] == results[2]


@pytest.mark.slow
def test_more_than_2_31_elements():
    """64-bit indexing: a value over 2**31 + 5 float32 elements (about 17 GB of memory)."""
    n = 2**31 + 5
    x = np.zeros(n, dtype=np.float32)
    t = np.zeros(n, dtype=np.float32)
    x[-1] = 3.0  # the last element is the only non-zero difference: it must be read
    x[0] = 1.0
    assert float(fl.mse(x, t, reduction="sum")) == 10.0
    assert float(fl.mae(x, t, reduction="sum")) == 4.0
