"""Elementwise losses against the float64 NumPy references in reference.py."""
import math

import numpy as np
import pytest

import reference as ref
from _cases import (ELEMENTWISE, call_all, case_id, elementwise_cases, elementwise_data,
                    sample_weight)
from _checks import check_grad, check_value, check_vg_consistent, check_vg_matches, same_bits
from conftest import assert_close

REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(), (1,), (7,), (1001,), (0,), (0, 5), (3, 4), (2, 3, 5)]
SHAPE_IDS = ["0d", "1", "7", "1001", "empty", "0x5", "3x4", "2x3x5"]


def _run_and_check(fl, name, opts, shape, dtype, reduction, weighted, rng, factor=1.0):
    pred, target, kw = elementwise_data(name, shape, dtype, rng, opts)
    sw = sample_weight(rng, shape, dtype) if weighted else None
    loss = getattr(fl, name)
    pc, tc = pred.copy(), target.copy()
    v, g, vg = call_all(loss, pred, target, reduction=reduction, sample_weight=sw, **kw)
    ev, eg = ref.ELEMENTWISE[name](pred, target, reduction=reduction, sample_weight=sw, **kw)
    msg = f"{name} {kw} {reduction} {dtype} {shape} weighted={weighted}"
    check_value(v, ev, dtype, reduction, shape, factor=factor, msg=msg)
    check_grad(g, eg, dtype, shape, factor=factor, msg=msg)
    check_vg_matches(vg, ev, eg, dtype, reduction, shape, shape, factor=factor, msg=msg)
    assert same_bits(pred, pc) and same_bits(target, tc), "inputs were modified"


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_default_options(fl, name, reduction, dtype, shape, weighted, rng):
    _run_and_check(fl, name, {}, shape, dtype, reduction, weighted, rng)


_OPT_CASES = [(n, o) for n, o in elementwise_cases() if o]


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 5)], ids=["7", "2x3x5"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,opts", _OPT_CASES,
                         ids=[f"{n}-{case_id(o)}" for n, o in _OPT_CASES])
def test_options(fl, name, opts, reduction, dtype, shape, weighted, rng):
    _run_and_check(fl, name, opts, shape, dtype, reduction, weighted, rng)


def _fast_option_values():
    import fastloss
    return [(name, o.name, v) for name in ELEMENTWISE for o in getattr(fastloss, name).options
            if o.fast and not o.host for v in o.fast]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,option,value", _fast_option_values(),
                         ids=[f"{n}-{o}={v}" for n, o, v in _fast_option_values()])
def test_fast_option_loops_match_the_general_loop(fl, name, option, value, dtype, rng):
    """An option value with a CPU loop of its own (``Option.fast``: the option is a constant
    there, so LLVM folds what that value makes needless) gives the general loop's numbers bit
    for bit. The general loop is reached with the same value as a per-element array, which no
    kernel treats as a constant; the test_default_options/test_options checks of the scalar
    against the float64 references then cover both loops."""
    loss = getattr(fl, name)
    n = 3000  # several BLOCKs and a partial one
    pred, target, _ = elementwise_data(name, (n,), np.dtype(dtype), rng)
    opts = loss._parse("value", {option: value})[3]
    static, scalar = loss.kernel_arguments(opts, (n,), np.dtype(dtype))
    _, per_element = loss.kernel_arguments(dict(opts, **{option: np.full(n, value)}), (n,), np.dtype(dtype))
    k = loss.cpu_kernels(static, dtype)
    outs = []
    for params in (scalar, per_element):
        vals, vals_both = np.empty(n, dtype), np.empty(n, dtype)
        grad, grad_both = np.empty(n, dtype), np.empty(n, dtype)
        s, _ = k.value_chunk(pred, target, None, vals, *params, 0, n)
        k.grad_chunk(pred, target, None, grad, 0.5, *params, 0, n)
        s_both, _ = k.both_chunk(pred, target, None, vals_both, grad_both, 0.5, *params, 0, n)
        outs.append((s, vals, grad, s_both, vals_both, grad_both))
    assert np.isfinite(outs[0][0]) and outs[0][0] != 0.0
    for what, fast, general in zip(["sum", "values", "grad", "both: sum", "both: values", "both: grad"], *outs):
        assert same_bits(fast, general), f"{name} {option}={value} {dtype}: {what} differ"


@pytest.mark.parametrize("shape", [(), (7,), (3, 4)], ids=["0d", "7", "3x4"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse", "huber", "log_cosh", "bce_with_logits", "hinge"])
def test_float16(fl, name, reduction, shape, rng):
    """float16 is computed in float32 and returned as float16."""
    _run_and_check(fl, name, {}, shape, np.float16, reduction, False, rng)


@pytest.mark.parametrize("name", ["mse", "quantile"])
def test_float16_weighted(fl, name, rng):
    _run_and_check(fl, name, {}, (9,), np.float16, "mean", True, rng)


# --------------------------------------------------------------------------------------------
# invariants (these compare the implementation with itself, on purpose)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_sum_equals_sum_of_none_and_mean_is_sum_over_n(fl, name, dtype, rng):
    pred, target, kw = elementwise_data(name, (5, 6), dtype, rng)
    loss = getattr(fl, name)
    none = np.asarray(loss(pred, target, reduction="none", **kw), dtype=np.float64)
    s = float(loss(pred, target, reduction="sum", **kw))
    m = float(loss(pred, target, reduction="mean", **kw))
    assert_close(s, none.sum(), dtype)
    assert_close(m, none.sum() / none.size, dtype)
    g_none = np.asarray(loss.grad(pred, target, reduction="none", **kw), dtype=np.float64)
    g_sum = np.asarray(loss.grad(pred, target, reduction="sum", **kw), dtype=np.float64)
    g_mean = np.asarray(loss.grad(pred, target, reduction="mean", **kw), dtype=np.float64)
    assert_close(g_sum, g_none, dtype)
    assert_close(g_mean, g_none / none.size, dtype)


@pytest.mark.parametrize("name", ["mse", "huber", "bce_with_logits", "sigmoid_focal"])
def test_unit_weights_equal_unweighted(fl, name, rng):
    pred, target, kw = elementwise_data(name, (4, 5), np.float64, rng)
    loss = getattr(fl, name)
    ones = np.ones(pred.shape)
    for red in REDUCTIONS:
        a = loss(pred, target, reduction=red, **kw)
        b = loss(pred, target, reduction=red, sample_weight=ones, **kw)
        assert_close(b, a, np.float64)
        assert_close(loss.grad(pred, target, reduction=red, sample_weight=ones, **kw),
                     loss.grad(pred, target, reduction=red, **kw), np.float64)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_weighted_mean_scale_invariant(fl, name, rng):
    """mean = sum(w l) / sum(w): multiplying all weights by a constant changes nothing."""
    pred, target, kw = elementwise_data(name, (11,), np.float64, rng)
    w = sample_weight(rng, (11,))
    loss = getattr(fl, name)
    a = loss(pred, target, sample_weight=w, **kw)
    b = loss(pred, target, sample_weight=4.0 * w, **kw)
    assert_close(b, a, np.float64)
    assert_close(float(a), np.sum(w * np.asarray(loss(pred, target, reduction="none", **kw)))
                 / np.sum(w), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["mse", "mae", "log_cosh", "bce_with_logits", "hinge"])
def test_zero_weights_mean_is_nan_grad_zero(fl, name, dtype, rng):
    pred, target, kw = elementwise_data(name, (6,), dtype, rng)
    loss = getattr(fl, name)
    w = np.zeros(6, dtype=dtype)
    v, g = loss.value_and_grad(pred, target, sample_weight=w, **kw)
    assert np.isnan(v) and np.asarray(v).dtype == dtype
    assert np.asarray(g).dtype == dtype and np.all(np.asarray(g) == 0)
    assert float(loss(pred, target, reduction="sum", sample_weight=w, **kw)) == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_empty(fl, name, dtype):
    loss = getattr(fl, name)
    e = np.zeros((0,), dtype=dtype)
    t = e.copy()
    kw = {}
    v = loss(e, t, **kw)
    assert np.isnan(v) and type(v) is np.dtype(dtype).type
    s = loss(e, t, reduction="sum", **kw)
    assert s == 0.0 and type(s) is np.dtype(dtype).type
    n = loss(e, t, reduction="none", **kw)
    assert isinstance(n, np.ndarray) and n.shape == (0,) and n.dtype == dtype
    g = loss.grad(e, t, **kw)
    assert isinstance(g, np.ndarray) and g.shape == (0,) and g.dtype == dtype


# --------------------------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["mse", "smooth_l1", "bce", "sigmoid_focal"])
def test_out_receives_gradient(fl, name, dtype, rng):
    pred, target, kw = elementwise_data(name, (3, 5), dtype, rng)
    loss = getattr(fl, name)
    _, eg = ref.ELEMENTWISE[name](pred, target, **kw)
    out = np.full(pred.shape, np.nan, dtype=dtype)
    v, g = loss.value_and_grad(pred, target, out=out, **kw)
    assert g is out or np.shares_memory(g, out)
    assert_close(out, eg, dtype)
    out2 = np.full(pred.shape, np.nan, dtype=dtype)
    g2 = loss.grad(pred, target, out=out2, **kw)
    assert g2 is out2 or np.shares_memory(g2, out2)
    assert_close(out2, eg, dtype)


def test_out_noncontiguous(fl, rng):
    pred, target, _ = elementwise_data("mse", (6,), np.float64, rng)
    buf = np.full(12, -7.0)
    out = buf[::2]
    fl.mse.value_and_grad(pred, target, out=out)
    _, eg = ref.mse(pred, target)
    assert_close(out, eg, np.float64)
    assert np.all(buf[1::2] == -7.0), "out= wrote outside its view"


# --------------------------------------------------------------------------------------------
# input conversion
# --------------------------------------------------------------------------------------------


def test_python_lists_and_scalars(fl):
    v = fl.mse([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    assert isinstance(v, np.float64)
    assert_close(v, (0.25 + 0 + 1) / 3, np.float64)
    g = fl.mse.grad([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    assert isinstance(g, np.ndarray) and g.dtype == np.float64
    assert_close(g, np.array([-1.0, 0.0, 2.0]) / 3, np.float64)
    v0 = fl.huber(3.0, 0.5)
    assert isinstance(v0, np.float64)
    assert_close(v0, 2.5 - 0.5, np.float64)


@pytest.mark.parametrize("tdtype", [np.float64, np.float16, np.int32, np.int64, np.uint8])
def test_target_of_other_real_dtype_is_converted(fl, tdtype, rng):
    pred = rng.standard_normal(9).astype(np.float32)
    target = np.arange(9).astype(tdtype)
    v, g = fl.mse.value_and_grad(pred, target)
    assert type(v) is np.float32 and g.dtype == np.float32
    ev, eg = ref.mse(pred, target.astype(np.float64))
    assert_close(v, ev, np.float32)
    assert_close(g, eg, np.float32)


def test_bool_target_is_converted(fl):
    pred = np.array([0.2, 0.7, 0.9])
    target = np.array([False, True, True])
    ev, eg = ref.bce(pred, target.astype(float))
    v, g = fl.bce.value_and_grad(pred, target)
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,big", [(np.float32, 1e4), (np.float32, 3e38),
                                       (np.float64, 1e300)])
def test_log_cosh_no_overflow(fl, dtype, big):
    pred = np.array([big, -big, 0.5, 0.0], dtype=dtype)
    target = np.zeros(4, dtype=dtype)
    v = fl.log_cosh(pred, target, reduction="none")
    b = float(np.asarray(big, dtype=dtype))
    expected = [b - math.log(2), b - math.log(2), math.log(math.cosh(0.5)), 0.0]
    assert np.all(np.isfinite(v))
    assert_close(v, expected, dtype)
    g = fl.log_cosh.grad(pred, target, reduction="none")
    assert_close(g, [1.0, -1.0, math.tanh(0.5), 0.0], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_cosh_small_differences_keep_relative_accuracy(fl, dtype):
    """log cosh d = d²/2 − ... for small d: the textbook |d| + log1p(e^(−2|d|)) − log 2 cancels
    (it gave 0 for d = 1e-4 in float32, and 1e-9 relative error in float64). Values and tanh
    gradients must keep their relative accuracy down to the smallest normal results."""
    smallest = 1e-18 if dtype == np.float32 else 1e-150  # d²/2 stays a normal number
    mags = np.geomspace(smallest, 2.0, 400)
    d = np.concatenate([mags, -mags]).astype(dtype)
    target = np.full_like(d, 0.25)
    pred = (target + d).astype(dtype)
    d = pred.astype(np.float64) - target  # the difference the kernel sees, exactly
    rtol = 1e-6 if dtype == np.float32 else 1e-14  # a few ulp
    v, g = fl.log_cosh.value_and_grad(pred, target, reduction="none")
    ev, eg = ref.log_cosh(pred, target, reduction="none")
    np.testing.assert_allclose(np.asarray(v, np.float64), ev, rtol=rtol, atol=0)
    np.testing.assert_allclose(np.asarray(g, np.float64), np.tanh(d), rtol=rtol, atol=0)


def test_log_cosh_polynomials_reproducible():
    """The polynomials in losses/regression.py are what their documented fit gives, bit for bit
    (read off the code by running it on the polynomial z)."""
    pytest.importorskip("mpmath")
    from numpy.polynomial import Polynomial

    from fastloss.losses import regression

    for name, coeffs in regression._fit_log_cosh_series().items():
        written = getattr(regression, name)(Polynomial([0.0, 1.0])).coef
        np.testing.assert_array_equal(written, np.array(coeffs), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_cosh_within_a_few_ulp_of_mpmath(fl, dtype):
    """Value and gradient against mpmath, in ulp of the dtype, across both polynomial ranges,
    the thresholds between them (0.35 and 0.75) and the closed forms beyond."""
    mp = pytest.importorskip("mpmath")
    rng = np.random.default_rng(3)
    tiny = 1e-18 if dtype == np.float32 else 1e-150
    a = np.concatenate([np.geomspace(tiny, 50.0, 1500), rng.uniform(0.3, 0.8, 1500),
                        [0.35, 0.75, 40.0]]).astype(dtype)
    a = np.concatenate([a, np.nextafter(a[-3:-1], dtype(1)), -a])
    v, g = fl.log_cosh.value_and_grad(a, np.zeros_like(a), reduction="none")
    worst = {"value": 0.0, "grad": 0.0}
    for x, vx, gx in zip(a.astype(np.float64), v, g):
        X = mp.mpf(float(x))
        with mp.workdps(30 + 2 * max(0, int(-math.log10(abs(float(x)))))):
            exact = {"value": mp.log(mp.cosh(X)), "grad": mp.tanh(X)}
            for key, got in (("value", vx), ("grad", gx)):
                ulp = np.spacing(dtype(abs(float(exact[key]))))
                worst[key] = max(worst[key], float(abs(mp.mpf(float(got)) - exact[key]) / mp.mpf(float(ulp))))
    assert worst["value"] <= 3.0 and worst["grad"] <= 3.0, worst


@pytest.mark.parametrize("dtype,big", [(np.float32, 1e4), (np.float64, 1e300)])
@pytest.mark.parametrize("name", ["bce_with_logits", "sigmoid_focal"])
def test_logit_losses_no_overflow(fl, name, dtype, big):
    pred = np.array([big, -big, big, -big, 30.0, -30.0], dtype=dtype)
    target = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype)
    v, g = getattr(fl, name).value_and_grad(pred, target, reduction="none")
    ev, eg = ref.ELEMENTWISE[name](pred, target, reduction="none")
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    assert_close(v, ev, dtype)
    assert_close(g, eg, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_losses_at_infinite_logits(fl, dtype):
    """x = ±inf: the limits, not 0·inf = NaN. A logit that agrees with its label costs 0 with
    gradient 0; one that disagrees costs inf with a finite gradient (the slope of the limit)."""
    x = np.array([np.inf, np.inf, -np.inf, -np.inf], dtype=dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    v, g = fl.bce_with_logits.value_and_grad(x, t, reduction="none")
    np.testing.assert_array_equal(v, [0, np.inf, 0, np.inf])
    np.testing.assert_array_equal(g, [0, 1, 0, -1])
    v, g = fl.bce_with_logits.value_and_grad(x, t, reduction="none", pos_weight=2.0)
    np.testing.assert_array_equal(g, [0, 1, 0, -2])
    # focal (alpha = 0.25, gamma = 2): (1 − p_t)^γ → 1 where the label disagrees, so the
    # gradient tends to α_t times bce's: 0.75 and −0.25
    v, g = fl.sigmoid_focal.value_and_grad(x, t, reduction="none")
    np.testing.assert_array_equal(v, [0, np.inf, 0, np.inf])
    np.testing.assert_array_equal(g, [0, 0.75, 0, -0.25])


@pytest.mark.parametrize("n", [4, 100_003], ids=["serial", "parallel"])
def test_zero_weight_does_not_hide_nan(fl, n):
    p = np.ones(n)
    p[1] = np.nan
    w = np.ones(n)
    w[1] = 0.0
    v, g = fl.mse.value_and_grad(p, np.zeros(n), sample_weight=w)
    assert np.isnan(v)
    assert np.isnan(g[1]) and np.all(np.isfinite(np.delete(g, 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_outside_unit_interval_is_nan(fl, dtype):
    """pred outside [0, 1]: the value is NaN (log of a negative), and so is the gradient (it
    was ±(p − t)·1e12 from the 1e-12 clamp, fed straight to an optimiser)."""
    p = np.array([1.5, -0.2, 0.5, 0.0, 1.0], dtype=dtype)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0], dtype=dtype)
    v, g = fl.bce.value_and_grad(p, t, reduction="none")
    assert np.all(np.isnan(v[:2])) and np.all(np.isnan(g[:2]))
    # the edges keep PyTorch's clamps: a log of −100, a gradient over max(p (1 − p), 1e-12)
    np.testing.assert_allclose(v[2:], [np.log(2), 100, 100], rtol=1e-6)
    np.testing.assert_allclose(g[2:], [-2, -1e12, 1e12], rtol=1e-6)


def test_math_constants_take_the_compute_dtype(fl):
    """bce's derivative uses math.nan: left a float64 constant in the float32 kernel it turned
    the whole derivative into float64 (2.6 times slower in cache, found in review). The code
    generator wraps math's float constants in FLOAT(...) like float literals."""
    import inspect
    import re
    text = inspect.getsource(fl.bce.cpu_kernels((), "float32"))
    assert "FLOAT(math.nan)" in text
    assert not re.search(r"(?<!FLOAT\()math\.(nan|inf|pi)\b", text)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_losses_confident_predictions_keep_relative_accuracy(fl, dtype):
    """Confident correct predictions give tiny losses (log(1 + e^-40) = 4.2e-18); a stable
    form keeps them to relative accuracy instead of rounding them to 0 (PyTorch's formula
    loses them for negatives)."""
    pred = np.array([40.0, 20.0, -20.0, -40.0, 5.0, -5.0], dtype=dtype)
    target = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    v = np.asarray(fl.bce_with_logits(pred, target, reduction="none"), dtype=np.float64)
    expected = np.log1p(np.exp(-np.abs(pred.astype(np.float64))))
    np.testing.assert_allclose(v, expected, rtol=rtol, atol=0)
    v = np.asarray(fl.sigmoid_focal(pred, target, reduction="none"), dtype=np.float64)
    expected = ref.sigmoid_focal(pred, target, reduction="none")[0]
    keep = expected > (1e-37 if dtype == np.float32 else 0.0)  # float32 underflows
    assert np.all(v >= 0) and np.all(v[keep] > 0)
    np.testing.assert_allclose(v[keep], expected[keep], rtol=rtol * 10, atol=0)
    # ... and so do their gradients (σ(x) − t cancels to 0 at x = 20, t = 1 unless it is written
    # with σ(−x): the focal gradient lost a third of its value there).
    for name in ("bce_with_logits", "sigmoid_focal"):
        g = np.asarray(getattr(fl, name).grad(pred, target, reduction="none"), dtype=np.float64)
        expected = ref.ELEMENTWISE[name](pred, target, reduction="none")[1]
        keep = np.abs(expected) > (1e-37 if dtype == np.float32 else 0.0)
        np.testing.assert_allclose(g[keep], expected[keep], rtol=rtol * 10, atol=0, err_msg=name)


def test_bce_clamps_logs(fl):
    pred = np.array([0.0, 1.0, 0.0, 1.0])
    target = np.array([1.0, 0.0, 0.0, 1.0])
    v, g = fl.bce.value_and_grad(pred, target, reduction="none")
    assert_close(v, [100.0, 100.0, 0.0, 0.0], np.float64)
    assert_close(g, [-1e12, 1e12, 0.0, 0.0], np.float64)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_nan_propagates(fl, name, rng):
    pred, target, kw = elementwise_data(name, (5,), np.float64, rng)
    pred[2] = np.nan
    loss = getattr(fl, name)
    v = loss(pred, target, **kw)
    assert np.isnan(v)
    assert np.isnan(loss(pred, target, reduction="sum", **kw))
    n = loss(pred, target, reduction="none", **kw)
    assert np.isnan(n[2]) and np.all(np.isfinite(np.delete(n, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inf_propagates(fl, dtype):
    pred = np.array([np.inf, 0.0, 1.0], dtype=dtype)
    target = np.zeros(3, dtype=dtype)
    assert np.isposinf(fl.mse(pred, target, reduction="sum"))
    assert np.isposinf(fl.mae(pred, target))
    n = fl.mse(pred, target, reduction="none")
    assert np.isposinf(n[0]) and n[2] == 1.0


@pytest.mark.slow
def test_float32_sum_accumulates_in_float64(fl):
    rng = np.random.default_rng(1234)
    n = 10_000_000
    pred = (rng.standard_normal(n) + 3.0).astype(np.float32)
    target = np.zeros(n, dtype=np.float32)
    exact = float(np.sum(pred.astype(np.float64) ** 2))
    s = fl.mse(pred, target, reduction="sum")
    assert type(s) is np.float32
    assert abs(float(s) - exact) <= 1e-6 * exact
    m = fl.mse(pred, target)
    assert abs(float(m) - exact / n) <= 1e-6 * exact / n
    w = np.ones(n, dtype=np.float32)
    m = fl.mse(pred, target, sample_weight=w)
    assert abs(float(m) - exact / n) <= 1e-6 * exact / n


def test_float32_sum_medium(fl):
    """Fast version of the accumulation test: 2**20 float32 elements."""
    rng = np.random.default_rng(5)
    n = 1 << 20
    pred = (rng.standard_normal(n) + 3.0).astype(np.float32)
    target = np.zeros(n, dtype=np.float32)
    exact = float(np.sum(pred.astype(np.float64) ** 2))
    s = fl.mse(pred, target, reduction="sum")
    assert abs(float(s) - exact) <= 1e-6 * exact
    v, g = fl.mse.value_and_grad(pred, target)
    assert abs(float(v) - exact / n) <= 1e-6 * exact / n
    assert_close(g, 2.0 * pred.astype(np.float64) / n, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("add", ["lanes_add", "lanes_add4"])
def test_lanes_add_sums_in_the_documented_order(add, dtype, rng):
    """The kernels' reductions (cpu_helpers.lanes_add, and lanes_add4 in the elementwise
    kernels) add element j of a block into float64 lane j % LANES, each lane in order of j: the
    order that makes a loss's sum the same bit for bit on any thread count. Checked against that
    order written as a plain Python loop, at sizes around lanes_add4's four-strip passes, with
    terms of mixed magnitude so that another order rounds differently."""
    from fastloss._config import LANES
    from fastloss.kernels import cpu_helpers
    for n in (0, 1, LANES - 1, LANES, 3 * LANES + 5, 4 * LANES, 4 * LANES + 1, 8 * LANES - 1, 1000, 1024):
        buf = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 9, n)).astype(dtype)
        start = rng.standard_normal(LANES)
        expect = start.copy()
        for j in range(n):
            expect[j % LANES] += float(buf[j])
        acc = start.copy()
        getattr(cpu_helpers, add)(acc, buf)
        np.testing.assert_array_equal(acc, expect, err_msg=f"n={n}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["log_cosh", "bce_with_logits"])
def test_buffered_kernel_sums_in_lane_order(fl, name, dtype, rng):
    """The exp/log losses' chunk kernels buffer SUM_BLOCKS blocks of values before adding them
    into the lanes (kernels/cpu_elementwise.py: _BUFFERED); the sum must still be element j into
    float64 lane j % LANES in order of j, then the lanes in order: here that order written in
    Python over the kernel's own per-element values, at sizes around the block and the buffer
    (a full buffer, one block more, a partial block at the end), with values of mixed magnitude."""
    from fastloss._config import BLOCK, LANES, SUM_BLOCKS
    loss = getattr(fl, name)
    big = SUM_BLOCKS * BLOCK
    for n in (1, BLOCK - 1, BLOCK + 3, big - 1, big, big + 1, big + BLOCK, 2 * big + 70, 3 * big + BLOCK - 5):
        pred, target, _ = elementwise_data(name, (n,), np.dtype(dtype), rng)
        pred = (pred * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
        opts = loss._parse("value", {})[3]
        static, params = loss.kernel_arguments(opts, (n,), np.dtype(dtype))
        k = loss.cpu_kernels(static, dtype)
        vals = np.empty(n, dtype)
        s, _ = k.value_chunk(pred, target, None, vals, *params, 0, n)
        lanes = np.zeros(LANES)
        for j in range(n):
            lanes[j % LANES] += float(vals[j])
        expect = 0.0
        for v in lanes:
            expect += v
        assert np.isfinite(expect) and s == expect, f"n={n}: {s!r} != {expect!r}"


def _forms(fl):
    """(loss name, value function, its log1p_sum_form, the options the form holds for)."""
    from fastloss.losses import binary, regression
    return [("bce_with_logits", binary.bce_logits01, binary.bce_logits01_form, {"pos_weight": 1.0}),
            ("log_cosh", regression.log_cosh_value, regression.log_cosh_form, {})]


def test_log1p_sum_forms_are_the_values(fl, rng):
    """A value's log1p_sum_form (rest, e) must give the value as rest + log1p(e), with e in
    [0, 1] (each lane's product of 1 + e then stays below 2**64): checked in float64 Python
    over logits and residuals from 0 to beyond where e underflows, both signs, the branch
    points, infinities and NaN, for 0/1 targets."""
    edges = [0.0, -0.0, 1e-300, 1e-8, 0.3, 0.75, np.nextafter(0.75, 1), 0.76, 1.0, 15.0, 40.0, 90.0, 380.0,
             800.0, 1e300, np.inf]
    xs = np.concatenate([edges, np.negative(edges), rng.normal(0, 4, 300), [np.nan]])
    for name, value, form, opts in _forms(fl):
        assert getattr(value, "_fastloss_log1p_form") == (form, opts)
        for x in xs:
            for t in (0.0, 1.0):
                args = (float(x), t) + tuple(opts.values())
                want = value(*args)
                rest, e = form(*args)
                if math.isnan(want):
                    assert math.isnan(rest + math.log1p(e)), (name, x, t)
                    continue
                assert 0.0 <= e <= 1.0, (name, x, t, e)
                got = rest + math.log1p(e)
                assert got == want or abs(got - want) <= 4e-16 * abs(want) + 1e-300, (name, x, t, got, want)


def _log1p_sum_cases(name, n, dtype, rng):
    """Inputs of one regime each for a loss summed through its log1p_sum_form."""
    if name == "bce_with_logits":
        return {
            "tiny terms": (rng.uniform(-90, -15, n), np.zeros(n)),
            "tiny and alike": (rng.uniform(-17, -16.9, n), np.zeros(n)),
            "e = 1": (np.zeros(n), rng.integers(0, 2, n)),
            "mixed": (rng.normal(0, 3, n), rng.integers(0, 2, n)),
            "near 0": (rng.normal(0, 0.01, n), rng.integers(0, 2, n)),
        }
    return {"wide": (rng.normal(0, 5, n), np.zeros(n)), "past the branch": (rng.uniform(0.76, 1.0, n) * rng.choice([-1, 1], n), np.zeros(n)),
            "tiny e": (rng.uniform(20, 60, n), np.zeros(n)), "mixed": (rng.normal(0, 1, n), rng.normal(0, 1, n))}


def _exact_terms(name, p, t):
    """The loss's terms in float64 from the (rounded) inputs: softplus for 0/1 targets, log cosh."""
    p, t = p.astype(np.float64), t.astype(np.float64)
    if name == "bce_with_logits":
        z = np.where(t == 1.0, -p, p)
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    d = np.abs(p - t)
    # log cosh d = log1p(2 sinh(d/2)^2), accurate near 0; d - log 2 + log1p(e^-2d) where that overflows
    small = np.log1p(2.0 * np.sinh(np.minimum(d, 40.0) / 2.0) ** 2)
    return np.where(d < 40.0, small, d - math.log(2.0) + np.log1p(np.exp(-2.0 * d)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["bce_with_logits", "log_cosh"])
def test_log1p_sum_form_accuracy(fl, name, dtype, rng):
    """The sums that take a log1p_sum_form (one log1p per lane's product of 1 + e, every
    LOG1P_PASSES buffers) against the float64 sum of the exact terms: within 4e-7 relative in
    float32 (about 7 float32 ulps of the result; the per-element sum measured within 3e-8, the
    products within 1.1e-7 at worst, on terms alike and tiny) and 5e-15 in float64, in regimes
    where a product rounding 1 + e, or losing its small factors, would be far off (every e below
    an ulp of 1, every e = 1, terms alike), at sizes around the lanes, the buffer, the log's
    passes and the chunk (parallel), and value_and_grad's sum the same bits."""
    from fastloss._config import BLOCK, CHUNK, LANES, LOG1P_PASSES, SUM_BLOCKS
    loss = getattr(fl, name)
    buf = BLOCK * SUM_BLOCKS
    rtol = 4e-7 if dtype == np.float32 else 5e-15
    for n in (1, LANES - 1, LANES + 1, buf - 1, buf + 1, LOG1P_PASSES * buf + 3, CHUNK + 7, 3 * CHUNK + buf):
        for regime, (p, t) in _log1p_sum_cases(name, n, dtype, rng).items():
            p, t = p.astype(dtype), t.astype(dtype)
            exact = math.fsum(_exact_terms(name, p, t))
            s = loss(p, t, reduction="sum")
            assert abs(float(s) - exact) <= rtol * abs(exact), (n, regime, float(s), exact)
            v, _ = loss.value_and_grad(p, t, reduction="sum")
            assert same_bits(v, s), (n, regime)


def _grow_exact(s, e, dtype):
    """lanes_log1p_mul4's step, fma(s, e, s + e), rounded once as the FMA does (the product of
    two float32 or float64 numbers and the rounded sum, added in exact rational arithmetic)."""
    from fractions import Fraction
    return dtype(float(Fraction(float(s)) * Fraction(float(e)) + Fraction(float(dtype(s + e)))))


def _product_sum_in_documented_order(rest, e, dtype):
    """The sum of a log1p_sum_form kernel, in the order kernels/cpu_elementwise.py (_PRODUCT) and
    cpu_helpers (lanes_log1p_mul4, lanes_add_log1p) document, written as plain Python: rest of
    element j into float64 lane j % LANES in order of j; per buffer of SUM_BLOCKS blocks, each
    lane's factors four strips at a time, paired, then a strip at a time in a partial buffer;
    the lanes' log1p after every LOG1P_PASSES full buffers and at the end; the lanes in order."""
    from numba import njit

    from fastloss._config import BLOCK, LANES, LOG1P_PASSES, SUM_BLOCKS
    from fastloss.kernels.vmath import vlog1p
    log1p = njit(lambda x: vlog1p(x))
    acc, prods, passes, size = [0.0] * LANES, [dtype(0.0)] * LANES, 0, BLOCK * SUM_BLOCKS

    def flush():
        for j in range(LANES):
            acc[j] += float(log1p(prods[j]))
            prods[j] = dtype(0.0)

    for b in range(0, len(rest), size):
        r, f = rest[b:b + size], e[b:b + size]
        for j, v in enumerate(r):
            acc[j % LANES] += float(v)
        full = len(f) - len(f) % (4 * LANES)
        for k0 in range(0, full, 4 * LANES):
            for j in range(LANES):
                q = [f[k0 + i * LANES + j] for i in range(4)]
                pair = _grow_exact(_grow_exact(q[0], q[1], dtype), _grow_exact(q[2], q[3], dtype), dtype)
                prods[j] = _grow_exact(prods[j], pair, dtype)
        for k0 in range(full, len(f), LANES):
            for j in range(min(LANES, len(f) - k0)):
                prods[j] = _grow_exact(prods[j], f[k0 + j], dtype)
        if len(f) == size:
            passes += 1
            if passes == LOG1P_PASSES:
                flush()
                passes = 0
    flush()
    total = 0.0
    for v in acc:
        total += v
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["bce_with_logits", "log_cosh"])
def test_log1p_sum_kernels_sum_in_the_documented_order(fl, name, dtype, rng):
    """value_sums_chunk's and both_sums_chunk's sum is the documented order bit for bit (see
    _product_sum_in_documented_order), over the kernel's own (rest, e) of each element (its
    form's compiled function), at sizes around the strips, the buffer and the log's passes."""
    from fastloss._config import BLOCK, LANES, LOG1P_PASSES, SUM_BLOCKS
    loss = getattr(fl, name)
    buf = BLOCK * SUM_BLOCKS
    for n in (1, 4 * LANES + 5, buf, buf + LANES + 1, LOG1P_PASSES * buf, LOG1P_PASSES * buf + 2 * buf - 3):
        p = (rng.normal(0, 3, n) * 10.0 ** rng.integers(-2, 2, n)).astype(dtype)
        t = (rng.integers(0, 2, n) if name == "bce_with_logits" else rng.normal(0, 1, n)).astype(dtype)
        opts = loss._parse("value", {})[3]
        static, params = loss.kernel_arguments(opts, (n,), np.dtype(dtype))
        k = loss.cpu_kernels(static, np.dtype(dtype).name)
        form = next(getattr(k, a) for a in dir(k) if a.endswith("_form"))
        parts = [form(p[j], t[j], *params) for j in range(n)]
        rest = np.array([r for r, _ in parts], dtype)
        e = np.array([x for _, x in parts], dtype)
        expect = _product_sum_in_documented_order(rest, e, dtype)
        s, _ = k.value_chunk(p, t, None, None, *params, 0, n)
        s_both, _ = k.both_chunk(p, t, None, None, np.empty(n, dtype), 1.0, *params, 0, n)
        assert np.isfinite(expect) and s == expect == s_both, f"n={n}: {s!r} {s_both!r} != {expect!r}"


def test_log1p_sum_form_edges(fl):
    """The product sums keep IEEE's answers: NaN anywhere gives NaN, an infinite loss term inf,
    a logit whose term is 0 (−inf with target 0) nothing, in float32 and float64."""
    for dtype in (np.float32, np.float64):
        x = np.linspace(-5, 5, 3000).astype(dtype)
        t = (x > 0.3).astype(dtype)
        base = float(fl.bce_with_logits(x, t, reduction="sum"))
        for value, t_at, want in ((np.nan, 0.0, "nan"), (np.inf, 0.0, "inf"), (-np.inf, 0.0, base),
                                  (np.inf, 1.0, base), (-np.inf, 1.0, "inf")):
            xx, tt = x.copy(), t.copy()
            xx[1234], tt[1234] = value, t_at
            ref_t = float(fl.bce_with_logits(x[1234:1235], t[1234:1235], reduction="sum"))
            s = float(fl.bce_with_logits(xx, tt, reduction="sum"))
            if want == "nan":
                assert math.isnan(s)
            elif want == "inf":
                assert s == math.inf
            else:
                assert abs(s - (base - ref_t)) <= 1e-5 * base, (value, t_at, s, base - ref_t)
        lc = fl.log_cosh(np.array([np.nan, 1.0], dtype), np.zeros(2, dtype), reduction="sum")
        assert math.isnan(float(lc))
        assert float(fl.log_cosh(np.array([np.inf, 1.0], dtype), np.zeros(2, dtype), reduction="sum")) == math.inf


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_float32_data_accumulates_in_float64(fl, name):
    """A sum that float32 accumulators get visibly wrong: each chunk of 32768 elements starts
    with 64 large terms (2**26 squared residual for mse, 2**26 for mae) and goes on with ones,
    which a float32 partial sum of 2**26 or more drops (its ulp is 8). Float64 partials keep
    every one of them: about 8e-6 of the total, against float32's 6e-8 resolution."""
    n = 1 << 20
    big = 8192.0 if name == "mse" else 2.0 ** 26
    pred = np.ones(n, dtype=np.float32)
    pred[np.arange(n) % 32768 < 64] = big
    terms = pred.astype(np.float64) ** (2 if name == "mse" else 1)
    exact = math.fsum(terms)
    s = float(fl.LOSSES[name](pred, np.zeros(n, dtype=np.float32), reduction="sum"))
    assert abs(s - exact) <= 1e-7 * exact, (s, exact)


def test_huber_and_smooth_l1_relation(fl, rng):
    """huber(delta) == delta * smooth_l1(beta=delta), checked against the reference too."""
    pred, target, _ = elementwise_data("huber", (50,), np.float64, rng, {"delta": 0.7})
    h = fl.huber(pred, target, delta=0.7, reduction="none")
    s = fl.smooth_l1(pred, target, beta=0.7, reduction="none")
    assert_close(h, 0.7 * np.asarray(s), np.float64)
    assert_close(h, ref.huber(pred, target, delta=0.7, reduction="none")[0], np.float64)


def test_mae_gradient_zero_at_tie(fl):
    pred = np.array([1.0, 2.0, 3.0])
    target = np.array([1.0, 1.0, 4.0])
    g = fl.mae.grad(pred, target, reduction="none")
    assert_close(g, [0.0, 1.0, -1.0], np.float64)


def test_smooth_l1_beta0_is_l1(fl, rng):
    pred, target, _ = elementwise_data("mae", (20,), np.float64, rng)
    v, g = fl.smooth_l1.value_and_grad(pred, target, beta=0.0, reduction="none")
    assert_close(v, np.abs(pred - target), np.float64)
    assert_close(g, np.sign(pred - target), np.float64)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.75])
def test_quantile_vs_sklearn(fl, q, rng):
    sk = pytest.importorskip("sklearn.metrics")
    pred, target, _ = elementwise_data("quantile", (40,), np.float64, rng)
    w = sample_weight(rng, (40,))
    assert_close(fl.quantile(pred, target, q=q),
                 sk.mean_pinball_loss(target, pred, alpha=q), np.float64)
    assert_close(fl.quantile(pred, target, q=q, sample_weight=w),
                 sk.mean_pinball_loss(target, pred, alpha=q, sample_weight=w), np.float64)


@pytest.mark.parametrize("targets01", [False, True])
def test_hinge_vs_sklearn(fl, targets01, rng):
    sk = pytest.importorskip("sklearn.metrics")
    pred, target, _ = elementwise_data("hinge", (40,), np.float64, rng)
    w = sample_weight(rng, (40,))
    t = (target + 1) / 2 if targets01 else target
    assert_close(fl.hinge(pred, t), sk.hinge_loss(target, pred), np.float64)
    assert_close(fl.hinge(pred, t, sample_weight=w),
                 sk.hinge_loss(target, pred, sample_weight=w), np.float64)


def test_squared_hinge_keras_formula(fl, rng):
    """keras squared_hinge: mean(square(max(1 - y_true * y_pred, 0))), 0/1 labels -> ±1."""
    pred, target, _ = elementwise_data("squared_hinge", (4, 6), np.float64, rng)
    t01 = (target + 1) / 2
    expected = np.mean(np.square(np.maximum(1.0 - target * pred, 0.0)))
    assert_close(fl.squared_hinge(pred, target), expected, np.float64)
    assert_close(fl.squared_hinge(pred, t01), expected, np.float64)


def test_all_ones_hinge_targets(fl):
    """Targets all 1 (or all -1) are valid ±1 targets."""
    pred = np.array([0.5, 2.0, -1.0])
    assert_close(fl.hinge(pred, np.ones(3), reduction="none"), [0.5, 0.0, 2.0], np.float64)
    assert_close(fl.hinge(pred, -np.ones(3), reduction="none"), [1.5, 3.0, 0.0], np.float64)
    # all-zero 0/1 targets mean all -1
    assert_close(fl.hinge(pred, np.zeros(3), reduction="none"), [1.5, 3.0, 0.0], np.float64)


# --------------------------------------------------------------------------------------------
# array backends (NumPy, torch CPU tensors; later CUDA)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_backend(fl, backend, name, reduction, dtype, weighted, rng):
    shape = (3, 4)
    pred, target, kw = elementwise_data(name, shape, dtype, rng)
    sw = sample_weight(rng, shape, dtype) if weighted else None
    ev, eg = ref.ELEMENTWISE[name](pred, target, reduction=reduction, sample_weight=sw, **kw)
    P, T, W = backend.to_backend(pred), backend.to_backend(target), backend.to_backend(sw)
    loss = getattr(fl, name)
    v, g, vg = call_all(loss, P, T, reduction=reduction, sample_weight=W, **kw)
    check_value(v, ev, dtype, reduction, shape, backend=backend)
    check_grad(g, eg, dtype, shape, backend=backend)
    check_vg_matches(vg, ev, eg, dtype, reduction, shape, shape, backend=backend)
    assert same_bits(backend.to_numpy(P), pred), "input modified"


@pytest.mark.parametrize("name", ["mse", "bce_with_logits"])
def test_backend_float16_and_out(fl, backend, name, rng):
    pred, target, kw = elementwise_data(name, (5,), np.float16, rng)
    ev, eg = ref.ELEMENTWISE[name](pred, target, **kw)
    P, T = backend.to_backend(pred), backend.to_backend(target)
    v, g = getattr(fl, name).value_and_grad(P, T, **kw)
    check_value(v, ev, np.float16, "mean", (5,), backend=backend)
    check_grad(g, eg, np.float16, (5,), backend=backend)
    out = backend.empty_like(P)
    v, g = getattr(fl, name).value_and_grad(P, T, out=out, **kw)
    assert_close(backend.to_numpy(out), eg, np.float16)


def test_backend_0d(fl, backend):
    P = backend.to_backend(np.array(1.5))
    T = backend.to_backend(np.array(0.5))
    v, g = fl.mse.value_and_grad(P, T)
    backend.check_scalar(v, np.float64)
    assert float(backend.to_numpy(v)) == 1.0
    assert float(backend.to_numpy(g)) == 2.0


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_value_and_grad_is_exactly_call_and_grad(fl, name, reduction, dtype, weighted, rng):
    """Invariant: value_and_grad returns bit-for-bit (__call__, .grad)."""
    pred, target, kw = elementwise_data(name, (1001,), dtype, rng)
    sw = sample_weight(rng, (1001,), dtype) if weighted else None
    v, g, vg = call_all(getattr(fl, name), pred, target, reduction=reduction, sample_weight=sw,
                        **kw)
    check_vg_consistent(v, g, vg)


# --------------------------------------------------------------------------------------------
# large inputs (the chunked / parallel code path: more than one chunk of elements)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_large_input(fl, name, weighted, rng):
    shape = (300, 337)  # 101100 elements: several chunks, odd sizes
    pred, target, kw = elementwise_data(name, shape, np.float64, rng)
    sw = sample_weight(rng, shape) if weighted else None
    loss = getattr(fl, name)
    for red in REDUCTIONS:
        ev, eg = ref.ELEMENTWISE[name](pred, target, reduction=red, sample_weight=sw, **kw)
        v, g = loss.value_and_grad(pred, target, reduction=red, sample_weight=sw, **kw)
        check_value(v, ev, np.float64, red, shape, factor=10, msg=red)
        check_grad(g, eg, np.float64, shape, msg=red)
        check_value(loss(pred, target, reduction=red, sample_weight=sw, **kw), ev, np.float64,
                    red, shape, factor=10, msg=red)


@pytest.mark.parametrize("name", ["mse", "log_cosh", "bce_with_logits"])
def test_large_input_float32_strided(fl, name, rng):
    pred, target, kw = elementwise_data(name, (200001,), np.float32, rng)
    sw = sample_weight(rng, (200001,), np.float32)
    P = np.repeat(pred, 2)[::2]
    ev, eg = ref.ELEMENTWISE[name](pred, target, sample_weight=sw, **kw)
    v, g = getattr(fl, name).value_and_grad(P, target[::-1].copy()[::-1], sample_weight=sw,
                                            **kw)
    check_value(v, ev, np.float32, "mean", None)
    check_grad(g, eg, np.float32, (200001,))


def test_large_input_repeatable(fl, rng):
    pred = rng.standard_normal(300_000).astype(np.float32)
    target = rng.standard_normal(300_000).astype(np.float32)
    a = fl.huber(pred, target, reduction="sum")
    for _ in range(3):
        assert same_bits(fl.huber(pred, target, reduction="sum"), a)


# --------------------------------------------------------------------------------------------
# misc
# --------------------------------------------------------------------------------------------


def test_sample_weight_as_list(fl):
    v = fl.mse(np.array([1.0, 2.0, 3.0]), np.zeros(3), sample_weight=[1.0, 0.0, 3.0])
    assert_close(v, (1.0 + 27.0) / 4.0, np.float64)


def test_nan_in_sample_weight_propagates(fl):
    v = fl.mse(np.array([1.0, 2.0]), np.zeros(2), sample_weight=np.array([1.0, np.nan]))
    assert np.isnan(v)


def test_float32_pred_float64_weight_keeps_pred_dtype(fl, rng):
    pred = rng.standard_normal(5).astype(np.float32)
    v, g = fl.mse.value_and_grad(pred, np.zeros(5), sample_weight=np.ones(5))
    assert type(v) is np.float32 and g.dtype == np.float32


def test_float16_values_overflowing_float16(fl):
    """float16 computed in float32: an intermediate above 65504 is fine when the result fits."""
    pred = np.array([300.0, 0.0], dtype=np.float16)
    target = np.zeros(2, dtype=np.float16)
    v = fl.mse(pred, target, reduction="sum")  # 90000: overflows float16 -> inf
    assert type(v) is np.float16 and np.isposinf(v)
    m = fl.log_cosh(pred, target)  # (300 - log 2) / 2, fits
    assert type(m) is np.float16
    assert abs(float(m) - (300 - np.log(2)) / 2) < 0.2


def test_torch_requires_grad_tensor_is_accepted(fl, torch, rng):
    p = torch.tensor(rng.standard_normal(6), requires_grad=True)
    t = torch.tensor(rng.standard_normal(6))
    v, g = fl.mse.value_and_grad(p, t)
    ev, eg = ref.mse(p.detach().numpy(), t.numpy())
    assert isinstance(v, torch.Tensor) and isinstance(g, torch.Tensor)
    assert_close(v.detach().numpy(), ev, np.float64)
    assert_close(g.detach().numpy(), eg, np.float64)


def test_torch_noncontiguous_and_int_pred(fl, torch, rng):
    base = torch.tensor(rng.standard_normal((5, 8)))
    p = base.t()  # non-contiguous view
    t = torch.zeros(8, 5, dtype=torch.float64)
    v, g = fl.huber.value_and_grad(p, t)
    ev, eg = ref.huber(p.numpy(), t.numpy())
    assert_close(v.numpy(), ev, np.float64)
    assert_close(g.numpy(), eg, np.float64)
    with pytest.raises(TypeError, match="pred"):
        fl.mse(torch.arange(4), torch.zeros(4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_binary_target_blocks_give_the_same_numbers(fl, dtype, rng):
    """bce's 0/1-target form (one logarithm; fl.binary_target_variant) must return exactly what
    the general formula does, edges and invalid predictions included, so that an element's loss
    never depends on whether its neighbours' targets are 0/1: the same elements are computed in a
    block of 0/1 targets and in a block with one soft target, and compared bit for bit."""
    from fastloss._config import BLOCK
    info = np.finfo(dtype)
    edges = np.array([0.0, -0.0, 1.0, info.tiny, info.smallest_subnormal, info.eps, 1 - info.epsneg,
                      0.5, 0.5 - info.epsneg, 1e-30, 3e-8, -0.2, 1.5, np.inf, -np.inf, np.nan], dtype)
    p = np.concatenate([edges, 10 ** rng.uniform(-40, 0, BLOCK - edges.size)]).astype(dtype)
    p[edges.size::2] = 1 - p[edges.size::2]  # near 1 as well as near 0
    for t in (np.zeros(BLOCK, dtype), np.ones(BLOCK, dtype), rng.integers(0, 2, BLOCK).astype(dtype)):
        mixed = t.copy()
        mixed[-1] = 0.25  # this block takes the general formula
        pp, tt = np.concatenate([p, p]), np.concatenate([t, mixed])
        v, g = fl.bce.value_and_grad(pp, tt, reduction="none")
        _assert_same_bits(v[:BLOCK - 1], v[BLOCK:-1])
        _assert_same_bits(g[:BLOCK - 1], g[BLOCK:-1])
        _assert_same_bits(fl.bce(pp, tt, reduction="none"), v)
        assert np.isnan(v[:BLOCK][(p < 0) | (p > 1) | np.isnan(p)]).all()


_LOGIT_VARIANT_CASES = [
    ("bce_with_logits", {}), ("bce_with_logits", {"pos_weight": 3.0}), ("bce_with_logits", {"pos_weight": -2.0}),
    ("bce_with_logits", {"pos_weight": 0.0}), ("bce_with_logits", {"pos_weight": np.inf}),
    ("bce_with_logits", {"pos_weight": "array"}),
    ("sigmoid_focal", {}), ("sigmoid_focal", {"alpha": -1.0}), ("sigmoid_focal", {"alpha": 1.0, "gamma": 0.5}),
    ("sigmoid_focal", {"alpha": 0.0, "gamma": 0.0}), ("sigmoid_focal", {"gamma": 1.0}),
    ("sigmoid_focal", {"alpha": 0.5, "gamma": 3.7}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, options", _LOGIT_VARIANT_CASES)
def test_logit_losses_binary_target_blocks_give_the_same_numbers(fl, name, options, dtype, rng):
    """bce_with_logits's and sigmoid_focal's 0/1-target values and gradients (one softplus, one
    sigmoid fewer; binary.py: bce_logits01, focal_value01, ...) must be what the general formulas
    give, bit for bit:
    the same logits, edges included, in a block of 0/1 targets and in a block with one soft
    target, for option values that make terms zero, negative or infinite."""
    from fastloss._config import BLOCK
    big = float(np.finfo(dtype).max)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 15.0, -15.0, 40.0, -40.0, 90.0, -90.0,
                      750.0, -750.0, 1e30, -1e30, big, -big, np.inf, -np.inf, np.nan], dtype)
    x = np.concatenate([edges, rng.normal(0, 6, BLOCK - edges.size)]).astype(dtype)
    xx = np.concatenate([x, x])
    options = dict(options)
    if options.get("pos_weight") == "array":
        w = np.concatenate([[0.0, -1.0, np.inf], rng.uniform(-3, 3, BLOCK - 3)]).astype(dtype)
        options["pos_weight"] = np.concatenate([w, w])
    loss = getattr(fl, name)
    for t in (np.zeros(BLOCK, dtype), np.ones(BLOCK, dtype), np.where(rng.random(BLOCK) < 0.5, 1.0, -0.0).astype(dtype)):
        mixed = t.copy()
        mixed[-1] = 0.25  # this block takes the general formula
        tt = np.concatenate([t, mixed])
        v = loss(xx, tt, reduction="none", **options)
        _assert_same_bits(v[:BLOCK - 1], v[BLOCK:-1])
        v2, g = loss.value_and_grad(xx, tt, reduction="none", **options)
        _assert_same_bits(v2, v)
        _assert_same_bits(g[:BLOCK - 1], g[BLOCK:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_blocks_of_any_targets_after_any_others(fl, dtype, rng):
    """A block runs bce's 0/1 form when the block before it had only 0/1 targets, and runs again
    with the general formula when one of its own targets is another value (kernels/
    cpu_elementwise.py: _PICK_MAP). Blocks of every kind after blocks of every kind (a soft
    target first, last, alone in the block; NaN and -0.0 targets; all 0/1), in value, grad and
    value_and_grad, against the float64 formula (reference.py), and "sum" against the float64 sum."""
    from fastloss._config import BLOCK
    kinds = {
        "binary": lambda: rng.integers(0, 2, BLOCK).astype(dtype),
        "soft": lambda: rng.random(BLOCK).astype(dtype),
        "soft_first": lambda: np.concatenate([[0.3], rng.integers(0, 2, BLOCK - 1)]).astype(dtype),
        "soft_last": lambda: np.concatenate([rng.integers(0, 2, BLOCK - 1), [0.7]]).astype(dtype),
        "nan": lambda: np.where(np.arange(BLOCK) == 5, np.nan, rng.integers(0, 2, BLOCK)).astype(dtype),
        "negzero": lambda: np.where(rng.integers(0, 2, BLOCK) == 1, 1.0, -0.0).astype(dtype),
    }
    order = ["binary", "soft_last", "binary", "soft", "soft_first", "binary", "binary", "nan",
             "binary", "negzero", "soft", "binary", "soft_last", "soft_last"]
    t = np.concatenate([kinds[k]() for k in order] + [rng.random(100).astype(dtype)])
    p = rng.uniform(0.02, 0.98, t.size).astype(dtype)
    ev, eg = ref.bce(p, t, reduction="none")
    nan = np.isnan(t)
    tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)
    v = fl.bce(p, t, reduction="none")
    g = fl.bce.grad(p, t, reduction="sum")
    v2, g2 = fl.bce.value_and_grad(p, t, reduction="none")
    for got in (v, v2):
        assert np.isnan(got[nan]).all()
        np.testing.assert_allclose(got[~nan], ev[~nan], **tol)
    for got in (g, g2):
        np.testing.assert_allclose(got[~nan], eg[~nan], **tol)
    keep = ~nan
    s = fl.bce(p[keep], t[keep], reduction="sum")
    assert abs(float(s) - math.fsum(ev[keep])) <= tol["rtol"] * math.fsum(ev[keep])


def _assert_same_bits(a, b):
    """Equal bit for bit (the sign of zero included), NaN where NaN (a NaN's sign means nothing)."""
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(a[~nan].view(np.uint8), b[~nan].view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_value_within_two_ulp(fl, dtype, rng):
    """bce's logarithms, log p and log(1 − p) (the latter as log u + e/u, see binary.py: log1m),
    within 2 ulp of the exact value over (0, 1) on a log scale near both ends, for 0/1 targets."""
    n = 1 << 16
    p = np.concatenate([10 ** rng.uniform(-44 if dtype == np.float32 else -300, 0, n),
                        rng.uniform(0, 1, n)]).astype(dtype)
    p[::3] = 1 - p[::3]
    p = p[(p > 0) & (p < 1)]
    pl = p.astype(np.longdouble)  # x87 extended where available; float64 is enough for float32
    for tv, exact in ((1.0, -np.log(pl)), (0.0, -np.log1p(-pl))):
        v = fl.bce(p, np.full(p.shape, tv, dtype), reduction="none")
        keep = exact < 100  # beyond 100 the logs are clamped
        ulp = np.spacing(exact[keep].astype(dtype)).astype(np.longdouble)
        err = np.abs(v[keep].astype(np.longdouble) - exact[keep]) / ulp
        assert err.max() <= 2.0, (tv, float(err.max()), p[keep][np.argmax(err)])


@pytest.mark.parametrize("w", [1e-50, 1e39], ids=["underflows", "overflows"])
def test_mean_divides_by_the_weights_the_kernel_used(fl, backend, w):
    """float64 weights with float32 pred are rounded to float32 (README: converted to pred's
    compute dtype) for the products and for Σ w alike, on every backend: a weight that rounds
    to 0 is a zero weight ("mean" NaN, gradient 0), one that rounds to inf gives NaN. The GPU
    summed the unrounded weights (0.0 and inf)."""
    dev = backend.to_backend
    p, t = np.array([1.0, 2.0, 3.0], np.float32), np.zeros(3, np.float32)
    v, g = fl.mse.value_and_grad(dev(p), dev(t), sample_weight=dev(np.full(3, w)))
    assert np.isnan(float(backend.to_numpy(v)))
    assert np.all(backend.to_numpy(g) == 0) if w < 1 else np.all(np.isnan(backend.to_numpy(g)))
