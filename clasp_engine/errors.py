"""Exceptions raised by the engine. Every message names the input and what to do."""


class ClaspError(Exception):
    """Base class for every error the engine raises on purpose."""


class ConfigError(ClaspError, ValueError):
    """A configuration value is out of range or inconsistent."""


class InvalidImageError(ClaspError, ValueError):
    """An input could not be read as an image. `source` names the input."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class WeightsNotFoundError(ClaspError, FileNotFoundError):
    """Pretrained weights for a backbone are neither on disk nor downloadable."""


def reason_of(exc: BaseException, limit: int = 500) -> str:
    """What went wrong, as stored and shown per image: an error's own `reason` (the input is
    named elsewhere) when it has one, else `Type: message`; at most `limit` characters."""
    reason = getattr(exc, "reason", None)
    return (str(reason) if reason else f"{type(exc).__name__}: {exc}")[:limit]
