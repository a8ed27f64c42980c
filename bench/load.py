"""Whole-gateway load harness: one backend, measured directly and through mcpfast in the same run.

Theory of operation.  The harness starts ``bench/fast_backend.py`` (the baseline: a
minimal uvloop MCP server), then for each *target* — ``direct`` (the backend itself)
and each selected gateway *variant* (a named command line that starts a gateway in
front of that backend) — it:

1. opens an MCP session the way a client does (``initialize``,
   ``notifications/initialized``, ``tools/list``) and keeps the ``Mcp-Session-Id`` and
   the tool names the target exposes (a multiplexing gateway may namespace them);
2. per scenario, sends one checked request (status, content type, id echoed back)
   — the load generator counts answers but does not read them;
3. runs a short warm-up, then the measured closed-loop load: N keep-alive
   connections, each writes one ``tools/call`` and reads the whole answer before the
   next (MCP clients do not pipeline); ids are unique within the run;
4. samples the CPU time of the backend and the gateway (``/proc``) around the
   measured run, so cost per request can be read beside throughput.

The load generator is ``wrk`` (Debian package; installed with apt-get when missing
and we are root) driven by a generated Lua script, or ``bench/loadgen.py`` (uvloop,
own process) as the fallback; see ``bench/README.md`` for why wrk is the default.
The machine has 2 cores shared by generator, backend and gateway, so absolute numbers
are only comparable inside one run: that is why the baseline is always measured
beside the gateway.

Every process started here is ended by its PID in a ``finally`` block.  Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
MCP_PATH = "/mcp"
PROTOCOL_VERSION = "2025-06-18"


# --- what is measured ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str  # short id used on the command line and in JSON
    title: str  # row label in the table
    tool: str  # backend tool name (before any namespacing by a gateway); "" for a list
    connections: int
    sse: bool = False  # answer is text/event-stream
    bulk: bool = False  # report bytes/s
    method: str = "tools/call"  # or "tools/list" (sent without params)
    # A named route of the target ("" = its MCP path).  A variant maps names to paths
    # (``GatewayVariant.paths``); a target without that name serves it at its MCP path.
    route: str = ""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("json-c1", "tools/call JSON, 1 conn", "echo", 1),
    Scenario("json-c32", "tools/call JSON, 32 conn", "echo", 32),
    Scenario("sse-c1", "tools/call SSE, 1 conn", "echo_sse", 1, sse=True),
    Scenario("sse-c32", "tools/call SSE, 32 conn", "echo_sse", 32, sse=True),
    Scenario("blob-c1", "1 MB result, 1 conn", "blob", 1, bulk=True),
    # tools/list: a multiplexed target merges every backend's list; "list-c32" is served
    # from its list cache, "list-nocache-c32" from a route with list_cache = "off" (every
    # request asks every backend).  Direct and passthrough targets answer both alike.
    Scenario("list-c32", "tools/list, 32 conn (list cache on)", "", 32, method="tools/list"),
    Scenario("list-nocache-c32", "tools/list, 32 conn (list cache off)", "", 32, method="tools/list", route="nocache"),
)


# --- gateway variants -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GatewayVariant:
    """A named way to start a gateway in front of the bench backend.

    ``argv`` items are formatted with ``python`` (this interpreter), ``port`` (the
    gateway's listen port, chosen here), ``backend_url`` (``http://127.0.0.1:P/mcp``),
    ``backend_url2``, ``backend_url3`` (further bench backends, started when some
    selected variant has ``backends`` > 1), ``backend_port``, ``bench_dir``, ``repo``
    and ``config`` (the path of ``config_toml`` written to a temporary file, itself
    formatted with the same values plus ``session_key``, 64 fresh hex digits).  ``env``
    is added to the environment.  Variants with ``default=False`` run only when named
    with ``--variants``.
    """

    name: str
    argv: tuple[str, ...]
    description: str = ""
    env: tuple[tuple[str, str], ...] = ()
    default: bool = True
    # Sent with every request to this target (e.g. credentials); values are formatted
    # like argv items, plus ``{bench_token}`` (a JWT ``policy-on.toml`` accepts).
    headers: tuple[tuple[str, str], ...] = ()
    backends: int = 1  # bench backends this variant is put in front of
    config_toml: str = ""  # written to a temp file, its path given as {config}
    paths: tuple[tuple[str, str], ...] = ()  # Scenario.route name -> request path
    # Tool names exposed by several backends (all bench backends offer the same tools):
    # use the one whose namespace prefix is this, i.e. route tools/call to this backend.
    prefer_prefix: str = ""
    # Compare with this variant's figures of the same run (table "X vs baseline").
    baseline: str = ""


_MCPFAST_SERVE = (
    "{python}", "-m", "mcpfast", "serve",
    "--listen", "127.0.0.1:{port}",
    "--backend", "bench={backend_url}",
    "--log-level", "warning",
)  # fmt: skip

# One virtual server over three bench backends: tools are exposed as
# b1__echo, b2__echo, b3__echo; the harness calls b2's.  Two routes over the same
# backends so that one gateway serves the cached and the uncached tools/list.
_MUX_TOML = """
[backends.b1]
url = "{backend_url}"
[backends.b2]
url = "{backend_url2}"
[backends.b3]
url = "{backend_url3}"

[[routes]]
path = "/mcp"
backends = ["b1", "b2", "b3"]
session_key = "{session_key}"

[[routes]]
path = "/mcp-nocache"
backends = ["b1", "b2", "b3"]
list_cache = "off"
session_key = "{session_key}"
"""

# To add a variant, append a GatewayVariant here; a multiplexed gateway may namespace
# tool names: the harness finds them by tools/list.
GATEWAY_VARIANTS: list[GatewayVariant] = [
    GatewayVariant("mcpfast", _MCPFAST_SERVE, "mcpfast serve, one backend, default settings"),
    GatewayVariant(
        "policy-on",
        _MCPFAST_SERVE + ("--config", "{bench_dir}/policy-on.toml"),
        "mcpfast serve + policy: JWT (cached), 50 authz rules, a rate limit not hit, metrics, access log",
        headers=(("authorization", "Bearer {bench_token}"),),
    ),
    GatewayVariant(
        "multiplexed",
        ("{python}", "-m", "mcpfast", "serve", "--listen", "127.0.0.1:{port}", "--config", "{config}",
         "--log-level", "warning"),
        "mcpfast serve, one multiplexed route over 3 backends (namespaced; tools/call routed to b2)",
        default=False,
        backends=3,
        config_toml=_MUX_TOML,
        paths=(("nocache", "/mcp-nocache"),),
        prefer_prefix="b2",
        baseline="mcpfast",
    ),
]
# Target for routed tools/call through a multiplexed variant: at least this share of
# single-backend passthrough requests/s.
MUX_TARGET_RATIO = 0.85


def bench_token() -> str:
    """A JWT that ``bench/policy-on.toml`` accepts, valid for a day."""
    import jwt

    now = int(time.time())
    claims = {"sub": "bench-client", "iss": "https://issuer.bench.invalid", "aud": "https://gateway.bench.invalid/mcp",
              "iat": now, "exp": now + 86400, "groups": ["bench"]}  # fmt: skip
    return jwt.encode(claims, "bench-secret-" + "0" * 51, algorithm="HS256", headers={"kid": "bench"})


def _format_argv(variant: GatewayVariant, **values) -> list[str]:
    return [a.format(**values) for a in variant.argv]


# --- processes ------------------------------------------------------------------
class Proc:
    """A child process we started, its output captured in files (no pipe can fill up)."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, cwd: Path = REPO):
        self.name = name
        self.argv = argv
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            argv, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL, env=env, cwd=str(cwd),
            start_new_session=True,  # a terminal ^C reaches only us; we end the child in finally
        )
        self.pid = self.p.pid

    def output(self, which: str = "err", tail: int = 2000) -> str:
        f = self.err if which == "err" else self.out
        f.seek(0)
        data = f.read()
        return data[-tail:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.out.close()
        self.err.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_backend() -> tuple[Proc, int]:
    proc = Proc("backend", [sys.executable, str(HERE / "fast_backend.py"), "--port", "0"])
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            if proc.p.poll() is not None:
                raise RuntimeError(f"fast_backend exited with {proc.p.returncode}:\n{proc.output()}")
            line = proc.output("out", 200).strip()
            if line.startswith("READY "):
                return proc, int(line.split()[1])
            time.sleep(0.05)
        raise RuntimeError("fast_backend did not print READY within 15 s")
    except BaseException:
        proc.stop()
        raise


class GatewayStartError(RuntimeError):
    pass


def start_gateway(variant: GatewayVariant, backend_ports: list[int], timeout: float, tmpdir: str) -> tuple[Proc, int]:
    port = _free_port()
    if len(backend_ports) < variant.backends:
        raise GatewayStartError(f"gateway variant {variant.name!r} needs {variant.backends} backends")
    urls = [f"http://{HOST}:{p}{MCP_PATH}" for p in backend_ports]
    values = {
        "python": sys.executable, "port": port, "backend_port": backend_ports[0], "backend_url": urls[0],
        "backend_url2": urls[1] if len(urls) > 1 else "", "backend_url3": urls[2] if len(urls) > 2 else "",
        "bench_dir": str(HERE), "repo": str(REPO), "config": "",
    }  # fmt: skip
    if variant.config_toml:
        values["config"] = os.path.join(tmpdir, f"{variant.name}.toml")
        with open(values["config"], "w") as f:
            f.write(variant.config_toml.format(session_key=os.urandom(32).hex(), **values))
    argv = _format_argv(variant, **values)
    env = dict(os.environ)
    env.update(dict(variant.env))
    try:
        proc = Proc(variant.name, argv, env=env)
    except OSError as exc:
        raise GatewayStartError(f"gateway variant {variant.name!r}: cannot execute {shlex.join(argv)}: {exc}")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            rc = proc.p.poll()
            if rc is not None:
                raise GatewayStartError(
                    f"gateway variant {variant.name!r} exited with code {rc} before accepting connections.\n"
                    f"  command: {shlex.join(argv)}\n  stderr (tail):\n"
                    + _indent(proc.output() or "(empty)")
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return proc, port
            except OSError:
                time.sleep(0.05)
        raise GatewayStartError(
            f"gateway variant {variant.name!r} did not accept connections on {HOST}:{port} within {timeout:.0f} s.\n"
            f"  command: {shlex.join(argv)}\n  stderr (tail):\n" + _indent(proc.output() or "(empty)")
        )
    except BaseException:
        proc.stop()
        raise


def _indent(text: str) -> str:
    return "".join("    " + line + "\n" for line in text.rstrip().splitlines())


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_tree_cpu(root_pid: int) -> float:
    """CPU seconds (user+system) of ``root_pid`` and its live descendants."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    total, todo, seen = 0.0, [root_pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


# --- MCP client bits (setup and checks only; never on the measured path) -----------
class CheckError(RuntimeError):
    pass


def _post(port: int, body: dict, headers: dict[str, str], timeout: float = 10.0, path: str = MCP_PATH):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream", **headers}
        conn.request("POST", path, body=json.dumps(body).encode(), headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _jsonrpc_from(headers: dict, data: bytes) -> dict:
    ctype = headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        # The response is the last `message` event's data (MCP Streamable HTTP; HTML SSE §9.2).
        msgs, buf = [], []
        for line in data.decode("utf-8").splitlines() + [""]:
            if line == "":
                if buf:
                    msgs.append("\n".join(buf))
                buf = []
            elif line.startswith("data:"):
                buf.append(line[5:].removeprefix(" "))
        if not msgs:
            raise CheckError("SSE answer carried no data event")
        return json.loads(msgs[-1])
    if ctype.startswith("application/json"):
        return json.loads(data)
    raise CheckError(f"unexpected content-type {ctype!r}")


@dataclasses.dataclass
class Session:
    headers: dict[str, str]  # sent on every measured request
    tools: dict[str, str]  # backend tool name -> name as exposed by the target
    path: str = MCP_PATH
    listed: int = 0  # how many tools the target's tools/list named


def open_session(port: int, extra: dict[str, str] | None = None, path: str = MCP_PATH,
                 prefer_prefix: str = "") -> Session:  # fmt: skip
    status, headers, data = _post(port, {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "mcpfast-bench", "version": "0.1"}},
    }, dict(extra or {}), path=path)  # fmt: skip
    if status != 200:
        raise CheckError(f"initialize answered HTTP {status}: {data[:300]!r}")
    init = _jsonrpc_from(headers, data)
    if "result" not in init:
        raise CheckError(f"initialize failed: {init}")
    h = {**(extra or {}), "mcp-protocol-version": init["result"].get("protocolVersion", PROTOCOL_VERSION)}
    if "mcp-session-id" in headers:
        h["mcp-session-id"] = headers["mcp-session-id"]
    status, _, data = _post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h, path=path)
    if status not in (200, 202, 204):
        raise CheckError(f"notifications/initialized answered HTTP {status}: {data[:300]!r}")
    tools = {s.tool: s.tool for s in SCENARIOS if s.tool}
    listed: list[str] = []
    status, rh, data = _post(port, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, h, path=path)
    if status == 200:
        listed = [t["name"] for t in _jsonrpc_from(rh, data).get("result", {}).get("tools", [])]
        for want in tools:
            if want in listed:
                continue
            # A namespacing gateway exposes e.g. "bench.echo" / "bench__echo": same tail.
            cands = [n for n in listed if n.endswith(want) and not n[-len(want) - 1].isalnum()]
            if len(cands) > 1 and prefer_prefix:
                # Several backends offer it (a multiplexed route): take the preferred one's.
                cands = [n for n in cands if n.startswith(prefer_prefix) and not n[len(prefer_prefix)].isalnum()]
            if len(cands) == 1:
                tools[want] = cands[0]
    return Session(h, tools, path, len(listed))


def check_scenario(port: int, session: Session, sc: Scenario) -> None:
    rid = 424242
    msg: dict = {"jsonrpc": "2.0", "id": rid, "method": sc.method}
    if sc.method == "tools/call":
        msg["params"] = {"name": session.tools[sc.tool], "arguments": {"text": "hello"}}
    status, headers, data = _post(port, msg, session.headers, timeout=30, path=session.path)
    if status != 200:
        raise CheckError(f"{sc.key}: HTTP {status}: {data[:300]!r}")
    want = "text/event-stream" if sc.sse else "application/json"
    if not headers.get("content-type", "").startswith(want):
        raise CheckError(f"{sc.key}: content-type {headers.get('content-type')!r}, expected {want}")
    msg = _jsonrpc_from(headers, data)
    if msg.get("id") != rid or "result" not in msg:
        raise CheckError(f"{sc.key}: answer does not carry id {rid} and a result: {str(msg)[:300]}")
    if sc.bulk and len(data) < 1_000_000:
        raise CheckError(f"{sc.key}: expected a ~1 MB answer, got {len(data)} bytes")
    if sc.method == "tools/list":
        n = len(msg["result"].get("tools") or ())
        if n < 3:
            raise CheckError(f"{sc.key}: tools/list named {n} tools, expected the bench backend's 3 (or more)")


# --- load generators --------------------------------------------------------------
_WRK_LUA = r"""
-- generated by bench/load.py: closed-loop MCP requests, unique ids, results as JSON
local OUT = "%(out)s"
local MAXR = %(max_requests)d
local pre = '{"jsonrpc":"2.0","id":'
local post = '%(post)s'
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.headers["content-type"] = "application/json"
wrk.headers["accept"] = "application/json, text/event-stream"
%(headers)s
local threads = {}
local counter = 0
local base = 0
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  base = (wrk.thread:get("tid") or 1) * 1000000000
end
-- A response() function would make wrk hand every body to Lua: none is defined.
function request()
  counter = counter + 1
  if counter > MAXR then wrk.thread:stop() end
  return wrk.format(nil, nil, nil, pre .. (base + counter) .. post)
end
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(OUT, "w")
  f:write(string.format('{"requests":%%d,"duration_us":%%d,"bytes":%%d,"p50_us":%%d,"p90_us":%%d,' ..
    '"p99_us":%%d,"max_us":%%d,"mean_us":%%f,"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
  f:close()
end
"""


def _lua_str(s: str) -> str:
    if any(c in s for c in "\"'\\\r\n") or not s.isprintable():
        raise ValueError(f"refusing to put {s!r} into a Lua string")
    return s


def _body_tail(method: str, tool: str) -> str:
    """The request body after the id (the generators put a unique id in front)."""
    if method == "tools/call":
        return f',"method":"tools/call","params":{{"name":"{_lua_str(tool)}","arguments":{{"text":"hello"}}}}}}'
    return f',"method":"{_lua_str(method)}"}}'


def run_wrk(port: int, path: str, method: str, tool: str, headers: dict, connections: int, duration: float,
            max_requests: int) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mcpfast-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        script = os.path.join(tmp, "mcp.lua")
        hdr_lines = "\n".join(f'wrk.headers["{_lua_str(k)}"] = "{_lua_str(v)}"' for k, v in headers.items())
        with open(script, "w") as f:
            f.write(_WRK_LUA % {
                "out": out, "max_requests": max_requests, "post": _body_tail(method, tool), "path": _lua_str(path),
                "headers": hdr_lines,
            })  # fmt: skip
        secs = max(1, round(duration))  # wrk takes whole seconds
        # One thread: on 2 shared cores a second generator thread only steals from the measured processes.
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", script,
                f"http://{HOST}:{port}{path}"]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
        if r.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        with open(out) as f:
            res = json.load(f)
    dur = res.pop("duration_us") / 1e6
    res.update(
        generator="wrk", connections=connections, duration_s=dur,
        rps=res["requests"] / dur, bytes_per_s=res["bytes"] / dur, capped=res["requests"] >= max_requests,
    )  # fmt: skip
    return res


def run_pygen(port: int, path: str, method: str, tool: str, headers: dict, connections: int, duration: float,
              max_requests: int) -> dict:  # fmt: skip
    argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--path", path, "--method", method,
            "--tool", tool or "-", "-c", str(connections), "-d", str(duration),
            "--max-requests", str(max_requests)]  # fmt: skip
    for k, v in headers.items():
        argv += ["--header", f"{k}: {v}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen.py failed ({r.returncode}): {r.stderr.strip()[-1000:]}")
    res = json.loads(r.stdout)
    res["capped"] = res["requests"] >= max_requests
    return res


def ensure_wrk(allow_install: bool) -> bool:
    if shutil.which("wrk"):
        return True
    if not allow_install:
        return False
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print("[bench] wrk not found: installing the Debian package (apt-get install -y wrk) ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-qq", "wrk"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "wrk"]):  # fmt: skip
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if cmd[1] == "install" and shutil.which("wrk"):
            return True
    return bool(shutil.which("wrk"))


def _loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


# --- one target ----------------------------------------------------------------------
def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (gateway workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


@contextlib.contextmanager
def _pinned(cpu: int | None, procs: list):
    """Run the block with the harness (hence the load generator it starts), the backend
    and the gateway all on one CPU; restore their affinity afterwards.  ``cpu`` None:
    no change."""
    if cpu is None:
        yield
        return
    saved: dict[int, set] = {}
    pids = [0] + [q for pr in procs if pr is not None for q in _tree_pids(pr.pid)]
    try:
        for pid in pids:
            try:
                saved[pid] = os.sched_getaffinity(pid)
                os.sched_setaffinity(pid, {cpu})
            except OSError:
                pass
        yield
    finally:
        for pid, cpus in saved.items():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass


def measure_target(name, port, scenarios, gen, args, backends: list[Proc], gateway: Proc | None, extra=None,
                   variant: GatewayVariant | None = None) -> dict:  # fmt: skip
    """Measure every scenario against one target.  ``backends`` are the bench backends
    behind it (their CPU is summed); ``variant`` gives route paths and tool choice."""
    results: dict[str, dict] = {}
    paths = dict(variant.paths) if variant else {}
    prefer = variant.prefer_prefix if variant else ""
    sessions: dict[str, Session] = {}  # one MCP session per request path
    for sc in scenarios:
        path = paths.get(sc.route, MCP_PATH)
        if path not in sessions:
            try:
                sessions[path] = open_session(port, extra, path, prefer)
            except (CheckError, OSError, ValueError) as exc:
                msg = f"[bench] {name}: MCP session setup on {path} failed: {exc}"
                print(msg, file=sys.stderr)
                return {s.key: {"error": msg} for s in scenarios}
        session = sessions[path]
        tool = session.tools.get(sc.tool, "")
        try:
            check_scenario(port, session, sc)
            pin = args.pin_single_conn if sc.connections == 1 else None
            with _pinned(pin, [*backends, gateway]):
                if args.warmup > 0:
                    gen(port, path, sc.method, tool, session.headers, sc.connections, args.warmup, args.max_requests)
                b0 = sum(_proc_tree_cpu(b.pid) for b in backends)
                g0 = _proc_tree_cpu(gateway.pid) if gateway else 0.0
                res = gen(port, path, sc.method, tool, session.headers, sc.connections, args.duration,
                          args.max_requests)  # fmt: skip
                b1 = sum(_proc_tree_cpu(b.pid) for b in backends)
                g1 = _proc_tree_cpu(gateway.pid) if gateway else 0.0
            res["pinned_cpu"] = pin
            res["path"] = path
            if sc.method == "tools/call":
                res["tool"] = tool
            else:
                res["tools_listed"] = session.listed
        except (CheckError, RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            msg = f"[bench] {name} / {sc.key}: {exc}"
            print(msg, file=sys.stderr)
            results[sc.key] = {"error": msg}
            continue
        n = max(res["requests"], 1)
        res["backend_cpu_us_per_req"] = (b1 - b0) / n * 1e6
        if gateway:
            res["gateway_cpu_us_per_req"] = (g1 - g0) / n * 1e6
        errs = sum(res["errors"].values())
        if errs:
            print(f"[bench] {name} / {sc.key}: {errs} errors {res['errors']}", file=sys.stderr)
        if res.get("capped"):
            print(f"[bench] {name} / {sc.key}: hit --max-requests; rate is a lower bound", file=sys.stderr)
        results[sc.key] = res
        print(
            f"[bench] {name:>12} {sc.key:16} {res['rps']:9.0f} req/s  p50 {res['p50_us']:6} µs  "
            f"p99 {res['p99_us']:6} µs  {res['bytes_per_s'] / 1e6:8.1f} MB/s",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    return results


# --- several rounds ----------------------------------------------------------------------
def combine_rounds(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """One record per target and scenario from several rounds: the round with the median
    req/s (so its latencies and CPU belong together), plus every round's req/s in
    ``rps_rounds`` -- ratios are taken round by round, between measurements made minutes
    apart rather than across the whole run.  A scenario that failed in any round is
    reported as failed."""
    out: dict[str, dict] = {}
    for target in rounds[0]:
        out[target] = {}
        for key in rounds[0][target]:
            recs = [r.get(target, {}).get(key) for r in rounds]
            bad = [r for r in recs if not _ok(r)]
            if bad:  # failed, or missing from a round (its gateway did not start)
                out[target][key] = bad[0] or {"error": f"{target} not measured in every round"}
                continue
            if len(rounds) == 1:
                out[target][key] = recs[0]
                continue
            rps = [r["rps"] for r in recs]
            med = sorted(range(len(recs)), key=lambda i: rps[i])[(len(recs) - 1) // 2]
            out[target][key] = {**recs[med], "rps_rounds": rps}
    return out


def _ratio_rounds(t: dict, base: dict) -> list[float]:
    tr, br = t.get("rps_rounds"), base.get("rps_rounds")
    if tr and br and len(tr) == len(br):
        return [a / b for a, b in zip(tr, br)]
    return [t["rps"] / base["rps"]]


def _ratio(t: dict, base: dict) -> float:
    """The median of the per-round ratios (the plain ratio for one round)."""
    rs = sorted(_ratio_rounds(t, base))
    n = len(rs)
    return rs[n // 2] if n % 2 else (rs[n // 2 - 1] + rs[n // 2]) / 2


def _ratio_cell(t: dict, base: dict) -> str:
    rs = _ratio_rounds(t, base)
    if len(rs) == 1:
        return f"{rs[0]:.2f}"
    return f"{_ratio(t, base):.2f} ({min(rs):.2f}–{max(rs):.2f})"


# --- report -----------------------------------------------------------------------------
def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def _errnote(r: dict) -> str:
    n = sum(r["errors"].values())
    return f" ⚠{n} err" if n else ""


def table_direct(scenarios, direct: dict) -> str:
    rows = ["| scenario | req/s | p50 µs | p99 µs | MB/s | backend CPU µs/req |", "|---|---:|---:|---:|---:|---:|"]
    for sc in scenarios:
        r = direct.get(sc.key)
        if not _ok(r):
            rows.append(f"| {sc.title} | failed | | | | |")
            continue
        rows.append(
            f"| {sc.title} | {r['rps']:,.0f}{_errnote(r)} | {r['p50_us']} | {r['p99_us']} | "
            f"{r['bytes_per_s'] / 1e6:,.1f} | {r['backend_cpu_us_per_req']:.1f} |"
        )
    return "\n".join(rows)


def table_compare(scenarios, direct: dict, through: dict, variant: str) -> str:
    rows = [
        f"| scenario | direct req/s | {variant} req/s | ratio | direct p50/p99 µs | {variant} p50/p99 µs "
        "| added p50 µs | gateway CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bulk_lines = []
    for sc in scenarios:
        d, t = direct.get(sc.key), through.get(sc.key)
        if not (_ok(d) and _ok(t)):
            why = "direct failed" if not _ok(d) else "through failed"
            rows.append(f"| {sc.title} | {why} | | | | | | |")
            continue
        rows.append(
            f"| {sc.title} | {d['rps']:,.0f}{_errnote(d)} | {t['rps']:,.0f}{_errnote(t)} | "
            f"{_ratio_cell(t, d)} | {d['p50_us']} / {d['p99_us']} | {t['p50_us']} / {t['p99_us']} | "
            f"{t['p50_us'] - d['p50_us']:+d} | {t.get('gateway_cpu_us_per_req', 0):.1f} |"
        )
        if sc.bulk:
            bulk_lines.append(
                f"{sc.title}: direct {d['bytes_per_s'] / 1e6:,.1f} MB/s, {variant} {t['bytes_per_s'] / 1e6:,.1f} MB/s, "
                f"bytes/s ratio {t['bytes_per_s'] / d['bytes_per_s']:.2f}"
            )
    return "\n".join(rows) + ("\n\n" + "\n".join(bulk_lines) if bulk_lines else "")


def table_vs_baseline(scenarios, base: dict, through: dict, bname: str, vname: str) -> str:
    """One gateway variant against another of the same run, e.g. multiplexed vs
    single-backend passthrough; tools/call rows carry the routed target ratio."""
    rows = [
        f"| scenario | {bname} req/s | {vname} req/s | ratio | {bname} p50/p99 µs | {vname} p50/p99 µs "
        f"| {bname} / {vname} gateway CPU µs/req | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        b, t = base.get(sc.key), through.get(sc.key)
        if not (_ok(b) and _ok(t)):
            rows.append(f"| {sc.title} | {'failed' if not _ok(b) else ''} | {'failed' if not _ok(t) else ''} | | | | | |")
            continue
        ratio = _ratio(t, b)
        target = ""
        if sc.method == "tools/call":
            target = f"≥ {MUX_TARGET_RATIO:.2f}: {'met' if ratio >= MUX_TARGET_RATIO else 'NOT met'}"
        elif "tools_listed" in t:
            target = f"({t['tools_listed']} tools merged vs {b.get('tools_listed', '?')})"
        rows.append(
            f"| {sc.title} | {b['rps']:,.0f}{_errnote(b)} | {t['rps']:,.0f}{_errnote(t)} | {_ratio_cell(t, b)} | "
            f"{b['p50_us']} / {b['p99_us']} | {t['p50_us']} / {t['p99_us']} | "
            f"{b.get('gateway_cpu_us_per_req', 0):.1f} / {t.get('gateway_cpu_us_per_req', 0):.1f} | {target} |"
        )
    return "\n".join(rows)


# --- main ---------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="mcpfast load harness: the bench backend measured directly and through gateway variants",
    )
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="discarded warm-up seconds per scenario (default 1)")
    ap.add_argument("--max-requests", type=int, default=10_000_000, help="request cap per scenario run")
    ap.add_argument("--only", choices=["direct"], help="'direct': measure the backend alone, start no gateway")
    ap.add_argument(
        "--variants", default=None,
        help="comma-separated gateway variants to run, or 'all' (default: the variants marked default; "
        f"known: {', '.join(v.name for v in GATEWAY_VARIANTS)})",
    )  # fmt: skip
    ap.add_argument(
        "--gateway-cmd", default=None,
        help="replace the 'mcpfast' variant's command line (shell words; placeholders {python} {port} "
        "{backend_url} {backend_url2} {backend_url3} {backend_port} {bench_dir} {repo})",
    )  # fmt: skip
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME=CMD",
        help="add a gateway variant from the command line (same placeholders); repeatable; it is run",
    )  # fmt: skip
    ap.add_argument("--scenarios", default=None, help=f"comma-separated subset of: {', '.join(s.key for s in SCENARIOS)}")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                    help="load generator (auto: wrk, installed if missing, else the Python one)")  # fmt: skip
    ap.add_argument("--no-install", action="store_true", help="never run apt-get to install wrk")
    ap.add_argument("--startup-timeout", type=float, default=15.0, help="seconds to wait for a gateway to listen")
    ap.add_argument("--json", metavar="FILE", help="write machine-readable results here")
    ap.add_argument(
        "--pin-single-conn", type=int, metavar="CPU", default=None,
        help="run the 1-connection scenarios with generator, backend and gateway all on this CPU "
             "(isolates the gateway's own latency from cross-CPU wake-ups; same for every target)",
    )  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=1, metavar="N",
        help="measure every target N times, in turn (direct, then each variant, then again); tables show "
             "the median round and the ratios' median and range (default 1)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    scenarios = list(SCENARIOS)
    if args.scenarios:
        want = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = set(want) - {s.key for s in SCENARIOS}
        if unknown:
            ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.key in want]

    variants = {v.name: v for v in GATEWAY_VARIANTS}
    if args.gateway_cmd:
        variants["mcpfast"] = dataclasses.replace(variants["mcpfast"], argv=tuple(shlex.split(args.gateway_cmd)))
    added = []
    for spec in args.variant:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or not cmd:
            ap.error(f"--variant wants NAME=CMD, got {spec!r}")
        nb = 3 if "{backend_url3}" in cmd else 2 if "{backend_url2}" in cmd else 1
        variants[name] = GatewayVariant(name, tuple(shlex.split(cmd)), "from --variant", backends=nb)
        added.append(name)
    if args.only == "direct":
        selected: list[GatewayVariant] = []
    elif args.variants == "all":
        selected = list(variants.values())
    elif args.variants:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        missing = [n for n in names if n not in variants]
        if missing:
            ap.error(f"unknown variant(s): {', '.join(missing)}; known: {', '.join(variants)}")
        selected = [variants[n] for n in names] + [variants[n] for n in added if n not in names]
    else:
        selected = [v for v in variants.values() if v.default and v.name not in added] + [variants[n] for n in added]

    # Generator choice.
    if args.generator == "python":
        gen, gen_name = run_pygen, "python-uvloop (bench/loadgen.py)"
    elif ensure_wrk(allow_install=not args.no_install):
        gen, gen_name = run_wrk, "wrk (1 thread, Lua request generator)"
    elif args.generator == "wrk":
        print("[bench] wrk is not installed and could not be installed", file=sys.stderr)
        return 2
    else:
        _loud(
            "[bench] NOTICE: wrk is not available (and could not be installed with apt-get).\n"
            "[bench] Falling back to the Python load generator bench/loadgen.py: it spends ~2-3x the\n"
            "[bench] user CPU per request of wrk, on cores the measured processes need. Numbers are\n"
            "[bench] comparable only within this run."
        )
        gen, gen_name = run_pygen, "python-uvloop (bench/loadgen.py) [FALLBACK]"

    meta = {
        "generator": gen_name,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "git": _git_rev(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"[bench] generator: {gen_name}; {len(scenarios)} scenarios x {args.duration:g} s "
          f"(+{args.warmup:g} s warm-up); targets: direct{''.join(', ' + v.name for v in selected)}",
          file=sys.stderr, flush=True)  # fmt: skip

    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    backends: list[Proc] = []
    t_start = time.monotonic()
    tmpdir = tempfile.TemporaryDirectory(prefix="mcpfast-bench-cfg-")
    try:
        bports = []
        for _ in range(max([1] + [v.backends for v in selected])):
            b, bp = start_backend()
            backends.append(b)
            bports.append(bp)
        rounds: list[dict[str, dict]] = []
        for rnd in range(args.rounds):
            if args.rounds > 1:
                print(f"[bench] round {rnd + 1} of {args.rounds}", file=sys.stderr, flush=True)
            got: dict[str, dict] = {}
            # direct: the first backend alone (a list is that one backend's list).
            got["direct"] = measure_target("direct", bports[0], scenarios, gen, args, backends[:1], None)
            for variant in selected:
                if variant.name in failures:
                    continue
                gw = None
                try:
                    gw, gport = start_gateway(variant, bports, args.startup_timeout, tmpdir.name)
                    extra = {k: v.format(bench_token=bench_token()) for k, v in variant.headers}
                    got[variant.name] = measure_target(variant.name, gport, scenarios, gen, args,
                                                       backends[:variant.backends], gw, extra, variant)  # fmt: skip
                    if gw.p.poll() is not None:
                        print(f"[bench] gateway {variant.name!r} died during the run (code {gw.p.returncode}):\n"
                              + _indent(gw.output()), file=sys.stderr)  # fmt: skip
                except GatewayStartError as exc:
                    failures[variant.name] = str(exc)
                    print(f"\n[bench] ERROR: {exc}", file=sys.stderr, flush=True)
                finally:
                    if gw is not None:
                        gw.stop()
            rounds.append(got)
        results = combine_rounds(rounds)
    finally:
        for b in backends:
            b.stop()
        tmpdir.cleanup()

    # Report.
    out = [f"\n## mcpfast load harness — {meta['time']}\n",
           f"generator: {gen_name}; {args.duration:g} s per scenario after {args.warmup:g} s warm-up; "
           f"{meta['cpus']} CPUs shared by generator, backend and gateway; git {meta['git']}\n"]  # fmt: skip
    if args.pin_single_conn is not None:
        out.append(f"1-connection scenarios: generator, backend and gateway all pinned to CPU {args.pin_single_conn} "
                   "(every target alike); the others unpinned.\n")  # fmt: skip
    out.append("### direct (bench/fast_backend.py)\n")
    out.append(table_direct(scenarios, results.get("direct", {})))
    for variant in selected:
        out.append(f"\n### direct vs {variant.name} — {variant.description}\n")
        if variant.name in failures:
            out.append(f"**not measured**: gateway failed to start.\n\n```\n{failures[variant.name]}\n```")
        else:
            out.append(table_compare(scenarios, results.get("direct", {}), results.get(variant.name, {}),
                                     variant.name))  # fmt: skip
    for variant in selected:
        base = variant.baseline
        if base and base in results and variant.name in results:
            out.append(f"\n### {variant.name} vs {base} (same run)\n")
            out.append(table_vs_baseline(scenarios, results[base], results[variant.name], base, variant.name))
    out.append(f"\n(total wall time {time.monotonic() - t_start:.0f} s)")
    print("\n".join(out))

    if args.json:
        doc = {"meta": meta, "scenarios": [dataclasses.asdict(s) for s in scenarios],
               "variants": {v.name: {"argv": list(v.argv), "env": dict(v.env), "description": v.description}
                            for v in selected},
               "results": results, "failures": failures}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"[bench] JSON results written to {args.json}", file=sys.stderr)

    any_failed = bool(failures) or any(
        not _ok(r) for target in results.values() for r in target.values()
    )
    return 1 if any_failed else 0


def _git_rev() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=5)  # fmt: skip
        return r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
