"""Small jit helpers that generated CPU kernels import (never copy)."""
from numba import njit, types
from numba.extending import overload

from .._config import CPU_SCALAR


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
def all_binary(t):
    """Whether every value of ``t`` is exactly 0 or 1: a count, which LLVM vectorises (a loop
    that stops at the first other value would not be)."""
    n = 0
    for j in range(t.size):
        if (t[j] == 0.0) | (t[j] == 1.0):
            n += 1
    return n == t.size


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
