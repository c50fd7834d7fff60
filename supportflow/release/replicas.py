"""Several bot, Rasa and action-server replicas behind HAProxy on one machine: the shape Kubernetes gives the
runtime (deploy/k8s), small enough for the replica test and the soak benchmark to start and kill.

Every replica shares what a replica must not keep to itself: the lake (turn log), the handoff queue, Rasa's
tracker and lock stores, the server key that signs conversation tokens and the internal token. Each has its
own run folder (its turn log's write-ahead file). Customers reach the bots through one HAProxy frontend, and
the bots reach Rasa through another, both round-robin with health checks, so a killed replica drops out and
its conversations continue on the others. One classifier serves every replica: it keeps no conversation state.
"""

import csv
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from supportflow.dialogue.rasa_cli import action_server, rasa_server
from supportflow.errors import SupportflowError
from supportflow.internal_auth import new_internal_token
from supportflow.processes import ManagedProcess, free_port
from supportflow.release.stack import BOT_SOURCE, CLASSIFIER_SOURCE, bot_service, classifier_service
from supportflow.settings import Settings


class ProxyError(SupportflowError):
    """HAProxy is missing or refused its configuration."""


@dataclass(frozen=True)
class Replica:
    bot: ManagedProcess
    rasa: ManagedProcess
    actions: ManagedProcess
    bot_port: int
    rasa_port: int


@dataclass
class ReplicatedStack:
    bot_url: str  # the proxy customers reach
    rasa_url: str  # the proxy the bots reach
    classifier: ManagedProcess
    replicas: list[Replica]
    proxy: subprocess.Popen[bytes] | None = None
    internal_token: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            self.proxy.wait(timeout=20)

    def __enter__(self) -> "ReplicatedStack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def haproxy_config(bot_port: int, bots: list[int], rasa_port: int, rasas: list[int], stats_socket: Path) -> str:
    """Round-robin over healthy replicas. A request that fails to connect is sent again to another replica
    (`redispatch`), and health checks take a killed replica out within a few seconds (a refused connection fails
    a check at once). A check waits up to 5 s for its answer: Rasa serves on one event loop, and under full load
    it answers its health check late, not never (with a check timeout of half a second the soak saw both Rasas
    marked down and 150 turns refused). An answer under way when its replica dies is lost, as on any load
    balancer, and the client sees the error."""

    def backend(name: str, ports: list[int], health: str) -> str:
        servers = "".join(f"    server {name}{i} 127.0.0.1:{port} check inter 1s fall 3 rise 2\n" for i, port in enumerate(ports))
        return f"backend {name}\n    balance roundrobin\n    option httpchk GET {health}\n    retries 3\n    option redispatch 1\n{servers}"

    return (
        f"global\n    maxconn 4096\n    stats socket {stats_socket} mode 600 level user\n\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    timeout check 5s\n"
        "    retry-on conn-failure empty-response response-timeout\n\n"
        f"frontend bots\n    bind 127.0.0.1:{bot_port}\n    default_backend bot\n\n"
        f"frontend rasas\n    bind 127.0.0.1:{rasa_port}\n    default_backend rasa\n\n"
        + backend("bot", bots, "/readyz")
        + "\n"
        + backend("rasa", rasas, "/")
    )


def wait_in_rotation(stats_socket: Path, count: int, timeout: float) -> None:
    """Until HAProxy has every replica in rotation: its health checks marked them down while they started, and
    `rise` checks must pass before it sends them traffic (until then it answers 503, or sends all to the others)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = server_states(stats_socket)
        except OSError:  # HAProxy has not opened its socket yet
            states = {}
        if len(states) == 2 * count and all(state == "UP" for state in states.values()):
            return
        if time.monotonic() > deadline:
            raise ProxyError(f"HAProxy did not put every replica in rotation within {timeout:.0f} s: {states}")
        time.sleep(0.25)


def server_states(stats_socket: Path) -> dict[str, str]:
    """Each backend server's status (`UP`, `DOWN`, ...) from HAProxy's stats socket (`show stat`, CSV)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(stats_socket))
        connection.sendall(b"show stat\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    rows = list(csv.reader(b"".join(chunks).decode().lstrip("# ").splitlines()))
    header, body = rows[0], [row for row in rows[1:] if row]
    name, server, status = header.index("pxname"), header.index("svname"), header.index("status")
    return {f"{row[name]}/{row[server]}": row[status] for row in body if row[server] not in ("FRONTEND", "BACKEND")}


def start_proxy(config: str, folder: Path) -> subprocess.Popen[bytes]:
    executable = shutil.which("haproxy")
    if executable is None:
        raise ProxyError("haproxy is not installed: apt-get install haproxy (`make system-deps`)")
    path = folder / "haproxy.cfg"
    path.write_text(config)
    checked = subprocess.run([executable, "-c", "-f", str(path)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise ProxyError(f"haproxy refused {path}: {checked.stdout[-500:]}{checked.stderr[-500:]}")
    with (folder / "haproxy.log").open("ab") as log:
        return subprocess.Popen([executable, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)


def start_replicas(
    settings: Settings, rasa_project: Path, rasa_model: Path, folder: Path, count: int = 2, timeout: float = 600
) -> ReplicatedStack:
    """`settings` name the shared stores (a PostgreSQL handoff queue and tracker store, a Redis lock store, one
    lake); each replica gets its own run folder and ports."""
    if not settings.rasa_tracker_store_url or not settings.rasa_tracker_store_url.startswith("postgresql"):
        raise SupportflowError("replicas share Rasa's conversations: set rasa_tracker_store_url to a PostgreSQL URL")
    if not settings.handoff_db_url.startswith("postgresql"):
        raise SupportflowError("replicas share the agents' queue: set handoff_db_url to a PostgreSQL URL")
    folder.mkdir(parents=True, exist_ok=True)
    token = new_internal_token()
    bot_proxy, rasa_proxy, classifier_port = free_port(), free_port(), free_port()
    secret = settings.secret_key.get_secret_value() if settings.secret_key else new_internal_token()
    shared = settings.model_copy(
        update={
            "internal_token": SecretStr(token),
            "secret_key": SecretStr(secret),  # every replica signs and checks conversation tokens alike
            "classifier_url": f"http://127.0.0.1:{classifier_port}",
            "bot_url": f"http://127.0.0.1:{bot_proxy}",
            "rasa_url": f"http://127.0.0.1:{rasa_proxy}",
        }
    )
    classifier = classifier_service(shared, classifier_port, folder / "logs", CLASSIFIER_SOURCE)
    replicas = []
    for index in range(count):
        bot_port, rasa_port, actions_port = free_port(), free_port(), free_port()
        own = shared.model_copy(update={"run_dir": folder / f"replica-{index}", "action_server_url": f"http://127.0.0.1:{actions_port}"})
        logs = folder / "logs" / f"replica-{index}"
        replicas.append(
            Replica(
                bot=bot_service(own, bot_port, logs, BOT_SOURCE),
                rasa=rasa_server(
                    own,
                    rasa_project,
                    rasa_model,
                    rasa_port,
                    f"{shared.classifier_url}/classify",
                    f"{own.action_server_url}/webhook",
                    logs / "rasa.log",
                    token,
                ),
                actions=action_server(own, rasa_project, actions_port, shared.bot_url, logs / "actions.log", token),
                bot_port=bot_port,
                rasa_port=rasa_port,
            )
        )
    stack = ReplicatedStack(shared.bot_url, shared.rasa_url, classifier, replicas, internal_token=token)
    stack.processes = [classifier] + [p for r in replicas for p in (r.actions, r.rasa, r.bot)]
    try:
        bots, rasas = [r.bot_port for r in replicas], [r.rasa_port for r in replicas]
        config = haproxy_config(bot_proxy, bots, rasa_proxy, rasas, folder / "haproxy.sock")
        stack.proxy = start_proxy(config, folder)
        for process in stack.processes:
            process.launch()
        for process in stack.processes:
            process.wait_healthy(timeout)
        wait_in_rotation(folder / "haproxy.sock", count, timeout)
    except BaseException:
        stack.stop()
        raise
    return stack
