"""The one settings object: environment names, the engine nested, flags on top, one message per bad field."""

from __future__ import annotations

import dataclasses

import pytest

from clasp_engine import SegmenterConfig
from clasp_engine.config import CRFConfig
from clasp_engine.errors import ConfigError
from integrations.settings import ENGINE_FIELDS, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith(("CLASP_", "LABEL_STUDIO_")):
            monkeypatch.delenv(key)


def test_defaults_are_the_engines_and_every_engine_field_is_a_setting():
    s = load_settings()
    assert s.engine_config() == SegmenterConfig()
    assert s.engine_config().fingerprint() == SegmenterConfig().fingerprint()
    engine_fields = {f.name for f in dataclasses.fields(SegmenterConfig)} - {"crf"}
    assert engine_fields == set(ENGINE_FIELDS)
    crf_fields = {f.name for f in dataclasses.fields(CRFConfig)}
    assert crf_fields == set(type(s.engine.crf).model_fields)


def test_environment_names_are_unchanged(monkeypatch, tmp_path):
    env = {
        "CLASP_BACKBONE": "classic", "CLASP_VARIANT": "patch", "CLASP_MAX_SIDE": "640", "CLASP_K": "4",
        "CLASP_DEVICE": "cpu", "CLASP_FEATURES": "keys", "CLASP_CRF_ITERATIONS": "7", "CLASP_CRF_BILATERAL_SRGB": "20",
        "CLASP_WEIGHTS_DIR": str(tmp_path), "CLASP_BATCH_SIZE": "8", "CLASP_LEASE_SECONDS": "60",
        "CLASP_DATABASE_URL": "postgresql+psycopg://u:secret@db/x", "LABEL_STUDIO_URL": "http://127.0.0.1:8080",
        "LABEL_STUDIO_API_KEY": "tok", "CLASP_LABEL_STUDIO_IMAGE_MODE": "url",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    c = s.engine_config()
    assert (c.backbone, c.variant, c.max_side, c.k, c.device, c.features) == ("classic", "patch", 640, 4, "cpu", "keys")
    assert (c.crf.iterations, c.crf.bilateral_srgb, c.weights_dir) == (7, 20.0, str(tmp_path))
    assert (s.batch_size, s.lease_seconds, s.device) == (8, 60, "cpu")
    assert s.label_studio_url == "http://127.0.0.1:8080" and s.label_studio_token().get_secret_value() == "tok"
    assert s.label_studio_image_mode == "url" and s.label_studio_document_root == tmp_path
    # weights_dir says where weights are found, not which: the model version is the same
    assert c.fingerprint() == c.replace(weights_dir=None).fingerprint() and "weights_dir" not in c.to_dict()


def test_overrides_beat_the_environment(monkeypatch):
    monkeypatch.setenv("CLASP_MAX_SIDE", "640")
    monkeypatch.setenv("CLASP_BATCH_SIZE", "8")
    s = load_settings(max_side=320, batch_size=4, crf_iterations=2, variant=None)
    assert (s.engine.max_side, s.batch_size, s.engine.crf.iterations) == (320, 4, 2)
    assert s.engine.variant == "pixel"  # None: not given


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"CLASP_BATCH_SIZE": "0"}, "CLASP_BATCH_SIZE='0'"),
        ({"CLASP_LEASE_SECONDS": "soon"}, "CLASP_LEASE_SECONDS='soon'"),
        ({"CLASP_HTTP_TIMEOUT_S": "nan"}, "CLASP_HTTP_TIMEOUT_S='nan'"),
        ({"CLASP_ALLOW_PRIVATE_HOSTS": "maybe"}, "CLASP_ALLOW_PRIVATE_HOSTS='maybe'"),
        ({"CLASP_BACKBONE": "resnet"}, "CLASP_BACKBONE='resnet'"),
        ({"CLASP_MAX_SIDE": "12"}, "CLASP_MAX_SIDE='12'"),
        ({"CLASP_CRF_BILATERAL_SRGB": "0"}, "CLASP_CRF_BILATERAL_SRGB='0'"),
        ({"CLASP_CRF_GAUSSIAN_SXY": "nan"}, "CLASP_CRF_GAUSSIAN_SXY='nan'"),
        ({"CLASP_K_MIN": "9", "CLASP_K_MAX": "3"}, "CLASP_K_MIN=9, CLASP_K_MAX=3"),
        ({"CLASP_DATABASE_URL": "mysql://x/y"}, "CLASP_DATABASE_URL='mysql://x/y'"),
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL='localhost:8080'"),
        ({"CLASP_LABEL_STUDIO_IMAGE_MODE": "ftp"}, "CLASP_LABEL_STUDIO_IMAGE_MODE='ftp'"),
        ({"CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES": "lots"}, "CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES='lots'"),
    ],
)
def test_one_line_per_invalid_setting_names_it(monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert len(info.value.lines) == 1 and info.value.lines[0].startswith(expected), info.value.lines
    assert "\n" not in info.value.lines[0]
    assert isinstance(info.value, ConfigError)  # not transient: the flows' retry policy never retries it


def test_flags_are_named_as_typed_and_secrets_are_not_shown(monkeypatch):
    with pytest.raises(SettingsError, match=r"^--batch-size=-1: "):
        load_settings(flags={"batch_size": "--batch-size"}, batch_size=-1)
    monkeypatch.setenv("CLASP_DATABASE_URL", "postgresql://user:hunter2@db:notaport/x")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "hunter2" not in str(info.value) and "CLASP_DATABASE_URL" in str(info.value)


def test_the_engine_config_rejects_what_would_crash_densecrf():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="bilateral_srgb"):
            SegmenterConfig().replace(crf_bilateral_srgb=bad)


def test_settings_object_still_builds_directly(monkeypatch):
    monkeypatch.setenv("CLASP_DEVICE", "cpu")
    assert Settings().device == "cpu" and Settings().engine_config().device == "cpu"


@pytest.mark.parametrize("flow_name, kwargs, name", [
    ("flows.ingest:ingest", {"source": "x", "limit": -1}, "limit=-1"),
    ("flows.ingest:ingest", {"source": "x", "chunk_size": 0}, "chunk_size=0"),
    ("flows.segment:segment", {"limit": -3}, "limit=-3"),
    ("flows.pipeline:moderation_pipeline", {"limit": -1}, "limit=-1"),
    ("flows.pipeline:moderation_pipeline", {"segment_runs": 0}, "segment_runs=0"),
])
def test_flows_reject_nonsense_parameters_before_work(flow_name, kwargs, name):
    """A deployed flow gets no CLI in front of it: a negative limit must not drop images silently."""
    import importlib

    module, attr = flow_name.split(":")
    flow = getattr(importlib.import_module(module), attr)
    with pytest.raises(SettingsError, match=f"^{name}: must be an integer >= "):
        flow.fn(**kwargs)  # the body alone: it stops before its first task or log line
