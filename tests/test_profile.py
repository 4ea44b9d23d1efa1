"""The emulator's profile mode: memory traffic per source line, against costs worked out by hand.

tests/emu_kernels/profile.cu holds one access pattern per marked line; the expected sectors and
wavefronts below follow from the rules in gpuconv.emulate's docstring (32-byte sectors; shared
phases of 128 bytes of lanes, a phase costing the most distinct words in one of 32 banks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpuconv import cli
from gpuconv import profile as gprofile
from gpuconv.backends.kernel_backend import TILES, emulate_backend
from gpuconv.emulate import EmulationError, Module, device_empty
from gpuconv.problem import conv_problem

from problems import conv_inputs, normal, run_op

SOURCE = Path(__file__).parent / "emu_kernels" / "profile.cu"

# marker: (space, bytes per lane, lanes, sectors or wavefronts, ideal) for one full warp.
FULL_WARP = {
    "shared_conflict_free": ("shared", 4, 32, 1, 1),
    "shared_2way": ("shared", 4, 32, 2, 1),
    "shared_32way": ("shared", 4, 32, 32, 1),
    "shared_broadcast": ("shared", 4, 32, 1, 1),
    "shared_8byte": ("shared", 8, 32, 2, 2),     # 16 lanes a phase, two phases
    "shared_16byte": ("shared", 16, 32, 4, 4),   # 8 lanes a phase, four phases
    "tile_column": ("shared", 4, 32, 32, 1),     # float[32][32] by columns: one bank
    "padded_column": ("shared", 4, 32, 1, 1),    # float[32][33]: the padding spreads the banks
    "global_contiguous": ("global", 4, 32, 4, 4),
    "global_strided": ("global", 4, 32, 32, 4),  # 32 floats apart: a sector per lane
    "global_same": ("global", 4, 32, 1, 1),
    "global_float4": ("global", 16, 32, 16, 16),
}
# blockDim.x = 20: a partial warp (only existing lanes count).
PARTIAL_WARP = {
    "shared_conflict_free": ("shared", 4, 20, 1, 1),
    "shared_16byte": ("shared", 16, 20, 3, 3),   # lanes 0-7, 8-15, 16-19
    "global_contiguous": ("global", 4, 20, 3, 3),
    "global_float4": ("global", 16, 20, 10, 10),
}


def marker_lines() -> dict[str, int]:
    lines = {}
    for number, text in enumerate(SOURCE.read_text().splitlines(), 1):
        if "// P:" in text:
            lines[text.split("// P:")[1].strip()] = number
    return lines


@pytest.fixture(scope="module")
def patterns():
    return Module(path=SOURCE, name_expressions=["patterns"], mode="profile")


def pattern_arrays():
    """x, x4 and out of the patterns kernel, as aligned as cudaMalloc's allocations."""
    return device_empty(1024, np.float32), device_empty((32, 4), np.float32), device_empty(32, np.float32)


def launch_patterns(module, threads):
    rng = np.random.default_rng(threads)
    x, x4, out = pattern_arrays()
    x[...] = rng.integers(-3, 4, x.shape)
    x4[...] = rng.integers(-3, 4, x4.shape)
    module.reset_counters()
    module.get_function("patterns")(1, threads, (x, x4, out))
    return module.counters()


@pytest.mark.parametrize("threads, expected", [(32, FULL_WARP), (20, PARTIAL_WARP)])
def test_planted_patterns_cost_what_a_gpu_charges(patterns, threads, expected):
    rows = launch_patterns(patterns, threads)
    assert all(Path(r["file"]).name == "profile.cu" for r in rows)
    lines = marker_lines()
    for name, (space, nbytes, lanes, cost, ideal) in expected.items():
        [row] = [r for r in rows if r["line"] == lines[name] and r["space"] == space]
        figure = "sectors" if space == "global" else "wavefronts"
        assert (row["kind"], row["bytes"], row["requests"], row["lanes"], row[figure], row["ideal"]) \
            == ("load", nbytes, 1, lanes, cost, ideal), name
        assert row["wavefronts" if space == "global" else "sectors"] == 0, name


def test_divergent_lanes_count_only_the_active_ones(patterns):
    rows = launch_patterns(patterns, 32)
    line = marker_lines()["divergent"]
    by_space = {r["space"]: r for r in rows if r["line"] == line}
    # The 16 even lanes read x[64 + lane]: 31 floats from a 256-byte boundary span 4 sectors
    # where their 64 bytes would fit in 2; and s[64 + lane]: 16 words in 16 banks, one wavefront.
    assert (by_space["global"]["lanes"], by_space["global"]["sectors"], by_space["global"]["ideal"]) \
        == (16, 4, 2)
    assert (by_space["shared"]["lanes"], by_space["shared"]["wavefronts"]) == (16, 1)
    [store] = [r for r in rows if r["line"] == marker_lines()["store"]]
    assert (store["kind"], store["space"], store["sectors"]) == ("store", "global", 4)


def test_a_lane_that_skips_an_element_pairs_as_on_a_gpu():
    """profile.cu's skipping: on a GPU each of the 4 unrolled elements of each of the 2 tiles is one
    load instruction executed once: 8 requests of x[t·128 + i·32 + lane], 4 sectors each (element 1
    of tile 0: its 16 even lanes still span the 4 sectors, whose 64 bytes would fit in 2). So 240
    lanes, 32 sectors, ideal 7·4 + 2 = 30. Grouping by the k-th execution of a rolled loop's one
    pc would pair the odd lanes' later elements with the even lanes' earlier ones: 56 sectors; with
    the loop unrolled but no barrier epoch, the odd lanes' element 1 of tile 1 with the even lanes'
    of tile 0: 36."""
    module = Module(path=SOURCE, name_expressions=["skipping"], mode="profile")
    x, out = device_empty(256, np.float32), device_empty(32, np.float32)
    x[...] = np.random.default_rng(7).integers(-3, 4, x.shape)
    module.get_function("skipping")(1, 32, (x, out))
    lane = np.arange(32)
    skipped = np.where(lane % 2 == 1, x[32 + lane], 0)
    assert np.array_equal(out, x[:256].reshape(8, 32).sum(axis=0) - skipped)
    [row] = [r for r in module.counters() if r["line"] == marker_lines()["skipping"]]
    assert (row["space"], row["kind"], row["requests"], row["lanes"], row["sectors"], row["ideal"]) \
        == ("global", "load", 8, 240, 32, 30)


def test_counters_reset_and_accumulate(patterns):
    one = {(r["line"], r["space"]): r["requests"] for r in launch_patterns(patterns, 32)}
    patterns.get_function("patterns")(1, 32, pattern_arrays())
    two = {(r["line"], r["space"]): r["requests"] for r in patterns.counters()}
    assert two == {key: 2 * n for key, n in one.items()}


def test_counters_need_profile_mode():
    plain = Module(path=SOURCE, name_expressions=["patterns"])
    with pytest.raises(EmulationError, match="profile mode only.*'plain'"):
        plain.counters()


@pytest.mark.parametrize("op, kernel", [("fprop", "direct"), ("fprop", "32x32x8_4x4"),
                                        ("dgrad", "32x32x8_4x4"), ("wgrad", "32x32x8_4x4")])
def test_profile_mode_never_changes_a_result(op, kernel):
    p = conv_problem((2, 12, 7, 6), (10, 12, 3, 3), stride=2, padding=1)
    a = conv_inputs(p, 5, normal)
    results = [run_op(emulate_backend(**{f"{op}_kernel": kernel}, mode=mode), op, p, a, "relu")
               for mode in ("plain", "profile")]
    assert results[0].tobytes() == results[1].tobytes()


def test_profile_command_marks_exactly_the_costly_lines(capsys):
    """`gpuconv profile` on the largest fprop tile: the table marks a line exactly when its
    per-request figure exceeds the ideal, and the JSON holds the main loop's shared loads."""
    tile = next(iter(TILES["fprop"]))
    assert cli.main(["profile", "fprop", "--kernel", tile, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert any(r["space"] == "shared" and r["kind"] == "load" and Path(r["file"]).name in
               ("common.cuh", "gemm.cuh", "fprop.cu") for r in rows)
    assert cli.main(["profile", "fprop", "--kernel", tile]) == 0
    text = capsys.readouterr().out
    for r in rows:
        actual, ideal = gprofile.per_request(r)
        assert actual >= ideal > 0
        [line] = [t for t in text.splitlines()
                  if t.startswith(f"| {Path(r['file']).name}:{r['line']} | {r['space']} | {r['kind']} |")]
        assert ("**conflict**" in line or "**uncoalesced**" in line) == (actual > ideal * 1.001)


def test_profile_command_rejects_bad_arguments(capsys):
    assert cli.main(["profile", "fprop", "--kernel", "huge"]) == 2
    assert "--kernel must be one of" in capsys.readouterr().err
    assert cli.main(["profile", "fprop", "--shape", "1", "3", "2", "2", "4", "3", "3",
                     "--padding", "0"]) == 2
    assert "gpuconv profile:" in capsys.readouterr().err


@pytest.mark.parametrize("values, wavefronts", [(np.arange(32), 1), (np.full(32, 5), 32)])
def test_atomics_are_counted_and_same_word_atomics_serialise(values, wavefronts):
    """correct.cu's histogram: one shared atomicAdd per lane on bin x[i], then one global atomicAdd
    per bin. Distinct bins in distinct banks take one wavefront; one bin for all 32 lanes takes 32."""
    module = Module(path=SOURCE.parent / "correct.cu", name_expressions=["histogram<32>"],
                    mode="profile")
    x, counts = device_empty(32, np.int32), device_empty(32, np.uint32)
    x[...], counts[...] = values, 0
    module.get_function("histogram<32>")(1, 32, (x, counts, np.int32(32)))
    assert np.array_equal(counts, np.bincount(values, minlength=32))
    atomics = {r["space"]: r for r in module.counters() if r["kind"] == "atomic"}
    assert (atomics["shared"]["requests"], atomics["shared"]["lanes"], atomics["shared"]["wavefronts"]) \
        == (1, 32, wavefronts)
    assert (atomics["global"]["requests"], atomics["global"]["lanes"], atomics["global"]["sectors"]) \
        == (1, 32, 4)
