"""The epilogues' global stores, counted by the emulator's profile mode (gpuconv.profile).

Each op stores its output tile either straight from the accumulators (when that covers whole
32-byte sectors) or through shared memory (kernels/gemm.cuh: store_through_shared), a warp storing
along the output's contiguous dimension from each run's sector. Either way every warp store touches
exactly the sectors its bytes need (the ideal), for any P·Q and alignment; the staging itself is
free of bank conflicts. dgrad with stride_w > 1 stores one stride phase: a warp's values lie
stride_w apart, so it is held to stride_w times the ideal. Counted on the CPU, not measured.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuconv import profile as gprofile
from gpuconv.backends.kernel_backend import TILES
from gpuconv.problem import conv_problem

# (x, w, keywords, the path each op's epilogue takes: direct, vector (staged, 128-bit), scalar)
PROBLEMS = {
    # P·Q = 64, W = 8 and C·R·S = 72: whole sectors straight from the accumulators
    "aligned": ((2, 8, 8, 8), (20, 8, 3, 3), dict(padding=1)),
    # P·Q = 81 (odd), W = 9, C·R·S = 45: staged, a value a lane
    "odd": ((2, 5, 9, 9), (20, 5, 3, 3), dict(padding=1)),
    # P·Q = 36, C·R·S = 36: staged, 128-bit
    "vector": ((2, 4, 6, 6), (20, 4, 3, 3), dict(padding=1)),
    # stride 2: fprop P·Q = 25; dgrad's phases store every other pixel of a row
    "strided": ((2, 5, 9, 9), (20, 5, 3, 3), dict(padding=1, stride=2)),
}
# The way each (problem, op) stores: "direct" (128-bit, from the accumulators), "vector" (through
# shared memory, 128-bit) or "scalar" (through shared memory, a value a lane).
PATH = {
    "aligned": dict(fprop="direct", dgrad="direct", wgrad="direct"),
    "odd": dict(fprop="scalar", dgrad="scalar", wgrad="scalar"),
    "vector": dict(fprop="vector", dgrad="scalar", wgrad="vector"),
    "strided": dict(fprop="scalar", dgrad="scalar", wgrad="scalar"),
}


def source_line(row) -> str:
    return Path(row["file"]).read_text().splitlines()[row["line"] - 1]


def profile(op, name, tile, dtype="float32"):
    x, w, keywords = PROBLEMS[name]
    return gprofile.run(op, conv_problem(x, w, dtype=dtype, **keywords), tile)


def path(profile) -> str:
    """The way the profiled epilogue stored: staging shows as 16-byte shared stores (the main
    loop's are 4-byte), the store width as the global stores' bytes per lane."""
    staged = any(r["space"] == "shared" and r["kind"] == "store" and r["bytes"] == 16
                 for r in profile.rows)
    widths = {r["bytes"] for r in profile.rows if r["space"] == "global" and r["kind"] == "store"
              and "dw[i] = acc" not in source_line(r)}  # (wgrad_reduce_splits: not an epilogue)
    [width] = widths
    return "scalar" if width < 16 else "vector" if staged else "direct"


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_epilogue_stores_cover_whole_sectors(name, op):
    """Every global store and bias load of the epilogue at the ideal sectors per request (dgrad
    with stride 2: at most twice), and no bank conflict anywhere (the staging included)."""
    result = profile(op, name, "128x128x8_8x8")
    assert path(result) == PATH[name][op]
    epilogue = [r for r in result.rows if r["space"] == "global" and (
        r["kind"] == "store" or "bias" in source_line(r) or Path(r["file"]).name == "common.cuh")]
    assert epilogue
    slack = 2 if (name, op) == ("strided", "dgrad") else 1  # a phase's pixels, 2 apart
    for r in epilogue:
        assert r["sectors"] <= slack * r["ideal"], (source_line(r), r)
        assert slack > 1 or r["sectors"] == r["ideal"], (source_line(r), r)
    for r in result.rows:
        if r["space"] == "shared":
            assert r["wavefronts"] == r["ideal"], (source_line(r), r)


@pytest.mark.parametrize("op", ["fprop", "wgrad"])  # lines along the tile's M and along its N
@pytest.mark.parametrize("tile, dtype", [(t, d) for t in TILES["fprop"] for d in TILES["fprop"][t].dtypes
                                         if t != "128x128x8_8x8"])
def test_every_tile_stages_without_bank_conflicts(tile, dtype, op):
    """The staging's pad depends on the tile's lane grid (StagedTile::PHASE_LINES): every tile and
    dtype, both orientations, conflict-free. The stores: at most one sector above the ideal a
    request, taken only where one warp store holds both ends of a run that starts mid-sector (a
    run shorter than a store: 32-wide tiles cut P·Q = 81 into such runs)."""
    result = profile(op, "odd", tile, dtype)
    assert path(result) == "scalar"
    for r in result.rows:
        if r["space"] == "shared":
            assert r["wavefronts"] == r["ideal"], (tile, dtype, source_line(r), r)
        elif r["kind"] == "store" and "dw[i] = acc" not in source_line(r):
            assert r["ideal"] <= r["sectors"] <= r["ideal"] + r["requests"], (source_line(r), r)
            assert r["sectors"] == r["ideal"] or tile.startswith("32x32"), (tile, source_line(r), r)
