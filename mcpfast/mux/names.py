"""Namespacing: how one virtual server's names map to (backend, original name).

Theory of operation.  A client of a multiplexed route sees one flat set of tools, prompts
and resources.  The names it sees must (a) not collide between backends and (b) lead
back to the owning backend without a lookup table, so any gateway process can route any
request.  Both come from writing the backend into the name:

* Tools and prompts: ``<backend><sep><name>``.  MCP (server/tools, "Tool Names",
  2025-11-25) says tool names SHOULD use only ``A-Z a-z 0-9 _ - .`` and be 1-128
  characters; backend names are already limited to those characters by the config, so
  the separator must be too (``validate_separator``).  Because backend names may contain
  separator characters, splitting tries each occurrence of the separator and accepts the
  prefix that is a configured backend; ``check_backend_names`` refuses configurations
  where two backends' ``name + sep`` are prefixes of one another, which is exactly the
  condition under which that split is unique for every name (see ``split_name``).
* Resource URIs and URI templates: ``mcpfast:<backend>/<original>``.  The original is
  kept verbatim after the prefix, so *any* string round-trips (the gateway never
  re-escapes it), RFC 6570 template expressions stay intact for the client to expand,
  and the result is a syntactically valid URI (RFC 3986 §3: scheme ``mcpfast``, and
  backend names are ``unreserved`` characters).  There is no ``//`` after the scheme,
  so a WHATWG URL parser treats the rest as an opaque path and does not normalise dot
  segments or case inside it.  The scheme is matched case-insensitively (RFC 3986 §3.1).

Modes (config ``namespacing``): ``always`` prefixes; ``multi`` prefixes only when the
route has more than one backend; ``never`` exposes original names and routes them with
``NameTable``/``ResourceIndex``, tables the list merge fills.  Duplicates are refused
there (``NameConflict``) because the table could not tell the owners apart.  With one
backend and no prefix, everything goes to that backend and no table is needed.

A URI that carries no prefix in a prefixing mode (a ``resource_link`` returned by a
tool, passed on verbatim) falls back to the same index: exact URIs from
``resources/list``, then the backends' URI templates.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "ALWAYS",
    "MULTI",
    "NEVER",
    "MODES",
    "DEFAULT_SEPARATOR",
    "URI_SCHEME",
    "NameConflict",
    "NameTable",
    "ResourceIndex",
    "Namespace",
    "validate_separator",
    "check_backend_names",
    "template_regex",
]

ALWAYS, MULTI, NEVER = "always", "multi", "never"
MODES = (ALWAYS, MULTI, NEVER)
DEFAULT_SEPARATOR = "__"
URI_SCHEME = "mcpfast"

# MCP tool names: A-Z a-z 0-9 _ - . (server/tools "Tool Names").
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+\Z")
MAX_SEPARATOR = 8


_MAX_SPLITS = 4096  # cached name splits per namespace

class NameConflict(Exception):
    """Two backends offer the same name and the route does not prefix names."""

    def __init__(self, kind: str, name: str, backends: Sequence[str]) -> None:
        super().__init__(
            f"{kind} name {name!r} is offered by backends {', '.join(backends)}; "
            "set the route's namespacing to 'multi' or 'always' to keep them apart"
        )
        self.kind = kind
        self.name = name
        self.backends = tuple(backends)


def validate_separator(sep: str) -> str:
    """The separator, if it is 1-8 characters of the tool-name alphabet; else ValueError."""
    if not isinstance(sep, str) or not 1 <= len(sep) <= MAX_SEPARATOR or not _NAME_CHARS.match(sep):
        raise ValueError(
            f"separator must be 1-{MAX_SEPARATOR} characters of A-Z a-z 0-9 _ - . "
            f"(MCP tool-name characters), got {sep!r}"
        )
    return sep


def check_backend_names(backends: Sequence[str], sep: str) -> None:
    """Refuse backend sets whose prefixes make ``split_name`` ambiguous: no
    ``a + sep`` may be a prefix of ``b + sep`` for two different backends (with sep
    ``_``, backends ``a`` and ``a_b`` would both claim ``a_b_x``)."""
    if len(set(backends)) != len(backends):
        raise ValueError("a route lists the same backend twice")
    for b in backends:
        if not _NAME_CHARS.match(b):
            raise ValueError(f"backend name {b!r} is not made of A-Z a-z 0-9 _ - .")
    prefixes = sorted(b + sep for b in backends)
    # Sorted order puts any string directly before the strings it is a prefix of.
    for a, b in itertools.pairwise(prefixes):
        if b.startswith(a):
            raise ValueError(
                f"backend names {a[: -len(sep)]!r} and {b[: -len(sep)]!r} are ambiguous with separator "
                f"{sep!r}: choose another separator or rename one"
            )


# ---------------------------------------------------------------------------------
# RFC 6570 templates → regular expressions, for routing un-prefixed URIs.

_EXPR = re.compile(r"\{([^{}]*)\}")


def template_regex(template: str) -> re.Pattern:
    """A regex that matches every expansion of ``template`` (and some more).

    Routing only needs to know *which backend* a URI belongs to, not the variable
    values, so each expression may match any text: literal parts must match exactly,
    expressions match ``.*``.  Backends whose templates overlap are resolved by order.
    """
    parts = []
    pos = 0
    for m in _EXPR.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(".*?")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


class NameTable:
    """Exposed name → (backend, original name), for the unprefixed modes."""

    __slots__ = ("kind", "_owner")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._owner: dict[str, tuple[str, str]] = {}

    def add(self, backend: str, name: str, exposed: str | None = None) -> None:
        exposed = name if exposed is None else exposed
        have = self._owner.get(exposed)
        if have is not None and have[0] != backend:
            raise NameConflict(self.kind, exposed, (have[0], backend))
        self._owner[exposed] = (backend, name)

    def check(self, backend: str, names: Iterable[str]) -> None:
        """Raise ``NameConflict`` if any of ``names`` belongs to another backend,
        without changing the table (so a refused page leaves no half entries)."""
        for n in names:
            have = self._owner.get(n)
            if have is not None and have[0] != backend:
                raise NameConflict(self.kind, n, (have[0], backend))

    def get(self, exposed: str) -> tuple[str, str] | None:
        return self._owner.get(exposed)

    def forget(self, backend: str) -> None:
        self._owner = {k: v for k, v in self._owner.items() if v[0] != backend}

    def __len__(self) -> int:
        return len(self._owner)


class ResourceIndex:
    """Original resource URI / URI template → backend, filled from list results.
    Templates are tried in the route's backend order, so overlaps resolve the same way
    in every process whatever order the lists arrived in."""

    __slots__ = ("_order", "_uris", "_templates")

    def __init__(self, backends: Sequence[str] = ()) -> None:
        self._order = tuple(backends)
        self._uris: dict[str, str] = {}
        self._templates: dict[str, dict[str, re.Pattern]] = {}  # backend → template → regex

    def add_uri(self, backend: str, uri: str) -> None:
        self._uris.setdefault(uri, backend)

    def add_template(self, backend: str, template: str) -> None:
        per = self._templates.setdefault(backend, {})
        if template not in per:
            per[template] = template_regex(template)

    def owner_of_uri(self, uri: str) -> str | None:
        return self._uris.get(uri)

    def _ordered(self):
        order = self._order or tuple(self._templates)
        for b in order:
            per = self._templates.get(b)
            if per:
                yield b, per

    def owner_of_template(self, template: str) -> str | None:
        for b, per in self._ordered():
            if template in per:
                return b
        return None

    def resolve(self, uri: str) -> str | None:
        """The backend that owns ``uri``: an exact listed URI first, then the first
        backend (in route order) with a template that matches it."""
        b = self._uris.get(uri)
        if b is not None:
            return b
        for b, per in self._ordered():
            for rx in per.values():
                if rx.match(uri):
                    return b
        return None

    def forget(self, backend: str, *, uris: bool = True, templates: bool = True) -> None:
        if uris:
            self._uris = {u: b for u, b in self._uris.items() if b != backend}
        if templates:
            self._templates.pop(backend, None)


class Namespace:
    """The naming rules of one route (virtual server).

    Built once at config load from the route's backend names (in order), separator,
    mode and URI scheme.  ``prefixed`` says whether names carry the backend.  The tables
    (``tools``, ``prompts``, ``resources``) are filled by the list merge and consulted
    only where the name itself does not say where it goes.
    """

    __slots__ = (
        "backends", "separator", "mode", "scheme", "prefixed", "single",
        "_set", "_scheme_l", "tools", "prompts", "resources", "_splits",
    )  # fmt: skip

    def __init__(
        self,
        backends: Sequence[str],
        *,
        separator: str = DEFAULT_SEPARATOR,
        mode: str = MULTI,
        uri_scheme: str = URI_SCHEME,
    ) -> None:
        if not backends:
            raise ValueError("a route needs at least one backend")
        if mode not in MODES:
            raise ValueError(f"namespacing must be one of {', '.join(MODES)}, got {mode!r}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", uri_scheme):
            raise ValueError(f"uri scheme {uri_scheme!r} is not an RFC 3986 scheme")
        validate_separator(separator)
        self.backends = tuple(backends)
        self.separator = separator
        self.mode = mode
        self.scheme = uri_scheme
        self._scheme_l = uri_scheme.lower() + ":"
        self.single = self.backends[0] if len(self.backends) == 1 else None
        self.prefixed = mode == ALWAYS or (mode == MULTI and len(self.backends) > 1)
        check_backend_names(self.backends, separator)
        self._set = frozenset(self.backends)
        # Split results by exposed name: fixed by the configuration, so never stale.
        self._splits: dict[str, tuple[str, str]] = {}
        self.tools = NameTable("tool")
        self.prompts = NameTable("prompt")
        self.resources = ResourceIndex(self.backends)

    # --- tools and prompts -----------------------------------------------------
    def expose_name(self, backend: str, name: str) -> str:
        return backend + self.separator + name if self.prefixed else name

    def split_name(self, exposed: str) -> tuple[str, str] | None:
        """``(backend, original)`` for a prefixed name, or None when no configured
        backend prefixes it.  Unique: if two occurrences of the separator both followed
        a backend name, one ``backend + sep`` would be a prefix of the other, which
        ``check_backend_names`` refused."""
        hit = self._splits.get(exposed)
        if hit is not None:
            return hit
        sep = self.separator
        n = len(sep)
        i = exposed.find(sep, 1)  # backend names are not empty
        while i >= 0:
            b = exposed[:i]
            if b in self._set:
                hit = (b, exposed[i + n :])
                if len(self._splits) < _MAX_SPLITS:  # names are client-chosen: bounded
                    self._splits[exposed] = hit
                return hit
            i = exposed.find(sep, i + 1)
        return None

    def resolve_name(self, kind: str, exposed: str) -> tuple[str, str] | None:
        """Owner of a tool (``kind="tool"``) or prompt (``"prompt"``) name as the client
        sees it, or None when unknown."""
        if self.prefixed:
            return self.split_name(exposed)
        if self.single is not None:
            return self.single, exposed
        table = self.tools if kind == "tool" else self.prompts
        return table.get(exposed)

    # --- resources -------------------------------------------------------------
    def expose_uri(self, backend: str, uri: str) -> str:
        return f"{self.scheme}:{backend}/{uri}" if self.prefixed else uri

    def split_uri(self, exposed: str) -> tuple[str, str] | None:
        """``(backend, original)`` for a URI this namespace wrapped, else None."""
        n = len(self._scheme_l)
        if exposed[:n].lower() != self._scheme_l:
            return None
        slash = exposed.find("/", n)
        if slash < 0:
            return None
        b = exposed[n:slash]
        if b not in self._set:
            return None
        return b, exposed[slash + 1 :]

    def resolve_uri(self, uri: str) -> tuple[str, str] | None:
        """Owner of a resource URI (or template URI) as the client sent it."""
        if self.prefixed:
            hit = self.split_uri(uri)
            if hit is not None:
                return hit
        elif self.single is not None:
            return self.single, uri
        b = self.resources.resolve(uri)
        return None if b is None else (b, uri)

    def resolve_template(self, template: str) -> tuple[str, str] | None:
        """Owner of a URI *template* named in ``completion/complete``'s ``ref/resource``."""
        if self.prefixed:
            return self.split_uri(template)
        if self.single is not None:
            return self.single, template
        b = self.resources.owner_of_template(template) or self.resources.resolve(template)
        return None if b is None else (b, template)

    def forget(self, backend: str, list_method: str) -> None:
        """Drop what the tables learnt from ``backend``'s ``list_method`` list (after its
        ``list_changed``)."""
        if list_method == "tools/list":
            self.tools.forget(backend)
        elif list_method == "prompts/list":
            self.prompts.forget(backend)
        elif list_method == "resources/list":
            self.resources.forget(backend, templates=False)
        elif list_method == "resources/templates/list":
            self.resources.forget(backend, uris=False)
