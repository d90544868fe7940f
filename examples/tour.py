"""Evaluate every built-in loss once (value and gradient) and print the results.

Run: python examples/tour.py
"""
import time

import numpy as np

import fastloss as fl


def inputs(name, rng, n=1000, c=10):
    x = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    probs = 1 / (1 + np.exp(-x))
    binary = (y > 0).astype(np.float32)
    if name in ("cross_entropy", "multi_margin"):
        return x, labels
    if name == "kl_div":
        logq = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        p = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)
        return logq, p
    if name == "bce":
        return probs, binary
    if name in ("bce_with_logits", "hinge", "squared_hinge", "sigmoid_focal"):
        return x, binary
    if name == "poisson_nll":
        return x, np.abs(y).round()
    return x, y


def main():
    rng = np.random.default_rng(0)
    print(f"fastloss {fl.__version__}: every loss on a (1000, 10) float32 batch")
    print(f"{'loss':16s} {'value':>12s} {'|grad|':>12s} {'first call':>11s} {'next call':>10s}")
    for name, loss in fl.LOSSES.items():
        pred, target = inputs(name, rng)
        t0 = time.perf_counter()
        value, grad = loss.value_and_grad(pred, target)
        t1 = time.perf_counter()
        loss.value_and_grad(pred, target)
        t2 = time.perf_counter()
        print(f"{name:16s} {float(value):12.6f} {float(np.linalg.norm(grad)):12.6f} "
              f"{(t1 - t0) * 1e3:9.1f}ms {(t2 - t1) * 1e6:8.1f}µs")


if __name__ == "__main__":
    main()
