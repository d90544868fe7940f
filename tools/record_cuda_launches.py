"""pytest plugin for tools/check_cuda_kernels.py: records every CUDA kernel launch of a test run.

Loaded with ``-p record_cuda_launches`` (``tools/`` on ``PYTHONPATH``) in a run under Numba's
CUDA simulator. Each launch is written down as the kernel (which generated module, which
function) and its arguments: arrays by dtype and shape, numbers and tuples by value. One JSON
file per process (pytest-xdist workers each write their own) in ``FASTLOSS_LAUNCH_RECORD``.
"""
import json
import os

_seen = {}  # (kernel, argument types) -> one example of the arguments
_names = {}  # id(dispatcher) -> its description, or None for a kernel found nowhere


def _describe_kernel(disp):
    from fastloss import _cuda
    for key, mod in list(_cuda._MODS.items()):
        for name, value in vars(mod).items():
            if value is disp:
                if key[0] == "common":
                    return {"module": "common", "kernel": name}
                if key[0] == "rows":
                    return {"module": "rows", "ct": key[1], "group": key[2], "kernel": name}
                loss, mask, ct, static = key[:4]
                return {"module": "elementwise", "loss": loss.name, "mask": list(mask), "ct": ct,
                        "static": [list(s) for s in static], "kernel": name}
    return None


def _describe_arg(a):
    from fastloss import _cuda
    if type(a) is _cuda._Buf:
        return ["array", a.dtype.str, list(a.shape)]
    if type(a) is tuple:
        return ["tuple", list(a)]
    if type(a) is float:
        return ["float", a]
    return ["int", int(a)]


def pytest_configure(config):
    from fastloss import _cuda
    original = _cuda._launch

    def recording_launch(disp, grid, cx, args, block=None):
        kid = id(disp)
        if kid not in _names:
            _names[kid] = _describe_kernel(disp)
        desc = _names[kid]
        if desc is not None:
            spec = [_describe_arg(a) for a in args]
            types_key = json.dumps([desc, [s[:2] if s[0] == "array" else [s[0], len(s[1])] if s[0] == "tuple"
                                           else s[0] for s in spec]], sort_keys=True)
            if types_key not in _seen:
                _seen[types_key] = {"kernel": desc, "args": spec, "grid": grid,
                                    "block": cx.block if block is None else block}
        return original(disp, grid, cx, args, block)

    _cuda._launch = recording_launch


def pytest_unconfigure(config):
    out = os.environ.get("FASTLOSS_LAUNCH_RECORD")
    if out and _seen:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"launches-{os.getpid()}.json"), "w") as f:
            json.dump(list(_seen.values()), f)
