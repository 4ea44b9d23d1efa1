"""pytest-benchmark suite: op × implementation × layer on the CPU (``pytest bench/``).

Each case checks its result once against the float64 reference (the same layer at batch 1) before
timing. ``extra_info`` holds GFLOP/s, the compulsory bytes moved and the ratio to the numpy
backend's time for the same case (> 1: faster than gpuconv numpy). Unlike ``gpuconv bench``, the
implementations share this process, so PyTorch's and NumPy's thread pools can disturb each other:
use ``gpuconv bench`` for the comparison we report.

``test_peak_memory`` measures the numpy backend's peak extra memory with tracemalloc (which sees
NumPy's allocations, the result included) for stride-1 layers and prints it as a multiple of
input + 2 × output. It asserts the budget that the chunked im2col's design gives: input + 2 × output,
both counted on the padded grid ((P+R-1)(Q+S-1) / (P·Q): 1.07 at 56², 1.65 at 7²), plus the
filter's size (dgrad's one rearranged copy of the filter; fprop's im2col blocks and wgrad's
accumulation may use that much, weight-dominated layers like res5 do). No buffer is R·S times
anything.
"""
from __future__ import annotations

import importlib.util
import tracemalloc

import numpy as np
import pytest

from gpuconv import reference
from gpuconv.backends.numpy_backend import BACKEND
from gpuconv.bench import MAX_REL_ERR
from gpuconv.shapes import SHAPES, layer_problem

IMPLS = ["numpy"] + (["torch-cpu"] if importlib.util.find_spec("torch") else [])
OPS = ("fprop", "dgrad", "wgrad")
NUMPY_MS: dict[tuple[str, str], float] = {}  # (op, shape) -> the numpy backend's median


def implementation(name: str):
    if name == "numpy":
        return {"fprop": lambda p, x, w, dy: BACKEND.fprop(p, x, w, None, None),
                "dgrad": lambda p, x, w, dy: BACKEND.dgrad(p, dy, w),
                "wgrad": lambda p, x, w, dy: BACKEND.wgrad(p, x, dy)}, np.asarray
    import os

    import torch
    import torch.nn.functional as F
    from torch.nn.grad import conv2d_input, conv2d_weight

    torch.set_num_threads(os.cpu_count() or 1)

    def kw(p):
        return dict(stride=p.stride, padding=(p.padding[0], p.padding[2]), groups=p.groups)

    return {"fprop": lambda p, x, w, dy: F.conv2d(x, w, **kw(p)),
            "dgrad": lambda p, x, w, dy: conv2d_input(p.x_shape, w, dy, **kw(p)),
            "wgrad": lambda p, x, w, dy: conv2d_weight(x, p.w_shape, dy, **kw(p))}, torch.from_numpy


def inputs(p, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in (p.x_shape, p.w_shape, p.y_shape)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_conv(benchmark, op, impl, shape):
    ops, to_array = implementation(impl)
    run = ops[op]
    p1 = layer_problem(shape, batch=1)
    x1, w1, dy1 = inputs(p1)
    got = np.asarray(run(p1, *map(to_array, (x1, w1, dy1))))
    want = {"fprop": lambda: reference.fprop(p1, x1, w1), "dgrad": lambda: reference.dgrad(p1, dy1, w1),
            "wgrad": lambda: reference.wgrad(p1, x1, dy1)}[op]()
    assert np.abs(got - want).max() <= MAX_REL_ERR * np.abs(want).max()

    p = layer_problem(shape, "cpu")
    args = [p, *map(to_array, inputs(p, seed=1))]
    benchmark.pedantic(run, args=args, rounds=5, warmup_rounds=1)
    ms = benchmark.stats.stats.median * 1e3
    if impl == "numpy":
        NUMPY_MS[(op, shape)] = ms
    benchmark.extra_info.update(
        gflops=p.flops(op) / ms * 1e-6, bytes=p.bytes_moved(op), problem=p.describe(),
        ratio_to_numpy=NUMPY_MS[(op, shape)] / ms if (op, shape) in NUMPY_MS else None,
    )


# Stride-1 network layers (the seeds' kilobyte-sized maps measure fixed overheads, not the budget).
STRIDE_1 = [name for name, layer in SHAPES.items() if layer.stride == 1 and layer.batch is None]


@pytest.mark.parametrize("shape", STRIDE_1)
@pytest.mark.parametrize("op", OPS)
def test_peak_memory(op, shape):
    """Peak extra memory of one call within the chunked im2col's budget (see the module doc)."""
    p = layer_problem(shape, "cpu")
    x, w, dy = inputs(p)
    run = implementation("numpy")[0][op]
    operand_in, operand_out = {"fprop": (x, dy), "dgrad": (dy, x), "wgrad": (x, w)}[op]
    tracemalloc.start()
    tracemalloc.reset_peak()
    run(p, x, w, dy)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    plain = operand_in.nbytes + 2 * max(operand_out.nbytes, dy.nbytes if op == "wgrad" else 0)
    grid = (p.P + p.R - 1) * (p.Q + p.S - 1) / (p.P * p.Q)
    budget = plain * grid + w.nbytes
    print(f"{op} {shape}: peak {peak / 2**20:.2f} MiB = {peak / plain:.2f} × (input + 2 × output); "
          f"budget {budget / 2**20:.2f} MiB")
    assert peak <= budget
