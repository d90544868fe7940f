"""Property-based tests (hypothesis): random shapes and values against reference.py.

Only losses whose value and gradient are continuous are used, so that float rounding near a
kink cannot flip a branch."""
import numpy as np
import pytest

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import reference as ref  # noqa: E402
from conftest import assert_close  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
values = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def pair(draw, dtype=np.float64, elements=values):
    shape = draw(shapes)
    p = draw(hnp.arrays(dtype, shape, elements=elements))
    t = draw(hnp.arrays(dtype, shape, elements=elements))
    w = draw(st.one_of(st.none(), hnp.arrays(dtype, shape, elements=st.floats(0.0, 3.0))))
    red = draw(st.sampled_from(["mean", "sum", "none"]))
    return p, t, w, red


@SETTINGS
@given(pair(), st.sampled_from(["mse", "huber", "log_cosh", "bce_with_logits"]))
def test_elementwise_random(fl, data, name):
    p, t, w, red = data
    if name == "bce_with_logits":
        t = np.abs(np.tanh(t))  # targets in [0, 1]
    ev, eg = ref.ELEMENTWISE[name](p, t, reduction=red, sample_weight=w)
    v, g = getattr(fl, name).value_and_grad(p, t, reduction=red, sample_weight=w)
    assert_close(v, ev, np.float64, factor=100)
    assert_close(g, eg, np.float64, factor=100)


@st.composite
def rows(draw):
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5))
    C = draw(st.integers(1, 6))
    x = draw(hnp.arrays(np.float64, lead + (C,), elements=values))
    y = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, C - 1)))
    ls = draw(st.sampled_from([0.0, 0.3]))
    red = draw(st.sampled_from(["mean", "sum", "none"]))
    return x, y, ls, red


@SETTINGS
@given(rows())
def test_cross_entropy_random(fl, data):
    x, y, ls, red = data
    ev, eg = ref.cross_entropy(x, y, label_smoothing=ls, reduction=red)
    v, g = fl.cross_entropy.value_and_grad(x, y, label_smoothing=ls, reduction=red)
    assert_close(v, ev, np.float64, factor=100)
    assert_close(g, eg, np.float64, factor=100)
