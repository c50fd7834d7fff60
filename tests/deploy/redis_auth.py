"""Run a deployment's own `redis-server` shell command with Debian's Redis on a loopback port, and check that it
answers only with the password: what the Compose file and the Kubernetes manifest each promise."""

import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from supportflow.processes import free_port
from tests.servers import stop, wait_for_port

PASSWORD = "s3cret with 'quotes' and $igns"


def resp(*words: str) -> bytes:
    """One command in Redis's protocol, each word length-prefixed, so spaces and quotes in a password pass as they are."""
    encoded = [word.encode() for word in words]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in encoded)


def check_password_required(shell: str, flag: str, script: str, folder: Path) -> None:
    """`shell flag script` as the container runs it, with REDIS_PASSWORD in its environment; later options win, so
    the port, address and data folder are appended."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (`make system-deps`)")
    port = free_port()
    loopback = f"{script} --port {port} --bind 127.0.0.1 --dir {shlex.quote(str(folder))}"
    server = subprocess.Popen(
        [shell, flag, loopback],
        env={"PATH": f"{Path(executable).parent}{os.pathsep}{os.defpath}", "REDIS_PASSWORD": PASSWORD},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, "redis-server", timeout=30)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        with client, client.makefile("rb") as replies:
            client.sendall(resp("PING"))
            assert replies.readline().startswith(b"-NOAUTH")
            client.sendall(resp("AUTH", "not the password"))
            assert replies.readline().startswith(b"-WRONGPASS")
            client.sendall(resp("AUTH", PASSWORD) + resp("PING"))
            assert [replies.readline(), replies.readline()] == [b"+OK\r\n", b"+PONG\r\n"]
    finally:
        stop(server)
