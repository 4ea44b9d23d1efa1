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

import math
from dataclasses import dataclass


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
# Sustained fraction of the SM terms' peak rates, calibrated so that CUTLASS's SIMT fprop
# (cutlass_simt_sfprop_optimized_128x128_8x2, N=8 224² C=K=128 3×3) models at the 14.57 TFLOP/s
# its profiler documentation reports (media/docs/profiler.md; an sm_80 GPU, taken as the A100).
EFFICIENCY = 0.82


@dataclass(frozen=True)
class Loop:
    """What the model needs of a kernel's main loop: a ``gpuconv.sass.LoopReport`` or its JSON."""

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
        get = report.get if isinstance(report, dict) else lambda k: getattr(report, k)
        widths = lambda d: {int(bits): n for bits, n in (d or {}).items()}  # noqa: E731
        return cls(get("loop_instructions"), get("ffma"), get("dfma"), get("hmma"),
                   widths(get("lds")), widths(get("sts")), get("threads"), get("blocks_per_sm"))

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
