"""Array families and dtype rules at the API boundary.

Everything a kernel receives has been through here: a NumPy array of a native-byte-order float
dtype the kernels are compiled for (float32 or float64), C-contiguous and flat. Everything a user
gets back goes through :func:`wrap` so that it comes back in the family the user passed
(NumPy in, NumPy out; torch in, torch out).
"""
import sys

import numpy as np

NUMPY = "numpy"
TORCH = "torch"

#: dtypes the CPU kernels are compiled for; float16 is computed in float32.
_COMPUTE = {np.dtype(np.float16): np.dtype(np.float32),
            np.dtype(np.float32): np.dtype(np.float32),
            np.dtype(np.float64): np.dtype(np.float64)}


def _is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


_HOST, _DEVICE, _TORCH_T, _ASK = 0, 1, 2, 3
_KIND = {}  # type -> how on_device decides for its instances


def _classify(t):
    mod = (getattr(t, "__module__", "") or "").split(".")[0]
    if mod == "torch" and hasattr(t, "is_cuda"):
        return _TORCH_T
    if getattr(t, "__cuda_ndarray__", False) or (mod in ("cupy", "numba") and hasattr(t, "__cuda_array_interface__")):
        return _DEVICE
    if issubclass(t, (np.ndarray, np.generic, int, float, complex, str, bytes, list, tuple, type(None))):
        return _HOST
    return _ASK


def on_device(x):
    """True for GPU arrays: anything exposing ``__cuda_array_interface__`` (Numba device arrays,
    CuPy, PyTorch CUDA tensors), and the CUDA simulator's arrays, which mark themselves with
    ``__cuda_ndarray__``. Checked without importing any GPU library, and without reading the
    interface itself (torch builds it on every access, and refuses it for tensors that require
    grad): torch tensors answer ``is_cuda``, and known families are decided by their type."""
    t = type(x)
    k = _KIND.get(t)
    if k is None:
        k = _KIND[t] = _classify(t)
    if k == _HOST:
        return False
    if k == _DEVICE:
        return True
    if k == _TORCH_T:
        return x.is_cuda
    return hasattr(x, "__cuda_array_interface__")


def any_on_device(*xs):
    return any(on_device(x) for x in xs if x is not None)


def family_of(x):
    return TORCH if _is_torch(x) else NUMPY


def _plain_ndarray(x, name):
    """``x`` (an ndarray) as a base-class ndarray: a subclass's methods may not mean what they
    mean for ndarray (``np.matrix.reshape(-1)`` stays 2-d), and a mask would be ignored."""
    if type(x) is np.ndarray:
        return x
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; fastloss does not apply masks (pass its .filled() "
                        "data, and zero sample weights where it is masked)")
    return x.view(np.ndarray)


def _torch_numpy(x, name):
    try:
        return x.numpy()
    except (TypeError, RuntimeError) as exc:  # sparse, quantized, nested, float8, ... tensors
        raise TypeError(f"{name}: a torch tensor fastloss cannot read ({x.layout}, {x.dtype}): {exc}") from None


def to_numpy(x, name):
    """``np.asarray`` of ``x``; any failure becomes a TypeError naming the argument."""
    if isinstance(x, np.ndarray):
        return _plain_ndarray(x, name)
    if _is_torch(x):
        if x.device.type != "cpu":
            raise TypeError(f"{name} is a torch tensor on {x.device}; the CPU backend needs CPU tensors")
        torch = sys.modules["torch"]
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.resolve_conj().resolve_neg()
        return _torch_numpy(x, name)
    if x is None:
        raise TypeError(f"{name} must be an array, not None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, not {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # an object whose __array__ raises, ragged lists, ...
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    return arr


_PRED_DTYPES = {}  # pred's dtype -> pred_dtypes' answer (dtype.newbyteorder costs 1-2 µs a call)


def pred_dtypes(pred):
    """(dtype to return, dtype to compute in) for a prediction array; TypeError if not real float."""
    dt = pred.dtype
    known = _PRED_DTYPES.get(dt)
    if known is not None:
        return known
    if dt.kind != "f":
        raise TypeError(f"pred must be a real floating-point array (float16, float32 or float64), got dtype {dt}")
    compute = _COMPUTE.get(dt.newbyteorder("="))
    if compute is None:
        raise TypeError(f"pred dtype {dt} is not supported; use float16, float32 or float64")
    known = _PRED_DTYPES[dt] = (dt.newbyteorder("="), compute)
    return known


class _ReadOnlyMemory:
    """Exposes a read-only array's memory through ``__array_interface__`` with the read-only bit
    clear, and keeps the array alive for as long as a view made from it is (``base``)."""

    def __init__(self, arr):
        self.base = arr
        self.__array_interface__ = {"data": (arr.__array_interface__["data"][0], False), "shape": arr.shape,
                                    "strides": None, "typestr": arr.dtype.str, "version": 3}


def contiguous(arr, dtype=None):
    """``arr`` as a C-contiguous array (of ``dtype``), copying only if needed. Unlike
    ``np.ascontiguousarray`` it keeps 0-d arrays 0-d.

    A read-only array (a read-only memory map, ``np.frombuffer`` of bytes, ``np.broadcast_to`` of
    an option that already has pred's shape, ...) comes back as a view of the same memory that is
    typed writeable. Numba types read-only arrays as a type of their own, so without this every
    loss would compile its whole set of kernels again (about 25 s for sigmoid_focal) the first
    time a read-only input arrives. Kernels never write their inputs, only the buffers this module
    allocates or the caller's ``out`` (which must be writeable: :func:`check_out`)."""
    arr = np.asarray(arr, dtype=dtype, order="C")
    if not arr.flags.writeable:
        arr = np.asarray(_ReadOnlyMemory(arr))
    return arr


def as_real(arr, name, dtype):
    """``arr`` as a C-contiguous array of ``dtype``; TypeError for non-real data."""
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return contiguous(arr, dtype)


def as_labels(arr, name):
    """Integer class labels as a C-contiguous int64 array; TypeError for non-integer dtypes."""
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels (or class probabilities of pred's shape), "
                        f"got dtype {arr.dtype} and shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has labels too large for int64")
    return contiguous(arr, np.int64)


def check_out(out, shape, dtype, name="out"):
    """Validate a user-given gradient buffer: an array of pred's shape and dtype, writeable."""
    if _is_torch(out):
        if out.device.type != "cpu":
            raise TypeError(f"{name} is on {out.device}; expected a CPU tensor")
        if out.is_neg() or out.is_conj():
            raise TypeError(f"{name} is a negated or conjugated view; pass a tensor fastloss can write into")
        out_np = _torch_numpy(out.detach(), name)
    elif isinstance(out, np.ndarray):
        out_np = _plain_ndarray(out, name)
    else:
        raise TypeError(f"{name} must be an array of pred's shape and dtype, got {type(out).__name__}")
    if out_np.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out_np.shape}, expected pred's shape {tuple(shape)}")
    if out_np.dtype.newbyteorder("=") != dtype or not out_np.dtype.isnative:
        raise TypeError(f"{name} has dtype {out_np.dtype}, expected pred's dtype {dtype}")
    if not out_np.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not out_np.flags.c_contiguous:
        check_one_place_per_element(out_np.shape, out_np.strides, name)
    return out_np


def check_one_place_per_element(shape, strides, name="out"):
    """A gradient buffer must not have elements at one address (a zero stride along an axis of
    more than one element: a broadcast or expanded view): ValueError. CPU and CUDA ``out=``."""
    if any(st == 0 and n > 1 for st, n in zip(strides, shape)):
        raise ValueError(f"{name} has elements that share memory (a zero stride, e.g. a broadcast or "
                         "expanded view); pass a buffer with one place per element")


def reads_overlap(out_np, pred, others):
    """Whether the kernels cannot write the gradient straight into ``out``: it shares memory with
    an input other than as exactly ``pred`` (same start, shape, strides and dtype, which every
    kernel reads before it writes), e.g. a shifted view of pred, or target. The gradient then
    goes to a new buffer first and is copied into ``out``."""
    if _shares(out_np, pred) and not _same_layout(out_np, pred):
        return True
    for a in others:  # a loop, not any(...): this runs on every call with out= (0.5 µs, not 0.9)
        if isinstance(a, np.ndarray) and _shares(out_np, a):
            return True
    return False


def _shares(a, b):
    if not np.may_share_memory(a, b):  # bounds only: the common answer (no), at 0.2 µs a call
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except Exception:  # too hard to decide: assume they do (a copy costs time, never a wrong result)
        return True


def _same_layout(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides and a.dtype == b.dtype)


def kernel_buffer(out_np, n, dtype):
    """A flat C-contiguous buffer for a kernel to write a gradient into: ``out`` itself when it
    can be written in place, otherwise a new array (copied into ``out`` by :func:`finish_out`)."""
    if out_np is not None and out_np.dtype == dtype and out_np.flags.c_contiguous:
        return out_np.reshape(-1)
    return np.empty(n, dtype=dtype)


def finish_out(buf, out_np, shape, dtype):
    """Shape a kernel's gradient buffer as the result: copied into ``out`` if given."""
    res = buf.reshape(shape)
    if out_np is None:
        return res if res.dtype == dtype else res.astype(dtype)
    if not np.shares_memory(res, out_np):
        out_np[...] = res
    return out_np


def bump_version(out):
    """After writing into ``out``: if it is a torch tensor, bump its version counter, as torch's
    own in-place operations do, so that autograd refuses a graph that saved its old values
    instead of silently using the new ones."""
    if _is_torch(out):
        try:
            sys.modules["torch"].autograd.graph.increment_version(out)
        except Exception:  # pragma: no cover - a torch without it
            pass


def wrap(value, family, out=None):
    """Return a result in the caller's family. ``out``: the user's own buffer, returned as is."""
    if out is not None:
        return out
    if family == NUMPY:
        return value
    torch = sys.modules["torch"]
    arr = np.asarray(value)
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        arr = arr.copy(order="C")
    return torch.from_numpy(arr)
