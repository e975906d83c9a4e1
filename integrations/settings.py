"""Product settings: the one typed, validated object read from the environment and CLI flags.

Everything the product can be told (database, workers, image sources, Label
Studio, and the engine's parameters nested under `engine`) is read and checked
here, once, before any work starts. The engine itself reads no environment: it
gets a `clasp_engine.SegmenterConfig` built by `Settings.engine_config()`, and
the engine's own value checks (`SegmenterConfig.__post_init__`) run here too.

Environment names (unchanged): `CLASP_<FIELD>` (engine: `CLASP_BACKBONE`,
`CLASP_MAX_SIDE`, ..., `CLASP_CRF_<FIELD>`), except Label Studio's own
`LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY` (or `LABEL_STUDIO_API_KEY_FILE`).
An invalid value raises `SettingsError`, whose lines name the setting, the value
and what is allowed: `load_settings(...)` is the entry point for flows and CLI.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clasp_engine.config import BACKBONES, DEVICES, FEATURES, VARIANTS, CRFConfig, SegmenterConfig
from clasp_engine.errors import ClaspError, ConfigError

_CRF = CRFConfig()
_ENGINE = SegmenterConfig()


class SettingsError(ConfigError):
    """One or more settings are invalid; `lines` holds one message per setting."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class CRFSettings(BaseSettings):
    """DenseCRF parameters (`CLASP_CRF_<FIELD>`); defaults are `clasp_engine.CRFConfig`'s."""

    model_config = SettingsConfigDict(env_prefix="CLASP_CRF_", extra="ignore", frozen=True)

    # Zero or negative kernel widths make pydensecrf divide by zero (a segfault): all > 0.
    iterations: int = Field(_CRF.iterations, ge=1, le=100)
    gaussian_sxy: float = Field(_CRF.gaussian_sxy, gt=0)
    gaussian_compat: float = Field(_CRF.gaussian_compat, ge=0)
    bilateral_sxy: float = Field(_CRF.bilateral_sxy, gt=0)
    bilateral_srgb: float = Field(_CRF.bilateral_srgb, gt=0)
    bilateral_compat: float = Field(_CRF.bilateral_compat, ge=0)
    unary_confidence: float = Field(_CRF.unary_confidence, gt=0, lt=1)
    max_side: int = Field(_CRF.max_side, ge=0, le=16384)

    _finite_floats = field_validator(
        "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "unary_confidence"
    )(_finite)


class EngineSettings(BaseSettings):
    """The engine's parameters (`CLASP_<FIELD>`); defaults are `clasp_engine.SegmenterConfig`'s."""

    model_config = SettingsConfigDict(env_prefix="CLASP_", extra="ignore", frozen=True)

    backbone: Literal[BACKBONES] = _ENGINE.backbone  # type: ignore[valid-type]
    weights: str | None = _ENGINE.weights
    # Where local weights files are looked for (None: the engine's default, ~/.cache/clasp/weights).
    weights_dir: Path | None = None
    features: Literal[FEATURES] = _ENGINE.features  # type: ignore[valid-type]
    max_side: int = Field(_ENGINE.max_side, ge=32, le=4096)
    variant: Literal[VARIANTS] = _ENGINE.variant  # type: ignore[valid-type]
    k: int | None = Field(_ENGINE.k, ge=1, le=255)
    k_min: int = Field(_ENGINE.k_min, ge=2)
    k_max: int = Field(_ENGINE.k_max, ge=2)
    n_eigen: int = Field(_ENGINE.n_eigen, ge=3)
    silhouette_window: int = Field(_ENGINE.silhouette_window, ge=0)
    device: Literal[DEVICES] = _ENGINE.device  # type: ignore[valid-type]
    seed: int = Field(_ENGINE.seed, ge=0)
    crf: CRFSettings = Field(default_factory=CRFSettings)

    @field_validator("weights", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _engine_accepts(self) -> "EngineSettings":
        try:
            self.config()  # the engine's own cross-field checks (k_min <= k_max, n_eigen > k_max, ...)
        except ClaspError as exc:
            raise ValueError(_engine_names(str(exc))) from None
        return self

    def config(self) -> SegmenterConfig:
        """The engine's frozen configuration."""
        data = self.model_dump()
        data["weights_dir"] = str(self.weights_dir) if self.weights_dir is not None else None
        return SegmenterConfig.from_dict(data)


def _engine_names(message: str) -> str:
    """The engine's message with its field names (`k_min=`, `crf.iterations=`) as the variables that set them."""
    message = re.sub(r"\bcrf\.([a-z_]+)=", lambda m: f"CLASP_CRF_{m.group(1).upper()}=", message)
    return re.sub(r"(?<![.\w])([a-z][a-z_]*)=", lambda m: f"CLASP_{m.group(1).upper()}=", message)


ENGINE_FIELDS = frozenset(EngineSettings.model_fields) - {"crf"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLASP_", extra="ignore", populate_by_name=True)

    # --- database ---
    database_url: str = "sqlite:///clasp.db"

    # --- workers ---
    batch_size: int = Field(16, ge=1, le=1024)
    lease_seconds: int = Field(600, ge=5)
    max_attempts: int = Field(3, ge=1)
    output_dir: Path = Path("clasp-output")
    # GPUs that segment: the size of Prefect's global limit "clasp-gpu" and the segment runs the queue starts.
    gpu_slots: int = Field(1, ge=1, le=1024)
    # A run keeps its GPU slot over consecutive batches for up to this many seconds, then
    # hands it back and queues again (0: one acquisition per batch). One acquisition is a
    # Prefect API round trip, ~10 ms, but ~2 s when the embedded SQLite-backed server
    # answers 503 (SQLITE_BUSY_SNAPSHOT) and the client backs off: per batch, that cost
    # 30% of a CPU run's wall time (flows/gpu_slots.py).
    gpu_slice_seconds: float = Field(30.0, ge=0.0, le=3600.0)
    # Off: segment runs take no slot. `clasp run` turns it off when it runs on its own temporary
    # Prefect server, whose limit no other worker can see (it guards nothing there).
    gpu_limit: bool = True

    # --- image sources ---
    http_timeout_s: float = Field(20.0, gt=0, le=3600)
    max_download_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(100_000_000, ge=1)
    # Loopback, link-local and private addresses are refused unless allowed, so a
    # URL planted in the database cannot reach internal services.
    allow_private_hosts: bool = False
    # Schemes allowed although their target cannot be checked (s3, gs, webhdfs, ...), comma-separated.
    allowed_schemes: str = Field("", pattern=r"^[A-Za-z0-9+.\-, ]*$")
    # Decoded pixels one worker batch may hold (3 bytes each as RGB): 150 million is about 450 MB,
    # safe on a 24 GB machine with the engine's working copies.
    max_batch_pixels: int = Field(150_000_000, ge=1)

    # --- Label Studio ---
    label_studio_url: str | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_URL", "CLASP_LABEL_STUDIO_URL", "label_studio_url")
    )
    label_studio_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "CLASP_LABEL_STUDIO_API_KEY", "label_studio_api_key")
    )
    label_studio_api_key_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "LABEL_STUDIO_API_KEY_FILE", "CLASP_LABEL_STUDIO_API_KEY_FILE", "label_studio_api_key_file"
        ),
    )
    label_studio_project: str = Field("CLASP moderation review", min_length=1)
    # Regions per review task: segments under min_area pixels are merged into their
    # longest-border neighbour (or dropped), and at most max_regions are sent, because
    # many brush regions make Label Studio's editor slow.
    label_studio_min_area: int = Field(0, ge=0)
    label_studio_small_segments: Literal["merge", "drop"] = "merge"
    label_studio_max_regions: int = Field(40, ge=1)
    # How the reviewer's browser gets each image (integrations.label_studio.images.ImageResolver).
    label_studio_image_mode: Literal["auto", "url", "local-files", "data-url"] = "auto"
    label_studio_document_root: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "CLASP_LABEL_STUDIO_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "label_studio_document_root"
        ),
    )
    label_studio_data_url_max_bytes: int = Field(256 * 1024, ge=1)  # = label_studio.images.DEFAULT_DATA_URL_MAX_BYTES
    # also push the coarser and finer partitions of the K search as extra predictions
    # (model_version `<model version>/coarser-k<K>`, `/finer-k<K>`); off by default
    label_studio_granularity: bool = False

    # --- label suggestions from reviews (issue 12; integrations.review.suggestions) ---
    # kNN vote share at or above which a suggested label is pushed (README: chosen by measurement)
    suggestion_threshold: float = Field(0.9, ge=0.0, le=1.0)
    exemplar_index_dir: Path = Path("clasp-output/exemplar-index")

    # --- the engine, nested (same CLASP_* names as its fields) ---
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @property
    def device(self) -> str:
        """The accelerator the workers use: the engine's `device` (CLASP_DEVICE)."""
        return self.engine.device

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL; use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"database {url.get_backend_name()!r} is not supported; use sqlite or postgresql")
        return value

    @field_validator("label_studio_url", mode="before")
    @classmethod
    def _label_studio_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        parts = urlsplit(str(value))
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host, e.g. http://127.0.0.1:8080")
        return str(value)

    @field_validator("label_studio_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("http_timeout_s")
    @classmethod
    def _finite_timeout(cls, value: float) -> float:
        return _finite(value)

    def engine_config(self) -> SegmenterConfig:
        """The engine's configuration, as validated here."""
        return self.engine.config()

    def source_json(self) -> dict[str, Any]:
        """The part a task needs to read images (no secrets, JSON-ready)."""
        return self.model_dump(include=SOURCE_FIELDS, mode="json")

    def label_studio_token(self) -> SecretStr | None:
        """The token from the environment, else from the file named by LABEL_STUDIO_API_KEY_FILE."""
        if self.label_studio_api_key is not None:
            return self.label_studio_api_key
        if self.label_studio_api_key_file is not None:
            return SecretStr(Path(self.label_studio_api_key_file).read_text().strip())
        return None


SOURCE_FIELDS = frozenset(
    {"lease_seconds", "max_attempts", "http_timeout_s", "max_download_bytes", "max_image_pixels", "allow_private_hosts",
     "allowed_schemes", "max_batch_pixels"}
)


def env_name(model: type[BaseModel], field: str) -> str:
    """The environment variable that sets `field` of `model` (the first, where several do)."""
    info = model.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    prefix = model.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def _lines(exc: ValidationError, model: type[BaseModel], flags: dict[str, str]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        owner: type[BaseModel] = model
        field = loc[0] if loc else ""
        if loc[:1] == ["engine"]:
            owner, loc = EngineSettings, loc[1:]
            field = loc[0] if loc else ""
        if loc[:1] == ["crf"]:
            owner, loc = CRFSettings, loc[1:]
            field = loc[0] if loc else ""
        for name, info in owner.model_fields.items():  # an alias in the location: back to the field
            alias = getattr(info, "validation_alias", None)
            if isinstance(alias, AliasChoices) and field in alias.choices:
                field = name
        key = ("crf_" if owner is CRFSettings else "") + field
        name = flags.get(key) or (env_name(owner, field) if field else "engine settings")
        if not field:  # a check across fields: the message names them
            out.append(str(err.get("msg", "invalid")).removeprefix("Value error, "))
            continue
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        value = _redact(field, err.get("input"))
        shown = "" if not field or isinstance(value, dict) else f"={value!r}"
        out.append(f"{name}{shown}: {message}")
    return out


def _redact(field: str, value: Any) -> Any:
    """No secret in an error message: the token hidden, a database password masked."""
    if field == "label_studio_api_key":
        return "***"
    if field == "database_url" and isinstance(value, str):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", value)
    return value


def check_count(name: str, value: int | None, minimum: int) -> None:
    """Raise SettingsError unless `value` (a flow parameter such as `limit`; None: not given) is an int >= minimum."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError([f"{name}={value!r}: must be an integer >= {minimum}"])


def load_settings(flags: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with the non-None `overrides` (flow parameters, CLI flags) on top.

    Engine fields (`backbone`, `max_side`, `device`, ...; CRF ones as `crf_<field>`) go to
    `Settings.engine`. `flags` maps a field to the flag that set it (`{"batch_size": "--batch-size"}`)
    so that an error names what the user typed. Raises `SettingsError`: one line per invalid setting.
    """
    flags = flags or {}
    values = {k: v for k, v in overrides.items() if v is not None}
    engine = {k: values.pop(k) for k in list(values) if k in ENGINE_FIELDS}
    crf = {k[4:]: values.pop(k) for k in list(values) if k.startswith("crf_")}
    try:
        crf_settings = CRFSettings(**crf)
    except ValidationError as exc:
        raise SettingsError(_lines(exc, CRFSettings, flags)) from None
    try:
        engine_settings = EngineSettings(crf=crf_settings, **engine)
    except ValidationError as exc:
        raise SettingsError(_lines(exc, EngineSettings, flags)) from None
    try:
        return Settings(engine=engine_settings, **values)
    except ValidationError as exc:
        raise SettingsError(_lines(exc, Settings, flags)) from None
