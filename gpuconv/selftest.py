"""``gpuconv selftest``: every op on every backend present, against the float64 reference.

Backends: ``numpy`` always, ``emulate`` when a C++ compiler is present, ``cuda`` when CuPy sees a
GPU (a backend that is present but broken fails the test; it is never skipped). Each op runs on a
small problem matrix (stride, padding, dilation, groups, unbatched input) in float32 and float64;
the error is max |result - reference| / max(1, max |reference|), the reference computed in float64
on the inputs as the op got them (rounded to its dtype), so it is the op's own error. On a GPU
the cuda results are also compared with PyTorch (cuDNN, TF32 off) when it is importable, and the
quick benchmark runs (gpuconv's kernels, cuDNN and im2col + cuBLAS). With ``--pytest`` the GPU tests
run first (GPU_TESTS, pytest in a subprocess, its output in the report folder); the report gives
each part's seconds, so the whole check is known to fit the minutes a lent GPU is lent for.
Needs nothing but NumPy (and CuPy / PyTorch where present): it runs from a checkout with
``PYTHONPATH=.``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import api, bench, info, reference
from .problem import conv_problem, transpose_problem

# Reductions here are at most 64·9 = 576 terms of unit normals: float32 sums err ~1e-6 relative,
# float64 ~1e-15; one wrong tap errs ~1e-1. The bounds sit far from both.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
ERROR_DEFINITION = ("rel err: max |result - reference| / max(1, max |reference|), the reference "
                    "computed in float64 on the same inputs, rounded to the column's dtype")
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
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return float(np.abs(np.asarray(got, np.float64) - want).max(initial=0.0)) / scale


# -- the cases: (inputs, gpuconv call, reference call, PyTorch call or None) --------------------
# The calls close over the loop's variables: ``check`` makes them before the next case is built.
# The reference call takes the inputs as the op got them (rounded to the dtype under test), cast
# to float64: the error is then the op's own, not the rounding of its inputs.


def _batched(shape):
    return shape if len(shape) == 4 else (1, *shape)


def _conv_cases(op: str, rng):
    """Every problem of ``op``: (inputs, call on gpuconv, float64 reference, PyTorch call)."""
    for x_shape, w_shape, kw in CONV_PROBLEMS.values():
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        p = conv_problem(_batched(x_shape), w_shape, dtype="float64", **kw)
        dy = rng.standard_normal(p.y_shape[4 - len(x_shape):])
        unbatch = (lambda a: a[0]) if len(x_shape) == 3 else (lambda a: a)
        x4 = x.reshape(p.x_shape)
        if op in CONV_VARIANTS:
            with_bias, act = CONV_VARIANTS[op]
            b = rng.standard_normal(p.K) if with_bias else None
            yield ((x, w, b), lambda x, w, b, be: api.conv2d(x, w, b, activation=act, backend=be, **kw),
                   lambda x, w, b: unbatch(reference.fprop(p, x.reshape(p.x_shape), w, b, act)),
                   lambda torch, x, w, b: _torch_conv(torch, p, x, w, b, act))
        elif op == "conv2d_input":
            yield ((w, dy), lambda w, dy, be: api.conv2d_input(x_shape, w, dy, backend=be, **kw),
                   lambda w, dy: unbatch(reference.dgrad(p, dy.reshape(p.y_shape), w)),
                   lambda torch, w, dy: _torch_grads(torch, p, x4, w, dy)[0].reshape(x_shape))
        elif op == "conv2d_weight":
            yield ((x, dy), lambda x, dy, be: api.conv2d_weight(x, w_shape, dy, backend=be, **kw),
                   lambda x, dy: reference.wgrad(p, x.reshape(p.x_shape), dy.reshape(p.y_shape)),
                   lambda torch, x, dy: _torch_grads(torch, p, x, w, dy)[1])
        elif op == "conv2d_bias":
            yield ((dy,), lambda dy, be: api.conv2d_bias(dy, backend=be),
                   lambda dy: reference.bias_grad(dy.reshape(p.y_shape)), None)


def _transpose_cases(rng):
    for x_shape, w_shape, kw in TRANSPOSE_PROBLEMS.values():
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        p = transpose_problem(x_shape, w_shape, dtype="float64", **kw)
        b = rng.standard_normal(p.C)
        yield ((x, w, b), lambda x, w, b, be: api.conv_transpose2d(x, w, b, backend=be, **kw),
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


def cases(op: str, rng):
    if op == "conv_transpose2d":
        return _transpose_cases(rng)
    if op in ("relu", "relu_backward", "sigmoid", "sigmoid_backward"):
        return _elementwise_cases(op, rng)
    return _conv_cases(op, rng)


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


# -- running --------------------------------------------------------------------------------------


def backends_present() -> list[str]:
    present = ["numpy"]
    if info.host_compiler_path():
        present.append("emulate")
    if info.gpu_count():
        present.append("cuda")
    return present


def check(backend: str, op: str, torch=None) -> Row:
    row = Row(backend, op)
    xp = np
    if backend == "cuda":
        import cupy as xp
    for dtype in TOLERANCE:
        rng = np.random.default_rng(0)
        for inputs, call, want, torch_call in cases(op, rng):
            row.problems += dtype == "float32"
            typed = [None if a is None else np.asarray(a, dtype) for a in inputs]
            try:
                got = call(*[None if a is None else xp.asarray(a) for a in typed], be=backend)
                got = got.get() if xp is not np else got
            except Exception as e:
                row.failure = info.error_line(e)
                return row
            exact = [None if a is None else a.astype(np.float64) for a in typed]
            row.error[dtype] = max(row.error.get(dtype, 0.0), _relative_error(got, want(*exact)))
            if torch is not None and torch_call is not None:
                as_torch = [None if a is None else torch.as_tensor(a, device="cuda") for a in typed]
                theirs = torch_call(torch, *as_torch).detach().cpu().numpy()
                row.torch_error[dtype] = max(row.torch_error.get(dtype, 0.0),
                                             _relative_error(got, theirs))
    return row


def _cell(errors: dict, dtype: str) -> str:
    return f"{errors[dtype]:.1e}" if dtype in errors else "-"


def table(rows: list[Row], markdown: bool = False) -> str:
    with_torch = any(r.torch_error for r in rows)
    head = ["backend", "op", "problems", "rel err float32", "rel err float64"]
    if with_torch:
        head += ["vs torch f32", "vs torch f64"]
    head.append("status")
    body = []
    for r in rows:
        cells = [r.backend, r.op, str(r.problems), _cell(r.error, "float32"), _cell(r.error, "float64")]
        if with_torch:
            cells += [_cell(r.torch_error, "float32"), _cell(r.torch_error, "float64")]
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
            f"{TOLERANCE['float32']:g} (float32), {TOLERANCE['float64']:g} (float64); against "
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
        rows += [check(backend, op, torch if backend == "cuda" else None) for op in OPS]
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
