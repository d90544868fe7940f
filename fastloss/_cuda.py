"""The CUDA backend: every loss on arrays that live on an NVIDIA GPU.

``Loss._run`` sends here any call where an argument has ``__cuda_array_interface__`` (Numba device
arrays, CuPy arrays, PyTorch CUDA tensors; and the CUDA simulator's arrays). This module is
imported on that first call only, and imports numba-cuda then; ``import fastloss`` never does.

What a call does, in order:

1. Placement: every array argument must be on the GPU (TypeError naming the one that is not),
   and on the same GPU. Checked before numba-cuda is imported.
2. Describe each array as a ``_Buf``: device pointer, shape, dtype, element strides, read
   cheaply from the array's own attributes (torch, CuPy) or its CUDA array interface.
3. Allocate results and scratch in the caller's family (``torch.empty``, ``cupy.empty``, Numba
   device arrays), on pred's device: torch in, torch out; CuPy in, CuPy out; anything else in,
   Numba device array out. A reduced value is a 0-d array of pred's dtype, written by the last
   kernel: no copy to the host, no synchronisation.
4. Launch the kernels on the caller's stream: ``stream=`` if given (an int handle, a Numba,
   CuPy, PyTorch or cuda.core stream), else torch's or CuPy's current stream for their arrays,
   else the default stream.

Launching: on a real GPU each kernel is compiled once per argument types (Numba's dispatcher,
with its disk cache) and then launched directly from pre-marshalled arguments
(``_config.CUDA_FAST_LAUNCH``): packed into one parameter buffer for cuLaunchKernel, called
through ctypes with the kernel's CUfunction (``_config.CUDA_LAUNCH_DRIVER``; or cuda.core's
launch), skipping the dispatcher's per-call typing and wrapping of every argument. Under the
simulator kernels are called through the dispatcher.

Numba-family results and scratch buffers of up to ``_config.CUDA_POOL_MAX`` bytes come from a
small pool of blocks reused per stream (``_pool_mem``), and new Numba device arrays are copies of
a first one's attributes (``_nb_empty``): cuda.device_array costs over 20 microseconds.

Host reads (each waits for the caller's stream; documented on the losses that need them):
the hinge target flags, the class-label range check of cross_entropy / multi_margin
(``_config.CUDA_CHECK_LABELS``), and the validity check of per-element option arrays (delta,
q, ...). Nothing else reads from the device.
"""
import sys

import numpy as np

from . import _arrays, _config
from ._loss import GRAD, VALUE, ElementwiseLoss

cuda = None  # numba.cuda, once initialised
SIM = False
_NGPUS = 1
_FakeCUDAArray = None
_NB_DEFAULT = 0  # the stream of Numba-family calls without stream=

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_I64 = np.dtype(np.int64)

TORCH, CUPY, NUMBA, SIMF = "torch", "cupy", "numba", "sim"
NBDEV = "numba-devicearray"  # how _describe reads a Numba DeviceNDArray (its family is NUMBA)


# -- initialisation -------------------------------------------------------------------------------
def _init():
    """Import numba-cuda and check that it can reach a GPU (or is the simulator)."""
    global cuda, SIM, _NGPUS, _FakeCUDAArray
    if not hasattr(np, "row_stack"):
        # numba-cuda 0.30 registers an overload of np.row_stack when it first compiles; NumPy 2.5
        # removed that alias of vstack, and without it no CUDA kernel compiles.
        np.row_stack = np.vstack
    try:
        from numba import config
        from numba import cuda as nbcuda
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError("fastloss: got a CUDA array, but numba-cuda is not installed; "
                           "install it with: pip install 'fastloss[cuda]'") from exc
    sim = bool(config.ENABLE_CUDASIM)
    if not sim:
        try:
            ok = nbcuda.is_available()
        except Exception:  # pragma: no cover
            ok = False
        if not ok:  # pragma: no cover - needs a machine without a driver
            raise RuntimeError(
                "fastloss: got a CUDA array, but numba-cuda finds no usable CUDA driver or GPU on this "
                "machine (check nvidia-smi and the driver; numba.cuda.detect() tells more). "
                "To run the CUDA kernels on the CPU for testing, set NUMBA_ENABLE_CUDASIM=1.")
        _NGPUS = len(nbcuda.gpus)
    else:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        _FakeCUDAArray = FakeCUDAArray
        _NGPUS = 1
    global _NB_DEFAULT
    try:  # Numba's own default stream: per-thread (handle 2) when so configured, else legacy (0)
        from numba.cuda.core import config as nbconfig
        _NB_DEFAULT = 2 if getattr(nbconfig, "CUDA_PER_THREAD_DEFAULT_STREAM", 0) else 0
    except Exception:  # pragma: no cover
        _NB_DEFAULT = 0
    SIM = sim
    cuda = nbcuda


# -- placement: which argument lives where (no CUDA import needed) --------------------------------
def _where(x):
    t = type(x)
    kind = f"{t.__module__.split('.')[0]}.{t.__name__}" if t.__module__ != "builtins" else t.__name__
    dev = getattr(x, "device", None)
    if dev is not None and not isinstance(dev, (int, str)) and _arrays.on_device(x):
        return f"{kind} on {dev}"
    return kind


def _is_scalar(v):
    return v is None or isinstance(v, (bool, int, float, str, np.generic))


def _check_placement(loss, pred, target, sample_weight, opts, out):
    od = _arrays.on_device
    if (od(pred) and od(target) and (sample_weight is None or od(sample_weight)) and (out is None or od(out))
            and all(_is_scalar(v) or od(v) for v in opts.values())):
        return
    named = [("pred", pred), ("target", target), ("sample_weight", sample_weight), ("out", out)]
    named += [(o.name, opts.get(o.name)) for o in loss.options if not _is_scalar(opts.get(o.name))]
    on_dev = [(n, x) for n, x in named if x is not None and od(x)]
    host = [(n, x) for n, x in named if x is not None and not od(x)]
    dn, dx = next(((n, x) for n, x in on_dev if n == "pred"), on_dev[0])
    hn, hx = host[0]
    raise TypeError(f"{loss.name}: {dn} is a CUDA array ({_where(dx)}) but {hn} is on the host "
                    f"({_where(hx)}); pass every array on the same device")


# -- device buffers -------------------------------------------------------------------------------
def _c_strides(shape):
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


def _is_c(shape, strides):
    acc = 1
    for s, st in zip(reversed(shape), reversed(strides)):
        if s != 1 and st != acc:
            return False
        acc *= s
    return True


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class _Buf:
    """A device array as the kernels see it.

    ``ptr`` device address (real GPU); ``nd`` the NumPy array behind it (simulator only);
    ``strides`` element strides, or None when C-contiguous; ``owner`` the user-facing object
    (kept alive, and returned as a result when it is one); ``fam``/``dev`` its family and GPU.
    """

    __slots__ = ("ptr", "shape", "dtype", "strides", "owner", "nd", "fam", "dev", "ro", "temp")

    def __init__(self, ptr, shape, dtype, strides, owner, nd, fam, dev, ro=False, temp=False):
        self.ptr, self.shape, self.dtype, self.strides = ptr, shape, dtype, strides
        self.owner, self.nd, self.fam, self.dev, self.ro = owner, nd, fam, dev, ro
        self.temp = temp  # owner is a copy fastloss made on the array library's current stream

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return _prod(self.shape)

    def view(self, shape):
        """The same (C-contiguous) memory with another shape."""
        nd = self.nd.reshape(shape) if self.nd is not None else None
        return _Buf(self.ptr, shape, self.dtype, None, self.owner, nd, self.fam, self.dev, self.ro)

    @property
    def flat(self):
        if len(self.shape) == 1 and self.strides is None:
            return self
        return self.view((self.size,))

    def carve(self, off, count, dtype):
        """``count`` items of ``dtype`` at item ``off`` of this float64 scratch buffer."""
        nd = None
        if self.nd is not None:
            nd = self.nd[off:off + count].view(dtype)
        return _Buf(self.ptr + off * 8, (count,), dtype, None, self.owner, nd, self.fam, self.dev)

    def kparams(self):
        """The kernel parameters of this array (Numba's array ABI, 8 bytes each)."""
        shp = self.shape
        isz = self.dtype.itemsize
        if len(shp) == 1:
            n0 = shp[0]
            return (0, 0, n0, isz, self.ptr, n0, isz)
        r, c = shp
        return (0, 0, r * c, isz, self.ptr, r, c, c * isz, isz)

    def sim(self):
        return _FakeCUDAArray(self.nd)

    def numba(self):
        """A Numba device array over this buffer (dispatcher launches, host reads)."""
        if self.size == 0:
            return cuda.device_array(self.shape, self.dtype)
        return cuda.as_cuda_array(_CAIView(self))


class _CAIView:
    def __init__(self, b):
        self.__cuda_array_interface__ = {"shape": tuple(b.shape), "typestr": b.dtype.str, "strides": None,
                                         "data": (b.ptr, False), "version": 3, "stream": None}


_EMPTY = {}


def _empty(dtype):
    """A size-0 array: how kernels are told that an optional array is absent."""
    b = _EMPTY.get(dtype)
    if b is None:
        b = _EMPTY[dtype] = _Buf(0, (0,), dtype, None, None, np.empty(0, dtype) if SIM else None, None, None)
    return b


_FAMILY = {}


def _family(x):
    t = type(x)
    fam = _FAMILY.get(t)
    if fam is None:
        mod = t.__module__ or ""
        if mod.startswith("torch"):
            fam = TORCH
        elif mod.startswith("cupy"):
            fam = CUPY
        elif _FakeCUDAArray is not None and isinstance(x, _FakeCUDAArray):
            fam = SIMF
        elif mod.startswith("numba") and hasattr(x, "gpu_data") and hasattr(x, "_dummy"):
            fam = NBDEV
        else:
            fam = NUMBA
        _FAMILY[t] = fam
    return fam


_TORCH_NP = None
_NP_TORCH = None


def _torch_maps():
    global _TORCH_NP, _NP_TORCH
    torch = sys.modules["torch"]
    pairs = [(torch.float16, np.float16), (torch.float32, np.float32), (torch.float64, np.float64),
             (torch.int8, np.int8), (torch.int16, np.int16), (torch.int32, np.int32), (torch.int64, np.int64),
             (torch.uint8, np.uint8), (torch.bool, np.bool_)]
    for extra in ("uint16", "uint32", "uint64"):
        if hasattr(torch, extra):
            pairs.append((getattr(torch, extra), getattr(np, extra)))
    _TORCH_NP = {t: np.dtype(n) for t, n in pairs}
    _NP_TORCH = {np.dtype(n): t for t, n in pairs}


def _describe(x, name):
    fam = _family(x)
    if fam is TORCH:
        if _TORCH_NP is None:
            _torch_maps()
        dt = _TORCH_NP.get(x.dtype)
        temp = False
        if dt is None:
            if x.dtype == sys.modules["torch"].bfloat16:
                x = x.float()  # as the CPU path: bfloat16 is read as float32
                dt, temp = _F32, True
            else:
                raise TypeError(f"{name} has dtype {x.dtype}, which fastloss does not support")
        if x.is_neg():
            x, temp = x.resolve_neg(), True
        strides = None if x.is_contiguous() else tuple(x.stride())
        return _Buf(x.data_ptr(), tuple(x.shape), dt, strides, x, None, TORCH, x.device.index, temp=temp)
    if fam is CUPY:
        dt = x.dtype
        strides = None if x.flags.c_contiguous else tuple(s // dt.itemsize for s in x.strides)
        return _Buf(x.data.ptr, tuple(x.shape), dt, strides, x, None, CUPY, x.device.id)
    if fam is NBDEV:
        try:  # a Numba device array: its attributes, without building its interface dict
            gd = x.gpu_data
            ptr = int(gd.device_pointer) if gd is not None else 0
            dt = x.dtype
            strides = None if x._dummy.is_c_contig else tuple(st // dt.itemsize for st in x.strides)
            return _Buf(ptr, x.shape, dt, strides, x, None, NUMBA, _ptr_device(ptr))
        except AttributeError:  # pragma: no cover - another numba-cuda layout
            _FAMILY[type(x)] = NUMBA
            return _describe(x, name)
    if fam is SIMF:
        a = x._ary
        strides = None if a.flags.c_contiguous else tuple(s // a.itemsize for s in a.strides)
        return _Buf(0, tuple(a.shape), a.dtype, strides, x, a, SIMF, 0, not a.flags.writeable)
    try:
        cai = x.__cuda_array_interface__
    except Exception as exc:
        raise TypeError(f"{name}: could not read its __cuda_array_interface__: {exc}") from None
    if cai.get("mask") is not None:
        raise TypeError(f"{name} is a masked CUDA array; fastloss does not support masks")
    # Python ints throughout: a producer may give NumPy integers, which the launch path (and its
    # kernel signatures) do not take as int64.
    shape = tuple(int(s) for s in cai["shape"])
    dt = np.dtype(cai["typestr"])
    if not dt.isnative:
        raise TypeError(f"{name} has non-native byte order {dt}")
    ptr, ro = cai["data"]
    ptr = int(ptr or 0)
    strides = cai.get("strides")
    if strides is not None:
        strides = tuple(int(s) // dt.itemsize for s in strides)
        if _is_c(shape, strides):
            strides = None
    return _Buf(ptr, shape, dt, strides, x, None, NUMBA, _ptr_device(ptr), bool(ro))


def _ptr_device(ptr):
    """GPU ordinal of a device pointer (only asked on multi-GPU machines)."""
    if _NGPUS <= 1 or SIM or not ptr:
        return None
    try:  # pragma: no cover - needs several GPUs
        from numba.cuda.cudadrv.driver import binding
        attr = binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        res = binding.cuPointerGetAttribute(attr, ptr)
        return int(res[1]) if int(res[0]) == 0 else None
    except Exception:  # pragma: no cover
        return None


# -- one call's context: family, device, stream, allocation ---------------------------------------
_CORE_STREAMS = {}
_NB_STREAMS = {}


class _Call:
    __slots__ = ("loss", "ref", "fam", "dev", "h", "record", "block")

    def __init__(self, loss, ref, stream):
        self.loss, self.ref, self.fam, self.dev = loss, ref, ref.fam, ref.dev
        self.block = int(_config.CUDA_BLOCK)
        # stream= when it is not the array library's current stream, as torch's or CuPy's stream
        # object (torch: record_stream's argument; CuPy: the stream to allocate on), else None
        self.record = None
        self.h = 0 if SIM else _stream_handle(stream, ref)
        if stream is not None and self.fam is TORCH and not SIM:
            # torch's caching allocator must know our stream uses its blocks (record_stream).
            torch = sys.modules["torch"]
            cur = torch.cuda.current_stream(ref.owner.device).cuda_stream
            if cur != self.h:
                self.record = torch.cuda.ExternalStream(self.h, device=ref.owner.device)
        elif stream is not None and self.fam is CUPY and not SIM:
            # CuPy's pool keeps a free list per stream, the one current at allocation: our
            # scratch and results are allocated on our stream (in alloc), so that a block freed
            # after the call is reused only by work queued behind our kernels.
            cupy = sys.modules["cupy"]
            if cupy.cuda.get_current_stream().ptr != self.h:
                self.record = cupy.cuda.ExternalStream(self.h)
        if ref.temp and not SIM:
            self._adopt(ref)

    def _adopt(self, b):
        """``b`` is a tensor fastloss made (a bfloat16 input as float32, a negated view resolved)
        on torch's current stream: if the kernels go to another, that stream waits for it, and
        the allocator learns that the stream uses it."""
        torch = sys.modules["torch"]
        cur = torch.cuda.current_stream(b.owner.device)
        if cur.cuda_stream == self.h:  # made on our stream: ordered already
            return
        ours = torch.cuda.ExternalStream(self.h, device=b.owner.device)
        ours.wait_stream(cur)
        b.owner.record_stream(ours)

    def check(self, b, name):
        if b.dev is not None and self.dev is not None and b.dev != self.dev:
            raise TypeError(f"{self.loss.name}: pred is on GPU {self.dev} but {name} is on GPU {b.dev}; "
                            "pass every array on the same device")

    def describe(self, x, name):
        b = _describe(x, name)
        self.check(b, name)
        if b.temp and not SIM:
            self._adopt(b)
        return b

    def alloc(self, shape, dtype):
        fam = self.fam
        if fam is TORCH:
            if _NP_TORCH is None:
                _torch_maps()
            t = sys.modules["torch"].empty(shape, dtype=_NP_TORCH[dtype], device=self.ref.owner.device)
            if self.record is not None:
                t.record_stream(self.record)
            return _Buf(t.data_ptr(), shape, dtype, None, t, None, TORCH, self.dev)
        if fam is CUPY:
            cupy = sys.modules["cupy"]
            if self.record is not None:  # stream= other than CuPy's current stream
                with cupy.cuda.Device(self.dev), self.record:
                    a = cupy.empty(shape, dtype)
            elif _NGPUS > 1:  # pragma: no cover - needs several GPUs
                with cupy.cuda.Device(self.dev):
                    a = cupy.empty(shape, dtype)
            else:
                a = cupy.empty(shape, dtype)
            return _Buf(a.data.ptr, shape, dtype, None, a, None, CUPY, self.dev)
        if SIM:
            a = cuda.device_array(shape, dtype)
            return _Buf(0, shape, dtype, None, a, a._ary, SIMF, 0)
        a, ptr = _nb_empty(shape, dtype, self.h)
        return _Buf(ptr, shape, dtype, None, a, None, NUMBA, self.dev)

    def nb_stream(self):
        s = _NB_STREAMS.get(self.h)
        if s is None:
            if self.h == 0:
                s = cuda.legacy_default_stream()
            elif self.h == 2:
                s = cuda.per_thread_default_stream()
            else:
                s = cuda.external_stream(self.h)
            _NB_STREAMS[self.h] = s
        return s

    def to_host(self, b):
        """Copy a (small) device buffer to a NumPy array; waits for the stream."""
        if SIM:
            return np.array(b.nd)
        b = _contig(b, self)
        s = self.nb_stream()
        host = b.numba().copy_to_host(stream=s)
        s.synchronize()
        return host


_NB_TEMPLATES = {}
_POOL_FREE = {}  # (context id, stream, size class) -> blocks (Numba allocations) ready for reuse
_POOL_LIVE = {}  # serial -> the pointer object of a block in use (held as Numba holds its own)
_POOL_SERIAL = [0]
_CTX = []  # the context, cached on single-GPU machines


def _pool_mem(nbytes, stream):
    """Device memory for a Numba-family array of ``nbytes`` (at most _config.CUDA_POOL_MAX):
    blocks of power-of-two sizes from 256 bytes, allocated once through Numba and reused after
    the arrays over them are freed, by later calls on the same stream only (work queued on a
    stream runs in order, so a block freed while that stream's kernels still use it is safe to
    hand out again on that stream). Returns (memory object for the array, device pointer)."""
    from numba.cuda.cudadrv.driver import AutoFreePointer, binding
    if _NGPUS == 1:
        if not _CTX:
            _CTX.append(cuda.current_context())
        ctx = _CTX[0]
    else:  # pragma: no cover - needs several GPUs
        ctx = cuda.current_context()
    size = 256
    while size < nbytes:
        size *= 2
    key = (id(ctx), stream, size)
    free = _POOL_FREE.get(key)
    if free is None:
        free = _POOL_FREE[key] = []
    try:
        base = free.pop()
    except IndexError:
        base = ctx.memalloc(size)
    ptr = int(base.device_pointer)
    serial = _POOL_SERIAL[0] = _POOL_SERIAL[0] + 1

    def give_back(free=free, base=base, serial=serial):
        _POOL_LIVE.pop(serial, None)
        free.append(base)

    mem = AutoFreePointer(ctx, binding.CUdeviceptr(ptr), nbytes, finalizer=give_back)
    _POOL_LIVE[serial] = mem
    return mem.own(), ptr


def _nb_empty(shape, dtype, stream=0):
    """A new Numba device array and its pointer. The first array of each (shape, dtype) comes
    from cuda.device_array; later ones are copies of its attributes with new memory from the
    same context (cuda.device_array re-derives shape, strides and extents in Python each time,
    which is most of a small call's host time)."""
    key = (shape, dtype)
    t = _NB_TEMPLATES.get(key)
    if t is not None and _config.CUDA_NUMBA_FAST_ALLOC:
        cls, attrs, nbytes = t
        a = cls.__new__(cls)
        a.__dict__.update(attrs)
        if nbytes <= _config.CUDA_POOL_MAX:
            a.gpu_data, ptr = _pool_mem(nbytes, stream)
            return a, ptr
        gd = a.gpu_data = cuda.current_context().memalloc(nbytes)
        return a, int(gd.device_pointer)
    a = cuda.device_array(shape, dtype)
    ptr = int(a.gpu_data.device_pointer) if a.size else 0
    if a.size and len(_NB_TEMPLATES) < 256:
        attrs = {k: v for k, v in a.__dict__.items() if k not in ("gpu_data", "_numba_type_")}
        if attrs.get("stream", 0) == 0 and "alloc_size" in attrs:
            _NB_TEMPLATES[key] = (type(a), attrs, attrs["alloc_size"])
    return a, ptr


def _stream_handle(stream, ref):
    if stream is None:
        if ref.fam is TORCH:
            torch = sys.modules["torch"]
            try:
                return int(torch._C._cuda_getCurrentRawStream(ref.dev))
            except Exception:  # pragma: no cover - private API moved
                return int(torch.cuda.current_stream(ref.owner.device).cuda_stream)
        if ref.fam is CUPY:
            return int(sys.modules["cupy"].cuda.get_current_stream().ptr)
        return _NB_DEFAULT
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    h = getattr(stream, "cuda_stream", None)  # torch
    if h is None:
        h = getattr(stream, "ptr", None)  # cupy
    if h is None and hasattr(stream, "__cuda_stream__"):  # cuda.core, numba
        try:
            return int(stream.__cuda_stream__()[1])
        except Exception:
            pass
    if h is None and hasattr(stream, "handle"):  # numba Stream
        h = stream.handle
        h = getattr(h, "value", h)
        h = int(h) if h else 0
    if h is None:
        raise TypeError(f"stream must be a CUDA stream (int handle, or a Numba, CuPy, PyTorch or cuda.core "
                        f"stream), got {type(stream).__name__}")
    return int(h)


# -- launching ------------------------------------------------------------------------------------
_KERNELS = {}  # (id(dispatcher), argument kinds) -> [kernel, {device: cufunc}]
_CFGS = {}
_fast = None  # (launch, LaunchConfig factory, Stream.from_handle) once set up; False if unavailable


def _setup_fast():
    global _fast
    try:
        from cuda.core import LaunchConfig, launch
        from numba.cuda._compat import CUDA_CORE_GE_1_0
        from numba.cuda.cudadrv.driver import ExperimentalStream

        def make_cfg(grid, block):
            if CUDA_CORE_GE_1_0:
                return LaunchConfig(grid=grid, block=block, shmem_size=0, is_cooperative=False)
            return LaunchConfig(grid=grid, block=block, shmem_size=0, cooperative_launch=False)  # pragma: no cover

        _fast = (launch, make_cfg, ExperimentalStream.from_handle)
    except Exception:  # pragma: no cover - another numba-cuda / cuda.core layout
        _fast = False
    _setup_ctypes()


def _nbtype(a):
    from numba.cuda import types
    from numba.cuda.np.numpy_support import from_dtype
    if type(a) is _Buf:
        return types.Array(from_dtype(a.dtype), len(a.shape), "C")
    if type(a) is int:
        return types.int64
    if type(a) is float:
        return types.float64
    if type(a) is tuple:
        return types.UniTuple(types.int64, len(a))
    raise TypeError(f"unexpected kernel argument {a!r}")  # pragma: no cover


def _launch(disp, grid, cx, args, block=None):
    """Launch kernel ``disp`` with ``grid`` blocks of ``block`` (default ``cx.block``) threads on
    the call's stream."""
    if block is None:
        block = cx.block
    if SIM:
        disp[grid, block](*[a.sim() if type(a) is _Buf else a for a in args])
        return
    if _fast is None:
        _setup_fast()
    if _fast and _config.CUDA_FAST_LAUNCH:
        if _fast_ok:
            _launch_fast(disp, grid, block, cx, args)
            return
        try:  # the first fast launch: fall back for good if this numba-cuda is laid out otherwise
            _launch_fast(disp, grid, block, cx, args)
            _set_fast_ok()
            return
        except (AttributeError, ImportError, TypeError, KeyError) as exc:  # pragma: no cover
            _disable_fast(exc)
    disp[grid, block, cx.nb_stream()](*[a.numba() if type(a) is _Buf else a for a in args])


_fast_ok = False


def _set_fast_ok():
    global _fast_ok
    _fast_ok = True


def _disable_fast(exc):  # pragma: no cover - depends on the numba-cuda version
    global _fast
    import warnings
    warnings.warn(f"fastloss: direct kernel launches unavailable with this numba-cuda ({exc!r}); "
                  "using the Numba dispatcher (slower per call)", RuntimeWarning, stacklevel=3)
    _fast = False


def _launch_fast(disp, grid, block, cx, args):
    """Marshal the arguments as Numba's dispatcher would (an array is meminfo, parent, nitems,
    itemsize, data, shape, strides) and launch the compiled kernel directly. Every kernel
    parameter is 8 bytes (an int64, a float64 or a pointer), so the parameters are packed into
    one buffer and handed to cuLaunchKernel through ctypes (``_config.CUDA_LAUNCH_DRIVER``
    "ctypes"), or passed to cuda.core's launch ("core")."""
    # The specialisation is keyed by the array dtypes alone: every kernel parameter has a fixed
    # kind (an array of fixed ndim, an int, a float, an 8-tuple) at its position.
    key = [id(disp)]
    kargs = []
    ext = kargs.extend
    app = kargs.append
    for a in args:
        ta = type(a)
        if ta is _Buf:
            ext(a.kparams())
            key.append(a.dtype)
        elif ta is tuple:
            ext(a)
        else:  # int (int64) or float (float64)
            app(a)
    key = tuple(key)
    ent = _KERNELS.get(key)
    if ent is None:
        kernel = disp.compile(tuple(_nbtype(a) for a in args))
        fmt = "<" + "".join("d" if type(v) is float else "q" for v in kargs)
        ent = _KERNELS[key] = [kernel, {}, _Packer(fmt)]
    fn = ent[1].get(cx.dev)
    if fn is None:
        f = ent[0]._codelibrary.get_cufunc()
        fn = ent[1][cx.dev] = (f, _cufunction(f.handle))
    if _cu_launch is not None:
        ent[2].launch(fn[1], grid, block, cx.h, kargs)
        return
    launch, make_cfg, from_handle = _fast
    ck = (grid, block)
    cfg = _CFGS.get(ck)
    if cfg is None:
        cfg = _CFGS[ck] = make_cfg(grid, block)
    st = _CORE_STREAMS.get(cx.h)
    if st is None:
        st = _CORE_STREAMS[cx.h] = from_handle(cx.h)
    launch(st, cfg, fn[0].kernel, *kargs)


# -- cuLaunchKernel through ctypes -----------------------------------------------------------------
_cu_launch = None  # the ctypes function, once set up (None: use cuda.core)


def _setup_ctypes():
    """Find cuLaunchKernel in the driver library (which numba-cuda has loaded already)."""
    global _cu_launch
    _cu_launch = None
    if str(getattr(_config, "CUDA_LAUNCH_DRIVER", "ctypes")) != "ctypes":
        return
    import ctypes
    try:
        lib = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        f = lib.cuLaunchKernel
    except (OSError, AttributeError):  # pragma: no cover - unusual installation
        return
    vp, ui = ctypes.c_void_p, ctypes.c_uint
    f.argtypes = [vp, ui, ui, ui, ui, ui, ui, ui, vp, vp, vp]
    f.restype = ctypes.c_int
    _cu_launch = f


class _Packer:
    """The parameter buffer of one kernel specialisation, reused launch after launch (the
    driver copies the parameters when the launch is issued). One buffer per thread: ctypes
    releases the GIL during cuLaunchKernel, so a buffer shared by threads could be repacked by
    another thread's launch while the driver is still reading it."""

    __slots__ = ("st", "local")

    def __init__(self, fmt):
        import struct
        import threading
        self.st = struct.Struct(fmt)
        self.local = threading.local()

    def _buffers(self):
        """This thread's (buffer, extra): CU_LAUNCH_PARAM_BUFFER_POINTER, buffer,
        CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END (size kept alive beside them)."""
        import ctypes
        buf = ctypes.create_string_buffer(max(self.st.size, 8))
        size = ctypes.c_size_t(self.st.size)
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(buf), 2, ctypes.addressof(size), 0)
        self.local.bufs = bufs = (buf, extra, size)
        return bufs

    def launch(self, handle, grid, block, stream, kargs):
        bufs = getattr(self.local, "bufs", None)
        if bufs is None:
            bufs = self._buffers()
        buf, extra = bufs[0], bufs[1]
        self.st.pack_into(buf, 0, *kargs)
        rc = _cu_launch(handle, grid, 1, 1, block, 1, 1, 0, stream, None, extra)
        if rc:
            if rc == 201:  # CUDA_ERROR_INVALID_CONTEXT: this thread has none current yet
                cuda.current_context()
                rc = _cu_launch(handle, grid, 1, 1, block, 1, 1, 0, stream, None, extra)
            if rc:
                raise RuntimeError(f"fastloss: cuLaunchKernel failed with CUDA error {rc} ({_cu_error_name(rc)})")


def _cufunction(handle):
    """The CUfunction of a (library) kernel handle in the current context: launches by CUfunction
    skip the driver's per-launch lookup of the kernel's function in the context."""
    try:
        from cuda.bindings import driver as cudrv
        err, func = cudrv.cuKernelGetFunction(handle)
        if int(err) == 0 and int(func):
            return int(func)
    except Exception:  # pragma: no cover - older driver or bindings: launch the kernel handle
        pass
    return int(handle)


def _cu_error_name(rc):
    try:
        from numba.cuda.cudadrv.driver import binding
        return binding.cuGetErrorName(binding.CUresult(rc))[1].decode()
    except Exception:  # pragma: no cover
        return "?"


# -- generated modules ----------------------------------------------------------------------------
_MODS = {}


def _cfgkey():
    return (_config.CUDA_BLOCK, bool(_config.CUDA_WARP_SHUFFLE), _config.CUDA_EW_VECTORS)


def _common():
    key = ("common",) + _cfgkey()
    m = _MODS.get(key)
    if m is None:
        from .kernels import cuda_helpers
        m = _MODS[key] = cuda_helpers.build_common()
    return m


def _elementwise_module(loss, mask, ct, static):
    key = (loss, mask, ct, static) + _cfgkey()
    m = _MODS.get(key)
    if m is None:
        m = _MODS[key] = loss.cuda_kernels(mask, ct, static)
    return m


def _rows_module(ct, group, block):
    key = ("rows", ct, group, block, _config.CUDA_ROW_VECTORS, bool(_config.CUDA_ROW_CACHE_HINTS)) + _cfgkey()
    m = _MODS.get(key)
    if m is None:
        from .kernels import cuda_rows
        m = _MODS[key] = cuda_rows.build(ct, group, block)
    return m


# -- device-side helpers: contiguity, gathers, sums -----------------------------------------------
def _grid(n, cx):
    if n <= 0:
        return 0
    per = cx.block * int(_config.CUDA_ITEMS_PER_THREAD)
    return max(1, min(-(-n // per), int(_config.CUDA_MAX_BLOCKS)))


def _vec_ok(*bufs):
    """Whether 4-element vector loads/stores may be used on these (flat, C-contiguous) buffers:
    float dtypes whose data pointers are aligned to 4 elements (16 bytes at most)."""
    if not _config.CUDA_VECTOR:
        return False
    for b in bufs:
        dt = b.dtype
        if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
            return False
        if b.ptr % min(16, 4 * dt.itemsize):
            return False
    return True


def _sim_window(a, min_off, extent):
    """A 1-D NumPy view of ``extent`` items from the lowest-addressed element of ``a`` (+ min_off)."""
    idx = tuple(slice(s - 1, s) if st < 0 else slice(0, 1) for s, st in zip(a.shape, a.strides))
    start = a[idx] if a.ndim else a.reshape(1)
    return np.lib.stride_tricks.as_strided(start, shape=(extent,), strides=(a.itemsize,))


def _gather(base, shape, strides, flat, cx, scatter=False):
    """flat[i] = base[element i of the view (shape, strides)], i in C order (scatter: the reverse).

    ``strides`` are element strides from ``base.ptr`` (any sign, 0 for broadcast dimensions;
    None: C-contiguous)."""
    from .kernels.cuda_helpers import MAXDIM
    n = _prod(shape)
    if n == 0:
        return
    if strides is None:
        strides = _c_strides(shape)
    shape, strides = _fewest_dims(shape, strides)
    if len(shape) > MAXDIM:
        raise ValueError(f"{cx.loss.name}: non-contiguous arrays of more than {MAXDIM} dimensions are not "
                         "supported on the GPU; make them contiguous first")
    min_off = sum((s - 1) * st for s, st in zip(shape, strides) if st < 0)
    max_off = sum((s - 1) * st for s, st in zip(shape, strides) if st > 0)
    extent = max_off - min_off + 1
    nd = None
    if SIM:
        nd = _sim_window(base.nd, min_off, extent)
    win = _Buf(base.ptr + min_off * base.dtype.itemsize, (extent,), base.dtype, None, base.owner, nd,
               base.fam, base.dev)
    pad = MAXDIM - len(shape)
    shp = tuple(int(s) for s in shape) + (1,) * pad
    st = tuple(int(s) for s in strides) + (0,) * pad
    _launch(_common().gather_kernel, _grid(n, cx), cx, (win, flat, n, len(shape), shp, st, -min_off, int(scatter)))


def _fewest_dims(shape, strides):
    """The same elements in the same C order with fewer dimensions: dimensions of length 1
    dropped, and neighbours merged where the outer one steps over the inner one exactly (so a
    9-d view with a few real dimensions still fits the gather kernel's MAXDIM)."""
    out_shape, out_strides = [], []
    for d, st in zip(shape, strides):
        if d == 1:
            continue
        if out_shape and out_strides[-1] == st * d:
            out_shape[-1] *= d
            out_strides[-1] = st
        else:
            out_shape.append(d)
            out_strides.append(st)
    return tuple(out_shape), tuple(out_strides)


def _contig(b, cx):
    """``b`` if C-contiguous, else a contiguous copy (made on the device)."""
    if b.strides is None:
        return b
    dst = cx.alloc(b.shape, b.dtype)
    _gather(b, b.shape, b.strides, dst.flat, cx)
    return dst


def _moved_strides(strides, axis):
    """Element strides of a view with ``axis`` moved last."""
    return tuple(strides[:axis]) + tuple(strides[axis + 1:]) + (strides[axis],)


def _wsum(w, den, scratch, cx, round32=False):
    """den[0] = Σ w (float64, on the device) in a fixed order; ``scratch(k)`` gives partials.
    ``round32``: each weight rounded to float32 first."""
    com = _common()
    n = w.size
    g = _grid(n, cx)
    E, EI = _empty(_F64), _empty(_I64)
    if g <= 1:
        _launch(com.wsum_kernel, 1, cx, (w, n, int(round32), E, EI, den, EI))
    else:
        parts = scratch(g)
        _launch(com.wsum_kernel, g, cx, (w, n, int(round32), parts, EI, E, EI))
        _launch(com.finish_kernel, 1, cx, (parts, g, EI, 0, 0.0, E, 1.0, den, EI))


class _Scratch:
    """Carves float64 (or int64) scratch arrays out of one allocation per call."""

    def __init__(self, cx, total):
        self.buf = cx.alloc((total,), _F64) if total else None
        self.off = 0

    def __call__(self, count, dtype=_F64):
        b = self.buf.carve(self.off, count, dtype)
        self.off += count
        return b


# -- validation shared by both kinds of loss ------------------------------------------------------
def _pred_dtype(p):
    dt = p.dtype
    if dt.kind != "f":
        raise TypeError(f"pred must be a real floating-point array (float16, float32 or float64), got dtype {dt}")
    if dt not in (_F16, _F32, _F64):
        raise TypeError(f"pred dtype {dt} is not supported; use float16, float32 or float64")
    return dt


def _real(b, name):
    if b.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {b.dtype}")
    return b


def _check_out(out, shape, rdt, cx):
    o = cx.describe(out, "out")
    if o.temp:  # the kernels would write a converted copy, not the caller's tensor
        raise TypeError("out is a bfloat16 tensor or a negated view, which fastloss cannot write into; "
                        "pass a tensor of pred's dtype")
    if o.strides is not None:
        _arrays.check_one_place_per_element(o.shape, o.strides)
    if o.shape != tuple(shape):
        raise ValueError(f"out has shape {o.shape}, expected pred's shape {tuple(shape)}")
    if o.dtype != rdt:
        raise TypeError(f"out has dtype {o.dtype}, expected pred's dtype {rdt}")
    if o.ro:
        raise ValueError("out is read-only")
    return o


def _extent(b):
    """[first byte, one past the last byte) of a device buffer (its address range)."""
    item = b.dtype.itemsize
    if b.size == 0:
        return b.ptr, b.ptr
    if b.strides is None:
        return b.ptr, b.ptr + b.size * item
    lo = sum((n - 1) * st for n, st in zip(b.shape, b.strides) if st < 0)
    hi = sum((n - 1) * st for n, st in zip(b.shape, b.strides) if st > 0)
    return b.ptr + lo * item, b.ptr + (hi + 1) * item


def _unsafe_alias(o, bufs, shared=()):
    """Whether the gradient cannot be written straight into ``o`` (a contiguous out=): it shares
    memory with one of ``bufs`` other than as exactly that input (same address, size and dtype,
    both contiguous: each thread reads its element before writing it), e.g. a shifted view, or
    with any of ``shared``, inputs whose elements several threads read (class weights, row
    weights)."""
    if o.size == 0:
        return False
    if any(b is not None and _overlap(o, b) for b in shared):
        return True
    return any(b is not None and _overlap(o, b) and not _same_buffer(o, b) for b in bufs)


def _overlap(o, b):
    """Whether two device buffers share memory (their address ranges meet; the simulator's
    arrays, whose addresses are all 0, are asked through NumPy)."""
    if o.size == 0 or b.size == 0:
        return False
    if SIM:
        return b.nd is not None and o.nd is not None and bool(np.shares_memory(o.nd, b.nd))
    ol, oh = _extent(o)
    bl, bh = _extent(b)
    return bl < oh and ol < bh


def _same_buffer(o, b):
    """Both contiguous, at the same address, of the same size and dtype."""
    if b.strides is not None or b.dtype != o.dtype or b.size != o.size:
        return False
    if SIM:
        return b.nd.__array_interface__["data"][0] == o.nd.__array_interface__["data"][0]
    return b.ptr == o.ptr


def _wrap_out(o, out, cx):
    _arrays.bump_version(out)  # an in-place write into a torch tensor: autograd must notice it
    return out


# -- entry point ----------------------------------------------------------------------------------
def run(loss, op, pred, target, sample_weight, reduction, opts, out, stream):
    """Compute ``op`` of ``loss`` on device arrays (see the module docstring)."""
    _check_placement(loss, pred, target, sample_weight, opts, out)
    if cuda is None:
        _init()
    p = _describe(pred, "pred")
    cx = _Call(loss, p, stream)
    if _NGPUS > 1 and p.dev is not None:  # pragma: no cover - needs several GPUs
        with cuda.gpus[p.dev]:
            return _dispatch(loss, op, cx, p, target, sample_weight, reduction, opts, out)
    return _dispatch(loss, op, cx, p, target, sample_weight, reduction, opts, out)


def _dispatch(loss, op, cx, p, target, sample_weight, reduction, opts, out):
    # The checks in the CPU's order (fastloss/_loss.py, Loss._run), so that a call with several
    # bad arguments gets the same error on both backends: options, pred's dtype, the target's
    # type, out=, the sample weight's type; each path then goes on as the CPU's _compute does.
    opts, arrays = _device_options(loss, opts, cx)
    _pred_dtype(p)
    t = cx.describe(target, "target")
    o_buf = _check_out(out, p.shape, p.dtype, cx) if out is not None and op != VALUE else None
    wb = cx.describe(sample_weight, "sample_weight") if sample_weight is not None else None
    if isinstance(loss, ElementwiseLoss):
        return _run_elementwise(loss, op, cx, p, t, wb, reduction, opts, arrays, out, o_buf)
    from .losses.multiclass import CrossEntropy, MultiMargin
    if isinstance(loss, (CrossEntropy, MultiMargin)):
        return _run_rows(loss, op, cx, p, t, wb, reduction, opts, out, o_buf)
    raise TypeError(f"{loss.name}: this loss has no CUDA implementation")


def _device_options(loss, opts, cx):
    """Per-element options given as device arrays, checked on the host by the CPU's own checks
    (a read that waits for the stream; such arrays are usually small, a row or a column
    broadcast against pred): (opts, {name: (device buffer, float64 host copy)}). A 0-d array is
    a number, as on the CPU: opts then holds it as a float."""
    arrays = {}
    for o in loss.options:
        v = opts[o.name]
        if o.host or o.kind is bool or not _arrays.on_device(v):
            continue
        b = cx.describe(v, o.name)
        host = cx.to_host(b)
        if host.ndim == 0:
            opts = {**opts, o.name: o.convert(loss.name, host[()])}
        else:
            arrays[o.name] = (b, o.check_array(loss.name, host))
    return opts, arrays


# -- elementwise losses ---------------------------------------------------------------------------
def _elementwise_weights(loss, wb, shape, opts, cx):
    """(weights, wdiv, winner): per element, or per row for kl_div (whose Σ w is a sum over rows,
    which its _denominator multiplies out). The shape is checked before the dtype, as on the CPU."""
    from .losses.multiclass import KLDiv, _class_axis, _Shape
    if isinstance(loss, KLDiv):
        if shape:
            axis = _class_axis(loss.name, _Shape(shape), opts["axis"])
            lead = tuple(shape[:axis] + shape[axis + 1:])
            c, inner = shape[axis], _prod(shape[axis + 1:])
        else:
            lead, c, inner = (), 1, 1
        if wb.shape != lead:
            want = "() for a 0-d pred" if not shape else f"pred's leading shape {lead} (one weight per row)"
            raise ValueError(f"{loss.name}: sample_weight has shape {wb.shape}, expected {want}")
        return _contig(_real(wb, "sample_weight"), cx).flat, max(c * inner, 1), max(inner, 1)
    if wb.shape != tuple(shape):
        raise ValueError(f"{loss.name}: sample_weight has shape {wb.shape}, expected pred's shape {tuple(shape)}")
    return _contig(_real(wb, "sample_weight"), cx).flat, 1, 1


def _option_array(loss, o, b, shape, cx):
    """A checked per-element option's device buffer, broadcast to pred's shape, contiguous, flat."""
    shape = tuple(shape)
    if b.shape == shape:
        return _contig(b, cx).flat
    try:
        ok = np.broadcast_shapes(b.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{loss.name}: {o.name} of shape {b.shape} does not broadcast to pred's shape {shape}")
    st = b.strides if b.strides is not None else _c_strides(b.shape)
    pad = len(shape) - len(b.shape)
    bst = (0,) * pad + tuple(0 if b.shape[k] == 1 else st[k] for k in range(len(b.shape)))
    dst = cx.alloc(shape, b.dtype)
    _gather(b, shape, bst, dst.flat, cx)
    return dst.flat


def _run_elementwise(loss, op, cx, p, t, wb, reduction, opts, arrays, out, o_buf):
    name = loss.name
    shape = p.shape
    loss._check_shape(shape, opts)  # (kl_div: its class axis must be valid, weights or not)
    if t.shape != shape:
        raise ValueError(f"{name}: target has shape {t.shape}, expected pred's shape {shape}")
    # a user's validate gets the float64 host copies of device option arrays, as it gets NumPy
    # arrays on the CPU
    if loss.validate is not None:
        loss.validate({**opts, **{k: h for k, (_, h) in arrays.items()}})
    t = _real(t, "target")
    n = p.size
    rdt = p.dtype
    ct = "float64" if rdt == _F64 else "float32"
    pf = _contig(p, cx).flat
    tf = _contig(t, cx).flat

    E64, EI = _empty(_F64), _empty(_I64)
    w, wdiv, winner = E64, 1, 1
    if wb is not None:
        w, wdiv, winner = _elementwise_weights(loss, wb, shape, opts, cx)

    # Options: scalars travel as float64 and are cast to the compute dtype in the kernel (as the
    # CPU passes them in the compute dtype); arrays as device arrays; booleans are constants of
    # the generated module, as on the CPU.
    params, mask, static = [], (), ()
    for o in loss.options:
        if o.host:
            continue
        v = opts[o.name]
        if o.kind is bool:
            static += ((o.name, bool(v)),)
        elif o.name in arrays:
            params.append(_option_array(loss, o, arrays[o.name][0], shape, cx))
            mask += (o.name,)
        else:
            params.append(float(v))
    mod = _elementwise_module(loss, mask, ct, static)

    g = _grid(n, cx)
    reduce_val = op != GRAD and reduction != "none"
    flags_on = loss.target_flags is not None and n > 0
    rmode = 0 if reduction in ("sum", "none") else 1
    # (the unweighted Σw: n, or kl_div's number of rows)
    den_host = float(loss._denominator(reduction, loss._weights(None, shape, None, opts)[1], shape, opts)) \
        if rmode else float(n)
    gscale = 1.0 if rmode == 0 else (1.0 / den_host if den_host != 0 else 0.0)
    weighted = w.size != 0
    need_den = rmode == 1 and weighted and n > 0
    den_mul = float(loss._denominator(reduction, 1.0, shape, opts)) if need_den else 1.0  # den = Σw on the device

    # scratch: partials (g > 1), flags partials (g > 1) and result, Σw and its partials
    gw = _grid(w.size, cx) if need_den else 0
    total = ((g if g > 1 and reduce_val else 0) + (g if g > 1 and flags_on else 0) + (1 if flags_on else 0)
             + (1 if need_den else 0) + (gw if gw > 1 else 0))
    scratch = _Scratch(cx, total) if total else None
    partials = scratch(g) if g > 1 and reduce_val else E64
    fparts = scratch(g, _I64) if g > 1 and flags_on else EI
    fres = scratch(1, _I64) if flags_on else EI
    den = scratch(1) if need_den else E64

    # the 0-d result: now when the main kernel writes it (one block), else after that kernel's
    # launch (the finishing kernel writes it), so that the device starts sooner
    res = cx.alloc((), rdt) if reduce_val and g <= 1 else None
    res_flat = res.view((1,)) if res is not None else _empty(rdt)
    vals = cx.alloc(shape, rdt) if op != GRAD and reduction == "none" else None
    vals_flat = vals.flat if vals is not None else _empty(rdt)
    grad = None
    if op != VALUE:
        if o_buf is not None:
            # As on the CPU, a loss that checks its targets in the kernel does not write into the
            # caller's buffer before the check has passed: its own buffer, copied on success.
            # (weights given per row, wdiv > 1, are read by every thread of the row)
            direct = (o_buf.strides is None and not flags_on
                      and not _unsafe_alias(o_buf, [pf, tf, w if wdiv == 1 else None]
                                            + [b for b in params if type(b) is _Buf],
                                            shared=(w if wdiv != 1 else None,)))
            grad = o_buf if direct else cx.alloc(shape, rdt)
        else:
            grad = cx.alloc(shape, rdt)

    if n > 0:
        if need_den:
            _wsum(w, den, scratch, cx, round32=ct == "float32")  # the weights the kernels use
        res_k = res_flat if g == 1 else _empty(rdt)
        fres_k = fres if g == 1 else EI
        # 16-byte loads and stores where every streamed array allows them
        vbufs = (pf, tf) + ((vals_flat,) if vals is not None else ()) + ((grad,) if grad is not None else ())
        vec = int(n >= 4 and _vec_ok(*vbufs))
        if op == VALUE:
            args = (pf, tf, w, wdiv, winner, vals_flat, *params, n, vec, rmode, den_host, den, den_mul,
                    partials, fparts, res_k, fres_k)
            _launch(mod.value_kernel, g, cx, args)
        elif op == GRAD:
            args = (pf, tf, w, wdiv, winner, grad.flat, *params, n, vec, rmode, gscale, den, den_mul, fparts, fres_k)
            _launch(mod.grad_kernel, g, cx, args)
        else:
            args = (pf, tf, w, wdiv, winner, vals_flat, grad.flat, *params, n, vec, rmode, gscale, den_host, den,
                    den_mul, partials, fparts, res_k, fres_k)
            _launch(mod.both_kernel, g, cx, args)
        if g > 1 and (reduce_val or flags_on):
            if reduce_val:
                res = cx.alloc((), rdt)
                res_flat = res.view((1,))
            _launch(_common().finish_kernel, 1, cx, (partials, g, fparts, rmode, den_host, den, den_mul,
                                                     res_flat, fres))
    elif reduce_val:  # empty input: sum 0, mean NaN
        _launch(_common().finish_kernel, 1, cx, (E64, 0, EI, rmode, den_host, E64, 1.0, res_flat, EI))

    if flags_on and loss.flags_error is not None:
        # The hinge target check: one 8-byte read, which waits for the stream.
        flags = int(cx.to_host(fres)[0])
        msg = loss.flags_error(flags) if flags else None
        if msg:
            raise ValueError(f"{name}: {msg}")

    gres = None
    if op != VALUE:
        if o_buf is not None:
            if grad is not o_buf:
                _gather(o_buf, shape, o_buf.strides, grad.flat, cx, scatter=True)
            gres = _wrap_out(o_buf, out, cx)
        else:
            gres = grad.owner
    if op == GRAD:
        return gres
    value = vals.owner if vals is not None else res.owner
    if op == VALUE:
        return value
    return value, gres


# -- row losses -----------------------------------------------------------------------------------
def _run_rows(loss, op, cx, p, t, wb, reduction, opts, out, o_buf):
    from .losses.multiclass import CrossEntropy, _class_axis
    name = loss.name
    shape = p.shape
    nd = len(shape)
    axis = _class_axis(name, p, opts["axis"])
    C = shape[axis]
    if C == 0:
        raise ValueError(f"{name}: pred has no classes (its class axis {axis} has length 0)")
    lead = tuple(shape[:axis] + shape[axis + 1:])
    moved = lead + (C,)
    R = _prod(lead)
    rdt = p.dtype
    ct = "float64" if rdt == _F64 else "float32"
    E64, EI = _empty(_F64), _empty(_I64)

    def rows_of(b):  # (R, C) contiguous rows of an array of pred's shape
        if axis == nd - 1 and b.strides is None:
            return b.view((R, C))
        st = b.strides if b.strides is not None else _c_strides(b.shape)
        dst = cx.alloc((R, C), b.dtype)
        _gather(b, moved, _moved_strides(st, axis), dst.flat, cx)
        return dst

    cwo = opts["class_weight"]
    cw = E64
    if cwo is not None:
        cw = cx.describe(cwo, "class_weight")
        if cw.shape != (C,):
            raise ValueError(f"{name}: class_weight has shape {cw.shape}, expected ({C},) (one weight per class)")
        cw = _contig(_real(cw, "class_weight"), cx).flat
    sw = E64
    if wb is not None:
        if wb.shape != lead:
            raise ValueError(f"{name}: sample_weight has shape {wb.shape}, expected pred's leading shape {lead} "
                             "(one weight per row)")
        sw = _contig(_real(wb, "sample_weight"), cx).flat
    x = rows_of(p)

    if C <= _config.CUDA_ROW_THREAD_MAX_C:  # a thread per row
        group, rblock, cap = 1, cx.block, int(_config.CUDA_MAX_BLOCKS)
    elif C < _config.CUDA_ROW_BLOCK_MIN_C:  # a warp per row
        group, rblock, cap = 32, cx.block, int(_config.CUDA_MAX_BLOCKS)
    else:  # a block per row (half as many threads for float64, each with twice the registers)
        group = rblock = max(32, int(_config.CUDA_ROW_BLOCK) // (2 if ct == "float64" else 1))
        cap = int(_config.CUDA_ROW_MAX_BLOCKS)
    mod = _rows_module(ct, group, rblock)
    g = min(-(-R // (rblock // group)), cap) if R else 0
    reduce_val = op != GRAD and reduction != "none"
    rmode = 0 if reduction in ("sum", "none") else 1

    is_ce = isinstance(loss, CrossEntropy)
    labels = probs = None
    if not is_ce:  # multi_margin: labels only
        if t.shape != lead:
            raise ValueError(f"{name}: target of labels has shape {t.shape}, expected pred's leading shape {lead}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class labels (or class probabilities of pred's shape), "
                            f"got dtype {t.dtype} and shape {t.shape}")
        labels = _contig(t, cx).flat
    elif t.dtype.kind in "iu":
        if t.shape != lead:
            raise ValueError(f"{name}: target of labels has shape {t.shape}, expected pred's leading shape {lead}")
        labels = _contig(t, cx).flat
    elif t.dtype.kind in "fb":
        if t.shape != shape:
            if t.shape == lead:
                raise TypeError(f"{name}: target holds {t.dtype} values of the leading shape; class labels "
                                "must have an integer dtype (probability targets have pred's shape)")
            raise ValueError(f"{name}: target has shape {t.shape}; expected integer labels of shape {lead} "
                             f"or probabilities of pred's shape {shape}")
        probs = rows_of(t)
    else:
        raise TypeError(f"{name}: target must be integer labels or real probabilities, got dtype {t.dtype}")

    # the device checks: labels in range (and within int64), class weights not NaN
    check = bool(_config.CUDA_CHECK_LABELS) and ((labels is not None and R > 0) or cw.size != 0)
    eps = float(opts["label_smoothing"]) if is_ce else 0.0
    ignore = int(opts["ignore_index"]) if is_ce else 0
    need_cwsum = is_ce and labels is not None and eps != 0.0 and cw.size != 0
    # the denominator of "mean": labels -> Σ sw·cw[y] over kept rows (labels_kernel); else R or Σ sw
    den_labels = rmode == 1 and R > 0 and is_ce and labels is not None
    den_dev = den_labels or (rmode == 1 and R > 0 and sw.size != 0)
    den_host = float(R)
    gscale = 1.0 if rmode == 0 else (1.0 / R if R else 0.0)

    checked = max(R if labels is not None else 0, cw.size if check else 0)  # labels_kernel's loop
    gl = _grid(checked, cx) if (check or den_labels) else 0
    gsw = _grid(R, cx) if den_dev and not den_labels else 0
    gcw = _grid(C, cx) if need_cwsum else 0
    total = ((g if g > 1 and reduce_val else 0) + (1 if check else 0) + (gl if gl > 1 and check else 0)
             + (1 if den_dev else 0) + (gl if gl > 1 and den_labels else 0) + (gsw if gsw > 1 else 0)
             + (1 if need_cwsum else 0) + (gcw if gcw > 1 else 0))
    scratch = _Scratch(cx, total)
    partials = scratch(g) if g > 1 and reduce_val else E64
    fres = scratch(1, _I64) if check else EI
    den = scratch(1) if den_dev else E64
    cwsum = scratch(1) if need_cwsum else E64

    res = cx.alloc((), rdt) if reduce_val else None
    res_flat = res.view((1,)) if res is not None else _empty(rdt)
    vals = cx.alloc(lead, rdt) if op != GRAD and reduction == "none" else None
    vals_flat = vals.flat if vals is not None else _empty(rdt)
    grad2 = _empty(rdt).view((0, 0))
    direct = False
    if op != VALUE:
        if axis == nd - 1 and (o_buf is None or (o_buf.strides is None
                                                 and not _unsafe_alias(o_buf, (x, t), shared=(cw, sw)))):
            gbuf = o_buf if o_buf is not None else cx.alloc(shape, rdt)
            direct = True
        else:
            gbuf = cx.alloc((R, C), rdt)
        grad2 = gbuf.view((R, C))

    com = _common() if R > 0 or reduce_val or gl else None
    if gl:
        # labels: range check (flags) and/or cross_entropy's denominator, one pass over them
        lab, nlab = (labels, R) if labels is not None else (EI, 0)
        if gl == 1:
            _launch(com.labels_kernel, 1, cx, (lab, cw, sw, ignore, int(is_ce), C, nlab, E64, EI,
                                               den if den_labels else E64, fres))
        else:
            lparts = scratch(gl) if den_labels else E64
            lfparts = scratch(gl, _I64) if check else EI
            _launch(com.labels_kernel, gl, cx, (lab, cw, sw, ignore, int(is_ce), C, nlab, lparts, lfparts, E64, EI))
            _launch(com.finish_kernel, 1, cx, (lparts, gl, lfparts, 0, 0.0, E64, 1.0,
                                               den if den_labels else E64, fres))
        if check and out is not None:
            # out may be the logits themselves: check before any kernel writes into it (as the CPU)
            _check_labels(cx, fres, labels, loss, C, ignore if is_ce else None)
            check = False
    if R > 0:
        if den_dev and not den_labels:
            _wsum(sw, den, scratch, cx)
        if need_cwsum:
            _wsum(cw, cwsum, scratch, cx)
        res_k = res_flat if g == 1 else _empty(rdt)
        tail = (R, C, vals_flat, grad2, rmode, gscale, den_host, den, 1.0, partials, EI, res_k, EI)
        if is_ce and labels is not None:
            vec = int(C % 4 == 0 and _vec_ok(x, *((grad2,) if op != VALUE else ())))
            _launch(mod.ce_labels, g, cx, (x, labels, cw, cwsum, sw, ignore, eps, R, C, vec) + tail[2:], rblock)
        elif is_ce:
            _launch(mod.ce_probs, g, cx, (x, probs, cw, sw, eps) + tail, rblock)
        else:
            _launch(mod.multi_margin, g, cx, (x, labels, cw, sw, int(opts["p"]), float(opts["margin"])) + tail,
                    rblock)
        if g > 1 and reduce_val:
            _launch(com.finish_kernel, 1, cx, (partials, g, EI, rmode, den_host, den, 1.0, res_flat, EI))
    elif reduce_val:
        _launch(com.finish_kernel, 1, cx, (E64, 0, EI, rmode, den_host, E64, 1.0, res_flat, EI))

    if check:
        _check_labels(cx, fres, labels, loss, C, ignore if is_ce else None)

    gres = None
    if op != VALUE:
        if direct:
            gres = _wrap_out(o_buf, out, cx) if o_buf is not None else gbuf.owner
        else:
            # gradient rows (moved layout) -> pred's layout: scatter into out, or a new array
            dst = o_buf if o_buf is not None else cx.alloc(shape, rdt)
            st = dst.strides if dst.strides is not None else _c_strides(shape)
            _gather(dst, moved, _moved_strides(st, axis), gbuf.flat, cx, scatter=True)
            gres = _wrap_out(o_buf, out, cx) if o_buf is not None else dst.owner
    if op == GRAD:
        return gres
    value = vals.owner if vals is not None else res.owner
    if op == VALUE:
        return value
    return value, gres


def _check_labels(cx, fres, labels, loss, C, ignore_index):
    """The result of labels_kernel's checks: one 8-byte read, which waits for the stream; on a
    bad label the labels come to the host to name the first one, as the CPU does. The errors
    come in the CPU's order: class weights first."""
    flags = int(cx.to_host(fres)[0])
    if flags & 4:
        raise ValueError(f"{loss.name}: class_weight has NaN values")
    if flags & 2:
        raise ValueError("target has labels too large for int64")
    if flags & 1:
        _raise_bad_label(loss, cx.to_host(labels), C, ignore_index)


def _raise_bad_label(loss, labels, C, ignore_index):
    labels = labels.astype(np.int64, copy=False) if labels.dtype != np.uint64 else labels
    bad = (labels < 0) | (labels >= C)
    if ignore_index is not None:
        bad &= labels != ignore_index
    first = labels[bad][0] if bad.any() else "?"
    raise ValueError(f"{loss.name}: target has label {first} outside [0, {C})"
                     + ("" if ignore_index is None else f" (and not ignore_index={ignore_index})"))
