"""The tensor-core kernels (kernels/fprop_tc.cu, dgrad_tc.cu, wgrad_tc.cu on gemm_tc.cuh's main loop)
on the emulator: float16, bfloat16 and TF32, every op.

Small integers are exact in every input type, and their products and float32 sums too, so a
result is the float64 reference rounded once to the output type, compared with ==. Random inputs
are held to twice PyTorch's error on the same rounded inputs (issue 12's tolerance).
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

from problems import EDGE, TENSOR_STAGING, conv_kwargs, needs_sass_tools, problem, run_op, run_tensor_op

ml_dtypes = pytest.importorskip("ml_dtypes")
# kind (TENSOR_KINDS) -> (array dtype, precision, largest |x|, |w| and |dy| of the exact tests)
KINDS = {"float16": (np.float16, "highest", 3), "bfloat16": (ml_dtypes.bfloat16, "highest", 1),
         "tf32": (np.float32, "tf32", 3), "tf32x3": (np.float32, "tf32x3", 3)}
OPS = ("fprop", "dgrad", "wgrad")


def dtype_of(kind):
    return kb.kind_dtype(kind)


# Every (kind, tile) the tensor-core kernels of all three ops are built for (the halo tiles:
# tests/test_halo.py).
TILE_KINDS = [(kind, tile) for tile, t in kb.TENSOR_TILES["wgrad"].items() for kind in KINDS
              if dtype_of(kind) in t.dtypes and tile not in kb.HALO_TILES]


def integers(rng, shape, kind, bound):
    return rng.integers(-bound, bound + 1, shape).astype(KINDS[kind][0])


def exact_case(p, kind, seed, bound=None):
    """x, w, dy and both biases of p: small integers the input type holds."""
    rng = np.random.default_rng(seed)
    bound = KINDS[kind][2] if bound is None else bound
    return dict(x=integers(rng, p.x_shape, kind, bound), w=integers(rng, p.w_shape, kind, bound),
                dy=integers(rng, p.y_shape, kind, bound), bias_k=integers(rng, (p.K,), kind, 3),
                bias_c=integers(rng, (p.C,), kind, 3))


def run_tensor_cores(op, p, a, kind, kernel="64x64x32_tc", activation="relu", **emulate):
    """``op`` from its tensor-core kernel, asserting that it ran (not the float32 fallback)."""
    backend = kb.emulate_backend(**{f"{op}_kernel": kernel}, **emulate)
    got = run_tensor_op(backend, op, p, a, activation if op == "fprop" else None, KINDS[kind][1])
    assert got is not None, (op, kind, kernel, p)
    assert got.dtype == KINDS[kind][0]
    return got.astype(np.float64)


def exact(op, p, a, kind, activation="relu"):
    """The float64 reference of small-integer inputs rounded once to the output type: what a
    float32 accumulation (exact here) rounded once gives."""
    want = run_op(ref, op, p, {k: v.astype(np.float64) for k, v in a.items()},
                  activation if op == "fprop" else None)
    return want.astype(KINDS[kind][0]).astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", EDGE)
@pytest.mark.parametrize("op", OPS)
def test_small_integers_are_exact_on_the_edge_problems(op, kind, name):
    """Partial tiles, every stride phase (dgrad), groups, dilation, asymmetric padding, 1×1, C
    and K of no particular multiple: EDGE."""
    p = problem(EDGE[name], dtype_of(kind))
    a = exact_case(p, kind, seed=len(name))
    np.testing.assert_array_equal(run_tensor_cores(op, p, a, kind), exact(op, p, a, kind))


# What tensor_staging picks on TENSOR_STAGING (every kind and tile), per op (STAGINGS).
STAGING_PICKED = {
    "tap_major": {"fprop": "tap_major_vector", "dgrad": "plain", "wgrad": "tap_major"},
    "dgrad_tap_major": {"fprop": "plain", "dgrad": "tap_major", "wgrad": "plain"},
    "1x1_tap_vector": {"fprop": "tap_major_vector", "dgrad": "tap_major", "wgrad": "tap_major_vector"},
    "groups_stride": {"fprop": "tap_major_vector", "dgrad": "tap_major", "wgrad": "tap_major"},
    "halo": {"fprop": "tap_major_vector", "dgrad": "plain", "wgrad": "tap_major_vector"},
    "wgrad_halo": {"fprop": "tap_major_vector", "dgrad": "plain", "wgrad": "tap_major_vector"},
    "wgrad_halo_odd": {"fprop": "tap_major_vector", "dgrad": "plain", "wgrad": "tap_major"},
}


@pytest.mark.parametrize("kind, kernel", TILE_KINDS)
@pytest.mark.parametrize("name", TENSOR_STAGING)
@pytest.mark.parametrize("op", OPS)
def test_every_staging_variant_is_exact(op, name, kind, kernel):
    p = problem(TENSOR_STAGING[name], dtype_of(kind))
    a = exact_case(p, kind, seed=len(name))
    operand = {"fprop": a["w"], "dgrad": a["w"], "wgrad": a["dy"]}[op]
    assert kb.tensor_staging(op, p, kernel, operand) == STAGING_PICKED[name][op]
    np.testing.assert_array_equal(run_tensor_cores(op, p, a, kind, kernel), exact(op, p, a, kind))


def test_a_misaligned_operand_takes_element_loads_or_an_aligned_copy():
    """An operand 2 bytes off a 16-byte boundary (a view into a larger array): wgrad's dy is read
    an element a load; fprop's w, which the backend reorders for its 16-byte loads anyway, is
    copied aligned. The results are the same."""
    p = problem(TENSOR_STAGING["1x1_tap_vector"], "float16")
    a = exact_case(p, "float16", seed=2)
    for op, name, staging in (("fprop", "w", "tap_major_vector"), ("wgrad", "dy", "tap_major")):
        buffer = np.empty(a[name].size + 8, np.float16)
        shifted = buffer[1:1 + a[name].size].reshape(a[name].shape)
        shifted[...] = a[name]
        assert kb.tensor_staging(op, p, "64x64x32_tc", shifted) == staging
        got = run_tensor_cores(op, p, {**a, name: shifted}, "float16")
        np.testing.assert_array_equal(got, exact(op, p, a, "float16"))


# Partial tiles in M, N and the reduction of every op: fprop M = N·P·Q = 162, N = K = 136,
# C·R·S = 360 (11¼ k-tiles); dgrad M = 162 pixels, N = C = 40, K·R·S = 1224; wgrad M = K = 136,
# N = C·R·S = 360, N·P·Q = 162 (5 k-tiles and a bit, split).
PARTIAL = dict(x=(2, 40, 9, 9), w=(136, 40, 3, 3), padding=1)


@pytest.mark.parametrize("kind, kernel", TILE_KINDS)
@pytest.mark.parametrize("op", OPS)
def test_partial_tiles_every_tile(op, kind, kernel):
    p = problem(PARTIAL, dtype_of(kind))
    a = exact_case(p, kind, seed=7, bound=1)
    np.testing.assert_array_equal(run_tensor_cores(op, p, a, kind, kernel), exact(op, p, a, kind))


@pytest.mark.parametrize("kind, kernel", TILE_KINDS)
def test_fprop_every_activation(kind, kernel):
    p = problem(PARTIAL, dtype_of(kind))
    a = exact_case(p, kind, seed=7, bound=1)
    for activation in (None, "relu"):
        got = run_tensor_cores("fprop", p, a, kind, kernel, activation)
        np.testing.assert_array_equal(got, exact("fprop", p, a, kind, activation))
    got = run_tensor_cores("fprop", p, {**a, "bias_k": None}, kind, kernel, "sigmoid")
    want = 1 / (1 + np.exp(-ref.fprop(p, *(a[k].astype(np.float64) for k in "xw"), None, None)))
    tolerance = {"float16": 2**-11, "bfloat16": 2**-8}.get(kind, 1e-6)  # half an ulp of the output
    assert np.abs(got - want).max() <= tolerance


@pytest.mark.parametrize("schedule", ["reverse", "random"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_schedules_agree(op, kind, schedule):
    p = problem(EDGE["dilation_stride"], dtype_of(kind))
    a = exact_case(p, kind, seed=3)
    got = run_tensor_cores(op, p, a, kind, schedule=schedule, seed=5)
    np.testing.assert_array_equal(got, exact(op, p, a, kind))


SANITIZED = [(mode, op, kind, kernel) for op in OPS
             for mode, kind, kernel in (("race", "float16", "128x128x32_tc"),
                                        ("race", "tf32", "64x64x32_tc"),
                                        ("asan", "float16", "64x64x32_tc"),
                                        ("asan", "bfloat16", "128x128x32_tc"))]


@pytest.mark.parametrize("mode, op, kind, kernel", SANITIZED)
def test_sanitizers_are_clean(mode, op, kind, kernel):
    p = problem(EDGE["groups"] if op != "dgrad" else EDGE["stride_hw"], dtype_of(kind))
    a = exact_case(p, kind, seed=4)
    np.testing.assert_array_equal(run_tensor_cores(op, p, a, kind, kernel, mode=mode), exact(op, p, a, kind))


def test_wgrad_split_k_is_bitwise_deterministic():
    """Several splits (checked), each schedule: the same bits, in float16 and TF32."""
    p = conv_problem((4, 16, 12, 12), (16, 16, 3, 3), padding=1, dtype="float16")
    tile = kb.TENSOR_TILES["wgrad"]["64x64x32_tc"]
    assert kb.wgrad_splits(p, tile)[0] > 1
    rng = np.random.default_rng(11)
    for kind in ("float16", "tf32"):
        q = dataclasses.replace(p, dtype=dtype_of(kind))
        a = {k: rng.standard_normal(s).astype(KINDS[kind][0])
             for k, s in (("x", q.x_shape), ("dy", q.y_shape))}
        runs = [run_tensor_cores("wgrad", q, a, kind, schedule=s, seed=1)
                for s in ("forward", "reverse", "random")]
        assert all(np.array_equal(r, runs[0]) for r in runs[1:])


# Random inputs: the error against the float64 reference on the same (rounded) inputs at most twice
# that of PyTorch CPU computing the same inputs in float32 and rounding to the output type.
RANDOM = dict(x=(2, 24, 7, 6), w=(20, 24, 3, 3), stride=2, padding=1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
def test_random_half_inputs_are_as_accurate_as_pytorch(op, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    p, t = problem(RANDOM, dtype), KINDS[dtype][0]
    assert kb.choose_tensor_core(op, p) == "64x64x32_tc"  # 'auto' takes the tensor cores
    x, w, dy = (rng.standard_normal(s).astype(t) for s in (p.x_shape, p.w_shape, p.y_shape))
    f32, f64 = (lambda a: torch.from_numpy(a.astype(np.float32))), (lambda a: a.astype(np.float64))
    kw = conv_kwargs(RANDOM)
    if op == "fprop":
        ours, want = gc.conv2d(x, w, **kw, backend="emulate"), ref.fprop(p, f64(x), f64(w), None, None)
        theirs = torch.nn.functional.conv2d(f32(x), f32(w), **kw)
    elif op == "dgrad":
        ours, want = gc.conv2d_input(p.x_shape, w, dy, **kw, backend="emulate"), ref.dgrad(p, f64(dy), f64(w))
        theirs = torch.nn.grad.conv2d_input(p.x_shape, f32(w), f32(dy), **kw)
    else:
        ours = gc.conv2d_weight(x, p.w_shape, dy, **kw, backend="emulate")
        want = ref.wgrad(p, f64(x), f64(dy))
        theirs = torch.nn.grad.conv2d_weight(f32(x), p.w_shape, f32(dy), **kw)
    cast = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    pytorch = np.abs(theirs.to(cast).to(torch.float64).numpy() - want).max()
    assert ours.dtype == t and np.abs(ours.astype(np.float64) - want).max() <= 2 * pytorch


@pytest.mark.parametrize("op", OPS)
def test_tf32_rounds_inputs_as_the_numpy_backend(op):
    rng = np.random.default_rng(9)
    p = conv_problem((2, 20, 6, 6), (12, 20, 3, 3), padding=1, dtype="float32")
    a = {k: rng.standard_normal(s).astype(np.float32) for k, s in
         (("x", p.x_shape), ("w", p.w_shape), ("dy", p.y_shape), ("bias_k", (p.K,)))}
    a["bias_c"] = None  # conv2d_input takes none
    got = run_tensor_cores(op, p, a, "tf32", activation=None)
    truth = run_op(ref, op, p, {k: None if v is None else (v if k == "bias_k" else round_to_tf32(np, v))
                                .astype(np.float64) for k, v in a.items()})
    scale = np.abs(truth).max()
    assert np.abs(got - truth).max() <= 1e-5 * scale  # float32 accumulation of exact products
    call = {"fprop": lambda **k: gc.conv2d(a["x"], a["w"], a["bias_k"], padding=1, **k),
            "dgrad": lambda **k: gc.conv2d_input(p.x_shape, a["w"], a["dy"], padding=1, **k),
            "wgrad": lambda **k: gc.conv2d_weight(a["x"], p.w_shape, a["dy"], padding=1, **k)}[op]
    np.testing.assert_allclose(got, call(precision="tf32", backend="numpy"), atol=1e-5 * scale)
    np.testing.assert_array_equal(got, call(precision="tf32", backend="emulate"))  # the API routes here
    assert np.abs(got - call(backend="numpy")).max() > 1e-5 * scale  # the inputs were rounded


@pytest.mark.parametrize("op", OPS)
def test_tf32x3_is_as_accurate_as_float32(op):
    """Three TF32 products a multiply: within a few float32 ulps of 'highest' (float32 FFMA), three
    orders of magnitude closer to the float64 reference than 'tf32'."""
    rng = np.random.default_rng(10)
    p = problem(PARTIAL, "float32")
    a = {k: rng.standard_normal(s).astype(np.float32) for k, s in
         (("x", p.x_shape), ("w", p.w_shape), ("dy", p.y_shape))}
    a["bias_k"] = a["bias_c"] = None
    want = run_op(ref, op, p, {k: None if v is None else v.astype(np.float64) for k, v in a.items()})

    def error(y):
        return np.abs(y - want).max() / np.abs(want).max()

    x3 = error(run_tensor_cores(op, p, a, "tf32x3", activation=None))
    highest = error(run_op(kb.emulate_backend(), op, p, a))
    tf32 = error(run_tensor_cores(op, p, a, "tf32", activation=None))
    # A product keeps about 21 of float32's 24 bits (the remainder is rounded to TF32, lo·lo is
    # dropped): a few float32 ulps, measured 0.7-1.9× highest's error on such problems.
    assert x3 <= 4 * max(highest, 2**-23) and tf32 > 100 * x3, (x3, highest, tf32)


def test_conv_transpose2d_runs_on_tensor_cores():
    """conv_transpose2d in float16 is dgrad_tc.cu with a bias and a given P, Q (output_padding)."""
    rng = np.random.default_rng(12)
    x = rng.integers(-3, 4, (2, 16, 5, 4)).astype(np.float16)
    w = rng.integers(-3, 4, (16, 12, 3, 3)).astype(np.float16)
    b = rng.integers(-3, 4, 12).astype(np.float16)
    kw = dict(stride=2, padding=1, output_padding=1)
    got = gc.conv_transpose2d(x, w, b, **kw, backend="emulate")
    want = gc.conv_transpose2d(*(a.astype(np.float64) for a in (x, w, b)), **kw, backend="numpy")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float16).astype(np.float64))


def test_auto_routes_only_what_tensor_cores_run():
    half = conv_problem((32, 128, 28, 28), (256, 128, 3, 3), padding=1, dtype="float16")
    # the halo tiles: fprop's and dgrad's (tests/test_halo.py), wgrad's (tests/test_wgrad_halo.py)
    assert [kb.choose_tensor_core(op, half) for op in OPS] == [kb.HALO_TILE] * 2 + [kb.WGRAD_HALO_TILE]
    half_1x1 = conv_problem((32, 128, 28, 28), (256, 128, 1, 1), dtype="float16")
    for op in OPS:
        assert kb.choose_tensor_core(op, half_1x1) == "128x128x32_tc", op
    tf32 = dataclasses.replace(half, dtype="float32")
    # TF32: fprop and dgrad on the TF32 halo tile; 128×128 holds no float32 tile, so wgrad, and a
    # problem the halo tile does not fit, take 64×64 (never SIMT)
    assert [kb.choose_tensor_core(op, tf32) for op in OPS] == [kb.HALO_TILE_TF32] * 2 + ["64x64x32_tc"]
    tf32_1x1 = dataclasses.replace(half_1x1, dtype="float32")
    assert [kb.choose_tensor_core(op, tf32_1x1) for op in OPS] == ["64x64x32_tc"] * 3
    assert kb.choose_fprop_tensor_core(tf32, "128x128x32_tc") is None  # forced: not built for it
    assert kb.choose_dgrad_tensor_core(tf32, "64x64x32_tc") == "64x64x32_tc"
    depthwise = problem(EDGE["depthwise"], "float16")
    assert [kb.choose_tensor_core(op, depthwise) for op in OPS] == [None] * 3  # 2 channels a group
    assert kb.choose_wgrad_tensor_core(half, "64x64x8_8x8") is None  # a forced SIMT tile
    assert kb.tensor_kind("float32", "highest") is None and kb.tensor_kind("float32", "tf32x3") == "tf32x3"
    assert kb.tensor_kind("float64", "highest") is None
    # The float32 path given a tensor-core tile that cannot take the problem runs it direct.
    for choose in (kb.choose_fprop, kb.choose_dgrad, kb.choose_wgrad):
        assert choose(conv_problem((1, 4, 5, 5), (8, 4, 3, 3), dtype="float64"), "64x64x32_tc") == "direct"


def test_a_gpu_without_tensor_cores_takes_the_float32_path():
    backend = kb.KernelBackend("emulate", np, kb._emulate_function, kb._no_device, True,
                               tensor_cores=lambda: False)
    p = problem(EDGE["odd_channels"], "float16")
    a = exact_case(p, "float16", seed=1)
    for op in OPS:
        assert run_tensor_op(backend, op, p, a, None) is None
    for source in kb.TENSOR_SOURCES.values():
        assert source not in kb.kernels_for("sm_75") and source in kb.kernels_for("sm_80")
    y = gc.conv2d(a["x"], a["w"], a["bias_k"], **conv_kwargs(EDGE["odd_channels"]), backend="emulate")
    np.testing.assert_array_equal(y.astype(np.float64), exact("fprop", p, a, "float16", None))


SASS_CASES = [("float16", "128x128x32_tc"), ("bfloat16", "64x64x32_tc"), ("tf32", "64x64x32_tc"),
              ("tf32x3", "64x64x32_tc")]


@needs_sass_tools
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("op", OPS)
def test_main_loop_runs_on_hmma_and_ldmatrix(op, arch):
    """NVRTC compiles the kernels as the cuda backend does; the main loop holds one HMMA per
    mma.sync (three a product in TF32x3), one LDSM per ldmatrix (TF32: B's, and wgrad's A, whose
    tile is k-contiguous too; fprop's and dgrad's A by direct loads), one barrier, and no spills."""
    from gpuconv import sass

    names = {kb.tensor_kernel_name(op, kind, tile): (kind, tile) for kind, tile in SASS_CASES}
    reports = sass.analyze([arch], list(names))
    assert sorted(r.kernel for r in reports) == sorted(names)
    for r in reports:
        kind, tile = names[r.kernel][0], kb.TENSOR_TILES[op][names[r.kernel][1]]
        mma_k, products = {"tf32": (8, 1), "tf32x3": (8, 3)}.get(kind, (16, 1))
        assert r.hmma == products * (tile.WM // 16) * (tile.WN // 8) * tile.BK // mma_k, r.kernel
        # ldmatrix.x4: one per 16 rows of A, one per 16 columns of B, each mma k-step (k16; TF32's
        # k8 of 4-byte elements: the same 16-byte rows)
        a_ldsm = tile.WM // 16 if op == "wgrad" or not kind.startswith("tf32") else 0
        ldsm = (a_ldsm + tile.WN // 16) * tile.BK // (mma_k if kind.startswith("tf32") else 16)
        assert (r.ldsm, r.spills, r.bar, r.threads) == (ldsm, 0, 1, tile.threads), r.kernel


@pytest.mark.parametrize("kind, kernel", [("float16", "128x128x32_tc"), ("tf32", "64x64x32_tc")])
@pytest.mark.parametrize("op", OPS)
def test_shared_memory_is_conflict_free(op, kind, kernel):
    """Every shared access of the kernel (staging stores, ldmatrix, TF32's direct fragment loads of
    a k-major A) takes the ideal wavefronts per request in ``gpuconv profile``: the padding
    spreads the rows."""
    from gpuconv import profile

    # fprop and dgrad: M = N·P·Q = 128 pixels, N = 128 channels; wgrad M = K = 128, N = C·R·S = 128
    shape = (dict(x=(2, 32, 8, 8), w=(128, 32, 3, 3), padding=1) if op != "wgrad"
             else dict(x=(2, 128, 8, 8), w=(128, 128, 1, 1)))
    p = problem(shape, dtype_of(kind))
    run = profile.run(op, p, kernel, precision=KINDS[kind][1])
    assert run.kernel == kernel
    shared = [row for row in run.rows if row["space"] == "shared"]
    direct = kind == "tf32" and op != "wgrad"  # fprop's and dgrad's TF32 A: k-major
    assert {(Path(row["file"]).name, row["kind"]) for row in shared} == (
        {("gemm_tc.cuh", "store"), ("mma.cuh", "load")} | ({("gemm_tc.cuh", "load")} if direct else set()))
    assert all(row["wavefronts"] == row["ideal"] for row in shared), shared


def test_profile_cli_takes_half_dtypes_and_precision(capsys):
    from gpuconv import profile

    for op in OPS:
        assert profile.main([op, "--dtype", "float16", "--shape", "1", "8", "4", "4", "16", "3", "3",
                             "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["kernel"] == "64x64x32_tc"
    assert profile.main(["fprop", "--dtype", "float64", "--precision", "tf32"]) == 2
    assert "precision='tf32' applies to float32 inputs only, got dtype float64" in capsys.readouterr().err
