"""The Kubernetes delivery, checked without a cluster (none can run here): every manifest parses, kinds
and apiVersions are the ones KubeRay 1.x and Kubernetes define, import paths and job entrypoints name
modules that exist, ports/names/env vars agree with the local settings and Serve config, and the
Grafana dashboard is valid JSON whose Prometheus queries name metrics the Serve app exports (the
check against a running Serve's endpoint is in test_serve.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from cluster import ray_head, ray_supervisor
from serve_app.metrics import EXPORTED
from tasador.settings import PREFIX, Settings

REPO = Path(__file__).resolve().parent.parent
KUBERAY = REPO / "kuberay"
KNOWN_KINDS = {
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Service"), ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayService"),
    ("argoproj.io/v1alpha1", "Application"), ("networking.k8s.io/v1", "NetworkPolicy"),
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def manifests() -> list[dict]:
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in manifests() if d["kind"] == kind]


def containers(doc: dict) -> list[dict]:
    return collect(doc, "containers")


def collect(doc: dict, key: str) -> list[dict]:
    """Every item of every list named ``key`` anywhere in ``doc`` (containers, volumes)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get(key), list):
                found.extend(node[key])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return found


def module_exists(dotted: str) -> bool:
    return importlib.util.find_spec(dotted) is not None


def test_every_yaml_parses_and_every_kind_is_known():
    files = sorted(KUBERAY.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and path.name != "kustomization.yaml" and "airflow" not in path.parts:
                assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS, f"{path.name}: {doc['kind']}"
    argo = yaml.safe_load((KUBERAY / "argocd-application.yaml").read_text())
    assert argo["spec"]["source"]["path"] == "kuberay"


def test_the_kustomization_lists_every_manifest_and_the_dashboard_file():
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in KUBERAY.glob("*.yaml")} - {"kustomization.yaml", "argocd-application.yaml"}
    assert listed == on_disk
    for generator in kustomization["configMapGenerator"]:
        for f in generator["files"]:
            assert (KUBERAY / f).is_file()


def test_the_rayservice_serves_the_same_application_as_the_local_config():
    local = yaml.safe_load((REPO / "serve_app" / "config.yaml").read_text())
    (service,) = by_kind("RayService")
    remote = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert remote["applications"] == local["applications"]
    assert remote["http_options"]["port"] == local["http_options"]["port"] == Settings().serve_port
    import serve_app.app as app_module

    for app in remote["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert module_exists(module) and hasattr(app_module, attr)
    names = {d["name"] for app in remote["applications"] for d in app["deployments"]}
    from serve_app.app import BulkPricer, PriceApi
    from serve_app.model import PriceModelServer

    assert names == {PriceApi.name, PriceModelServer.name, BulkPricer.name}
    assert service["spec"]["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
    for container in containers(service):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["haproxy-metrics"] == 9101  # Ray's default RAY_SERVE_HAPROXY_METRICS_PORT, scraped


def test_a_serve_pod_runs_serves_ingress_as_the_local_stack_does():
    """Each serving pod's node runs ``cluster.ray_supervisor``, which adds Serve's ingress from the
    settings in the pod's environment (its ConfigMap and its own variables) before ``ray start``: the
    same HAProxy wrapper, limits and deadlines as the local head (before, a pod ran Ray's bare HAProxy
    with an unbounded queue); its exporter on the pod's address for Prometheus, at Ray's default port."""
    (settings_map,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "tasador-settings"]
    (service,) = by_kind("RayService")
    local = ray_head.node_env(Settings())
    for container in containers(service):
        assert container["args"][-1].endswith("exec python -m cluster.ray_supervisor")  # no arguments: a pod
        env = {**settings_map["data"], **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
        added = ray_supervisor.pod_env(env)
        pod = {**env, **added}
        settings = Settings.load(pod)
        assert pod["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(ray_head.HAPROXY_WRAPPER)
        for name in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_METRICS_ENABLED", "RAY_SERVE_HAPROXY_RETRY_ON",
                     "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S", "TASADOR_HAPROXY_HTTP_REQUEST_TIMEOUT_S",
                     "TASADOR_HAPROXY_LARGE_BODY_PREFIX"):
            assert pod[name] == local[name], name
        assert pod["TASADOR_HAPROXY_QUEUE_TIMEOUT_MS"] == str(settings.serve_queue_timeout_ms) != "0"
        assert pod["TASADOR_HAPROXY_QUEUE_MAX"] == str(settings.serve_queue_max) != "0"
        assert pod["RAY_SERVE_HAPROXY_NBTHREAD"] == str(settings.serve_haproxy_threads)
        assert pod["TASADOR_HAPROXY_METRICS_HOST"] == "0.0.0.0"
        assert "RAY_SERVE_HAPROXY_METRICS_PORT" not in pod  # Ray's 9101, the container's haproxy-metrics port
    overridden = ray_supervisor.pod_env({"TASADOR_SERVE_QUEUE_TIMEOUT_MS": "25", "RAY_SERVE_HAPROXY_NBTHREAD": "3"})
    assert overridden["TASADOR_HAPROXY_QUEUE_TIMEOUT_MS"] == "25" and "RAY_SERVE_HAPROXY_NBTHREAD" not in overridden
    assert ray_supervisor.pod_env({"TASADOR_RAY_SERVE_HIGH_THROUGHPUT": "false"}) == {}


def test_rayjob_entrypoints_name_job_modules_that_exist_on_the_jobs_cluster():
    (cluster,) = by_kind("RayCluster")
    jobs = by_kind("RayJob")
    assert {j["metadata"]["name"] for j in jobs} >= {f"tasador-{s}" for s in
                                                     ("ingest", "process", "decide", "train", "promote")}
    for job in jobs:
        module = re.match(r"python -m ([\w.]+)", job["spec"]["entrypoint"]).group(1)
        assert module_exists(module), module
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]


def test_env_vars_are_settings_and_services_match_the_urls():
    settings_names = {PREFIX + name.upper() for name in Settings.model_fields}
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "tasador-settings"]
    tasador_vars = {k for k in config["data"] if k.startswith(PREFIX)}
    assert tasador_vars <= settings_names, tasador_vars - settings_names
    loaded = Settings.load(env=config["data"], dotenv="/nonexistent")
    services = {d["metadata"]["name"]: d for d in by_kind("Service")}
    for url in (loaded.raw_db, loaded.clean_db, loaded.mlflow_db, loaded.mlflow_uri, loaded.prometheus):
        host, port = re.match(r"\w+://(?:\w+@)?([\w-]+):(\d+)", url).groups()
        assert host in services, url
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, url
    (cluster,) = by_kind("RayCluster")
    assert loaded.ray_dashboard == f"http://{cluster['metadata']['name']}-head-svc:8265"
    for doc in manifests():
        for container in containers(doc):
            for ref in container.get("envFrom", []):
                name = (ref.get("configMapRef") or ref.get("secretRef"))["name"]
                assert name in ("tasador-settings", "tasador-secrets")


def test_postgres_creates_the_three_databases_and_minio_the_bucket():
    (init,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "postgres-init"]
    sql = init["data"]["databases.sql"]
    for database in ("raw_data", "clean_data", "mlflow"):
        assert f"CREATE DATABASE {database}" in sql
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "tasador-settings"]
    bucket = config["data"]["TASADOR_MLFLOW_ARTIFACTS"].removeprefix("s3://").split("/")[0]
    (job,) = [j for j in by_kind("Job") if j["metadata"]["name"] == "minio-create-bucket"]
    script = " ".join(containers(job)[0]["args"])
    assert f"mc mb --ignore-existing tasador/{bucket}" in script


def dashboard_queries() -> list[str]:
    dashboard = json.loads((KUBERAY / "grafana" / "tasador.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]


def dashboard_metrics() -> set[str]:
    return {m for q in dashboard_queries() for m in re.findall(r"\bray_tasador_\w+", q)}


def test_the_grafana_dashboard_queries_metrics_the_app_exports():
    names = dashboard_metrics()
    assert len(dashboard_queries()) >= 8
    exported = set(EXPORTED.values())
    histograms = {f"{n}_bucket" for n in exported}
    assert names <= exported | histograms, names - exported - histograms
    for wanted in ("requests", "latency", "errors", "model_version", "model_rmse"):
        assert any(EXPORTED[wanted] in n for n in names), wanted


@pytest.mark.parametrize("path", [".github/workflows/ci.yaml"])
def test_the_ci_workflow_runs_the_readme_test_command_and_pushes_an_image_per_commit(path):
    workflow = yaml.safe_load((REPO / path).read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    assert any(s.get("run") == "bash .ci/run" for s in steps)
    pushes = [s for s in steps if "build-push-action" in s.get("uses", "")]
    assert pushes and "${{ github.sha }}" in pushes[0]["with"]["tags"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311", dockerfile, re.M)


def test_every_credential_comes_from_a_secret_never_a_literal():
    """Any env var named like a credential takes its value from a Secret; none is written in a
    manifest, the settings ConfigMap or the Airflow values."""
    docs = [*manifests(), yaml.safe_load((KUBERAY / "airflow" / "values.yaml").read_text())]
    literal = [(c.get("name"), e["name"]) for d in docs for c in containers(d) for e in c.get("env", [])
               if SECRET_NAME.search(e["name"]) and not e["name"].endswith("_FILE") and "value" in e]
    assert literal == []
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "tasador-settings"]
    assert [k for k in config["data"] if SECRET_NAME.search(k) and not k.endswith("_FILE")] == []
    assert all(d["kind"] != "Secret" for d in manifests())  # Secrets are made out of band, never committed
    airflow = yaml.safe_load((KUBERAY / "airflow" / "values.yaml").read_text())
    assert {"envName": "RAY_AUTH_TOKEN", "secretName": "tasador-ray-token", "secretKey": "auth_token"} \
        in airflow["secret"]


def test_ray_clusters_take_their_token_from_a_secret():
    (jobs,) = by_kind("RayCluster")
    (service,) = by_kind("RayService")
    for spec in (jobs["spec"], service["spec"]["rayClusterConfig"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": "tasador-ray-token"}
    for cluster in (service, jobs):  # the replicas check it; promotions (on the jobs head) send it
        mounts = [m for c in containers(cluster) for m in c.get("volumeMounts", [])]
        assert {m["mountPath"] for m in mounts if m["name"] == "serve-admin-token"} == {"/etc/tasador/serve-admin"}
    (head,) = jobs["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "TASADOR_SERVE_URL", "value": "http://tasador-serve-serve-svc:8000"} in head["env"]
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "tasador-settings"]
    assert config["data"]["TASADOR_SERVE_ADMIN_TOKEN_FILE"].startswith("/etc/tasador/serve-admin/")


def _allowed_sources(policy: dict, port: int) -> list[dict]:
    """The ``from`` entries of the rules that open ``port`` (a rule without ports opens all)."""
    found = []
    for rule in policy["spec"]["ingress"]:
        if not rule.get("ports") or any(p["port"] == port for p in rule["ports"]):
            found += rule.get("from", [{"anyone": True}])
    return found


@pytest.mark.parametrize("target, port, allowed", [
    ({"app": "postgres"}, 5432, [{"ray.io/is-ray-node": "yes"}, {"app": "mlflow"}, {"tier": "airflow"},
                                 {"app": "grafana"}]),
    ({"app": "mlflow"}, 5000, [{"ray.io/is-ray-node": "yes"}, {"batch.kubernetes.io/job-name": "mlflow-users"}]),
    ({"app": "minio"}, 9000, [{"app": "mlflow"}, {"batch.kubernetes.io/job-name": "minio-create-bucket"}]),
    ({"ray.io/node-type": "head"}, 6379, [{"ray.io/is-ray-node": "yes"}]),
    ({"ray.io/node-type": "head"}, 8265, [{"ray.io/is-ray-node": "yes"}, {"tier": "airflow"}]),
])
def test_network_policies_let_only_the_pods_that_need_them_in(target, port, allowed):
    (policy,) = [p for p in by_kind("NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"] == target]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = _allowed_sources(policy, port)
    assert all(set(s) == {"podSelector"} for s in sources), sources  # no ipBlock, no namespace, no "anyone"
    assert [s["podSelector"]["matchLabels"] for s in sources] == allowed
    pods = {tuple(sorted(d["spec"]["template"]["metadata"]["labels"].items()))
            for d in manifests() if d["kind"] in ("Deployment", "StatefulSet")}
    for labels in allowed:  # every label names pods that exist (ours, KubeRay's, Airflow's chart)
        assert (any(set(labels.items()) <= set(p) for p in pods) or set(labels) & {
            "ray.io/is-ray-node", "tier", "batch.kubernetes.io/job-name"}), labels


def test_the_prediction_api_stays_public_on_the_serve_head():
    (policy,) = [p for p in by_kind("NetworkPolicy") if p["metadata"]["name"] == "ray-head-ingress"]
    assert {"anyone": True} in _allowed_sources(policy, 8000)
    assert {"anyone": True} not in _allowed_sources(policy, 8265)


def test_mlflow_runs_its_auth_app_and_each_cluster_has_its_identity_by_file():
    (server,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (command,) = containers(server)[0]["args"]
    assert "--app-name basic-auth" in command and "MLFLOW_AUTH_ADMIN_PASSWORD" in command
    (auth,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "mlflow-auth"]
    ini = auth["data"]["basic_auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in ini and "password" not in ini.replace("admin_username", "")
    (users,) = [j for j in by_kind("Job") if j["metadata"]["name"] == "mlflow-users"]
    assert "ensure_users" in " ".join(containers(users)[0]["command"])
    assert {i["key"] for v in users["spec"]["template"]["spec"]["volumes"] for i in v["secret"]["items"]} == {
        "mlflow-admin", "mlflow-writer", "mlflow-reader"}
    (jobs,) = by_kind("RayCluster")
    (service,) = by_kind("RayService")
    for cluster, identity in ((jobs, "mlflow-writer"), (service, "mlflow-reader")):
        for container in containers(cluster):
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["MLFLOW_TRACKING_AUTH"] == "tasador-file"
            assert env["TASADOR_MLFLOW_CREDENTIALS_FILE"] == f"/etc/tasador/mlflow/{identity}"
            assert "MLFLOW_TRACKING_PASSWORD" not in env
        items = [i for v in collect(cluster, "volumes") if v["name"] == "mlflow-identity" for i in v["secret"]["items"]]
        assert items and {i["key"] for i in items} == {identity}  # each cluster sees its own identity only



def test_every_tasador_variable_in_the_manifests_is_a_setting():
    """A misspelt or renamed setting in a manifest would be silently ignored by the pods it configures;
    Settings.load refuses it, so it must not be there."""
    from tasador.settings import NOT_SETTINGS

    names = set()
    for path in (REPO / "kuberay").rglob("*.yaml"):
        names |= set(re.findall(r"\b(TASADOR_[A-Z0-9_]+)\b", path.read_text()))
    known = {PREFIX + name.upper() for name in Settings.model_fields} | NOT_SETTINGS.keys()
    assert names and names <= known, sorted(names - known)


def test_every_ray_pod_runs_kuberays_start_command_through_the_supervisor():
    """A dead dashboard is restarted, not the end of the node (cluster/ray_supervisor.py): with the
    annotation, KubeRay keeps the container's command and hands it the generated ``ray start``."""
    from cluster.ray_supervisor import ray_arguments

    for cluster in by_kind("RayCluster") + by_kind("RayService"):
        assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
        ray_containers = [c for c in containers(cluster) if c["name"] in ("ray-head", "ray-worker")]
        assert {c["name"] for c in ray_containers} == {"ray-head", "ray-worker"}
        for container in ray_containers:
            assert container["args"] == ["ulimit -n 65536; exec python -m cluster.ray_supervisor"]
    generated = ("ray start --head --dashboard-host=0.0.0.0 --metrics-export-port=8080 --block "
                 """--resources='{"serve": 1}' --labels='{"zone": "a b"}'""")
    assert ray_arguments([], {"KUBERAY_GEN_RAY_START_CMD": generated}) == [
        "start", "--head", "--dashboard-host=0.0.0.0", "--metrics-export-port=8080", "--block",
        '--resources={"serve": 1}', '--labels={"zone": "a b"}']
    with pytest.raises(SystemExit, match="not a `ray start` command"):
        ray_arguments([], {})
