"""The configuration error and the small checks every config section shares.

The main config and the sections owned by subsystems (policy, CORS) all report a
problem as ``ConfigError(key, problem)`` with the dotted key at fault, and use the same
type, range and origin checks.  This module imports nothing else of mcpfast, so any
section's parser can use it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["ConfigError", "expect", "positive", "parse_origin_pattern"]


class ConfigError(ValueError):
    """A configuration problem; ``key`` is the dotted path of the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def expect(section: dict, key: str, prefix: str, typ, default):
    """``section[key]`` checked to be of type ``typ`` (an int is taken for a float, a
    bool is not taken for an int), or ``default`` when the key is absent."""
    if key not in section:
        return default
    v = section[key]
    full = f"{prefix}.{key}" if prefix else key
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if typ is int and isinstance(v, bool):
        raise ConfigError(full, f"expected an integer, got {v!r}")
    if not isinstance(v, typ):
        raise ConfigError(full, f"expected {typ.__name__}, got {type(v).__name__} {v!r}")
    return v


def positive(v, key: str, allow_zero: bool = False):
    """``v`` if it is > 0 (or >= 0 with ``allow_zero``)."""
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return v


def parse_origin_pattern(p: str, key: str) -> str:
    """An allowed-origin pattern (``https://host[:port]``, ``http://host:*``), normalized."""
    parts = urlsplit(p)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(key, f"expected an origin like https://host[:port] or http://host:*, got {p!r}")
    return p.rstrip("/").lower()
