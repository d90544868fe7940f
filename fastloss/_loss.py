"""Loss objects: the public face of every loss (``loss(...)``, ``loss.grad``, ``loss.value_and_grad``).

The layer is deliberately thin: parse keywords, validate and convert the inputs, pick the backend,
allocate, launch the compiled kernel, wrap the result. Kernels are built on first use, once per
loss, and compiled by Numba once per dtype (and loaded from its disk cache in later processes).
"""
import math
import re
import sys

import numpy as np

from . import _arrays, _config

VALUE, GRAD, BOTH = "value", "grad", "value_and_grad"

#: The compute dtypes' names, looked up rather than read from ``dtype.name`` on every call: NumPy
#: works that property out in Python each time (5 µs on a 2-core Zen 3 VM, a third of a small
#: call's overhead there).
_COMPUTE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def float32_variant(f32_fn):
    """Decorator: kernels that compute in float32 copy ``f32_fn`` in place of the decorated
    function (same arguments, same meaning); float64 kernels and plain Python use the decorated
    function itself. For a helper whose float64 form does work float32 cannot see, like a
    polynomial of degree 12 where float32 needs 5: float32 loops are bound by how many
    operations they issue, so the shorter form is that much faster. (The code generator,
    kernels/codegen.py, reads the mark when it copies the helper's source.)"""

    def mark(fn):
        fn._fastloss_float32 = f32_fn
        return fn

    return mark


def fused_multiply_add(fn):
    """Decorator for a helper of a loss's math: in CPU kernels each ``x * y + z`` in it (also
    ``z + x * y``, ``x * y - z``, ``z - x * y``) is one fused multiply-add, rounded once. For a
    polynomial by Horner's rule, where it halves the operations and is never less accurate (a
    loss's kernels take no 'contract' flag, which would let LLVM fuse in one kernel and not in
    another: see _config). Not for a difference of products that must cancel exactly:
    ``x * x - y * y`` fused is the rounding error of ``y * y`` where x == y, not 0. CUDA kernels,
    plain Python and the simulator see the expressions as written; the GPU's compiler fuses
    them there anyway."""
    fn._fastloss_fma = True
    return fn


def binary_target_variant(fn01):
    """Decorator for a loss's value or derivative function: CPU kernels call ``fn01`` (same
    arguments) instead on blocks of elements whose targets are all exactly 0 or 1, and the
    decorated function elsewhere. Which blocks: a block tries ``fn01`` when the block before it
    in its chunk had only 0/1 targets (the first block of a chunk always tries it), and runs again
    with the decorated function if one of its own targets is another value; a block after one
    with other targets runs the decorated function. ``fn01`` must return the same number as the decorated function,
    bit for bit, for such targets (and any prediction, NaN and out-of-range ones included), so a
    result never depends on the targets of its neighbours; it exists to be cheaper, as a binary
    cross-entropy needs one logarithm where a soft target needs two. CUDA kernels, bound by
    memory rather than arithmetic, use the decorated function everywhere."""

    def mark(fn):
        fn._fastloss_binary = fn01
        return fn

    return mark


def log1p_sum_form(form, when=None):
    """Decorator for a loss's value function (or a ``binary_target_variant``) whose value is
    ``rest + log1p(e)``: ``form`` (same arguments) returns ``(rest, e)``, with 0 <= e <= 1 (or
    NaN, where the value is NaN). CPU kernels that sum the values without weights or per-element
    output then add ``rest`` into the float64 lanes as any value, and multiply each lane's
    factors 1 + e together (as Π(1 + e) − 1, in the compute dtype), taking one log1p per lane
    every ``_config.LOG1P_PASSES`` buffers: Σ log1p(e) = log1p(Π(1 + e) − 1), with one logarithm
    per 64 elements of a lane instead of one per element. The logarithm is most of a softplus's
    work (bce_with_logits' float32 polynomial: 10 of its 22 fused multiply-adds).

    ``when`` maps numeric options to the one value each that the form holds for (bce_with_logits'
    at pos_weight = 1 only): the sums kernels have them as constants, and run where the options
    have those values (scalars, tested once per chunk). Elsewhere, and in weighted sums and
    per-element values (which need each element's log), the kernels call the value function.

    The sum then rounds differently from the sum of the per-element values: each lane's product
    rounds twice per factor, relative to the product, which is what the log sees (see
    tests/test_elementwise.py, test_log1p_sum_form_accuracy, for the bounds checked)."""

    def mark(fn):
        fn._fastloss_log1p_form = (form, dict(when or {}))
        return fn

    return mark


class Option:
    """A loss's keyword option: default, validity rule and how it reaches the kernel.

    ``check`` returns True for valid values (it receives a float, or an array when
    ``array=True`` and the user passed one); ``rule`` says in words what is valid.
    ``kind`` is ``float`` or ``bool``.
    """

    def __init__(self, name, default, check=None, rule="", kind=float, array=False, none_as=None, host=False,
                 fast=()):
        self.name, self.default, self.check, self.rule = name, default, check, rule
        self.kind, self.array, self.none_as = kind, array, none_as
        self.host = host  # used by the Python layer only, never passed to a kernel
        # Values the CPU kernels get a loop of their own for, with the option a constant there
        # (kernels/cpu_elementwise.py): for a value that makes the math much cheaper, such as
        # the focal loss's default gamma = 2, where u**gamma is u*u instead of exp(gamma log u).
        self.fast = tuple(float(v) for v in fast)

    def check_array(self, loss_name, arr):
        """A per-element option given as a NumPy array (a host copy, for one on the GPU): as
        float64, once its dtype, NaNs and ``check`` have passed."""
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{loss_name}: {self.name} must be a real number or array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if np.isnan(arr).any():
            raise ValueError(f"{loss_name}: {self.name} has NaN values")
        if self.check is not None and not np.all(self.check(arr)):
            raise ValueError(f"{loss_name}: every {self.name} must be {self.rule}")
        return arr

    def convert(self, loss_name, value):
        if value is None and self.none_as is not None:
            value = self.none_as
        if self.kind is object:  # validated by the loss itself
            return value
        if self.kind is int:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{loss_name}: {self.name} must be an integer, got {value!r}")
            value = int(value)
            if not -2**63 <= value < 2**63:
                raise ValueError(f"{loss_name}: {self.name} must fit in 64 bits, got {value!r}")
            if self.check is not None and not self.check(value):
                raise ValueError(f"{loss_name}: {self.name} must be {self.rule}, got {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, (int, np.integer))
                                                               and value in (0, 1)):
                raise TypeError(f"{loss_name}: {self.name} must be True or False, got {value!r}")
            return bool(value)
        if self.array and _arrays.on_device(value):
            return value  # a per-element option on the GPU: the CUDA backend checks it
        if self.array and not np.isscalar(value) and value is not None:
            arr = _arrays.to_numpy(value, self.name)
            if arr.ndim > 0:
                return self.check_array(loss_name, arr)
            value = arr[()]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{loss_name}: {self.name} must be a real number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"{loss_name}: {self.name} is too large for a float, got {value!r}") from None
        if value != value:
            raise ValueError(f"{loss_name}: {self.name} must be a number, got NaN")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{loss_name}: {self.name} must be {self.rule}, got {value!r}")
        return value


def _reduce_value(total, wsum, reduction):
    if reduction == "sum":
        return total
    # mean: Σ w·l / Σ w. An empty input, or weights that sum to zero, has no mean.
    return total / wsum if wsum != 0 else math.nan


def _grad_scale(wsum, reduction):
    if reduction in ("sum", "none"):
        return 1.0
    return 1.0 / wsum if wsum != 0 else 0.0  # no mean: the gradient is zero (as PyTorch's all-ignored CE)


class Loss:
    """Base class of every loss: keyword handling shared by ``__call__``, ``grad``, ``value_and_grad``."""

    reductions = ("mean", "sum", "none")
    options = ()

    def __init__(self, name, doc=None):
        self.name = name
        self.__name__ = name
        self.__qualname__ = name
        if doc:
            self.__doc__ = doc

    def __repr__(self):
        opts = ", ".join(f"{o.name}={o.default!r}" for o in self.options)
        return f"<fastloss loss {self.name}({opts})>"

    def __call__(self, pred, target, **kwargs):
        return self._run(VALUE, pred, target, kwargs)

    def grad(self, pred, target, **kwargs):
        """Gradient of the loss with respect to ``pred`` (same keywords as the loss, plus ``out``)."""
        return self._run(GRAD, pred, target, kwargs)

    def value_and_grad(self, pred, target, **kwargs):
        """``(value, gradient)`` computed in one pass over memory (same keywords, plus ``out``)."""
        return self._run(BOTH, pred, target, kwargs)

    def _parse(self, op, kwargs):
        reduction = kwargs.pop("reduction", "mean")
        sample_weight = kwargs.pop("sample_weight", None)
        out = kwargs.pop("out", None)
        if out is not None and op == VALUE:
            raise TypeError(f"{self.name}() got an unexpected keyword argument 'out' "
                            "(out receives the gradient: use .grad or .value_and_grad)")
        if not isinstance(reduction, str) or reduction not in self.reductions:
            raise ValueError(f"{self.name}: reduction must be one of {', '.join(map(repr, self.reductions))}, "
                             f"got {reduction!r}")
        known = {o.name: o for o in self.options}
        for key in kwargs:
            if key not in known:
                raise TypeError(f"{self.name}() got an unexpected keyword argument {key!r}")
        opts = {o.name: o.convert(self.name, kwargs.get(o.name, o.default)) for o in self.options}
        return reduction, sample_weight, out, opts

    def _run(self, op, pred, target, kwargs):
        try:
            return self._run_unchecked(op, pred, target, kwargs)
        except Exception as exc:
            if not _is_compile_error(exc):
                raise
            message = _compile_error_message(self.name, exc)
        # Raised outside the except block: Numba's own traceback (its compiler's frames) is not
        # chained to it, its message is.
        raise TypeError(message)

    def _run_unchecked(self, op, pred, target, kwargs):
        kwargs = dict(kwargs)
        stream = kwargs.pop("stream", None)
        reduction, sample_weight, out, opts = self._parse(op, kwargs)
        if _arrays.any_on_device(pred, target, sample_weight, out, *opts.values()):
            from . import _cuda  # imported only when the first device array arrives
            return _cuda.run(self, op, pred, target, sample_weight, reduction, opts, out, stream)
        family = _arrays.family_of(pred)
        p = _arrays.to_numpy(pred, "pred")
        rdt, cdt = _arrays.pred_dtypes(p)
        t = _arrays.to_numpy(target, "target")
        out_np = _arrays.check_out(out, p.shape, rdt) if out is not None else None
        w = None if sample_weight is None else _arrays.to_numpy(sample_weight, "sample_weight")
        if out_np is not None and _arrays.reads_overlap(out_np, p, (t, w, *opts.values())):
            value, grad = self._compute(op, p, t, w, reduction, opts, None, rdt, cdt)
            out_np[...] = grad
        else:
            value, grad = self._compute(op, p, t, w, reduction, opts, out_np, rdt, cdt)
        if op == VALUE:
            return _arrays.wrap(value, family)
        if out is not None:
            _arrays.bump_version(out)
        g = _arrays.wrap(grad, family, out)
        if op == GRAD:
            return g
        return _arrays.wrap(value, family), g

    def _compute(self, op, p, t, w, reduction, opts, out_np, rdt, cdt):  # pragma: no cover
        raise NotImplementedError


def _is_compile_error(exc):
    """Whether ``exc`` is Numba's report that a kernel could not be compiled (CPU, or GPU through
    numba-cuda, whose error classes are its own). Looked up in sys.modules: a module that was
    never imported raised nothing."""
    for module in ("numba.core.errors", "numba.cuda.core.errors"):
        errors = sys.modules.get(module)
        if errors is not None and isinstance(exc, errors.NumbaError):
            return True
    return False


def _compile_error_message(name, exc):
    """The TypeError's text for a kernel Numba could not compile: for a user's loss, almost always
    something in its functions that Numba cannot type. Numba's explanation is kept (it quotes the
    offending line, from the kernel module that holds a copy of the function), minus its
    terminal colour codes."""
    detail = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (f"{name}: the loss's kernel could not be compiled by Numba. Its functions may use "
            f"arithmetic, math.*, numeric constants and other plain Python functions on floats "
            f"(see 'Defining your own loss' in the README). Numba said:\n{detail}")


class ElementwiseLoss(Loss):
    """A loss computed element by element from two scalar functions of (pred, target, *options).

    ``value(p, t, *opts)`` is the loss of one element and ``deriv(p, t, *opts)`` its derivative
    with respect to ``p``. Optional ``target_flags(t)`` returns integer bit flags describing a
    target value (bits 0 to 30: the CPU kernels OR them as int32); they are OR-ed over the input
    inside the kernel (no extra pass over memory) and ``flags_error(flags)`` turns them into an
    exception message (or None if the input is valid).
    """

    def __init__(self, name, value, deriv, options=(), doc=None, target_flags=None, flags_error=None,
                 validate=None):
        super().__init__(name, doc)
        self.value_fn, self.deriv_fn = value, deriv
        self.options = tuple(options)
        self.target_flags, self.flags_error = target_flags, flags_error
        self.validate = validate
        self._cpu = {}

    # -- kernels -----------------------------------------------------------------------------
    def cpu_kernels(self, static=(), dtype="float64"):
        """The generated CPU kernel module (built on first use; compiled per dtype by Numba).

        ``static``: (name, value) of the boolean options. They are written into the kernel as
        constants, one module per combination, so a branch on them is gone before LLVM sees the
        loop (a branch left inside the loop can stop it vectorising)."""
        key = (static, dtype)
        mod = self._cpu.get(key)
        if mod is None:
            from .kernels import cpu_elementwise
            fast = {o.name: o.fast for o in self.options if o.fast and not o.host}
            mod = self._cpu[key] = cpu_elementwise.build(self.name, self.value_fn, self.deriv_fn,
                                                         self.kernel_options(), self.target_flags, dict(static),
                                                         dtype, fast)
        return mod

    def cuda_kernels(self, array_params=(), ct="float64", static=()):
        """The generated CUDA kernel module for the options given as arrays (``array_params``),
        compute dtype ``ct`` and (name, value) of the boolean options (``static``, constants as on
        the CPU); built on first use, one per combination (see kernels/cuda_elementwise.py)."""
        from .kernels import cuda_helpers
        # Every setting the generated text depends on (a tuning sweep changes them at run time).
        key = (tuple(array_params), ct, tuple(static), _config.CUDA_BLOCK, cuda_helpers.use_shuffles(),
               int(_config.CUDA_EW_VECTORS))
        mods = self.__dict__.setdefault("_cuda", {})
        mod = mods.get(key)
        if mod is None:
            from .kernels import cuda_elementwise
            mod = mods[key] = cuda_elementwise.build(self.name, self.value_fn, self.deriv_fn, self.kernel_options(),
                                                     self.target_flags, array_params, ct, dict(static))
        return mod

    def _check_flags(self, flags):
        if flags and self.flags_error is not None:
            msg = self.flags_error(flags)
            if msg:
                raise ValueError(f"{self.name}: {msg}")

    @staticmethod
    def _flags_par(k, tf, nchunks):
        fl = np.empty(nchunks, dtype=np.int64)
        with _config.PARALLEL_LOCK:
            k.flags_par(tf, fl, _config.CHUNK)
        return int(np.bitwise_or.reduce(fl))

    def kernel_options(self):
        return [o.name for o in self.options if not o.host]

    def kernel_arguments(self, opts, shape, cdt):
        """(static, params) for the CPU kernels from parsed options ``opts`` (``_parse``'s):
        the boolean options as (name, value) pairs, which select a kernel module
        (``cpu_kernels(static, ...)``), and the others as kernel arguments in order: a scalar in
        the compute dtype ``cdt``, or an array broadcast to pred's ``shape`` and flattened."""
        static, params = [], []
        for o in self.options:
            if o.host:
                continue
            v = opts[o.name]
            if o.kind is bool:
                static.append((o.name, v))
                continue
            if isinstance(v, np.ndarray):
                try:
                    v = np.broadcast_to(v, shape)
                except ValueError:
                    raise ValueError(f"{self.name}: {o.name} of shape {v.shape} does not broadcast to pred's shape {shape}") from None
                v = _arrays.contiguous(v, cdt).reshape(-1)
            else:
                v = cdt.type(v)  # options in the compute dtype, like the data
            params.append(v)
        return tuple(static), params

    # -- hooks for losses whose weights are not elementwise (kl_div) --------------------------
    def _weights(self, w, shape, cdt, opts):
        """(per-element weights or None, Σ w that "mean" divides by)."""
        if w is None:
            return None, float(math.prod(shape))
        if w.shape != tuple(shape):
            raise ValueError(f"{self.name}: sample_weight has shape {w.shape}, expected pred's shape {tuple(shape)}")
        w = _arrays.as_real(w, "sample_weight", cdt).reshape(-1)
        return w, float(w.sum(dtype=np.float64))

    def _denominator(self, reduction, wsum, shape, opts):
        return wsum

    def _check_shape(self, shape, opts):
        """Checks of pred's shape against the options, before the target's shape is checked; both
        backends call it. Elementwise losses have none (kl_div checks its class axis)."""

    def _compute(self, op, p, t, w, reduction, opts, out_np, rdt, cdt):
        self._check_shape(p.shape, opts)
        if t.shape != p.shape:
            raise ValueError(f"{self.name}: target has shape {t.shape}, expected pred's shape {p.shape}")
        if self.validate is not None:
            self.validate(opts)
        shape = p.shape
        pf = _arrays.contiguous(p, cdt).reshape(-1)
        tf = _arrays.as_real(t, "target", cdt).reshape(-1)
        wf, wsum = self._weights(w, shape, cdt, opts)
        wsum = self._denominator(reduction, wsum, shape, opts)
        static, params = self.kernel_arguments(opts, shape, cdt)
        n = pf.size
        vals = np.empty(n, dtype=cdt) if reduction == "none" and op != GRAD else None
        grad = _arrays.kernel_buffer(out_np, n, cdt) if op != VALUE else None
        scale = _grad_scale(wsum, reduction)
        k = self.cpu_kernels(static, _COMPUTE_NAMES[cdt])
        nchunks = -(-n // _config.CHUNK)
        if self.target_flags is not None and out_np is not None and op != VALUE:
            # Targets are checked inside the main kernel, but the caller's out= buffer must not
            # be written before they are known to be valid: check them first (reads the
            # targets only) in this case.
            self._check_flags(k.flags_chunk(tf, 0, n) if nchunks <= 1 else self._flags_par(k, tf, nchunks))
        total, flags = 0.0, 0
        if nchunks <= 1:  # small input: one serial chunk (a parallel launch would cost more)
            if op == VALUE:
                total, flags = k.value_chunk(pf, tf, wf, vals, *params, 0, n)
            elif op == GRAD:
                flags = k.grad_chunk(pf, tf, wf, grad, scale, *params, 0, n)
            else:
                total, flags = k.both_chunk(pf, tf, wf, vals, grad, scale, *params, 0, n)
        else:
            fl = np.empty(nchunks, dtype=np.int64)
            sums = np.empty(nchunks, dtype=np.float64)
            with _config.PARALLEL_LOCK:
                if op == VALUE:
                    k.value_par(pf, tf, wf, vals, *params, sums, fl, _config.CHUNK)
                elif op == GRAD:
                    k.grad_par(pf, tf, wf, grad, scale, *params, fl, _config.CHUNK)
                else:
                    k.both_par(pf, tf, wf, vals, grad, scale, *params, sums, fl, _config.CHUNK)
            total = float(sums.sum()) if op != GRAD else 0.0
            flags = int(np.bitwise_or.reduce(fl))
        self._check_flags(flags)

        value = None
        if op != GRAD:
            if reduction == "none":
                value = vals.reshape(shape)
                if value.dtype != rdt:
                    value = value.astype(rdt)
            else:
                value = rdt.type(_reduce_value(total, wsum, reduction))
        g = _arrays.finish_out(grad, out_np, shape, rdt) if op != VALUE else None
        return value, g


#: Keyword arguments every loss call takes, so no option may be named so.
_RESERVED_OPTION_NAMES = frozenset({"reduction", "sample_weight", "out", "stream"})


def elementwise_loss(value, deriv, *, name=None, params=None, validate=None, doc=None):
    """Define an elementwise loss from its scalar math; every built-in elementwise loss is made so.

    Parameters
    ----------
    value : function ``value(pred, target, *params) -> float``
        The loss of one element, written with arithmetic and ``math.*`` (and plain helper
        functions and numeric constants). It is compiled by Numba for every backend.
    deriv : function ``deriv(pred, target, *params) -> float``
        d value / d pred, with the same arguments.
    name : str, optional
        Defaults to ``value.__name__``.
    params : dict, optional
        The loss's options, name -> default, in the order the functions take them. They become
        keyword-only options of the loss; a value may also be an array broadcastable to pred's
        shape (an option per element).
    validate : function, optional
        Called with the options as keyword arguments before any kernel runs; raise ValueError
        to reject them.
    doc : str, optional
        The loss's docstring.

    Returns
    -------
    A loss object with ``__call__``, ``.grad`` and ``.value_and_grad``, compiled on first use and
    cached on disk when the functions' source can be read (not for lambdas).

    Example
    -------
    >>> import math, numpy as np, fastloss as fl
    >>> def pseudo_huber(p, t, delta):
    ...     r = (p - t) / delta
    ...     return delta * delta * (math.sqrt(1.0 + r * r) - 1.0)
    >>> def pseudo_huber_deriv(p, t, delta):
    ...     r = (p - t) / delta
    ...     return delta * r / math.sqrt(1.0 + r * r)
    >>> ph = fl.elementwise_loss(pseudo_huber, pseudo_huber_deriv, params={"delta": 1.0})
    >>> float(ph(np.array([0.0, 3.0]), np.array([0.0, 0.0]), reduction="sum", delta=2.0))  # doctest: +ELLIPSIS
    3.2111...
    """
    import inspect

    options = []
    for key, default in (params or {}).items():
        if isinstance(default, Option):
            options.append(default)
        else:
            kind = bool if isinstance(default, bool) else float
            options.append(Option(key, default, kind=kind, array=kind is float))
    names = [o.name for o in options]
    for n in names:
        if not isinstance(n, str) or not n.isidentifier() or n in _RESERVED_OPTION_NAMES:
            raise ValueError(f"elementwise_loss: option name {n!r} is not allowed: options are Python "
                             f"identifiers other than {', '.join(sorted(_RESERVED_OPTION_NAMES))}")
    checked = [(value, "value"), (deriv, "deriv")]
    checked += [(getattr(fn, "_fastloss_binary"), f"{role}'s binary_target_variant")
                for fn, role in checked if hasattr(fn, "_fastloss_binary")]
    checked += [(getattr(fn, "_fastloss_log1p_form")[0], f"{role}'s log1p_sum_form")
                for fn, role in checked if hasattr(fn, "_fastloss_log1p_form")]
    for fn, role in checked:
        for opt, v in getattr(fn, "_fastloss_log1p_form", (None, {}))[1].items():
            o = next((o for o in options if o.name == opt), None)
            if o is None or o.host or o.kind is not float:
                raise ValueError(f"elementwise_loss: {role}'s log1p_sum_form holds for {opt} = {v!r}, which is not "
                                 f"a numeric option of the loss")
    for fn, role in checked:
        if not callable(fn):
            raise TypeError(f"elementwise_loss: {role} must be a function")
        try:
            sig = list(inspect.signature(getattr(fn, "py_func", fn)).parameters)
        except (TypeError, ValueError):
            continue
        if len(sig) != 2 + len(names) or sig[2:] != names:
            raise TypeError(f"elementwise_loss: {role} must take (pred, target{''.join(', ' + n for n in names)}), "
                            f"got ({', '.join(sig)})")
    user_validate = None
    if validate is not None:
        def user_validate(opts):
            validate(**opts)
    return ElementwiseLoss(name or getattr(value, "__name__", "loss"), value, deriv, options, doc=doc,
                           validate=user_validate)
