"""Timing side by side: fastloss, NumPy, PyTorch and the memory-bandwidth ceiling, in one run.

Every figure is a median of several samples, each sample long enough (``min_time``) to swamp
timer resolution. Machines are shared and noisy: compare ratios measured in the same run, not
absolute times across runs.
"""
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from .. import LOSSES
from .cases import CASES, torch_baselines


def median_times(fns, min_time=0.02, samples=5, sync=None):
    """Median seconds per call of each of ``fns`` over ``samples`` samples of at least
    ``min_time`` each, the samples taken in turn (a, b, a, b, ...) so that a slow spell of a
    shared machine hits all of them alike. Each function is called twice first (compilation,
    caches, allocator; the second call sizes its samples). ``sync``, when given, is called at
    the end of each sample before the clock is read (the GPU's work is asynchronous)."""
    sync = sync or (lambda: None)
    loops = []
    for fn in fns:
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        loops.append(max(1, int(min_time / max(time.perf_counter() - t0, 1e-7))))
    times = [[] for _ in fns]
    for _ in range(samples):
        for fn, n, ts in zip(fns, loops, times):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            ts.append((time.perf_counter() - t0) / n)
    return [statistics.median(ts) for ts in times]


def ceiling_reader(nbytes):
    """(a function reading about ``nbytes`` with the plain parallel streaming read of the
    ceiling, the bytes it reads)."""
    from ..kernels.cpu_stream import stream_sum

    buf = np.ones(max(1, nbytes // 4), dtype=np.float32)
    return (lambda: stream_sum(buf)), buf.nbytes


def read_ceiling(nbytes, min_time=0.02, samples=5):
    """GB/s of a plain parallel streaming read of ``nbytes`` (the CPU's bandwidth ceiling)."""
    reader, nread = ceiling_reader(nbytes)
    (t,) = median_times([reader], min_time, samples)
    return nread / t / 1e9


def torch_call(fn, pred, target, backward):
    """A call of the PyTorch baseline ``fn`` on tensors ``pred`` and ``target``: forward under
    no_grad, or forward and backward from a fresh leaf (as a training step does)."""
    import torch

    if not backward:
        def run():
            with torch.no_grad():
                fn(pred, target)
        return run

    def run_bwd():
        x = pred.detach().requires_grad_(True)
        fn(x, target).backward()
    return run_bwd


def bench_case(name, shape, dtype, op, rng, min_time=0.02, samples=5, torch_fns=None):
    """Measure one (loss, shape, dtype, op) on the CPU: a dict of times, bytes and ratios.

    The ceiling is measured afresh for every case, and the samples of fastloss, the ceiling,
    NumPy and PyTorch are interleaved: on a shared machine the bandwidth wandered between about
    40 and 70 GB/s within a sweep, so one ceiling taken at its start, or baselines timed apart,
    moved the ratios by ±30%."""
    case = CASES[name]
    loss = LOSSES[name]
    pred, target = case.inputs(shape, np.dtype(dtype), rng)
    opts = dict(case.options)
    if op == "value":
        fast = lambda: loss(pred, target, **opts)  # noqa: E731
        base = lambda: case.numpy_value(pred, target)  # noqa: E731
    else:
        out = np.empty_like(pred)
        fast = lambda: loss.value_and_grad(pred, target, out=out, **opts)  # noqa: E731
        base = lambda: case.numpy_vg(pred, target)  # noqa: E731
    res = {"loss": name, "op": op, "backend": "cpu", "shape": list(shape), "dtype": str(np.dtype(dtype)),
           "elements": int(pred.size)}
    # The ceiling reads the bytes of pred and target. All samples are taken in turn (fastloss,
    # ceiling, NumPy, PyTorch, fastloss, ...), so that every ratio compares like with like.
    reader, ceiling_bytes = ceiling_reader(int(pred.nbytes + target.nbytes))
    fns = [fast, reader, base]
    torch_fns = torch_baselines() if torch_fns is None else torch_fns
    if name in torch_fns:
        import torch
        fns.append(torch_call(torch_fns[name], torch.from_numpy(pred), torch.from_numpy(target), op != "value"))
    times = median_times(fns, min_time, samples)
    res["fastloss_s"], ceil_s, res["numpy_s"] = times[:3]
    if len(times) > 3:
        res["torch_s"] = times[3]
    ceil = ceiling_bytes / ceil_s / 1e9
    nbytes = case.bytes_moved(pred, target, op)
    res["bytes"] = int(nbytes)
    res["gbps"] = nbytes / res["fastloss_s"] / 1e9
    res["ceiling_gbps"] = ceil
    res["fraction_of_ceiling"] = res["gbps"] / ceil
    res["speedup_numpy"] = res["numpy_s"] / res["fastloss_s"]
    if "torch_s" in res:
        res["speedup_torch"] = res["torch_s"] / res["fastloss_s"]
    return res


_STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastloss as fl
from fastloss.bench.cases import CASES
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
times = {}
for name in CASES:
    case = CASES[name]
    shape = (64, 10) if case.rows else (640,)
    p, t = case.inputs(shape, np.dtype("float32"), rng)
    t1 = time.perf_counter()
    fl.LOSSES[name].value_and_grad(p, t, **case.options)
    times[name] = time.perf_counter() - t1
json.dump({"import_s": t_import, "first_call_s": times, "total_s": time.perf_counter() - t0}, sys.stdout)
"""


def startup_times(cache_dir):
    """Import time and first-call times of every loss in fresh processes: once with an empty
    kernel cache (compilation) and once more with the cache it left (warm start)."""
    import json

    env = dict(os.environ, FASTLOSS_CACHE_DIR=cache_dir)
    runs = {}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT], env=env, capture_output=True, text=True,
                             check=True).stdout
        runs[label] = json.loads(out)
        runs[label]["process_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fastloss"], env=env, check=True)
    runs["import_process_s"] = time.perf_counter() - t0
    return runs


def hardware():
    """A description of this machine for the JSON results."""
    import numba

    info = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "threading_layer": None}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["threading_layer"] = numba.threading_layer()
    except ValueError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info
