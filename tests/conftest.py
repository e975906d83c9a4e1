"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The folder Label Studio serves local files from: the checkout's parent, widened to take in
# ../shared/data where that is a link to elsewhere (as in a git worktree beside a linked shared/).
DOCUMENT_ROOT = Path(os.path.commonpath([REPO_ROOT.parent, SHARED_DATA.resolve()]))
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"needs the real-image datasets at {SHARED_DATA} (present in CI, absent on a bare clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- Label Studio: one real server per test session (own venv, loopback, SQLite) ---


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    """A fresh Label Studio on a free 127.0.0.1 port; installs `.venv-label-studio` if missing (~70 s once).

    Local-files serving is enabled with the repository's parent folder as document
    root, so `../shared/data` images are served to the browser.
    """
    from integrations.label_studio.server import LocalLabelStudio, ServerError, ensure_venv, free_port

    try:
        ensure_venv()
    except (ServerError, OSError) as e:
        pytest.skip(f"cannot install Label Studio into its own venv: {e}")
    server = LocalLabelStudio(
        tmp_path_factory.mktemp("label-studio"), port=free_port(), document_root=DOCUMENT_ROOT
    )
    server.start(timeout=240)
    yield server
    server.stop()
