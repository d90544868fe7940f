"""CUDA kernels of the elementwise losses, generated from each loss's scalar math.

The same scalar functions as the CPU kernels (kernels/cpu_elementwise.py), pasted by
``codegen.scalar_source`` under ``@SCALAR_JIT`` = ``cuda.jit(device=True, ...)``. Per loss, the
generated module holds three kernels, each a grid-stride loop that ends in a block reduction:

* ``value_kernel``  Σ w·l (float64), and w·l per element into ``vals`` when it has a size
* ``grad_kernel``   scale·w·dl/dp into ``grad``
* ``both_kernel``   both, in one pass over memory

plus the target flags (hinge) OR-ed on the way when the loss has ``target_flags``. A one-block
grid finishes in the kernel (0-d result, flags); a larger one writes per-block partials that
``finish_kernel`` (kernels/cuda_helpers.py) adds up in a fixed order: two stages, no atomics.

Kernel launches cannot pass ``None``, so absent arrays are passed with size 0 and the kernels
test ``x.shape[0] != 0`` (uniform branches, no cost on memory-bound loops). Which options are
arrays is decided in the text (``opt[i]`` or ``opt``): one module per loss and array-ness of its
options, compute dtype (float32 for float16/float32 data, float64 for float64), block size and
reduction path. Every module is compiled once per argument dtypes and cached on disk.
"""
from . import codegen, cuda_helpers

# {P}: comma-terminated option names; {PI}: the options as read at element i.
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
def value_kernel(pred, target, weight, wdiv, winner, vals, {P}n, rmode, den_host, den, den_mul,
                 partials, fparts, result, fres):
    sh = cuda.shared.array(BLOCK, float64)
    shf = cuda.shared.array(BLOCK, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    has_v = vals.shape[0] != 0
    acc = 0.0
    flags = 0
    while i < n:
        t = CT(target[i])
        l = {value}(CT(pred[i]), t, {PI})
        if has_w:
            l = l * CT(weight[widx(i, wdiv, winner)])
        if has_v:
            vals[i] = l
        acc += float64(l)
        {FLAGS}
        i += step
    store_block(acc, flags, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)


@KERNEL_JIT
def grad_kernel(pred, target, weight, wdiv, winner, grad, {P}n, rmode, gscale, den, den_mul, fparts, fres):
    shf = cuda.shared.array(BLOCK, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    flags = 0
    while i < n:
        t = CT(target[i])
        g = {deriv}(CT(pred[i]), t, {PI}) * scale
        if has_w:
            g = g * CT(weight[widx(i, wdiv, winner)])
        grad[i] = g
        {FLAGS}
        i += step
    store_flags(flags, shf, fparts, fres)


@KERNEL_JIT
def both_kernel(pred, target, weight, wdiv, winner, vals, grad, {P}n, rmode, gscale, den_host, den, den_mul,
                partials, fparts, result, fres):
    sh = cuda.shared.array(BLOCK, float64)
    shf = cuda.shared.array(BLOCK, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    has_w = weight.shape[0] != 0
    has_v = vals.shape[0] != 0
    scale = grad_scale(rmode, gscale, den, den_mul)
    acc = 0.0
    flags = 0
    while i < n:
        p = CT(pred[i])
        t = CT(target[i])
        l = {value}(p, t, {PI})
        g = {deriv}(p, t, {PI}) * scale
        if has_w:
            w = CT(weight[widx(i, wdiv, winner)])
            l = l * w
            g = g * w
        if has_v:
            vals[i] = l
        grad[i] = g
        acc += float64(l)
        {FLAGS}
        i += step
    store_block(acc, flags, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul)
"""


def build(name, value, deriv, param_names, target_flags=None, array_params=(), ct="float64"):
    """Generate (once) and import the CUDA kernel module of an elementwise loss.

    ``array_params``: the names of the options passed as per-element arrays in this call (each
    array-ness is its own module text); ``ct``: "float32" or "float64", the compute dtype.
    """
    src = codegen.scalar_source({"value": value, "deriv": deriv, "flags": target_flags})
    array_params = set(array_params)
    p = "".join(f"{n}, " for n in param_names)
    pi = ", ".join(f"CT({n}[i])" if n in array_params else n for n in param_names)
    flags = f"flags |= {src.names['flags']}(t)" if target_flags is not None else "pass"
    body = _BODY.format(scalars=src.text, reductions=cuda_helpers.reductions(), value=src.names["value"],
                        deriv=src.names["deriv"], P=p, PI=pi, FLAGS=flags)
    header = cuda_helpers.header(ct=ct, imports=src.imports)
    tag = "".join("a" if n in array_params else "s" for n in param_names)
    return codegen.load_module(f"cuda_{name}_{ct}{'_' + tag if tag else ''}", header, body, src.injected)
