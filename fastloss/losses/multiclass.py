"""Multiclass losses: rows of C scores (the class axis last, or ``axis=``).

``cross_entropy`` and ``multi_margin`` need the whole row at once (log-sum-exp, the label's
score), so they have row kernels (kernels/cpu_rows.py). ``kl_div`` is elementwise math with
per-row weights, so it is defined like the elementwise losses.
"""
import math

import numpy as np

from .. import _arrays, _config
from .._loss import GRAD, VALUE, ElementwiseLoss, Loss, Option, _grad_scale, _reduce_value

_axis = Option("axis", -1, kind=int, host=True)


def _class_axis(loss, p, axis):
    if p.ndim == 0:
        raise ValueError(f"{loss}: pred must have a class axis (at least 1 dimension), got a 0-d array")
    if not -p.ndim <= axis < p.ndim:
        raise ValueError(f"{loss}: axis {axis} is out of range for pred with {p.ndim} dimensions")
    return axis % p.ndim


class _RowLoss(Loss):
    """Shared plumbing of the row losses: class axis, row weights, launching, gradient layout."""

    def _as_rows(self, arr, axis, cdt):
        moved = np.moveaxis(arr, axis, -1)
        C = moved.shape[-1]
        if C == 0:
            raise ValueError(f"{self.name}: pred has no classes (its class axis {axis} has length 0)")
        return _arrays.contiguous(moved, cdt).reshape(-1, C), moved.shape

    def _row_weight(self, w, lead):
        if w is None:
            return None
        if w.shape != lead:
            raise ValueError(f"{self.name}: sample_weight has shape {w.shape}, expected pred's leading shape {lead} "
                             "(one weight per row)")
        return _arrays.as_real(w, "sample_weight", np.float64).reshape(-1)

    def _class_weight(self, cw, C):
        if cw is None:
            return None
        cw = _arrays.to_numpy(cw, "class_weight")
        if cw.shape != (C,):
            raise ValueError(f"{self.name}: class_weight has shape {cw.shape}, expected ({C},) (one weight per class)")
        cw = _arrays.as_real(cw, "class_weight", np.float64)
        if np.isnan(cw).any():
            raise ValueError(f"{self.name}: class_weight has NaN values")
        return cw

    def _labels(self, t, lead, C, ignore_index=None):
        if t.shape != lead:
            raise ValueError(f"{self.name}: target of labels has shape {t.shape}, expected pred's leading shape {lead}")
        labels = _arrays.as_labels(t, "target").reshape(-1)
        bad = (labels < 0) | (labels >= C)
        if ignore_index is not None:
            bad &= labels != ignore_index
        if bad.any():
            raise ValueError(f"{self.name}: target has label {labels[bad][0]} outside [0, {C})"
                             + ("" if ignore_index is None else f" (and not ignore_index={ignore_index})"))
        return labels

    @staticmethod
    def _launch(rows_fn, par_fn, head, vals, grad, scale, R, C):
        """Run a row kernel over all rows: serially if they fit one chunk, else in parallel."""
        rows_per_chunk = max(1, _config.CHUNK // max(C, 1))
        nchunks = -(-R // rows_per_chunk)
        if nchunks <= 1:
            return rows_fn(*head, vals, grad, scale, 0, R)
        sums = np.empty(nchunks, dtype=np.float64)
        with _config.PARALLEL_LOCK:
            par_fn(*head, vals, grad, scale, sums, rows_per_chunk)
        return float(sums.sum())

    def _rows_setup(self, op, p, w, reduction, opts, out_np, cdt):
        """The common start of a row loss: pred as (R, C) rows of the compute dtype, class and
        row weights, and the output buffers (per-row values for "none", the gradient)."""
        axis = _class_axis(self.name, p, opts["axis"])
        x, moved_shape = self._as_rows(p, axis, cdt)
        R, C = x.shape
        lead = moved_shape[:-1]
        cw = self._class_weight(opts["class_weight"], C)
        sw = self._row_weight(w, lead)
        vals = np.empty(R, dtype=np.float64) if reduction == "none" and op != GRAD else None
        grad = _grad_buffer(op, out_np, axis, p.ndim, R, C, cdt)
        return axis, x, R, C, lead, cw, sw, vals, grad

    @staticmethod
    def _finish(op, reduction, total, wsum, rows, p, out_np, rdt):
        axis, x, R, C, lead, cw, sw, vals, grad = rows
        moved_shape = lead + (C,)
        ndim = p.ndim
        value = None
        if op != GRAD:
            if reduction == "none":
                value = vals.reshape(lead).astype(rdt, copy=False)
            else:
                value = rdt.type(_reduce_value(total, wsum, reduction))
        g = None
        if op != VALUE:
            g = grad.reshape(moved_shape)
            if axis != ndim - 1:
                g = np.moveaxis(g, -1, axis)
            if out_np is not None:
                if not np.shares_memory(g, out_np):
                    out_np[...] = g
                g = out_np
            else:
                g = _arrays.contiguous(g, rdt)
        return value, g


def _grad_buffer(op, out_np, axis, ndim, R, C, cdt):
    if op == VALUE:
        return None
    if axis == ndim - 1:
        return _arrays.kernel_buffer(out_np, R * C, cdt).reshape(R, C)
    return np.empty((R, C), dtype=cdt)


class CrossEntropy(_RowLoss):
    options = (
        Option("class_weight", None, kind=object, host=True),
        Option("ignore_index", -100, kind=int, host=True),
        Option("label_smoothing", 0.0, lambda v: 0.0 <= v <= 1.0, "in [0, 1]", host=True),
        _axis,
    )

    def _compute(self, op, p, t, w, reduction, opts, out_np, rdt, cdt):
        from ..kernels import cpu_rows
        rows = self._rows_setup(op, p, w, reduction, opts, out_np, cdt)
        axis, x, R, C, lead, cw, sw, vals, grad = rows
        eps = opts["label_smoothing"]
        if t.dtype.kind in "iu":
            ignore = opts["ignore_index"]
            labels = self._labels(t, lead, C, ignore)
            # "mean" divides by Σ (sample weight × class weight of the label) over kept rows.
            kept = labels != ignore
            ew = kept.astype(np.float64) if cw is None else np.where(kept, cw[np.where(kept, labels, 0)], 0.0)
            if sw is not None:  # kept rows only: an ignored row's weight is 0 even if NaN or inf
                ew[kept] *= sw[kept]
            wsum = float(ew.sum())
            scale = _grad_scale(wsum, reduction)
            # Σ_c w_c enters the smoothing terms only (not computed without: 0 · inf would be NaN)
            cw_sum = float(C if cw is None else cw.sum()) if eps != 0.0 else 0.0
            head = (x, labels, cw, sw, ignore, eps, cw_sum)
            total = self._launch(cpu_rows.ce_labels_rows, cpu_rows.ce_labels_par, head, vals, grad, scale, R, C)
        elif t.dtype.kind == "f" or t.dtype.kind == "b":
            if t.shape != p.shape:
                if t.shape == tuple(p.shape[:axis] + p.shape[axis + 1:]):
                    raise TypeError(f"{self.name}: target holds {t.dtype} values of the leading shape; class labels "
                                    "must have an integer dtype (probability targets have pred's shape)")
                raise ValueError(f"{self.name}: target has shape {t.shape}; expected integer labels of shape {lead} "
                                 f"or probabilities of pred's shape {p.shape}")
            probs, _ = self._as_rows(t, axis, cdt)
            wsum = float(R) if sw is None else float(sw.sum())
            scale = _grad_scale(wsum, reduction)
            head = (x, probs, cw, sw, eps)
            total = self._launch(cpu_rows.ce_probs_rows, cpu_rows.ce_probs_par, head, vals, grad, scale, R, C)
        else:
            raise TypeError(f"{self.name}: target must be integer labels or real probabilities, got dtype {t.dtype}")
        return self._finish(op, reduction, total, wsum, rows, p, out_np, rdt)


class MultiMargin(_RowLoss):
    options = (
        Option("p", 1, lambda v: v in (1, 2), "1 or 2", host=True),
        Option("margin", 1.0, host=True),
        Option("class_weight", None, kind=object, host=True),
        _axis,
    )

    def _compute(self, op, p, t, w, reduction, opts, out_np, rdt, cdt):
        from ..kernels import cpu_rows
        rows = self._rows_setup(op, p, w, reduction, opts, out_np, cdt)
        axis, x, R, C, lead, cw, sw, vals, grad = rows
        labels = self._labels(t, lead, C)
        wsum = float(R) if sw is None else float(sw.sum())
        scale = _grad_scale(wsum, reduction)
        head = (x, labels, cw, sw, int(opts["p"]), opts["margin"])
        total = self._launch(cpu_rows.multi_margin_rows, cpu_rows.multi_margin_par, head, vals, grad, scale, R, C)
        return self._finish(op, reduction, total, wsum, rows, p, out_np, rdt)


# -- kl_div: elementwise math, per-row weights -----------------------------------------------------
def kl_div_value(x, t, log_target):
    if log_target:
        return math.exp(t) * (t - x)
    # xlogy(t, t) − t·x: a zero target adds nothing.
    tl = t * math.log(t) if t != 0.0 else 0.0 * t
    return tl - t * x


def kl_div_deriv(x, t, log_target):
    return -math.exp(t) if log_target else -t


class KLDiv(ElementwiseLoss):
    """KL divergence: elementwise, but weighted per row and with PyTorch's "batchmean"."""

    reductions = ("mean", "sum", "none", "batchmean")

    def _check_shape(self, shape, opts):
        # The class axis matters only for weights and batchmean, but must be valid (a 0-d pred,
        # one element, takes axis 0 or -1 as a 1-d one would).
        _class_axis(self.name, _Shape(shape or (1,)), opts["axis"])

    def _weights(self, w, shape, cdt, opts):
        """(per-element weights or None, Σ of the row weights: the number of rows unweighted)."""
        if not shape:  # a 0-d pred: one element, its own row
            if w is None:
                return None, 1.0
            if w.shape != ():
                raise ValueError(f"{self.name}: sample_weight has shape {w.shape}, expected () for a 0-d pred")
            wr = _arrays.as_real(w, "sample_weight", cdt).reshape(1)
            return wr, float(wr[0])
        axis = _class_axis(self.name, _Shape(shape), opts["axis"])
        lead = tuple(shape[:axis] + shape[axis + 1:])
        if w is None:
            return None, float(math.prod(lead))
        if w.shape != lead:
            raise ValueError(f"{self.name}: sample_weight has shape {w.shape}, expected pred's leading shape {lead} "
                             "(one weight per row)")
        wr = _arrays.as_real(w, "sample_weight", cdt)
        full = _arrays.contiguous(np.broadcast_to(np.expand_dims(wr, axis), shape)).reshape(-1)
        return full, float(wr.sum(dtype=np.float64))

    def _denominator(self, reduction, wsum, shape, opts):
        """What "mean" and "batchmean" divide by, from wsum = Σ of the row weights (R rows of C)."""
        if not shape:  # a 0-d pred: one row of one element
            return wsum
        axis = _class_axis(self.name, _Shape(shape), opts["axis"])
        if reduction != "batchmean":
            return wsum * shape[axis]  # "mean": over elements
        # PyTorch's batchmean is sum / pred.shape[0]; with row weights, the weighted mean over
        # rows times rows per batch item, the same when every weight is 1. Without rows there is
        # nothing to average: sum / pred.shape[0], 0 for (3, 0, 4) (PyTorch), NaN for (0, 3).
        R = math.prod(shape[:axis] + shape[axis + 1:])
        return wsum * shape[0] / R if R else float(shape[0])


class _Shape:
    """Stands in for an array where only ``ndim`` is read (_class_axis)."""

    def __init__(self, shape):
        self.ndim = len(shape)


kl_div = KLDiv("kl_div", kl_div_value, kl_div_deriv, options=(
    Option("log_target", False, kind=bool), _axis), doc=r"""Kullback-Leibler divergence KL(target ‖ pred).

    l = t (log t − x),          dl/dx = −t             (x = pred, log-probabilities)
    l = e^t (t − x),            dl/dx = −e^t           with log_target=True

pred: log-probabilities of shape (..., C); target: probabilities (or log-probabilities with
``log_target=True``) of the same shape. ``sample_weight`` has one weight per row (the leading
shape). Reductions: "mean" (over elements), "sum", "none", "batchmean" (sum / pred.shape[0], the
true KL divergence per sample). Reference: torch.nn.functional.kl_div.

>>> import numpy as np, fastloss as fl
>>> logq = np.log(np.array([[0.5, 0.5]])); p = np.array([[0.9, 0.1]])
>>> round(float(fl.kl_div(logq, p, reduction="batchmean")), 6)
0.368064
""")

cross_entropy = CrossEntropy("cross_entropy", doc=r"""Cross-entropy of logits against labels or class probabilities.

    l = w_y (logsumexp(x) − x_y)                        integer labels y
    l = Σ_c w_c t_c (logsumexp(x) − x_c)                class probabilities t
    with label smoothing ε: t ← (1 − ε) onehot(y) + ε/C   (PyTorch's definition)
    dl/dx = w_y (softmax(x) − onehot(y))   (and the smoothed / probability analogue)

pred: logits of shape (..., C) (``axis=`` picks the class axis). target: integer labels of the
leading shape (...), any integer dtype, each in [0, C) or equal to ``ignore_index``; or
probabilities of pred's shape. Options: ``class_weight`` (C,), ``ignore_index`` (default −100),
``label_smoothing`` in [0, 1], ``axis`` (default −1). "mean" with labels is
Σ w_y l / Σ w_y over kept rows (PyTorch); with probabilities, the mean over rows. If every row is
ignored, "mean" is NaN and the gradient zero (as PyTorch). Logits of −inf (masked classes) are
fine while the label's logit is finite. Reference: torch.nn.functional.cross_entropy.

>>> import numpy as np, fastloss as fl
>>> round(float(fl.cross_entropy(np.array([[2.0, 0.0, -1.0]]), np.array([0]))), 6)
0.169846
""")

multi_margin = MultiMargin("multi_margin", doc=r"""Multi-class margin (hinge) loss.

    l = w_y / C · Σ_{c ≠ y} max(0, margin − x_y + x_c)^p,    p ∈ {1, 2}

pred: scores of shape (..., C); target: integer labels of the leading shape, in [0, C).
Options: ``p`` (1 or 2), ``margin`` (default 1.0), ``class_weight`` (C,), ``axis``.
Reference: torch.nn.functional.multi_margin_loss.

>>> import numpy as np, fastloss as fl
>>> round(float(fl.multi_margin(np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3]))), 6)
0.325
""")
