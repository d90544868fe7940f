"""User-defined elementwise losses (fl.elementwise_loss) with a pseudo-Huber loss."""
import math

import numpy as np
import pytest

from _cases import sample_weight
from _checks import check_grad, check_value, check_vg_consistent, check_vg_matches
from conftest import GPU_BACKENDS, assert_close
from fastloss import binary_target_variant, float32_variant, fused_multiply_add, log1p_sum_form


def ph_value(pred, target, delta):
    d = (pred - target) / delta
    return delta * delta * (math.sqrt(1.0 + d * d) - 1.0)


def ph_deriv(pred, target, delta):
    d = pred - target
    return d / math.sqrt(1.0 + (d / delta) ** 2)


def ph_reference(pred, target, delta=1.0, reduction="mean", sample_weight=None):
    """NumPy float64 pseudo-Huber: value and gradient with the fastloss reduction rules."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    l = delta ** 2 * (np.sqrt(1.0 + (d / delta) ** 2) - 1.0)
    g = d / np.sqrt(1.0 + (d / delta) ** 2)
    w = np.ones_like(l) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if reduction == "none":
        return w * l, w * g
    if reduction == "sum":
        return float(np.sum(w * l)), w * g
    W = float(np.sum(w))
    if W == 0:
        return float("nan"), np.zeros_like(g)
    return float(np.sum(w * l)) / W, w * g / W


@pytest.fixture(scope="module")
def pseudo_huber(fl):
    return fl.elementwise_loss(ph_value, ph_deriv, name="pseudo_huber", params={"delta": 1.0},
                               doc="Pseudo-Huber loss.")


def _data(rng, shape, dtype):
    p = rng.standard_normal(shape) * 2
    t = rng.standard_normal(shape)
    return p.astype(dtype), t.astype(dtype)


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (1001,), (0,), (3, 4), (2, 3, 5)],
                         ids=["0d", "1", "7", "1001", "empty", "3x4", "2x3x5"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pseudo_huber_matches_reference(pseudo_huber, reduction, dtype, shape, weighted, rng):
    p, t = _data(rng, shape, dtype)
    w = sample_weight(rng, shape, dtype) if weighted else None
    ev, eg = ph_reference(p, t, reduction=reduction, sample_weight=w)
    v = pseudo_huber(p, t, reduction=reduction, sample_weight=w)
    g = pseudo_huber.grad(p, t, reduction=reduction, sample_weight=w)
    vg = pseudo_huber.value_and_grad(p, t, reduction=reduction, sample_weight=w)
    check_value(v, ev, dtype, reduction, shape)
    check_grad(g, eg, dtype, shape)
    check_vg_matches(vg, ev, eg, dtype, reduction, shape, shape)


@pytest.mark.parametrize("delta", [0.5, 2.0, 10.0])
def test_pseudo_huber_param_keyword(pseudo_huber, delta, rng):
    p, t = _data(rng, (9,), np.float64)
    for red in ["mean", "none"]:
        ev, eg = ph_reference(p, t, delta=delta, reduction=red)
        v, g = pseudo_huber.value_and_grad(p, t, delta=delta, reduction=red)
        assert_close(v, ev, np.float64)
        assert_close(g, eg, np.float64)
        assert_close(pseudo_huber(p, t, delta=delta, reduction=red), ev, np.float64)
        assert_close(pseudo_huber.grad(p, t, delta=delta, reduction=red), eg, np.float64)


def test_pseudo_huber_default_param_is_used(pseudo_huber, rng):
    p, t = _data(rng, (5,), np.float64)
    assert_close(pseudo_huber(p, t), ph_reference(p, t, delta=1.0)[0], np.float64)
    assert_close(pseudo_huber(p, t), pseudo_huber(p, t, delta=1.0), np.float64)
    assert not np.isclose(pseudo_huber(p, t), pseudo_huber(p, t, delta=3.0))


def test_pseudo_huber_float16(pseudo_huber, rng):
    p, t = _data(rng, (6,), np.float16)
    ev, eg = ph_reference(p, t)
    v, g = pseudo_huber.value_and_grad(p, t)
    check_value(v, ev, np.float16, "mean", (6,))
    check_grad(g, eg, np.float16, (6,))


def test_pseudo_huber_limits(pseudo_huber):
    """Small residuals: ~ d^2/2; large: ~ delta (|d| - delta)."""
    p = np.array([1e-4, 1e6])
    t = np.zeros(2)
    v = np.asarray(pseudo_huber(p, t, reduction="none", delta=1.0))
    # d²/2 (− d⁴/8 ...); the formula's sqrt(1 + d²) − 1 itself cancels to about 1e-8 relative
    np.testing.assert_allclose(v[0], 0.5e-8, rtol=1e-6)
    np.testing.assert_allclose(v[1], 1e6 - 1.0, rtol=1e-9)


def test_pseudo_huber_check_grad(fl, pseudo_huber, rng):
    p, t = _data(rng, (3, 4), np.float64)
    res = fl.check_grad(pseudo_huber, p, t, delta=0.7)
    assert res.max_abs_error < 1e-7 and res.max_rel_error < 1e-4


def test_pseudo_huber_out_and_layouts(pseudo_huber, rng):
    p, t = _data(rng, (10,), np.float32)
    _, eg = ph_reference(p, t, reduction="sum")
    out = np.empty(10, dtype=np.float32)
    pseudo_huber.value_and_grad(p, t, reduction="sum", out=out)
    assert_close(out, eg, np.float32)
    pb = np.empty(20, dtype=np.float32)
    pb[::2] = p
    v, g = pseudo_huber.value_and_grad(pb[::2], t[::-1].copy()[::-1].astype(">f4"),
                                       reduction="sum")
    assert_close(g, eg, np.float32)


def test_pseudo_huber_torch(torch, pseudo_huber, rng):
    p, t = _data(rng, (4, 3), np.float64)
    ev, eg = ph_reference(p, t, delta=1.5)
    v, g = pseudo_huber.value_and_grad(torch.from_numpy(p), torch.from_numpy(t), delta=1.5)
    assert isinstance(v, torch.Tensor) and v.dim() == 0
    assert isinstance(g, torch.Tensor) and tuple(g.shape) == (4, 3)
    assert_close(v.numpy(), ev, np.float64)
    assert_close(g.numpy(), eg, np.float64)


def test_pseudo_huber_validation(fl, pseudo_huber, rng):
    p, t = _data(rng, (4,), np.float64)
    with pytest.raises(TypeError, match="bogus"):
        pseudo_huber(p, t, bogus=1.0)
    with pytest.raises(ValueError, match="target"):
        pseudo_huber(p, t[:3])
    with pytest.raises(TypeError, match="pred"):
        pseudo_huber(np.arange(4), t)
    with pytest.raises(ValueError, match="reduction"):
        pseudo_huber(p, t, reduction="avg")
    with pytest.raises(TypeError):
        pseudo_huber(p, t, "sum")


def test_user_loss_without_params(fl, rng):
    cube = fl.elementwise_loss(lambda p, t: (p - t) ** 4 / 4.0, lambda p, t: (p - t) ** 3)
    p, t = _data(rng, (8,), np.float64)
    d = p - t
    v, g = cube.value_and_grad(p, t, reduction="sum")
    assert_close(v, np.sum(d ** 4) / 4, np.float64)
    assert_close(g, d ** 3, np.float64)
    with pytest.raises(TypeError):
        cube(p, t, delta=1.0)


def test_user_loss_math_functions(fl, rng):
    """math.* functions inside the user's scalar functions (log-cosh written by hand)."""
    lc = fl.elementwise_loss(lambda p, t: math.log(math.cosh(p - t)),
                             lambda p, t: math.tanh(p - t), name="my_log_cosh")
    p, t = _data(rng, (6,), np.float64)
    v, g = lc.value_and_grad(p, t)
    assert_close(v, np.mean(np.log(np.cosh(p - t))), np.float64)
    assert_close(g, np.tanh(p - t) / 6, np.float64)


def _softplus_value(p, t):
    return math.log1p(math.exp(p - t))


def _softplus_deriv(p, t):
    return 1.0 / (1.0 + math.exp(t - p))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_loss_softplus_idiom(fl, dtype):
    """math.log1p(math.exp(x)) is fused into one vectorisable softplus on the CPU in float32
    (kernels/vmath.py: vsoftplus); results match np.logaddexp(0, x) over the whole range."""
    sp = fl.elementwise_loss(_softplus_value, _softplus_deriv, name="my_softplus")
    x = np.concatenate([np.linspace(-120, 120, 4001), [0.0, -0.0, 1e-8, -1e-8, 200.0, -200.0]])
    p = x.astype(dtype)
    t = np.zeros_like(p)
    v = sp(p, t, reduction="none")
    expected = np.logaddexp(0.0, p.astype(np.float64))
    tiny = np.finfo(dtype).tiny
    keep = expected > tiny  # float32 underflows below e^-87
    np.testing.assert_allclose(np.asarray(v, np.float64)[keep], expected[keep],
                               rtol=8 * np.finfo(dtype).eps, atol=0)
    assert np.all(np.asarray(v)[~keep] <= 2 * tiny)
    fused = hasattr(sp.cpu_kernels((), np.dtype(dtype).name), "_i_vsoftplus")
    assert fused == (dtype == np.float32)


def _logistic_value(p, t):
    return math.exp(-abs(p - t))


def _logistic_deriv(p, t):
    d = p - t
    return -math.exp(-abs(d)) * (1.0 if d > 0 else (-1.0 if d < 0 else 0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_loss_exp_of_minus_abs_idiom(fl, dtype):
    """math.exp(-abs(x)) becomes vmath.vexp_neg_abs on the CPU (its clamp one instruction
    shorter); value and gradient match e^(-|d|) computed in float64 by NumPy, underflow and
    infinities included."""
    loss = fl.elementwise_loss(_logistic_value, _logistic_deriv, name="exp_neg_abs_user")
    d = np.concatenate([np.linspace(-120, 120, 4001), [0.0, -0.0, 1e-8, 760.0, -760.0, np.inf, -np.inf]])
    p = d.astype(dtype)
    t = np.zeros_like(p)
    v, g = loss.value_and_grad(p, t, reduction="none")
    want = np.exp(-np.abs(p.astype(np.float64)))
    np.testing.assert_allclose(np.asarray(v, np.float64), want, rtol=4 * np.finfo(dtype).eps,
                               atol=2 * float(np.finfo(dtype).smallest_subnormal))
    np.testing.assert_allclose(np.asarray(g, np.float64), -want * np.sign(p), rtol=4 * np.finfo(dtype).eps,
                               atol=2 * float(np.finfo(dtype).smallest_subnormal))
    assert hasattr(loss.cpu_kernels((), np.dtype(dtype).name), "_i_vexp_neg_abs")


def test_user_loss_two_params(fl, rng):
    def val(p, t, a, b):
        return a * (p - t) ** 2 + b * abs(p - t)

    def der(p, t, a, b):
        d = p - t
        return 2 * a * d + b * (1.0 if d > 0 else (-1.0 if d < 0 else 0.0))

    loss = fl.elementwise_loss(val, der, params={"a": 1.0, "b": 0.0})
    p, t = _data(rng, (7,), np.float64)
    d = p - t
    v, g = loss.value_and_grad(p, t, a=0.5, b=2.0, reduction="none")
    assert_close(v, 0.5 * d ** 2 + 2 * np.abs(d), np.float64)
    assert_close(g, d + 2 * np.sign(d), np.float64)
    v, g = loss.value_and_grad(p, t, b=2.0, reduction="none")  # a keeps its default
    assert_close(v, d ** 2 + 2 * np.abs(d), np.float64)
    w = sample_weight(rng, (7,))
    assert_close(loss(p, t, a=0.5, sample_weight=w),
                 np.sum(w * 0.5 * d ** 2) / np.sum(w), np.float64)


def test_two_user_losses_do_not_interfere(fl, rng):
    a = fl.elementwise_loss(lambda p, t: (p - t) ** 2, lambda p, t: 2 * (p - t))
    b = fl.elementwise_loss(lambda p, t: 3 * (p - t) ** 2, lambda p, t: 6 * (p - t))
    p, t = _data(rng, (5,), np.float64)
    va, vb = a(p, t), b(p, t)
    assert_close(vb, 3 * np.mean((p - t) ** 2), np.float64)
    assert_close(va, np.mean((p - t) ** 2), np.float64)


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_grad_is_exactly_call_and_grad(pseudo_huber, reduction, weighted, rng):
    p, t = _data(rng, (1001,), np.float64)
    w = sample_weight(rng, (1001,)) if weighted else None
    kw = dict(reduction=reduction, sample_weight=w, delta=0.8)
    check_vg_consistent(pseudo_huber(p, t, **kw), pseudo_huber.grad(p, t, **kw),
                        pseudo_huber.value_and_grad(p, t, **kw))


# Options named like the variables of the generated kernels' template (c, t, scale, acc, np,
# ...) used to shadow them: wrong numbers (some only past the first parallel chunk, 32768
# elements), duplicate-argument SyntaxErrors or Numba errors. Options are opt_<name> there now.
_CLASHING = ["c", "t", "j", "n", "g", "s", "pb", "acc", "tb", "full", "scale", "weight", "start", "stop",
             "flags", "vals", "grad", "sums", "chunk", "np", "LANES", "FLOAT", "param_at", "prange"]


def _weighted_square(options):
    """A loss with every name of ``options`` as an option: (Σ_k (k + 1)·option_k)·(p − t)². Each
    option has its own coefficient, so one option read in place of another changes the value."""
    scale = " + ".join(f"{k + 1}.0 * {o}" for k, o in enumerate(options))
    ns = {}
    exec(f"def value(p_, t_, {', '.join(options)}):\n    return ({scale}) * (p_ - t_) * (p_ - t_)\n"
         f"def deriv(p_, t_, {', '.join(options)}):\n    return 2.0 * ({scale}) * (p_ - t_)\n", ns)
    return ns["value"], ns["deriv"]


@pytest.mark.regression
def test_option_names_do_not_clash_with_the_kernels(fl):
    # One loss with all the names at once: the kernels are built from source text that has no
    # source file, so each loss compiles in every run; one loss instead of one per name keeps
    # this test at two compilations (scalar options, array options), not 48.
    value, deriv = _weighted_square(_CLASHING)
    defaults = {o: 1.0 + k / 8 for k, o in enumerate(_CLASHING)}
    loss = fl.elementwise_loss(value, deriv, name="clashing_options", params=defaults)
    coef = np.arange(1.0, len(_CLASHING) + 1)
    for n in (4, 70_001):  # serial, and parallel over several chunks
        p = np.arange(n, dtype=np.float64) % 7
        scale = float(coef @ np.array(list(defaults.values())))
        v, g = loss.value_and_grad(p, np.zeros(n), reduction="sum")
        np.testing.assert_allclose(v, scale * np.sum(p * p), rtol=1e-12)
        np.testing.assert_allclose(g, 2 * scale * p, rtol=1e-12)
        # Every option per element, each its own values, varying along the input.
        arrays = {o: (k + 1) * 0.25 + (np.arange(n) % 5) * 0.01 for k, o in enumerate(_CLASHING)}
        scales = sum(c * a for c, a in zip(coef, arrays.values()))
        v, g = loss.value_and_grad(p, np.zeros(n), reduction="sum", **arrays)
        np.testing.assert_allclose(v, np.sum(scales * p * p), rtol=1e-12)
        np.testing.assert_allclose(g, 2 * scales * p, rtol=1e-12)


@pytest.mark.parametrize("option", ["reduction", "sample_weight", "out", "stream", "not an identifier"])
def test_reserved_option_names_are_refused(fl, option):
    with pytest.raises(ValueError, match="option name"):
        fl.elementwise_loss(lambda p, t, x: x, lambda p, t, x: x, params={option: 1.0})


def test_any_loss_name_works(fl):
    """The name goes into a generated file's name: a slash or a dot must not break it."""
    for name in ("a/b", "../x", "ünïcode loss"):
        loss = fl.elementwise_loss(lambda p, t: (p - t) * (p - t), lambda p, t: 2.0 * (p - t), name=name)
        np.testing.assert_allclose(loss(np.array([1.0, 3.0]), np.zeros(2)), 5.0)


def test_validate_callback(fl):
    """validate= runs with the options before any kernel, and its ValueError reaches the caller."""
    seen = []

    def validate(delta):
        seen.append(delta)
        if not delta > 0:
            raise ValueError("delta must be > 0")

    loss = fl.elementwise_loss(ph_value, ph_deriv, name="ph_validated", params={"delta": 1.0},
                               validate=validate)
    np.testing.assert_allclose(loss(np.array([0.0]), np.array([0.0]), delta=2.0), 0.0)
    with pytest.raises(ValueError, match="delta must be > 0"):
        loss.grad(np.array([1.0]), np.array([0.0]), delta=-1.0)
    assert seen == [2.0, -1.0]


def _halved_f32(d):
    return 0.25 * d  # deliberately not what _halved computes: shows which one a kernel copied


def _halved(d):
    return 0.5 * d


_halved_marked = float32_variant(_halved_f32)(_halved)  # what the decorator returns


def _variant_value(p, t):
    return _halved(p - t)


def _variant_deriv(p, t):
    return _halved(1.0) + 0.0 * t


def test_float32_variant_is_used_by_float32_kernels_only(fl, backend):
    """fl.float32_variant: float32 kernels (CPU and CUDA) copy the variant of a helper, float64
    kernels the helper itself; float16 computes in float32 as well."""
    assert _halved_marked is _halved and _halved._fastloss_float32 is _halved_f32
    loss = fl.elementwise_loss(_variant_value, _variant_deriv, name="variant_probe")
    p = np.array([1.0, 3.0, -2.0])
    t = np.zeros(3)
    for dtype, factor in ((np.float64, 0.5), (np.float32, 0.25), (np.float16, 0.25)):
        pb, tb = backend.to_backend(p.astype(dtype)), backend.to_backend(t.astype(dtype))
        v, g = loss.value_and_grad(pb, tb, reduction="none")
        np.testing.assert_array_equal(backend.to_numpy(v), (factor * p).astype(dtype), err_msg=str(dtype))
        np.testing.assert_array_equal(backend.to_numpy(g), np.full(3, factor, dtype), err_msg=str(dtype))


def _binary_probe01(p, t):
    return 2.0 * p + t  # deliberately not what _binary_probe computes: shows which one ran


@binary_target_variant(_binary_probe01)
def _binary_probe(p, t):
    return p + t


def _binary_probe_deriv01(p, t):
    return 3.0 + 0.0 * (p + t)


@binary_target_variant(_binary_probe_deriv01)
def _binary_probe_deriv(p, t):
    return 1.0 + 0.0 * (p + t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_binary_target_variant_runs_on_blocks_of_binary_targets(fl, backend, dtype, rng):
    """fl.binary_target_variant: CPU kernels call the variant on each block (of BLOCK elements,
    counted from the start of each chunk of CHUNK) whose targets are all 0 or 1, unless the block
    before it in its chunk had another target, and the function itself on the others, in value,
    grad and value_and_grad alike, serial (one chunk) and parallel (several); CUDA kernels call
    the function itself everywhere. A soft target in the last block of the first chunk checks
    that the rule does not reach across chunks."""
    from fastloss._config import BLOCK, CHUNK
    loss = fl.elementwise_loss(_binary_probe, _binary_probe_deriv, name="binary_probe")
    on_gpu = backend.name in GPU_BACKENDS
    for n in ((40,) if on_gpu else (3 * BLOCK + 5, CHUNK + 2 * BLOCK + 7)):
        p = rng.standard_normal(n).astype(dtype)
        t = rng.integers(0, 2, n).astype(dtype)
        # Soft targets: block 1 and block 2 (after it) take the general path; with two chunks,
        # the last block of the first does, but not the first block of the second.
        soft = ([BLOCK + 17] if n > BLOCK else []) + ([CHUNK - 3] if n > CHUNK else [])
        t[soft] = 0.5
        general = np.full(n, on_gpu)
        for i in soft:
            b0 = i - i % BLOCK
            general[b0:min(b0 + 2 * BLOCK, (i // CHUNK + 1) * CHUNK)] = True
        ev = np.where(general, p + t, 2 * p + t).astype(dtype)
        eg = np.where(general, 1.0, 3.0).astype(dtype)
        w = rng.uniform(0.5, 2.0, n).astype(dtype)
        pb, tb, wb = backend.to_backend(p), backend.to_backend(t), backend.to_backend(w)
        v, g = loss.value_and_grad(pb, tb, reduction="none")
        np.testing.assert_array_equal(backend.to_numpy(v), ev)
        np.testing.assert_array_equal(backend.to_numpy(g), eg)
        np.testing.assert_array_equal(backend.to_numpy(loss.grad(pb, tb, reduction="sum")), eg)
        np.testing.assert_array_equal(backend.to_numpy(loss.grad(pb, tb, sample_weight=wb, reduction="sum")), eg * w)
        total = float(backend.to_numpy(loss(pb, tb, reduction="sum", sample_weight=wb)))
        assert total == pytest.approx(float(np.sum(ev.astype(np.float64) * w)), rel=1e-6)


def test_binary_target_variant_must_take_the_same_arguments(fl):
    def value01(p, t):
        return p

    @binary_target_variant(value01)
    def value(p, t, delta):
        return p * delta

    with pytest.raises(TypeError, match="value's binary_target_variant must take"):
        fl.elementwise_loss(value, lambda p, t, delta: delta, params={"delta": 1.0})


def _scaled_softplus_form(p, t, scale):
    d = scale * (p - t)
    return (d if d > 0.0 else 0.0), math.exp(-abs(d))


@log1p_sum_form(_scaled_softplus_form, when={"scale": 1.0})
def _scaled_softplus(p, t, scale):
    d = scale * (p - t)
    return (d if d > 0.0 else 0.0) + math.log1p(math.exp(-abs(d)))


def _scaled_softplus_deriv(p, t, scale):
    d = scale * (p - t)
    e = math.exp(-abs(d))
    return scale * (1.0 / (1.0 + e) if d >= 0.0 else e / (1.0 + e))


def test_log1p_sum_form_in_a_user_loss(fl, rng):
    """fl.log1p_sum_form on a user's loss: its unweighted sums take the product kernels where the
    form holds (scale = 1) and the per-element values elsewhere, and both agree with the float64
    sum of log(1 + e^(scale (p - t))) (4e-7 relative in float32); weighted sums and per-element
    values are unchanged. float32 only: the built-in losses' tests cover float64, and this loss's
    float64 kernels took 17 s to compile."""
    dtype = np.float32
    loss = fl.elementwise_loss(_scaled_softplus, _scaled_softplus_deriv, name="scaled_softplus",
                               params={"scale": 1.0})
    assert hasattr(loss.cpu_kernels((), np.dtype(dtype).name), "value_sums_chunk")
    n = 50_000  # two chunks: the parallel driver
    p, t = (rng.normal(0, 4, n)).astype(dtype), rng.normal(0, 1, n).astype(dtype)
    rtol = 4e-7
    for scale in (1.0, 0.5):
        d = scale * (p.astype(np.float64) - t.astype(np.float64))
        terms = np.logaddexp(0.0, d)
        exact = math.fsum(terms)
        s = loss(p, t, reduction="sum", scale=scale)
        assert abs(float(s) - exact) <= rtol * exact, (scale, float(s), exact)
        v, g = loss.value_and_grad(p, t, reduction="sum", scale=scale)
        assert float(v) == float(s)
        assert_close(g, scale / (1.0 + np.exp(-d)), dtype)
        none = loss(p, t, reduction="none", scale=scale)
        np.testing.assert_allclose(np.asarray(none, np.float64), terms, rtol=8 * np.finfo(dtype).eps)
        w = rng.uniform(0, 2, n).astype(dtype)
        sw = loss(p, t, reduction="sum", scale=scale, sample_weight=w)
        assert abs(float(sw) - math.fsum(w.astype(np.float64) * terms)) <= rtol * exact


def test_log1p_sum_form_options_and_arguments_are_checked(fl):
    """A log1p_sum_form must take the value's arguments, and hold for numeric options of the
    loss: anything else is refused when the loss is made."""
    def form(p, t):
        return p, 0.0

    @log1p_sum_form(form)
    def value(p, t, scale):
        return p

    with pytest.raises(TypeError, match="value's log1p_sum_form must take"):
        fl.elementwise_loss(value, lambda p, t, scale: scale, params={"scale": 1.0})

    @log1p_sum_form(lambda p, t, scale: (p, 0.0), when={"width": 1.0})
    def value2(p, t, scale):
        return p

    with pytest.raises(ValueError, match="holds for width"):
        fl.elementwise_loss(value2, lambda p, t, scale: scale, params={"scale": 1.0})


_LIMIT = float("inf")
_TWO32 = np.float32(2.0)


def _capped_square(p, t):
    d = p - t
    return d * d if d * d < _LIMIT else _LIMIT  # an infinite module constant (was NameError: inf)


from math import exp as _exp, log1p as _log1p  # noqa: E402 - ``from math import`` in loss math


def _twice_softplus(p, t):
    return _TWO32 * _softplus_plain(p - t)  # a NumPy scalar constant and a helper


def _softplus_plain(x):
    return x + _log1p(_exp(-x)) if x > 0 else _log1p(_exp(x))


def _twice_deriv(p, t):
    return 2.0 * (p - t)


def _no_deriv(p, t):
    return 0.0 * p


def test_constants_and_math_imports_in_user_math(fl):
    """Infinite module constants, NumPy scalar constants and functions imported from math (found
    by an exploratory pass: the first gave a NameError, the others a Numba typing error)."""
    loss = fl.elementwise_loss(_capped_square, _twice_deriv, name="capped")
    assert float(loss(np.array([0.5, 2.0]), np.array([0.0, 1.0]))) == 0.625
    loss = fl.elementwise_loss(_twice_softplus, _no_deriv, name="twice_softplus")
    p = np.linspace(-30, 30, 13)
    for dtype in (np.float64, np.float32):
        v = loss(p.astype(dtype), np.zeros(13, dtype), reduction="none")
        np.testing.assert_allclose(v, 2 * np.logaddexp(0, p), rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_lambda_calling_a_helper_is_a_clear_error(fl):
    loss = fl.elementwise_loss(lambda p, t: _softplus_plain(p - t), lambda p, t: 0.0 * p, name="lambda_helper")
    with pytest.raises(TypeError, match="_softplus_plain.* cannot be compiled with it"):
        loss(np.array([1.0]), np.array([0.0]))


def _helper_with_a_typo(d):
    return d.real_part  # floats have no such attribute: Numba cannot type this


def _typo_value(p, t):
    return _helper_with_a_typo(p - t) ** 2


def _string_value(p, t):
    return (p - t) + "1"


@pytest.mark.parametrize("value", [_typo_value, _string_value, lambda p, t: undefined_name * p],  # noqa: F821
                         ids=["attribute", "str_plus_float", "undefined_name_in_a_lambda"])
@pytest.mark.parametrize("op", ["value", "grad", "value_and_grad"])
def test_a_function_numba_cannot_compile_is_a_type_error(fl, value, op):
    """A mistake in a user's function reaches the user as a TypeError naming the loss and
    quoting Numba's explanation, not as Numba's typing traceback (the error is not chained to
    Numba's exception)."""
    loss = fl.elementwise_loss(value, value, name=f"broken_{value.__name__}")  # both broken
    call = loss if op == "value" else getattr(loss, op)
    p = np.array([0.5, 1.5, -2.0], np.float32)
    with pytest.raises(TypeError, match=r"broken_.*could not be compiled by Numba") as info:
        call(p, np.zeros(3, np.float32))
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert type(info.value) is TypeError
    hint = {"_typo_value": "real_part", "_string_value": "add", "<lambda>": "undefined_name"}[value.__name__]
    assert hint in str(info.value)


def _axis_scaled_value(p, t, axis):
    return axis * (p - t) ** 2


def _axis_scaled_deriv(p, t, axis):
    return 2.0 * axis * (p - t)


def test_an_option_named_axis_is_just_an_option(fl, backend):
    """Only kl_div's axis is a class axis: a user loss may name a float option "axis" (the GPU
    path checked any option of that name as a class axis: ValueError "axis 3.0 is out of
    range")."""
    loss = fl.elementwise_loss(_axis_scaled_value, _axis_scaled_deriv, params={"axis": 1.0}, name="axis_scaled")
    p, t = np.linspace(-1.0, 1.0, 5), np.zeros(5)
    v, g = loss.value_and_grad(backend.to_backend(p), backend.to_backend(t), axis=3.0, reduction="sum")
    assert_close(backend.to_numpy(v), 3.0 * np.sum(p * p), np.float64)
    assert_close(backend.to_numpy(g), 6.0 * p, np.float64)


def _square_gap(x, y):
    return x * x - y * y


@fused_multiply_add
def _square_gap_fused(x, y):
    return x * x - y * y


def _fused_probe_value(p, t):
    return _square_gap_fused(p, t)


def _unfused_probe_value(p, t):
    return _square_gap(p, t)


def _zero_deriv(p, t):
    return 0.0 * p


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_fused_multiply_add_rounds_once_in_cpu_kernels(fl, dtype, rng):
    """fl.fused_multiply_add: in CPU kernels x * x - y * y of a marked helper is one fused
    multiply-add, fma(x, x, -(y * y)), so at x == y it is the exact rounding error of y * y
    (computed here with fractions), where the same expression unmarked is exactly 0; plain
    Python still evaluates it as written."""
    from fractions import Fraction
    fused = fl.elementwise_loss(_fused_probe_value, _zero_deriv, name="fused_probe")
    plain = fl.elementwise_loss(_unfused_probe_value, _zero_deriv, name="unfused_probe")
    x = rng.uniform(0.5, 4.0, 300).astype(dtype)
    expected = np.array([float(Fraction(float(v)) ** 2 - Fraction(float(v * v))) for v in x]).astype(dtype)
    got = fused(x, x.copy(), reduction="none")
    np.testing.assert_array_equal(got, expected)
    assert np.count_nonzero(got) > 200  # most squares round, so the probe can tell fused from not
    np.testing.assert_array_equal(plain(x, x.copy(), reduction="none"), np.zeros_like(x))
    assert _square_gap_fused(1.1, 1.1) == 0.0
