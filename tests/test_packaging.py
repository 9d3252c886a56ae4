"""Packaging: one ``hwlat`` import namespace, every package folder mapped into it, no path hacks."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    """Every package the mapping should hold: dotted name -> folder with an __init__.py."""
    found = {}
    for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert set(_package_folders()) == listed


def test_every_package_says_in_its_first_line_what_it_holds() -> None:
    for name, folder in _package_folders().items():
        text = (folder / "__init__.py").read_text()
        match = re.match(r'"""(.+)', text)
        assert match and len(match.group(1).strip()) > 10, f"{name}/__init__.py needs a one-line docstring"


def test_no_source_edits_sys_path() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if ".venv" not in p.parts and p.name != Path(__file__).name and "sys.path." in p.read_text()
    ]
    assert offenders == []


def test_the_wheel_holds_only_the_hwlat_namespace(tmp_path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("hwlat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hwlat"}
    assert "hwlat/profiler/agent.py" in names  # the agent is uploaded to devices as a file
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hwlat = hwlat.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_public_imports_work_from_outside_the_repository(tmp_path) -> None:
    code = (
        "import hwlat; from hwlat.predictors import LatencyPredictor; "
        "from hwlat.search.spaces import get_space; print(hwlat.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_ci_runs_the_readme_test_command_and_the_layout_table_matches_the_folders() -> None:
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```\n{command}\n```" in readme
    assert "ruff check" in command and "ruff format --check" in command
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix()
            depth = len(init.parent.relative_to(ROOT).parts)
            if depth <= 2 and rel != "search/spaces" and rel != "search/strategies":
                assert f"`{rel}/`" in readme, f"the README's layout table lacks {rel}/"
