"""cp.async under the emulator (kernels/common.cuh's helpers, tests/emu_kernels/cp_async.cu): a copy
lands at the wait that covers its group and not before (NaN bytes until then), zero-fill, the groups
of wait_group N, and what the race detector, asan and the profile see."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpuconv import _paths
from gpuconv.emulate import AddressError, Module, RaceError, SanitizerError, device_empty

SOURCE = Path(__file__).parent / "emu_kernels" / "cp_async.cu"
NAMES = ["copy_in_groups<4>", "copy_in_groups<8>", "copy_in_groups<16>",
         "rotate_through_shared<true>", "rotate_through_shared<false>", "misaddressed_copy"]
_modules: dict = {}


def module(mode="plain", schedule="random"):
    if (mode, schedule) not in _modules:
        _modules[mode, schedule] = Module(path=SOURCE, options=(f"-I{_paths.kernels_dir()}",),
                                          name_expressions=NAMES, mode=mode, schedule=schedule, seed=5)
    return _modules[mode, schedule]


@pytest.mark.parametrize("size", [4, 8, 16])
def test_copies_land_at_the_wait_of_their_group(size):
    rng = np.random.default_rng(size)
    threads = 32
    n = threads * size
    src = rng.integers(0, 256, 3 * n).astype(np.uint8)
    valid = (rng.random((3, threads)) < 0.7).astype(np.int32)
    seen = np.zeros((4, 3, n), np.uint8)
    module().get_function(f"copy_in_groups<{size}>")(1, threads, (src, valid, seen))
    copied = np.where(np.repeat(valid, size, axis=1) != 0, src.reshape(3, n), 0)  # zero if invalid
    in_flight = np.full(n, 0xFF, np.uint8)  # NaN in every float type
    expected = {0: (in_flight, in_flight, in_flight),   # after commit, commit, __syncthreads
                1: (copied[0], in_flight, in_flight),   # wait_group 1: all but the newest group
                2: (copied[0], copied[1], in_flight),   # wait_group 0: region 2 is uncommitted
                3: (copied[0], copied[1], copied[2])}   # commit, wait_group 0
    for step, regions in expected.items():
        for r, want in enumerate(regions):
            assert np.array_equal(seen[step, r], want), (step, r)


@pytest.mark.parametrize("mode", ["plain", "race", "asan"])
def test_rotation_with_zero_fill(mode):
    x = np.arange(1, 65, dtype=np.float32)
    out = np.full(64, np.nan, np.float32)
    module(mode).get_function("rotate_through_shared<true>")(1, 64, (x, out, np.int32(40)))
    assert np.array_equal(out, np.roll(np.where(np.arange(64) < 40, x, 0), -1))


def test_reading_another_threads_copy_without_a_barrier_is_a_race():
    x = np.ones(64, np.float32)
    hazard = r"(read-after-write|write-after-read) hazard.*rotate_through_shared<false>.*::row"
    with pytest.raises(RaceError, match=hazard):
        module("race").get_function("rotate_through_shared<false>")(
            1, 64, (x, np.zeros(64, np.float32), np.int32(64)))


def test_asan_sees_the_global_read_when_the_copy_lands():
    x = np.ones(63, np.float32)  # thread 63 copies x[63], one past the end
    with pytest.raises(SanitizerError, match=r"heap-buffer-overflow"):
        module("asan").get_function("rotate_through_shared<true>")(
            1, 64, (x, np.zeros(64, np.float32), np.int32(64)))


@pytest.mark.parametrize("misuse, message", [
    (0, r"cp\.async at .*common\.cuh:\d+ writes 4 bytes at 0x[0-9a-f]+, which are not all in shared memory"),
    (1, r"cp\.async at .*copies 4 bytes from .* to .*; both addresses must be 4-byte aligned"),
])
def test_misaddressed_copies_fault(misuse, message):
    with pytest.raises(AddressError, match=message):
        module().get_function("misaddressed_copy")(
            1, 32, (np.ones(32, np.float32), np.zeros(32, np.float32), np.int32(misuse)))


def cp_async_rows(mod):
    return {r["space"]: r for r in mod.counters() if r["kind"] == "cp.async"}


def test_profile_counts_cp_async_requests():
    mod = module("profile", "forward")
    mod.reset_counters()
    x = device_empty(64, np.float32)  # 256-byte aligned, as cudaMalloc's: sectors depend on it
    x[:] = np.arange(64)
    # 64 threads, 4 bytes each, threads >= 48 zero-fill (no global read): warp 0 reads 4 sectors,
    # warp 1 16 lanes' 2 sectors; each warp's shared write is one conflict-free wavefront.
    mod.get_function("rotate_through_shared<true>")(1, 64, (x, np.zeros(64, np.float32), np.int32(48)))
    rows = cp_async_rows(mod)
    assert {k: rows["global"][k] for k in ("requests", "lanes", "sectors", "ideal", "bytes")} == dict(
        requests=2, lanes=48, sectors=6, ideal=6, bytes=4)
    assert {k: rows["shared"][k] for k in ("requests", "lanes", "wavefronts", "ideal")} == dict(
        requests=2, lanes=64, wavefronts=2, ideal=2)
    # 16 bytes a lane, three copies of 32 lanes, the odd lanes zero-filling the first: its request
    # holds the 16 even lanes, a half of each of 16 sectors (ideal 8); the other two 16 sectors
    # each. The shared side: 4 wavefronts (8 lanes a phase) each, zero-fills included.
    mod.reset_counters()
    src = device_empty(3 * 32 * 16, np.uint8)
    src[:] = 0
    valid = np.ones((3, 32), np.int32)
    valid[0, 1::2] = 0
    mod.get_function("copy_in_groups<16>")(1, 32, (src, valid, np.zeros(4 * 3 * 512, np.uint8)))
    rows = cp_async_rows(mod)
    assert {k: rows["global"][k] for k in ("requests", "lanes", "sectors", "ideal", "bytes")} == dict(
        requests=3, lanes=80, sectors=48, ideal=40, bytes=16)
    assert (rows["shared"]["requests"], rows["shared"]["lanes"], rows["shared"]["wavefronts"]) == (3, 96, 12)
