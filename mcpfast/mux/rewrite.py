"""Request and message rewriting by splicing scanned spans.

Theory of operation.  Between a client and the backends of a multiplexed route, most
messages need at most one or two values changed: the tool name loses its backend
prefix, a server→client request id gains one, a client's reply gets its original id
back.  The envelope scanner (``core.scan_jsonrpc``) already reports the byte spans of
exactly those values, so a rewrite is ``splice_many(body, [(start, end, new JSON)])``:
one copy of the body, no JSON objects built, every other byte (the 1 MB ``arguments``
of a tool call, the result of a tool) forwarded as it came.

Client → backends, ``route_client_message`` decides per message:

==============================  ===================================================
``tools/call``, ``prompts/get``  FORWARD to the owner of ``params.name``; unknown name:
                                 -32602 (server/tools "Error Handling"; server/prompts:
                                 "Invalid prompt name: -32602")
``resources/read``,              FORWARD to the owner of ``params.uri``; unknown:
``resources/(un)subscribe``      -32002 "Resource not found" with ``data.uri``
                                 (server/resources "Error Handling")
``completion/complete``          FORWARD by ``params.ref``: the scanner reports no span
                                 inside ``ref``, so this one small ``params`` object is
                                 parsed (orjson) and re-encoded; unknown ref: -32602
client responses / errors        FORWARD to the backend named by the id
                                 (``ids.decode_request_id``) with the original id back
``notifications/progress``       FORWARD by ``progressToken`` (a token the gateway put on
                                 a server→client request); others are dropped
``notifications/cancelled``      FANOUT unchanged: it names the client's own request id,
                                 which the gateway forwarded unchanged to one backend; the
                                 others ignore an unknown id (MCP cancellation: "MAY
                                 ignore"), so no table is needed to find the owner
``logging/setLevel``,            FANOUT (the gateway answers the request itself)
``notifications/roots/list_changed``
``initialize``, ``ping``, lists  LOCAL: answered by the gateway (``merge.py``)
``notifications/initialized``    LOCAL (the gateway sent its own to each backend)
other requests                   -32601 Method not found
other notifications              DROP
==============================  ===================================================

Backend → client, ``rewrite_backend_message``: a server→client request's ``id`` and
its ``params._meta.progressToken`` are encoded with the backend (``ids.py``); a
``notifications/cancelled`` ``requestId`` too (it names such a request);
``notifications/resources/updated`` gets the namespaced ``uri`` the client subscribed
to.  Answers to client requests carry the client's own id and pass unchanged.

Batches (2025-03-26) are not routed here: the gateway splits a client batch into its
elements first (they may go to different backends).  A backend's batch is rewritten
element by element in one ``splice_many``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..wire.core import (
    KIND_NOTIFICATION,
    KIND_REQUEST,
    ProtocolError,
    encode_sse_event,
    scan_jsonrpc,
    splice,
    splice_many,
)
from ..wire.rpcerrors import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RESOURCE_NOT_FOUND, jsonrpc_error_body
from .ids import (
    MergedStreamIds,
    decode_progress_token,
    decode_request_id,
    encode_progress_token,
    encode_request_id,
    json_id,
)
from .merge import LIST_METHODS, dump_json, load_json
from .names import Namespace

__all__ = [
    "FORWARD",
    "FANOUT",
    "LOCAL",
    "DROP",
    "Action",
    "RouteError",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "RESOURCE_NOT_FOUND",
    "route_client_message",
    "rewrite_backend_message",
    "rewrite_sse_event",
    "replace_id",
]


FORWARD, FANOUT, LOCAL, DROP = 1, 2, 3, 4

_LOCAL = frozenset(("initialize", "ping", "notifications/initialized", *LIST_METHODS))
_FANOUT = frozenset(("logging/setLevel", "notifications/roots/list_changed", "notifications/cancelled"))
_BY_NAME = {"tools/call": "tool", "prompts/get": "prompt"}
_BY_URI = frozenset(("resources/read", "resources/subscribe", "resources/unsubscribe"))


class RouteError(Exception):
    """A client message the gateway answers itself with a JSON-RPC error.

    ``status`` is the HTTP status: 200 for a request (the error is its JSON-RPC answer),
    400 for a notification or response that cannot be delivered (Streamable HTTP: input
    the server cannot accept gets an HTTP error, optionally with an id-less error body).
    """

    def __init__(self, code: int, message: str, data: Any = None, status: int = 200, maybe_stale: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status
        # True when the name was looked up in a table the list merge fills (unprefixed
        # names, unprefixed URIs): a process that has not listed yet may not know it, so
        # the gateway should refresh the lists (through the cache) and route once more.
        self.maybe_stale = maybe_stale

    def body(self, rpc_id: int | str | None = None) -> bytes:
        return jsonrpc_error_body(self.code, self.message, rpc_id, self.data)


class Action:
    """What to do with one client message.

    ``kind``: FORWARD (``body`` to ``backend``), FANOUT (``body`` to every backend of the
    session), LOCAL (the gateway answers ``method`` itself), DROP.  For FORWARD,
    ``name`` is the original name/URI the backend will see (to rewrite an ``Mcp-Name``
    header, 2026-07-28) or None.
    """

    __slots__ = ("kind", "backend", "body", "method", "name")

    def __init__(self, kind: int, body: bytes, method: str | None, backend: str | None = None, name: str | None = None):
        self.kind = kind
        self.backend = backend
        self.body = body
        self.method = method
        self.name = name

    def __repr__(self) -> str:
        kind = {FORWARD: "FORWARD", FANOUT: "FANOUT", LOCAL: "LOCAL", DROP: "DROP"}[self.kind]
        return f"Action({kind}, backend={self.backend!r}, method={self.method!r}, name={self.name!r})"


_ENCODED: dict[str, bytes] = {}


def _str_json(s: str) -> bytes:
    """``s`` as a JSON string; the names and URIs spliced in repeat, so each is encoded
    once (bounded: they come from clients)."""
    b = _ENCODED.get(s)
    if b is None:
        b = orjson.dumps(s)
        if len(_ENCODED) < 4096:
            _ENCODED[s] = b
    return b


def route_client_message(body: bytes, env, ns: Namespace) -> Action:
    """Decide where one client message (``env`` = its ``scan_jsonrpc`` envelope, spans
    into ``body``) goes, rewriting what the backend must see differently.  Raises
    ``RouteError`` for what the gateway must refuse."""
    try:
        return _route(body, env, ns)
    except RouteError as err:
        if env.kind != KIND_REQUEST:
            err.status = 400  # nothing may answer a notification or response in JSON-RPC
        raise


def _route(body: bytes, env, ns: Namespace) -> Action:
    kind = env.kind
    method = env.method
    if kind == KIND_REQUEST or kind == KIND_NOTIFICATION:
        target = _BY_NAME.get(method)
        if target is not None:
            name = env.name
            if name is None:
                raise RouteError(INVALID_PARAMS, f"Invalid params: {method} needs params.name (a string)")
            hit = ns.resolve_name(target, name)
            if hit is None:
                raise RouteError(INVALID_PARAMS, f"Unknown {target}: {name}", maybe_stale=not ns.prefixed)
            backend, original = hit
            if original != name:
                s, e = env.name_span
                body = splice(body, s, e, _str_json(original))
            return Action(FORWARD, body, method, backend, original)
        if method in _BY_URI:
            uri = env.uri
            if uri is None:
                raise RouteError(INVALID_PARAMS, f"Invalid params: {method} needs params.uri (a string)")
            hit = ns.resolve_uri(uri)
            if hit is None:
                raise RouteError(RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri}, maybe_stale=True)
            backend, original = hit
            if original != uri:
                s, e = env.uri_span
                body = splice(body, s, e, _str_json(original))
            return Action(FORWARD, body, method, backend, original)
        if method == "completion/complete":
            return _route_completion(body, env, ns)
        if method in _LOCAL:
            return Action(LOCAL, body, method)
        if method in _FANOUT:
            return Action(FANOUT, body, method)
        if method == "notifications/progress":
            # Its token is params.progressToken, not under _meta, so the scanner has no
            # span for it: parse the (small) params.
            return _route_progress(body, env, ns)
        if kind == KIND_NOTIFICATION:
            return Action(DROP, body, method)
        raise RouteError(METHOD_NOT_FOUND, f"Method not found: {method}")
    # A response or error: the client answers a server→client request.
    hit = decode_request_id(env.id)
    if hit is None or hit[0] not in ns.backends:
        raise RouteError(INVALID_REQUEST, "response to an unknown request id", status=400)
    backend, original = hit
    s, e = env.id_span
    return Action(FORWARD, splice(body, s, e, json_id(original)), None, backend)


def _params(body: bytes, env) -> dict:
    span = env.params_span
    if span is None:
        raise RouteError(INVALID_PARAMS, f"Invalid params: {env.method} needs params")
    params = load_json(memoryview(body)[span[0] : span[1]])
    if not isinstance(params, dict):
        raise RouteError(INVALID_PARAMS, f"Invalid params: {env.method} params must be an object")
    return params


def _route_completion(body: bytes, env, ns: Namespace) -> Action:
    params = _params(body, env)
    ref = params.get("ref")
    if not isinstance(ref, dict):
        raise RouteError(INVALID_PARAMS, "Invalid params: completion/complete needs params.ref")
    rtype = ref.get("type")
    if rtype == "ref/prompt":
        name = ref.get("name")
        if not isinstance(name, str):
            raise RouteError(INVALID_PARAMS, "Invalid params: ref/prompt needs a name")
        hit = ns.resolve_name("prompt", name)
        if hit is None:
            raise RouteError(INVALID_PARAMS, f"Unknown prompt: {name}", maybe_stale=not ns.prefixed)
        field, value = "name", name
    elif rtype == "ref/resource":
        uri = ref.get("uri")
        if not isinstance(uri, str):
            raise RouteError(INVALID_PARAMS, "Invalid params: ref/resource needs a uri")
        hit = ns.resolve_template(uri)
        if hit is None:
            raise RouteError(INVALID_PARAMS, f"Unknown resource template: {uri}", maybe_stale=not ns.prefixed)
        field, value = "uri", uri
    else:
        raise RouteError(INVALID_PARAMS, f"Invalid params: unknown completion ref type {rtype!r}")
    backend, original = hit
    if original != value:
        ref[field] = original
        s, e = env.params_span
        body = splice(body, s, e, dump_json(params))
    return Action(FORWARD, body, env.method, backend, original)


def _route_progress(body: bytes, env, ns: Namespace) -> Action:
    params = _params(body, env)
    token = params.get("progressToken")
    hit = decode_progress_token(token) if isinstance(token, str) else None
    if hit is None or hit[0] not in ns.backends:
        # Progress for something the gateway never handed out: nobody to tell.
        return Action(DROP, body, env.method)
    backend, original = hit
    params["progressToken"] = original
    s, e = env.params_span
    return Action(FORWARD, splice(body, s, e, dump_json(params)), env.method, backend)


# ---------------------------------------------------------------------------------
# Backend → client


def _backend_edits(env, backend: str, ns: Namespace, edits: list) -> None:
    kind = env.kind
    if kind == KIND_REQUEST:
        if env.id is not None:  # an id of null is not a request id (JSON-RPC 2.0 §4); leave it
            s, e = env.id_span
            edits.append((s, e, _str_json(encode_request_id(backend, env.id))))
        if env.progress_token_span is not None and env.progress_token is not None:
            s, e = env.progress_token_span
            edits.append((s, e, _str_json(encode_progress_token(backend, env.progress_token))))
    elif kind == KIND_NOTIFICATION:
        method = env.method
        if method == "notifications/cancelled":
            if env.request_id_span is not None and env.request_id is not None:
                s, e = env.request_id_span
                edits.append((s, e, _str_json(encode_request_id(backend, env.request_id))))
        elif method == "notifications/resources/updated":
            if ns.prefixed and env.uri_span is not None:
                s, e = env.uri_span
                edits.append((s, e, _str_json(ns.expose_uri(backend, env.uri))))
    # KIND_RESPONSE / KIND_ERROR: answers to the client's own requests keep its ids.


def rewrite_backend_message(body: bytes, env, backend: str, ns: Namespace) -> bytes:
    """``body`` (one message or a batch; ``env`` what ``scan_jsonrpc`` returned for it)
    as the client must see it.  Returns ``body`` itself when nothing changes."""
    edits: list = []
    if type(env) is list:
        for e in env:
            _backend_edits(e, backend, ns, edits)
    else:
        _backend_edits(env, backend, ns, edits)
    if not edits:
        return body
    if len(edits) == 1:
        s, e, rep = edits[0]
        return splice(body, s, e, rep)
    return splice_many(body, edits)


_EDITED_KINDS = (KIND_REQUEST, KIND_NOTIFICATION)  # what rewrite_backend_message may change


def rewrite_sse_event(ev, backend: str, ns: Namespace, stream_ids: MergedStreamIds | None = None):
    """One backend SSE event as the client must see it: its JSON-RPC message rewritten
    (``rewrite_backend_message``) and, with ``stream_ids``, its ``id`` replaced by the
    client-facing event id.  Returns ``(bytes to send, envelope or None)``: the
    envelope lets the caller react (a ``list_changed`` invalidates the list cache).
    An event that needs no change is returned as its original ``raw`` bytes.

    Most events answer the client's own request: a response keeps the client's id and
    needs no edit, so after the envelope scan (byte spans, no objects) it goes out as it
    came, with no rewrite pass.  A routed call does not even get here for a read of such
    events: ``core.sse_passable`` (a C byte search that refuses any ``"method"``, any
    ``\\u`` escape that might spell it, and any event id) lets ``client.Call`` hand the
    read on unparsed; the property tests check that whatever it lets through is exactly
    what this function would leave unchanged."""
    data = ev.data
    env = None
    new_data = data
    if data:
        try:
            env = scan_jsonrpc(data)
        except ProtocolError:
            env = None  # not JSON-RPC: relay as it is
        if env is not None and (type(env) is list or env.kind in _EDITED_KINDS):
            new_data = rewrite_backend_message(data, env, backend, ns)
        elif ev.id is None:
            return ev.raw, env  # a response (or not JSON-RPC): nothing to change
    new_id = ev.id
    if stream_ids is not None and ev.id is not None:
        new_id = stream_ids.see(backend, ev.id)
    if new_data is data and new_id == ev.id:
        return ev.raw, env
    if data is None and ev.event is None and new_id is None and ev.retry is None:
        return b"", env  # nothing left to say (an id-only event whose id was dropped)
    return encode_sse_event(new_data, event=ev.event, id=new_id, retry=ev.retry), env


def replace_id(body: bytes, env, new_id: int | str | None) -> bytes:
    """``body`` with its JSON-RPC id replaced -- for answers to requests the gateway
    sent under its own id (fan-out, re-sent after a backend re-initialization)."""
    if env.id_span is None:
        raise ValueError("message has no id")
    s, e = env.id_span
    return splice(body, s, e, json_id(new_id))
