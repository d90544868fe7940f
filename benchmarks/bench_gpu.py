"""GPU benchmarks of the CUDA backend (needs a real NVIDIA GPU; not run in CI).

    python benchmarks/bench_gpu.py [--quick] [--repeat 20] [--sweep] [--profile]

Prints medians of:

1. Elementwise ``value_and_grad`` on 2**27 float32 elements (mse, huber, bce_with_logits), as
   achieved bandwidth (2 reads + 1 write per element, 12 bytes) against a device-to-device copy
   of the same array (1 read + 1 write) on the same GPU: the faster of Numba's copy and, when
   torch has CUDA, torch's ``copy_``.
2. ``cross_entropy.value_and_grad`` on (16384, 131072) float32 logits with integer labels,
   counting 12 bytes per element (two reads of the logits, one write of the gradient), against
   the copy bandwidth and against PyTorch's ``F.cross_entropy`` forward + backward when torch
   has CUDA; the result is checked against PyTorch's (value and gradient).
3. Per-call host overhead of a 1,024-element ``mse`` (and its ``value_and_grad``), for each
   array family present (Numba device arrays, CuPy, PyTorch): calls issued back to back, time
   per call on the host, nothing synchronised inside the loop.

``--sweep`` also times variants of the tuning constants of ``fastloss._config`` (block sizes,
vectors per thread, rows in flight, cache hints, launch path) and prints one line per variant;
``--profile`` prints where the host time of a small call goes (cProfile, and the cost of the
allocations and launches it makes).

Times of device work come from CUDA events around each call (after warm-up calls that compile
and load the kernels).
"""
import argparse
import statistics
import sys
import time

import numpy as np


def _args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per case (median reported)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--skip-ce", action="store_true", help="skip the (16384, 131072) cross-entropy")
    ap.add_argument("--sweep", action="store_true", help="also time variants of the CUDA tuning constants")
    ap.add_argument("--profile", action="store_true", help="profile the host path of small calls")
    ap.add_argument("--only", default="123", help="sections to run (default 123)")
    return ap.parse_args()


class _Override:
    """Set attributes of fastloss._config for a while."""

    def __init__(self, cfg, **kw):
        self.cfg, self.kw, self.saved = cfg, kw, {}

    def __enter__(self):
        for k, v in self.kw.items():
            self.saved[k] = getattr(self.cfg, k)
            setattr(self.cfg, k, v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.cfg, k, v)


def main():
    args = _args()
    if not hasattr(np, "row_stack"):  # numba-cuda 0.30 overloads it when it first compiles (gone in NumPy 2.5)
        np.row_stack = np.vstack
    sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0] if "/benchmarks/" in __file__ else ".")
    from numba import config, cuda
    if config.ENABLE_CUDASIM or not cuda.is_available():
        sys.exit("bench_gpu.py needs a real CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")
    import fastloss as fl
    from fastloss import _config

    dev = cuda.get_current_device()
    nsm = dev.MULTIPROCESSOR_COUNT
    print(f"device: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, {nsm} SMs, "
          f"fastloss {fl.__version__}, block {_config.CUDA_BLOCK}, row block {_config.CUDA_ROW_BLOCK}", flush=True)
    try:
        import torch
        has_torch = torch.cuda.is_available()
    except Exception:
        torch, has_torch = None, False
    try:
        import cupy
    except Exception:
        cupy = None

    @cuda.jit
    def fill(a, seed, lo, hi):
        # a cheap hash of the index: uniform-ish values in [lo, hi)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < a.size:
            x = (i * 2654435761 + seed * 97531) & 0xFFFFFFFF
            x ^= x >> 13
            x = (x * 1274126177) & 0xFFFFFFFF
            x ^= x >> 16
            a[i] = lo + (hi - lo) * (x / 4294967296.0)
            i += step

    @cuda.jit
    def fill_labels(y, C, seed):
        i = cuda.grid(1)
        if i < y.size:
            x = (i * 2654435761 + seed) & 0xFFFFFFFF
            x ^= x >> 15
            y[i] = x % C

    def rand(n, seed, lo=-4.0, hi=4.0, dtype=np.float32):
        a = cuda.device_array(n, dtype)
        fill[4096, 256](a, seed, lo, hi)
        return a

    def timed(fn, repeat):
        """Median milliseconds of fn() by CUDA events (legacy default stream)."""
        fn()
        fn()
        cuda.synchronize()
        times = []
        for _ in range(repeat):
            e0, e1 = cuda.event(), cuda.event()
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(cuda.event_elapsed_time(e0, e1))
        return statistics.median(times)

    def timed_batch(fn, repeat, k=10):
        """Median milliseconds per call of k calls issued back to back between two events: the
        device's time per call once the host keeps ahead of it (a single call's time also holds
        the host's work before its first launch)."""
        fn()
        cuda.synchronize()
        times = []
        for _ in range(max(3, repeat // 2)):
            e0, e1 = cuda.event(), cuda.event()
            e0.record()
            for _ in range(k):
                fn()
            e1.record()
            e1.synchronize()
            times.append(cuda.event_elapsed_time(e0, e1) / k)
        return statistics.median(times)

    def copy_ms(src, dst, repeat):
        """The faster of Numba's device-to-device copy and torch's copy_ (same buffers)."""
        ms = timed(lambda: dst.copy_to_device(src), repeat)
        tms = None
        if has_torch:
            ts, td = torch.as_tensor(src, device="cuda"), torch.as_tensor(dst, device="cuda")
            tms = timed(lambda: td.copy_(ts), repeat)
        return ms, tms

    def copy_line(n_elems, c):
        ms, tms = c
        best = min(ms, tms) if tms else ms
        bw = 8 * n_elems / best / 1e6
        extra = f", torch copy_ {tms:.3f} ms" if tms else ""
        return best, bw, f"device copy: numba {ms:.3f} ms{extra} -> {bw:.0f} GB/s (read + write)"

    # 1. elementwise value_and_grad ------------------------------------------------------------
    if "1" in args.only:
        n = 1 << (22 if args.quick else 27)
        p, t = rand(n, 1), rand(n, 2, 0.0, 1.0)
        g = cuda.device_array(n, np.float32)
        _, copy_bw, line = copy_line(n, copy_ms(p, g, args.repeat))
        print(f"\n[1] elementwise, n = 2**{n.bit_length() - 1} float32: {line}", flush=True)
        if has_torch:  # the same traffic (2 reads + 1 write) in PyTorch, for reference
            tp, tt, tg = (torch.as_tensor(a, device="cuda") for a in (p, t, g))
            ams = timed(lambda: torch.add(tp, tt, out=tg), args.repeat)
            print(f"    torch.add(p, t, out=g) (12 B/elem) {ams:.3f} ms = {12 * n / ams / 1e6:5.0f} GB/s = "
                  f"{12 * n / ams / 1e6 / copy_bw:.0%} of copy bandwidth", flush=True)
            tp = tt = tg = None

        def run_ew(tag=""):
            for name in ("mse", "huber", "bce_with_logits"):
                loss = getattr(fl, name)
                ms = timed(lambda: loss.value_and_grad(p, t, out=g), args.repeat)
                bms = timed_batch(lambda: loss.value_and_grad(p, t, out=g), args.repeat)
                bw, bbw = 12 * n / ms / 1e6, 12 * n / bms / 1e6
                print(f"    {tag}{name:16s} value_and_grad {ms:.3f} ms = {bw:5.0f} GB/s = "
                      f"{bw / copy_bw:.0%} of copy bandwidth (single call); back to back {bms:.3f} ms = "
                      f"{bbw:5.0f} GB/s = {bbw / copy_bw:.0%}", flush=True)

        run_ew()
        if args.sweep:
            variants = [dict(CUDA_EW_VECTORS=1), dict(CUDA_EW_VECTORS=4),
                        dict(CUDA_ITEMS_PER_THREAD=16), dict(CUDA_ITEMS_PER_THREAD=32),
                        dict(CUDA_MAX_BLOCKS=nsm * 8, CUDA_ITEMS_PER_THREAD=8),
                        dict(CUDA_BLOCK=512), dict(CUDA_VECTOR=False)]
            for v in variants:
                with _Override(_config, **v):
                    run_ew(f"[{' '.join(f'{k[5:]}={x}' for k, x in v.items())}] ")
        p = t = g = None  # free the device memory

    # 2. cross-entropy ------------------------------------------------------------------------
    if "2" in args.only and not args.skip_ce:
        R, C = (1024, 32768) if args.quick else (16384, 131072)
        x = rand(R * C, 3, -6.0, 6.0).reshape(R, C)
        y = cuda.device_array(R, np.int64)
        fill_labels[-(-R // 256), 256](y, C, 7)
        gx = cuda.device_array((R, C), np.float32)
        _, copy_bw, line = copy_line(R * C, copy_ms(x, gx, max(5, args.repeat // 2)))
        print(f"\n[2] cross_entropy ({R}, {C}) float32, int64 labels: {line}", flush=True)

        def run_ce(tag=""):
            ms = timed(lambda: fl.cross_entropy.value_and_grad(x, y, out=gx), max(5, args.repeat // 2))
            bw = 12 * R * C / ms / 1e6
            print(f"    {tag}fastloss value_and_grad   {ms:7.2f} ms = {bw:5.0f} GB/s (12 B/elem) = "
                  f"{bw / copy_bw:.0%} of copy", flush=True)
            if not tag:
                bms = timed_batch(lambda: fl.cross_entropy.value_and_grad(x, y, out=gx), 6, k=4)
                print(f"    fastloss back to back      {bms:7.2f} ms = {12 * R * C / bms / 1e6:5.0f} GB/s", flush=True)
            return ms

        ms = run_ce()
        if has_torch:  # check against PyTorch, then time it
            import torch.nn.functional as F
            tx = torch.as_tensor(x, device="cuda").clone().requires_grad_(True)
            ty = torch.as_tensor(y, device="cuda")
            v, _ = fl.cross_entropy.value_and_grad(x, y, out=gx)
            cuda.synchronize()
            tv = F.cross_entropy(tx, ty)
            tv.backward()
            dg = (torch.as_tensor(gx, device="cuda") - tx.grad).abs().max().item()
            gmax = tx.grad.abs().max().item()
            print(f"    check vs torch: value {float(v.copy_to_host()):.6f} vs {tv.item():.6f}, "
                  f"max |grad diff| {dg:.3g} (max |grad| {gmax:.3g})", flush=True)

            def torch_fb():
                tx.grad = None
                F.cross_entropy(tx, ty).backward()

            tms = timed(torch_fb, max(5, args.repeat // 2))
            print(f"    torch F.cross_entropy fwd+bwd {tms:7.2f} ms  (torch time / fastloss time = {tms / ms:.2f})",
                  flush=True)
            tbms = timed_batch(torch_fb, 6, k=4)
            print(f"    torch fwd+bwd back to back    {tbms:7.2f} ms", flush=True)
            tx = ty = None
            torch.cuda.empty_cache()
        if args.sweep:
            variants = [dict(CUDA_ROW_BLOCK=512), dict(CUDA_ROW_CACHE_HINTS=False),
                        dict(CUDA_ROW_VECTORS=4), dict(CUDA_ROW_VECTORS=1),
                        dict(CUDA_ROW_MAX_BLOCKS=nsm), dict(CUDA_ROW_MAX_BLOCKS=(nsm * 3) // 4),
                        dict(CUDA_ROW_BLOCK=512, CUDA_ROW_MAX_BLOCKS=nsm), dict(CUDA_VECTOR=False)]
            for v in variants:
                with _Override(_config, **v):
                    run_ce(f"[{' '.join(f'{k[5:]}={x}' for k, x in v.items())}] ")
        ms2 = timed(lambda: fl.cross_entropy.value_and_grad(x, y, out=x), max(5, args.repeat // 2))  # in place
        print(f"    fastloss out=logits       {ms2:7.2f} ms", flush=True)
        x = y = gx = None

    # 3. per-call host overhead ----------------------------------------------------------------
    if "3" in args.only:
        print("\n[3] per-call host overhead, mse on 1024 float32 (median of 20 batches of 200 calls)", flush=True)
        fams = [("numba", lambda a: cuda.to_device(a))]
        if cupy is not None:
            fams.append(("cupy", lambda a: cupy.asarray(a)))
        if has_torch:
            fams.append(("torch", lambda a: torch.from_numpy(a).cuda()))
        a = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
        b = np.random.default_rng(1).standard_normal(1024).astype(np.float32)

        def per_call(call):
            for _ in range(50):
                call()
            cuda.synchronize()
            per = []
            for _ in range(20):
                t0 = time.perf_counter()
                for _ in range(200):
                    call()
                per.append((time.perf_counter() - t0) / 200 * 1e6)
                cuda.synchronize()
            return statistics.median(per)

        variants = [dict()]
        if args.sweep:
            variants += [dict(CUDA_LAUNCH_DRIVER="core"), dict(CUDA_NUMBA_FAST_ALLOC=False), dict(CUDA_POOL_MAX=0)]
        from fastloss import _cuda
        for v in variants:
            with _Override(_config, **v):
                _cuda._fast = None  # set the launch path up again
                tag = " ".join(f"{k[5:]}={x}" for k, x in v.items())
                for fname, make in fams:
                    dp, dt = make(a), make(b)
                    for label, call in (("mse(p, t)", lambda: fl.mse(dp, dt)),
                                        ("mse.value_and_grad", lambda: fl.mse.value_and_grad(dp, dt))):
                        print(f"    {fname:6s} {label:20s} {per_call(call):6.1f} us/call {tag}", flush=True)
        _cuda._fast = None
        if args.profile:
            _profile(fl, cuda, fams, a, b, per_call, torch, cupy)


def _profile(fl, cuda, fams, a, b, per_call, torch, cupy):
    import cProfile
    import io
    import pstats
    print("\n[3b] where the host time goes", flush=True)
    print(f"    cuda.device_array((), f32)          {per_call(lambda: cuda.device_array((), np.float32)):6.1f} us")
    print(f"    cuda.device_array(1024, f32)        {per_call(lambda: cuda.device_array(1024, np.float32)):6.1f} us")
    d = cuda.to_device(a)
    print(f"    numba __cuda_array_interface__      {per_call(lambda: d.__cuda_array_interface__):6.1f} us")
    if cupy is not None:
        print(f"    cupy.empty((), f32)                 {per_call(lambda: cupy.empty((), np.float32)):6.1f} us")
    if torch is not None and torch.cuda.is_available():
        dv = torch.device("cuda", 0)
        print(f"    torch.empty((), f32)                {per_call(lambda: torch.empty((), device=dv)):6.1f} us")
    for fname, make in fams:
        dp, dt = make(a), make(b)
        for _ in range(100):
            fl.mse.value_and_grad(dp, dt)
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(2000):
            fl.mse.value_and_grad(dp, dt)
        pr.disable()
        cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
        print(f"    -- cProfile, {fname}, 2000 x mse.value_and_grad (profiler overhead included) --")
        print("\n".join("    " + ln for ln in s.getvalue().splitlines()[4:]))


if __name__ == "__main__":
    main()
