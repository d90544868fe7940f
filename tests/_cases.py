"""Test cases shared by the test modules: which options each loss takes, input generators that
keep data inside each loss's domain and away from kinks, and small call helpers.

Inputs are generated in float64, rounded to the dtype under test, and the *rounded* values are
what the float64 reference sees, so the comparison measures the implementation's arithmetic
error only.
"""
import numpy as np

import reference as ref

ELEMENTWISE = list(ref.ELEMENTWISE)
ROWS = list(ref.ROWS)

# (loss, options) cases for the elementwise losses. An option value that is callable is built
# from the pred shape (pos_weight arrays). "_targets01" is a data option, not a keyword.
ELEMENTWISE_OPTIONS = {
    "mse": [{}],
    "mae": [{}],
    "huber": [{}, {"delta": 0.5}, {"delta": 2.5}],
    "smooth_l1": [{}, {"beta": 0.5}, {"beta": 0.0}],
    "log_cosh": [{}],
    "quantile": [{}, {"q": 0.1}, {"q": 0.9}],
    "poisson_nll": [{}, {"log_input": False}, {"full": True},
                    {"log_input": False, "full": True, "eps": 1e-3}],
    "bce": [{}],
    "bce_with_logits": [{}, {"pos_weight": 2.5}, {"pos_weight": "array"}],
    "hinge": [{}, {"margin": 0.5}, {"_targets01": True}],
    "squared_hinge": [{}, {"margin": 2.0}, {"_targets01": True}],
    "sigmoid_focal": [{}, {"alpha": -1.0}, {"gamma": 0.0}, {"alpha": 0.6, "gamma": 1.5}],
}

ROW_OPTIONS = {
    "cross_entropy": [{}, {"class_weight": "array"}, {"label_smoothing": 0.15},
                      {"class_weight": "array", "label_smoothing": 0.3},
                      {"_ignore": True}, {"_ignore": True, "ignore_index": 1,
                                          "class_weight": "array", "label_smoothing": 0.1},
                      {"_probs": True}, {"_probs": True, "class_weight": "array",
                                         "label_smoothing": 0.2}],
    "multi_margin": [{}, {"p": 2}, {"margin": 0.5}, {"p": 2, "margin": 2.0,
                                                     "class_weight": "array"},
                     {"class_weight": "array"}],
    "kl_div": [{}, {"log_target": True}],
}


def case_id(opts):
    if not opts:
        return "default"
    return ",".join(f"{k.lstrip('_')}={v}" for k, v in opts.items())


def elementwise_cases(default_only=False):
    out = []
    for name, optlist in ELEMENTWISE_OPTIONS.items():
        for opts in optlist[:1] if default_only else optlist:
            out.append((name, opts))
    return out


def row_cases(default_only=False):
    out = []
    for name, optlist in ROW_OPTIONS.items():
        for opts in optlist[:1] if default_only else optlist:
            out.append((name, opts))
    return out


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _cast(x, dtype):
    return np.asarray(np.asarray(x, dtype=np.float64).astype(dtype))


def _push_from(pred, kink_dist, min_dist):
    """Move pred elements whose distance to a kink is below ``min_dist``."""
    close = np.abs(kink_dist) < min_dist
    return np.where(close, pred + 3 * min_dist * np.where(kink_dist >= 0, 1.0, -1.0), pred)


def elementwise_data(name, shape, dtype, rng, opts=None):
    """(pred, target, kwargs) in ``dtype`` (target float64 rounded to dtype, labels ±1...)."""
    opts = dict(opts or {})
    shape = tuple(shape)
    n = rng.standard_normal
    u = rng.uniform
    lo = 1e-2 if np.dtype(dtype) == np.float16 else 1e-3
    if name in ("mse", "log_cosh"):
        p, t = n(shape), n(shape)
    elif name in ("mae", "quantile"):
        t = n(shape)
        p = t + n(shape)
        p = _push_from(p, _cast(p, dtype) - _cast(t, dtype), lo)
    elif name == "huber":
        delta = opts.get("delta", 1.0)
        t = n(shape)
        p = t + 2.0 * delta * n(shape)
        d = _cast(p, dtype) - _cast(t, dtype)
        p = _push_from(p, np.abs(d) - delta, lo * delta)
    elif name == "smooth_l1":
        beta = opts.get("beta", 1.0)
        t = n(shape)
        p = t + 2.0 * max(beta, 0.5) * n(shape)
        d = _cast(p, dtype) - _cast(t, dtype)
        p = _push_from(p, np.abs(d) - beta if beta > 0 else d, lo)
        if beta == 0:
            p = _push_from(p, _cast(p, dtype) - _cast(t, dtype), lo)
    elif name == "poisson_nll":
        t = rng.poisson(2.0, size=shape).astype(np.float64)
        p = n(shape) if opts.get("log_input", True) else u(0.1, 4.0, size=shape)
    elif name == "bce":
        p = u(0.02, 0.98, size=shape)
        t = np.where(u(size=shape) < 0.5, u(size=shape), np.round(u(size=shape)))
    elif name == "bce_with_logits":
        p = 3.0 * n(shape)
        t = np.where(u(size=shape) < 0.5, u(size=shape), np.round(u(size=shape)))
        if isinstance(opts.get("pos_weight"), str):
            C = shape[-1] if len(shape) else 1
            opts["pos_weight"] = u(0.5, 3.0, size=(C,)) if len(shape) else 1.7
    elif name in ("hinge", "squared_hinge"):
        margin = opts.get("margin", 1.0)
        t = np.where(u(size=shape) < 0.5, -1.0, 1.0)
        if t.size:  # make sure both classes appear
            t.flat[0] = 1.0
            if t.size > 1:
                t.flat[1] = -1.0
        p = 1.5 * n(shape)
        p = _push_from(p, margin - t * _cast(p, dtype), lo)
        if opts.pop("_targets01", False):
            t = (t + 1.0) / 2.0
    elif name == "sigmoid_focal":
        p = 3.0 * n(shape)
        t = np.where(u(size=shape) < 0.5, u(size=shape), np.round(u(size=shape)))
    else:
        raise KeyError(name)
    opts.pop("_targets01", None)
    return _cast(p, dtype), _cast(t, dtype), opts


def row_data(name, shape, dtype, rng, opts=None, axis=-1):
    """(pred, target, kwargs) for row losses; ``shape`` is pred's shape, class axis ``axis``."""
    opts = dict(opts or {})
    shape = tuple(shape)
    C = shape[axis]
    lead = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    n = rng.standard_normal
    if isinstance(opts.get("class_weight"), str):
        opts["class_weight"] = rng.uniform(0.2, 2.0, size=C)
    if name == "cross_entropy":
        p = 2.0 * n(shape)
        if opts.pop("_probs", False):
            t = rng.dirichlet(np.ones(C), size=lead) if C else np.zeros(lead + (0,))
            t = np.moveaxis(np.where(rng.uniform(size=t.shape) < 0.2, 0.0, t), -1, axis)
            t = _cast(t, dtype)
        else:
            t = rng.integers(0, C, size=lead) if C else np.zeros(lead, dtype=np.int64)
            if opts.pop("_ignore", False) and t.size:
                ign = opts.get("ignore_index", -100)
                mask = rng.uniform(size=lead) < 0.3
                mask.flat[0] = True
                if t.size > 1:
                    mask.flat[-1] = False
                t = np.where(mask, ign, t)
            t = t.astype(np.int64)
        return _cast(p, dtype), t, opts
    if name == "multi_margin":
        t = rng.integers(0, C, size=lead).astype(np.int64)
        x = np.moveaxis(n(shape), axis, -1)
        margin = opts.get("margin", 1.0)
        xc = _cast(x, dtype).astype(np.float64)
        xy = np.take_along_axis(xc, t[..., None], axis=-1)
        x = _push_from(x, margin - xy + xc, 2e-2 if np.dtype(dtype) == np.float16 else 1e-3)
        return _cast(np.moveaxis(x, -1, axis), dtype), t, opts
    if name == "kl_div":
        x = n(np.moveaxis(np.empty(shape), axis, -1).shape)
        x = x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))
        q = rng.dirichlet(np.ones(C), size=lead) if C else np.zeros(lead + (0,))
        if opts.get("log_target", False):
            t = np.log(q)
        else:
            t = np.where(rng.uniform(size=q.shape) < 0.2, 0.0, q)
        return _cast(np.moveaxis(x, -1, axis), dtype), _cast(np.moveaxis(t, -1, axis), dtype), opts
    raise KeyError(name)


def sample_weight(rng, shape, dtype=np.float64):
    w = rng.uniform(0.0, 2.0, size=shape)
    if w.size > 2:
        w.flat[1] = 0.0  # a zero weight
    return _cast(w, dtype)


def lead_shape(shape, axis=-1):
    shape = tuple(shape)
    if not shape:
        return ()
    ax = axis % len(shape)
    return shape[:ax] + shape[ax + 1:]


def call_all(loss, pred, target, **kw):
    """(__call__, .grad, .value_and_grad) results of one loss."""
    v = loss(pred, target, **kw)
    g = loss.grad(pred, target, **kw)
    vg = loss.value_and_grad(pred, target, **kw)
    return v, g, vg
