"""CPU kernels of the row losses (cross_entropy, multi_margin): one row of C scores at a time.

Each kernel runs rows [r0, r1) serially and returns the weighted loss sum of those rows; a
parallel driver splits the rows into fixed chunks of about ``_config.CHUNK`` elements and runs
them with ``prange``. As for the elementwise kernels, the partition depends only on the shape,
so results are bitwise identical for any thread count. ``None`` arguments (no class weights,
no per-row output, no gradient) are pruned at compile time.

The per-row math is in the ``*_row`` functions below; the CUDA kernels (kernels/cuda_rows.py)
share the same formulas.
"""

import numpy as np
from numba import njit, prange

from .._config import CPU_KERNEL, CPU_PARALLEL, CPU_SCALAR, LANES
from .cpu_helpers import lane_sum
from .vmath import vexp, vlog

# Reductions over a row use LANES explicit accumulators (see _config): vectorised without
# 'reassoc', and the same rounding in every kernel that computes the same value.


@njit(**CPU_SCALAR)
def _row_max(row, lanes):
    """max of a row (NaN entries are skipped here and propagate through the sum of exps)."""
    lanes[:] = -np.inf
    C = row.size
    for c0 in range(0, C, LANES):
        for j in range(min(LANES, C - c0)):
            v = row[c0 + j]
            lanes[j] = v if v > lanes[j] else lanes[j]
    m = -np.inf
    for j in range(LANES):
        m = lanes[j] if lanes[j] > m else m
    return m


@njit(**CPU_SCALAR)
def _sum_exp(row, m, lanes):
    """Σ_c exp(row[c] − m), in float64."""
    lanes[:] = 0.0
    C = row.size
    for c0 in range(0, C, LANES):
        for j in range(min(LANES, C - c0)):
            lanes[j] += vexp(row[c0 + j] - m)
    return lane_sum(lanes)


@njit(**CPU_KERNEL)
def ce_labels_rows(logits, labels, class_weight, row_weight, ignore_index, smoothing, cw_sum,
                   vals, grad, scale, r0, r1):
    """Cross-entropy of rows [r0, r1) with integer labels.

    Row loss (PyTorch's): (1 − ε) w_y (lse − x_y) + (ε/C) Σ_c w_c (lse − x_c), times the row's
    sample weight; its gradient (1 − ε) w_y (softmax − onehot_y) + (ε/C)(W softmax − w), W = Σ w_c.
    Rows whose label is ``ignore_index`` contribute nothing and get a zero gradient.
    """
    C = logits.shape[1]
    total = 0.0
    lanes = np.empty(LANES)
    for r in range(r0, r1):
        y = labels[r]
        if y == ignore_index:
            if vals is not None:
                vals[r] = 0.0
            if grad is not None:
                for c in range(C):
                    grad[r, c] = 0.0
            continue
        row = logits[r]
        m = _row_max(row, lanes)
        s = _sum_exp(row, m, lanes)
        lse = m + vlog(s)
        wy = 1.0 if class_weight is None else class_weight[y]
        l = (1.0 - smoothing) * wy * (lse - row[y])
        if smoothing != 0.0:
            lanes[:] = 0.0
            for c0 in range(0, C, LANES):
                for j in range(min(LANES, C - c0)):
                    c = c0 + j
                    wc = 1.0 if class_weight is None else class_weight[c]
                    lanes[j] += wc * (lse - row[c])
            l += smoothing / C * lane_sum(lanes)
        sw = 1.0 if row_weight is None else row_weight[r]
        l = l * sw
        total += l
        if vals is not None:
            vals[r] = l
        if grad is not None:
            gs = sw * scale
            a = (1.0 - smoothing) * wy + smoothing / C * cw_sum
            inv = 1.0 / s
            for c in range(C):
                pc = vexp(row[c] - m) * inv
                wc = 1.0 if class_weight is None else class_weight[c]
                grad[r, c] = (a * pc - smoothing / C * wc) * gs
            grad[r, y] -= (1.0 - smoothing) * wy * gs
    return total


@njit(**CPU_KERNEL)
def ce_probs_rows(logits, probs, class_weight, row_weight, smoothing, vals, grad, scale, r0, r1):
    """Cross-entropy of rows [r0, r1) with class-probability targets.

    Row loss: Σ_c w_c t'_c (lse − x_c) with t' = (1 − ε) t + ε/C; gradient (Σ_c w_c t'_c) softmax
    − w t'. A class whose target is exactly 0 adds nothing, even where its logit is −inf.
    """
    C = logits.shape[1]
    total = 0.0
    lanes = np.empty(LANES)
    lanes_w = np.empty(LANES)
    for r in range(r0, r1):
        row = logits[r]
        trow = probs[r]
        m = _row_max(row, lanes)
        s = _sum_exp(row, m, lanes)
        lse = m + vlog(s)
        lanes[:] = 0.0
        lanes_w[:] = 0.0
        for c0 in range(0, C, LANES):
            for j in range(min(LANES, C - c0)):
                c = c0 + j
                wc = 1.0 if class_weight is None else class_weight[c]
                tc = (1.0 - smoothing) * trow[c] + smoothing / C
                term = wc * tc * (lse - row[c])
                lanes[j] += term if tc != 0.0 else 0.0
                lanes_w[j] += wc * tc
        l = lane_sum(lanes)
        wt = lane_sum(lanes_w)
        sw = 1.0 if row_weight is None else row_weight[r]
        l = l * sw
        total += l
        if vals is not None:
            vals[r] = l
        if grad is not None:
            gs = sw * scale
            inv = 1.0 / s
            for c in range(C):
                wc = 1.0 if class_weight is None else class_weight[c]
                tc = (1.0 - smoothing) * trow[c] + smoothing / C
                grad[r, c] = (wt * vexp(row[c] - m) * inv - wc * tc) * gs
    return total


@njit(**CPU_KERNEL)
def multi_margin_rows(scores, labels, class_weight, row_weight, power, margin, vals, grad, scale, r0, r1):
    """Multi-class margin loss of rows [r0, r1) (PyTorch's multi_margin_loss).

    Row loss: w_y / C · Σ_{c ≠ y} max(0, margin − x_y + x_c)^p, p ∈ {1, 2}.
    """
    C = scores.shape[1]
    total = 0.0
    lanes = np.empty(LANES)
    for r in range(r0, r1):
        y = labels[r]
        row = scores[r]
        xy = row[y]
        wy = 1.0 if class_weight is None else class_weight[y]
        sw = 1.0 if row_weight is None else row_weight[r]
        f = wy / C
        lanes[:] = 0.0
        for c0 in range(0, C, LANES):
            for j in range(min(LANES, C - c0)):
                c = c0 + j
                z = margin - xy + row[c]
                hit = (z > 0.0) and (c != y)
                lanes[j] += ((z if power == 1 else z * z) if hit else 0.0)
        if grad is not None:
            gs = f * sw * scale
            gy = 0.0
            for c in range(C):
                z = margin - xy + row[c]
                hit = (z > 0.0) and (c != y)
                g = (1.0 if power == 1 else 2.0 * z) * gs if hit else 0.0
                grad[r, c] = g
                gy -= g
            grad[r, y] = gy
        l = lane_sum(lanes) * f * sw
        total += l
        if vals is not None:
            vals[r] = l
    return total


# -- parallel drivers: fixed chunks of rows, one partial sum per chunk ---------------------------
@njit(**CPU_PARALLEL)
def ce_labels_par(logits, labels, class_weight, row_weight, ignore_index, smoothing, cw_sum,
                  vals, grad, scale, sums, rows_per_chunk):
    R = logits.shape[0]
    for c in prange(sums.size):
        sums[c] = ce_labels_rows(logits, labels, class_weight, row_weight, ignore_index, smoothing, cw_sum,
                                 vals, grad, scale, c * rows_per_chunk, min(R, (c + 1) * rows_per_chunk))


@njit(**CPU_PARALLEL)
def ce_probs_par(logits, probs, class_weight, row_weight, smoothing, vals, grad, scale, sums, rows_per_chunk):
    R = logits.shape[0]
    for c in prange(sums.size):
        sums[c] = ce_probs_rows(logits, probs, class_weight, row_weight, smoothing, vals, grad, scale,
                                c * rows_per_chunk, min(R, (c + 1) * rows_per_chunk))


@njit(**CPU_PARALLEL)
def multi_margin_par(scores, labels, class_weight, row_weight, power, margin, vals, grad, scale, sums,
                     rows_per_chunk):
    R = scores.shape[0]
    for c in prange(sums.size):
        sums[c] = multi_margin_rows(scores, labels, class_weight, row_weight, power, margin, vals, grad, scale,
                                    c * rows_per_chunk, min(R, (c + 1) * rows_per_chunk))
