"""GPU benchmarks of the CUDA backend (needs a real NVIDIA GPU; not run in CI).

    python benchmarks/bench_gpu.py [--quick] [--repeat 20]

Prints medians of:

1. Elementwise ``value_and_grad`` on 2**27 float32 elements (mse, huber, bce_with_logits), as
   achieved bandwidth (2 reads + 1 write per element, 12 bytes) against a device-to-device copy
   of the same array (1 read + 1 write) on the same GPU.
2. ``cross_entropy.value_and_grad`` on (16384, 131072) float32 logits with integer labels,
   counting 12 bytes per element (two reads of the logits, one write of the gradient), against
   the copy bandwidth and against PyTorch's ``F.cross_entropy`` forward + backward when torch
   has CUDA.
3. Per-call host overhead of a 1,024-element ``mse`` (and its ``value_and_grad``), for each
   array family present (Numba device arrays, CuPy, PyTorch): calls issued back to back, time
   per call on the host, nothing synchronised inside the loop.

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
    return ap.parse_args()


def main():
    args = _args()
    from numba import config, cuda
    if config.ENABLE_CUDASIM or not cuda.is_available():
        sys.exit("bench_gpu.py needs a real CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")
    import fastloss as fl

    dev = cuda.get_current_device()
    print(f"device: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
          f"fastloss {fl.__version__}, block {fl._config.CUDA_BLOCK}")
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
        fill[1024, 256](a, seed, lo, hi)
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

    def copy_ms(src, dst, repeat):
        return timed(lambda: dst.copy_to_device(src), repeat)

    # 1. elementwise value_and_grad ------------------------------------------------------------
    n = 1 << (22 if args.quick else 27)
    p, t = rand(n, 1), rand(n, 2, 0.0, 1.0)
    g = cuda.device_array(n, np.float32)
    c_ms = copy_ms(p, g, args.repeat)
    copy_bw = 8 * n / c_ms / 1e6  # GB/s, read + write
    print(f"\n[1] elementwise, n = 2**{n.bit_length() - 1} float32: device copy {c_ms:.3f} ms = {copy_bw:.0f} GB/s")
    for name in ("mse", "huber", "bce_with_logits"):
        loss = getattr(fl, name)
        ms = timed(lambda: loss.value_and_grad(p, t, out=g), args.repeat)
        bw = 12 * n / ms / 1e6
        print(f"    {name:16s} value_and_grad {ms:.3f} ms = {bw:5.0f} GB/s = {bw / copy_bw:.0%} of copy bandwidth")
    p = t = g = None  # free the device memory

    # 2. cross-entropy ------------------------------------------------------------------------
    if not args.skip_ce:
        R, C = (1024, 32768) if args.quick else (16384, 131072)
        x = rand(R * C, 3, -6.0, 6.0).reshape(R, C)
        y = cuda.device_array(R, np.int64)
        fill_labels[-(-R // 256), 256](y, C, 7)
        gx = cuda.device_array((R, C), np.float32)
        c_ms = copy_ms(x, gx, max(5, args.repeat // 2))
        copy_bw = 8 * R * C / c_ms / 1e6
        print(f"\n[2] cross_entropy ({R}, {C}) float32, int64 labels: device copy {c_ms:.2f} ms = {copy_bw:.0f} GB/s")
        ms = timed(lambda: fl.cross_entropy.value_and_grad(x, y, out=gx), args.repeat)
        bw = 12 * R * C / ms / 1e6
        print(f"    fastloss value_and_grad   {ms:7.2f} ms = {bw:5.0f} GB/s (12 B/elem) = {bw / copy_bw:.0%} of copy")
        ms2 = timed(lambda: fl.cross_entropy.value_and_grad(x, y, out=x), args.repeat)  # in place
        print(f"    fastloss out=logits       {ms2:7.2f} ms")
        if has_torch:
            import torch.nn.functional as F
            tx = torch.as_tensor(x, device="cuda").clone().requires_grad_(True)
            ty = torch.as_tensor(y, device="cuda")

            def torch_fb():
                tx.grad = None
                F.cross_entropy(tx, ty).backward()

            tms = timed(torch_fb, max(5, args.repeat // 2))
            print(f"    torch F.cross_entropy fwd+bwd {tms:7.2f} ms  (torch time / fastloss time = {tms / ms:.2f})")
            tx = ty = None
        x = y = gx = None

    # 3. per-call host overhead ----------------------------------------------------------------
    print("\n[3] per-call host overhead, mse on 1024 float32 (median of 20 batches of 200 calls)")
    fams = [("numba", lambda a: cuda.to_device(a))]
    if cupy is not None:
        fams.append(("cupy", lambda a: cupy.asarray(a)))
    if has_torch:
        fams.append(("torch", lambda a: torch.from_numpy(a).cuda()))
    a = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(1024).astype(np.float32)
    for fname, make in fams:
        dp, dt = make(a), make(b)
        for label, call in (("mse(p, t)", lambda: fl.mse(dp, dt)),
                            ("mse.value_and_grad", lambda: fl.mse.value_and_grad(dp, dt))):
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
            print(f"    {fname:6s} {label:20s} {statistics.median(per):6.1f} us/call")


if __name__ == "__main__":
    main()
