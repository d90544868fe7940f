"""The CUDA backend against the CPU backend and the float64 references.

Runs on a real GPU, or on none under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, as in
CI), where the kernels are Python: sizes stay small there, blocks are 32 threads and grids at
most 3 blocks, so that grid-stride loops, multi-block two-stage reductions and every row path
(thread, warp and block per row) still run. Skipped when numba-cuda is not installed.

Families: Numba device arrays always; CuPy arrays and PyTorch CUDA tensors when they are
installed and a GPU is there.
"""
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")
try:
    from numba import cuda
except Exception as exc:  # pragma: no cover - numba-cuda missing
    pytest.skip(f"numba.cuda unavailable: {exc}", allow_module_level=True)
if not cuda.is_available():  # pragma: no cover - no driver and no simulator
    pytest.skip("no CUDA device (set NUMBA_ENABLE_CUDASIM=1 for the simulator)", allow_module_level=True)

import reference as ref  # noqa: E402
from _cases import (ELEMENTWISE_OPTIONS, ROW_OPTIONS, case_id, elementwise_data,  # noqa: E402
                    lead_shape, row_data, sample_weight)
from conftest import assert_close  # noqa: E402

SIM = bool(numba.config.ENABLE_CUDASIM)
BIG = 1000 if SIM else 5000  # spans several blocks in either setting


@pytest.fixture(scope="module", autouse=True)
def _small_launches():
    """Simulator: small blocks and grids (and a short GIL switch interval: its threads wait on
    each other at every barrier). A GPU keeps the defaults except the block-per-row threshold."""
    from fastloss import _config
    saved = {k: getattr(_config, k) for k in ("CUDA_BLOCK", "CUDA_MAX_BLOCKS", "CUDA_ROW_BLOCK_MIN_C",
                                              "CUDA_ROW_BLOCK", "CUDA_ROW_MAX_BLOCKS", "CUDA_ITEMS_PER_THREAD")}
    interval = sys.getswitchinterval()
    if SIM:
        _config.CUDA_BLOCK = 32
        _config.CUDA_MAX_BLOCKS = 3
        _config.CUDA_ITEMS_PER_THREAD = 4
        _config.CUDA_ROW_BLOCK_MIN_C = 64
        _config.CUDA_ROW_BLOCK = 32
        _config.CUDA_ROW_MAX_BLOCKS = 3
        sys.setswitchinterval(5e-4)
    else:
        _config.CUDA_ROW_BLOCK_MIN_C = 256
    yield
    for k, v in saved.items():
        setattr(_config, k, v)
    sys.setswitchinterval(interval)


# -- families -------------------------------------------------------------------------------------
class Numba:
    name = "numba"

    def dev(self, x):  # (0-d stays 0-d: np.ascontiguousarray alone makes it 1-d)
        return None if x is None else cuda.to_device(np.ascontiguousarray(x).reshape(np.shape(x)))

    def host(self, x):
        return x.copy_to_host()

    def is_family(self, x):
        return type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray")


class Cupy:
    name = "cupy"

    def __init__(self):
        import cupy
        self.cp = cupy

    def dev(self, x):
        return None if x is None else self.cp.asarray(np.ascontiguousarray(x).reshape(np.shape(x)))

    def host(self, x):
        return self.cp.asnumpy(x)

    def is_family(self, x):
        return isinstance(x, self.cp.ndarray)


class Torch:
    name = "torch"

    def __init__(self):
        import torch
        self.torch = torch

    def dev(self, x):
        return None if x is None else self.torch.from_numpy(np.ascontiguousarray(x).reshape(np.shape(x))).to("cuda")

    def host(self, x):
        return x.detach().cpu().numpy()

    def is_family(self, x):
        return isinstance(x, self.torch.Tensor) and x.is_cuda


def _families():
    fams = [pytest.param("numba", id="numba")]
    if not SIM:
        fams.append(pytest.param("cupy", id="cupy"))
        fams.append(pytest.param("torch", id="torch"))
    return fams


@pytest.fixture(params=_families())
def fam(request):
    if request.param == "numba":
        return Numba()
    if request.param == "cupy":
        pytest.importorskip("cupy")
        return Cupy()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return Torch()


NB = Numba()


def _host_result(fam, v, dtype, shape):
    """Check a device result's family, dtype and shape, and bring it to NumPy."""
    assert fam.is_family(v), type(v)
    h = fam.host(v)
    assert h.dtype == np.dtype(dtype), (h.dtype, dtype)
    assert h.shape == tuple(shape), (h.shape, shape)
    return h


def _tol_factor(dtype):
    return 4.0 if np.dtype(dtype) != np.float64 else 100.0


def _compare(fam, loss, pred, target, kw, dtype, none_shape, weight=None, ops=("vg",), expected=None):
    """Run ``loss`` on the GPU and on the CPU, and compare (and with ``expected`` if given)."""
    dkw = dict(kw)
    for k, v in kw.items():  # array options (pos_weight, delta, class_weight, ...) go to the device
        if isinstance(v, np.ndarray):
            dkw[k] = fam.dev(v)
    red = kw.get("reduction", "mean")
    vshape = none_shape if red == "none" else ()
    dp, dt, dw = fam.dev(pred), fam.dev(target), fam.dev(weight)
    cv, cg = loss.value_and_grad(pred, target, sample_weight=weight, **kw)
    f = _tol_factor(dtype)
    for op in ops:
        if op == "vg":
            v, g = loss.value_and_grad(dp, dt, sample_weight=dw, **dkw)
        elif op == "v":
            v, g = loss(dp, dt, sample_weight=dw, **dkw), None
        else:
            v, g = None, loss.grad(dp, dt, sample_weight=dw, **dkw)
        if v is not None:
            hv = _host_result(fam, v, dtype, vshape)
            assert_close(hv, np.asarray(cv), dtype, factor=f, err_msg=f"value vs CPU {op}")
            if expected is not None:
                assert_close(hv, expected[0], dtype, factor=f, err_msg=f"value vs reference {op}")
        if g is not None:
            hg = _host_result(fam, g, dtype, pred.shape)
            assert_close(hg, np.asarray(cg), dtype, factor=f, err_msg=f"grad vs CPU {op}")
            if expected is not None:
                assert_close(hg, expected[1], dtype, factor=f, err_msg=f"grad vs reference {op}")
    # inputs are never written
    np.testing.assert_array_equal(fam.host(dp), pred)
    np.testing.assert_array_equal(fam.host(dt), target)


# -- elementwise losses ---------------------------------------------------------------------------
_EW = [(name, opts) for name, optlist in ELEMENTWISE_OPTIONS.items() for opts in optlist]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,opts", [pytest.param(n, o, id=f"{n}-{case_id(o)}") for n, o in _EW])
def test_elementwise(fl, name, opts, reduction, dtype, rng):
    shape = (6, 9)
    pred, target, kw = elementwise_data(name, shape, dtype, rng, opts)
    exp = ref.ELEMENTWISE[name](pred, target, reduction=reduction, **kw)
    _compare(NB, getattr(fl, name), pred, target, dict(kw, reduction=reduction), dtype, shape, expected=exp)


@pytest.mark.parametrize("n", [0, 1, 7, BIG])
@pytest.mark.parametrize("name", ["mse", "hinge", "bce_with_logits", "poisson_nll"])
def test_sizes_weights_and_every_op(fam, fl, name, n, rng):
    dtype = np.float32
    opts = {"pos_weight": "array"} if name == "bce_with_logits" else {}
    pred, target, kw = elementwise_data(name, (n,), dtype, rng, opts)
    w = sample_weight(rng, (n,), dtype)
    for red in ("mean", "sum", "none"):
        exp = ref.ELEMENTWISE[name](pred, target, reduction=red, sample_weight=w, **kw)
        _compare(fam, getattr(fl, name), pred, target, dict(kw, reduction=red), dtype, (n,), weight=w,
                 ops=("vg", "v", "g"), expected=exp)


@pytest.mark.parametrize("name", ["mse", "sigmoid_focal"])
def test_float16(fam, fl, name, rng):
    shape = (5, 40)
    pred, target, kw = elementwise_data(name, shape, np.float16, rng)
    w = sample_weight(rng, shape, np.float16)
    for red in ("mean", "sum", "none"):
        _compare(fam, getattr(fl, name), pred, target, dict(kw, reduction=red), np.float16, shape, weight=w)


def test_empty_and_zero_weights(fl):
    d = NB.dev(np.zeros(0, np.float32))
    assert np.isnan(NB.host(fl.mse(d, d)))
    assert NB.host(fl.mse(d, d, reduction="sum")) == 0
    v, g = fl.mse.value_and_grad(d, d)
    assert np.isnan(NB.host(v)) and NB.host(g).shape == (0,)
    assert NB.host(fl.mse(d, d, reduction="none")).shape == (0,)
    p, t = NB.dev(np.ones(5)), NB.dev(np.zeros(5))
    v, g = fl.mse.value_and_grad(p, t, sample_weight=NB.dev(np.zeros(5)))
    assert np.isnan(NB.host(v)) and np.all(NB.host(g) == 0)


def test_result_types(fl):
    p = NB.dev(np.ones((3, 4), np.float32))
    v = fl.mse(p, p)
    assert type(v).__name__ in ("DeviceNDArray", "FakeCUDAArray")
    assert v.shape == () and v.dtype == np.float32
    v, g = fl.huber.value_and_grad(p, p, reduction="none")
    assert v.shape == (3, 4) and g.shape == (3, 4) and g.dtype == np.float32
    v = fl.cross_entropy(NB.dev(np.ones((3, 4), np.float64)), NB.dev(np.array([0, 1, 2])))
    assert v.shape == () and v.dtype == np.float64


def test_per_element_options_and_broadcast(fl, rng):
    pred, target, _ = elementwise_data("huber", (4, 6), np.float64, rng)
    delta = rng.uniform(0.5, 2.0, size=(4, 6))
    _compare(NB, fl.huber, pred, target, {"delta": delta, "reduction": "sum"}, np.float64, (4, 6))
    q = rng.uniform(0.1, 0.9, size=(6,))  # broadcast along rows: made on the device
    _compare(NB, fl.quantile, pred, target, {"q": q, "reduction": "none"}, np.float64, (4, 6))
    with pytest.raises(ValueError, match="every delta"):
        fl.huber(NB.dev(pred), NB.dev(target), delta=NB.dev(-delta))
    with pytest.raises(ValueError, match="does not broadcast"):
        fl.huber(NB.dev(pred), NB.dev(target), delta=NB.dev(np.ones(5)))


def test_noncontiguous_inputs(fl, rng):
    pred, target, _ = elementwise_data("log_cosh", (5, 7), np.float64, rng)
    dp, dt = NB.dev(pred), NB.dev(target)
    v, g = fl.log_cosh.value_and_grad(dp.T, dt.T, reduction="none")
    cv, cg = fl.log_cosh.value_and_grad(pred.T, target.T, reduction="none")
    assert_close(NB.host(v), cv, np.float64)
    assert_close(NB.host(g), cg, np.float64)


def test_many_dimensions_of_length_one(fl, rng):
    """Views, broadcast options and moved class axes of more than the gather kernel's 8
    dimensions work when at most 8 of them are real (they were a ValueError asking to make
    contiguous arrays contiguous): dimensions of length 1 drop out, neighbours merge."""
    shape = (2,) + (1,) * 7 + (4,)
    p = rng.standard_normal(shape[:-1] + (8,))
    t = rng.standard_normal(shape)
    v, g = fl.mse.value_and_grad(NB.dev(p)[..., ::2], NB.dev(t), reduction="none")
    cv, cg = fl.mse.value_and_grad(p[..., ::2], t, reduction="none")
    assert_close(NB.host(v), cv, np.float64)
    assert_close(NB.host(g), cg, np.float64)
    q = np.array([0.2, 0.4, 0.6, 0.8])
    assert_close(NB.host(fl.quantile(NB.dev(t), NB.dev(np.zeros(shape)), q=NB.dev(q))),
                 fl.quantile(t, np.zeros(shape), q=q), np.float64)
    x = rng.standard_normal((3,) + (1,) * 8)
    y = np.ones((1,) * 8, np.int64)
    v, g = fl.cross_entropy.value_and_grad(NB.dev(x), NB.dev(y), axis=0)
    cv, cg = fl.cross_entropy.value_and_grad(x, y, axis=0)
    assert_close(NB.host(v), cv, np.float64)
    assert_close(NB.host(g), cg, np.float64)
    two = rng.standard_normal((1,) * 9 + (2,))
    one = NB.dev(two)[..., 1:]  # one element of a 10-d view, at an offset
    assert_close(NB.host(fl.mse(one, NB.dev(np.zeros(one.shape)))), fl.mse(two[..., 1:], np.zeros(one.shape)),
                 np.float64)


def test_out(fl, rng):
    pred, target, _ = elementwise_data("mse", (50,), np.float32, rng)
    dp, dt = NB.dev(pred), NB.dev(target)
    out = cuda.device_array(50, np.float32)
    g = fl.mse.grad(dp, dt, out=out)
    assert g is out
    assert_close(NB.host(out), fl.mse.grad(pred, target), np.float32)
    v, g = fl.mse.value_and_grad(dp, dt, out=dp)  # in place over pred
    assert g is dp
    assert_close(NB.host(dp), fl.mse.grad(pred, target), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        fl.mse.grad(dt, dt, out=cuda.device_array(50, np.float64))
    with pytest.raises(ValueError, match="shape"):
        fl.mse.grad(dt, dt, out=cuda.device_array(49, np.float32))


def test_kl_div(fl, rng):
    for dtype, shape, axis, reds in ((np.float64, (4, 6), -1, ("mean", "sum", "none", "batchmean")),
                                     (np.float32, (3, 5, 2), 1, ("mean", "batchmean"))):
        for opts in ROW_OPTIONS["kl_div"]:
            pred, target, kw = row_data("kl_div", shape, dtype, rng, opts, axis=axis)
            lead = lead_shape(shape, axis)
            w = sample_weight(rng, lead, dtype)
            for red in reds:
                kw2 = dict(kw, reduction=red, axis=axis)
                exp = ref.kl_div(pred, target, sample_weight=w, **kw2)
                if red == "none":  # fastloss gives pred's shape (README); the reference sums rows
                    exp = None
                _compare(NB, fl.kl_div, pred, target, kw2, dtype, shape, weight=w, expected=exp)
    with pytest.raises(ValueError, match="leading shape"):
        fl.kl_div(NB.dev(pred), NB.dev(target), sample_weight=NB.dev(np.ones(7)))


# -- row losses -----------------------------------------------------------------------------------
_ROWS = [(n, o) for n in ("cross_entropy", "multi_margin") for o in ROW_OPTIONS[n]]


@pytest.mark.parametrize("C,dtype", [(5, np.float64), (5, np.float32), (40, np.float32), (150, np.float64)],
                         ids=["thread-f64", "thread-f32", "warp-f32", "block-f64"])
@pytest.mark.parametrize("name,opts", [pytest.param(n, o, id=f"{n}-{case_id(o)}") for n, o in _ROWS])
def test_rows(fl, name, opts, dtype, C, rng):
    R = 7 if C == 5 else 3  # (the simulator is slow with a warp or a block per row)
    shape = (R, C)
    pred, target, kw = row_data(name, shape, dtype, rng, opts)
    w = sample_weight(rng, (R,), dtype) if "class_weight" in opts else None
    for red in ("mean", "sum", "none"):
        exp = ref.ROWS[name](pred, target, reduction=red, sample_weight=w, **kw)
        _compare(NB, getattr(fl, name), pred, target, dict(kw, reduction=red), dtype, (R,), weight=w,
                 expected=exp)


@pytest.mark.parametrize("name", ["cross_entropy", "multi_margin"])
def test_rows_many_blocks_and_families(fam, fl, name, rng):
    shape = (70, 6) if SIM else (3000, 40)  # several grid-stride rounds of rows
    dtype = np.float32
    pred, target, kw = row_data(name, shape, dtype, rng, {"class_weight": "array"})
    w = sample_weight(rng, shape[:1], dtype)
    for red in ("mean", "sum", "none"):
        exp = ref.ROWS[name](pred, target, reduction=red, sample_weight=w, **kw)
        _compare(fam, getattr(fl, name), pred, target, dict(kw, reduction=red), dtype, shape[:1], weight=w,
                 ops=("vg", "v", "g"), expected=exp)


def test_cross_entropy_large_C(fam, fl, rng):
    """C = 2000: a block per row (also with the default threshold on a GPU)."""
    shape = (3, 2000) if SIM else (50, 2000)
    for opts in ({}, {"label_smoothing": 0.1, "class_weight": "array"}, {"_probs": True}):
        pred, target, kw = row_data("cross_entropy", shape, np.float32, rng, opts)
        for red in ("mean", "none"):
            exp = ref.cross_entropy(pred, target, reduction=red, **kw)
            _compare(fam, fl.cross_entropy, pred, target, dict(kw, reduction=red), np.float32, shape[:1],
                     expected=exp)


def test_rows_axis_and_float16(fl, rng):
    shape = (3, 5, 4)
    for name in ("cross_entropy", "multi_margin"):
        pred, target, kw = row_data(name, shape, np.float64, rng, {}, axis=1)
        exp = ref.ROWS[name](pred, target, reduction="sum", axis=1, **kw)
        _compare(NB, getattr(fl, name), pred, target, dict(kw, reduction="sum", axis=1), np.float64, (3, 4),
                 expected=exp)
    pred, target, kw = row_data("cross_entropy", (6, 10), np.float16, rng, {})
    _compare(NB, fl.cross_entropy, pred, target, {"reduction": "mean"}, np.float16, (6,))


def test_cross_entropy_out_logits_in_place(fl, rng):
    pred, target, _ = row_data("cross_entropy", (5, 90), np.float32, rng, {"label_smoothing": 0.2})
    dp, dt = NB.dev(pred), NB.dev(target)
    v, g = fl.cross_entropy.value_and_grad(dp, dt, label_smoothing=0.2, out=dp)
    cv, cg = fl.cross_entropy.value_and_grad(pred, target, label_smoothing=0.2)
    assert g is dp
    assert_close(NB.host(dp), cg, np.float32, factor=4)
    assert_close(NB.host(v), cv, np.float32, factor=4)


def test_cross_entropy_all_ignored(fl):
    x = NB.dev(np.zeros((3, 4)))
    y = NB.dev(np.array([-100, -100, -100]))
    v, g = fl.cross_entropy.value_and_grad(x, y)
    assert np.isnan(NB.host(v)) and np.all(NB.host(g) == 0)
    assert NB.host(fl.cross_entropy(x, y, reduction="sum")) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_confident_rows(fl, dtype):
    """As on the CPU (test_rows.py): a confident row's loss and label gradient keep their
    relative accuracy, with labels (thread, warp and block per row) and with probabilities.
    The online softmax rescales s as it goes, a few more roundings of 1 + (tiny) than the CPU's
    two passes: a few ulp of 1 absolute in float64."""
    from test_rows import CONFIDENT_ROWS
    rtol, atol = (2e-6, 0.0) if dtype == np.float32 else (1e-12, 2e-15)
    for row, loss, grad_y in CONFIDENT_ROWS:
        for C in (len(row), 40, 200):  # padded with very negative logits: same loss to the last bit
            x = np.full((1, C), -1e4, dtype)
            x[0, :len(row)] = row
            if row[0] > 1e6:
                x[0, len(row):] = row[0] - 1e4
            for t in (np.array([0]), np.eye(C, dtype=dtype)[[0]]):
                v, g = fl.cross_entropy.value_and_grad(NB.dev(x), NB.dev(t), reduction="none")
                np.testing.assert_allclose(NB.host(v), [loss], rtol=rtol, atol=atol, err_msg=f"{row} C={C}")
                np.testing.assert_allclose(NB.host(g)[0, 0], grad_y, rtol=rtol, atol=atol, err_msg=f"{row} C={C}")


def test_out_overlapping_an_input(fl, rng):
    """out= sharing device memory with an input other than as exactly that input (here a view
    of pred shifted by one element) goes through a buffer of its own, as on the CPU: written
    directly, a thread could overwrite an element another thread has yet to read."""
    n = BIG
    base = rng.standard_normal(n + 1)
    t = rng.standard_normal(n)
    ev, eg = fl.log_cosh.value_and_grad(base[:-1].copy(), t, reduction="sum")
    d = NB.dev(base)
    v, g = fl.log_cosh.value_and_grad(d[:-1], NB.dev(t), out=d[1:], reduction="sum")
    assert_close(NB.host(v), ev, np.float64)
    assert_close(NB.host(d)[1:], eg, np.float64)
    R, C = 8, 40
    xb = rng.standard_normal(R * C + 1)
    y = rng.integers(0, C, R)
    ev, eg = fl.cross_entropy.value_and_grad(xb[:-1].copy().reshape(R, C), y)
    d = NB.dev(xb)
    v, g = fl.cross_entropy.value_and_grad(d[:-1].reshape(R, C), NB.dev(y), out=d[1:].reshape(R, C))
    assert_close(NB.host(v), ev, np.float64)
    assert_close(NB.host(d)[1:].reshape(R, C), eg, np.float64)


def test_kl_div_axis_checked_without_weights(fl):
    """As on the CPU: a kl_div axis out of range is a ValueError with or without weights, for a
    0-d pred too (it was checked on the GPU only when sample_weight was given)."""
    for shape in ((3, 4), ()):
        x, t = NB.dev(np.full(shape, -1.0)), NB.dev(np.full(shape, 0.5))
        with pytest.raises(ValueError, match="axis"):
            fl.kl_div(x, t, axis=7)


# -- errors ---------------------------------------------------------------------------------------
def test_hinge_bad_targets(fl):
    p = NB.dev(np.zeros(100))
    bad = np.ones(100)
    bad[77] = 0.5
    with pytest.raises(ValueError, match="±1"):
        fl.hinge(p, NB.dev(bad))
    mixed = np.ones(100)
    mixed[3], mixed[90] = -1.0, 0.0
    with pytest.raises(ValueError, match="mixes"):
        fl.squared_hinge.grad(p, NB.dev(mixed))
    fl.hinge(p, NB.dev(np.where(np.arange(100) % 2, 1.0, 0.0)))  # 0/1 labels are fine
    out = NB.dev(np.full(100, 7.0))
    with pytest.raises(ValueError, match="±1"):
        fl.hinge.grad(p, NB.dev(bad), out=out)
    assert np.all(NB.host(out) == 7.0)  # not written before the check passed (as the CPU)
    good = np.where(np.arange(100) % 3, 1.0, -1.0)
    fl.hinge.grad(p, NB.dev(good), out=out)
    assert_close(NB.host(out), fl.hinge.grad(np.zeros(100), good), np.float64)


@pytest.mark.parametrize("C", [5, 40, 150])
def test_labels_out_of_range(fl, C):
    x = NB.dev(np.zeros((6, C), np.float32))
    y = np.arange(6) % C
    y[4] = C
    with pytest.raises(ValueError, match=f"label {C} outside"):
        fl.cross_entropy(x, NB.dev(y))
    y[4] = -1
    with pytest.raises(ValueError, match="label -1 outside"):
        fl.multi_margin.value_and_grad(x, NB.dev(y))
    y[4] = -100  # ignore_index is fine for cross_entropy only
    fl.cross_entropy(x, NB.dev(y))
    y[4] = C + 3  # out=logits: checked before anything is written into them
    with pytest.raises(ValueError, match=f"label {C + 3} outside"):
        fl.cross_entropy.grad(x, NB.dev(y), out=x)
    assert np.all(NB.host(x) == 0)


def _bad_input_cases(fl):
    """(label, call) pairs: calls with bad input, each given the array module to build it with."""
    wide = np.array([0, 2**64 - 100, 1], np.uint64)  # wraps to -100 (ignore_index) as int64
    nan_cw = np.array([1.0, np.nan, 1.0])
    nan_margin = np.array([1.0, np.nan, 1.0])

    scaled = fl.elementwise_loss(lambda p, t, m: m * (p - t) ** 2, lambda p, t, m: 2 * m * (p - t),
                                 params={"m": 1.0}, name="scaled_mse")
    x3 = np.zeros((3, 3))
    return [
        ("ce no classes", lambda d: fl.cross_entropy(d(np.zeros((4, 0))), d(np.zeros(4, np.int64)))),
        ("ce no rows or classes", lambda d: fl.cross_entropy(d(np.zeros((0, 0))), d(np.zeros(0, np.int64)))),
        ("mm no classes", lambda d: fl.multi_margin.grad(d(np.zeros((4, 0))), d(np.zeros(4, np.int64)))),
        ("ce uint64 label", lambda d: fl.cross_entropy(d(x3), d(wide))),
        ("ce uint64 2**63", lambda d: fl.cross_entropy(d(x3), d(np.array([0, 2**63, 1], np.uint64)))),
        ("mm uint64 label", lambda d: fl.multi_margin(d(x3), d(wide))),
        ("ce NaN class_weight", lambda d: fl.cross_entropy(d(x3), d(np.array([0, 1, 2])), class_weight=d(nan_cw))),
        ("ce NaN class_weight, probs", lambda d: fl.cross_entropy(d(x3), d(np.full((3, 3), 1 / 3)),
                                                                  class_weight=d(nan_cw))),
        ("ce NaN class_weight, no rows", lambda d: fl.cross_entropy(d(np.zeros((0, 3))), d(np.zeros(0, np.int64)),
                                                                    class_weight=d(nan_cw))),
        ("mm NaN class_weight", lambda d: fl.multi_margin.value_and_grad(d(x3), d(np.array([0, 1, 2])),
                                                                         class_weight=d(nan_cw))),
        ("hinge NaN margin", lambda d: fl.hinge(d(np.zeros(3)), d(np.ones(3)), margin=d(nan_margin))),
        ("huber NaN delta", lambda d: fl.huber.grad(d(np.zeros(3)), d(np.ones(3)), delta=d(nan_margin))),
        ("user NaN param", lambda d: scaled(d(np.zeros(3)), d(np.ones(3)), m=d(nan_margin))),
        # several bad arguments: the first in the CPU's order of checks wins (the GPU checked
        # in an order of its own); 0-d option arrays are numbers (the GPU checked them as arrays)
        ("complex sample_weight of a wrong shape", lambda d: fl.mse(d(np.zeros(5)), d(np.ones(5)),
                                                                    sample_weight=d(np.zeros(3, complex)))),
        ("complex class_weight of a wrong shape", lambda d: fl.cross_entropy(d(x3), d(np.array([0, 1, 2])),
                                                                            class_weight=d(np.zeros(2, complex)))),
        ("out of a wrong shape, target too", lambda d: fl.mse.grad(d(np.zeros(5)), d(np.zeros(4)), out=d(np.zeros(3)))),
        ("out of a wrong dtype, weights of a wrong shape",
         lambda d: fl.mse.grad(d(np.zeros(5)), d(np.ones(5)), sample_weight=d(np.zeros(2)),
                               out=d(np.zeros(5, np.float32)))),
        ("out of a wrong shape, labels out of range",
         lambda d: fl.cross_entropy.grad(d(x3), d(np.array([0, 9, 1])), out=d(np.zeros((4, 3))))),
        ("NaN delta array, target of a wrong shape",
         lambda d: fl.huber(d(np.zeros(5)), d(np.zeros(4)), delta=d(np.full(5, np.nan)))),
        ("0-d delta array below 0", lambda d: fl.huber(d(np.zeros(5)), d(np.ones(5)), delta=d(np.array(-1.0)))),
        ("0-d NaN margin array", lambda d: fl.hinge(d(np.zeros(5)), d(np.ones(5)), margin=d(np.array(np.nan)))),
        ("kl_div 0-d pred, weights of a wrong shape",
         lambda d: fl.kl_div(d(np.array(0.0)), d(np.array(0.5)), sample_weight=d(np.zeros(2)))),
    ]


def test_bad_inputs_raise_as_on_the_cpu(fl):
    """Each bad input raises on the GPU the error the CPU raises: no classes, unsigned labels
    beyond int64 (which wrapped to ignore_index on the GPU: the row was silently dropped), NaN
    class weights and NaN per-element options (which gave NaN results on the GPU)."""
    for label, call in _bad_input_cases(fl):
        with pytest.raises((TypeError, ValueError)) as on_cpu:
            call(lambda a: a)
        with pytest.raises(on_cpu.type) as on_gpu:
            call(NB.dev)
        assert str(on_gpu.value) == str(on_cpu.value), label


def test_zero_dim_option_arrays_are_numbers(fl):
    """A 0-d device array given as an option is the number it holds, as a 0-d NumPy array is
    on the CPU (the GPU broadcast it as a per-element array, and checked it as one)."""
    p, t = np.linspace(-3, 3, 7), np.zeros(7)
    for loss, opt, v in ((fl.huber, "delta", 0.5), (fl.hinge, "margin", 2.0), (fl.quantile, "q", 0.25)):
        want = loss.value_and_grad(p, t, **{opt: v})
        got = loss.value_and_grad(NB.dev(p), NB.dev(t), **{opt: NB.dev(np.array(v))})
        assert_close(NB.host(got[0]), want[0], np.float64)
        assert_close(NB.host(got[1]), want[1], np.float64)


def test_user_validate_gets_host_arrays(fl):
    """A user loss's validate gets a per-element option as a float64 NumPy array on the GPU
    too, as on the CPU (it got the device array: NumPy-style checks then misbehaved)."""
    seen = []

    def check(k):
        seen.append((type(k), k.dtype, k.shape))
        if np.any(k <= 0):
            raise ValueError("k must be positive")

    scaled = fl.elementwise_loss(lambda p, t, k: k * (p - t) ** 2, lambda p, t, k: 2 * k * (p - t),
                                 params={"k": 1.0}, validate=check, name="scaled")
    p, t = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    k = np.array([1.0, 2.0, 3.0], np.float32)
    assert_close(NB.host(scaled(NB.dev(p), NB.dev(t), k=NB.dev(k))), scaled(p, t, k=k), np.float64)
    assert seen[0] == seen[1] == (np.ndarray, np.float64, (3,))
    with pytest.raises(ValueError, match="k must be positive"):
        scaled(NB.dev(p), NB.dev(t), k=NB.dev(-k))


def test_label_checks_skip_nothing_good(fl):
    """The widened label check still passes good input: unsigned 64-bit labels, class weights
    with labels (with and without smoothing) and with probabilities."""
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    y = np.array([0, 2, 1, 2], np.uint64)
    cw = np.array([0.5, 2.0, 1.0])
    for kw in ({}, {"class_weight": cw}, {"class_weight": cw, "label_smoothing": 0.1}):
        want = fl.cross_entropy.value_and_grad(x, y, **kw)
        got = fl.cross_entropy.value_and_grad(NB.dev(x), NB.dev(y),
                                              **{k: NB.dev(v) if k == "class_weight" else v for k, v in kw.items()})
        for g, w in zip(got, want):
            assert_close(NB.host(g), w, np.float64)
    probs = np.full((4, 3), 1 / 3)
    assert_close(NB.host(fl.cross_entropy(NB.dev(x), NB.dev(probs), class_weight=NB.dev(cw))),
                 fl.cross_entropy(x, probs, class_weight=cw), np.float64)
    for loss in (fl.cross_entropy, fl.multi_margin):  # no rows: only the class weights to check
        none = np.zeros(0, np.int64)
        assert NB.host(loss.grad(NB.dev(np.zeros((0, 3))), NB.dev(none), class_weight=NB.dev(cw))).shape == (0, 3)
        assert NB.host(loss(NB.dev(np.zeros((0, 3))), NB.dev(none), class_weight=NB.dev(cw),
                            reduction="none")).shape == (0,)


def test_host_device_mixing(fl):
    h = np.ones((3, 4), np.float32)
    d = NB.dev(h)
    with pytest.raises(TypeError, match="pred is a CUDA array .* target is on the host"):
        fl.mse(d, h)
    with pytest.raises(TypeError, match="target is a CUDA array .* pred is on the host"):
        fl.mse(h, d)
    with pytest.raises(TypeError, match="sample_weight is on the host"):
        fl.mse(d, d, sample_weight=h)
    with pytest.raises(TypeError, match="class_weight is on the host"):
        fl.cross_entropy(d, NB.dev(np.array([0, 1, 2])), class_weight=np.ones(4))
    with pytest.raises(TypeError, match="pos_weight is on the host"):
        fl.bce_with_logits(d, d, pos_weight=np.ones(4))
    with pytest.raises(TypeError, match="out is on the host"):
        fl.mse.grad(d, d, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="pred must be a real floating-point"):
        fl.mse(NB.dev(np.ones(3, np.int32)), NB.dev(np.ones(3)))


# -- determinism and streams ----------------------------------------------------------------------
def test_deterministic(fl, rng):
    pred = rng.standard_normal(BIG).astype(np.float32) * 10
    target = rng.standard_normal(BIG).astype(np.float32)
    dp, dt = NB.dev(pred), NB.dev(target)
    a = [NB.host(fl.log_cosh(dp, dt, reduction="sum")) for _ in range(2)]
    assert a[0].tobytes() == a[1].tobytes()
    R = 12 if SIM else 400
    x, _, _ = row_data("cross_entropy", (R, 90), np.float32, rng, {})
    y = NB.dev(rng.integers(0, 90, size=R))
    dx = NB.dev(x)
    b = [fl.cross_entropy.value_and_grad(dx, y, label_smoothing=0.1) for _ in range(2)]
    assert NB.host(b[0][0]).tobytes() == NB.host(b[1][0]).tobytes()
    assert NB.host(b[0][1]).tobytes() == NB.host(b[1][1]).tobytes()


def test_stream_argument(fl, rng):
    s = cuda.stream()
    p, t = rng.standard_normal(100), rng.standard_normal(100)
    v = fl.mse(NB.dev(p), NB.dev(t), stream=s)
    s.synchronize()
    assert_close(NB.host(v), fl.mse(p, t), np.float64)


def test_shared_memory_path_on_gpu(fl, rng):
    """A real GPU can run the simulator's reduction path too (shuffles off): same results."""
    from fastloss import _config
    if SIM:
        pytest.skip("the simulator always uses it")
    pred, target, _ = elementwise_data("mse", (BIG,), np.float64, rng)
    on = NB.host(fl.mse(NB.dev(pred), NB.dev(target), reduction="sum"))
    _config.CUDA_WARP_SHUFFLE = False
    try:
        off = NB.host(fl.mse(NB.dev(pred), NB.dev(target), reduction="sum"))
    finally:
        _config.CUDA_WARP_SHUFFLE = True
    assert_close(off, on, np.float64)


def test_vector_and_scalar_paths(fl, rng):
    """16-byte vector loads and stores (aligned arrays; C % 4 == 0 for rows) and one element at a
    time (_config.CUDA_VECTOR off; on a GPU also a view 4 bytes off alignment) agree with the CPU."""
    from fastloss import _config
    n = BIG + 3  # a tail after the last whole vector
    pred, target, _ = elementwise_data("huber", (n,), np.float32, rng)
    R, C = (4, 200) if SIM else (40, 4000)
    x, _, _ = row_data("cross_entropy", (R, C), np.float32, rng, {})
    y = rng.integers(0, C, size=R)
    cv, cg = fl.huber.value_and_grad(pred, target, reduction="none")
    xv, xg = fl.cross_entropy.value_and_grad(x, y, label_smoothing=0.1)

    def shifted(a):  # the same values at an address 4 bytes past an aligned one (a GPU's views)
        flat = np.concatenate([np.zeros(1, a.dtype), a.ravel()])
        return NB.dev(flat)[1:].reshape(a.shape)

    cases = [(NB.dev, True), (NB.dev, False)] + ([] if SIM else [(shifted, True)])
    for make, vec in cases:
        saved = _config.CUDA_VECTOR
        _config.CUDA_VECTOR = vec
        try:
            v, g = fl.huber.value_and_grad(make(pred), make(target), reduction="none")
            assert_close(NB.host(v), cv, np.float32, factor=4)
            assert_close(NB.host(g), cg, np.float32, factor=4)
            v, g = fl.cross_entropy.value_and_grad(make(x), NB.dev(y), label_smoothing=0.1)
            assert_close(NB.host(v), xv, np.float32, factor=4)
            assert_close(NB.host(g), xg, np.float32, factor=4)
            gx = make(x)  # in place over the logits
            fl.cross_entropy.grad(gx, NB.dev(y), label_smoothing=0.1, out=gx)
            assert_close(NB.host(gx), xg, np.float32, factor=4)
        finally:
            _config.CUDA_VECTOR = saved


def test_vectors_per_thread_setting_takes_effect(fl, rng, monkeypatch):
    """_config.CUDA_EW_VECTORS (vectors in flight per thread, a tuning knob bench_gpu.py sweeps)
    changes the generated elementwise module at run time, and each setting computes the same."""
    from fastloss import _config
    n = BIG + 3
    pred, target, _ = elementwise_data("huber", (n,), np.float32, rng)
    cv, cg = fl.huber.value_and_grad(pred, target, reduction="none")
    mods = set()
    for ev in (1, 3):
        monkeypatch.setattr(_config, "CUDA_EW_VECTORS", ev)
        v, g = fl.huber.value_and_grad(NB.dev(pred), NB.dev(target), reduction="none")
        assert_close(NB.host(v), cv, np.float32, factor=4)
        assert_close(NB.host(g), cg, np.float32, factor=4)
        mods.add(id(fl.huber.cuda_kernels((), "float32")))
    assert len(mods) == 2


def test_import_does_not_load_cuda():
    import subprocess
    code = "import sys, fastloss; print('numba.cuda' in sys.modules, 'fastloss._cuda' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"], res.stdout + res.stderr


# -- PyTorch specifics (a GPU with CUDA torch) ----------------------------------------------------
@pytest.fixture
def torch_cuda():
    if SIM:
        pytest.skip("needs a GPU")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


def test_torch_requires_grad_version_and_stream(fl, torch_cuda, rng):
    torch = torch_cuda
    x = torch.randn(64, 300, device="cuda", requires_grad=True)  # no __cuda_array_interface__ for these
    y = torch.randint(0, 300, (64,), device="cuda")
    v, g = fl.cross_entropy.value_and_grad(x, y)
    x.grad = None
    torch.nn.functional.cross_entropy(x, y).backward()
    assert_close(v.item(), torch.nn.functional.cross_entropy(x, y).item(), np.float32, factor=4)
    assert_close(g.cpu().numpy(), x.grad.cpu().numpy(), np.float32, factor=4)
    logits = torch.randn(64, 300, device="cuda")
    before = logits._version
    fl.cross_entropy.grad(logits, y, out=logits)
    assert logits._version > before  # autograd sees the in-place write
    s = torch.cuda.Stream()
    p, t = torch.randn(10000, device="cuda"), torch.randn(10000, device="cuda")
    s.wait_stream(torch.cuda.current_stream())  # p and t were made on the current stream
    with torch.cuda.stream(s):  # kernels go to torch's current stream
        v = fl.mse(p, t)
    s.synchronize()
    assert_close(v.item(), torch.nn.functional.mse_loss(p, t).item(), np.float32)
    v = fl.mse(p, t, stream=s)  # or to an explicit one
    s.synchronize()
    assert_close(v.item(), torch.nn.functional.mse_loss(p, t).item(), np.float32)


def test_launch_parameter_buffers_are_per_thread(monkeypatch):
    """The direct launch path of a real GPU packs a kernel's parameters into a buffer that the
    driver reads inside cuLaunchKernel, which ctypes calls with the GIL released. Another
    thread's launch of the same kernel must not repack that buffer meanwhile. A stand-in for
    cuLaunchKernel (no GPU needed) keeps the first thread inside the call until a second thread
    has packed and launched its own parameters, then reads what the first launch would send."""
    import ctypes
    import threading

    from fastloss import _cuda

    packer = _cuda._Packer("<qqd")
    inside, second_done = threading.Event(), threading.Event()
    sent = {}

    def fake_cu_launch(handle, gx, gy, gz, bx, by, bz, shmem, stream, params, extra):
        if handle == 1:
            inside.set()
            second_done.wait(10)
        size = ctypes.c_size_t.from_address(extra[3]).value
        sent[handle] = packer.st.unpack(ctypes.string_at(extra[1], size))
        if handle == 2:
            second_done.set()
        return 0

    monkeypatch.setattr(_cuda, "_cu_launch", fake_cu_launch)
    first = threading.Thread(target=packer.launch, args=(1, 4, 32, 0, (11, 12, 0.5)))
    first.start()
    assert inside.wait(10)
    packer.launch(2, 4, 32, 0, (21, 22, 1.5))
    first.join(10)
    assert sent == {1: (11, 12, 0.5), 2: (21, 22, 1.5)}
