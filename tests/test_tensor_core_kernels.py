"""fprop on tensor cores (kernels/fprop_tc.cu) on the emulator: float16, bfloat16 and TF32.

Small integers are exact in every input type, and their products and float32 sums too; the outputs
stay below 2**8 (bfloat16) or 2**11 (float16) so the one rounding to the output type is exact as
well, so those results compare with == against the float64 reference. Random inputs are held to
PyTorch's error, as tests/test_dtypes.py does for the float32 path.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import gpuconv as gc
from gpuconv import reference as ref
from gpuconv.api import round_to_tf32
from gpuconv.backends import kernel_backend as kb
from gpuconv.problem import conv_problem

from problems import EDGE, conv_kwargs, problem

ml_dtypes = pytest.importorskip("ml_dtypes")
# kind (TENSOR_KINDS) -> (array dtype, precision, largest |x| and |w| of the exact tests)
KINDS = {"float16": (np.float16, "highest", 3), "bfloat16": (ml_dtypes.bfloat16, "highest", 1),
         "tf32": (np.float32, "tf32", 3)}


def integers(rng, shape, kind, bound):
    return rng.integers(-bound, bound + 1, shape).astype(KINDS[kind][0])


def run_tensor_cores(p, x, w, bias, kind, kernel="64x64x32_tc", activation="relu", **emulate):
    """y from fprop_tc.cu, asserting the tensor-core kernel ran (not the float32 fallback)."""
    backend = kb.emulate_backend(fprop_kernel=kernel, **emulate)
    y = backend.fprop_tensor_cores(p, x, w, bias, activation, KINDS[kind][1])
    assert y is not None, (kind, kernel, p)
    return y


def reference(p, x, w, bias, activation="relu"):
    y = ref.fprop(p, *(a.astype(np.float64) for a in (x, w, bias)), None)
    return np.maximum(y, 0) if activation == "relu" else y


def exact_case(p, kind, seed):
    rng = np.random.default_rng(seed)
    bound = KINDS[kind][2]  # odd_channels: C·R·S = 153 taps, |sum| <= 153·9 < 2^11, 153 < 2^8
    return (integers(rng, p.x_shape, kind, bound), integers(rng, p.w_shape, kind, bound),
            integers(rng, (p.K,), kind, 3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", EDGE)
def test_small_integers_are_exact_on_the_edge_problems(kind, name):
    p = problem(EDGE[name], "float32" if kind == "tf32" else kind)
    x, w, b = exact_case(p, kind, seed=len(name))
    y = run_tensor_cores(p, x, w, b, kind)
    assert y.dtype == KINDS[kind][0]
    np.testing.assert_array_equal(y.astype(np.float64), reference(p, x, w, b))


# Partial tiles in M (N·P·Q = 162), N (K = 136) and the reduction (C·R·S = 360: 11¼ k-tiles).
PARTIAL = dict(x=(2, 40, 9, 9), w=(136, 40, 3, 3), padding=1)


@pytest.mark.parametrize("kind, kernel", [("float16", "128x128x32_tc"), ("bfloat16", "128x128x32_tc"),
                                          ("tf32", "64x64x32_tc")])
def test_partial_tiles_and_every_activation(kind, kernel):
    p = problem(PARTIAL, "float32" if kind == "tf32" else kind)
    rng = np.random.default_rng(7)
    x, w = integers(rng, p.x_shape, kind, 1), integers(rng, p.w_shape, kind, 1)  # |y| <= 363
    b = integers(rng, (p.K,), kind, 3)
    if kind == "bfloat16":  # keep the sums below 2^8: zero most weights
        w = np.where(rng.random(p.w_shape) < 0.5, w, 0).astype(w.dtype)
    for activation in (None, "relu"):
        y = run_tensor_cores(p, x, w, b, kind, kernel, activation)
        np.testing.assert_array_equal(y.astype(np.float64), reference(p, x, w, b, activation))
    y = run_tensor_cores(p, x, w, None, kind, kernel, "sigmoid").astype(np.float64)
    want = 1 / (1 + np.exp(-reference(p, x, w, np.zeros(p.K, x.dtype), None)))
    assert np.abs(y - want).max() <= {"float16": 2**-11, "bfloat16": 2**-8, "tf32": 1e-6}[kind]


@pytest.mark.parametrize("schedule", ["reverse", "random"])
@pytest.mark.parametrize("kind", KINDS)
def test_schedules_agree(kind, schedule):
    p = problem(EDGE["odd_channels"], "float32" if kind == "tf32" else kind)
    x, w, b = exact_case(p, kind, seed=3)
    y = run_tensor_cores(p, x, w, b, kind, schedule=schedule, seed=5)
    np.testing.assert_array_equal(y.astype(np.float64), reference(p, x, w, b))


@pytest.mark.parametrize("mode, kind, kernel", [("race", "float16", "128x128x32_tc"),
                                                ("race", "tf32", "64x64x32_tc"),
                                                ("asan", "float16", "64x64x32_tc"),
                                                ("asan", "bfloat16", "64x64x32_tc")])
def test_sanitizers_are_clean(mode, kind, kernel):
    p = problem(EDGE["groups"], "float32" if kind == "tf32" else kind)
    x, w, b = exact_case(p, kind, seed=4)
    y = run_tensor_cores(p, x, w, b, kind, kernel, mode=mode)
    np.testing.assert_array_equal(y.astype(np.float64), reference(p, x, w, b))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_random_half_inputs_are_as_accurate_as_pytorch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    p, t = conv_problem((2, 24, 7, 6), (20, 24, 3, 3), stride=2, padding=1, dtype=dtype), KINDS[dtype][0]
    assert kb.choose_fprop_tensor_core(p) == "64x64x32_tc"  # 'auto' takes the tensor cores
    x, w = (rng.standard_normal(s).astype(t) for s in (p.x_shape, p.w_shape))
    ours = gc.conv2d(x, w, stride=2, padding=1, backend="emulate")
    want = ref.fprop(p, x.astype(np.float64), w.astype(np.float64), None, None)
    theirs = torch.nn.functional.conv2d(*(torch.from_numpy(a.astype(np.float32)) for a in (x, w)),
                                        stride=2, padding=1)
    cast = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    pytorch = np.abs(theirs.to(cast).to(torch.float64).numpy() - want).max()
    assert ours.dtype == t and np.abs(ours.astype(np.float64) - want).max() <= 2 * pytorch


def test_tf32_rounds_inputs_as_the_numpy_backend():
    rng = np.random.default_rng(9)
    p = conv_problem((2, 20, 6, 6), (12, 20, 3, 3), padding=1, dtype="float32")
    x, w = (rng.standard_normal(s).astype(np.float32) for s in (p.x_shape, p.w_shape))
    b = rng.standard_normal(p.K).astype(np.float32)
    y = run_tensor_cores(p, x, w, b, "tf32", activation=None)
    truth = ref.fprop(p, round_to_tf32(np, x).astype(np.float64), round_to_tf32(np, w).astype(np.float64),
                      b.astype(np.float64), None)
    scale = np.abs(truth).max()
    assert np.abs(y - truth).max() <= 1e-5 * scale  # float32 accumulation of 180 exact products
    numpy = gc.conv2d(x, w, b, padding=1, precision="tf32", backend="numpy")
    np.testing.assert_allclose(y, numpy, atol=1e-5 * scale)
    highest = gc.conv2d(x, w, b, padding=1, backend="numpy")
    assert np.abs(y - highest).max() > 1e-5 * scale  # the inputs were rounded


def test_auto_routes_only_what_tensor_cores_run():
    half = conv_problem((32, 64, 28, 28), (256, 64, 3, 3), padding=1, dtype="float16")
    assert kb.choose_fprop_tensor_core(half) == "128x128x32_tc"
    tf32 = dataclasses.replace(half, dtype="float32")
    assert kb.choose_fprop_tensor_core(tf32) is None  # 128×128 holds no float32 tile
    assert kb.choose_fprop_tensor_core(tf32, "64x64x32_tc") == "64x64x32_tc"
    depthwise = problem(EDGE["depthwise"], "float16")
    assert kb.choose_fprop_tensor_core(depthwise) is None  # 2 channels a group: float32 kernels
    assert kb.choose_fprop_tensor_core(half, "64x64x8_8x8") is None  # a forced SIMT tile
    assert kb.tensor_kind("float32", "highest") is None and kb.tensor_kind("float32", "tf32x3") is None
    assert kb.tensor_kind("float64", "highest") is None
    # The float32 path given a tensor-core tile that cannot take the problem runs it direct.
    assert kb.choose_fprop(conv_problem((1, 4, 5, 5), (8, 4, 3, 3), dtype="float64"),
                           "64x64x32_tc") == "direct"


def test_a_gpu_without_tensor_cores_takes_the_float32_path():
    backend = kb.KernelBackend("emulate", np, kb._emulate_function, kb._no_device, True,
                               tensor_cores=lambda: False)
    p = problem(EDGE["odd_channels"], "float16")
    x, w, b = exact_case(p, "float16", seed=1)
    assert backend.fprop_tensor_cores(p, x, w, b, None, "highest") is None
    assert "fprop_tc.cu" not in kb.kernels_for("sm_75") and "fprop_tc.cu" in kb.kernels_for("sm_80")
    y = gc.conv2d(x, w, b, **conv_kwargs(EDGE["odd_channels"]), backend="emulate")
    np.testing.assert_array_equal(y.astype(np.float64), reference(p, x, w, b, None))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_main_loop_runs_on_hmma_and_ldmatrix(arch):
    """NVRTC compiles the kernels as the cuda backend does; the main loop holds one HMMA per
    mma.sync, one LDSM per ldmatrix (none for TF32's direct loads), one barrier, and no spills."""
    from gpuconv import compile_check, sass

    if not compile_check.nvrtc_available():
        pytest.skip("NVRTC is not installed (pip install 'gpuconv[nvrtc]')")
    try:
        sass.tool_path("nvdisasm"), sass.tool_path("cuobjdump")
    except sass.ToolMissing as e:
        pytest.skip(str(e))
    cases = [("float16", "128x128x32_tc"), ("bfloat16", "64x64x32_tc"), ("tf32", "64x64x32_tc")]
    names = {kb.tensor_kernel_name(kind, tile, "relu"): (kind, tile) for kind, tile in cases}
    reports = sass.analyze([arch], list(names))
    assert sorted(r.kernel for r in reports) == sorted(names)
    for r in reports:
        kind, tile = names[r.kernel][0], kb.TENSOR_TILES[names[r.kernel][1]]
        mma_k = 8 if kind == "tf32" else 16
        assert r.hmma == (tile.WM // 16) * (tile.WN // 8) * tile.BK // mma_k, r.kernel
        # ldmatrix.x4: one per 16 rows of A, one per 16 columns of B, each k16 step.
        ldsm = 0 if kind == "tf32" else (tile.WM // 16 + tile.WN // 16) * tile.BK // 16
        assert (r.ldsm, r.spills, r.bar, r.threads) == (ldsm, 0, 1, tile.threads), r.kernel


@pytest.mark.parametrize("kind, kernel", [("float16", "128x128x32_tc"), ("tf32", "64x64x32_tc")])
def test_shared_memory_is_conflict_free(kind, kernel):
    """Every shared access of the kernel (staging stores, ldmatrix, TF32 fragment loads) takes the
    ideal wavefronts per request in ``gpuconv profile``: the padding spreads the rows."""
    from gpuconv import profile

    p = problem(dict(x=(2, 32, 8, 8), w=(128, 32, 3, 3), padding=1), "float32" if kind == "tf32" else kind)
    run = profile.run("fprop", p, kernel, precision=KINDS[kind][1])
    assert run.kernel == kernel and run.blocks == (4 if kernel == "64x64x32_tc" else 1)  # M = N = 128
    shared = [row for row in run.rows if row["space"] == "shared"]
    assert {(Path(row["file"]).name, row["kind"]) for row in shared} == (
        {("fprop_tc.cu", "store"), ("fprop_tc.cu" if kind == "tf32" else "mma.cuh", "load")})
    assert all(row["wavefronts"] == row["ideal"] for row in shared), shared


def test_profile_cli_takes_half_dtypes_and_precision(capsys):
    from gpuconv import profile

    assert profile.main(["fprop", "--dtype", "float16", "--shape", "1", "8", "4", "4", "16", "3", "3",
                         "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kernel"] == "64x64x32_tc"
    assert profile.main(["fprop", "--dtype", "float64", "--precision", "tf32"]) == 2
    assert "precision='tf32' applies to float32 inputs only, got dtype float64" in capsys.readouterr().err
