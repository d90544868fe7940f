"""Small jit helpers that generated CPU kernels import (never copy)."""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import CPU_KERNEL, CPU_SCALAR, CPU_VECTOR_BITS
from .vmath import vfma, vlog1p


def param_at(value, i):
    """A loss option at element ``i``: options are scalars or per-element arrays."""
    return value[i] if hasattr(value, "__getitem__") else value


@overload(param_at, inline="always")
def _param_at(value, i):
    if isinstance(value, types.Array):
        return lambda value, i: value[i]
    return lambda value, i: value


def param_window(value, start, stop):
    """A loss option for elements [start, stop): a slice of a per-element array, or the scalar."""
    return value[start:stop] if hasattr(value, "__getitem__") else value


@overload(param_window, inline="always")
def _param_window(value, start, stop):
    if isinstance(value, types.Array):
        return lambda value, start, stop: value[start:stop]
    return lambda value, start, stop: value


def param_is(value, const):
    """Whether a loss option is the scalar ``const`` (never true of a per-element array)."""
    return not hasattr(value, "__getitem__") and value == const


@overload(param_is, inline="always")
def _param_is(value, const):
    if isinstance(value, types.Array):
        return lambda value, const: False
    return lambda value, const: value == const


@njit(**CPU_SCALAR)
def lane_sum(acc):
    """Σ of the lane accumulators, in a fixed order (part of the result's definition)."""
    s = 0.0
    for j in range(acc.size):
        s += acc[j]
    return s


@njit(**CPU_SCALAR)
def lanes_add(acc, buf):
    """acc[j % LANES] += buf[j] for every j, in float64: a fixed summation order that LLVM
    vectorises without reassociation."""
    lanes = acc.size
    for k0 in range(0, buf.size, lanes):
        b = buf[k0:k0 + lanes]
        for j in range(b.size):
            acc[j] += b[j]


@njit(**CPU_SCALAR)
def strips4(buf, k0, lanes):
    """The four strips of ``lanes`` elements from ``buf[k0]`` on, as views indexed from 0 (see
    lanes_add4 on why not ``buf[k0 + r * lanes + j]``)."""
    return (buf[k0:k0 + lanes], buf[k0 + lanes:k0 + 2 * lanes], buf[k0 + 2 * lanes:k0 + 3 * lanes],
            buf[k0 + 3 * lanes:k0 + 4 * lanes])


@njit(**CPU_SCALAR)
def lanes_add4(acc, buf):
    """``lanes_add``, four strips of LANES values per pass: each lane adds its four in order of
    j, so the sums are the same bit for bit, and the lanes are loaded and stored once per four
    strips instead of every strip.

    The elementwise kernels' blocks use it: float32, one core, in cache, it took 0.02 to 0.09 ns
    per element off bce_with_logits, log_cosh, sigmoid_focal and poisson_nll. It compiles to
    more code (log_cosh's four kernels, both dtypes, compiled 0.4 s longer), so the row kernels, where it
    changed nothing measurable, keep ``lanes_add`` (cross_entropy compiled 1.5 s longer with
    it). The strips are views indexed from 0: indexing ``buf`` at ``k0 + r * lanes + j``, whose
    sign LLVM cannot prove, made it vectorise this loop with gathers inside bce's kernel."""
    lanes = acc.size
    full = buf.size - buf.size % (4 * lanes)
    for k0 in range(0, full, 4 * lanes):
        b0, b1, b2, b3 = strips4(buf, k0, lanes)
        for j in range(lanes):
            acc[j] = (((acc[j] + b0[j]) + b1[j]) + b2[j]) + b3[j]
    lanes_add(acc, buf[full:])  # the last, partial pass: a strip at a time


@njit(**CPU_SCALAR)
def _grow(s, e):
    """(1 + s)(1 + e) − 1 as s + e + s·e, rounded twice (an add, an FMA): no 1 + e is ever
    rounded, so an e far below an ulp of 1 keeps its digits while s is small."""
    return vfma(s, e, s + e)


@intrinsic(prefer_literal=True)
def prefer_vector_width(typingctx, bits):
    """Ask LLVM to vectorise the function that calls this with vectors of ``bits`` bits (a
    literal int; 0 leaves LLVM's choice), by giving that function the attribute
    ``"prefer-vector-width"``, as clang's ``-mprefer-vector-width`` does. It generates no code.

    Why: LLVM's tuning for Intel's AVX-512 cores (Skylake-SP to Sapphire Rapids, and the client
    ones) prefers 256-bit vectors, so Numba's loops there use half the width the core has; on
    AMD's (Zen 4, Zen 5) it already picks 512. The width is the most a loop may use: on a CPU
    without AVX-512 the loops keep AVX2's 256 bits (or SSE's 128). The kernels call it once,
    first thing; the jit functions they inline (at Numba-IR level) are part of the same LLVM
    function, so every loop in it gets the width.

    llvmlite checks function attributes against a list of LLVM's keyword attributes, which
    string attributes are not in, so this adds it to the attribute set directly; if a llvmlite
    ever refuses that, the kernel compiles with LLVM's default width instead of failing."""
    if not isinstance(bits, types.IntegerLiteral):
        return None
    width = bits.literal_value

    def codegen(context, builder, signature, args):
        if width:
            try:
                set.add(builder.function.attributes, f'"prefer-vector-width"="{width}"')
            except Exception:  # pragma: no cover - only a llvmlite of another design gets here
                pass
        return context.get_dummy_value()

    return types.none(bits), codegen


@intrinsic
def or_bits(typingctx, acc, x):
    """``acc`` OR the bit pattern of the float ``x`` (``acc`` an integer as wide as ``x``): one
    vector OR per vector of a loop, the cheapest reduction there is (see ``keep``)."""
    widths = {types.float32: 32, types.float64: 64}
    if not (x in widths and isinstance(acc, types.Integer) and acc.bitwidth == widths[x]):
        return None

    def codegen(context, builder, signature, args):
        total, value = args
        return builder.or_(total, builder.bitcast(value, total.type))

    return acc(acc, x), codegen


@intrinsic
def keep(typingctx, value):
    """Use the integer ``value`` in an empty inline-assembly statement: no instruction, but LLVM
    must compute ``value`` (``benchmark::DoNotOptimize``'s trick).

    Why: LLVM's loop vectoriser interleaves a large loop (two or more vectors per iteration,
    their operations side by side) only if the loop has a reduction. A map loop evaluating an exp
    and a polynomial is one chain of some 25 dependent operations per vector; without
    interleaving the core's scheduler holds too few of them at once to keep its vector units busy.
    The elementwise kernels' map loops therefore OR the bits of each result into an integer
    (``or_bits``) and ``keep`` it (``_INTERLEAVED`` in cpu_elementwise.py). One core, in cache,
    float32: log_cosh's value 0.70-0.74 -> 0.55 ns per element (Intel AVX-512 VM)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (v,) = args
        fnty = ir.FunctionType(ir.VoidType(), [v.type])
        builder.asm(fnty, "", "r", [v], side_effect=True)
        return context.get_dummy_value()

    return types.none(value), codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to bring the cache line of ``arr[i]`` (a 1-d array) into its caches: one
    ``prefetcht0``, which reads nothing into the program and cannot fault. The caller keeps
    ``i`` in bounds all the same.

    The row kernels use it to fetch the next row from memory while they compute the exps of
    this one (which read the row from L2): the two passes over a row otherwise take turns,
    one waiting on memory, the other on the vector units."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty, ity = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        index = context.cast(builder, args[1], ity, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, 0: for a read, 3: keep in every cache level, 1: data, not instructions)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen


@njit(**CPU_SCALAR)
def prefetch_lines(a, start, stop):
    """``prefetch`` every 64-byte line of a[start:stop] (clipped to a's bounds)."""
    step = max(1, 64 // a.itemsize)
    for c in range(max(start, 0), min(stop, a.size), step):
        prefetch(a, c)


# The helpers of the log1p_sum_form kernels (cpu_elementwise.py, _PRODUCT). lanes_add_log1p, with
# its vlog1p, is a compiled function of its own (cached on disk, once per dtype, for every loss),
# not inlined as the others are: it runs once per 4096 elements, where a call costs nothing
# measurable, and inlined it added 0.15-0.3 s to the compile time of each kernel using it.
# lanes_log1p_mul4, which runs every 1024, stays inlined: called, it cost bce_with_logits' value
# 0.245 -> 0.28 ns per element (one core, in cache, float32), and log_cosh's all its gain.


@njit(**CPU_SCALAR)
def lanes_log1p_mul4(prods, buf):
    """prods[j % LANES] <- (1 + prods[j % LANES])(1 + buf[j]) − 1 for every j: each lane holds
    Π(1 + e) − 1 of its elements, whose log1p is the Σ log1p(e) of a loss's ``log1p_sum_form``.
    Four strips of LANES per pass, combined pairwise before they meet the lane (a shorter chain
    of roundings, and of latency, than one factor at a time); the partial pass at the end a strip
    at a time. The order is fixed by the buffer's length alone, as the sums' is."""
    lanes = prods.size
    full = buf.size - buf.size % (4 * lanes)
    for k0 in range(0, full, 4 * lanes):
        b0, b1, b2, b3 = strips4(buf, k0, lanes)
        for j in range(lanes):
            prods[j] = _grow(prods[j], _grow(_grow(b0[j], b1[j]), _grow(b2[j], b3[j])))
    for k0 in range(full, buf.size, lanes):
        b = buf[k0:k0 + lanes]
        for j in range(b.size):
            prods[j] = _grow(prods[j], b[j])


@njit(**CPU_KERNEL)
def lanes_add_log1p(acc, prods):
    """acc[j] += log1p(prods[j]) in float64 (the log in the products' dtype), then prods[j] = 0:
    the lanes' products of ``lanes_log1p_mul4`` moved into the lanes' sums."""
    prefer_vector_width(CPU_VECTOR_BITS)
    for j in range(acc.size):
        acc[j] += vlog1p(prods[j])
        prods[j] = 0.0


@njit(**CPU_SCALAR)
def lanes_log1p_pass(acc, prods, ebuf, passes, every):
    """A full buffer of factors into the lanes' products (lanes_log1p_mul4), and on the
    ``every``-th such pass since the last, the products into the sums (lanes_add_log1p): the
    number of passes since then."""
    lanes_log1p_mul4(prods, ebuf)
    passes += 1
    if passes == every:
        lanes_add_log1p(acc, prods)
        return 0
    return passes
