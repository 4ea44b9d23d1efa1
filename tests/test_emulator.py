"""The emulate runtime: right answers under every schedule and mode, and every planted bug caught.

Test kernels live in tests/emu_kernels: correct.cu (must match NumPy) and bugs.cu (one bug each).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpuconv import _paths
from gpuconv.emulate import (
    DeadlockError,
    DivergenceError,
    EmulationError,
    LaunchError,
    Module,
    RaceError,
    SanitizerError,
    WarpError,
    _build,
    coverage_report,
)

KERNELS = Path(__file__).parent / "emu_kernels"
CORRECT = ["transpose<16>", "block_sum<float, 256>", "block_sum<double, 64>", "warp_sum",
           "histogram<32>", "gemm64", "barriers"]
BUGS = ["sum_missing_barrier", "read_past_end", "tile_off_by_one", "divergent_barrier",
        "read_uninitialised", "shuffle_wrong_mask", "spin_on_other_block", "barrier_versus_shuffle",
        "sum_missing_barrier_in_template<64>", "read_uninitialised_in_template<float>",
        "stage_without_cp_async_wait<false>", "stage_without_cp_async_wait<true>"]
MODES = ["plain", "race", "coverage", "asan"]
SCHEDULES = ["forward", "reverse", "random"]

_modules: dict = {}


def module(file: str, mode: str = "plain", schedule: str = "forward", **settings) -> Module:
    """One compiled module per (file, mode, settings): compiling dominates the test time."""
    key = (file, mode, schedule, tuple(sorted(settings.items())))
    if key not in _modules:
        names = CORRECT if file == "correct.cu" else BUGS
        _modules[key] = Module(path=KERNELS / file, name_expressions=names, mode=mode,
                               schedule=schedule, seed=7, options=(f"-I{_paths.kernels_dir()}",),
                               **settings)
    return _modules[key]


def run_correct_kernels(mod: Module, rng) -> None:
    # Tiled transpose, dynamic shared memory, partial tiles on both edges.
    a = rng.standard_normal((37, 50)).astype(np.float32)
    at = np.zeros((50, 37), np.float32)
    mod.get_function("transpose<16>")((4, 3), (16, 16), (a, at, np.int32(37), np.int32(50)),
                                      shared_mem=16 * 17 * 4)
    assert np.array_equal(at, a.T)
    # Block reduction: small integers, so the float sum is exact in any order.
    x = rng.integers(-3, 4, 3000).astype(np.float32)
    sums = np.zeros(5, np.float32)
    mod.get_function("block_sum<float, 256>")(5, 256, (x, sums, np.int32(x.size)))
    assert sums.sum() == x.sum()
    xd = rng.standard_normal(500)
    sums_d = np.zeros(3)
    mod.get_function("block_sum<double, 64>")(3, 64, (xd, sums_d, np.int32(xd.size)))
    np.testing.assert_allclose(sums_d.sum(), xd.sum(), rtol=1e-12)  # order differs from NumPy's
    # Warp shuffles and ballot.
    w = rng.integers(-3, 4, 128).astype(np.float32)
    warp_sums, ballots = np.zeros(4, np.float32), np.zeros(4, np.uint32)
    mod.get_function("warp_sum")(2, 64, (w, warp_sums, ballots))
    assert np.array_equal(warp_sums, w.reshape(4, 32).sum(axis=1))
    bits = (w.reshape(4, 32) > 0) * (1 << np.arange(32, dtype=np.uint64))
    assert np.array_equal(ballots, bits.sum(axis=1).astype(np.uint32))
    # Histogram with shared and global atomics.
    values = rng.integers(0, 32, 2000).astype(np.int32)
    counts = np.zeros(32, np.uint32)
    mod.get_function("histogram<32>")(3, 128, (values, counts, np.int32(values.size)))
    assert np.array_equal(counts, np.bincount(values, minlength=32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_correct_kernels_under_every_schedule_and_mode(mode, schedule):
    run_correct_kernels(module("correct.cu", mode, schedule), np.random.default_rng(1))


def test_other_fill_pattern():
    run_correct_kernels(module("correct.cu", fill="huge"), np.random.default_rng(2))


def test_gemm_tile():
    rng = np.random.default_rng(3)
    a = rng.integers(-3, 4, (128, 64)).astype(np.float32)
    b = rng.integers(-3, 4, (64, 128)).astype(np.float32)
    c = np.zeros((128, 128), np.float32)
    module("correct.cu", schedule="random").get_function("gemm64")(
        (2, 2), 256, (a, b, c, np.int32(128), np.int32(128), np.int32(64)))
    assert np.array_equal(c, a @ b)


# ---- planted bugs ----------------------------------------------------------------------------

def bug(name: str, mode: str = "plain", **settings):
    return module("bugs.cu", mode, "random", **settings).get_function(name)


@pytest.mark.parametrize("kernel", ["sum_missing_barrier", "sum_missing_barrier_in_template<64>"])
def test_missing_barrier_is_a_race(kernel):
    x = np.ones(64, np.float32)
    with pytest.raises(RaceError,
                       match=r"race \(.*hazard\).*thread \(\d+,0,0\).*::partial.*thread \(\d+,0,0\)"):
        bug(kernel, "race")(1, 64, (x, np.zeros(1, np.float32)))


def test_out_of_bounds_global_read_under_asan():
    x = np.ones(64, np.float32)
    with pytest.raises(SanitizerError, match=r"heap-buffer-overflow(.|\n)*read_past_end"):
        bug("read_past_end", "asan")(1, 64, (x, np.zeros(64, np.float32), np.int32(64)))


def test_off_by_one_inside_2d_shared_array_under_bounds_check():
    with pytest.raises(SanitizerError, match=r"index 8 out of bounds for type 'float \[8\]'"):
        bug("tile_off_by_one", "asan")(1, (8, 8), (np.ones(64, np.float32), np.zeros(64, np.float32)))


def test_divergent_barrier():
    with pytest.raises(DivergenceError, match=r"divergent __syncthreads.*bugs.cu:\d+.*bugs.cu:\d+"):
        bug("divergent_barrier")(1, 32, (np.zeros(32, np.float32),))


@pytest.mark.parametrize("mode", ["plain", "race"])
def test_missing_cp_async_wait_reads_nan(mode):
    """The copy never lands without its wait (a barrier is not one): every neighbour read is NaN,
    while the twin that waits gives the exact rotation."""
    x = np.arange(1, 65, dtype=np.float32)
    out = np.zeros(64, np.float32)
    bug("stage_without_cp_async_wait<false>", mode)(1, 64, (x, out))
    assert np.isnan(out).all()
    bug("stage_without_cp_async_wait<true>", mode)(1, 64, (x, out))
    assert np.array_equal(out, np.roll(x, -1))


@pytest.mark.parametrize("kernel", ["read_uninitialised", "read_uninitialised_in_template<float>"])
def test_uninitialised_shared_memory_reaches_the_result(kernel):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    bug(kernel)(1, 64, (x, out))
    assert np.array_equal(out[:32], x[:32])
    assert np.isnan(out[32:]).all()
    huge = np.zeros(64, np.float32)
    bug(kernel, fill="huge")(1, 64, (x, huge))
    assert (huge[32:] > 1e38).all()


def test_wrong_shuffle_mask():
    with pytest.raises(WarpError, match=r"mask 0x0000ffff, which does not name its own lane"):
        bug("shuffle_wrong_mask")(1, 32, (np.ones(32, np.float32), np.zeros(32, np.float32)))


def test_spin_on_another_block_is_stopped_by_the_watchdog():
    flag, out = np.zeros(1, np.int32), np.zeros(2, np.int32)
    with pytest.raises(DeadlockError, match=r"watchdog: kernel 'spin_on_other_block' block \(0,0,0\)"):
        bug("spin_on_other_block", watchdog=0.5)(2, 1, (flag, out))


def test_barrier_against_shuffle_deadlock():
    with pytest.raises(DeadlockError, match=r"deadlock in kernel 'barrier_versus_shuffle'.*"
                                            r"Threads 0 wait at __syncthreads.*1-31 wait in __shfl_sync"):
        bug("barrier_versus_shuffle")(1, 32, (np.zeros(32, np.float32),))


# ---- the CuPy-style interface ----------------------------------------------------------------

def test_arguments_are_checked_against_the_kernel_signature():
    kernel = module("correct.cu").get_function("block_sum<float, 256>")
    x, out = np.ones(256, np.float32), np.zeros(1, np.float32)
    with pytest.raises(TypeError, match=r"'block_sum<float, 256>' takes 3 arguments"):
        kernel(1, 256, (x, out))
    with pytest.raises(TypeError, match=r"argument 2: got int64 \(8 bytes\).*np.int32"):
        kernel(1, 256, (x, out, np.int64(256)))
    with pytest.raises(TypeError, match=r"argument 2: got int64"):
        kernel(1, 256, (x, out, 256))  # CuPy passes a Python int as int64
    with pytest.raises(TypeError, match=r"argument 2: got float32"):
        kernel(1, 256, (x, out, np.float32(256)))
    with pytest.raises(TypeError, match=r"argument 0: got an array but the parameter is a signed"):
        module("correct.cu").get_function("barriers")(1, 32, (out,))
    # Null pointers: CuPy passes None as the address 0xffffffff, so only an 8-byte 0 is null.
    with pytest.raises(TypeError, match=r"argument 1: None is not a null pointer.*np.uint64\(0\)"):
        kernel(1, 256, (x, None, np.int32(256)))
    with pytest.raises(TypeError, match=r"argument 1: the parameter is a pointer.*not uint64 8"):
        kernel(1, 256, (x, np.uint64(8), np.int32(256)))
    with pytest.raises(TypeError, match=r"argument 1: the parameter is a pointer.*not int32 0"):
        kernel(1, 256, (x, np.int32(0), np.int32(256)))


def test_null_pointer_reaches_the_kernel_as_nullptr():
    """gpuconv's bias-less fprop passes NULL for the bias: the kernel must see nullptr (and skip it)."""
    import gpuconv.problem as problem
    from gpuconv.backends.kernel_backend import NULL, emulate_backend

    p = problem.conv_problem((1, 1, 3, 3), (1, 1, 1, 1))
    x, w = np.full((1, 1, 3, 3), 2.0, np.float32), np.full((1, 1, 1, 1), 3.0, np.float32)
    assert NULL == 0 and NULL.dtype.itemsize == 8
    assert emulate_backend().fprop(p, x, w, None, None).tolist() == [[[[6.0] * 3] * 3]]


def test_launch_limits():
    kernel = module("correct.cu").get_function("barriers")
    with pytest.raises(LaunchError, match="1024 threads"):
        kernel(1, (64, 32), (np.int32(1),))
    transpose = module("correct.cu").get_function("transpose<16>")
    with pytest.raises(LaunchError, match="max_dynamic_shared_size_bytes"):
        transpose(1, (16, 16), (np.zeros(1, np.float32),) * 2 + (np.int32(1),) * 2,
                  shared_mem=64 * 1024)


def test_options(tmp_path):
    code = ('extern "C" __global__ void k(int* out) { out[0] = VALUE + __CUDA_ARCH__; }')
    mod = Module(code=code, options=("-DVALUE=5", "-arch=sm_90", "--std=c++17", "-lineinfo"))
    out = np.zeros(1, np.int32)
    mod.get_function("k")(1, 1, (out,))
    assert out[0] == 5 + 900
    with pytest.raises(ValueError, match="does not support the option '--bogus'"):
        Module(code=code, options=("--bogus",))


def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATE_CACHE", str(tmp_path))
    code = 'extern "C" __global__ void k(int* out) { out[threadIdx.x] = threadIdx.x; }'
    # Built but not loaded (a loaded library would be reused by name, and must not be overwritten).
    built = _build.build(code, _build.translate_options(()), ["k"], "plain", None)
    built.library.write_bytes(b"not an ELF file")
    out = np.zeros(4, np.int32)
    Module(code=code).get_function("k")(1, 4, (out,))
    assert out.tolist() == [0, 1, 2, 3]


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    _build.compiler.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"apt-get install g\+\+.*CXX"):
            Module(code='extern "C" __global__ void k() {}').compile()
    finally:
        _build.compiler.cache_clear()


def test_compile_error_carries_the_diagnostics():
    with pytest.raises(EmulationError, match="undeclared|was not declared"):
        Module(code='extern "C" __global__ void k(int* o) { o[0] = missing; }').compile()


def test_coverage_names_the_kernel_file_lines():
    mod = module("correct.cu", "coverage")
    run_correct_kernels(mod, np.random.default_rng(4))
    source = KERNELS / "correct.cu"
    report = coverage_report([source])[str(source.resolve())]
    assert report.executable > 30 and report.covered > 25
    lines = source.read_text().splitlines()
    barriers_line = next(i + 1 for i, line in enumerate(lines) if "__syncthreads(); }" in line
                         or ("rounds" in line and "for" in line))
    assert barriers_line in report.uncovered  # the barriers kernel never ran here
