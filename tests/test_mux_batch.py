"""Client batches on a multiplexed route: real SDK backends behind the virtual
server, a raw HTTP client in front (the SDK clients never send batches).

A 2025-03-26 session may send a JSON-RPC batch; the gateway splits it, routes each
element as it would route it alone, and answers on one SSE stream: one response per
request, under the request's own id, and whatever a backend sends about its element
(progress, sampling) in between.  Elements fail alone.  Later versions removed batches.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from gwutil import ROOT, GatewayThread, backend_process

from mcpfast.mux.batch import MAX_BATCH
from mcpfast.mux.token import new_key_text

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "mux_server.py")
KEY = new_key_text()
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
OLD = "2025-03-26"
SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}


@pytest.fixture(scope="module")
def gateway():
    with (
        backend_process(SERVER, "--name", "alpha", "--tools", "add,steps,ask_model") as (_, a),
        backend_process(SERVER, "--name", "beta", "--json-response") as (_, b),
    ):
        cfg = {
            "backends": {"alpha": {"url": a, "response_timeout": 10.0}, "beta": {"url": b, "response_timeout": 10.0}},
            "routes": [{"path": "/mcp", "backends": ["alpha", "beta"], "server_name": "mux-batch"}],
            "sessions": {"key": KEY},
        }
        with GatewayThread(cfg) as gt:
            yield gt


def _init(h: httpx.Client, url: str, version: str = OLD, caps: dict | None = None) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": caps or {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = h.post(url, json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == version
    sid = r.headers["mcp-session-id"]
    done = h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=_hdrs(sid))
    assert done.status_code == 202
    return sid


def _hdrs(sid: str) -> dict:
    return {**HEADERS, "Mcp-Session-Id": sid}


def _call(rid, name: str, args: dict | None = None) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args or {}}}


def _events(r: httpx.Response) -> list[dict]:
    assert r.headers["content-type"].startswith("text/event-stream"), (r.status_code, r.text)
    out = []
    for line in r.text.splitlines():
        assert not line.startswith("id:"), "a batch answer carries no event ids"
        if line.startswith("data:"):
            out.append(json.loads(line[5:]))
    return out


def _by_id(messages: list[dict]) -> dict:
    answers = {}
    for m in messages:
        if "method" not in m:
            assert m["id"] not in answers, f"two answers for {m['id']}"
            answers[m["id"]] = m
    return answers


def test_mixed_batch_each_element_routed_and_answered_under_its_id(gateway):
    url = gateway.url()
    with httpx.Client(timeout=20) as h:
        sid = _init(h, url)
        batch = [
            _call(1, "alpha__add", {"a": 2, "b": 3}),
            _call("b", "beta__whoami"),
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 4, "method": "ping"},
            _call(5, "nope__whoami"),
            {"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": {"protocolVersion": OLD, "capabilities": {}}},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}},
            {"jsonrpc": "2.0", "id": 7, "method": "no/such"},
            {"jsonrpc": "2.0", "id": 8, "method": "resources/read", "params": {"uri": "mcpfast:beta/mem://info"}},
        ]
        r = h.post(url, json=batch, headers=_hdrs(sid))
        assert r.status_code == 200
        answers = _by_id(_events(r))
        assert set(answers) == {1, "b", 3, 4, 5, 6, 7, 8}  # one per request, none for the notification
        assert answers[1]["result"]["content"][0]["text"] == "5"
        assert answers["b"]["result"]["content"][0]["text"] == "beta"
        names = {t["name"] for t in answers[3]["result"]["tools"]}
        assert {"alpha__add", "alpha__whoami", "beta__whoami"} <= names
        assert answers[4]["result"] == {}
        assert answers[5]["error"]["code"] == -32602 and "nope__whoami" in answers[5]["error"]["message"]
        assert answers[6]["error"]["code"] == -32600
        assert answers[7]["error"]["code"] == -32601
        assert answers[8]["result"]["contents"][0]["text"] == "info from beta"
        # The session goes on as before.
        r = h.post(url, json=_call(9, "alpha__whoami"), headers=_hdrs(sid))
        assert r.status_code == 200
        h.delete(url, headers=_hdrs(sid))


def test_batch_of_notifications_and_responses_is_202(gateway):
    url = gateway.url()
    with httpx.Client(timeout=20) as h:
        sid = _init(h, url)
        batch = [
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
            {"jsonrpc": "2.0", "id": "zeta~n1", "result": {}},  # a reply nobody asked for: dropped alone
        ]
        r = h.post(url, json=batch, headers=_hdrs(sid))
        assert r.status_code == 202 and r.content == b""
        h.delete(url, headers=_hdrs(sid))


def test_progress_and_sampling_of_a_batch_element_reach_the_client(gateway):
    """What a backend sends about its element before answering travels on the batch's
    stream, rewritten: the sampling request's id names alpha, and the client's reply
    (another POST) finds it."""
    url = gateway.url()
    with httpx.Client(timeout=20) as h, httpx.Client(timeout=20) as h2:
        sid = _init(h, url, caps={"sampling": {}})
        batch = [
            {**_call(1, "alpha__steps", {"n": 2}), "params": {"name": "alpha__steps", "arguments": {"n": 2},
                                                            "_meta": {"progressToken": "p1"}}},
            _call(2, "alpha__ask_model", {"question": "q?"}),
            _call(3, "beta__whoami"),
        ]  # fmt: skip
        seen, answers = [], {}
        with h.stream("POST", url, json=batch, headers=_hdrs(sid)) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                seen.append(msg)
                if msg.get("method") == "sampling/createMessage":
                    assert isinstance(msg["id"], str) and msg["id"].startswith("alpha~")
                    reply = {"jsonrpc": "2.0", "id": msg["id"], "result": SAMPLED}
                    assert h2.post(url, json=reply, headers=_hdrs(sid)).status_code == 202
                elif "method" not in msg:
                    answers[msg["id"]] = msg
        assert answers[1]["result"]["content"][0]["text"] == "alpha done 2"
        assert answers[2]["result"]["content"][0]["text"] == "alpha: model said 42"
        assert answers[3]["result"]["content"][0]["text"] == "beta"
        progress = [m["params"] for m in seen if m.get("method") == "notifications/progress"]
        assert [(p["progressToken"], p["progress"]) for p in progress] == [("p1", 1.0), ("p1", 2.0)]
        h.delete(url, headers=_hdrs(sid))


def test_whole_batch_refusals(gateway):
    url = gateway.url()
    with httpx.Client(timeout=20) as h:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        # Without a session (initialize must not be in a batch).
        assert h.post(url, json=[ping], headers=HEADERS).status_code == 400
        sid = _init(h, url)
        # An empty batch is an Invalid Request (JSON-RPC 2.0 §6).
        r = h.post(url, content=b"[]", headers=_hdrs(sid))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600
        r = h.post(url, json=[{**ping, "id": i} for i in range(MAX_BATCH + 1)], headers=_hdrs(sid))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600 and str(MAX_BATCH) in r.text
        full = h.post(url, json=[{**ping, "id": i} for i in range(MAX_BATCH)], headers=_hdrs(sid))
        assert len(_events(full)) == MAX_BATCH
        h.delete(url, headers=_hdrs(sid))
        # 2025-06-18 removed batches: such a session keeps getting -32600.
        sid = _init(h, url, version="2025-06-18")
        r = h.post(url, json=[ping], headers={**_hdrs(sid), "MCP-Protocol-Version": "2025-06-18"})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600
        assert "2025-06-18" in r.json()["error"]["message"]
        h.delete(url, headers=_hdrs(sid))


def test_element_for_a_backend_that_is_down_fails_alone(tmp_path):
    """A backend that cannot be reached fails its own element; the others are answered."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/mcp"
    with backend_process(SERVER, "--name", "alpha") as (_, a):
        cfg = {
            "backends": {"alpha": {"url": a, "response_timeout": 5.0}, "dead": {"url": dead, "response_timeout": 2.0}},
            "routes": [{"path": "/mcp", "backends": ["alpha", "dead"]}],
            "sessions": {"key": KEY},
        }
        with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
            sid = _init(h, gt.url())
            t0 = time.monotonic()
            r = h.post(gt.url(), json=[_call(1, "alpha__whoami"), _call(2, "dead__whoami")], headers=_hdrs(sid))
            answers = _by_id(_events(r))
            assert answers[1]["result"]["content"][0]["text"] == "alpha"
            assert answers[2]["error"]["code"] == -32603 and "dead" in answers[2]["error"]["message"]
            assert time.monotonic() - t0 < 10
