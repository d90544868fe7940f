"""Shared fixtures of the fastloss test suite.

* ``tol`` / ``TOL``: per-dtype tolerances, ``assert_close`` compares against a float64 reference.
* ``rng``: a seeded NumPy Generator (seed derived from the test id, so tests are independent).
* ``torch``: the torch module, skipping the test when torch is missing.
* ``backend``: parametrised over the array backends (``BACKENDS``). A backend converts NumPy
  inputs to its array type (``to_backend``) and results back to NumPy (``to_numpy``); adding a
  CUDA backend is one more entry in ``_make_backend``.
* ``--runslow``: run the tests marked ``slow``.
"""
import os
import sys
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


BACKENDS = ["numpy", "torch_cpu"]


def _make_backend(name):
    if name == "numpy":
        return Backend()
    if name == "torch_cpu":
        torch = _import_torch()
        if torch is None:
            pytest.skip("torch is not installed")
        return TorchBackend(torch, "cpu")
    if name == "torch_cuda":  # pragma: no cover - for a later GPU run
        torch = _import_torch()
        if torch is None or not torch.cuda.is_available():
            pytest.skip("CUDA torch is not available")
        return TorchBackend(torch, "cuda")
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return _make_backend(request.param)


# --------------------------------------------------------------------------------------------
# the module under test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fl():
    import fastloss
    return fastloss
