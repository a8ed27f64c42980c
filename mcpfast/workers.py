"""Running the gateway: one process, or several workers sharing the listening port.

Workers are forked after the configuration is validated; each runs its own uvloop and
its own ``Gateway`` bound with SO_REUSEPORT, so the kernel spreads connections.  The
parent only supervises: it forwards SIGTERM/SIGINT (drain) and SIGHUP and exits when the
workers have.  Metrics are per process; with several workers the admin listener of
worker *i* is on the configured admin port + *i*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

import uvloop

from .config import Config

log = logging.getLogger("mcpfast")


def _serve_one(cfg: Config, on_ready=None) -> None:
    from .gateway import Gateway

    async def main() -> None:
        gw = Gateway(cfg)
        await gw.start()
        host, port = cfg.server.listen
        log.info(
            "listening",
            extra={"fields": {"listen": f"{host}:{gw.port}", "routes": [r.path for r in cfg.routes]}},
        )
        if on_ready is not None:
            on_ready()
        await gw.run_until_signal()

    uvloop.run(main())


def run_workers(cfg: Config, on_ready=None) -> None:
    n = cfg.server.workers
    if n <= 1:
        _serve_one(cfg, on_ready)
        return
    children = []
    for i in range(n):
        wcfg = cfg
        if cfg.server.admin_listen is not None:
            h, p = cfg.server.admin_listen
            wcfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, admin_listen=(h, p + i if p else 0)))
        pid = os.fork()
        if pid == 0:
            try:
                _serve_one(wcfg, on_ready if i == 0 else None)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(sig, _frame):
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    for pid in children:
        while True:
            try:
                _, st = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if os.waitstatus_to_exitcode(st) != 0:
            status = 1
    sys.exit(status)
