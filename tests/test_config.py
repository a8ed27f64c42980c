"""The configuration as a user meets it: every kind of bad input is refused with the
dotted key at fault (and ``mcpfast check-config`` exits 2 naming it), and a good file
with every section gives the effective configuration pinned in ``RICH_EFFECTIVE``, value
for value and type for type, redactions included."""

from __future__ import annotations

import json
import tomllib

import pytest
from click.testing import CliRunner

from mcpfast.cli import main
from mcpfast.config import ConfigError, RouteSection, as_dict, build_config

HTTP = {"url": "http://127.0.0.1:9/mcp"}
HTTPS = {"url": "https://127.0.0.1:9/mcp"}
STDIO = {"transport": "stdio", "command": "python3"}
KEY = "01" * 32
JWT = {"issuer": "https://as.example", "keys": [{"kid": "k", "secret": "s" * 32}]}


def _b(**kw) -> dict:
    """A file with backend ``a`` (http unless ``kw`` says otherwise) and ``kw`` in it."""
    return {"backends": {"a": {**HTTP, **kw}}}


def _s(**kw) -> dict:
    """A file with stdio backend ``fs`` carrying ``kw``."""
    return {"backends": {"fs": {**STDIO, **kw}}}


def _r(*routes: dict, **backends: dict) -> dict:
    return {"backends": backends or {"a": HTTP, "b": {**HTTP, "url": "http://127.0.0.1:8/mcp"}, "fs": STDIO},
            "routes": list(routes), "sessions": {"key": KEY}}  # fmt: skip


def _auth(**kw) -> dict:
    return {"auth": {"public_url": "https://gw.example", "jwt": JWT, **kw}}


# (raw file, the dotted key the error names, a piece of its message)
BAD = [
    # wrong type
    ({"server": {"backlog": "many"}}, "server.backlog", "expected an integer, got 'many'"),
    ({"server": {"forwarded_headers": "yes"}}, "server.forwarded_headers", "expected true or false"),
    ({"server": {"allowed_origins": "http://a"}}, "server.allowed_origins", "expected a list, got a string"),
    ({"server": {"listen": 80}}, "server.listen", "expected a string, got 80"),
    ({"limits": {"max_body_bytes": True}}, "limits.max_body_bytes", "expected an integer, got True"),
    ({"limits": {"max_headers": 1.5}}, "limits.max_headers", "expected an integer, got 1.5"),
    ({"timeouts": {"idle": "5"}}, "timeouts.idle", "expected a number, got '5'"),
    ({"log": {"level": 3}}, "log.level", "expected a string"),
    ({"server": []}, "server", "expected a table"),
    ({"backends": []}, "backends", "expected a table"),
    ({"backends": {"a": "http://x"}}, "backends.a", "expected a table, got a string"),
    ({"routes": {"path": "/x"}}, "routes", "expected a list"),
    ({"sessions": {"old_keys": KEY}}, "sessions.old_keys", "expected a list, got a string"),  # the key not shown
    (_b(headers={"X-A": 1}), "backends.a.headers.X-A", "expected a string, got 1"),
    (_b(pool_size="8"), "backends.a.pool_size", "expected an integer, got '8'"),
    (_s(args="-m x"), "backends.fs.args", "expected a list"),
    (_s(env={"A": 1}), "backends.fs.env.A", "expected a string"),
    ({"auth": "yes"}, "auth", "expected a table, got a string"),
    ({"authz": {"rules": [{"effect": "allow", "claims": {"n": 1.5}}]}}, "authz.rules[0].claims.n",
     "expected true or false, an integer, a string or a list, got 1.5"),
    ({"cors": {"allow_credentials": "yes"}}, "cors.allow_credentials", "expected true or false"),
    ({"audit": {"max_events_per_second": "x"}}, "audit.max_events_per_second", "expected an integer"),
    # out of range
    ({"server": {"workers": 0}}, "server.workers", "must be >= 1, got 0"),
    ({"limits": {"max_header_bytes": 100}}, "limits.max_header_bytes", "must be >= 256, got 100"),
    ({"limits": {"max_sessions": -1}}, "limits.max_sessions", "must be >= 1, got -1"),
    ({"timeouts": {"drain": 0}}, "timeouts.drain", "must be > 0, got 0"),
    ({"sessions": {"max_age": -1}}, "sessions.max_age", "must be >= 0, got -1"),
    (_b(max_streams=0), "backends.a.max_streams", "must be >= 1"),
    (_b(connect_timeout=-2), "backends.a.connect_timeout", "must be > 0"),
    (_s(idle_timeout=-1), "backends.fs.idle_timeout", "must be >= 0"),
    (_s(max_line_bytes=0), "backends.fs.max_line_bytes", "must be >= 1"),
    (_s(resume_buffer=-1), "backends.fs.resume_buffer", "must be >= 0, got -1"),
    (_s(poll_after=-0.5), "backends.fs.poll_after", "must be >= 0"),
    (_b(poll_after=1), "backends.a.poll_after", "only applies to transport = 'sse' or 'stdio'"),
    (_b(resume_buffer=0), "backends.a.resume_buffer", "only applies to transport = 'sse' or 'stdio'"),
    ({"cors": {"max_age": 86401}}, "cors.max_age", "must be <= 86400, got 86401"),
    (_r({"path": "/m", "backends": ["a", "b"], "list_cache_ttl": -1}), "routes[0].list_cache_ttl", "must be >= 0"),
    (_auth(max_sessions=0), "auth.max_sessions", "must be >= 1"),
    (_auth(jwt={**JWT, "leeway_seconds": -1}), "auth.jwt.leeway_seconds", "must be >= 0"),
    ({"ratelimit": {"limits": [{"key": "ip", "rate": 1, "burst": 0.5}]}}, "ratelimit.limits[0].burst", "must be >= 1"),
    # unknown enumeration value: the allowed ones are listed
    ({"log": {"format": "xml"}}, "log.format", "expected one of json, text, got 'xml'"),
    ({"log": {"level": "loud"}}, "log.level", "expected one of debug, info, warning, error, critical"),
    (_b(transport="grpc"), "backends.a.transport", "expected one of http, sse, stdio, got 'grpc'"),
    (_b(transport=["http"]), "backends.a.transport", "expected a string, got a list"),
    (_s(mode="forked"), "backends.fs.mode", "expected one of per_session, shared"),
    (_r({"path": "/m", "backends": ["a", "b"], "namespacing": "maybe"}), "routes[0].namespacing", "always, multi, never"),
    (_r({"path": "/m", "backends": ["a", "b"], "fail_mode": "soft"}), "routes[0].fail_mode", "open, closed"),
    (_auth(mode="sometimes"), "auth.mode", "expected one of off, optional, required"),
    ({"authz": {"default": "maybe"}}, "authz.default", "expected one of allow, deny"),
    ({"authz": {"deny_status": 500}}, "authz.deny_status", "expected one of 200, 403, 404, got 500"),
    ({"authz": {"rules": [{"effect": "allow", "kinds": ["jwt", "robot"]}]}}, "authz.rules[0].kinds[1]", "jwt, apikey, anonymous"),
    ({"ratelimit": {"limits": [{"key": ["ip", "user"], "rate": 1}]}}, "ratelimit.limits[0].key[1]", "principal, ip"),
    # unknown key, at every level: the known ones are listed
    ({"colour": 1}, "colour", "unknown setting (known: audit, auth, authz, backends, cors, limits, log, ratelimit, routes, server, sessions, timeouts)"),
    ({"server": {"port": 1}}, "server.port", "known: admin_listen, allowed_hosts"),
    ({"limits": {"max_body_bytez": 1}}, "limits.max_body_bytez", "known: max_body_bytes"),
    ({"timeouts": {"read": 1}}, "timeouts.read", "known: body_read"),
    ({"log": {"colour": True}}, "log.colour", "known: access_log, format, level"),
    ({"sessions": {"colour": 1}}, "sessions.colour", "known: key, key_file, max_age"),
    (_b(colour=1), "backends.a.colour", "unknown setting (known: bearer_token"),
    (_s(colour=1), "backends.fs.colour", "unknown setting (known: args, command"),
    (_r({"path": "/m", "backend": "a", "colour": 1}), "routes[0].colour", "known: backend, backends"),
    ({"cors": {"origins": []}}, "cors.origins", "known: allow_credentials, allow_headers"),
    (_auth(colour=1), "auth.colour", "known: api_keys, audiences"),
    (_auth(jwt={**JWT, "colour": 1}), "auth.jwt.colour", "known: algorithms, cache_seconds"),
    (_auth(jwt={**JWT, "keys": [{"secret": "s" * 32, "colour": 1}]}), "auth.jwt.keys[0].colour", "known: algorithms, jwk, kid"),
    ({"auth": {"api_keys": {"colour": 1}}}, "auth.api_keys.colour", "known: bearer, header, keys"),
    ({"auth": {"api_keys": {"keys": [{"sha256": "a" * 64, "subject": "x", "colour": 1}]}}}, "auth.api_keys.keys[0].colour", "known: attributes, scopes"),
    ({"auth": {"api_keys": {}, "routes": {"/m": {"colour": 1}}}}, "auth.routes./m.colour", "known: mode, required_scopes"),
    ({"authz": {"colour": 1}}, "authz.colour", "known: default, deny_status"),
    ({"authz": {"rules": [{"effect": "allow", "colour": 1}]}}, "authz.rules[0].colour", "known: attributes, backends"),
    ({"ratelimit": {"colour": 1}}, "ratelimit.colour", "known: limits, max_keys"),
    ({"ratelimit": {"limits": [{"key": "ip", "rate": 1, "colour": 1}]}}, "ratelimit.limits[0].colour", "known: backends, burst"),
    ({"audit": {"path": "x"}}, "audit.path", "known: max_events_per_second, sink"),
    # missing required keys
    ({"backends": {"a": {"pool_size": 3}}}, "backends.a.url", "missing"),
    ({"backends": {"fs": {"transport": "stdio"}}}, "backends.fs.command", "missing (the program to start"),
    ({"authz": {"rules": [{"id": "r"}]}}, "authz.rules[0].effect", "missing"),
    ({"auth": {"api_keys": {"keys": [{"subject": "x"}]}}}, "auth.api_keys.keys[0].sha256", "missing (hex SHA-256"),
    ({"auth": {"api_keys": {"keys": [{"sha256": "a" * 64 + "\n", "subject": "x"}]}}}, "auth.api_keys.keys[0].sha256", "64 hex"),
    (_auth(jwt={"keys": JWT["keys"]}), "auth.jwt.issuer", "missing (the accepted token issuer"),
    ({"ratelimit": {"limits": [{"rate": 1}]}}, "ratelimit.limits[0].key", "missing (one or more of principal, ip"),
    ({"auth": {"mode": "required"}}, "auth", "needs [auth.jwt] or [auth.api_keys]"),
    # keys of another transport, or of a TLS backend on plain http
    (_b(command="x"), "backends.a.command", "only applies to transport = 'stdio'"),
    (_s(url="http://x/"), "backends.fs.url", "only applies to transport = 'http' or 'sse'"),
    (_b(transport="sse", forward_credentials=True), "backends.a.forward_credentials", "only applies to transport = 'http'"),
    (_b(tls_verify=False), "backends.a.tls_verify", "only applies to an https:// URL"),
    (_b(ca_file="/ca.pem"), "backends.a.ca_file", "only applies to an https:// URL"),
    ({"backends": {"a": {**HTTPS, "client_key": "/k.pem"}}}, "backends.a.client_key", "needs client_cert"),
    (_r({"path": "/m", "backend": "a", "separator": "--"}), "routes[0].separator", "only applies to a route over several"),
    # route references
    (_r({"path": "/m", "backends": ["a", "nope"]}), "routes[0].backends", "unknown backend 'nope'"),
    (_r({"path": "/m", "backend": "nope"}), "routes[0].backends", "unknown backend 'nope'"),
    (_r({"path": "/m", "backends": ["a", "a"]}), "routes[0].backends", "listed twice"),
    (_r({"path": "/m", "backends": []}), "routes[0].backends", "non-empty list of backend names"),
    (_r({"path": "m", "backend": "a"}), "routes[0].path", "must start with '/'"),
    (_r({"path": "/m", "backends": ["a", "a_b"], "separator": "_"}, a=HTTP, a_b=HTTP), "routes[0].backends", "ambiguous"),
    # path collisions
    (_r({"path": "/m", "backend": "a"}, {"path": "/m/", "backend": "b"}), "routes[1].path", "duplicate route path '/m'"),
    (_r({"path": "/m", "backend": "a"}, {"path": "/n", "backend": "b", "sse_path": "/m", "messages_path": "/n/msg"}),
     "routes[1].sse_path", "'/m' is already used by routes path '/m'"),
    (_r({"path": "/m", "backend": "a", "messages_path": "/q"}, {"path": "/n", "backend": "b", "messages_path": "/q"}),
     "routes[1].messages_path", "already used by messages_path of route '/m'"),
    (_r({"path": "/m", "backend": "a", "sse_path": ""}), "routes[0].sse_path", "on or off together"),
    (_r({"path": "/m", "backend": "a", "sse_path": "sse"}), "routes[0].sse_path", "absolute path"),
    # header names and values
    (_b(headers={"X A": "v"}), "backends.a.headers.X A", "not a valid header name"),
    (_b(headers={"X-A\n": "v"}), "backends.a.headers.X-A\n", "not a valid header name"),
    (_b(headers={"X-A": "v\r\nX-B: w"}), "backends.a.headers.X-A", "without control characters"),
    (_b(headers={"X-A": " padded"}), "backends.a.headers.X-A", "surrounding spaces"),
    (_b(bearer_token="to ken"), "backends.a.bearer_token", "visible ASCII"),
    (_b(bearer_token="t", headers={"authorization": "x"}), "backends.a.bearer_token", "conflicts with headers.Authorization"),
    ({"cors": {"allow_headers": ["Content-Type", "bad header"]}}, "cors.allow_headers[1]", "not a valid header name"),
    ({"cors": {"expose_headers": ["X:Y"]}}, "cors.expose_headers[0]", "not a valid header name"),
    ({"auth": {"api_keys": {"header": "Bad Header"}}}, "auth.api_keys.header", "not a valid header name"),
    ({"auth": {"api_keys": {"header": "Cookie"}}}, "auth.api_keys.header", "cannot carry API keys"),
    # what reaches an exec call: NUL, line breaks, environment names
    (_s(command="py\x00thon"), "backends.fs.command", "must not contain NUL or line breaks"),
    (_s(command=""), "backends.fs.command", "must not be empty"),
    (_s(cwd="/tmp\x00/x"), "backends.fs.cwd", "must not contain NUL or line breaks"),
    (_s(cwd=""), "backends.fs.cwd", "must not be empty"),
    (_s(args=["-m", "x\x00y"]), "backends.fs.args[1]", "must not contain NUL"),
    (_s(env={"A": "b\x00"}), "backends.fs.env.A", "must not contain NUL"),
    (_s(env={"1BAD": "x"}), "backends.fs.env.1BAD", "not a valid environment variable name"),
    (_s(env={"A-B": "x"}), "backends.fs.env.A-B", "not a valid environment variable name"),
    (_s(env_passthrough=["PATH", "NO NAME"]), "backends.fs.env_passthrough[1]", "not a valid environment variable name"),
    # names, origins, hosts, URLs, keys
    ({"backends": {"bad name": HTTP}}, "backends.bad name", "1-64 characters of [A-Za-z0-9_.-]"),
    ({"backends": {"a": {"url": "ftp://x/"}}}, "backends.a.url", "expected an http:// or https:// URL"),
    ({"backends": {"a": {"url": "http://u:p@x/"}}}, "backends.a.url", "user or password"),
    ({"server": {"listen": "nope"}}, "server.listen", "expected HOST:PORT"),
    ({"server": {"mcp_path": "mcp"}}, "server.mcp_path", "absolute path"),
    ({"server": {"allowed_origins": ["https://ok", "ftp://x"]}}, "server.allowed_origins[1]", "expected an origin"),
    ({"server": {"allowed_origins": ["http://a\tb"]}}, "server.allowed_origins[0]", "whitespace"),
    ({"server": {"allowed_hosts": ["ok", "bad host"]}}, "server.allowed_hosts[1]", "expected host or host:port"),
    ({"server": {"allowed_hosts": ["host\n"]}}, "server.allowed_hosts[0]", "expected host or host:port"),
    ({"cors": {"allow_origins": ["http://a b"]}}, "cors.allow_origins[0]", "whitespace"),
    ({"cors": {"allow_origins": ["*"], "allow_credentials": True}}, "cors.allow_credentials", "cannot be true"),
    ({"sessions": {"key": "zz"}}, "sessions.key", ""),
    ({"sessions": {"key": KEY, "key_file": "/k"}}, "sessions.key_file", "not both"),
    (_auth(public_url="ftp://x"), "auth.public_url", "expected an http(s) URL"),
    (_auth(jwt={**JWT, "algorithms": ["none"]}), "auth.jwt.algorithms[0]", "unsigned tokens are never accepted"),
    (_auth(scopes_supported=['bad"scope']), "auth.scopes_supported[0]", "not a valid OAuth scope token"),
    (_auth(audiences=["a", ""]), "auth.audiences[1]", "must not be empty"),
    ({"authz": {"rules": [{"effect": "allow", "subjects": ""}]}}, "authz.rules[0].subjects", "must not be empty"),
    ({"authz": {"rules": [{"effect": "allow", "client_ips": ["10.0.0.300"]}]}}, "authz.rules[0].client_ips[0]", "CIDR"),
    ({"authz": {"rules": [{"effect": "allow", "id": "a b"}]}}, "authz.rules[0].id", "1-64 characters"),
    ({"authz": {"rules": [{"effect": "allow", "tools": ["x" * 1025]}]}}, "authz.rules[0].tools[0]", "length <= 1024"),
    ({"authz": {"rules": [{"effect": "allow", "id": "r"}, {"effect": "deny", "id": "r"}]}}, "authz.rules[1].id", "duplicate"),
    ({"audit": {"sink": ""}}, "audit.sink", "must not be empty"),
]


@pytest.mark.parametrize("raw,key,problem", BAD, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(BAD)])
def test_bad_input_names_its_key(raw, key, problem):
    with pytest.raises(ConfigError) as ei:
        build_config(raw)
    assert ei.value.key == key, str(ei.value)
    assert problem in ei.value.problem, str(ei.value)
    assert not any(w in str(ei.value) for w in ("$.", "Expected `", "Object ", "[...]"))  # msgspec's wording never shows
    assert KEY not in str(ei.value)


@pytest.mark.parametrize(
    "toml,line",
    [
        ('[server]\nworkers = 0\n', "server.workers: must be >= 1, got 0"),
        ('[backends.a]\nurl = "http://x/"\ncommand = "ls"\n', "backends.a.command: only applies to transport = 'stdio'"),
        ('[backends.fs]\ntransport = "stdio"\ncommand = "py\\u0000thon"\n', "backends.fs.command: must not contain NUL"),
        ('[backends.a]\nurl = "http://x/"\n[[routes]]\npath = "/m"\nbackends = ["a", "b"]\n',
         "routes[0].backends: unknown backend 'b'"),
        ('[backends.a]\nurl = "http://x/"\n[backends.a.headers]\n"X A" = "v"\n', "backends.a.headers.X A: not a valid header name"),
        ('[authz]\n[[authz.rules]]\neffect = "allow"\nwhen = 1\n', "authz.rules[0].when: unknown setting (known: "),
    ],
)
def test_check_config_exits_2_with_one_line(tmp_path, toml, line):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and f"configuration error: {line}" in r.output, r.output


MUX_KEYS = sorted(set(RouteSection.__struct_fields__) - {"path", "backends", "backend", "sse_path", "messages_path"})


@pytest.mark.parametrize("name", MUX_KEYS)
def test_every_multiplexing_key_is_refused_on_a_passthrough_route(name):
    valid = {"list_cache_ttl": 1, "max_age": 1, "old_keys": [], "old_key_files": [], "namespacing": "always",
             "fail_mode": "open", "list_cache": "off"}  # fmt: skip
    value = valid.get(name, "x")
    with pytest.raises(ConfigError) as ei:
        build_config(_r({"path": "/m", "backend": "a", name: value}))
    assert ei.value.key == f"routes[0].{name}" and "only applies to a route over several" in ei.value.problem


def _same(a, b) -> bool:
    """Equal as JSON text, so 3 and 3.0 differ."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_rich_config_gives_the_same_effective_config():
    cfg = build_config(tomllib.loads(RICH))
    assert _same(as_dict(cfg), RICH_EFFECTIVE)
    assert cfg.backend("fs").env == (("API_TOKEN", "hush"), ("MODE", "x"))  # redacted above, kept here
    assert dict(cfg.backend("weather").headers)["Authorization"] == "Bearer tok3n"


def _cert_files(tmp_path) -> dict[str, str]:
    """A self-signed certificate and its key, as the TLS file checks of check-config
    want them to be: real PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "config test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files = {"/etc/ssl/ca.pem": ("ca.pem", pem), "/etc/ssl/c.pem": ("c.pem", pem)}
    files["/etc/ssl/c.key"] = (
        "c.key",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    out = {}
    for shown, (fname, data) in files.items():
        (tmp_path / fname).write_bytes(data)
        out[shown] = str(tmp_path / fname)
    return out


def test_check_config_prints_the_rich_config(tmp_path):
    sink = tmp_path / "audit.jsonl"
    f = tmp_path / "gw.toml"
    paths = _cert_files(tmp_path)
    text = RICH.replace("/var/log/audit.jsonl", str(sink))
    for shown, real in paths.items():
        text = text.replace(shown, real)
    f.write_text(text)
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 0, r.output
    want = json.loads(json.dumps(RICH_EFFECTIVE))
    want["policy"]["audit"]["sink"] = str(sink)
    weather = want["backends"]["weather"]
    for k in ("ca_file", "client_cert", "client_key"):
        weather[k] = paths[weather[k]]
    assert _same(json.loads(r.stdout), want)
    assert "tls_verify = false" in r.stderr
    for secret in ("hush", "tok3n", "s3cret", "ssssssss", "0101010101"):
        assert secret not in r.output


def test_defaults_without_a_file():
    d = as_dict(build_config({}))
    assert d["server"]["listen"] == "127.0.0.1:8080" and d["limits"]["max_body_bytes"] == 4 * 1024 * 1024
    assert d["timeouts"]["idle"] == 75.0 and d["log"] == {"level": "info", "format": "json", "access_log": "-"}
    assert d["backends"] == {} and d["routes"] == [] and d["cors"] is None and d["session_key_ephemeral"]


RICH = """\
[server]
listen = "[::1]:9100"
admin_listen = "127.0.0.1:9101"
mcp_path = "/gw/"
backlog = 512
workers = 2
allowed_origins = ["https://App.example/", "http://localhost:*", "*"]
forwarded_headers = false
allowed_hosts = ["Gw.Example:8443", "127.0.0.1", "[::1]:9100"]

[limits]
max_header_bytes = 32768
max_headers = 64
max_target_bytes = 4096
max_body_bytes = 1048576
max_sse_event_bytes = 2097152
max_connections = 500
max_connections_per_address = 50
max_streams_per_principal = 10
max_streams_per_address = 5
max_streams_per_session = 2
max_sessions = 1000

[timeouts]
header_read = 5
idle = 30.5
body_read = 10
upstream_connect = 2
upstream_response = 20
drain = 3
session_idle = 600
client_write = 15

[log]
level = "WARNING"
format = "Text"
access_log = "off"

[sessions]
key = "0101010101010101010101010101010101010101010101010101010101010101"
old_keys = ["0202020202020202020202020202020202020202020202020202020202020202"]
max_age = 7200

[backends.weather]
url = "https://weather.example:8443/mcp?api_key=s3cret&x=1"
pool_size = 8
pool_idle_timeout = 12
connect_timeout = 1.5
response_timeout = 9
forward_credentials = true
max_connections = 32
max_streams = 16
tls_verify = false
ca_file = "/etc/ssl/ca.pem"
client_cert = "/etc/ssl/c.pem"
client_key = "/etc/ssl/c.key"
bearer_token = "tok3n"
[backends.weather.headers]
X-Tenant = "acme"

[backends.legacy]
transport = "sse"
url = "http://127.0.0.1:7001/sse"
headers = { "X-A" = "b" }

[backends.fs]
transport = "stdio"
command = "/usr/bin/python3"
args = ["-m", "server", "--root", "/tmp"]
env = { API_TOKEN = "hush", MODE = "x" }
inherit_env = true
env_passthrough = ["PATH", "HOME"]
cwd = "/tmp"
mode = "shared"
max_processes = 4
idle_timeout = 0
spawn_rate = 2
shutdown_grace = 1
max_line_bytes = 65536
connect_timeout = 3

[[routes]]
path = "/gw"
backend = "weather"

[[routes]]
path = "/all/"
backends = ["weather", "legacy", "fs"]
namespacing = "always"
separator = "__"
uri_scheme = "gw"
server_name = "All"
server_version = "2.0"
instructions = "Use the tools."
fail_mode = "closed"
list_cache = "shared"
list_cache_ttl = 60
session_key = "0303030303030303030303030303030303030303030303030303030303030303"
max_age = 0

[[routes]]
path = "/files"
backend = "fs"
sse_path = "/files-sse"
messages_path = "/files-msg"

[[routes]]
path = "/old"
backends = ["legacy"]
sse_path = ""
messages_path = ""

[auth]
mode = "optional"
public_url = "https://gw.example/"
authorization_servers = ["https://as.example"]
scopes_supported = ["read write", "admin"]
required_scopes = ["read"]
audiences = ["aud1"]
resource_name = "Gateway"
resource_documentation = "https://docs.example/gw"
forward_credentials = false
bind_sessions = false
max_sessions = 500

[auth.jwt]
issuer = ["https://as.example", "https://as2.example"]
algorithms = ["HS256", "HS384", "RS256"]
jwks_url = "https://as.example/jwks"
jwks_refresh_seconds = 120
jwks_min_refresh_seconds = 0
jwks_timeout_seconds = 2
jwks_max_bytes = 65536
leeway_seconds = 5
required_claims = ["exp", "aud"]
subject_claim = "uid"
scope_claims = "perm"
cache_size = 0
cache_seconds = 60

[[auth.jwt.keys]]
kid = "k1"
secret = "ssssssssssssssssssssssssssssssssssssssssssssssss"
algorithms = ["HS256"]

[[auth.jwt.keys]]
kid = "k2"
jwk = { kty = "oct", k = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0" }

[auth.api_keys]
header = "X-Key"
bearer = false
[[auth.api_keys.keys]]
sha256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
subject = "svc"
scopes = "read admin"
attributes = { team = "ops", regions = ["eu", "us"] }

[auth.routes."/all/"]
mode = "required"
required_scopes = ["admin"]
[auth.routes."/files"]
mode = "OFF"

[authz]
default = "allow"
hide_denied = true
deny_status = 404
open_methods = ["initialize", "ping"]
[[authz.rules]]
id = "r1"
effect = "deny"
subjects = "bad*"
kinds = ["jwt", "apikey"]
claims = { groups = ["a", "b"], admin = true, level = 3 }
scopes = ["read"]
attributes = { team = "ops" }
client_ips = ["10.0.0.0/8", "::1"]
methods = ["tools/*"]
names = ["x*"]
tools = ["rm"]
prompts = ["p"]
resources = ["file:///*"]
backends = ["fs"]
[[authz.rules]]
effect = "allow"
require_scopes = ["write"]

[ratelimit]
max_keys = 5000
[[ratelimit.limits]]
id = "per-user"
key = ["principal", "tool"]
rate = 2
burst = 10
methods = ["tools/call"]
tools = ["search*"]
backends = ["weather"]
[[ratelimit.limits]]
key = "ip"
per_minute = 30

[audit]
sink = "/var/log/audit.jsonl"
max_events_per_second = 0

[cors]
allow_origins = ["https://App.example/", "http://localhost:*"]
allow_headers = ["Content-Type", "X-Custom"]
expose_headers = []
max_age = 3600
allow_credentials = true
"""

RICH_EFFECTIVE = {"backends": {"fs": {"args": ["-m", "server", "--root", "/tmp"],
                     "command": "/usr/bin/python3",
                     "connect_timeout": 3.0,
                     "cwd": "/tmp",
                     "env": {"API_TOKEN": "<redacted>", "MODE": "<redacted>"},
                     "env_passthrough": ["PATH", "HOME"],
                     "idle_timeout": 0.0,
                     "inherit_env": True,
                     "max_line_bytes": 65536,
                     "max_processes": 4,
                     "mode": "shared",
                     "poll_after": 0.0,
                     "response_timeout": None,
                     "resume_buffer": 8388608,
                     "shutdown_grace": 1.0,
                     "spawn_rate": 2.0,
                     "transport": "stdio"},
              "legacy": {"ca_file": None,
                         "client_cert": None,
                         "client_key": None,
                         "connect_timeout": None,
                         "headers": {"X-A": "<redacted>"},
                         "max_connections": 1024,
                         "max_streams": 1024,
                         "pool_idle_timeout": 30.0,
                         "poll_after": 0.0,
                         "pool_size": 64,
                         "response_timeout": None,
                         "resume_buffer": 8388608,
                         "tls_verify": True,
                         "transport": "sse",
                         "url": "http://127.0.0.1:7001/sse"},
              "weather": {"ca_file": "/etc/ssl/ca.pem",
                          "client_cert": "/etc/ssl/c.pem",
                          "client_key": "/etc/ssl/c.key",
                          "connect_timeout": 1.5,
                          "forward_credentials": True,
                          "headers": {"Authorization": "<redacted>", "X-Tenant": "<redacted>"},
                          "max_connections": 32,
                          "max_streams": 16,
                          "pool_idle_timeout": 12.0,
                          "pool_size": 8,
                          "response_timeout": 9.0,
                          "tls_verify": False,
                          "transport": "http",
                          "url": "https://weather.example:8443/mcp?api_key=<redacted>&x=<redacted>"}},
 "cors": {"allow_credentials": True,
          "allow_headers": ["Content-Type", "X-Custom"],
          "allow_origins": ["https://app.example", "http://localhost:*"],
          "expose_headers": [],
          "max_age": 3600},
 "limits": {"max_body_bytes": 1048576,
            "max_connections": 500,
            "max_connections_per_address": 50,
            "max_header_bytes": 32768,
            "max_headers": 64,
            "max_sessions": 1000,
            "max_sse_event_bytes": 2097152,
            "max_streams_per_address": 5,
            "max_streams_per_principal": 10,
            "max_streams_per_session": 2,
            "max_target_bytes": 4096},
 "log": {"access_log": "off", "format": "text", "level": "warning"},
 "policy": {"audit": {"max_events_per_second": 0, "sink": "/var/log/audit.jsonl"},
            "auth": {"api_keys": {"bearer": False,
                                  "header": "x-key",
                                  "keys": [{"attributes": [["team", "ops"], ["regions", ["eu", "us"]]],
                                            "scopes": ["admin", "read"],
                                            "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                            "subject": "svc"}]},
                     "audiences": ["aud1"],
                     "authorization_servers": ["https://as.example"],
                     "bind_sessions": False,
                     "forward_credentials": False,
                     "jwt": {"algorithms": ["HS256", "HS384", "RS256"],
                             "cache_seconds": 60.0,
                             "cache_size": 0,
                             "issuers": ["https://as.example", "https://as2.example"],
                             "jwks_max_bytes": 65536,
                             "jwks_min_refresh_seconds": 0.0,
                             "jwks_refresh_seconds": 120.0,
                             "jwks_timeout_seconds": 2.0,
                             "jwks_url": "https://as.example/jwks",
                             "keys": [{"algorithms": ["HS256"], "key": "<redacted>", "kid": "k1"},
                                      {"algorithms": ["HS256"], "key": "<redacted>", "kid": "k2"}],
                             "leeway_seconds": 5.0,
                             "required_claims": ["exp", "aud"],
                             "scope_claims": ["perm"],
                             "subject_claim": "uid"},
                     "max_sessions": 500,
                     "mode": "optional",
                     "public_url": "https://gw.example",
                     "required_scopes": ["read"],
                     "resource_documentation": "https://docs.example/gw",
                     "resource_name": "Gateway",
                     "routes": [{"mode": "required", "path": "/all", "required_scopes": ["admin"]},
                                {"mode": "off", "path": "/files", "required_scopes": None}],
                     "scopes_supported": ["read", "write", "admin"]},
            "authz": {"default": "allow",
                      "deny_status": 404,
                      "enabled": True,
                      "hide_denied": True,
                      "open_methods": ["initialize", "ping"],
                      "rules": [{"attributes": [["team", ["ops"]]],
                                 "backends": ["fs"],
                                 "claims": [["groups", ["a", "b"]], ["admin", ["true"]], ["level", ["3"]]],
                                 "client_ips": ["10.0.0.0/8", "::1/128"],
                                 "effect": "deny",
                                 "id": "r1",
                                 "kinds": ["jwt", "apikey"],
                                 "methods": ["tools/*"],
                                 "names": ["x*"],
                                 "prompts": ["p"],
                                 "require_scopes": [],
                                 "resources": ["file:///*"],
                                 "scopes": ["read"],
                                 "subjects": ["bad*"],
                                 "tools": ["rm"]},
                                {"attributes": [],
                                 "backends": None,
                                 "claims": [],
                                 "client_ips": None,
                                 "effect": "allow",
                                 "id": "rule-1",
                                 "kinds": None,
                                 "methods": None,
                                 "names": None,
                                 "prompts": None,
                                 "require_scopes": ["write"],
                                 "resources": None,
                                 "scopes": [],
                                 "subjects": None,
                                 "tools": None}]},
            "ratelimit": {"limits": [{"backends": ["weather"],
                                      "burst": 10.0,
                                      "id": "per-user",
                                      "key": ["principal", "tool"],
                                      "methods": ["tools/call"],
                                      "rate": 2.0,
                                      "tools": ["search*"]},
                                     {"backends": None,
                                      "burst": 1.0,
                                      "id": "limit-1",
                                      "key": ["ip"],
                                      "methods": None,
                                      "rate": 0.5,
                                      "tools": None}],
                          "max_keys": 5000}},
 "routes": [{"backends": ["weather"], "messages_path": "/messages", "path": "/gw", "sse_path": "/sse"},
            {"backends": ["weather", "legacy", "fs"],
             "messages_path": "/all/messages",
             "mux": {"ephemeral_key": False,
                     "fail_mode": "closed",
                     "instructions": "Use the tools.",
                     "list_cache": "shared",
                     "list_cache_ttl": 60.0,
                     "max_age": 0.0,
                     "namespacing": "always",
                     "old_keys": ["<redacted>"],
                     "separator": "__",
                     "server_name": "All",
                     "server_version": "2.0",
                     "session_key": "<redacted>",
                     "uri_scheme": "gw"},
             "path": "/all",
             "sse_path": "/all/sse"},
            {"backends": ["fs"],
             "messages_path": "/files-msg",
             "mux": {"ephemeral_key": False,
                     "fail_mode": "open",
                     "instructions": None,
                     "list_cache": "session",
                     "list_cache_ttl": 300.0,
                     "max_age": 7200.0,
                     "namespacing": "multi",
                     "old_keys": ["<redacted>"],
                     "separator": "__",
                     "server_name": "mcpfast",
                     "server_version": "0.1.0",
                     "session_key": "<redacted>",
                     "uri_scheme": "mcpfast"},
             "path": "/files",
             "sse_path": "/files-sse"},
            {"backends": ["legacy"],
             "messages_path": "",
             "mux": {"ephemeral_key": False,
                     "fail_mode": "open",
                     "instructions": None,
                     "list_cache": "session",
                     "list_cache_ttl": 300.0,
                     "max_age": 7200.0,
                     "namespacing": "multi",
                     "old_keys": ["<redacted>"],
                     "separator": "__",
                     "server_name": "mcpfast",
                     "server_version": "0.1.0",
                     "session_key": "<redacted>",
                     "uri_scheme": "mcpfast"},
             "path": "/old",
             "sse_path": ""}],
 "server": {"admin_listen": "127.0.0.1:9101",
            "allowed_hosts": ["gw.example:8443", "127.0.0.1", "[::1]:9100"],
            "allowed_origins": ["https://app.example", "http://localhost:*", "*"],
            "backlog": 512,
            "forwarded_headers": False,
            "listen": "[::1]:9100",
            "mcp_path": "/gw",
            "workers": 2},
 "session_key_ephemeral": False,
 "session_keys": ["<redacted>", "<redacted>"],
 "timeouts": {"body_read": 10.0,
              "client_write": 15.0,
              "drain": 3.0,
              "header_read": 5.0,
              "idle": 30.5,
              "session_idle": 600.0,
              "upstream_connect": 2.0,
              "upstream_response": 20.0}}
