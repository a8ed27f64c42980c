"""Merging: one initialize answer and one set of lists out of several backends.

Theory of operation.  The gateway answers ``initialize`` and the four list methods
itself, from what the backends answered.  These are the only messages of a multiplexed
route that are parsed into Python objects (orjson) and re-encoded; everything else is
spliced (``rewrite.py``).

Initialize.  Each backend negotiates its own protocol version (the gateway asks each for
the client's version and accepts what the backend answers).  The client gets the version
the gateway negotiates with it (``negotiate_version``), a configured ``serverInfo``,
``merge_capabilities`` of the backends that answered, and ``merge_instructions``.

Capabilities are merged by what the gateway can *deliver*, capability by capability:

=================  =====================================================================
``tools``          present if any backend has it (calls are routed to the owner);
``prompts``        ``listChanged`` true if any backend's is (the gateway relays each
                   backend's ``list_changed`` on the merged GET stream)
``resources``      present if any; ``subscribe`` / ``listChanged`` true if any backend's
                   is -- a subscribe for a backend without it gets that backend's own
                   "method not found" answer
``logging``        present if any (``logging/setLevel`` fans out to every backend)
``completions``    present if any (``completion/complete`` is routed by its ``ref``)
``tasks``          dropped: task ids and their ``tasks/*`` methods would need mapping
                   across backends, which the gateway does not do
``experimental``   dropped: the gateway cannot know what it would have to relay
anything else      dropped, for the same reason
=================  =====================================================================

The *client's* capabilities go to each backend filtered the same way
(``backend_client_capabilities``): ``sampling``, ``elicitation`` and ``roots`` are
relayed (server→client requests get routable ids, ``ids.py``); ``tasks`` and
``experimental`` are not.

Lists.  A client's ``tools/list`` (etc.) fans out to every backend; each backend page is
prepared once (``prepare_page``: names or URIs exposed through the route's
``Namespace``, the item list encoded to JSON) and may be cached (``ListCache``); the
client's page is the concatenation of the prepared pages -- bytes joined, no item
re-encoded on a cache hit.  Pagination uses a composite cursor (``encode_cursor``): the
list of (backend, that backend's nextCursor) for every backend that still has pages.
The first page holds every backend's first page (so a client that never follows
``nextCursor`` still sees every backend, and the usual single-page backends cost one
round trip); each following page holds the next page of each backend that has more,
until none has.  A cursor that does not decode, names a list of another kind or an
unknown backend is ``InvalidCursor`` (-32602, MCP pagination "Error Handling").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..wire.rpcerrors import INVALID_PARAMS
from .ids import json_id
from .names import Namespace

__all__ = [
    "SUPPORTED_VERSIONS",
    "RELAYED_CLIENT_CAPABILITIES",
    "LIST_METHODS",
    "LIST_CHANGED",
    "InvalidCursor",
    "BadBackendAnswer",
    "load_json",
    "dump_json",
    "negotiate_version",
    "backend_client_capabilities",
    "merge_capabilities",
    "merge_instructions",
    "initialize_result",
    "encode_cursor",
    "decode_cursor",
    "plan_page",
    "BackendPage",
    "prepare_page",
    "assemble_result",
    "next_cursor",
    "response_body",
    "ListCache",
]

#: Versions the gateway speaks with its clients, newest first (session era: the
#: gateway's virtual server keeps sessions).
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")

#: Client capabilities whose server→client traffic the gateway can route.
RELAYED_CLIENT_CAPABILITIES = ("sampling", "elicitation", "roots")

# list method → (result key holding the items, the item field that is namespaced,
#                 names.NameTable kind or "uri"/"template")
LIST_METHODS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "name", "tool"),
    "prompts/list": ("prompts", "name", "prompt"),
    "resources/list": ("resources", "uri", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "template"),
}
_CURSOR_TAG = {"tools/list": "t", "prompts/list": "p", "resources/list": "r", "resources/templates/list": "rt"}

#: list_changed notification → the list methods it makes stale.
LIST_CHANGED: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}


class InvalidCursor(Exception):
    """A client's ``cursor`` the gateway did not make: answer -32602."""

    code = INVALID_PARAMS


class BadBackendAnswer(Exception):
    """A backend's list or initialize result is not shaped as MCP says (treat the
    backend as failed for this request: fail-open drops it, fail-closed errors)."""


# ---------------------------------------------------------------------------------
# JSON: orjson, except where it would lose information.

_LONG_INT = re.compile(rb"[0-9]{19}")


def load_json(data: bytes | bytearray | memoryview) -> Any:
    """Parse JSON.  orjson turns integers beyond 64 bits into floats; a text with a run
    of 19+ digits (which may be such an integer) goes through the standard library,
    which keeps them exact."""
    if _LONG_INT.search(data):
        return json.loads(bytes(data))
    return orjson.loads(data)


def dump_json(obj: Any) -> bytes:
    """Compact JSON; integers beyond orjson's 64-bit range fall back to the stdlib."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------------------------
# initialize


def negotiate_version(requested: str | None, supported: Sequence[str] = SUPPORTED_VERSIONS) -> str:
    """MCP lifecycle "Version Negotiation": the client's version if we support it,
    else our latest (the client then decides whether it can go on)."""
    if requested in supported:
        return requested  # type: ignore[return-value]
    return supported[0]


def backend_client_capabilities(client_caps: Mapping[str, Any] | None) -> dict:
    """The capabilities the gateway declares to each backend on the client's behalf."""
    if not client_caps:
        return {}
    return {k: client_caps[k] for k in RELAYED_CLIENT_CAPABILITIES if k in client_caps}


def _flag(caps: Mapping, key: str, flag: str) -> bool:
    v = caps.get(key)
    return isinstance(v, dict) and v.get(flag) is True


def merge_capabilities(backend_caps: Iterable[Mapping[str, Any] | None]) -> dict:
    """Server capabilities for the client, from the backends that answered (see the
    module table)."""
    caps_list = [c for c in backend_caps if isinstance(c, Mapping)]
    out: dict[str, Any] = {}
    for key in ("prompts", "resources", "tools"):
        have = [c for c in caps_list if isinstance(c.get(key), Mapping)]
        if not have:
            continue
        entry: dict[str, Any] = {}
        if key == "resources" and any(_flag(c, key, "subscribe") for c in have):
            entry["subscribe"] = True
        if any(_flag(c, key, "listChanged") for c in have):
            entry["listChanged"] = True
        out[key] = entry
    for key in ("logging", "completions"):
        if any(isinstance(c.get(key), Mapping) for c in caps_list):
            out[key] = {}
    return out


def merge_instructions(
    entries: Iterable[tuple[str, str | None]],
    ns: Namespace | None = None,
    preamble: str | None = None,
) -> str | None:
    """One ``instructions`` text: the optional preamble, then each backend's own
    instructions under a heading naming it -- and, when names are prefixed, how that
    backend's tools/prompts/resources are named, since its text refers to them by their
    original names."""
    blocks = []
    if preamble:
        blocks.append(preamble.strip())
    for backend, text in entries:
        if not isinstance(text, str) or not text.strip():
            continue
        head = f"## {backend}"
        if ns is not None and ns.prefixed:
            head += (
                f"\n(Tools and prompts of this server are named `{ns.expose_name(backend, '<name>')}`, "
                f"its resources `{ns.expose_uri(backend, '<uri>')}`.)"
            )
        blocks.append(f"{head}\n\n{text.strip()}")
    return "\n\n".join(blocks) if blocks else None


def initialize_result(
    protocol_version: str,
    server_info: Mapping[str, Any],
    capabilities: Mapping[str, Any],
    instructions: str | None = None,
) -> dict:
    result: dict[str, Any] = {
        "protocolVersion": protocol_version,
        "capabilities": dict(capabilities),
        "serverInfo": dict(server_info),
    }
    if instructions:
        result["instructions"] = instructions
    return result


# ---------------------------------------------------------------------------------
# Composite cursor


def encode_cursor(method: str, positions: Sequence[tuple[str, str]]) -> str | None:
    """The client's ``nextCursor``: base64url (no padding) of the JSON array
    ``[kind, backend1, cursor1, backend2, cursor2, ...]``; None when no backend has more."""
    if not positions:
        return None
    arr: list[str] = [_CURSOR_TAG[method]]
    for backend, cursor in positions:
        arr.append(backend)
        arr.append(cursor)
    return base64.urlsafe_b64encode(orjson.dumps(arr)).rstrip(b"=").decode("ascii")


def decode_cursor(method: str, cursor: str, backends: Iterable[str]) -> list[tuple[str, str]]:
    """``[(backend, backend cursor), ...]`` from a cursor ``encode_cursor`` made for
    ``method`` on a route with ``backends``; ``InvalidCursor`` otherwise."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 65536:
        raise InvalidCursor("invalid cursor")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", cursor) or len(cursor) % 4 == 1:
        raise InvalidCursor("invalid cursor")
    try:
        arr = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidCursor("invalid cursor") from None
    if (
        not isinstance(arr, list)
        or len(arr) < 3
        or len(arr) % 2 != 1
        or arr[0] != _CURSOR_TAG.get(method)
        or not all(isinstance(x, str) for x in arr)
    ):
        raise InvalidCursor("invalid cursor")
    known = set(backends)
    out = []
    seen = set()
    for i in range(1, len(arr), 2):
        b = arr[i]
        if b not in known or b in seen:
            raise InvalidCursor("invalid cursor")
        seen.add(b)
        out.append((b, arr[i + 1]))
    return out


def plan_page(method: str, cursor: str | None, backends: Sequence[str]) -> list[tuple[str, str | None]]:
    """Which backend pages make up the client's page: every backend's first page for no
    cursor, else the positions the cursor holds.  Order follows the route's backends."""
    if method not in LIST_METHODS:
        raise ValueError(f"not a list method: {method}")
    if cursor is None:
        return [(b, None) for b in backends]
    positions = dict(decode_cursor(method, cursor, backends))
    return [(b, positions[b]) for b in backends if b in positions]


# ---------------------------------------------------------------------------------
# Pages


class BackendPage:
    """One backend page, prepared for the client: ``items_json`` is the exposed items
    encoded as JSON *without* the brackets (comma-separated, ``b""`` for none), so pages
    are merged by joining bytes.  ``names`` holds each item's name or URI as the backend
    has it (what policy rules match), in item order, when known."""

    __slots__ = ("backend", "items_json", "count", "next_cursor", "names")

    def __init__(
        self, backend: str, items_json: bytes, count: int, next_cursor: str | None, names: tuple | None = None
    ) -> None:
        self.backend = backend
        self.items_json = items_json
        self.count = count
        self.next_cursor = next_cursor
        self.names = names

    def keeping(self, mask: Sequence[bool]) -> "BackendPage":
        """A new page with only the items whose ``mask`` entry is true (this page, which
        may be cached and shared, is left as it is)."""
        items = load_json(b"[" + self.items_json + b"]")
        kept = [it for it, keep in zip(items, mask, strict=True) if keep]
        names = tuple(n for n, keep in zip(self.names or (), mask) if keep) if self.names is not None else None
        return BackendPage(self.backend, dump_json(kept)[1:-1], len(kept), self.next_cursor, names)

    def items(self) -> list:
        """The exposed items as objects (tests, debugging)."""
        return orjson.loads(b"[" + self.items_json + b"]")


def prepare_page(method: str, backend: str, result: Any, ns: Namespace) -> BackendPage:
    """Expose one backend page: rename every item's name/URI through ``ns``, record the
    owners in ``ns``'s tables (for routing unprefixed names/URIs), encode the items.
    ``result`` is the backend's orjson-parsed ``result`` object; its items are changed in
    place (it is ours).  Raises ``BadBackendAnswer`` for a result that is not a list
    result, and ``names.NameConflict`` in a ``never`` route when another backend already
    owns a name (or the page repeats one)."""
    key, field, kind = LIST_METHODS[method]
    if not isinstance(result, dict):
        raise BadBackendAnswer(f"{backend}: {method} result is not an object")
    items = result.get(key)
    if not isinstance(items, list):
        raise BadBackendAnswer(f"{backend}: {method} result has no {key!r} array")
    nc = result.get("nextCursor")
    if nc is not None and not isinstance(nc, str):
        raise BadBackendAnswer(f"{backend}: {method} nextCursor is not a string")
    if nc == "":
        nc = None  # an empty cursor would be indistinguishable from "no more" for most clients
    kept = [it for it in items if isinstance(it, dict) and isinstance(it.get(field), str)]
    originals = [it[field] for it in kept]
    if kind in ("tool", "prompt"):
        if not ns.prefixed and ns.single is None:
            table = ns.tools if kind == "tool" else ns.prompts
            # Unprefixed names over several backends (mode "never"): owners must be unique.
            table.check(backend, originals)
            for n in originals:
                table.add(backend, n)
        if ns.prefixed:
            for it, n in zip(kept, originals):
                it[field] = ns.expose_name(backend, n)
    else:
        idx = ns.resources
        for it, u in zip(kept, originals):
            if kind == "uri":
                idx.add_uri(backend, u)
            else:
                idx.add_template(backend, u)
            if ns.prefixed:
                it[field] = ns.expose_uri(backend, u)
    encoded = dump_json(kept)
    return BackendPage(backend, encoded[1:-1], len(kept), nc, tuple(originals))


def next_cursor(method: str, pages: Iterable[BackendPage]) -> str | None:
    """The client's ``nextCursor`` after ``pages`` (route order)."""
    return encode_cursor(method, [(p.backend, p.next_cursor) for p in pages if p.next_cursor is not None])


def assemble_result(method: str, pages: Sequence[BackendPage], cursor: str | None = None) -> bytes:
    """The client's ``result`` object as JSON bytes: the pages' items in order, and
    ``nextCursor`` (computed from the pages unless given)."""
    key = LIST_METHODS[method][0]
    if cursor is None:
        cursor = next_cursor(method, pages)
    body = b",".join(p.items_json for p in pages if p.items_json)
    out = b'{"' + key.encode("ascii") + b'":[' + body + b"]"
    if cursor is not None:
        out += b',"nextCursor":' + orjson.dumps(cursor)
    return out + b"}"


def response_body(rpc_id: int | str | None, result_json: bytes) -> bytes:
    """A JSON-RPC response around an already encoded result."""
    return b'{"jsonrpc":"2.0","id":' + json_id(rpc_id) + b',"result":' + result_json + b"}"


# ---------------------------------------------------------------------------------
# Cache


class _Slot:
    __slots__ = ("gen", "pages")

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.pages: dict[str | None, tuple[BackendPage, float]] = {}


class ListCache:
    """Prepared backend pages, per (scope, list method, backend cursor).

    ``scope`` says whose list it is: ``(route, backend)`` shares a backend's lists among
    all sessions of a route (a ``list_changed`` from any session invalidates for all);
    ``(route, backend, backend session id)`` keeps them per session, for backends whose
    lists differ per session.  Pages are prepared by the route's ``Namespace``, so a
    scope must include the route.

    Invalidation races with fetches: read ``generation(scope, method)`` *before* asking
    the backend and hand it to ``put``; a page fetched before an invalidation (or an
    eviction) is then not stored after it.  ``ttl`` (seconds) bounds staleness for
    backends that never send ``list_changed``; ``max_entries`` bounds the number of
    pages (whole scope slots are evicted, least recently used first: the slots of
    abandoned sessions go before those in use).
    """

    def __init__(self, ttl: float | None = None, max_entries: int = 4096, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._slots: dict[tuple[Hashable, str], _Slot] = {}
        self._count = 0
        # Generations come from one counter.  A slot that does not exist has generation
        # ``_floor``, the counter value at the last eviction, so a fetch that began
        # before its slot was invalidated and then evicted cannot store afterwards.
        self._epoch = 0
        self._floor = 0
        self.hits = 0
        self.misses = 0

    def generation(self, scope: Hashable, method: str) -> int:
        slot = self._slots.get((scope, method))
        return self._floor if slot is None else slot.gen

    def get(self, scope: Hashable, method: str, cursor: str | None) -> BackendPage | None:
        key = (scope, method)
        slots = self._slots
        slot = slots.get(key)
        if slot is not None:
            hit = slot.pages.get(cursor)
            if hit is not None:
                page, stored = hit
                if self.ttl is None or self._clock() - stored < self.ttl:
                    self.hits += 1
                    slots[key] = slots.pop(key)  # now the most recently used
                    return page
                del slot.pages[cursor]
                self._count -= 1
        self.misses += 1
        return None

    def put(self, scope: Hashable, method: str, cursor: str | None, page: BackendPage, generation: int) -> bool:
        """Store ``page``; False (not stored) when the lists changed since ``generation``."""
        key = (scope, method)
        slot = self._slots.get(key)
        if slot is None:
            if generation != self._floor:
                return False
            slot = self._slots[key] = _Slot(generation)
        elif slot.gen != generation:
            return False
        if cursor not in slot.pages:
            self._count += 1
        slot.pages[cursor] = (page, self._clock())
        self._evict(slot)
        return True

    def _over(self) -> bool:
        # Empty slots (left by invalidations) are bounded too: per-session scopes come and go.
        return self._count > self.max_entries or len(self._slots) > 2 * self.max_entries

    def _evict(self, keep: _Slot | None) -> None:
        if not self._over():
            return
        for key, slot in list(self._slots.items()):
            if not self._over():
                break
            if slot is keep:
                continue
            self._count -= len(slot.pages)
            del self._slots[key]
            self._epoch += 1
            self._floor = self._epoch

    def invalidate(self, scope: Hashable, methods: Iterable[str] | None = None) -> None:
        """Forget ``scope``'s pages of ``methods`` (all list methods when None)."""
        for m in LIST_METHODS if methods is None else methods:
            self._epoch += 1
            slot = self._slots.pop((scope, m), None)
            if slot is not None:
                self._count -= len(slot.pages)
            # An empty slot carries the new generation (cheap: one per scope and method).
            self._slots[(scope, m)] = _Slot(self._epoch)
        self._evict(None)

    def on_notification(self, scope: Hashable, method: str) -> tuple[str, ...]:
        """Handle a backend notification: for a ``notifications/*/list_changed``
        invalidate and return the list methods it made stale, else return ()."""
        stale = LIST_CHANGED.get(method, ())
        if stale:
            self.invalidate(scope, stale)
        return stale

    @property
    def size(self) -> int:
        """Pages held.  (Not ``__len__``: an empty cache must not be falsy.)"""
        return self._count
