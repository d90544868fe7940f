"""Small jit helpers that generated CPU kernels import (never copy)."""
from numba import types
from numba.extending import overload


def param_at(value, i):
    """A loss option at element ``i``: options are scalars or per-element arrays."""
    return value[i] if hasattr(value, "__getitem__") else value


@overload(param_at, inline="always")
def _param_at(value, i):
    if isinstance(value, types.Array):
        return lambda value, i: value[i]
    return lambda value, i: value
