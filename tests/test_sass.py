"""The SASS analyzer (gpuconv.sass): loop finding and counting on planted kernels whose main loop is
known, occupancy on hand-worked cases, the tiled kernels' loops and the command line's JSON."""
from __future__ import annotations

import json

import pytest

from gpuconv import compile_check, sass
from gpuconv.backends.kernel_backend import KERNELS, TILES

from problems import needs_sass_tools

needs_tools = needs_sass_tools

# Per iteration: one 128-bit shared load and exactly four FFMAs (fmaf is never split).
FOUR_FFMA = r"""
__global__ void four_ffma(const float4* a, float* out, int n) {
    __shared__ float4 tile[256];
    tile[threadIdx.x] = a[threadIdx.x];
    __syncthreads();
    float acc = 0.f, b = out[0];
    #pragma unroll 1
    for (int i = 0; i < n; ++i) {
        float4 v = tile[(threadIdx.x + i) & 255];
        acc = fmaf(v.x, b, acc); acc = fmaf(v.y, b, acc); acc = fmaf(v.z, b, acc); acc = fmaf(v.w, b, acc);
    }
    out[threadIdx.x] = acc;
}
"""
# Per iteration: one global load, one FFMA and a signed 64-bit division, which takes a CALL to the
# runtime's subroutine when its operands do not fit 32 bits.
DIVISION = r"""
__global__ void division(const long long* a, float* out, long long d, int n) {
    float acc = 0.f;
    #pragma unroll 1
    for (int i = 0; i < n; ++i) acc = fmaf((float)(a[i] / d), 2.f, acc);
    out[threadIdx.x] = acc;
}
"""


def analyze_planted(monkeypatch, code: str, expression: str, arch: str = "sm_80") -> sass.LoopReport:
    """Compile ``code`` through compile_check.nvrtc_compile, the cuda backend's options and all."""
    monkeypatch.setattr(compile_check, "source", lambda filename: code)
    monkeypatch.setitem(KERNELS, "planted.cu", [expression])  # what kernels_for(arch) lists
    cubin, log, names = compile_check.nvrtc_compile("planted.cu", arch, ("-Xptxas=-v",))
    (report,) = sass.analyze_cubin(cubin, arch, names, {expression: 256}, ptxas_log=log)
    return report


@needs_tools
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_planted_loop_four_ffma_one_lds128(monkeypatch, arch):
    r = analyze_planted(monkeypatch, FOUR_FFMA, "four_ffma", arch)
    assert (r.ffma, r.dfma, r.hmma, r.lds, r.ldsm) == (4, 0, 0, {128: 1}, 0)
    assert (r.ldg, r.ldgsts, r.sts, r.bar, r.calls) == ({}, {}, {}, 0, {})
    assert r.loop_instructions == 4 + 1 + r.rest
    assert r.rest == sum(r.rest_opcodes.values()) and "BRA" in r.rest_opcodes
    assert r.share == 4 / r.loop_instructions
    assert (r.spills, r.shared_bytes, r.threads) == (0, 4096, 256)


@needs_tools
def test_planted_loop_with_64_bit_division_calls_a_subroutine(monkeypatch):
    r = analyze_planted(monkeypatch, DIVISION, "division")
    assert (r.ffma, r.ldg, r.lds, r.bar) == (1, {64: 1}, {}, 0)
    ((callee, calls),) = r.calls.items()
    assert calls == 1 and callee.endswith("div_s64")


@needs_tools
def test_ptxas_report_leaves_the_sass_unchanged():
    """We compile with -Xptxas=-v for the spills; the code is that of the options alone."""
    plain, _, _ = compile_check.nvrtc_compile("elementwise.cu", "sm_80")
    verbose, _, _ = compile_check.nvrtc_compile("elementwise.cu", "sm_80", ("-Xptxas=-v",))
    assert sass.parse_sass(sass.disassemble(plain)) == sass.parse_sass(sass.disassemble(verbose))


# A hand-written listing in nvdisasm's format: an outer loop (.L_x_0) around an inner one (.L_x_1)
# holding all 2 FFMAs, a loop exit through CALL.REL.NOINC, a real call, ptxas' never-executed
# `@!PT LDS` after an LDGSTS, and the halt after EXIT.
LISTING = """
\t.section\t.text._Z1kv,"ax",@progbits
_Z1kv:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDS.U.128 R4, [R2] ;
.L_x_1:
        /*0020*/                   FFMA R8, R4, R5, R8 ;
        /*0030*/                   FFMA.FTZ R9, R4, R6, R9 ;
        /*0040*/               @P0 LDG.E.64.CONSTANT R10, [R12.64] ;
        /*0050*/                   LDSM.16.M88.4 R16, [R3] ;
        /*0060*/                   LDGSTS.E.BYPASS.LTC128B.128 [R2], [R12.64] ;
        /*0068*/              @!PT LDS RZ, [RZ] ;
        /*0070*/                   STS.U8 [R2], R4 ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/               @P1 CALL.REL.NOINC `(.L_x_2) ;
        /*00a0*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
        /*00b0*/              @!P2 BRA `(.L_x_1) ;
        /*00c0*/                   IADD3 R2, R2, 0x10, RZ ;
        /*00d0*/               @P3 BRA `(.L_x_0) ;
.L_x_2:
        /*00e0*/                   EXIT ;
.L_x_3:
        /*00f0*/                   BRA `(.L_x_3) ;
$__internal_0_$__cuda_sm20_div_s64:
        /*0100*/                   RET.REL.NODEC R20 `(_Z1kv) ;
"""


def test_main_loop_is_the_innermost_loop_holding_the_math():
    ((instructions, labels),) = sass.parse_sass(LISTING).values()
    assert sass.loops(instructions, labels) == [(2, 12), (1, 14)]  # the halt at 0xf0 is no loop
    assert sass.main_loop(instructions, labels) == (2, 12)
    c = sass.count(instructions[2:13])
    assert (c.instructions, c.ffma, c.lds, c.ldsm, c.ldg, c.ldgsts, c.sts, c.bar) == (
        11, 2, {128: 1}, 1, {64: 1}, {128: 1}, {8: 1}, 1)
    assert c.calls == {"$__internal_0_$__cuda_sm20_div_s64": 1}
    # the loop exit through CALL.REL.NOINC is a jump; @!PT LDS an issue slot but no shared load
    assert c.rest == {"CALL": 1, "BRA": 1, "@!PT LDS": 1}


@pytest.mark.parametrize("opcode, bits", [
    ("LDS", 32), ("LDS.U.128", 128), ("LDS.64", 64), ("LDS.U8", 8), ("LDS.S16", 16),
    ("LDSM.16.M88.4", 128), ("LDSM.16.MT88.2", 64), ("LDSM.16.M88", 32),
    ("LDG.E.128.CONSTANT", 128), ("LDG.E", 32),
    ("LDGSTS.E.LTC128B", 32), ("LDGSTS.E.BYPASS.LTC128B.128", 128),
])
def test_access_bits(opcode, bits):
    assert sass.access_bits(opcode) == bits


@pytest.mark.parametrize("arch, threads, registers, shared, expected", [
    # 130 registers → 4352 a warp (units of 256): 3 warps in each 16384-register sub-partition,
    # 12 warps an SM, one block of 8 warps (CUTLASS's SIMT fprop on A100).
    ("sm_80", 256, 130, 32768, (1, 8, 8 / 64, "registers")),
    # 40 registers → 1280 a warp: 12 warps a sub-partition (not 65536 // 1280 = 51 an SM), 24 blocks
    # of 2 warps, below the 32-block limit.
    ("sm_80", 64, 40, 0, (24, 48, 48 / 64, "registers")),
    # 40000 + 1024 reserved = 41088 rounded to 128: 2 blocks in sm_86's 100 KB.
    ("sm_86", 128, 32, 40000, (2, 8, 8 / 48, "shared memory")),
    # No reservation on sm_75; 1024 threads fill the SM.
    ("sm_75", 1024, 32, 0, (1, 32, 1.0, "threads")),
    # More shared memory than a block may have.
    ("sm_75", 128, 32, 70000, (0, 0, 0.0, "shared memory")),
    ("sm_90", 128, 32, 0, (16, 64, 1.0, "threads")),
])
def test_occupancy_hand_worked(arch, threads, registers, shared, expected):
    occ = sass.occupancy(arch, threads, registers, shared)
    assert (occ.blocks_per_sm, occ.warps_per_sm, occ.fraction, occ.limiter) == expected


def test_occupancy_refuses_unknown_arch():
    with pytest.raises(ValueError, match=r"arch must be one of .*'sm_90'.*, got 'sm_70'"):
        sass.occupancy("sm_70", 128, 32, 0)
    with pytest.raises(ValueError, match="threads must be positive, got 0"):
        sass.occupancy("sm_80", 0, 32, 0)


@needs_tools
def test_tiled_kernels_loop_over_one_reduction_step():
    """The main loop of every tiled kernel holds one BK step: TM·TN·BK multiply-adds per thread,
    and one barrier (double-buffered shared memory: the next tile is stored while others read this
    one)."""
    # fprop's activation (its second template argument) is the epilogue's: its main loop is the
    # same for all three, so one activation (0, none) a tile
    tiled = [e for es in KERNELS.values() for e in es
             if "_implicit_gemm<" in e and (not e.startswith("fprop") or e.split(", ")[1] == "0")]
    reports = sass.analyze(["sm_80"], tiled)
    assert sorted(r.kernel for r in reports) == sorted(tiled)
    for r in reports:
        tile = next(t for t in TILES[r.kernel.split("_")[0]].values()
                    if r.kernel.endswith(f"{t.template_args()}>"))
        fma = r.ffma if r.kernel.split("<")[1].startswith("float") else r.dfma
        assert (fma, r.ffma + r.dfma, r.hmma) == (tile.TM * tile.TN * tile.BK,) * 2 + (0,)
        assert (r.threads, r.spills, r.bar) == (tile.threads, 0, 1)
        assert sum(r.lds.values()) > 0 and 0 < r.occupancy <= 1


@needs_tools
def test_json_and_report(capsys, tmp_path):
    kernel = "relu_forward<float>"
    assert sass.main(["--arch", "sm_80", "--kernel", kernel, "--json", "--out", str(tmp_path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {"kernel", "arch", "loop_instructions", "ffma", "dfma", "hmma", "lds", "ldg", "bar", "registers",
            "spills", "share", "occupancy"} <= row.keys()
    assert (row["kernel"], row["arch"], row["threads"], row["spills"]) == (kernel, "sm_80", 256, 0)
    assert f"| `{kernel}` |" in (tmp_path / "sass-sm_80.md").read_text()
    (report,) = sass.load_reports(tmp_path / "sass-sm_80.json")
    assert report.to_dict() == row


def test_unknown_kernel_or_arch_is_refused():
    with pytest.raises(ValueError, match=r"kernels: no such instance \['fprop_direct<int>'\]"):
        sass.analyze(["sm_80"], ["fprop_direct<int>"])
    with pytest.raises(ValueError, match=r"archs: unknown architecture \['sm_70'\]; known: \['sm_75'"):
        sass.analyze("sm_70")
