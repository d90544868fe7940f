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


def calls(name, pred, target, op, out=None, baseline="numpy", torch_args=None, torch_fns=None):
    """{implementation: a function making one call} of loss ``name`` on ``pred`` and ``target``
    (host or device arrays): fastloss (writing the gradient into ``out``), the NumPy-style
    baseline of fastloss.bench.cases under the name ``baseline`` (NumPy, or CuPy running the same
    code), and PyTorch on ``torch_args`` (pred and target as tensors) when they are given."""
    case, loss = CASES[name], LOSSES[name]
    opts = dict(case.options)
    if op == "value":
        fns = {"fastloss": lambda: loss(pred, target, **opts)}
        base = lambda: case.numpy_value(pred, target)  # noqa: E731
    else:
        fns = {"fastloss": lambda: loss.value_and_grad(pred, target, out=out, **opts)}
        base = lambda: case.numpy_vg(pred, target)  # noqa: E731
    if baseline:
        fns[baseline] = base
    if torch_args is not None:
        torch_fns = torch_baselines() if torch_fns is None else torch_fns
        if name in torch_fns:
            fns["torch"] = torch_call(torch_fns[name], *torch_args, op != "value")
    return fns


def cpu_calls(name, pred, target, op, torch_fns=None):
    """``calls`` on the CPU: NumPy arrays, a gradient buffer made once, PyTorch when installed."""
    torch_fns = torch_baselines() if torch_fns is None else torch_fns
    torch_args = None
    if name in torch_fns:
        import torch
        torch_args = (torch.from_numpy(pred), torch.from_numpy(target))
    out = np.empty_like(pred) if op != "value" else None
    return calls(name, pred, target, op, out, "numpy", torch_args, torch_fns)


def result(name, op, backend, shape, pred, target, times, ceiling_gbps):
    """The record of one measured case: seconds per call of each implementation (``times``:
    {"fastloss": s, "numpy": s, ...}, kept as ``<impl>_s``), speed-ups over the others, bytes a
    one-pass implementation moves, fastloss's GB/s and its fraction of the ceiling."""
    fast = times["fastloss"]
    res = {"loss": name, "op": op, "backend": backend, "shape": list(shape), "dtype": str(pred.dtype),
           "elements": int(pred.size)}
    for impl, t in times.items():
        res[f"{impl}_s"] = t
        if impl != "fastloss":
            res[f"speedup_{impl}"] = t / fast
    nbytes = CASES[name].bytes_moved(pred, target, op)
    res["bytes"] = int(nbytes)
    res["gbps"] = nbytes / fast / 1e9
    res["ceiling_gbps"] = ceiling_gbps
    res["fraction_of_ceiling"] = res["gbps"] / ceiling_gbps
    return res


def bench_case(name, shape, dtype, op, rng, min_time=0.02, samples=5, torch_fns=None):
    """Measure one (loss, shape, dtype, op) on the CPU: a dict of times, bytes and ratios.

    The ceiling (a streaming read of the bytes of pred and target) is measured afresh for every
    case, and the samples of fastloss, NumPy, PyTorch and the ceiling are taken in turn: on a
    shared machine the bandwidth wandered between about 40 and 70 GB/s within a sweep, so one
    ceiling taken at its start, or baselines timed apart, moved the ratios by ±30%."""
    pred, target = CASES[name].inputs(shape, np.dtype(dtype), rng)
    impls = cpu_calls(name, pred, target, op, torch_fns)
    reader, ceiling_bytes = ceiling_reader(int(pred.nbytes + target.nbytes))
    times = median_times(list(impls.values()) + [reader], min_time, samples)
    return result(name, op, "cpu", shape, pred, target, dict(zip(impls, times)), ceiling_bytes / times[-1] / 1e9)


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


def _startup_env(cache_dir):
    # Both caches in cache_dir: fastloss's generated modules and Numba's own cache, which holds
    # the row kernels (module-level functions of fastloss/kernels/cpu_rows.py, cached beside
    # the package unless NUMBA_CACHE_DIR says otherwise), so that "cold" compiles those too.
    return dict(os.environ, FASTLOSS_CACHE_DIR=os.path.join(cache_dir, "fastloss"),
                NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"))


def startup_run(cache_dir):
    """Import time and first-call times of every loss in a fresh process whose kernel caches are
    ``cache_dir``: compilation when it is empty, a warm start once a run has filled it."""
    import json

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT], env=_startup_env(cache_dir),
                         capture_output=True, text=True, check=True).stdout
    run = json.loads(out)
    run["process_s"] = time.perf_counter() - t0
    return run


def import_process_time(cache_dir):
    """Seconds of a whole ``python -c 'import fastloss'``."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fastloss"], env=_startup_env(cache_dir), check=True)
    return time.perf_counter() - t0


def startup_times(cache_dir):
    """Import time and first-call times of every loss in fresh processes: once with an empty
    kernel cache (compilation) and once more with the cache it left (warm start)."""
    runs = {"cold": startup_run(cache_dir), "warm": startup_run(cache_dir)}
    runs["import_process_s"] = import_process_time(cache_dir)
    return runs


# A process that compiles kernels for the sweep: each line on stdin is a JSON list of cases
# (name, shape, dtype, op); it makes the call the sweep will time once for each (same inputs'
# shape and dtype, same options, out= for the gradient: the same kernels), then prints a line.
_WARM_SCRIPT = r"""
import json, sys
import numpy as np
import fastloss as fl
from fastloss.bench.cases import CASES
rng = np.random.default_rng(0)
for line in sys.stdin:
    for name, shape, dtype, op in json.loads(line):
        case = CASES[name]
        p, t = case.inputs(tuple(shape), np.dtype(dtype), rng)
        if op == "value":
            fl.LOSSES[name](p, t, **case.options)
        else:
            fl.LOSSES[name].value_and_grad(p, t, out=np.empty_like(p), **case.options)
    print("done", flush=True)
"""


def warm_kernels(plan, jobs=None, step=None, cost=None):
    """Compile the CPU kernels that ``plan`` (the sweep's (name, shape, dtype, op) cases) will
    call, into the kernel caches, in ``jobs`` processes at once (default: one per CPU), so that
    the first sweep on an empty kernel cache does not compile them one after the other on one
    core (the sweep's timings never include compilation either way). Cases of one loss go to
    the same process: they share a generated module and its cache index; ``cost`` (loss name ->
    seconds, such as the cold start's first-call times) puts the costliest first, so that the
    processes finish together. ``step(label)`` is called in this thread as each loss is done."""
    import tempfile
    import json
    import queue
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    groups = {}
    for name, shape, dtype, op in plan:
        groups.setdefault(name, []).append([name, list(shape), dtype, op])
    todo = queue.Queue()
    for item in sorted(groups.items(), key=lambda g: -(cost or {}).get(g[0], 0.0)):
        todo.put(item)
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    done = queue.Queue()

    def worker():
        errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block it
        proc = subprocess.Popen([sys.executable, "-c", _WARM_SCRIPT], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            while True:
                try:
                    name, cases = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    proc.stdin.write(json.dumps(cases) + "\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline().strip()
                except BrokenPipeError:  # the process died before it read the cases
                    answer = ""
                if answer != "done":
                    proc.kill()
                    proc.wait()
                    errors.seek(0)
                    raise RuntimeError(f"compiling the kernels of {name} failed:\n{errors.read()[-3000:]}")
                done.put(f"compiled the kernels of {name}")
        finally:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()
            errors.close()

    def report():
        while not done.empty():
            label = done.get()
            if step is not None:
                step(label)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(groups)))) as pool:
        pending = {pool.submit(worker) for _ in range(max(1, min(jobs, len(groups))))}
        while pending:
            finished, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            report()
            for f in finished:
                f.result()  # a failure is raised here
    report()


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
