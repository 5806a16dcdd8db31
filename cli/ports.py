"""The ports a command will listen on, checked before its slow start: a port another
process holds is refused at once (not after a minute of engine start), naming that
process when this machine lets us see it (psutil reads the socket tables)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable


def busy_port_errors(addresses: Iterable[tuple[str, int | None, str]]) -> list[str]:
    """One message per (host, port, the flag that chooses it) that cannot be bound; port
    None or 0 is not asked."""
    errors = []
    for host, port, flag in addresses:
        if port and not _bindable(host, port):
            errors.append(f"port {port} on {host} is already in use{holder_of(port)}; stop "
                          f"that process or choose another with {flag}")
    return errors


def _bindable(host: str, port: int) -> bool:
    """Whether a listener could bind now (with SO_REUSEADDR, as uvicorn binds)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # an address that does not resolve is the server's own error to say
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def holder_of(port: int) -> str:
    """` by pid N (its command line)` for the process listening on `port`, or "" when
    the system does not say (another user's process, a platform psutil cannot read)."""
    import psutil

    try:
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except (psutil.Error, OSError):
        return ""
    pids = sorted({c.pid for c in listening if c.pid is not None})
    if not pids:
        return ""
    try:
        command = " ".join(psutil.Process(pids[0]).cmdline())
        command = command if len(command) <= 200 else command[:199] + "…"
    except psutil.Error:
        return f" by pid {pids[0]}"
    return f" by pid {pids[0]} ({command})" if command else f" by pid {pids[0]}"
