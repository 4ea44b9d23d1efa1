"""The ``gpuconv`` command in a subprocess: demo --quick, info, selftest, bad arguments, --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuconv import cli

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPERIMENTS = ("seed004-numeric", "seed001-edge-kernel", "seed000-two-layers",
               "seed003-single-channel")


def gpuconv(*args, timeout=300) -> subprocess.CompletedProcess:
    """``python -m gpuconv ARGS`` from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "gpuconv", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run = gpuconv("demo", "--quick", "--backend", "numpy", "--out", str(out))
    return run, out


def test_demo_succeeds(demo):
    run, out = demo
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(out.resolve()) in run.stdout
    assert "seed 001" in run.stdout


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_demo_writes_a_real_picture(demo, name):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    path = demo[1] / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib_image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_demo_summaries(demo):
    out = demo[1]
    report = json.loads((out / "summary.json").read_text())
    assert report["backend"] == "numpy" and report["quick"] and report["ok"]
    assert [e["name"] for e in report["experiments"]] == list(EXPERIMENTS)
    assert all(e["ok"] and e["png"] == f"{e['name']}.png" for e in report["experiments"])
    markdown = (out / "summary.md").read_text()
    for name in EXPERIMENTS:
        assert f"({name}.png)" in markdown


def test_demo_numeric_example_matches_the_note(demo):
    numeric = json.loads((demo[1] / "summary.json").read_text())["experiments"][0]["metrics"]
    assert numeric["output"] == [[12, 12, 17], [10, 17, 19], [9, 6, 14]]
    assert numeric["kernel_gradient"][0][:2] == [15, 15]
    assert numeric["deconvolution_gradient"] == [[116] * 3] * 3


def test_demo_edge_kernel_is_learned_back(demo):
    edge = json.loads((demo[1] / "summary.json").read_text())["experiments"][1]["metrics"]
    assert edge["final_loss"] < 1e-7
    assert edge["kernel_allclose"] and edge["output_allclose"]
    assert 0 < edge["steps"] < 20_000


def test_demo_two_layers_beat_the_note(demo):
    two = json.loads((demo[1] / "summary.json").read_text())["experiments"][2]["metrics"]
    assert two["final_loss"] < two["seed_final_loss"]


def test_info_exits_0():
    run = gpuconv("info")
    assert run.returncode == 0, run.stderr
    for fact in ("NumPy", "CuPy", "NVRTC", "C++ compiler", "backend numpy"):
        assert fact in run.stdout


def test_selftest_on_numpy(tmp_path):
    run = gpuconv("selftest", "--backend", "numpy", "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "conv_transpose2d" in run.stdout and "FAIL" not in run.stdout
    report = json.loads((tmp_path / "selftest.json").read_text())
    assert report["ok"] and len(report["rows"]) == 12
    assert "NumPy" in report["environment"]
    assert "PASS" in (tmp_path / "selftest.md").read_text()


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    [],
    ["demo", "--seed", "not-a-number"],
    ["demo", "--backend", "opencl"],
    ["selftest", "--no-such-option"],
])
def test_bad_arguments_exit_2_with_usage(args):
    run = gpuconv(*args)
    assert run.returncode == 2
    assert "usage:" in run.stderr


def test_help():
    run = gpuconv("--help")
    assert run.returncode == 0
    for command in ("demo", "info", "bench", "selftest"):
        assert command in run.stdout


def test_main_returns_exit_codes_in_process(capsys):
    assert cli.main(["demo", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2


def test_bench_is_delegated(capsys):
    assert cli.main(["bench", "--help"]) == 0  # gpuconv.bench's own parser answers
    assert "--quick" in capsys.readouterr().out


def test_bench_quick_writes_table_json_and_chart(tmp_path):
    run = gpuconv("bench", "--quick", "--device", "cpu", "--impls", "numpy,naive", "--ops",
                  "fprop,dgrad", "--shapes", "seed000_3x3", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    (report,) = tmp_path.glob("cpu-*.json")
    records = json.loads(report.read_text())["results"]
    assert {(r["impl"], r["op"]) for r in records} == {
        (i, o) for i in ("numpy", "naive") for o in ("fprop", "dgrad")}
    for r in records:
        assert r["ms"] > 0 and r["gflops"] > 0 and r["max_rel_err"] < 1e-3, r
    assert "| fprop | numpy | seed000_3x3 |" in report.with_suffix(".md").read_text()
    assert report.with_suffix(".png").read_bytes().startswith(PNG_SIGNATURE)


# -- the demo's figures, in process: each experiment's Figure captured instead of saved ----------


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Every experiment of ``demo --quick`` on numpy, run in process: {name: (Result, Figure)}."""
    from gpuconv import demo as demo_module

    ctx = demo_module.Context("numpy", 0, True, tmp_path_factory.mktemp("figures"))
    captured = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_module, "_save", lambda fig, ctx, name: captured.setdefault(name, fig) and "")
    try:
        results = {e.__name__: e(ctx) for e in demo_module.EXPERIMENTS}
    finally:
        mp.undo()
    return {r.name: (r, captured[r.name]) for r in results.values()}


def test_seed004_title_says_what_the_picture_shows(figures):
    title = figures["seed004-numeric"][1]._suptitle.get_text()
    assert "im2col" not in title and "GEMM" not in title
    assert "kernel gradient" in title and "deconvolution" in title


def _images_by_title(fig) -> dict:
    return {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}


def test_seed003_target_and_learned_share_one_colour_scale(figures):
    images = _images_by_title(figures["seed003-single-channel"][1])
    target = next(im for t, im in images.items() if t.startswith("target"))
    learned = next(im for t, im in images.items() if t.startswith("learned"))
    assert target.get_clim() == learned.get_clim()
    lo, hi = target.get_clim()
    for im in (target, learned):  # the shared scale covers both pictures
        assert lo <= im.get_array().min() and im.get_array().max() <= hi
    assert any(t.startswith("learned − target") for t in images)


@pytest.mark.parametrize("name", ["seed000-two-layers", "seed003-single-channel"])
def test_loss_axis_ends_at_the_steps_run(figures, name):
    """The notes' reference points past the steps --quick runs do not stretch the step axis."""
    result, fig = figures[name]
    steps = result.metrics["steps"]
    loss_axes = [ax for ax in fig.axes if ax.get_xlabel() == "step"]
    assert loss_axes and all(ax.get_xlim()[1] <= 1.1 * steps for ax in loss_axes)
    legend = " ".join(t.get_text() for ax in loss_axes for t in ax.get_legend().get_texts())
    assert "the note" in legend


def test_seed003_relu_descends_cleanly(figures):
    """The learning rate is inside the stable range: the loss never rises."""
    metrics = figures["seed003-single-channel"][0].metrics
    relu = next(v for k, v in metrics.items() if k.startswith("relu"))
    assert relu["rising_steps"] == 0
    assert metrics["seed_relu_lr"] == 3e-5


def _last_bar_postfix(stderr: str, title: str) -> str:
    """The postfix (after the rate) the bar called ``title`` showed last."""
    lines = [s.strip() for s in stderr.replace("\r", "\n").split("\n") if s.startswith(title)]
    assert lines, f"no progress bar {title!r} in:\n{stderr}"
    return lines[-1].rsplit("step/s, ", 1)[1].rstrip("]")


def test_progress_bars_end_on_the_summary_loss(demo):
    """Each bar's last postfix is the quantity the summary reports, at its final value."""
    run, out = demo
    metrics = [e["metrics"] for e in json.loads((out / "summary.json").read_text())["experiments"]]
    edge, two, single = metrics[1], metrics[2], metrics[3]
    assert _last_bar_postfix(run.stderr, "seed 001") == f"½·MSE={edge['final_loss']:.2e}"
    assert _last_bar_postfix(run.stderr, "seed 000") == f"MSE={two['final_loss']:.3g}"
    for activation in ("relu", "sigmoid"):
        final = next(v for k, v in single.items() if k.startswith(activation))["final_loss"]
        assert _last_bar_postfix(run.stderr, f"seed 003: {activation}") == f"SSE={final:.3g}"
    summary = (out / "summary.md").read_text()
    assert f"{two['final_loss']:.3g} in {two['steps']} steps" in summary


def test_selftest_float32_error_is_the_ops_own():
    """float32 results are compared with the float64 reference on the same float32 inputs, so an
    exact op shows no error at all (not float32 rounding of its inputs)."""
    from gpuconv import selftest

    for op in ("relu", "relu_backward"):
        row = selftest.check("numpy", op)
        assert row.ok and row.error == {"float32": 0.0, "float64": 0.0}, row
    conv = selftest.check("numpy", "conv2d")
    assert 0 < conv.error["float32"] < selftest.TOLERANCE["float32"]
    header = selftest.table([conv]).splitlines()[0]
    assert "rel err float32" in header and "rel err float64" in header
    assert "same inputs" in selftest.ERROR_DEFINITION
