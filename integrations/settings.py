"""Product settings: one typed object read from the environment (and CLI flags).

Engine parameters live in `clasp_engine.SegmenterConfig`; this object holds what
talks to the outside world (database, Label Studio, image sources, workers).
Environment names: `CLASP_<FIELD>`, except Label Studio's own
`LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY` (or `LABEL_STUDIO_API_KEY_FILE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLASP_", extra="ignore", populate_by_name=True)

    # --- database ---
    database_url: str = "sqlite:///clasp.db"

    # --- workers ---
    device: str = "auto"
    batch_size: int = Field(16, ge=1, le=1024)
    lease_seconds: int = Field(600, ge=5)
    max_attempts: int = Field(3, ge=1)
    output_dir: Path = Path("clasp-output")

    # --- image sources ---
    http_timeout_s: float = Field(20.0, gt=0)
    max_download_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(100_000_000, ge=1)
    # Loopback, link-local and private addresses are refused unless allowed, so a
    # URL planted in the database cannot reach internal services.
    allow_private_hosts: bool = False

    # --- Label Studio ---
    label_studio_url: str | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_URL", "CLASP_LABEL_STUDIO_URL")
    )
    label_studio_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "CLASP_LABEL_STUDIO_API_KEY")
    )
    label_studio_api_key_file: Path | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY_FILE", "CLASP_LABEL_STUDIO_API_KEY_FILE")
    )
    label_studio_project: str = "CLASP moderation review"
    # Regions per review task: segments under min_area pixels are merged into their
    # longest-border neighbour (or dropped), and at most max_regions are sent, because
    # many brush regions make Label Studio's editor slow.
    label_studio_min_area: int = Field(0, ge=0)
    label_studio_small_segments: Literal["merge", "drop"] = "merge"
    label_studio_max_regions: int = Field(40, ge=1)
    # also push the coarser and finer partitions of the K search as extra predictions
    # (model_version `<model version>/coarser-k<K>`, `/finer-k<K>`); off by default
    label_studio_granularity: bool = False

    # --- label suggestions from reviews (issue 12; integrations.review.suggestions) ---
    # kNN vote share at or above which a suggested label is pushed (README: chosen by measurement)
    suggestion_threshold: float = Field(0.9, ge=0.0, le=1.0)
    exemplar_index_dir: Path = Path("clasp-output/exemplar-index")

    def label_studio_token(self) -> SecretStr | None:
        """The token from the environment, else from the file named by LABEL_STUDIO_API_KEY_FILE."""
        if self.label_studio_api_key is not None:
            return self.label_studio_api_key
        if self.label_studio_api_key_file is not None:
            return SecretStr(Path(self.label_studio_api_key_file).read_text().strip())
        return None
