"""Concurrent callers: threads get bitwise the results of the same calls made one after another; a
module's first compile under concurrent threads, or processes sharing one cache, happens once; an
entry corrupted while processes use the cache is rebuilt, and every process gets right answers."""
from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import gpuconv as gc
from gpuconv.backends import kernel_backend
from gpuconv.emulate import Module, _build

from problems import EDGE, conv_kwargs, normal, problem

THREADS = 8
# Tiny problems: the emulator runs each CUDA thread as a fiber.
CASES = ["1x1_kernel", "asym_pad", "stride_hw", "groups", "depthwise", "same_even"]


def calls(backend: str) -> list:
    """(name, function) pairs: every op, several shapes, fresh unit-normal inputs (any change in the
    order of a sum shows in the last bits)."""
    result = []
    for i, name in enumerate(CASES):
        p, kw = problem(EDGE[name]), conv_kwargs(EDGE[name])
        rng = np.random.default_rng(i)
        x, w, dy = (normal(rng, s, np.float64 if i % 2 else np.float32)
                    for s in (p.x_shape, p.w_shape, p.y_shape))
        bias = normal(rng, (p.K,), x.dtype)
        result += [
            (f"{backend} conv2d {name}", lambda x=x, w=w, b=bias, kw=kw: gc.conv2d(
                x, w, b, activation="sigmoid", backend=backend, **kw)),
            (f"{backend} conv2d_input {name}", lambda x=x, w=w, dy=dy, kw=kw: gc.conv2d_input(
                x.shape, w, dy, backend=backend, **kw)),
            (f"{backend} conv2d_weight {name}", lambda x=x, w=w, dy=dy, kw=kw: gc.conv2d_weight(
                x, w.shape, dy, backend=backend, **kw)),
            (f"{backend} conv2d_bias {name}", lambda dy=dy: gc.conv2d_bias(dy, backend=backend)),
            (f"{backend} relu_backward {name}", lambda x=x: gc.relu_backward(x, -x, backend=backend)),
        ]
    return result


@pytest.mark.parametrize("backends", [["numpy"], ["emulate"], ["numpy", "emulate"]])
def test_threads_get_bitwise_the_sequential_results(backends):
    work = [call for backend in backends for call in calls(backend)]
    expected = {name: call() for name, call in work}
    # Every call three times, shuffled, on more threads than cores.
    schedule = work * 3
    random.Random(0).shuffle(schedule)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda item: (item[0], item[1]()), schedule))
    for name, got in results:
        want = expected[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got, want), f"{name}: max |diff| {np.abs(got - want).max()}"


@pytest.fixture
def compiles(tmp_path, monkeypatch):
    """A fresh cache, no memoised emulate kernels, and a count of compiler runs by what they made."""
    monkeypatch.setenv("GPUCONV_EMULATE_CACHE", str(tmp_path / "cache"))
    counts = collections.Counter()
    lock = threading.Lock()
    run = _build._run

    def counted(command, what):
        with lock:
            counts[what] += 1
        return run(command, what)

    monkeypatch.setattr(_build, "_run", counted)
    memoised = (kernel_backend._emulate_function, kernel_backend._emulate_module)
    for cache in memoised:
        cache.cache_clear()
    yield counts
    for cache in memoised:  # later tests load from their own cache
        cache.cache_clear()


def test_the_first_compile_under_concurrent_threads_happens_once(compiles):
    """Eight threads hit the emulate backend's elementwise module, never compiled, at once: one
    compile of the kernels, one of the runtime, one link; every result right."""
    x = np.random.default_rng(0).standard_normal((3, 5, 7))
    start = threading.Barrier(THREADS)

    def call(i):
        start.wait()
        op = (gc.relu, gc.sigmoid)[i % 2]
        return op(x.astype((np.float32, np.float64)[i // 2 % 2]), backend="emulate")

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(call, range(THREADS)))
    assert compiles == {"compiling the kernels": 1, "compiling the emulation runtime": 1,
                        "linking the kernels": 1}
    for i, got in enumerate(results):
        if i % 2 == 0:
            assert np.array_equal(got, np.maximum(x.astype(got.dtype), 0)), i
        else:  # the kernel's exp and NumPy's may differ in the last bit
            np.testing.assert_allclose(got, 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_modules_built_by_concurrent_threads_compile_once_each(compiles):
    """Two texts, four threads each: two kernel compiles and one runtime compile (which both links
    need at the same moment)."""
    code = 'extern "C" __global__ void k(int* o) {{ o[threadIdx.x] = {} * threadIdx.x; }}'
    start = threading.Barrier(THREADS)

    def call(i):
        start.wait()
        out = np.zeros(32, np.int32)
        Module(code=code.format(2 + i % 2)).get_function("k")(1, 32, (out,))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        for i, out in enumerate(pool.map(call, range(THREADS))):
            assert out.tolist() == [(2 + i % 2) * t for t in range(32)]
    assert compiles == {"compiling the kernels": 2, "compiling the emulation runtime": 1,
                        "linking the kernels": 2}


# Each process builds and runs two kernels several times, with fresh Module objects, and prints how
# many times it ran the compiler on each.
PROCESS = """
import collections, sys
import numpy as np
from gpuconv.emulate import Module, _build
compiled = collections.Counter()
run = _build._run
def counted(command, what):
    if what == "compiling the kernels":
        compiled[command[-3]] += 1  # the kernel.cpp of the entry
    return run(command, what)
_build._run = counted
for _ in range(20):
    for value in (7, 8):
        code = 'extern "C" __global__ void k(int* o) { o[threadIdx.x] = %d; }' % value
        out = np.zeros(4, np.int32)
        Module(code=code).get_function("k")(1, 4, (out,))
        assert out.tolist() == [value] * 4, out
print(dict(compiled))
"""


def test_processes_share_a_cache_with_an_entry_corrupted_while_they_run(tmp_path):
    """Six processes start on an empty cache; as soon as one kernel's library appears it is replaced
    by garbage; two more processes start when the six are done (a process that loaded the library
    before keeps it, so these surely meet the garbage). Every process finishes with right answers:
    an entry that does not load is rebuilt, under the entry's lock. The kernel left alone is
    compiled once in all."""
    cache = tmp_path / "cache"
    env = {"GPUCONV_EMULATE_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parents[1]),
           "PATH": "/usr/bin:/bin"}

    def start(count):
        return [subprocess.Popen([sys.executable, "-c", PROCESS], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(count)]

    def finish(processes):
        outputs = [p.communicate(timeout=300) for p in processes]
        assert [p.returncode for p in processes] == [0] * len(processes), [e for _, e in outputs]
        return [eval(out) for out, _ in outputs]  # {kernel.cpp path: compiles}

    first = start(6)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/module.so")) and time.monotonic() < deadline:
        time.sleep(0.01)
    corrupted = next(cache.glob("*/module.so"))
    garbage = corrupted.with_name("garbage")
    garbage.write_bytes(b"not an ELF file")
    garbage.replace(corrupted)  # a new inode: processes that mapped the old one keep it
    compiled = collections.Counter()
    for counts in finish(first) + finish(start(2)):
        compiled.update(counts)
    corrupted_unit = str(corrupted.parent / "kernel.cpp")
    assert 2 <= compiled[corrupted_unit] <= 9, compiled  # the first build, then at most one each
    assert [n for unit, n in compiled.items() if unit != corrupted_unit] == [1], compiled
    assert corrupted.read_bytes().startswith(b"\x7fELF")  # repaired in the cache itself
