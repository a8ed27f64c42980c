"""TLS to backends: one client ``ssl.SSLContext`` per https backend, and what a failed
handshake means in one line.

Theory of operation.  The context is built once, when the backend's connection pool is
made (``UpstreamPool``), from the backend's keys: the system trust store or ``ca_file``,
TLS 1.2 at least, a client certificate for mutual TLS, ALPN ``http/1.1`` (the gateway
speaks HTTP/1.1 upstream).  Every connection of the pool is wrapped with that context
and the URL's host as ``server_hostname``: a name is sent as SNI and checked against
the certificate; an IP literal is not sent as SNI (RFC 6066 §3 allows names only) but
is still checked against the certificate's IP address entries.

The files are read here and nowhere else, so ``check-config`` (through
``preflight.static_checks``) and a starting gateway refuse the same broken file with
the same message: ``client_context`` raises ``ConfigError`` naming the key at fault.

A handshake that fails becomes an ``UpstreamError`` of kind ``upstream_tls`` (502)
whose message names the backend and the class of failure -- an unknown CA, a host
name mismatch, an expired certificate, a refused client certificate -- never the
certificate itself.  With TLS 1.3 a server refuses a client certificate only after
the client has finished its side of the handshake, so that refusal arrives as an error
on the first read; ``UpstreamProtocol`` routes it through ``handshake_error`` too.  A
server that closes instead of sending that alert (asyncio's, hence uvicorn's) leaves
only a new connection closed before any answer: ``closed_after_handshake`` says what
that most likely means.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from ..validate import ConfigError

__all__ = ["client_context", "closed_after_handshake", "handshake_error", "insecure_warnings"]

_PEM_CERT = (b"-----BEGIN CERTIFICATE-----", b"-----BEGIN TRUSTED CERTIFICATE-----")
_PEM_KEY = b"PRIVATE KEY-----"  # PKCS#8, RSA, EC, encrypted or not


class _Encrypted(Exception):
    """The private key asked for a passphrase (raised by the password callback)."""


def _ask_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the start.
    raise _Encrypted


def _read(key: str, path: str) -> bytes:
    """The bytes of the file named by setting ``key``, or a ``ConfigError`` saying why not."""
    if os.path.isdir(path):
        raise ConfigError(key, f"{path} is a directory, expected a PEM file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(key, f"{path} does not exist") from None
    except PermissionError:
        raise ConfigError(key, f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code in words (``KEY_VALUES_MISMATCH`` → ``key values mismatch``)."""
    reason = getattr(exc, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    return str(exc.args[1] if len(exc.args) > 1 else exc)


def client_context(b: Any) -> ssl.SSLContext:
    """The client context for https backend ``b`` (a ``config.BackendConfig``).  Raises
    ``ConfigError`` naming ``backends.NAME.ca_file`` / ``client_cert`` / ``client_key``
    when a file is missing, unreadable, holds no certificate or the pair does not match."""
    key = f"backends.{b.name}"
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if b.ca_file is not None:
        k = f"{key}.ca_file"
        data = _read(k, b.ca_file)
        if not any(tag in data for tag in _PEM_CERT):
            raise ConfigError(k, f"no PEM certificate in {b.ca_file} (expected -----BEGIN CERTIFICATE-----)")
        try:
            ctx.load_verify_locations(cafile=b.ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(k, f"cannot load CA certificates from {b.ca_file}: {_ssl_reason(exc)}") from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if b.client_cert is not None:
        _load_client_pair(ctx, key, b.client_cert, b.client_key)
    if not b.tls_verify:
        ctx.check_hostname = False  # must go first: CERT_NONE is refused while it is on
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_client_pair(ctx: ssl.SSLContext, key: str, cert: str, keyfile: str | None) -> None:
    kc, kk = f"{key}.client_cert", f"{key}.client_key"
    data = _read(kc, cert)
    if not any(tag in data for tag in _PEM_CERT):
        raise ConfigError(kc, f"no PEM certificate in {cert} (expected -----BEGIN CERTIFICATE-----)")
    if keyfile is not None:
        if _PEM_KEY not in _read(kk, keyfile):
            raise ConfigError(kk, f"no PEM private key in {keyfile}")
    elif _PEM_KEY not in data:
        raise ConfigError(kk, f"missing: {cert} holds no private key, so client_key must name the key file")
    try:
        ctx.load_cert_chain(cert, keyfile, password=_ask_password)
    except _Encrypted:
        raise ConfigError(kk, f"the private key in {keyfile or cert} is encrypted; give a key without a passphrase") from None
    except ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise ConfigError(kk, f"{keyfile or cert} is not the private key of the certificate in {cert}") from None
        raise ConfigError(kc, f"cannot load the client certificate and key: {_ssl_reason(exc)}") from None


def insecure_warnings(cfg: Any) -> list[str]:
    """One warning per https backend whose certificate is not checked."""
    return [
        f"backends.{b.name}.tls_verify = false: the certificate and host name of "
        f"https://{'[' + b.host + ']' if ':' in b.host else b.host}:{b.port} are not checked; "
        "anyone on the network path can pose as this backend"
        for b in cfg.backends
        if b.tls and not b.tls_verify
    ]


# Alerts a server sends when it will not take the client's certificate (or its lack).
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "client certificate required",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client certificate refused",
    "TLSV1_ALERT_UNKNOWN_CA": "client certificate refused",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client certificate refused",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "client certificate refused",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "client certificate refused",
    "TLSV1_ALERT_ACCESS_DENIED": "client certificate refused",
}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}
_VERSION = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}

# X.509 verification results (OpenSSL's X509_V_ERR_* codes) by class.
_UNKNOWN_CA = {2, 18, 19, 20, 21}
_EXPIRED = {10, 12}
_NOT_YET_VALID = {9, 11}
_MISMATCH = {62, 63, 64}
_REVOKED = {23}


def _classify(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNKNOWN_CA:
            return "unknown CA"
        if code in _MISMATCH:
            return "host name mismatch"
        if code in _EXPIRED:
            return "certificate expired"
        if code in _NOT_YET_VALID:
            return "certificate not yet valid"
        if code in _REVOKED:
            return "certificate revoked"
        return "certificate rejected"
    reason = getattr(exc, "reason", None) or ""
    if reason in _CLIENT_CERT_ALERTS:
        return _CLIENT_CERT_ALERTS[reason]
    if reason in _NOT_TLS:
        return "not a TLS server"
    if reason in _VERSION:
        return "no common protocol version"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return "handshake refused"
    return "handshake error"


def handshake_error(name: str, exc: ssl.SSLError) -> tuple[str, str]:
    """(metric kind, message) for a TLS failure with backend ``name``: the class of the
    failure and OpenSSL's short reason, no certificate contents."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (exc.verify_message or "certificate verify failed").rstrip(".")
    else:
        detail = _ssl_reason(exc)
    return "upstream_tls", f"TLS with backend {name} failed ({_classify(exc)}): {detail}"


def closed_after_handshake(b: Any) -> str:
    """The message for a new TLS connection that backend ``b`` closed without a word."""
    hint = "it likely refused the client certificate" if b.client_cert else "it likely requires a client certificate (client_cert)"
    return f"TLS with backend {b.name} failed (closed after handshake): a new connection was closed before any answer; {hint}"
