"""Regression losses: the math of each (value and derivative in the prediction), and its object.

d = pred − target throughout. Every function here is plain scalar Python (arithmetic and
``math.*``) that fastloss compiles into CPU and GPU kernels; comparisons are written so that a
NaN input gives a NaN result (a NaN fails every ``<``/``>`` test, so it must land on a branch that
carries it) and no ``min``/``max`` hides it.
"""
import math

from .._loss import Option, elementwise_loss, float32_variant, fused_multiply_add, log1p_sum_form


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
    # beta = 1 (the default) gets a loop of its own, where the divisions by beta fold away: without
    # the vdivps per 8 elements the value loop takes a third less time on AVX2 (Zen 1).
    "beta": Option("beta", 1.0, lambda v: v >= 0, ">= 0", array=True, fast=(1.0,))}, doc=r"""Smooth L1 loss.

    l = ½d²/β          if |d| < β
        |d| − ½β       otherwise         (β = 0 is the L1 loss)

pred, target: arrays of the same shape. Option ``beta`` (≥ 0, default 1.0).
Reference: torch.nn.functional.smooth_l1_loss.

>>> import numpy as np, fastloss as fl
>>> fl.smooth_l1(np.array([0.5, 3.0]), np.zeros(2), reduction="none")
array([0.125, 2.5  ])
""")


# -- log_cosh -------------------------------------------------------------------------------------
# The textbook |d| − log 2 + log1p(e^(−2|d|)) cancels for small |d| (at d = 1e-4 it returns 0 in
# float32 instead of 5e-9), so for small |d| both functions are polynomials in d², which keep
# full relative accuracy down to the smallest d; beyond, the closed forms lose at most a bit.
# (≤ 2.1 ulp against mpmath in float32 and float64.) A polynomial and one exp instead of expm1,
# log1p and three divisions: the float32 CPU value loop is 1.27 times faster.
_LOG_COSH_SMALL = 0.75
# tanh's closed form loses less: e^(−2a) > 1/2 below a = 0.347, where 1 − e^(−2a) is exact.
_TANH_SMALL = 0.35
# ln 2 = _LN2_HI + _LN2_LO, _LN2_HI to 16 bits, so that |d| − _LN2_HI is exact near |d| = 0.75.
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06


@fused_multiply_add
def _log_cosh_series_f32(z):
    """_log_cosh_series for float32 kernels: degree 5, relative error < 5e-9 (0.08 ulp)."""
    s = -0.00042875489976488277
    s = s * z + 0.002012770472773342
    s = s * z - 0.006697991380997719
    s = s * z + 0.022216070524128866
    s = s * z - 0.08333304086041572
    return s * z + 0.4999999977210858


@fused_multiply_add
def _tanh_series_f32(z):
    """_tanh_series for float32 kernels: degree 4, relative error < 5e-10 (0.01 ulp)."""
    s = 0.019360076896855462
    s = s * z - 0.053706044766904444
    s = s * z + 0.1333219916279773
    s = s * z - 0.33333316054709206
    return s * z + 0.9999999995770514


# Float32 kernels copy the shorter polynomials above: they bound the float32 loop's work (one
# core in cache, the value loop is 1.33 times faster with them, value_and_grad 1.35 times; at
# 2**24 on 2 cores 1.2 times both).
@float32_variant(_log_cosh_series_f32)
@fused_multiply_add
def _log_cosh_series(z):
    """log cosh √z / z for 0 ≤ z ≤ 0.75² (relative error < 1e-17; see _fit_log_cosh_series)."""
    s = 1.7127783853542107e-07
    s = s * z - 1.0876644574987467e-06
    s = s * z + 3.953129661345421e-06
    s = s * z - 1.1702688541860679e-05
    s = s * z + 3.2680433951088854e-05
    s = s * z - 9.096278469355413e-05
    s = s * z + 0.00025657552875439795
    s = s * z - 0.0007386023217467788
    s = s * z + 0.0021869488014117883
    s = s * z - 0.006746031743484887
    s = s * z + 0.022222222222157476
    s = s * z - 0.08333333333333269
    return s * z + 0.5


@float32_variant(_tanh_series_f32)
@fused_multiply_add
def _tanh_series(z):
    """tanh √z / √z for 0 ≤ z ≤ 0.35² (relative error < 1e-18; see _fit_log_cosh_series)."""
    s = -0.0001873991719867236
    s = s * z + 0.0005771823955084554
    s = s * z - 0.0014540256714451175
    s = s * z + 0.003591972619859149
    s = s * z - 0.008863227223723994
    s = s * z + 0.021869488265123537
    s = s * z - 0.053968253963164736
    s = s * z + 0.13333333333328473
    s = s * z - 0.33333333333333315
    return s * z + 1.0


@fused_multiply_add
def _log1p_small_f32(e):
    """_log1p_small for float32 kernels: e·S(e), S of degree 5, relative error < 5e-9 (0.08 ulp)."""
    s = -0.09779574694527866
    s = s * e + 0.1846047415934534
    s = s * e - 0.24831366010837821
    s = s * e + 0.33324762258084734
    s = s * e - 0.49999838307446365
    return e * (s * e + 0.9999999950020356)


# Float32 kernels: log_cosh's e = e^(−2a) is at most e^(−1.5) where its big branch is taken, so a
# polynomial of degree 5 serves there, where the softplus that log1p(exp(.)) becomes covers all of
# [0, 1] with degree 9.
@float32_variant(_log1p_small_f32)
def _log1p_small(e):
    """log(1 + e) for 0 ≤ e ≤ e^(−1.5) (the value is never used for larger e)."""
    return math.log1p(e)


def _fit_log_cosh_series():
    """The coefficients of the five polynomials above, lowest order first, as float64 (needs
    mpmath): Chebyshev fits in 60-digit arithmetic on an interval widened by 1e-4, the recipe
    of kernels/vmath.py. tests/test_elementwise.py checks that they reproduce the code."""
    import mpmath as mp

    from ..kernels.vmath import chebyshev_fit

    def log_cosh_over_z(z):
        return mp.log(mp.cosh(mp.sqrt(z))) / z if z else mp.mpf(1) / 2

    def tanh_over_root(z):
        return mp.tanh(mp.sqrt(z)) / mp.sqrt(z) if z else mp.mpf(1)

    def log1p_over_e(e):
        return mp.log1p(e) / e if e else mp.mpf(1)

    with mp.workdps(60):
        widen = mp.mpf("1.0001")
        fits = {name: tuple(float(c) for c in chebyshev_fit(f, mp.mpf(0), mp.mpf(a) ** 2 * widen, degree))
                for name, f, a, degree in (("_log_cosh_series", log_cosh_over_z, "0.75", 12),
                                           ("_tanh_series", tanh_over_root, "0.35", 9),
                                           ("_log_cosh_series_f32", log_cosh_over_z, "0.75", 5),
                                           ("_tanh_series_f32", tanh_over_root, "0.35", 4))}
        # e·S(e): the polynomial in e has no constant term
        s = chebyshev_fit(log1p_over_e, mp.mpf(0), mp.exp(-mp.mpf("1.5")) * widen, 5)
        fits["_log1p_small_f32"] = (0.0,) + tuple(float(c) for c in s)
        return fits


def log_cosh_form(p, t):
    """log_cosh_value as (rest, e), the value being rest + log1p(e) (log1p_sum_form): its small
    polynomial and e = 0 for |d| <= 0.75, else |d| − log 2 and e = e^(−2|d|), the same e."""
    a = abs(p - t)
    small = a * a * _log_cosh_series(a * a)
    e = math.exp(-abs(2.0 * a))
    rest = small if a <= _LOG_COSH_SMALL else ((a - _LN2_HI) - _LN2_LO)
    return rest, (0.0 if a <= _LOG_COSH_SMALL else e)


@log1p_sum_form(log_cosh_form)
def log_cosh_value(p, t):
    a = abs(p - t)
    small = a * a * _log_cosh_series(a * a)
    # log cosh a = a − log 2 + log1p(e^(−2a)); e^(−2a) underflows to 0 for large a, no overflow.
    # Written e^(−|2a|), the same expression as in log_cosh_deriv, so that value_and_grad
    # computes the exponential once.
    e = math.exp(-abs(2.0 * a))
    big = ((a - _LN2_HI) - _LN2_LO) + _log1p_small(e)
    return small if a <= _LOG_COSH_SMALL else big


def log_cosh_deriv(p, t):
    # tanh a = (1 − e^(−2a)) / (1 + e^(−2a)); the sign of d outside (NaN stays NaN).
    d = p - t
    a = abs(d)
    e = math.exp(-abs(2.0 * a))  # e^(−2a), spelt as in log_cosh_value (see there)
    g = a * _tanh_series(a * a) if a <= _TANH_SMALL else (1.0 - e) / (1.0 + e)
    return g if d >= 0.0 else (-g if d < 0.0 else d)


log_cosh = elementwise_loss(log_cosh_value, log_cosh_deriv, name="log_cosh", doc=r"""Log-cosh loss.

    l = log cosh(p − t),   dl/dp = tanh(p − t)

Computed as a polynomial in d² for |d| ≤ 0.75 and as |d| − log 2 + log1p(e^(−2|d|)) beyond: finite
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
