"""Hostile input, for every loss and every entry point, beyond what test_validation.py covers.

test_validation.py already checks wrong shapes and dtypes (integer, bool, complex, str and object
arrays as pred), out-of-range labels (3, 4, -1, -2, -101, 2**40 for cross_entropy; 3, -1, -100
for multi_margin; uint8), float labels, out-of-range options (delta, beta, q, gamma,
label_smoothing, p) and NaN in four of them (delta, beta, q, label_smoothing), one unknown keyword
per loss, bad reductions, cross_entropy's axis, and out=.
This file adds, for EVERY loss, operation and argument:

* values that are not arrays at all: None (where None is not the default), str, bytes, object(),
  an object whose ``__array__`` raises, a sequence whose ``__len__`` raises, dict, set, complex,
  ragged lists, arrays of strings, object, datetime, void and structured dtypes;
* NaN, infinite and huge (2**62, 2**63 - 1, beyond int64, uint64) and negative labels;
* NaN in every option (scalar or array), arrays given to scalar and boolean options, integers
  too large for the option's type.

Each must raise TypeError or ValueError (exactly, not a Numba error) whose message names the
argument, leave every input unmodified, and leave a valid ``out=`` buffer untouched.

Cases that were implementation bugs (found by this file, since fixed) carry
``pytest.mark.regression`` and a comment saying what was wrong.
"""
import numpy as np
import pytest

import fastloss
from _cases import ELEMENTWISE, ROWS, elementwise_data, row_data


def _numba_error_types():
    try:
        from numba.core import errors
    except Exception:  # pragma: no cover
        return ()
    return tuple(v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException))


NUMBA_ERRORS = _numba_error_types()

OPS = ["call", "grad", "value_and_grad"]
ALL = ELEMENTWISE + ROWS


class RaisingArray:
    """An object whose conversion to an array raises."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("__array__ refuses")


class RaisingSequence:
    """A sequence-looking object whose every method raises."""

    def __len__(self):
        raise RuntimeError("__len__ refuses")

    def __getitem__(self, i):
        raise RuntimeError("__getitem__ refuses")


class Opaque:
    pass


NON_ARRAYS = {
    "None": None,
    "str": "abc",
    "bytes": b"abc",
    "object": Opaque(),
    "raising__array__": RaisingArray(),
    "raising_sequence": RaisingSequence(),
    "dict": {"a": 1.0},
    "set": {1.0, 2.0},
    "complex": 1j,
    "ragged": [[1.0, 2.0], [3.0]],
    "list_with_None": [1.0, None, 2.0],
    "list_with_str": [1.0, "a", 2.0],
    "str_array": np.array(["a", "b", "c"]),
    "object_array": np.array([Opaque(), Opaque(), Opaque()], dtype=object),
    "datetime_array": np.array(["2020-01-01"] * 3, dtype="datetime64[D]"),
    "void_array": np.zeros(3, dtype="V8"),
    "structured_array": np.zeros(3, dtype=[("a", "f8")]),
}

# options whose default is None (None is a valid value for them)
NONE_OK = {"sample_weight", "out", "pos_weight", "class_weight"}


def _data(name, rng, shape=(4, 3)):
    if name in ROWS:
        return row_data(name, shape, np.float64, rng, {})
    return elementwise_data(name, shape, np.float64, rng, {})


def _options(name):
    return [o.name for o in fastloss.LOSSES[name].options]


def _copy(x):
    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x


def _same(a, b):
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and \
            np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    return True


def expect_error(loss, op, arg, pred, target, kw, excs=(TypeError, ValueError)):
    """Call ``op`` of ``loss`` and require an error of ``excs`` (exactly, not a subclass that is a
    Numba error) naming ``arg``; the inputs and a valid out= buffer are left untouched."""
    f = {"call": loss, "grad": loss.grad, "value_and_grad": loss.value_and_grad}[op]
    kw = dict(kw)
    sentinel = None
    if op != "call" and "out" not in kw and isinstance(pred, np.ndarray) and pred.dtype.kind == "f":
        sentinel = kw["out"] = np.full(pred.shape, 12345.0, dtype=pred.dtype)
    before = [_copy(pred), _copy(target)] + [_copy(v) for v in kw.values()]
    with pytest.raises(excs) as info:
        f(pred, target, **kw)
    e = info.value
    assert type(e) in excs, f"{type(e).__module__}.{type(e).__name__}: {e}"
    assert not isinstance(e, NUMBA_ERRORS) and "numba" not in type(e).__module__, f"numba error leaked: {e!r}"
    assert arg in str(e), f"the message does not name {arg!r}: {type(e).__name__}: {e}"
    after = [pred, target] + list(kw.values())
    for b, a in zip(before, after):
        assert _same(a, b), f"an input was modified by a failing call ({type(e).__name__}: {e})"
    if sentinel is not None:
        assert np.all(sentinel == 12345.0), "out= was written before the error"
    return e


# Regression test: a boolean option given an array of several elements (poisson_nll 
# log_input/full, kl_div log_target) raises NumPy's 'The truth value of an array ... is 
# ambiguous' ValueError, which does not name the option (Option.convert: `value not in (0, 1)`)
_BOOL_ARRAY = pytest.mark.regression

# --------------------------------------------------------------------------------------------
# values that are not arrays, in every argument of every loss
# --------------------------------------------------------------------------------------------


def _arg_params():
    out = []
    for name in ALL:
        bools = {o.name for o in fastloss.LOSSES[name].options if o.kind is bool}
        for arg in ["pred", "target", "sample_weight", "out"] + _options(name):
            marks = [_BOOL_ARRAY] if arg in bools else []  # (the arrays of strings, objects, ...)
            out.append(pytest.param(name, arg, marks=marks, id=f"{name}-{arg}"))
    return out


@pytest.mark.parametrize("name,arg", _arg_params())
def test_non_array_values(fl, name, arg, rng):
    p, t, kw = _data(name, rng)
    loss = getattr(fl, name)
    for key, bad in NON_ARRAYS.items():
        if bad is None and arg in NONE_OK:
            continue
        for op in OPS:
            if arg == "out" and op == "call":
                continue  # out= is refused by __call__ whatever its value (test_validation)
            P, T, K = p.copy(), np.array(t, copy=True), dict(kw)
            if arg == "pred":
                P = bad
            elif arg == "target":
                T = bad
            else:
                K[arg] = bad
            try:
                expect_error(loss, op, arg, P, T, K)
            except BaseException as exc:  # pragma: no cover - say which value
                raise AssertionError(f"{name}.{op} with {arg}={key}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

I64 = np.iinfo(np.int64)
BAD_LABELS = {
    # integer labels outside [0, C): ValueError naming target
    "2**62": (np.array([0, 2 ** 62, 1, 2]), ValueError),
    "int64_max": (np.array([0, I64.max, 1, 2]), ValueError),
    "int64_min": (np.array([0, I64.min, 1, 2]), ValueError),
    "2**31": (np.array([0, 2 ** 31, 1, 2]), ValueError),
    "2**32+1": (np.array([0, 2 ** 32 + 1, 1, 2]), ValueError),
    "-5": (np.array([0, -5, 1, 2]), ValueError),
    "int8_-1": (np.array([0, -1, 1, 2], dtype=np.int8), ValueError),
    "uint64_beyond_int64": (np.array([0, 2 ** 63 + 5, 1, 2], dtype=np.uint64), ValueError),
    "list_2**62": ([0, 2 ** 62, 1, 2], ValueError),
    # not integer labels at all: TypeError naming target
    "nan": (np.array([0.0, np.nan, 1.0, 2.0]), TypeError),
    "inf": (np.array([0.0, np.inf, 1.0, 2.0]), TypeError),
    "bool": (np.array([True, False, True, False]), TypeError),
    "object_ints": (np.array([0, 1, 2, 1], dtype=object), TypeError),
    "list_beyond_int64": ([0, 2 ** 64, 1, 2], TypeError),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", list(BAD_LABELS))
@pytest.mark.parametrize("name", ["cross_entropy", "multi_margin"])
def test_bad_labels(fl, name, kind, op, rng):
    p = rng.standard_normal((4, 3))
    y, exc = BAD_LABELS[kind]
    if name == "cross_entropy" and kind == "list_beyond_int64":
        exc = (TypeError, ValueError)  # an object-dtype list: either is fine
    expect_error(getattr(fl, name), op, "target", p, y, {}, excs=exc if isinstance(exc, tuple) else (exc,))


@pytest.mark.parametrize("op", OPS)
def test_ignore_index_label_is_only_valid_for_cross_entropy(fl, op, rng):
    p = rng.standard_normal((4, 3))
    y = np.array([0, -100, 1, 2])
    getattr(fl.cross_entropy, op if op != "call" else "__call__")(p, y)  # the default ignore_index
    expect_error(fl.multi_margin, op, "target", p, y, {}, excs=(ValueError,))
    expect_error(fl.cross_entropy, op, "target", p, np.array([0, -100, 1, 2]), {"ignore_index": 7},
                 excs=(ValueError,))


# --------------------------------------------------------------------------------------------
# option values: NaN everywhere, arrays where a scalar is expected, integers out of range
# --------------------------------------------------------------------------------------------

# Regression test: margin has no validity rule, so margin=NaN (scalar or array) is accepted and 
# the loss is NaN; the brief requires NaN options to raise ValueError naming the option
_NAN_MARGIN = pytest.mark.regression
# Regression test: class_weight containing NaN is accepted (the loss is NaN); NaN options 
# should raise ValueError naming class_weight
_NAN_CLASS_WEIGHT = pytest.mark.regression

def _nan_params():
    out = []
    for name in ALL:
        for o in fastloss.LOSSES[name].options:
            for form in ("scalar", "array"):
                marks = []
                if o.kind is bool and form == "array":
                    marks = [_BOOL_ARRAY]
                elif o.name == "margin" and (form == "scalar" or o.array):  # (multi_margin's takes no array)
                    marks = [_NAN_MARGIN]
                elif o.name == "class_weight":
                    if form == "scalar":
                        continue  # a scalar class_weight is a shape error, covered elsewhere
                    marks = [_NAN_CLASS_WEIGHT]
                out.append(pytest.param(name, o.name, form, marks=marks, id=f"{name}-{o.name}-{form}"))
    return out


@pytest.mark.parametrize("name,opt,form", _nan_params())
def test_nan_option(fl, name, opt, form, rng):
    """NaN as an option value, or an array of NaN (per-element options take arrays; the others
    must refuse an array with an error naming the option all the same)."""
    p, t, kw = _data(name, rng)
    if form == "scalar":
        bad = np.nan
    else:
        shape = (p.shape[-1],) if opt == "class_weight" else p.shape
        bad = np.full(shape, np.nan)
    loss = getattr(fl, name)
    for op in OPS:
        expect_error(loss, op, opt, p, t, dict(kw, **{opt: bad}))


def _array_to_scalar_params():
    out = []
    for name in ALL:
        for o in fastloss.LOSSES[name].options:
            if o.array or o.name == "class_weight":
                continue  # these take arrays
            marks = [_BOOL_ARRAY] if o.kind is bool else []
            out.append(pytest.param(name, o.name, marks=marks, id=f"{name}-{o.name}"))
    return out


@pytest.mark.parametrize("name,opt", _array_to_scalar_params())
def test_array_for_a_scalar_option(fl, name, opt, rng):
    p, t, kw = _data(name, rng)
    bad = np.array([1, 0, 1])
    for op in OPS:
        expect_error(getattr(fl, name), op, opt, p, t, dict(kw, **{opt: bad}))


# Regression test: ignore_index outside int64 passes the Option(kind=int) check and reaches the 
# kernel: OverflowError 'int too big to convert', or numba TypingError 'non-precise type 
# pyobject' on the first call of a process
_BIG_INDEX = pytest.mark.regression

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [pytest.param(2 ** 63, marks=_BIG_INDEX), pytest.param(-2 ** 63 - 1, marks=_BIG_INDEX),
                                   pytest.param(2 ** 70, marks=_BIG_INDEX), np.nan, 1.5, "1", True])
def test_ignore_index_values(fl, value, op, rng):
    p, t, _ = _data("cross_entropy", rng)
    expect_error(fl.cross_entropy, op, "ignore_index", p, t, {"ignore_index": value})


def test_ignore_index_int64_extremes_are_fine(fl, rng):
    p, t, _ = _data("cross_entropy", rng)
    for v in (I64.max, I64.min):
        assert np.isfinite(fl.cross_entropy(p, t, ignore_index=v))


# Regression test: kl_div checks axis only when sample_weight is given (KLDiv._weights); 
# without it an out-of-range axis is ignored and a value is returned
_KL_AXIS = pytest.mark.regression

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [2, -3, 2 ** 70, np.nan, 1.0, "1", None])
@pytest.mark.parametrize("name", ROWS)
def test_axis_values(fl, name, axis, op, rng, request):
    if name == "kl_div" and isinstance(axis, int):
        request.applymarker(_KL_AXIS)
    p, t, kw = _data(name, rng)
    expect_error(getattr(fl, name), op, "axis", p, t, dict(kw, axis=axis))


# Regression test: an int too large for a float (10**400) given to a float option raises 
# OverflowError 'int too large to convert to float' (Option.convert's float(value)), not 
# TypeError/ValueError naming the option
_HUGE_INT = pytest.mark.regression

def _float_option_params():
    out = []
    for name in ALL:
        for o in fastloss.LOSSES[name].options:
            if o.kind is float and not o.host or o.name in ("label_smoothing", "margin", "p"):
                out.append(pytest.param(name, o.name, marks=[_HUGE_INT], id=f"{name}-{o.name}"))
    return out


@pytest.mark.parametrize("name,opt", _float_option_params())
def test_int_too_large_for_a_float_option(fl, name, opt, rng):
    p, t, kw = _data(name, rng)
    expect_error(getattr(fl, name), "call", opt, p, t, dict(kw, **{opt: 10 ** 400}))


# --------------------------------------------------------------------------------------------
# unknown keywords (test_validation covers one per loss and op): hostile names and values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_unknown_keywords_with_hostile_values(fl, name, rng):
    p, t, kw = _data(name, rng)
    loss = getattr(fl, name)
    for key in ("Reduction", "sample_weights", "weight", "reduction ", "_private", "delta_"):
        for op in OPS:
            expect_error(loss, op, key, p, t, dict(kw, **{key: RaisingArray()}), excs=(TypeError,))


# -- out= and inputs that are not plain, separate buffers (found in review, since fixed) ----------
def raises(exc, match, fn, *args, **kw):
    """Run fn, require exactly ``exc`` (not a Numba error) with a message matching ``match``."""
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kw)
    assert type(info.value) is exc and not isinstance(info.value, NUMBA_ERRORS), repr(info.value)


@pytest.mark.regression
def test_ndarray_subclass_out_and_inputs(fl):
    """np.matrix reshapes to 2-d where a flat view was assumed: the kernel wrote whole rows past
    the buffer (a wrong gradient, then a crash). Subclasses are now read as plain arrays, and a
    masked array, whose mask would be ignored, is refused."""
    n = 64
    pred = np.arange(n, dtype=np.float64).reshape(1, n)
    out = np.matrix(np.zeros((1, n)))
    g = fl.mse.grad(pred, np.zeros((1, n)), out=out, reduction="sum")
    assert g is out
    np.testing.assert_array_equal(np.asarray(out), 2 * pred)
    np.testing.assert_allclose(fl.mse(np.matrix(pred), np.zeros((1, n))), np.mean(pred ** 2))
    raises(TypeError, "out", fl.mse.grad, np.ones(4), np.zeros(4), out=np.ma.zeros(4))
    raises(TypeError, "pred", fl.mse, np.ma.array([1.0, 2.0], mask=[0, 1]), np.zeros(2))


@pytest.mark.regression
@pytest.mark.parametrize("name", ["mse", "log_cosh", "bce_with_logits"])
@pytest.mark.parametrize("n", [5, 3000, 100_001], ids=["tiny", "serial", "parallel"])
def test_out_overlapping_an_input(fl, name, n, rng):
    """out= sharing memory with an input other than as exactly pred (a shifted view, target)
    used to be written while the input was still being read."""
    base = rng.standard_normal(n + 1)
    p, t = base[:-1].copy(), (base[1:] > 0).astype(np.float64)
    loss = fl.LOSSES[name]
    v_ref, g_ref = loss.value_and_grad(p, t, reduction="sum")
    buf = np.concatenate([p, [0.0]])
    v, g = loss.value_and_grad(buf[:-1], t, out=buf[1:], reduction="sum")  # out is pred shifted by one
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(g, g_ref)
    tt = t.copy()
    v, g = loss.value_and_grad(p, tt, out=tt, reduction="sum")  # out is target
    assert g is tt
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(g, g_ref)


@pytest.mark.regression
def test_out_with_elements_sharing_memory(fl):
    out = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(4,), strides=(0,))
    raises(ValueError, "out", fl.mse.grad, np.arange(4.0), np.zeros(4), out=out)


@pytest.mark.regression
def test_torch_out_and_unusual_tensors(fl):
    torch = pytest.importorskip("torch")
    p, t = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4)
    raises(ValueError, "out", fl.mse.grad, p, t, out=torch.zeros(1).expand(4))
    raises(TypeError, "out", fl.mse.grad, p, t, out=torch.zeros(4)._neg_view())
    raises(TypeError, "pred", fl.mse, p.to_sparse(), t)
    # An in-place write bumps the version counter, so autograd refuses a graph that saved the
    # old values (it used to compute a silently wrong gradient).
    w = torch.randn(3, 4, requires_grad=True)
    logits = torch.randn(2, 3) @ w
    z = (logits ** 2).sum()
    before = logits._version
    fl.cross_entropy.grad(logits.detach(), torch.tensor([0, 1]), out=logits.detach())
    assert logits._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()
