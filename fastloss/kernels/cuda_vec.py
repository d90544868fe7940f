"""Vector loads and stores for the CUDA kernels: four consecutive elements in one instruction.

Numba indexes arrays one element at a time (a 4-byte load for float32, with a negative-index
check), and it cannot know that an address is 16-byte aligned, so it never emits the wide loads
that memory-bound kernels need to keep enough bytes in flight. These intrinsics do:

* ``ld4(a, i)``         elements ``i .. i+3`` of ``a`` (C-contiguous, any ndim, ``i`` a flat index)
                        as a 4-tuple, in one ``ld.v4.f32`` (float32; two ``ld.v2.f64`` for float64,
                        one ``ld.v4.f16`` for float16);
* ``st4(a, i, v0, v1, v2, v3)`` the reverse (values are cast to ``a``'s dtype);
* ``ld4_lu`` / ``st4_cs``: the same with the "last use" load and "streaming" store cache hints
  (``ld.global.lu``, ``st.global.cs``: evict first from L1/L2), for data read for the last time
  and results not read again by the kernel, so that they do not push out of L2 what a later
  pass will read again (float32/float64; float16 gets the plain forms).

The caller guarantees alignment: ``a``'s data pointer and ``i * itemsize`` are multiples of
``min(16, 4 * itemsize)`` (the host checks the pointers and that ``i`` is a multiple of 4) and
``i + 3`` is in bounds. No bounds or negative-index checks are made.

Under the CUDA simulator these names are plain Python functions of the same meaning
(``cuda_helpers._VEC_SIM``), pasted into the generated modules instead of importing this file.
"""
from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

_I32 = ir.IntType(32)


def _elem_ptr(context, builder, aryty, ary, idxty, idx):
    arr = context.make_array(aryty)(context, builder, value=ary)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(arr.data, [i], inbounds=True)


def _check(name, a):
    if not isinstance(a, types.Array) or not isinstance(a.dtype, types.Float) or a.dtype.bitwidth not in (16, 32, 64):
        from numba.cuda.core.errors import NumbaTypeError
        raise NumbaTypeError(f"{name} needs an array of float16, float32 or float64, got {a}")


def _align(dt):
    return min(16, 4 * (dt.bitwidth // 8))


def _plain_load(context, builder, aryty, ary, idxty, idx):
    elt = context.get_value_type(aryty.dtype)
    vty = ir.VectorType(elt, 4)
    ptr = _elem_ptr(context, builder, aryty, ary, idxty, idx)
    v = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=_align(aryty.dtype), typ=vty)
    return [builder.extract_element(v, ir.Constant(_I32, k)) for k in range(4)]


def _plain_store(context, builder, aryty, ary, idxty, idx, vals):
    elt = context.get_value_type(aryty.dtype)
    vty = ir.VectorType(elt, 4)
    v = ir.Constant(vty, ir.Undefined)
    for k, x in enumerate(vals):
        v = builder.insert_element(v, x, ir.Constant(_I32, k))
    ptr = _elem_ptr(context, builder, aryty, ary, idxty, idx)
    builder.store(v, builder.bitcast(ptr, vty.as_pointer()), align=_align(aryty.dtype))


def _asm_load(context, builder, aryty, ary, idxty, idx, hint):
    bw = aryty.dtype.bitwidth
    if bw == 16:
        return _plain_load(context, builder, aryty, ary, idxty, idx)
    elt = context.get_value_type(aryty.dtype)
    ptr = _elem_ptr(context, builder, aryty, ary, idxty, idx)
    addr = builder.ptrtoint(ptr, ir.IntType(64))
    if bw == 32:
        sty = ir.LiteralStructType([elt] * 4)
        fn = ir.FunctionType(sty, [ir.IntType(64)])
        asm = ir.InlineAsm(fn, f"ld.global.{hint}.v4.f32 {{$0, $1, $2, $3}}, [$4];", "=f,=f,=f,=f,l",
                           side_effect=True)
        r = builder.call(asm, [addr])
        return [builder.extract_value(r, k) for k in range(4)]
    sty = ir.LiteralStructType([elt] * 2)
    fn = ir.FunctionType(sty, [ir.IntType(64)])
    asm = ir.InlineAsm(fn, f"ld.global.{hint}.v2.f64 {{$0, $1}}, [$2];", "=d,=d,l", side_effect=True)
    r0 = builder.call(asm, [addr])
    r1 = builder.call(asm, [builder.add(addr, ir.Constant(ir.IntType(64), 16))])
    return [builder.extract_value(r0, 0), builder.extract_value(r0, 1),
            builder.extract_value(r1, 0), builder.extract_value(r1, 1)]


def _asm_store(context, builder, aryty, ary, idxty, idx, vals, hint):
    bw = aryty.dtype.bitwidth
    if bw == 16:
        return _plain_store(context, builder, aryty, ary, idxty, idx, vals)
    elt = context.get_value_type(aryty.dtype)
    ptr = _elem_ptr(context, builder, aryty, ary, idxty, idx)
    addr = builder.ptrtoint(ptr, ir.IntType(64))
    if bw == 32:
        fn = ir.FunctionType(ir.VoidType(), [ir.IntType(64)] + [elt] * 4)
        asm = ir.InlineAsm(fn, f"st.global.{hint}.v4.f32 [$0], {{$1, $2, $3, $4}};", "l,f,f,f,f,~{memory}",
                           side_effect=True)
        builder.call(asm, [addr] + list(vals))
        return
    fn = ir.FunctionType(ir.VoidType(), [ir.IntType(64)] + [elt] * 2)
    asm = ir.InlineAsm(fn, f"st.global.{hint}.v2.f64 [$0], {{$1, $2}};", "l,d,d,~{memory}", side_effect=True)
    builder.call(asm, [addr, vals[0], vals[1]])
    builder.call(asm, [builder.add(addr, ir.Constant(ir.IntType(64), 16)), vals[2], vals[3]])


def _make_load(name, hint):
    @intrinsic
    def impl(typingctx, a, i):
        _check(name, a)
        sig = types.UniTuple(a.dtype, 4)(a, i)

        def codegen(context, builder, sig, args):
            aryty, idxty = sig.args
            if hint is None:
                vals = _plain_load(context, builder, aryty, args[0], idxty, args[1])
            else:
                vals = _asm_load(context, builder, aryty, args[0], idxty, args[1], hint)
            return context.make_tuple(builder, sig.return_type, vals)
        return sig, codegen
    return impl


def _make_store(name, hint):
    @intrinsic
    def impl(typingctx, a, i, v0, v1, v2, v3):
        _check(name, a)
        sig = types.void(a, i, v0, v1, v2, v3)

        def codegen(context, builder, sig, args):
            aryty, idxty = sig.args[:2]
            vals = [context.cast(builder, v, t, aryty.dtype) for v, t in zip(args[2:], sig.args[2:])]
            if hint is None:
                _plain_store(context, builder, aryty, args[0], idxty, args[1], vals)
            else:
                _asm_store(context, builder, aryty, args[0], idxty, args[1], vals, hint)
            return context.get_dummy_value()
        return sig, codegen
    return impl


ld4 = _make_load("ld4", None)
ld4_lu = _make_load("ld4_lu", "lu")
st4 = _make_store("st4", None)
st4_cs = _make_store("st4_cs", "cs")

