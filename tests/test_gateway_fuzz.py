"""A bounded, seeded end-to-end fuzz of the running gateway.

A deterministic generator (``random.Random(SEED)``) makes a few thousand client byte
streams: valid MCP POSTs (tools/call, tools/list, initialize, notifications, responses,
batches) and then mutated ones -- byte flips, truncation, duplicated and removed header
fields, bogus Content-Length and Transfer-Encoding, chunked bodies with bad sizes, header
values, targets and bodies near the configured limits, invalid UTF-8 and invalid JSON,
wrong Content-Type, odd methods, paths and versions, pipelined requests and clients that
vanish half-way.  Each stream goes over a fresh socket to one of three routes: a
passthrough route, a route with policy on (valid, garbage, expired and refused bearer
tokens) and a multiplexed route (two ``RawBackend("ok")`` backends behind one virtual
server; a session token comes from a real ``initialize``).

For every stream the answer must be well-formed HTTP/1.1 with a status in ``ALLOWED``
(never 500), every error (>= 400) must carry a JSON-RPC error body, and no body may show
a traceback or an internal path.  The gateway may close without answering only when
the client sent nothing but blank lines, or when the client itself half-closed or left
mid-request.  At intervals and at the end a valid request must still succeed on every
route, client connections must drain to zero and upstream pools must stay bounded.
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field

import jwt
import orjson
import pytest

from gwutil import GatewayThread
from mcpfast.mux.token import new_key_text
from rawbackend import RawBackend, body_of, http_request, post, status_of

SEED = 0x5EED_F022
N_STREAMS = 3600  # ~20 s on a 2-core box; the streams are spread over three routes
WORKERS = 24
CHECK_EVERY = 400

SECRET = "f" * 64
ISSUER = "https://login.fuzz.example"
PUBLIC = "https://mcp.fuzz.example"
AUDIENCE = PUBLIC + "/mcp"

LIMITS = {"max_header_bytes": 8192, "max_headers": 48, "max_target_bytes": 1024, "max_body_bytes": 65536}
# Short read deadlines so a stalled request is answered (408) within the stream budget.
TIMEOUTS = {"header_read": 1.0, "body_read": 1.0, "upstream_response": 3.0}
STREAM_DEADLINE = 5.0

# 200/202: answered (202 for notifications and responses on the multiplexed route);
# 204: a backend's or the multiplexer's empty answer (DELETE);
# 4xx: every refusal the gateway makes (417 for an ``Expect`` other than 100-continue,
# RFC 9110 §10.1.1); 502/504: backend trouble.  Never 500 or 503.
ALLOWED = {200, 202, 204, 400, 401, 403, 404, 405, 406, 408, 413, 414, 415, 417, 421, 429, 431, 501, 502, 504, 505}

# What no client may ever see in a body: tracebacks, source paths, object reprs.
LEAKS = re.compile(
    rb"Traceback|File \"|site-packages|/work/|mcpfast/|\.py[\"':]|\.pyx| object at 0x|Exception:|Error\(|<class "
)
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [\x21-\x7e][\x20-\x7e]*\Z|HTTP/1\.1 ([1-5]\d\d) \Z")
FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[^\r\n]*\Z")


# ----------------------------------------------------------------------------------
# The gateways


def _token(sub: str, *, exp: int = 4102444800, aud: str = AUDIENCE, secret: str = SECRET) -> str:
    # Fixed times (valid until 2100, or long expired) keep the streams byte-identical.
    payload = {"sub": sub, "iss": ISSUER, "aud": aud, "iat": 1700000000, "exp": exp}
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": "k1"})


POLICY = {
    "auth": {
        "mode": "required",
        "public_url": PUBLIC,
        "authorization_servers": [ISSUER],
        "jwt": {"issuer": ISSUER, "algorithms": ["HS256"], "keys": [{"kid": "k1", "secret": SECRET}]},
    },
    "authz": {
        "default": "deny",
        "rules": [
            {"id": "alice", "effect": "allow", "subjects": ["alice"]},
            {"id": "bob", "effect": "allow", "subjects": ["bob"], "tools": ["other"]},
            {"id": "carol", "effect": "allow", "subjects": ["carol"]},  # "other" is rate limited: 429
        ],
    },
    "ratelimit": {"limits": [{"id": "carol", "key": ["principal"], "rate": 0.01, "burst": 2, "methods": ["tools/call"], "tools": ["other"]}]},
    "audit": {"sink": "off"},
}  # fmt: skip


@dataclass
class Env:
    plain: GatewayThread  # /mcp passthrough, /mux multiplexed
    policy: GatewayThread  # /mcp with policy on
    backends: list
    tokens: dict
    mux_session: bytes


INIT = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}}'
)


class OkBackend(RawBackend):
    """``RawBackend("ok")`` that answers HEAD without content, as RFC 9110 §9.3.2 asks
    (the plain one sends a body, which a pooled connection then reads as garbage)."""

    def __init__(self) -> None:
        super().__init__("ok")

    def _ok(self, conn, req) -> None:
        if req[0].startswith(b"HEAD "):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")
            return
        super()._ok(conn, req)


@pytest.fixture(scope="module")
def env():
    p, a, b, q = (OkBackend() for _ in range(4))
    common = {"limits": LIMITS, "timeouts": TIMEOUTS, "server": {"allowed_hosts": ["127.0.0.1", "localhost"]}}
    plain = GatewayThread({
        **common,
        "backends": {"p": {"url": p.url}, "a": {"url": a.url}, "b": {"url": b.url}},
        "routes": [{"path": "/mcp", "backends": ["p"]}, {"path": "/mux", "backends": ["a", "b"], "server_name": "fz"}],
        "sessions": {"key": new_key_text()},
    }).start()  # fmt: skip
    policy = GatewayThread({**common, "backends": {"q": {"url": q.url}}, **POLICY}).start()
    try:
        sid = _mux_session(plain.port)
        tokens = {
            "alice": _token("alice"),
            "bob": _token("bob"),  # allowed "other" only: tools/call echo is 403
            "carol": _token("carol"),
            "expired": _token("alice", exp=1700000600),
            "wrong_aud": _token("alice", aud="https://elsewhere.example/mcp"),
            "wrong_key": _token("alice", secret="g" * 64),
        }
        yield Env(plain, policy, [p, a, b, q], tokens, sid)
    finally:
        plain.stop()
        policy.stop()
        for x in (p, a, b, q):
            x.close()


def _mux_session(port: int) -> bytes:
    resp = http_request(port, post("/mux", INIT))
    assert status_of(resp) == 200, resp
    return re.search(rb"(?im)^mcp-session-id: *([^\r\n]+)", resp).group(1)


# ----------------------------------------------------------------------------------
# The generator


@dataclass
class Stream:
    data: bytes
    target: str  # "plain", "policy" or "mux": which gateway and route
    mode: str = "normal"  # normal: send, read | halfclose: send, shut down writing, read | vanish
    requests: int = 1  # requests the generator put in (an upper bound once mutated)
    head_request: bool = False  # the first request is HEAD (its answer has no content)
    exact: bool = True  # valid requests only: exactly ``requests`` answers are owed
    chunks: list = field(default_factory=list)  # send in these pieces (slow client)
    label: str = ""


def _text(rng: random.Random) -> str:
    alphabet = "abc xyz 0189 é漢字🙂\"\\/\n\t\u2028"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))


def _rid(rng: random.Random):
    return rng.choice([rng.randint(0, 2**31), rng.randint(-5, 5), f"id-{rng.randint(0, 999)}", 2**53 + 1, 0])


def json_body(rng: random.Random, target: str) -> bytes:
    """A valid JSON-RPC message (or batch) for the route."""
    tool = ("a__echo" if rng.random() < 0.6 else rng.choice(["b__echo", "zz__nope", "echo"])) if target == "mux" else (
        "echo" if rng.random() < 0.8 else "other"
    )
    kind = rng.choices(
        ["call", "list", "init", "notify", "result", "error", "batch", "ping", "unknown"],
        [30, 12, 6, 8, 6, 4, 6, 4, 3],
    )[0]
    if kind == "call":
        msg = {"jsonrpc": "2.0", "id": _rid(rng), "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": _text(rng), "n": rng.random()}}}  # fmt: skip
        if rng.random() < 0.2:
            msg["params"]["_meta"] = {"progressToken": rng.randint(0, 99)}
    elif kind == "list":
        msg = {"jsonrpc": "2.0", "id": _rid(rng), "method": rng.choice(["tools/list", "prompts/list", "resources/list"])}
        if rng.random() < 0.3:
            msg["params"] = {"cursor": rng.choice(["", "abc", "!!", "x" * 40])}
    elif kind == "init":
        return INIT
    elif kind == "notify":
        msg = {"jsonrpc": "2.0", "method": rng.choice(["notifications/initialized", "notifications/cancelled",
                                                        "notifications/progress"]), "params": {"requestId": 3}}  # fmt: skip
    elif kind == "result":
        msg = {"jsonrpc": "2.0", "id": rng.choice([f"mcpfast-{rng.randint(0, 9)}", "s1", 4]), "result": {}}
    elif kind == "error":
        msg = {"jsonrpc": "2.0", "id": "s2", "error": {"code": -32601, "message": "no"}}
    elif kind == "batch":
        return orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool}} for i in range(rng.randint(1, 3))]
                            + [{"jsonrpc": "2.0", "method": "notifications/initialized"}])  # fmt: skip
    elif kind == "ping":
        msg = {"jsonrpc": "2.0", "id": _rid(rng), "method": "ping"}
    else:
        msg = {"jsonrpc": "2.0", "id": _rid(rng), "method": "x/" + _text(rng)}
    body = orjson.dumps(msg)
    if rng.random() < 0.15:  # insignificant whitespace the scanner must skip
        body = b" \n" + body.replace(b",", b" , ") + b"\t\r\n"
    return body


BAD_BODIES = [
    b"", b"{", b"}", b"[]", b"[1,2]", b"null", b"true", b"0", b'"str"', b"{}", b'{"jsonrpc":"2.0"}',
    b'{"jsonrpc":"1.0","id":1,"method":"ping"}', b'{"jsonrpc":"2.0","id":1,"method":7}',
    b'{"jsonrpc":"2.0","id":{},"method":"ping"}', b'{"jsonrpc":"2.0","id":1,"method":"ping",}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"} trailing', b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff\xfe"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"\xc3\x28"}', b'{"jsonrpc":"2.0","id":1,"method":"ping\x00"}',
    b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}', b'{"jsonrpc":"2.0","id":1e999999,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
    b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"x"}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},3]', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"[" * 100000, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"jsonrpc":"2.0","id":"' + b"\\" * 999 + b'","method":"ping"}', b"\x00" * 64, bytes(range(256)),
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + b"n" * 5000 + b'"}}',
    b'{"jsonrpc":"2.0","id":-0,"method":"ping"}', b'{"jsonrpc":"2.0","id":1.5e3,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":null}', b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[]}',
    b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', b'{"jsonrpc":"2.0","id":1}',
]  # fmt: skip

ODD_METHODS = [b"GET", b"DELETE", b"OPTIONS", b"PUT", b"PATCH", b"TRACE", b"CONNECT", b"FOO", b"post", b"P\x00ST",
               b"PRI", b"M" * 300, b"", b"GET /mcp"]  # fmt: skip
ODD_PATHS = [b"/", b"/mcp/", b"/mcp?x=1&y", b"/MCP", b"*", b"http://127.0.0.1/mcp", b"/mcp/../mcp", b"/%00", b"/mcp#f",
             b"/mcp\x7f", b"/\xff\xfe", b"/mcp/extra", b"//mcp", b"/.well-known/oauth-protected-resource",
             b"/.well-known/oauth-protected-resource/mcp", b"/mux/", b"mcp", b"/mcp?" + b"q" * 900]  # fmt: skip
ODD_VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11", b"HTTP/1",
                b"HTTP/1.1\x00", b"", b"HTTP/3"]  # fmt: skip
ODD_CT = [b"text/plain", b"application/json; charset=latin-1", b"application/x-www-form-urlencoded",
          b"multipart/form-data; boundary=x", b"APPLICATION/JSON", b"application/json;", b"", b"\xff",
          b"application/jsonp", b"application/json, text/html"]  # fmt: skip
ODD_ACCEPT = [b"text/html", b"application/json", b"text/event-stream", b"*/*", b"", b"application/*;q=0"]
ODD_CL = [b"-1", b"abc", b"+5", b" 5", b"0x10", b"1e3", b"99999999999999999999999999", b"5, 6", b"", b"3.0",
          b"0000000000000000000000000000000000007", b"18446744073709551616"]  # fmt: skip
ODD_TE = [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked, chunked", b"CHUNKED", b" chunked",
          b"chunked;q=1", b"x-custom", b"gzip"]  # fmt: skip


def build_request(method: bytes, path: bytes, version: bytes, headers: list, body: bytes, sep: bytes = b"\r\n") -> bytes:
    line = method + b" " + path + (b" " + version if version else b"")
    return sep.join([line] + [k + b": " + v for k, v in headers] + [b"", b""]) + body


def chunk(body: bytes, rng: random.Random, bad: bool) -> bytes:
    out, i = [], 0
    while i < len(body) or not out:
        n = min(len(body) - i, rng.randint(1, 40))
        size = b"%x" % n
        if bad and rng.random() < 0.3:
            size = rng.choice([b"zz", b"-1", b"%x" % (n + 7), b"ffffffffffffffffffff", b"", b"0x" + size, size + b" ;",
                               size + b";ext=\"q\"", b" " + size, size + b"\n"])  # fmt: skip
        elif rng.random() < 0.1:
            size += b";name=value"
        out.append(size + b"\r\n" + body[i : i + n] + (b"\r\n" if not bad or rng.random() > 0.1 else b"XX"))
        i += n
        if n == 0:
            break
    end = b"0\r\n\r\n"
    if bad:
        end = rng.choice([b"0\r\n\r\n", b"0\r\n", b"", b"0\r\nX-Trailer: 1\r\n\r\n", b"0\r\nbad trailer\r\n\r\n",
                          b"00000\r\n\r\n", b"0;x\r\n\r\n"])  # fmt: skip
    elif rng.random() < 0.1:
        end = b"0\r\nX-Trailer: ok\r\n\r\n"
    return b"".join(out) + end


def base_request(rng: random.Random, env: Env, target: str) -> tuple[bytes, list, bytes]:
    path = {"plain": b"/mcp", "policy": b"/mcp", "mux": b"/mux"}[target]
    body = json_body(rng, target)
    headers = [
        (b"Host", rng.choice([b"127.0.0.1", b"localhost:8080", b"127.0.0.1:1"])),
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json, text/event-stream"),
    ]
    if rng.random() < 0.3:
        headers.append((b"MCP-Protocol-Version", b"2025-06-18"))
    if target == "policy":
        who = rng.choices(
            ["alice", "bob", "carol", "expired", "wrong_aud", "wrong_key", "none", "garbage", "basic"],
            [40, 8, 6, 8, 5, 5, 6, 8, 3],
        )[0]
        if who == "garbage":
            tok = rng.choice([b"x", b"a.b.c", b"eyJ.eyJ.sig", b"\xff" * 20, b"Bearer", b"a" * 3000])
            headers.append((b"Authorization", b"Bearer " + tok))
        elif who == "basic":
            headers.append((b"Authorization", b"Basic YWxpY2U6c2VjcmV0"))
        elif who != "none":
            headers.append((b"Authorization", b"Bearer " + env.tokens[who].encode()))
    if target == "mux" and rng.random() < 0.9:
        sid = env.mux_session if rng.random() < 0.85 else rng.choice([b"garbage", env.mux_session[:-3], b"A" * 200])
        headers.append((b"Mcp-Session-Id", sid))
    elif target == "plain" and rng.random() < 0.2:
        headers.append((b"Mcp-Session-Id", b"sess-%d" % rng.randint(0, 9)))
    return path, headers, body


def mutate(rng: random.Random, s: Stream) -> None:
    """Damage the stream's bytes in place; may change its mode."""
    d = bytearray(s.data)
    op = rng.choice(["flip", "flip", "truncate", "insert", "delete", "crlf", "splice"])
    if not d:
        return
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(d))
            d[i] = rng.randrange(256) if rng.random() < 0.5 else d[i] ^ (1 << rng.randrange(8))
    elif op == "truncate":
        del d[rng.randrange(len(d)) :]
        s.mode = rng.choice(["normal", "halfclose", "halfclose", "vanish"])
    elif op == "insert":
        i = rng.randrange(len(d) + 1)
        d[i:i] = rng.choice([b"\r\n", b"\n", b"\r", b"\x00", b" ", b":", b"\r\n\r\n", b"\t", b"\xff", b"0\r\n"])
    elif op == "delete":
        i = rng.randrange(len(d))
        del d[i : i + rng.randint(1, 8)]
    elif op == "crlf":
        d = bytearray(bytes(d).replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"]), rng.randint(1, 5)))
    else:  # splice a piece of the stream somewhere else
        i, j = sorted(rng.randrange(len(d) + 1) for _ in range(2))
        k = rng.randrange(len(d) + 1)
        d[k:k] = d[i:j]
    s.data = bytes(d)


def make_stream(rng: random.Random, env: Env) -> Stream:
    target = rng.choices(["plain", "policy", "mux"], [45, 30, 25])[0]
    path, headers, body = base_request(rng, env, target)
    method, version, sep = b"POST", b"HTTP/1.1", b"\r\n"
    label = "valid"
    kind = rng.random()
    head_request = False
    te = None
    if kind < 0.18:
        pass  # valid, unmutated
    elif kind < 0.28:
        label = "badjson"
        body = rng.choice(BAD_BODIES)
    elif kind < 0.36:
        label = "headers"
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.35 and headers:
                del headers[rng.randrange(len(headers))]
            elif op < 0.7 and headers:
                h = rng.choice(headers)
                headers.insert(rng.randrange(len(headers) + 1), (h[0], h[1] if rng.random() < 0.5 else h[1] + b"x"))
            else:
                headers.append(rng.choice([
                    (b"Connection", rng.choice([b"close", b"keep-alive", b"Upgrade", b"x-foo, close", b"\x01"])),
                    (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"), (b"Expect", b"100-continue"),
                    (b"Expect", b"something-else"), (b"Origin", rng.choice([b"https://evil.example", b"null", b"http://localhost:3000"])),
                    (b"X-Forwarded-For", b"1.2.3.4"), (b"Te", b"trailers"), (b"Proxy-Authorization", b"Basic x"),
                    (b"Bad Name", b"x"), (b"", b"empty-name"), (b"X-Nul", b"a\x00b"), (b"X-Ctl", b"a\x7fb\x1b"),
                    (b"X-Obs", b"a\r\n folded"), (b"Host", b"evil.example"), (b"X-Latin", b"caf\xe9"),
                    (b" Leading", b"space"), (b"Trailing ", b"space"),
                ]))  # fmt: skip
    elif kind < 0.44:
        label = "framing"
        headers = [h for h in headers if h[0].lower() != b"content-length"]
        choice = rng.random()
        if choice < 0.4:
            headers.append((b"Content-Length", rng.choice(ODD_CL)))
        elif choice < 0.55:
            headers.append((b"Content-Length", b"%d" % max(0, len(body) + rng.choice([-5, -1, 1, 7, 1000]))))
        else:
            te = rng.choice(ODD_TE) if rng.random() < 0.5 else b"chunked"
            headers.append((b"Transfer-Encoding", te))
            if rng.random() < 0.3:
                headers.append((b"Content-Length", b"%d" % len(body)))
            body = chunk(body, rng, bad=rng.random() < 0.6) if b"chunked" in te.lower() else body
    elif kind < 0.50:
        label = "limits"
        lim = LIMITS
        what = rng.choice(["header", "header", "target", "body", "count", "bigcl"])
        if what == "header":
            n = lim["max_header_bytes"] + rng.randint(-300, 100)
            headers.append((b"X-Big", b"v" * max(0, n - 180)))
        elif what == "target":
            path = path + b"?" + b"q" * (lim["max_target_bytes"] + rng.randint(-30, 30) - len(path) - 1)
        elif what == "body":
            n = lim["max_body_bytes"] + rng.randint(-64, 64)
            pad = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"t":"'
            body = pad + b"x" * max(0, n - len(pad) - 4) + b'"}}'
        elif what == "count":
            headers += [(b"X-H%d" % i, b"v") for i in range(lim["max_headers"] + rng.randint(-8, 4))]
        else:
            headers = [h for h in headers if h[0] != b"Content-Length"]
            headers.append((b"Content-Length", b"%d" % (lim["max_body_bytes"] + rng.choice([1, 10**6, 10**12]))))
    elif kind < 0.56:
        label = "wrongct"
        headers = [h for h in headers if h[0] not in (b"Content-Type", b"Accept")]
        if rng.random() < 0.8:
            headers.append((b"Content-Type", rng.choice(ODD_CT)))
        if rng.random() < 0.7:
            headers.append((b"Accept", rng.choice(ODD_ACCEPT)))
    elif kind < 0.64:
        label = "line"
        what = rng.random()
        if what < 0.4:
            method = rng.choice(ODD_METHODS)
            if method in (b"GET", b"DELETE", b"OPTIONS") and rng.random() < 0.5:
                body = b""
        elif what < 0.6:
            method = b"HEAD"
            body = b""
            head_request = True
        elif what < 0.85:
            path = rng.choice(ODD_PATHS)
        else:
            version = rng.choice(ODD_VERSIONS)
        if rng.random() < 0.1:
            sep = b"\n"
    elif kind < 0.68:
        label = "garbage"
        data = rng.choice([
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(rng.randrange(256) for _ in range(64)),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\r\n\r\n\r\n", b"\r\n", b"", b" ", b"GET\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 32, bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))),
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}" * 2,
            b"\r\n\r\nPOST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        ])  # fmt: skip
        return Stream(data, target, label=label, requests=1, exact=False)
    if te is None and not any(h[0].lower() == b"content-length" for h in headers) and label not in ("headers", "framing"):
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif label == "headers" and not any(h[0].lower() == b"content-length" for h in headers) and rng.random() < 0.5:
        headers.append((b"Content-Length", b"%d" % len(body)))
    if rng.random() < 0.2:
        rng.shuffle(headers)
    data = build_request(method, path, version, headers, body, sep)
    s = Stream(data, target, head_request=head_request, label=label, exact=label == "valid")
    if 0.18 <= kind < 0.68 and rng.random() < 0.35 or kind >= 0.68:
        s.exact = False
        mutate(rng, s)
        s.label += "+mut"
    if kind >= 0.68 and label != "garbage":
        # The rest: mutation only, heavier.
        for _ in range(rng.randint(0, 3)):
            mutate(rng, s)
    r = rng.random()
    if r < 0.12:  # pipelined: a second (valid) request on the same connection
        p2, h2, b2 = base_request(rng, env, target)
        s.data += build_request(b"POST", p2, b"HTTP/1.1", h2 + [(b"Content-Length", b"%d" % len(b2))], b2)
        s.requests += 1
        s.label += "+pipe"
    elif r < 0.15:  # a burst of valid pipelined requests (fills the pipeline queue)
        for _ in range(rng.randint(3, 12)):
            p2, h2, b2 = base_request(rng, env, target)
            s.data += build_request(b"POST", p2, b"HTTP/1.1", h2 + [(b"Content-Length", b"%d" % len(b2))], b2)
            s.requests += 1
        s.label += "+burst"
    elif r < 0.19 and s.mode == "normal":
        s.mode = "vanish"
        s.data = s.data[: rng.randrange(len(s.data) + 1)] if rng.random() < 0.5 else s.data
    elif r < 0.24 and s.mode == "normal":
        s.mode = "halfclose"
    if rng.random() < 0.08 and len(s.data) > 2:  # a slow client: the stream in pieces
        cuts = sorted(rng.randrange(1, len(s.data)) for _ in range(rng.randint(1, 4)))
        s.chunks = [s.data[i:j] for i, j in zip([0] + cuts, cuts + [len(s.data)])]
    return s


def generate(env: Env, n: int, seed: int = SEED) -> list[Stream]:
    rng = random.Random(seed)
    return [make_stream(rng, env) for _ in range(n)]


# ----------------------------------------------------------------------------------
# The client and the checks


class Bad(AssertionError):
    pass


def parse_responses(buf: bytes, head_request: bool) -> tuple[list[tuple[int, dict, bytes, bytes]], bytes, bool]:
    """Split received bytes into final responses (status, fields, head, body); the rest
    that is not a complete response yet; and whether the rest is a read-until-close body.
    ``head_request``: the first request was HEAD."""
    out = []
    while buf:
        head_request = head_request and not out
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                raise Bad(f"response head without an end: {buf[:200]!r}")
            return out, buf, False
        head = buf[:end]
        lines = head.split(b"\r\n")
        if not STATUS_LINE.match(lines[0]):
            raise Bad(f"bad status line {lines[0][:200]!r}")
        status = int(lines[0][9:12])
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            if not FIELD_LINE.match(line):
                raise Bad(f"bad response field line {line[:200]!r}")
            k, _, v = line.partition(b":")
            fields.setdefault(k.lower(), []).append(v.strip())
        rest = buf[end + 4 :]
        if 100 <= status < 200:
            if status != 100:
                raise Bad(f"unexpected interim {status}")
            buf = rest
            continue
        cl, te = fields.get(b"content-length"), fields.get(b"transfer-encoding")
        if cl and te:
            raise Bad("response with both Content-Length and Transfer-Encoding")
        if cl and len(cl) > 1:
            raise Bad("several Content-Length fields in a response")
        if head_request and b"close" in b",".join(fields.get(b"connection", [])).lower() and status >= 400:
            # A request the parser refused may not be known as HEAD: the error body that
            # follows is harmless, as the connection ends with it.
            out.append((status, fields, head, rest))
            return out, b"", False
        if head_request or status in (204, 304):
            body = b""
        elif cl:
            n = int(cl[0])
            if len(rest) < n:
                return out, buf, False
            body, rest = rest[:n], rest[n:]
        elif te:
            if te[-1].lower() != b"chunked":
                raise Bad(f"response transfer-coding {te!r}")
            body, pos = b"", 0
            while True:
                e = rest.find(b"\r\n", pos)
                if e < 0:
                    return out, buf, False
                size = int(rest[pos:e].split(b";")[0], 16)
                if len(rest) < e + 2 + size + 2:
                    return out, buf, False
                body += rest[e + 2 : e + 2 + size]
                pos = e + 2 + size + 2
                if size == 0:
                    break
            rest = rest[pos:]
        else:
            return out, buf, True  # until close
        out.append((status, fields, head, body))
        buf = rest
    return out, b"", False


def run_stream(port: int, s: Stream) -> dict:
    """Send one stream; return what happened (responses, how it ended)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STREAM_DEADLINE)
    got = b""
    ended = "open"
    try:
        try:
            for piece in s.chunks or [s.data]:
                sock.sendall(piece)
                if s.chunks:
                    time.sleep(0.002)
        except OSError:  # the gateway refused early and closed while we wrote
            pass
        if s.mode == "vanish":
            if s.data and len(s.data) % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            return {"responses": [], "ended": "vanished"}
        if s.mode == "halfclose":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        deadline = time.monotonic() + STREAM_DEADLINE
        while True:
            resps, rest, until_close = parse_responses(got, s.head_request)
            if len(resps) >= s.requests and not rest:
                break  # everything answered; the connection may stay open (keep-alive)
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            sock.settimeout(left)
            try:
                d = sock.recv(262144)
            except TimeoutError:
                ended = "timeout"
                break
            except ConnectionResetError:
                ended = "reset"
                break
            if not d:
                ended = "closed"
                break
            got += d
        resps, rest, until_close = parse_responses(got, s.head_request)
        if until_close and ended == "closed":
            resps.append((0, {}, b"", rest))  # read-until-close body: a backend's, never ours
            rest = b""
        return {"responses": resps, "rest": rest, "ended": ended}
    finally:
        sock.close()


def _blank(data: bytes) -> bool:
    return not data.strip(b"\r\n")


def check(s: Stream, r: dict) -> None:
    if s.mode == "vanish":
        return
    resps, ended = r["responses"], r["ended"]
    if r["rest"]:
        raise Bad(f"incomplete response at {ended}: {r['rest'][:300]!r}")
    if ended == "timeout" and len(resps) < s.requests and (s.exact or s.mode == "halfclose" or not resps):
        # Mutated streams may hold fewer requests than generated: after a kept-alive
        # answer the gateway may rightly wait.  Otherwise it must answer or close.
        raise Bad(f"gateway neither answered nor closed within {STREAM_DEADLINE}s ({len(resps)} answers)")
    if s.exact and len(resps) != s.requests:
        raise Bad(f"{len(resps)} answers to {s.requests} requests")
    for n, (status, fields, head, body) in enumerate(resps):
        if status not in ALLOWED:
            raise Bad(f"status {status}: {head[:300]!r} {body[:300]!r}")
        if status in (502, 504):  # allowed in general, but these backends are healthy
            raise Bad(f"{status} from a healthy backend: {body[:300]!r}")
        if LEAKS.search(body) or LEAKS.search(head):
            raise Bad(f"internal detail in answer: {head[:200]!r} {body[:500]!r}")
        if status >= 400 and not (n == 0 and s.head_request):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise Bad(f"{status} without a JSON-RPC error body: {body[:300]!r}") from None
            if not (isinstance(doc, dict) and doc.get("jsonrpc") == "2.0" and isinstance(doc.get("error"), dict)
                    and isinstance(doc["error"].get("code"), int) and isinstance(doc["error"].get("message"), str)):  # fmt: skip
                raise Bad(f"{status} with a body that is not a JSON-RPC error: {body[:300]!r}")
            if b"application/json" not in b",".join(fields.get(b"content-type", [])):
                raise Bad(f"{status} error body not labelled application/json")
    if s.mode == "halfclose":
        return  # the client ended its side: a half-sent request is owed nothing
    if not resps and not _blank(s.data) and ended in ("closed", "reset"):
        raise Bad(f"connection {ended} without an answer to {len(s.data)} bytes")
    if ended == "closed" and resps and len(resps) < s.requests:
        last = resps[-1]
        if last[0] and b"close" not in b",".join(last[1].get(b"connection", [])).lower():
            raise Bad("connection closed after an answer that did not say Connection: close")


def healthy(env: Env) -> None:
    """A valid request still succeeds on every route; nothing leaks."""
    call = b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"echo","arguments":{}}}'
    resp = http_request(env.plain.port, post("/mcp", call))
    assert status_of(resp) == 200 and orjson.loads(body_of(resp))["result"] == {"ok": True}, resp
    auth = b"Authorization: Bearer " + env.tokens["alice"].encode() + b"\r\n"
    resp = http_request(env.policy.port, post("/mcp", call, auth))
    assert status_of(resp) == 200 and orjson.loads(body_of(resp))["id"] == 99, resp
    mcall = call.replace(b'"echo"', b'"a__echo"')
    # A new session: the fuzzed streams may have ended the shared one with a DELETE.
    sid = _mux_session(env.plain.port)
    resp = http_request(env.plain.port, post("/mux", mcall, b"Mcp-Session-Id: " + sid + b"\r\n"))
    assert status_of(resp) == 200 and orjson.loads(body_of(resp))["id"] == 99, resp


def pools_bounded(env: Env, bound: int) -> dict:
    counts = {}
    for gt in (env.plain, env.policy):
        for name, pool in gt.gw.pools.items():
            counts[name] = gt.call(lambda p=pool: p.open_connections)
            assert 0 <= counts[name] <= bound, (name, counts[name])
    return counts


def drained(gt: GatewayThread, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while (n := gt.call(lambda: len(gt.gw.connections))) and time.monotonic() < end:
        time.sleep(0.05)
    assert n == 0, f"{n} client connections left open"


def test_refusal_of_head_has_no_content(env):
    """Found by the fuzz: a refused HEAD got a JSON body, which a kept-alive client
    reads as the start of the next answer."""
    req = b"HEAD /mux HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + post("/mcp", b'{"jsonrpc":"2.0","id":5,"method":"ping"}')
    r = run_stream(env.plain.port, Stream(req, "mux", requests=2, head_request=True))
    assert [x[0] for x in r["responses"]] == [405, 200] and r["responses"][0][3] == b"", r
    assert orjson.loads(r["responses"][1][3])["id"] == 5
    req = b"HEAD /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # policy: 401, no credentials
    r = run_stream(env.policy.port, Stream(req, "policy", head_request=True))
    assert [x[0] for x in r["responses"]] == [401] and r["responses"][0][3] == b"" and not r["rest"], r


def test_half_closed_client_gets_eof_after_its_answers(env):
    """Found by the fuzz: a client that sent its requests and shut down writing was
    answered but never closed (until the 75 s idle timeout)."""
    call = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo"}}'
    data = b"".join(post("/mcp", call % i) for i in range(3))
    t0 = time.monotonic()
    r = run_stream(env.plain.port, Stream(data, "plain", mode="halfclose", requests=4))  # wait for the close
    assert r["ended"] == "closed" and [x[0] for x in r["responses"]] == [200, 200, 200], r
    assert time.monotonic() - t0 < 2.0


def test_generator_is_deterministic(env):
    a = [s.data for s in generate(env, 300, seed=7)]
    b = [s.data for s in generate(env, 300, seed=7)]
    assert a == b
    assert len({s.label for s in generate(env, 300)}) > 10


def test_fuzz_gateway(env):
    t0 = time.monotonic()
    streams = generate(env, N_STREAMS)
    ports = {"plain": env.plain.port, "policy": env.policy.port, "mux": env.plain.port}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    healthy(env)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for start in range(0, len(streams), CHECK_EVERY):
            batch = list(enumerate(streams[start : start + CHECK_EVERY], start))
            futs = {pool.submit(run_stream, ports[s.target], s): (i, s) for i, s in batch}
            for fut in concurrent.futures.as_completed(futs):
                i, s = futs[fut]
                try:
                    r = fut.result()
                    check(s, r)
                    for st, *_ in r["responses"]:
                        statuses[st] = statuses.get(st, 0) + 1
                except (Bad, OSError) as exc:
                    failures.append(f"#{i} [{s.target} {s.label} {s.mode}] {exc}\n    sent {s.data[:240]!r}")
            # At intervals: everyone else is still served, pools stay bounded.
            healthy(env)
            pools_bounded(env, 64 + WORKERS * 2)
    elapsed = time.monotonic() - t0
    assert not failures, f"{len(failures)} of {len(streams)} streams failed:\n" + "\n".join(failures[:25])
    assert 500 not in statuses
    assert statuses.get(200, 0) > N_STREAMS // 10 and statuses.get(400, 0) > N_STREAMS // 20, statuses
    healthy(env)
    drained(env.plain)
    drained(env.policy)
    counts = pools_bounded(env, 64)
    # Credentials never reach the backend of the policy route.
    q = env.backends[3]
    assert q.requests and not any(b"authorization:" in h.lower() for h, _ in q.requests)
    print(f"\nfuzz: {len(streams)} streams in {elapsed:.1f}s, statuses {dict(sorted(statuses.items()))}, pools {counts}")
