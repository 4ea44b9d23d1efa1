"""The README's promises: its example runs as written, and CI runs its set-up and test commands."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_readme_example_runs_and_its_shape_comments_are_true():
    code = blocks("python")[0]
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    for name, shape in re.findall(r"^(\w+) = .*# \(([\d, ]+)\)", code, re.M):
        assert scope[name].shape == tuple(int(v) for v in shape.split(",") if v.strip()), name


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in blocks("bash") if "pytest" in b).strip()
    setup = re.search(r"pip install '[^']+'", test_command).group(0)
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup in ci, f"CI does not run the README's set-up {setup!r}"
    assert re.search(r"^pytest -q\b.* tests$", ci, re.M), "CI does not run the README's tests"
    assert test_command.endswith("pytest -q tests")


def test_readme_main_job_is_gpuconv_demo():
    assert any(b.strip().endswith("gpuconv demo") for b in blocks("bash"))
