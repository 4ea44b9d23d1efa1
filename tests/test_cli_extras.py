"""A newcomer without the extras: ``gpuconv demo`` without [demo] and ``gpuconv bench`` without
[torch] say in one line what to install and exit 2; ``gpuconv info`` lists the extras present."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from gpuconv import cli, info


def test_demo_without_the_demo_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert cli.main(["demo", "--quick", "--backend", "numpy", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "gpuconv demo needs matplotlib, not installed: pip install 'gpuconv[demo]'\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("device, impls", [("cpu", []), ("cpu", ["--impls", "numpy,torch-cpu"])])
def test_bench_without_pytorch_says_what_to_install(monkeypatch, capsys, tmp_path, device, impls):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert cli.main(["bench", "--quick", "--device", device, *impls, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("gpuconv bench: torch-cpu need PyTorch, not installed: pip install "
                   "'gpuconv[torch]' (or choose --impls without them)\n")


def test_missing_modules_looks_modules_up():
    assert info.missing_modules(["numpy", "no_such_module_here"]) == ["no_such_module_here"]


def test_info_lists_the_extras(monkeypatch):
    installed = {"matplotlib", "tqdm", "cuda-bindings"}
    monkeypatch.setattr(info, "_installed", lambda d: d in installed)
    status = info.extras_status()
    assert status.startswith("present: demo; missing: cuda12 (no cupy-cuda12x), cuda13 (no cupy-cuda13x), "
                             "torch (no torch), nvrtc (no nvidia-cuda-nvrtc), ")
    assert info.collect(check_backends=False)["extras"] == status


def test_the_extras_table_follows_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert set(info.EXTRAS) == set(extras)
    for extra, requirements in extras.items():
        names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requirements}
        assert set(info.EXTRAS[extra]) <= names, extra
