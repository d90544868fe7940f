"""Assertions shared by the test modules (result types, values against the reference)."""
import numpy as np

from conftest import Backend, assert_close

NUMPY = Backend()


def check_value(v, expected, dtype, reduction, none_shape, backend=NUMPY, factor=1.0, msg=""):
    """A loss value: reduced -> scalar of pred's dtype; "none" -> array of ``none_shape``."""
    if reduction == "none":
        if backend is NUMPY and none_shape == () and isinstance(v, np.generic):
            # a 0-d "none" result may come back as a NumPy scalar
            assert v.dtype == np.dtype(dtype), (v.dtype, dtype)
        else:
            backend.check_array(v, dtype, none_shape)
    else:
        backend.check_scalar(v, dtype)
    assert_close(backend.to_numpy(v), expected, dtype, factor=factor, err_msg=f"value {msg}")


def check_grad(g, expected, dtype, shape, backend=NUMPY, factor=1.0, msg=""):
    if backend is NUMPY and shape == () and isinstance(g, np.generic):
        assert g.dtype == np.dtype(dtype)
    else:
        backend.check_array(g, dtype, shape)
    assert_close(backend.to_numpy(g), expected, dtype, factor=factor, err_msg=f"grad {msg}")


def same_bits(a, b):
    """Exact equality, NaN == NaN, for scalars/arrays of any backend (as NumPy)."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def check_vg_consistent(v, g, vg, backend=NUMPY):
    """value_and_grad returns exactly (__call__, .grad)."""
    assert isinstance(vg, tuple) and len(vg) == 2, type(vg)
    v2, g2 = vg
    assert same_bits(backend.to_numpy(v2), backend.to_numpy(v)), (v2, v)
    assert same_bits(backend.to_numpy(g2), backend.to_numpy(g))


def check_vg_matches(vg, ev, eg, dtype, reduction, none_shape, shape, backend=NUMPY, factor=1.0,
                     msg=""):
    """value_and_grad against the reference (exact equality with __call__/.grad is tested
    separately, in the invariant tests)."""
    assert isinstance(vg, tuple) and len(vg) == 2, type(vg)
    check_value(vg[0], ev, dtype, reduction, none_shape, backend=backend, factor=factor,
                msg="vg " + msg)
    check_grad(vg[1], eg, dtype, shape, backend=backend, factor=factor, msg="vg " + msg)
