"""JWKS: keys fetched from a real HTTP server on 127.0.0.1, refreshed on an unknown kid,
rate-limited (the server counts its hits), failures, and the non-blocking fetcher."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import uvloop
from policyutil import ISSUER, RESOURCE, FakeClock, JwksServer, bearer, head, make_ec, make_ed, make_rsa, sign

from mcpfast.policy import AuthError, Principal, build_policy_config
from mcpfast.policy.auth import Authenticator
from mcpfast.policy.jwks import FetchError, KeySource, http_get


@pytest.fixture(scope="module")
def keys():
    return {"a": make_rsa("kid-a"), "b": make_ec("kid-b", "ES256"), "c": make_ed("kid-c"), "d": make_rsa("kid-d")}


@pytest.fixture
def server(keys):
    with JwksServer() as srv:
        srv.set_keys(keys["a"])
        yield srv


def run(coro):
    return uvloop.run(coro)


def make(server, clock=None, **jwt_over):
    sec = {"issuer": ISSUER, "jwks_url": server.url, "jwks_min_refresh_seconds": 30, "jwks_timeout_seconds": 2}
    sec.update(jwt_over)
    cfg = build_policy_config({"auth": {"audiences": [RESOURCE], "jwt": sec}})
    src = KeySource.from_config(cfg.auth.jwt, clock=clock or FakeClock())
    return Authenticator(cfg.auth, resource=RESOURCE, keys=src), src


def test_start_fetches_and_tokens_verify_synchronously(server, keys):
    async def go():
        auth, src = make(server)
        await src.start()
        p = auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1")
        assert type(p) is Principal and p.subject == "alice"
        return src

    src = run(go())
    assert server.hits == 1 and src.fetches == 1 and len(src.current) == 1


def test_first_token_before_any_fetch_waits_for_the_keys(server, keys):
    async def go():
        auth, _src = make(server)
        r = auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1")
        assert isinstance(r, asyncio.Future)
        p = await r
        assert p.subject == "alice"
        # now cached: synchronous
        assert auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1").subject == "alice"

    run(go())
    assert server.hits == 1


def test_unknown_kid_triggers_one_refresh_that_finds_a_rotated_key(server, keys):
    async def go():
        clock = FakeClock()
        auth, src = make(server, clock)
        await src.start()
        server.set_keys(keys["a"], keys["b"])  # the issuer rotates in a new key
        clock.advance(31)
        r = auth.authenticate(head(bearer(sign(keys["b"]))), "10.0.0.1")
        assert isinstance(r, asyncio.Future)
        assert (await r).subject == "alice"

    run(go())
    assert server.hits == 2


def test_flood_of_random_kids_costs_one_fetch_per_interval(server, keys):
    async def go():
        clock = FakeClock()
        auth, src = make(server, clock)
        await src.start()
        assert server.hits == 1
        clock.advance(31)
        # 20 concurrent requests with random kids: they all join one refresh
        futs = [auth.authenticate(head(bearer(sign(keys["a"], kid=uuid.uuid4().hex))), "10.0.0.1") for _ in range(20)]
        assert all(isinstance(f, asyncio.Future) for f in futs)
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(e, AuthError) and e.reason == "unknown_kid" for e in results)
        assert server.hits == 2
        # within the interval: refused at once, no fetch, no future
        for _ in range(200):
            with pytest.raises(AuthError) as ei:
                auth.authenticate(head(bearer(sign(keys["a"], kid=uuid.uuid4().hex))), "10.0.0.1")
            assert ei.value.reason == "unknown_kid" and ei.value.status == 401
        assert server.hits == 2
        # known keys keep working meanwhile
        assert auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1").subject == "alice"
        clock.advance(30)
        f = auth.authenticate(head(bearer(sign(keys["a"], kid="still-unknown"))), "10.0.0.1")
        with pytest.raises(AuthError):
            await f
        assert server.hits == 3

    run(go())


def test_withdrawn_key_stops_vouching_for_cached_tokens(server, keys):
    async def go():
        clock = FakeClock()
        auth, src = make(server, clock)
        server.set_keys(keys["a"], keys["d"])
        await src.start()
        h = head(bearer(sign(keys["d"])))
        assert auth.authenticate(h, "10.0.0.1").subject == "alice"
        assert auth.cached == 1
        server.set_keys(keys["a"])  # kid-d withdrawn
        clock.advance(301)
        src.tick()  # background refresh (refresh interval passed)
        await asyncio.sleep(0)
        while src._inflight is not None:
            await asyncio.sleep(0.01)
        assert auth.cached == 0
        with pytest.raises(AuthError) as ei:
            auth.authenticate(h, "10.0.0.1")  # refresh is rate-limited now: refused at once
        assert ei.value.reason == "unknown_kid"

    run(go())
    assert server.hits == 2


def test_jwks_down_gives_503_then_recovers(server, keys):
    async def go():
        clock = FakeClock()
        auth, src = make(server, clock)
        server.status = 500
        await src.start()
        assert src.failures == 1 and len(src.current) == 0
        with pytest.raises(AuthError) as ei:
            auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1")
        err = ei.value
        assert (err.status, err.reason) == (503, "keys_unavailable")
        assert err.headers.startswith(b"Retry-After: ")
        server.status = 200
        clock.advance(31)
        p = await auth.authenticate(head(bearer(sign(keys["a"]))), "10.0.0.1")
        assert p.subject == "alice"

    run(go())


@pytest.mark.parametrize(
    "body,problem",
    [
        (b"not json", "JSON"),
        (b'{"nokeys": []}', "keys"),
        (b"[1,2,3]", "keys"),
    ],
)
def test_bad_jwks_documents_are_failures(server, body, problem):
    async def go():
        _auth, src = make(server)
        server.body = body
        await src.start()
        return src

    src = run(go())
    assert src.failures == 1 and len(src.current) == 0 and src.last_error


def test_oversized_jwks_is_refused(server, keys):
    async def go():
        _auth, src = make(server, jwks_max_bytes=200)
        await src.start()
        return src

    src = run(go())
    assert src.failures == 1 and "larger than 200" in src.last_error


def test_slow_jwks_times_out(server):
    async def go():
        _auth, src = make(server, jwks_timeout_seconds=0.2)
        server.delay = 1.0
        t0 = time.monotonic()
        await src.start()
        return src, time.monotonic() - t0

    src, took = run(go())
    assert src.failures == 1 and "no answer" in src.last_error and took < 0.9


def test_unusable_jwks_entries_are_skipped(server, keys):
    a = dict(keys["a"].jwk)
    pinned = dict(keys["d"].jwk, alg="RS256")
    enc = dict(keys["b"].jwk, use="enc")
    oct_key = {"kty": "oct", "kid": "sym", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    server.jwks = {"keys": [a, pinned, enc, oct_key, {"kty": "XYZ", "kid": "weird"}]}

    async def go():
        auth, src = make(server)
        await src.start()
        assert src.current.kids == {"kid-a", "kid-d"}
        # the JWK's own alg pins the key: PS256 with kid-d is refused, RS256 accepted
        assert auth.authenticate(head(bearer(sign(keys["d"], "RS256"))), "1.1.1.1").subject == "alice"
        with pytest.raises(AuthError) as ei:
            auth.authenticate(head(bearer(sign(keys["d"], "PS256"))), "1.1.1.1")
        assert ei.value.reason == "alg_not_allowed"
        # kid-a has no alg: any RSA algorithm
        assert auth.authenticate(head(bearer(sign(keys["a"], "PS256"))), "1.1.1.1").subject == "alice"

    run(go())


def test_config_keys_and_jwks_together(server, keys):
    async def go():
        auth, src = make(server, keys=[{"kid": "local", "public_key": keys["c"].public_pem()}])
        assert auth.authenticate(head(bearer(sign(keys["c"], kid="local"))), "1.1.1.1").subject == "alice"
        await src.start()
        assert src.current.kids == {"local", "kid-a"}

    run(go())


# ---------------------------------------------------------------------------------
# The fetcher itself


async def _serve_raw(response: bytes):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/keys"


def test_http_get_chunked_answer():
    doc = json.dumps({"keys": []}).encode()
    resp = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (5, doc[:5])
        + b"%x\r\n%s\r\n" % (len(doc) - 5, doc[5:])
        + b"0\r\n\r\n"
    )

    async def go():
        srv, url = await _serve_raw(resp)
        async with srv:
            return await http_get(url, timeout=2, max_bytes=1000)

    assert run(go()) == doc


def test_http_get_read_until_close_and_redirect():
    async def go():
        srv, url = await _serve_raw(b'HTTP/1.1 200 OK\r\n\r\n{"keys":[]}')
        async with srv:
            assert await http_get(url, timeout=2, max_bytes=1000) == b'{"keys":[]}'
        srv, url = await _serve_raw(b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n")
        async with srv:
            with pytest.raises(FetchError, match="302"):
                await http_get(url, timeout=2, max_bytes=1000)
        srv, url = await _serve_raw(b"garbage\r\n\r\n")
        async with srv:
            with pytest.raises(FetchError, match="malformed"):
                await http_get(url, timeout=2, max_bytes=1000)

    run(go())


def test_http_get_connection_refused():
    async def go():
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        with pytest.raises(FetchError, match="connect"):
            await http_get(f"http://127.0.0.1:{port}/", timeout=2, max_bytes=10)

    run(go())
