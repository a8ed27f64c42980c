"""A small MCP server for ``mcpfast demo`` and the quick start: a few tools (one that
reports progress and logs while it runs), a resource and a prompt, served by the
official Python SDK over Streamable HTTP on loopback.

Run alone: ``python -m mcpfast.demo_backend --port 0`` prints ``READY <url>`` once it
listens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import socket
import sys

from mcp.server.mcpserver import Context, MCPServer


def wait_ready(proc, timeout: float) -> str | None:
    """Read ``proc``'s stdout (text mode) until its ``READY <url>`` line; the url, or
    None if the process ends or stays silent past ``timeout`` seconds."""
    import selectors
    import time

    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith("READY "):
                return line.split()[1]


def build_server():
    mcp = MCPServer(
        name="mcpfast-demo",
        instructions="A demo backend behind mcpfast: echo, add, now, countdown; resource demo://about; prompt review.",
    )

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def now() -> str:
        """The current UTC time (ISO 8601)."""
        return datetime.datetime.now(datetime.timezone.utc).isoformat()

    @mcp.tool()
    async def countdown(start: int, ctx: Context) -> str:
        """Count down from ``start`` (at most 20), reporting progress and logging each step."""
        start = max(0, min(int(start), 20))
        for i in range(start, 0, -1):
            await ctx.report_progress(start - i + 1, start, f"{i}…")
            await ctx.info(f"countdown at {i}")
            await asyncio.sleep(0.05)
        return "liftoff"

    @mcp.resource("demo://about", mime_type="text/plain")
    def about() -> str:
        """What this server is."""
        return "This is the mcpfast demo backend, reached through the mcpfast gateway."

    @mcp.prompt()
    def review(code: str) -> str:
        """Ask for a code review."""
        return f"Please review this code and list concrete problems:\n\n{code}"

    return mcp


def make_listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket whose accepted connections have ``TCP_NODELAY`` set.

    Linux hands the option of a listening socket on to every socket it accepts, and
    uvicorn does not set it on sockets it is given.  Without it a kept-alive client
    waits for the delayed ACK (about 40 ms) whenever an answer leaves in two small
    writes (head, then body): Nagle holds the second until the first is acknowledged."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve_asgi(app, host: str = "127.0.0.1", port: int = 0, ready=None, path: str = "/mcp") -> None:
    """Serve an ASGI app with uvicorn on ``host:port`` (0: any free port) until the
    process is stopped; ``ready(url)`` is called once it accepts connections.  Used by
    the demo and by the test fixtures' SDK servers."""
    import uvicorn

    sock = make_listener(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}{path}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task  # startup failed: raise its error
                return
            await asyncio.sleep(0.01)
        if ready is not None:
            ready(url)
        await task

    asyncio.run(run())


def print_ready(url: str) -> None:
    """The ``READY <url>`` line that ``wait_ready`` looks for."""
    print(f"READY {url}", flush=True)


def serve(host: str = "127.0.0.1", port: int = 0, ready=None) -> None:
    """Serve the demo backend until interrupted; ``ready(url)`` is called once listening."""
    serve_asgi(build_server().streamable_http_app(host=host), host, port, ready)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    try:
        serve(args.host, args.port, print_ready)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
