"""The ``fastloss`` command: ``fastloss bench`` measures fastloss against NumPy, PyTorch and the
machine's bandwidth ceiling, side by side in one run, and prints a table."""
import argparse
import json
import statistics
import sys
import tempfile
import time

DEFAULT_SIZES = (2**12, 2**20)
DEFAULT_ROWS = ((4096, 1000),)
# A GPU needs more work per call before it, rather than the launch, is what is timed.
DEFAULT_SIZES_CUDA = (2**16, 2**26)
DEFAULT_ROWS_CUDA = ((4096, 32000),)


def _parse_size(text):
    """'65536', '2**16' or '4096x1000' -> int or (R, C)."""
    text = text.strip().lower()
    if "x" in text:
        r, c = text.split("x", 1)
        return (_parse_size(r), _parse_size(c))
    if "**" in text:
        base, exp = text.split("**", 1)
        return int(base) ** int(exp)
    return int(text)


class _Progress:
    def __init__(self, total, stream=None):
        self.total, self.done, self.stream = total, 0, sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()

    def step(self, label):
        self.done += 1
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + line[:100].ljust(100))
            if self.done == self.total:
                self.stream.write("\n")
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f}µs"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.1f}x"


def print_table(results, have_torch, out=None):
    """One line per result, to ``out`` (sys.stdout as it is at the call). The baseline column is
    NumPy on the CPU and CuPy on the GPU (the same code, run by CuPy); a missing baseline says
    why."""
    out = sys.stdout if out is None else out
    cuda = bool(results) and results[0]["backend"] == "cuda"
    base, base_key = ("CuPy", "speedup_cupy") if cuda else ("NumPy", "speedup_numpy")
    head = (f"{'loss':16s} {'op':14s} {'backend':7s} {'size':>12s} {'dtype':7s} {'fastloss':>9s} "
            f"{'GB/s':>6s} {'%ceil':>6s} {'vs ' + base:>9s} {'vs torch':>9s}")
    out.write(head + "\n" + "-" * len(head) + "\n")
    for r in results:
        size = "x".join(map(str, r["shape"]))
        torch_col = _fmt_ratio(r.get("speedup_torch")) if have_torch else "no torch"
        base_col = _fmt_ratio(r[base_key]) if base_key in r else f"no {base.lower()}"
        out.write(f"{r['loss']:16s} {r['op']:14s} {r['backend']:7s} {size:>12s} {r['dtype']:7s} "
                  f"{_fmt_time(r['fastloss_s']):>9s} {r['gbps']:6.1f} {100 * r['fraction_of_ceiling']:5.0f}% "
                  f"{base_col:>9s} {torch_col:>9s}\n")


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    names = sorted({r["loss"] for r in results})
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for op, style in (("value", "o-"), ("value_and_grad", "s--")):
            pts = sorted((r["elements"], r["gbps"]) for r in results if r["loss"] == name and r["op"] == op)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=op)
        # Each case measured its own ceiling (interleaved with it): draw their median per size.
        by_size = {}
        for r in results:
            if r["loss"] == name:
                by_size.setdefault(r["elements"], []).append(r["ceiling_gbps"])
        ceil = sorted((n, statistics.median(v)) for n, v in by_size.items())
        if ceil:
            label = "copy ceiling" if results[0]["backend"] == "cuda" else "read ceiling"
            ax.plot([c[0] for c in ceil], [c[1] for c in ceil], "k:", label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_title(name)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench(argv):
    from .bench import cases, runner

    ap = argparse.ArgumentParser(prog="fastloss bench", description=__doc__)
    ap.add_argument("--loss", nargs="+", choices=sorted(cases.CASES), help="losses to measure (default: all)")
    ap.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", nargs="+", type=_parse_size,
                    help="element counts (e.g. 2**20) for elementwise losses, RxC (e.g. 2048x32000) for row "
                         "losses (default: 2**12 2**20 and 4096x1000)")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    ap.add_argument("--op", nargs="+", default=["value", "value_and_grad"], choices=["value", "value_and_grad"])
    ap.add_argument("--json", metavar="PATH", help="write machine-readable results (with the hardware) here")
    ap.add_argument("--plot", metavar="PATH.png", help="plot throughput against size per loss (needs matplotlib)")
    ap.add_argument("--min-time", type=float, default=0.005, help="seconds per timing sample (default 0.005)")
    ap.add_argument("--samples", type=int, default=5, help="timing samples per figure; the median is kept")
    ap.add_argument("--no-startup", action="store_true", help="skip the import and compile-time measurements")
    args = ap.parse_args(argv)
    cuda = args.backend == "cuda"
    if cuda:
        from .bench import gpu
        try:
            gpu.cuda_module()
        except (RuntimeError, ImportError) as exc:
            raise SystemExit(f"fastloss bench --backend cuda: {exc}") from None
        default_sizes, default_rows = DEFAULT_SIZES_CUDA, DEFAULT_ROWS_CUDA
    else:
        default_sizes, default_rows = DEFAULT_SIZES, DEFAULT_ROWS

    names = args.loss or list(cases.CASES)
    sizes = [s for s in (args.size or default_sizes) if isinstance(s, int)]
    shapes = [s for s in (args.size or default_rows) if isinstance(s, tuple)]
    if args.size and not shapes:
        shapes = list(default_rows)
    if args.size and not sizes:
        sizes = list(default_sizes)
    plan = []
    for name in names:
        for shape in (shapes if cases.CASES[name].rows else [(n,) for n in sizes]):
            for dtype in args.dtype:
                for op in args.op:
                    plan.append((name, shape, dtype, op))

    import numpy as np

    torch_fns = cases.torch_baselines()
    if cuda and gpu.torch_cuda() is None:
        torch_fns = {}  # no PyTorch with CUDA to compare with
    measure = gpu.bench_case if cuda else runner.bench_case
    results = []
    rng = np.random.default_rng(0)
    startup = None
    if cuda:
        progress = _Progress(len(plan))
    else:
        progress = _Progress(len(plan) + len({name for name, *_ in plan}) + (0 if args.no_startup else 1))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            if not args.no_startup:  # in fresh processes with caches of their own, on an idle machine
                startup = runner.startup_times(tmp)
                progress.step("import and compile times")
        # The sweep's kernels, compiled in one process per CPU.
        runner.warm_kernels(plan, step=progress.step, cost=startup and startup["cold"]["first_call_s"])
        prepared = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, shape, dtype, op in plan:
        results.append(measure(name, shape, dtype, op, rng, args.min_time, args.samples, torch_fns))
        progress.step(f"{name} {op} {'x'.join(map(str, shape))} {dtype}")
    elapsed = time.perf_counter() - t0

    hw = runner.hardware()
    on = (f"{hw.get('cpu', hw['machine'])}, {hw['cpus']} CPUs, numba {hw['numba']} "
          f"({hw['numba_threads']} threads, {hw['threading_layer']} layer)")
    if cuda:
        hw["cuda"] = gpu.device_info()
        on = f"{hw['cuda']['gpu']} (host: {on})"
    if "torch" not in hw:
        on += ", no PyTorch"
    else:
        on += f", torch {hw['torch']}" + ("" if cuda else f" ({hw['torch_threads']} threads)")
    print(f"\nfastloss bench on {on}")
    if cuda:
        if hw["cuda"]["simulator"]:
            print("NUMBA_ENABLE_CUDASIM is set: the CUDA kernels ran on the CPU simulator, so these times "
                  "say nothing about a GPU.")
        print("Times are medians of calls issued back to back, then one synchronisation; GB/s counts inputs "
              "read once and the gradient written once (row losses read the logits twice); %ceil compares "
              "with a device-to-device copy measured in the same run; the baselines are CuPy running the "
              "NumPy code and PyTorch CUDA.\n")
    else:
        print("Times are medians; GB/s counts inputs read once and the gradient written once (row losses "
              "read the logits twice); %ceil compares with a parallel streaming read measured in the same "
              "run.\n")
    print_table(results, bool(torch_fns))
    if startup:
        cold, warm = startup["cold"], startup["warm"]
        print(f"\nimport fastloss: {_fmt_time(warm['import_s'])} in-process "
              f"({_fmt_time(startup['import_process_s'])} for a whole `python -c 'import fastloss'`)")
        print("first value_and_grad per loss, fresh process: compile (empty cache) / warm cache")
        for name in cold["first_call_s"]:
            print(f"  {name:16s} {_fmt_time(cold['first_call_s'][name]):>9s} / "
                  f"{_fmt_time(warm['first_call_s'][name]):>9s}")
        print(f"  every loss once, whole process: {cold['process_s']:.2f}s cold, {warm['process_s']:.2f}s warm")
    if cuda:
        print(f"\nsweep took {elapsed:.1f}s")
    else:
        print(f"\nsweep took {elapsed:.1f}s, after {prepared:.1f}s of compiling its kernels"
              + ("" if args.no_startup else " and measuring the start-up"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"hardware": hw, "results": results, "startup": startup}, fh, indent=1)
        print(f"results written to {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fastloss bench [options]   (fastloss bench --help for the options)")
        return 0 if argv else 2
    if argv[0] == "bench":
        return bench(argv[1:])
    print(f"fastloss: unknown command {argv[0]!r}; try 'fastloss bench'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
