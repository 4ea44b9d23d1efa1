"""The emulator's speed: fiber switches per second, and one 256-thread block of a tiled GEMM.

    PYTHONPATH=. pytest bench/bench_emulator.py --benchmark-only -s

Target: at least 20 M switches per second in plain mode (EMULATION.md measured 23-25 ns a switch for
a 256-fiber round-robin barrier with a hand-written x86-64 switch).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gpuconv.emulate import Module

KERNELS = Path(__file__).resolve().parents[1] / "tests" / "emu_kernels"
THREADS = 256
ROUNDS = 2000


@pytest.fixture(scope="module")
def kernels():
    return Module(path=KERNELS / "correct.cu", name_expressions=["barriers", "gemm64"])


def test_fiber_switch_rate(benchmark, kernels):
    barriers = kernels.get_function("barriers")
    barriers(1, THREADS, (np.int32(ROUNDS),))  # warm up: stacks mapped once
    before, start = kernels.switch_count(), time.perf_counter()
    barriers(1, THREADS, (np.int32(ROUNDS),))
    elapsed, switches = time.perf_counter() - start, kernels.switch_count() - before
    rate = switches / elapsed
    benchmark.extra_info.update(switches=switches, switches_per_second=rate)
    print(f"\nfiber switches: {switches} in {elapsed * 1e3:.1f} ms = {rate / 1e6:.1f} M/s "
          f"({elapsed / switches * 1e9:.1f} ns a switch, {THREADS} threads x {ROUNDS} barriers)")
    benchmark(barriers, 1, THREADS, (np.int32(ROUNDS),))
    best = switches / benchmark.stats["min"]
    benchmark.extra_info["best_switches_per_second"] = best
    print(f"best of {benchmark.stats['rounds']} rounds: {best / 1e6:.1f} M switches/s")


def test_gemm_block(benchmark, kernels):
    rng = np.random.default_rng(0)
    a = rng.integers(-3, 4, (64, 64)).astype(np.float32)
    b = rng.integers(-3, 4, (64, 64)).astype(np.float32)
    c = np.zeros((64, 64), np.float32)
    gemm = kernels.get_function("gemm64")
    args = (a, b, c, np.int32(64), np.int32(64), np.int32(64))
    gemm(1, THREADS, args)
    assert np.array_equal(c, a @ b)  # correct before timed
    benchmark(gemm, 1, THREADS, args)
    print(f"\none 256-thread block of a 64x64x64 tiled GEMM: {benchmark.stats['mean'] * 1e3:.2f} ms")
