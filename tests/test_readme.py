"""The README's first lines are the two commands a new user runs; CI must run exactly the second."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    block = lines[start + 1 : lines.index("```", start + 1)]
    return [ln.split("#", 1)[0].strip() for ln in block if ln.strip()]


def test_readme_starts_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].startswith("pip install .") and "raysearch run" in cmds[0]
    assert cmds[1].startswith('pip install ".[test]"') and "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = _readme_commands()[1]
    assert any(ln.strip() == test_cmd for ln in ci), (test_cmd, ci)


def test_test_modules_have_unique_basenames():
    # tests/ has no __init__.py files, so pytest imports test modules by basename: two files
    # with the same name in different folders fail collection on a clean checkout.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, dupes
