"""The performance model: a kernel's time on a GPU predicted from figures read without one.

**Every figure this module prints is modelled, not measured.** For a problem, an op and a tiled
kernel it combines

- the SASS analyzer's main loop (``gpuconv.sass``: instructions, FFMA/DFMA/HMMA, shared loads and
  stores by width per iteration; registers and shared memory → blocks per SM),
- the emulator's profile (``gpuconv.profile``: measured wavefronts ÷ the conflict-free ideal on the
  shared-memory lines, and sectors ÷ ideal on the global loads, on a scaled-down problem with the
  same tile), and
- the problem's GEMM: how many blocks, how many main-loop iterations each,

into the time each resource needs, per SM for the busiest SM (``ceil(blocks / SMs)`` blocks: the
wave quantization) and for the whole GPU:

  issue    warp instructions ÷ (4 schedulers × 1 per clock)
  math     FFMA/DFMA lanes ÷ the SM's FP32/FP64 lanes, or HMMA flops ÷ its tensor rate
  shared   wavefronts ÷ 1 per clock (128 bytes)
  L2       the blocks' A and B panels (and outputs) ÷ L2 bandwidth, divided by sector efficiency
  DRAM     the problem's compulsory bytes ÷ DRAM bandwidth

The predicted time is the largest of them, divided by ``EFFICIENCY`` for the SM terms (latency
not hidden, pipeline bubbles: one constant, calibrated on CUTLASS's published SIMT fprop figure),
and the largest names the limiter.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    """Published figures of one GPU (boost clock; dense tensor rates with float32 accumulation)."""

    name: str
    arch: str
    sms: int
    clock_ghz: float
    fp32_lanes: int       # FP32 FMA lanes per SM
    fp64_lanes: int       # FP64 FMA lanes per SM
    tensor_tflops: float  # dense FP16/BF16 with FP32 accumulation, whole GPU
    dram_gbs: float
    l2_gbs: float         # approximate: not in the datasheets (public microbenchmarks)

    def peak_tflops(self, math_kind: str = "ffma") -> float:
        if math_kind == "hmma":
            return self.tensor_tflops
        lanes = self.fp64_lanes if math_kind == "dfma" else self.fp32_lanes
        return 2 * self.sms * lanes * self.clock_ghz / 1e3


# Sources: NVIDIA's datasheets and architecture whitepapers (Turing, A100, Ada, H100, H200) for SMs,
# boost clocks, lanes, tensor rates and DRAM bandwidth; L2 bandwidth from public microbenchmarks
# (Jia et al., "Dissecting the NVIDIA Turing/Ampere GPU architecture via microbenchmarking";
# Chips and Cheese's A100/H100/Ada measurements), rounded.
GPUS = {
    "t4": Gpu("T4", "sm_75", 40, 1.59, 64, 2, 65.0, 320, 1300),
    "a100": Gpu("A100 SXM4 80GB", "sm_80", 108, 1.41, 64, 32, 312.0, 2039, 5000),
    "l4": Gpu("L4", "sm_89", 58, 2.04, 128, 2, 121.0, 300, 2500),
    "rtx4090": Gpu("RTX 4090", "sm_89", 128, 2.52, 128, 2, 165.2, 1008, 5000),
    "h100": Gpu("H100 SXM5", "sm_90", 132, 1.98, 128, 64, 989.0, 3350, 7500),
    "h200": Gpu("H200 SXM", "sm_90", 132, 1.98, 128, 64, 989.0, 4800, 7500),
}
ISSUE_PER_CLOCK = 4           # warp instructions per SM per clock: four schedulers
WAVEFRONTS_PER_CLOCK = 1      # shared memory: 128 bytes per SM per clock
HMMA_FLOPS = {16: 4096, 8: 2048}  # flops of one warp's mma.m16n8k16 / m16n8k8
# Sustained fraction of the SM terms' peak rates, calibrated so that CUTLASS's SIMT fprop main loop
# (128×128×8, as bench/results/sass-sm_80.json holds it) on N=8 224² C=K=128 3×3 models at the
# 14.57 TFLOP/s its profiler documentation reports for cutlass_simt_sfprop_optimized_128x128_8x2
# (media/docs/profiler.md; an sm_80 GPU, taken as the A100): `calibration()` recomputes the fit.
# The same documentation's tensor-op fprop (125.4 TFLOP/s) is the check: the model puts it about
# 2× higher. It has no latency term, and that kernel runs one 4-warp block per SM; treat modelled
# tensor-op figures as upper bounds until a GPU report calibrates them.
EFFICIENCY = 0.77


@dataclass(frozen=True)
class Loop:
    """What the model needs of a kernel's main loop (``gpuconv.sass.LoopReport``)."""

    loop_instructions: int
    ffma: int
    dfma: int
    hmma: int
    lds: dict    # bits per thread → instructions (LDSM counted at 32 bits per 8×8 matrix)
    sts: dict
    threads: int
    blocks_per_sm: int

    @classmethod
    def of(cls, report) -> Loop:
        """From a ``gpuconv.sass.LoopReport``."""
        r = report
        return cls(r.loop_instructions, r.ffma, r.dfma, r.hmma, r.lds, r.sts, r.threads, r.blocks_per_sm)

    def wavefronts(self) -> float:
        """Shared-memory wavefronts of one warp's iteration when conflict-free: a 32-lane request
        of b bits is b/32 wavefronts (LDS.128: 4)."""
        return sum(n * max(bits, 32) / 32 for d in (self.lds, self.sts) for bits, n in d.items())


@dataclass(frozen=True)
class Geometry:
    """The grid of one launch: ``blocks`` blocks of a BM×BN output tile, each reducing over
    ``reduction`` GEMM-K steps, BK per main-loop tile."""

    blocks: int
    BM: int
    BN: int
    BK: int
    reduction: int


@dataclass(frozen=True)
class Prediction:
    seconds: float
    limiter: str
    terms: dict        # resource → seconds (before EFFICIENCY for the SM terms: see ``seconds``)
    tflops: float
    fraction_of_peak: float


def predict(gpu: Gpu, loop: Loop, geometry: Geometry, flops: float, compulsory_bytes: float,
            itemsize: int, conflict: float = 1.0, sector_efficiency: float = 1.0,
            hmma_k: int = 16) -> Prediction:
    """The modelled time of one launch (see the module docstring). ``conflict`` multiplies the
    conflict-free wavefronts (the profile's measured ÷ ideal); ``sector_efficiency`` divides the L2
    traffic (the profile's ideal ÷ measured sectors)."""
    g = geometry
    math_kind = "hmma" if loop.hmma else "dfma" if loop.dfma else "ffma"
    # Main-loop iterations per block: the block's multiply-adds ÷ those of one iteration of all
    # its threads (an iteration may cover one BK step or several).
    macs = g.BM * g.BN * math.ceil(g.reduction / g.BK) * g.BK
    if math_kind == "hmma":
        per_iteration = loop.hmma * (loop.threads // 32) * HMMA_FLOPS[hmma_k] / 2
    else:
        per_iteration = (loop.ffma or loop.dfma) * loop.threads
    iterations = macs / per_iteration
    warps = loop.threads / 32
    busiest = math.ceil(g.blocks / gpu.sms)  # blocks on the busiest SM: wave quantization
    clock = gpu.clock_ghz * 1e9
    per_block = {
        "issue": warps * iterations * loop.loop_instructions / ISSUE_PER_CLOCK,
        "shared": warps * iterations * loop.wavefronts() * conflict / WAVEFRONTS_PER_CLOCK,
    }
    if math_kind == "hmma":
        sm_tensor_flops_per_clock = gpu.tensor_tflops * 1e12 / (gpu.sms * clock)
        per_block["math"] = warps * iterations * loop.hmma * HMMA_FLOPS[hmma_k] / sm_tensor_flops_per_clock
    else:
        lanes = gpu.fp64_lanes if math_kind == "dfma" else gpu.fp32_lanes
        per_block["math"] = warps * iterations * (loop.ffma or loop.dfma) * 32 / lanes
    terms = {name: busiest * cycles / clock for name, cycles in per_block.items()}
    panels = g.blocks * (g.BM + g.BN) * g.reduction * itemsize
    terms["L2"] = panels / sector_efficiency / (gpu.l2_gbs * 1e9)
    terms["DRAM"] = compulsory_bytes / (gpu.dram_gbs * 1e9)
    effective = {k: v / EFFICIENCY if k in per_block else v for k, v in terms.items()}
    limiter = max(effective, key=effective.get)
    seconds = effective[limiter]
    tflops = flops / seconds / 1e12
    return Prediction(seconds, limiter, terms, tflops, tflops / gpu.peak_tflops(math_kind))


# -- the model of gpuconv's kernels and CUTLASS's on a problem ---------------------------------------

# CUTLASS's anchor figures (media/docs/profiler.md), N=8 224² C=K=128 3×3 pad 1, one sm_80 GPU:
# the SIMT fprop (128×128×8 tile) and the tensor-op f16 fprop (s16816, 128×128×64, 4 stages).
ANCHOR_SHAPE = ((8, 128, 224, 224), (128, 128, 3, 3))
ANCHOR_TFLOPS = {"simt": 14.5693, "tensorop": 125.369}


def cutlass_tile(kind: str):
    """CUTLASS's tile as a ``kernel_backend.Tile``: SIMT 128×128×8 in 8 warps of 32×64 (8×8 per
    thread, as gpuconv's 128x128x8_8x8), tensor-op 128×128×64 in 4 warps of 64×64."""
    from .backends.kernel_backend import Tile

    if kind == "simt":
        return Tile(BM=128, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8)
    return Tile(BM=128, BN=128, BK=64, WM=64, WN=64, TM=16, TN=8)


def phase_taps_mean(p) -> float:
    """Taps per output pixel averaged over dgrad's stride phases: the reduction of one phase's GEMM
    is K/groups × its taps (tap r serves the rows h with (h + pad - r·dil) ≡ 0 mod stride)."""
    def mean(stride, pad, dil, R):
        return sum(sum((ph + pad - r * dil) % stride == 0 for r in range(R))
                   for ph in range(stride)) / stride

    (sh, sw), (dh, dw) = p.stride, p.dilation
    return mean(sh, p.padding[0], dh, p.R) * mean(sw, p.padding[2], dw, p.S)


def geometry(op: str, p, tile) -> Geometry:
    """The launch of ``op`` on ``p`` with ``tile`` (a ``kernel_backend.Tile``), as gpuconv's
    launch_config lays it out (dgrad: a z-slice per stride phase; wgrad: split-K by
    wgrad_splits)."""
    from .backends.kernel_backend import launch_config, wgrad_splits

    grid, _ = launch_config(1, op, tile, p)
    if op == "fprop":
        reduction = p.C_per_group * p.R * p.S
    elif op == "dgrad":
        reduction = math.ceil(p.K_per_group * phase_taps_mean(p))
    else:
        reduction = wgrad_splits(p, tile)[1]
    return Geometry(math.prod(grid), tile.BM, tile.BN, tile.BK, reduction)


def predict_problem(gpu: Gpu, op: str, p, report, tile, conflict: float = 1.0,
                    sector_efficiency: float = 1.0, itemsize: int | None = None) -> Prediction:
    """``predict`` for ``op`` on problem ``p`` with a kernel's SASS ``report`` and its tile;
    ``itemsize`` overrides the problem's (an f16 kernel modelled on a float32 problem object)."""
    itemsize = itemsize or p.itemsize
    return predict(gpu, Loop.of(report), geometry(op, p, tile), p.flops(op),
                   p.bytes_moved(op) * itemsize / p.itemsize, itemsize, conflict, sector_efficiency)


def calibration(simt_report, tensorop_report=None) -> dict:
    """The anchor problem modelled on the A100 with CUTLASS's own loops: the EFFICIENCY that makes
    the SIMT fprop land on its published TFLOP/s, and the error of the tensor-op one (the check)."""
    from .problem import conv_problem

    a100 = GPUS["a100"]
    p = conv_problem(*ANCHOR_SHAPE, padding=1)
    out = {"simt_published_tflops": ANCHOR_TFLOPS["simt"]}
    simt = predict_problem(a100, "fprop", p, simt_report, cutlass_tile("simt"))
    out["simt_modelled_tflops"] = simt.tflops
    # With the SM terms the limiter, modelled time scales as 1/EFFICIENCY.
    out["efficiency_fit"] = EFFICIENCY * ANCHOR_TFLOPS["simt"] / simt.tflops \
        if simt.limiter in ("issue", "math", "shared") else None
    if tensorop_report is not None:
        tc = predict_problem(a100, "fprop", p, tensorop_report, cutlass_tile("tensorop"), itemsize=2)
        out["tensorop_published_tflops"] = ANCHOR_TFLOPS["tensorop"]
        out["tensorop_modelled_tflops"] = tc.tflops
        out["tensorop_error"] = tc.tflops / ANCHOR_TFLOPS["tensorop"] - 1
    return out


def traffic_factors(op: str, kernel: str) -> tuple[float, float]:
    """(conflict, sector efficiency) of a tiled kernel, counted by the emulator's profile on
    ``gpuconv.profile.DEFAULT_SHAPE``: shared wavefronts ÷ their conflict-free ideal, and the ideal
    global sectors ÷ those touched."""
    from . import profile
    from .problem import conv_problem

    d = profile.DEFAULT_SHAPE
    p = conv_problem((d["N"], d["C"], d["H"], d["W"]), (d["K"], d["C"], d["R"], d["S"]), padding=1)
    rows = profile.run(op, p, kernel).rows
    shared = [r for r in rows if r["space"] == "shared"]
    glob = [r for r in rows if r["space"] == "global"]
    conflict = sum(r["wavefronts"] for r in shared) / max(1, sum(r["ideal"] for r in shared))
    efficiency = sum(r["ideal"] for r in glob) / max(1, sum(r["sectors"] for r in glob))
    return conflict, efficiency


def sass_reports(arch: str, results: Path) -> dict:
    """The SASS analyzer's reports for ``arch`` by kernel (``gpuconv.sass.LoopReport``): from
    ``results/sass-<arch>.json`` (``python -m gpuconv.sass --out``), else computed now for gpuconv's
    kernels (CUTLASS's then absent: compiling it needs nvcc)."""
    from . import sass

    path = results / f"sass-{arch}.json"
    reports = sass.load_reports(path) if path.is_file() else sass.analyze([arch])
    return {r.kernel: r for r in reports}


def cutlass_report(reports: dict, kind: str):
    """CUTLASS's SIMT ('simt') or tensor-op ('tensorop') fprop report among ``reports``, or None."""
    for r in reports.values():
        if r.source == "cutlass" and (r.hmma > 0) == (kind == "tensorop"):
            return r
    return None


def measured_ms(results: Path) -> dict[tuple[str, str], float]:
    """(layer, op) → the cuda backend's median ms in a committed GPU report (``gpu-*.json`` of
    ``gpuconv bench``, schema gpuconv-bench/1), if there is one."""
    found = {}
    for path in sorted(results.glob("gpu-*.json")) + sorted(results.glob("gpu-*/*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == "gpuconv-bench/1":
            for r in data["results"]:
                if r["impl"] == "cuda":
                    found[r["shape"], r["op"]] = r["ms"]
    return found


def table(gpu_key: str, shapes, results: Path, progress=None) -> tuple[str, list[dict]]:
    """The model's table for the benchmark layers at the GPU batch (32): gpuconv's chosen kernel and,
    beside it, CUTLASS's SIMT fprop loop (128×128×8) on the same GEMM. Markdown and rows."""
    from .backends import kernel_backend as kb
    from .shapes import layer_problem

    gpu = GPUS[gpu_key]
    reports = sass_reports(gpu.arch, results)
    simt = cutlass_report(reports, "simt")
    measured = measured_ms(results)
    factors: dict = {}
    choose = {"fprop": kb.choose_fprop, "dgrad": kb.choose_dgrad, "wgrad": kb.choose_wgrad}
    rows = []
    for i, name in enumerate(shapes):
        p = layer_problem(name, "gpu")
        for op in ("fprop", "dgrad", "wgrad"):
            if progress:
                progress(f"{name} {op}")
            kernel = choose[op](p, cp_async=kb.arch_number(gpu.arch) >= 80)  # none on a T4
            row = dict(layer=name, op=op, kernel=kernel, problem=p.describe())
            expression = kb.kernel_name(op, p.dtype, kernel)
            if kernel != "direct" and expression in reports:
                if (op, kernel) not in factors:
                    factors[op, kernel] = traffic_factors(op, kernel)
                ours = predict_problem(gpu, op, p, reports[expression], kb.TILES[op][kernel],
                                       *factors[op, kernel])
                row.update(ms=ours.seconds * 1e3, tflops=ours.tflops, peak=ours.fraction_of_peak,
                           limiter=ours.limiter, conflict=factors[op, kernel][0],
                           sector_efficiency=factors[op, kernel][1])
                if (name, op) in measured:
                    row["measured_over_modelled"] = measured[name, op] / row["ms"]
            if simt is not None:
                theirs = predict_problem(gpu, op, p, simt, cutlass_tile("simt"))
                row.update(cutlass_ms=theirs.seconds * 1e3, cutlass_tflops=theirs.tflops,
                           cutlass_peak=theirs.fraction_of_peak, cutlass_limiter=theirs.limiter)
            rows.append(row)

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "–"

    lines = [
        f"# Performance model: {gpu.name} ({gpu.arch}), float32 — MODELLED, not measured",
        "",
        f"Made by `gpuconv bench --model {gpu_key}` from the SASS analyzer's main loops "
        f"(`sass-{gpu.arch}.json`), the emulator's profile (shared-memory conflicts and global "
        "sector efficiency per tile) and each layer's GEMM at N=32. Peak FP32 "
        f"{gpu.peak_tflops():.1f} TFLOP/s. `gpuconv.model`'s docstring gives the terms; "
        f"EFFICIENCY = {EFFICIENCY} is calibrated on CUTLASS's published SIMT fprop figure. "
        "CUTLASS: its SIMT fprop main loop (128×128×8, compiled from the nvidia-cutlass headers) "
        "modelled on the same GEMM, with our split-K for wgrad. No GPU has measured any of this"
        + ("; measured ÷ modelled from the committed GPU report." if measured else "."),
        "",
        "| layer | op | kernel | ms | TFLOP/s | % peak | limiter | CUTLASS ms | TFLOP/s | % peak | "
        "limiter |" + (" measured ÷ modelled |" if measured else ""),
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"
        + (" ---: |" if measured else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['op']} | {r['kernel']} | {cell(r, 'ms', '{:.3f}')} | "
            f"{cell(r, 'tflops', '{:.1f}')} | {cell(r, 'peak', '{:.0%}')} | {r.get('limiter', '–')} | "
            f"{cell(r, 'cutlass_ms', '{:.3f}')} | {cell(r, 'cutlass_tflops', '{:.1f}')} | "
            f"{cell(r, 'cutlass_peak', '{:.0%}')} | {r.get('cutlass_limiter', '–')} |"
            + (f" {cell(r, 'measured_over_modelled', '{:.2f}')} |" if measured else ""))
    if factors:
        lines += ["", "Traffic factors from the emulator's profile (tile: shared wavefronts ÷ ideal, "
                  "ideal global sectors ÷ touched): "
                  + "; ".join(f"{op} {k}: {c:.2f}, {e:.2f}" for (op, k), (c, e) in factors.items())]
    if simt is not None:
        cal = calibration(simt, cutlass_report(reports, "tensorop"))
        lines += ["", "Calibration (A100, N=8 224² C=K=128 3×3): CUTLASS SIMT fprop published "
                  f"{cal['simt_published_tflops']:.2f} TFLOP/s, modelled {cal['simt_modelled_tflops']:.2f}"
                  + (f"; tensor-op f16 fprop published {cal['tensorop_published_tflops']:.1f}, modelled "
                     f"{cal['tensorop_modelled_tflops']:.1f} ({cal['tensorop_error']:+.0%})"
                     if "tensorop_error" in cal else "") + "."]
    return "\n".join(lines) + "\n", rows
