"""Routing and rewriting by splice (mcpfast.mux.rewrite).  Every rewrite is checked
against ``orjson.loads`` of the result; envelopes come from both cores (``core``
fixture: ids ``py`` and ``c``)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.core import KIND_NOTIFICATION, KIND_REQUEST, SSEParser
from mcpfast.mux.ids import STREAM_GET, STREAM_POST, MergedStreamIds, decode_event_id, encode_progress_token, encode_request_id
from mcpfast.mux.merge import dump_json
from mcpfast.mux.names import NEVER, Namespace
from mcpfast.mux.rewrite import (
    DROP,
    FANOUT,
    FORWARD,
    LOCAL,
    RouteError,
    replace_id,
    rewrite_backend_message,
    rewrite_sse_event,
    route_client_message,
)

BACKENDS = ("weather", "github", "files")


@pytest.fixture
def ns() -> Namespace:
    return Namespace(BACKENDS)


def msg(**kw) -> bytes:
    return dump_json({"jsonrpc": "2.0", **kw})  # orjson, or the stdlib for huge integers


def route(core, body: bytes, ns: Namespace):
    return route_client_message(body, core.scan_jsonrpc(body), ns)


def replaced(body: bytes, path: list, value):
    obj = orjson.loads(body)
    node = obj
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return obj


# --- client → backend -----------------------------------------------------------------------


def test_tools_call_name_spliced(core, ns):
    args = {"city": "Zürich", "days": [1, 2, 3], "nested": {"name": "weather__not_this"}}
    body = msg(
        id=1,
        method="tools/call",
        params={"name": "weather__forecast", "arguments": args, "_meta": {"progressToken": 9}},
    )
    a = route(core, body, ns)
    assert a.kind == FORWARD and a.backend == "weather" and a.name == "forecast" and a.method == "tools/call"
    assert orjson.loads(a.body) == replaced(body, ["params", "name"], "forecast")
    # everything after the name is byte-identical
    cut = body.index(b'"weather__forecast"')
    assert a.body.startswith(body[:cut])
    assert a.body.endswith(body[cut + len(b'"weather__forecast"') :])


def test_escaped_name_in_body(core, ns):
    body = b'{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"github__s\\u0065arch","arguments":{}}}'
    a = route(core, body, ns)
    assert (a.backend, a.name) == ("github", "search")
    assert orjson.loads(a.body)["params"]["name"] == "search"


def test_name_needing_escapes(core):
    ns = Namespace(["a", "b"], separator="--")
    body = msg(id=1, method="tools/call", params={"name": 'a--quote"back\\slash\n\u2028', "arguments": {}})
    a = route(core, body, ns)
    assert orjson.loads(a.body)["params"]["name"] == 'quote"back\\slash\n\u2028'


def test_unknown_tool(core, ns):
    for name in ("nobody__x", "forecast", ""):
        body = msg(id=3, method="tools/call", params={"name": name})
        with pytest.raises(RouteError) as ei:
            route(core, body, ns)
        err = ei.value
        assert err.code == -32602 and err.status == 200 and not err.maybe_stale
        assert orjson.loads(err.body(3)) == {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {"code": -32602, "message": f"Unknown tool: {name}"},
        }


def test_refused_notification_is_an_http_error(core, ns):
    with pytest.raises(RouteError) as ei:
        route(core, msg(method="tools/call", params={"name": "nobody__x"}), ns)
    assert ei.value.status == 400
    with pytest.raises(RouteError) as ei:
        route(core, msg(method="notifications/progress", params=[1]), ns)
    assert ei.value.status == 400


def test_missing_name(core, ns):
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=1, method="tools/call", params={"name": 5}), ns)
    assert ei.value.code == -32602
    with pytest.raises(RouteError):
        route(core, msg(id=1, method="prompts/get"), ns)


def test_prompts_get(core, ns):
    body = msg(id=2, method="prompts/get", params={"name": "files__summarize", "arguments": {"x": "y"}})
    a = route(core, body, ns)
    assert (a.kind, a.backend) == (FORWARD, "files")
    assert orjson.loads(a.body) == replaced(body, ["params", "name"], "summarize")
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=2, method="prompts/get", params={"name": "x"}), ns)
    assert ei.value.code == -32602 and "Unknown prompt" in ei.value.message


@pytest.mark.parametrize("method", ["resources/read", "resources/subscribe", "resources/unsubscribe"])
def test_resource_methods(core, ns, method):
    body = msg(id=4, method=method, params={"uri": "mcpfast:files/file:///etc/hosts"})
    a = route(core, body, ns)
    assert (a.kind, a.backend, a.name) == (FORWARD, "files", "file:///etc/hosts")
    assert orjson.loads(a.body) == replaced(body, ["params", "uri"], "file:///etc/hosts")
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=4, method=method, params={"uri": "file:///nope"}), ns)
    err = ei.value
    assert err.code == -32002 and err.maybe_stale
    assert orjson.loads(err.body(4))["error"] == {
        "code": -32002,
        "message": "Resource not found",
        "data": {"uri": "file:///nope"},
    }


def test_unprefixed_uri_routed_by_index(core, ns):
    ns.resources.add_uri("github", "repo://a/b")
    a = route(core, msg(id=1, method="resources/read", params={"uri": "repo://a/b"}), ns)
    assert a.backend == "github" and orjson.loads(a.body)["params"]["uri"] == "repo://a/b"


def test_completion_prompt_ref(core, ns):
    params = {"ref": {"type": "ref/prompt", "name": "github__review"}, "argument": {"name": "lang", "value": "py"},
              "context": {"arguments": {"a": "b"}}}  # fmt: skip
    body = msg(id=5, method="completion/complete", params=params)
    a = route(core, body, ns)
    assert (a.backend, a.name) == ("github", "review")
    assert orjson.loads(a.body) == replaced(body, ["params", "ref", "name"], "review")


def test_completion_resource_ref(core, ns):
    body = msg(id=5, method="completion/complete",
               params={"ref": {"type": "ref/resource", "uri": "mcpfast:files/file:///{path}"}, "argument": {"name": "path", "value": "/e"}})  # fmt: skip
    a = route(core, body, ns)
    assert (a.backend, a.name) == ("files", "file:///{path}")
    assert orjson.loads(a.body) == replaced(body, ["params", "ref", "uri"], "file:///{path}")


@pytest.mark.parametrize(
    "params",
    [None, {}, {"ref": 5}, {"ref": {"type": "ref/other", "name": "x"}}, {"ref": {"type": "ref/prompt"}},
     {"ref": {"type": "ref/prompt", "name": "nobody__x"}}, {"ref": {"type": "ref/resource", "uri": "x://y"}}, [1]],
)  # fmt: skip
def test_completion_refusals(core, ns, params):
    kw = {} if params is None else {"params": params}
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=5, method="completion/complete", **kw), ns)
    assert ei.value.code == -32602


def test_completion_single_backend_untouched(core):
    ns = Namespace(["only"])
    body = msg(
        id=5,
        method="completion/complete",
        params={"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": "a", "value": ""}},
    )
    a = route(core, body, ns)
    assert a.backend == "only" and a.body is body


def test_client_reply_to_server_request(core, ns):
    for original in (0, -5, 2**70, "req-1", "", "x~n1"):
        cid = encode_request_id("github", original)
        body = msg(id=cid, result={"role": "assistant", "content": {"type": "text", "text": "hi"}})
        a = route(core, body, ns)
        assert (a.kind, a.backend, a.method) == (FORWARD, "github", None)
        assert json.loads(a.body) == {**orjson.loads(body), "id": original}
        err = msg(id=cid, error={"code": -1, "message": "user declined"})
        a = route(core, err, ns)
        assert a.backend == "github" and json.loads(a.body)["id"] == original


@pytest.mark.parametrize("rid", [5, "plain", "nobody~n1", "github~x"])
def test_client_reply_unknown_id(core, ns, rid):
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=rid, result={}), ns)
    assert ei.value.status == 400
    body = orjson.loads(ei.value.body())
    assert body["id"] is None


def test_ids_naming_a_backend_of_another_route(core, ns):
    with pytest.raises(RouteError):
        route(core, msg(id="other~n1", result={}), ns)
    tok = encode_progress_token("other", 1)
    assert (
        route(core, msg(method="notifications/progress", params={"progressToken": tok, "progress": 1}), ns).kind == DROP
    )


def test_progress_from_client(core, ns):
    tok = encode_progress_token("weather", 17)
    body = msg(
        method="notifications/progress", params={"progressToken": tok, "progress": 0.5, "total": 1, "message": "half"}
    )
    a = route(core, body, ns)
    assert (a.kind, a.backend) == (FORWARD, "weather")
    assert orjson.loads(a.body) == replaced(body, ["params", "progressToken"], 17)
    unknown = msg(method="notifications/progress", params={"progressToken": "mine", "progress": 1})
    assert route(core, unknown, ns).kind == DROP
    assert route(core, msg(method="notifications/progress", params={"progressToken": 3}), ns).kind == DROP


def test_fanout_local_drop_and_unknown(core, ns):
    cancel = msg(method="notifications/cancelled", params={"requestId": 4, "reason": "user"})
    a = route(core, cancel, ns)
    assert a.kind == FANOUT and a.body is cancel
    assert route(core, msg(id=1, method="logging/setLevel", params={"level": "info"}), ns).kind == FANOUT
    assert route(core, msg(method="notifications/roots/list_changed"), ns).kind == FANOUT
    for m in ("initialize", "ping", "tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        a = route(core, msg(id=1, method=m), ns)
        assert (a.kind, a.method) == (LOCAL, m)
    assert route(core, msg(method="notifications/initialized"), ns).kind == LOCAL
    assert route(core, msg(method="notifications/whatever"), ns).kind == DROP
    with pytest.raises(RouteError) as ei:
        route(core, msg(id=9, method="tasks/list"), ns)
    assert ei.value.code == -32601


def test_never_mode(core):
    ns = Namespace(BACKENDS, mode=NEVER)
    body = msg(id=1, method="tools/call", params={"name": "forecast", "arguments": {}})
    with pytest.raises(RouteError) as ei:
        route(core, body, ns)
    assert ei.value.maybe_stale  # the gateway lists and tries again
    ns.tools.add("weather", "forecast")
    a = route(core, body, ns)
    assert a.backend == "weather" and a.body is body  # nothing to splice: same object


def test_single_backend_passes_bodies_unchanged(core):
    ns = Namespace(["only"])
    for body in (
        msg(id=1, method="tools/call", params={"name": "x"}),
        msg(id=1, method="resources/read", params={"uri": "file:///x"}),
        msg(id=1, method="prompts/get", params={"name": "p"}),
    ):
        a = route(core, body, ns)
        assert a.backend == "only" and a.body is body


# --- backend → client -----------------------------------------------------------------------


def back(core, body: bytes, backend: str, ns: Namespace) -> bytes:
    return rewrite_backend_message(body, core.scan_jsonrpc(body), backend, ns)


@pytest.mark.parametrize("rid", [0, 7, -1, 2**65, "abc", ""])
def test_server_request_id_encoded_and_back(core, ns, rid):
    body = msg(
        id=rid,
        method="sampling/createMessage",
        params={"messages": [], "maxTokens": 5, "_meta": {"progressToken": rid}},
    )
    out = back(core, body, "github", ns)
    obj = json.loads(out)
    assert obj["id"] == encode_request_id("github", rid)
    assert obj["params"]["_meta"]["progressToken"] == encode_progress_token("github", rid)
    assert {k: v for k, v in obj.items() if k not in ("id", "params")} == {
        "jsonrpc": "2.0",
        "method": "sampling/createMessage",
    }
    # the client answers with the id it saw; the gateway routes it back
    reply = orjson.dumps({"jsonrpc": "2.0", "id": obj["id"], "result": {"action": "accept"}})
    a = route(core, reply, ns)
    assert a.backend == "github" and json.loads(a.body)["id"] == rid


def test_backend_cancel_and_resource_update(core, ns):
    cancel = msg(method="notifications/cancelled", params={"requestId": 3, "reason": "timeout"})
    assert orjson.loads(back(core, cancel, "weather", ns)) == replaced(cancel, ["params", "requestId"], "weather~n3")
    upd = msg(method="notifications/resources/updated", params={"uri": "file:///a b"})
    assert orjson.loads(back(core, upd, "files", ns)) == replaced(upd, ["params", "uri"], "mcpfast:files/file:///a b")
    # unprefixed route: the URI stays
    assert back(core, upd, "only", Namespace(["only"])) is upd


def test_backend_answers_and_other_notifications_untouched(core, ns):
    for body in (
        msg(id=5, result={"content": [{"type": "text", "text": "x"}]}),
        msg(id="a", error={"code": -32602, "message": "bad"}),
        msg(method="notifications/progress", params={"progressToken": 5, "progress": 1}),
        msg(method="notifications/tools/list_changed"),
        msg(method="notifications/message", params={"level": "info", "data": "x"}),
    ):
        assert back(core, body, "weather", ns) is body


def test_request_with_null_id_left_alone(core, ns):
    body = b'{"jsonrpc":"2.0","id":null,"method":"ping"}'
    assert back(core, body, "weather", ns) is body


def test_backend_batch(core, ns):
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "roots/list"},
            {"jsonrpc": "2.0", "id": 9, "result": {}},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "r"}},
        ]
    )
    out = orjson.loads(back(core, body, "files", ns))
    assert out[0]["id"] == "files~n1" and out[1]["id"] == 9 and out[2]["params"]["requestId"] == "files~sr"


def test_replace_id(core):
    body = msg(id="gw-1", result={"tools": []})
    env = core.scan_jsonrpc(body)
    assert orjson.loads(replace_id(body, env, 42)) == {**orjson.loads(body), "id": 42}
    assert json.loads(replace_id(body, env, 2**80))["id"] == 2**80
    n = msg(method="x")
    with pytest.raises(ValueError):
        replace_id(n, core.scan_jsonrpc(n), 1)


# --- SSE ---------------------------------------------------------------------------------------


def test_sse_events_rewritten_with_stream_ids(core, ns):
    stream = (
        b"id: ev-1\ndata: \n\n"  # priming event (2025-11-25)
        b"id: ev-2\nevent: message\ndata: " + msg(id=0, method="elicitation/create", params={"message": "ok?"}) + b"\n\n"
        b": keepalive\n\n"
        b"data: " + msg(method="notifications/tools/list_changed") + b"\n\n"
        b"id: ev-3\ndata: not json\n\n"
    )  # fmt: skip
    events = core.SSEParser().feed(stream)
    ids = MergedStreamIds(STREAM_GET)
    outs = [rewrite_sse_event(ev, "github", ns, ids) for ev in events]
    parsed = [SSEParser().feed(o) if o else [] for o, _ in outs]
    # priming: new id, empty data kept
    assert parsed[0][0].id == b"g!github~ev-1" and parsed[0][0].data == b""
    # request: id encoded in data, event type kept, vector id
    e = parsed[1][0]
    assert e.event == b"message" and e.id == b"g!github~ev-2"
    assert orjson.loads(e.data)["id"] == "github~n0"
    assert outs[1][1].method == "elicitation/create"
    # comment-only block passes as it was
    assert outs[2][0] == events[2].raw
    # list_changed without id: unchanged bytes, envelope handed back for the cache
    assert outs[3][0] == events[3].raw and outs[3][1].method == "notifications/tools/list_changed"
    # non-JSON data is relayed, only the id changes
    assert parsed[4][0].data == b"not json" and decode_event_id(parsed[4][0].id) == ("g", {"github": b"ev-3"})


def test_sse_event_unchanged_without_stream_ids(core, ns):
    ev = core.SSEParser().feed(b"id: 1\ndata: " + msg(id=1, result={}) + b"\n\n")[0]
    out, env = rewrite_sse_event(ev, "weather", ns)
    assert out == ev.raw and env.id == 1


def test_sse_responses_pass_raw(core, ns):
    answer = msg(id=7, result={"content": [{"type": "text", "text": "ok"}]})
    ev = core.SSEParser().feed(b"event: message\r\ndata: " + answer + b"\r\n\r\n")[0]
    out, env = rewrite_sse_event(ev, "weather", ns, MergedStreamIds(STREAM_GET))
    assert out is ev.raw and env.id == 7
    # With an event id, only the id changes.
    ev = core.SSEParser().feed(b"id: 5\ndata: " + answer + b"\n\n")[0]
    out, env = rewrite_sse_event(ev, "weather", ns, MergedStreamIds(STREAM_GET))
    e = SSEParser().feed(out)[0]
    assert env.id == 7 and e.data == answer and e.id == b"g!weather~5"
    # An error answer too.
    err = msg(id=8, error={"code": -32602, "message": "Unknown tool: x"})
    ev = core.SSEParser().feed(b"data: " + err + b"\n\n")[0]
    out, env = rewrite_sse_event(ev, "weather", ns, MergedStreamIds(STREAM_GET))
    assert out is ev.raw and env.id == 8


def test_sse_request_with_an_escaped_method_key_is_still_rewritten(core, ns):
    body = b'{"jsonrpc":"2.0","id":3,"\\u006dethod":"sampling/createMessage","params":{}}'
    ev = core.SSEParser().feed(b"data: " + body + b"\n\n")[0]
    out, env = rewrite_sse_event(ev, "weather", ns)
    assert env is not None and env.method == "sampling/createMessage"
    assert orjson.loads(SSEParser().feed(out)[0].data)["id"] == encode_request_id("weather", 3)


sse_blocks = st.lists(
    st.sampled_from([
        b"event: message\ndata: " + msg(id=1, result={"content": []}),
        b"data: " + msg(id="r", error={"code": -32000, "message": "no"}),
        b"data: " + msg(id=4, method="sampling/createMessage", params={"_meta": {"progressToken": 2}}),
        b"data: " + msg(method="notifications/progress", params={"progressToken": 2, "progress": 1}),
        b"data: " + msg(method="notifications/tools/list_changed"),
        b'data: {"jsonrpc":"2.0","id":4,"\\u006dethod":"roots/list"}',
        b"data: " + msg(id=1, result={"text": "method"}),
        b"id: 9",
        b": comment",
        b"retry: 10",
        b"data: not json",
        b"\xef\xbb\xbfdata: {}",
    ]),
    min_size=1, max_size=4,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(sse_blocks, min_size=1, max_size=4), eol=st.sampled_from([b"\n", b"\r\n"]))
def test_passable_sse_reads_are_what_the_rewrite_leaves_unchanged(core, ns, blocks, eol):
    """The multiplexer relays a read unparsed when ``sse_passable`` says so: that is
    only right if rewriting each of its events would give back the event's own bytes,
    use no stream id and report no request or notification."""
    _passes_unchanged(core, ns, b"".join(eol.join(lines) + eol + eol for lines in blocks))


def _passes_unchanged(core, ns, data: bytes) -> bool:
    """False if ``data`` is not passable; else checks that it needs no rewriting."""
    if not core.sse_passable(data):
        return False
    ids = MergedStreamIds(STREAM_POST)
    for ev in core.SSEParser(stream_start=False).feed(data):
        out, env = rewrite_sse_event(ev, "github", ns, ids)
        assert out is ev.raw
        assert env is None or type(env) is list or env.kind not in (KIND_REQUEST, KIND_NOTIFICATION)
    assert ids.current() is None
    return True


def test_a_plain_answer_read_is_passable_and_unchanged(core, ns):
    answer = b"event: message\ndata: " + msg(id=1, result={"content": [{"type": "text", "text": "hi"}]})
    assert _passes_unchanged(core, ns, b": ping\n\nretry: 5\n\n" + answer + b"\n\n")
    assert _passes_unchanged(core, ns, (answer + b"\n\n").replace(b"\n", b"\r\n"))


# --- properties ---------------------------------------------------------------------------------

_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
_rpc_id = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(BACKENDS), st.text(max_size=30), _rpc_id, st.dictionaries(st.text(max_size=8), _json, max_size=4)
)
def test_property_tools_call_routing(core, backend, name, rid, args):
    ns = Namespace(BACKENDS)
    exposed = ns.expose_name(backend, name)
    body = msg(id=rid, method="tools/call", params={"arguments": args, "name": exposed})
    a = route(core, body, ns)
    assert (a.backend, a.name) == (backend, name)
    assert orjson.loads(a.body) == replaced(body, ["params", "name"], name)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(BACKENDS), st.text(max_size=60), _rpc_id)
def test_property_resource_routing(core, backend, uri, rid):
    ns = Namespace(BACKENDS)
    body = msg(id=rid, method="resources/read", params={"uri": ns.expose_uri(backend, uri)})
    a = route(core, body, ns)
    assert (a.backend, a.name) == (backend, uri)
    assert orjson.loads(a.body) == replaced(body, ["params", "uri"], uri)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(BACKENDS), st.one_of(st.integers(), st.text(max_size=20)), _json)
def test_property_server_request_round_trip(core, backend, rid, result):
    ns = Namespace(BACKENDS)
    req = msg(id=rid, method="roots/list")
    seen = json.loads(back(core, req, backend, ns))
    reply = orjson.dumps({"jsonrpc": "2.0", "id": seen["id"], "result": result})
    a = route(core, reply, ns)
    assert a.backend == backend
    got = json.loads(a.body)
    assert got["id"] == rid and got["result"] == orjson.loads(orjson.dumps(result))
