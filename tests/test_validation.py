"""Bad input raises TypeError/ValueError naming the argument, never a Numba error, before any
output is written."""
import numpy as np
import pytest

from _cases import ELEMENTWISE, ROWS, elementwise_data, row_data

OPS = ["call", "grad", "value_and_grad"]


def _numba_error_types():
    try:
        from numba.core import errors
    except Exception:  # pragma: no cover
        return ()
    return tuple(v for v in vars(errors).values()
                 if isinstance(v, type) and issubclass(v, BaseException))


NUMBA_ERRORS = _numba_error_types()


def _op(loss, op):
    return {"call": loss, "grad": loss.grad, "value_and_grad": loss.value_and_grad}[op]


def raises(exc, match, fn, *args, **kw):
    """Run fn, require exactly ``exc`` (not a subclass, not a numba error) matching ``match``."""
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kw)
    e = info.value
    assert type(e) is exc, f"expected exactly {exc.__name__}, got {type(e).__module__}.{type(e).__name__}: {e}"
    assert not isinstance(e, NUMBA_ERRORS), f"numba error leaked: {type(e)}"
    assert "numba" not in type(e).__module__
    return e


def _ok(name, rng, shape=(4, 3)):
    if name in ROWS:
        p, t, kw = row_data(name, shape, np.float64, rng, {})
    else:
        p, t, kw = elementwise_data(name, shape, np.float64, rng, {})
    return p, t, kw


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_shape_mismatch(fl, name, op, rng):
    p, t, kw = _ok(name, rng)
    f = _op(getattr(fl, name), op)
    raises(ValueError, "target", f, p, t[:3], **kw)  # (3, 3) vs (4, 3)
    raises(ValueError, "target", f, p, t[:, :1], **kw)  # broadcastable: still an error
    raises(ValueError, "target", f, p, t.reshape(-1), **kw)  # same size, other shape


def test_elementwise_shape_mismatch_0d(fl):
    raises(ValueError, "target", fl.mse, np.float64(1.0), np.array([1.0]))
    raises(ValueError, "target", fl.mse, np.array([1.0]), np.float64(1.0))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ROWS)
def test_row_target_shape(fl, name, op, rng):
    p, t, kw = _ok(name, rng)
    f = _op(getattr(fl, name), op)
    raises(ValueError, "target", f, p, t[:3], **kw)
    if name != "kl_div":
        raises(ValueError, "target", f, p, np.zeros((4, 2), dtype=np.int64), **kw)


def test_ce_prob_target_shape(fl, rng):
    p = rng.standard_normal((4, 3))
    raises(ValueError, "target", fl.cross_entropy, p, np.full((4, 2), 0.5))
    raises(ValueError, "target", fl.cross_entropy, p, np.full((3, 3), 1 / 3))


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

BAD_PRED = {
    "int": np.arange(6).reshape(2, 3),
    "uint8": np.arange(6, dtype=np.uint8).reshape(2, 3),
    "bool": np.ones((2, 3), dtype=bool),
    "complex": np.ones((2, 3), dtype=np.complex128),
    "str": np.full((2, 3), "a"),
    "object": np.full((2, 3), 1.0, dtype=object),
}


@pytest.mark.parametrize("kind", list(BAD_PRED))
@pytest.mark.parametrize("name", ["mse", "bce_with_logits", "hinge", "cross_entropy",
                                  "multi_margin", "kl_div"])
def test_non_real_pred(fl, name, kind, rng):
    _, t, kw = _ok(name, rng, (2, 3))
    loss = getattr(fl, name)
    for op in OPS:
        raises(TypeError, "pred", _op(loss, op), BAD_PRED[kind], t, **kw)


def test_python_int_list_pred_is_rejected(fl):
    raises(TypeError, "pred", fl.mse, [1, 2, 3], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", ["mse", "huber"])
def test_bad_target_dtype(fl, name):
    p = np.ones(3)
    raises(TypeError, "target", getattr(fl, name), p, np.ones(3, dtype=np.complex128))
    raises(TypeError, "target", getattr(fl, name), p, np.array(["a", "b", "c"]))


@pytest.mark.parametrize("op", OPS)
def test_ce_float_labels(fl, op, rng):
    p = rng.standard_normal((4, 3))
    raises(TypeError, "target", _op(fl.cross_entropy, op), p, np.array([0.0, 1.0, 2.0, 1.0]))


def test_multi_margin_float_labels(fl, rng):
    p = rng.standard_normal((4, 3))
    raises(TypeError, "target", fl.multi_margin, p, np.array([0.0, 1.0, 2.0, 1.0]))


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, 4, -1, -2, -101, 2 ** 40])
@pytest.mark.parametrize("op", OPS)
def test_ce_labels_out_of_range(fl, op, bad, rng):
    p = rng.standard_normal((4, 3))
    y = np.array([0, 1, bad, 2], dtype=np.int64)
    raises(ValueError, "target", _op(fl.cross_entropy, op), p, y)


def test_ce_ignore_index_other_than_default(fl, rng):
    p = rng.standard_normal((4, 3))
    y = np.array([0, -100, 1, 2])
    raises(ValueError, "target", fl.cross_entropy, p, y, ignore_index=-1)
    # -1 ignored explicitly is fine
    v = fl.cross_entropy(p, np.array([0, -1, 1, 2]), ignore_index=-1)
    assert np.isfinite(v)


@pytest.mark.parametrize("bad", [3, -1, -100])
def test_multi_margin_labels_out_of_range(fl, bad, rng):
    p = rng.standard_normal((4, 3))
    raises(ValueError, "target", fl.multi_margin, p, np.array([0, bad, 1, 2]))


def test_ce_labels_out_of_range_uint8(fl, rng):
    p = rng.standard_normal((2, 3))
    raises(ValueError, "target", fl.cross_entropy, p, np.array([0, 200], dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cross_entropy", "multi_margin"])
def test_class_weight_length(fl, name, rng):
    p, t, _ = _ok(name, rng)
    for cw in (np.ones(2), np.ones(4), np.ones((3, 1))):
        for op in OPS:
            raises(ValueError, "class_weight", _op(getattr(fl, name), op), p, t, class_weight=cw)


@pytest.mark.parametrize("name", ELEMENTWISE + ROWS)
def test_sample_weight_shape(fl, name, rng):
    p, t, kw = _ok(name, rng)
    loss = getattr(fl, name)
    bad = [np.ones(5), np.ones((4, 3, 1)), np.ones(3)]
    if name in ROWS:
        bad.append(np.ones((4, 3)))  # pred's shape is wrong for row losses
    else:
        bad.append(np.ones(4))  # leading shape is wrong for elementwise losses
    for w in bad:
        for op in OPS:
            raises(ValueError, "sample_weight", _op(loss, op), p, t, sample_weight=w, **kw)


def test_sample_weight_bad_dtype(fl):
    raises(TypeError, "sample_weight", fl.mse, np.ones(3), np.ones(3),
           sample_weight=np.ones(3, dtype=np.complex128))


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("huber", "delta", 0.0), ("huber", "delta", -1.0), ("huber", "delta", np.nan),
    ("smooth_l1", "beta", -0.5), ("smooth_l1", "beta", np.nan),
    ("quantile", "q", 0.0), ("quantile", "q", 1.0), ("quantile", "q", 1.5),
    ("quantile", "q", -0.1), ("quantile", "q", np.nan),
    ("sigmoid_focal", "gamma", -1.0),
    ("cross_entropy", "label_smoothing", -0.1), ("cross_entropy", "label_smoothing", 1.1),
    ("cross_entropy", "label_smoothing", np.nan),
    ("multi_margin", "p", 3), ("multi_margin", "p", 0),
    ("sigmoid_focal", "alpha", 1.5), ("sigmoid_focal", "alpha", -0.5), ("poisson_nll", "eps", -1e-8),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name,opt,value", BAD_OPTIONS,
                         ids=[f"{n}-{o}={v}" for n, o, v in BAD_OPTIONS])
def test_option_out_of_range(fl, name, opt, value, op, rng):
    p, t, kw = _ok(name, rng)
    raises(ValueError, rf"\b{opt}\b", _op(getattr(fl, name), op), p, t, **{opt: value})


@pytest.mark.parametrize("value", [1.5, "1"])
def test_multi_margin_p_not_an_integer(fl, value, rng):
    p, t, _ = _ok("multi_margin", rng)
    with pytest.raises((TypeError, ValueError), match=r"\bp\b") as info:
        fl.multi_margin(p, t, p=value)
    assert type(info.value) in (TypeError, ValueError)


def test_pos_weight_not_broadcastable(fl, rng):
    p, t, _ = _ok("bce_with_logits", rng)  # (4, 3)
    raises(ValueError, "pos_weight", fl.bce_with_logits, p, t, pos_weight=np.ones(4))
    raises(ValueError, "pos_weight", fl.bce_with_logits, p, t, pos_weight=np.ones((2, 4, 3)))


BAD_HINGE_TARGETS = {
    "two": [1.0, -1.0, 2.0, 1.0],
    "half": [1.0, 0.5, 0.0, 1.0],
    "nan": [1.0, -1.0, np.nan, 1.0],
    "mix_-1_0": [1.0, -1.0, 0.0, 1.0],
    "mix_-1_0_only": [-1.0, 0.0, 0.0, -1.0],
    "inf": [np.inf, 1.0, 1.0, 1.0],
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", list(BAD_HINGE_TARGETS))
@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
def test_hinge_targets(fl, name, kind, op):
    p = np.array([0.3, -0.2, 1.5, 0.1])
    raises(ValueError, "target", _op(getattr(fl, name), op), p, np.array(BAD_HINGE_TARGETS[kind]))


@pytest.mark.parametrize("name", ELEMENTWISE + ROWS)
def test_unknown_keyword(fl, name, rng):
    p, t, kw = _ok(name, rng)
    loss = getattr(fl, name)
    for op in OPS:
        raises(TypeError, "bogus_option", _op(loss, op), p, t, bogus_option=1)


def test_options_of_other_losses_are_unknown(fl, rng):
    p, t, _ = _ok("mse", rng)
    raises(TypeError, "delta", fl.mse, p, t, delta=1.0)
    raises(TypeError, "class_weight", fl.huber, p, t, class_weight=np.ones(3))
    raises(TypeError, "axis", fl.mse, p, t, axis=0)


@pytest.mark.parametrize("name", ["mse", "huber", "cross_entropy"])
def test_options_are_keyword_only(fl, name, rng):
    p, t, _ = _ok(name, rng)
    with pytest.raises(TypeError):
        getattr(fl, name)(p, t, "sum")
    with pytest.raises(TypeError):
        getattr(fl, name).grad(p, t, "sum")


@pytest.mark.parametrize("bad", ["avg", "MEAN", "", None, 1, "batchmean"])
@pytest.mark.parametrize("name", ["mse", "bce_with_logits", "cross_entropy", "multi_margin"])
def test_unknown_reduction(fl, name, bad, rng):
    p, t, kw = _ok(name, rng)
    loss = getattr(fl, name)
    exc = ValueError
    for op in OPS:
        with pytest.raises((ValueError, TypeError), match="reduction") as info:
            _op(loss, op)(p, t, reduction=bad, **kw)
        if isinstance(bad, str):
            assert type(info.value) is exc
        assert not isinstance(info.value, NUMBA_ERRORS)


def test_kl_div_unknown_reduction(fl, rng):
    p, t, _ = _ok("kl_div", rng)
    raises(ValueError, "reduction", fl.kl_div, p, t, reduction="batchsum")


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_bad_axis(fl, axis, rng):
    p, t, _ = _ok("cross_entropy", rng)
    with pytest.raises(ValueError, match="axis") as info:
        fl.cross_entropy(p, t, axis=axis)
    assert not isinstance(info.value, NUMBA_ERRORS)


# --------------------------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["grad", "value_and_grad"])
def test_out_wrong_shape_or_dtype(fl, op, rng):
    p, t, _ = _ok("mse", rng)
    f = _op(fl.mse, op)
    raises(ValueError, "out", f, p, t, out=np.empty((3, 4)))
    raises(ValueError, "out", f, p, t, out=np.empty(12))
    raises(TypeError, "out", f, p, t, out=np.empty((4, 3), dtype=np.float32))


def test_out_read_only(fl, rng):
    p, t, _ = _ok("mse", rng)
    out = np.zeros((4, 3))
    out.flags.writeable = False
    with pytest.raises((ValueError, TypeError), match="out"):
        fl.mse.value_and_grad(p, t, out=out)
    assert np.all(out == 0)


# --------------------------------------------------------------------------------------------
# no output before the error
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["hinge-target", "ce-label", "sample_weight", "option"])
def test_error_before_output(fl, case, rng):
    sentinel = 12345.0
    if case == "hinge-target":
        p = np.array([0.1, 0.2, 0.3, 0.4])
        out = np.full(4, sentinel)
        args = (fl.hinge, p, np.array([1.0, -1.0, 1.0, 0.5]))
        kw = {}
    elif case == "ce-label":
        p = rng.standard_normal((4, 3))
        out = np.full((4, 3), sentinel)
        args = (fl.cross_entropy, p, np.array([0, 1, 2, 3]))  # last row bad
        kw = {}
    elif case == "sample_weight":
        p = rng.standard_normal(5)
        out = np.full(5, sentinel)
        args = (fl.mse, p, np.zeros(5))
        kw = {"sample_weight": np.ones(4)}
    else:
        p = rng.standard_normal(5)
        out = np.full(5, sentinel)
        args = (fl.huber, p, np.zeros(5))
        kw = {"delta": -1.0}
    loss, pred, target = args
    pc = pred.copy()
    with pytest.raises(ValueError):
        loss.value_and_grad(pred, target, out=out, **kw)
    assert np.all(out == sentinel), "out= was written before the error"
    with pytest.raises(ValueError):
        loss.grad(pred, target, out=out, **kw)
    assert np.all(out == sentinel), "out= was written before the error"
    assert np.array_equal(pred, pc)


# --------------------------------------------------------------------------------------------
# things that must NOT raise
# --------------------------------------------------------------------------------------------


def test_nan_does_not_raise(fl):
    p = np.array([np.nan, 1.0])
    t = np.array([0.0, np.nan])
    for name in ["mse", "mae", "huber", "log_cosh", "bce_with_logits", "sigmoid_focal"]:
        v = getattr(fl, name)(p, t)
        assert np.isnan(v)


def test_ignore_index_outside_range_is_fine(fl, rng):
    p = rng.standard_normal((3, 4))
    v = fl.cross_entropy(p, np.array([0, 7, 3]), ignore_index=7)
    assert np.isfinite(v)


def test_out_not_accepted_by_call(fl, rng):
    """out= receives the gradient: only .grad and .value_and_grad take it."""
    p, t, _ = _ok("mse", rng)
    raises(TypeError, "out", fl.mse, p, t, out=np.empty_like(p))


@pytest.mark.parametrize("name,opt,bad", [("huber", "delta", -1.0), ("quantile", "q", 1.5),
                                          ("smooth_l1", "beta", -0.5)])
def test_option_array_out_of_range(fl, name, opt, bad, rng):
    """An option given per element is checked element by element, like a scalar one."""
    p, t, _ = _ok(name, rng)
    arr = np.full(p.shape, 0.5)
    arr.flat[-1] = bad
    raises(ValueError, rf"\b{opt}\b", fl.LOSSES[name], p, t, **{opt: arr})


@pytest.mark.parametrize("with_out", [False, True], ids=["no_out", "out"])
def test_hinge_bad_target_past_the_first_chunk(fl, with_out):
    """Targets are checked in every chunk of a parallel call, and before out= is written."""
    n = 100_000
    p = np.linspace(-2, 2, n)
    t = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    t[90_000] = 0.5
    out = np.full(n, 7.0) if with_out else None
    raises(ValueError, "target", fl.hinge.value_and_grad, p, t, **({"out": out} if with_out else {}))
    if with_out:
        assert np.all(out == 7.0)


@pytest.mark.parametrize("name", ["cross_entropy", "multi_margin"])
def test_row_loss_without_classes(fl, name):
    raises(ValueError, "no classes", fl.LOSSES[name], np.zeros((2, 0)), np.array([0, 0]))


def test_kl_div_0d(fl):
    """A 0-d pred is one element (its own row): weights and the axis rules of a 1-d one."""
    x, t = -0.5, 0.5
    expected = t * (np.log(t) - x)
    np.testing.assert_allclose(fl.kl_div(np.array(x), np.array(t), sample_weight=np.array(2.0)), expected)
    np.testing.assert_allclose(fl.kl_div(np.array(x), np.array(t), sample_weight=np.array(2.0), reduction="sum"),
                               2 * expected)
    raises(ValueError, "axis", fl.kl_div, np.array(x), np.array(t), axis=7)
    raises(ValueError, "sample_weight", fl.kl_div, np.array(x), np.array(t), sample_weight=np.ones(2))
