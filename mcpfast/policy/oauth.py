"""OAuth 2.1 resource-server pieces: resource URIs, RFC 9728 metadata, WWW-Authenticate.

Theory of operation.  Under the MCP authorization spec (2025-06-18 and later) the
gateway is a *resource server*.  Each MCP route is a protected resource whose canonical
URI (RFC 8707 §2) is the gateway's public URL plus the route path; that URI is the
audience a token must carry.  Clients discover the authorization server from the
protected-resource metadata document (RFC 9728 §2), found at the well-known path
inserted between the host and the path of the resource URI (RFC 9728 §3.1), and from
the ``resource_metadata`` parameter of the 401's ``WWW-Authenticate`` (RFC 9728 §5.1).

Everything here is computed once when policy is built: documents are encoded bytes and
header lines are complete, so answering never formats anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "WELL_KNOWN",
    "canonical_resource",
    "metadata_path",
    "metadata_url",
    "metadata_document",
    "www_authenticate",
]

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def canonical_resource(public_url: str, route_path: str) -> str:
    """RFC 8707 §2: scheme and host lower-cased, no fragment, no trailing slash (unless
    the path is only "/"), default port dropped."""
    parts = urlsplit(public_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/") + (route_path if route_path != "/" else "")
    return urlunsplit((scheme, host, path, "", ""))


def metadata_path(resource: str) -> str:
    """The path at which the metadata of ``resource`` is served (RFC 9728 §3.1)."""
    path = urlsplit(resource).path.rstrip("/")
    return WELL_KNOWN + path


def metadata_url(resource: str) -> str:
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, metadata_path(resource), "", ""))


def metadata_document(
    resource: str,
    authorization_servers: Iterable[str],
    scopes_supported: Iterable[str] = (),
    resource_name: str | None = None,
    resource_documentation: str | None = None,
) -> bytes:
    """RFC 9728 §2 protected-resource metadata, encoded."""
    doc: dict = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        # RFC 9728 §2: tokens only in the Authorization header (RFC 6750 §2.1); the
        # query string (§2.3) and form body (§2.2) are refused.
        "bearer_methods_supported": ["header"],
    }
    scopes = list(scopes_supported)
    if scopes:
        doc["scopes_supported"] = scopes
    if resource_name:
        doc["resource_name"] = resource_name
    if resource_documentation:
        doc["resource_documentation"] = resource_documentation
    return orjson.dumps(doc)


def _quoted(value: str) -> str:
    # RFC 9110 §5.6.4 quoted-string.  Values here come from config (validated to
    # exclude '"' and '\\') or from fixed texts; escaping anyway keeps the rule local.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    *,
    resource_metadata: str | None,
    scope: str | None = None,
    error: str | None = None,
    description: str | None = None,
) -> bytes:
    """One complete ``WWW-Authenticate: Bearer ...`` header line (RFC 6750 §3, RFC 9728
    §5.1).  Without any parameter the challenge is ``Bearer realm="mcp"`` (RFC 6750
    needs at least the scheme; a realm keeps the line well-formed for old parsers)."""
    params = []
    if resource_metadata:
        params.append(f"resource_metadata={_quoted(resource_metadata)}")
    if scope:
        params.append(f"scope={_quoted(scope)}")
    if error:
        params.append(f"error={_quoted(error)}")
    if description:
        params.append(f"error_description={_quoted(description)}")
    if not params:
        params.append('realm="mcp"')
    return ("WWW-Authenticate: Bearer " + ", ".join(params) + "\r\n").encode("latin-1")
