"""Regression losses: the math of each (value and derivative in the prediction), and its object.

d = pred − target throughout. Every function here is plain scalar Python (arithmetic and
``math.*``) that fastloss compiles into CPU and GPU kernels; comparisons are written so that a
NaN input gives a NaN result (a NaN fails every ``<``/``>`` test, so it must land on a branch that
carries it) and no ``min``/``max`` hides it.
"""
import math

from .._loss import Option, elementwise_loss

_LOG2 = 0.6931471805599453


def sign(d):
    """1, −1, or 0 at d = 0; NaN stays NaN."""
    return 1.0 if d > 0.0 else (-1.0 if d < 0.0 else d * 0.0)


# -- mse ------------------------------------------------------------------------------------------
def mse_value(p, t):
    d = p - t
    return d * d


def mse_deriv(p, t):
    return 2.0 * (p - t)


mse = elementwise_loss(mse_value, mse_deriv, name="mse", doc=r"""Mean squared error.

    l(p, t) = (p − t)²,   dl/dp = 2 (p − t)

pred, target: arrays of the same shape (any shape). Reference: torch.nn.functional.mse_loss.

>>> import numpy as np, fastloss as fl
>>> fl.mse(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
np.float64(2.0)
""")


# -- mae ------------------------------------------------------------------------------------------
def mae_value(p, t):
    return abs(p - t)


def mae_deriv(p, t):
    return sign(p - t)


mae = elementwise_loss(mae_value, mae_deriv, name="mae", doc=r"""Mean absolute error (L1).

    l(p, t) = |p − t|,   dl/dp = sign(p − t), 0 at p = t

pred, target: arrays of the same shape. Reference: torch.nn.functional.l1_loss.

>>> import numpy as np, fastloss as fl
>>> fl.mae(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
np.float64(1.0)
""")


# -- huber ----------------------------------------------------------------------------------------
def huber_value(p, t, delta):
    a = abs(p - t)
    return 0.5 * a * a if a <= delta else delta * (a - 0.5 * delta)


def huber_deriv(p, t, delta):
    d = p - t
    return -delta if d < -delta else (delta if d > delta else d)


huber = elementwise_loss(huber_value, huber_deriv, name="huber", params={
    "delta": Option("delta", 1.0, lambda v: v > 0, "> 0", array=True)}, doc=r"""Huber loss.

    l = ½d²              if |d| ≤ δ
        δ (|d| − ½δ)     otherwise,        dl/dp = clip(d, −δ, δ)

pred, target: arrays of the same shape. Option ``delta`` (> 0, default 1.0).
Reference: torch.nn.functional.huber_loss.

>>> import numpy as np, fastloss as fl
>>> fl.huber(np.array([0.5, 3.0]), np.zeros(2), reduction="none")
array([0.125, 2.5  ])
""")


# -- smooth_l1 ------------------------------------------------------------------------------------
def smooth_l1_value(p, t, beta):
    a = abs(p - t)
    return 0.5 * a * a / beta if a < beta else a - 0.5 * beta


def smooth_l1_deriv(p, t, beta):
    d = p - t
    return d / beta if abs(d) < beta else sign(d)


smooth_l1 = elementwise_loss(smooth_l1_value, smooth_l1_deriv, name="smooth_l1", params={
    "beta": Option("beta", 1.0, lambda v: v >= 0, ">= 0", array=True)}, doc=r"""Smooth L1 loss.

    l = ½d²/β          if |d| < β
        |d| − ½β       otherwise         (β = 0 is the L1 loss)

pred, target: arrays of the same shape. Option ``beta`` (≥ 0, default 1.0).
Reference: torch.nn.functional.smooth_l1_loss.

>>> import numpy as np, fastloss as fl
>>> fl.smooth_l1(np.array([0.5, 3.0]), np.zeros(2), reduction="none")
array([0.125, 2.5  ])
""")


# -- log_cosh -------------------------------------------------------------------------------------
# Both functions start from m = e^|d| − 1 (expm1: exact to the last bit for small |d|, where the
# textbook |d| + log1p(e^(−2|d|)) − log 2 cancels to nothing: at d = 1e-4 it returned 0 in float32
# instead of 5e-9). Beyond |d| = 40, e^(−2|d|) is below every float's precision next to |d|, so
# the closed forms take over there and m never overflows.
_LOG_COSH_BIG = 40.0


def log_cosh_value(p, t):
    # log cosh a = log1p(cosh a − 1) and cosh a − 1 = m² / (2(1 + m)): no cancellation anywhere.
    a = abs(p - t)
    m = math.expm1(a)
    return math.log1p(0.5 * m * (m / (1.0 + m))) if a <= _LOG_COSH_BIG else a - _LOG2


def log_cosh_deriv(p, t):
    # tanh a = (e^2a − 1) / (e^2a + 1) with e^2a − 1 = m (m + 2); the sign of d outside.
    d = p - t
    m = math.expm1(abs(d))
    q = m * (m + 2.0)
    g = q / (q + 2.0) if abs(d) <= _LOG_COSH_BIG else 1.0
    return g if d >= 0.0 else (-g if d < 0.0 else d)


log_cosh = elementwise_loss(log_cosh_value, log_cosh_deriv, name="log_cosh", doc=r"""Log-cosh loss.

    l = log cosh(p − t),   dl/dp = tanh(p − t)

Computed from m = expm1(|d|) as log1p(m² / (2(1 + m))), and as |d| − log 2 beyond |d| = 40: finite
for every finite d and accurate to a few ulp relative for every d, however small.
pred, target: arrays of the same shape. Reference: optax.losses.log_cosh.

>>> import numpy as np, fastloss as fl
>>> round(float(fl.log_cosh(np.array([1.0]), np.array([0.0]))), 6)
0.433781
""")


# -- quantile -------------------------------------------------------------------------------------
def quantile_value(p, t, q):
    r = t - p
    return q * r if r >= 0.0 else (q - 1.0) * r


def quantile_deriv(p, t, q):
    r = t - p
    return -q if r > 0.0 else ((1.0 - q) if r < 0.0 else r * 0.0)


quantile = elementwise_loss(quantile_value, quantile_deriv, name="quantile", params={
    "q": Option("q", 0.5, lambda v: (v > 0) & (v < 1), "in (0, 1)", array=True)}, doc=r"""Quantile (pinball) loss.

    l = max(q (t − p), (q − 1)(t − p)),   dl/dp = −q if t > p, 1 − q if t < p, 0 at t = p

pred, target: arrays of the same shape. Option ``q`` in (0, 1), default 0.5 (half the MAE).
Reference: sklearn.metrics.mean_pinball_loss(alpha=q).

>>> import numpy as np, fastloss as fl
>>> fl.quantile(np.array([0.0, 0.0]), np.array([1.0, -1.0]), q=0.9, reduction="none")
array([0.9, 0.1])
""")


# -- poisson_nll ----------------------------------------------------------------------------------
def poisson_nll_value(p, t, log_input, full, eps):
    if log_input:
        l = math.exp(p) - t * p
    else:
        l = p - t * math.log(p + eps)
    if full and t > 1.0:
        # Stirling's approximation of log(t!), added where t > 1 (as PyTorch).
        l += t * math.log(t) - t + 0.5 * math.log(2.0 * math.pi * t)
    return l


def poisson_nll_deriv(p, t, log_input, full, eps):
    if log_input:
        return math.exp(p) - t
    return 1.0 - t / (p + eps)


poisson_nll = elementwise_loss(poisson_nll_value, poisson_nll_deriv, name="poisson_nll", params={
    "log_input": Option("log_input", True, kind=bool),
    "full": Option("full", False, kind=bool),
    "eps": Option("eps", 1e-8, lambda v: v >= 0, ">= 0")}, doc=r"""Poisson negative log-likelihood.

    log_input=True:   l = e^p − t·p,               dl/dp = e^p − t
    log_input=False:  l = p − t·log(p + eps),      dl/dp = 1 − t / (p + eps)
    full=True adds Stirling's term t·log t − t + ½ log(2πt) where t > 1.

pred (log-rate or rate), target (counts): arrays of the same shape.
Reference: torch.nn.functional.poisson_nll_loss.

>>> import numpy as np, fastloss as fl
>>> fl.poisson_nll(np.array([0.0]), np.array([2.0]))
np.float64(1.0)
""")
