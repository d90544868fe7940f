"""The comparison table behind ``fastloss bench`` and ``benchmarks/``: for every loss, how to make
its inputs, and how a user would compute the same thing with NumPy and with PyTorch.

One table drives both the command and the pytest-benchmark suite, so they measure the same code.
Baselines are written the way a user would write them, not tuned to lose.
"""
import math
from dataclasses import dataclass, field

import numpy as np

ELEMENTWISE_SIZES = (2**10, 2**16, 2**20, 2**24)
ROW_SHAPES = ((4096, 1000), (2048, 32000), (512, 131072))


@dataclass
class Case:
    """How to benchmark one loss. ``rows``: a row loss (shape (R, C)), else elementwise (n,)."""

    name: str
    rows: bool
    inputs: object  # (shape, dtype, rng) -> (pred, target)
    numpy_value: object  # (pred, target) -> float
    numpy_vg: object  # (pred, target) -> (float, grad)
    torch_value: object = None  # (pred_tensor, target_tensor) -> 0-d tensor
    options: dict = field(default_factory=dict)

    def bytes_moved(self, pred, target, op):
        """Bytes a one-pass implementation must move: inputs read once, the gradient written once.
        Row losses with a gradient read the logits twice (max/sum pass, then gradient pass)."""
        read = pred.nbytes + target.nbytes
        if op == "value":
            return read
        if self.rows:
            return read + pred.nbytes + pred.nbytes
        return read + pred.nbytes


def _normal(shape, dtype, rng, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)


def _regression(shape, dtype, rng):
    return _normal(shape, dtype, rng), _normal(shape, dtype, rng)


def _logits_binary(shape, dtype, rng):
    return _normal(shape, dtype, rng, 2.0), (rng.random(shape, dtype=np.float32) < 0.3).astype(dtype)


def _probs_binary(shape, dtype, rng):
    x, t = _logits_binary(shape, dtype, rng)
    return (1.0 / (1.0 + np.exp(-x))).astype(dtype), t


def _poisson(shape, dtype, rng):
    return _normal(shape, dtype, rng, 0.5), rng.poisson(2.0, shape).astype(dtype)


def _logits_labels(shape, dtype, rng):
    return _normal(shape, dtype, rng, 2.0), rng.integers(0, shape[1], shape[0])


def _kl(shape, dtype, rng):
    x = _normal(shape, dtype, rng)
    logq = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    y = np.exp(_normal(shape, dtype, rng))
    return logq.astype(dtype), (y / y.sum(axis=1, keepdims=True)).astype(dtype)


# -- NumPy baselines: value, and value with gradient (mean reduction) ----------------------------
# Given CuPy arrays, the same functions run in CuPy: the GPU baseline is this code too.
def _xp(a):
    """The array module of ``a``: CuPy for a CuPy array, else NumPy."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def _np_mse(p, t):
    xp = _xp(p)
    return xp.mean((p - t) ** 2)


def _np_mse_vg(p, t):
    xp = _xp(p)
    d = p - t
    return xp.mean(d * d), d * (2.0 / d.size)


def _np_mae(p, t):
    xp = _xp(p)
    return xp.mean(xp.abs(p - t))


def _np_mae_vg(p, t):
    xp = _xp(p)
    d = p - t
    return xp.mean(xp.abs(d)), xp.sign(d) / d.size


def _np_huber(p, t, delta=1.0):
    xp = _xp(p)
    a = xp.abs(p - t)
    return xp.mean(xp.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)))


def _np_huber_vg(p, t, delta=1.0):
    xp = _xp(p)
    d = p - t
    a = xp.abs(d)
    return xp.mean(xp.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))), xp.clip(d, -delta, delta) / d.size


def _np_smooth_l1(p, t, beta=1.0):
    xp = _xp(p)
    a = xp.abs(p - t)
    return xp.mean(xp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta))


def _np_smooth_l1_vg(p, t, beta=1.0):
    xp = _xp(p)
    d = p - t
    a = xp.abs(d)
    v = xp.mean(xp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta))
    return v, xp.where(a < beta, d / beta, xp.sign(d)) / d.size


def _np_log_cosh(p, t):
    xp = _xp(p)
    d = p - t
    return xp.mean(xp.logaddexp(d, -d) - math.log(2.0))


def _np_log_cosh_vg(p, t):
    xp = _xp(p)
    d = p - t
    return xp.mean(xp.logaddexp(d, -d) - math.log(2.0)), xp.tanh(d) / d.size


def _np_quantile(p, t, q=0.5):
    xp = _xp(p)
    r = t - p
    return xp.mean(xp.maximum(q * r, (q - 1) * r))


def _np_quantile_vg(p, t, q=0.5):
    xp = _xp(p)
    r = t - p
    return xp.mean(xp.maximum(q * r, (q - 1) * r)), xp.where(r > 0, -q, xp.where(r < 0, 1 - q, 0.0)) / r.size


def _np_poisson(p, t):
    xp = _xp(p)
    return xp.mean(xp.exp(p) - t * p)


def _np_poisson_vg(p, t):
    xp = _xp(p)
    e = xp.exp(p)
    return xp.mean(e - t * p), (e - t) / p.size


def _np_bce(p, t):
    xp = _xp(p)
    return -xp.mean(t * xp.maximum(xp.log(p), -100) + (1 - t) * xp.maximum(xp.log1p(-p), -100))


def _np_bce_vg(p, t):
    xp = _xp(p)
    v = _np_bce(p, t)
    return v, (p - t) / xp.maximum(p * (1 - p), 1e-12) / p.size


def _np_bce_logits(x, t):
    xp = _xp(x)
    return xp.mean(xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x))))


def _np_bce_logits_vg(x, t):
    xp = _xp(x)
    return _np_bce_logits(x, t), (1 / (1 + xp.exp(-x)) - t) / x.size


def _np_hinge(p, t):
    xp = _xp(p)
    return xp.mean(xp.maximum(0, 1 - (2 * t - 1) * p))


def _np_hinge_vg(p, t):
    xp = _xp(p)
    s = 2 * t - 1
    z = 1 - s * p
    return xp.mean(xp.maximum(0, z)), xp.where(z > 0, -s, 0) / p.size


def _np_sq_hinge(p, t):
    xp = _xp(p)
    return xp.mean(xp.maximum(0, 1 - (2 * t - 1) * p) ** 2)


def _np_sq_hinge_vg(p, t):
    xp = _xp(p)
    s = 2 * t - 1
    z = xp.maximum(0, 1 - s * p)
    return xp.mean(z * z), -2 * s * z / p.size


def _np_focal(x, t, alpha=0.25, gamma=2.0):
    xp = _xp(x)
    p = 1 / (1 + xp.exp(-x))
    ce = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    return xp.mean(ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t)))


def _np_focal_vg(x, t, alpha=0.25, gamma=2.0):
    xp = _xp(x)
    p = 1 / (1 + xp.exp(-x))
    ce = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    u = 1 - (p * t + (1 - p) * (1 - t))
    a = alpha * t + (1 - alpha) * (1 - t)
    v = xp.mean(ce * u ** gamma * a)
    g = a * ((p - t) * u ** gamma + ce * gamma * u ** (gamma - 1) * p * (1 - p) * (1 - 2 * t))
    return v, g / x.size


def _np_lse(x):
    xp = _xp(x)
    m = x.max(axis=1, keepdims=True)
    return m[:, 0] + xp.log(xp.exp(x - m).sum(axis=1))


def _np_ce(x, y):
    xp = _xp(x)
    return xp.mean(_np_lse(x) - x[xp.arange(x.shape[0]), y])


def _np_ce_vg(x, y):
    xp = _xp(x)
    m = x.max(axis=1, keepdims=True)
    e = xp.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(x.shape[0])
    v = xp.mean(m[:, 0] + xp.log(s[:, 0]) - x[rows, y])
    g = e / s
    g[rows, y] -= 1
    return v, g / x.shape[0]


def _np_mm(x, y, margin=1.0):
    xp = _xp(x)
    rows = xp.arange(x.shape[0])
    z = xp.maximum(0, margin - x[rows, y][:, None] + x)
    z[rows, y] = 0
    return xp.mean(z.sum(axis=1) / x.shape[1])


def _np_mm_vg(x, y, margin=1.0):
    xp = _xp(x)
    rows = xp.arange(x.shape[0])
    z = margin - x[rows, y][:, None] + x
    hit = z > 0
    hit[rows, y] = False
    v = xp.mean(xp.where(hit, z, 0).sum(axis=1) / x.shape[1])
    g = hit.astype(x.dtype)
    g[rows, y] = -hit.sum(axis=1)
    return v, g / (x.shape[0] * x.shape[1])


def _np_kl(x, t):
    xp = _xp(x)
    return xp.sum(xp.where(t > 0, t * (xp.log(xp.where(t > 0, t, 1)) - x), 0)) / x.shape[0]


def _np_kl_vg(x, t):
    return _np_kl(x, t), -t / x.shape[0]


# -- PyTorch baselines (forward; the runner adds .backward() for forward+backward) ---------------
def _torch_fns():
    import torch
    import torch.nn.functional as F

    def focal(x, t, alpha=0.25, gamma=2.0):  # torchvision.ops.sigmoid_focal_loss, written out
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        return (ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))).mean()

    def log_cosh(p, t):
        d = p - t
        return (d + F.softplus(-2.0 * d) - math.log(2.0)).mean()

    def quantile(p, t, q=0.5):
        r = t - p
        return torch.maximum(q * r, (q - 1) * r).mean()

    def hinge(p, t):
        return torch.clamp(1 - (2 * t - 1) * p, min=0).mean()

    def sq_hinge(p, t):
        return (torch.clamp(1 - (2 * t - 1) * p, min=0) ** 2).mean()

    return {
        "mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss, "smooth_l1": F.smooth_l1_loss,
        "log_cosh": log_cosh, "quantile": quantile,
        "poisson_nll": F.poisson_nll_loss, "bce": F.binary_cross_entropy,
        "bce_with_logits": F.binary_cross_entropy_with_logits, "hinge": hinge, "squared_hinge": sq_hinge,
        "sigmoid_focal": focal, "cross_entropy": F.cross_entropy, "multi_margin": F.multi_margin_loss,
        "kl_div": lambda x, t: F.kl_div(x, t, reduction="batchmean"),
    }


CASES = {c.name: c for c in [
    Case("mse", False, _regression, _np_mse, _np_mse_vg),
    Case("mae", False, _regression, _np_mae, _np_mae_vg),
    Case("huber", False, _regression, _np_huber, _np_huber_vg),
    Case("smooth_l1", False, _regression, _np_smooth_l1, _np_smooth_l1_vg),
    Case("log_cosh", False, _regression, _np_log_cosh, _np_log_cosh_vg),
    Case("quantile", False, _regression, _np_quantile, _np_quantile_vg),
    Case("poisson_nll", False, _poisson, _np_poisson, _np_poisson_vg),
    Case("bce", False, _probs_binary, _np_bce, _np_bce_vg),
    Case("bce_with_logits", False, _logits_binary, _np_bce_logits, _np_bce_logits_vg),
    Case("hinge", False, _logits_binary, _np_hinge, _np_hinge_vg),
    Case("squared_hinge", False, _logits_binary, _np_sq_hinge, _np_sq_hinge_vg),
    Case("sigmoid_focal", False, _logits_binary, _np_focal, _np_focal_vg),
    Case("cross_entropy", True, _logits_labels, _np_ce, _np_ce_vg),
    Case("multi_margin", True, _logits_labels, _np_mm, _np_mm_vg),
    Case("kl_div", True, _kl, _np_kl, _np_kl_vg, options={"reduction": "batchmean"}),
]}


def torch_baselines():
    """name -> PyTorch forward function, or {} when PyTorch is not installed."""
    try:
        return _torch_fns()
    except ImportError:
        return {}
