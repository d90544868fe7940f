"""Timing on a CUDA GPU, side by side in one run: fastloss on device arrays, the same NumPy-style
baselines run by CuPy, PyTorch CUDA forward (and forward + backward), and a device-to-device
copy of the same bytes as the bandwidth ceiling. Used by ``fastloss bench --backend cuda`` and
``benchmarks/test_cuda.py``.

Inputs are CuPy arrays when CuPy is installed (so its baseline needs no copy), else Numba device
arrays. A timing sample is a run of calls issued back to back and then one device
synchronisation, so a figure is the time per call that a loop over many calls sees: the GPU's
time once it is the bottleneck, the host's time per call (launch overhead) for small inputs.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same code runs, so the tests cover
it, but its times say nothing about a GPU; ``simulated()`` tells callers to say so.
"""
import numpy as np

from . import runner
from .cases import CASES


def cuda_module():
    """``numba.cuda``, once it is known that there is a GPU (or the simulator) to time on."""
    from numba import config, cuda

    if not config.ENABLE_CUDASIM and not cuda.is_available():
        raise RuntimeError("no usable CUDA GPU: numba.cuda.is_available() is False "
                           "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels on the CPU simulator, untimed)")
    return cuda


def simulated():
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def cupy_module():
    """CuPy when it is installed and sees a GPU (never under the simulator), else None."""
    if simulated():
        return None
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # not installed, or no driver/device it can use
        return None


def torch_cuda():
    """torch when it is installed with CUDA and sees a GPU (never under the simulator), else None."""
    if simulated():
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def device_info():
    """Name and size of the current GPU, and the versions that matter, for the JSON results."""
    cuda = cuda_module()
    info = {"simulator": simulated()}
    if info["simulator"]:
        info["gpu"] = "Numba's CUDA simulator"
    else:
        dev = cuda.get_current_device()
        name = dev.name
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = list(dev.compute_capability)
        info["multiprocessors"] = dev.MULTIPROCESSOR_COUNT
        _free, total = cuda.current_context().get_memory_info()
        info["memory_gib"] = round(total / 2**30, 1)
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        pass
    cp = cupy_module()
    if cp is not None:
        info["cupy"] = cp.__version__
    return info


def device_inputs(host_pred, host_target):
    """The inputs on the GPU: CuPy arrays when CuPy is usable (its baseline then needs no copy),
    else Numba device arrays."""
    cuda, cp = cuda_module(), cupy_module()
    if cp is not None:
        return cp.asarray(host_pred), cp.asarray(host_target)
    return cuda.to_device(host_pred), cuda.to_device(host_target)


def calls(name, pred, target, op, torch_fns=None):
    """``runner.calls`` on device arrays: the gradient into a device buffer made once, CuPy
    running the NumPy baselines when CuPy is usable, PyTorch CUDA when torch has CUDA."""
    cuda, cp, torch = cuda_module(), cupy_module(), torch_cuda()
    out = None
    if op != "value":
        out = cp.empty_like(pred) if cp is not None else cuda.device_array(pred.shape, pred.dtype)
    torch_args = None
    if torch is not None:
        torch_args = (torch.as_tensor(pred, device="cuda"), torch.as_tensor(target, device="cuda"))
    return runner.calls(name, pred, target, op, out, "cupy" if cp is not None else None, torch_args, torch_fns)


def copy_ceiling_fns(nbytes):
    """[(function, bytes it moves)]: device-to-device copies moving about ``nbytes`` (half read,
    half written) with Numba and, when torch has CUDA, with torch's ``copy_``; the ceiling is the
    faster of the two."""
    cuda, torch = cuda_module(), torch_cuda()
    n = max(1, nbytes // 8)  # float32 elements in each of src and dst
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array(n, np.float32)
    fns = [(lambda: dst.copy_to_device(src), 2 * src.nbytes)]
    if torch is not None:
        ts, td = torch.as_tensor(src, device="cuda"), torch.as_tensor(dst, device="cuda")
        fns.append((lambda: td.copy_(ts), 2 * src.nbytes))
    return fns


def copy_ceiling(nbytes, min_time=0.02, samples=5):
    """GB/s of the faster device-to-device copy moving about ``nbytes`` (the GPU's ceiling)."""
    copies = copy_ceiling_fns(nbytes)
    times = runner.median_times([fn for fn, _ in copies], min_time, samples, sync=cuda_module().synchronize)
    return max(moved / t for (_, moved), t in zip(copies, times)) / 1e9


def bench_case(name, shape, dtype, op, rng, min_time=0.02, samples=5, torch_fns=None):
    """Measure one (loss, shape, dtype, op) on the GPU: a dict of times, bytes and ratios (the
    keys of ``runner.bench_case``, with ``cupy_s``/``speedup_cupy`` in place of NumPy's).

    The samples of fastloss, CuPy, PyTorch and the copies are taken in turn, as on the CPU."""
    host_pred, host_target = CASES[name].inputs(shape, np.dtype(dtype), rng)
    pred, target = device_inputs(host_pred, host_target)
    impls = calls(name, pred, target, op, torch_fns)
    copies = copy_ceiling_fns(int(host_pred.nbytes + host_target.nbytes))
    fns = list(impls.values()) + [fn for fn, _ in copies]
    times = runner.median_times(fns, min_time, samples, sync=cuda_module().synchronize)
    ceil = max(moved / t for (_, moved), t in zip(copies, times[len(impls):])) / 1e9
    return runner.result(name, op, "cuda", shape, host_pred, host_target, dict(zip(impls, times)), ceil)
