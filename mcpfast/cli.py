"""The ``mcpfast`` command: ``serve``, ``check-config``, ``demo``.

Flags override the config file: each flag is turned into a dotted config key and laid
over the file's TOML before validation, so the file and the flags pass the same checks
and errors name the same keys.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from typing import Any

import click
import orjson

from . import __version__
from .config import Config, ConfigError, as_dict, load_config
from .preflight import StartupError, probe_listeners, static_checks
from .transport.tls import insecure_warnings

EXIT_CONFIG = 2  # a configuration error or any other failure to start


def _overrides(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mapping = {
        "listen": "server.listen",
        "admin_listen": "server.admin_listen",
        "mcp_path": "server.mcp_path",
        "workers": "server.workers",
        "backlog": "server.backlog",
        "max_body_bytes": "limits.max_body_bytes",
        "max_header_bytes": "limits.max_header_bytes",
        "max_connections": "limits.max_connections",
        "header_timeout": "timeouts.header_read",
        "idle_timeout": "timeouts.idle",
        "body_timeout": "timeouts.body_read",
        "upstream_connect_timeout": "timeouts.upstream_connect",
        "upstream_timeout": "timeouts.upstream_response",
        "drain_timeout": "timeouts.drain",
        "log_level": "log.level",
        "log_format": "log.format",
        "access_log": "log.access_log",
    }
    for k, key in mapping.items():
        v = kw.get(k)
        if v is not None:
            out[key] = v
    if kw.get("allowed_origin"):
        out["server.allowed_origins"] = list(kw["allowed_origin"])
    if kw.get("allowed_host"):
        out["server.allowed_hosts"] = list(kw["allowed_host"])
    for spec in kw.get("backend") or ():
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise ConfigError("--backend", f"expected NAME=URL, got {spec!r}")
        out[f"backends.{name}.url"] = url
    for spec in kw.get("stdio_backend") or ():
        name, sep, line = spec.partition("=")
        try:
            argv = shlex.split(line)  # split as a shell would, but never run by one
        except ValueError as exc:
            raise ConfigError("--stdio-backend", f"cannot split {spec!r}: {exc}") from None
        if not sep or not name or not argv:
            raise ConfigError("--stdio-backend", f"expected NAME='command arg ...', got {spec!r}")
        out[f"backends.{name}.transport"] = "stdio"
        out[f"backends.{name}.command"] = argv[0]
        out[f"backends.{name}.args"] = argv[1:]
    return out


def _load(config_file: str | None, pool_size: int | None, pool_idle_timeout: float | None, **kw: Any) -> Config:
    cfg_over = _overrides(**kw)
    cfg = load_config(config_file, cfg_over)
    if pool_size is not None or pool_idle_timeout is not None:
        # Pool flags apply to every backend; re-validate with them laid over each one.
        for b in cfg.backends:
            if pool_size is not None:
                cfg_over[f"backends.{b.name}.pool_size"] = pool_size
            if pool_idle_timeout is not None:
                cfg_over[f"backends.{b.name}.pool_idle_timeout"] = pool_idle_timeout
        cfg = load_config(config_file, cfg_over)
    return cfg


_STDIO_BACKEND = click.option(
    "--stdio-backend",
    multiple=True,
    metavar="NAME='COMMAND ARG...'",
    help="A backend MCP server run as a child process over stdio, its command line split like a shell's "
    "(no shell runs it) (repeatable).",
)


def _tuning(f):
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file."),
        click.option("--listen", metavar="HOST:PORT", help="Client listener (default 127.0.0.1:8080)."),
        click.option("--backend", multiple=True, metavar="NAME=URL", help="A backend MCP server (repeatable)."),
        _STDIO_BACKEND,
        click.option("--admin-listen", metavar="HOST:PORT", help="Admin listener for /metrics, /healthz, /readyz."),
        click.option("--mcp-path", help="Path of the MCP endpoint (default /mcp)."),
        click.option("--workers", type=int, help="Worker processes sharing the port (SO_REUSEPORT)."),
        click.option("--backlog", type=int, help="listen() backlog."),
        click.option("--max-body-bytes", type=int, help="Largest request body accepted (413 past it)."),
        click.option("--max-header-bytes", type=int, help="Largest request head accepted (431 past it)."),
        click.option("--max-connections", type=int, help="Client connections served at once (503 past it)."),
        click.option("--header-timeout", type=float, help="Seconds to receive a request head (408 past it)."),
        click.option("--body-timeout", type=float, help="Seconds to receive a request body after its head."),
        click.option("--idle-timeout", type=float, help="Seconds an idle keep-alive client connection is kept."),
        click.option("--upstream-connect-timeout", type=float, help="Seconds to connect to a backend (504 past it)."),
        click.option("--upstream-timeout", type=float, help="Seconds for a backend to start answering (504 past it)."),
        click.option("--drain-timeout", type=float, help="Seconds in-flight requests may finish on shutdown."),
        click.option("--pool-size", type=int, help="Idle keep-alive connections kept per backend."),
        click.option("--pool-idle-timeout", type=float, help="Seconds an idle backend connection is kept."),
        click.option("--allowed-origin", multiple=True, help="Allowed Origin (repeatable; 'http://host:*' for any port; '*' for any)."),
        click.option("--allowed-host", multiple=True, help="Allowed Host header: name or name:port (repeatable; '*' for any). Default: loopback names when listening on loopback, else any."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"])),
        click.option("--log-format", type=click.Choice(["json", "text"])),
        click.option("--access-log", metavar="PATH|-|off", help="Access log sink: '-' stdout, a file, or off."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpfast")
def main() -> None:
    """mcpfast: a fast gateway for the Model Context Protocol."""


@main.command()
@_tuning
def serve(config_file, pool_size, pool_idle_timeout, **kw) -> None:
    """Run the gateway in front of one or more MCP backends."""
    try:
        cfg = _load(config_file, pool_size, pool_idle_timeout, **kw)
        static_checks(cfg)
    except ConfigError as exc:
        _fail("configuration error", exc)
    run_gateway(cfg)


def _fail(what: str, exc: Exception) -> None:
    """One line on stderr naming the cause and the setting, then exit 2."""
    click.echo(f"{what}: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


def run_gateway(cfg: Config, on_ready=None) -> None:
    """Run ``cfg`` in this process (or in ``workers`` forked processes) until a signal.
    A failure to start (a port taken, a log file that cannot be opened) exits 2 with
    one line."""
    from .observe import setup_logging
    from .workers import run_workers

    try:
        probe_listeners(cfg)
        setup_logging(cfg.log.level, cfg.log.format)
        run_workers(cfg, on_ready=on_ready)
    except StartupError as exc:
        _fail("startup error", exc)


@main.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False), required=False)
@click.option("--backend", multiple=True, metavar="NAME=URL", help="A backend MCP server (repeatable).")
@_STDIO_BACKEND
def check_config(config_file: str | None, backend: tuple[str, ...], stdio_backend: tuple[str, ...]) -> None:
    """Validate CONFIG_FILE (and backends given as flags) and print the effective
    configuration as JSON."""
    try:
        cfg = load_config(config_file, _overrides(backend=backend, stdio_backend=stdio_backend))
        static_checks(cfg)  # what serve refuses without touching the network
    except ConfigError as exc:
        _fail("configuration error", exc)
    for warning in insecure_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
    click.echo(orjson.dumps(as_dict(cfg), option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT")
@click.option("--admin-listen", default="127.0.0.1:9090", show_default=True, metavar="HOST:PORT")
def demo(listen: str, admin_listen: str) -> None:
    """Start the gateway with an embedded demo MCP backend."""
    try:
        from .demo_backend import wait_ready
    except ImportError as exc:  # the demo backend is an MCP Python SDK server
        if exc.name is not None and exc.name.partition(".")[0] != "mcp":
            raise
        click.echo("mcpfast demo needs the MCP Python SDK: pip install 'mcpfast[demo]'", err=True)
        sys.exit(EXIT_CONFIG)

    over = {"server.listen": listen, "server.admin_listen": admin_listen, "log.access_log": "-"}
    try:
        # The ports first: a second demo must not start a backend only to fail.
        probe_listeners(load_config(None, {**over, "backends.demo.url": "http://127.0.0.1:1/mcp"}))
    except ConfigError as exc:
        _fail("configuration error", exc)
    except StartupError as exc:
        _fail("startup error", exc)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpfast.demo_backend", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = wait_ready(proc, 30)
        if url is None:
            click.echo("demo backend failed to start", err=True)
            sys.exit(1)
        try:
            cfg = load_config(None, {**over, "backends.demo.url": url})
            static_checks(cfg)
        except ConfigError as exc:
            _fail("configuration error", exc)
        host, port = cfg.server.listen

        def ready() -> None:
            click.echo(
                f"mcpfast {__version__} demo\n"
                f"  demo backend : {url}\n"
                f"  MCP endpoint : http://{host}:{port}/mcp\n"
                f"  metrics      : http://{admin_listen}/metrics\n\n"
                "Connect a client, for example with the Python SDK:\n\n"
                "  import asyncio\n"
                "  from mcp import Client\n"
                "  async def main():\n"
                f"      async with Client('http://{host}:{port}/mcp') as c:\n"
                "          print([t.name for t in (await c.list_tools()).tools])\n"
                "          print(await c.call_tool('add', {'a': 2, 'b': 3}))\n"
                "  asyncio.run(main())\n\n"
                "Press Ctrl-C to stop.",
                err=True,
            )

        run_gateway(cfg, on_ready=ready)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
