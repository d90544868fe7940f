"""Check the GPU build of every CUDA kernel without a GPU.

The test suite runs the CUDA kernels under Numba's simulator, which executes them as Python: it
never compiles the code a GPU runs (warp shuffles, vector loads, launch bounds), and it never
goes through the direct launch path, which packs the kernel parameters itself instead of letting
Numba's dispatcher do it (``fastloss._cuda._launch_fast``). A typing error in GPU-only code, or a
parameter buffer that differs from Numba's own by one field, would reach GPU users only. This
tool checks both on a machine with no GPU:

1. Record: run the CUDA tests under the simulator (``-k cuda``) with a plugin that writes down
   every kernel launched and its arguments (``tools/record_cuda_launches.py``).
2. Compile: for each kernel and argument types launched, generate the kernel's module as a GPU
   gets it (the default ``fastloss._config`` launch settings, warp shuffles, vector loads,
   launch bounds) and compile it with NVVM to PTX for the chosen compute capability.
3. Marshal: launch it through ``_launch_fast`` with cuLaunchKernel replaced by a recorder, and
   compare the parameter buffer byte for byte with what Numba's own launcher makes of the same
   arguments (``_Kernel._prepare_args``); check that the PTX entry has one 8-byte parameter per
   8 bytes of the buffer.
4. Optionally (``ptxas`` found, from the nvidia-cuda-nvcc wheel): assemble each PTX and report
   registers and spills per kernel.

Needs numba-cuda with NVVM, e.g. ``pip install 'numba-cuda[cu12]'`` (no driver, no GPU)::

    python tools/check_cuda_kernels.py            # record, then check; exit 1 on any failure
    python tools/check_cuda_kernels.py --cc 8.0   # another compute capability

Kernels of losses defined inside the tests are recorded but not checked (they cannot be rebuilt
by name); they come from the same generator as the built-in losses.
"""
import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(out_dir, pytest_args):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FASTLOSS_LAUNCH_RECORD=out_dir,
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tools"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "record_cuda_launches", "-p", "no:cacheprovider",
           "-k", "cuda", os.path.join(ROOT, "tests")] + pytest_args
    print("recording launches:", " ".join(cmd[2:]), flush=True)
    rc = subprocess.call(cmd, env=env, cwd=ROOT)
    if rc:
        sys.exit(f"the recording test run failed (exit {rc})")
    launches = []
    for path in sorted(glob.glob(os.path.join(out_dir, "launches-*.json"))):
        with open(path) as f:
            launches.extend(json.load(f))
    # Workers record independently: keep one launch per kernel and argument types.
    unique = {}
    for rec in launches:
        types_key = json.dumps([rec["kernel"], [a[:2] if a[0] == "array" else a[0] for a in rec["args"]]],
                               sort_keys=True)
        unique.setdefault(types_key, rec)
    return list(unique.values())


def _full_cc(cc):
    """The target numba-cuda compiles for on a device of compute capability ``cc`` (9.0 and later:
    the architecture-specific variant, sm_90a)."""
    return (cc[0], cc[1], "a" if cc >= (9, 0) else "")


def _arch(cc):
    return "sm_%d%d%s" % _full_cc(cc)


def _pretend_gpu(cc):
    """Let numba-cuda compile kernels with no driver: the compute capability is given, the cache
    index does not ask the driver for the context, and no module is loaded onto a device."""
    import numba.cuda.codegen as codegen
    import numba.cuda.dispatcher as dispatcher

    full = _full_cc(cc)
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    codegen.JITCUDACodegen.magic_tuple = lambda self: ("nvptx64-nvidia-cuda", _arch(cc), "")
    codegen.CUDACodeLibrary._ensure_cc = lambda self, c: full if c is None else c
    codegen.CUDACodeLibrary.get_cufunc = lambda self: SimpleNamespace(handle=0x1000, kernel=None)
    dispatcher._Kernel.bind = lambda self: None  # loads the module onto the device


class _ArrayArg:
    """What Numba's launcher reads from a device array (``_prepare_args``): a C-contiguous
    array at a given address, with no memory behind it."""

    def __init__(self, ptr, shape, dtype):
        from numba.cuda.args import ArgHint
        self.dev = SimpleNamespace(size=int(np.prod(shape, dtype=np.int64)), dtype=dtype, ptr=ptr,
                                   shape=tuple(shape),
                                   _layout=SimpleNamespace(strides_in_bytes=None, is_contiguous_c=True,
                                                           is_contiguous_f=len(shape) <= 1))
        self.hint = type("_Hint", (ArgHint,), {"to_device": lambda s, retr, stream=0: self.dev})(None)


def _numba_params(kernel, values):
    """The parameter bytes Numba's own launcher passes for ``values`` (cuda.core's launch packs
    each Python int as 8 bytes, each ctypes value as its own bytes)."""
    kernelargs = []
    for ty, v in zip(kernel.argument_types, values):
        kernel._prepare_args(ty, v, 0, [], kernelargs)
    out = b""
    for v in kernelargs:
        out += struct.pack("<q", v) if isinstance(v, int) else bytes(v)
    return out


def _first_difference(ours, theirs):
    if len(ours) != len(theirs):
        return f"parameter buffer of {len(ours)} bytes, Numba's has {len(theirs)}"
    i = next(i for i in range(0, len(ours), 8) if ours[i:i + 8] != theirs[i:i + 8])
    a, b = struct.unpack("<q", ours[i:i + 8])[0], struct.unpack("<q", theirs[i:i + 8])[0]
    return f"parameter {i // 8} (bytes {i}-{i + 7}) is {a:#x}, Numba's launcher passes {b:#x}"


_PARAM = re.compile(r"\.param\s+(?:\.align\s+(\d+)\s+)?\.([usbf])(\d+)\s+[\w$]+(?:\[(\d+)\])?")


def _entry_param_sizes(ptx):
    m = re.search(r"\.entry\s+[\w$]+\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise AssertionError("no .entry in the PTX")
    sizes = []
    for p in _PARAM.finditer(m.group(1)):
        bits, count = int(p.group(3)), int(p.group(4) or 1)
        sizes.append(bits // 8 * count)
    return sizes


def _ptxas():
    try:
        import nvidia.cuda_nvcc as nvcc
        path = os.path.join(list(nvcc.__path__)[0], "bin", "ptxas")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("ptxas")


def _assemble(ptxas, ptx, cc):
    """(registers, spill stores + loads) of the kernel, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([ptxas, "-v", f"-arch={_arch(cc)}", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    if res.returncode:
        raise AssertionError("ptxas failed:\n" + res.stderr[-2000:])
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", res.stderr)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                                                      res.stderr)]
    return max(regs, default=0), max(spills, default=0)


def check(launches, cc, use_ptxas, ptx_dir=None):
    import fastloss
    from fastloss import _config, _cuda
    from numba import cuda

    _pretend_gpu(cc)
    _cuda.cuda, _cuda.SIM = cuda, False
    _cuda._fast = (None, None, None)  # set up: launches go through _cu_launch below
    _cuda._cufunction = lambda handle: 0x2000
    captured = {}

    def fake_cu_launch(handle, gx, gy, gz, bx, by, bz, shmem, stream, params, extra):
        size = ctypes.c_size_t.from_address(extra[3]).value
        captured.update(handle=handle, grid=(gx, gy, gz), block=(bx, by, bz), stream=stream,
                        params=ctypes.string_at(extra[1], size))
        return 0

    _cuda._cu_launch = fake_cu_launch
    ptxas = _ptxas() if use_ptxas else None

    def modules(k):
        """(description, module) as a GPU with the default settings builds it."""
        if k["module"] == "common":
            return [("common", _cuda._common())]
        if k["module"] == "rows":
            ct = k["ct"]
            per_row = max(32, int(_config.CUDA_ROW_BLOCK) // (2 if ct == "float64" else 1))
            # The simulator's launch settings make a block per row and a warp per row the same
            # module; on a GPU they are two.
            groups = [(1, _config.CUDA_BLOCK)] if k["group"] == 1 else [(32, _config.CUDA_BLOCK),
                                                                        (per_row, per_row)]
            return [(f"rows {ct} group {g} block {b}", _cuda._rows_module(ct, g, b)) for g, b in groups]
        loss = getattr(fastloss, k["loss"], None)
        if not isinstance(loss, fastloss.Loss) or loss.name != k["loss"]:
            return []  # a loss defined by a test
        static = tuple(tuple(s) for s in k["static"])
        desc = f"{k['loss']} {k['ct']} mask={tuple(k['mask'])} static={static}"
        return [(desc, _cuda._elementwise_module(loss, tuple(k["mask"]), k["ct"], static))]

    failures, checked, skipped, report = [], 0, 0, []
    ptr = 0x7F0000000000
    t0 = time.perf_counter()
    for rec in launches:
        k = rec["kernel"]
        built = modules(k)
        if not built:
            skipped += 1
            continue
        for desc, mod in built:
            name = f"{desc}: {k['kernel']}{tuple(a[1] if a[0] == 'array' else a[0] for a in rec['args'])}"
            try:
                disp = getattr(mod, k["kernel"])
                args, numba_values = [], []
                for a in rec["args"]:
                    if a[0] == "array":
                        dt, shape = np.dtype(a[1]), tuple(a[2])
                        ptr += 1 << 20
                        args.append(_cuda._Buf(ptr, shape, dt, None, None, None, _cuda.NUMBA, 0))
                        numba_values.append(_ArrayArg(ptr, shape, dt).hint)
                    elif a[0] == "tuple":
                        args.append(tuple(a[1]))
                        numba_values.append(tuple(a[1]))
                    else:
                        v = float(a[1]) if a[0] == "float" else int(a[1])
                        args.append(v)
                        numba_values.append(v)
                cx = SimpleNamespace(dev=0, h=0x5151)
                grid, block = int(rec["grid"]), int(rec["block"])
                captured.clear()
                _cuda._launch_fast(disp, grid, block, cx, args)  # compiles on first use
                kernel = disp.compile(tuple(_cuda._nbtype(a) for a in args))
                ours = captured["params"]
                theirs = _numba_params(kernel, numba_values)
                if ours != theirs:
                    raise AssertionError(_first_difference(ours, theirs))
                if captured["grid"] != (grid, 1, 1) or captured["block"] != (block, 1, 1) \
                        or captured["stream"] != cx.h or captured["handle"] != 0x2000:
                    raise AssertionError(f"launched with {captured}")
                ptx = kernel._codelibrary.get_asm_str(cc=_full_cc(cc))
                if ptx_dir:
                    os.makedirs(ptx_dir, exist_ok=True)
                    with open(os.path.join(ptx_dir, f"{checked:04d}.ptx"), "w") as f:
                        f.write(f"// {name}\n{ptx}")
                sizes = _entry_param_sizes(ptx)
                if any(s != 8 for s in sizes) or 8 * len(sizes) != len(ours):
                    raise AssertionError(f"PTX parameters {sizes} do not match a buffer of {len(ours)} bytes")
                if ptxas:
                    regs, spill = _assemble(ptxas, ptx, cc)
                    report.append((name, regs, spill))
                checked += 1
            except Exception as exc:  # report every kernel, then fail
                failures.append((name, f"{type(exc).__name__}: {exc}"[:3000]))
    return checked, skipped, failures, report, ptxas, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0)")
    ap.add_argument("--no-ptxas", action="store_true", help="do not assemble the PTX")
    ap.add_argument("--launches", help="a JSON file of recorded launches to reuse (skips recording)")
    ap.add_argument("--ptx-dir", help="write each kernel's PTX into this folder")
    ap.add_argument("--save-launches", help="write the recorded launches to this JSON file")
    ap.add_argument("--workers", type=int, default=2,
                    help="pytest-xdist processes of the recording run (default 2; 0: serial)")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for the recording pytest run (after --)")
    opts = ap.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        sys.exit("run this without NUMBA_ENABLE_CUDASIM: the check compiles for a real GPU")
    cc = tuple(int(x) for x in opts.cc.split("."))
    if opts.launches:
        with open(opts.launches) as f:
            launches = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as d:
            launches = record(d, (["-n", str(opts.workers)] if opts.workers else []) + opts.pytest_args)
        if opts.save_launches:
            with open(opts.save_launches, "w") as f:
                json.dump(launches, f)
    print(f"{len(launches)} kernel launches (distinct kernel and argument types) to check for {_arch(cc)}",
          flush=True)
    with tempfile.TemporaryDirectory() as cache:
        # Fresh caches: nothing compiled for the simulator or another GPU is reused.
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
        os.environ["FASTLOSS_CACHE_DIR"] = os.path.join(cache, "fastloss")
        checked, skipped, failures, report, ptxas, secs = check(launches, cc, not opts.no_ptxas, opts.ptx_dir)
    for name, regs, spill in sorted(report):
        print(f"  {regs:3d} registers {spill:5d} bytes spilled  {name}")
    spilled = [r for r in report if r[2]]
    print(f"checked {checked} kernel builds in {secs:.0f} s ({skipped} launches of test-defined losses "
          f"skipped); {len(failures)} failed; {len(spilled)} kernels spill registers"
          + ("" if ptxas or opts.no_ptxas else " (ptxas not found: registers not reported)"))
    for name, err in failures:
        print(f"FAILED {name}\n    {err}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
