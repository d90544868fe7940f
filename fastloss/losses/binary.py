"""Binary classification losses: the math of each (value and derivative in the prediction).

``pred`` is a probability for ``bce`` and a logit (any real) for the others. Targets are
probabilities in [0, 1] for the cross-entropies and focal loss, and ±1 (or 0/1) for the hinges.
"""
import math

from .._loss import Option, binary_target_variant, elementwise_loss, fused_multiply_add, log1p_sum_form
from ..kernels.vmath_stubs import vlog_nonneg


def softplus(y):
    """log(1 + e^y) as max(y, 0) + log(1 + e^(−|y|)), which never overflows (softplus(y) and
    softplus(−y) share their second term: LLVM computes it once where both are needed)."""
    return (y if y > 0.0 else 0.0) + math.log1p(math.exp(-abs(y)))


def sigmoid(x):
    """1 / (1 + e^(−x)) from e^(−|x|), which never overflows."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)


def sigmoid_pair(x):
    """(σ(x), σ(−x)) with one division: 1/(1 + e) and e times it, e = e^(−|x|). The product rounds
    once more than e/(1 + e) would (within about an ulp), but a division is the costliest vector
    operation there is (the focal loss's gradient, which needs both, was bound by two of them).
    Where only one sigmoid is needed, ``sigmoid`` is cheaper by that multiply (bce_with_logits'
    0/1-target gradient, whose general form therefore keeps two ``sigmoid`` calls too: the two
    forms must give the same bits)."""
    e = math.exp(-abs(x))
    r = 1.0 / (1.0 + e)
    s = e * r
    return (r if x >= 0.0 else s), (s if x >= 0.0 else r)


def bce_logits(x, t, pos_weight):
    """w·t·softplus(−x) + (1 − t)·softplus(x): two non-negative terms, so no cancellation (the
    textbook (1 − t)x + softplus(−x) loses everything at x = −40, t = 0). A term whose weight is
    exactly zero is skipped, so an infinite logit with a matching label costs 0, not 0·∞ = NaN."""
    a = (1.0 - t) * softplus(x) if t != 1.0 else 0.0
    b = pos_weight * t * softplus(-x) if t != 0.0 else 0.0
    return a + b


def bce_logits01_form(x, t, pos_weight):
    """bce_logits01 at pos_weight = 1 as (rest, e), the value being rest + log1p(e): softplus(z) =
    max(z, 0) + log1p(e^(−|z|)) for the z = ±x that t picks (log1p_sum_form; the sums of 0/1
    targets then take one logarithm per 64 elements of a lane, not one per element)."""
    z = -x if t == 1.0 else x
    return (z if z > 0.0 else 0.0), math.exp(-abs(z))


@log1p_sum_form(bce_logits01_form, when={"pos_weight": 1.0})
def bce_logits01(x, t, pos_weight):
    """bce_logits for t = 0 or 1: the one term that t keeps, w·softplus(−x) or softplus(x), by
    the same operations, so the same number bit for bit (the + 0.0 is bce_logits's sum with the
    skipped term: it makes a −0 from a negative w a +0)."""
    return (pos_weight if t == 1.0 else 1.0) * softplus(-x if t == 1.0 else x) + 0.0


# -- bce ------------------------------------------------------------------------------------------
@fused_multiply_add
def with_sum_error(log_u, d, e):
    """log(u + e) from log u, for u = 1 − d in [1/2, 1] and e the rounding error of the
    subtraction that gave u (|e| ≤ half an ulp of u): log u + e/u, to first order, which is all
    such an e has. 1/u is 1 + d + d², within d³/u (an eighth of 1/u at worst, of a correction below
    an ulp of the result): no division, which held bce's loop to the vector divider's pace (one
    core, in cache, float32: the value 0.54 -> 0.52 ns per element). Outside [1/2, 1] e is 0 (u is
    then exact), and e times the finite factor is 0."""
    return log_u + e * (1.0 + d * (1.0 + d))


def log1m(p):
    """log(1 − p) for p ≤ 1, within about 1.5 ulp (log1p(−p)'s accuracy, which log of 1 − p
    rounded would lose for small p): u = 1 − p rounded, whose error (1 − u) − p is exact
    because |p| ≤ 1 (Fast2Sum), and is 0 unless p < 1/2. Written so, not as log1p(−p), because
    bce's 0/1-target form below needs log p and log(1 − p) to be one function of one argument."""
    u = 1.0 - p
    d = 1.0 - u
    return with_sum_error(math.log(u), d, d - p)


def bce_value01(p, t):
    # bce_value for t = 0 or 1, with one logarithm: the same operations on the term it keeps
    # (log p is with_sum_error(log p, 1 − p, 0)), so the same number, NaN for p outside [0, 1]
    # included. The log is vmath's without its special inputs (vlog_nonneg), the same bits for
    # q > 0: the −100 clamp and the range check do their work, as its result at q = 0 (about −110
    # in float32, −753 in float64) clamps to −100 as −inf does, and a q from a p outside [0, 1]
    # (or NaN) gives NaN whatever the log made of it. (+ 0.0 makes p = −0 a +0, a zero to the log.)
    q = (p + 0.0) if t == 1.0 else 1.0 - p
    d = 1.0 - q
    e = 0.0 if t == 1.0 else d - p
    l = with_sum_error(vlog_nonneg(q), d, e)  # log1m's sum, its log without special inputs
    l = -100.0 if l < -100.0 else l
    return -l if (p >= 0.0 and p <= 1.0) else math.nan


@binary_target_variant(bce_value01)
def bce_value(p, t):
    # Logs clamped at −100 as PyTorch does, so p = 0 or 1 gives a finite loss.
    lp = math.log(p)
    lq = log1m(p)
    lp = -100.0 if lp < -100.0 else lp
    lq = -100.0 if lq < -100.0 else lq
    return -(t * lp + (1.0 - t) * lq)


def bce_deriv(p, t):
    # PyTorch's gradient: (p − t) / max(p (1 − p), 1e-12). Outside [0, 1], where the value is
    # NaN (log of a negative), p (1 − p) < 0: NaN too, not the ±(p − t)·1e12 the clamp would give.
    den = p * (1.0 - p)
    den = den if den >= 1e-12 else (1e-12 if den >= 0.0 else math.nan)
    return (p - t) / den


bce = elementwise_loss(bce_value, bce_deriv, name="bce", doc=r"""Binary cross-entropy on probabilities.

    l = −[t log p + (1 − t) log(1 − p)]   (each log clamped at −100)
    dl/dp = (p − t) / max(p (1 − p), 1e-12)   (NaN for p outside [0, 1], like the value)

pred: probabilities in [0, 1]; target: probabilities in [0, 1], same shape. Prefer
``bce_with_logits`` on logits: it is exact where p rounds to 0 or 1.
Reference: torch.nn.functional.binary_cross_entropy.

>>> import numpy as np, fastloss as fl
>>> round(float(fl.bce(np.array([0.8]), np.array([1.0]))), 6)
0.223144
""")


# -- bce_with_logits ------------------------------------------------------------------------------
@binary_target_variant(bce_logits01)
def bce_logits_value(x, t, pos_weight):
    return bce_logits(x, t, pos_weight)


def bce_logits_deriv01(x, t, pos_weight):
    # bce_logits_deriv for t = 0 or 1 with one sigmoid: for t = ±0 the w·t·σ(−x) term is a zero
    # (or NaN, for an infinite w) with the sign of w·t, so subtracting w·t gives the same bits;
    # for t = 1 the (1 − t)·σ(x) term is +0.
    s = sigmoid(-x if t == 1.0 else x)
    return (0.0 - pos_weight * s) if t == 1.0 else (s - pos_weight * t)


@binary_target_variant(bce_logits_deriv01)
def bce_logits_deriv(x, t, pos_weight):
    # (1 − t) σ(x) − w t σ(−x)   (= σ(x) − t when w = 1)
    return (1.0 - t) * sigmoid(x) - pos_weight * t * sigmoid(-x)


bce_with_logits = elementwise_loss(bce_logits_value, bce_logits_deriv, name="bce_with_logits", params={
    "pos_weight": Option("pos_weight", None, lambda v: v == v, "a number", array=True, none_as=1.0)},
    doc=r"""Binary cross-entropy on logits (sigmoid folded in, numerically stable).

    l = w t softplus(−x) + (1 − t) softplus(x),   w = pos_weight
      (= −[w t log σ(x) + (1 − t) log(1 − σ(x))], PyTorch's definition)
    dl/dx = (1 − t) σ(x) − w t σ(−x)               (= σ(x) − t when w = 1)

pred: logits; target: probabilities in [0, 1], same shape. ``pos_weight``: None (1), a number,
or an array broadcastable to pred's shape (e.g. one weight per class of the last axis).
Reference: torch.nn.functional.binary_cross_entropy_with_logits.

>>> import numpy as np, fastloss as fl
>>> round(float(fl.bce_with_logits(np.array([0.0]), np.array([1.0]))), 6)
0.693147
""")


# -- hinge and squared_hinge ----------------------------------------------------------------------
def hinge_target_flags(t):
    """Bit flags of a hinge target: 0 for +1, 2 for −1, 4 for 0, 1 for anything else (NaN too)."""
    return 0 if t == 1.0 else (2 if t == -1.0 else (4 if t == 0.0 else 1))


def hinge_flags_error(flags):
    if flags & 1:
        return "target must hold ±1 labels (or 0/1 labels), found another value"
    if flags & 2 and flags & 4:
        return "target mixes −1 and 0 labels: use ±1 or 0/1, not both"
    return None


def hinge_sign(t):
    """0/1 targets map to −1/+1; ±1 stay as they are."""
    return -1.0 if t == 0.0 else t


def hinge_value(p, t, margin):
    z = margin - hinge_sign(t) * p
    return z if (z > 0.0 or z != z) else 0.0


def hinge_deriv(p, t, margin):
    s = hinge_sign(t)
    z = margin - s * p
    return -s if z > 0.0 else (z if z != z else 0.0)


def squared_hinge_value(p, t, margin):
    z = margin - hinge_sign(t) * p
    return z * z if (z > 0.0 or z != z) else 0.0


def squared_hinge_deriv(p, t, margin):
    s = hinge_sign(t)
    z = margin - s * p
    return -2.0 * s * z if (z > 0.0 or z != z) else 0.0


_hinge_doc = r"""{title}

    l = {formula},   s = t for ±1 targets, 2t − 1 for 0/1 targets
    dl/dp = {deriv}

pred: raw scores; target: ±1 labels, or 0/1 labels (not a mix), same shape. Any other target
value is a ValueError. Option ``margin`` (default 1.0).
Reference: {ref}.

>>> import numpy as np, fastloss as fl
>>> fl.{name}(np.array([0.5, -2.0]), np.array([1, 0]), reduction="none")
array([{example}])
"""

hinge = elementwise_loss(hinge_value, hinge_deriv, name="hinge", params={
    "margin": Option("margin", 1.0, array=True)}, doc=_hinge_doc.format(
        title="Hinge loss (SVM margin loss).", formula="max(0, margin − s·p)",
        deriv="−s where margin − s·p > 0, else 0", ref="sklearn.metrics.hinge_loss",
        name="hinge", example="0.5, 0. "))
hinge.target_flags, hinge.flags_error = hinge_target_flags, hinge_flags_error

squared_hinge = elementwise_loss(squared_hinge_value, squared_hinge_deriv, name="squared_hinge", params={
    "margin": Option("margin", 1.0, array=True)}, doc=_hinge_doc.format(
        title="Squared hinge loss.", formula="max(0, margin − s·p)²",
        deriv="−2 s max(0, margin − s·p)", ref="keras.losses.squared_hinge",
        name="squared_hinge", example="0.25, 0.  "))
squared_hinge.target_flags, squared_hinge.flags_error = hinge_target_flags, hinge_flags_error


def pow_unit(u, g):
    """u**g for u in [0, 1], g ≥ 0 (u = 0 gives 0, or 1 when g = 0; NaN stays NaN).

    Through exp and log so that the CPU loop vectorises; that rounds log u first, an error of
    about |g log u| ulp in the result (20 ulp at u = 1e-5 in float32), so the common exponents
    1 and 2 (the focal loss's default γ and its derivative's γ − 1) are computed exactly."""
    if g == 2.0:
        return u * u
    if g == 1.0:
        return u
    return math.exp(g * math.log(u)) if u > 0.0 else (1.0 if g == 0.0 else 0.0 * u)


def pow_unit_less_one(u, ug, g):
    """u**(g − 1) for u > 0 from ug = u**g: ug / u (one power, not two), except at the focal
    loss's default g = 2, where it is u itself (exact, and the kernels' loop for g = 2, with g
    a constant there, does no division)."""
    return u if g == 2.0 else ug / u


# -- sigmoid_focal --------------------------------------------------------------------------------
def focal_value01(x, t, alpha, gamma):
    # focal_value for t = 0 or 1 with one sigmoid: 1 − p_t is σ(y), y = ∓x (the other sigmoid's
    # term is a zero), the cross-entropy softplus(y), α_t is α or 1 − α; the same operations on
    # what is kept, so the same number bit for bit.
    y = -x if t == 1.0 else x
    l = softplus(y) * pow_unit(sigmoid_pair(y)[0], gamma)
    if alpha >= 0.0:
        l = l * (alpha if t == 1.0 else 1.0 - alpha)
    return l


@binary_target_variant(focal_value01)
def focal_value(x, t, alpha, gamma):
    # torchvision: ce · (1 − p_t)^γ · α_t, with 1 − p_t = σ(x)(1 − t) + σ(−x) t computed from
    # both sigmoids so that it keeps its precision when it is small.
    ce = bce_logits(x, t, 1.0)
    p, q = sigmoid_pair(x)
    u = p * (1.0 - t) + q * t
    l = ce * pow_unit(u, gamma)
    if alpha >= 0.0:
        l = l * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return l


def focal_deriv01(x, t, alpha, gamma):
    # focal_deriv for t = 0 or 1, the same operations on what is kept (see focal_value01): with
    # y = ∓x, u = σ(y), v = σ(−y), (1 − t) p − t q is u or +0 − u, p q is u v, 1 − 2t is ±1.
    one = t == 1.0
    y = -x if one else x
    u, v = sigmoid_pair(y)
    ce = softplus(y)
    ug = pow_unit(u, gamma)
    g = ((0.0 - u) if one else u) * ug
    uv = u * v
    if gamma != 0.0 and u > 0.0 and uv != 0.0:
        g = g + ce * gamma * pow_unit_less_one(u, ug, gamma) * uv * (-1.0 if one else 1.0)
    if alpha >= 0.0:
        g = g * (alpha if one else 1.0 - alpha)
    return g


@binary_target_variant(focal_deriv01)
def focal_deriv(x, t, alpha, gamma):
    p, q = sigmoid_pair(x)
    ce = bce_logits(x, t, 1.0)
    u = p * (1.0 - t) + q * t
    ug = pow_unit(u, gamma)
    # p − t written as (1 − t) p − t q: at a confident x = 20, t = 1, p rounds to 1 and p − t to 0,
    # which lost a third of the gradient; q = σ(−x) keeps it.
    g = ((1.0 - t) * p - t * q) * ug
    pq = p * q
    if gamma != 0.0 and u > 0.0 and pq != 0.0:
        # d u / dx = p q (1 − 2t), and u^(γ−1) from u^γ (pow_unit_less_one). The guards keep
        # 0·∞ out where u = 0 (where u^(γ−1) may be infinite) and where p q = 0 at an infinite
        # logit (where ce may be infinite); the term's limit there is 0.
        g = g + ce * gamma * pow_unit_less_one(u, ug, gamma) * pq * (1.0 - 2.0 * t)
    if alpha >= 0.0:
        g = g * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return g


sigmoid_focal = elementwise_loss(focal_value, focal_deriv, name="sigmoid_focal", params={
    "alpha": Option("alpha", 0.25, lambda v: (v == -1) | ((v >= 0) & (v <= 1)), "in [0, 1] or −1 (off)"),
    "gamma": Option("gamma", 2.0, lambda v: v >= 0, ">= 0", fast=(2.0,))}, doc=r"""Sigmoid focal loss (Lin et al., 2017).

    p = σ(x),  p_t = p t + (1 − p)(1 − t),  α_t = α t + (1 − α)(1 − t)
    l = α_t · BCEWithLogits(x, t) · (1 − p_t)^γ          (α = −1: no α_t factor)

pred: logits; target: probabilities in [0, 1] (usually 0/1), same shape. Options ``alpha``
(default 0.25, −1 turns it off) and ``gamma`` (≥ 0, default 2.0).
Reference: torchvision.ops.sigmoid_focal_loss (its "mean" is our unweighted "mean").

>>> import numpy as np, fastloss as fl
>>> round(float(fl.sigmoid_focal(np.array([0.0]), np.array([1.0]))), 6)
0.043322
""")
