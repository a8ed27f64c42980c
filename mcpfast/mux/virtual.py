"""The virtual server of a route over several backends (issue #5, docs/multiplexing.md §6).

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
* GET merges every backend's server→client stream into one; DELETE ends every backend
  session.

Work that waits on several backends (initialize, lists, re-opening a backend session)
runs in a task; the routed request -- the hot path -- starts its backend call straight
from the callback when the backend session is known.

Failure isolation: with ``fail_mode = "open"`` a backend that cannot be reached is left
out (its list pages skipped, calls to it answered with a JSON-RPC error naming it) and
marked down in this process, so cached pages of it are not served until it answers
again.  A backend that answers 404 has lost our session: it is re-initialized with what
the token holds and the request sent once more; the new backend session id is kept in a
per-process table keyed by (token, backend), because the client's token cannot change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from ..core import KIND_NOTIFICATION, KIND_REQUEST
from ..gateway import DONE
from ..server import jsonrpc_error_body
from ..upstream import UpstreamError, UpstreamPool
from .client import BackendLink, Call, request
from .ids import STREAM_GET, STREAM_POST, MergedStreamIds, decode_event_id
from .merge import (
    LIST_CHANGED,
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
from .rewrite import FANOUT, FORWARD, LOCAL, RouteError, rewrite_sse_event, route_client_message
from .token import BackendSession, InvalidToken, SessionState, TokenCodec

__all__ = ["VirtualRoute"]

log = logging.getLogger("mcpfast.mux")

_SESSION_NOT_FOUND = -32001  # what the Python SDK answers with its 404
_INTERNAL = -32603
_EMPTY_RESULT = b"{}"
_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
_ALLOW = b"Allow: GET, POST, DELETE\r\n"
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
# Routed requests that policy checks here (see VirtualRoute.checks_after_routing); the
# ones with a name or URI are checked under it, completion/complete (its name sits in
# params.ref) under none, as on a single-backend route.
_NAME_METHODS = frozenset(("tools/call", "prompts/get"))  # the rest of them carry a URI
_CHECKED_AFTER_ROUTING = frozenset(
    ("tools/call", "prompts/get", "resources/read", "resources/subscribe", "resources/unsubscribe",
     "completion/complete")
)  # fmt: skip


def _alive(ex) -> bool:
    return ex.phase != DONE


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


def _sse_head(ex) -> tuple[bytes, bool]:
    """The client head of an SSE answer; returns (head, chunked)."""
    keep = ex.keep_alive and ex.conn.keep_alive
    if ex.head.version == 11:
        chunked = True
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        chunked = keep = False  # HTTP/1.0: the stream ends with the connection
        framing = b""
    ex.keep_alive = keep
    ex.status = 200
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        + framing
        + (b"" if keep else b"Connection: close\r\n")
        + b"\r\n"
    ), chunked


class VirtualRoute:
    """One multiplexed route: its namespace, token codec, list cache and backend links."""

    #: Methods whose authorization and rate limits wait until the message is routed:
    #: ``Exchange._admit`` only checks the session binding for them, ``_dispatch`` checks
    #: the rest against the owning backend and the backend's own name.
    checks_after_routing = _CHECKED_AFTER_ROUTING

    def __init__(self, gw, rc, route) -> None:
        cfg = gw.config
        mc = rc.mux
        self.gw = gw
        self.route = route
        self.path = rc.path
        self.mc = mc
        self.backends: tuple[str, ...] = tuple(rc.backends)
        self.ns = Namespace(self.backends, separator=mc.separator, mode=mc.namespacing, uri_scheme=mc.uri_scheme)
        self.codec = TokenCodec(mc.session_key, mc.old_keys, max_age=mc.max_age or None)
        self.cache = None if mc.list_cache == "off" else ListCache(ttl=mc.list_cache_ttl or None)
        self.per_session = mc.list_cache == "session"
        self.fail_open = mc.fail_mode == "open"
        self.server_info = {"name": mc.server_name, "version": mc.server_version}
        self.links: dict[str, BackendLink] = {}
        for name in self.backends:
            b = cfg.backend(name)
            pool = gw.pools.get(name)
            if pool is None:
                pool = gw.pools[name] = UpstreamPool(
                    b,
                    gw.metrics.for_backend(rc.path, name),
                    connect_timeout=cfg.timeouts.upstream_connect,
                    max_header_bytes=cfg.limits.max_header_bytes,
                )
            self.links[name] = BackendLink(
                b, pool, b.response_timeout or cfg.timeouts.upstream_response, cfg.limits.max_sse_event_bytes
            )
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
                ex.respond_error(405, -32600, "method not allowed on a multiplexed MCP endpoint", headers=_ALLOW)
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
        except UpstreamError as err:
            if _alive(ex):
                ex.respond_error(err.status, -32000, str(err))
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
            ex.respond_error(400, -32600, "Bad Request: Mcp-Session-Id header is required")
            return None, ""
        token = sid.decode("latin-1")
        try:
            return self.codec.decode(token, self.path, subject=self._subject(ex)), token
        except InvalidToken as exc:
            log.debug("session token refused: %s", exc.reason if hasattr(exc, "reason") else exc)
            ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            return None, token

    def _next_id(self) -> str:
        self._ids += 1
        return f"mcpfast-{self._ids}"

    # --- POST -------------------------------------------------------------------------
    def _post(self, ex) -> None:
        env = ex.env
        if type(env) is list:
            # TODO(#5): split a client batch (2025-03-26) into its elements and route each.
            ex.respond_error(400, -32600, "JSON-RPC batches are not supported on a multiplexed route")
            return
        body = ex.body if type(ex.body) is bytes else bytes(ex.body)
        if env.method == "initialize" and env.kind == KIND_REQUEST:
            self._spawn(ex, self._initialize(ex, body, env))
            return
        state, token = self._open_token(ex)
        if state is None:
            return
        self._dispatch(ex, body, env, state, token, True)

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
        rp = self.route.policy
        if rp is None or not rp.enabled or ex.principal is None:
            return True
        method = action.method
        if method == "completion/complete":
            name = shown = None
        else:
            name = action.name
            shown = env.name if method in _NAME_METHODS else env.uri
        refusal = rp.admit(ex.principal, method, name, action.backend, ex.head.session_id, shown)
        if refusal is None:
            return True
        ex.respond_error(refusal.status, refusal.code, refusal.message, headers=refusal.headers)
        return False

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
            ex.respond(200, jsonrpc_error_body(-32602, "Invalid params: initialize params must be an object", env.id))
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
                self.down.pop(b, None)
                opened.append((b, r[1]))
                sessions.append(r[0])
        if failures and (not self.fail_open or not opened):
            for bs in sessions:
                if bs.session_id is not None:
                    asyncio.get_running_loop().create_task(self._end_backend(bs))
            status = 504 if any(getattr(f, "status", 0) == 504 for _, f in failures) else 502
            why = "; ".join(f"{b}: {f}" for b, f in failures)
            ex.respond_error(status, -32000, f"backends unavailable: {why}")
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
        rp = self.route.policy
        if rp is not None and ex.principal is not None:
            rp.session_created(tb, ex.principal)

    async def _open_backend(self, b: str, version: str, caps: dict, info: dict | None) -> tuple[BackendSession, dict]:
        """Open a session with backend ``b`` on the client's behalf."""
        link = self.links[b]
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
        reply = await request(link, link.post(msg, None, None))
        why = reply.error_text()
        if why is not None:
            raise UpstreamError("upstream_protocol", f"backend {b} refused initialize ({why})")
        result = load_json(reply.result_bytes())
        if not isinstance(result, dict):
            raise BadBackendAnswer(f"backend {b}: initialize result is not an object")
        bver = result.get("protocolVersion")
        bver = bver if isinstance(bver, str) else version
        sid = reply.session_id
        done = await request(link, link.post(_INITIALIZED, sid, bver))
        if not done.ok:
            raise UpstreamError("upstream_protocol", f"backend {b} refused notifications/initialized (HTTP {done.status})")
        return BackendSession(b, sid, bver), result

    async def _end_backend(self, bs: BackendSession) -> None:
        link = self.links[bs.name]
        try:
            await request(link, [link.head(b"DELETE", bs.session_id, bs.protocol_version)])
        except UpstreamError:
            pass

    # --- backend sessions -----------------------------------------------------------------
    def _session(self, token: str, state: SessionState, b: str) -> BackendSession | None:
        """The backend session this process knows for (token, backend)."""
        hit = self.resessions.get((token, b))
        if hit is not None:
            return hit
        return state.backend(b)

    async def _ensure(self, token: str, state: SessionState, b: str, stale: str | None = None) -> BackendSession:
        """A usable backend session: the known one, or a new one when there is none (the
        backend was down at initialize) or the known one is ``stale`` (404)."""
        bs = self._session(token, state, b)
        if bs is not None and bs.protocol_version is not None and (stale is None or bs.session_id != stale):
            return bs
        key = (token, b)
        task = self.reopening.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._reopen(token, state, b))
            self.reopening[key] = task
            task.add_done_callback(lambda _t: self.reopening.pop(key, None))
        return await asyncio.shield(task)

    async def _reopen(self, token: str, state: SessionState, b: str) -> BackendSession:
        old = state.backend(b)
        version = (old.protocol_version if old is not None else None) or state.protocol_version or "2025-06-18"
        try:
            bs, _ = await self._open_backend(b, version, state.client_capabilities, state.client_info)
        except (UpstreamError, BadBackendAnswer, ValueError) as exc:
            self.down[b] = time.monotonic()
            raise UpstreamError("upstream_unavailable", f"backend {b} unavailable: {exc}") from None
        self.down.pop(b, None)
        rs = self.resessions
        rs[(token, b)] = bs
        while len(rs) > _MAX_RESESSIONS:
            rs.popitem(last=False)
        return bs

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
        if _alive(ex):
            self._send(ex, state, token, action, env, bs, stale is not None)

    def _send(self, ex, state, token, action, env, bs: BackendSession, retried: bool) -> None:
        link = self.links[action.backend]
        relay = _Relay(self, ex, state, token, action, env, bs, retried)
        call = Call(link, link.post(action.body, bs.session_id, bs.protocol_version), relay)
        ex.upstream = call
        call.start()

    def _backend_failed(self, ex, env, b: str, err) -> None:
        self.down[b] = time.monotonic()
        if not _alive(ex):
            return
        msg = f"backend {b} unavailable: {err}"
        if self.fail_open and env.kind == KIND_REQUEST:
            ex.respond(200, jsonrpc_error_body(_INTERNAL, msg, env.id))
        else:
            ex.respond_error(getattr(err, "status", 502), -32000, msg)

    async def _refresh_then_route(self, ex, body, env, state, token) -> None:
        methods = _STALE_LISTS[env.method]
        await asyncio.gather(
            *(self._page(state, token, b, m, None) for m in methods for b in self.backends), return_exceptions=True
        )
        if _alive(ex):
            self._dispatch(ex, body, env, state, token, False)

    def _fanout(self, ex, body: bytes, env, state: SessionState, token: str) -> None:
        targets = [bs for bs in (self._session(token, state, b) for b in self.backends) if bs and bs.protocol_version]
        if env.kind == KIND_REQUEST:  # logging/setLevel: every backend, then answer {}
            async def all_then_answer() -> None:
                await asyncio.gather(*(self._quiet(bs, body) for bs in targets))
                if _alive(ex):
                    ex.respond(200, response_body(env.id, _EMPTY_RESULT))

            self._spawn(ex, all_then_answer())
            return
        loop = asyncio.get_running_loop()
        for bs in targets:
            loop.create_task(self._quiet(bs, body))
        ex.respond(202, b"")

    async def _quiet(self, bs: BackendSession, body: bytes) -> None:
        link = self.links[bs.name]
        try:
            await request(link, link.post(body, bs.session_id, bs.protocol_version))
        except UpstreamError as err:
            log.debug("fan-out to %s failed: %s", bs.name, err)

    # --- lists --------------------------------------------------------------------------
    async def _list(self, ex, env, state: SessionState, token: str) -> None:
        method = env.method
        try:
            plan = plan_page(method, env.cursor, self.backends)
        except InvalidCursor:
            ex.respond(200, jsonrpc_error_body(-32602, "Invalid params: invalid cursor", env.id))
            return
        got = await asyncio.gather(*(self._page(state, token, b, method, c) for b, c in plan), return_exceptions=True)
        pages: list[BackendPage] = []
        for (b, _), p in zip(plan, got, strict=True):
            if isinstance(p, NameConflict):
                ex.respond(200, jsonrpc_error_body(_INTERNAL, str(p), env.id))
                return
            if isinstance(p, BaseException):
                if not isinstance(p, (UpstreamError, BadBackendAnswer, ValueError)):
                    log.error("list from backend %s failed", b, exc_info=p)
                if not self.fail_open:
                    ex.respond_error(502, -32000, f"backend {b} unavailable: {p}")
                    return
                continue
            pages.append(p)
        if not _alive(ex):
            return
        self._answer_list(ex, env, pages)

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
            page = cache.get(self._scope(b, self._session(token, state, b)), method, c)
            if page is None:
                return False
            pages.append(page)
        self._answer_list(ex, env, pages)
        return True

    def _answer_list(self, ex, env, pages: list[BackendPage]) -> None:
        method = env.method
        lf = ex.lfilter
        if lf is not None:
            # Policy hides what the caller may not use: each backend's page under that
            # backend's name and the items' own names.  Pages may be cached and shared by
            # every caller, so a filtered page is a new one.
            pages = [self._filtered(lf.rp, ex.principal, method, p) for p in pages]
        body = response_body(env.id, assemble_result(method, pages))
        ex.respond(200, body)

    def _filtered(self, rp, principal, method: str, page: BackendPage) -> BackendPage:
        if not page.count:
            return page
        names = page.names
        if names is None:  # not made by prepare_page: nothing to check it by (fail closed)
            return page.keeping([False] * page.count)
        mask = rp.allowed_names(principal, method, names, page.backend)
        return page if mask is None else page.keeping(mask)

    def _scope(self, b: str, bs: BackendSession | None):
        if self.per_session:
            return (self.path, b, bs.session_id if bs is not None else None)
        return (self.path, b)

    async def _page(self, state, token, b: str, method: str, cursor: str | None) -> BackendPage:
        cache = self.cache
        scope = self._scope(b, self._session(token, state, b))
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
        link = self.links[b]
        bs = await self._ensure(token, state, b)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id(), "method": method}
        if params is not None:
            msg["params"] = params
        data = dump_json(msg)
        for attempt in (0, 1):
            try:
                reply = await request(link, link.post(data, bs.session_id, bs.protocol_version))
            except UpstreamError:
                self.down[b] = time.monotonic()
                raise
            if reply.status == 404 and attempt == 0 and bs.session_id is not None:
                bs = await self._ensure(token, state, b, stale=bs.session_id)
                continue
            break
        self.down.pop(b, None)
        if not reply.ok:
            raise UpstreamError("upstream_status", f"backend {b} answered {method} with HTTP {reply.status}")
        e = reply.env
        if e is None or type(e) is list:
            raise BadBackendAnswer(f"backend {b}: {method} answer is not a JSON-RPC message")
        if e.result_span is None:
            return None
        return load_json(reply.result_bytes())

    def list_changed(self, b: str, method: str, bs: BackendSession | None) -> None:
        """A backend said one of its lists changed: forget what this process knows."""
        stale = LIST_CHANGED.get(method, ())
        if self.cache is not None and stale:
            self.cache.on_notification(self._scope(b, bs), method)
        for m in stale:
            self.ns.forget(b, m)

    # --- DELETE -------------------------------------------------------------------------
    async def _delete(self, ex, state: SessionState, token: str) -> None:
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
        rp = self.route.policy
        if rp is not None and ex.principal is not None:
            rp.session_ended(tb)
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
                ex.respond_error(400, -32600, "Bad Request: unknown Last-Event-ID")
                return
            kind, resume = decoded
            if kind == STREAM_POST:
                # TODO(#5): resume one backend's POST stream on a GET.
                resume = {}
                kind = STREAM_GET
        targets = []
        for b in self.backends:
            bs = self._session(token, state, b)
            if bs is not None and bs.session_id is not None and bs.protocol_version is not None:
                targets.append(bs)
        if not targets:
            ex.respond_error(405, -32600, "no backend offers a server-to-client stream", headers=_ALLOW)
            return
        _Merge(self, ex, targets, MergedStreamIds(kind, resume)).start()


class _Relay:
    """Relays one backend's answer to a routed client request."""

    __slots__ = ("vr", "ex", "state", "token", "action", "env", "bs", "retried", "out", "started", "chunked", "ids", "expired")

    def __init__(self, vr: VirtualRoute, ex, state, token, action, env, bs, retried: bool) -> None:
        self.vr = vr
        self.ex = ex
        self.state = state
        self.token = token
        self.action = action
        self.env = env
        self.bs = bs
        self.retried = retried
        self.out: list = []
        self.started = False
        self.chunked = False
        self.ids: MergedStreamIds | None = None
        self.expired = False

    def on_head(self, call, head) -> None:
        if head.status == 404 and not self.retried and self.bs.session_id is not None:
            self.expired = True  # the backend forgot our session: re-open it and resend
            return
        if call.sse is not None and head.status == 200 and _alive(self.ex):
            data, self.chunked = _sse_head(self.ex)
            self.started = True
            self.ids = MergedStreamIds(STREAM_POST)
            self.out.append(data)
            call.pending = True

    def on_event(self, call, ev) -> None:
        if not self.started:
            return
        b = self.action.backend
        data, env = rewrite_sse_event(ev, b, self.vr.ns, self.ids)
        if env is not None and type(env) is not list and env.kind == KIND_NOTIFICATION and env.method in LIST_CHANGED:
            self.vr.list_changed(b, env.method, self.bs)
        if data:
            self.ex.bytes_out += len(data)
            if self.chunked:
                self.out += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                self.out.append(data)
            call.pending = True

    def on_flush(self, call) -> None:
        out = self.out
        if out:
            self.out = []
            self.ex.conn.send_many(out)

    def on_end(self, call, body) -> None:
        ex = self.ex
        vr = self.vr
        vr.down.pop(self.action.backend, None)
        if not _alive(ex):
            return
        ex.upstream = None
        if self.expired:
            vr._spawn(ex, vr._forward_later(ex, self.state, self.token, self.action, self.env, self.bs.session_id))
            return
        if self.started:
            if self.chunked:
                self.out.append(b"0\r\n\r\n")
            self.on_flush(call)
            ex.finish("ok")
            return
        head = call.head
        if head.status == 404 and self.bs.session_id is not None:
            # Re-opened and still unknown: the session is gone for good.
            ex.respond_error(404, _SESSION_NOT_FOUND, "Session not found")
            return
        ex.respond(head.status, body or b"", content_type=head.content_type or b"application/json")

    def on_error(self, call, err) -> None:
        ex = self.ex
        if not _alive(ex):
            return
        ex.upstream = None
        if self.started:
            # Mid-stream: cut the client connection so it sees an incomplete stream.
            self.on_flush(call)
            ex.keep_alive = False
            ex.conn.abort()
            ex.finish("upstream_cut")
            return
        self.vr._backend_failed(ex, self.env, self.action.backend, err)


class _Merge:
    """One client GET stream fed by every backend's GET stream."""

    __slots__ = ("vr", "ex", "targets", "ids", "calls", "live", "started", "chunked", "out", "handlers")

    def __init__(self, vr: VirtualRoute, ex, targets: list[BackendSession], ids: MergedStreamIds) -> None:
        self.vr = vr
        self.ex = ex
        self.targets = targets
        self.ids = ids
        self.calls: list[Call] = []
        self.live = 0
        self.started = False
        self.chunked = False
        self.out: list = []

    def start(self) -> None:
        ex = self.ex
        ex.upstream = self
        for bs in self.targets:
            link = self.vr.links[bs.name]
            more = b""
            pos = self.ids.positions.get(bs.name)
            if pos is not None:
                more = b"Last-Event-ID: " + pos + b"\r\n"
            h = _MergeLeg(self, bs)
            call = Call(link, [link.head(b"GET", bs.session_id, bs.protocol_version, -1, more)], h)
            self.calls.append(call)
            self.live += 1
        for call in list(self.calls):
            call.start()

    # Exchange.upstream stand-in
    def detach(self) -> None:
        for c in self.calls:
            c.detach()

    def pause_reading(self) -> None:
        for c in self.calls:
            c.pause_reading()

    def resume_reading(self) -> None:
        for c in self.calls:
            c.resume_reading()

    def _begin(self) -> None:
        if self.started or not _alive(self.ex):
            return
        data, self.chunked = _sse_head(self.ex)
        self.started = True
        self.ex.conn.send(data)

    def emit(self, data: bytes) -> None:
        self.ex.bytes_out += len(data)
        if self.chunked:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out and _alive(self.ex):
            self.out = []
            self.ex.conn.send_many(out)

    def leg_done(self) -> None:
        self.live -= 1
        if self.live > 0 or not _alive(self.ex):
            return
        ex = self.ex
        ex.upstream = None
        if not self.started:
            ex.respond_error(405, -32600, "no backend offers a server-to-client stream", headers=_ALLOW)
            return
        # TODO(#5): reconnect a backend that closed its stream after an event with an id
        # (2025-11-25 polling) instead of ending when the last one closes.
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        ex.finish("ok")


class _MergeLeg:
    __slots__ = ("m", "bs", "ok")

    def __init__(self, m: _Merge, bs: BackendSession) -> None:
        self.m = m
        self.bs = bs
        self.ok = False

    def on_head(self, call, head) -> None:
        if head.status == 200 and call.sse is not None:
            self.ok = True
            self.m._begin()

    def on_event(self, call, ev) -> None:
        if not self.ok:
            return
        m = self.m
        b = self.bs.name
        data, env = rewrite_sse_event(ev, b, m.vr.ns, m.ids)
        if env is not None and type(env) is not list and env.kind == KIND_NOTIFICATION and env.method in LIST_CHANGED:
            m.vr.list_changed(b, env.method, self.bs)
        if data:
            m.emit(data)
            call.pending = True

    def on_flush(self, call) -> None:
        self.m.flush()

    def on_end(self, call, body) -> None:
        self.m.leg_done()

    def on_error(self, call, err) -> None:
        log.debug("GET stream of backend %s ended: %s", self.bs.name, err)
        self.m.vr.down[self.bs.name] = time.monotonic()
        self.m.flush()
        self.m.leg_done()
