"""Memory layouts: strided, negative strides, Fortran order, read-only, non-native byte order,
zero strides. Every layout must give the reference answer, and inputs are never modified."""
import contextlib

import numpy as np
import pytest

import reference as ref
from _cases import elementwise_data, row_data, sample_weight
from conftest import assert_close


def _strided(a):
    big = np.empty((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype) if a.ndim else None
    if big is None:
        return a
    big[::2] = a
    big[1::2] = np.nan if a.dtype.kind == "f" else 0
    return big[::2]


def _reversed(a):
    if not a.ndim:
        return a
    r = np.ascontiguousarray(a[::-1])
    return r[::-1]  # same values as a, negative stride on axis 0


def _fortran(a):
    return np.asfortranarray(a)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _byteswapped(a):
    """Same values in the non-native byte order."""
    return a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))


def _transposed(a):
    """Same values, a non-contiguous transposed view (only for 2-D)."""
    if a.ndim != 2:
        return a
    return np.ascontiguousarray(a.T).T


LAYOUTS = {
    "strided": _strided,
    "negstride": _reversed,
    "fortran": _fortran,
    "readonly": _readonly,
    "bigendian": _byteswapped,
    "transposed": _transposed,
}


def _assert_same_values(a, b):
    assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def _check_layout(fl, name, pred, target, kw, sw, which, layout, refs):
    conv = LAYOUTS[layout]
    P = conv(pred) if which in ("pred", "all") else pred
    T = conv(target) if which in ("target", "all") else target
    W = conv(sw) if sw is not None and which in ("weight", "all") else sw
    _assert_same_values(P, pred)
    _assert_same_values(T, target)
    copies = [np.array(x, copy=True) for x in (P, T, W) if x is not None]
    loss = getattr(fl, name)
    for red, (ev, eg) in refs.items():
        v, g = loss.value_and_grad(P, T, reduction=red, sample_weight=W, **kw)
        dt = pred.dtype
        assert np.asarray(g).dtype == np.dtype(dt.name), np.asarray(g).dtype
        assert_close(v, ev, dt, err_msg=f"{layout} {which} {red}")
        assert_close(g, eg, dt, err_msg=f"{layout} {which} {red}")
        assert_close(loss(P, T, reduction=red, sample_weight=W, **kw), ev, dt)
        assert_close(loss.grad(P, T, reduction=red, sample_weight=W, **kw), eg, dt)
    for x, c in zip([x for x in (P, T, W) if x is not None], copies):
        _assert_same_values(x, c)  # inputs unmodified


@pytest.mark.parametrize("which", ["pred", "target", "weight", "all"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["mse", "huber", "bce_with_logits", "sigmoid_focal"])
def test_elementwise_layouts(fl, name, dtype, layout, which, rng):
    pred, target, kw = elementwise_data(name, (6, 5), dtype, rng)
    sw = sample_weight(rng, (6, 5), dtype)
    refs = {red: ref.ELEMENTWISE[name](pred, target, reduction=red, sample_weight=sw, **kw)
            for red in ["mean", "none"]}
    _check_layout(fl, name, pred, target, kw, sw, which, layout, refs)


@pytest.mark.parametrize("which", ["pred", "target", "weight", "all"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,opts", [("cross_entropy", {}), ("cross_entropy", {"_probs": True}),
                                       ("multi_margin", {}), ("kl_div", {})],
                         ids=["ce", "ce-probs", "mm", "kl"])
def test_row_layouts(fl, name, opts, layout, which, rng):
    pred, target, kw = row_data(name, (6, 5), np.float32, rng, opts)
    sw = sample_weight(rng, (6,), np.float32)
    refs = {red: ref.ROWS[name](pred, target, reduction=red, sample_weight=sw, **kw)
            for red in ["mean", "sum", "none"]}
    _check_layout(fl, name, pred, target, kw, sw, which, layout, refs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_row_layouts_3d_with_axis(fl, dtype, rng):
    """Class axis in the middle of a transposed, strided 3-D view."""
    base = rng.standard_normal((8, 5, 4)).astype(dtype)
    pred = base.transpose(2, 1, 0)[:, :, ::2]  # shape (4, 5, 4), class axis 1
    y = rng.integers(0, 5, size=(4, 4))
    for axis in (1, -2):
        ev, eg = ref.cross_entropy(pred, y, axis=axis, label_smoothing=0.1)
        v, g = fl.cross_entropy.value_and_grad(pred, y, axis=axis, label_smoothing=0.1)
        assert_close(v, ev, dtype)
        assert_close(g, eg, dtype)


def test_zero_strides_broadcast_view(fl, rng):
    pred = np.broadcast_to(rng.standard_normal(5), (4, 5))  # read-only, stride 0
    target = rng.standard_normal((4, 5))
    ev, eg = ref.log_cosh(pred, target, reduction="sum")
    v, g = fl.log_cosh.value_and_grad(pred, target, reduction="sum")
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)
    x = np.broadcast_to(rng.standard_normal((1, 6)), (3, 6))
    y = np.array([0, 5, 2])
    ev, eg = ref.cross_entropy(x, y)
    v, g = fl.cross_entropy.value_and_grad(x, y)
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)


def test_strided_labels(fl, rng):
    pred = rng.standard_normal((5, 4))
    yb = np.array([[0, 9], [3, 9], [1, 9], [2, 9], [3, 9]], dtype=np.int32)
    y = yb[:, 0]
    ev, eg = ref.cross_entropy(pred, y)
    v, g = fl.cross_entropy.value_and_grad(pred, y)
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)
    y_be = y.astype(">i8")
    v = fl.multi_margin(pred, y_be[::-1][::-1])
    assert_close(v, ref.multi_margin(pred, y)[0], np.float64)


@pytest.mark.parametrize("layout", ["strided", "negstride", "fortran"])
def test_out_layouts(fl, layout, rng):
    pred, target, _ = elementwise_data("huber", (6, 4), np.float64, rng)
    _, eg = ref.huber(pred, target)
    if layout == "strided":
        buf = np.full((12, 4), -5.0)
        out = buf[::2]
    elif layout == "negstride":
        buf = np.full((6, 4), -5.0)
        out = buf[::-1]
    else:
        buf = np.full((6, 4), -5.0, order="F")
        out = buf
    fl.huber.value_and_grad(pred, target, out=out)
    assert_close(out, eg, np.float64)
    if layout == "strided":
        assert np.all(buf[1::2] == -5.0)


def test_pos_weight_layouts(fl, rng):
    pred, target, _ = elementwise_data("bce_with_logits", (4, 6), np.float32, rng)
    pw = rng.uniform(0.5, 3.0, 12)[::2]
    ev, eg = ref.bce_with_logits(pred, target, pos_weight=pw)
    v, g = fl.bce_with_logits.value_and_grad(pred, target, pos_weight=pw.astype(">f8"))
    assert_close(v, ev, np.float32)
    assert_close(g, eg, np.float32)
    pwc = pw.copy()
    v, g = fl.bce_with_logits.value_and_grad(pred, target, pos_weight=pw[::-1][::-1])
    assert_close(v, ev, np.float32)
    assert np.array_equal(pw, pwc)


def test_class_weight_layouts(fl, rng):
    pred = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    cw = rng.uniform(0.2, 2.0, 10)[::2]
    ev, eg = ref.cross_entropy(pred, y, class_weight=cw)
    v, g = fl.cross_entropy.value_and_grad(pred, y, class_weight=cw.astype(">f4"))
    assert_close(v, ev, np.float32)  # the big-endian float32 copy rounds the weights
    v, g = fl.cross_entropy.value_and_grad(pred, y, class_weight=cw)
    assert_close(v, ev, np.float64)
    assert_close(g, eg, np.float64)


@contextlib.contextmanager
def _counting_compilations():
    """Counts Numba's compilations (``numba:compile`` events) inside the ``with`` block."""
    from numba.core import event

    seen = []

    class Listener(event.Listener):
        def on_start(self, ev):
            seen.append(ev)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Listener()):
        yield seen


@pytest.mark.parametrize("name", ["huber", "cross_entropy"])
def test_readonly_inputs_use_the_kernels_compiled_for_writeable_ones(fl, name, rng):
    """Numba types a read-only array apart from a writeable one: passed as it is, a read-only
    input (a read-only memory map, np.frombuffer of bytes, an option broadcast to pred's shape)
    would compile the loss's whole set of kernels again. The boundary hands the kernels a
    writeable-typed view of the same memory instead: the same answer, no new compilation, no
    copy, and the input is still not written."""
    if name == "huber":
        pred, target, kw = elementwise_data(name, (6, 5), np.float64, rng)
        sw = sample_weight(rng, (6, 5), np.float64)
    else:
        pred, target, kw = row_data(name, (6, 5), np.float64, rng, {})
        sw = sample_weight(rng, (6,), np.float64)
    loss = getattr(fl, name)
    expected = {red: loss.value_and_grad(pred, target, reduction=red, sample_weight=sw, **kw)
                for red in ("mean", "none")}  # compiles the kernels for writeable inputs
    ro = [_readonly(a) for a in (pred, target, sw)]
    with _counting_compilations() as compiles:
        for red, (ev, eg) in expected.items():
            v, g = loss.value_and_grad(*ro[:2], reduction=red, sample_weight=ro[2], **kw)
            assert_close(v, ev, np.float64)
            assert_close(g, eg, np.float64)
    assert len(compiles) == 0
    for a, b in zip(ro, (pred, target, sw)):
        _assert_same_values(a, b)
        assert not a.flags.writeable
