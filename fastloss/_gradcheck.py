"""Finite-difference check of a loss's gradient."""
from collections import namedtuple

import numpy as np

GradCheck = namedtuple("GradCheck", "max_abs_error max_rel_error worst_index")
GradCheck.__doc__ = """Result of :func:`check_grad`: the worst absolute and relative errors of the
gradient against central differences, and the index (into pred) where the absolute error is largest."""


def check_grad(loss, pred, target, *, step=None, **kwargs):
    """Compare ``loss.grad`` with central finite differences of ``loss``, in float64.

    Every element of ``pred`` is perturbed by ±step (default: 1e-6 · max(1, |pred|)) and
    (l(p + step) − l(p − step)) / 2·step is compared with the analytic gradient. ``kwargs`` are the
    loss's keywords (reduction, sample_weight, options; the step is called ``step`` so that a
    loss option named ``eps``, as poisson_nll's, passes through); ``reduction="none"`` is checked as the
    gradient of the sum. Costs two loss evaluations per element: use small inputs.

    Returns a :class:`GradCheck` (max_abs_error, max_rel_error, worst_index), where the relative
    error is |g − g_fd| / max(|g_fd|, 1e-12·max|g_fd|, tiny).

    >>> import numpy as np, fastloss as fl
    >>> r = fl.check_grad(fl.huber, np.array([0.3, -2.0]), np.zeros(2), delta=1.0)
    >>> r.max_abs_error < 1e-8
    True
    """
    p = np.array(pred, dtype=np.float64)
    t = np.asarray(target)
    if t.dtype.kind == "f":
        t = t.astype(np.float64)
    kwargs = dict(kwargs)
    sw = kwargs.get("sample_weight")
    if sw is not None:
        kwargs["sample_weight"] = np.asarray(sw, dtype=np.float64)

    def total(x):
        v = loss(x, t, **kwargs)
        return float(np.sum(v, dtype=np.float64))

    g = np.asarray(loss.grad(p, t, **kwargs), dtype=np.float64)
    fd = np.empty_like(p)
    flat, fdf = p.reshape(-1), fd.reshape(-1)
    for i in range(flat.size):
        x0 = flat[i]
        h = step if step is not None else 1e-6 * max(1.0, abs(x0))
        flat[i] = x0 + h
        up = total(p)
        flat[i] = x0 - h
        down = total(p)
        flat[i] = x0
        fdf[i] = (up - down) / (2 * h)
    if p.size == 0:
        return GradCheck(0.0, 0.0, None)
    err = np.abs(g - fd)
    floor = max(1e-12 * float(np.max(np.abs(fd))), np.finfo(np.float64).tiny)
    rel = err / np.maximum(np.abs(fd), floor)
    worst = np.unravel_index(int(np.argmax(err)), p.shape) if p.ndim else ()
    return GradCheck(float(err.max()), float(rel.max()), worst)
