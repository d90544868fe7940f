"""Shared fixtures of the fastloss test suite.

* ``tol`` / ``TOL``: per-dtype tolerances, ``assert_close`` compares against a float64 reference.
* ``rng``: a seeded NumPy Generator (seed derived from the test id, so tests are independent).
* ``torch``: the torch module, skipping the test when torch is missing.
* ``backend``: parametrised over the array backends (``BACKENDS``): NumPy, torch CPU tensors,
  and "cuda" (Numba device arrays: a GPU, or Numba's CUDA simulator with
  ``NUMBA_ENABLE_CUDASIM=1``; skipped when numba.cuda cannot run). Without the simulator, "cupy"
  and "torch_cuda" are offered too (skipped without the library or a GPU). A backend converts
  NumPy inputs to its array type (``to_backend``) and results back to NumPy (``to_numpy``).
  GPU backends run with small launches under the simulator (``cuda_launches``).
* ``--runslow``: run the tests marked ``slow``.
"""
import contextlib
import os
import sys
import threading
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # make ``import reference`` work everywhere


# --------------------------------------------------------------------------------------------
# --runslow
# --------------------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests, opt-in with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: needs --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------
# tolerances
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float  # relative to the largest magnitude of the expected array (see assert_close)


TOL = {
    np.dtype(np.float64): Tol(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): Tol(rtol=2e-5, atol=2e-6),
    np.dtype(np.float16): Tol(rtol=5e-3, atol=2e-3),
}


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype, *, factor=1.0, err_msg=""):
    """|actual - expected| <= rtol |expected| + atol max(1, max|expected|), elementwise, in
    float64, with NaN matching NaN and infinities matching exactly. ``factor`` loosens both."""
    t = tol_for(dtype)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape} {err_msg}"
    finite = np.isfinite(e)
    scale = max(1.0, float(np.max(np.abs(e[finite]), initial=0.0)))
    np.testing.assert_allclose(a, e, rtol=t.rtol * factor, atol=t.atol * factor * scale,
                               equal_nan=True, err_msg=err_msg)


@pytest.fixture
def tol():
    return tol_for


# --------------------------------------------------------------------------------------------
# rng
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _simulator_shared_arrays_locked():
    """Under the CUDA simulator, _lock_simulator_shared_arrays before the first test runs (the
    one place it is installed: test files use numba.cuda in many ways, all inside tests)."""
    if cuda_sim():
        _lock_simulator_shared_arrays()
    yield


@pytest.fixture
def rng(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# torch and backends
# --------------------------------------------------------------------------------------------


def _import_torch():
    try:
        import torch  # noqa: F401
    except Exception:  # pragma: no cover - environment dependent
        return None
    return torch


@pytest.fixture(scope="session")
def torch():
    mod = _import_torch()
    if mod is None:
        pytest.skip("torch is not installed")
    return mod


class Backend:
    """Conversion between NumPy arrays and one backend's arrays, kept in one place."""

    name = "numpy"

    def to_backend(self, x):
        return x

    def to_numpy(self, x):
        return np.asarray(x)

    def is_native(self, x):
        return isinstance(x, (np.ndarray, np.generic))

    def check_scalar(self, v, dtype):
        """A reduced value: a NumPy scalar of pred's dtype."""
        assert isinstance(v, np.generic) and not isinstance(v, np.ndarray), type(v)
        assert v.dtype == np.dtype(dtype), (v.dtype, dtype)

    def check_array(self, a, dtype, shape):
        assert isinstance(a, np.ndarray), type(a)
        assert a.dtype == np.dtype(dtype), (a.dtype, dtype)
        assert a.shape == tuple(shape), (a.shape, shape)

    def empty_like(self, x):
        return np.empty_like(x)


class TorchBackend(Backend):
    def __init__(self, torch, device="cpu"):
        self.torch = torch
        self.device = device
        self.name = "torch_" + device

    def to_backend(self, x):
        if x is None:
            return None
        if isinstance(x, (np.ndarray, np.generic)):
            a = np.asarray(x)
            if a.dtype.byteorder not in "=|":
                a = a.astype(a.dtype.newbyteorder("="))
            return self.torch.from_numpy(a.copy(order="C")).to(self.device)
        return x

    def to_numpy(self, x):
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def is_native(self, x):
        return isinstance(x, self.torch.Tensor)

    def _tdtype(self, dtype):
        return getattr(self.torch, np.dtype(dtype).name)

    def check_scalar(self, v, dtype):
        assert isinstance(v, self.torch.Tensor), type(v)
        assert v.dim() == 0, v.shape
        assert v.dtype == self._tdtype(dtype), (v.dtype, dtype)
        assert v.device.type == self.device

    def check_array(self, a, dtype, shape):
        assert isinstance(a, self.torch.Tensor), type(a)
        assert a.dtype == self._tdtype(dtype), (a.dtype, dtype)
        assert tuple(a.shape) == tuple(shape), (a.shape, shape)
        assert a.device.type == self.device

    def empty_like(self, x):
        return self.torch.empty_like(x)


class CudaBackend(Backend):
    """GPU arrays: Numba device arrays (``numba.cuda.to_device``; the simulator's fake device arrays
    under ``NUMBA_ENABLE_CUDASIM=1``) or CuPy arrays (PyTorch CUDA tensors are ``TorchBackend``).
    fastloss returns results in the family it was given; a reduced value is a 0-d device array of
    pred's dtype, which ``to_numpy`` brings back as a 0-d NumPy array."""

    def __init__(self, family):
        self.family = family
        self.name = {"numba": "cuda", "cupy": "cupy"}[family]
        if family == "numba":
            from numba import cuda
            self.cuda = cuda
        else:
            import cupy
            self.cp = cupy

    def to_backend(self, x):
        if x is None:
            return None
        if not isinstance(x, (np.ndarray, np.generic)):
            return x
        a = np.array(x, order="C", copy=True)  # keeps 0-d arrays 0-d (unlike ascontiguousarray)
        if a.dtype.byteorder not in "=|":
            a = a.astype(a.dtype.newbyteorder("="))
        return self.cuda.to_device(a) if self.family == "numba" else self.cp.asarray(a)

    def is_native(self, x):
        if self.family == "numba":
            return type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray")
        return isinstance(x, self.cp.ndarray)

    def to_numpy(self, x):
        if not self.is_native(x):
            return np.asarray(x)
        if self.family == "numba":
            return np.asarray(x.copy_to_host())
        return self.cp.asnumpy(x)

    def _check(self, a, dtype, shape):
        assert self.is_native(a), f"expected a {self.name} array, got {type(a)}"
        assert np.dtype(a.dtype) == np.dtype(dtype), (a.dtype, dtype)
        assert tuple(a.shape) == tuple(shape), (a.shape, shape)

    def check_scalar(self, v, dtype):
        self._check(v, dtype, ())

    def check_array(self, a, dtype, shape):
        self._check(a, dtype, shape)

    def empty_like(self, x):
        if self.family == "numba":
            return self.cuda.device_array(x.shape, x.dtype)
        return self.cp.empty_like(x)


def cuda_sim():
    """True when Numba's CUDA simulator is on (read from the environment, as Numba does, so that
    collecting the tests does not import numba.cuda)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


# CUDA settings of the simulator runs: the simulator runs every thread of a block as a Python
# thread, so blocks are shrunk to 32 threads and grids to 3 blocks (as tests/test_cuda.py does):
# grid-stride loops, multi-block two-stage reductions and every row path still run, at a
# fraction of the time. A real GPU keeps its defaults.
SIM_LAUNCH = {"CUDA_BLOCK": 32, "CUDA_MAX_BLOCKS": 3, "CUDA_ITEMS_PER_THREAD": 4,
              "CUDA_ROW_BLOCK_MIN_C": 64, "CUDA_ROW_BLOCK": 32, "CUDA_ROW_MAX_BLOCKS": 3}


_shared_lock = threading.Lock()


def _lock_simulator_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` safe between the threads of a block.

    numba-cuda's simulator (simulator/kernelapi.py, FakeCUDAShared.array) gives a block one array
    per source line: it looks the line up, and the first thread to miss creates the array, with
    no lock. Two threads that miss together each create one and then write where the others never
    read. Seen once in CI: a block sum of class weights (wsum_kernel) that lost exactly threads 2
    and 3's values, so cross_entropy's smoothing term came out 3-8% low. The same lookup, under
    a lock; the key is the caller's file and line, as there. (A GPU has no such problem.)"""
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_fastloss_locked", False):
        return
    original = shared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)  # an error, or dynamic shared memory
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _shared_lock:
            res = self._allocations.get(key)
            if res is None:
                dt = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                res = self._allocations[key] = np.empty(shape, dt)
        return res

    array._fastloss_locked = True
    shared.array = array


@contextlib.contextmanager
def cuda_launches():
    """Small launches (and a short GIL switch interval) under the simulator; nothing on a GPU."""
    if not cuda_sim():
        yield
        return
    from fastloss import _config
    saved = {k: getattr(_config, k) for k in SIM_LAUNCH if hasattr(_config, k)}
    interval = sys.getswitchinterval()
    for k in saved:
        setattr(_config, k, SIM_LAUNCH[k])
    sys.setswitchinterval(5e-4)  # simulator threads wait on each other at every barrier
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(_config, k, v)
        sys.setswitchinterval(interval)


def numba_cuda():
    """numba.cuda if it can run kernels here (a GPU, or the simulator), else skip."""
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba-cuda missing
        pytest.skip(f"numba.cuda is unavailable: {exc}")
    try:
        ok = cuda.is_available()
    except Exception:  # pragma: no cover
        ok = False
    if not ok:
        pytest.skip("no CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 to run the CUDA tests on the simulator)")
    return cuda


# "cuda" (Numba device arrays) runs on a GPU or on the simulator; the CuPy and torch CUDA variants
# need a real GPU, so they are not even offered under the simulator (and skip when the library or
# the GPU is missing). The tests that take ``backend`` (test_elementwise.py / test_rows.py:
# test_backend, test_backend_float16_and_out, test_backend_0d; 211 "cuda" cases) use inputs of
# at most 20 elements, so the whole set runs on the simulator, with every loss, reduction, dtype
# and weighting, in about 30 s on 2 cores: no subset is needed. Larger CUDA inputs are in
# test_cuda.py and test_properties.py.
GPU_BACKENDS = ("cuda", "cupy", "torch_cuda")
BACKENDS = ["numpy", "torch_cpu", "cuda"] + ([] if cuda_sim() else ["cupy", "torch_cuda"])
if os.environ.get("FASTLOSS_TEST_BACKENDS"):  # e.g. "numpy,torch_cpu": only these
    BACKENDS = [b for b in BACKENDS if b in os.environ["FASTLOSS_TEST_BACKENDS"].split(",")]


def _make_backend(name):
    if name == "numpy":
        return Backend()
    if name == "torch_cpu":
        torch = _import_torch()
        if torch is None:
            pytest.skip("torch is not installed")
        return TorchBackend(torch, "cpu")
    if name == "cuda":
        numba_cuda()
        return CudaBackend("numba")
    if name == "cupy":
        numba_cuda()
        try:
            import cupy  # noqa: F401
        except Exception:
            pytest.skip("cupy is not installed")
        return CudaBackend("cupy")
    if name == "torch_cuda":
        torch = _import_torch()
        if torch is None or not torch.cuda.is_available():
            pytest.skip("CUDA torch is not available")
        numba_cuda()
        return TorchBackend(torch, "cuda")
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def backend(request):
    b = _make_backend(request.param)
    if request.param in GPU_BACKENDS:
        with cuda_launches():
            yield b
    else:
        yield b


# --------------------------------------------------------------------------------------------
# the module under test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fl():
    import fastloss
    return fastloss
