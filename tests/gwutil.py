"""Test helpers: run a real gateway in a background thread with its own uvloop, start
real backend processes, and end everything by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import uvloop

from mcpfast.config import build_config
from mcpfast.demo_backend import wait_ready
from mcpfast.app import build_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a Streamable HTTP client sends with every POST, and a plain initialize.
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayThread:
    """A ``Gateway`` serving on 127.0.0.1 (port chosen by the OS) in its own thread."""

    def __init__(self, raw_config: dict, **gw_kwargs) -> None:
        raw = {"server": {"listen": "127.0.0.1:0"}, "log": {"access_log": "off"}}
        for k, v in raw_config.items():
            if isinstance(v, dict) and isinstance(raw.get(k), dict):
                raw[k] = {**raw[k], **v}
            else:
                raw[k] = v
        self.config = build_config(raw)
        self.loop = uvloop.new_event_loop()
        self.gw = build_gateway(self.config, **gw_kwargs)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gw.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "GatewayThread":
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.gw.port

    def url(self, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the gateway's loop and return its result."""
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn, *args), self.loop)
        return fut.result(10)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.gw.stop(drain=1.0), self.loop)
        try:
            fut.result(15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


async def _as_coro(fn, *args):
    return fn(*args)


@contextlib.contextmanager
def backend_process(script: str, *args: str, timeout: float = 30.0):
    """Start ``python script args`` that prints ``READY <url>``; yield (proc, url)."""
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        url = wait_ready(proc, timeout)
        if url is None:
            raise RuntimeError(f"{script} did not become ready")
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> tuple:
    """Stop ``proc`` as an operator would (SIGTERM; SIGKILL if it is still there after
    ``timeout`` seconds) and return what it wrote (stdout, stderr)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def wait_until(pred, timeout: float = 10.0) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)
