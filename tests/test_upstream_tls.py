"""TLS to backends, for real on 127.0.0.1: a throwaway PKI made with ``cryptography``, an
MCP SDK server under uvicorn with TLS, and a raw asyncio TLS server that records what it
saw of each handshake (the server name sent, the client certificate presented) and of
each request.  The gateway runs in-process (``GatewayThread``, on uvloop); the startup
checks run through ``mcpfast check-config`` with click's runner."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading

import anyio
import httpx
import orjson
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gwutil import ROOT, GatewayThread, backend_process, wait_until
from mcp import Client
from mcpfast.cli import main
from mcpfast.mux.token import new_key_text
from rawbackend import RawBackend

TLS_SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_tls_server.py")
SDK_SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "hello", "arguments": {}}}


# --- a throwaway PKI -------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CA:
    def __init__(self, cn: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),  # fmt: skip
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, *, dns=(), ips=(), client: bool = False):
        """A leaf certificate and its key, signed by this CA."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Paths of: ca (the trusted CA), ca2 (an unrelated CA), server cert/key for
    localhost and 127.0.0.1, elsewhere cert/key (only elsewhere.test), client cert/key,
    a self-signed cert/key for 127.0.0.1, a stray key, a file that is no certificate."""
    d = tmp_path_factory.mktemp("pki")
    out: dict[str, str] = {}

    def write(name: str, data: bytes) -> str:
        p = d / name
        p.write_bytes(data)
        out[name.replace(".", "_")] = str(p)
        return str(p)

    ca, ca2 = CA("mcpfast test CA"), CA("unrelated CA")
    write("ca.pem", _pem_cert(ca.cert))
    write("ca2.pem", _pem_cert(ca2.cert))
    for stem, cert, key in (
        ("server", *ca.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])),
        ("elsewhere", *ca.issue("elsewhere.test", dns=["elsewhere.test"])),
        ("client", *ca.issue("gateway-client", client=True)),
    ):
        write(f"{stem}.pem", _pem_cert(cert))
        write(f"{stem}.key", _pem_key(key))
    self_ca = CA("self")  # a one-off issuer nobody trusts: the leaf is as good as self-signed
    selfcert, selfkey = self_ca.issue("self", ips=["127.0.0.1"])
    write("self.pem", _pem_cert(selfcert))
    write("self.key", _pem_key(selfkey))
    write("stray.key", _pem_key(ec.generate_private_key(ec.SECP256R1())))
    write("notcert.pem", b"this is not a certificate\n")
    return out


# --- a raw TLS backend -----------------------------------------------------------------


class TLSBackend:
    """An asyncio TLS server in its own thread answering just enough MCP in JSON.  It
    records every handshake's server name (``sni``, None when none was sent), each
    connection whose handshake completed (``accepted``), the client certificate's
    common name on each (``peers``) and every request body (``requests``)."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda _obj, name, _ctx: self.sni.append(name)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        self.sni: list[str | None] = []
        self.accepted = 0
        self.peers: list[str | None] = []
        self.requests: list[dict] = []
        self.loop_errors: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/mcp"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        cert = writer.get_extra_info("peercert")
        cn = None
        if cert:
            cn = next((v for rdn in cert["subject"] for k, v in rdn if k == "commonName"), None)
        self.peers.append(cn)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                msg = orjson.loads(await reader.readexactly(n)) if n else {}
                self.requests.append(msg)
                if "id" not in msg:
                    writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                    continue
                if msg.get("method") == "initialize":
                    result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                              "serverInfo": {"name": "raw-tls", "version": "1"}}  # fmt: skip
                elif msg.get("method") == "tools/list":
                    result = {"tools": [{"name": "hello", "inputSchema": {"type": "object"}}]}
                elif msg.get("method") == "tools/call":
                    result = {"content": [{"type": "text", "text": f"hello over TLS, {cn or 'anonymous'}"}]}
                else:
                    result = {}
                body = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop():
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class AlertingTLSServer:
    """A blocking TLS server that requires a client certificate from ``client_ca``: it
    completes its handshakes in a thread with ``ssl.SSLSocket``, which -- unlike an
    asyncio server -- sends its alert when it refuses one.  ``refusals`` holds the
    server-side reasons; ``requests`` the bytes of any request it read."""

    def __init__(self, cert: str, key: str, client_ca: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.refusals: list[str] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        data = tls.recv(65536)
                        if data:
                            self.requests.append(data)
                except ssl.SSLError as exc:
                    self.refusals.append(exc.reason or str(exc))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def tls_backend(pki, request):
    """A TLSBackend; ``request.param`` picks its certificate: server, elsewhere, self,
    or mtls (the server certificate, and a client certificate from the CA required)."""
    kind = getattr(request, "param", "server")
    if kind == "mtls":
        b = TLSBackend(pki["server_pem"], pki["server_key"], client_ca=pki["ca_pem"])
    else:
        b = TLSBackend(pki[f"{kind}_pem"], pki[f"{kind}_key"])
    yield b
    b.close()


def _gateway(backends: dict, **sections) -> GatewayThread:
    return GatewayThread({"backends": backends, **sections}).start()


def _post(gt: GatewayThread, msg: dict = CALL) -> httpx.Response:
    return httpx.post(gt.url(), content=orjson.dumps(msg), headers=HEADERS, timeout=10)


def _errors(gt: GatewayThread, kind: str) -> float:
    return gt.gw.metrics.registry.get_sample_value("mcpfast_errors_total", {"kind": kind}) or 0.0


def _error_message(resp: httpx.Response) -> str:
    return resp.json()["error"]["message"]


# --- a real SDK server behind TLS --------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_tls(pki):
    with backend_process(TLS_SERVER, "--certfile", pki["server_pem"], "--keyfile", pki["server_key"]) as (_, url):
        yield url


def _handshakes(text: str) -> int:
    return int(text.split()[0].partition("=")[2])


def test_passthrough_to_sdk_server_over_tls_reuses_connections(sdk_tls, pki):
    assert sdk_tls.startswith("https://127.0.0.1:")
    gt = _gateway({"secure": {"url": sdk_tls, "ca_file": pki["ca_pem"]}})
    try:

        async def run():
            async with Client(gt.url(), mode="legacy") as c:
                for i in range(3):
                    assert (await c.call_tool("echo", {"text": f"t{i}"})).content[0].text == f"t{i}"
                # The client opens its GET stream on its own schedule (a connection, so a
                # handshake, of its own): count from when the number has settled.
                before = -1
                for _ in range(10):
                    now = _handshakes((await c.call_tool("tls_info", {})).content[0].text)
                    if now == before:
                        break
                    before = now
                    await anyio.sleep(0.3)
                for i in range(10):
                    assert (await c.call_tool("echo", {"text": f"again {i}"})).content[0].text == f"again {i}"
                after = _handshakes((await c.call_tool("tls_info", {})).content[0].text)
                return before, after

        before, after = anyio.run(run)
        assert before >= 1
        # Eleven more calls reuse kept-alive TLS connections.  One more connection may open
        # when a call arrives before the backend has ended its previous answer's stream
        # (the client has the response, the connection is not free yet): seen under load.
        assert after - before <= 1, (before, after)
        assert _errors(gt, "upstream_tls") == 0
    finally:
        gt.stop()


@pytest.fixture(scope="module")
def sdk_plain():
    with backend_process(SDK_SERVER, "--name", "plain") as (_, url):
        assert url.startswith("http://")
        yield url


def test_multiplexed_route_over_one_https_and_one_http_backend(sdk_tls, sdk_plain, pki):
    gt = _gateway(
        {"secure": {"url": sdk_tls, "ca_file": pki["ca_pem"]}, "plain": {"url": sdk_plain}},
        routes=[{"path": "/mcp", "backends": ["secure", "plain"]}],
        sessions={"key": new_key_text()},
    )
    try:

        async def run():
            async with Client(gt.url(), mode="legacy") as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert {"secure__echo", "secure__tls_info", "plain__echo"} <= names, names
                assert "plain__tls_info" not in names
                assert (await c.call_tool("secure__echo", {"text": "via TLS"})).content[0].text == "via TLS"
                assert (await c.call_tool("plain__echo", {"text": "in clear"})).content[0].text == "in clear"
                info = (await c.call_tool("secure__tls_info", {})).content[0].text
                assert _handshakes(info) >= 1

        anyio.run(run)
        assert _errors(gt, "upstream_tls") == 0
    finally:
        gt.stop()


# --- failures, seen by the client and by the backend ---------------------------------------


def test_unknown_ca_is_a_502_and_the_backend_never_sees_a_request(tls_backend, pki, tmp_path):
    log = tmp_path / "access.log"
    gt = _gateway({"secure": {"url": tls_backend.url(), "ca_file": pki["ca2_pem"]}}, log={"access_log": str(log)})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        msg = _error_message(resp)
        assert "TLS with backend secure failed (unknown CA)" in msg, msg
        assert "BEGIN CERTIFICATE" not in msg
        assert _errors(gt, "upstream_tls") == 1
        # The handshake reached the backend; no request did.
        assert wait_until(lambda: len(tls_backend.sni) >= 1)
        assert tls_backend.accepted == 0 and tls_backend.requests == []
        assert wait_until(lambda: log.exists() and b'"status":502' in log.read_bytes())
        row = json.loads(log.read_bytes().splitlines()[-1])
        assert row["backend"] == "secure" and row["outcome"] == "gateway_error"
    finally:
        gt.stop()


def test_multiplexed_route_names_the_tls_failure(tls_backend, pki):
    """A multiplexed route that cannot start without every backend says which one failed
    TLS and why; with fail_mode open the others keep working and a call to the failed one
    gets the same reason."""
    plain = RawBackend("mux")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    backends = {"secure": {"url": tls_backend.url(), "ca_file": pki["ca2_pem"]}, "plain": {"url": plain.url}}
    gt = _gateway(backends, sessions={"key": new_key_text()},
                  routes=[{"path": "/closed", "backends": ["secure", "plain"], "fail_mode": "closed"},
                          {"path": "/open", "backends": ["secure", "plain"], "fail_mode": "open"}])  # fmt: skip
    try:
        r = httpx.post(gt.url("/closed"), content=orjson.dumps(init), headers=HEADERS, timeout=10)
        assert r.status_code == 502
        assert "secure: TLS with backend secure failed (unknown CA)" in _error_message(r), r.text
        r = httpx.post(gt.url("/open"), content=orjson.dumps(init), headers=HEADERS, timeout=10)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        call = {**CALL, "params": {"name": "secure__hello", "arguments": {}}}
        hs = {**HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        r = httpx.post(gt.url("/open"), content=orjson.dumps(call), headers=hs, timeout=10)
        assert "TLS with backend secure failed (unknown CA)" in _error_message(r), r.text
        assert tls_backend.requests == [] and tls_backend.accepted == 0
        assert any(b'"initialize"' in req[1] for req in plain.requests)
    finally:
        gt.stop()
        plain.close()


def test_system_trust_store_does_not_trust_a_private_ca(tls_backend):
    gt = _gateway({"secure": {"url": tls_backend.url()}})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        assert "(unknown CA)" in _error_message(resp)
        assert tls_backend.requests == []
    finally:
        gt.stop()


@pytest.mark.parametrize("tls_backend", ["elsewhere"], indirect=True)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_host_not_in_the_certificate_is_a_502(tls_backend, pki, host):
    gt = _gateway({"secure": {"url": tls_backend.url(host), "ca_file": pki["ca_pem"]}})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        msg = _error_message(resp)
        assert "TLS with backend secure failed (host name mismatch)" in msg, msg
        assert tls_backend.requests == [] and tls_backend.accepted == 0
        assert _errors(gt, "upstream_tls") == 1
    finally:
        gt.stop()


@pytest.mark.parametrize("tls_backend", ["self"], indirect=True)
def test_tls_verify_false_accepts_any_certificate_and_warns(tls_backend, caplog):
    with caplog.at_level(logging.WARNING, logger="mcpfast"):
        gt = _gateway({"loose": {"url": tls_backend.url(), "tls_verify": False}, "strict": {"url": tls_backend.url()}},
                      routes=[{"path": "/loose", "backends": ["loose"]}, {"path": "/strict", "backends": ["strict"]}])  # fmt: skip
    try:
        ok = httpx.post(gt.url("/loose"), content=orjson.dumps(CALL), headers=HEADERS, timeout=10)
        assert ok.status_code == 200, ok.text
        assert ok.json()["result"]["content"][0]["text"] == "hello over TLS, anonymous"
        refused = httpx.post(gt.url("/strict"), content=orjson.dumps(CALL), headers=HEADERS, timeout=10)
        assert refused.status_code == 502  # the same certificate, checked
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "backends.loose.tls_verify = false" in w]) == 1, warnings
        assert not any("backends.strict" in w for w in warnings)
    finally:
        gt.stop()


def test_mutual_tls_refusal_alert_is_a_502(pki):
    srv = AlertingTLSServer(pki["server_pem"], pki["server_key"], client_ca=pki["ca_pem"])
    gt = _gateway({"secure": {"url": f"https://127.0.0.1:{srv.port}/mcp", "ca_file": pki["ca_pem"]}})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        msg = _error_message(resp)
        assert "TLS with backend secure failed (client certificate required)" in msg, msg
        assert srv.refusals == ["PEER_DID_NOT_RETURN_A_CERTIFICATE"] and srv.requests == []
        assert _errors(gt, "upstream_tls") == 1
    finally:
        gt.stop()
        srv.close()


@pytest.mark.parametrize("tls_backend", ["mtls"], indirect=True)
def test_mutual_tls_silent_refusal_is_a_502(tls_backend, pki):
    """An asyncio server refuses the missing certificate by closing, without an alert."""
    gt = _gateway({"secure": {"url": tls_backend.url(), "ca_file": pki["ca_pem"]}})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        msg = _error_message(resp)
        assert "TLS with backend secure failed (closed after handshake)" in msg, msg
        assert "requires a client certificate" in msg
        assert tls_backend.requests == [] and tls_backend.accepted == 0
        assert _errors(gt, "upstream_tls") == 1
    finally:
        gt.stop()


@pytest.mark.parametrize("tls_backend", ["mtls"], indirect=True)
def test_mutual_tls_with_a_certificate_from_another_ca_is_a_502(tls_backend, pki, tmp_path):
    """A client certificate the backend does not trust."""
    other = CA("rogue CA")
    cert, key = other.issue("intruder", client=True)
    (tmp_path / "c.pem").write_bytes(_pem_cert(cert))
    (tmp_path / "c.key").write_bytes(_pem_key(key))
    b = {"url": tls_backend.url(), "ca_file": pki["ca_pem"], "client_cert": str(tmp_path / "c.pem"), "client_key": str(tmp_path / "c.key")}
    gt = _gateway({"secure": b})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        msg = _error_message(resp)
        assert "TLS with backend secure failed" in msg and "refused the client certificate" in msg, msg
        assert tls_backend.requests == [] and tls_backend.accepted == 0
    finally:
        gt.stop()


@pytest.mark.parametrize("tls_backend", ["mtls"], indirect=True)
def test_mutual_tls_with_a_client_certificate(tls_backend, pki):
    b = {"url": tls_backend.url(), "ca_file": pki["ca_pem"], "client_cert": pki["client_pem"], "client_key": pki["client_key"]}
    gt = _gateway({"secure": b})
    try:
        for _ in range(3):
            resp = _post(gt)
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"]["content"][0]["text"] == "hello over TLS, gateway-client"
        assert tls_backend.peers == ["gateway-client"]  # one connection, reused
        assert len(tls_backend.requests) == 3
    finally:
        gt.stop()


def test_sni_carries_the_url_host_name(tls_backend, pki):
    gt = _gateway({"byname": {"url": tls_backend.url("localhost"), "ca_file": pki["ca_pem"]},
                   "byip": {"url": tls_backend.url("127.0.0.1"), "ca_file": pki["ca_pem"]}},
                  routes=[{"path": "/name", "backends": ["byname"]}, {"path": "/ip", "backends": ["byip"]}])  # fmt: skip
    try:
        assert httpx.post(gt.url("/name"), content=orjson.dumps(CALL), headers=HEADERS, timeout=10).status_code == 200
        assert tls_backend.sni == ["localhost"]
        # An IP literal is not a server name: no SNI, but the certificate's IP entry is checked.
        assert httpx.post(gt.url("/ip"), content=orjson.dumps(CALL), headers=HEADERS, timeout=10).status_code == 200
        assert tls_backend.sni == ["localhost", None]
        assert tls_backend.accepted == 2
    finally:
        gt.stop()


def test_plain_http_server_behind_an_https_url_is_a_502(sdk_plain):
    port = httpx.URL(sdk_plain).port
    gt = _gateway({"secure": {"url": f"https://127.0.0.1:{port}/mcp"}})
    try:
        resp = _post(gt)
        assert resp.status_code == 502
        assert "TLS with backend secure failed (not a TLS server)" in _error_message(resp)
        assert _errors(gt, "upstream_tls") == 1
    finally:
        gt.stop()


def test_connect_timeout_covers_the_handshake():
    """A server that accepts the connection and never answers the ClientHello."""
    mute = RawBackend("ok")  # waits for an HTTP head, which a ClientHello never completes
    gt = _gateway({"secure": {"url": f"https://127.0.0.1:{mute.port}/mcp", "connect_timeout": 0.5}})
    try:
        resp = _post(gt)
        assert resp.status_code == 504
        assert "connecting to backend secure timed out" in _error_message(resp)
        assert mute.accepted == 1 and mute.requests == []
    finally:
        gt.stop()
        mute.close()


# --- startup checks through check-config ------------------------------------------------------


def _check(tmp_path, text: str):
    f = tmp_path / "gw.toml"
    f.write_text(text)
    return CliRunner().invoke(main, ["check-config", str(f)])


def _toml(v) -> str:
    """A TOML value (JSON's spelling serves for strings, booleans and lists of strings)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def _backend(url: str = "https://127.0.0.1:8443/mcp", **keys) -> str:
    lines = [f'url = "{url}"'] + [f"{k} = {_toml(v)}" for k, v in keys.items()]
    return "[backends.b]\n" + "\n".join(lines) + "\n"


def _refused(r, key: str, *words: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"configuration error: {key}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_check_config_refuses_missing_and_bad_tls_files(tmp_path, pki):
    _refused(_check(tmp_path, _backend(ca_file=str(tmp_path / "nope.pem"))), "backends.b.ca_file", "does not exist")
    _refused(_check(tmp_path, _backend(ca_file=pki["notcert_pem"])), "backends.b.ca_file", "no PEM certificate")
    _refused(_check(tmp_path, _backend(ca_file=str(tmp_path))), "backends.b.ca_file", "is a directory")
    _refused(_check(tmp_path, _backend(client_cert=str(tmp_path / "gone.pem"), client_key=pki["client_key"])),
             "backends.b.client_cert", "does not exist")  # fmt: skip
    _refused(_check(tmp_path, _backend(client_cert=pki["client_pem"], client_key=str(tmp_path / "gone.key"))),
             "backends.b.client_key", "does not exist")  # fmt: skip
    _refused(_check(tmp_path, _backend(client_cert=pki["client_pem"], client_key=pki["stray_key"])),
             "backends.b.client_key", "is not the private key of the certificate")  # fmt: skip
    _refused(_check(tmp_path, _backend(client_cert=pki["client_pem"])), "backends.b.client_key", "holds no private key")
    _refused(_check(tmp_path, _backend(client_cert=pki["client_key"], client_key=pki["client_key"])),
             "backends.b.client_cert", "no PEM certificate")  # fmt: skip
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    _refused(_check(tmp_path, _backend(ca_file=str(broken))), "backends.b.ca_file", "cannot load CA certificates")
    # Certificate and key in one file: client_key may be left out.
    both = tmp_path / "both.pem"
    both.write_bytes(open(pki["client_pem"], "rb").read() + open(pki["client_key"], "rb").read())
    r = _check(tmp_path, _backend(ca_file=pki["ca_pem"], client_cert=str(both)))
    assert r.exit_code == 0, r.output


def test_check_config_refuses_an_encrypted_client_key(tmp_path, pki):
    key = serialization.load_pem_private_key(open(pki["client_key"], "rb").read(), None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))  # fmt: skip
    r = _check(tmp_path, _backend(client_cert=pki["client_pem"], client_key=str(enc)))
    _refused(r, "backends.b.client_key", "encrypted")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_config_refuses_an_unreadable_ca_file(tmp_path, pki):
    f = tmp_path / "ca.pem"
    f.write_bytes(open(pki["ca_pem"], "rb").read())
    f.chmod(0)
    _refused(_check(tmp_path, _backend(ca_file=str(f))), "backends.b.ca_file", "permission denied")


def _stdio(**keys) -> str:
    return "[backends.b]\ntransport = \"stdio\"\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())


def test_check_config_refuses_a_stdio_command_or_cwd_that_cannot_work(tmp_path):
    _refused(_check(tmp_path, _stdio(command="mcpfast-no-such-program")), "backends.b.command", "not found")
    _refused(_check(tmp_path, _stdio(command=str(tmp_path / "gone"))), "backends.b.command", "does not exist")
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    _refused(_check(tmp_path, _stdio(command=str(script))), "backends.b.command", "not executable")
    _refused(_check(tmp_path, _stdio(command=str(tmp_path))), "backends.b.command", "is a directory")
    _refused(_check(tmp_path, _stdio(command="sh", cwd=str(tmp_path / "nowhere"))), "backends.b.cwd", "does not exist")
    _refused(_check(tmp_path, _stdio(command="sh", cwd=str(script))), "backends.b.cwd", "not a directory")
    # A bare name is looked up on the PATH the backend's env sets, when it sets one.
    _refused(_check(tmp_path, _stdio(command="sh", env={"PATH": str(tmp_path)})), "backends.b.command", "not found")
    script.chmod(0o755)
    assert _check(tmp_path, _stdio(command="server.sh", env={"PATH": str(tmp_path)})).exit_code == 0
    assert _check(tmp_path, _stdio(command="./server.sh", cwd=str(tmp_path))).exit_code == 0


def test_check_config_passes_good_tls_and_stdio_backends_and_warns_about_tls_verify_false(tmp_path, pki):
    text = (
        _backend(ca_file=pki["ca_pem"], client_cert=pki["client_pem"], client_key=pki["client_key"])
        + _backend("https://127.0.0.1:9443/mcp", tls_verify=False).replace("backends.b", "backends.loose")
        + _stdio(command="sh", args=["-c", "true"], cwd=str(tmp_path)).replace("backends.b", "backends.local")
    )
    r = _check(tmp_path, text)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["backends"]["b"]["ca_file"] == pki["ca_pem"]
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: backends.loose.tls_verify = false"), r.stderr
