"""CUDA kernels of the row losses (cross_entropy, multi_margin): a group of GS threads per row.

The row formulas are those of kernels/cpu_rows.py (see the docstrings there); the layout is the
GPU's. A group of ``GS`` threads handles one row, ``BLOCK // GS`` rows per block at a time, and
blocks stride over the rows:

* ``GS = 1``      a thread per row, for small C (no communication at all);
* ``GS = 32``     a warp per row, for mid-sized C (warp shuffles);
* ``GS = BLOCK``  a block per row, for large C (block reductions).

``GS`` is a constant of the generated module (one module per group size, compute dtype, block
size and reduction path), so the compiler folds the choice away. Cross-entropy reads each row
twice whatever C is: a first pass keeps a running max and a running sum of exponentials (online
softmax, one read), the lanes combine their (max, sum) pairs, and the second pass writes the
gradient (12 bytes per float32 element in all). Label smoothing and probability targets also
need Σ w_c (lse − x_c) = W log s + Σ w_c (m − x_c): the last sum is kept against the running max
in the same read (``shifted``), non-negative terms as on the CPU. multi_margin needs one pass.

When C % 4 == 0 and the pointers are aligned (the host's ``vec``), cross_entropy reads each row
as 4-element vectors (16 bytes for float32), ``_config.CUDA_ROW_VECTORS`` of them per thread in
flight, with one rescale of the running sum per step; its gradient pass walks each thread's
vectors from last to first (the logits read last in pass 1 are the likeliest still in L2) with
"last use" loads and streaming stores (``_config.CUDA_ROW_CACHE_HINTS``), so that the gradient
does not push out of L2 the logits other rows will read again. Block-per-row kernels use
``_config.CUDA_ROW_BLOCK`` threads (a launch bound keeps them at 64 registers).

Rows handled by a group may be written in place (``out=logits``): every element is read and
then written by the same thread, and the label's logit reaches the other lanes through a
reduction, never through memory.

Class labels are checked by ``labels_kernel`` (kernels/cuda_helpers.py), which also computes
cross_entropy's "mean" denominator; the row kernels give a row with a label out of range NaN
(value and gradient), never an out-of-bounds read.
"""
from . import codegen, cuda_helpers

_BODY = """\
@DEVICE_JIT
def online1(m, s, v):
    # online softmax: the running max m and sum s of exp(x - m) after one more value
    if v > m:
        s = s * math.exp(m - v) + 1.0
        m = v
    elif v != NEG_INF:
        s += math.exp(v - m)
    return m, s


@DEVICE_JIT
def online4(m, s, v0, v1, v2, v3):
    # ... after four more values: at most one rescale
    a = v0 if v0 > v1 else v1
    b = v2 if v2 > v3 else v3
    a = a if a > b else b
    if a > m:
        s = s * math.exp(m - a)
        m = a
    if m != NEG_INF:
        s += ((float64(math.exp(v0 - m)) + float64(math.exp(v1 - m)))
              + (float64(math.exp(v2 - m)) + float64(math.exp(v3 - m))))
    return m, s


@DEVICE_JIT
def shifted(d, wr, m_old, m_new):
    # The smoothing sum d = Σ w_c (m − x_c) is kept relative to the running max m (non-negative
    # terms: W m − Σ w_c x_c cancels when the logits are large and close); when m grows, each
    # term so far grows by w_c (m_new − m_old). wr = Σ w_c of those terms (0 while m = −inf).
    if m_new > m_old and wr != 0.0:
        d += wr * (float64(m_new) - float64(m_old))
    return d


@DEVICE_JIT
def add_shifted(d, wr, w, m, v):
    # one more term w (m − v) of the smoothing sum, v ≤ m; a −inf logit's term is w·inf (NaN for
    # w = 0, as on the CPU) whatever m becomes, and stays out of wr
    if v == NEG_INF:
        return d + w * math.inf, wr
    return d + w * (float64(m) - float64(v)), wr + w


@DEVICE_JIT
def add_class(d, wr, cw, c, m, v, has_cw):
    # the term of class c, weighted by its class weight (1 without)
    w = 1.0
    if has_cw:
        w = float64(cw[c])
    return add_shifted(d, wr, w, m, v)


@DEVICE_JIT
def add4_class(d, wr, cw, c, step, m, v0, v1, v2, v3, has_cw):
    # four terms, classes c, c + step, c + 2 step, c + 3 step
    d, wr = add_class(d, wr, cw, c, m, v0, has_cw)
    d, wr = add_class(d, wr, cw, c + step, m, v1, has_cw)
    d, wr = add_class(d, wr, cw, c + 2 * step, m, v2, has_cw)
    return add_class(d, wr, cw, c + 3 * step, m, v3, has_cw)


@DEVICE_JIT
def ce_grad(xv, wv, a, b, mc, inv):
    # a softmax_c - b w_c, in the compute dtype
    return a * (math.exp(xv - mc) * inv) - b * wv


@KERNEL_JIT
def ce_labels(x, labels, cw, cwsum, sw, ignore, eps, R, C, vec, vals, grad, rmode, gscale, den_host, den, den_mul,
              partials, fparts, result, fres):
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    tid = cuda.threadIdx.x
    lane = tid % GS
    rpb = BLOCK // GS
    has_cw = cw.shape[0] != 0
    has_sw = sw.shape[0] != 0
    has_v = vals.shape[0] != 0
    has_g = grad.shape[0] != 0
    W = float64(C)
    if cwsum.shape[0] != 0:
        W = cwsum[0]
    scale = grad_scale(rmode, gscale, den, den_mul)
    epsc = eps / C
    # the gradient reads the class weights only for the smoothing term b w_c (b = 0 without
    # smoothing, where 0 times an infinite weight would make it NaN)
    g_cw = has_cw and eps != 0.0
    # vec: rows are read (and the gradient written) as 4-element vectors, nv of them per row,
    # lane l taking vectors l, l + GS, ...; the host sets it when C % 4 == 0 and the pointers
    # are aligned. Elements from 4 nv on (all of them without vec) go one at a time.
    nv = C // 4 if vec != 0 else 0
    acc = 0.0
    base = cuda.blockIdx.x * rpb
    while base < R:
        r = base + tid // GS
        y = ignore
        if r < R:
            y = int64(labels[r])
        skip = r >= R or y == ignore
        bad = (not skip) and (y < 0 or y >= C)
        live = (not skip) and (not bad)
        ro = r * C
        # pass 1: running max m and sum s of exp(x - m); the label's logit; with smoothing the
        # sum d of w_c (m - x_c) (wr: the weight of its terms)
        m = NEG_INF
        s = 0.0
        d = 0.0
        wr = 0.0
        xy = 0.0
        if live:
            if GS == BLOCK or y % GS == lane:
                # a block reads it in every thread (its barriers order this read before any write
                # of the row, out=logits); a warp or a thread through its owning lane
                xy = float64(CT(x[r, y]))
            k = lane
{P1_VEC}
            c = 4 * nv + lane
            while c + 3 * GS < C:  # four loads in flight per thread
                v0 = CT(x[r, c])
                v1 = CT(x[r, c + GS])
                v2 = CT(x[r, c + 2 * GS])
                v3 = CT(x[r, c + 3 * GS])
                m0 = m
                m, s = online4(m, s, v0, v1, v2, v3)
                if eps != 0.0:
                    d = shifted(d, wr, m0, m)
                    d, wr = add4_class(d, wr, cw, c, GS, m, v0, v1, v2, v3, has_cw)
                c += 4 * GS
            while c < C:
                v = CT(x[r, c])
                m0 = m
                m, s = online1(m, s, v)
                if eps != 0.0:
                    d = shifted(d, wr, m0, m)
                    d, wr = add_class(d, wr, cw, c, m, v, has_cw)
                c += GS
        mx = CT(group_max(float64(m), sh))
        if m != NEG_INF:
            s = s * float64(math.exp(m - mx))
        s = group_sum(s, sh)
        if GS != BLOCK:
            xy = group_sum(xy, sh)
        if eps != 0.0:
            d = group_sum(shifted(d, wr, m, mx), sh)  # each lane's terms relative to the row's max
        l = 0.0
        wy = 1.0
        swr = 1.0
        if live:
            ls = math.log(s)
            if has_cw:
                wy = float64(cw[y])
            if has_sw:
                swr = float64(sw[r])
            # (m - x_y) + log s: forming lse = m + log s first rounds at ulp(m), which can be all
            # of a confident row's loss
            l = (1.0 - eps) * wy * ((float64(mx) - xy) + ls)
            if eps != 0.0:
                l += epsc * (W * ls + d)
            l = l * swr
        # pass 2: the gradient, (a softmax_c - b w_c) minus the label's term
        if has_g and r < R:
            if live:
                gs = swr * scale
                # (W is C without smoothing; the smoothing terms only where eps != 0, since
                # 0 times an infinite weight is NaN)
                a = CT(((1.0 - eps) * wy + epsc * W) * gs)
                b = CT(epsc * gs if eps != 0.0 else 0.0)
                # the label's entry in float64, softmax_y - 1 as (e_y - s) / s: in the compute
                # dtype it cancels to 0 for a confident row
                ey = math.exp(xy - float64(mx))
                gy = (1.0 - eps) * wy * ((ey - s) / s)
                if eps != 0.0:
                    gy += epsc * (W * ey / s - wy)
                gy = CT(gs * gy)
                mc = mx
                inv = CT(1.0 / s)
{P2_VEC}
                c = 4 * nv + lane
                while c + 3 * GS < C:  # four loads in flight, then four stores
                    x0 = CT(x[r, c])
                    x1 = CT(x[r, c + GS])
                    x2 = CT(x[r, c + 2 * GS])
                    x3 = CT(x[r, c + 3 * GS])
                    w0 = w1 = w2 = w3 = CT(1.0)
                    if g_cw:
                        w0 = CT(cw[c])
                        w1 = CT(cw[c + GS])
                        w2 = CT(cw[c + 2 * GS])
                        w3 = CT(cw[c + 3 * GS])
                    g0 = ce_grad(x0, w0, a, b, mc, inv)
                    g1 = ce_grad(x1, w1, a, b, mc, inv)
                    g2 = ce_grad(x2, w2, a, b, mc, inv)
                    g3 = ce_grad(x3, w3, a, b, mc, inv)
                    if c == y:
                        g0 = gy
                    elif c + GS == y:
                        g1 = gy
                    elif c + 2 * GS == y:
                        g2 = gy
                    elif c + 3 * GS == y:
                        g3 = gy
                    grad[r, c] = g0
                    grad[r, c + GS] = g1
                    grad[r, c + 2 * GS] = g2
                    grad[r, c + 3 * GS] = g3
                    c += 4 * GS
                while c < C:
                    wc = CT(1.0)
                    if g_cw:
                        wc = CT(cw[c])
                    g = ce_grad(CT(x[r, c]), wc, a, b, mc, inv)
                    if c == y:
                        g = gy
                    grad[r, c] = g
                    c += GS
            else:
                fill = CT(0.0) if skip else CT(math.nan)
                for c in range(lane, C, GS):
                    grad[r, c] = fill
        if lane == 0 and r < R:
            if bad:
                l = math.nan
            if has_v:
                vals[r] = l
            acc += l
        base += cuda.gridDim.x * rpb
    store_block(acc, 0, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)


@KERNEL_JIT
def ce_probs(x, probs, cw, sw, eps, R, C, vals, grad, rmode, gscale, den_host, den, den_mul,
             partials, fparts, result, fres):
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    tid = cuda.threadIdx.x
    lane = tid % GS
    rpb = BLOCK // GS
    has_cw = cw.shape[0] != 0
    has_sw = sw.shape[0] != 0
    has_v = vals.shape[0] != 0
    has_g = grad.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    epsc = eps / C
    acc = 0.0
    base = cuda.blockIdx.x * rpb
    while base < R:
        r = base + tid // GS
        live = r < R
        # pass 1: online softmax; A = sum w_c t'_c and D = sum w_c t'_c (m - x_c) over t'_c != 0
        # (wr: the weight of D's terms)
        m = NEG_INF
        s = 0.0
        sa = 0.0
        d = 0.0
        wr = 0.0
        if live:
            for c in range(lane, C, GS):
                v = CT(x[r, c])
                if v > m:
                    s = s * math.exp(m - v) + 1.0
                    d = shifted(d, wr, m, v)
                    m = v
                elif v != NEG_INF:
                    s += math.exp(v - m)
                tc = (1.0 - eps) * float64(probs[r, c]) + epsc
                if tc != 0.0:
                    wt = tc
                    if has_cw:
                        wt = float64(cw[c]) * tc
                    sa += wt
                    d, wr = add_shifted(d, wr, wt, m, v)
        mx = group_max(float64(m), sh)
        if m != NEG_INF:
            s = s * math.exp(float64(m) - mx)
        s = group_sum(s, sh)
        sa = group_sum(sa, sh)
        d = group_sum(shifted(d, wr, m, mx), sh)
        swr = 1.0
        l = 0.0
        if live:
            if has_sw:
                swr = float64(sw[r])
            # sum w t' (lse - x) = A log s + D, non-negative terms
            l = (sa * math.log(s) + d) * swr
        if has_g and live:
            gs = swr * scale
            k = sa / s
            mc = CT(mx)
            for c in range(lane, C, GS):
                # (sum w t') softmax_c - w_c t'_c in float64, rounded once: in the compute dtype
                # a confident class's softmax_c - 1 cancels to 0
                tc = (1.0 - eps) * float64(probs[r, c]) + epsc
                wc = 1.0
                if has_cw:
                    wc = float64(cw[c])
                grad[r, c] = CT(gs * (float64(math.exp(CT(x[r, c]) - mc)) * k - (wc * tc if tc != 0.0 else 0.0)))
        if lane == 0 and live:
            if has_v:
                vals[r] = l
            acc += l
        base += cuda.gridDim.x * rpb
    store_block(acc, 0, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)


@KERNEL_JIT
def multi_margin(x, labels, cw, sw, power, margin, R, C, vals, grad, rmode, gscale, den_host, den, den_mul,
                 partials, fparts, result, fres):
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    tid = cuda.threadIdx.x
    lane = tid % GS
    rpb = BLOCK // GS
    has_cw = cw.shape[0] != 0
    has_sw = sw.shape[0] != 0
    has_v = vals.shape[0] != 0
    has_g = grad.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    acc = 0.0
    base = cuda.blockIdx.x * rpb
    while base < R:
        r = base + tid // GS
        y = int64(0)
        if r < R:
            y = int64(labels[r])
        bad = r < R and (y < 0 or y >= C)
        live = r < R and not bad
        # the label's score, read by the lane that owns it and shared by a reduction
        xy = 0.0
        if live and y % GS == lane:
            xy = float64(x[r, y])
        xy = group_sum(xy, sh)
        wy = 1.0
        swr = 1.0
        if live:
            if has_cw:
                wy = float64(cw[y])
            if has_sw:
                swr = float64(sw[r])
        f = wy / C
        gs = f * swr * scale
        gsc = CT(gs)
        l = 0.0
        gy = 0.0
        if live:
            for c in range(lane, C, GS):
                # in float64, as on the CPU: whether a class violates the margin is decided as a
                # float64 reference would (margin - x_y + x_c can round to 0 in float32)
                z = margin - xy + float64(x[r, c])
                hit = z > 0.0 and c != y
                if hit:
                    if power == 1:
                        l += z
                    else:
                        l += z * z
                if has_g and c != y:
                    g = CT(0.0)
                    if hit:
                        if power == 1:
                            g = gsc
                        else:
                            g = CT(2.0 * z * gs)
                    grad[r, c] = g
                    gy -= float64(g)
        l = group_sum(l, sh)
        if has_g:
            gy = group_sum(gy, sh)
        if lane == 0 and r < R:
            if bad:
                l = math.nan
                if has_g:
                    for c in range(C):
                        grad[r, c] = math.nan
            else:
                l = l * f * swr
                if has_g:
                    grad[r, y] = gy
            if has_v:
                vals[r] = l
            acc += l
        base += cuda.gridDim.x * rpb
    store_block(acc, 0, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)
"""


def _tree(terms):
    """A balanced sum of ``terms`` (a fixed order: the same bits every run)."""
    terms = list(terms)
    while len(terms) > 1:
        nxt = [f"({terms[i]} + {terms[i + 1]})" for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


def _p1_vec(uv, ind):
    """Pass 1 over the row's vectors: ``uv`` vectors (4 uv values) loaded per thread before any is
    used, one max over them, at most one rescale, their exponentials summed in the compute dtype
    and added to the float64 running sum (and with smoothing their terms w_c (m - x_c)); then the
    thread's last vectors one at a time."""
    def group(nvec, step_expr):
        n = 4 * nvec
        out = []
        for u in range(nvec):
            off = f"k + {u} * GS" if u else "k"
            out.append(f"q{u}0, q{u}1, q{u}2, q{u}3 = ld4(x, ro + 4 * ({off}))")
        vals = [f"q{u}{e}" for u in range(nvec) for e in range(4)]
        out += [f"{v} = CT({v})" for v in vals]
        # their max, as a tree of temporaries
        level, t = vals, 0
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                out.append(f"t{t} = {level[i]} if {level[i]} > {level[i + 1]} else {level[i + 1]}")
                nxt.append(f"t{t}")
                t += 1
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        out += [f"if {level[0]} > m:",
                f"    s = s * float64(math.exp(m - {level[0]}))",
                f"    d = shifted(d, wr, m, {level[0]})",
                f"    m = {level[0]}",
                "if m != NEG_INF:",
                "    s += float64(" + _tree([f"math.exp({v} - m)" for v in vals]) + ")",
                "if eps != 0.0:"]
        for u in range(nvec):
            qs = ", ".join(f"q{u}{e}" for e in range(4))
            out.append(f"    d, wr = add4_class(d, wr, cw, 4 * ({f'k + {u} * GS' if u else 'k'}), 1, m, {qs}, has_cw)")
        out.append(f"k += {step_expr}")
        return out
    pad = " " * ind
    lines = [f"while k + {uv - 1} * GS < nv:  # {uv} vectors ({4 * uv} values) in flight per thread"]
    lines += ["    " + ln for ln in group(uv, f"{uv} * GS")]
    lines += ["while k < nv:"]
    lines += ["    " + ln for ln in group(1, "GS")]
    return "\n".join(pad + ln for ln in lines)


def _p2_vec(uv, ind, hints):
    """Pass 2 over the row's vectors, from the thread's last vector down to its first: the
    vectors read last in pass 1 are the likeliest to be still in L2. ``uv`` vectors loaded, then
    computed, then stored; with ``hints`` the loads are "last use" and the stores "streaming"."""
    ld, st = ("ld4_lu", "st4_cs") if hints else ("ld4", "st4")

    def group(nvec, step_expr):
        out = []
        for u in range(nvec):
            off = f"kk - {u} * GS" if u else "kk"
            out.append(f"e{u} = ro + 4 * ({off})")
        for u in range(nvec):
            out.append(f"q{u}0, q{u}1, q{u}2, q{u}3 = {ld}(x, e{u})")
        for u in range(nvec):
            for e in range(4):
                out.append(f"w{u}{e} = CT(1.0)")
        out.append("if g_cw:")
        for u in range(nvec):
            for e in range(4):
                out.append(f"    w{u}{e} = CT(cw[e{u} - ro + {e}])")
        for u in range(nvec):
            for e in range(4):
                out.append(f"g{u}{e} = ce_grad(CT(q{u}{e}), w{u}{e}, a, b, mc, inv)")
        for u in range(nvec):
            out += [f"d = y - (e{u} - ro)",
                    "if d >= 0 and d < 4:",
                    "    if d == 0:",
                    f"        g{u}0 = gy",
                    "    elif d == 1:",
                    f"        g{u}1 = gy",
                    "    elif d == 2:",
                    f"        g{u}2 = gy",
                    "    else:",
                    f"        g{u}3 = gy"]
        for u in range(nvec):
            out.append(f"{st}(grad, e{u}, g{u}0, g{u}1, g{u}2, g{u}3)")
        out.append(f"kk -= {step_expr}")
        return out
    pad = " " * ind
    lines = ["kk = lane + ((nv - 1 - lane) // GS) * GS  # this thread's last vector (< 0: none)",
             f"while kk >= {uv - 1} * GS:"]
    lines += ["    " + ln for ln in group(uv, f"{uv} * GS")]
    lines += ["while kk >= 0:"]
    lines += ["    " + ln for ln in group(1, "GS")]
    return "\n".join(pad + ln for ln in lines)


def build(ct, group, block=None):
    """Generate (once) and import the row kernels for compute dtype ``ct``, ``group`` threads per
    row (1, 32 or the block size) and ``block`` threads per block (default CUDA_BLOCK)."""
    from .. import _config
    uv = int(_config.CUDA_ROW_VECTORS)
    hints = bool(_config.CUDA_ROW_CACHE_HINTS)
    if uv < 1:
        raise ValueError(f"fastloss._config.CUDA_ROW_VECTORS must be >= 1, got {uv}")
    if ct == "float64":  # as many bytes in flight in half the values (and registers)
        uv = max(1, uv // 2)
    min_blocks = None
    if block is not None and group == block:  # a block per row: registers for full occupancy
        regs = int(_config.CUDA_ROW_REGS) * (2 if ct == "float64" else 1)
        min_blocks = max(1, 65536 // (regs * int(block)))
    header = cuda_helpers.header(ct=ct, group=group, block=block, min_blocks=min_blocks)
    body = _BODY.replace("{P1_VEC}", _p1_vec(uv, 12)).replace("{P2_VEC}", _p2_vec(uv, 16, hints))
    return codegen.load_module(f"cuda_rows_{ct}_g{group}_b{block}_v{uv}{'h' if hints else ''}", header,
                               cuda_helpers.reductions() + "\n\n" + body)
