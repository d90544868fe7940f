"""The Python-level stubs of kernels/vmath.py's functions, importable without Numba.

In plain Python each falls back to NumPy; inside ``@njit`` code the overloads that vmath.py
registers on these same objects are called instead. They live apart from vmath.py so that a
loss's math can name one (bce's 0/1-target form calls ``vlog_nonneg``) without ``import
fastloss`` importing Numba. The generated kernel modules import them from the module their
``_fastloss_jit_import`` names (kernels/codegen.py), vmath.py, whose import registers the
overloads.
"""
import math

import numpy as np


def _py_fallback(ufunc, x):
    with np.errstate(all="ignore"):
        return ufunc(x)


def vexp(x):
    """``e**x``; vectorisable inside ``@njit`` loops (NumPy fallback in Python)."""
    return _py_fallback(np.exp, x)


def vexpm1(x):
    """``e**x - 1`` accurate near 0; vectorisable inside ``@njit`` loops."""
    return _py_fallback(np.expm1, x)


def vexp_neg_abs(x):
    """``e**-|x|``, bit for bit ``vexp(-abs(x))`` in ``@njit`` code, one instruction shorter
    there (the code generator writes ``math.exp(-abs(x))`` as this call)."""
    return _py_fallback(lambda v: np.exp(-np.abs(v)), x)


def vlog(x):
    """Natural logarithm; vectorisable inside ``@njit`` loops."""
    return _py_fallback(np.log, x)


def vlog1p(x):
    """``log(1 + x)`` accurate near 0; vectorisable inside ``@njit`` loops."""
    return _py_fallback(np.log1p, x)


def vsoftplus(x):
    """``log(1 + e**x)`` without overflow; vectorisable inside ``@njit`` loops."""
    return _py_fallback(lambda v: np.logaddexp(0.0, v), x)


# vlog_nonneg(0) in the kernels, by float type (index: is it float32): k ln 2 for the k that
# vmath's _split_sqrt2 finds in the bits of 0 after the subnormal pre-scaling.
_LOG_OF_ZERO = (-1087 * math.log(2), -159 * math.log(2))


def vlog_nonneg(x):
    """``vlog(x)`` for finite x > 0, bit for bit, without the handling of special inputs
    (0, negative, infinite, NaN), which is about a fifth of a float32 log's work. At x = +0 it
    gives a finite number below the log of the smallest subnormal (about -159 ln 2 in float32,
    -1087 ln 2 in float64) instead of -inf; for a negative (-0 included), infinite or NaN x the result is
    meaningless (finite or NaN). Only for callers that select such inputs away themselves, as
    bce's 0/1-target form does (losses/binary.py: bce_value01). CPU kernels only: it is no
    ``math.*`` replacement, and the CUDA kernels never call it."""
    with np.errstate(all="ignore"):
        x = np.asarray(x)
        zero = x.dtype.type(_LOG_OF_ZERO[x.dtype == np.float32]) if x.dtype.kind == "f" else _LOG_OF_ZERO[0]
        return np.where(x == 0, zero, np.log(x))[()]


def vfma(a, b, c):
    """``a * b + c`` rounded once (a fused multiply-add). In CPU kernels one FMA instruction; the
    code generator calls it for the ``a * b + c`` of helpers marked ``fastloss.fused_multiply_add``.
    In plain Python exact (through fractions) and rounded once to float64."""
    from fractions import Fraction

    if not all(math.isfinite(v) for v in (a, b, c)):
        return float(a) * float(b) + float(c)
    return float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# Generated kernel modules (kernels/codegen.py) import functions carrying this marker, from the
# module it names, instead of copying their source: the stubs only work through the overloads
# registered there.
for _stub in (vexp, vexp_neg_abs, vexpm1, vlog, vlog1p, vsoftplus, vlog_nonneg, vfma):
    _stub._fastloss_jit_import = "fastloss.kernels.vmath"
del _stub
