"""``gpuconv selftest``: every op on every backend present, against the float64 reference.

Backends: ``numpy`` always, ``emulate`` when a C++ compiler is present, ``cuda`` when CuPy sees a
GPU (a backend that is present but broken fails the test; it is never skipped). Each op runs on a
small problem matrix (stride, padding, dilation, groups, unbatched input) in float32 and float64;
the error is max |result - reference| / max(1, max |reference|), the reference computed in float64
on the inputs as the op got them (rounded to its dtype), so it is the op's own error. On a GPU
the cuda results are also compared with PyTorch (cuDNN, TF32 off) when it is importable, and the
quick benchmark runs (gpuconv's kernels, cuDNN and im2col + cuBLAS).

The kernel matrix (always on cuda; on emulate with ``--every-kernel``) runs every kernel
configuration: each op's every kernel choice but 'auto' (``KERNEL_CHOICES`` of the kernel backend,
so a tile or tensor-core kernel added to its tables is run without a change here) in every dtype
and precision, fprop with each activation. The launches are recorded, and every template instance
of the backend's ``KERNELS`` table (those the device's architecture compiles) must have run at
least once, or the selftest fails naming the instances never run. With ``--pytest`` the GPU tests
run first (GPU_TESTS, pytest in a subprocess, its output in the report folder); the report gives
each part's seconds, so the whole check is known to fit the minutes a lent GPU is lent for.
Needs nothing but NumPy (and CuPy / PyTorch where present): it runs from a checkout with
``PYTHONPATH=.``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import api, backends, bench, info, reference
from .backends import kernel_backend as kb
from .problem import PRECISIONS, SUPPORTED_DTYPES, conv_problem, transpose_problem

# Reductions here are at most 64·16 = 1024 terms of unit normals: float32 sums err ~1e-6
# relative, float64 ~1e-15; one wrong tap errs ~1e-1. The bounds sit far from both. The half
# types add one rounding of the result, 2^-11 (float16) or 2^-8 (bfloat16) relative: twice that.
# 'tf32' is compared with the reference on TF32-rounded inputs (as the kernels round them), so
# only its float32 sums err; 'tf32x3' promises float32 accuracy.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-3, "bfloat16": 8e-3,
             "float32 tf32": 1e-5, "float32 tf32x3": 1e-5}
ROW_DTYPES = ("float32", "float64")  # the per-op rows; the kernel matrix runs every TOLERANCE key
# TOLERANCE key -> (dtype, precision)
DTYPE_PRECISIONS = {**{d: (d, "highest") for d in SUPPORTED_DTYPES},
                    **{f"float32 {pr}": ("float32", pr) for pr in PRECISIONS if pr != "highest"}}
ERROR_DEFINITION = ("rel err: max |result - reference| / max(1, max |reference|), the reference "
                    "computed in float64 on the same inputs, rounded to the column's dtype (and "
                    "for tf32 to TF32)")
# cuDNN may pick Winograd or FFT algorithms, whose float32 rounding is larger than a direct sum's
TORCH_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}

# name: x shape, w shape, conv2d keywords
CONV_PROBLEMS = {
    "3x3 pad 1": ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),
    "4x4 stride 2": ((3, 5, 8, 8), (6, 5, 4, 4), dict(stride=2)),
    "dilation 2, pad (2,0,1,3)": ((1, 2, 9, 8), (3, 2, 3, 2), dict(dilation=2, padding=(2, 0, 1, 3))),
    "groups 2, stride (2,3)": ((2, 6, 7, 9), (4, 3, 3, 3), dict(groups=2, stride=(2, 3), padding=1)),
    "depthwise, same": ((1, 4, 6, 7), (8, 1, 4, 3), dict(groups=4, padding="same")),
    "unbatched 1x1": ((3, 5, 5), (4, 3, 1, 1), {}),
    # channels that fill the 64×64 tiles, so the cuda run checks the tiled kernels too
    "64->64 3x3 pad 1": ((2, 64, 9, 9), (64, 64, 3, 3), dict(padding=1)),
}
# name: x shape (N, Cin, H, W), w shape (Cin, Cout/groups, R, S), conv_transpose2d keywords
TRANSPOSE_PROBLEMS = {
    "3x3 pad 1": ((2, 4, 5, 6), (4, 3, 3, 3), dict(padding=1)),
    "4x4 stride 2, output_padding 1": ((1, 3, 4, 3), (3, 2, 4, 4), dict(stride=2, output_padding=1)),
    "groups 2, dilation 2": ((2, 4, 5, 5), (4, 3, 3, 2), dict(groups=2, dilation=2, stride=(1, 2))),
    "64->64 4x4 stride 2": ((1, 64, 6, 6), (64, 64, 4, 4), dict(stride=2, padding=1)),
}
CONV_VARIANTS = {  # op label: (bias?, activation)
    "conv2d": (False, None),
    "conv2d +bias": (True, None),
    "conv2d +bias +relu": (True, "relu"),
    "conv2d +bias +sigmoid": (True, "sigmoid"),
}
OPS = (*CONV_VARIANTS, "conv2d_input", "conv2d_weight", "conv2d_bias", "conv_transpose2d",
       "relu", "relu_backward", "sigmoid", "sigmoid_backward")


@dataclass
class Row:
    """One (backend, op): the largest error over the problems, per dtype."""

    backend: str
    op: str
    problems: int = 0
    error: dict = field(default_factory=dict)  # dtype -> max relative error
    torch_error: dict = field(default_factory=dict)  # dtype -> vs PyTorch (cuda only)
    failure: str = ""

    @property
    def ok(self) -> bool:
        return (not self.failure and all(e <= TOLERANCE[d] for d, e in self.error.items())
                and all(e <= TORCH_TOLERANCE[d] for d, e in self.torch_error.items()))


def _relative_error(got, want) -> float:
    """ERROR_DEFINITION; infinite where the result has a NaN (or inf) the reference lacks: a NaN
    would otherwise compare as no error at all (max(0.0, nan) is 0.0)."""
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    diff = np.nan_to_num(np.abs(np.asarray(got, np.float64) - want), nan=np.inf)
    return float(diff.max(initial=0.0)) / scale


# -- the cases: (inputs, gpuconv call, reference call, PyTorch call or None) --------------------
# The calls close over the loop's variables: ``check`` makes them before the next case is built.
# The reference call takes the inputs as the op got them (rounded to the dtype under test), cast
# to float64: the error is then the op's own, not the rounding of its inputs.


def _batched(shape):
    return shape if len(shape) == 4 else (1, *shape)


def _conv_cases(op: str, rng, problems):
    """Every problem of ``op``: (inputs, call on gpuconv, float64 reference, PyTorch call). The
    gpuconv calls of the convolutions take ``precision=`` too."""
    for x_shape, w_shape, kw in problems.values():
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        p = conv_problem(_batched(x_shape), w_shape, dtype="float64", **kw)
        dy = rng.standard_normal(p.y_shape[4 - len(x_shape):])
        unbatch = (lambda a: a[0]) if len(x_shape) == 3 else (lambda a: a)
        x4 = x.reshape(p.x_shape)
        if op in CONV_VARIANTS:
            with_bias, act = CONV_VARIANTS[op]
            b = rng.standard_normal(p.K) if with_bias else None
            yield ((x, w, b), lambda x, w, b, be, **pr: api.conv2d(x, w, b, activation=act, backend=be,
                                                                   **kw, **pr),
                   lambda x, w, b: unbatch(reference.fprop(p, x.reshape(p.x_shape), w, b, act)),
                   lambda torch, x, w, b: _torch_conv(torch, p, x, w, b, act))
        elif op == "conv2d_input":
            yield ((w, dy), lambda w, dy, be, **pr: api.conv2d_input(x_shape, w, dy, backend=be, **kw,
                                                                     **pr),
                   lambda w, dy: unbatch(reference.dgrad(p, dy.reshape(p.y_shape), w)),
                   lambda torch, w, dy: _torch_grads(torch, p, x4, w, dy)[0].reshape(x_shape))
        elif op == "conv2d_weight":
            yield ((x, dy), lambda x, dy, be, **pr: api.conv2d_weight(x, w_shape, dy, backend=be, **kw,
                                                                      **pr),
                   lambda x, dy: reference.wgrad(p, x.reshape(p.x_shape), dy.reshape(p.y_shape)),
                   lambda torch, x, dy: _torch_grads(torch, p, x, w, dy)[1])
        elif op == "conv2d_bias":
            yield ((dy,), lambda dy, be: api.conv2d_bias(dy, backend=be),
                   lambda dy: reference.bias_grad(dy.reshape(p.y_shape)), None)


def _transpose_cases(rng, problems):
    for x_shape, w_shape, kw in problems.values():
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        p = transpose_problem(x_shape, w_shape, dtype="float64", **kw)
        b = rng.standard_normal(p.C)
        yield ((x, w, b), lambda x, w, b, be, **pr: api.conv_transpose2d(x, w, b, backend=be, **kw, **pr),
               lambda x, w, b: reference.dgrad(p, x, w, b),
               lambda torch, x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **kw))


def _elementwise_cases(op: str, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    x.flat[::7] = 0.0  # relu's kink
    dy = rng.standard_normal(x.shape)
    y = reference.activate(x, "sigmoid")
    cases = {
        "relu": ((x,), api.relu, lambda x: reference.activate(x, "relu")),
        "relu_backward": ((dy, x), api.relu_backward, reference.relu_backward),
        "sigmoid": ((x,), api.sigmoid, lambda x: reference.activate(x, "sigmoid")),
        "sigmoid_backward": ((dy, y), api.sigmoid_backward, reference.sigmoid_backward),
    }
    inputs, call, want = cases[op]
    yield inputs, lambda *a, be: call(*a, backend=be), want, None


def cases(op: str, rng, conv_problems=CONV_PROBLEMS, transpose_problems=TRANSPOSE_PROBLEMS):
    if op == "conv_transpose2d":
        return _transpose_cases(rng, transpose_problems)
    if op in ("relu", "relu_backward", "sigmoid", "sigmoid_backward"):
        return _elementwise_cases(op, rng)
    return _conv_cases(op, rng, conv_problems)


# -- PyTorch (cuDNN) ------------------------------------------------------------------------------


def _torch_padded(torch, p, x):
    t, b, l, r = p.padding
    return torch.nn.functional.pad(x, (l, r, t, b))


def _torch_conv(torch, p, x, w, b, activation):
    x4 = x.reshape(p.x_shape)
    y = torch.nn.functional.conv2d(_torch_padded(torch, p, x4), w, b, stride=p.stride,
                                   dilation=p.dilation, groups=p.groups)
    y = {"relu": torch.relu, "sigmoid": torch.sigmoid}.get(activation, lambda a: a)(y)
    return y.reshape(y.shape[4 - x.dim():])


def _torch_grads(torch, p, x, w, dy):
    """(dx, dw) of conv2d by PyTorch's autograd: cuDNN's backward-data and backward-filter."""
    x, w = (torch.as_tensor(a, dtype=dy.dtype, device=dy.device).requires_grad_() for a in (x, w))
    x = x.reshape(p.x_shape)
    y = torch.nn.functional.conv2d(_torch_padded(torch, p, x), w, stride=p.stride,
                                   dilation=p.dilation, groups=p.groups)
    return torch.autograd.grad(y, (x, w), dy.reshape(p.y_shape))


def _cuda_torch():
    """PyTorch with CUDA and TF32 off, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch


# -- the kernel matrix: every kernel configuration -------------------------------------------------

# The kernel matrix's ops per kernel op (fprop with every activation: each is its own template
# instance), on problems that fill 64×64 tiles (dgrad's strided one: four stride phases).
MATRIX_OPS = {"fprop": ("conv2d +bias", "conv2d +bias +relu", "conv2d +bias +sigmoid"),
              "dgrad": ("conv2d_input", "conv_transpose2d"), "wgrad": ("conv2d_weight",)}
# The matrix's problems reach every staging of the tensor-core kernels (kernel_backend's
# tensor_staging): channels a multiple of 32 (tap-major), 1×1 with 8×8 images (tap-major with
# 16-byte loads of fprop's w and wgrad's dy; 256 pixels, so TF32's wgrad splits and goes through
# wgrad_tensor_reduce), 40 in, 48 out (neither: element by element), and 3×3 taps on images of
# even width (the halo tile of fprop and of dgrad at stride 1: kernel_backend.halo_fits; 9×9:
# wgrad's tap-major staging without 16-byte loads, and its halo tile's 2-byte loads, 'halo_odd';
# stride 2 on 28×28: wgrad's halo tile with three units a thread, 'halo_wide').
MATRIX_PROBLEMS = ({"64->64 3x3 pad 1": CONV_PROBLEMS["64->64 3x3 pad 1"],
                    "64->64 3x3 pad 1 8x8": ((2, 64, 8, 8), (64, 64, 3, 3), dict(padding=1)),
                    "64->64 1x1": ((4, 64, 8, 8), (64, 64, 1, 1), {}),
                    "40->48 3x3 pad 1": ((2, 40, 9, 9), (48, 40, 3, 3), dict(padding=1)),
                    "64->64 3x3 s2 28x28": ((2, 64, 28, 28), (64, 64, 3, 3), dict(stride=2, padding=1))},
                   {"64->64 4x4 stride 2": TRANSPOSE_PROBLEMS["64->64 4x4 stride 2"],
                    "40->48 3x3 stride 2": ((1, 40, 5, 5), (40, 48, 3, 3), dict(stride=2, padding=1))})
COVERAGE_OP = "kernel instances run"


def kernel_choices() -> list[tuple[str, str]]:
    """(op, kernel) for every kernel choice of the kernel backend's KERNEL_CHOICES but 'auto':
    'direct', every SIMT tile, every tensor-core tile, whatever the tables hold."""
    return [(op, kernel) for op, choices in kb.KERNEL_CHOICES.items()
            for kernel in choices if kernel != "auto"]


def expected_instances(backend: str) -> set[tuple[str, str]]:
    """(source file, name expression) of every template instance ``backend`` can launch: the
    KERNELS table, on cuda without the sources the device's architecture does not compile."""
    table = kb.KERNELS
    if backend == "cuda":
        import cupy

        table = kb.kernels_for(f"sm_{int(cupy.cuda.Device().compute_capability)}")
    return {(f, name) for f, names in table.items() for name in names}


def _kernel_backend(backend: str, **kernels):
    """The cuda or emulate backend object with these ``*_kernel`` choices forced."""
    return {"cuda": kb.cuda_backend, "emulate": kb.emulate_backend}[backend](**kernels)


def _recording(backend_object, launched: set):
    """A copy of a kernel backend object that adds each (file, name expression) it launches to
    ``launched``."""
    recording = copy.copy(backend_object)
    get_function = backend_object._get_function

    def record(filename, name_expression):
        launched.add((filename, name_expression))
        return get_function(filename, name_expression)

    recording._get_function = record
    return recording


@contextlib.contextmanager
def _serving(backend_object):
    """Meanwhile gpuconv's ops for the backend named ``backend_object.name`` run on that object
    (a recording, kernel-forcing copy): the ops' own dispatch then runs what it would run."""
    original = backends.get_backend
    backends.get_backend = lambda name: backend_object if name == backend_object.name else original(name)
    try:
        yield
    finally:
        backends.get_backend = original


def kernel_matrix(backend: str, launched: set, choices=None, problems=MATRIX_PROBLEMS) -> list[Row]:
    """A row per (op, kernel choice) of ``choices`` (default ``kernel_choices()``), each run in
    every TOLERANCE dtype and precision on ``problems`` with that kernel forced; the kernel
    instances launched are added to ``launched``."""
    rows = []
    for op, kernel in choices or kernel_choices():
        forced = _recording(_kernel_backend(backend, **{f"{op}_kernel": kernel}), launched)
        with _serving(forced):
            for matrix_op in MATRIX_OPS[op]:
                row = Row(backend, f"{matrix_op} [{kernel}]")
                for label in TOLERANCE:
                    _errors(row, backend, matrix_op, label, problems)
                rows.append(row)
    return rows


def coverage_row(backend: str, launched: set) -> Row:
    """Fails naming every instance of ``expected_instances`` that no check launched."""
    expected = expected_instances(backend)
    missing = sorted(expected - launched)
    row = Row(backend, COVERAGE_OP, problems=len(expected & launched))
    if missing:
        row.failure = (f"{len(missing)} of {len(expected)} never run: "
                       + ", ".join(f"{f}: {name}" for f, name in missing))
    return row


def check_backend(backend: str, every_kernel: bool, torch=None) -> list[Row]:
    """Every op's row on ``backend``; on a kernel backend with ``every_kernel`` also the kernel
    matrix and the coverage row (every instance of KERNELS run)."""
    if backend not in ("cuda", "emulate"):
        return [check(backend, op) for op in OPS]
    launched: set = set()
    with _serving(_recording(backends.get_backend(backend), launched)):
        rows = [check(backend, op, torch) for op in OPS]
    if every_kernel:
        rows += kernel_matrix(backend, launched)
        rows.append(coverage_row(backend, launched))
    return rows


# -- running --------------------------------------------------------------------------------------


def backends_present() -> list[str]:
    present = ["numpy"]
    if info.host_compiler_path():
        present.append("emulate")
    if info.gpu_count():
        present.append("cuda")
    return present


def _array_module(backend: str):
    if backend == "cuda":
        import cupy

        return cupy
    return np


def _errors(row: Row, backend: str, op: str, label: str, problems=(), torch=None) -> bool:
    """Run ``op`` on ``backend`` over its problems (``cases``; ``problems``: their arguments) in
    the dtype and precision of TOLERANCE key ``label``; record the largest error in ``row``, or
    the failure (then return False)."""
    dtype, precision = DTYPE_PRECISIONS[label]
    xp = _array_module(backend)
    to_backend = bench.array_converter(xp)
    rng = np.random.default_rng(0)
    extra = {} if precision == "highest" else {"precision": precision}
    for count, (inputs, call, want, torch_call) in enumerate(cases(op, rng, *problems), 1):
        row.problems = max(row.problems, count)
        typed = [None if a is None else np.asarray(a).astype(bench.numpy_dtype(dtype)) for a in inputs]
        try:
            got = call(*[None if a is None else to_backend(a) for a in typed], be=backend, **extra)
            got = got.get() if xp is not np else got
        except Exception as e:
            row.failure = "; ".join(filter(None, (row.failure, f"{label}: {info.error_line(e)}")))
            return False
        # The reference sees the inputs as the kernels do: TF32-rounded at 'tf32' (all but the
        # bias, the third input where there is one: the epilogue adds it in float32).
        exact = [None if a is None else
                 (api.round_to_tf32(np, a) if precision == "tf32" and i != 2 else a).astype(np.float64)
                 for i, a in enumerate(typed)]
        row.error[label] = max(row.error.get(label, 0.0), _relative_error(got, want(*exact)))
        if torch is not None and torch_call is not None:
            as_torch = [None if a is None else torch.as_tensor(a, device="cuda") for a in typed]
            theirs = torch_call(torch, *as_torch).detach().cpu().numpy()
            row.torch_error[label] = max(row.torch_error.get(label, 0.0), _relative_error(got, theirs))
    return True


def check(backend: str, op: str, torch=None) -> Row:
    """One op on ``backend`` over every problem, in ROW_DTYPES (on cuda also against PyTorch)."""
    row = Row(backend, op)
    for dtype in ROW_DTYPES:
        if not _errors(row, backend, op, dtype, torch=torch):
            break
    return row


def _cell(errors: dict, dtype: str) -> str:
    return f"{errors[dtype]:.1e}" if dtype in errors else "-"


def table(rows: list[Row], markdown: bool = False) -> str:
    """The rows, a column per dtype (and precision) any row has, in TOLERANCE's order."""
    dtypes = [d for d in TOLERANCE if any(d in r.error for r in rows)]
    torch_dtypes = [d for d in TOLERANCE if any(d in r.torch_error for r in rows)]
    head = ["backend", "op", "problems", *(f"rel err {d}" for d in dtypes),
            *(f"vs torch {d}" for d in torch_dtypes), "status"]
    body = []
    for r in rows:
        cells = [r.backend, r.op, str(r.problems), *(_cell(r.error, d) for d in dtypes),
                 *(_cell(r.torch_error, d) for d in torch_dtypes)]
        cells.append("ok" if r.ok else f"FAIL {r.failure}".strip())
        body.append(cells)
    if markdown:
        lines = [head, ["---"] * len(head), *body]
        return "\n".join("| " + " | ".join(c) + " |" for c in lines)
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]
                     for cells in [head, *body])


# The tests that need a GPU (each skips without one), run by ``selftest --pytest``.
GPU_TESTS = ("tests/test_cuda.py", "tests/test_cuda_setup.py", "tests/test_subnormals.py")


def _pytest(out: Path | None) -> str:
    """GPU_TESTS in a subprocess (from the checkout: tests/ is beside the package); its outcome."""
    root = Path(__file__).resolve().parent.parent
    if not (root / GPU_TESTS[0]).is_file():
        return f"not run: no {GPU_TESTS[0]} beside the package (run from a checkout)"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15",
           *GPU_TESTS]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pytest.txt").write_text(run.stdout + run.stderr)
    summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
    return f"{'passed' if run.returncode == 0 else 'FAILED'}: {summary}"


def _bench(out: Path | None) -> str:
    """The quick benchmark of the GPU implementations (GPU only); its outcome in words."""
    argv = ["--quick", "--device", "gpu", "--impls", ",".join(bench.GPU_IMPLS)] + (
        ["--out", str(out / "bench")] if out else [])
    try:
        code = bench.main(argv)
    except Exception as e:
        return f"failed: {info.error_line(e)}"
    return f"gpuconv bench {' '.join(argv)}: exit {code}"


def write_report(out: Path, rows: list[Row], facts: dict, bench_outcome: str | None,
                 pytest_outcome: str | None = None, seconds: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ok = all(r.ok for r in rows)
    env = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    text = (f"# gpuconv selftest: {'PASS' if ok else 'FAIL'}\n\n{env}\n\n"
            f"{ERROR_DEFINITION}; tolerance "
            + ", ".join(f"{v:g} ({k})" for k, v in TOLERANCE.items()) + "; against "
            f"PyTorch {TORCH_TOLERANCE['float32']:g}, {TORCH_TOLERANCE['float64']:g}.\n\n"
            f"{table(rows, markdown=True)}\n")
    if bench_outcome:
        text += f"\nBenchmark: {bench_outcome}\n"
    if pytest_outcome:
        text += f"\nGPU tests ({', '.join(GPU_TESTS)}; output in pytest.txt): {pytest_outcome}\n"
    if seconds:
        text += "\nSeconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "\n"
    (out / "selftest.md").write_text(text)
    report = dict(ok=ok, environment=facts, tolerance=TOLERANCE, torch_tolerance=TORCH_TOLERANCE,
                  benchmark=bench_outcome, gpu_tests=pytest_outcome, seconds=seconds,
                  rows=[dict(asdict(r), ok=r.ok) for r in rows])
    (out / "selftest.json").write_text(json.dumps(report, indent=2) + "\n")


def main(args) -> int:
    backends = args.backend or backends_present()
    facts = info.collect(check_backends=False)
    for key in ("Python", "NumPy", "CuPy", "CUDA runtime", "CUDA driver", "device", "PyTorch"):
        print(f"{key}: {facts[key]}")
    seconds, start = {}, time.perf_counter()
    pytest_outcome = None
    if args.pytest:  # first: it compiles every kernel instance into the disk cache the rest reuse
        print(f"running {' '.join(GPU_TESTS)} ...", file=sys.stderr, flush=True)
        pytest_outcome = _pytest(args.out)
        seconds["GPU tests"] = time.perf_counter() - start
        print(f"GPU tests: {pytest_outcome}")
    torch = _cuda_torch() if "cuda" in backends else None
    rows = []
    for backend in backends:
        print(f"checking {backend} ...", file=sys.stderr, flush=True)
        begin = time.perf_counter()
        every_kernel = backend == "cuda" or getattr(args, "every_kernel", False)
        rows += check_backend(backend, every_kernel, torch if backend == "cuda" else None)
        seconds[f"selftest {backend}"] = time.perf_counter() - begin
    print(table(rows))
    print(f"({ERROR_DEFINITION})")
    bench_outcome = None
    if "cuda" in backends:
        begin = time.perf_counter()
        bench_outcome = _bench(args.out)
        seconds["benchmark"] = time.perf_counter() - begin
        print(f"benchmark: {bench_outcome}")
    seconds["total"] = time.perf_counter() - start
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if args.out:
        write_report(args.out, rows, facts, bench_outcome, pytest_outcome, seconds)
        print(f"report: {args.out / 'selftest.md'}, {args.out / 'selftest.json'}")
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed "
          f"({', '.join(backends)})")
    return 1 if failed or (pytest_outcome and not pytest_outcome.startswith("passed")) else 0
