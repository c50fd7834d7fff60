"""The Kubernetes manifests: valid objects (Kubernetes' own schemas, offline), one kustomization listing them,
the names, ports, probes and settings the services really use, and who may reach what: the NetworkPolicies
(evaluated here as Kubernetes evaluates them) and the Ingress, which exposes the public routes only."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from supportflow.dialogue.stores import (
    IN_MEMORY_LOCKS,
    LOCK_STORE_DB,
    LOCK_STORE_HOST,
    LOCK_STORE_PASSWORD,
    LOCK_STORE_PORT,
    LOCK_STORE_TYPE,
    store_environment,
)
from supportflow.release.stack import Ports
from supportflow.settings import Settings
from tests.deploy.redis_auth import check_password_required

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml"))
DOCUMENTS = [(path.name, document) for path in MANIFESTS for document in yaml.safe_load_all(path.read_text()) if document]
SECRETS_TEMPLATE = K8S / "secrets.example.yaml"
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for _, document in DOCUMENTS if document["kind"] == kind}


def container(deployment: str) -> dict[str, Any]:
    (only,) = objects("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_document_is_a_valid_kubernetes_object() -> None:
    import kubernetes_validate

    assert DOCUMENTS, "no manifests in deploy/k8s"
    template = [(SECRETS_TEMPLATE.name, document) for document in yaml.safe_load_all(SECRETS_TEMPLATE.read_text())]
    for name, document in DOCUMENTS + template:
        assert {"apiVersion", "kind", "metadata"} <= set(document) and document["metadata"].get("name"), name
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {document['kind']} {document['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_kustomization_lists_every_manifest_and_names_the_images() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(path.name for path in MANIFESTS)
    assert kustomization["namespace"] == "supportflow"
    images = {c["image"] for _, d in DOCUMENTS if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    # The project's own images are named bare, and a release sets their tags here; a third-party image is pinned to
    # a version where it is used, and the kustomization leaves it alone.
    ours = {image for image in images if image.startswith("supportflow-")}
    third_party = images - ours
    assert {image["name"] for image in kustomization["images"]} == ours and not [image for image in ours if ":" in image]
    assert {image.partition(":")[0] for image in third_party} == {"prefecthq/prefect", "redis"}
    unpinned = [image for image in third_party if not re.fullmatch(r"[\w./-]+:\d+\.\d+[\w.-]*", image)]
    assert not unpinned, f"pin a version: {unpinned}"


def test_kustomize_builds_the_whole_set() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not run (the manifests were validated one by one)")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    kinds = [document["kind"] for document in yaml.safe_load_all(built.stdout)]
    assert len(kinds) == len(DOCUMENTS) and kinds.count("Deployment") == 7


def test_bentos_rasa_and_action_server_use_their_images_ports_and_health_paths() -> None:
    ports = Ports()
    bentos = {
        "classifier": ("supportflow-classifier", ROOT / "bentos" / "classifier" / "service.py", ports.classifier),
        "bot": ("supportflow-bot", ROOT / "bentos" / "bot" / "service.py", ports.bot),
    }
    for deployment, (image, service_file, port) in bentos.items():
        spec = container(deployment)
        assert spec["image"] == image and f'@bentoml.service(name="{image}"' in service_file.read_text()
        assert {"name": "BENTOML_PORT", "value": str(port)} in spec["env"]  # the bento container's own port setting
        assert spec["ports"][0]["containerPort"] == port
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz" and spec["livenessProbe"]["httpGet"]["path"] == "/livez"
        annotations = objects("Deployment")[deployment]["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics", "prometheus.io/port": str(port)}
    rasa, actions = container("rasa"), container("actions")
    assert rasa["image"] == actions["image"] == "supportflow-rasa"
    assert rasa["args"][rasa["args"].index("--port") + 1] == str(ports.rasa) == str(rasa["ports"][0]["containerPort"])
    assert "--enable-api" not in rasa["args"], "nothing in Kubernetes needs Rasa's HTTP API: it stays off"
    probes = {rasa[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"/webhooks/rest/"}  # the REST channel's own health route, there without the API
    assert actions["args"][:2] == ["run", "actions"] and actions["args"][actions["args"].index("--port") + 1] == str(ports.actions)
    assert actions["readinessProbe"]["httpGet"]["path"] == "/health"
    redis_service, redis_port = objects("Service")["redis"], container("redis")["ports"][0]["containerPort"]
    assert redis_service["spec"]["ports"][0]["port"] == redis_port
    # the locks in the shared Redis, as `supportflow serve` sets them for its URL (database 1, as in Compose)
    locks = store_environment(Settings(_env_file=None, rasa_lock_store_url=f"redis://{redis_service['metadata']['name']}:{redis_port}/1"))
    assert [locks[name] for name in (LOCK_STORE_TYPE, LOCK_STORE_HOST, LOCK_STORE_PORT, LOCK_STORE_DB)] == ["redis", "redis", "6379", "1"]
    assert {e["name"]: e["value"] for e in rasa["env"] if "value" in e} == {
        "SUPPORTFLOW_CLASSIFY_URL": f"http://classifier:{ports.classifier}/classify",
        "SUPPORTFLOW_ACTION_WEBHOOK_URL": f"http://actions:{ports.actions}/webhook",
        **{name: locks[name] for name in IN_MEMORY_LOCKS if name != LOCK_STORE_PASSWORD},
    }
    password = next(e for e in rasa["env"] if e["name"] == LOCK_STORE_PASSWORD)["valueFrom"]["secretKeyRef"]
    assert password == {"name": "supportflow-secrets", "key": "redis_password"}  # required: no `optional`
    # every variable the generated endpoints.yml names is set, or Rasa refuses to start
    named = {e["name"] for e in rasa["env"]}
    assert {"SUPPORTFLOW_RASA_TRACKER_STORE_URL", "SUPPORTFLOW_INTERNAL_TOKEN", *IN_MEMORY_LOCKS} <= named
    # what the generated Rasa project (supportflow/dialogue) reads from the environment and writes to disk
    project = (ROOT / "supportflow" / "dialogue" / "project.py").read_text()
    assert "${SUPPORTFLOW_ACTION_WEBHOOK_URL}" in project and '"endpoints.yml"' in project and '"credentials.yml"' in project
    assert "SUPPORTFLOW_CLASSIFY_URL" in (ROOT / "supportflow" / "dialogue" / "rasa_files" / "supportflow_classifier.py").read_text()
    assert "SUPPORTFLOW_BOT_URL" in (ROOT / "supportflow" / "dialogue" / "rasa_files" / "actions.py").read_text()
    assert rasa["args"][rasa["args"].index("--model") + 1] == "models/supportflow.tar.gz"
    for name, service in objects("Service").items():
        deployment = objects("Deployment")[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"], name
        assert service["spec"]["ports"][0]["port"] == container(name)["ports"][0]["containerPort"], name


def test_rasa_runs_replicas_only_on_a_shared_lock_store_that_requires_the_secrets_password() -> None:
    """Replicas with locks of their own could process one conversation's messages at once, on two servers."""
    rasa, env = objects("Deployment")["rasa"], {e["name"]: e for e in container("rasa")["env"]}
    replicas = rasa["spec"]["replicas"]
    assert replicas == 1 or env[LOCK_STORE_TYPE].get("value") == "redis", "Rasa replicas must share their locks"
    assert replicas > 1, "one Rasa pod lost would stop every conversation"
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["rasa"]["environment"]
    assert {name: env[name]["value"] for name in (LOCK_STORE_TYPE, LOCK_STORE_HOST, LOCK_STORE_PORT, LOCK_STORE_DB)} == {
        name: compose[name] for name in (LOCK_STORE_TYPE, LOCK_STORE_HOST, LOCK_STORE_PORT, LOCK_STORE_DB)
    }
    redis = objects("Deployment")["redis"]["spec"]
    assert redis["replicas"] == 1 and redis["strategy"] == {"type": "Recreate"}, "one lock store, never two at once"
    spec = container("redis")
    reference = next(e for e in spec["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "supportflow-secrets", "key": "redis_password"}  # required: no `optional`
    assert env[LOCK_STORE_PASSWORD]["valueFrom"]["secretKeyRef"] == reference  # Rasa sends the one Redis requires
    assert spec["command"][:2] == ["sh", "-c"] and '--requirepass "$REDIS_PASSWORD"' in spec["command"][2]  # quoted: one word
    server = shlex.split(spec["command"][2])
    assert server[:2] == ["exec", "redis-server"]
    assert server[server.index("--save") + 1] == "" and server[server.index("--appendonly") + 1] == "no"  # locks only
    assert spec["securityContext"]["runAsNonRoot"] and not spec["securityContext"]["allowPrivilegeEscalation"]


def test_the_redis_command_starts_a_server_that_answers_only_with_the_password(tmp_path: Path) -> None:
    """The manifest's own shell command, run with Debian's redis-server on a loopback port of this machine."""
    check_password_required(*container("redis")["command"], tmp_path)
    assert not list(tmp_path.iterdir()), "locks are not worth persisting: Redis writes nothing"


def test_the_settings_configmap_holds_real_settings_and_the_urls_point_at_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    data = objects("ConfigMap")["supportflow-settings"]["data"]
    fields = Settings.model_fields
    unknown = [key for key in data if not key.startswith("SUPPORTFLOW_") or key.removeprefix("SUPPORTFLOW_").lower() not in fields]
    assert not unknown, f"not supportflow settings: {unknown}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # pydantic-settings parses and type-checks every value
    services = {name: container(name)["ports"][0]["containerPort"] for name in ("bot", "classifier", "rasa", "actions", "mlflow")}
    assert settings.classifier_url == f"http://classifier:{services['classifier']}"
    assert settings.bot_url == f"http://bot:{services['bot']}"
    assert settings.rasa_url == f"http://rasa:{services['rasa']}"
    assert settings.action_server_url == f"http://actions:{services['actions']}"
    assert settings.mlflow_tracking_uri == f"http://mlflow:{services['mlflow']}"
    secrets = [name for name, field in fields.items() if "SecretStr" in str(field.annotation)]
    assert not [key for key in data if key.removeprefix("SUPPORTFLOW_").lower() in secrets], "tokens belong in a Secret"
    allowed = objects("ConfigMap")["mlflow-settings"]["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert settings.mlflow_tracking_uri.removeprefix("http://") in allowed  # MLflow 3 refuses other Host headers


def test_tokens_reach_the_bot_from_secrets() -> None:
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container("bot")["env"]}
    for setting in ("twilio_auth_token", "secret_key", "openai_api_key", "handoff_db_url"):
        reference = env[f"SUPPORTFLOW_{setting.upper()}"]
        assert reference["name"] == "supportflow-secrets" and reference["key"] == setting
    assert not env["SUPPORTFLOW_HANDOFF_DB_URL"].get("optional"), "replicas must share one handoff queue: no silent SQLite default"
    assert not env["SUPPORTFLOW_SECRET_KEY"].get("optional"), "replicas must share one key: no key file per pod"
    assert "SUPPORTFLOW_AGENT_TOKEN" not in env  # retired: agents have their own tokens, and the bot refuses the shared one
    bind = next(e for e in container("bot")["env"] if e["name"] == "SUPPORTFLOW_BIND_HOST")
    assert bind["value"] == "0.0.0.0"  # as the bento container listens: the agent API then needs registered agents
    # every secret key a manifest reads is in the template operators fill in
    template = {d["metadata"]["name"]: set(d["stringData"]) for d in yaml.safe_load_all(SECRETS_TEMPLATE.read_text())}
    for _, document in DOCUMENTS:
        for spec in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for variable in spec.get("env", []):
                if reference := variable.get("valueFrom", {}).get("secretKeyRef"):
                    assert reference["key"] in template[reference["name"]], f"{reference} is not in {SECRETS_TEMPLATE.name}"
    for deployment in ("bot", "classifier", "rasa", "actions"):  # every side of an internal call has the one token
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container(deployment)["env"]}
        reference = env["SUPPORTFLOW_INTERNAL_TOKEN"]
        assert reference == {"name": "supportflow-secrets", "key": "internal_token"}, deployment  # required: no `optional`
    mlflow = container("mlflow")
    backend = next(e for e in mlflow["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")["valueFrom"]["secretKeyRef"]
    assert backend == {"name": "mlflow-secrets", "key": "backend_store_uri"} and "--serve-artifacts" in mlflow["command"]


def test_the_prefect_worker_serves_the_kubernetes_pool_of_prefect_yaml() -> None:
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = prefect_yaml["definitions"]["work_pools"]["kubernetes"]
    worker = container("prefect-worker")
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"] and command[command.index("--pool") + 1] == pool["name"]
    assert command[command.index("--type") + 1] == "kubernetes"
    assert re.fullmatch(r"prefecthq/prefect:3\.8\.\d+-python3\.11-kubernetes", worker["image"])
    role = objects("Role")["prefect-worker"]
    assert any("jobs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    assert objects("Deployment")["prefect-worker"]["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"


def test_the_rasa_image_installs_the_pinned_rasa_on_python_3_10() -> None:
    dockerfile = (ROOT / "deploy" / "rasa" / "Dockerfile").read_text()
    assert "FROM python:3.10-slim" in dockerfile and "-c /tmp/constraints.txt rasa==3.6.21" in dockerfile
    assert "COPY deploy/rasa/constraints.txt" in dockerfile and "COPY --chown=1001:1001 .rasa/ /app/" in dockerfile
    pins = (ROOT / "deploy" / "rasa" / "constraints.txt").read_text().split()
    assert "rasa==3.6.21" in pins and any(pin.startswith("rasa-sdk==") for pin in pins)


def test_the_secrets_templates_placeholders_are_refused_by_the_bot() -> None:
    """A template copied as is must not start a bot: its values are public, so they guard nothing."""
    from pydantic import SecretStr

    from supportflow.keys import SecretKeyError, checked_secret

    template = {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all(SECRETS_TEMPLATE.read_text())}
    for key in ("secret_key", "twilio_auth_token"):
        with pytest.raises(SecretKeyError, match="placeholder"):
            checked_secret(f"SUPPORTFLOW_{key.upper()}", SecretStr(template["supportflow-secrets"][key]))


# Who may reach what.

Pod = tuple[str, dict[str, str]]  # (namespace, labels)
INGRESS_CONTROLLER: Pod = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS: Pod = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGER: Pod = ("supportflow", {"app": "some-other-workload"})  # any other pod, e.g. a compromised one
OUTSIDER: Pod = ("default", {"app": "anything"})
FLOW_RUN: Pod = ("supportflow", {"app.kubernetes.io/component": "pipeline", "job-name": "pipeline-run-1"})


def pod(deployment: str) -> Pod:
    return ("supportflow", objects("Deployment")[deployment]["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels are evaluated here: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def peer_matches(peer: dict[str, Any], source: Pod) -> bool:
    namespace, labels = source
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": namespace}  # the label Kubernetes sets on every namespace
        return selects(peer["namespaceSelector"], namespace_labels) and selects(peer.get("podSelector", {}), labels)
    return namespace == "supportflow" and selects(peer["podSelector"], labels)


def may_reach(source: Pod, deployment: str, port: int) -> bool:
    """Kubernetes' rule: a pod some policy selects for Ingress takes only what one of those policies allows."""
    target = pod(deployment)[1]
    policies = [p["spec"] for p in objects("NetworkPolicy").values() if selects(p["spec"]["podSelector"], target)]
    assert policies and all(p["policyTypes"] == ["Ingress"] for p in policies)
    return any(
        any(peer_matches(peer, source) for peer in rule.get("from", [])) and any(p["port"] == port for p in rule.get("ports", []))
        for policy in policies
        for rule in policy.get("ingress", [])
    )


def test_the_namespace_denies_every_connection_no_policy_allows() -> None:
    deny = objects("NetworkPolicy")["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}  # every pod selected, nothing allowed


def test_each_service_is_reachable_only_by_those_that_call_it() -> None:
    ports = Ports()
    allowed = {
        ("bot", ports.bot): {"ingress controller": INGRESS_CONTROLLER, "actions": pod("actions"), "prometheus": PROMETHEUS},
        ("rasa", ports.rasa): {"bot": pod("bot")},
        ("actions", ports.actions): {"rasa": pod("rasa")},
        ("classifier", ports.classifier): {"rasa": pod("rasa"), "bot": pod("bot"), "prometheus": PROMETHEUS},
        ("mlflow", 5000): {"flow runs": FLOW_RUN, "bot": pod("bot"), "ingress controller": INGRESS_CONTROLLER},
        ("redis", 6379): {"rasa": pod("rasa")},
    }
    everyone = {
        "ingress controller": INGRESS_CONTROLLER,
        "prometheus": PROMETHEUS,
        "stranger": STRANGER,
        "outsider": OUTSIDER,
        "flow runs": FLOW_RUN,
        **{name: pod(name) for name in ("bot", "classifier", "rasa", "actions", "mlflow", "prefect-worker", "redis")},
    }
    for (deployment, port), callers in allowed.items():
        for name, source in callers.items():
            assert may_reach(source, deployment, port), f"{name} must reach {deployment}:{port}"
        for name, source in everyone.items():
            if name not in callers:
                assert not may_reach(source, deployment, port), f"{name} must not reach {deployment}:{port}"
        assert not may_reach(callers[next(iter(callers))], deployment, port + 1), "only the service's own port"


def routed(path: str) -> list[tuple[str, str]]:
    """The (host, service) pairs the Ingresses send a path to, by Kubernetes' Exact and Prefix matching."""
    found = []
    for ingress in objects("Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                prefix = entry["path"].rstrip("/")
                matched = path == entry["path"] if entry["pathType"] == "Exact" else path == prefix or path.startswith(f"{prefix}/")
                if matched:
                    found.append((rule["host"], entry["backend"]["service"]["name"]))
    return found


def test_the_ingress_exposes_the_bots_public_routes_and_nothing_internal() -> None:
    bot_host = objects("Ingress")["bot"]["spec"]["rules"][0]["host"]
    for public in (
        "/",
        "/chat",
        "/chat/web-1/replies",
        "/twilio",
        "/twilio/status",
        "/twilio/voice",
        "/agent/handoffs",
        "/agent/handoffs/3/claim",
    ):
        assert (bot_host, "bot") in routed(public), public
    for internal in ("/internal/answer", "/metrics", "/readyz", "/livez", "/healthz", "/docs.json", "/schema.json", "/status", "/classify"):
        assert (bot_host, "bot") not in routed(internal), f"{internal} must not leave the cluster"
    body_cap = objects("Ingress")["bot"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body_cap == f"{Settings.model_fields['max_request_bytes'].default // 1024}k"
    services = {
        entry["backend"]["service"]["name"]
        for ingress in objects("Ingress").values()
        for rule in ingress["spec"]["rules"]
        for entry in rule["http"]["paths"]
    }
    assert services == {"bot", "mlflow"}, "Rasa, the action server and the classifier never leave the cluster"


def test_mlflow_is_exposed_only_behind_basic_auth_from_a_secret_in_the_template() -> None:
    annotations = objects("Ingress")["mlflow"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    template = {d["metadata"]["name"]: set(d["stringData"]) for d in yaml.safe_load_all(SECRETS_TEMPLATE.read_text())}
    assert template[annotations["nginx.ingress.kubernetes.io/auth-secret"]] == {"auth"}
    host = objects("Ingress")["mlflow"]["spec"]["rules"][0]["host"]
    assert host in objects("ConfigMap")["mlflow-settings"]["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")  # MLflow 3 checks Host
    worker = {e["name"]: e for e in container("prefect-worker")["env"]}
    assert worker["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["key"] == "prefect_api_auth_string"
