"""Helpers for the policy tests: real keys, real signed tokens, real request heads, and a
real JWKS server on 127.0.0.1.

Nothing here is a mock.  Request heads come out of the gateway's own ``RequestParser``
fed with raw HTTP bytes; tokens are signed by pyjwt (or, for the forged ones pyjwt
refuses to make, by hand with ``hmac``); the JWKS is served over a socket by
``http.server`` in a thread, which counts the requests it answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from http_events import HeadList
from mcpfast.wire.core import RequestParser

ISSUER = "https://idp.example.com"
PUBLIC_URL = "https://gw.example.com"
RESOURCE = PUBLIC_URL + "/mcp"
HMAC_SECRET = b"s3cret-s3cret-s3cret-s3cret-0123456789abcdef-0123456789abcdef-xyz"  # 64+ bytes


# ---------------------------------------------------------------------------------
# Request heads through the real parser


_Collect = HeadList


def head(
    authorization: str | bytes | None = None,
    *,
    target: str = "/mcp",
    headers: dict[str, str] | None = None,
    session: str | None = None,
    method: str = "POST",
):
    """A ``RequestHead`` parsed from raw bytes by the gateway's own parser."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gw.example.com", "Content-Length: 0"]
    if authorization is not None:
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        lines.append(f"Authorization: {authorization}")
    if session is not None:
        lines.append(f"Mcp-Session-Id: {session}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    c = _Collect()
    RequestParser(c).feed(raw)
    assert len(c.heads) == 1
    return c.heads[0]


def bearer(token: str | bytes) -> str:
    return "Bearer " + (token.decode() if isinstance(token, bytes) else token)


# ---------------------------------------------------------------------------------
# Keys and tokens


@dataclass
class KeyPair:
    kid: str
    alg: str
    private: Any
    public: Any
    jwk: dict = field(default_factory=dict)

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def _jwk(public, alg: str, kid: str) -> dict:
    if isinstance(public, rsa.RSAPublicKey):
        d = json.loads(RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        d = json.loads(ECAlgorithm.to_jwk(public))
    else:
        d = json.loads(OKPAlgorithm.to_jwk(public))
    d.update(kid=kid, use="sig")
    return d


def make_rsa(kid: str = "rsa1", alg: str = "RS256") -> KeyPair:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(kid, alg, priv, priv.public_key(), _jwk(priv.public_key(), alg, kid))


def make_ec(kid: str = "ec1", alg: str = "ES256") -> KeyPair:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
    priv = ec.generate_private_key(curve)
    return KeyPair(kid, alg, priv, priv.public_key(), _jwk(priv.public_key(), alg, kid))


def make_ed(kid: str = "ed1") -> KeyPair:
    priv = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(kid, "EdDSA", priv, priv.public_key(), _jwk(priv.public_key(), "EdDSA", kid))


def claims(**over: Any) -> dict:
    now = int(time.time())
    c = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 600}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def sign(kp: KeyPair, alg: str | None = None, kid: str | None = "<same>", **over: Any) -> str:
    hdr = {}
    kid = kp.kid if kid == "<same>" else kid
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(claims(**over), kp.private, algorithm=alg or kp.alg, headers=hdr)


def sign_hmac(secret: bytes, alg: str = "HS256", kid: str | None = "hs1", **over: Any) -> str:
    hdr = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**over), secret, algorithm=alg, headers=hdr)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: dict, signing_input_key: bytes | None, digest=hashlib.sha256) -> str:
    """A token built by hand: ``alg: none`` (key None, empty signature) or an HMAC made
    with arbitrary key bytes -- the forgeries pyjwt itself refuses to produce."""
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{h}.{p}".encode()
    sig = b"" if signing_input_key is None else hmac.new(signing_input_key, signing_input, digest).digest()
    return f"{h}.{p}.{b64(sig)}"


# ---------------------------------------------------------------------------------
# A JWKS server


class JwksServer:
    """Serves ``self.jwks`` as JSON at ``/jwks.json`` on 127.0.0.1 (port from the OS),
    counting hits.  ``status``/``body`` override the answer for failure tests."""

    def __init__(self, jwks: dict | None = None) -> None:
        self.jwks = jwks or {"keys": []}
        self.hits = 0
        self.status = 200
        self.body: bytes | None = None
        self.delay = 0.0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with outer.lock:
                    outer.hits += 1
                    status, body, delay = outer.status, outer.body, outer.delay
                    if body is None:
                        body = json.dumps(outer.jwks).encode()
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def set_keys(self, *pairs: KeyPair) -> None:
        with self.lock:
            self.jwks = {"keys": [kp.jwk for kp in pairs]}

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class FakeClock:
    """A clock the test moves by hand (for intervals, buckets and expiry)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
