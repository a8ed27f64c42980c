"""Client batches on a multiplexed route (JSON-RPC 2.0 §6; MCP 2025-03-26 only).

Theory of operation.  The elements of one batch may belong to different backends, so the
virtual server splits it: each element is routed as it would be on its own
(``route_client_message``) -- a request to the backend that owns it, a list or ``ping``
answered here, ``logging/setLevel`` and cancellations to every backend, a client's reply
to the backend that asked -- all of them at once.

The answer follows Streamable HTTP 2025-03-26 ("Sending Messages to the Server"): a body
of only notifications and responses gets 202 once each has been delivered; a body with
requests gets an SSE stream carrying one JSON-RPC response per request, each as soon as
it is ready (JSON-RPC lets a batch answer come in any order: the ids match them up).  A
JSON array would have to wait for the slowest element and could not carry what a
backend sends about its element before answering (progress, sampling, elicitation), so
those go on the same stream, rewritten as on a single answer (``rewrite_backend_message``)
so that the client's replies find their way back.  The stream's events carry no ids:
one id cannot name a position in several backend POST streams, so a batch answer is not
resumable (resumption by polling came later than batches, in 2025-11-25).

Every element fails alone: one the gateway refuses (unknown name, policy, a backend that
is down, an ``initialize`` -- 2025-03-26 keeps it out of batches) gets a JSON-RPC error
under its own id, and the others go on; a notification or response that cannot be
delivered is dropped (nothing may answer it).  Only what concerns the whole body is
refused as a whole (400, -32600): a session negotiated at a version without batches
(2025-06-18 removed them), more than ``MAX_BATCH`` elements.  An empty batch or an
element that is not an object never gets here: the envelope scanner refuses the body
(-32600, JSON-RPC 2.0 §6).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from ..wire.core import (
    KIND_ERROR,
    KIND_NOTIFICATION,
    KIND_REQUEST,
    KIND_RESPONSE,
    encode_sse_event,
    scan_jsonrpc,
)
from ..observe import method_label
from ..wire.rpcerrors import INTERNAL_ERROR as _INTERNAL
from ..wire.rpcerrors import INVALID_REQUEST as _INVALID_REQUEST
from ..wire.rpcerrors import SESSION_NOT_FOUND as _SESSION_NOT_FOUND
from ..wire.rpcerrors import jsonrpc_error_body
from ..transport.pool import UpstreamError
from .merge import LIST_CHANGED, LIST_METHODS, response_body
from .rewrite import (
    FANOUT,
    FORWARD,
    LOCAL,
    RouteError,
    rewrite_backend_message,
    route_client_message,
)
from .token import SessionEnded

__all__ = ["BATCH_VERSIONS", "MAX_BATCH", "Batch"]

log = logging.getLogger("mcpfast.mux")

#: Elements of one batch at most; a longer batch is refused as a whole (-32600).
MAX_BATCH = 64
#: Client-facing protocol versions whose sessions may send batches.
BATCH_VERSIONS = frozenset(("2024-11-05", "2025-03-26"))

_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
_ANSWERS = (KIND_RESPONSE, KIND_ERROR)


class Batch:
    """One client batch: its elements in flight, and the client's answer.  Stands in for
    ``Exchange.upstream``: back-pressure reaches the backend calls in flight, and a client
    that leaves cancels them all."""

    __slots__ = ("body", "calls", "envs", "ex", "started", "state", "task", "token", "vr")

    def __init__(self, vr, ex, body: bytes, envs: list, state, token: str) -> None:
        self.vr = vr
        self.ex = ex
        self.body = body
        self.envs = envs
        self.state = state
        self.token = token
        self.calls: set = set()
        self.task: asyncio.Task | None = None
        self.started = False

    def start(self) -> None:
        ex = self.ex
        version = self.state.protocol_version
        if version not in BATCH_VERSIONS:
            why = f"Invalid Request: protocol version {version} has no JSON-RPC batches"
            ex.respond_error(400, _INVALID_REQUEST, why)
            return
        if len(self.envs) > MAX_BATCH:
            ex.respond_error(
                400, _INVALID_REQUEST, f"Invalid Request: a batch of {len(self.envs)} messages (at most {MAX_BATCH})"
            )
            return
        if any(e.kind == KIND_REQUEST for e in self.envs):
            ex.begin_answer(200, ex.framed_head([_SSE_HEAD], -1, 200))
            ex.flush()
            self.started = True
        ex.upstream = self
        self.task = asyncio.get_running_loop().create_task(self._run())

    # --- Exchange.upstream stand-in ----------------------------------------------------
    def detach(self) -> None:
        if self.task is not None:
            self.task.cancel()  # each call in flight is detached as its request() ends

    def pause_reading(self) -> None:
        for c in self.calls:
            c.pause_reading()

    def resume_reading(self) -> None:
        for c in self.calls:
            c.resume_reading()

    # --- the elements --------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            done = await asyncio.gather(*(self._element(e) for e in self.envs), return_exceptions=True)
        except asyncio.CancelledError:
            return
        for r in done:
            if isinstance(r, BaseException):  # _element answers its own failures: a bug
                log.error("multiplexer: batch element failed", exc_info=r)
        ex = self.ex
        if not ex.alive():
            return
        if self.started:
            ex.upstream_end()  # the chunked terminator if any, the last write, finish
        else:
            ex.upstream = None
            ex.respond(202, b"")

    async def _element(self, whole) -> None:
        # The element alone, scanned again so that its spans count from its own start:
        # it is rewritten and forwarded by itself.
        data = bytes(memoryview(self.body)[whole.start : whole.end])
        env = scan_jsonrpc(data)
        try:
            await self._route(data, env, True)
        except RouteError as err:
            self._error(env, err.code, err.message, err.data)
        except SessionEnded:
            self._error(env, _SESSION_NOT_FOUND, "Session not found")
        except UpstreamError as err:
            self._error(env, _INTERNAL, str(err))
        except Exception:
            log.exception("multiplexer: batch element failed")
            self._error(env, _INTERNAL, "Internal error")

    async def _route(self, data: bytes, env, may_refresh: bool) -> None:
        vr = self.vr
        try:
            action = route_client_message(data, env, vr.ns)
        except RouteError as err:
            if err.maybe_stale and may_refresh and await vr.refresh_lists(self.state, self.token, env.method):
                await self._route(data, env, False)
                return
            raise
        kind = action.kind
        is_request = env.kind == KIND_REQUEST
        if kind == FORWARD:
            if is_request and action.method in vr.checks_after_routing:
                refusal = vr.refusal(self.ex, action, env)
                if refusal is not None:
                    self._error(env, refusal.code, refusal.message)
                    return
            await self._forward(action, env)
        elif kind == LOCAL:
            m = env.method
            if not is_request or m == "notifications/initialized":
                return  # each backend got its own at initialize
            if m == "ping":
                self._send(response_body(env.id, b"{}"))
            elif m in LIST_METHODS:
                self._send(await vr.list_answer(self.ex, env, self.state, self.token, self._filtered(m)))
            else:  # initialize
                self._error(env, _INVALID_REQUEST, "Invalid Request: initialize must not be part of a JSON-RPC batch")
        elif kind == FANOUT:
            await vr.fan_out(self.state, self.token, action.body)
            if is_request:  # logging/setLevel: answered once every backend has it
                self._send(response_body(env.id, b"{}"))
        # DROP: nothing to do, nobody to answer

    async def _forward(self, action, env) -> None:
        b = action.backend
        try:
            reply = await self.vr.exchange(
                self.state, self.token, b, action.body, functools.partial(self._related, b), self.calls
            )
        except UpstreamError as err:
            self._error(env, _INTERNAL, f"backend {b} unavailable: {err}")
            return
        if env.kind != KIND_REQUEST:
            return
        e = reply.env
        if reply.message is not None and e is not None and type(e) is not list and e.kind in _ANSWERS:
            self._send(reply.message)  # the client's own id: nothing to change
        else:
            self._error(env, _INTERNAL, f"backend {b} sent no answer (HTTP {reply.status})")

    def _filtered(self, method: str) -> bool:
        rp = self.vr.route.policy
        return rp is not None and rp.enabled and self.ex.principal is not None and rp.needs_filter(method)

    # --- the client's stream -------------------------------------------------------------
    def _related(self, b: str, data: bytes, env) -> None:
        """A message backend ``b`` sent about its element before answering it."""
        vr = self.vr
        if type(env) is not list and env.kind == KIND_NOTIFICATION and env.method in LIST_CHANGED:
            vr.list_changed(b, env.method, vr._session(self.token, self.state, b), self.token)
        self._send(rewrite_backend_message(data, env, b, vr.ns))

    def _error(self, env, code: int, message: str, data=None) -> None:
        if env.kind == KIND_REQUEST:
            self._send(jsonrpc_error_body(code, message, env.id, data))
        else:
            # Method as a label and the id cut short: both came from the client.
            log.debug("batch: %s %.64s not delivered: %.200s", method_label(env.method or "response"), env.id, message)

    def _send(self, message: bytes) -> None:
        ex = self.ex
        if not self.started or not ex.alive():
            return
        ex.relay(encode_sse_event(message, event=b"message"))
        ex.flush()
