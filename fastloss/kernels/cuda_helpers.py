"""Source text shared by every generated CUDA module: header, reductions, common kernels.

The CUDA kernels are generated as text, like the CPU ones (see codegen.py), and each generated
module pastes in the pieces below. Three things are decided when the text is written and are
part of it (so part of the module's hash and of its disk cache):

* ``BLOCK``: threads per block (``_config.CUDA_BLOCK``), a compile-time constant because shared
  arrays need one;
* ``GS``: threads per row of the row kernels (1, 32 or BLOCK; 1 where unused);
* which reduction path: warp shuffles on a real GPU, or a shared-memory tree where shuffles do
  not exist (the CUDA simulator). The two paths differ only inside the ``warp``/``seg``
  helpers; every kernel calls ``block_*``/``group_*`` and shares all of its indexing.

Reductions are trees in a fixed order: no float atomics, so results are bitwise identical run
to run. Every ``block_*``/``group_*`` returns the result to every thread that takes part, and
must be called by every thread of the block (they contain barriers).

The common module (``build_common``) holds the kernels that are not per loss: the finishing
block of a two-stage reduction, the sum of a weight array, the check of class labels (with the
denominator of cross_entropy's "mean"), and a strided gather/scatter (non-contiguous inputs,
broadcast options, class axis not last).
"""
from . import codegen

#: Most dimensions of a strided gather/scatter (shape and strides travel as 8-tuples).
MAXDIM = 8

_HEADER = """\
import math
from numba import cuda, float32, float64, int64
{imports}

CACHE = True
SIM = {sim}
BLOCK = {block}
NWARPS = BLOCK // 32
SHN = {shn}  # entries of a reduction's shared array: one per warp (shuffles) or per thread (tree)
GS = {group}
CT = {ct}
FLOAT = CT  # float literals of the scalar math (codegen typed_floats): computed in the compute dtype
NEG_INF = CT(-math.inf)
FULL_MASK = 0xFFFFFFFF
SCALAR_JIT = cuda.jit(**{scalar_opts!r})
DEVICE_JIT = cuda.jit(device=True)
KERNEL_JIT = cuda.jit(**dict({kernel_opts!r}, cache=CACHE))
{vec}
"""

# The simulator's versions of the vector loads and stores of kernels/cuda_vec.py (plain Python
# over the simulator's arrays, flat index i into a 1-D or 2-D C-contiguous array).
_VEC_SIM = '''\
def ld4(a, i):
    if len(a.shape) == 1:
        return a[i], a[i + 1], a[i + 2], a[i + 3]
    r = i // a.shape[1]
    c = i - r * a.shape[1]
    return a[r, c], a[r, c + 1], a[r, c + 2], a[r, c + 3]


def st4(a, i, v0, v1, v2, v3):
    if len(a.shape) == 1:
        a[i] = v0
        a[i + 1] = v1
        a[i + 2] = v2
        a[i + 3] = v3
        return
    r = i // a.shape[1]
    c = i - r * a.shape[1]
    a[r, c] = v0
    a[r, c + 1] = v1
    a[r, c + 2] = v2
    a[r, c + 3] = v3


ld4_lu = ld4
st4_cs = st4
'''

# -- the two reduction paths: each defines warp_/seg_ helpers of the same names --------------
_COMBINE = {"sum": "a + b", "max": "a if a > b else b", "or": "a | b"}

# Real GPUs: an xor butterfly in the warp (every lane ends with the same value; each step is
# commutative, so lanes agree bitwise), then one value per warp through shared memory, reduced
# by a second butterfly in every warp (the same values in the same order: the same bits).
_SHUFFLE_OP = """\
@DEVICE_JIT
def _c_{name}(a, b):
    return {combine}


@DEVICE_JIT
def warp_{name}(v):
    v = _c_{name}(v, cuda.shfl_xor_sync(FULL_MASK, v, 16))
    v = _c_{name}(v, cuda.shfl_xor_sync(FULL_MASK, v, 8))
    v = _c_{name}(v, cuda.shfl_xor_sync(FULL_MASK, v, 4))
    v = _c_{name}(v, cuda.shfl_xor_sync(FULL_MASK, v, 2))
    v = _c_{name}(v, cuda.shfl_xor_sync(FULL_MASK, v, 1))
    return v


@DEVICE_JIT
def block_{name}(v, sh):
    # warp results through shared memory, then one more butterfly: lane l starts from warp
    # l % NWARPS's value, so each aligned run of NWARPS lanes holds all of them and reduces them
    # in the same order (every thread of the block ends with the same bits)
    v = warp_{name}(v)
    tid = cuda.threadIdx.x
    if NWARPS == 1:
        return v
    if tid % 32 == 0:
        sh[tid // 32] = v
    cuda.syncthreads()
    r = sh[tid % NWARPS]
    off = NWARPS // 2
    while off > 0:
        r = _c_{name}(r, cuda.shfl_xor_sync(FULL_MASK, r, off))
        off //= 2
    cuda.syncthreads()
    return r


@DEVICE_JIT
def group_{name}(v, sh):
    if GS == 1:
        return v
    if GS == 32:
        return warp_{name}(v)
    return block_{name}(v, sh)
"""

# The simulator: a tree over aligned segments of `width` threads in shared memory.
_TREE_OP = """\
@DEVICE_JIT
def _c_{name}(a, b):
    return {combine}


@DEVICE_JIT
def seg_{name}(v, sh, width):
    tid = cuda.threadIdx.x
    lane = tid % width
    sh[tid] = v
    cuda.syncthreads()
    s = width // 2
    while s > 0:
        if lane < s:
            sh[tid] = _c_{name}(sh[tid], sh[tid + s])
        cuda.syncthreads()
        s //= 2
    r = sh[tid - lane]
    cuda.syncthreads()
    return r


@DEVICE_JIT
def block_{name}(v, sh):
    return seg_{name}(v, sh, BLOCK)


@DEVICE_JIT
def group_{name}(v, sh):
    if GS == 1:
        return v
    return seg_{name}(v, sh, GS)
"""

# -- finishing helpers used by every reduction kernel ---------------------------------------
# rmode 0: "sum" (and "none"); rmode 1: a mean, total / denominator. The denominator is
# den_host (known on the host: the element or row count), or den[0] * den_mul when den holds a
# device-computed sum of weights (size 1; size 0 means "not given").
_FINISH = """\
@DEVICE_JIT
def finish_value(total, rmode, den_host, den, den_mul):
    if rmode == 1:
        d = den_host
        if den.shape[0] != 0:
            d = den[0] * den_mul
        if d != 0.0:
            return total / d
        return math.nan
    return total


@DEVICE_JIT
def grad_scale(rmode, gscale, den, den_mul):
    # Gradient factor of a mean whose denominator lives on the device (zero when it is zero,
    # as on the CPU); otherwise the host's factor.
    if rmode == 1 and den.shape[0] != 0:
        d = den[0] * den_mul
        if d != 0.0:
            return 1.0 / d
        return 0.0
    return gscale


@DEVICE_JIT
def store_flags(flags, shf, fparts, fres):
    # OR of the target flags: fres[0] in a one-block grid, else this block's fparts entry.
    if fparts.shape[0] != 0 or fres.shape[0] != 0:
        flags = block_or(flags, shf)
        if cuda.threadIdx.x == 0:
            if cuda.gridDim.x == 1:
                if fres.shape[0] != 0:
                    fres[0] = flags
            else:
                fparts[cuda.blockIdx.x] = flags


@DEVICE_JIT
def store_block(acc, flags, sh, shf, partials, fparts, result, fres, rmode, den_host, den, den_mul):
    # End of a reduction kernel, called by every thread. A one-block grid finishes here
    # (result[0], fres[0]); a larger grid writes this block's partials for finish_kernel. Which
    # arrays have a size says what is wanted: value (partials or result), flags (fparts or fres).
    if partials.shape[0] != 0 or result.shape[0] != 0:
        acc = block_sum(acc, sh)
        if cuda.threadIdx.x == 0:
            if cuda.gridDim.x == 1:
                result[0] = finish_value(acc, rmode, den_host, den, den_mul)
            else:
                partials[cuda.blockIdx.x] = acc
    store_flags(flags, shf, fparts, fres)
"""

_COMMON_BODY = """\
@KERNEL_JIT
def finish_kernel(partials, nparts, fparts, rmode, den_host, den, den_mul, result, fres):
    # The second stage: one block adds the partials in a fixed order (thread t takes t, t + BLOCK,
    # ...; then the block tree) and ORs the flags.
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    tid = cuda.threadIdx.x
    acc = 0.0
    flags = 0
    j = tid
    while j < nparts:
        if partials.shape[0] != 0:
            acc += partials[j]
        if fparts.shape[0] != 0:
            flags |= fparts[j]
        j += BLOCK
    acc = block_sum(acc, sh)
    flags = block_or(flags, shf)
    if tid == 0:
        if result.shape[0] != 0:
            result[0] = finish_value(acc, rmode, den_host, den, den_mul)
        if fres.shape[0] != 0:
            fres[0] = flags


@KERNEL_JIT
def wsum_kernel(w, n, round32, partials, fparts, result, fres):
    # Sum of a weight array in float64 (a denominator): first stage, or all of it in one block.
    # round32: each weight rounded to float32 first, as the kernels that multiply by it use it
    # (elementwise losses computed in float32; as the CPU, which converts the weights).
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    acc = 0.0
    while i < n:
        if round32 != 0:
            acc += float64(float32(w[i]))
        else:
            acc += float64(w[i])
        i += step
    store_block(acc, 0, sh, shf, partials, fparts, result, fres, 0, 0.0, partials, 1.0)


@KERNEL_JIT
def labels_kernel(labels, cw, sw, ignore, use_ignore, C, R, partials, fparts, result, fres):
    # Class labels of the row losses and their class weights. Flags: 1 where a label is outside
    # [0, C) (and not ignore_index when use_ignore), 2 where an unsigned 64-bit label does not fit
    # in int64 (it would wrap to a negative number, possibly ignore_index), 4 where a class weight
    # is NaN (as the CPU's checks). Value: the denominator of cross_entropy's "mean", the sum over
    # kept rows of sample weight x class weight of the label. Value and flags are each wanted or
    # not (sizes); R = 0 checks the class weights alone.
    sh = cuda.shared.array(SHN, float64)
    shf = cuda.shared.array(SHN, int64)
    start = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    acc = 0.0
    flags = 0
    j = start if fparts.shape[0] != 0 or fres.shape[0] != 0 else cw.shape[0]
    while j < cw.shape[0]:
        if cw[j] != cw[j]:
            flags |= 4
        j += step
    i = start
    while i < R:
        raw = labels[i]
        y = int64(raw)
        if y < 0 and raw >= 0:  # only an unsigned label >= 2**63 wraps to a negative int64
            flags |= 2
        elif use_ignore != 0 and y == ignore:
            pass
        elif y < 0 or y >= C:
            flags |= 1
        else:
            w = 1.0
            if cw.shape[0] != 0:
                w = float64(cw[y])
            if sw.shape[0] != 0:
                w = w * float64(sw[i])
            acc += w
        i += step
    store_block(acc, flags, sh, shf, partials, fparts, result, fres, 0, 0.0, partials, 1.0)


@KERNEL_JIT
def gather_kernel(base, flat, n, ndim, shape, strides, off0, scatter):
    # flat[i] = base[off(i)] (or the reverse when scatter), where off(i) is the offset of the
    # i-th element, in C order, of an array of `shape` with element `strides` into `base`.
    i = cuda.blockIdx.x * BLOCK + cuda.threadIdx.x
    step = cuda.gridDim.x * BLOCK
    while i < n:
        rem = i
        off = off0
        k = ndim - 1
        while k >= 0:
            d = shape[k]
            q = rem // d
            off += (rem - q * d) * strides[k]
            rem = q
            k -= 1
        if scatter != 0:
            base[off] = flat[i]
        else:
            flat[i] = base[off]
        i += step
"""


def use_shuffles():
    """Whether generated reductions use warp shuffles (not under the simulator, which has none)."""
    from numba import config

    from .. import _config
    return not config.ENABLE_CUDASIM and bool(_config.CUDA_WARP_SHUFFLE)


def header(ct="float64", group=1, imports=(), block=None, min_blocks=None):
    """The import block of a generated CUDA module (block size, reduction path, jit options).

    ``block``: threads per block (default ``_config.CUDA_BLOCK``). On a GPU the kernels get it
    as their launch bound, with ``min_blocks`` resident blocks per SM when given (the compiler
    then keeps registers within 65536 / (block * min_blocks)), and the vector load/store
    intrinsics (kernels/cuda_vec.py) are imported; the simulator gets Python versions of those."""
    from numba import config

    from .. import _config
    block = int(_config.CUDA_BLOCK if block is None else block)
    if block < 32 or block > 1024 or block & (block - 1):
        raise ValueError(f"fastloss._config CUDA block sizes must be powers of two in [32, 1024], got {block}")
    sim = bool(config.ENABLE_CUDASIM)
    scalar_opts = dict(_config.CUDA_SCALAR)
    kernel_opts = dict(_config.CUDA_KERNEL)
    if sim:  # the simulator's jit takes few options
        scalar_opts = {"device": True}
        kernel_opts = {}
        vec = "\n" + _VEC_SIM
    else:
        kernel_opts.setdefault("launch_bounds", (block, int(min_blocks)) if min_blocks else block)
        vec = "from fastloss.kernels.cuda_vec import ld4, ld4_lu, st4, st4_cs"
    shn = block // 32 if use_shuffles() else block
    return _HEADER.format(imports="\n".join(imports), sim=sim, block=block, shn=shn, group=group, ct=ct,
                          scalar_opts=scalar_opts, kernel_opts=kernel_opts, vec=vec)


def reductions():
    """Source of the block/group reductions (sum, max, or) and the finishing helpers."""
    tmpl = _SHUFFLE_OP if use_shuffles() else _TREE_OP
    parts = [tmpl.format(name=name, combine=comb) for name, comb in _COMBINE.items()]
    parts.append(_FINISH)
    return "\n\n".join(parts)


def build_common():
    """The module of kernels shared by all losses (one per block size and reduction path)."""
    return codegen.load_module("cuda_common", header(), reductions() + "\n\n" + _COMMON_BODY)
