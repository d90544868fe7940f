"""Accuracy, edge-case, vectorisation and caching tests for fastloss.kernels.vmath.

Accuracy is measured the way kernels use the functions: element-wise inside an
``@njit`` loop.  The reference is NumPy evaluated in higher precision (float64
for float32 inputs, long double for float64 inputs where the platform's long
double is wider than double), and the error is expressed in ulps of the
result's dtype at the reference value -- so subnormal results are measured in
subnormal ulps.  (NumPy's own float32 exp/log are themselves up to ~2.5/3.6 ulp
off, which is why float32 is not compared against NumPy float32.)
"""

import math
import os
import re
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

try:
    from fastloss.kernels import vmath
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastloss.kernels import vmath

import numba
from numba import types

from fastloss.kernels.vmath import vexp, vexpm1, vlog, vlog1p, vsoftplus

# The test kernels are compiled with these flags (fastloss's own kernels use none): vmath's
# implementations carry their own, so a caller allowed to reassociate must not change their
# results (see vmath's docstring); without flags the error bounds hold all the more.
FASTMATH = {"reassoc", "contract", "arcp"}
DTYPES = [np.float32, np.float64]

# name -> (our function, NumPy reference ufunc, max error in ulp allowed)
FUNCS = {
    "exp": (vexp, np.exp, 1.5),
    "log": (vlog, np.log, 1.5),
    "log1p": (vlog1p, np.log1p, 1.5),
    "expm1": (vexpm1, np.expm1, 2.5),
    "softplus": (vsoftplus, lambda x: np.logaddexp(x.dtype.type(0), x), 3.0),
}

_LONGDOUBLE_IS_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


@lru_cache(maxsize=None)
def _loop_kernel(func):
    @numba.njit(fastmath=FASTMATH)
    def kernel(x, out):
        for i in range(x.size):
            out[i] = func(x[i])

    return kernel


def _apply(name, x):
    out = np.empty_like(x)
    _loop_kernel(FUNCS[name][0])(x, out)
    return out


def _reference(name, x):
    """(high-precision reference, reference rounded to x.dtype, wide?)"""
    ufunc = FUNCS[name][1]
    if x.dtype == np.float32:
        hi_dtype = np.float64
    else:
        hi_dtype = np.longdouble if _LONGDOUBLE_IS_WIDER else np.float64
    with np.errstate(all="ignore"):
        ref_hi = ufunc(x.astype(hi_dtype))
        ref = ref_hi.astype(x.dtype)
    return ref_hi, ref, hi_dtype != x.dtype


def _ulp_errors(y, ref_hi, ref):
    """Error of y in ulps of its dtype at the reference; non-finite references
    (inf, NaN) and exact zeros must match exactly (sign of zero included)."""
    err = np.zeros(y.shape)
    exact = ~np.isfinite(ref) | (ref == 0)
    same = (y == ref) & (np.signbit(y) == np.signbit(ref))
    same |= np.isnan(y) & np.isnan(ref)
    err[exact & ~same] = np.inf
    fin = ~exact
    ulp = np.spacing(np.abs(ref[fin])).astype(ref_hi.dtype)
    with np.errstate(all="ignore"):
        e = np.abs(y[fin].astype(ref_hi.dtype) - ref_hi[fin]) / ulp
    err[fin] = np.where(np.isfinite(y[fin]), e, np.inf)
    return err


def _check(name, x, limit=None):
    limit = FUNCS[name][2] if limit is None else limit
    y = _apply(name, x)
    assert y.dtype == x.dtype
    ref_hi, ref, wide = _reference(name, x)
    err = _ulp_errors(y, ref_hi, ref)
    if not wide:  # reference only as good as NumPy's double; allow its error too
        limit += 1.0
    worst = int(np.argmax(err))
    assert err[worst] <= limit, (
        f"{name}({x[worst]!r}) = {y[worst]!r}, reference {ref_hi[worst]!r}: "
        f"{err[worst]:.3f} ulp > {limit}"
    )
    return float(err.max())


# ---------------------------------------------------------------------------
# Input sets
# ---------------------------------------------------------------------------

def _random_bits(rng, dtype, n):
    """Positive finite floats uniform over bit patterns: every binade, subnormals
    included, gets equal weight."""
    itype = np.int32 if dtype == np.float32 else np.int64
    max_finite = np.array(np.finfo(dtype).max, dtype=dtype).view(itype)
    return rng.integers(1, max_finite, n, dtype=itype, endpoint=True).view(dtype)


def _samples(name, dtype, n=400_000):
    rng = np.random.default_rng(20240611)
    fi = np.finfo(dtype)
    bits = _random_bits(rng, dtype, n)
    lo = float(np.log(fi.smallest_subnormal)) - 2  # exp underflows to 0 below
    hi = float(np.log(fi.max)) + 2  # and overflows above
    parts = [bits]
    if name in ("exp", "expm1", "softplus"):
        parts += [-bits, rng.uniform(lo, hi, n), rng.uniform(-2, 2, n),
                  rng.uniform(-1e-3, 1e-3, n)]
    elif name == "log":
        parts += [rng.uniform(0.5, 2.0, n), 1 + rng.uniform(-1e-4, 1e-4, n),
                  rng.uniform(0, float(fi.tiny), n)]  # subnormal inputs
    else:  # log1p
        parts += [rng.uniform(-1, 1, n), rng.uniform(-1e-4, 1e-4, n),
                  rng.uniform(-1, -0.99, n)]
    return np.concatenate([np.asarray(p).astype(dtype) for p in parts])


@np.errstate(over="ignore")
def _edges(name, dtype):
    fi = np.finfo(dtype)
    f = lambda v: np.array(v, dtype=np.float64).astype(dtype)  # noqa: E731
    tiny, sub, big = fi.tiny, fi.smallest_subnormal, fi.max
    common = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, -1.0, 0.5, 2.0,
              big, -big, tiny, -tiny, sub, -sub, fi.eps, -fi.eps, fi.epsneg]
    special = []
    if name in ("exp", "expm1", "softplus"):
        ovf, unf, unf_sub = np.log(big), np.log(tiny), np.log(sub)
        special = [ovf, unf, unf_sub, unf_sub - 0.7, 100.0, -100.0, 1000.0,
                   -1000.0, 1e30, -1e30, math.log(2) / 2, -math.log(2) / 2,
                   math.log(2), 1e-10, -1e-10, 40.0, -40.0, 20.0, -20.0]
        # k*ln2 points (reduction boundaries) over the whole exponent range
        special += list(np.arange(-1100, 1100) * math.log(2))
        special += list((np.arange(-1100, 1100) + 0.5) * math.log(2))
    elif name == "log":
        # all powers of two, normal and subnormal
        special = list(np.ldexp(np.float64(1.0), np.arange(-1074, 1024)))
        special += [math.sqrt(0.5), math.sqrt(2.0), math.e, 10.0, 1e-300, 1e300]
    elif name == "log1p":
        special = [-0.5, -0.999999, 1e-300, -1e-300, 1e-10, -1e-10,
                   math.sqrt(2) - 1, math.sqrt(0.5) - 1, 1e300, -1.5, -2.0]
    x = f(common + special)
    # neighbours of every edge value (catches off-by-one thresholds)
    x = np.concatenate([x, np.nextafter(x, dtype(np.inf)),
                        np.nextafter(x, dtype(-np.inf))])
    return x


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(FUNCS))
def test_accuracy_dense_random(name, dtype):
    _check(name, _samples(name, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(FUNCS))
def test_accuracy_edges(name, dtype):
    _check(name, _edges(name, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_special_values_exact(dtype):
    d = lambda *v: np.array(v, dtype=dtype)  # noqa: E731
    inf, nan = np.inf, np.nan
    cases = {
        "exp": (d(0.0, -0.0, inf, -inf, nan, 1e4, -1e4), d(1, 1, inf, 0, nan, inf, 0)),
        "log": (d(1.0, 0.0, -0.0, -1.0, -inf, inf, nan), d(0, -inf, -inf, nan, nan, inf, nan)),
        "log1p": (d(0.0, -0.0, -1.0, -2.0, -inf, inf, nan), d(0, -0.0, -inf, nan, nan, inf, nan)),
        "expm1": (d(0.0, -0.0, inf, -inf, nan, 1e4, -1e4), d(0, -0.0, inf, -1, nan, inf, -1)),
        "softplus": (d(inf, -inf, 1e4, -1e4, 200.0), d(inf, 0, 1e4, 0, 200.0)),  # NaN: any sign
    }
    for name, (x, expected) in cases.items():
        y = _apply(name, x)
        np.testing.assert_array_equal(y, expected, err_msg=name)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(expected), err_msg=name)


def test_subnormal_results_and_inputs():
    # exp straight through the subnormal range, densely, in both precisions
    for dtype in DTYPES:
        fi = np.finfo(dtype)
        lo, hi = np.log(float(fi.smallest_subnormal)), np.log(float(fi.tiny))
        x = np.linspace(lo - 1, hi + 1, 200_001).astype(dtype)
        _check("exp", x)
        # log of every kind of subnormal: powers of two, random bit patterns
        itype = np.int32 if dtype == np.float32 else np.int64
        tiny_bits = int(np.array(fi.tiny, dtype=dtype).view(itype))
        rng = np.random.default_rng(7)
        sub = rng.integers(1, tiny_bits, 100_000, dtype=itype).view(dtype)
        _check("log", sub)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_log_nonneg_is_log_without_its_special_inputs(dtype):
    """vmath.vlog_nonneg (bce's 0/1-target log) must give vlog's bits for every positive finite
    input, subnormals included -- a stride through the float32 bit patterns, random float64 ones
    -- and at +0 a finite number below log of the smallest subnormal (so that bce's -100 clamp
    treats it as -inf), not NaN or -inf."""
    itype = np.int32 if dtype == np.float32 else np.int64
    top = int(np.array(np.finfo(dtype).max, dtype=dtype).view(itype))
    if dtype == np.float32:
        bits = np.arange(1, top, 61, dtype=itype)
    else:
        bits = np.random.default_rng(11).integers(1, top, 4_000_000, dtype=itype)
    x = np.concatenate([bits.view(dtype), np.array([np.finfo(dtype).max, 1.0], dtype)])
    got, want, at0 = np.empty_like(x), np.empty_like(x), np.empty(4, dtype)
    _loop_kernel(vmath.vlog_nonneg)(x, got)
    _loop_kernel(vlog)(x, want)
    np.testing.assert_array_equal(got.view(itype), want.view(itype))
    _loop_kernel(vmath.vlog_nonneg)(np.zeros(4, dtype), at0)
    assert np.isfinite(at0).all() and (at0 < math.log(float(np.finfo(dtype).smallest_subnormal))).all()
    assert vmath.vlog_nonneg(dtype(0.0)) < math.log(float(np.finfo(dtype).smallest_subnormal))  # Python fallback


@numba.njit
def _exp_of_minus_abs(x):
    return vexp(-abs(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_exp_neg_abs_is_vexp_of_minus_abs(dtype):
    """vmath.vexp_neg_abs (what the CPU code generator writes for math.exp(-abs(x))) must give
    vexp(-|x|)'s bits for every input -- a stride through all float32 bit patterns, both signs,
    subnormals, infinities and NaNs included; random float64 ones -- and so the accuracy that
    test_accuracy_* prove for vexp; here also e^(-|x|) against NumPy directly."""
    itype = np.int32 if dtype == np.float32 else np.int64
    if dtype == np.float32:
        bits = np.arange(-2**31, 2**31 - 1, 211, dtype=np.int64).astype(np.int32)
    else:
        bits = np.random.default_rng(12).integers(-2**63, 2**63 - 1, 4_000_000, dtype=np.int64)
    fi = np.finfo(dtype)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fi.max, -fi.max, fi.tiny, fi.smallest_subnormal,
                      103.9, 104.0, 104.1, 745.0, 746.0, 747.0, 1e-30, 0.5], dtype)
    x = np.concatenate([bits.view(dtype), edges, -edges])
    got, want = np.empty_like(x), np.empty_like(x)
    _loop_kernel(vmath.vexp_neg_abs)(x, got)
    _loop_kernel(_exp_of_minus_abs)(x, want)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(itype), want[~nan].view(itype))
    ref = np.exp(-np.abs(x[~nan].astype(np.float64)))
    err = np.abs(got[~nan] - ref) / np.spacing(np.abs(ref.astype(dtype)))
    assert err.max() <= 2.5
    assert vmath.vexp_neg_abs(dtype(-2.0)) == np.exp(dtype(-2.0))  # Python fallback


def test_fma_rounds_once_and_keeps_types():
    """vmath.vfma (the code generator's form of fl.fused_multiply_add): a * b + c rounded once
    -- 1 + 2**-30 squared minus 1 keeps the 2**-60 that a multiply and an add lose -- with
    float32 in float32, mixed types in float64, and integers as integers."""
    @numba.njit
    def f(a, b, c):
        return vmath.vfma(a, b, c)

    x = 1.0 + 2.0**-30
    assert f(x, x, -1.0) == 2.0**-29 + 2.0**-60
    assert x * x - 1.0 == 2.0**-29
    assert vmath.vfma(x, x, -1.0) == 2.0**-29 + 2.0**-60  # Python fallback: exact too
    assert f(np.float32(3.0), np.float32(2.0), np.float32(1.0)) == 7.0
    f32, f64, i64 = types.float32, types.float64, types.int64
    f(np.float32(1.0), 2.0, 3)
    f(2, 3, 4)
    assert f(2, 3, 4) == 10
    rets = {sig.args: sig.return_type for sig in f.nopython_signatures}
    assert rets[(f32, f32, f32)] == f32
    assert rets[(f32, f64, i64)] == f64
    assert rets[(i64, i64, i64)] == i64


def test_dtype_and_types_in_njit():
    @numba.njit
    def both(a, b, i):
        return vexp(a), vlog(b), vlog1p(a), vexpm1(b), vexp(i)

    r = both(np.float32(1.0), np.float64(2.0), 1)
    # float32 in -> float32 out (computed in float32), float64 -> float64,
    # integers like math.exp (float64)
    f32, f64 = types.float32, types.float64
    assert both.nopython_signatures[0].return_type == types.Tuple((f32, f64, f32, f64, f64))
    assert r[0] == pytest.approx(math.e, rel=2**-22)
    assert r[4] == pytest.approx(math.e, rel=2**-51)


def test_python_fallback():
    assert vexp(0.0) == 1.0
    assert vexp(1000.0) == np.inf  # no OverflowError, unlike math.exp
    assert vlog(0.0) == -np.inf  # no ValueError, unlike math.log
    assert np.isnan(vlog(-1.0))
    assert vlog1p(1e-20) == 1e-20
    assert vexpm1(1e-20) == 1e-20
    assert isinstance(vexp(np.float32(1.0)), np.float32)


def test_polynomial_coefficients_reproducible():
    pytest.importorskip("mpmath")
    for name, values in vmath._fit_coefficients().items():
        dtype = np.float32 if name.endswith("32") else np.float64
        np.testing.assert_array_equal(np.array(values, dtype),
                                      np.array(getattr(vmath, name), dtype), err_msg=name)


# ---------------------------------------------------------------------------
# Vectorisation: the whole point of the module
# ---------------------------------------------------------------------------

_LIBM = re.compile(r"\b(?:exp|expf|log|logf|log1p|log1pf|expm1|expm1f)\b")
_LLVM_MATH = re.compile(r"@llvm\.(?:exp|exp2|log|log2|log10)\.")
_VECTOR_ARITH = re.compile(r"= f(?:add|sub|mul|div)[\w ]* <(\d+) x (?:float|double)>")


def _vectorisation_report(func, dtype):
    @numba.njit(fastmath=FASTMATH)
    def kernel(x, out):
        for i in range(x.size):
            out[i] = func(x[i])

    arr = types.Array(numba.from_dtype(np.dtype(dtype)), 1, "C")
    sig = (arr, arr)
    kernel.compile(sig)
    llvm, asm = kernel.inspect_llvm(sig), kernel.inspect_asm(sig)
    widths = {int(w) for w in _VECTOR_ARITH.findall(llvm)}
    return {
        "vector_width": max(widths, default=1),
        "llvm_math_calls": bool(_LLVM_MATH.search(llvm)),
        "libm_symbols": sorted(set(_LIBM.findall(asm))),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(FUNCS))
def test_loop_vectorises(name, dtype):
    if name == "softplus" and dtype == np.float64:
        pytest.skip("float64 vsoftplus is not inlined into loops; kernels use it in float32 only")
    rep = _vectorisation_report(FUNCS[name][0], dtype)
    assert rep["vector_width"] >= 2, rep
    assert not rep["llvm_math_calls"], rep
    assert not rep["libm_symbols"], rep


def test_vectorisation_check_detects_libm():
    # Control: with math.exp the loop is "vectorised" in IR (llvm.exp.v8f64) but
    # the backend scalarises it into libm calls -- the check above must notice.
    rep = _vectorisation_report(math.exp, np.float64)
    assert rep["llvm_math_calls"] or rep["libm_symbols"], rep


def test_implementation_ignores_caller_fastmath():
    """Caller's reassoc must not leak into the implementation (it may break the
    Cody-Waite reduction); LLVM flags are per instruction, so a fastmath=True
    caller must still get exact special values and the same results."""
    x = _edges("exp", np.float64)

    @numba.njit(fastmath={"reassoc", "contract", "arcp", "nsz"})
    def k(x, out):
        for i in range(x.size):
            out[i] = vexp(x[i])

    out = np.empty_like(x)
    k(x, out)
    np.testing.assert_array_equal(out, _apply("exp", x))


# ---------------------------------------------------------------------------
# Caching: kernels in generated modules use @njit(cache=True)
# ---------------------------------------------------------------------------

_CACHED_KERNEL = textwrap.dedent(
    """
    import numpy as np
    from numba import njit
    from fastloss.kernels.vmath import vexp, vlog1p

    @njit(cache=True, fastmath={"reassoc", "contract", "arcp"})
    def softplus(x, out):
        for i in range(x.size):
            out[i] = max(x[i], 0.0) + vlog1p(vexp(-abs(x[i])))

    if __name__ == "__main__":
        x = np.linspace(-30, 30, 1001)
        out = np.empty_like(x)
        softplus(x, out)
        assert np.allclose(out, np.logaddexp(0.0, x), rtol=1e-15, atol=0)
        stats = softplus.stats
        print("hits", sum(stats.cache_hits.values()),
              "misses", sum(stats.cache_misses.values()))
    """
)


def _run_script(tmp_path, name, text, **env_extra):
    """Run ``text`` as a fresh Python process (fastloss importable); its stdout words."""
    (tmp_path / name).write_text(text)
    root = Path(vmath.__file__).resolve().parents[2]
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.pop("NUMBA_DISABLE_JIT", None)
    proc = subprocess.run([sys.executable, name], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


def test_kernel_using_vmath_is_cacheable(tmp_path):
    def run():
        return _run_script(tmp_path, "gen_kernel.py", _CACHED_KERNEL,
                           NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    first, second = run(), run()
    assert first == ["hits", "0", "misses", "1"], first
    assert second == ["hits", "1", "misses", "0"], second


# ---------------------------------------------------------------------------
# CUDA device code (only where a GPU or the CUDA simulator is available)
# ---------------------------------------------------------------------------

_CUDA_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    if importlib.util.find_spec("numba.cuda") is None:
        print("skip"); sys.exit()
    import numpy as np
    from fastloss.kernels import vmath      # imported before numba-cuda, as in fastloss
    from numba import cuda
    if not cuda.is_available():
        print("skip"); sys.exit()
    assert vmath.register_cuda()

    @cuda.jit
    def k(x, a, b, c, d):
        i = cuda.grid(1)
        if i < x.size:
            a[i] = vmath.vexp(x[i]); b[i] = vmath.vlog(x[i])
            c[i] = vmath.vlog1p(x[i]); d[i] = vmath.vexpm1(x[i])

    for dt, rtol in ((np.float32, 4e-7), (np.float64, 1e-15)):
        x = np.concatenate([np.linspace(-5, 80, 4001), [0.0, -0.0, np.inf, np.nan]]).astype(dt)
        outs = [np.empty_like(x) for _ in range(4)]
        k.forall(x.size)(x, *outs)
        with np.errstate(all="ignore"):
            for out, ref in zip(outs, (np.exp, np.log, np.log1p, np.expm1)):
                assert out.dtype == dt
                np.testing.assert_allclose(out, ref(x.astype(np.float64)), rtol=rtol, atol=0)
    print("ok")
    """
)


def test_cuda_device_code(tmp_path):
    # In a subprocess so that numba-cuda is not imported into the test session.
    result = _run_script(tmp_path, "cuda_vmath.py", _CUDA_SCRIPT)
    if result == ["skip"]:
        pytest.skip("no numba-cuda GPU or simulator")
    assert result == ["ok"], result


# ---------------------------------------------------------------------------
# exp's final scaling: llvm.ldexp (AVX-512's vscalef) or two multiplies elsewhere
# ---------------------------------------------------------------------------

_TWO_FACTOR_SCRIPT = textwrap.dedent(
    """
    import glob
    import numpy as np
    from fastloss.kernels import vmath
    vmath._has_vector_ldexp = lambda context: False   # the path of CPUs without AVX-512
    from numba import njit

    @njit
    def run(x, a, b):
        for i in range(x.size):
            a[i] = vmath.vexp(x[i]); b[i] = vmath.vexpm1(x[i])

    for name in sorted(glob.glob("x_*.npy")):
        name = name[:-4]
        x = np.load(name + ".npy")
        a, b = np.empty_like(x), np.empty_like(x)
        run(x, a, b)
        np.save(name + "_exp.npy", a); np.save(name + "_expm1.npy", b)
    print("ok")
    """
)


def test_exp_scaling_paths_agree_bitwise(tmp_path):
    """Where the target has AVX-512, exp scales by 2**k with one vscalef (llvm.ldexp); elsewhere
    with two multiplies. Both round the exact product once, so they must agree bit for bit,
    subnormal and overflowing results included. The accuracy tests above check whichever path
    this machine compiles; this one runs the other (or the same, without AVX-512) in a fresh
    process and compares."""
    rng = np.random.default_rng(7)
    names = []
    for dt, it, lo, hi in ((np.float32, np.uint32, -110.0, 95.0), (np.float64, np.uint64, -760.0, 720.0)):
        bits = rng.integers(0, np.iinfo(it).max, 200_000, dtype=it, endpoint=True).view(dt)
        x = np.concatenate([bits, rng.uniform(lo, hi, 200_000).astype(dt),
                            np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=dt)])
        name = f"x_{dt.__name__}"
        np.save(tmp_path / f"{name}.npy", x)
        names.append((name, x, it))
    result = _run_script(tmp_path, "two_factor.py", _TWO_FACTOR_SCRIPT,
                         NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    assert result == ["ok"], result
    for name, x, it in names:
        for fname in ("exp", "expm1"):
            here = _apply(fname, x)
            there = np.load(tmp_path / f"{name}_{fname}.npy")
            differ = np.flatnonzero(here.view(it) != there.view(it))
            assert differ.size == 0, (fname, x.dtype, x[differ[:5]], here[differ[:5]], there[differ[:5]])
