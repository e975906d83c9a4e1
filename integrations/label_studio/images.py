"""How the reviewer's browser gets the image (Label Studio's server does not fetch it).

Modes:
- `url`: the image's own http(s) URL as stored; the reviewer's browser loads it.
- `local-files`: a file under Label Studio's local-files document root, served by
  Label Studio as `/data/local-files/?d=<path relative to the root>`. The server
  needs `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and
  `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`, and a Local Files import storage covering
  the folder must be attached to the project (done automatically by the push; the
  storage is never synced, so it imports nothing by itself).
- `data-url`: the bytes inline as `data:image/...;base64,...`, capped in size (small
  demos only: it bloats every task).
- `auto`: url for http(s), local-files for files under the document root, else data-url
  within the cap; anything else is an error naming the modes.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

MODES = ("auto", "url", "local-files", "data-url")
DEFAULT_DATA_URL_MAX_BYTES = 256 * 1024


class ImageModeError(ValueError):
    pass


@dataclass(frozen=True)
class ResolvedImage:
    mode: str  # "url" | "local-files" | "data-url"
    value: str  # what goes into the task's data
    storage_dir: Path | None = None  # local-files: the folder a storage must cover


def _local_path(uri: str) -> Path | None:
    p = urlparse(uri)
    if p.scheme == "file":
        return Path(unquote(p.path))
    if p.scheme in ("", None) or (len(p.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def _local_server_root(url: str) -> str | None:
    """The local-files root of the demo server started by `clasp label-studio start`, if `url` is that server."""
    import json

    from integrations.label_studio.server import DEFAULT_DATA_DIR

    try:
        state = json.loads((DEFAULT_DATA_DIR / "clasp-server.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("url", "").rstrip("/") == url.rstrip("/"):
        return state.get("document_root")
    return None


@dataclass(frozen=True)
class ImageResolver:
    mode: str = "auto"
    document_root: Path | None = None
    data_url_max_bytes: int = DEFAULT_DATA_URL_MAX_BYTES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ImageModeError(f"image mode {self.mode!r}: must be one of {MODES}")
        if self.mode == "local-files" and self.document_root is None:
            raise ImageModeError(
                "image mode 'local-files' needs the document root "
                "(CLASP_LABEL_STUDIO_DOCUMENT_ROOT or LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ImageResolver":
        env = os.environ if env is None else env
        root = env.get("CLASP_LABEL_STUDIO_DOCUMENT_ROOT") or env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
        if not root and env.get("LABEL_STUDIO_URL"):
            root = _local_server_root(env["LABEL_STUDIO_URL"])
        return cls(
            mode=env.get("CLASP_LABEL_STUDIO_IMAGE_MODE", "auto"),
            document_root=Path(root).resolve() if root else None,
            data_url_max_bytes=int(env.get("CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES", DEFAULT_DATA_URL_MAX_BYTES)),
        )

    def describe(self) -> str:
        if self.mode == "url":
            return "images for the reviewer: their own http(s) URLs (loaded by the reviewer's browser)"
        if self.mode == "local-files":
            return f"images for the reviewer: Label Studio local-files storage under {self.document_root}"
        if self.mode == "data-url":
            return f"images for the reviewer: inline data URLs (demo only, cap {self.data_url_max_bytes} bytes)"
        root = f"local-files under {self.document_root}" if self.document_root else "no local-files root"
        return f"images for the reviewer: auto (http(s) URL as stored; {root}; data URL up to {self.data_url_max_bytes} bytes)"

    def resolve(self, uri: str) -> ResolvedImage:
        scheme = urlparse(uri).scheme.lower()
        if scheme in ("http", "https"):
            if self.mode in ("auto", "url"):
                return ResolvedImage("url", uri)
            raise ImageModeError(f"image mode {self.mode!r} cannot serve the remote image {uri!r}; use 'url' or 'auto'")
        if self.mode == "url":
            raise ImageModeError(f"image mode 'url' needs an http(s) URL, got {uri!r}")
        path = _local_path(uri)
        if path is None:
            raise ImageModeError(f"cannot show {uri!r} to the reviewer: unsupported scheme {scheme!r}")
        path = path.resolve()
        if self.mode in ("auto", "local-files") and self.document_root is not None:
            try:
                rel = path.relative_to(self.document_root)
            except ValueError:
                rel = None
            if rel is not None:
                return ResolvedImage("local-files", "/data/local-files/?d=" + quote(rel.as_posix()), path.parent)
            if self.mode == "local-files":
                raise ImageModeError(f"{path} is outside the local-files document root {self.document_root}")
        if self.mode in ("auto", "data-url"):
            size = path.stat().st_size
            if size > self.data_url_max_bytes:
                raise ImageModeError(
                    f"{path} is {size} bytes, over the data-URL cap of {self.data_url_max_bytes} bytes; "
                    "serve it with local-files storage (set CLASP_LABEL_STUDIO_DOCUMENT_ROOT) or an http(s) URL"
                )
            mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
            return ResolvedImage("data-url", f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode())
        raise ImageModeError(f"cannot show {uri!r} with image mode {self.mode!r}")
