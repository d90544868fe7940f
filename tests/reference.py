"""Float64 NumPy reference implementations of every fastloss loss.

Written from the mathematical definitions (and PyTorch's / torchvision's documented formulas),
never from fastloss. Each loss has one function returning ``(value, grad)`` where ``value`` is
the reduced value (a Python float, NaN for an empty/zero-weight mean) or the per-element /
per-row array for ``reduction="none"``, and ``grad`` is d value / d pred (for "none": the
derivative of the sum of the weighted per-element values), with pred's shape.

All inputs are converted to float64 first, so the references are only as exact as float64.
"""
import math

import numpy as np

REDUCTIONS = ("mean", "sum", "none")

# --------------------------------------------------------------------------------------------
# reduction and weighting rules (shared)
# --------------------------------------------------------------------------------------------


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _weights(l, sample_weight):
    if sample_weight is None:
        return np.ones_like(l)
    w = _f64(sample_weight)
    assert w.shape == l.shape, (w.shape, l.shape)
    return w


def _reduce_elementwise(l, dl, reduction, sample_weight=None):
    """Elementwise losses: l and dl have pred's shape."""
    l = _f64(l)
    dl = _f64(dl)
    w = _weights(l, sample_weight)
    if reduction == "none":
        return w * l, w * dl
    if reduction == "sum":
        return float(np.sum(w * l)), w * dl
    if reduction == "mean":
        W = float(np.sum(w))
        if W == 0.0:  # empty input or all weights zero
            return float("nan"), np.zeros_like(dl)
        return float(np.sum(w * l)) / W, w * dl / W
    raise ValueError(reduction)


def _row_weighted(l, dl, reduction, w, denom_w):
    """Row losses after moving the class axis last: l has the leading shape, dl pred's shape
    (class axis last). ``w`` multiplies each row, ``denom_w`` is what "mean" divides by."""
    wl = w * l
    wdl = w[..., None] * dl
    if reduction == "none":
        return wl, wdl
    if reduction == "sum":
        return float(np.sum(wl)), wdl
    if reduction == "mean":
        W = float(np.sum(denom_w))
        if W == 0.0:
            return float("nan"), np.zeros_like(dl)
        return float(np.sum(wl)) / W, wdl / W
    raise ValueError(reduction)


# --------------------------------------------------------------------------------------------
# elementwise losses: per-element value and derivative (float64 arrays)
# --------------------------------------------------------------------------------------------


def _sign(x):
    return np.sign(x)  # 0 at 0


def mse(pred, target, reduction="mean", sample_weight=None):
    d = _f64(pred) - _f64(target)
    return _reduce_elementwise(d * d, 2.0 * d, reduction, sample_weight)


def mae(pred, target, reduction="mean", sample_weight=None):
    d = _f64(pred) - _f64(target)
    return _reduce_elementwise(np.abs(d), _sign(d), reduction, sample_weight)


def huber(pred, target, delta=1.0, reduction="mean", sample_weight=None):
    d = _f64(pred) - _f64(target)
    a = np.abs(d)
    small = a <= delta
    l = np.where(small, 0.5 * d * d, delta * (a - 0.5 * delta))
    g = np.where(small, d, delta * _sign(d))
    return _reduce_elementwise(l, g, reduction, sample_weight)


def smooth_l1(pred, target, beta=1.0, reduction="mean", sample_weight=None):
    d = _f64(pred) - _f64(target)
    a = np.abs(d)
    if beta == 0.0:
        return _reduce_elementwise(a, _sign(d), reduction, sample_weight)
    small = a < beta
    l = np.where(small, 0.5 * d * d / beta, a - 0.5 * beta)
    g = np.where(small, d / beta, _sign(d))
    return _reduce_elementwise(l, g, reduction, sample_weight)


def log_cosh(pred, target, reduction="mean", sample_weight=None):
    d = _f64(pred) - _f64(target)
    a = np.abs(d)
    # log cosh d = |d| + log(1 + exp(-2|d|)) - log 2 is overflow free but cancels for small |d|
    # (relative error ~1e-16 / d^2); log1p(2 sinh^2(d/2)) (cosh d - 1 = 2 sinh^2(d/2)) does not,
    # and serves until sinh^2 could overflow. Beyond |d| = 20 the first form loses nothing.
    with np.errstate(over="ignore"):
        small = np.log1p(2.0 * np.sinh(0.5 * a) ** 2)
    l = np.where(a < 20.0, small, a + np.log1p(np.exp(-2.0 * a)) - math.log(2.0))
    return _reduce_elementwise(l, np.tanh(d), reduction, sample_weight)


def quantile(pred, target, q=0.5, reduction="mean", sample_weight=None):
    r = _f64(target) - _f64(pred)
    l = np.maximum(q * r, (q - 1.0) * r)
    # d/dpred: -q where r > 0, (1 - q) where r < 0 (ties are not tested)
    g = np.where(r > 0, -q, 1.0 - q)
    return _reduce_elementwise(l, g, reduction, sample_weight)


def poisson_nll(pred, target, log_input=True, full=False, eps=1e-8, reduction="mean",
                sample_weight=None):
    p = _f64(pred)
    t = _f64(target)
    if log_input:
        l = np.exp(p) - t * p
        g = np.exp(p) - t
    else:
        l = p - t * np.log(p + eps)
        g = 1.0 - t / (p + eps)
    if full:
        with np.errstate(divide="ignore", invalid="ignore"):
            st = t * np.log(t) - t + 0.5 * np.log(2.0 * math.pi * t)
        l = l + np.where(t > 1.0, st, 0.0)
    return _reduce_elementwise(l, g, reduction, sample_weight)


def bce(pred, target, reduction="mean", sample_weight=None):
    p = _f64(pred)
    t = _f64(target)
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(p), -100.0)
        l1p = np.maximum(np.log1p(-p), -100.0)
    l = -(t * lp + (1.0 - t) * l1p)
    g = (p - t) / np.maximum(p * (1.0 - p), 1e-12)
    return _reduce_elementwise(l, g, reduction, sample_weight)


def _softplus(x):
    # log(1 + exp(x)), stable
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x):
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits(pred, target, pos_weight=None, reduction="mean", sample_weight=None):
    x = _f64(pred)
    t = _f64(target)
    pw = 1.0 if pos_weight is None else np.broadcast_to(_f64(pos_weight), x.shape)
    # l = -[pw t log s(x) + (1 - t) log(1 - s(x))] = pw t softplus(-x) + (1 - t) softplus(x)
    l = pw * t * _softplus(-x) + (1.0 - t) * _softplus(x)
    g = -pw * t * _sigmoid(-x) + (1.0 - t) * _sigmoid(x)  # 1 - s(x) as s(-x): no cancellation
    return _reduce_elementwise(l, g, reduction, sample_weight)


def hinge_targets(target):
    """±1 targets, or 0/1 mapped to ±1 (the caller guarantees validity)."""
    t = _f64(target)
    if t.size and np.all((t == 0) | (t == 1)) and np.any(t == 0):
        return 2.0 * t - 1.0
    return t


def hinge(pred, target, margin=1.0, reduction="mean", sample_weight=None):
    p = _f64(pred)
    t = hinge_targets(target)
    h = margin - t * p
    l = np.maximum(0.0, h)
    g = np.where(h > 0, -t, 0.0)
    return _reduce_elementwise(l, g, reduction, sample_weight)


def squared_hinge(pred, target, margin=1.0, reduction="mean", sample_weight=None):
    p = _f64(pred)
    t = hinge_targets(target)
    h = np.maximum(0.0, margin - t * p)
    return _reduce_elementwise(h * h, -2.0 * t * h, reduction, sample_weight)


def sigmoid_focal(pred, target, alpha=0.25, gamma=2.0, reduction="mean", sample_weight=None):
    """torchvision.ops.sigmoid_focal_loss:
        p = sigmoid(x); ce = BCEWithLogits(x, t); p_t = p t + (1-p)(1-t)
        loss = ce (1 - p_t)^gamma;  if alpha >= 0: loss *= alpha t + (1-alpha)(1-t)
    The derivative is written out by hand."""
    x = _f64(pred)
    t = _f64(target)
    p = _sigmoid(x)
    q = _sigmoid(-x)  # 1 - p, accurate when p is close to 1
    ce = (1.0 - t) * _softplus(x) + t * _softplus(-x)  # = softplus(x) - t x, no cancellation
    m = p * (1.0 - t) + t * q  # 1 - p_t, without cancellation
    dm = -p * q * (2.0 * t - 1.0)  # d m / dx
    mg = m ** gamma
    if gamma == 0.0:
        dmg = np.zeros_like(m)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            dmg = np.where(m > 0, gamma * m ** (gamma - 1.0) * dm, 0.0)
    l = ce * mg
    g = (p * (1.0 - t) - t * q) * mg + ce * dmg  # p - t, accurate near p = 1
    if alpha >= 0:
        at = alpha * t + (1.0 - alpha) * (1.0 - t)
        l = at * l
        g = at * g
    return _reduce_elementwise(l, g, reduction, sample_weight)


# --------------------------------------------------------------------------------------------
# row losses (class axis ``axis``; moved last internally)
# --------------------------------------------------------------------------------------------


def _log_softmax(x):
    """Row-wise log-softmax along the last axis; -inf logits give -inf, no overflow."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return z - lse


def _row_shapes(pred, axis):
    x = np.moveaxis(_f64(pred), axis, -1)
    return x


def cross_entropy(pred, target, class_weight=None, ignore_index=-100, label_smoothing=0.0,
                  axis=-1, reduction="mean", sample_weight=None):
    """torch.nn.functional.cross_entropy (log-softmax + nll), with the fastloss weighting rule.

    Writing the loss of a row as  -sum_c a_c log p_c  (p = softmax), the coefficients are
      labels:         a_c = (1-eps) cw_y [c == y] + eps/C cw_c     (0 for ignored rows)
      probabilities:  a_c = cw_c ((1-eps) t_c + eps/C)
    and the gradient is  (sum_c a_c) p - a.
    "mean" divides by sum(sample_weight * cw[y]) over non-ignored rows for labels, by
    sum(sample_weight) over rows for probabilities.
    """
    x = _row_shapes(pred, axis)
    C = x.shape[-1]
    lead = x.shape[:-1]
    cw = np.ones(C) if class_weight is None else _f64(class_weight)
    eps = float(label_smoothing)
    sw = np.ones(lead) if sample_weight is None else _f64(sample_weight)
    assert sw.shape == lead
    t = np.asarray(target)
    if t.dtype.kind in "iu":
        assert t.shape == lead
        y = t.astype(np.int64)
        valid = y != ignore_index
        yc = np.where(valid, y, 0)
        onehot = (np.arange(C) == yc[..., None]).astype(np.float64)
        cwy = cw[yc]
        a = (1.0 - eps) * cwy[..., None] * onehot + (eps / C) * cw
        a = np.where(valid[..., None], a, 0.0)
        denom = sw * np.where(valid, cwy, 0.0)
    else:
        tp = _f64(np.moveaxis(t, axis, -1))
        assert tp.shape == x.shape
        a = cw * ((1.0 - eps) * tp + eps / C)
        denom = sw
    lsm = _log_softmax(x)
    with np.errstate(invalid="ignore"):
        terms = np.where(a != 0.0, -a * lsm, 0.0)  # 0 * -inf counts as 0
    l = np.sum(terms, axis=-1)
    p = np.exp(lsm)
    g = np.sum(a, axis=-1, keepdims=True) * p - a
    v, gr = _row_weighted(l, g, reduction, sw, denom)
    return v, np.moveaxis(gr, -1, axis)


def multi_margin(pred, target, p=1, margin=1.0, class_weight=None, axis=-1, reduction="mean",
                 sample_weight=None):
    """torch.nn.functional.multi_margin_loss:
        l = sum_{j != y} cw_y max(0, margin - x_y + x_j)^p / C
    "mean" = sum(w l) / sum(w) with w the sample weights (unweighted: mean over rows)."""
    x = _row_shapes(pred, axis)
    C = x.shape[-1]
    lead = x.shape[:-1]
    y = np.asarray(target).astype(np.int64)
    assert y.shape == lead
    cw = np.ones(C) if class_weight is None else _f64(class_weight)
    sw = np.ones(lead) if sample_weight is None else _f64(sample_weight)
    xy = np.take_along_axis(x, y[..., None], axis=-1)
    h = margin - xy + x
    onehot = np.arange(C) == y[..., None]
    h = np.where(onehot, 0.0, h)
    hp = np.maximum(h, 0.0)
    cwy = cw[y][..., None]
    if p == 1:
        terms = hp
        dterm = (h > 0).astype(np.float64)
    else:
        terms = hp * hp
        dterm = 2.0 * hp
    l = np.sum(cwy * terms, axis=-1) / C
    gj = cwy * dterm / C  # d l / d x_j for j != y
    g = np.where(onehot, -np.sum(gj, axis=-1, keepdims=True), gj)
    v, gr = _row_weighted(l, g, reduction, sw, sw)
    return v, np.moveaxis(gr, -1, axis)


def kl_div(pred, target, log_target=False, axis=-1, reduction="mean", sample_weight=None):
    """torch.nn.functional.kl_div with pred = log-probabilities:
        pointwise = t (log t - pred)  (0 where t == 0);  log_target: exp(t) (t - pred)
    Row loss L_r = sum over the class axis. "none" gives w_r * pointwise (pred's shape, as
    PyTorch, each row weight applied to the row's C elements), "sum" sum_r w_r L_r,
    "mean" sum_r w_r L_r / (C sum_r w_r), "batchmean" (sum_r w_r L_r / sum_r w_r) R / pred.shape[0]
    (unweighted: total / pred.shape[0]; without rows 0 / pred.shape[0])."""
    pred_shape = np.shape(pred)
    x = _row_shapes(pred, axis)
    t = np.moveaxis(_f64(target), axis, -1)
    C = x.shape[-1]
    lead = x.shape[:-1]
    R = int(np.prod(lead))
    if log_target:
        et = np.exp(t)
        pw = et * (t - x)
        g = -et
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            xlogx = np.where(t == 0.0, 0.0, t * np.log(t))
        pw = xlogx - t * x
        g = -t
    L = np.sum(pw, axis=-1)
    sw = np.ones(lead) if sample_weight is None else _f64(sample_weight)
    if reduction == "batchmean":
        n0 = pred_shape[0] if len(pred_shape) else 1
        if R == 0:  # no rows: PyTorch's sum / pred.shape[0]
            return (0.0 if n0 else float("nan")), np.zeros(pred_shape)
        W = float(np.sum(sw))
        if W == 0.0:
            return float("nan"), np.zeros(pred_shape)
        scale = R / n0 / W
        v = float(np.sum(sw * L)) * scale
        gr = sw[..., None] * g * scale
        return v, np.moveaxis(gr, -1, axis)
    if reduction == "none":
        return np.moveaxis(sw[..., None] * pw, -1, axis), np.moveaxis(sw[..., None] * g, -1, axis)
    v, gr = _row_weighted(L, g, reduction, sw, sw * C)
    return v, np.moveaxis(gr, -1, axis)


ELEMENTWISE = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
    "smooth_l1": smooth_l1,
    "log_cosh": log_cosh,
    "quantile": quantile,
    "poisson_nll": poisson_nll,
    "bce": bce,
    "bce_with_logits": bce_with_logits,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "sigmoid_focal": sigmoid_focal,
}

ROWS = {
    "cross_entropy": cross_entropy,
    "multi_margin": multi_margin,
    "kl_div": kl_div,
}

ALL = {**ELEMENTWISE, **ROWS}
