"""``gpuconv bench``: time fprop, dgrad and wgrad of every implementation on the named layers.

Each implementation runs in its own process (``python -m gpuconv.bench --worker IMPL``): NumPy's
BLAS threads and PyTorch's OpenMP threads fight over the cores when they share one (3× swings were
measured on a 2-core machine). Per case the worker checks the result once against the float64
reference (the same layer at batch 1), warms up, then reports the median of the repeats. On a GPU,
every repeat is timed with CUDA events after an L2 flush.

Implementations: ``numpy`` (gpuconv's NumPy backend), ``torch-cpu`` (PyTorch on all cores),
``naive`` (the seeds' per-pixel Python loops, tiny shapes only), and on a GPU ``cuda`` (gpuconv's
kernels), ``cudnn`` (PyTorch, ``cudnn.benchmark``) and ``im2col-cupy`` (im2col +
``cupy.matmul``). Shapes and batch sizes come from ``gpuconv/shapes.py``.

``--dtype`` (float32, float64, float16, bfloat16) and ``--precision`` (highest, tf32, tf32x3; the
TF32 ones for float32 only) apply to every implementation. gpuconv runs them as its API does.
cuDNN runs in the dtype, with ``torch.backends.cudnn.allow_tf32`` and
``torch.backends.cuda.matmul.allow_tf32`` True for 'tf32' and False otherwise; im2col-cupy's
``cupy.matmul`` takes TF32 for 'tf32' (``CUPY_TF32=1``). What an implementation cannot do as asked
it computes in float32 and says so in its record's ``computed_as`` (and the table's last column):
'tf32x3' on cuDNN and cuBLAS (they have no 3xTF32), any TF32 on the CPU libraries, a half type the
naive loops or a PyTorch CPU build do not take (computed in float32 and rounded once to the dtype,
as gpuconv's numpy backend does).

Output (in ``--out``): a table on stdout and in ``<device>-<date>.md``, a chart ``<device>-<date>.png``
and ``<device>-<date>.json`` (``<device>-<dtype>[-<precision>]-<date>`` for other than float32 at
'highest') with this schema (``gpuconv-bench/1``)::

    {"schema": "gpuconv-bench/1", "created": ISO-8601 time, "device_class": "cpu" | "gpu",
     "dtype": the inputs' and results' dtype, "precision": "highest" | "tf32" | "tf32x3",
     "baseline": implementation the ratios are taken against, "rounds": alternations kept,
     "machine": {"cpu", "cores", "platform", "python", "numpy", "blas": [threadpoolctl info], "torch",
                 "gpu", "cupy", ...},
     "results": [{"op", "impl", "shape", "problem": Conv2dProblem.describe(), "N", "flops", "bytes",
                  "dtype", "precision", "computed_as": null, or what the implementation computed
                  instead (above), "ms": median, "ms_min", "repeats", "gflops": flops / median,
                  "max_rel_err": vs the float64 reference on the same (rounded) inputs at batch 1,
                  "ratio": baseline ms / this ms (> 1: faster than the baseline; null without one)}],
     "skipped": [{"impl", "reason"}]}
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import info, reference
from .problem import HALF_DTYPES, OPS, PRECISIONS, SUPPORTED_DTYPES

CPU_IMPLS = ("numpy", "torch-cpu", "naive")
GPU_IMPLS = ("cuda", "cudnn", "im2col-cupy")
BASELINE = {"cpu": "torch-cpu", "gpu": "cudnn"}
TORCH_IMPLS = ("torch-cpu", "cudnn")
SCHEMA = "gpuconv-bench/1"
# Against the float64 reference on the same inputs, relative to the largest result. float32: sums
# of up to ~10^4 unit-normal products, each rounding ~6e-8 relative; 1e-3 is far above that and far
# below a wrong tap's error. The half types and TF32 add one rounding of 2^-11 (float16, TF32's
# inputs) or 2^-8 (bfloat16) relative to each result: ten times that.
MAX_REL_ERR = {"float64": 1e-3, "float32": 1e-3, "float16": 5e-3, "bfloat16": 4e-2}
TF32_MAX_REL_ERR = 5e-3


def max_rel_err(dtype: str, precision: str) -> float:
    return TF32_MAX_REL_ERR if precision == "tf32" else MAX_REL_ERR[dtype]


def numpy_dtype(dtype: str):
    """The NumPy dtype called ``dtype``: bfloat16 is ml_dtypes'."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


# -- the implementations (each runs inside its worker process) --------------------------------


@dataclass
class Impl:
    """An implementation in its worker: ``to_array`` (a NumPy array of the inputs, already in the
    dtype, to what ``run`` takes), ``run(p, op, x, w, dy)``, ``sync`` (None on the CPU) and
    ``computed_as``: None where it computes the dtype and precision asked for, else what it
    computes instead (the record's ``computed_as``)."""

    to_array: Callable
    run: Callable
    sync: Callable | None = None
    computed_as: str | None = None


def _in_float32(impl: Impl, dtype: str, why: str) -> Impl:
    """``impl`` fed float32 copies of half-type inputs, its float32 result rounded once to
    ``dtype``: as gpuconv's numpy backend computes the half types."""
    return Impl(lambda a: impl.to_array(a.astype(np.float32)),
                lambda p, op, *arrays: _rounded(impl.run(p, op, *arrays), dtype), impl.sync,
                f"float32, rounded once to {dtype} ({why})")


def _rounded(result, dtype: str):
    """A float32 result (NumPy, CuPy or torch) rounded to ``dtype``."""
    if hasattr(result, "detach"):
        import torch

        return result.to(getattr(torch, dtype))
    return result.astype(numpy_dtype(dtype))


def _no_tf32(precision: str, who: str) -> str | None:
    """What an implementation without TF32 computes at ``precision``, or None at 'highest'."""
    return None if precision == "highest" else f"float32: {who} has no {precision}"


def _gpuconv_impl(backend: str, dtype: str, precision: str) -> Impl:
    """gpuconv's ops through its API (the half types and TF32 as the API computes them)."""
    from . import api

    xp = np
    if backend == "cuda":
        import cupy as xp

    def run(p, op, x, w, dy):
        kw = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups,
                  precision=precision, backend=None if backend == "cuda" else backend)
        if op == "fprop":
            return api.conv2d(x, w, **kw)
        if op == "dgrad":
            return api.conv2d_input(p.x_shape, w, dy, **kw)
        return api.conv2d_weight(x, p.w_shape, dy, **kw)

    sync = xp.cuda.runtime.deviceSynchronize if backend == "cuda" else None
    return Impl(array_converter(xp), run, sync)


def array_converter(xp):
    """NumPy array -> an array of ``xp`` (numpy or cupy); bfloat16 crosses as its bits."""
    if xp is np:
        return np.asarray

    def to(a):
        return xp.asarray(a.view(np.uint16)).view(a.dtype) if a.dtype.name == "bfloat16" else xp.asarray(a)

    return to


def _torch_impl(device: str, dtype: str, precision: str) -> Impl:
    import torch
    import torch.nn.functional as F
    from torch.nn.grad import conv2d_input, conv2d_weight

    computed_as = None
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        computed_as = _no_tf32(precision, "PyTorch's CPU convolution")
    else:
        torch.backends.cudnn.benchmark = True
        # cuDNN in TF32 only when asked; 'tf32x3' has no cuDNN counterpart: float32.
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        if precision == "tf32x3":
            computed_as = _no_tf32(precision, "cuDNN")

    def to(a):  # via float32: torch.from_numpy takes no bfloat16; the values are exact in both
        return torch.from_numpy(a.astype(np.float32) if a.dtype.name in HALF_DTYPES else a).to(
            device=device, dtype=getattr(torch, a.dtype.name))

    def run(p, op, x, w, dy):
        # The benchmark layers pad symmetrically, as PyTorch's conv2d does.
        kw = dict(stride=p.stride, padding=(p.padding[0], p.padding[2]), dilation=p.dilation,
                  groups=p.groups)
        with torch.no_grad():
            if op == "fprop":
                return F.conv2d(x, w, **kw)
            if op == "dgrad":
                return conv2d_input(p.x_shape, w, dy, **kw)
            return conv2d_weight(x, p.w_shape, dy, **kw)

    sync = torch.cuda.synchronize if device == "cuda" else None
    impl = Impl(to, run, sync, computed_as)
    if device == "cpu" and dtype in HALF_DTYPES and not _torch_cpu_takes(torch, dtype):
        return _in_float32(impl, dtype, f"this PyTorch's CPU convolution takes no {dtype}")
    return impl


def _torch_cpu_takes(torch, dtype: str) -> bool:
    """Whether this PyTorch build's CPU convolution and its two gradients run in ``dtype``."""
    import torch.nn.functional as F
    from torch.nn.grad import conv2d_input, conv2d_weight

    x, w = (torch.ones(shape, dtype=getattr(torch, dtype)) for shape in ((1, 2, 4, 4), (2, 2, 3, 3)))
    try:
        y = F.conv2d(x, w)
        conv2d_input(x.shape, w, y)
        conv2d_weight(x, w.shape, y)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _naive_impl(dtype: str, precision: str) -> Impl:
    """The seeds' algorithm: Python loops over every output pixel and channel (groups=1)."""

    def run(p, op, x, w, dy):
        (sh, sw), (dh, dw) = p.stride, p.dilation
        t, b, l, r = p.padding
        xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
        y = np.zeros(p.y_shape, x.dtype)
        dxp = np.zeros_like(xp)
        dw_ = np.zeros(p.w_shape, x.dtype)
        for n in range(p.N):
            for k in range(p.K):
                for i in range(p.P):
                    for j in range(p.Q):
                        rows = slice(i * sh, i * sh + dh * (p.R - 1) + 1, dh)
                        cols = slice(j * sw, j * sw + dw * (p.S - 1) + 1, dw)
                        window = xp[n, :, rows, cols]
                        if op == "fprop":
                            y[n, k, i, j] = np.sum(window * w[k])
                        elif op == "dgrad":
                            dxp[n, :, rows, cols] += w[k] * dy[n, k, i, j]
                        else:
                            dw_[k] += window * dy[n, k, i, j]
        if op == "fprop":
            return y
        if op == "dgrad":
            return dxp[:, :, t : t + p.H, l : l + p.W]
        return dw_

    impl = Impl(np.asarray, run, None, _no_tf32(precision, "the naive loop"))
    if dtype in HALF_DTYPES:  # NumPy would sum each window in the half type
        return _in_float32(impl, dtype, "the naive loop sums in its inputs' dtype")
    return impl


def _im2col_cupy_impl(dtype: str, precision: str) -> Impl:
    """The textbook GPU baseline: an explicit im2col matrix and one cuBLAS product (groups=1)."""
    if precision == "tf32":  # read when CuPy is imported (this worker's first import of it)
        os.environ["CUPY_TF32"] = "1"
    import cupy as cp

    def windows(p):
        (sh, sw), (dh, dw) = p.stride, p.dilation
        for r in range(p.R):
            for s in range(p.S):
                yield r, s, (slice(r * dh, r * dh + sh * (p.P - 1) + 1, sh),
                             slice(s * dw, s * dw + sw * (p.Q - 1) + 1, sw))

    def im2col(p, x):
        t, b, l, r_ = p.padding
        xp = cp.pad(x, ((0, 0), (0, 0), (t, b), (l, r_)))
        cols = cp.empty((p.C, p.R, p.S, p.N, p.P, p.Q), x.dtype)
        for r, s, (rows, cs) in windows(p):
            cols[:, r, s] = xp[:, :, rows, cs].transpose(1, 0, 2, 3)
        return cols.reshape(p.C * p.R * p.S, -1)

    def run(p, op, x, w, dy):
        if op == "fprop":
            y = cp.matmul(w.reshape(p.K, -1), im2col(p, x))
            return y.reshape(p.K, p.N, p.P, p.Q).transpose(1, 0, 2, 3)
        dy_kn = dy.transpose(1, 0, 2, 3).reshape(p.K, -1)
        if op == "wgrad":
            return cp.matmul(dy_kn, im2col(p, x).T).reshape(p.w_shape)
        cols = cp.matmul(w.reshape(p.K, -1).T, dy_kn).reshape(p.C, p.R, p.S, p.N, p.P, p.Q)
        t, b, l, r_ = p.padding
        dxp = cp.zeros((p.N, p.C, p.H + t + b, p.W + l + r_), dy.dtype)
        for r, s, (rows, cs) in windows(p):  # col2im: add each tap's columns back
            dxp[:, :, rows, cs] += cols[:, r, s].transpose(1, 0, 2, 3)
        return dxp[:, :, t : t + p.H, l : l + p.W]

    impl = Impl(array_converter(cp), run, cp.cuda.runtime.deviceSynchronize,
                _no_tf32(precision, "cuBLAS") if precision == "tf32x3" else None)
    if dtype == "bfloat16":  # cupy.matmul's bfloat16 support varies with the CuPy version
        return _in_float32(impl, dtype, "cupy.matmul in float32")
    return impl


def _make_impl(name: str, dtype: str = "float32", precision: str = "highest") -> Impl:
    factories = {
        "numpy": lambda: _gpuconv_impl("numpy", dtype, precision),
        "torch-cpu": lambda: _torch_impl("cpu", dtype, precision),
        "naive": lambda: _naive_impl(dtype, precision),
        "cuda": lambda: _gpuconv_impl("cuda", dtype, precision),
        "cudnn": lambda: _torch_impl("cuda", dtype, precision),
        "im2col-cupy": lambda: _im2col_cupy_impl(dtype, precision),
    }
    return factories[name]()


def _as_float64(a) -> np.ndarray:
    """A NumPy, CuPy or torch result as a float64 NumPy array (NumPy has no torch.bfloat16)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    elif hasattr(a, "get"):
        a = a.get()
    return np.asarray(a, np.float64)


class _GpuTimer:
    """CUDA-event timing with the L2 cache flushed (overwritten) before each repeat."""

    def __init__(self):
        import cupy as cp

        self.cp = cp
        l2 = cp.cuda.Device().attributes.get("L2CacheSize", 64 << 20)
        self.scratch = cp.empty(2 * l2 // 4, cp.float32)

    def __call__(self, fn) -> float:
        self.scratch.fill(0)
        start, stop = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return self.cp.cuda.get_elapsed_time(start, stop) * 1e-3


def _cpu_time(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def worker(impl: str, device_class: str, shapes: list[str], ops: list[str], repeats: int,
           dtype: str = "float32", precision: str = "highest") -> int:
    """Time ``impl`` on every (shape, op) in ``dtype`` at ``precision``; print one JSON record per
    case on stdout."""
    from . import shapes as table
    try:
        implementation = _make_impl(impl, dtype, precision)
    except ImportError as e:
        print(json.dumps({"skipped": impl, "reason": f"not importable: {e}"}), flush=True)
        return 0
    run, to_array = implementation.run, implementation.to_array
    timer = _GpuTimer() if impl in GPU_IMPLS else (lambda fn: _cpu_time(fn, implementation.sync))
    rng = np.random.default_rng(0)
    typed = numpy_dtype(dtype)

    def inputs(p):  # unit normals rounded to the dtype: the reference sees the same values
        return [rng.standard_normal(s).astype(typed) for s in (p.x_shape, p.w_shape, p.y_shape)]

    for shape in shapes:
        p = table.layer_problem(shape, device_class, dtype)
        p1 = table.layer_problem(shape, device_class, dtype, batch=1)
        for op in ops:
            # Correctness, once: the same layer at batch 1 against the float64 reference on the
            # same (rounded) inputs.
            x1, w1, dy1 = inputs(p1)
            got = _as_float64(run(p1, op, *map(to_array, (x1, w1, dy1))))
            want = {"fprop": lambda: reference.fprop(p1, x1, w1),
                    "dgrad": lambda: reference.dgrad(p1, dy1, w1),
                    "wgrad": lambda: reference.wgrad(p1, x1, dy1)}[op]()
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            if not err <= max_rel_err(dtype, precision):
                raise AssertionError(f"{impl} {op} {shape} {dtype} {precision}: relative error "
                                     f"{err:.2e} (at most {max_rel_err(dtype, precision):g})")
            x, w, dy = map(to_array, inputs(p))
            timer(lambda: run(p, op, x, w, dy))  # warm-up (and cudnn.benchmark's search)
            times = sorted(timer(lambda: run(p, op, x, w, dy)) for _ in range(repeats))
            ms = 1e3 * float(np.median(times))
            print(json.dumps({
                "op": op, "impl": impl, "shape": shape, "problem": p.describe(), "N": p.N,
                "flops": p.flops(op), "bytes": p.bytes_moved(op), "dtype": dtype,
                "precision": precision, "computed_as": implementation.computed_as, "ms": ms,
                "ms_min": 1e3 * times[0], "repeats": repeats,
                "gflops": p.flops(op) / ms * 1e-6, "max_rel_err": err,
            }), flush=True)
    return 0


# -- the driver ---------------------------------------------------------------------------------


def machine_info(device_class: str) -> dict:
    facts = {"cpu": info.cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
             "python": platform.python_version(), "numpy": np.__version__,
             # Other processes on the machine disturb the timings: record how busy it was.
             "load_average_1_5_15min": list(os.getloadavg()),
             "torch": info.torch_version()}
    try:
        import threadpoolctl

        facts["blas"] = [{k: v for k, v in lib.items() if k != "filepath"}
                         for lib in threadpoolctl.threadpool_info()]
    except ImportError:
        facts["blas"] = "threadpoolctl not installed"
    if device_class == "gpu":
        facts.update(cupy=info.cupy_version(), **info.cuda_facts())
    return facts


def _run_worker(impl, args, shapes, ops, progress):
    """Run one implementation in a fresh process; yield its records as they arrive."""
    cmd = [sys.executable, "-m", "gpuconv.bench", "--worker", impl, "--device", args.device,
           "--shapes", ",".join(shapes), "--ops", ",".join(ops), "--repeats", str(args.repeats),
           "--dtype", args.dtype, "--precision", args.precision]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            record = json.loads(line)
            progress(record)
            yield record
    if proc.returncode:
        raise RuntimeError(f"the {impl} worker failed (exit {proc.returncode})")


def _with_ratios(results: list[dict], baseline: str) -> list[dict]:
    base = {(r["op"], r["shape"]): r["ms"] for r in results if r["impl"] == baseline}
    for r in results:
        b = base.get((r["op"], r["shape"]))
        r["ratio"] = b / r["ms"] if b else None
    return results


def format_table(results: list[dict]) -> str:
    """The Markdown table; a last column 'computed as' where an implementation computed other than
    the dtype and precision asked for (``computed_as``)."""
    notes = any(r.get("computed_as") for r in results)
    lines = ["| op | implementation | shape | ms | GFLOP/s | ratio |" + (" computed as |" if notes else ""),
             "|---|---|---|---:|---:|---:|" + ("---|" if notes else "")]
    for r in sorted(results, key=lambda r: (OPS.index(r["op"]), r["shape"], r["impl"])):
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['op']} | {r['impl']} | {r['shape']} | {r['ms']:.3f} | "
                     f"{r['gflops']:.1f} | {ratio} |" + (f" {r.get('computed_as') or ''} |" if notes else ""))
    return "\n".join(lines)


def geomean_ratios(results: list[dict], baseline: str) -> dict:
    """Per (impl, op): the geometric mean of the ratios over the shapes both ran."""
    out = {}
    for impl in sorted({r["impl"] for r in results} - {baseline}):
        for op in OPS:
            ratios = [r["ratio"] for r in results
                      if r["impl"] == impl and r["op"] == op and r["ratio"]]
            if ratios:
                out[f"{impl} {op}"] = float(np.exp(np.mean(np.log(ratios))))
    return out


def plot(results: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ops = [op for op in OPS if any(r["op"] == op for r in results)]
    impls = sorted({r["impl"] for r in results})
    shapes = list(dict.fromkeys(r["shape"] for r in results))
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(8, 0.7 * len(shapes) * len(impls) / 2),
                                                   3.2 * len(ops)), squeeze=False)
    width = 0.8 / len(impls)
    for ax, op in zip(axes[:, 0], ops):
        for i, impl in enumerate(impls):
            gf = {r["shape"]: r["gflops"] for r in results if r["op"] == op and r["impl"] == impl}
            xs = [j + i * width for j, s in enumerate(shapes) if s in gf]
            ax.bar(xs, [gf[s] for s in shapes if s in gf], width, label=impl)
        ax.set_ylabel(f"{op} GFLOP/s")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _one_of(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise SystemExit(f"gpuconv bench: unknown {what} {value!r}; choose from {list(allowed)}")
    return value


def check_dtype_precision(dtype: str, precision: str) -> tuple[str, str]:
    """``--dtype`` and ``--precision``, checked: a SystemExit naming the argument and its value,
    with the allowed values, as for the other arguments."""
    _one_of(dtype, SUPPORTED_DTYPES, "--dtype")
    _one_of(precision, PRECISIONS, "--precision")
    if precision != "highest" and dtype != "float32":
        raise SystemExit(f"gpuconv bench: --precision {precision} applies to --dtype float32 only, "
                         f"got --dtype {dtype}; with {dtype} choose --precision highest")
    if dtype == "bfloat16":
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            raise SystemExit("gpuconv bench: --dtype bfloat16 needs ml_dtypes, not installed: "
                             "pip install ml_dtypes") from None
    return dtype, precision


def _csv(text: str | None, allowed, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [t for t in text.split(",") if t]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"gpuconv bench: unknown {what} {unknown}; choose from {list(allowed)}")
    return items


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="gpuconv bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small shape set, 3 repeats")
    ap.add_argument("--ops", help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--shapes", help="comma-separated names from gpuconv/shapes.py")
    ap.add_argument("--impls", help=f"comma-separated subset of {','.join(CPU_IMPLS + GPU_IMPLS)}")
    ap.add_argument("--out", default="gpuconv-bench", help="folder for the JSON, table and chart")
    ap.add_argument("--device", choices=("cpu", "gpu"),
                    help="device class (batch size, implementations); default: gpu if present")
    ap.add_argument("--repeats", type=int, help="timed repeats per case (median reported)")
    ap.add_argument("--dtype", default="float32",
                    help=f"every implementation's dtype, one of {', '.join(SUPPORTED_DTYPES)} "
                         "(default float32; bfloat16 needs ml_dtypes)")
    ap.add_argument("--precision", default="highest",
                    help=f"float32 only: one of {', '.join(PRECISIONS)} (default highest). cuDNN "
                         "runs 'tf32' with allow_tf32 on and 'highest' and 'tf32x3' with it off "
                         "(it has no 3xTF32: the table says so)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the implementations this many times in turn and keep each case's "
                         "fastest median (evens out a busy machine)")
    ap.add_argument("--model", metavar="GPU", choices=sorted(_model_gpus()),
                    help="instead of timing: the performance model's table for GPU (one of "
                         f"{', '.join(sorted(_model_gpus()))}; MODELLED, not measured), written to "
                         "--out as model-GPU.md/.json")
    ap.add_argument("--results", default="bench/results",
                    help="--model: folder with the SASS analyzer's sass-<arch>.json and any GPU report "
                         "(default: bench/results)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def report_name(device: str, dtype: str, precision: str) -> str:
    """The report's file name before the date: the device class, then the dtype and precision
    where they are not float32 at 'highest' (so earlier reports keep their names)."""
    parts = [device] + ([dtype] if (dtype, precision) != ("float32", "highest") else []) + (
        [precision] if precision != "highest" else [])
    return "-".join(parts)


def _model_gpus():
    from .model import GPUS

    return GPUS


def model_report(gpu: str, shapes: list[str], results: Path, out: Path, dtype: str = "float32",
                 precision: str = "highest") -> int:
    """``--model``: the modelled table for ``shapes`` at the GPU batch, printed and written. The
    dtype and precision go to ``model.table`` where it takes them; where it does not, its rows are
    its own (and a line on stderr says so)."""
    from . import model

    takes = inspect.signature(model.table).parameters
    chosen = {k: v for k, v in dict(dtype=dtype, precision=precision).items() if k in takes}
    ignored = [f"--{k} {v}" for k, v in dict(dtype=dtype, precision=precision).items()
               if k not in takes and v not in ("float32", "highest")]
    if ignored:
        print(f"gpuconv bench --model: the model's table does not take {' or '.join(ignored)}: "
              "its rows are the dtypes it models", file=sys.stderr)
    text, rows = model.table(gpu, shapes, results, **chosen,
                             progress=lambda label: print(f"  modelling {label}", file=sys.stderr))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"model-{gpu}.md").write_text(text)
    (out / f"model-{gpu}.json").write_text(json.dumps(
        {"schema": "gpuconv-model/1", "gpu": gpu, "modelled": True, "rows": rows}, indent=1) + "\n")
    print(text)
    print(f"wrote {out / f'model-{gpu}.md'}, {out / f'model-{gpu}.json'}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from . import shapes as table
    args.device = args.device or ("gpu" if info.gpu_count() > 0 else "cpu")
    args.repeats = args.repeats or (3 if args.quick else 7)
    default_shapes = table.QUICK if args.quick else tuple(table.SHAPES)
    shapes = _csv(args.shapes, table.SHAPES, "shapes") or list(default_shapes)
    ops = _csv(args.ops, OPS, "ops") or list(OPS)
    check_dtype_precision(args.dtype, args.precision)
    if args.model:
        return model_report(args.model, shapes, Path(args.results), Path(args.out), args.dtype,
                            args.precision)
    if args.worker:
        return worker(args.worker, args.device, shapes, ops, args.repeats, args.dtype, args.precision)
    impls = _csv(args.impls, CPU_IMPLS + GPU_IMPLS, "implementations") or list(
        CPU_IMPLS if args.device == "cpu" else ("numpy",) + GPU_IMPLS)
    baseline = BASELINE[args.device]
    with_torch = [i for i in impls if i in TORCH_IMPLS]
    if with_torch and info.missing_modules(["torch"]):
        print(f"gpuconv bench: {', '.join(with_torch)} need PyTorch, not installed: pip install "
              "'gpuconv[torch]' (or choose --impls without them)", file=sys.stderr)
        return 2
    results, skipped = [], []
    # The naive loops time only the seeds' tiny shapes.
    impl_shapes = {i: [s for s in shapes if i != "naive" or s in table.TINY] for i in impls}
    total = args.rounds * len(ops) * sum(map(len, impl_shapes.values()))
    done = [0]

    def progress(record):
        done[0] += 1
        if "skipped" in record:
            print(f"  {record['skipped']}: skipped ({record['reason']})", file=sys.stderr)
            return
        print(f"[{done[0]:3d}/{total}] {record['impl']:>11s} {record['op']:5s} "
              f"{record['shape']:18s} {record['ms']:9.3f} ms {record['gflops']:7.1f} GFLOP/s",
              file=sys.stderr, flush=True)

    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for impl in impls:
            if not impl_shapes[impl]:
                continue
            for record in _run_worker(impl, args, impl_shapes[impl], ops, progress):
                if "skipped" in record:
                    skipped.append({"impl": record["skipped"], "reason": record["reason"]})
                    continue
                key = (record["impl"], record["op"], record["shape"])
                if key not in best or record["ms"] < best[key]["ms"]:
                    best[key] = record
    results = _with_ratios(list(best.values()), baseline)
    skipped = list({s["impl"]: s for s in skipped}.values())
    stamp = datetime.datetime.now().astimezone()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{report_name(args.device, args.dtype, args.precision)}-{stamp:%Y-%m-%d}"
    report = {"schema": SCHEMA, "created": stamp.isoformat(timespec="seconds"),
              "device_class": args.device, "dtype": args.dtype, "precision": args.precision,
              "baseline": baseline, "rounds": args.rounds,
              "machine": machine_info(args.device), "results": results, "skipped": skipped}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    text = format_table(results)
    geo = geomean_ratios(results, baseline)
    summary = "\n".join(f"- {k}: {v:.2f}× {baseline}" for k, v in geo.items())
    stem.with_suffix(".md").write_text(
        f"# gpuconv bench, {args.device}, {args.dtype}, precision {args.precision}, "
        f"{report['created']}\n\n"
        f"Machine: `{json.dumps(report['machine'])}`\n\n"
        f"ratio = {baseline} ms / this ms (> 1: faster than {baseline}).\n\n{text}\n\n"
        f"Geometric mean of the ratios over the shapes:\n\n{summary}\n")
    charted = plot(results, stem.with_suffix(".png"),
                   f"gpuconv bench ({args.device}, {args.dtype}, {args.precision})")
    print(text)
    print(f"\ngeometric mean ratio vs {baseline}:\n{summary}")
    print(f"\nwrote {stem}.json, {stem}.md" + (f", {stem}.png" if charted else
                                              " (no chart: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
