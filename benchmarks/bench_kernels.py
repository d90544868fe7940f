"""Benchmark: nanoseconds per element of the elementwise CPU kernels on one core, in cache.

    taskset -c 1 python benchmarks/bench_kernels.py [--loss bce hinge] [--n 32768] [--rounds 15]

Calls each loss's serial chunk kernels (``value_chunk``, ``both_chunk``; ``grad_chunk`` with
``--op grad``) directly, back to back,
on ``--n`` float32 elements (2**15 by default: the inputs stay in L1/L2), with the inputs of
``fastloss bench`` and the options' defaults. The losses are measured in turn, round after round,
and the median of the rounds is printed, so a slow moment of a shared machine touches every loss
alike. This is the steadiest measure of a loop's cost (``docs/cpu-performance.md`` quotes it);
what the full-size figures add is memory bandwidth. Pin it to one core (``taskset``): the
kernels are serial, and a core shared with another process halves every figure.
"""
import argparse
import time

import numpy as np

import fastloss
from fastloss.bench.cases import CASES


def kernel_calls(name, n, dtype):
    """{op: a function running that op's chunk kernel once over n elements}."""
    loss = getattr(fastloss, name)
    pred, target = CASES[name].inputs((n,), np.dtype(dtype), np.random.default_rng(0))
    opts = loss._parse("value", {})[3]  # the options' defaults, as a call without options gets them
    static, params = loss.kernel_arguments(opts, (n,), np.dtype(dtype))
    k = loss.cpu_kernels(static, dtype)
    grad = np.empty_like(pred)
    return {"value": lambda: k.value_chunk(pred, target, None, None, *params, 0, n),
            "value_and_grad": lambda: k.both_chunk(pred, target, None, None, grad, 1.0, *params, 0, n),
            "grad": lambda: k.grad_chunk(pred, target, None, grad, 1.0, *params, 0, n)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    elementwise = [c for c in CASES if not CASES[c].rows]
    ap.add_argument("--loss", nargs="+", default=elementwise, choices=elementwise)
    ap.add_argument("--op", nargs="+", default=["value", "value_and_grad"], choices=["value", "value_and_grad", "grad"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--n", type=int, default=2**15, help="elements per call")
    ap.add_argument("--calls", type=int, default=200, help="calls per round")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    fns = {}
    for name in args.loss:
        calls = kernel_calls(name, args.n, args.dtype)
        for op in args.op:
            calls[op]()  # compile (or load from the cache) outside the timing
            fns[name, op] = calls[op]
    times = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[key].append((time.perf_counter() - t0) / (args.calls * args.n) * 1e9)
    print(f"ns per element, one thread, {args.n} {args.dtype} elements per call, "
          f"median (min-max) of {args.rounds} rounds")
    for (name, op), ts in times.items():
        print(f"{name:16s} {op:15s} {np.median(ts):6.3f}  ({min(ts):.3f}-{max(ts):.3f})")


if __name__ == "__main__":
    main()
