"""CPU kernels of the elementwise losses, generated from each loss's scalar math.

For every loss the generated module holds three serial *chunk* kernels, which run one contiguous
range of elements, and three parallel *drivers*, which split the input into fixed chunks of
``_config.CHUNK`` elements and run the chunk kernels over them with ``prange``:

* ``value_chunk``  -> (Σ w·l over the range, target flags); writes w·l per element if ``vals``
* ``grad_chunk``   -> target flags; writes scale·w·dl/dp into ``grad``
* ``both_chunk``   -> both, in the same loop (one pass over memory)

``weight``, ``vals`` are ``None`` or arrays: Numba compiles a specialisation per combination and
prunes the ``is None`` branches at compile time, so the unweighted loop never touches a weight.
(The pruning only works on arguments that are never reassigned: hence the ``wv``/``vv`` views.)
Sums accumulate in float64 whatever the data's dtype, element i of a chunk into lane i % LANES
(``_config.LANES``), and the lanes are added in a fixed order at the end: the summation order is
written in the source, not chosen by the compiler, so no 'reassoc' flag is needed to vectorise
the loop, and the value is bitwise the same whether it comes from ``value_chunk`` or
``both_chunk``, on any CPU. The partition into chunks depends only on the input size, so the
result is also the same for any thread count, serial or parallel.

Options (``delta``, ``q``, ...) are passed as arguments, scalars or per-element arrays
(``param_at`` reads either), so one compiled kernel serves every option value.
"""
from . import codegen

_HEADER = """\
import math
import numpy as np
from numba import njit, prange
from fastloss._config import CPU_SCALAR, CPU_KERNEL, CPU_PARALLEL, LANES
from fastloss.kernels.cpu_helpers import lane_sum, param_at, param_window
{imports}

CACHE = True
SCALAR_JIT = njit(**dict(CPU_SCALAR, cache=CACHE))
KERNEL_JIT = njit(**dict(CPU_KERNEL, cache=CACHE))
PARALLEL_JIT = njit(**dict(CPU_PARALLEL, cache=CACHE))
"""

# {P} is the comma-terminated list of option names ("delta, " or ""), {PI} the same read at i.
_BODY = """\
{scalars}


@KERNEL_JIT
def value_chunk(pred, target, weight, vals, {P}start, stop):
    pred, target = pred[start:stop], target[start:stop]
    {WINDOW}
    if weight is not None:
        wv = weight[start:stop]
    if vals is not None:
        vv = vals[start:stop]
    acc = np.zeros(LANES)
    flags = 0
    m = pred.size  # (not stop - start: LLVM must see the bound is the array size)
    for i0 in range(0, m, LANES):
        for j in range(min(LANES, m - i0)):
            i = i0 + j
            t = target[i]
            l = {value}(pred[i], t, {PI})
            if weight is not None:
                l = l * wv[i]
            if vals is not None:
                vv[i] = l
            acc[j] += l
            {FLAGS}
    return lane_sum(acc), flags


@KERNEL_JIT
def grad_chunk(pred, target, weight, grad, scale, {P}start, stop):
    pred, target, grad = pred[start:stop], target[start:stop], grad[start:stop]
    {WINDOW}
    if weight is not None:
        wv = weight[start:stop]
    flags = 0
    for i in range(pred.size):
        t = target[i]
        g = {deriv}(pred[i], t, {PI}) * scale
        if weight is not None:
            g = g * wv[i]
        grad[i] = g
        {FLAGS}
    return flags


@KERNEL_JIT
def both_chunk(pred, target, weight, vals, grad, scale, {P}start, stop):
    pred, target, grad = pred[start:stop], target[start:stop], grad[start:stop]
    {WINDOW}
    if weight is not None:
        wv = weight[start:stop]
    if vals is not None:
        vv = vals[start:stop]
    acc = np.zeros(LANES)
    flags = 0
    m = pred.size  # (not stop - start: LLVM must see the bound is the array size)
    for i0 in range(0, m, LANES):
        for j in range(min(LANES, m - i0)):
            i = i0 + j
            p = pred[i]
            t = target[i]
            l = {value}(p, t, {PI})
            g = {deriv}(p, t, {PI}) * scale
            if weight is not None:
                l = l * wv[i]
                g = g * wv[i]
            if vals is not None:
                vv[i] = l
            grad[i] = g
            acc[j] += l
            {FLAGS}
    return lane_sum(acc), flags


@PARALLEL_JIT
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


def build(name, value, deriv, param_names, target_flags=None):
    """Generate (once) and import the CPU kernel module of an elementwise loss."""
    src = codegen.scalar_source({"value": value, "deriv": deriv, "flags": target_flags})
    p = "".join(f"{n}, " for n in param_names)
    pi = ", ".join(f"param_at({n}, i)" for n in param_names)
    # Each chunk works on views [start:stop] indexed from 0: with an index Numba can prove is
    # non-negative it drops the negative-index wraparound check, which would stop vectorisation.
    window = "; ".join(f"{n} = param_window({n}, start, stop)" for n in param_names) or "pass"
    flags = f"flags |= {src.names['flags']}(t)" if target_flags is not None else "pass"
    body = _BODY.format(scalars=src.text, value=src.names["value"], deriv=src.names["deriv"],
                        P=p, PI=pi, FLAGS=flags, WINDOW=window)
    header = _HEADER.format(imports="\n".join(src.imports))
    return codegen.load_module(f"cpu_{name}", header, body, src.injected)
