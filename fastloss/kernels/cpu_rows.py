"""CPU kernels of the row losses (cross_entropy, multi_margin): one row of C scores at a time.

Each kernel runs rows [r0, r1) serially and returns the weighted loss sum of those rows; a
parallel driver splits the rows into fixed chunks of about ``_config.CHUNK`` elements and runs
them with ``prange``. As for the elementwise kernels, the partition depends only on the shape,
so results are bitwise identical for any thread count. ``None`` arguments (no class weights,
no per-row output, no gradient) are pruned at compile time.

How the hot loops are written, and why (see also kernels/cpu_elementwise.py):

* every inner loop runs over a view indexed from 0 to the view's size, so Numba can drop its
  negative-index check (which stops vectorisation);
* exp and log are vmath's vectorisable ones, computed in the data's dtype (float32 math for
  float32 logits; the row's sums still accumulate in float64);
* a sum over a row is computed per block: a map loop writes the terms into a small buffer, then
  ``lanes_add`` adds them into float64 lanes in a fixed order. No 'reassoc' flag, so the value
  is the same bitwise with or without the gradient, and LLVM vectorises both loops.

A row of cross-entropy is read twice (max, then Σ exp); the second read comes from the L2
cache, so memory sees one read of the logits and one write of the gradient. With a gradient, the
Σ exp pass keeps the exps in the gradient row and a last pass scales them (in L2 too).
"""
import numpy as np
from numba import njit, prange

from .._config import (CPU_KERNEL, CPU_PARALLEL, CPU_ROW_PREFETCH_MAX_BYTES, CPU_ROW_PREFETCH_MIN_BYTES,
                       CPU_SCALAR, CPU_VECTOR_BITS, LANES, ROW_BLOCK)
from .cpu_helpers import lane_sum, lanes_add, prefer_vector_width, prefetch_lines
from .vmath import vexp, vlog


@njit(**CPU_SCALAR)
def _row_max(row, mlanes):
    """max of a row, in the row's dtype (NaN entries are skipped here; they propagate through
    the sum of exps)."""
    mlanes[:] = -np.inf
    zero = row.dtype.type(0.0)
    for c0 in range(0, row.size, LANES):
        b = row[c0:c0 + LANES]
        for j in range(b.size):
            v = b[j]
            # "+ 0" (it only turns −0 into +0, harmless for a shift) keeps LLVM from storing the
            # select as a masked store, which the next group's load then waits for: 5 times slower.
            mlanes[j] = (v if v > mlanes[j] else mlanes[j]) + zero
    m = mlanes[0]
    for j in range(1, LANES):
        m = mlanes[j] if mlanes[j] > m else m
    return m


@njit(**CPU_SCALAR)
def _sum_exp(row, m, lanes, out, ahead, ahead2, ahead_stop):
    """Σ_c exp(row[c] − m), terms in the row's dtype, summed in float64.

    ``out`` takes the terms: a buffer of ROW_BLOCK that each block reuses, or, with a gradient,
    the row's gradient (as long as the row), which keeps them there for the gradient pass to
    scale instead of computing every exp again. The terms and their order are the same either
    way, so the sum is the same bit for bit with or without a gradient.

    It also prefetches ``ahead[:ahead_stop]`` (the next row; and ``ahead2``'s unless None), a
    group of LANES elements per group of exps (see _prefetch_stop): spread out, not all at
    once, so that they do not fill the core's line-fill buffers and stall it. Without
    prefetches a block is one group: groups of LANES cost up to 11% where the row is too small
    to prefetch (4096×1000)."""
    lanes[:] = 0.0
    keep = out.size >= row.size
    group = LANES if ahead_stop else ROW_BLOCK
    for b0 in range(0, row.size, ROW_BLOCK):
        rb = row[b0:b0 + ROW_BLOCK]
        ob = out[b0:b0 + ROW_BLOCK] if keep else out
        for g0 in range(0, rb.size, group):
            stop = min(b0 + g0 + group, ahead_stop)
            prefetch_lines(ahead, b0 + g0, stop)
            if ahead2 is not None:
                prefetch_lines(ahead2, b0 + g0, stop)
            rg, og = rb[g0:g0 + group], ob[g0:g0 + group]
            for j in range(rg.size):
                og[j] = vexp(rg[j] - m)
        lanes_add(lanes, ob[:rb.size])
    return lane_sum(lanes)


@njit(**CPU_SCALAR)
def _prefetch_stop(C, itemsize, rows):
    """How much of the next row ``_sum_exp`` prefetches: all C elements, or none (0).

    The exp pass reads the row from L2 and is bound by the vector units, the max pass of the
    next row by memory; with the next row on its way during this one they overlap. 2 threads,
    float32, Sapphire Rapids-class VM, side by side (same bits): value 1.17-1.24x faster from
    4096 to 65536 classes, 1.16x at 131072, value_and_grad 1.10-1.21x. Below
    CPU_ROW_PREFETCH_MIN_BYTES per row the prefetches only cost (1000 classes: 13% slower),
    and above CPU_ROW_PREFETCH_MAX_BYTES (``rows`` rows of this size: logits, and targets for
    ce_probs_rows) what they bring pushes the current row out of L2 (131072 classes with
    probability targets: 10% slower with a gradient)."""
    size = C * itemsize * rows
    return C if CPU_ROW_PREFETCH_MIN_BYTES <= size <= CPU_ROW_PREFETCH_MAX_BYTES else 0


@njit(**CPU_SCALAR)
def _scale(grow, k):
    for c in range(grow.size):
        grow[c] *= k


@njit(**CPU_KERNEL)
def ce_labels_rows(logits, labels, class_weight, row_weight, ignore_index, smoothing, cw_sum,
                   vals, grad, scale, r0, r1):
    """Cross-entropy of rows [r0, r1) with integer labels.

    Row loss (PyTorch's): (1 − ε) w_y (lse − x_y) + (ε/C) Σ_c w_c (lse − x_c), times the row's
    sample weight; its gradient (1 − ε) w_y (softmax − onehot_y) + (ε/C)(W softmax − w), W = Σ w_c.
    Rows whose label is ``ignore_index`` contribute nothing and get a zero gradient.
    """
    prefer_vector_width(CPU_VECTOR_BITS)
    C = logits.shape[1]
    dt = logits.dtype.type
    total = 0.0
    lanes = np.empty(LANES)
    mlanes = np.empty(LANES, dtype=logits.dtype)
    buf = np.empty(ROW_BLOCK, dtype=logits.dtype)
    ahead_stop = _prefetch_stop(C, logits.itemsize, 1)
    for r in range(r0, r1):
        y = labels[r]
        row = logits[r]
        if y == ignore_index:
            if vals is not None:
                vals[r] = 0.0
            if grad is not None:
                grad[r][:] = 0.0
            continue
        m = _row_max(row, mlanes)
        # Everything that reads the row's logits comes before the Σ exp pass, which may write
        # the exps over them (out=logits: the gradient row is the logits row).
        x_y = np.float64(row[y])
        smooth_sum = 0.0
        if smoothing != 0.0:
            # Σ_c w_c (lse − x_c) = W log s + Σ_c w_c (m − x_c): non-negative terms, no cancellation
            lanes[:] = 0.0
            for b0 in range(0, C, ROW_BLOCK):
                rb = row[b0:b0 + ROW_BLOCK]
                for j in range(rb.size):
                    buf[j] = (m - rb[j]) if class_weight is None else (m - rb[j]) * class_weight[b0 + j]
                lanes_add(lanes, buf[:rb.size])
            smooth_sum = lane_sum(lanes)
        # The next row, whichever chunk it is in (prange gives each thread a run of chunks, so
        # it is mostly this thread's next); the last row prefetches itself, already here.
        ahead = logits[min(r + 1, logits.shape[0] - 1)]
        if grad is None:
            s = _sum_exp(row, m, lanes, buf, ahead, None, ahead_stop)
        else:
            s = _sum_exp(row, m, lanes, grad[r], ahead, None, ahead_stop)
        log_s = np.log(s)
        wy = 1.0 if class_weight is None else class_weight[y]
        # lse − x_y as (m − x_y) + log s, in float64: forming lse = m + log s first rounds at
        # ulp(m), which can be all of a confident row's loss (m = 30, loss 2e-13).
        l = (1.0 - smoothing) * wy * ((np.float64(m) - x_y) + log_s)
        if smoothing != 0.0:
            l += smoothing / C * (cw_sum * log_s + smooth_sum)
        sw = 1.0 if row_weight is None else row_weight[r]
        l = l * sw
        total += l
        if vals is not None:
            vals[r] = l
        if grad is not None:
            grow = grad[r]
            gs = sw * scale
            e_y = np.float64(grow[y])  # exp(x_y − m), kept there by _sum_exp
            a = (1.0 - smoothing) * wy + smoothing / C * cw_sum
            _scale(grow, dt(a * gs / s))
            if smoothing != 0.0:
                e = smoothing / C * gs
                for c in range(C):
                    grow[c] -= dt(e if class_weight is None else e * class_weight[c])
            # The label's entry in float64, with softmax_y − 1 as (e_y − s) / s: rounded to the
            # data's dtype first, it cancels to 0 for a confident row (x = [20, 0] in float32).
            gy = (1.0 - smoothing) * wy * ((e_y - s) / s)
            if smoothing != 0.0:  # (0 times an infinite w_y would be NaN)
                gy += smoothing / C * (cw_sum * e_y / s - wy)
            grow[y] = dt(gs * gy)
    return total


@njit(**CPU_KERNEL)
def ce_probs_rows(logits, probs, class_weight, row_weight, smoothing, vals, grad, scale, r0, r1):
    """Cross-entropy of rows [r0, r1) with class-probability targets.

    Row loss: Σ_c w_c t'_c (lse − x_c) with t' = (1 − ε) t + ε/C; gradient (Σ_c w_c t'_c) softmax
    − w t'. A class whose target is exactly 0 adds nothing, even where its logit is −inf.
    """
    prefer_vector_width(CPU_VECTOR_BITS)
    C = logits.shape[1]
    dt = logits.dtype.type
    total = 0.0
    lanes = np.empty(LANES)
    lanes_w = np.empty(LANES)
    mlanes = np.empty(LANES, dtype=logits.dtype)
    buf = np.empty(ROW_BLOCK, dtype=logits.dtype)
    buf_w = np.empty(ROW_BLOCK, dtype=logits.dtype)
    ahead_stop = _prefetch_stop(C, logits.itemsize, 2)
    for r in range(r0, r1):
        row = logits[r]
        trow = probs[r]
        m = _row_max(row, mlanes)
        # Σ_c w_c t'_c (lse − x_c) = (Σ_c w_c t'_c) log s + Σ_c w_c t'_c (m − x_c): non-negative
        # terms, where lse − x_c rounded at ulp(m) lost a confident row's loss. Read before the
        # Σ exp pass, which may write the exps over the logits (out=logits).
        lanes[:] = 0.0
        lanes_w[:] = 0.0
        for b0 in range(0, C, ROW_BLOCK):
            rb = row[b0:b0 + ROW_BLOCK]
            tb = trow[b0:b0 + ROW_BLOCK]
            for j in range(rb.size):
                tc = (1.0 - smoothing) * tb[j] + smoothing / C
                wt = tc if class_weight is None else class_weight[b0 + j] * tc
                buf[j] = wt * (m - rb[j]) if tc != 0.0 else 0.0
                buf_w[j] = wt if tc != 0.0 else 0.0  # (an infinite w_c times 0 would be NaN)
            lanes_add(lanes, buf[:rb.size])
            lanes_add(lanes_w, buf_w[:rb.size])
        shifted = lane_sum(lanes)
        wsum = lane_sum(lanes_w)
        nxt = min(r + 1, logits.shape[0] - 1)  # the next row's logits and targets (see ce_labels_rows)
        if grad is None:
            s = _sum_exp(row, m, lanes, buf, logits[nxt], probs[nxt], ahead_stop)
        else:
            s = _sum_exp(row, m, lanes, grad[r], logits[nxt], probs[nxt], ahead_stop)
        l = wsum * np.log(s) + shifted
        sw = 1.0 if row_weight is None else row_weight[r]
        l = l * sw
        total += l
        if vals is not None:
            vals[r] = l
        if grad is not None:
            grow = grad[r]
            gs = sw * scale
            k = wsum / s
            for c in range(C):
                # (Σ w t') softmax_c − w_c t'_c in float64, rounded once: in the data's dtype a
                # confident class's softmax_c − 1 cancels to 0.
                tc = (1.0 - smoothing) * trow[c] + smoothing / C
                wt = tc if class_weight is None else (class_weight[c] * tc if tc != 0.0 else 0.0)
                grow[c] = dt(gs * (np.float64(grow[c]) * k - wt))
    return total


@njit(**CPU_KERNEL)
def multi_margin_rows(scores, labels, class_weight, row_weight, power, margin, vals, grad, scale, r0, r1):
    """Multi-class margin loss of rows [r0, r1) (PyTorch's multi_margin_loss).

    Row loss: w_y / C · Σ_{c ≠ y} max(0, margin − x_y + x_c)^p, p ∈ {1, 2}.
    """
    prefer_vector_width(CPU_VECTOR_BITS)
    C = scores.shape[1]
    total = 0.0
    lanes = np.empty(LANES)
    buf = np.empty(ROW_BLOCK)
    for r in range(r0, r1):
        y = labels[r]
        row = scores[r]
        xy = row[y]
        wy = 1.0 if class_weight is None else class_weight[y]
        sw = 1.0 if row_weight is None else row_weight[r]
        f = wy / C
        lanes[:] = 0.0
        for b0 in range(0, C, ROW_BLOCK):
            rb = row[b0:b0 + ROW_BLOCK]
            for j in range(rb.size):
                z = margin - xy + rb[j]
                hit = (z > 0.0) and (b0 + j != y)
                buf[j] = (z if power == 1 else z * z) if hit else 0.0
            lanes_add(lanes, buf[:rb.size])
        l = lane_sum(lanes) * f * sw
        if grad is not None:
            # d/dx_c = p·z^(p−1)·f for each violating c ≠ y; d/dx_y = −Σ of those.
            grow = grad[r]
            gs = f * sw * scale
            lanes[:] = 0.0
            for b0 in range(0, C, ROW_BLOCK):
                rb = row[b0:b0 + ROW_BLOCK]
                gb = grow[b0:b0 + ROW_BLOCK]
                for j in range(rb.size):
                    z = margin - xy + rb[j]
                    hit = (z > 0.0) and (b0 + j != y)
                    gb[j] = (1.0 if power == 1 else 2.0 * z) * gs if hit else 0.0
                lanes_add(lanes, gb)
            grow[y] = -lane_sum(lanes)
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
