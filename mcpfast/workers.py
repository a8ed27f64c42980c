"""Running the gateway: one process, or several workers sharing the listening port.

Workers are forked after the configuration is validated; each runs its own uvloop and
its own ``Gateway`` bound with SO_REUSEPORT, so the kernel spreads connections.  The
parent only supervises: it forwards SIGTERM/SIGINT (drain) and SIGHUP and exits when the
workers have.  Metrics are per process; with several workers the admin listener of
worker *i* is on the configured admin port + *i*.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import time

import uvloop

from .config import Config, ConfigError
from .preflight import StartupError, listen_error

EXIT_STARTUP = 2  # a worker that could not start: the parent stops, it does not retry

log = logging.getLogger("mcpfast")


def _serve_one(cfg: Config, on_ready=None) -> None:
    from .app import build_gateway

    async def main() -> None:
        try:
            gw = build_gateway(cfg)
        except ConfigError as exc:  # a TLS file that changed since the checks ran
            raise StartupError(exc.key, exc.problem) from None
        except OSError as exc:  # a log file (checked before, but the file system may change)
            key = "log.access_log" if exc.filename in (None, cfg.log.access_log) else "audit.sink"
            raise StartupError(key, f"cannot open {exc.filename}: {exc.strerror or exc}") from None
        try:
            await gw.start()
        except OSError as exc:
            # Which listener failed: the client one opens first, then the admin one.
            s = cfg.server
            if not gw.servers:
                raise listen_error("server.listen", *s.listen, exc) from None
            if s.admin_listen is not None and (gw.admin is None or gw.admin.server is None):
                raise listen_error("server.admin_listen", *s.admin_listen, exc) from None
            raise
        # Everything built so far lives as long as the process: move it out of the
        # collector's sight, and collect the young generation less often -- requests
        # allocate many short-lived, acyclic objects that reference counting frees.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        host, port = cfg.server.listen
        log.info(
            "listening",
            extra={"fields": {"listen": f"{host}:{gw.port}", "routes": [r.path for r in cfg.routes]}},
        )
        if on_ready is not None:
            on_ready()
        await gw.run_until_signal()

    uvloop.run(main())


def _fork_worker(cfg: Config, i: int, on_ready) -> int:
    wcfg = cfg
    if cfg.server.admin_listen is not None:
        h, p = cfg.server.admin_listen
        wcfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, admin_listen=(h, p + i if p else 0)))
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _serve_one(wcfg, on_ready)
        except StartupError as exc:
            print(f"startup error: {exc}", file=sys.stderr, flush=True)
            code = EXIT_STARTUP
        except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
            log.exception("worker failed", extra={"fields": {"worker": i}})
            code = 1
        finally:
            os._exit(code)
    return pid


def run_workers(cfg: Config, on_ready=None) -> None:
    """Serve with ``cfg.server.workers`` processes.

    The parent supervises: SIGTERM/SIGINT are passed to every worker (each drains and
    exits) and end the parent once all have; SIGHUP is passed on (workers reopen their
    access log).  A worker that dies while the parent is not stopping is forked again,
    at most once a second per slot, so a crash costs capacity for a moment, not for good.
    """
    n = cfg.server.workers
    if n <= 1:
        _serve_one(cfg, on_ready)
        return
    slots: dict[int, int] = {}  # pid -> worker index
    for i in range(n):
        slots[_fork_worker(cfg, i, on_ready if i == 0 else None)] = i
    stopping = False

    def forward(sig, _frame):
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for pid in list(slots):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    last_fork: dict[int, float] = {}
    while slots:
        try:
            pid, st = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        i = slots.pop(pid, None)
        if i is None:
            continue
        code = os.waitstatus_to_exitcode(st)
        if code == EXIT_STARTUP and not stopping:
            # It could not listen or open its files: another would fail alike.
            stopping = True
            status = EXIT_STARTUP
            forward(signal.SIGTERM, None)
            continue
        if stopping:
            if code != 0 and status == 0:
                status = 1
            continue
        log.warning("worker exited; starting another", extra={"fields": {"worker": i, "pid": pid, "exit": code}})
        wait = last_fork.get(i, 0.0) + 1.0 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        last_fork[i] = time.monotonic()
        if not stopping:
            slots[_fork_worker(cfg, i, None)] = i
    sys.exit(status)
