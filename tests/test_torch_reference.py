"""fastloss against torch.nn.functional (values, and gradients through autograd), float64.

This is a second, independent oracle: nothing here uses reference.py except for input
generation. Losses without a torch.nn.functional counterpart (log_cosh, hinge, squared_hinge,
sigmoid_focal, quantile) are written as torch expressions (torchvision's focal loss formula).
The last section checks reference.py itself against torch (the oracle of the other modules).
"""
import numpy as np
import pytest

import reference as ref
from _cases import elementwise_data, row_data, sample_weight
from conftest import assert_close

REDUCTIONS = ["mean", "sum", "none"]
F64 = np.float64


@pytest.fixture(scope="module")
def F(torch):
    return torch.nn.functional


def _t(torch, x, grad=False):
    t = torch.tensor(np.asarray(x, dtype=np.float64))
    if grad:
        t.requires_grad_(True)
    return t


def _torch_value_grad(torch, fn, pred, reduction):
    """Value of fn(pred_tensor) and d(value)/d(pred) (d(sum of values) for "none")."""
    P = _t(torch, pred, grad=True)
    out = fn(P)
    (out.sum() if reduction == "none" else out).backward()
    return out.detach().numpy(), P.grad.numpy()


def _reduce_torch(l, reduction):
    return l.mean() if reduction == "mean" else l.sum() if reduction == "sum" else l


def _check(fl_loss, torch_fn, torch, pred, target, reduction, kw):
    ev, eg = _torch_value_grad(torch, torch_fn, pred, reduction)
    v, g = fl_loss.value_and_grad(pred, target, reduction=reduction, **kw)
    assert_close(v, ev, F64, factor=10, err_msg=f"value {kw} {reduction}")
    assert_close(g, eg, F64, factor=10, err_msg=f"grad {kw} {reduction}")


# --------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_mae(fl, torch, F, reduction, rng):
    p, t, _ = elementwise_data("mae", (4, 6), F64, rng)
    T = _t(torch, t)
    _check(fl.mse, lambda P: F.mse_loss(P, T, reduction=reduction), torch, p, t, reduction, {})
    _check(fl.mae, lambda P: F.l1_loss(P, T, reduction=reduction), torch, p, t, reduction, {})


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huber(fl, torch, F, reduction, delta, rng):
    p, t, _ = elementwise_data("huber", (4, 6), F64, rng, {"delta": delta})
    T = _t(torch, t)
    _check(fl.huber, lambda P: F.huber_loss(P, T, reduction=reduction, delta=delta),
           torch, p, t, reduction, {"delta": delta})


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0, 3.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1(fl, torch, F, reduction, beta, rng):
    p, t, _ = elementwise_data("smooth_l1", (4, 6), F64, rng, {"beta": beta})
    T = _t(torch, t)
    _check(fl.smooth_l1, lambda P: F.smooth_l1_loss(P, T, reduction=reduction, beta=beta),
           torch, p, t, reduction, {"beta": beta})


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_log_cosh(fl, torch, F, reduction, rng):
    p, t, _ = elementwise_data("log_cosh", (4, 6), F64, rng)
    T = _t(torch, t)
    _check(fl.log_cosh, lambda P: _reduce_torch(torch.log(torch.cosh(P - T)), reduction),
           torch, p, t, reduction, {})


@pytest.mark.parametrize("q", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_quantile(fl, torch, F, reduction, q, rng):
    p, t, _ = elementwise_data("quantile", (4, 6), F64, rng)
    T = _t(torch, t)

    def fn(P):
        r = T - P
        return _reduce_torch(torch.maximum(q * r, (q - 1) * r), reduction)

    _check(fl.quantile, fn, torch, p, t, reduction, {"q": q})


@pytest.mark.parametrize("log_input,full,eps", [(True, False, 1e-8), (True, True, 1e-8),
                                                (False, False, 1e-8), (False, True, 1e-8),
                                                (False, False, 0.5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poisson_nll(fl, torch, F, reduction, log_input, full, eps, rng):
    p, t, _ = elementwise_data("poisson_nll", (4, 6), F64, rng, {"log_input": log_input})
    T = _t(torch, t)
    kw = {"log_input": log_input, "full": full, "eps": eps}
    _check(fl.poisson_nll, lambda P: F.poisson_nll_loss(P, T, reduction=reduction, **kw),
           torch, p, t, reduction, kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce(fl, torch, F, reduction, rng):
    p, t, _ = elementwise_data("bce", (4, 6), F64, rng)
    T = _t(torch, t)
    _check(fl.bce, lambda P: F.binary_cross_entropy(P, T, reduction=reduction),
           torch, p, t, reduction, {})


def test_bce_clamped_logs(fl, torch, F):
    p = np.array([0.0, 1.0, 1e-60, 1.0 - 1e-16])
    t = np.array([1.0, 0.0, 1.0, 0.25])
    T = _t(torch, t)
    ev = F.binary_cross_entropy(_t(torch, p), T, reduction="none").numpy()
    assert_close(fl.bce(p, t, reduction="none"), ev, F64)


@pytest.mark.parametrize("pos_weight", [None, 3.0, "row", "full"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits(fl, torch, F, reduction, pos_weight, rng):
    p, t, _ = elementwise_data("bce_with_logits", (4, 6), F64, rng)
    p[0, :3] = [40.0, -40.0, 800.0]
    T = _t(torch, t)
    pw = {None: None, 3.0: 3.0, "row": rng.uniform(0.5, 3, 6),
          "full": rng.uniform(0.5, 3, (4, 6))}[pos_weight]
    tpw = None if pw is None else torch.as_tensor(np.broadcast_to(pw, (6,)) if np.ndim(pw) == 0
                                                  else pw, dtype=torch.float64)
    _check(fl.bce_with_logits,
           lambda P: F.binary_cross_entropy_with_logits(P, T, reduction=reduction, pos_weight=tpw),
           torch, p, t, reduction, {"pos_weight": pw})


@pytest.mark.parametrize("margin", [1.0, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_squared_hinge(fl, torch, F, reduction, margin, rng):
    p, t, _ = elementwise_data("hinge", (4, 6), F64, rng, {"margin": margin})
    T = _t(torch, t)
    _check(fl.hinge, lambda P: _reduce_torch(torch.clamp(margin - T * P, min=0), reduction),
           torch, p, t, reduction, {"margin": margin})
    _check(fl.squared_hinge,
           lambda P: _reduce_torch(torch.clamp(margin - T * P, min=0) ** 2, reduction),
           torch, p, t, reduction, {"margin": margin})


def _torchvision_focal(torch, F, inputs, targets, alpha, gamma, reduction):
    # torchvision.ops.sigmoid_focal_loss, verbatim apart from the reduction
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce_torch(loss, reduction)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.25, 0.0), (0.7, 1.0),
                                         (0.5, 0.5), (0.1, 3.5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal(fl, torch, F, reduction, alpha, gamma, rng):
    p, t, _ = elementwise_data("sigmoid_focal", (4, 6), F64, rng)
    T = _t(torch, t)
    _check(fl.sigmoid_focal,
           lambda P: _torchvision_focal(torch, F, P, T, alpha, gamma, reduction),
           torch, p, t, reduction, {"alpha": alpha, "gamma": gamma})


# --------------------------------------------------------------------------------------------
# rows (torch's class axis is 1: fastloss gets axis=1 for >= 2-D input)
# --------------------------------------------------------------------------------------------


CE_OPTS = [dict(), dict(class_weight=True), dict(label_smoothing=0.1),
           dict(class_weight=True, label_smoothing=0.25), dict(ignore_index=2),
           dict(ignore_index=-100, class_weight=True, label_smoothing=0.1),
           dict(ignore_index=0, class_weight=True), dict(label_smoothing=1.0)]


def _ce_id(o):
    return ",".join(f"{k}={v}" for k, v in o.items()) or "default"


@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4), (5,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("opts", CE_OPTS, ids=[_ce_id(o) for o in CE_OPTS])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_labels(fl, torch, F, reduction, opts, shape, rng):
    opts = dict(opts)
    C = 5
    axis = 1 if len(shape) > 1 else 0
    lead = shape[:axis] + shape[axis + 1:]
    p = 2 * rng.standard_normal(shape)
    y = rng.integers(0, C, size=lead)
    ii = opts.get("ignore_index", -100)
    if y.ndim:
        y.flat[0] = ii  # at least one ignored row
        y.flat[-1] = 1 if ii != 1 else 3
    y = np.asarray(y, dtype=np.int64)
    if opts.pop("class_weight", False):
        opts["class_weight"] = rng.uniform(0.2, 2.0, C)
    tw = None if "class_weight" not in opts else torch.tensor(opts["class_weight"])

    def fn(P):
        return F.cross_entropy(P, torch.tensor(y), weight=tw, reduction=reduction,
                               ignore_index=ii, label_smoothing=opts.get("label_smoothing", 0.0))

    _check(fl.cross_entropy, fn, torch, p, y, reduction, dict(opts, axis=axis))


@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("opts", [dict(), dict(class_weight=True), dict(label_smoothing=0.2),
                                  dict(class_weight=True, label_smoothing=0.3)],
                         ids=["default", "cw", "ls", "cw-ls"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probs(fl, torch, F, reduction, opts, shape, rng):
    opts = dict(opts)
    C = 5
    p = 2 * rng.standard_normal(shape)
    q = np.moveaxis(rng.dirichlet(np.ones(C), size=shape[:1] + shape[2:]), -1, 1)
    if opts.pop("class_weight", False):
        opts["class_weight"] = rng.uniform(0.2, 2.0, C)
    tw = None if "class_weight" not in opts else torch.tensor(opts["class_weight"])

    def fn(P):
        return F.cross_entropy(P, torch.tensor(q), weight=tw, reduction=reduction,
                               label_smoothing=opts.get("label_smoothing", 0.0))

    _check(fl.cross_entropy, fn, torch, p, q, reduction, dict(opts, axis=1))


def test_cross_entropy_last_axis_default(fl, torch, F, rng):
    """Class axis last by default: (N, d, C) in fastloss == (N, C, d) in torch."""
    p = rng.standard_normal((3, 4, 6))
    y = rng.integers(0, 6, size=(3, 4))
    ev, eg = _torch_value_grad(
        torch, lambda P: F.cross_entropy(P.transpose(1, 2), torch.tensor(y)), p, "mean")
    v, g = fl.cross_entropy.value_and_grad(p, y)
    assert_close(v, ev, F64)
    assert_close(g, eg, F64)


@pytest.mark.parametrize("p_,margin,cw", [(1, 1.0, False), (2, 1.0, False), (1, 0.3, True),
                                          (2, 2.0, True)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin(fl, torch, F, reduction, p_, margin, cw, rng):
    p, y, _ = row_data("multi_margin", (8, 5), F64, rng, {"margin": margin})
    w = rng.uniform(0.2, 2.0, 5) if cw else None
    tw = None if w is None else torch.tensor(w)
    _check(fl.multi_margin,
           lambda P: F.multi_margin_loss(P, torch.tensor(y), p=p_, margin=margin, weight=tw,
                                         reduction=reduction),
           torch, p, y, reduction, dict(p=p_, margin=margin, class_weight=w))


@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_kl_div(fl, torch, F, reduction, log_target, shape, rng):
    p, t, _ = row_data("kl_div", shape, F64, rng, {"log_target": log_target}, axis=1)
    T = _t(torch, t)
    _check(fl.kl_div, lambda P: F.kl_div(P, T, reduction=reduction, log_target=log_target),
           torch, p, t, reduction, dict(log_target=log_target, axis=1))


# --------------------------------------------------------------------------------------------
# sample weights, checked against torch "none" values weighted by hand
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_elementwise_vs_torch(fl, torch, F, reduction, rng):
    p, t, _ = elementwise_data("huber", (5, 3), F64, rng)
    w = sample_weight(rng, (5, 3))
    T, W = _t(torch, t), _t(torch, w)

    def fn(P):
        l = W * F.huber_loss(P, T, reduction="none", delta=0.8)
        return l.sum() / W.sum() if reduction == "mean" else _reduce_torch(l, reduction)

    _check(fl.huber, fn, torch, p, t, reduction, dict(delta=0.8, sample_weight=w))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_ce_vs_torch(fl, torch, F, reduction, rng):
    p = rng.standard_normal((6, 4))
    y = np.array([0, 3, -100, 2, 3, 1])
    cw = rng.uniform(0.2, 2.0, 4)
    sw = sample_weight(rng, (6,))
    Y, CW, SW = torch.tensor(y), torch.tensor(cw), _t(torch, sw)

    def fn(P):
        l = SW * F.cross_entropy(P, Y, weight=CW, reduction="none")
        if reduction == "mean":
            valid = Y != -100
            return l.sum() / (SW * CW[Y.clamp(min=0)] * valid).sum()
        return _reduce_torch(l, reduction)

    _check(fl.cross_entropy, fn, torch, p, y, reduction, dict(class_weight=cw, sample_weight=sw))


# --------------------------------------------------------------------------------------------
# reference.py itself against torch (guards the oracle used by the other modules)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_is_torch(torch, F, reduction, rng):
    def both(ref_out, fn, pred):
        ev, eg = _torch_value_grad(torch, fn, pred, reduction)
        assert_close(ref_out[0], ev, F64, factor=10)
        assert_close(ref_out[1], eg, F64, factor=10)

    p, t, _ = elementwise_data("huber", (4, 5), F64, rng, {"delta": 0.7})
    T = _t(torch, t)
    both(ref.huber(p, t, delta=0.7, reduction=reduction),
         lambda P: F.huber_loss(P, T, delta=0.7, reduction=reduction), p)
    both(ref.smooth_l1(p, t, beta=0.7, reduction=reduction),
         lambda P: F.smooth_l1_loss(P, T, beta=0.7, reduction=reduction), p)
    p, t, _ = elementwise_data("poisson_nll", (4, 5), F64, rng, {"log_input": False})
    T = _t(torch, t)
    both(ref.poisson_nll(p, t, log_input=False, full=True, reduction=reduction),
         lambda P: F.poisson_nll_loss(P, T, log_input=False, full=True, reduction=reduction), p)
    p, t, _ = elementwise_data("sigmoid_focal", (4, 5), F64, rng)
    T = _t(torch, t)
    both(ref.sigmoid_focal(p, t, alpha=0.3, gamma=1.5, reduction=reduction),
         lambda P: _torchvision_focal(torch, F, P, T, 0.3, 1.5, reduction), p)
    pw = rng.uniform(0.5, 2, 5)
    both(ref.bce_with_logits(p, t, pos_weight=pw, reduction=reduction),
         lambda P: F.binary_cross_entropy_with_logits(P, T, pos_weight=torch.tensor(pw),
                                                      reduction=reduction), p)
    x = rng.standard_normal((6, 5))
    y = np.array([0, 4, -100, 2, 2, 1])
    cw = rng.uniform(0.2, 2, 5)
    both(ref.cross_entropy(x, y, class_weight=cw, label_smoothing=0.2, reduction=reduction),
         lambda P: F.cross_entropy(P, torch.tensor(y), weight=torch.tensor(cw),
                                   label_smoothing=0.2, reduction=reduction), x)
    q = rng.dirichlet(np.ones(5), size=6)
    both(ref.cross_entropy(x, q, class_weight=cw, label_smoothing=0.2, reduction=reduction),
         lambda P: F.cross_entropy(P, torch.tensor(q), weight=torch.tensor(cw),
                                   label_smoothing=0.2, reduction=reduction), x)
    y = np.array([0, 4, 3, 2, 2, 1])
    both(ref.multi_margin(x, y, p=2, margin=0.7, class_weight=cw, reduction=reduction),
         lambda P: F.multi_margin_loss(P, torch.tensor(y), p=2, margin=0.7,
                                       weight=torch.tensor(cw), reduction=reduction), x)
    lp = np.log(rng.dirichlet(np.ones(5), size=6))
    both(ref.kl_div(lp, q, reduction=reduction),
         lambda P: F.kl_div(P, torch.tensor(q), reduction=reduction), lp)
