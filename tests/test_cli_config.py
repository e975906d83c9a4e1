"""Nonsense settings, from flags and from the environment, stop every command before any work.

Each case must end with exit status 2 and exactly one line on stderr that names the
setting as the user gave it (the flag, or the environment variable) with its value:
no traceback, no crash, no silent acceptance. "Work" is guarded: the commands'
first step that does anything (Prefect's environment for `clasp run`, building the
engine for `clasp segment`) raises if it is reached, so a setting that is accepted
fails the test instead of starting a run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from clasp_cli.main import main


class WorkStarted(AssertionError):
    pass


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A clean environment, a working directory with one image and a file that is not a folder."""
    for key in list(os.environ):
        if key.startswith(("CLASP_", "LABEL_STUDIO_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLASP_DATABASE_URL", f"sqlite:///{tmp_path / 'clasp.db'}")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "afile").write_text("a file, not a folder")

    import clasp_cli.run
    import clasp_engine.segmenter

    def work(*args, **kwargs):
        raise WorkStarted("work started although a setting is invalid")

    monkeypatch.setattr(clasp_cli.run, "prepare_environment", work)
    monkeypatch.setattr(clasp_engine.segmenter, "Segmenter", work)
    return tmp_path


RUN = ["run", "in"]
SEGMENT = ["segment", "in", "--out", "out"]

# (id, environment, arguments, what the one line must start with)
CASES = [
    # flags
    ("run-limit-negative", {}, RUN + ["--limit", "-1"], "clasp run: argument --limit: '-1'"),
    ("run-limit-text", {}, RUN + ["--limit", "many"], "clasp run: argument --limit: 'many'"),
    ("run-batch-zero", {}, RUN + ["--batch-size", "0"], "clasp run: argument --batch-size: '0'"),
    ("run-batch-huge", {}, RUN + ["--batch-size", "100000"], "clasp run: --batch-size=100000"),
    ("run-max-side-tiny", {}, RUN + ["--max-side", "8"], "clasp run: --max-side=8"),
    ("run-db-url-flag", {}, RUN + ["--database-url", "not a url"], "clasp run: --database-url='not a url'"),
    ("run-db-unsupported", {}, RUN + ["--database-url", "mysql://h/db"], "clasp run: --database-url='mysql://h/db'"),
    ("run-out-not-folder", {}, RUN + ["--out", "afile/sub"], "clasp run: --out='afile/sub'"),
    ("run-ls-url-flag", {}, RUN + ["--label-studio-url", "127.0.0.1:8080"], "clasp run: --label-studio-url='127.0.0.1:8080'"),
    ("run-token-file-missing", {}, RUN + ["--label-studio-url", "http://127.0.0.1:9", "--label-studio-token-file",
                                          "nope.txt"], "clasp run: --label-studio-token-file='nope.txt'"),
    ("segment-k-zero", {}, SEGMENT + ["--k", "0"], "clasp segment: --k=0"),
    ("segment-max-side-negative", {}, SEGMENT + ["--max-side", "-5"], "clasp segment: --max-side=-5"),
    ("segment-out-not-folder", {}, ["segment", "in", "--out", "afile/sub"], "clasp segment: --out='afile/sub'"),
    ("ingest-jobs-zero", {}, ["ingest", "in", "--jobs", "0"], "clasp ingest: argument --jobs: '0'"),
    ("ingest-db-url", {}, ["ingest", "in", "--database-url", "sqlite:/nope"], "clasp ingest: --database-url='sqlite:/nope'"),
    ("status-runs-negative", {}, ["status", "--runs", "-2"], "clasp status: argument --runs: '-2'"),
    ("status-db-url", {}, ["status", "--database-url", "oracle://h/x"], "clasp status: --database-url='oracle://h/x'"),
    ("db-db-url", {}, ["db", "--database-url", "::", "status"], "clasp db: --database-url='::'"),
    ("label-studio-port", {}, ["label-studio", "status", "--port", "70000"], "clasp label-studio: argument --port: '70000'"),
    ("label-studio-timeout", {}, ["label-studio", "status", "--timeout", "-1"], "clasp label-studio: argument --timeout: '-1'"),
    # environment
    ("env-batch-zero", {"CLASP_BATCH_SIZE": "0"}, RUN, "clasp run: CLASP_BATCH_SIZE='0'"),
    ("env-batch-text", {"CLASP_BATCH_SIZE": "sixteen"}, RUN, "clasp run: CLASP_BATCH_SIZE='sixteen'"),
    ("env-lease-negative", {"CLASP_LEASE_SECONDS": "-1"}, RUN, "clasp run: CLASP_LEASE_SECONDS='-1'"),
    ("env-lease-text", {"CLASP_LEASE_SECONDS": "10m"}, RUN, "clasp run: CLASP_LEASE_SECONDS='10m'"),
    ("env-attempts-zero", {"CLASP_MAX_ATTEMPTS": "0"}, RUN, "clasp run: CLASP_MAX_ATTEMPTS='0'"),
    ("env-timeout-negative", {"CLASP_HTTP_TIMEOUT_S": "-5"}, RUN, "clasp run: CLASP_HTTP_TIMEOUT_S='-5'"),
    ("env-timeout-nan", {"CLASP_HTTP_TIMEOUT_S": "nan"}, RUN, "clasp run: CLASP_HTTP_TIMEOUT_S='nan'"),
    ("env-timeout-inf", {"CLASP_HTTP_TIMEOUT_S": "inf"}, RUN, "clasp run: CLASP_HTTP_TIMEOUT_S='inf'"),
    ("env-download-cap", {"CLASP_MAX_DOWNLOAD_BYTES": "-1"}, RUN, "clasp run: CLASP_MAX_DOWNLOAD_BYTES='-1'"),
    ("env-pixels", {"CLASP_MAX_IMAGE_PIXELS": "0"}, RUN, "clasp run: CLASP_MAX_IMAGE_PIXELS='0'"),
    ("env-bool", {"CLASP_ALLOW_PRIVATE_HOSTS": "maybe"}, RUN, "clasp run: CLASP_ALLOW_PRIVATE_HOSTS='maybe'"),
    ("env-db-url", {"CLASP_DATABASE_URL": "postgres//nohost"}, RUN, "clasp run: CLASP_DATABASE_URL='postgres//nohost'"),
    ("env-out-not-folder", {"CLASP_OUTPUT_DIR": "afile/sub"}, RUN, "clasp run: CLASP_OUTPUT_DIR='afile/sub'"),
    ("env-backbone", {"CLASP_BACKBONE": "resnet50"}, RUN, "clasp run: CLASP_BACKBONE='resnet50'"),
    ("env-variant", {"CLASP_VARIANT": "superpixel"}, RUN, "clasp run: CLASP_VARIANT='superpixel'"),
    ("env-device", {"CLASP_DEVICE": "tpu"}, RUN, "clasp run: CLASP_DEVICE='tpu'"),
    ("env-max-side", {"CLASP_MAX_SIDE": "big"}, RUN, "clasp run: CLASP_MAX_SIDE='big'"),
    ("env-k-range", {"CLASP_K_MIN": "9", "CLASP_K_MAX": "4"}, RUN, "clasp run: CLASP_K_MIN=9, CLASP_K_MAX=4"),
    ("env-n-eigen", {"CLASP_N_EIGEN": "5"}, RUN, "clasp run: CLASP_N_EIGEN=5"),
    ("env-crf-srgb-zero", {"CLASP_CRF_BILATERAL_SRGB": "0"}, RUN, "clasp run: CLASP_CRF_BILATERAL_SRGB='0'"),
    ("env-crf-srgb-nan", {"CLASP_CRF_BILATERAL_SRGB": "nan"}, RUN, "clasp run: CLASP_CRF_BILATERAL_SRGB='nan'"),
    ("env-crf-sxy-negative", {"CLASP_CRF_GAUSSIAN_SXY": "-3"}, RUN, "clasp run: CLASP_CRF_GAUSSIAN_SXY='-3'"),
    ("env-crf-iterations", {"CLASP_CRF_ITERATIONS": "0"}, RUN, "clasp run: CLASP_CRF_ITERATIONS='0'"),
    ("env-crf-confidence", {"CLASP_CRF_UNARY_CONFIDENCE": "1.5"}, RUN, "clasp run: CLASP_CRF_UNARY_CONFIDENCE='1.5'"),
    ("env-ls-url", {"LABEL_STUDIO_URL": "htp:/localhost"}, RUN, "clasp run: LABEL_STUDIO_URL='htp:/localhost'"),
    ("env-ls-url-port", {"LABEL_STUDIO_URL": "http://localhost:port"}, RUN, "clasp run: LABEL_STUDIO_URL='http://localhost:port'"),
    ("env-ls-min-area", {"CLASP_LABEL_STUDIO_MIN_AREA": "-4"}, RUN, "clasp run: CLASP_LABEL_STUDIO_MIN_AREA='-4'"),
    ("env-ls-small", {"CLASP_LABEL_STUDIO_SMALL_SEGMENTS": "keep"}, RUN, "clasp run: CLASP_LABEL_STUDIO_SMALL_SEGMENTS='keep'"),
    ("env-ls-image-mode", {"CLASP_LABEL_STUDIO_IMAGE_MODE": "s3"}, RUN, "clasp run: CLASP_LABEL_STUDIO_IMAGE_MODE='s3'"),
    ("env-ls-data-url", {"CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES": "1e3x"}, RUN,
     "clasp run: CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES='1e3x'"),
    ("env-token-file", {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY_FILE": "missing-token"}, RUN,
     "clasp run: LABEL_STUDIO_API_KEY_FILE='missing-token'"),
    ("env-segment-crf", {"CLASP_CRF_BILATERAL_SRGB": "nan"}, SEGMENT, "clasp segment: CLASP_CRF_BILATERAL_SRGB='nan'"),
    ("env-segment-backbone", {"CLASP_BACKBONE": "vgg"}, SEGMENT, "clasp segment: CLASP_BACKBONE='vgg'"),
    ("env-ingest-timeout", {"CLASP_HTTP_TIMEOUT_S": "0"}, ["ingest", "in"], "clasp ingest: CLASP_HTTP_TIMEOUT_S='0'"),
    ("env-status-db", {"CLASP_DATABASE_URL": "nonsense"}, ["status"], "clasp status: CLASP_DATABASE_URL='nonsense'"),
]


@pytest.mark.parametrize("env, argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_nonsense_setting_is_one_line_and_exit_2(workspace, monkeypatch, capsys, env, argv, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in err


def test_valid_settings_do_reach_the_work(workspace, monkeypatch):
    """The guard above is real: with sound settings the commands get as far as their work."""
    monkeypatch.setenv("CLASP_CRF_BILATERAL_SRGB", "13")
    monkeypatch.setenv("CLASP_BATCH_SIZE", "4")
    with pytest.raises(WorkStarted):
        main(RUN + ["--limit", "0", "--max-side", "64"])
    with pytest.raises(WorkStarted):
        main(SEGMENT + ["--k", "3"])
