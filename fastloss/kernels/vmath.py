"""Vectorisable ``exp``/``log`` family for Numba CPU kernels.

Why this module exists
----------------------
The llvmlite wheels on PyPI are built without Intel SVML, so inside an
``@njit`` loop ``math.exp``/``math.log`` lower to one scalar libm call per
element and the loop vectoriser gives up.  Loss kernels (cross-entropy,
BCE-with-logits, softplus, log-cosh, focal, Poisson NLL) then spend most of
their time in those calls.  The functions here compute the same values with
plain arithmetic -- range reduction, a polynomial, and exponent-field bit
manipulation -- without branches, so LLVM inlines them into the caller's loop
and vectorises it (AVX2/AVX-512, NEON, ...).

Public API (scalars; float32 in -> float32 out, float64 in -> float64 out)::

    vexp(x)    e**x
    vexp_neg_abs(x)  e**-|x|, bit for bit vexp(-abs(x)) with a shorter clamp (the CPU code
                  generator writes math.exp(-abs(x)) as this call)
    vexpm1(x)  e**x - 1, accurate near 0
    vlog(x)    natural logarithm
    vlog1p(x)  log(1 + x), accurate near 0
    vsoftplus(x)  log(1 + e**x) (= log1p(exp(x)); the CPU code generator fuses that idiom)
    vlog_nonneg(x)  vlog(x) for x > 0 without the special inputs' handling (for callers that
                  select those away themselves; see its docstring)
    vfma(a, b, c)  a * b + c rounded once (the code generator's form of the a * b + c in
                  helpers marked ``fastloss.fused_multiply_add``)

Inside ``@njit`` code they dispatch on the argument type (float32 uses its own
shorter polynomials and float32 arithmetic; integers are treated as float64,
like ``math.exp``).  From plain Python they fall back to NumPy, with IEEE
semantics (``vexp(1000.0) == inf``, ``vlog(0.0) == -inf``) instead of the
exceptions ``math.exp``/``math.log`` raise.

Accuracy (see ``tests/test_vmath.py``), float32 and float64 alike: at most
~1.1 ulp for vexp, ~0.85 ulp for vlog/vlog1p (0.96 in float32: vlog checked over
every positive float32, vlog1p over 35 M), ~2 ulp for vexpm1 (float32
checked exhaustively), ~3 ulp for vsoftplus, over the whole range: IEEE results for NaN, +-inf and
+-0 (sign included), overflow to inf, gradual underflow into subnormals (same
ulp bound, counted in subnormal ulps), subnormal inputs to ``vlog``.

Design notes
------------
* Implementations are registered with ``numba.extending.overload`` and are
  compiled as separate functions that LLVM inlines into the caller (Numba
  links them into the caller's module before the final ``O3`` pipeline).  We do
  *not* use Numba's IR-level ``inline="always"``: that would re-type the body
  under the *caller's* fastmath flags, and ``reassoc`` is allowed to destroy
  the Cody-Waite reduction ``(x - k*ln2_hi) - k*ln2_lo`` and the ``1 + (...)``
  summation order the error bounds rely on.  Instead the implementations are
  compiled with explicit options (``_IMPL_OPTIONS``): LLVM fast-math flags are
  per instruction, so they survive inlining into a fastmath caller unchanged.
  Only ``contract`` is enabled (FMA formation); it never worsens any step here.
* ``error_model="numpy"`` removes Numba's division-by-zero check, which would
  otherwise put a branch (and an exception path) in the loop body.
* Special inputs (NaN, +-inf, 0, negatives for log) are handled with selects
  at the end (exp needs none: clamping its argument gives 0 and inf, and NaN
  passes through the reduction); the main path is evaluated for every lane.
* The few bit-level operations (2**k from an integer, splitting a float into
  exponent and mantissa) are ``@intrinsic``\\ s that emit plain LLVM integer/float
  instructions, all of which vectorise.  exp rounds x/ln2 to an integer k by adding
  1.5 * 2**mantissa_bits (the "shifter") and reads k off the sum's bits.  Where the
  target has AVX-512, exp's final ``p * 2**k`` is ``llvm.ldexp`` instead (one
  vscalef; without AVX-512 LLVM would turn it into libm calls): the same result
  bit for bit, about a fifth of exp's instructions fewer.
* Kernels calling these functions can be ``@njit(cache=True)``: the compiled
  code of the implementations is embedded in the caller's cached object code.
  (As with any Numba cache, editing *this* file does not invalidate caches of
  kernels in other files; clear those caches after changing it.)
* CUDA: in ``numba.cuda.jit`` code the same names map to ``math.*`` once
  ``register_cuda()`` has run (automatic if numba-cuda was imported first).
  The CPU overloads are bound to the ``cpu`` target so they never reach the
  GPU compiler.

Polynomials
-----------
Coefficients are Chebyshev-interpolation (near-minimax) fits computed with
mpmath in 60-digit arithmetic, then rounded to the target precision; run
``python -m fastloss.kernels.vmath`` to regenerate and print them.  Degrees
were chosen so the truncation error is far below half an ulp:

* exp:  ``exp(r) = 1 + r + r**2 * P(r)`` on ``|r| <= ln2/2``;
  P has degree 10 (float64) / 4 (float32).
* softplus, float32: ``log1p(e) = e * S(e)`` for ``e = exp(-|x|)`` in [0, 1], S of degree 9:
  no range reduction and no division, about a third of ``vlog1p``'s work. float64 composes
  ``vlog1p(vexp(.))``; LLVM does not inline vsoftplus into a loop there (too long), so kernels
  use it in float32 only (see ``cpu_replacements``).
* log, float64:  ``log(1+f) = 2*atanh(s)``, ``s = f/(2+f)``, ``|s| <= 3 - 2*sqrt(2)``:
  ``2*atanh(s) = 2s + s*z*Q(z)`` with ``z = s*s``; Q has degree 6.  The final summation
  follows the classic fdlibm ordering ``f - (f*f/2 - s*(f*f/2 + z*Q(z)))``, which keeps
  the large terms exact.
* log, float32:  ``log(1+f) = f + f*f*L(f)`` for ``sqrt(1/2) - 1 <= f <= sqrt(2) - 1``, L
  of degree 8: no division (the atanh form's f/(2+f), with Q of degree 3, was 0.83 ulp; this
  is 0.96, and bce's loop, which waited on the vector divider, is faster by a tenth).
"""

import math
import sys

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload, register_jitable

# The public stubs (their Python-level behaviour) live in vmath_stubs.py, which needs no Numba,
# so that a loss's math may name one at import time (bce names vlog_nonneg); the overloads
# registered at the bottom of this module are what @njit code calls.
from .vmath_stubs import vexp, vexp_neg_abs, vexpm1, vfma, vlog, vlog1p, vlog_nonneg, vsoftplus

__all__ = ["vexp", "vexp_neg_abs", "vexpm1", "vlog", "vlog1p", "vsoftplus", "vlog_nonneg", "vfma", "register_cuda"]


#: What the CPU code generator substitutes for ``math.*`` calls in a loss's scalar math.
CPU_REPLACEMENTS = {"exp": vexp, "expm1": vexpm1, "log": vlog, "log1p": vlog1p, "exp(-abs)": vexp_neg_abs}


def cpu_replacements(dtype):
    """What the CPU code generator substitutes for ``math.*`` calls in a loss's scalar math
    computed in ``dtype``. In float32, ``math.log1p(math.exp(x))`` becomes one ``vsoftplus``
    call (1.7 times faster in bce_with_logits); in float64 LLVM does not inline vsoftplus's
    longer body into the loop, which then stays scalar (6 times slower), so the two calls stay
    separate there."""
    if dtype == "float32":
        return dict(CPU_REPLACEMENTS, **{"log1p(exp)": vsoftplus})
    return CPU_REPLACEMENTS


# ---------------------------------------------------------------------------
# Polynomial coefficients (lowest order first).  See the module docstring and
# _fit_coefficients() for their origin.
# ---------------------------------------------------------------------------

# P(r) ~ (exp(r) - 1 - r) / r**2 on |r| <= ln2/2 (interval widened by 1e-4).
_EXP_P64 = (
    0.5,
    0.1666666666666667,
    0.04166666666666667,
    0.008333333333326136,
    0.0013888888888883748,
    0.00019841269874820627,
    2.4801587325547743e-05,
    2.7557255400206422e-06,
    2.75572736431103e-07,
    2.5105217004720745e-08,
    2.0914686968086876e-09,
)
_EXP_P32 = (
    0.5,
    0.16666576,
    0.041666556,
    0.008363179,
    0.0013926184,
)

# S(e) ~ log1p(e) / e on 0 <= e <= 1 (float32 vsoftplus; see the module docstring).
_LOG1P_UNIT32 = (
    1.0,
    -0.49999893,
    0.3332971,
    -0.24951616,
    0.19663274,
    -0.15269667,
    0.105436236,
    -0.05637361,
    0.019542526,
    -0.003176057,
)

# Q(z) ~ (2*atanh(s) - 2*s) / (s*z), z = s*s, on 0 <= z <= (3 - 2*sqrt(2))**2.
_LOG_Q64 = (
    0.666666666666667,
    0.39999999999899444,
    0.2857142862600327,
    0.22222211130259878,
    0.18182889455674947,
    0.15331710618210773,
    0.14616585424888623,
)
# L(f) ~ (log1p(f) - f) / f**2 on sqrt(1/2) - 1 <= f <= sqrt(2) - 1 (float32 log: see log1p_kernel).
_LOG1P_L32 = (
    -0.49999997,
    0.3333333,
    -0.2500078,
    0.20001236,
    -0.16626626,
    0.14204821,
    -0.13127731,
    0.12723036,
    -0.0767361,
)


def chebyshev_fit(func, lo, hi, degree):
    """Coefficients (lowest order first, mpmath numbers) of the Chebyshev interpolant of
    degree ``degree`` to ``func`` on [lo, hi]; call it inside ``mpmath.workdps(...)``.

    Chebyshev interpolation in high precision is within a fraction of a bit of the true
    minimax polynomial for smooth, slowly varying functions like the ones fitted here and in
    the losses (log_cosh), which is plenty given the degrees used.
    """
    import mpmath as mp

    return mp.chebyfit(func, [lo, hi], degree + 1)[::-1]  # chebyfit gives highest first


def _fit_coefficients(dps: int = 60) -> dict:
    """Recompute the polynomial coefficients above (needs ``mpmath``)."""
    import mpmath as mp

    def p_exp(r):
        if abs(r) < mp.mpf(10) ** (-dps // 2):  # series, avoids cancellation
            return mp.mpf(1) / 2 + r / 6
        return (mp.exp(r) - 1 - r) / (r * r)

    def s_log1p(e):
        return mp.log1p(e) / e if e != 0 else mp.mpf(1)

    def l_log1p(f):
        if abs(f) < mp.mpf(10) ** (-dps // 2):
            return -mp.mpf(1) / 2 + f / 3
        return (mp.log1p(f) - f) / (f * f)

    def q_log(z):
        if z < mp.mpf(10) ** (-dps // 2):
            return mp.mpf(2) / 3 + 2 * z / 5
        s = mp.sqrt(z)
        return (2 * mp.atanh(s) - 2 * s) / (s * z)

    out = {}
    with mp.workdps(dps):
        widen = mp.mpf("1.0001")  # margin for rounding in the range reduction
        r_max = mp.log(2) / 2 * widen
        z_max = (3 - 2 * mp.sqrt(2)) ** 2 * widen
        for name, func, lo, hi, coeffs64, coeffs32 in (
            ("EXP_P", p_exp, -r_max, r_max, _EXP_P64, _EXP_P32),
            ("LOG_Q", q_log, mp.mpf(0), z_max, _LOG_Q64, None),  # float32's log: _LOG1P_L32
        ):
            fit64 = chebyshev_fit(func, lo, hi, len(coeffs64) - 1)
            out[f"_{name}64"] = tuple(float(c) for c in fit64)
            if coeffs32 is not None:
                fit32 = chebyshev_fit(func, lo, hi, len(coeffs32) - 1)
                out[f"_{name}32"] = tuple(np.float32(float(c)) for c in fit32)
        out["_LOG1P_UNIT32"] = tuple(np.float32(float(c)) for c in
                                     chebyshev_fit(s_log1p, mp.mpf(0), mp.mpf(1), len(_LOG1P_UNIT32) - 1))
        out["_LOG1P_L32"] = tuple(np.float32(float(c)) for c in
                                  chebyshev_fit(l_log1p, (mp.sqrt(mp.mpf(1) / 2) - 1) * widen,
                                                (mp.sqrt(2) - 1) * widen, len(_LOG1P_L32) - 1))
    return out


# ---------------------------------------------------------------------------
# Bit-level intrinsics.  Each emits a handful of plain LLVM instructions
# (and at most a call of llvm.ldexp), so the loop vectoriser can widen them.
# ---------------------------------------------------------------------------

# float type -> (integer width, mantissa bits, exponent bias)
_LAYOUT = {types.float32: (32, 23, 127), types.float64: (64, 52, 1023)}


def _is_float(ty):
    return ty in _LAYOUT


def _pow2_from_int(builder, k, ftype, fty):
    """IR for 2.0**k, k an integer of the float's width inside the normal range."""
    width, mbits, bias = _LAYOUT[ftype]
    ity = ir.IntType(width)
    biased = builder.add(k, ir.Constant(ity, bias))
    return builder.bitcast(builder.shl(biased, ir.Constant(ity, mbits)), fty)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: one vfmadd, and it vectorises)."""
    if not (_is_float(a) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


@intrinsic
def _pow2(typingctx, kf):
    """2.0**k for an integral float k with 2**k a normal number."""
    if not _is_float(kf):
        return None

    def codegen(context, builder, sig, args):
        (k,) = args
        ftype = sig.args[0]
        width = _LAYOUT[ftype][0]
        ki = builder.fptosi(k, ir.IntType(width))
        return _pow2_from_int(builder, ki, ftype, k.type)

    return kf(kf), codegen


def _has_vector_ldexp(context):
    """Whether the target compiles a vector ``llvm.ldexp`` to one instruction (AVX-512's
    vscalefps/pd). Elsewhere LLVM scalarises it into libm calls, which would stop the loop
    vectorising. Read from the features Numba compiles for (part of its cache key)."""
    triple, _cpu, features = context.codegen().magic_tuple()
    return triple.startswith(("x86_64", "i686", "i386")) and "+avx512f" in features.split(",")


def _shifter(ftype):
    """1.5 * 2**mbits: any float t = y + SHIFTER with |y| < 2**(mbits - 1) lies where the ulp is 1,
    so it is y rounded to an integer k, plus SHIFTER, and its bit pattern minus SHIFTER's is k."""
    return 1.5 * 2.0 ** _LAYOUT[ftype][1]


@intrinsic
def _scale2k(typingctx, p, t):
    """p * 2.0**k, where t = k + SHIFTER (see ``_shifter``) for an integer k in the range exp needs.

    k is read off t's bits (an integer subtraction), not converted from a float: fewer
    instructions, and no float-to-integer conversion, whose result LLVM treats as undefined
    (poison) for a NaN. With AVX-512, ``llvm.ldexp`` (one vscalef instruction). Otherwise 2**k is
    applied as two factors 2**(k//2) and 2**(k - k//2), both normal numbers, so k may run past
    the normal exponent range in either direction: the first multiply is exact, the second
    rounds once. Either way the product is rounded once -- to a correctly scaled subnormal, to
    0, or to inf -- so both give the same result bit for bit. A NaN t gives a meaningless k,
    which only ever meets a NaN p (exp's r is NaN too): the two-factor path's factors are then
    zeros, powers of two or infinities, never NaN, so p's NaN comes out unchanged on both paths.
    """
    if not (_is_float(p) and t == p):
        return None

    def codegen(context, builder, sig, args):
        val, shifted = args
        ftype = sig.args[0]
        width = _LAYOUT[ftype][0]
        ity = ir.IntType(width)
        np_f, np_i = (np.float32, np.int32) if width == 32 else (np.float64, np.int64)
        shifter_bits = int(np.array(_shifter(ftype), dtype=np_f).view(np_i))
        ki = builder.sub(builder.bitcast(shifted, ity), ir.Constant(ity, shifter_bits))
        if _has_vector_ldexp(context):
            if width != 32:
                ki = builder.trunc(ki, ir.IntType(32))
            name = f"llvm.ldexp.{'f32' if width == 32 else 'f64'}.i32"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(val.type, [val.type, ki.type]), name)
            return builder.call(fn, [val, ki])
        k1 = builder.ashr(ki, ir.Constant(ki.type, 1))
        k2 = builder.sub(ki, k1)
        val = builder.fmul(val, _pow2_from_int(builder, k1, ftype, val.type))
        return builder.fmul(val, _pow2_from_int(builder, k2, ftype, val.type))

    return p(p, t), codegen


@intrinsic
def _split_sqrt2(typingctx, x):
    """(k, m) with x == 2**k * m and sqrt(1/2) <= m < sqrt(2); x positive normal.

    Because the bit patterns of positive floats are ordered like their values,
    subtracting the pattern of sqrt(1/2) and shifting out the mantissa gives
    k = floor(log2(x / sqrt(1/2))) directly; removing k from the exponent
    field leaves m.  Other inputs produce garbage that callers select away.
    """
    if not _is_float(x):
        return None
    ret = types.UniTuple(x, 2)

    def codegen(context, builder, sig, args):
        (val,) = args
        ftype = sig.args[0]
        width, mbits, _ = _LAYOUT[ftype]
        ity = ir.IntType(width)
        np_f, np_i = (np.float32, np.int32) if width == 32 else (np.float64, np.int64)
        offset = int(np.array(math.sqrt(0.5), dtype=np_f).view(np_i))
        bits = builder.bitcast(val, ity)
        k = builder.ashr(builder.sub(bits, ir.Constant(ity, offset)),
                         ir.Constant(ity, mbits))
        m_bits = builder.sub(bits, builder.shl(k, ir.Constant(ity, mbits)))
        m = builder.bitcast(m_bits, val.type)
        kf = builder.sitofp(k, val.type)
        return context.make_tuple(builder, sig.return_type, (kf, m))

    return ret(x), codegen


def _make_horner(coeffs):
    """Intrinsic evaluating sum(coeffs[i] * r**i) by Horner's rule."""

    @intrinsic
    def horner(typingctx, r):
        if not _is_float(r):
            return None

        def codegen(context, builder, sig, args):
            (val,) = args
            acc = ir.Constant(val.type, coeffs[-1])
            for c in coeffs[-2::-1]:
                acc = builder.fadd(builder.fmul(acc, val), ir.Constant(val.type, c))
            return acc

        return r(r), codegen

    return horner


# ---------------------------------------------------------------------------
# Implementations, generated once per float type so that every constant has
# the argument's type (a Python float constant would promote float32 math to
# float64).
# ---------------------------------------------------------------------------

# Options for compiling the implementations; explicit so that nothing is
# inherited from the calling kernel (see module docstring).
_IMPL_OPTIONS = dict(fastmath={"contract"}, error_model="numpy")


# ln2 as an unevaluated sum of two doubles (hi = nearest double to ln2).
_LN2_DD = (0.6931471805599453, 2.3190468138462996e-17)


def _split_ln2(np_float, k_bits):
    """Cody-Waite constants: ln2 ~= hi + lo where hi keeps only the leading
    (precision - k_bits) bits, so k*hi is exact for integers |k| < 2**k_bits."""
    mant = 24 if np_float is np.float32 else 53
    hi = math.ldexp(math.floor(math.ldexp(_LN2_DD[0], mant - k_bits)), k_bits - mant)
    lo = (_LN2_DD[0] - hi) + _LN2_DD[1]  # first difference is exact
    return np_float(hi), np_float(lo)


def _build(np_float):
    F = np_float
    is32 = F is np.float32
    ZERO, ONE, TWO, HALF = F(0.0), F(1.0), F(2.0), F(0.5)
    INF, NAN = F(np.inf), F(np.nan)
    NEG_INF, NEG_ONE = F(-np.inf), F(-1.0)
    LOG2E = F(1.0 / math.log(2))
    # |k| < 2**11 (float64) / 2**8 (float32) covers every reduction below.
    LN2_HI, LN2_LO = _split_ln2(F, 8 if is32 else 11)
    SHIFTER = F(_shifter(types.float32 if is32 else types.float64))

    # exp: below EXP_LO the result is 0, above EXP_HI it is inf; clamping to
    # these values keeps k in range and the final scaling produces 0 / inf.
    EXP_HI = F(89.0) if is32 else F(710.0)
    EXP_LO = F(-104.0) if is32 else F(-746.0)
    # expm1: below this the result rounds to -1; exponent cap for 2**-k
    # beyond which 1 - 2**-k rounds to 1.
    EXPM1_LO = F(-20.0) if is32 else F(-45.0)
    EXPM1_KCAP = F(40.0) if is32 else F(70.0)
    # log: subnormal inputs are pre-scaled by 2**SUB_SHIFT.
    MIN_NORMAL = F(np.finfo(F).tiny)
    SUB_SHIFT = F(32.0) if is32 else F(64.0)
    SUB_SCALE = F(2.0) ** SUB_SHIFT

    exp_poly = _make_horner(tuple(float(F(c)) for c in (_EXP_P32 if is32 else _EXP_P64)))
    log_poly = _make_horner(tuple(float(F(c)) for c in _LOG_Q64))  # float64 only (see log1p_kernel)
    log1p_unit_poly = _make_horner(tuple(float(F(c)) for c in _LOG1P_UNIT32))
    log1p_f_poly = _make_horner(tuple(float(F(c)) for c in _LOG1P_L32))

    @register_jitable(**_IMPL_OPTIONS)
    def exp_reduce(x):
        """t, k, r with x ~= k*ln2 + r, |r| <= ln2/2 (a little more), t = k + SHIFTER (for
        _scale2k), x clamped to the useful range. Each clamp is one vmaxps/vminps that passes
        NaN through: r is then NaN, so the result needs no NaN select at the end. k is rounded
        by the shifter's addition (one FMA with the multiply), not by an instruction of its
        own, and _scale2k reads it off t's bits."""
        xc = EXP_LO if x < EXP_LO else x
        xc = EXP_HI if xc > EXP_HI else xc
        t = xc * LOG2E + SHIFTER
        kf = t - SHIFTER  # exact
        # Cody-Waite: kf*LN2_HI is exact and so is the subtraction (Sterbenz).
        r = (xc - kf * LN2_HI) - kf * LN2_LO
        return t, kf, r

    @register_jitable(**_IMPL_OPTIONS)
    def exp_reduced(t, r):
        """e^x from exp_reduce's t and r: exp(r) = 1 + r (1 + r P(r)) by Horner's rule (one
        operation fewer than 1 + (r + r^2 P)), times 2**k."""
        return _scale2k(ONE + r * (ONE + r * exp_poly(r)), t)  # NaN: r and so p are NaN

    @register_jitable(**_IMPL_OPTIONS)
    def exp_neg_abs(x):
        """e^(−|x|), bit for bit vexp(−|x|), with the clamp on |x| before the negation: one
        vminps. Clamping −|x| itself costs a compare and a masked move, because LLVM turns
        (−|x| < LO) into (|x| > −LO), which is no longer the select of a max. So exp_reduce's
        steps are written here for −ac, the negation inside each (negating ac itself, LLVM
        moves the negation into the select and is back at the compare); they round alike, and
        fold into the FMAs."""
        a = abs(x)
        ac = -EXP_LO if a > -EXP_LO else a
        t = SHIFTER - ac * LOG2E
        kf = t - SHIFTER
        r = -(ac + kf * LN2_HI) - kf * LN2_LO
        return exp_reduced(t, r)

    @register_jitable(**_IMPL_OPTIONS)
    def log1p_kernel(f, kf, c):
        """log(2**k * (1 + f)) + c for sqrt(1/2) <= 1+f < sqrt(2), |c| tiny."""
        if is32:
            # log(1+f) = f + f^2 L(f): no division. The atanh form below divides once, and in
            # bce's loop, whose log is most of its work, the divider was the bottleneck (one core,
            # in cache, bce's value 0.60 -> 0.54 ns per element). f is exact and added last
            # but for k*LN2_HI, as in fdlibm's ordering.
            return kf * LN2_HI + (f + (f * f * log1p_f_poly(f) + (kf * LN2_LO + c)))
        s = f / (TWO + f)
        z = s * s
        hfsq = HALF * f * f
        # Since 2s = f - s*f and s*f = 2*hfsq - s*hfsq:
        #   log(1+f) = 2s + s*z*Q(z) = f - (hfsq - s*(hfsq + z*Q(z))).
        # Only small terms carry rounding error; the big ones (f, k*LN2_HI)
        # are added last, the summation order of fdlibm's log.
        tail = s * (hfsq + z * log_poly(z)) + (kf * LN2_LO + c)
        return kf * LN2_HI - ((hfsq - tail) - f)

    def vexp_impl(x):
        t, kf, r = exp_reduce(x)
        return exp_reduced(t, r)

    def vexp_neg_abs_impl(x):
        return exp_neg_abs(x)

    def vexpm1_impl(x):
        xc = x if x > EXPM1_LO else EXPM1_LO
        t, kf, r = exp_reduce(xc)
        em1 = r + r * r * exp_poly(r)  # exp(r) - 1
        # exp(x) - 1 = 2**k * (em1 + (1 - 2**-k)); for k = 0 this is em1 itself
        # (full relative accuracy near 0), and 1 - 2**-k is exact for small |k|.
        kc = kf if kf < EXPM1_KCAP else EXPM1_KCAP
        y = _scale2k(em1 + (ONE - _pow2(-kc)), t)
        # x == 0 keeps the sign of zero (em1 is +0 for x = -0).
        return x if (x != x) | (x == ZERO) else y

    @register_jitable(**_IMPL_OPTIONS)
    def log_nonneg(x):
        """log x for x > 0 (subnormals pre-scaled); at x = 0 the bits give k = -(bias + 1)
        - SUB_SHIFT and m = 1, so k ln 2; garbage for other x."""
        tiny = x < MIN_NORMAL
        xs = x * (SUB_SCALE if tiny else ONE)
        kf, m = _split_sqrt2(xs)
        kf = kf - (SUB_SHIFT if tiny else ZERO)
        return log1p_kernel(m - ONE, kf, ZERO)

    def vlog_nonneg_impl(x):
        return log_nonneg(x)

    def vlog_impl(x):
        y = log_nonneg(x)
        # Special inputs in three compares and three selects (a form with four compares took
        # bce's value 13% longer): +inf and NaN pass through, then x <= 0 gives -inf at 0 and NaN
        # below, NaN staying NaN.
        y = y if x < INF else x
        return y if x > ZERO else (NEG_INF if x == ZERO else NAN)

    def vlog1p_impl(x):
        u = ONE + x
        kf, m = _split_sqrt2(u)
        k0 = kf == ZERO
        # k == 0: 1+x needs no scaling, so use x itself as f (exact).  Otherwise
        # f = m - 1 is exact, and c = (x - (u - 1)) / u corrects the rounding
        # error of u = 1 + x to first order: log(1+x) = log(u) + c.
        f = x if k0 else m - ONE
        c = ZERO if k0 else (x - (u - ONE)) / u
        y = log1p_kernel(f, kf, c)
        # Special inputs as in vlog: +inf and NaN pass through, so does a zero (its sign kept),
        # then x <= -1 gives -inf at -1 and NaN below.
        y = y if x < INF else x
        y = y if x != ZERO else x
        return y if x > NEG_ONE else (NEG_INF if x == NEG_ONE else NAN)

    def vsoftplus_impl(x):
        # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), e^-|x| in [0, 1]. NaN: the max gives 0, the
        # log1p term NaN; x = +-inf: inf + 0, 0 + 0.
        e = exp_neg_abs(x)
        if is32:
            tail = e * log1p_unit_poly(e)
        else:  # kernels use vsoftplus in float32 only (see cpu_replacements)
            tail = vlog1p(e)
        return (x if x > ZERO else ZERO) + tail

    return {
        vexp: vexp_impl,
        vexp_neg_abs: vexp_neg_abs_impl,
        vexpm1: vexpm1_impl,
        vlog: vlog_impl,
        vlog1p: vlog1p_impl,
        vsoftplus: vsoftplus_impl,
        vlog_nonneg: vlog_nonneg_impl,
    }


def _register():
    impls = {
        types.float32: _build(np.float32),
        types.float64: _build(np.float64),
    }

    def make_overload(stub):
        impl32 = impls[types.float32][stub]
        impl64 = impls[types.float64][stub]

        def to_float64(x):  # integers and bools behave like math.exp etc.
            return stub(np.float64(x))

        # target="cpu": numba-cuda would otherwise try to compile these for
        # the GPU (overloads default to the "generic" target); see register_cuda.
        @overload(stub, jit_options=_IMPL_OPTIONS, target="cpu")
        def ov(x):
            if x == types.float32:
                return impl32
            if x == types.float64:
                return impl64
            if isinstance(x, (types.Integer, types.Boolean)):
                return to_float64
            return None

    for stub in (vexp, vexp_neg_abs, vexpm1, vlog, vlog1p, vsoftplus, vlog_nonneg):
        make_overload(stub)

    @overload(vfma, jit_options=_IMPL_OPTIONS, target="cpu")
    def ov_fma(a, b, c):
        args = (a, b, c)
        if all(_is_float(v) for v in args) and a == b == c:
            return lambda a, b, c: _fma(a, b, c)
        numbers = (types.Float, types.Integer, types.Boolean)
        if not all(isinstance(v, numbers) for v in args):
            return None
        if not any(isinstance(v, types.Float) for v in args):
            return lambda a, b, c: a * b + c  # integers: exact as they are, and stay integers
        # mixed types: float64, as a * b + c would be
        return lambda a, b, c: _fma(np.float64(a), np.float64(b), np.float64(c))


_register()


# ---------------------------------------------------------------------------
# CUDA: the same names in numba-cuda device code.  GPUs evaluate exp/log fast
# and accurately in libdevice and have nothing to vectorise, so there the
# functions are simply math.*.  numba-cuda keeps its own overload registry and
# is imported lazily by fastloss, hence the explicit hook.
# ---------------------------------------------------------------------------

_cuda_registered = False


def register_cuda() -> bool:
    """Make ``vexp`` & co. callable from ``numba.cuda.jit`` code (as ``math.*``).

    Idempotent and cheap; call it after importing numba-cuda (it is called at
    import of this module when ``numba.cuda`` is already imported).  Returns
    False when numba-cuda's extension API is unavailable (e.g. under the CUDA
    simulator, where device functions run as Python and use the stubs).
    """
    global _cuda_registered
    if _cuda_registered:
        return True
    try:
        from numba.cuda.extending import overload as cuda_overload
    except ImportError:
        return False

    def make_overload(stub, math_fn):
        @cuda_overload(stub, target="cuda")
        def ov(x):
            def impl(x):
                return math_fn(x)

            return impl

    for stub, math_fn in ((vexp, math.exp), (vexpm1, math.expm1),
                          (vlog, math.log), (vlog1p, math.log1p)):
        make_overload(stub, math_fn)
    _cuda_registered = True
    return True


if "numba.cuda" in sys.modules:
    register_cuda()


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    for name, values in _fit_coefficients().items():
        print(f"{name} = (")
        for v in values:
            print(f"    {str(v)},")  # shortest round-trip repr in its own precision
        print(")")
