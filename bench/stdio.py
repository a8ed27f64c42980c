"""stdio backends: the gateway in front of a stdio MCP server, beside the same server
driven directly over its pipes by a minimal client, in the same run.

Theory of operation.  The server is ``bench/fast_stdio_backend.py`` (answers from byte
templates, so its own cost is small).  For each number of sessions N:

* **direct, per session**: a minimal uvloop client starts N children and runs N
  closed loops, one per child: write one ``tools/call`` line, read its answer line, write
  the next.  This is what a program embedding the server would get.
* **direct, shared**: one child, N closed loops over it (ids kept apart).
* **gateway, per_session** / **gateway, shared**: ``mcpfast serve`` with the server as a
  stdio backend in that mode; N HTTP sessions (``initialize`` +
  ``notifications/initialized``), each with its own keep-alive connection running a
  closed loop (the client an MCP client is: no pipelining), run by ``wrk`` (``-t N -c N``:
  one connection per thread, each thread's Lua state sends its own session's
  ``Mcp-Session-Id`` and checks every answer: status 200, ``application/json``, its own
  id back) or by ``bench/loadgen.py`` in the client process (status checked), whichever
  costs less CPU per request for that number of sessions (``_generator``).
* **gateway, passthrough** (reference, ``--passthrough``): the same HTTP load through a
  passthrough route to ``bench/fast_backend.py``, the cost of a request the gateway only
  relays.

Besides req/s, each gateway target reports the gateway's own CPU per request (user +
system of its process from ``/proc/<pid>/stat`` over the measured window, divided by the
requests served; children not included).  Unlike req/s it hardly moves with other load
on the machine, so it is the figure to compare builds by.  The load generator's CPU per
request is reported too.

Each client runs in its own process, so it shares neither a loop nor a GIL with what it
measures; the machine's two cores are shared by client, gateway and children, which is
why only the ratios mean something.  Every process started here is ended by its PID.

Run: ``python bench/stdio.py [--sessions 1,16] [--duration 5] [--rounds 3] [--pin-single 0] [--json F]
[--generator auto|wrk|python] [--passthrough] [--only-gateway] [--gateway-tree DIR]``.
``--pin-single CPU`` runs client, gateway and children of the 1-session targets on one CPU
(direct and gateway alike), so a virtual machine's cross-CPU wake-ups do not dominate.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER = [sys.executable, str(HERE / "fast_stdio_backend.py")]
VERSION = "2025-06-18"
_INIT = b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"%s","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n' % VERSION.encode()
_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
_CALL = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}\n'


# --- the direct client (run in its own process: --client direct) ----------------------
class _Loop(asyncio.SubprocessProtocol):
    """One child and the closed loops running over it."""

    def __init__(self, loops: int, deadline: float, done: asyncio.Future) -> None:
        self.loops = loops
        self.deadline = deadline
        self.done = done
        self.buf = b""
        self.count = 0
        self.next_id = 1
        self.stdin = None
        self.ready = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stdin = transport.get_pipe_transport(0)
        self.stdin.write(_INIT)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        out = []
        for _ in lines:
            if not self.ready:
                self.ready = True
                out.append(_INITIALIZED)
                for _ in range(self.loops):
                    out.append(_CALL % self.next_id)
                    self.next_id += 1
                continue
            self.count += 1
            if time.perf_counter() < self.deadline:
                out.append(_CALL % self.next_id)
                self.next_id += 1
            else:
                self.loops -= 1
        if out:
            self.stdin.write(b"".join(out))
        if self.ready and self.loops == 0 and not self.done.done():
            self.done.set_result(self.count)


async def _direct(sessions: int, shared: bool, duration: float, warmup: float) -> dict:
    import uvloop  # noqa: F401  (the loop policy is set by main)

    loop = asyncio.get_running_loop()
    children = 1 if shared else sessions
    per_child = sessions if shared else 1
    start = time.perf_counter() + warmup
    deadline = start + duration
    protos = []
    for _ in range(children):
        done = loop.create_future()
        proto = _Loop(per_child, deadline, done)
        await loop.subprocess_exec(lambda p=proto: p, *SERVER, stderr=subprocess.DEVNULL)
        protos.append(proto)
    # Count only the measured window: read the counters at its start.
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    base = sum(p.count for p in protos)
    await asyncio.gather(*(p.done for p in protos))
    total = sum(p.count for p in protos) - base
    for p in protos:
        p.transport.close()
    return {"requests": total, "rps": total / duration}


# --- the HTTP client (run in its own process: --client http) --------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of process ``pid`` itself, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _rusage_cpu(who: int) -> float:
    import resource

    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _open_session(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    c.request("POST", "/mcp", _INIT.strip(), hdrs)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"initialize: HTTP {r.status}")
    sid = r.getheader("Mcp-Session-Id")
    hdrs = {**hdrs, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
    c.request("POST", "/mcp", _INITIALIZED.strip(), hdrs)
    r = c.getresponse()
    r.read()
    c.close()
    return sid


# One wrk thread per session, each with one connection: its Lua state sends its own
# session id, and checks each answer (status, content type, its own id back).
_WRK_LUA = r"""
local OUT = "%(out)s"
local SIDS = {%(sids)s}
local pre = '{"jsonrpc":"2.0","id":'
local post = ',"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
wrk.method = "POST"
wrk.path = "/mcp"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "%(version)s"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("sid", SIDS[#threads])
  thread:set("tid", #threads)
end
local n = 0
local base = 0
local want = ""
bad = 0
function init(args)
  wrk.headers["Mcp-Session-Id"] = wrk.thread:get("sid")
  base = wrk.thread:get("tid") * 1000000000
end
function request()
  n = n + 1
  want = '"id":' .. (base + n) .. ','
  return wrk.format(nil, nil, nil, pre .. (base + n) .. post)
end
function response(status, headers, body)
  local ct = headers["Content-Type"] or headers["content-type"]
  if status ~= 200 or ct ~= "application/json" or not string.find(body, want, 1, true) then
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
  local e = summary.errors
  local f = io.open(OUT, "w")
  f:write(string.format('{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"errors":{"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"answer":%%d}}\n', summary.requests, summary.duration,
    latency:percentile(50), e.connect, e.read, e.write, e.status, e.timeout, b))
  f:close()
end
"""


def _wrk(port: int, sids: list[str], duration: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="mcpfast-stdio-") as tmp:
        out = os.path.join(tmp, "result.json")
        script = os.path.join(tmp, "stdio.lua")
        Path(script).write_text(_WRK_LUA % {"out": out, "sids": ", ".join(f'"{s}"' for s in sids), "version": VERSION})
        n = len(sids)
        secs = max(1, round(duration))
        argv = ["wrk", f"-t{n}", f"-c{n}", f"-d{secs}s", "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}/mcp"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, check=False)
        if r.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        res = json.loads(Path(out).read_text())
    dur = res.pop("duration_us") / 1e6
    errors = res.pop("errors")
    return {"requests": res["requests"], "rps": res["requests"] / dur, "errors": sum(errors.values()),
            "error_kinds": errors, "p50_us": res["p50_us"]}  # fmt: skip


async def _loadgen(port: int, sids: list[str], duration: float) -> dict:
    sys.path.insert(0, str(HERE))
    from loadgen import run_load

    def hdrs(sid):
        return [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", VERSION)]

    got = await asyncio.gather(*(run_load("127.0.0.1", port, "/mcp", "echo", hdrs(s), 1, duration, 10**9) for s in sids))
    errors = sum(sum(g["errors"].values()) for g in got)
    return {"requests": sum(g["requests"] for g in got), "rps": sum(g["rps"] for g in got), "errors": errors,
            "p50_us": statistics.median(g["p50_us"] for g in got)}  # fmt: skip


def _http(port: int, sessions: int, duration: float, warmup: float, generator: str, gw_pid: int) -> dict:
    import resource

    sids = [_open_session(port) for _ in range(sessions)]
    if generator == "wrk":
        run, who = (lambda d: _wrk(port, sids, d)), resource.RUSAGE_CHILDREN
    else:
        run, who = (lambda d: asyncio.run(_loadgen(port, sids, d))), resource.RUSAGE_SELF
    if warmup:
        run(warmup)
    g0, c0 = _cpu_of(gw_pid), _rusage_cpu(who)
    res = run(duration)
    g1, c1 = _cpu_of(gw_pid), _rusage_cpu(who)
    n = max(res["requests"], 1)
    user, system = (g1[0] - g0[0]) / n * 1e6, (g1[1] - g0[1]) / n * 1e6
    res.update(generator=generator, gw_cpu_us=user + system, gw_user_us=user, gw_sys_us=system,
               client_cpu_us=(c1 - c0) / n * 1e6)  # fmt: skip
    return res


def _client_main(args) -> int:
    import uvloop

    uvloop.install()
    if args.client == "direct":
        import resource

        c0 = _rusage_cpu(resource.RUSAGE_SELF)
        res = asyncio.run(_direct(args.sessions_n, args.shared, args.duration, args.warmup))
        # (includes the warm-up and start: an upper bound of the direct client's cost)
        res["client_cpu_us"] = (_rusage_cpu(resource.RUSAGE_SELF) - c0) / max(res["requests"], 1) * 1e6
    else:
        res = _http(args.port, args.sessions_n, args.duration, args.warmup, args.generator, args.gw_pid)
    print(json.dumps(res))
    return 0


# --- the harness ---------------------------------------------------------------------
def _pinned(cpu: int | None) -> list[str]:
    """A command prefix that runs a process (and what it starts) on one CPU."""
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def _run_client(*argv: str, timeout: float, cpu: int | None = None) -> dict:
    cmd = [*_pinned(cpu), sys.executable, str(Path(__file__)), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``mcpfast serve`` with the stdio server as its backend in ``mode``, or (mode
    ``passthrough``) with a passthrough route to the HTTP server at ``backend_url``."""

    def __init__(self, mode: str, tmp: str, max_processes: int, cpu: int | None = None, backend_url: str = "",
                 tree: Path = REPO) -> None:  # fmt: skip
        self.port = _free_port()
        cfg = Path(tmp) / f"stdio-{mode}.toml"
        args = ", ".join(json.dumps(a) for a in SERVER[1:])
        text = f'[server]\nlisten = "127.0.0.1:{self.port}"\n[log]\nlevel = "warning"\naccess_log = "off"\n'
        if mode == "passthrough":
            text += f'[backends.fast]\nurl = "{backend_url}"\n'
        else:
            text += (
                f'[backends.fast]\ntransport = "stdio"\ncommand = {json.dumps(SERVER[0])}\nargs = [{args}]\n'
                f'mode = "{mode}"\nmax_processes = {max_processes}\nspawn_rate = 1000\n'
            )
        cfg.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([*_pinned(cpu), sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)], cwd=tree, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        self.pid = self.proc.pid  # taskset execs the gateway: the same process
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("gateway did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class HttpBackend:
    """``bench/fast_backend.py``: the HTTP server behind the passthrough reference."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fast_backend.py"), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.stop()
            raise RuntimeError("fast_backend.py did not start")
        self.url = f"http://127.0.0.1:{line[1]}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _generator(choice: str, sessions: int) -> str:
    """The lighter load generator for ``sessions`` closed loops.  Measured client CPU
    per request on the 2-core machine: one session, wrk 34 µs, loadgen 40-44 µs; 16
    sessions, wrk 20-23 µs (16 threads each woken per answer), loadgen 10-12 µs (one
    loop collects every connection's answers per wake-up)."""
    if choice != "auto":
        return choice
    return "wrk" if sessions == 1 and shutil.which("wrk") else "python"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,16", help="comma-separated session counts (default 1,16)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per target (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--pin-single", type=int, default=None, metavar="CPU",
                    help="run everything of the 1-session targets on this CPU (as load.py --pin-single-conn)")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                    help="HTTP load: wrk (one thread and connection per session), or bench/loadgen.py "
                         "(auto: wrk for one session if installed, else loadgen: the lighter of the two there)")
    ap.add_argument("--passthrough", action="store_true",
                    help="also measure a passthrough HTTP route to bench/fast_backend.py (reference gateway CPU)")
    ap.add_argument("--gateway-tree", type=Path, default=REPO, metavar="DIR",
                    help="run the gateway from this source tree (another checkout or worktree, built in place)")
    ap.add_argument("--only-gateway", action="store_true", help="skip the direct targets (gateway CPU only)")
    # internal: run one client
    ap.add_argument("--client", choices=["direct", "http"], help=argparse.SUPPRESS)
    ap.add_argument("--sessions-n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--gw-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return _client_main(args)
    counts = [int(x) for x in args.sessions.split(",")]
    limit = args.duration + args.warmup + 60
    modes = ["per_session", "shared"] + (["passthrough"] if args.passthrough else [])
    rounds: list[dict] = []
    backend = HttpBackend() if args.passthrough else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                res: dict = {}
                for n in counts:
                    cpu = args.pin_single if n == 1 else None
                    gen = _generator(args.generator, n)
                    common = ["--sessions-n", str(n), "--duration", str(args.duration), "--warmup", str(args.warmup)]
                    if not args.only_gateway:
                        res[f"direct/per_session/{n}"] = _run_client("--client", "direct", *common, timeout=limit, cpu=cpu)
                        res[f"direct/shared/{n}"] = _run_client("--client", "direct", "--shared", *common, timeout=limit, cpu=cpu)
                    for mode in modes:
                        gw = Gateway(mode, tmp, max(32, n * 2), cpu, backend.url if backend else "", args.gateway_tree)
                        try:
                            res[f"gateway/{mode}/{n}"] = _run_client(
                                "--client", "http", "--port", str(gw.port), "--gw-pid", str(gw.pid), "--generator", gen,
                                *common, timeout=limit, cpu=cpu)  # fmt: skip
                        finally:
                            gw.stop()
                        if res[f"gateway/{mode}/{n}"]["errors"]:
                            print(f"gateway/{mode}/{n}: {res[f'gateway/{mode}/{n}']['errors']} errors", file=sys.stderr)
                rounds.append(res)
                print(f"round {r + 1}: " + ", ".join(
                    f"{k} {v['rps']:.0f}/s" + (f" gw {v['gw_cpu_us']:.1f}µs ({v['gw_user_us']:.1f} user)" if "gw_cpu_us" in v else "")
                    for k, v in res.items()), file=sys.stderr)  # fmt: skip
    finally:
        if backend is not None:
            backend.stop()
    med = statistics.median
    lines = ["| sessions | direct stdio req/s (per session / shared) | gateway per_session × direct | gateway shared × direct "
             "| gateway CPU µs/req per_session / shared" + (" / passthrough" if args.passthrough else "") + " | errors |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    summary = {}
    for n in counts:
        def ratio(mode: str) -> tuple[float, float, float]:
            if args.only_gateway:
                return float("nan"), float("nan"), float("nan")
            rs = [x[f"gateway/{mode}/{n}"]["rps"] / x[f"direct/{mode}/{n}"]["rps"] for x in rounds]
            return med(rs), min(rs), max(rs)

        nan = float("nan")
        dps = nan if args.only_gateway else med(x[f"direct/per_session/{n}"]["rps"] for x in rounds)
        dsh = nan if args.only_gateway else med(x[f"direct/shared/{n}"]["rps"] for x in rounds)
        ps, sh = ratio("per_session"), ratio("shared")
        cpu = {m: med(x[f"gateway/{m}/{n}"]["gw_cpu_us"] for x in rounds) for m in modes}
        errs = sum(x[f"gateway/{m}/{n}"]["errors"] for x in rounds for m in modes)
        summary[n] = {"direct_per_session": dps, "direct_shared": dsh, "per_session": ps, "shared": sh,
                      "gw_cpu_us": cpu, "errors": errs}  # fmt: skip
        lines.append(f"| {n} | {dps:,.0f} / {dsh:,.0f} | {ps[0]:.2f} ({ps[1]:.2f}–{ps[2]:.2f}) | {sh[0]:.2f} ({sh[1]:.2f}–{sh[2]:.2f}) "
                     f"| {' / '.join(f'{cpu[m]:.1f}' for m in modes)} | {errs} |")  # fmt: skip
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
