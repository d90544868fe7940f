"""Gradients against central finite differences (float64).

Two independent checks: our own central differences of fastloss's value (which is itself
checked against reference.py elsewhere), and fastloss's ``check_grad`` helper -- which must also
catch a wrong gradient.
"""
import math

import numpy as np
import pytest

from _cases import elementwise_cases, elementwise_data, row_cases, row_data, sample_weight, case_id

ELEM = elementwise_cases()
ROWC = row_cases()


def _fd_grad(loss, pred, target, h=1e-6, **kw):
    """Central differences of the (reduced) value; for "none" of the sum of the values."""
    red = kw.get("reduction", "mean")
    g = np.zeros_like(pred)
    for i in np.ndindex(pred.shape):
        a = pred.copy()
        b = pred.copy()
        step = h * max(1.0, abs(pred[i]))
        a[i] += step
        b[i] -= step
        fa = np.sum(np.asarray(loss(a, target, **kw), dtype=np.float64))
        fb = np.sum(np.asarray(loss(b, target, **kw), dtype=np.float64))
        g[i] = (fa - fb) / (a[i] - b[i])
    assert red is not None
    return g


def _assert_fd(g, fd, what):
    err = np.abs(np.asarray(g) - fd)
    bound = 1e-6 + 1e-5 * np.abs(fd)
    assert np.all(err <= bound), f"{what}: max err {err.max()} at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,opts", ELEM, ids=[f"{n}-{case_id(o)}" for n, o in ELEM])
def test_elementwise_fd(fl, name, opts, reduction, rng):
    pred, target, kw = elementwise_data(name, (3, 4), np.float64, rng, opts)
    if name == "bce":
        pred = np.clip(pred, 0.05, 0.95)
    sw = sample_weight(rng, (3, 4))
    loss = getattr(fl, name)
    for w in (None, sw):
        g = loss.grad(pred, target, reduction=reduction, sample_weight=w, **kw)
        fd = _fd_grad(loss, pred, target, reduction=reduction, sample_weight=w, **kw)
        _assert_fd(g, fd, f"{name} {kw} {reduction} weighted={w is not None}")


@pytest.mark.parametrize("name,opts", ROWC, ids=[f"{n}-{case_id(o)}" for n, o in ROWC])
def test_rows_fd(fl, name, opts, rng):
    pred, target, kw = row_data(name, (4, 5), np.float64, rng, opts)
    sw = sample_weight(rng, (4,))
    loss = getattr(fl, name)
    reds = ["mean", "sum", "none"] + (["batchmean"] if name == "kl_div" else [])
    for red in reds:
        for w in (None, sw):
            g = loss.grad(pred, target, reduction=red, sample_weight=w, **kw)
            fd = _fd_grad(loss, pred, target, reduction=red, sample_weight=w, **kw)
            _assert_fd(g, fd, f"{name} {kw} {red} weighted={w is not None}")


@pytest.mark.parametrize("name,opts", ELEM + ROWC,
                         ids=[f"{n}-{case_id(o)}" for n, o in ELEM + ROWC])
def test_check_grad_passes(fl, name, opts, rng):
    if name in {n for n, _ in ROWC}:
        pred, target, kw = row_data(name, (3, 4), np.float64, rng, opts)
    else:
        pred, target, kw = elementwise_data(name, (7,), np.float64, rng, opts)
        if name == "bce":
            pred = np.clip(pred, 0.05, 0.95)
    res = fl.check_grad(getattr(fl, name), pred, target, **kw)
    assert res.max_abs_error < 1e-5, (res.max_abs_error, res.worst_index)
    assert res.max_rel_error < 1e-3, (res.max_rel_error, res.worst_index)


def test_check_grad_float32_input_checks_in_float64(fl, rng):
    pred, target, _ = elementwise_data("log_cosh", (9,), np.float32, rng)
    res = fl.check_grad(fl.log_cosh, pred, target, reduction="sum")
    assert res.max_abs_error < 1e-6


def test_check_grad_with_options(fl, rng):
    pred, target, _ = elementwise_data("huber", (8,), np.float64, rng, {"delta": 0.3})
    res = fl.check_grad(fl.huber, pred, target, delta=0.3, reduction="sum",
                        sample_weight=np.linspace(0.5, 2, 8))
    assert res.max_abs_error < 1e-6


def test_check_grad_detects_wrong_gradient(fl):
    """A loss whose derivative is wrong (by 0.5) for pred > 2 only."""
    def value(p, t):
        return (p - t) ** 2

    def deriv(p, t):
        return 2.0 * (p - t) + (0.5 if p > 2.0 else 0.0)

    bad = fl.elementwise_loss(value, deriv, name="bad_mse")
    pred = np.array([0.1, -1.0, 3.0, 0.7, 1.2])
    target = np.zeros(5)
    res = fl.check_grad(bad, pred, target, reduction="sum")
    assert math.isclose(res.max_abs_error, 0.5, rel_tol=1e-3), res.max_abs_error
    assert res.max_rel_error > 0.05
    wi = res.worst_index
    assert (wi == 2) or (tuple(np.atleast_1d(wi)) == (2,)), wi


def test_check_grad_detects_wrong_gradient_2d(fl):
    def value(p, t):
        return math.sin(p) * t

    def deriv(p, t):
        return math.cos(p)  # wrong: missing the factor t

    bad = fl.elementwise_loss(value, deriv)
    pred = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    target = np.array([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    res = fl.check_grad(bad, pred, target, reduction="sum")
    assert res.max_abs_error > 1.0
    assert tuple(np.atleast_1d(res.worst_index)) == (1, 1)


def test_check_grad_step(fl, rng):
    pred, target, _ = elementwise_data("mse", (5,), np.float64, rng)
    r1 = fl.check_grad(fl.mse, pred, target, step=1e-3)
    r2 = fl.check_grad(fl.mse, pred, target, step=1e-7)
    # central differences are exact for a quadratic up to rounding
    assert r1.max_abs_error < 1e-8 and r2.max_abs_error < 1e-6
