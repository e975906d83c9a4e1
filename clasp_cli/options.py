"""The command line's settings: flags on top of the environment, validated by `integrations.settings`.

Each command names the settings its flags set (`load(args)` reads the ones present);
`integrations.settings.load_settings` checks them together with every `CLASP_*`
variable, and an invalid one stops the command before any work with one line per
setting (`clasp_cli.main` prints them, exit status 2). Flag value checks that are not
settings (`--limit`, `--jobs`, ...) are argparse types from here, so that every
command rejects a nonsense number the same way.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

from integrations.settings import Settings, SettingsError, env_name, load_settings

# settings field -> (argparse dest, flag as the user types it)
FLAGS: dict[str, tuple[str, str]] = {
    "database_url": ("database_url", "--database-url"),
    "batch_size": ("batch_size", "--batch-size"),
    "output_dir": ("output_dir", "--out"),
    "backbone": ("backbone", "--backbone"),
    "weights": ("weights", "--weights"),
    "variant": ("variant", "--variant"),
    "max_side": ("max_side", "--max-side"),
    "k": ("k", "--k"),
    "device": ("device", "--device"),
    "features": ("features", "--features"),
    "label_studio_url": ("label_studio_url", "--label-studio-url"),
    "label_studio_api_key_file": ("label_studio_token_file", "--label-studio-token-file"),
    "label_studio_project": ("project", "--project"),
}


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command's flags set (flags not given, or not the command's, are left out)."""
    return {field: getattr(args, dest) for field, (dest, _) in FLAGS.items() if getattr(args, dest, None) is not None}


def load(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from the environment with this command's flags (and `extra`) on top; raises SettingsError."""
    values = {**flag_values(args), **{k: v for k, v in extra.items() if v is not None}}
    flags = {field: flag for field, (_, flag) in FLAGS.items() if field in values}
    return load_settings(flags=flags, **values)


def setting_name(args: argparse.Namespace, field: str) -> str:
    """The flag that set `field` if it was given, else its environment variable."""
    dest, flag = FLAGS.get(field, (field, ""))
    return flag if flag and getattr(args, dest, None) is not None else env_name(Settings, field)


def check_writable_folder(path: Path, name: str) -> None:
    """Raise SettingsError unless `path` is, or can be made, a folder this process can write in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".clasp-write-check-"):
            pass
    except OSError as exc:
        raise SettingsError([f"{name}={str(path)!r}: not a folder this user can write in ({exc.strerror or exc})"]) from None


def check_token_file(settings: Settings, args: argparse.Namespace) -> None:
    """Raise SettingsError when the Label Studio token is to come from a file that cannot be read."""
    path = settings.label_studio_api_key_file
    if settings.label_studio_api_key is not None or path is None:
        return
    name = setting_name(args, "label_studio_api_key_file")
    try:
        token = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([f"{name}={str(path)!r}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})"]) from None
    if not token:
        raise SettingsError([f"{name}={str(path)!r}: the token file is empty"])


def _number(kind: type, low: float, what: str):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1, "an integer >= 1")
non_negative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 1e-9, "a number > 0")


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is between 1 and 65535")
    return value
