"""Checks made before the gateway starts, so that an operator's mistake ends in one line
naming the setting to fix, never in a traceback.

Two kinds.  ``static_checks`` needs nothing but the configuration and the file system
(which includes a backend's TLS files, its program and its working directory):
``check-config`` and ``serve`` both run it, so a file that ``check-config`` passes is not
refused by ``serve`` for a reason it could have known.  ``probe_listeners`` binds every
address the gateway will listen on and lets go at once: it finds a port that is taken or
needs privileges before a backend is started or a worker is forked.  Only ``serve`` and
``demo`` run it -- the gateway that already runs with a configuration holds its ports.

A failure to listen that still happens later (another process took the port in between)
is turned into the same one line by ``listen_error``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket

from .config import Config, ConfigError
from .transport.tls import client_context

__all__ = ["StartupError", "static_checks", "probe_listeners", "listen_error", "FLAGS"]

#: The command-line flag that sets a key, for messages.
FLAGS = {
    "server.listen": "--listen",
    "server.admin_listen": "--admin-listen",
    "log.access_log": "--access-log",
    "backends": "--backend",
}


class StartupError(Exception):
    """The gateway cannot start; ``key`` names the setting (and its flag, if any)."""

    def __init__(self, key: str, problem: str) -> None:
        flag = FLAGS.get(key)
        super().__init__(f"{key}{f' ({flag})' if flag else ''}: {problem}")
        self.key = key
        self.problem = problem


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(exc: OSError, port: int) -> str:
    """What an ``OSError`` from ``bind`` means to an operator."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there)"
    if exc.errno == errno.EACCES:
        if 0 < port < 1024:
            return "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    return exc.strerror or str(exc)


def listen_error(key: str, host: str, port: int, exc: OSError) -> StartupError:
    return StartupError(key, f"cannot listen on {_fmt(host, port)}: {_why(exc, port)}")


def _listen_addresses(cfg: Config) -> list[tuple[str, str, int]]:
    """(key, host, port) of every listener: the client one, then the admin one of each
    worker (worker *i* listens on the admin port + *i*)."""
    s = cfg.server
    out = [("server.listen", *s.listen)]
    if s.admin_listen is not None:
        h, p = s.admin_listen
        for i in range(s.workers if p else 1):
            out.append(("server.admin_listen", h, p + i if p else 0))
    return out


def _overlap(a: str, b: str) -> bool:
    """Could listeners on hosts ``a`` and ``b`` with the same port collide?"""
    if a == b:
        return True
    try:
        ia, ib = ipaddress.ip_address(a.strip("[]")), ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False  # a name: resolved only when listening
    # A wildcard address takes the port on every address of its family (and "::"
    # usually on IPv4 too).
    return ia.is_unspecified or ib.is_unspecified


def _worker_ports(cfg: Config) -> str:
    a, n = cfg.server.admin_listen[1], cfg.server.workers
    return f" (with {n} workers the admin listeners use ports {a}..{a + n - 1})"


def _check_sink(key: str, path: str) -> None:
    """A log sink that is a file path must be writable (or creatable)."""
    if path in ("-", "off", ""):
        return
    if os.path.isdir(path):
        raise ConfigError(key, f"{path} is a directory, expected a file path")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ConfigError(key, f"cannot write {path}: permission denied")
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(key, f"cannot create {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {path}: directory {parent} is not writable")


def _check_stdio(key: str, b) -> None:
    """The working directory exists and the program can be found and run, as the child
    will be started: a bare name is looked up on PATH (the one in the backend's ``env``
    if it sets one, else the gateway's), a relative path from the working directory."""
    cwd = b.cwd
    if cwd is not None:
        if not os.path.exists(cwd):
            raise ConfigError(f"{key}.cwd", f"{cwd} does not exist")
        if not os.path.isdir(cwd):
            raise ConfigError(f"{key}.cwd", f"{cwd} is not a directory")
    cmd = b.command
    if os.sep not in cmd:
        search = dict(b.env).get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(cmd, path=search) is None:
            raise ConfigError(
                f"{key}.command",
                f"{cmd!r} not found: not an absolute path and no executable of that name on PATH",
            )
        return
    path = os.path.join(cwd or os.getcwd(), cmd)  # an absolute cmd stays as it is
    if not os.path.exists(path):
        raise ConfigError(f"{key}.command", f"{path} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"{key}.command", f"{path} is a directory")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"{key}.command", f"{path} is not executable")


def _check_backends(cfg: Config) -> None:
    """Files a backend needs: TLS certificates and keys (loaded as the gateway will load
    them), a stdio backend's program and working directory."""
    for b in cfg.backends:
        key = f"backends.{b.name}"
        if b.transport == "stdio":
            _check_stdio(key, b)
        elif b.tls:
            client_context(b)


def static_checks(cfg: Config) -> None:
    """Everything ``serve`` refuses that needs no network.  Raises ``ConfigError``."""
    if not cfg.backends:
        raise ConfigError("backends", "none configured (use --backend NAME=URL or a config file)")
    addrs = _listen_addresses(cfg)
    client_key, ch, cp = addrs[0]
    for key, h, p in addrs[1:]:
        if p and p == cp and _overlap(h, ch):
            raise ConfigError(
                key,
                f"{_fmt(h, p)} is also the client listener ({client_key} = {_fmt(ch, cp)}); "
                "give the admin listener a port of its own"
                + (_worker_ports(cfg) if cfg.server.workers > 1 else ""),
            )
    _check_sink("log.access_log", cfg.log.access_log)
    _check_backends(cfg)
    pc = cfg.policy
    audit = getattr(pc, "audit", None) if pc is not None else None
    if audit is not None and getattr(pc, "enabled", False):
        _check_sink("audit.sink", getattr(audit, "sink", "-"))


def probe_listeners(cfg: Config) -> None:
    """Bind every listening address and release it.  Raises ``StartupError``."""
    s = cfg.server
    for key, host, port in _listen_addresses(cfg):
        if port == 0:
            continue  # any free port: cannot be taken
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise listen_error(key, host, port, exc) from None
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As the listeners will be: SO_REUSEADDR (asyncio's default on POSIX), and
            # SO_REUSEPORT for the client port when several workers share it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if key == "server.listen" and s.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(1)
        except OSError as exc:
            raise listen_error(key, host, port, exc) from None
        finally:
            sock.close()
