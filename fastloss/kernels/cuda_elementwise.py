"""CUDA kernels of the elementwise losses, generated from each loss's scalar math.

The same scalar functions as the CPU kernels (kernels/cpu_elementwise.py), pasted by
``codegen.scalar_source`` under ``@SCALAR_JIT`` = ``cuda.jit(device=True, ...)``. Per loss, the
generated module holds three kernels, each a grid-stride loop that ends in a block reduction:

* ``value_kernel``  Σ w·l (float64), and w·l per element into ``vals`` when it has a size
* ``grad_kernel``   scale·w·dl/dp into ``grad``
* ``both_kernel``   both, in one pass over memory

plus the target flags (hinge) OR-ed on the way when the loss has ``target_flags``. When the
host finds every streamed array aligned (``vec``), the loop reads pred and target and writes the
gradient and values as 4-element vectors (16 bytes for float32, kernels/cuda_vec.py),
``_config.CUDA_EW_VECTORS`` of each per thread in flight; elements past the last whole vector,
and every element without ``vec``, go through the scalar loop. A one-block
grid finishes in the kernel (0-d result, flags); a larger one writes per-block partials that
``finish_kernel`` (kernels/cuda_helpers.py) adds up in a fixed order: two stages, no atomics.

Kernel launches cannot pass ``None``, so absent arrays are passed with size 0 and the kernels
test ``x.shape[0] != 0`` (uniform branches, no cost on memory-bound loops). Which options are
arrays is decided in the text (``opt[i]`` or ``opt``), and boolean options are constants in it:
one module per loss, array-ness of its options, boolean option values, compute dtype (float32
for float16/float32 data, float64 for float64), block size and reduction path. The scalar math
computes in the compute dtype (its float literals are typed, as on the CPU); sums accumulate in
float64. Every module is compiled once per argument dtypes and cached on disk.
"""
import textwrap

from . import codegen, cuda_helpers

# {P}: the comma-terminated option arguments (opt_<name>); {*_LOOP}: the grid-stride loops (see _loop).
_BODY = """\
{scalars}


{reductions}


@DEVICE_JIT
def widx(i, wdiv, winner):
    # Index of element i's weight: i itself, or for weights given per row of a class axis
    # (kl_div) the row's index, with wdiv = C * inner and winner = inner (elements after the axis).
    if wdiv == 1:
        return i
    return (i // wdiv) * winner + i % winner


@KERNEL_JIT
def value_kernel(pred, target, weight, wdiv, winner, vals, {P}n, vec, rmode, den_host, den, den_mul,
                 partials, fparts, result, fres):
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    has_v = vals.shape[0] != 0
    acc = 0.0
    flags = 0
{VALUE_VEC}
{VALUE_LOOP}
    store_block(acc, flags, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)


@KERNEL_JIT
def grad_kernel(pred, target, weight, wdiv, winner, grad, {P}n, vec, rmode, gscale, den, den_mul, fparts, fres):
    shf = cuda.shared.array(SHN, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    flags = 0
{GRAD_VEC}
{GRAD_LOOP}
    store_flags(flags, shf, fparts, fres)


@KERNEL_JIT
def both_kernel(pred, target, weight, wdiv, winner, vals, grad, {P}n, vec, rmode, gscale, den_host, den, den_mul,
                partials, fparts, result, fres):
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    has_v = vals.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    acc = 0.0
    flags = 0
{BOTH_VEC}
{BOTH_LOOP}
    store_block(acc, flags, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)
"""


# What each kernel computes per element (suffix {k}, index {ix}, the options {PI}): the same for
# the grid-stride loop and the vector loop below; the scalar loop also stores per element.
_COMPUTE = {
    "value": """\
l{k} = {value}(p{k}, t{k}, {PI})
if has_w:
    l{k} = l{k} * CT(weight[widx({ix}, wdiv, winner)])
""",
    "grad": """\
g{k} = {deriv}(p{k}, t{k}, {PI}) * scale
if has_w:
    g{k} = g{k} * CT(weight[widx({ix}, wdiv, winner)])
""",
    "both": """\
l{k} = {value}(p{k}, t{k}, {PI})
g{k} = {deriv}(p{k}, t{k}, {PI}) * scale
if has_w:
    w{k} = CT(weight[widx({ix}, wdiv, winner)])
    l{k} = l{k} * w{k}
    g{k} = g{k} * w{k}
""",
}
_STORE_VALS = "if has_v:\n    vals[{ix}] = l{k}\n"
_STORE_GRAD = "grad[{ix}] = g{k}\n"


def _option_args(pnames, static, array_params, ix):
    """The options as the scalar math's arguments at element ``ix``: constants, per-element
    arrays read at ``ix``, or scalars (kernel arguments named by ``codegen.option_arg``)."""
    arg = codegen.option_arg
    return ", ".join(repr(static[n]) if n in static else (f"CT({arg(n)}[{ix}])" if n in array_params else f"CT({arg(n)})")
                     for n in pnames)


# The grid-stride loops, written per element and unrolled by two: each thread loads elements i
# and i + step before computing either (two loads in flight), and adds them to its sum in the
# order i, i + step, ..., the order of the loop without unrolling, so unrolling changes no result.
_LOAD = """\
        p{k} = CT(pred[{ix}])
        t{k} = CT(target[{ix}])
"""
_VALUE = textwrap.indent(_COMPUTE["value"] + _STORE_VALS, " " * 8)
_GRAD = textwrap.indent(_COMPUTE["grad"] + _STORE_GRAD, " " * 8)
_BOTH = textwrap.indent(_COMPUTE["both"] + _STORE_VALS + _STORE_GRAD, " " * 8)


def _loop(part, value, deriv, pnames, static, array_params, flags, acc):
    """The unrolled grid-stride loop of one kernel, and its one-element tail. Both elements are
    loaded before either is stored: a store may alias a later load (out=pred), so the compiler
    could not move the second load above the first store itself."""
    def elem(k, ix):
        pi = _option_args(pnames, static, array_params, ix)
        text = part.format(k=k, ix=ix, value=value, deriv=deriv, PI=pi)
        if acc:
            text += f"        acc += float64(l{k})\n"
        if flags:
            text += f"        flags |= {flags}(t{k})\n"
        return text
    return ("    while i + step < n:\n        j = i + step\n" + _LOAD.format(k=0, ix="i") + _LOAD.format(k=1, ix="j")
            + elem(0, "i") + elem(1, "j") + "        i = j + step\n"
            + "    if i < n:\n" + _LOAD.format(k=0, ix="i") + elem(0, "i"))


# The vector loop (vec != 0): vectors of 4 elements, EV of them per thread per step, at vector
# indices k, k + BLOCK, ... (coalesced: a warp reads 512 contiguous bytes per load); all loads of
# a step before any computation, all stores after it. The thread adds its values to its sum in
# index order within the step. Elements past the last whole vector (n % 4) are left to the
# scalar loop, which then starts at 4 nv.
def _vec_loop(kind, value, deriv, pnames, static, array_params, flags, acc, ev):
    def step(nvec, advance):
        out = []
        for u in range(nvec):
            out.append(f"b{u} = 4 * (k + {u} * BLOCK)" if u else "b0 = 4 * k")
        for u in range(nvec):
            out.append(f"p{u}_0, p{u}_1, p{u}_2, p{u}_3 = ld4(pred, b{u})")
        for u in range(nvec):
            out.append(f"t{u}_0, t{u}_1, t{u}_2, t{u}_3 = ld4(target, b{u})")
        for u in range(nvec):
            for e in range(4):
                k, ix = f"{u}_{e}", f"b{u} + {e}"
                out.append(f"p{k} = CT(p{k})")
                out.append(f"t{k} = CT(t{k})")
                pi = _option_args(pnames, static, array_params, ix)
                out += _COMPUTE[kind].format(k=k, ix=ix, value=value, deriv=deriv, PI=pi).splitlines()
                if acc:
                    out.append(f"acc += float64(l{k})")
                if flags:
                    out.append(f"flags |= {flags}(t{k})")
        for u in range(nvec):
            if kind in ("value", "both"):
                out += ["if has_v:", f"    st4(vals, b{u}, l{u}_0, l{u}_1, l{u}_2, l{u}_3)"]
            if kind in ("grad", "both"):
                out.append(f"st4(grad, b{u}, g{u}_0, g{u}_1, g{u}_2, g{u}_3)")
        out.append(f"k += {advance}")
        return out
    lines = ["if vec != 0:",
             "    nv = n // 4",
             f"    k = cuda.blockIdx.x * (BLOCK * {ev}) + cuda.threadIdx.x",
             f"    while k + {ev - 1} * BLOCK < nv:"]
    lines += ["        " + ln for ln in step(ev, f"cuda.gridDim.x * (BLOCK * {ev})")]
    lines += ["    while k < nv:"]
    lines += ["        " + ln for ln in step(1, "BLOCK")]
    lines += ["    i = 4 * nv + cuda.blockIdx.x * BLOCK + cuda.threadIdx.x"]
    return "\n".join("    " + ln for ln in lines)


def build(name, value, deriv, param_names, target_flags=None, array_params=(), ct="float64", static=None):
    """Generate (once) and import the CUDA kernel module of an elementwise loss.

    ``array_params``: the options passed as per-element arrays in this call (each array-ness is
    its own module text); ``ct``: "float32" or "float64", the compute dtype, which the scalar
    math's float literals and scalar options take (as on the CPU: float32 data is computed in
    float32, sums in float64); ``static``: boolean options written into the text as constants.
    """
    static = dict(static or {})
    src = codegen.scalar_source({"value": value, "deriv": deriv, "flags": target_flags}, typed_floats=True,
                                dtype=ct)
    array_params = set(array_params)
    pnames = list(param_names)
    p = "".join(f"{codegen.option_arg(n)}, " for n in pnames if n not in static)
    fl = src.names["flags"] if target_flags is not None else None
    v, d = src.names["value"], src.names["deriv"]
    from .. import _config
    ev = int(_config.CUDA_EW_VECTORS)
    if ev < 1:
        raise ValueError(f"fastloss._config.CUDA_EW_VECTORS must be >= 1, got {ev}")
    body = _BODY.format(scalars=src.text, reductions=cuda_helpers.reductions(), P=p,
                        VALUE_LOOP=_loop(_VALUE, v, d, pnames, static, array_params, fl, True),
                        GRAD_LOOP=_loop(_GRAD, v, d, pnames, static, array_params, fl, False),
                        BOTH_LOOP=_loop(_BOTH, v, d, pnames, static, array_params, fl, True),
                        VALUE_VEC=_vec_loop("value", v, d, pnames, static, array_params, fl, True, ev),
                        GRAD_VEC=_vec_loop("grad", v, d, pnames, static, array_params, fl, False, ev),
                        BOTH_VEC=_vec_loop("both", v, d, pnames, static, array_params, fl, True, ev))
    header = cuda_helpers.header(ct=ct, imports=src.imports)
    tag = "".join("a" if n in array_params else ("s" if n not in static else str(int(static[n]))) for n in pnames)
    return codegen.load_module(f"cuda_{name}_{ct}_v{ev}{'_' + tag if tag else ''}", header, body, src.injected)
