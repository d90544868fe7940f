"""Turn a loss's scalar math (plain Python functions) into a module of real kernels.

A loss's math is written once, as plain scalar functions. Kernel *templates* (one per backend and
kind of loop, in this folder) say how to loop over arrays and call them. This module glues the two
by writing source text, not by building closures, because Numba's on-disk cache (``cache=True``)
holds only for functions defined at module level in a file: kernels made in a factory (closures),
or jitted functions passed as arguments, compile again in every process (numba issue 6264).

So for each loss and template we write one ``.py`` file into the cache folder: the scalar
functions' source, copied from where they are defined, then the template. Its name carries a hash
of its text, so an edited loss gets a new file (and a new Numba cache) and an unchanged loss loads
its compiled kernels from disk. Files are written once, atomically, so processes racing to create
the same module see either nothing or the whole file.

Scalar functions may use arithmetic, ``math.*``, numeric constants (global or closed over) and
other plain functions (copied recursively). Functions whose source cannot be read (lambdas,
functions typed at a prompt) still work: their module is built in memory, with the functions
injected, and is simply not cached on disk.
"""
import ast
import builtins
import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
import tempfile
import textwrap
import threading
import types

import numpy as np

from .. import _config

# Generated source format version: bump when templates change in a way the hash would not see.
_FORMAT = "1"

#: Every template's header has this line; in-memory modules get ``CACHE = False`` instead.
CACHE_FLAG_LINE = "CACHE = True"

_lock = threading.Lock()
_loaded = {}  # module file name -> module


class ScalarSource:
    """The source of a set of scalar functions, ready to paste into a generated module.

    ``text`` defines every function under a generated name; ``names`` maps each role ("value",
    "deriv", ...) to that name; ``injected`` holds objects that could not be written as source
    (then the module cannot be cached on disk).
    """

    def __init__(self, text, names, imports, injected, math_used=True):
        self.text = text
        self.math_used = math_used  # False: arithmetic only (no exp, log, ...: a cheap loop body)
        self.names = names
        self.imports = imports
        self.injected = injected


def _import_module(fn):
    """Where a generated module imports a function marked ``_fastloss_jit_import`` from: the
    module the mark names (vmath's stubs live in vmath_stubs.py but their overloads are
    registered by importing vmath), or else the function's own."""
    mark = getattr(fn, "_fastloss_jit_import", None)
    return mark if isinstance(mark, str) else fn.__module__


class _NoSource(Exception):
    pass


def option_arg(name):
    """A loss option's name in generated kernel text: ``opt_<name>``, so that a user's option
    named like a variable of a template (c, t, acc, scale, np, ...) cannot shadow it."""
    return f"opt_{name}"


def _plain_function(fn):
    fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: use the Python function it wraps
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"expected a plain Python function, got {type(fn).__name__}")
    return fn


def _free_names(fdef):
    """Names a function reads that are neither its arguments nor its locals."""
    args = {a.arg for a in fdef.args.args + fdef.args.kwonlyargs + fdef.args.posonlyargs}
    stored, loaded = set(), []
    for node in ast.walk(fdef):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store):
                stored.add(node.id)
            elif node.id not in loaded:
                loaded.append(node.id)
    return [n for n in loaded if n not in args and n not in stored]


def _resolve(fn, name):
    """The object a free name of ``fn`` refers to: a closure cell, a global or a builtin."""
    code = fn.__code__
    if name in code.co_freevars and fn.__closure__:
        return fn.__closure__[code.co_freevars.index(name)].cell_contents
    if name in fn.__globals__:
        return fn.__globals__[name]
    if hasattr(builtins, name):
        return getattr(builtins, name)
    raise _NoSource(f"{fn.__qualname__} uses undefined name {name!r}")


def _sole_arg(node, is_callee):
    """The argument of ``node`` if it is a call with one positional argument and no keywords whose
    callee passes ``is_callee``; else None."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and is_callee(node.func):
        return node.args[0]
    return None


class _MathCalls(ast.NodeTransformer):
    """Rewrites ``math.NAME`` (``math`` under any alias) to replacement functions, and the idioms
    ``math.log1p(math.exp(x))`` and ``math.exp(-abs(x))`` to one fused function where ``replace``
    has "log1p(exp)" or "exp(-abs)"."""

    def __init__(self, aliases, replace, abs_is_builtin=True):
        self.aliases, self.replace, self.used = aliases, replace, set()
        self.abs_is_builtin = abs_is_builtin

    def _is_math(self, node, name):
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in self.aliases and node.attr == name)

    def _fused(self, key, arg, node):
        """The call of replace[key] on ``arg`` (itself rewritten) that stands for ``node``."""
        fused = self.replace[key]
        self.used.add(fused)
        call = ast.Call(func=ast.Name(id=f"_i_{fused.__name__}", ctx=ast.Load()), args=[self.visit(arg)], keywords=[])
        return ast.copy_location(call, node)

    def visit_Call(self, node):
        # Idioms with a fused replacement. "log1p(exp)" is math.log1p(math.exp(x)), softplus.
        # "exp(-abs)" is math.exp(-abs(x)), the e^(-|x|) of softplus and sigmoid, whose CPU form
        # clamps |x| in one instruction (vmath.exp_neg_abs): every spelling of it in a loss must
        # become the same call, or LLVM computes the exp twice where the value and the gradient
        # share it.
        exp_arg = _sole_arg(node, lambda f: self._is_math(f, "exp"))
        log1p_arg = _sole_arg(node, lambda f: self._is_math(f, "log1p"))
        inner = _sole_arg(log1p_arg, lambda f: self._is_math(f, "exp"))
        if "log1p(exp)" in self.replace and inner is not None:
            return self._fused("log1p(exp)", inner, node)
        if ("exp(-abs)" in self.replace and self.abs_is_builtin and isinstance(exp_arg, ast.UnaryOp)
                and isinstance(exp_arg.op, ast.USub)):
            inner = _sole_arg(exp_arg.operand, lambda f: isinstance(f, ast.Name) and f.id == "abs")
            if inner is not None:
                return self._fused("exp(-abs)", inner, node)
        self.generic_visit(node)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and node.attr in self.replace:
            fn = self.replace[node.attr]
            self.used.add(fn)
            return ast.copy_location(ast.Name(id=f"_i_{fn.__name__}", ctx=ast.Load()), node)
        return node


class _FromMath(ast.NodeTransformer):
    """``exp(x)`` after ``from math import exp`` becomes ``math.exp(x)``: one spelling for the
    code generators to recognise."""

    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.names:
            attr = ast.Attribute(value=ast.Name(id="math", ctx=ast.Load()), attr=self.names[node.id], ctx=ast.Load())
            return ast.copy_location(attr, node)
        return node


class _FusedMultiplyAdds(ast.NodeTransformer):
    """``x * y + z``, ``z + x * y``, ``x * y - z`` and ``z - x * y`` become calls of ``fma_name``
    (x, y, ±z), innermost first, so a Horner step ``s * z + c`` that feeds the next is fused too."""

    def __init__(self, fma_name):
        self.fma_name = fma_name

    @staticmethod
    def _is_mult(node):
        return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if not isinstance(node.op, (ast.Add, ast.Sub)):
            return node
        left, right = node.left, node.right
        if self._is_mult(left):
            x, y, z = left.left, left.right, right
            if isinstance(node.op, ast.Sub):
                z = ast.UnaryOp(op=ast.USub(), operand=z)
        elif self._is_mult(right):
            x, y, z = right.left, right.right, left
            if isinstance(node.op, ast.Sub):
                x = ast.UnaryOp(op=ast.USub(), operand=x)
        else:
            return node
        call = ast.Call(func=ast.Name(id=self.fma_name, ctx=ast.Load()), args=[x, y, z], keywords=[])
        return ast.copy_location(call, node)


class _TypedFloats(ast.NodeTransformer):
    """Wraps float literals, and math's float constants (``math.nan``, ``math.inf``, ``math.pi``,
    ...), in ``FLOAT(...)``: with FLOAT = np.float32 a float32 kernel computes in float32 (a bare
    ``2.0`` or ``math.nan`` is a float64 in Numba and would promote the whole expression)."""

    _MATH_FLOATS = ("nan", "inf", "pi", "e", "tau")

    def __init__(self, math_aliases=()):
        self.math_aliases = set(math_aliases)

    @staticmethod
    def _wrap(node):
        call = ast.Call(func=ast.Name(id="FLOAT", ctx=ast.Load()), args=[node], keywords=[])
        return ast.copy_location(call, node)

    def visit_Constant(self, node):
        return self._wrap(node) if isinstance(node.value, float) else node

    def visit_Attribute(self, node):
        if (isinstance(node.value, ast.Name) and node.value.id in self.math_aliases
                and node.attr in self._MATH_FLOATS and isinstance(node.ctx, ast.Load)):
            return self._wrap(node)
        return self.generic_visit(node)


class _Collector:
    """Copies functions and what they use into one module text, renaming functions uniquely."""

    def __init__(self, prefix, replace_math=None, typed_floats=False, dtype=None, fma=None):
        self.replace_math = replace_math or {}
        self.fma = fma
        self.float32 = dtype == "float32"
        self.typed_floats = typed_floats
        self.prefix = prefix
        self.defs = []  # source texts
        self.names = {}  # id(function) -> generated name
        self.imports = set()
        self.constants = {}
        self.math_used = False

    def add(self, fn):
        fn = _plain_function(fn)
        if id(fn) in self.names:
            return self.names[id(fn)]
        gen_name = f"{self.prefix}{len(self.names)}_{fn.__name__}"
        self.names[id(fn)] = gen_name
        fused = getattr(fn, "_fastloss_fma", False)
        if self.float32 and getattr(fn, "_fastloss_float32", None) is not None:
            fn = _plain_function(fn._fastloss_float32)  # copied under the decorated one's name
        try:
            src = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError) as exc:
            raise _NoSource(str(exc)) from None
        tree = ast.parse(src)
        fdef = tree.body[0] if tree.body else None
        if not isinstance(fdef, ast.FunctionDef) or fdef.name != fn.__name__:
            raise _NoSource(f"{fn.__qualname__}: source is not a plain def (a lambda?)")
        fdef.decorator_list = []
        fdef.name = gen_name
        renames = {}
        from_math = {}  # names bound by ``from math import ...`` -> their name in math
        math_aliases = set()
        for name in _free_names(fdef):
            obj = _resolve(fn, name)
            if isinstance(obj, types.ModuleType):
                if obj is not math:
                    raise _NoSource(f"{fn.__qualname__} uses module {obj.__name__}; only math is allowed")
                math_aliases.add(name)
                self.math_used = True
                self.imports.add(f"import math as {name}" if name != "math" else "import math")
            elif getattr(math, getattr(obj, "__name__", ""), None) is obj and callable(obj):
                # ``from math import exp``: written back as math.exp, which the code generators
                # know (and the CPU one replaces with its vectorised form)
                math_aliases.add("math")
                self.math_used = True
                self.imports.add("import math")
                from_math[name] = obj.__name__
            elif isinstance(obj, (bool, int, float, np.bool_, np.integer, np.floating)):
                obj = obj.item() if isinstance(obj, np.generic) else obj
                const = f"_c_{name}"
                old = self.constants.get(const, obj)
                if not (old == obj or (old != old and obj != obj)):  # NaN equals NaN here
                    raise _NoSource(f"constant {name!r} has two values")
                self.constants[const] = obj
                renames[name] = const
            elif getattr(obj, "_fastloss_jit_import", None):
                # A fastloss helper that kernels import rather than copy (e.g. vectorised exp).
                self.imports.add(f"from {_import_module(obj)} import {obj.__name__} as _i_{obj.__name__}")
                renames[name] = f"_i_{obj.__name__}"
            elif isinstance(obj, types.FunctionType) or hasattr(obj, "py_func"):
                renames[name] = self.add(obj)
            elif isinstance(obj, types.BuiltinFunctionType) and getattr(builtins, name, None) is obj:
                pass  # abs, min, max, ... : Numba knows them
            elif obj in (float, int, bool):
                pass
            else:
                raise _NoSource(f"{fn.__qualname__} uses {name!r} of unsupported type {type(obj).__name__}")
        if renames:
            for node in ast.walk(fdef):
                if isinstance(node, ast.Name) and node.id in renames:
                    node.id = renames[node.id]
        if from_math:
            fdef = ast.fix_missing_locations(_FromMath(from_math).visit(fdef))
        if math_aliases and self.replace_math:
            # abs here is the builtin unless the function assigns a local of that name (a free
            # name abs that is not the builtin was renamed above)
            calls = _MathCalls(math_aliases, self.replace_math, "abs" not in fn.__code__.co_varnames)
            fdef = calls.visit(fdef)
            for rep in calls.used:
                self.imports.add(f"from {_import_module(rep)} import {rep.__name__} as _i_{rep.__name__}")
        if (fused or getattr(fn, "_fastloss_fma", False)) and self.fma is not None:
            fma_name = f"_i_{self.fma.__name__}"
            self.imports.add(f"from {_import_module(self.fma)} import {self.fma.__name__} as {fma_name}")
            fdef = ast.fix_missing_locations(_FusedMultiplyAdds(fma_name).visit(fdef))
        if self.typed_floats:
            fdef = ast.fix_missing_locations(_TypedFloats(math_aliases).visit(fdef))
        self.defs.append(ast.unparse(fdef))
        return gen_name


def _check_no_helpers(fn, reason):
    """A function injected without its source is compiled as it is, so the plain Python functions
    it calls are not compiled with it (Numba would fail with a typing error): say so instead."""
    if fn is None:
        return
    fn = _plain_function(fn)
    for name in fn.__code__.co_names:
        obj = fn.__globals__.get(name)
        if isinstance(obj, types.FunctionType) and not getattr(obj, "_fastloss_jit_import", False):
            raise TypeError(f"{fn.__qualname__} cannot be copied into a kernel ({reason}), so the function "
                            f"{name!r} it calls cannot be compiled with it: define both with def in a file, "
                            "using arithmetic, math and numeric constants only")


def _literal(value):
    """Source text of a constant: repr, except for the floats whose repr is not Python
    (inf, -inf, nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


def scalar_source(functions, prefix="_s", replace_math=None, typed_floats=False, dtype=None, fma=None):
    """Source text defining each function of ``functions`` (role -> function) and its helpers.

    Each function is preceded by the decorator placeholder ``@SCALAR_JIT``; the template decides
    what that is (``njit(...)`` on the CPU, ``cuda.jit(device=True)`` on the GPU).
    ``replace_math`` maps names of ``math`` functions to jit functions to call instead (the CPU
    uses vectorisable exp and log, see vmath.py; the GPU keeps ``math``, which is fast there).
    ``typed_floats``: float literals and float constants are wrapped in ``FLOAT(...)``, which the
    template defines as the compute dtype. ``dtype``: that compute dtype's name; "float32" copies
    the float32 variants of functions that have one (``float32_variant``). ``fma``: a jit function
    (a, b, c) -> a * b + c rounded once, which the ``a * b + c`` of functions marked
    ``fused_multiply_add`` become (the CPU passes vmath's; elsewhere they stay as written).
    """
    col = _Collector(prefix, replace_math, typed_floats, dtype, fma)
    try:
        names = {role: col.add(fn) for role, fn in functions.items() if fn is not None}
    except _NoSource as exc:
        # Source unavailable: inject the functions themselves. They are compiled from their
        # Python objects and the module is not cached on disk.
        for fn in functions.values():
            _check_no_helpers(fn, str(exc))
        names = {role: f"{prefix}_{role}" for role, fn in functions.items() if fn is not None}
        injected = {names[role]: _plain_function(fn) for role, fn in functions.items() if fn is not None}
        text = "\n".join(f"{n} = SCALAR_JIT({n})" for n in names.values())
        return ScalarSource(text, names, [], injected)
    lines = [f"{k} = FLOAT({_literal(v)})" if typed_floats and isinstance(v, float) else f"{k} = {_literal(v)}"
             for k, v in sorted(col.constants.items())]
    for d in col.defs:
        lines.append("@SCALAR_JIT\n" + d)
    return ScalarSource("\n\n".join(lines), names, sorted(col.imports), {}, col.math_used)


def load_module(kind, header, body, injected=None):
    """Write (once) and import a generated module. ``kind`` names it for humans.

    ``header`` is the import block, ``body`` the rest; the file name carries a hash of both, so
    different loss math never shares a file or a cache entry.
    """
    text = f"# Generated by fastloss ({kind}); do not edit: it is rewritten from the loss's source.\n"
    text += header + "\n\n" + body + "\n"
    digest = hashlib.sha256((_FORMAT + _dependency_stamp() + text).encode()).hexdigest()[:20]
    # A file and module name: a user's loss name may hold anything ("a/b"); the hash of the
    # text, which holds the name as given, keeps names that sanitise alike apart.
    fname = re.sub(r"\W", "_", kind, flags=re.ASCII) + f"_{digest}"
    if injected:
        # The text of an in-memory module does not say what was injected (two lambdas give the
        # same text), so it is never shared: each loss object keeps its own.
        return _exec_in_memory(fname, text, injected)
    with _lock:
        mod = _loaded.get(fname)
        if mod is None:
            path = _write_once(fname + ".py", text)
            mod = _loaded[fname] = _import_path(fname, path)
        return mod


_stamp = None


def _dependency_stamp():
    """A hash of the modules generated code imports (helpers, vmath, _config): Numba's cache does
    not see changes in imported functions, so an edit there must give the generated modules new
    names."""
    global _stamp
    if _stamp is None:
        h = hashlib.sha256()
        folder = os.path.dirname(__file__)
        paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".py")]
        paths.append(_config.__file__)  # the jit options the generated code reads
        for path in paths:
            with open(path, "rb") as fh:
                h.update(os.path.basename(path).encode() + fh.read())
        _stamp = h.hexdigest()[:16]
    return _stamp


def _write_once(fname, text):
    folder = os.path.join(_config.cache_dir(), "kernels")
    path = os.path.join(folder, fname)
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".py")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if os.path.exists(path):  # another process won the race: keep its file (and its mtime)
        os.unlink(tmp)
    else:
        os.replace(tmp, path)
    return path


def _import_path(name, path):
    modname = f"fastloss._generated.{name}"
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def _exec_in_memory(name, text, injected):
    modname = f"fastloss._generated.{name}_{id(injected):x}"
    mod = types.ModuleType(modname)
    mod.__dict__.update(injected)
    # Without a source file Numba cannot cache: templates read this flag into their options.
    text = text.replace(CACHE_FLAG_LINE, "CACHE = False")
    exec(compile(text, f"<fastloss generated {name}>", "exec"), mod.__dict__)
    sys.modules[modname] = mod
    return mod
