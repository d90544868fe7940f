"""Property-based tests (Hypothesis) of every loss, on the CPU and on CUDA (Numba's simulator in CI).

Hypothesis draws the structure of a case: the loss's option values (scalars, per-element arrays,
flags), the shape (0-d, empty, 1, primes, up to 4 dimensions; a few hundred thousand elements in
the ``*_large`` tests, which take the CPU's parallel path), the dtype (float64, float32, float16 on
about one case in five), the memory layout of every input (C order, Fortran order, negative
strides, every other element, non-native byte order), the weights (none, random with a zero, all
ones), the reduction, the class axis, and a seed. The values come from ``_cases`` with that seed,
so they stay inside each loss's domain and away from its kinks (Hypothesis shrinks the structure,
not the values).

Every case is checked for:

* value and gradient against the float64 reference (``reference.py``);
* the gradient against central finite differences of the loss in float64 (float64 cases);
* ``"sum"`` = Σ ``"none"``; ``"mean"`` = ``"sum"`` / Σ w (and its gradient likewise; kl_div's
  ``"batchmean"`` too); the gradient of ``"none"`` = that of ``"sum"``;
* unit weights = no weights;
* ``value_and_grad`` = ``(__call__, .grad)``; ``out=`` receives exactly that gradient;
* inputs are never written.

On the CPU the exactness invariants (value_and_grad = (call, grad), unit weights = no weights,
out=, grad of "none" = grad of "sum") are bitwise, as the README's Guarantees say. On CUDA the
README promises bitwise identical results run to run (same device and launch configuration):
that is tested bitwise, and the other invariants within the dtype's rounding (they do not all
hold bitwise there: under the simulator a float32 "mean" gradient with unit weights can differ
by an ulp from the one without weights, the 1/Σw factor being applied in float64 in one case and
in float32 in the other).

Every run draws the same examples (``derandomize=True``, no example database), so CI is
reproducible. CPU: 150 examples per loss (10-15 s on 2 cores with a warm kernel cache). CUDA
under the simulator: 4 small examples per loss (its kernels are Python; 35-45 s); on a real GPU
10 per loss and larger ones (``FASTLOSS_TEST_CUDA_EXAMPLES`` sets the number; the first run
compiles every kernel variant it meets, about a minute per loss).
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pytest

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import reference as ref  # noqa: E402
from _cases import ELEMENTWISE, ROWS, _cast, _push_from, elementwise_data, row_data  # noqa: E402
from _checks import NUMPY, check_grad, check_value, same_bits  # noqa: E402
from conftest import CudaBackend, cuda_launches, cuda_sim, numba_cuda  # noqa: E402

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
SIM = cuda_sim()
REDUCTIONS = ("mean", "sum", "none")


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CPU_EXAMPLES = 150  # per loss (x 15 losses)
CPU_LARGE_EXAMPLES = 3  # per loss, a few hundred thousand elements each
# per loss; FASTLOSS_TEST_CUDA_EXAMPLES overrides (a GPU compiles every kernel variant it meets)
CUDA_EXAMPLES = int(os.environ.get("FASTLOSS_TEST_CUDA_EXAMPLES", 4 if SIM else 10))

# --------------------------------------------------------------------------------------------
# strategies: the structure of a case
# --------------------------------------------------------------------------------------------

PRIMES = [2, 3, 5, 7, 11, 13, 31, 97, 127, 257, 1009, 4099]
_ew_1d = st.sampled_from([0, 1] + PRIMES).map(lambda n: (n,))
_ew_nd = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)
_ew_primes = st.lists(st.sampled_from([1, 2, 3, 5, 7, 11, 13]), min_size=2, max_size=3).map(tuple)
EW_SHAPES = st.one_of(_ew_1d, _ew_nd, _ew_primes)
# float16 sums of thousands of losses could overflow float16's 65504: smaller shapes for it
EW_SHAPES_F16 = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 31, 257]).map(lambda n: (n,)), _ew_nd)
# a few hundred thousand elements: several CHUNKs (2**15), the parallel path; odd / prime sizes
EW_SHAPES_LARGE = st.sampled_from([(300007,), (547, 557), (3, 65537), (131071,), (32771,)])
# the simulator runs every CUDA thread in Python: small (but several blocks of 32 threads, and a
# grid-stride loop beyond 3 blocks x 32 threads x 4 items). With so few examples, the simplest
# ones Hypothesis starts from are not empty: sizes are listed largest first.
EW_SHAPES_CUDA = (st.one_of(st.sampled_from([389, 131, 31, 7, 1, 0]).map(lambda n: (n,)),
                            hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5), st.just(()))
                  if SIM else st.one_of(EW_SHAPES, EW_SHAPES_LARGE))

DTYPES = st.sampled_from([F64, F32, F64, F32, F16])
DTYPES_LARGE = st.sampled_from([F64, F32])

# per-input memory layouts; "swapped" (non-native byte order) is a host-only notion
LAYOUTS_CPU = ("C", "F", "neg", "strided", "swapped")
LAYOUTS_CUDA = ("C", "F", "neg", "strided")


def _pos(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


# Option values of each loss. "array" means a per-element array (pred's shape, or its last axis,
# broadcast), built from the case's seed; "full" (pos_weight) an array of pred's shape.
_margin = st.one_of(_pos(0.1, 3.0), st.just("array"))
EW_OPTS = {
    "mse": st.just({}),
    "mae": st.just({}),
    "huber": st.fixed_dictionaries({}, optional={"delta": st.one_of(_pos(0.2, 3.0), st.just("array"))}),
    "smooth_l1": st.fixed_dictionaries({}, optional={
        "beta": st.one_of(st.just(0.0), _pos(0.2, 3.0), st.just("array"))}),
    "log_cosh": st.just({}),
    "quantile": st.fixed_dictionaries({}, optional={"q": st.one_of(_pos(0.05, 0.95), st.just("array"))}),
    "poisson_nll": st.fixed_dictionaries({}, optional={
        "log_input": st.booleans(), "full": st.booleans(),
        "eps": st.one_of(st.just(0.0), _pos(1e-8, 0.1))}),
    "bce": st.just({}),
    "bce_with_logits": st.fixed_dictionaries({}, optional={
        "pos_weight": st.one_of(st.none(), _pos(0.5, 3.0), st.just("array"), st.just("full"))}),
    "hinge": st.fixed_dictionaries({}, optional={"margin": _margin, "_targets01": st.booleans()}),
    "squared_hinge": st.fixed_dictionaries({}, optional={"margin": _margin, "_targets01": st.booleans()}),
    "sigmoid_focal": st.fixed_dictionaries({}, optional={
        "alpha": st.one_of(st.just(-1.0), _pos(0.0, 1.0)),
        "gamma": st.one_of(st.just(0.0), st.just(2.0), _pos(0.0, 3.0))}),
}
assert set(EW_OPTS) == set(ELEMENTWISE)

ROW_OPTS = {
    "cross_entropy": st.fixed_dictionaries({}, optional={
        "class_weight": st.just("array"),
        "label_smoothing": st.one_of(st.just(0.0), _pos(0.0, 1.0), st.just(1.0)),
        "_probs": st.booleans(), "_ignore": st.booleans(),
        "ignore_index": st.sampled_from([-100, -1, 1, 10 ** 6])}),
    "multi_margin": st.fixed_dictionaries({}, optional={
        "p": st.sampled_from([1, 2]), "margin": _pos(0.1, 3.0), "class_weight": st.just("array")}),
    "kl_div": st.fixed_dictionaries({}, optional={"log_target": st.booleans()}),
}
assert set(ROW_OPTS) == set(ROWS)

_LEAD = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6)
ROW_C = st.sampled_from([1, 2, 3, 5, 7, 13, 31, 97])
ROW_LARGE = st.sampled_from([((20011,), 13), ((101,), 2003), ((53, 59), 97)])  # (lead, C)
# CUDA: a thread per row (C <= 32), a warp (C = 40) and, with the simulator's threshold of 64
# (conftest.SIM_LAUNCH), a block per row (C = 70); few rows when C is large
ROW_C_CUDA = st.sampled_from([5, 40, 70, 3, 1]) if SIM else st.sampled_from([5, 33, 300, 2500, 3, 1])
_LEAD_CUDA = st.one_of(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4 if SIM else 30),
                       st.sampled_from([(0,), ()]))


@dataclass
class Case:
    name: str
    shape: tuple  # pred's shape
    dtype: np.dtype
    pred: np.ndarray  # C-contiguous host arrays of the values
    target: np.ndarray
    weight: object  # None or an array
    kw: dict  # the loss's keyword options (arrays on the host)
    reduction: str
    layouts: tuple  # (pred, target, weight)
    axis: int = -1
    lead: tuple = ()
    extra: dict = field(default_factory=dict)

    @property
    def is_row(self):
        return self.name in ROWS

    @property
    def none_shape(self):
        return self.lead if self.name in ("cross_entropy", "multi_margin") else self.shape

    @property
    def weight_shape(self):
        return self.lead if self.is_row else self.shape

    def __repr__(self):  # what Hypothesis prints for a failing example
        kw = {k: (f"array{np.shape(v)}" if isinstance(v, np.ndarray) else v) for k, v in self.kw.items()}
        w = None if self.weight is None else f"{self.extra.get('weights')} {self.weight.dtype}"
        return (f"Case({self.name}, shape={self.shape}, {self.dtype}, kw={kw}, reduction={self.reduction!r}, "
                f"weight={w}, layouts={self.layouts}, seed={self.extra.get('seed')})")


def _option_array(rng, shape, lo, hi):
    """An option per element: pred's shape, or pred's last axis (broadcast along the others)."""
    sub = shape[-1:] if (len(shape) and rng.uniform() < 0.5) else shape
    return rng.uniform(lo, hi, size=sub)


_ARRAY_RANGES = {"delta": (0.2, 3.0), "beta": (0.2, 3.0), "q": (0.05, 0.95), "margin": (0.1, 3.0)}


def _smooth_l1_array_data(shape, dtype, rng, beta):
    """smooth_l1 with a per-element beta (> 0), pushed away from |d| = beta."""
    lo = 1e-2 if dtype == F16 else 1e-3
    b = np.broadcast_to(beta, shape)
    t = rng.standard_normal(shape)
    p = t + 2.0 * np.maximum(b, 0.5) * rng.standard_normal(shape)
    d = _cast(p, dtype) - _cast(t, dtype)
    p = _push_from(p, np.abs(d) - b, lo)
    return _cast(p, dtype), _cast(t, dtype)


def _weights(rng, mode, shape, wdtype):
    if mode == "none":
        return None
    if mode == "unit":
        return np.ones(shape, wdtype)
    w = rng.uniform(0.0, 2.0, size=shape)
    if w.size > 2:
        w.flat[1] = 0.0  # a zero weight
    return _cast(w, wdtype)


def _common(draw, dtype):
    return dict(seed=draw(st.integers(0, 2 ** 32 - 1)),
                weights=draw(st.sampled_from(["none", "random", "unit"])),
                wdtype=draw(st.sampled_from([dtype, F64])))


@st.composite
def ew_cases(draw, name, shapes=EW_SHAPES, shapes_f16=EW_SHAPES_F16, dtypes=DTYPES, layouts=LAYOUTS_CPU):
    dtype = draw(dtypes)
    if dtype == F16:
        shapes = shapes_f16
    shape = tuple(draw(shapes))
    opts = dict(draw(EW_OPTS[name]))
    c = _common(draw, dtype)
    reduction = draw(st.sampled_from(REDUCTIONS))
    lay = draw(st.tuples(*[st.sampled_from(layouts)] * 3))
    rng = np.random.default_rng(c["seed"])
    for k, (lo, hi) in _ARRAY_RANGES.items():
        if opts.get(k) == "array":
            opts[k] = _option_array(rng, shape, lo, hi)
    if opts.get("pos_weight") == "full":
        opts["pos_weight"] = rng.uniform(0.5, 3.0, size=shape)
    if name == "smooth_l1" and isinstance(opts.get("beta"), np.ndarray):
        pred, target = _smooth_l1_array_data(shape, dtype, rng, opts["beta"])
        kw = dict(opts)
    else:
        pred, target, kw = elementwise_data(name, shape, dtype, rng, opts)
    w = _weights(rng, c["weights"], shape, c["wdtype"])
    return Case(name, shape, dtype, pred, target, w, kw, reduction, lay, extra=c)


@st.composite
def row_cases(draw, name, leads=_LEAD, classes=ROW_C, large=None, dtypes=DTYPES, layouts=LAYOUTS_CPU,
              few_long_rows=False):
    dtype = draw(dtypes)
    if large is not None:
        lead, C = draw(large)
    else:
        lead, C = tuple(draw(leads)), draw(classes)
    if few_long_rows and C > 32:  # (simulator) a warp or a block per row: at most 2 rows
        lead = tuple(min(s, 2) for s in lead[:1])
    nd = len(lead) + 1
    axis = draw(st.integers(-nd, nd - 1))
    ax = axis % nd
    shape = lead[:ax] + (C,) + lead[ax:]
    opts = dict(draw(ROW_OPTS[name]))
    c = _common(draw, dtype)
    reds = REDUCTIONS + (("batchmean",) if name == "kl_div" else ())
    reduction = draw(st.sampled_from(reds))
    lay = draw(st.tuples(*[st.sampled_from(layouts)] * 3))
    rng = np.random.default_rng(c["seed"])
    pred, target, kw = row_data(name, shape, dtype, rng, opts, axis=axis)
    kw.pop("_ignore", None)  # (row_data leaves it with probability targets)
    kw["axis"] = axis
    w = _weights(rng, c["weights"], lead, c["wdtype"])
    return Case(name, shape, dtype, pred, target, w, kw, reduction, lay, axis=axis, lead=lead, extra=c)


# --------------------------------------------------------------------------------------------
# layouts: the same values in another memory order
# --------------------------------------------------------------------------------------------


def host_layout(a, layout):
    """A NumPy array equal to ``a`` in the given memory layout (a fresh buffer: C order too)."""
    a = np.asarray(a)
    if a.ndim == 0 or layout == "C":
        return a.copy()
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "neg":  # negative strides on every axis
        return np.flip(np.flip(a).copy())
    if layout == "strided":  # every other element of a larger buffer along the last axis
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "swapped":  # non-native byte order
        return a.astype(a.dtype.newbyteorder("S"))
    raise ValueError(layout)


def device_layout(cuda, a, layout):
    """(view, buffer, host copy of buffer): a Numba device array equal to ``a``, the contiguous
    device buffer it views and what that buffer holds. Views with negative or doubled strides are
    made on the device (``to_device`` copies whole buffers; numba-cuda cannot copy a view with
    negative strides back, so the inputs are checked through their buffers)."""
    a = np.asarray(a)
    if a.ndim == 0 or a.size == 0 or layout == "C":  # (numba-cuda cannot slice an empty array)
        host = np.array(a, order="C")
        d = cuda.to_device(host)
        return d, d, host
    if layout == "F":
        host = np.asfortranarray(a)
        d = cuda.to_device(host)
        return d, d, host
    if layout == "neg":
        host = np.flip(a).copy()
        d = cuda.to_device(host)
        return d[(slice(None, None, -1),) * a.ndim], d, host
    if layout == "strided":
        host = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        host[..., ::2] = a
        d = cuda.to_device(host)
        return d[(slice(None),) * (a.ndim - 1) + (slice(None, None, 2),)], d, host  # (no Ellipsis there)
    raise ValueError(layout)


# --------------------------------------------------------------------------------------------
# expectations
# --------------------------------------------------------------------------------------------


def reference(c, reduction, weight):
    """(value, grad) of the float64 reference."""
    kw = dict(c.kw)
    if c.name == "smooth_l1" and isinstance(kw.get("beta"), np.ndarray):
        b = np.broadcast_to(kw["beta"], c.shape).astype(np.float64)
        lh, gh = ref.huber(c.pred, c.target, delta=b, reduction="none")
        return ref._reduce_elementwise(lh / b, gh / b, reduction, weight)
    return ref.ALL[c.name](c.pred, c.target, reduction=reduction, sample_weight=weight, **kw)


def mean_denominator(c, weight, reduction):
    """What "mean" (or kl_div's "batchmean") divides "sum" by, from the README's rule."""
    if not c.is_row:
        return float(c.pred.size) if weight is None else float(np.sum(weight, dtype=np.float64))
    sw = np.ones(c.lead) if weight is None else np.asarray(weight, np.float64)
    if c.name == "kl_div":
        C = c.shape[c.axis]
        if reduction == "batchmean":
            n0 = c.shape[0]
            R = int(np.prod(c.lead))
            return float(np.sum(sw)) * n0 / R if R else float(n0)  # no rows: sum / pred.shape[0]
        return C * float(np.sum(sw))
    y = np.asarray(c.target)
    if c.name == "cross_entropy" and y.dtype.kind in "iu":
        C = c.shape[c.axis]
        cw = np.ones(C) if c.kw.get("class_weight") is None else np.asarray(c.kw["class_weight"], np.float64)
        valid = y != c.kw.get("ignore_index", -100)
        return float(np.sum(sw * np.where(valid, cw[np.where(valid, y, 0)], 0.0)))
    return float(np.sum(sw))


def grad_term_scale(c, weight, D):
    """A bound on the magnitude of the terms that a gradient element is computed from, divided by
    D (0 where there is no cancellation). cross_entropy's gradient w (A p - a) cancels where the
    label's probability is close to 1 (each term is at most w max(class_weight))."""
    if c.name != "cross_entropy":
        return 0.0
    sw = np.ones(c.lead) if weight is None else np.abs(np.asarray(weight, np.float64))
    cw = c.kw.get("class_weight")
    cwmax = 1.0 if cw is None else float(np.max(np.abs(cw), initial=0.0))
    return np.expand_dims(sw * cwmax / D, c.axis % len(c.shape))


def _eps(dtype):
    return float(np.finfo(dtype).eps)


def _tiny(dtype):
    return 2.0 * float(np.finfo(dtype).smallest_subnormal)


def _factor(dtype, cuda=False):
    """Tolerance factor (of conftest.TOL) against the float64 reference."""
    if dtype == F64:
        return 100.0 if cuda else 20.0
    return 4.0


def sums_by_products(fl, c):
    """Whether the CPU may sum c's unweighted values through a log1p_sum_form of its loss (the
    value's or its binary-target variant's, where the case's options are those it holds for):
    the sum's log1p terms then come from products per lane (fastloss._loss.log1p_sum_form), and
    round otherwise than a weighted sum of the same values, which adds each element's value."""
    value = getattr(fl.LOSSES[c.name], "value_fn", None)
    for fn in (value, getattr(value, "_fastloss_binary", None)):
        form = getattr(fn, "_fastloss_log1p_form", None)
        if form is not None:
            opts = {k: (v if c.kw.get(k) is None else c.kw[k]) for k, v in form[1].items()}
            if all(np.ndim(o) == 0 and float(o) == form[1][k] for k, o in opts.items()):
                return True
    return False


def close(a, b, rtol, atol, msg):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape, msg)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=msg)


# --------------------------------------------------------------------------------------------
# the checks of one case
# --------------------------------------------------------------------------------------------


class Runner:
    """Calls a loss on one backend: the case's layouts, results back as NumPy."""

    def __init__(self, fl, c, backend, cuda=None):
        self.loss = getattr(fl, c.name)
        self.c, self.b, self.cuda = c, backend, cuda
        self.buffers = []  # (device buffer, what it must still hold)

        def make(a, lay):
            if cuda is None:
                return host_layout(a, lay)
            view, buf, host = device_layout(cuda, a, lay)
            self.buffers.append((buf, host))
            return view

        self.P = make(c.pred, c.layouts[0])
        self.T = make(c.target, c.layouts[1])
        self.W = None if c.weight is None else make(c.weight, c.layouts[2])
        self.KW = {k: (backend.to_backend(v) if isinstance(v, np.ndarray) else v) for k, v in c.kw.items()}
        self.ones = backend.to_backend(np.ones(c.weight_shape, c.extra["wdtype"]))

    def weight(self, mode):
        return {"case": self.W, "none": None, "ones": self.ones}[mode]

    def vg(self, reduction, weight="case", **extra):
        return self.loss.value_and_grad(self.P, self.T, reduction=reduction, sample_weight=self.weight(weight),
                                        **self.KW, **extra)

    def call(self, reduction, weight="case"):
        return self.loss(self.P, self.T, reduction=reduction, sample_weight=self.weight(weight), **self.KW)

    def grad(self, reduction, weight="case", **extra):
        return self.loss.grad(self.P, self.T, reduction=reduction, sample_weight=self.weight(weight),
                              **self.KW, **extra)

    def np(self, x):
        return self.b.to_numpy(x)

    def inputs_unchanged(self):
        c = self.c
        if self.cuda is not None:
            for buf, host in self.buffers:
                assert same_bits(buf.copy_to_host(), host), "an input was modified"
            for k, v in c.kw.items():
                if isinstance(v, np.ndarray):
                    assert same_bits(self.np(self.KW[k]), v), f"{k} was modified"
            return
        assert same_bits(self.np(self.P).astype(c.pred.dtype), c.pred), "pred was modified"
        assert same_bits(np.asarray(self.np(self.T)).astype(np.asarray(c.target).dtype), c.target), \
            "target was modified"
        if c.weight is not None:
            assert same_bits(self.np(self.W).astype(c.weight.dtype), c.weight), "sample_weight was modified"
        for k, v in c.kw.items():
            if isinstance(v, np.ndarray):
                assert same_bits(self.np(self.KW[k]), v), f"{k} was modified"


def check_case(fl, c, backend=NUMPY, cuda=None):
    on_gpu = cuda is not None
    r = Runner(fl, c, backend, cuda)
    dt = c.dtype
    eps, tiny = _eps(dt), _tiny(dt)
    factor = _factor(dt, on_gpu)
    red = c.reduction

    # 1. the three entry points against the reference
    v, g = r.call(red), r.grad(red)
    vg = r.vg(red)
    assert isinstance(vg, tuple) and len(vg) == 2
    ev, eg = reference(c, red, c.weight)
    check_value(v, ev, dt, red, c.none_shape, backend=backend, factor=factor, msg=repr(c))
    check_grad(g, eg, dt, c.shape, backend=backend, factor=factor, msg=repr(c))
    check_value(vg[0], ev, dt, red, c.none_shape, backend=backend, factor=factor, msg="vg " + repr(c))
    check_grad(vg[1], eg, dt, c.shape, backend=backend, factor=factor, msg="vg " + repr(c))
    hv, hg = r.np(v), r.np(g)

    # 2. value_and_grad = (__call__, .grad): bitwise on the CPU; on the GPU the README promises
    #    bitwise equality run to run, so a second value_and_grad must repeat the first exactly
    if not on_gpu:
        assert same_bits(r.np(vg[0]), hv) and same_bits(r.np(vg[1]), hg), "value_and_grad != (call, grad)"
    else:
        vg2 = r.vg(red)
        assert same_bits(r.np(vg2[0]), r.np(vg[0])) and same_bits(r.np(vg2[1]), r.np(vg[1])), \
            "GPU results differ run to run"
        close(r.np(vg[0]), hv, 2 * eps, tiny, "vg value vs call")
        close(r.np(vg[1]), hg, 2 * eps, tiny, "vg grad vs grad")

    # 3. reductions: "sum" = Σ "none", "mean" = "sum" / Σ w, grad("none") = grad("sum")
    res = {red: (r.np(vg[0]), r.np(vg[1]))}
    for rr in ("none", "sum", "mean") + (("batchmean",) if c.name == "kl_div" else ()):
        if rr not in res:
            a, b = r.vg(rr)
            res[rr] = (r.np(a), r.np(b))
    nv, ng = res["none"]
    sv, sg = res["sum"]
    terms = np.asarray(nv, np.float64)
    scale = float(np.sum(np.abs(terms))) + abs(float(sv))
    close(sv, np.sum(terms), 0, 4 * eps * scale + tiny, f'"sum" != sum of "none" {c!r}')
    if on_gpu:
        close(ng, sg, 2 * eps, tiny, f'grad "none" != grad "sum" {c!r}')
    else:
        assert same_bits(ng, sg), f'grad "none" != grad "sum" {c!r}'
    for rr in ("mean",) + (("batchmean",) if c.name == "kl_div" else ()):
        mv, mg = res[rr]
        D = mean_denominator(c, c.weight, rr)
        if D == 0.0:
            assert np.isnan(mv), f'"{rr}" over no weight must be NaN, got {mv} {c!r}'
            assert np.all(np.asarray(mg) == 0), f'"{rr}" over no weight: the gradient must be 0 {c!r}'
            continue
        e = np.float64(sv) / D
        close(mv, e, 4 * eps, tiny, f'"{rr}" != "sum" / D (D = {D}) {c!r}')
        eg_ = np.asarray(sg, np.float64) / D
        # |mg - eg_| <= 4 eps (|eg_| + the terms it was computed from): the kernels may apply the
        # 1/D scale before a subtraction that cancels (cross_entropy)
        # multi_margin: the label's entry sums C - 1 terms, each scaled first (C roundings)
        rel = 4 * eps * (c.shape[c.axis] if c.name == "multi_margin" else 1)
        bound = rel * np.abs(eg_) + 4 * eps * grad_term_scale(c, c.weight, D) + tiny
        assert np.all((np.abs(np.asarray(mg, np.float64) - eg_) <= bound) | (np.isnan(mg) & np.isnan(eg_))), \
            f'grad "{rr}" != grad "sum" / D (D = {D}) {c!r}: max diff {np.max(np.abs(mg - eg_))}'
        assert np.asarray(mg).shape == eg_.shape

    # 4. unit weights = no weights (bitwise on the CPU, but for a sum that the unweighted kernel
    #    takes through its loss's log1p_sum_form: products per lane, which round otherwise)
    a = r.vg(red, weight="ones")
    b = r.vg(red, weight="none")
    if on_gpu:
        close(r.np(a[0]), r.np(b[0]), 2 * eps, tiny, f"unit weights value {c!r}")
        close(r.np(a[1]), r.np(b[1]), 2 * eps, tiny, f"unit weights grad {c!r}")
    elif red != "none" and sums_by_products(fl, c):
        close(a[0], b[0], 8 * eps, tiny, f"unit weights value {c!r}")
        assert same_bits(a[1], b[1]), f"unit weights grad != no weights grad {c!r}"
    else:
        assert same_bits(a[0], b[0]) and same_bits(a[1], b[1]), f"unit weights != no weights {c!r}"

    # 5. out=: the gradient lands in the caller's buffer, which is returned
    if not on_gpu:
        order = "F" if (c.extra["seed"] % 2 and len(c.shape) > 1) else "C"
        out = np.full(c.shape, np.nan, dtype=dt, order=order)
        vo, go = r.vg(red, out=out)
        assert go is out
        assert same_bits(vo, hv) and same_bits(out, hg), f"out= differs {c!r}"
    else:
        out = backend.empty_like(backend.to_backend(np.empty(c.shape, dt)))
        go = r.grad(red, out=out)
        assert go is out
        assert same_bits(r.np(out), r.np(vg[1])), f"out= differs {c!r}"

    # 6. finite differences (float64, on the CPU): the change of Σ "none" (only the perturbed
    #    element's or row's terms change, so the others cancel exactly) against grad("sum")
    if not on_gpu and dt == F64 and c.pred.size:
        check_finite_differences(r, c, sg)

    r.inputs_unchanged()


def check_finite_differences(r, c, grad_sum, k=3):
    rng = np.random.default_rng(c.extra["seed"] + 1)
    idx = rng.choice(c.pred.size, size=min(k, c.pred.size), replace=False)
    base = np.array(c.pred, dtype=np.float64, order="C")
    for i in idx:
        x = base.flat[i]
        h = 1e-6 * max(1.0, abs(x))
        pp, pm = base.copy(), base.copy()
        pp.flat[i] = x + h
        pm.flat[i] = x - h
        w = r.weight("case")
        lp = r.loss(pp, r.T, reduction="none", sample_weight=w, **r.KW)
        lm = r.loss(pm, r.T, reduction="none", sample_weight=w, **r.KW)
        fd = float(np.sum(np.asarray(lp, np.float64) - np.asarray(lm, np.float64))) / (pp.flat[i] - pm.flat[i])
        gi = float(np.asarray(grad_sum).flat[i])
        assert math.isclose(fd, gi, rel_tol=1e-5, abs_tol=1e-6), \
            f"finite difference {fd} != grad {gi} at flat index {i} {c!r}"


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ELEMENTWISE)
@_settings(CPU_EXAMPLES)
@given(data=st.data())
def test_elementwise(fl, name, data):
    check_case(fl, data.draw(ew_cases(name), label="case"))


@pytest.mark.parametrize("name", ROWS)
@_settings(CPU_EXAMPLES)
@given(data=st.data())
def test_rows(fl, name, data):
    check_case(fl, data.draw(row_cases(name), label="case"))


@pytest.mark.parametrize("name", ELEMENTWISE)
@_settings(CPU_LARGE_EXAMPLES)
@given(data=st.data())
def test_elementwise_large(fl, name, data):
    """A few hundred thousand elements: the parallel path (several CHUNKs), odd sizes."""
    check_case(fl, data.draw(ew_cases(name, shapes=EW_SHAPES_LARGE, dtypes=DTYPES_LARGE), label="case"))


@pytest.mark.parametrize("name", ROWS)
@_settings(CPU_LARGE_EXAMPLES)
@given(data=st.data())
def test_rows_large(fl, name, data):
    check_case(fl, data.draw(row_cases(name, large=ROW_LARGE, dtypes=DTYPES_LARGE), label="case"))


# --------------------------------------------------------------------------------------------
# CUDA (Numba device arrays; the simulator in CI)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda():
    return numba_cuda()


@pytest.mark.parametrize("name", ELEMENTWISE)
@_settings(CUDA_EXAMPLES)
@given(data=st.data())
def test_elementwise_cuda(fl, cuda, name, data):
    c = data.draw(ew_cases(name, shapes=EW_SHAPES_CUDA, shapes_f16=EW_SHAPES_CUDA if SIM else EW_SHAPES_F16,
                           layouts=LAYOUTS_CUDA), label="case")
    with cuda_launches():
        check_case(fl, c, CudaBackend("numba"), cuda)


@pytest.mark.parametrize("name", ROWS)
@_settings(CUDA_EXAMPLES)
@given(data=st.data())
def test_rows_cuda(fl, cuda, name, data):
    c = data.draw(row_cases(name, leads=_LEAD_CUDA, classes=ROW_C_CUDA, layouts=LAYOUTS_CUDA,
                            few_long_rows=SIM), label="case")
    with cuda_launches():
        check_case(fl, c, CudaBackend("numba"), cuda)
