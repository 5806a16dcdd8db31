"""The balancer configurations we ship (deploy/balancers/), run by the real HAProxy and
nginx in front of given replicas: the shipped file with its example replicas and
listener replaced, nothing else changed."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.waiting import wait_until

BALANCERS = Path(__file__).resolve().parents[1] / "deploy" / "balancers"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pointed_at(config: str, urls: list[str], port: int, server_line: str) -> str:
    """The shipped configuration with its example replicas replaced by `urls` and its
    listener by `port`; nothing else changes."""
    addresses = [u.removeprefix("http://") for u in urls]
    lines, replaced = [], 0
    for line in config.splitlines():
        if re.match(rf"\s*{server_line}\s", line) and "10.0.0." in line:
            line = re.sub(r"10\.0\.0\.\d+:8000", addresses[replaced], line)
            replaced += 1
        lines.append(line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    assert replaced == len(urls)
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def haproxy(urls: list[str], folder: Path) -> Iterator[str]:
    port = _free_port()
    config = folder / "haproxy.cfg"
    config.write_text(_pointed_at((BALANCERS / "haproxy.cfg").read_text(), urls, port,
                                  "server"))
    assert subprocess.run([_binary("haproxy"), "-c", "-q", "-f", str(config)]).returncode == 0
    with _running([_binary("haproxy"), "-db", "-f", str(config)], port) as url:
        yield url


@contextlib.contextmanager
def nginx(urls: list[str], folder: Path) -> Iterator[str]:
    port = _free_port()
    (folder / "cloister.conf").write_text(
        _pointed_at((BALANCERS / "nginx.conf").read_text(), urls, port, "server"))
    main = folder / "nginx.conf"
    main.write_text(f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
                    "events {}\n"
                    f"http {{\n  access_log off;\n  client_body_temp_path {folder}/body;\n"
                    f"  proxy_temp_path {folder}/proxy;\n  include {folder}/cloister.conf;\n}}\n")
    with _running([_binary("nginx"), "-p", str(folder), "-c", str(main)], port) as url:
        yield url


def _binary(name: str) -> str:
    found = shutil.which(name) or f"/usr/sbin/{name}"
    assert Path(found).exists(), f"{name} is not installed (make env installs it)"
    return found


@contextlib.contextmanager
def _running(argv: list[str], port: int) -> Iterator[str]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    try:
        if not wait_until(answering):
            process.kill()
            raise AssertionError(f"{argv[0]} did not answer: {process.communicate()[1]!r}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
