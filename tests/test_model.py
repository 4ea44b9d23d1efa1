"""The performance model on cases worked out by hand, and its table's plumbing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuconv import model
from gpuconv.backends.kernel_backend import TILES, choose_fprop, kernel_name, launch_config
from gpuconv.problem import conv_problem
from gpuconv.shapes import layer_problem

# One SM at 1 GHz with 32 FP32 lanes: a cycle is a nanosecond.
TOY = model.Gpu("toy", "sm_80", sms=1, clock_ghz=1.0, fp32_lanes=32, fp64_lanes=1,
                tensor_tflops=1.0, dram_gbs=100, l2_gbs=1000)
# Two warps; per iteration 10 instructions of which 8 FFMA, and one LDS.128 (4 wavefronts).
LOOP = model.Loop(loop_instructions=10, ffma=8, dfma=0, hmma=0, lds={128: 1}, sts={}, threads=64,
                  blocks_per_sm=1)
# Three blocks of a 16×16 tile reducing over 4 steps: 1024 multiply-adds each, 512 per iteration
# of 64 threads × 8 FFMA: 2 iterations.
GEOMETRY = model.Geometry(blocks=3, BM=16, BN=16, BK=2, reduction=4)
FLOPS = 2 * 3 * 1024


def toy(**kwargs):
    return model.predict(TOY, LOOP, GEOMETRY, FLOPS, compulsory_bytes=1000, itemsize=4, **kwargs)


def test_hand_worked_terms():
    prediction = toy()
    ns = {k: v * 1e9 for k, v in prediction.terms.items()}
    # Per block: issue 2 warps × 2 iterations × 10 / 4 a clock = 10; shared 2 × 2 × 4 = 16;
    # math 2 × 2 × 8 FFMA × 32 lanes / 32 lanes = 32 cycles; the busiest SM runs all 3 blocks.
    assert ns["issue"] == pytest.approx(30)
    assert ns["shared"] == pytest.approx(48)
    assert ns["math"] == pytest.approx(96)
    # L2: 3 blocks × (16 + 16) panel rows × 4 steps × 4 bytes at 1000 GB/s; DRAM 1000 B at 100 GB/s.
    assert ns["L2"] == pytest.approx(1.536)
    assert ns["DRAM"] == pytest.approx(10)
    assert prediction.limiter == "math"
    assert prediction.seconds == pytest.approx(96e-9 / model.EFFICIENCY)
    # Math-bound at full FFMA rate but for EFFICIENCY: that fraction of the peak.
    assert prediction.fraction_of_peak == pytest.approx(model.EFFICIENCY)


def test_conflicts_and_uncoalesced_loads_move_the_limiter():
    assert toy(conflict=4).limiter == "shared"           # 192 cycles of wavefronts > 96 of math
    assert toy(conflict=4).terms["shared"] == pytest.approx(192e-9)
    assert toy(sector_efficiency=0.01).limiter == "L2"  # 153.6 ns > 96 / EFFICIENCY


def test_wave_quantization():
    # 3 blocks on 2 SMs: the busiest SM runs 2 of them, so 2 SMs are no faster than 1.5 would be.
    two = model.Gpu(**{**TOY.__dict__, "sms": 2})
    assert model.predict(two, LOOP, GEOMETRY, FLOPS, 1000, 4).terms["math"] == pytest.approx(64e-9)


def test_dgrad_phase_taps():
    # 3×3, stride 2, pad 1: phase 0 rows meet tap 1 only, phase 1 rows taps 0 and 2: 1.5 a side.
    p = conv_problem((1, 1, 9, 9), (1, 1, 3, 3), stride=2, padding=1)
    assert model.phase_taps_mean(p) == pytest.approx(2.25)
    assert model.phase_taps_mean(conv_problem((1, 1, 9, 9), (1, 1, 3, 3), padding=1)) == 9


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_geometry_is_the_backends_launch(op):
    p = layer_problem("res3_3x3_s2", "gpu")
    name, tile = next(iter(TILES[op].items()))
    g = model.geometry(op, p, tile)
    grid, _ = launch_config(1, op, tile, p)
    assert g.blocks == grid[0] * grid[1] * (grid[2] if len(grid) > 2 else 1)


def test_table_reads_the_sass_json_and_a_gpu_report(tmp_path):
    p = layer_problem("res5_3x3", "gpu")
    kernel = choose_fprop(p)
    expression = kernel_name("fprop", "float32", kernel)
    tile = TILES["fprop"][kernel]
    # One report as `python -m gpuconv.sass` writes it: only the fprop tile's.
    sass = [dict(kernel=expression, arch="sm_90", source="gpuconv", loop_instructions=100, ffma=64,
                 dfma=0, hmma=0, lds={"128": 8}, ldsm=0, ldg={"32": 2}, ldgsts={}, sts={"32": 2},
                 bar=2, calls={}, rest=26, rest_opcodes={}, registers=96, spills=0, stack_bytes=0,
                 shared_bytes=4096, threads=tile.threads, blocks_per_sm=2, warps_per_sm=16,
                 occupancy=0.25, occupancy_limiter="registers", loop=[0, 1600])]
    (tmp_path / "sass-sm_90.json").write_text(json.dumps({"arch": "sm_90", "reports": sass}))
    (tmp_path / "gpu-2027-01-01.json").write_text(json.dumps({"schema": "gpuconv-bench/1", "results": [
        {"impl": "cuda", "shape": "res5_3x3", "op": "fprop", "ms": 1.0}]}))
    text, rows = model.table("h100", ["res5_3x3"], tmp_path)
    [fprop] = [r for r in rows if r["op"] == "fprop"]
    assert fprop["kernel"] == kernel and fprop["limiter"] in ("issue", "math", "shared", "L2", "DRAM")
    assert fprop["tflops"] == pytest.approx(p.flops("fprop") / (fprop["ms"] * 1e-3) / 1e12)
    assert fprop["measured_over_modelled"] == pytest.approx(1.0 / fprop["ms"])
    assert "MODELLED" in text and "measured ÷ modelled" in text
    # Kernels the SASS file does not hold are not modelled, and say so.
    assert all("ms" not in r for r in rows if r["op"] != "fprop")


def test_calibration_holds_on_the_committed_sass_figures():
    """EFFICIENCY is fitted to CUTLASS's published SIMT fprop figure with the committed sm_80 main
    loop; a change to the model that moves the fit shows here."""
    from gpuconv import sass

    path = Path(__file__).resolve().parent.parent / "bench" / "results" / "sass-sm_80.json"
    reports = {r.kernel: r for r in sass.load_reports(path)}
    cal = model.calibration(model.cutlass_report(reports, "simt"), model.cutlass_report(reports, "tensorop"))
    assert cal["efficiency_fit"] == pytest.approx(model.EFFICIENCY, rel=0.02)
    assert cal["simt_modelled_tflops"] == pytest.approx(model.ANCHOR_TFLOPS["simt"], rel=0.02)
    assert cal["tensorop_error"] > 0  # no latency term: the tensor-op figure is an upper bound
