"""The package as a user installs it: every import declared, a clean build, and a
wheel that works outside the checkout (migrations shipped, `clasp` on PATH)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("clasp_engine", "integrations", "flows", "clasp_cli")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", "test-artifacts", ".clasp", "*.db", "tests"
)


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[;(]", spec.strip(), maxsplit=1)[0]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> dict[str, str]:
    """Absolute imports of the shipped packages: top-level module -> first file importing it."""
    found: dict[str, str] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_imported_library_is_declared_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_canonical(_requirement_name(r)) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        declared |= {_canonical(_requirement_name(r)) for r in extra}
    distributions = md.packages_distributions()
    undeclared = []
    for module, where in sorted(_imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        dists = distributions.get(module)
        if not dists:
            undeclared.append(f"{module} (imported in {where}; no installed distribution provides it)")
            continue
        if not any(_canonical(d) in declared for d in dists):
            undeclared.append(f"{module} (imported in {where}; distribution {dists[0]} not in pyproject.toml)")
    assert not undeclared, "undeclared imports: " + "; ".join(undeclared)


def _build_wheel(out: Path) -> tuple[Path, str]:
    """Build the wheel from a copy of the sources (the checkout stays clean); returns (wheel, log)."""
    src = out / "src"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out / "dist"), "."],
        cwd=src, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    wheels = list((out / "dist").glob("clasp-*.whl"))
    assert len(wheels) == 1, log[-2000:]
    return wheels[0], log


@pytest.mark.slow
def test_wheel_builds_without_deprecation_warnings_and_ships_the_migrations(tmp_path):
    import zipfile

    wheel, log = _build_wheel(tmp_path)
    deprecations = [line for line in log.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, "\n".join(deprecations)
    names = zipfile.ZipFile(wheel).namelist()
    assert "integrations/db/migrations/env.py" in names
    assert any(n.startswith("integrations/db/migrations/versions/") and n.endswith(".py") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


def _dependency_site_packages() -> str:
    """site-packages of the environment running the tests (torch & co. are already there)."""
    return sysconfig.get_paths()["purelib"]


@pytest.mark.slow
def test_installed_wheel_migrates_and_segments_from_another_directory(tmp_path):
    wheel, _ = _build_wheel(tmp_path / "build")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Dependencies come from the test environment through a .pth line (no download); .pth
    # files inside that folder are not processed, so its editable `clasp` stays invisible.
    Path(purelib, "clasp-test-deps.pth").write_text(_dependency_site_packages() + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", PYTHONDONTWRITEBYTECODE="1")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    clasp = venv / "bin" / "clasp"
    where = subprocess.run(
        [py, "-c", "import integrations.db.schema as s; print(s.MIGRATIONS_DIR)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert where.startswith(purelib), f"clasp imported from {where}, not from the installed wheel"

    url = f"sqlite:///{work / 'fresh.db'}"
    up = subprocess.run([clasp, "db", "--database-url", url, "upgrade"], cwd=work, env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    status = subprocess.run([clasp, "db", "--database-url", url, "status"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and "up to date" in status.stdout + status.stderr, status.stdout + status.stderr

    rng = np.random.default_rng(0)
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, 64:] = (200, 30, 30)
    img[:48, :64] = (20, 160, 40)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(work / "photo.png")
    seg = subprocess.run([clasp, "segment", "--backbone", "classic", "--out", "out", "photo.png"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert seg.returncode == 0, seg.stdout[-3000:] + seg.stderr[-3000:]
    outputs = [p for p in (work / "out").rglob("*") if p.is_file()]
    assert outputs, f"clasp segment wrote nothing: {seg.stdout}"
