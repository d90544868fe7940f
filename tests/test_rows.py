"""Row losses (cross_entropy, multi_margin, kl_div) against reference.py."""
import numpy as np
import pytest

import reference as ref
from _cases import ROWS, call_all, case_id, lead_shape, row_cases, row_data, sample_weight
from _checks import check_grad, check_value, check_vg_consistent, check_vg_matches, same_bits
from conftest import assert_close

SHAPES = [(5,), (1, 5), (7, 5), (0, 5), (4, 3, 6), (257, 10), (4, 1)]
SHAPE_IDS = ["C5", "1x5", "7x5", "0x5", "4x3x6", "257x10", "4x1"]


def reductions(name):
    return ["mean", "sum", "none"] + (["batchmean"] if name == "kl_div" else [])


def _params(names_opts, extra=()):
    out = []
    for name, opts in names_opts:
        for red in reductions(name):
            out.append(pytest.param(name, opts, red, id=f"{name}-{case_id(opts)}-{red}"))
    return out


def _run_and_check(fl, name, opts, shape, dtype, reduction, weighted, rng, axis=None,
                   factor=1.0):
    ax = -1 if axis is None else axis
    pred, target, kw = row_data(name, shape, dtype, rng, opts, axis=ax)
    if axis is not None:
        kw["axis"] = axis
    lead = lead_shape(shape, ax)
    sw = sample_weight(rng, lead, dtype) if weighted else None
    loss = getattr(fl, name)
    pc, tc = pred.copy(), np.array(target, copy=True)
    v, g, vg = call_all(loss, pred, target, reduction=reduction, sample_weight=sw, **kw)
    ev, eg = ref.ROWS[name](pred, target, reduction=reduction, sample_weight=sw, **kw)
    msg = f"{name} {kw} {reduction} {dtype} {shape} weighted={weighted}"
    none_shape = shape if name == "kl_div" else lead  # kl_div's "none" is elementwise
    check_value(v, ev, dtype, reduction, none_shape, factor=factor, msg=msg)
    check_grad(g, eg, dtype, shape, factor=factor, msg=msg)
    check_vg_matches(vg, ev, eg, dtype, reduction, none_shape, shape, factor=factor, msg=msg)
    assert same_bits(pred, pc) and same_bits(target, tc), "inputs were modified"


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,opts,reduction", _params(row_cases(default_only=True)))
def test_default_options(fl, name, opts, reduction, dtype, shape, weighted, rng):
    _run_and_check(fl, name, opts, shape, dtype, reduction, weighted, rng)


_OPT = [(n, o) for n, o in row_cases() if o]


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 6)], ids=["7x5", "4x3x6"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,opts,reduction", _params(_OPT))
def test_options(fl, name, opts, reduction, dtype, shape, weighted, rng):
    _run_and_check(fl, name, opts, shape, dtype, reduction, weighted, rng)


_AXIS_CASES = [("cross_entropy", {}, "ce"),
               ("cross_entropy", {"_probs": True, "label_smoothing": 0.1}, "ce-probs"),
               ("cross_entropy", {"_ignore": True, "class_weight": "array"}, "ce-ign-cw"),
               ("multi_margin", {"p": 2}, "mm"), ("kl_div", {}, "kl")]


@pytest.mark.parametrize("axis,shape", [(0, (5, 7)), (1, (4, 6, 3)), (0, (6, 2, 3)),
                                        (-2, (3, 5, 4))], ids=["0of2d", "1of3d", "0of3d", "-2of3d"])
@pytest.mark.parametrize("name,opts,reduction",
                         [pytest.param(n, o, r, id=f"{i}-{r}") for n, o, i in _AXIS_CASES
                          for r in reductions(n)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
def test_axis(fl, name, opts, axis, shape, weighted, reduction, rng):
    _run_and_check(fl, name, opts, shape, np.float64, reduction, weighted, rng, axis=axis)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,opts", [("cross_entropy", {}), ("cross_entropy", {"_probs": True}),
                                       ("multi_margin", {}), ("kl_div", {})],
                         ids=["ce", "ce-probs", "mm", "kl"])
def test_float16(fl, name, opts, reduction, rng):
    _run_and_check(fl, name, opts, (6, 4), np.float16, reduction, False, rng)


# --------------------------------------------------------------------------------------------
# cross_entropy specifics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ldtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_label_integer_dtypes(fl, ldtype, rng):
    pred = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, size=6)
    ev, eg = ref.cross_entropy(pred, labels)
    v, g = fl.cross_entropy.value_and_grad(pred, labels.astype(ldtype))
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)
    v = fl.multi_margin(pred, labels.astype(ldtype))
    assert_close(v, ref.multi_margin(pred, labels)[0], np.float64)


def test_ce_all_rows_ignored(fl, rng):
    pred = rng.standard_normal((4, 3))
    labels = np.full(4, -100)
    v, g = fl.cross_entropy.value_and_grad(pred, labels)
    assert np.isnan(v)
    assert np.all(g == 0) and g.shape == (4, 3)
    assert fl.cross_entropy(pred, labels, reduction="sum") == 0.0
    n = fl.cross_entropy(pred, labels, reduction="none")
    assert n.shape == (4,) and np.all(n == 0)
    # also with label smoothing (ignored rows get no smoothing term either)
    v, g = fl.cross_entropy.value_and_grad(pred, labels, label_smoothing=0.2)
    assert np.isnan(v) and np.all(g == 0)


def test_ce_zero_weights(fl, rng):
    pred = rng.standard_normal((4, 3))
    labels = np.array([0, 1, 2, 1])
    v, g = fl.cross_entropy.value_and_grad(pred, labels, sample_weight=np.zeros(4))
    assert np.isnan(v) and np.all(g == 0)
    # class weight zero on every present label
    v, g = fl.cross_entropy.value_and_grad(np.asarray(pred), np.array([1, 1, 1, 1]),
                                           class_weight=np.array([1.0, 0.0, 2.0]))
    assert np.isnan(v) and np.all(g == 0)


def test_ce_mean_divides_by_effective_weights(fl, rng):
    """mean = sum(sw cw[y] l) / sum(sw cw[y]) over non-ignored rows, written out by hand."""
    pred = rng.standard_normal((5, 4))
    labels = np.array([0, 3, -100, 2, 3])
    cw = np.array([0.5, 1.0, 2.0, 3.0])
    sw = np.array([1.0, 2.0, 5.0, 0.5, 1.5])
    lsm = pred - np.log(np.sum(np.exp(pred), axis=1, keepdims=True))
    valid = labels != -100
    nll = -lsm[np.arange(5), np.where(valid, labels, 0)]
    weff = np.where(valid, sw * cw[np.where(valid, labels, 0)], 0.0)
    expected = np.sum(weff * nll) / np.sum(weff)
    assert_close(fl.cross_entropy(pred, labels, class_weight=cw, sample_weight=sw), expected,
                 np.float64)
    assert_close(fl.cross_entropy(pred, labels, class_weight=cw, sample_weight=sw,
                                  reduction="none"), weff * nll, np.float64)


def test_ce_prob_targets_mean_is_over_rows(fl, rng):
    pred = rng.standard_normal((5, 4))
    t = rng.dirichlet(np.ones(4), size=5)
    cw = np.array([0.5, 1.0, 2.0, 3.0])
    lsm = pred - np.log(np.sum(np.exp(pred), axis=1, keepdims=True))
    l = -np.sum(cw * t * lsm, axis=1)
    assert_close(fl.cross_entropy(pred, t, class_weight=cw), l.mean(), np.float64)
    sw = np.array([1.0, 2.0, 0.0, 0.5, 1.5])
    assert_close(fl.cross_entropy(pred, t, class_weight=cw, sample_weight=sw),
                 np.sum(sw * l) / np.sum(sw), np.float64)


def test_ce_label_smoothing_one(fl, rng):
    pred = rng.standard_normal((3, 4))
    labels = np.array([0, 2, 3])
    lsm = pred - np.log(np.sum(np.exp(pred), axis=1, keepdims=True))
    assert_close(fl.cross_entropy(pred, labels, label_smoothing=1.0, reduction="none"),
                 -lsm.mean(axis=1), np.float64)


def test_ce_one_hot_probs_equal_labels(fl, rng):
    pred = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    onehot = np.eye(5)[labels]
    for ls in [0.0, 0.2]:
        a = fl.cross_entropy.value_and_grad(pred, labels, label_smoothing=ls)
        b = fl.cross_entropy.value_and_grad(pred, onehot, label_smoothing=ls)
        assert_close(b[0], a[0], np.float64)
        assert_close(b[1], a[1], np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ce_masked_logits(fl, dtype):
    """-inf logits (masked classes) give a finite loss and gradient."""
    pred = np.array([[1.0, -np.inf, 0.5, -np.inf],
                     [-np.inf, 2.0, -np.inf, -1.0]], dtype=dtype)
    labels = np.array([2, 1])
    v, g = fl.cross_entropy.value_and_grad(pred, labels, reduction="none")
    ev, eg = ref.cross_entropy(pred, labels, reduction="none")
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    assert_close(v, ev, dtype)
    assert_close(g, eg, dtype)
    assert g[0, 1] == 0 and g[0, 3] == 0 and g[1, 0] == 0
    v, g = fl.cross_entropy.value_and_grad(pred, labels, class_weight=np.array([1., 2, 3, 4]))
    assert np.isfinite(v) and np.all(np.isfinite(g))


@pytest.mark.parametrize("C", [13, 37, 44, 100])
def test_ce_smoothing_and_probs_exact_at_large_logits(fl, backend, C, rng):
    """Σ_c w_c (lse − x_c), the label-smoothing and probability-target sum, within 1e-13 of a
    float64 formula when the logits are large and close together: the GPU formed it as
    W·max − Σ w_c x_c, which cancels (1e-9 relative at logits near 1e8 in float64). Rows
    with −inf logits (masked classes, first and last in the row) make the sum infinite. (On the
    GPU: C = 13 a thread per row, 37 and 44 a warp, 100 a block; 44 and 100 read 4-vectors.)"""
    dev = backend.to_backend
    R = 6
    x = 1e8 + rng.standard_normal((R, C))
    x[4, :5] = -np.inf  # seen before any finite logit
    x[5, -3:] = -np.inf
    y = rng.integers(0, C, R)
    y[4] = 7
    cw = rng.uniform(0.5, 2.0, C)
    m = x.max(1, keepdims=True)
    log_s = np.log(np.exp(x - m).sum(1, keepdims=True))
    nll = (m - x) + log_s  # lse − x_c, as non-negative terms
    eps = 0.2
    expected = (1 - eps) * cw[y] * nll[np.arange(R), y] + eps / C * (cw * nll).sum(1)
    v = backend.to_numpy(fl.cross_entropy(dev(x), dev(y), class_weight=dev(cw), label_smoothing=eps,
                                          reduction="none"))
    np.testing.assert_allclose(v, expected, rtol=1e-13)
    assert np.all(np.isinf(v[4:]))
    probs = rng.dirichlet(np.ones(C), R)
    t = (1 - eps) * probs + eps / C
    expected = (cw * t * nll).sum(1)
    v = backend.to_numpy(fl.cross_entropy(dev(x), dev(probs), class_weight=dev(cw), label_smoothing=eps,
                                          reduction="none"))
    np.testing.assert_allclose(v, expected, rtol=1e-13)


@pytest.mark.parametrize("dtype,big", [(np.float32, 1e4), (np.float64, 1e300)])
def test_ce_huge_logits(fl, dtype, big):
    pred = np.array([[big, -big, 0.0], [-big, big, big], [big, big, -big]], dtype=dtype)
    labels = np.array([1, 2, 0])
    for red in ["none", "mean"]:
        v, g = fl.cross_entropy.value_and_grad(pred, labels, reduction=red)
        ev, eg = ref.cross_entropy(pred, labels, reduction=red)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
        assert_close(v, ev, dtype)
        assert_close(g, eg, dtype)


# Confident rows and large logits: (logits, label 0, exact loss, exact d loss / d x_0). Written
# with log1p/exp of the margin in float64, so the references are exact to the last bits.
CONFIDENT_ROWS = [
    ([10.0, 0.0, 0.0], np.log1p(2 * np.exp(-10.0)), -2 * np.exp(-10.0) / (1 + 2 * np.exp(-10.0))),
    ([20.0, 0.0], np.log1p(np.exp(-20.0)), -np.exp(-20.0) / (1 + np.exp(-20.0))),
    ([1e8, 1e8], np.log(2.0), -0.5),
    ([10001.0, 10000.0], np.log1p(np.exp(-1.0)), -1 / (1 + np.exp(1.0))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_ce_confident_rows_keep_relative_accuracy(fl, dtype, targets):
    """The loss of a confident row is small next to its logits, and softmax_y − 1 is small next
    to 1: computed as lse − x_y or in the data's dtype they lost everything (0 at [20, 0] in
    float32, for the gradient, and at [1e8, 1e8] for the loss with probability targets).

    What is left is the float64 rounding of s = Σ exp(x_c − m) = 1 + (tiny): an absolute error
    of about 1e-16 in the loss and the label's gradient, far below float32's resolution."""
    rtol, atol = (2e-6, 0.0) if dtype == np.float32 else (1e-12, 4e-16)
    for row, loss, grad_y in CONFIDENT_ROWS:
        x = np.array([row], dtype)
        t = np.array([0]) if targets == "labels" else np.eye(len(row), dtype=dtype)[[0]]
        v, g = fl.cross_entropy.value_and_grad(x, t, reduction="none")
        np.testing.assert_allclose(v, [loss], rtol=rtol, atol=atol, err_msg=f"{row}")
        np.testing.assert_allclose(g[0, 0], grad_y, rtol=rtol, atol=atol, err_msg=f"{row}")
        np.testing.assert_allclose(g[0].sum(), 0.0, atol=4 * np.finfo(dtype).eps, err_msg=f"{row}")
    if dtype == np.float64:  # the margin 1 sits below the ulp of 1e8 in float32
        v = fl.cross_entropy(np.array([[1e8 + 1, 1e8]]), np.array([0]))
        np.testing.assert_allclose(v, np.log1p(np.exp(-1.0)), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"class_weight": "random"}],
                         ids=["plain", "smoothing", "class_weight"])
def test_ce_gradient_into_the_logits(dtype, kw, rng):
    """out=logits (the README's in-place gradient): the same value and gradient as into a new
    buffer. The CPU kernels used to read the label's logit (and the whole row, for smoothing
    and probability targets) after writing the exps over it: a wrong value."""
    import fastloss as fl
    C = 1000
    x = (rng.standard_normal((6, C)) * 3).astype(dtype)
    if kw.get("class_weight") == "random":
        kw = {"class_weight": rng.random(C)}
    probs = rng.random((6, C)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    for target in (rng.integers(0, C, 6), probs):
        v, g = fl.cross_entropy.value_and_grad(x, target, **kw)
        xx = x.copy()
        v2, g2 = fl.cross_entropy.value_and_grad(xx, target, out=xx, **kw)
        assert g2 is xx
        assert v2 == v
        np.testing.assert_array_equal(g2, g)


def test_multi_margin_nan_score_contributes_nothing(fl):
    """The README's exception to NaN propagation: a NaN score fails z > 0."""
    v, g = fl.multi_margin.value_and_grad(np.array([[0.5, np.nan, 0.2]]), np.array([0]), reduction="none")
    np.testing.assert_allclose(v, [(1 - 0.5 + 0.2) / 3])
    np.testing.assert_allclose(g, [[-1 / 3, 0, 1 / 3]])


def test_ce_nan_propagates(fl, rng):
    pred = rng.standard_normal((3, 4))
    pred[1, 2] = np.nan
    labels = np.array([0, 1, 2])
    assert np.isnan(fl.cross_entropy(pred, labels))
    n = fl.cross_entropy(pred, labels, reduction="none")
    assert np.isnan(n[1]) and np.all(np.isfinite(n[[0, 2]]))


# --------------------------------------------------------------------------------------------
# kl_div specifics
# --------------------------------------------------------------------------------------------


def test_kl_div_batchmean_weighted_3d(fl, rng):
    """(sum_r w_r L_r / sum_r w_r) R / pred.shape[0], written out by hand."""
    lp = np.log(rng.dirichlet(np.ones(4), size=(3, 5)))
    t = rng.dirichlet(np.ones(4), size=(3, 5))
    w = rng.uniform(0.1, 2.0, size=(3, 5))
    L = np.sum(t * (np.log(t) - lp), axis=-1)
    expected = np.sum(w * L) / np.sum(w) * 15 / 3
    assert_close(fl.kl_div(lp, t, reduction="batchmean", sample_weight=w), expected, np.float64)
    assert_close(fl.kl_div(lp, t, reduction="batchmean"), L.sum() / 3, np.float64)
    assert_close(fl.kl_div(lp, t, reduction="mean", sample_weight=w),
                 np.sum(w * L) / (4 * np.sum(w)), np.float64)


@pytest.mark.parametrize("shape,expected", [((3, 0), 0.0), ((0, 3), np.nan), ((2, 0, 4), 0.0), ((0, 0), np.nan)])
def test_kl_div_batchmean_without_elements(fl, backend, shape, expected):
    """PyTorch's batchmean is sum / pred.shape[0]: 0 / 3 = 0 for a (3, 0) input (it was NaN:
    the denominator was the element count), 0 / 0 = NaN for (0, 3); without rows, (2, 0, 4),
    0 / 2."""
    x = np.zeros(shape)
    v, g = fl.kl_div.value_and_grad(backend.to_backend(x), backend.to_backend(x), reduction="batchmean")
    np.testing.assert_equal(float(backend.to_numpy(v)), expected)
    assert backend.to_numpy(g).shape == shape
    torch = pytest.importorskip("torch")
    t = torch.zeros(shape, dtype=torch.float64)
    np.testing.assert_equal(torch.nn.functional.kl_div(t, t, reduction="batchmean").item(), expected)


def test_kl_div_zero_target(fl):
    lp = np.log(np.array([[0.5, 0.25, 0.25]]))
    t = np.array([[1.0, 0.0, 0.0]])
    v, g = fl.kl_div.value_and_grad(lp, t, reduction="sum")
    assert_close(v, -np.log(0.5), np.float64)
    assert_close(g, [[-1.0, 0.0, 0.0]], np.float64)


def test_kl_div_log_target_equals_prob_target(fl, rng):
    lp = np.log(rng.dirichlet(np.ones(5), size=4))
    q = rng.dirichlet(np.ones(5), size=4)
    a = fl.kl_div.value_and_grad(lp, q, reduction="batchmean")
    b = fl.kl_div.value_and_grad(lp, np.log(q), reduction="batchmean", log_target=True)
    assert_close(b[0], a[0], np.float64)
    assert_close(b[1], a[1], np.float64)


# --------------------------------------------------------------------------------------------
# multi_margin specifics
# --------------------------------------------------------------------------------------------


def test_multi_margin_by_hand(fl):
    x = np.array([[0.1, 0.2, 0.4, 0.8]])
    y = np.array([3])
    # torch docs example: (1-0.8+0.1 + 1-0.8+0.2 + 1-0.8+0.4) / 4 = 0.325
    assert_close(fl.multi_margin(x, y), 0.325, np.float64)
    g = fl.multi_margin.grad(x, y)
    assert_close(g, [[0.25, 0.25, 0.25, -0.75]], np.float64)
    assert_close(fl.multi_margin(x, y, p=2),
                 (0.3 ** 2 + 0.4 ** 2 + 0.6 ** 2) / 4, np.float64)


@pytest.mark.parametrize("name", ROWS)
def test_sum_equals_sum_of_none(fl, name, rng):
    pred, target, kw = row_data(name, (6, 5), np.float64, rng, {})
    loss = getattr(fl, name)
    n = loss(pred, target, reduction="none", **kw)
    assert n.shape == ((6, 5) if name == "kl_div" else (6,))
    assert_close(loss(pred, target, reduction="sum", **kw), np.sum(n), np.float64)
    assert_close(loss.grad(pred, target, reduction="sum", **kw),
                 loss.grad(pred, target, reduction="none", **kw), np.float64)


# --------------------------------------------------------------------------------------------
# array backends
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,opts,reduction",
                         _params(row_cases(default_only=True)
                                 + [("cross_entropy", {"_probs": True}),
                                    ("cross_entropy", {"_ignore": True,
                                                       "class_weight": "array"})]))
def test_backend(fl, backend, name, opts, reduction, dtype, weighted, rng):
    shape = (4, 5)
    pred, target, kw = row_data(name, shape, dtype, rng, opts)
    sw = sample_weight(rng, (4,), dtype) if weighted else None
    ev, eg = ref.ROWS[name](pred, target, reduction=reduction, sample_weight=sw, **kw)
    kw = {k: (backend.to_backend(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    P, T, W = backend.to_backend(pred), backend.to_backend(target), backend.to_backend(sw)
    loss = getattr(fl, name)
    v, g, vg = call_all(loss, P, T, reduction=reduction, sample_weight=W, **kw)
    none_shape = shape if name == "kl_div" else (4,)
    check_value(v, ev, dtype, reduction, none_shape, backend=backend)
    check_grad(g, eg, dtype, shape, backend=backend)
    check_vg_matches(vg, ev, eg, dtype, reduction, none_shape, shape, backend=backend)


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,opts,reduction",
                         _params(row_cases(default_only=True)
                                 + [("cross_entropy", {"_probs": True}),
                                    ("cross_entropy", {"_ignore": True, "class_weight": "array",
                                                       "label_smoothing": 0.1})]))
def test_value_and_grad_is_exactly_call_and_grad(fl, name, opts, reduction, dtype, weighted,
                                                 rng):
    """Invariant: value_and_grad returns bit-for-bit (__call__, .grad)."""
    pred, target, kw = row_data(name, (257, 10), dtype, rng, opts)
    sw = sample_weight(rng, (257,), dtype) if weighted else None
    v, g, vg = call_all(getattr(fl, name), pred, target, reduction=reduction, sample_weight=sw,
                        **kw)
    check_vg_consistent(v, g, vg)


# --------------------------------------------------------------------------------------------
# large inputs (many rows: the chunked / parallel path)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unw", "w"])
@pytest.mark.parametrize("name,opts", [("cross_entropy", {}),
                                       ("cross_entropy", {"_ignore": True,
                                                          "class_weight": "array",
                                                          "label_smoothing": 0.1}),
                                       ("cross_entropy", {"_probs": True}),
                                       ("multi_margin", {"p": 2}), ("kl_div", {})],
                         ids=["ce", "ce-ign-cw-ls", "ce-probs", "mm", "kl"])
def test_large_input(fl, name, opts, weighted, rng):
    shape = (40001, 7)
    pred, target, kw = row_data(name, shape, np.float64, rng, opts)
    sw = sample_weight(rng, (40001,)) if weighted else None
    loss = getattr(fl, name)
    for red in ["mean", "sum"] + (["batchmean"] if name == "kl_div" else ["none"]):
        ev, eg = ref.ROWS[name](pred, target, reduction=red, sample_weight=sw, **kw)
        v, g = loss.value_and_grad(pred, target, reduction=red, sample_weight=sw, **kw)
        check_value(v, ev, np.float64, red, shape if name == "kl_div" else (40001,), factor=10,
                    msg=red)
        check_grad(g, eg, np.float64, shape, msg=red)


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "probs"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_many_classes(fl, dtype, labels, rng):
    """Rows long enough that the CPU kernels prefetch the next row during the exps (5000
    classes: 20 KB or more per row, see _prefetch_stop), in parallel chunks of 6 rows, with a
    partial last block and group in each row."""
    pred = (rng.standard_normal((64, 5000)) * 3).astype(dtype)
    if labels:
        target = rng.integers(0, 5000, 64)
    else:
        target = rng.random((64, 5000)).astype(dtype)
        target /= target.sum(axis=1, keepdims=True)
    ev, eg = ref.cross_entropy(pred, target)
    v, g = fl.cross_entropy.value_and_grad(pred, target)
    assert_close(v, ev, dtype)
    assert_close(g, eg, dtype)
    assert_close(fl.cross_entropy(pred, target, reduction="none"), ref.cross_entropy(pred, target, reduction="none")[0], dtype)


def test_labels_as_python_objects(fl, rng):
    pred = rng.standard_normal((3, 4))
    ev = ref.cross_entropy(pred, np.array([1, 0, 3]))[0]
    assert_close(fl.cross_entropy(pred, [1, 0, 3]), ev, np.float64)
    x = rng.standard_normal(4)
    assert_close(fl.cross_entropy(x, 2), ref.cross_entropy(x, np.int64(2))[0], np.float64)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_ignored_row_weight_never_reaches_the_mean(fl, backend, bad):
    """An ignored row has weight 0 whatever its sample_weight: a NaN or inf weight there made the
    CPU's "mean" NaN (its denominator multiplied the weight by 0), and the kept rows' gradient
    with it, while "sum" and "none" were right. Reference: the kept rows alone."""
    x = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, -1.0, 0.0]])
    y = np.array([0, -100, 2])
    w = np.array([1.0, bad, 3.0])
    v, g = fl.cross_entropy.value_and_grad(*map(backend.to_backend, (x, y)), sample_weight=backend.to_backend(w))
    ev, eg = fl.cross_entropy.value_and_grad(x[[0, 2]], y[[0, 2]], sample_weight=w[[0, 2]])
    assert_close(backend.to_numpy(v), ev, np.float64)
    g = backend.to_numpy(g)
    assert_close(g[[0, 2]], eg, np.float64)
    assert np.all(g[1] == 0)


def test_infinite_weights_are_infinite_only_where_they_count(fl, backend):
    """An infinite weight makes infinite only the terms it multiplies. Without label smoothing a
    class weight enters only through the rows labelled with it (the CPU's gradient was NaN in
    every row: 0 · Σ w_c), an infinite sample weight gives ±inf where the gradient is non-zero
    (NaN on the GPU: 0 · inf in the smoothing term), and a probability target of exactly 0
    makes its class add nothing, as the docstring says (NaN on both). Float64 formulas."""
    dev = backend.to_backend
    x = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    e = np.exp(x - x.max(1, keepdims=True))
    sm = e / e.sum(1, keepdims=True)
    lse = np.log(np.exp(x).sum(1))
    y = np.array([0, 1])
    onehot = np.eye(3)[y]
    cw = np.array([2.0, 0.5, np.inf])  # no row is labelled 2
    v, g = fl.cross_entropy.value_and_grad(dev(x), dev(y), class_weight=dev(cw), reduction="none")
    assert_close(backend.to_numpy(v), cw[y] * (lse - x[[0, 1], y]), np.float64)
    assert_close(backend.to_numpy(g), cw[y][:, None] * (sm - onehot), np.float64)

    g = backend.to_numpy(fl.cross_entropy.grad(dev(x[:1]), dev(np.array([2])), sample_weight=dev(np.array([np.inf])),
                                               reduction="sum"))
    assert np.array_equal(g, [[np.inf, np.inf, -np.inf]])

    probs = np.array([[0.2, 0.8, 0.0], [0.5, 0.5, 0.0]])
    wt = np.zeros_like(probs)
    nz = probs != 0
    wt[nz] = np.broadcast_to(cw, probs.shape)[nz] * probs[nz]
    v, g = fl.cross_entropy.value_and_grad(dev(x), dev(probs), class_weight=dev(cw), reduction="none")
    assert_close(backend.to_numpy(v), (wt * (lse[:, None] - x)).sum(1), np.float64)
    assert_close(backend.to_numpy(g), wt.sum(1, keepdims=True) * sm - wt, np.float64)


def test_multi_margin_decides_violations_in_float64(fl, backend):
    """Whether a class violates the margin is decided in float64 on every backend, as a float64
    reference decides it: margin − x_y + x_c can round to 0 in float32 (the GPU computed it in
    float32, and its gradient then missed a whole 1/C), and so can a tiny margin."""
    dev = backend.to_backend
    x = np.array([[1.1119224e-07, -0.99999988]], np.float32)
    y = np.array([0])
    z = 1.0 - np.float64(x[0, 0]) + np.float64(x[0, 1])
    assert z > 0 and np.float32(1.0) - x[0, 0] + x[0, 1] == 0  # the case: positive only in float64
    v, g = fl.multi_margin.value_and_grad(dev(x), dev(y))
    assert_close(backend.to_numpy(v), z / 2, np.float32)
    assert np.array_equal(backend.to_numpy(g), np.array([[-0.5, 0.5]], np.float32))
    g = fl.multi_margin.grad(dev(np.zeros((1, 2), np.float32)), dev(y), margin=1e-46)
    assert np.array_equal(backend.to_numpy(g), np.array([[-0.5, 0.5]], np.float32))
