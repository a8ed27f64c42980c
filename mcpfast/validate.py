"""The configuration error, and how a config section's TOML table becomes a typed value.

Theory of operation.  Every section (the main config's, policy's, CORS's) describes its
TOML shape as a ``Section``: a frozen msgspec Struct that refuses unknown keys, with
types, ranges (``msgspec.Meta(gt=...)``) and enumerations (``Literal[...]``) in its
annotations.  ``decode(raw, Type, key)`` turns a raw TOML table into that Struct with
``msgspec.convert``.  When msgspec refuses it, its message and path (``Expected `int`,
got `str` - at `$.backends[...].pool_size```) are explained in our words, naming the
dotted key a user writes (``backends.fs.pool_size: expected an integer, got 'x'``):
the path is walked through the raw table and the type's annotations side by side, so an
unknown key lists the known ones, a bad enumeration value lists the allowed ones, and a
failing entry of a table keyed by user names (which msgspec shows as ``[...]``) is found
and named.  What a type cannot say (URL syntax, cross-references, combinations of keys)
stays in small functions in the module owning the section, raising ``ConfigError``.  A pattern's refusal is told by its ``Meta(description=...)``, a
missing key's by its ``Meta(extra={"missing": ...})`` when it has one.

This module imports nothing else of mcpfast, so any section's parser can use it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "ConfigError",
    "Section",
    "decode",
    "origin_patterns",
    "Positive",
    "NonNegative",
    "Seconds",
    "SecondsOrZero",
    "Text",
    "NonEmpty",
    "HeaderName",
    "OneOrMore",
    "one_or_more",
    "as_plain",
]


class ConfigError(ValueError):
    """A configuration problem; ``key`` is the dotted path of the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every section's TOML schema: unknown keys refused, values immutable."""


Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
SecondsOrZero = Annotated[float, msgspec.Meta(ge=0)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# Text that reaches a head, a log line or an exec call.
Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00\r\n]*\Z", description="must not contain NUL or line breaks")]
# RFC 9110 §5.6.2 token.
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z", description="not a valid header name")]
# A key that takes one string or a list of them, none empty.
OneOrMore = Union[NonEmpty, tuple[NonEmpty, ...]]


def one_or_more(v: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    return (v,) if isinstance(v, str) else v


def decode(raw: Any, typ: Any, key: str) -> Any:
    """``raw`` (a TOML value) as ``typ``, or ``ConfigError`` naming the dotted key at fault;
    ``key`` is where ``raw`` sits."""
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), raw, typ, key) from None


_AT = re.compile(r"^(.*?)(?: - at (`key` in )?`\$(.*)`)?$", re.S)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_NOUNS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "array": "a list", "object": "a table", "null": "nothing"}  # fmt: skip


def _explain(message: str, raw: Any, typ: Any, key: str) -> ConfigError:
    """msgspec's refusal ``message`` of ``raw`` as ``typ`` (at dotted ``key``), in our words:
    its path is followed through ``raw`` and ``typ`` to the value at fault."""
    m = _AT.match(message)
    problem, path = m[1], (m[3] or "") + ("[...]" if m[2] else "")  # a bad key: find its entry
    for seg in _SEGMENT.finditer(path):
        name, index = seg[1], seg[2]
        if name is None and index is None:
            # An entry of a table keyed by user names: find it, and explain its own error.
            ktype, vtype = get_args(_bare(typ))
            for k, v in raw.items():
                for part, t in ((k, ktype), (v, vtype)):
                    try:
                        msgspec.convert(part, t)
                    except msgspec.ValidationError as exc:
                        return _explain(str(exc), part, t, _join(key, k))
            break  # not reached: msgspec refused one of them
        if name is not None:
            raw, typ, key = raw[name], _field_type(typ, name), _join(key, name)
        else:
            raw, typ, key = raw[int(index)], _item_type(typ), f"{key}[{index}]"
    return ConfigError(*_say(problem, raw, typ, key))


def _say(problem: str, raw: Any, typ: Any, key: str) -> tuple[str, str]:
    """(dotted key, problem in our words) for msgspec's ``problem`` about ``raw``."""
    if m := re.match(r"Object contains unknown field `(.*)`$", problem):
        known = ", ".join(sorted(_struct(typ).__struct_fields__))
        return _join(key, m[1]), f"unknown setting (known: {known})"
    if m := re.match(r"Object missing required field `(.*)`$", problem):
        # A field may say what it holds: Meta(extra={"missing": "..."}).
        hint = _meta(_field_type(typ, m[1]), lambda meta: (meta.extra or {}).get("missing"))
        return _join(key, m[1]), f"missing ({hint})" if hint else "missing"
    if m := re.match(r"Expected `([^`]*)`, got `([^`]*)`$", problem):
        wanted = [t for t in m[1].split(" | ") if t != "null"]
        nouns = [_NOUNS.get(t, t) for t in wanted]
        what = nouns[0] if len(nouns) == 1 else f"{', '.join(nouns[:-1])} or {nouns[-1]}"
        # The value is shown unless it is text that may be a secret in the wrong place
        # (``old_keys = "<key>"``): text is shown only where a number or boolean was wanted.
        shown = isinstance(raw, (bool, int, float)) or (isinstance(raw, str) and set(wanted) <= {"int", "float", "bool"})
        return key, f"expected {what}, got {repr(raw) if shown else _NOUNS.get(m[2], m[2])}"
    if problem.startswith("Invalid enum value"):
        values = next((get_args(t) for t in _members(typ) if get_origin(t) is Literal), ())
        return key, f"expected one of {', '.join(map(str, values))}, got {raw!r}"
    if m := re.match(r"Expected `\w+` (.*)$", problem):
        cond = m[1]
        if cond.startswith("matching regex"):
            return key, _meta(typ, lambda meta: meta.description) or f"does not match {cond[15:]}"
        if cond == "of length >= 1":
            return key, "must not be empty"
        if cond.startswith("of length"):
            return key, f"must have length {cond[10:]}"
        return key, f"must be {cond.removesuffix('.0')}, got {raw!r}"
    return key, problem[:1].lower() + problem[1:]


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _bare(t: Any) -> Any:
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _members(t: Any) -> tuple[Any, ...]:
    t = _bare(t)
    return tuple(_bare(x) for x in get_args(t)) if get_origin(t) in (Union, types.UnionType) else (t,)


def _struct(t: Any) -> type:
    return next(x for x in _members(t) if isinstance(x, type) and issubclass(x, msgspec.Struct))


def _field_type(t: Any, name: str) -> Any:
    return typing.get_type_hints(_struct(t), include_extras=True)[name]


def _item_type(t: Any) -> Any:
    seq = next(x for x in _members(t) if get_origin(x) in (list, tuple))
    return get_args(seq)[0]


def _meta(t: Any, get: Any) -> str | None:
    """``get(meta)`` of the first ``msgspec.Meta`` of ``t`` (or of a member of the union
    ``t``) that has it."""
    for m in get_args(t) if get_origin(t) in (Union, types.UnionType) else (t,):
        for meta in get_args(m)[1:] if get_origin(m) is Annotated else ():
            if isinstance(meta, msgspec.Meta) and (v := get(meta)):
                return v
    return None


def origin_patterns(origins: tuple[str, ...], key: str) -> tuple[str, ...]:
    """Allowed-origin patterns (``https://host[:port]``, ``http://host:*``, ``*`` for any)
    normalized; ``key`` names the list."""
    out = []
    for i, o in enumerate(origins):
        # Checked before parsing: urlsplit silently drops CR, LF and tab.
        if any(c in o for c in "\r\n\t\0 "):
            raise ConfigError(f"{key}[{i}]", "contains whitespace, CR, LF or NUL")
        parts = urlsplit(o)
        if o != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/")):
            raise ConfigError(f"{key}[{i}]", f"expected an origin like https://host[:port] or http://host:*, got {o!r}")
        out.append(o.rstrip("/").lower())
    return tuple(out)


def as_plain(v: Any, special: Any = None) -> Any:
    """A configuration value (dataclasses, Structs, tuples) as plain data for
    ``check-config``; ``special(v)`` may convert an object first (NotImplemented: it
    does not)."""
    if special is not None and (out := special(v)) is not NotImplemented:
        return out
    if dataclasses.is_dataclass(v):
        return {f.name: as_plain(getattr(v, f.name), special) for f in dataclasses.fields(v)}
    if isinstance(v, msgspec.Struct):
        return {f: as_plain(getattr(v, f), special) for f in v.__struct_fields__}
    if isinstance(v, (tuple, list)):
        return [as_plain(x, special) for x in v]
    if isinstance(v, frozenset):
        return sorted(as_plain(x, special) for x in v)
    return v
