"""CPU kernels of the elementwise losses, generated from each loss's scalar math.

For every loss the generated module holds three serial *chunk* kernels, which run one contiguous
range of elements, and three parallel *drivers*, which split the input into fixed chunks of
``_config.CHUNK`` elements and run the chunk kernels over them with ``prange``:

* ``value_chunk``  -> (Σ w·l over the range, target flags); writes w·l per element if ``vals``
* ``grad_chunk``   -> target flags; writes scale·w·dl/dp into ``grad``
* ``both_chunk``   -> both, in the same loop (one pass over memory)

``weight``, ``vals`` are ``None`` or arrays: Numba compiles a specialisation per combination and
prunes the ``is None`` branches at compile time, so the unweighted loop never touches a weight.
(It prunes a branch on ``weight is None`` where weight is None, not where it is an array: the
array's specialisation compiles such a branch too, and LLVM drops it.)
(The pruning only works on arguments that are never reassigned: hence the ``wv``/``vv`` views.)
Sums accumulate in float64 whatever the data's dtype, in a fixed order written in the source,
not chosen by the compiler: element i of a chunk is added into lane i % ``_config.LANES`` of a
float64 accumulator, each lane in order of i, and the lanes are summed at the end. No 'reassoc'
flag is needed, the value is bitwise the same from ``value_chunk`` and ``both_chunk`` and on any
CPU, and the partition into chunks depends only on the input size, so it is also the same for any
thread count, serial or parallel. Two loop shapes give that order (``_BUFFERED``, ``_DIRECT``):
losses whose math calls exp or log compute a block into a buffer first (LLVM vectorises that map
loop, but not one that also updates the lanes), arithmetic-only losses add into the lanes
directly (the buffer's extra store and load held them to about half the memory bandwidth).

Views are indexed from 0 (``pred[start:stop]``, groups ``[b0:b0 + BLOCK]``) because Numba drops
its negative-index check only for indices it can prove non-negative, and that check in a loop
stops vectorisation.

A loss whose value has a ``log1p_sum_form`` (value = l + log1p(e): bce_with_logits' softplus,
log_cosh) has two kernels more, ``value_sums_chunk`` and ``both_sums_chunk``: value_chunk's and
both_chunk's unweighted sums without per-element values, where the form's options (``when``)
have its values, which those two call. Their loop (``_BUFFERED`` with ``_PRODUCTS``) sums l into the lanes and
multiplies each lane's factors 1 + e together, with one log1p per lane every
``_config.LOG1P_PASSES`` buffers instead of one per element. Their sums are as fixed in order as
the others, the same from value and value_and_grad, but not the bits of the weighted sum with
unit weights, which adds each element's value.

A loss's value or derivative may have a binary-target variant (``binary_target_variant``: the
same numbers for targets 0 and 1, with less work, as bce's one logarithm instead of two). Loops
that use one run block by block (buffered, even for arithmetic-only math), and a block whose
targets are all 0 or 1 runs a copy of the loop that calls the variants (see _PICK_MAP: the loops
test their targets as they go, and a block of other targets that ran the variants runs again).

Options (``delta``, ``q``, ...) are passed as arguments, scalars or per-element arrays
(``param_at`` reads either), so one compiled kernel serves every option value. A loss may name
values of an option that make its math much cheaper (``Option.fast``, e.g. the focal loss's
gamma = 2): the kernel then tests the option once per chunk and runs a copy of its loop with the
option a constant (``_fast_branches``).
"""
import textwrap

from .. import _config
from . import codegen, vmath

_HEADER = """\
import math
import numpy as np
from numba import njit, prange
from fastloss._config import CPU_SCALAR, CPU_KERNEL, CPU_PARALLEL, LANES
from fastloss.kernels.cpu_helpers import (keep, lane_sum, lanes_add4, lanes_add_log1p, lanes_log1p_mul4,
                                          lanes_log1p_pass, or_bits, param_at, param_is, param_window,
                                          prefer_vector_width, prefetch_lines)
{imports}

CACHE = True
FLOAT = np.{dtype}
BITS = np.int{bits}  # an integer as wide as FLOAT (for or_bits)
# _config's settings when this module was generated (in the text, so a change builds new kernels)
BLOCK = {block}
SUM_BLOCKS = {sum_blocks}
LOG1P_PASSES = {log1p_passes}
VECTOR_BITS = {vector_bits}
PREFETCH_BYTES = {prefetch_bytes}
SCALAR_JIT = njit(**dict(CPU_SCALAR, cache=CACHE))
KERNEL_JIT = njit(**dict(CPU_KERNEL, cache=CACHE))
PARALLEL_JIT = njit(**dict(CPU_PARALLEL, cache=CACHE))
"""

# {P} is the comma-terminated list of option arguments ("opt_delta, " or "").
_BODY = """\
{scalars}


{VALUE_KERNELS}@KERNEL_JIT
def grad_chunk(pred, target, weight, grad, scale, {P}start, stop):
    prefer_vector_width(VECTOR_BITS)
    pred, target, grad = pred[start:stop], target[start:stop], grad[start:stop]
    {WINDOW}
    if weight is not None:
        wv = weight[start:stop]
    flags = np.int32(0)
{GRAD_LOOP}
    return flags


{BOTH_KERNELS}@PARALLEL_JIT
def value_par(pred, target, weight, vals, {P}sums, flags, chunk):
    n = pred.size
    for c in prange(sums.size):
        s, f = value_chunk(pred, target, weight, vals, {P}c * chunk, min(n, (c + 1) * chunk))
        sums[c] = s
        flags[c] = f


@PARALLEL_JIT
def grad_par(pred, target, weight, grad, scale, {P}flags, chunk):
    n = pred.size
    for c in prange(flags.size):
        flags[c] = grad_chunk(pred, target, weight, grad, scale, {P}c * chunk, min(n, (c + 1) * chunk))


@PARALLEL_JIT
def both_par(pred, target, weight, vals, grad, scale, {P}sums, flags, chunk):
    n = pred.size
    for c in prange(sums.size):
        s, f = both_chunk(pred, target, weight, vals, grad, scale, {P}c * chunk, min(n, (c + 1) * chunk))
        sums[c] = s
        flags[c] = f
"""


# value_chunk and both_chunk, and where the value has a log1p_sum_form the kernels of its sums,
# value_sums_chunk and both_sums_chunk: one template (the kernels that sum) for the four. The
# sums kernels take the same arguments, are only ever called with weight = vals = None, by the
# first two (_DISPATCH), and their loops are the product loops (_PRODUCTS), with the forms'
# options constants. Kernels of their own rather than a branch in value_chunk: Numba prunes a
# branch on ``weight is None`` where weight is None, not where it is an array, so every weighted
# specialisation would have compiled the product loop too (log_cosh's value_chunk 1.3 -> 2.4 s).
_SUMS_KERNEL = """\
@KERNEL_JIT
def {KIND}_chunk(pred, target, weight, vals, {GRAD}{P}start, stop):
    prefer_vector_width(VECTOR_BITS)
{DISPATCH}    {SLICES}
    {WINDOW}
    if weight is not None:
        wv = weight[start:stop]
    if vals is not None:
        vv = vals[start:stop]
    acc = np.zeros(LANES)
    flags = np.int32(0)
{LOOP}
    return lane_sum(acc), flags


"""

# value_chunk's and both_chunk's first lines where the value has a form: in the specialisation
# for weight = vals = None all that is compiled of them (the rest is unreachable where {TEST} is
# True, as for log_cosh), elsewhere a branch never taken. {TEST}: the forms' options have their
# values (param_is, once per chunk).
_DISPATCH = """\
    if weight is None:
        if vals is None:
            if {TEST}:
                return {KIND}_sums_chunk(pred, target, None, None, {GRAD}{P}start, stop)
"""


# grad_chunk's per-element work, written once for its two loops below, which name the element
# differently: {t}, {p}, {w}, {g} are element i of target, pred, the weights and grad, or
# element j of a block's views; {opts} the options there ({{...}}: the kernel's placeholders).
_GRAD_WORK = """\
t = {t}
g = {{deriv}}({p}, t, {{{opts}}}) * scale
if weight is not None:
    g = g * {w}
{g} = g
{{FLAGS}}"""

# grad_chunk's loop: a plain map, which LLVM vectorises with exp and log inlined.
_GRAD_LOOP = "for i in range(pred.size):\n" + textwrap.indent(
    _GRAD_WORK.format(t="target[i]", p="pred[i]", w="wv[i]", g="grad[i]", opts="PI"), "    ")

# The same map block by block, for a derivative with a binary-target variant ({deriv} is either)
# or with exp or log (whose blocks prefetch: see _PREFETCH). Not for the arithmetic losses: blocks
# cost their gradient 8-15% per element in cache (mse, huber), and so did one loop over the
# whole chunk written with the block's names (mse 8%).
_GRAD_STEP = _GRAD_WORK.format(t="tb[j]", p="pb[j]", w="wb[j]", g="gb[j]", opts="PJ")

# The per-element work of value_chunk and both_chunk: l (and g) for element j of the group views
# pb, tb, (gb, wb, vb).
_VALUE_STEP = """\
p = pb[j]
t = tb[j]
{CALL}
if weight is not None:
    l = l * wb[j]
if vals is not None:
    vb[j] = l
{FLAGS}"""

_BOTH_STEP = """\
p = pb[j]
t = tb[j]
{CALL}
g = {deriv}(p, t, {PJ}) * scale
if weight is not None:
    l = l * wb[j]
    g = g * wb[j]
if vals is not None:
    vb[j] = l
gb[j] = g
{FLAGS}"""

# Group views: elements [b0, b0 + G) of every array the step reads or writes (_VALS_VIEW in
# the kernels that have a vals argument, which grad_chunk has not).
_VIEWS = """\
{STREAMS}
{GWINDOW}
if weight is not None:
    wb = wv[b0:b0 + {G}]"""

_VALS_VIEW = """
if vals is not None:
    vb = vv[b0:b0 + {G}]"""

# Two ways to add l into the lanes, with the same result bit for bit: element i of the chunk
# goes into lane i % LANES, and each lane adds its elements in order of i.
#
# Buffered (math-heavy losses): a block of BLOCK values is computed into a buffer by a plain map
# loop, which LLVM vectorises even with exp and log inlined; the buffer holds SUM_BLOCKS blocks,
# and is added into the lanes when full (and at the end). Each block still prefetches its own
# BLOCK ahead. (A sum after every block cost 3-8% in cache: see _config.SUM_BLOCKS.)
_BUFFERED = """\
buf = np.empty(BLOCK * SUM_BLOCKS, dtype=pred.dtype)
{PRODUCTS_SETUP}filled = 0
{AHEAD}for b0 in range(0, pred.size, BLOCK):
{PREFETCH}{VIEWS}
    bb = buf[filled:filled + pb.size]
{PRODUCTS_VIEW}{MAPS}
    filled += pb.size
    if filled == buf.size:
        lanes_add4(acc, buf)
{PRODUCTS_PASS}        filled = 0
lanes_add4(acc, buf[:filled]){PRODUCTS_END}"""

_BUFFER_MAP = """\
for j in range(pb.size):
{STEP}
    bb[j] = l"""

# The sums of a value with a log1p_sum_form (value = l + log1p(e); fastloss._loss.log1p_sum_form),
# unweighted and without per-element values: _BUFFERED with these lines, a second buffer, of the
# e's, whose factors 1 + e each lane multiplies together (as Π(1 + e) − 1) when the buffers are
# full; every LOG1P_PASSES of those, and at the end, the lanes' log1p go into the float64 lanes
# (cpu_helpers.lanes_log1p_pass). The map loses the per-element logarithm: one core, in cache,
# side by side, bce_with_logits' value 0.32-0.34 -> 0.24-0.28 ns per element in float32 and
# 1.69-1.71 -> 0.54-0.58 in float64 (where the log1p of vsoftplus did not inline), log_cosh's
# 0.32-0.33 -> 0.28-0.32 and 1.88 -> 0.75. The step is the plain one with the form's call for the
# value's ({CALL}: "l, e = form(...)"; the weight and vals lines are pruned, both None there); a
# step without a form (the general math of a loss whose binary-target variant has one) writes
# e = 0, a factor of 1.
_PRODUCTS = dict(PRODUCTS_SETUP="ebuf = np.empty(BLOCK * SUM_BLOCKS, dtype=pred.dtype)\n"
                                "prods = np.zeros(LANES, dtype=pred.dtype)\npasses = 0\n",
                 PRODUCTS_VIEW="    eb = ebuf[filled:filled + pb.size]\n",
                 PRODUCTS_PASS="        passes = lanes_log1p_pass(acc, prods, ebuf, passes, LOG1P_PASSES)\n",
                 PRODUCTS_END="\nlanes_log1p_mul4(prods, ebuf[:filled])\nlanes_add_log1p(acc, prods)")
_NO_PRODUCTS = dict.fromkeys(_PRODUCTS, "")

_PRODUCT_MAP = _BUFFER_MAP + "\n    eb[j] = e"

# grad_chunk's loop, block by block (only for a derivative with a binary-target variant).
_BLOCKS = """\
{AHEAD}for b0 in range(0, pred.size, BLOCK):
{PREFETCH}{VIEWS}
{MAPS}"""

# The block loops (_BUFFERED, _BLOCKS) prefetch the inputs PREFETCH_BYTES ahead, a block at the
# start of each block (empty where _config.CPU_PREFETCH_BYTES is 0). Without it the loops of
# the exp/log losses did not overlap memory with math: one thread at 2**24 float32 elements,
# bce_with_logits' value took 1.06 ns per element, about its time in cache (0.59) plus that of
# reading 8 bytes at one core's bandwidth (0.47), on a Sapphire Rapids-class VM. The prefetches
# stay inside the chunk (prefetch_lines clips to the view).
_AHEAD = "ahead = PREFETCH_BYTES // pred.itemsize\n"
_PREFETCH = """\
    prefetch_lines(pred, b0 + ahead, b0 + ahead + BLOCK)
    prefetch_lines(target, b0 + ahead, b0 + ahead + BLOCK)
    if weight is not None:
        prefetch_lines(wv, b0 + ahead, b0 + ahead + BLOCK)
"""

_GRAD_MAP = """\
for j in range(pb.size):
{STEP}"""

# A map loop (_BUFFER_MAP, _GRAD_MAP) with a reduction that does nothing but make LLVM interleave
# the loop (see cpu_helpers.keep): the bits of each result {RESULT} (as stored) OR-ed into
# ``seen``, one vector OR per vector. One core, in cache, float32, side by side: log_cosh's value
# 0.70 -> 0.55 ns per element, value_and_grad 0.94 -> 0.90, poisson_nll's value_and_grad 0.49 ->
# 0.46. Only for maps without a reduction of their own: those of _PICK_MAP have one (its check of
# the targets), and a second made them slower (bce_with_logits' value_and_grad 0.71 -> 0.86).
_INTERLEAVED = """\
seen = BITS(0)
{LOOP}
    seen = or_bits(seen, {RESULT})
keep(seen)"""

# A block's maps where the loss has binary-target variants. Whether a block's targets are all 0 or
# 1 is found in the map loops themselves (_CHECK, added to each step), not by a scan of the block
# first: out of cache that scan waited for the targets to arrive from memory before any math could
# start (bce's value, one core, 2**24 elements: 0.61-0.67 ns per element with it, 0.49-0.53
# without). A block runs the form the previous block's targets chose; if the variants ran on a
# block with any other target, the block runs again with the general math, which overwrites every
# output.
_PICK_MAP = """\
other = False
if binary:
{MAP01}
if other or not binary:  # other: the variants met a target other than 0 and 1
{MAP}
binary = not other"""

# The step's test of its target, for _PICK_MAP (t: the step's target element).
_CHECK = "other |= (t != 0.0) & (t != 1.0)"

# Before the block loop of _PICK_MAP: the chunk's first block tries the binary-target variants.
_FIRST_BLOCK = "binary = True\n"

# Direct (arithmetic-only losses): groups of LANES elements added straight into the lanes, a
# loop of constant trip count that LLVM vectorises with the lanes in registers; the buffer's
# extra store and load per element cost such cheap losses up to half the memory bandwidth.
# (With exp and log inlined LLVM does not vectorise this form.) The value loop prefetches a
# block ahead at every BLOCK-th element as the block loops do: 2 threads, 2**24 float32, side
# by side, hinge's value 4.67-4.77 -> 3.17-3.22 ms, huber's 3.72-3.83 -> 2.95-3.03, mse's
# 3.12-3.17 -> 2.80-2.92 (Intel AVX-512 VM; in cache it costs mse 0.12 -> 0.18 ns per element).
# Not the value_and_grad loop, which also writes: there the prefetches made mse 6.2-6.3 ->
# 6.8-7.0 ms and hinge 8.0-8.1 -> 8.9-9.2.
_DIRECT = """\
full = pred.size - pred.size % LANES
{AHEAD}for b0 in range(0, full, LANES):
{PREFETCH}{VIEWS}
    for j in range(LANES):
{STEP}
        acc[j] += l
for b0 in range(full, pred.size, LANES):  # the last, partial group
{VIEWS}
    for j in range(pb.size):
{STEP}
        acc[j] += l"""


def _fast_branches(loop, fast):
    """``loop(consts)`` (text of a loop, options named in ``consts`` replaced by constants) as
    one loop per fast option value, each behind a test of the option, then the general loop.

    The loss's math is inlined into the loop, so with the option a constant LLVM folds away what
    that value makes needless (u**gamma is u*u at the focal loss's gamma = 2, not an exp and a
    log). Branching once per chunk, not per element, keeps each loop branch-free."""
    general = textwrap.indent(loop({}), "    ")
    if not fast:
        return general
    text, keyword = "", "if"
    for name, values in fast.items():
        for k, value in enumerate(values):
            const = f"FAST_{name}_{k}"
            text += f"    {keyword} param_is({name}, {const}):\n" + textwrap.indent(loop({name: const}), "        ")
            text += "\n"
            keyword = "elif"
    return text + "    else:\n" + textwrap.indent(general, "    ")


def _block_views(size, windowed, grad, vals=True):
    """Views of a block's (or group's) elements; ``vals``: the kernel has a ``vals`` argument
    (grad_chunk has not)."""
    gwindow = "; ".join(f"{n}_b = param_window({n}, b0, b0 + {size})" for n in windowed) or "pass"
    streams = (("pb", "pred"), ("tb", "target")) + ((("gb", "grad"),) if grad else ())
    streams = f"{', '.join(v for v, _ in streams)} = {', '.join(f'{a}[b0:b0 + {size}]' for _, a in streams)}"
    views = (_VIEWS + (_VALS_VIEW if vals else "")).format(G=size, GWINDOW=gwindow, STREAMS=streams)
    return textwrap.indent(views, "    ")


def _maps(template, step, step01, result):
    """A block's map loop over ``step``, whose result is named ``result``; with a binary-target
    step as well, both behind the choice of _PICK_MAP (then the text starts by setting up that
    choice's state, ``binary``, and must stand before the block loop: see _lane_loop)."""
    if step01 is None:
        loop = _INTERLEAVED.format(LOOP=template.format(STEP=textwrap.indent(step, "    ")), RESULT=result)
        return textwrap.indent(loop, "    ")
    loop, loop01 = (template.format(STEP=textwrap.indent(f"{s}\n{_CHECK}", "    ")) for s in (step, step01))
    pick = _PICK_MAP.format(MAP01=textwrap.indent(loop01, "    "), MAP=textwrap.indent(loop, "    "))
    return textwrap.indent(pick, "    ")


def _lane_loop(step, step01, direct, windowed, grad, products=False):
    """The accumulating loop of a chunk kernel; ``windowed``: the options it reads per element;
    ``step01``: the step with the binary-target variants (None: the loss has none); ``products``:
    the loop of a sums kernel (the steps set e as well as l)."""
    if direct and step01 is None and not products:
        return _DIRECT.format(VIEWS=_block_views("LANES", windowed, grad), STEP=textwrap.indent(step, "        "),
                              **_prefetch_text(every_block=True, on=not grad))
    maps = _maps(_PRODUCT_MAP if products else _BUFFER_MAP, step, step01, "l")
    loop = _BUFFERED.format(VIEWS=_block_views("BLOCK", windowed, grad), MAPS=maps, **_prefetch_text(),
                            **(_PRODUCTS if products else _NO_PRODUCTS))
    return loop if step01 is None else _FIRST_BLOCK + loop


def _prefetch_text(every_block=False, on=True):
    """The {AHEAD} and {PREFETCH} of the block loops, or with ``every_block`` of _DIRECT's loop over
    groups of LANES, which prefetches a block at the first group of each: nothing where
    prefetching is off (``on`` False or _config.CPU_PREFETCH_BYTES 0)."""
    if not (on and _config.CPU_PREFETCH_BYTES):
        return dict(AHEAD="", PREFETCH="")
    if every_block:
        assert _config.BLOCK % _config.LANES == 0
        return dict(AHEAD=_AHEAD, PREFETCH="    if b0 % BLOCK == 0:\n" + textwrap.indent(_PREFETCH, "    "))
    return dict(AHEAD=_AHEAD, PREFETCH=_PREFETCH)


def _grad_blocks(step, step01, windowed):
    """grad_chunk's loop block by block: for a derivative with a binary-target variant
    (``step01``), or one with exp or log when prefetching is on (``step01`` None)."""
    loop = _BLOCKS.format(VIEWS=_block_views("BLOCK", windowed, True, vals=False), **_prefetch_text(),
                          MAPS=_maps(_GRAD_MAP, step, step01, "FLOAT(g)"))
    return loop if step01 is None else _FIRST_BLOCK + loop


# A step's update of the target flags (t: the step's target element). The flags are int32, not
# Numba's default int64: the OR then runs in vectors of as many lanes as the float32 data has,
# where int64 flags took two vectors and conversions per float vector (on AVX2, one core in cache,
# hinge's value loop 1.20-1.22 -> 0.74 ns per element, Zen 1). Numba types int32 | int64 as int64;
# the np.int32(...) around it lets LLVM narrow the OR. Flags must therefore fit in 31 bits.
_FLAG_UPDATE = "flags = np.int32(flags | {flagsfn}(t))"

# Only for losses with target flags: the check alone, for a caller's out= buffer, which must
# not be written before the targets are known to be valid.
_FLAGS_BODY = """\
@KERNEL_JIT
def flags_chunk(target, start, stop):
    prefer_vector_width(VECTOR_BITS)
    target = target[start:stop]
    flags = np.int32(0)
    for i in range(target.size):
        t = target[i]
        {FLAG_UPDATE}
    return flags


@PARALLEL_JIT
def flags_par(target, flags, chunk):
    n = target.size
    for c in prange(flags.size):
        flags[c] = flags_chunk(target, c * chunk, min(n, (c + 1) * chunk))


"""


def build(name, value, deriv, param_names, target_flags=None, static=None, dtype="float64", fast=None):
    """Generate (once) and import the CPU kernel module of an elementwise loss.

    ``static`` maps option names to values written into the kernel as constants (the boolean
    options); the other options in ``param_names`` become kernel arguments. ``dtype`` is the
    compute dtype: the scalar math's float literals take it, so float32 data is computed in
    float32 (twice the SIMD width) while sums still accumulate in float64. ``fast`` maps option
    names to values that get loops of their own with the option a constant (``Option.fast``)."""
    static = static or {}
    local = {n: codegen.option_arg(n) for n in param_names}
    fast = {local[n]: v for n, v in (fast or {}).items() if n in param_names and n not in static}
    value01 = getattr(value, "_fastloss_binary", None)
    deriv01 = getattr(deriv, "_fastloss_binary", None)
    # log1p_sum_forms: (function, {option: value it holds for}) of the value and its variant
    forms = {"form": getattr(value, "_fastloss_log1p_form", None),
             "form01": getattr(value01, "_fastloss_log1p_form", None)}
    factors = _config.LOG1P_PASSES * _config.BLOCK * _config.SUM_BLOCKS // _config.LANES  # per lane, each <= 2
    if any(forms.values()) and not 0 < factors <= 120:
        raise ValueError(f"_config.LOG1P_PASSES: {factors} factors per lane could overflow a float32 product")
    src = codegen.scalar_source({"value": value, "deriv": deriv, "flags": target_flags,
                                 "value01": value01, "deriv01": deriv01,
                                 **{role: f[0] for role, f in forms.items() if f is not None}},
                                replace_math=vmath.cpu_replacements(dtype), typed_floats=True, dtype=dtype,
                                fma=vmath.vfma)
    binary = value01 is not None or deriv01 is not None
    args = [local[n] for n in param_names if n not in static]
    p = "".join(f"{a}, " for a in args)
    # Each chunk works on views [start:stop] indexed from 0: with an index Numba can prove is
    # non-negative it drops the negative-index wraparound check, which would stop vectorisation.
    window = "; ".join(f"{a} = param_window({a}, start, stop)" for a in args) or "pass"
    flags = _FLAG_UPDATE.format(flagsfn=src.names["flags"]) if target_flags is not None else "pass"
    extra = _FLAGS_BODY.format(FLAG_UPDATE=flags) if target_flags is not None else ""

    def option_args(consts, index):
        """The options as the scalar math receives them: static ones and ``consts`` (by local
        name) as constants, the others read at the element ``index`` names ("param_at({}, i)")."""
        return ", ".join(repr(static[n]) if n in static else consts.get(local[n]) or index.format(local[n])
                         for n in param_names)

    def fill(consts, variants=False, products=False):
        """The names a step's text is formatted with; ``products``: a sums kernel's step, whose
        CALL sets e as well as l (from the form of the value it calls, or e = 0)."""
        names = src.names
        variant = variants and "value01" in names
        value = names["value01" if variant else "value"]
        pj = option_args(consts, "param_at({}_b, j)")
        form = "form01" if variant else "form"
        if not products:
            call = f"l = {value}(p, t, {pj})"
        elif form in names:
            call = f"l, e = {names[form]}(p, t, {pj})"
        else:
            call = f"l = {value}(p, t, {pj})\ne = FLOAT(0.0)"
        return dict(value=value, deriv=names.get("deriv01", names["deriv"]) if variants else names["deriv"],
                    CALL=call, FLAGS=flags, PJ=pj, PI=option_args(consts, "param_at({}, i)"))

    def steps(step, consts, variants, products=False):
        """``step`` for the general math, and for the binary-target variants (None unless
        ``variants``: a loop whose functions have no variant gets no second copy)."""
        return (step.format(**fill(consts, False, products)),
                step.format(**fill(consts, True, products)) if variants else None)

    # The sums kernels' loops have the forms' options (``when``: at most one value each) as
    # constants, WHEN_<option>; value_chunk and both_chunk call them where the options have them.
    when_values = {}
    for form in filter(None, forms.values()):
        for n, v in form[1].items():
            if when_values.setdefault(n, float(v)) != float(v):
                raise ValueError(f"{name}: the log1p_sum_forms of the value and its variant hold for different {n}")
    when = {local[n]: f"WHEN_{local[n]}" for n in when_values}

    def lane_loop(step, consts, grad, variants, products=False):
        """The loop of value_chunk or both_chunk (``grad``), or with ``products`` of value_sums_chunk
        or both_sums_chunk: the product loop (the forms' options are constants in ``consts`` there)."""
        windowed = [a for a in args if a not in consts]
        return _lane_loop(*steps(step, consts, variants, products), not src.math_used, windowed, grad, products)

    def grad_loop(consts):
        windowed = [a for a in args if a not in consts]
        if deriv01 is not None:
            return _grad_blocks(*steps(_GRAD_STEP, consts, True), windowed)
        if src.math_used and _config.CPU_PREFETCH_BYTES:  # blocks, to prefetch (see _PREFETCH)
            return _grad_blocks(*steps(_GRAD_STEP, consts, False), windowed)
        return _GRAD_LOOP.format(**fill(consts))

    kernels = {"VALUE_KERNELS": "", "BOTH_KERNELS": ""}
    sums = any(forms.values())
    fast_rest = {a: v for a, v in fast.items() if a not in when}  # the sums kernels' fast loops
    test = " and ".join(f"param_is({a}, {c})" for a, c in when.items()) or "True"
    for key, kind, step, variants in (("VALUE_KERNELS", "value", _VALUE_STEP, value01 is not None),
                                      ("BOTH_KERNELS", "both", _BOTH_STEP, binary)):
        grad = kind == "both"
        parts = dict(GRAD="grad, scale, " if grad else "", P=p, WINDOW=window,
                     SLICES=("pred, target, grad = pred[start:stop], target[start:stop], grad[start:stop]" if grad
                             else "pred, target = pred[start:stop], target[start:stop]"))
        if sums:
            loop = _fast_branches(lambda c: lane_loop(step, dict(c, **when), grad, variants, products=True), fast_rest)
            kernels[key] += _SUMS_KERNEL.format(KIND=f"{kind}_sums", DISPATCH="", LOOP=loop, **parts)
        loop = _fast_branches(lambda c: lane_loop(step, c, grad, variants), fast)
        dispatch = _DISPATCH.format(KIND=kind, TEST=test, **parts) if sums else ""
        kernels[key] += _SUMS_KERNEL.format(KIND=kind, DISPATCH=dispatch, LOOP=loop, **parts)
    grad_loop = _fast_branches(grad_loop, fast)
    consts = "".join(f"\nFAST_{a}_{k} = FLOAT({v!r})" for a, vs in fast.items() for k, v in enumerate(vs))
    consts += "".join(f"\n{when[local[n]]} = FLOAT({v!r})" for n, v in when_values.items())
    body = extra + _BODY.format(scalars=src.text + consts, P=p, WINDOW=window, GRAD_LOOP=grad_loop, **kernels)
    header = _HEADER.format(imports="\n".join(src.imports), dtype=dtype, bits=64 if dtype == "float64" else 32,
                            block=int(_config.BLOCK), sum_blocks=int(_config.SUM_BLOCKS),
                            log1p_passes=int(_config.LOG1P_PASSES),
                            vector_bits=int(_config.CPU_VECTOR_BITS), prefetch_bytes=int(_config.CPU_PREFETCH_BYTES))
    kind = f"cpu_{name}_{dtype}" + "".join(f"_{n}{int(v)}" for n, v in sorted(static.items()))
    return codegen.load_module(kind, header, body, src.injected)
