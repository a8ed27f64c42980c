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
  ``notifications/initialized``), each with its own keep-alive connection running the
  closed loop of ``bench/loadgen.py`` (the client an MCP client is: no pipelining).

Each client runs in its own process, so it shares neither a loop nor a GIL with what it
measures; the machine's two cores are shared by client, gateway and children, which is
why only the ratios mean something.  Every process started here is ended by its PID.

Run: ``python bench/stdio.py [--sessions 1,16] [--duration 5] [--rounds 3] [--pin-single 0] [--json F]``.
``--pin-single CPU`` runs client, gateway and children of the 1-session targets on one CPU
(direct and gateway alike), so a virtual machine's cross-CPU wake-ups do not dominate.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
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


async def _http(port: int, sessions: int, duration: float, warmup: float) -> dict:
    sys.path.insert(0, str(HERE))
    from loadgen import run_load

    sids = [_open_session(port) for _ in range(sessions)]

    def hdrs(sid):
        return [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", VERSION)]

    if warmup:
        await asyncio.gather(*(run_load("127.0.0.1", port, "/mcp", "echo", hdrs(s), 1, warmup, 10**9) for s in sids))
    got = await asyncio.gather(*(run_load("127.0.0.1", port, "/mcp", "echo", hdrs(s), 1, duration, 10**9) for s in sids))
    errors = sum(sum(g["errors"].values()) for g in got)
    return {"requests": sum(g["requests"] for g in got), "rps": sum(g["rps"] for g in got), "errors": errors,
            "p50_us": statistics.median(g["p50_us"] for g in got)}  # fmt: skip


def _client_main(args) -> int:
    import uvloop

    uvloop.install()
    if args.client == "direct":
        res = asyncio.run(_direct(args.sessions_n, args.shared, args.duration, args.warmup))
    else:
        res = asyncio.run(_http(args.port, args.sessions_n, args.duration, args.warmup))
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
    def __init__(self, mode: str, tmp: str, max_processes: int, cpu: int | None = None) -> None:
        self.port = _free_port()
        cfg = Path(tmp) / f"stdio-{mode}.toml"
        args = ", ".join(json.dumps(a) for a in SERVER[1:])
        cfg.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n[log]\nlevel = "warning"\naccess_log = "off"\n'
            f'[backends.fast]\ntransport = "stdio"\ncommand = {json.dumps(SERVER[0])}\nargs = [{args}]\n'
            f'mode = "{mode}"\nmax_processes = {max_processes}\nspawn_rate = 1000\n'
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([*_pinned(cpu), sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,16", help="comma-separated session counts (default 1,16)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per target (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--pin-single", type=int, default=None, metavar="CPU",
                    help="run everything of the 1-session targets on this CPU (as load.py --pin-single-conn)")
    # internal: run one client
    ap.add_argument("--client", choices=["direct", "http"], help=argparse.SUPPRESS)
    ap.add_argument("--sessions-n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return _client_main(args)
    counts = [int(x) for x in args.sessions.split(",")]
    limit = args.duration + args.warmup + 60
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            res: dict = {}
            for n in counts:
                cpu = args.pin_single if n == 1 else None
                common = ["--sessions-n", str(n), "--duration", str(args.duration), "--warmup", str(args.warmup)]
                res[f"direct/per_session/{n}"] = _run_client("--client", "direct", *common, timeout=limit, cpu=cpu)
                res[f"direct/shared/{n}"] = _run_client("--client", "direct", "--shared", *common, timeout=limit, cpu=cpu)
                for mode in ("per_session", "shared"):
                    gw = Gateway(mode, tmp, max(32, n * 2), cpu)
                    try:
                        res[f"gateway/{mode}/{n}"] = _run_client("--client", "http", "--port", str(gw.port), *common, timeout=limit, cpu=cpu)
                    finally:
                        gw.stop()
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v['rps']:.0f}/s" for k, v in res.items()), file=sys.stderr)
    lines = ["| sessions | direct stdio req/s (per session / shared) | gateway per_session × direct | gateway shared × direct |",
             "|---:|---:|---:|---:|"]  # fmt: skip
    summary = {}
    for n in counts:
        def ratio(mode: str) -> tuple[float, float, float]:
            rs = [x[f"gateway/{mode}/{n}"]["rps"] / x[f"direct/{mode}/{n}"]["rps"] for x in rounds]
            return statistics.median(rs), min(rs), max(rs)

        dps = statistics.median(x[f"direct/per_session/{n}"]["rps"] for x in rounds)
        dsh = statistics.median(x[f"direct/shared/{n}"]["rps"] for x in rounds)
        ps, sh = ratio("per_session"), ratio("shared")
        summary[n] = {"direct_per_session": dps, "direct_shared": dsh, "per_session": ps, "shared": sh}
        lines.append(f"| {n} | {dps:,.0f} / {dsh:,.0f} | {ps[0]:.2f} ({ps[1]:.2f}–{ps[2]:.2f}) | {sh[0]:.2f} ({sh[1]:.2f}–{sh[2]:.2f}) |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
