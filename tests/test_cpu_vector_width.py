"""The CPU kernels' vector width (``_config.CPU_VECTOR_BITS``, ``prefer_vector_width`` in
kernels/cpu_helpers.py): the attribute reaches LLVM, the loops use it where the CPU has 512-bit
vectors, and the width changes no number. Also the shape of the loops LLVM makes of them: the
map loops of the exp/log losses interleaved (``or_bits``, ``keep``)."""
import re
import types as pytypes

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest

from fastloss import _config
from fastloss.kernels.cpu_helpers import prefer_vector_width

from _cases import elementwise_data
from _checks import same_bits

_HAS_AVX512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
_needs_avx512 = pytest.mark.skipif(not _HAS_AVX512, reason="the CPU has no 512-bit vectors: every width gives AVX2's")


def _sum_of_squares(bits):
    @numba.njit(error_model="numpy")
    def kernel(x):
        prefer_vector_width(bits)
        lanes = np.zeros(64)
        for k0 in range(0, x.size - x.size % 64, 64):
            b = x[k0:k0 + 64]
            for j in range(64):
                lanes[j] += b[j] * b[j]
        return lanes.sum()
    return kernel


def test_attribute_reaches_llvm_and_the_kernel_still_computes():
    x = np.arange(64 * 50, dtype=np.float32) / 100
    expect = float(np.sum(x.astype(np.float64) ** 2))  # the lanes add float32 squares: same to 1e-6
    for bits in (512, 0):
        kernel = _sum_of_squares(bits)
        assert kernel(x) == pytest.approx(expect, rel=1e-6)
        ir = kernel.inspect_llvm(kernel.signatures[0])
        assert ('"prefer-vector-width"="512"' in ir) == (bits == 512), bits


def test_attribute_needs_a_literal_width():
    @numba.njit
    def kernel(bits):
        prefer_vector_width(bits)
        return bits

    with pytest.raises(numba.core.errors.TypingError):
        kernel(512)


def _chunk_kernel(name, bits):
    """A loss's float32 value_chunk compiled afresh (code loaded from the disk cache cannot be
    inspected), with VECTOR_BITS = bits in its module's globals, and its option arguments."""
    import fastloss
    loss = getattr(fastloss, name)
    static, params = loss.kernel_arguments(loss._parse("value", {})[3], (8,), np.dtype(np.float32))
    fn = loss.cpu_kernels(static, "float32").value_chunk.py_func
    fn = pytypes.FunctionType(fn.__code__, dict(fn.__globals__, VECTOR_BITS=bits), fn.__name__)
    return numba.njit(**dict(_config.CPU_KERNEL, cache=False))(fn), params


@_needs_avx512
@pytest.mark.parametrize("name", ["mse", "bce_with_logits"])
def test_loops_use_512_bit_vectors(name):
    """LLVM's tuning for Intel's AVX-512 cores would pick 256-bit vectors (AMD's: 512 anyway)."""
    assert _config.CPU_VECTOR_BITS == 512
    pred, target, _ = elementwise_data(name, (4096,), np.dtype(np.float32), np.random.default_rng(0))
    kernel, params = _chunk_kernel(name, 512)
    kernel(pred, target, None, None, *params, 0, pred.size)
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert re.search(r"%zmm\d+", asm), f"{name}: no 512-bit vector instruction in value_chunk"


@_needs_avx512
@pytest.mark.parametrize("name", ["mse", "log_cosh", "bce", "bce_with_logits", "hinge", "sigmoid_focal"])
def test_vector_width_changes_no_number(fl, name, rng, monkeypatch):
    """The same kernels at LLVM's default width and at 512 bits give the same bits: the sums'
    order is written in the source and no flag lets LLVM reassociate or contract."""
    loss = getattr(fl, name)
    n = 3000  # several blocks and a partial one
    pred, target, _ = elementwise_data(name, (n,), np.dtype(np.float32), rng)
    static, params = loss.kernel_arguments(loss._parse("value", {})[3], (n,), np.dtype(np.float32))
    outs = []
    for bits in (0, 512):
        monkeypatch.setattr(_config, "CPU_VECTOR_BITS", bits)
        monkeypatch.setattr(loss, "_cpu", {})  # build the module again, with this width in its text
        k = loss.cpu_kernels(static, "float32")
        vals, grad = np.empty(n, np.float32), np.empty(n, np.float32)
        s, _ = k.both_chunk(pred, target, None, vals, grad, 0.5, *params, 0, n)
        outs.append((np.float64(s), vals, grad))
    assert np.isfinite(outs[0][0])
    for what, a, b in zip(["sum", "values", "grad"], *outs):
        assert same_bits(a, b), f"{name}: {what} differ between vector widths"


def test_or_bits_and_keep():
    """cpu_helpers.or_bits ORs a float's bit pattern into an integer as wide; keep compiles to
    nothing but keeps its argument computed (the map loops' interleaving reduction)."""
    from fastloss.kernels.cpu_helpers import keep, or_bits

    @numba.njit
    def fold(x, zero):
        seen = zero
        for i in range(x.size):
            seen = or_bits(seen, x[i])
        keep(seen)
        return seen

    x32 = np.array([1.0, -2.0, np.nan], np.float32)
    x64 = x32.astype(np.float64)
    assert fold(x32, np.int32(0)) == np.bitwise_or.reduce(x32.view(np.int32))
    assert fold(x64, np.int64(0)) == np.bitwise_or.reduce(x64.view(np.int64))
    with pytest.raises(numba.core.errors.TypingError):
        fold(x64, np.int32(0))  # the integer must be as wide as the float


def _loop_bodies(asm):
    """The instructions of each innermost loop of an assembly listing (label to backward jump)."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L\w+):", line))}
    jumps = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := re.match(r"\s+j\w+\s+(\.L\w+)", line)) and labels.get(m.group(1), i) < i]
    return ["\n".join(lines[a:b + 1]) for a, b in jumps
            if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in jumps)]


@_needs_avx512
@pytest.mark.parametrize("name", ["log_cosh", "poisson_nll"])
def test_map_loops_interleave(name):
    """The map loop of a loss without a binary-target variant is interleaved (two or more vectors
    per iteration: LLVM does that only for a loop with a reduction, hence or_bits and keep):
    log_cosh's value loop took 0.70 ns per element without, 0.55 with. On AVX-512 each vector's
    exp ends in one vscalefps, so an interleaved loop has more than one."""
    pred, target, _ = elementwise_data(name, (4096,), np.dtype(np.float32), np.random.default_rng(0))
    kernel, params = _chunk_kernel(name, 512)
    kernel(pred, target, None, None, *params, 0, pred.size)
    scalefs = [body.count("vscalefps") for body in _loop_bodies(kernel.inspect_asm(kernel.signatures[0]))]
    assert max(scalefs) >= 2, f"{name}: the exp loop computes one vector per iteration ({scalefs})"
