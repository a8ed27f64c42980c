"""The virtual server of a route over several backends (docs/multiplexing.md §6).

Theory of operation.  ``Exchange.start`` hands every request of a multiplexed route to
``VirtualRoute.handle`` once it has been read, scanned and admitted by policy.  What
happens next depends on the message (``rewrite.route_client_message``):

* ``initialize`` is answered here: each backend gets its own ``initialize`` and
  ``notifications/initialized`` (concurrently, each within its own timeout), and the
  client gets the merged capabilities and instructions under a session token that
  *holds* every backend's session (``token.py``) -- no session table, so any process
  with the key serves any later request.
* The four lists fan out, one backend page each (cached per backend, ``ListCache``),
  and are answered as one merged page with a composite cursor.
* A routed request (``tools/call``, a client's reply to a server→client request, ...)
  goes to its one backend with the name spliced back, and the answer is relayed as it
  comes: a JSON answer unchanged, an SSE answer event by event with server→client ids
  encoded (``rewrite_sse_event``) so that the client's replies find their way back.
* A batch (2025-03-26 sessions) is split and each element routed as above
  (``batch.py``).
* GET merges every backend's server→client stream into one, reconnecting a backend that
  closes its stream after an event with an id (SSE polling) while the client's stream
  stays open; a GET with a ``p!`` ``Last-Event-ID`` resumes one backend's POST answer.
  DELETE ends every backend session and revokes the token in this process.
* A stateless (2026-07-28) request is answered -32022, naming the versions spoken here.

Work that waits on several backends (initialize, lists, re-opening a backend session)
runs in a task; the routed request -- the hot path -- starts its backend call straight
from the callback when the backend session is known.

Failure isolation: with ``fail_mode = "open"`` a backend that cannot be reached is left
out (its list pages skipped, calls to it answered with a JSON-RPC error naming it) and
marked down in this process, so cached pages of it are not served until it answers
again.  A backend that answers 404 has lost our session: it is re-initialized with what
the token holds and the request sent once more; the new backend session id is kept in a
per-process table keyed by (token, backend), because the client's token cannot change.
Unless the session was ended: a token revoked here, or one whose every backend session
answers 404 (a DELETE by another process), is not revived (``SessionEnded`` → 404).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import json
import logging
import time
from typing import Any

import orjson

from ..wire.core import KIND_NOTIFICATION, KIND_REQUEST, encode_sse_event
from ..wire.heads import HeadError, is_field_value, is_visible
from ..wire.rpcerrors import INTERNAL_ERROR as _INTERNAL
from ..wire.rpcerrors import INVALID_PARAMS, INVALID_REQUEST, SERVER_ERROR, jsonrpc_error_body, status_reason
from ..wire.rpcerrors import SESSION_NOT_FOUND as _SESSION_NOT_FOUND
from ..wire.rpcerrors import UNSUPPORTED_VERSION as _UNSUPPORTED_VERSION
from ..transport.pool import UpstreamError
from .batch import Batch

from ..transport.http_mcp import BackendLink, Call, CallHandler, HttpBackend
from .ids import STREAM_GET, STREAM_POST, MergedStreamIds, decode_event_id
from .merge import (
    LIST_CHANGED,
    SUPPORTED_VERSIONS,
    BackendPage,
    BadBackendAnswer,
    InvalidCursor,
    ListCache,
    assemble_result,
    backend_client_capabilities,
    dump_json,
    initialize_result,
    load_json,
    merge_capabilities,
    merge_instructions,
    negotiate_version,
    plan_page,
    prepare_page,
    response_body,
)
from .names import NameConflict, Namespace
from .rewrite import (
    FANOUT,
    FORWARD,
    LOCAL,
    RouteError,
    rewrite_sse_event,
    route_client_message,
)
from ..transport.base import BackendSession, SessionLost
from .token import InvalidToken, SessionEnded, SessionState, TokenCodec

__all__ = ["VirtualRoute"]

log = logging.getLogger("mcpfast.mux")

_EMPTY_RESULT = b"{}"
_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
_PING = b'{"jsonrpc":"2.0","id":"mcpfast-probe","method":"ping"}'
_ALLOW = b"Allow: GET, POST, DELETE\r\n"
_JSON = b"application/json"
# Client heads of routed answers (_Relay): the usual JSON one (200, length known, kept
# alive, HTTP/1.1), and the start of an SSE one (framing added by Exchange.framed_head).
_JSON_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_SSE_200 = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
_SSE_200_CHUNKED = _SSE_200 + b"Transfer-Encoding: chunked\r\n\r\n"
# A name that no table knew may be known after listing: the lists that teach it.
_STALE_LISTS = {
    "tools/call": ("tools/list",),
    "prompts/get": ("prompts/list",),
    "resources/read": ("resources/list", "resources/templates/list"),
    "resources/subscribe": ("resources/list", "resources/templates/list"),
    "resources/unsubscribe": ("resources/list", "resources/templates/list"),
    "completion/complete": ("prompts/list", "resources/templates/list"),
}
_MAX_RESESSIONS = 4096
# A message-level backend's answers are resumable for clients of this version on.
_RESUMABLE_FROM = "2025-11-25"
_EVENT_STREAM = b"text/event-stream"
_MESSAGE = b"message"
# GET stream legs (_Merge): reconnection delay without and with the backend's ``retry:``
# (seconds), and reconnections in a row without a message before a leg is given up.
_LEG_RETRY_DEFAULT = 0.5
_LEG_RETRY_MAX = 30.0
_LEG_ATTEMPTS = 5
# Routed requests that policy checks here (see VirtualRoute.checks_after_routing); the
# ones with a name or URI are checked under it, completion/complete (its name sits in
# params.ref) under none, as on a single-backend route.
_NAME_METHODS = frozenset(("tools/call", "prompts/get"))  # the rest of them carry a URI
_CHECKED_AFTER_ROUTING = frozenset(
    ("tools/call", "prompts/get", "resources/read", "resources/subscribe", "resources/unsubscribe",
     "completion/complete")
)  # fmt: skip


def _canonical(obj) -> bytes:
    """JSON with sorted keys: equal values give equal bytes (cache keys, fingerprints)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _alive(ex) -> bool:
    return ex.alive()


def _view(route, vr, backend, bm, pool=None):
    """``route`` as the access log and the request metrics of one exchange see it: the
    same route and virtual server, naming ``backend`` (the one the message was routed
    to, or a stand-in named None for what the virtual server answers itself)."""
    v = copy.copy(route)
    v.virtual = vr
    v.backend = backend
    v.bm = bm
    if pool is not None:
        v.pool = pool
    return v


class _TaskRef:
    """Stands in for ``Exchange.upstream`` while a task works for the exchange: a client
    that leaves cancels the task."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task

    def detach(self) -> None:
        self.task.cancel()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class VirtualRoute:
    """One multiplexed route: its namespace, token codec, list cache and backend links."""

    #: Methods whose authorization and rate limits wait until the message is routed:
    #: ``Exchange._admit`` lets them through, ``_dispatch`` checks them against the
    #: owning backend and the backend's own name.
    checks_after_routing = _CHECKED_AFTER_ROUTING

    def __init__(self, gw, rc, route) -> None:
        cfg = gw.config
        mc = rc.mux
        self.gw = gw
        self.route = route
        self.path = rc.path
        self.path_b = rc.path.encode()
        self.mc = mc
        self.backends: tuple[str, ...] = tuple(rc.backends)
        self.ns = Namespace(self.backends, separator=mc.separator, mode=mc.namespacing, uri_scheme=mc.uri_scheme)
        self.codec = TokenCodec(mc.session_key, mc.old_keys, max_age=mc.max_age or None)
        self.cache = None if mc.list_cache == "off" else ListCache(ttl=mc.list_cache_ttl or None)
        self.per_session = mc.list_cache == "session"
        # Shared list cache keys (``_scope``): backend → incarnation, bumped whenever the
        # backend's lists may have changed for everyone (list_changed, a lost session, a
        # different initialize answer, back after failing); backend → fingerprint of its
        # last initialize answer; the client's capabilities JSON → the part of it the
        # gateway declares to backends.
        self.epochs: dict[str, int] = {}
        self.fingerprints: dict[str, bytes] = {}
        self.caps_keys: dict[bytes, bytes] = {}
        self.fail_open = mc.fail_mode == "open"
        self.server_info = {"name": mc.server_name, "version": mc.server_version}
        # Every backend through the seam (transport/base.py); the Streamable HTTP ones
        # also by their link, which the routed hot path uses directly.
        self.ends: dict[str, Any] = {}
        self.links: dict[str, BackendLink] = {}
        # The exchange's route while the virtual server works on it (``handle``): the
        # access log line and request metrics of a routed message name its backend;
        # what no single backend serves is logged with backend null.
        self.views: dict[str, Any] = {}
        self.local_view = _view(route, self, dataclasses.replace(route.backend, name=None), route.bm)
        for name in self.backends:
            b = cfg.backend(name)
            bm = gw.metrics.for_backend(rc.path, name)
            end = self.ends[name] = gw.backend_for(b, bm)
            if type(end) is HttpBackend:
                self.links[name] = end.link
            self.views[name] = _view(route, self, b, bm, getattr(end, "pool", None))
        # Backends that failed lately (name → when): their cached pages are not served.
        self.down: dict[str, float] = {}
        # (token, backend) → the backend session opened after the token was minted.
        self.resessions: collections.OrderedDict[tuple[str, str], BackendSession] = collections.OrderedDict()
        self.reopening: dict[tuple[str, str], asyncio.Task] = {}
        self._ids = 0
        if mc.ephemeral_key:
            log.warning(
                "route %s: no session key configured; sessions end with this process "
                "(set [sessions] key_file for restarts and several gateways)",
                rc.path,
            )

    # --- entry ------------------------------------------------------------------------
    def handle(self, ex) -> None:
        m = ex.head.method
        ex.route = self.local_view
        try:
            if m == b"POST":
                self._post(ex)
            elif m == b"GET":
                self._get(ex)
            elif m == b"DELETE":
                state, token = self._open_token(ex)
                if state is not None:
                    self._spawn(ex, self._delete(ex, state, token))
            else:
                ex.respond_error(405, INVALID_REQUEST, "method not allowed on a multiplexed MCP endpoint", headers=_ALLOW)
        except Exception:
            log.exception("multiplexer: request failed")
            if _alive(ex):
                ex.respond_error(500, _INTERNAL, "Internal error")

    def _spawn(self, ex, coro) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(ex, coro))
        ex.upstream = _TaskRef(task)

    async def _run(self, ex, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            pass
        except (SessionEnded, SessionLost):
            if _alive(ex):
                ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
        except UpstreamError as err:
            if _alive(ex):
                ex.respond_error(err.status, SERVER_ERROR, str(err))
        except Exception:
            log.exception("multiplexer: request failed")
            if _alive(ex):
                ex.respond_error(500, _INTERNAL, "Internal error")

    def _subject(self, ex) -> str:
        p = ex.principal
        return p.key if p is not None else ""

    def _open_token(self, ex) -> tuple[SessionState | None, str]:
        sid = ex.head.session_id
        if sid is None:
            ex.respond_error(400, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required")
            return None, ""
        try:
            opened = self.codec.open_sid(sid, self.path_b, self._subject(ex))
        except InvalidToken as exc:
            log.debug("session token refused: %s", exc.reason if hasattr(exc, "reason") else exc)
            ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            return None, sid.decode("latin-1")
        self.gw.session_used(sid, ex.t0)
        return opened

    def _next_id(self) -> str:
        self._ids += 1
        return f"mcpfast-{self._ids}"

    # --- POST -------------------------------------------------------------------------
    def _post(self, ex) -> None:
        env = ex.env
        body = ex.body if type(ex.body) is bytes else bytes(ex.body)
        if type(env) is list:
            self._batch(ex, body, env)
            return
        if env.method == "initialize" and env.kind == KIND_REQUEST:
            self._spawn(ex, self._initialize(ex, body, env))
            return
        if ex.head.session_id is None and self._stateless(ex, env):
            return
        state, token = self._open_token(ex)
        if state is None:
            return
        self._dispatch(ex, body, env, state, token, True)

    def _batch(self, ex, body: bytes, envs: list) -> None:
        """A JSON-RPC batch (2025-03-26): each element routed on its own (``batch.py``)."""
        state, token = self._open_token(ex)
        if state is not None:
            Batch(self, ex, body, envs, state, token).start()

    def _stateless(self, ex, env) -> bool:
        """A message of the stateless protocol (2026-07-28: no ``initialize``, no session,
        the version in each request's ``_meta``, ``server/discover``) cannot be served:
        the virtual server keeps its backends' sessions in the client's session token.
        It is answered like any unsupported version (400, -32022, naming the versions
        this server speaks), so a client in "auto" mode initializes a session instead,
        and a stateless-only client gets a clear error.  True when answered."""
        requested = env.protocol_version
        if requested is None:
            header = ex.head.protocol_version
            if header is not None:
                header = header.decode("latin-1")
                if header not in SUPPORTED_VERSIONS:
                    requested = header
            if requested is None and env.method == "server/discover":
                requested = ""
        if requested is None:
            return False
        data = {"supported": list(SUPPORTED_VERSIONS), "requested": requested}
        ex.respond(400, jsonrpc_error_body(_UNSUPPORTED_VERSION, "Unsupported protocol version", env.id, data))
        return True

    def _dispatch(self, ex, body: bytes, env, state: SessionState, token: str, may_refresh: bool) -> None:
        try:
            action = route_client_message(body, env, self.ns)
        except RouteError as err:
            if err.maybe_stale and may_refresh and env.method in _STALE_LISTS:
                self._spawn(ex, self._refresh_then_route(ex, body, env, state, token))
                return
            if err.status == 200:
                ex.respond(200, err.body(env.id))
            else:
                ex.respond(err.status, err.body(None))
            return
        kind = action.kind
        if kind == FORWARD:
            ex.route = self.views[action.backend]
            if action.method in _CHECKED_AFTER_ROUTING and not self._admit(ex, action, env):
                return
            self._forward(ex, state, token, action, env)
        elif kind == LOCAL:
            self._local(ex, body, env, state, token)
        elif kind == FANOUT:
            self._fanout(ex, action.body, env, state, token)
        else:
            ex.respond(202, b"")

    def _admit(self, ex, action, env) -> bool:
        """Authorization and rate limits of a routed request, under its backend and the
        backend's own name (policy rules never see the namespaced one).  False when
        refused -- answered as the gateway answers any refusal."""
        refusal = self.refusal(ex, action, env)
        if refusal is None:
            return True
        ex.respond_error(refusal.status, refusal.code, refusal.message, headers=refusal.headers)
        return False

    def refusal(self, ex, action, env):
        """Policy's ``Refusal`` of a routed request (audited there), or None."""
        rp = self.route.policy
        if rp is None or not rp.enabled or ex.principal is None:
            return None
        method = action.method
        if method == "completion/complete":
            name = shown = None
        else:
            name = action.name
            shown = env.name if method in _NAME_METHODS else env.uri
        return rp.admit(ex.principal, method, name, action.backend, ex.head.session_id, shown)

    def _local(self, ex, body: bytes, env, state: SessionState, token: str) -> None:
        m = env.method
        if m == "ping":
            ex.respond(200, response_body(env.id, _EMPTY_RESULT))
        elif m == "notifications/initialized":
            ex.respond(202, b"")  # each backend got its own at initialize
        elif m == "initialize":
            self._spawn(ex, self._initialize(ex, body, env))
        elif not self._list_from_cache(ex, env, state, token):
            self._spawn(ex, self._list(ex, env, state, token))

    # --- initialize -------------------------------------------------------------------
    async def _initialize(self, ex, body: bytes, env) -> None:
        params: Any = {}
        if env.params_span is not None:
            s, e = env.params_span
            params = load_json(memoryview(body)[s:e])
        if not isinstance(params, dict):
            ex.respond(200, jsonrpc_error_body(INVALID_PARAMS, "Invalid params: initialize params must be an object", env.id))
            return
        requested = params.get("protocolVersion")
        version = negotiate_version(requested if isinstance(requested, str) else None)
        caps = params.get("capabilities")
        caps = caps if isinstance(caps, dict) else {}
        info = params.get("clientInfo")
        info = info if isinstance(info, dict) else None
        results = await asyncio.gather(
            *(self._open_backend(b, version, caps, info) for b in self.backends), return_exceptions=True
        )
        sessions: list[BackendSession] = []
        opened: list[tuple[str, Any]] = []
        failures: list[tuple[str, BaseException]] = []
        for b, r in zip(self.backends, results, strict=True):
            if isinstance(r, BaseException):
                if not isinstance(r, (UpstreamError, BadBackendAnswer, ValueError)):
                    log.error("initialize of backend %s failed", b, exc_info=r)
                failures.append((b, r))
                self.down[b] = time.monotonic()
                sessions.append(BackendSession(b, None, None))
            else:
                self._answered(b)
                opened.append((b, r[1]))
                sessions.append(r[0])
        if failures and (not self.fail_open or not opened):
            for bs in sessions:
                if bs.session_id is not None:
                    asyncio.get_running_loop().create_task(self._end_backend(bs))
            status = 504 if any(getattr(f, "status", 0) == 504 for _, f in failures) else 502
            why = "; ".join(f"{b}: {f}" for b, f in failures)
            ex.respond_error(status, SERVER_ERROR, f"backends unavailable: {why}")
            return
        for b, f in failures:
            log.warning("route %s: backend %s left out of a new session: %s", self.path, b, f)
        state = SessionState(
            subject=self._subject(ex),
            protocol_version=version,
            backends=sessions,
            client_capabilities=caps,
            client_info=info,
        )
        token = self.codec.encode(state, self.path)
        merged = merge_capabilities(r.get("capabilities") for _, r in opened)
        instructions = merge_instructions(
            ((b, r.get("instructions")) for b, r in opened), self.ns, self.mc.instructions
        )
        result = initialize_result(version, self.server_info, merged, instructions)
        if not _alive(ex):
            return
        tb = token.encode("ascii")
        ex.respond(200, response_body(env.id, dump_json(result)), b"Mcp-Session-Id: " + tb + b"\r\n")
        self.gw.session_opened(self.route, tb)

    async def _open_backend(self, b: str, version: str, caps: dict, info: dict | None) -> tuple[BackendSession, dict]:
        """Open a session with backend ``b`` on the client's behalf."""
        end = self.ends[b]
        msg = dump_json(
            {
                "jsonrpc": "2.0",
                "id": self._next_id(),
                "method": "initialize",
                "params": {
                    "protocolVersion": version,
                    "capabilities": backend_client_capabilities(caps),
                    "clientInfo": info or {"name": "mcpfast", "version": self.mc.server_version},
                },
            }
        )
        reply = await end.ask(None, None, msg)
        why = reply.error_text()
        if why is not None:
            raise UpstreamError("upstream_protocol", f"backend {b} refused initialize ({why})")
        sid = reply.session_id
        try:
            result = load_json(reply.result_bytes())
            if not isinstance(result, dict):
                raise BadBackendAnswer(f"backend {b}: initialize result is not an object")
            self._saw_initialize(b, result)
            bver = result.get("protocolVersion")
            bver = bver if isinstance(bver, str) else version
            # Both go into every later request head to this backend: refuse what could not.
            if not is_visible(bver.encode("utf-8", "replace")):
                raise BadBackendAnswer(f"backend {b}: initialize result has an unusable protocolVersion")
            if sid is not None and not is_visible(sid.encode("utf-8", "replace")):
                raise BadBackendAnswer(f"backend {b}: Mcp-Session-Id is not visible ASCII")
            done = await end.ask(sid, bver, _INITIALIZED)
            if not done.ok:
                raise UpstreamError("upstream_protocol", f"backend {b} refused notifications/initialized (HTTP {done.status})")
        except BaseException:
            if sid is not None and is_visible(sid.encode("utf-8", "replace")):
                # Opened, then refused here: nobody will use it, so it is ended now rather
                # than hold a child process or a stream until reaped or evicted.
                asyncio.get_running_loop().create_task(self._end_backend(BackendSession(b, sid, None)))
            raise
        return BackendSession(b, sid, bver), result

    async def _end_backend(self, bs: BackendSession) -> None:
        try:
            await self.ends[bs.name].end(bs.session_id, bs.protocol_version)
        except (UpstreamError, SessionLost):
            pass

    # --- backend sessions -----------------------------------------------------------------
    def _session(self, token: str, state: SessionState, b: str) -> BackendSession | None:
        """The backend session this process knows for (token, backend)."""
        hit = self.resessions.get((token, b))
        if hit is not None:
            self.resessions.move_to_end((token, b))  # evicted least recently used first
            return hit
        return state.backend(b)

    async def _ensure(self, token: str, state: SessionState, b: str, stale: str | None = None) -> BackendSession:
        """A usable backend session: the known one, or a new one when there is none (the
        backend was down at initialize) or the known one is ``stale`` (404).  Raises
        ``SessionEnded`` instead of reviving a session that was ended."""
        bs = self._session(token, state, b)
        if bs is not None and bs.protocol_version is not None and (stale is None or bs.session_id != stale):
            return bs
        if self.codec.revoked(token, self.path):
            raise SessionEnded()
        key = (token, b)
        task = self.reopening.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._reopen(token, state, b, stale))
            self.reopening[key] = task
            task.add_done_callback(lambda _t: self.reopening.pop(key, None))
        return await asyncio.shield(task)

    async def _reopen(self, token: str, state: SessionState, b: str, stale: str | None = None) -> BackendSession:
        old = state.backend(b)
        if stale is not None and old is not None and old.session_id == stale and await self._token_ended(state, b):
            # DELETE ended every backend session of this token -- most likely in another
            # process, which has it in its own revocation table: do not revive it.
            self.codec.revoke(token, self.path, state)
            raise SessionEnded()
        version = (old.protocol_version if old is not None else None) or state.protocol_version or "2025-06-18"
        try:
            bs, _ = await self._open_backend(b, version, state.client_capabilities, state.client_info)
        except (UpstreamError, BadBackendAnswer, ValueError) as exc:
            self.down[b] = time.monotonic()
            raise UpstreamError("upstream_unavailable", f"backend {b} unavailable: {exc}") from None
        self._answered(b)
        if stale is not None:
            # The backend forgot a session: most likely it restarted, perhaps with other
            # lists.  What was cached for everyone is not trusted any more.
            self._new_epoch(b)
        rs = self.resessions
        rs[(token, b)] = bs
        while len(rs) > _MAX_RESESSIONS:
            rs.popitem(last=False)
        return bs

    async def _token_ended(self, state: SessionState, b: str) -> bool:
        """Backend ``b`` forgot the session the token gave it.  Was the whole session ended
        (DELETE, perhaps by another process)?  Asks every other backend whose session the
        token holds with a ``ping``: True only when each of them answers 404.  A backend
        that restarted forgets one session, a DELETE ends all of them.  With no other
        backend session to ask, nobody can tell: False (the session is re-opened)."""
        others = [bs for bs in state.backends if bs.name != b and bs.session_id is not None and bs.protocol_version]
        if not others:
            return False

        async def gone(bs: BackendSession) -> bool:
            try:
                reply = await self.ends[bs.name].ask(bs.session_id, bs.protocol_version, _PING)
            except SessionLost:
                return True  # held by another process: not revived here either
            except UpstreamError:
                return False  # unreachable is not proof of anything
            return reply.status == 404

        return all(await asyncio.gather(*(gone(bs) for bs in others)))

    async def exchange(
        self, state: SessionState, token: str, b: str, data: bytes, on_message=None, calls: set | None = None
    ):
        """Send one message to backend ``b`` in this client's session and return its
        ``Reply``; a backend session the backend forgot (404) is re-opened and the message
        sent once more.  ``on_message``/``calls``: see ``client.request``."""
        end = self.ends[b]
        bs = await self._ensure(token, state, b)
        for attempt in (0, 1):
            try:
                reply = await end.ask(bs.session_id, bs.protocol_version, data, on_message=on_message, calls=calls)
            except SessionLost:
                raise SessionEnded() from None
            except UpstreamError:
                self.down[b] = time.monotonic()
                raise
            if reply.status == 404 and attempt == 0 and bs.session_id is not None:
                bs = await self._ensure(token, state, b, stale=bs.session_id)
                continue
            break
        self._answered(b)
        return reply

    # --- routed requests --------------------------------------------------------------
    def _forward(self, ex, state: SessionState, token: str, action, env) -> None:
        bs = self._session(token, state, action.backend)
        if bs is None or bs.protocol_version is None:
            self._spawn(ex, self._forward_later(ex, state, token, action, env, None))
            return
        self._send(ex, state, token, action, env, bs, False)

    async def _forward_later(self, ex, state, token, action, env, stale: str | None) -> None:
        try:
            bs = await self._ensure(token, state, action.backend, stale)
        except UpstreamError as err:
            self._backend_failed(ex, env, action.backend, err)
            return
        except SessionEnded:
            if _alive(ex):
                ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            return
        if _alive(ex):
            self._send(ex, state, token, action, env, bs, stale is not None)

    def _send(self, ex, state, token, action, env, bs: BackendSession, retried: bool) -> None:
        link = self.links.get(action.backend)
        relay = _Relay(self, ex, state, token, action, env, bs, retried)
        body = action.body
        now = time.monotonic()  # the clock of ex.t0 (gateway._perf)
        if not ex.t_sent:  # from here the time is the backend's (a retry keeps the first send)
            ex.t_sent = now
        if link is None:  # a message-level backend (stdio, legacy SSE)
            # Its messages carry no event ids: the backend numbers them, and keeps them
            # for a resumption, for a client that can resume (2025-11-25 on, and willing
            # to take an event stream).
            try:
                call = self.ends[action.backend].send(bs, body, relay, ex.conn.write_paused, now, _streams(ex, state))
            except SessionLost:
                if _alive(ex):
                    ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
                return
            if not call.done:
                ex.upstream = call
            return
        call = Call(link, [link.session_head(bs, len(body)), body], relay)
        ex.upstream = call
        if ex.conn.write_paused:
            call.paused = True  # the client is not reading yet: neither do we
        call.start(now)

    def _backend_failed(self, ex, env, b: str, err) -> None:
        self.down[b] = time.monotonic()
        self.gw.metrics.error(getattr(err, "kind", "upstream_error"))
        if not _alive(ex):
            return
        text = str(err)
        own = f"backend {b}: "
        # A message-level backend's errors begin with its name already: said once.
        msg = f"backend {b} unavailable: {text[len(own):] if text.startswith(own) else text}"
        if self.fail_open and env.kind == KIND_REQUEST:
            ex.respond(200, jsonrpc_error_body(_INTERNAL, msg, env.id))
        else:
            ex.respond_error(getattr(err, "status", 502), SERVER_ERROR, msg)

    async def _refresh_then_route(self, ex, body, env, state, token) -> None:
        await self.refresh_lists(state, token, env.method)
        if _alive(ex):
            self._dispatch(ex, body, env, state, token, False)

    async def refresh_lists(self, state: SessionState, token: str, method: str | None) -> bool:
        """List (through the cache) what teaches the names ``method`` looks up: a process
        that has not listed yet may not know an unprefixed name.  False when no list
        would help."""
        methods = _STALE_LISTS.get(method)
        if methods is None:
            return False
        await asyncio.gather(
            *(self._page(state, token, b, m, None) for m in methods for b in self.backends), return_exceptions=True
        )
        return True

    def fanout_targets(self, state: SessionState, token: str) -> list[BackendSession]:
        """The backend sessions a FANOUT message goes to."""
        return [bs for bs in (self._session(token, state, b) for b in self.backends) if bs and bs.protocol_version]

    def _fanout(self, ex, body: bytes, env, state: SessionState, token: str) -> None:
        if env.kind == KIND_REQUEST:  # logging/setLevel: every backend, then answer {}
            async def all_then_answer() -> None:
                await self.fan_out(state, token, body)
                if _alive(ex):
                    ex.respond(200, response_body(env.id, _EMPTY_RESULT))

            self._spawn(ex, all_then_answer())
            return
        loop = asyncio.get_running_loop()
        for bs in self.fanout_targets(state, token):
            loop.create_task(self._quiet(bs, body))
        ex.respond(202, b"")

    async def fan_out(self, state: SessionState, token: str, body: bytes) -> None:
        """Send ``body`` to every backend of the session and wait for each (a failure is
        only logged: a backend that is down misses a notification)."""
        await asyncio.gather(*(self._quiet(bs, body) for bs in self.fanout_targets(state, token)))

    async def _quiet(self, bs: BackendSession, body: bytes) -> None:
        try:
            await self.ends[bs.name].ask(bs.session_id, bs.protocol_version, body)
        except (UpstreamError, SessionLost) as err:
            log.debug("fan-out to %s failed: %s", bs.name, err)

    # --- lists --------------------------------------------------------------------------
    async def _list(self, ex, env, state: SessionState, token: str) -> None:
        body = await self.list_answer(ex, env, state, token, ex.lfilter is not None)
        if _alive(ex):
            _respond_as_client_prefers(ex, state, body)

    async def list_answer(self, ex, env, state: SessionState, token: str, filtered: bool) -> bytes:
        """The answer to one list request: a merged page, or a JSON-RPC error.  Raises
        ``UpstreamError`` when a backend fails with ``fail_mode = "closed"``, and
        ``SessionEnded``.  ``filtered``: policy hides what the caller may not use."""
        method = env.method
        try:
            plan = plan_page(method, env.cursor, self.backends)
        except InvalidCursor:
            return jsonrpc_error_body(INVALID_PARAMS, "Invalid params: invalid cursor", env.id)
        got = await asyncio.gather(*(self._page(state, token, b, method, c) for b, c in plan), return_exceptions=True)
        pages: list[BackendPage] = []
        for (b, _), p in zip(plan, got, strict=True):
            if isinstance(p, NameConflict):
                return jsonrpc_error_body(_INTERNAL, str(p), env.id)
            if isinstance(p, SessionEnded):
                raise p
            if isinstance(p, BaseException):
                if not isinstance(p, (UpstreamError, BadBackendAnswer, ValueError)):
                    log.error("list from backend %s failed", b, exc_info=p)
                if not self.fail_open:
                    raise UpstreamError("upstream_unavailable", f"backend {b} unavailable: {p}")
                continue
            pages.append(p)
        return self._list_body(ex, env, pages, filtered)

    def _list_from_cache(self, ex, env, state: SessionState, token: str) -> bool:
        """Answer a list request at once when every page it needs is cached (and no
        backend of it is marked down); False when the fetching path must run."""
        cache = self.cache
        if cache is None:
            return False
        method = env.method
        try:
            plan = plan_page(method, env.cursor, self.backends)
        except InvalidCursor:
            return False  # _list answers it
        down = self.down
        pages: list[BackendPage] = []
        for b, c in plan:
            if b in down:
                return False
            page = cache.get(self._scope(b, self._session(token, state, b), state, token), method, c)
            if page is None:
                return False
            pages.append(page)
        _respond_as_client_prefers(ex, state, self._list_body(ex, env, pages, ex.lfilter is not None))
        return True

    def _list_body(self, ex, env, pages: list[BackendPage], filtered: bool) -> bytes:
        method = env.method
        if filtered:
            # Policy hides what the caller may not use: each backend's page under that
            # backend's name and the items' own names.  Pages may be cached and shared by
            # every caller, so a filtered page is a new one.
            rp = self.route.policy
            pages = [self._filtered(rp, ex.principal, method, p) for p in pages]
        return response_body(env.id, assemble_result(method, pages))

    def _filtered(self, rp, principal, method: str, page: BackendPage) -> BackendPage:
        if not page.count:
            return page
        names = page.names
        if names is None:  # not made by prepare_page: nothing to check it by (fail closed)
            return page.keeping([False] * page.count)
        mask = rp.allowed_names(principal, method, names, page.backend)
        return page if mask is None else page.keeping(mask)

    def _scope(self, b: str, bs: BackendSession | None, state: SessionState, token: str):
        """The list cache key of backend ``b``'s lists for this client session.

        ``session``: the client's session and its backend session -- their lists are
        their own (the token too: a restarted backend may hand out an old session id
        again).  ``shared`` (and a
        backend that gives no session id): everything that can make a backend answer
        one session differently from another -- the capabilities the gateway declared
        to it (from the client's: sampling, elicitation, roots), the protocol version
        agreed with it, and the backend's incarnation (``_new_epoch``).  A client's
        credentials are not part of it: on a multiplexed route they never reach a
        backend, which sees only its own configured headers, the same for every session."""
        if self.per_session and bs is not None and bs.session_id is not None:
            return (self.path, b, token, bs.session_id)
        version = bs.protocol_version if bs is not None else None
        return (self.path, b, self.epochs.get(b, 0), self._caps_key(state), version or state.protocol_version)

    def _caps_key(self, state: SessionState) -> bytes:
        raw = state.client_capabilities_json
        key = self.caps_keys.get(raw)
        if key is None:
            key = _canonical(backend_client_capabilities(state.client_capabilities))
            if len(self.caps_keys) >= 1024:
                self.caps_keys.clear()  # client-chosen: bounded
            self.caps_keys[raw] = key
        return key

    def _new_epoch(self, b: str) -> None:
        """Backend ``b``'s shared lists may differ now: later lookups use a new key (pages
        under the old one age out of the cache)."""
        self.epochs[b] = self.epochs.get(b, 0) + 1

    def _answered(self, b: str) -> None:
        """Backend ``b`` answered: no longer down.  Back after failing, it may have
        restarted with other lists."""
        if self.down.pop(b, None) is not None:
            self._new_epoch(b)

    def _saw_initialize(self, b: str, result: dict) -> None:
        """A restart with another version, other capabilities or instructions shows in
        the initialize answer: a new incarnation."""
        fp = _canonical(
            [result.get("serverInfo"), result.get("capabilities"), result.get("instructions"), result.get("protocolVersion")]
        )
        old = self.fingerprints.get(b)
        if old != fp:
            if old is not None:
                self._new_epoch(b)
            self.fingerprints[b] = fp

    async def _page(self, state, token, b: str, method: str, cursor: str | None) -> BackendPage:
        cache = self.cache
        scope = self._scope(b, self._session(token, state, b), state, token)
        if cache is not None and b not in self.down:
            page = cache.get(scope, method, cursor)
            if page is not None:
                return page
        gen = cache.generation(scope, method) if cache is not None else 0
        result = await self._ask(state, token, b, method, {"cursor": cursor} if cursor is not None else None)
        if result is None:
            # The backend does not offer this list (say, no prompts): an empty page.
            page = BackendPage(b, b"", 0, None)
        else:
            page = prepare_page(method, b, result, self.ns)
        if cache is not None:
            cache.put(scope, method, cursor, page, gen)
        return page

    async def _ask(self, state, token, b: str, method: str, params: dict | None):
        """One request of the gateway's own to backend ``b``: its result object, or None
        for a JSON-RPC error answer."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id(), "method": method}
        if params is not None:
            msg["params"] = params
        reply = await self.exchange(state, token, b, dump_json(msg))
        if not reply.ok:
            raise UpstreamError("upstream_status", f"backend {b} answered {method} with HTTP {reply.status}")
        e = reply.env
        if e is None or type(e) is list:
            raise BadBackendAnswer(f"backend {b}: {method} answer is not a JSON-RPC message")
        if e.result_span is None:
            return None
        return load_json(reply.result_bytes())

    def list_changed(self, b: str, method: str, bs: BackendSession | None, token: str) -> None:
        """A backend said one of its lists changed: forget what this process knows."""
        stale = LIST_CHANGED.get(method, ())
        if self.cache is not None and stale:
            if self.per_session and bs is not None and bs.session_id is not None:
                self.cache.on_notification((self.path, b, token, bs.session_id), method)
            else:
                # Shared: the change holds for every key of this backend (any capabilities).
                self._new_epoch(b)
        for m in stale:
            self.ns.forget(b, m)

    # --- DELETE -------------------------------------------------------------------------
    async def _delete(self, ex, state: SessionState, token: str) -> None:
        # First, so that nothing revives the session while its backends are ending it.
        self.codec.revoke(token, self.path, state)
        ends = []
        for b in self.backends:
            bs = self._session(token, state, b)
            if bs is not None and bs.session_id is not None:
                ends.append(self._end_backend(bs))
            self.resessions.pop((token, b), None)
        await asyncio.gather(*ends)
        if not _alive(ex):
            return
        tb = token.encode("latin-1")
        self.gw.session_closed(self.route, tb)
        ex.respond(200, b"")

    # --- GET: the merged server→client stream ---------------------------------------------
    def _get(self, ex) -> None:
        state, token = self._open_token(ex)
        if state is None:
            return
        resume: dict[str, bytes] = {}
        kind = STREAM_GET
        lei = ex.head.last_event_id
        if lei is not None:
            decoded = decode_event_id(lei)
            if decoded is None:
                ex.respond_error(400, INVALID_REQUEST, "Bad Request: unknown Last-Event-ID")
                return
            kind, resume = decoded
            resume = {b: pos for b, pos in resume.items() if b in self.ends}
            if not all(is_field_value(pos) for pos in resume.values()):
                # Each position goes back to its backend as a Last-Event-ID field.
                ex.respond_error(400, INVALID_REQUEST, "Bad Request: unknown Last-Event-ID")
                return
            if kind == STREAM_POST:
                # The client resumes a POST answer (its ids are "p!<backend>~<id>"): that
                # one backend stream, continued by that backend alone.
                bs = self._session(token, state, next(iter(resume))) if resume else None
                if bs is None or bs.session_id is None or bs.protocol_version is None:
                    ex.respond_error(400, INVALID_REQUEST, "Bad Request: Last-Event-ID names no stream of this session")
                    return
                ex.route = self.views[bs.name]
                _Merge(self, ex, state, token, [bs], MergedStreamIds(STREAM_POST, resume)).start()
                return
        targets = []
        for b in self.backends:
            bs = self._session(token, state, b)
            if bs is not None and bs.session_id is not None and bs.protocol_version is not None:
                targets.append(bs)
        if not targets:
            ex.respond_error(405, INVALID_REQUEST, "no backend offers a server-to-client stream", headers=_ALLOW)
            return
        _Merge(self, ex, state, token, targets, MergedStreamIds(kind, resume)).start()


def _streams(ex, state: SessionState) -> bool:
    """Does this client take its answers as event streams it can resume: a client of
    2025-11-25 or later that accepts ``text/event-stream``?  A message-level backend's
    answers to it are resumable (numbered and recorded by the backend), and the lists
    the gateway answers itself are one-event streams, as a Streamable HTTP server that
    streams its answers gives them."""
    accept = ex.head.accept
    return accept is not None and (state.protocol_version or "") >= _RESUMABLE_FROM and _EVENT_STREAM in accept.lower()


def _respond_as_client_prefers(ex, state: SessionState, body: bytes) -> None:
    """A whole answer of the gateway's own to a request: an event stream of one message
    for a client that takes streams (``_streams``), else JSON."""
    if _streams(ex, state):
        ex.respond(200, encode_sse_event(body, event=_MESSAGE), content_type=_EVENT_STREAM)
    else:
        ex.respond(200, body)


class _Relay(CallHandler):
    """Relays one backend's answer to a routed client request, as it arrives.

    The client head is made from the backend's status, content type and length -- none
    of the backend's other fields: its session id must never reach the client.  The
    answer then flows through the exchange's own relay, as on a passthrough route
    (``Exchange.relay``, ``flush``, ``upstream_end``): a JSON body piece by piece,
    each the object the response parser handed out (``Call.stream``); an SSE answer
    event by event with server→client ids encoded (``rewrite_sse_event``).  What one
    backend read produced leaves in one write.  The exchange's ``upstream`` is the
    ``Call``, so a slow client pauses the backend read and a client that leaves closes
    the backend connection (CONVENTIONS 9).

    A 404 for a known backend session is not relayed, only its head matters: the small
    body is collected, and at the end the backend session is re-opened and the request
    sent once more (``expired``), or after that one retry the client learns that its
    session is gone."""

    __slots__ = ("vr", "ex", "state", "token", "action", "env", "bs", "retried", "started", "ids", "expired")

    def __init__(self, vr: VirtualRoute, ex, state, token, action, env, bs, retried: bool) -> None:
        self.vr = vr
        self.ex = ex
        self.state = state
        self.token = token
        self.action = action
        self.env = env
        self.bs = bs
        self.retried = retried
        self.started = False
        self.ids: MergedStreamIds | None = None
        self.expired = False

    def on_head(self, call, head) -> None:
        status = head.status
        if status == 404 and self.bs.session_id is not None:
            self.expired = not self.retried  # the backend forgot our session: re-open it and resend
            return
        ex = self.ex
        if not ex.alive():
            return
        if call.events:
            if status != 200:
                return  # answered at the end, without a body
            call.plain = True  # reads of plain answer events come to on_body unparsed
            if ex.keep_alive and ex.conn.keep_alive and ex.head.version == 11 and not ex.is_head and ex.gw.cors is None:
                data = _SSE_200_CHUNKED  # the usual answer: what framed_head would make, preformatted
                ex.chunked = True
            else:
                data = ex.framed_head([_SSE_200], -1, 200)
        else:
            call.stream = True
            n = head.content_length
            ct = head.content_type or _JSON
            if (status == 200 and n >= 0 and ct == _JSON and ex.keep_alive and ex.conn.keep_alive
                    and ex.head.version == 11 and ex.gw.cors is None):  # fmt: skip
                data = _JSON_200 % n  # the usual answer: what framed_head would make, preformatted
            else:
                data = ex.framed_head([b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, status_reason(status), ct)], n, status)
        self.started = True
        ex.begin_answer(status, data)
        call.queued = True

    def on_body(self, call, chunk) -> None:
        self.ex.relay(chunk)
        call.queued = True

    def on_event(self, call, ev) -> None:
        if not self.started:
            return
        b = self.action.backend
        ids = self.ids
        if ids is None and ev.id is not None:
            ids = self.ids = MergedStreamIds(STREAM_POST)  # made for the first event id
        data, env = rewrite_sse_event(ev, b, self.vr.ns, ids)
        if env is not None and type(env) is not list and env.kind == KIND_NOTIFICATION and env.method in LIST_CHANGED:
            self.vr.list_changed(b, env.method, self.bs, self.token)
        if data:
            self.ex.relay(data)
            call.queued = True

    def on_flush(self, call) -> None:
        self.ex.flush()

    def on_end(self, call, body) -> None:
        ex = self.ex
        vr = self.vr
        if vr.down:
            vr.down.pop(self.action.backend, None)
        if not ex.alive():
            return
        if self.started:
            ex.upstream_end()  # the chunked terminator if any, the last write, finish
            call.queued = None  # nothing left for on_flush
            return
        ex.upstream = None
        if self.expired:
            vr._spawn(ex, vr._forward_later(ex, self.state, self.token, self.action, self.env, self.bs.session_id))
            return
        head = call.head
        if head.status == 404:
            # Re-opened and still unknown: the session is gone for good.
            ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            return
        ex.respond(head.status, b"", content_type=head.content_type or _JSON)  # an SSE answer that is not 200

    def on_error(self, call, err) -> None:
        ex = self.ex
        if not _alive(ex):
            return
        if self.started:
            # Mid-answer: what arrived intact goes out, then the client connection is cut
            # so it sees an incomplete answer, not a fake end.
            ex.upstream_failed(err)
            return
        ex.upstream = None
        self.vr._backend_failed(ex, self.env, self.action.backend, err)


class _Merge:
    """One client GET stream fed by backend streams: every backend's GET stream, merged
    (``STREAM_GET``), or the one backend POST stream a client resumes (``STREAM_POST``).

    A leg that ends is not necessarily done.  2025-11-25 lets a server close a stream
    after an event with an id and expects the client to come back with ``Last-Event-ID``
    (SSE polling).  The client's stream stays open meanwhile: a GET leg whose backend gave
    it an id is reconnected with that id after the backend's ``retry:`` (at most
    ``_LEG_RETRY_MAX`` s) or ``_LEG_RETRY_DEFAULT``, and so is one whose connection broke.
    A leg answered 404 lost its backend session: it gets a new one (as a POST would,
    ``VirtualRoute._ensure``) and starts afresh.  ``_LEG_ATTEMPTS`` reconnections in a
    row without a message end a leg for good; a leg that ends for good leaves the others
    flowing, and the client's stream ends when the last one does.

    A resumed POST stream is not reconnected: it ends when its backend ends it, and the
    client, holding the newest id, resumes again if it must."""

    __slots__ = ("vr", "ex", "state", "token", "ids", "legs", "live", "started", "paused", "ended")

    def __init__(self, vr: VirtualRoute, ex, state, token: str, targets: list[BackendSession], ids) -> None:
        self.vr = vr
        self.ex = ex
        self.state = state
        self.token = token
        self.ids = ids
        self.legs = [_MergeLeg(self, bs) for bs in targets]
        self.live = len(self.legs)
        self.started = False
        self.paused = False
        self.ended = False  # the session was ended: answer 404 if nothing was sent

    def start(self) -> None:
        self.ex.upstream = self
        for leg in self.legs:
            leg.open()

    # Exchange.upstream stand-in
    def detach(self) -> None:
        for leg in self.legs:
            leg.stop()

    def pause_reading(self) -> None:
        self.paused = True
        for leg in self.legs:
            if leg.call is not None:
                leg.call.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        for leg in self.legs:
            if leg.call is not None:
                leg.call.resume_reading()

    def _begin(self) -> None:
        ex = self.ex
        if self.started or not ex.alive():
            return
        self.started = True
        ex.begin_answer(200, ex.framed_head([_SSE_200], -1, 200))
        ex.flush()

    def emit(self, data: bytes) -> None:
        self.ex.relay(data)

    def flush(self) -> None:
        if self.ex.alive():
            self.ex.flush()

    def leg_done(self, leg: _MergeLeg) -> None:
        self.live -= 1
        if self.live > 0 or not _alive(self.ex):
            return
        ex = self.ex
        ex.upstream = None
        if not self.started:
            if self.ended:
                ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            elif leg.status == 503:
                # A backend's stream budget is spent (or it is shutting down).
                ex.respond_error(503, SERVER_ERROR, leg.failure, headers=b"Retry-After: 1\r\n")
            elif self.ids.kind == STREAM_POST:
                # The backend cannot resume that stream (not a 404 to the client: its
                # session is fine).  A client gives up after a few such answers.
                why = leg.failure or "no answer"
                ex.respond_error(leg.status or 502, SERVER_ERROR, f"backend {leg.bs.name} cannot resume this stream: {why}")
            else:
                ex.respond_error(405, INVALID_REQUEST, "no backend offers a server-to-client stream", headers=_ALLOW)
            return
        ex.upstream_end()  # the chunked terminator if any, the last write, finish


class _MergeLeg(CallHandler):
    """One backend stream of a ``_Merge``, across its reconnections."""

    __slots__ = ("m", "bs", "call", "ok", "attempts", "retry", "expired", "timer", "task", "failure", "status")

    def __init__(self, m: _Merge, bs: BackendSession) -> None:
        self.m = m
        self.bs = bs
        self.call: Call | None = None
        self.ok = False  # this connection's answer is a stream
        self.attempts = 0  # reconnections since the last message
        self.retry: int | None = None  # the backend's last ``retry:`` (ms)
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.failure = ""  # why the last connection ended, for the client when nothing else is left
        self.status = 0  # HTTP status to give the client then (0: 502)

    def open(self) -> None:
        self.timer = self.task = None
        m = self.m
        bs = self.bs
        self.ok = self.expired = False
        try:
            self.call = m.vr.ends[bs.name].listen(bs, self, m.ids.positions.get(bs.name), m.paused)
        except HeadError as exc:
            self.failure = str(exc)
            self.status = 400
            m.leg_done(self)
        except SessionLost:
            m.ended = True
            m.leg_done(self)

    def stop(self) -> None:
        if self.call is not None:
            self.call.detach()
            self.call = None
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()

    # --- Call handler ------------------------------------------------------------------
    def on_head(self, call, head) -> None:
        status = head.status
        if status == 200 and call.events:
            self.ok = True
            self.m._begin()
        elif status == 404 and self.bs.session_id is not None and self.m.ids.kind == STREAM_GET:
            self.expired = True  # the backend forgot our session
        else:
            self.failure = f"HTTP {status}"
            self.status = 400 if 400 <= status < 500 else 502

    def on_event(self, call, ev) -> None:
        if not self.ok:
            return
        m = self.m
        b = self.bs.name
        if ev.retry is not None:
            self.retry = ev.retry
        data, env = rewrite_sse_event(ev, b, m.vr.ns, m.ids)
        if ev.data:
            self.attempts = 0
        if env is not None and type(env) is not list and env.kind == KIND_NOTIFICATION and env.method in LIST_CHANGED:
            m.vr.list_changed(b, env.method, self.bs, m.token)
        if data:
            m.emit(data)
            call.queued = True

    def on_flush(self, call) -> None:
        self.m.flush()

    def on_end(self, call, body) -> None:
        self.call = None
        self._ended(self.ok)

    def on_error(self, call, err) -> None:
        self.call = None
        log.debug("GET stream of backend %s ended: %s", self.bs.name, err)
        self.m.vr.down[self.bs.name] = time.monotonic()
        self.failure = str(err)
        self.status = getattr(err, "status", 502)
        self._ended(True)

    # --- after a connection -------------------------------------------------------------
    def _ended(self, resumable: bool) -> None:
        """This connection is over: reconnect, renew the backend session, or give up."""
        m = self.m
        m.flush()
        if not _alive(m.ex):
            return
        if self.attempts < _LEG_ATTEMPTS and m.ids.kind == STREAM_GET:
            if self.expired:
                self.attempts += 1
                self.task = asyncio.get_running_loop().create_task(self._renew())
                return
            if resumable and self.bs.name in m.ids.positions:
                self.attempts += 1
                delay = _LEG_RETRY_DEFAULT if self.retry is None else min(self.retry / 1000, _LEG_RETRY_MAX)
                self.timer = asyncio.get_running_loop().call_later(delay, self.open)
                return
        m.leg_done(self)

    async def _renew(self) -> None:
        m = self.m
        name = self.bs.name
        try:
            bs = await m.vr._ensure(m.token, m.state, name, stale=self.bs.session_id)
        except SessionEnded:
            m.ended = True
            m.leg_done(self)
            return
        except UpstreamError as err:
            self.failure = str(err)
            m.leg_done(self)
            return
        except Exception:
            log.exception("multiplexer: re-opening the session of a GET leg failed")
            m.leg_done(self)
            return
        self.bs = bs
        # The new backend session numbers its events afresh: the old position means
        # nothing to it.
        m.ids.positions.pop(name, None)
        if _alive(m.ex):
            self.open()
