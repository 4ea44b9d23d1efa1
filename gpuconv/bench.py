"""``gpuconv bench``: time fprop, dgrad and wgrad of every implementation on the named layers.

Each implementation runs in its own process (``python -m gpuconv.bench --worker IMPL``): NumPy's
BLAS threads and PyTorch's OpenMP threads fight over the cores when they share one (3× swings were
measured on a 2-core machine). Per case the worker checks the result once against the float64
reference (the same layer at batch 1), warms up, then reports the median of the repeats. On a GPU,
every repeat is timed with CUDA events after an L2 flush.

Implementations: ``numpy`` (gpuconv's NumPy backend), ``torch-cpu`` (PyTorch on all cores),
``naive`` (the seeds' per-pixel Python loops, tiny shapes only), and on a GPU ``cuda`` (gpuconv's
kernels), ``cudnn`` (PyTorch, TF32 off, ``cudnn.benchmark``) and ``im2col-cupy`` (im2col +
``cupy.matmul``). Shapes and batch sizes come from ``gpuconv/shapes.py``.

Output (in ``--out``): a table on stdout and in ``<device>-<date>.md``, a chart ``<device>-<date>.png``
and ``<device>-<date>.json`` with this schema (``gpuconv-bench/1``)::

    {"schema": "gpuconv-bench/1", "created": ISO-8601 time, "device_class": "cpu" | "gpu",
     "baseline": implementation the ratios are taken against, "rounds": alternations kept,
     "machine": {"cpu", "cores", "platform", "python", "numpy", "blas": [threadpoolctl info], "torch",
                 "gpu", "cupy", ...},
     "results": [{"op", "impl", "shape", "problem": Conv2dProblem.describe(), "N", "flops", "bytes",
                  "ms": median, "ms_min", "repeats", "gflops": flops / median,
                  "max_rel_err": vs the reference at batch 1,
                  "ratio": baseline ms / this ms (> 1: faster than the baseline; null without one)}],
     "skipped": [{"impl", "reason"}]}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import info, reference
from .problem import OPS

CPU_IMPLS = ("numpy", "torch-cpu", "naive")
GPU_IMPLS = ("cuda", "cudnn", "im2col-cupy")
BASELINE = {"cpu": "torch-cpu", "gpu": "cudnn"}
TORCH_IMPLS = ("torch-cpu", "cudnn")
SCHEMA = "gpuconv-bench/1"
# float32 against the float64 reference: sums of up to ~10^4 unit-normal products, each rounding
# ~6e-8 relative; 1e-3 of the largest result is far above that and far below a wrong tap's error.
MAX_REL_ERR = 1e-3


# -- the implementations (each runs inside its worker process) --------------------------------


def _numpy_impl():
    from .backends.numpy_backend import BACKEND

    def run(p, op, x, w, dy):
        if op == "fprop":
            return BACKEND.fprop(p, x, w, None, None)
        if op == "dgrad":
            return BACKEND.dgrad(p, dy, w)
        return BACKEND.wgrad(p, x, dy)

    return np.asarray, run, None


def _torch_impl(device: str):
    import torch
    import torch.nn.functional as F
    from torch.nn.grad import conv2d_input, conv2d_weight

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def to(a):
        return torch.from_numpy(a).to(device)

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
    return to, run, sync


def _naive_impl():
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

    return np.asarray, run, None


def _cuda_impl():
    import cupy

    from .backends import get_backend

    backend = get_backend("cuda")

    def run(p, op, x, w, dy):
        if op == "fprop":
            return backend.fprop(p, x, w, None, None)
        if op == "dgrad":
            return backend.dgrad(p, dy, w)
        return backend.wgrad(p, x, dy)

    return cupy.asarray, run, cupy.cuda.runtime.deviceSynchronize


def _im2col_cupy_impl():
    """The textbook GPU baseline: an explicit im2col matrix and one cuBLAS product (groups=1)."""
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

    return cp.asarray, run, cp.cuda.runtime.deviceSynchronize


def _make_impl(name: str):
    factories = {
        "numpy": _numpy_impl,
        "torch-cpu": lambda: _torch_impl("cpu"),
        "naive": _naive_impl,
        "cuda": _cuda_impl,
        "cudnn": lambda: _torch_impl("cuda"),
        "im2col-cupy": _im2col_cupy_impl,
    }
    return factories[name]()


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    elif hasattr(a, "get"):
        a = a.get()
    return np.asarray(a)


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


def worker(impl: str, device_class: str, shapes: list[str], ops: list[str], repeats: int) -> int:
    """Time ``impl`` on every (shape, op); print one JSON record per case on stdout."""
    from . import shapes as table
    try:
        to_array, run, sync = _make_impl(impl)
    except ImportError as e:
        print(json.dumps({"skipped": impl, "reason": f"not importable: {e}"}), flush=True)
        return 0
    timer = _GpuTimer() if impl in GPU_IMPLS else (lambda fn: _cpu_time(fn, sync))
    rng = np.random.default_rng(0)
    for shape in shapes:
        p = table.layer_problem(shape, device_class)
        p1 = table.layer_problem(shape, device_class, batch=1)
        for op in ops:
            # Correctness, once: the same layer at batch 1 against the float64 reference.
            x1, w1, dy1 = (rng.standard_normal(s).astype(np.float32)
                           for s in (p1.x_shape, p1.w_shape, p1.y_shape))
            got = _as_numpy(run(p1, op, *map(to_array, (x1, w1, dy1))))
            want = {"fprop": lambda: reference.fprop(p1, x1, w1),
                    "dgrad": lambda: reference.dgrad(p1, dy1, w1),
                    "wgrad": lambda: reference.wgrad(p1, x1, dy1)}[op]()
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            if not err <= MAX_REL_ERR:
                raise AssertionError(f"{impl} {op} {shape}: relative error {err:.2e}")
            x, w, dy = (to_array(rng.standard_normal(s).astype(np.float32))
                        for s in (p.x_shape, p.w_shape, p.y_shape))
            timer(lambda: run(p, op, x, w, dy))  # warm-up (and cudnn.benchmark's search)
            times = sorted(timer(lambda: run(p, op, x, w, dy)) for _ in range(repeats))
            ms = 1e3 * float(np.median(times))
            print(json.dumps({
                "op": op, "impl": impl, "shape": shape, "problem": p.describe(), "N": p.N,
                "flops": p.flops(op), "bytes": p.bytes_moved(op), "ms": ms,
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
           "--shapes", ",".join(shapes), "--ops", ",".join(ops), "--repeats", str(args.repeats)]
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
    lines = ["| op | implementation | shape | ms | GFLOP/s | ratio |", "|---|---|---|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: (OPS.index(r["op"]), r["shape"], r["impl"])):
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['op']} | {r['impl']} | {r['shape']} | {r['ms']:.3f} | "
                     f"{r['gflops']:.1f} | {ratio} |")
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


def _model_gpus():
    from .model import GPUS

    return GPUS


def model_report(gpu: str, shapes: list[str], results: Path, out: Path) -> int:
    """``--model``: the modelled table for ``shapes`` at the GPU batch, printed and written."""
    from . import model

    text, rows = model.table(gpu, shapes, results,
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
    if args.model:
        return model_report(args.model, shapes, Path(args.results), Path(args.out))
    if args.worker:
        return worker(args.worker, args.device, shapes, ops, args.repeats)
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
    stem = out / f"{args.device}-{stamp:%Y-%m-%d}"
    report = {"schema": SCHEMA, "created": stamp.isoformat(timespec="seconds"),
              "device_class": args.device, "baseline": baseline, "rounds": args.rounds,
              "machine": machine_info(args.device), "results": results, "skipped": skipped}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    text = format_table(results)
    geo = geomean_ratios(results, baseline)
    summary = "\n".join(f"- {k}: {v:.2f}× {baseline}" for k, v in geo.items())
    stem.with_suffix(".md").write_text(
        f"# gpuconv bench, {args.device}, {report['created']}\n\n"
        f"Machine: `{json.dumps(report['machine'])}`\n\n"
        f"ratio = {baseline} ms / this ms (> 1: faster than {baseline}).\n\n{text}\n\n"
        f"Geometric mean of the ratios over the shapes:\n\n{summary}\n")
    charted = plot(results, stem.with_suffix(".png"), f"gpuconv bench ({args.device})")
    print(text)
    print(f"\ngeometric mean ratio vs {baseline}:\n{summary}")
    print(f"\nwrote {stem}.json, {stem}.md" + (f", {stem}.png" if charted else
                                              " (no chart: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
