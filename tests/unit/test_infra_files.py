"""The cluster files in infra/ (compose, Kubernetes, Dockerfile, Prometheus) cannot run here (no Docker engine,
no Kubernetes): check them with the tools that can, and check that every command, module, flag and setting
they name exists in this project."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from control.cli import build_parser
from settings import load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose" / "compose.yaml"
K8S = sorted((INFRA / "k8s").glob("*.yaml"))
JOB_PARSERS = {"stream_jobs.serving_job": "stream_jobs.serving_job", "stream_jobs.learning_job": "stream_jobs.learning_job"}


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _sensorloop_command(argv: list[str]) -> None:
    """``sensorloop ...`` as a container would run it: must parse with this project's CLI."""
    if argv == ["--help"]:
        return
    build_parser().parse_args(argv)  # exits (SystemExit) on an unknown command or flag


def test_yaml_files_pass_yamllint():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 130}, document-start: disable}}")
    files = [COMPOSE, INFRA / "compose" / "prometheus.yml", *K8S]
    problems = [f"{f.name}:{p.line}: {p.desc}" for f in files for p in linter.run(f.read_text(), config)
                if p.level == "error"]
    assert problems == []


def _compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_commands_settings_and_ports_exist():
    services = _compose_services()
    ours = {name: s for name, s in services.items() if s.get("image", "").startswith("sensorloop")}
    assert {"jobmanager", "taskmanager", "setup", "submit", "labeling", "cli"} <= set(ours)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    for name, service in ours.items():
        env = service.get("environment", {})
        load_config(path=None, env={k: str(v) for k, v in env.items()})  # unknown or invalid settings raise
        command = service.get("command")
        entrypoint = service.get("entrypoint")
        if entrypoint == ["sensorloop"]:
            _sensorloop_command(list(command))
        elif entrypoint == ["/bin/sh", "-c"]:
            for part in command[0].split("&&"):
                words = shlex.split(part)
                assert words[0] == "sensorloop", part
                _sensorloop_command(words[1:])
        else:
            assert command in ("jobmanager", "taskmanager"), name  # the Flink image's entrypoint
    properties = dict(line.split(": ", 1) for line in
                      services["jobmanager"]["environment"]["FLINK_PROPERTIES"].strip().splitlines())
    assert properties["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    python = properties["python.executable"]
    assert python == services["jobmanager"]["environment"]["SENSORLOOP_FLINK_PYTHON_EXECUTABLE"]
    prometheus = yaml.safe_load((INFRA / "compose" / "prometheus.yml").read_text())
    targets = [c.get("static_configs", [{}])[0].get("targets", []) or [f"{n}:{c['dns_sd_configs'][0]['port']}"
               for n in c.get("dns_sd_configs", [{}])[0].get("names", [])] for c in prometheus["scrape_configs"]]
    assert {t.split(":")[1] for group in targets for t in group} == {properties["metrics.reporter.prom.port"]}


@pytest.mark.skipif(shutil.which("docker-compose") is None and shutil.which("docker") is None,
                    reason="no compose client installed (scripts/bootstrap.sh installs Debian's docker-compose as root)")
def test_compose_file_is_valid_for_the_compose_client():
    import os

    client = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    env = {**os.environ, "SENSORLOOP_LABEL_TOKEN": "a-secret-of-24-characters"}
    result = subprocess.run([*client, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    unset = {k: v for k, v in env.items() if k != "SENSORLOOP_LABEL_TOKEN"}
    refused = subprocess.run([*client, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                             timeout=60, env=unset)
    assert refused.returncode != 0 and "SENSORLOOP_LABEL_TOKEN" in refused.stderr  # no default token ships


def test_dockerfile_copies_what_exists_and_builds_the_jars():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    assert "sensorloop setup --jars-only" in text
    _sensorloop_command(["setup", "--jars-only"])
    assert "flink-python-" in text and "/opt/flink/lib/" in text  # PyFlink's runtime jar on the cluster classpath
    services = _compose_services()
    assert services["jobmanager"]["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert (COMPOSE.parent / services["jobmanager"]["build"]["context"] / "infra/docker/Dockerfile").is_file()


def test_the_image_and_the_wheel_carry_every_package_and_nothing_else():
    import tomllib

    from infra.jars import jars_dir

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in project["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in (INFRA / "docker" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line}
    assert packages <= copied, packages - copied  # the image installs the project from these folders
    assert project["include-package-data"] is False  # the wheel ships no compose, Kubernetes or Docker files
    assert all(not pattern.startswith(("compose", "k8s", "docker")) for pattern in project["package-data"]["infra"])
    import infra

    assert Path(infra.__file__).parent not in jars_dir("").parents  # downloads go to a cache, not the package


def test_kubernetes_core_resources_validate_against_the_api_schema():
    import kubernetes_validate

    for path in K8S:
        for doc in _documents(path):
            if doc["kind"] == "FlinkDeployment":
                pod = dict(doc["spec"]["podTemplate"], metadata={"name": "template"})
                kubernetes_validate.validate(pod, "1.31", strict=True)
            else:
                kubernetes_validate.validate(doc, "1.31", strict=True)


def test_flink_deployments_run_our_jobs_on_the_mounted_configuration(tmp_path, monkeypatch):
    from stream_jobs.flink_env import parse_job_args

    deployments = [d for p in K8S for d in _documents(p) if d["kind"] == "FlinkDeployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"sensorloop-serving", "sensorloop-learning"}
    config_map = next(d for p in K8S for d in _documents(p) if d["kind"] == "ConfigMap")
    settings = tmp_path / "sensorloop.toml"
    settings.write_text(config_map["data"]["sensorloop.toml"])
    cfg = load_config(settings, env={})
    monkeypatch.setenv("SENSORLOOP_CONFIG", str(settings))  # the pod's environment, mounted file at its path
    for d in deployments:
        assert d["apiVersion"] == "flink.apache.org/v1beta1"
        spec = d["spec"]
        assert spec["flinkVersion"].startswith("v2_")
        job = spec["job"]
        assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
        assert job["jarURI"].startswith("local:///opt/flink/opt/flink-python-")
        assert job["upgradeMode"] == "savepoint" and spec["flinkConfiguration"][
            "execution.checkpointing.savepoint-dir"].startswith("s3://")
        args = job["args"]
        module = args[args.index("-pym") + 1]
        assert module in JOB_PARSERS and d["metadata"]["name"].endswith(module.split(".")[1].removesuffix("_job"))
        env = {e["name"]: e["value"] for e in spec["podTemplate"]["spec"]["containers"][0]["env"]}
        assert env["SENSORLOOP_CONFIG"].startswith(spec["podTemplate"]["spec"]["containers"][0]["volumeMounts"][0][
            "mountPath"])
        job_cfg, _ = parse_job_args(module.split(".")[1].removesuffix("_job"), args[args.index("-pym") + 2:])
        assert job_cfg == cfg and job_cfg.broker.bootstrap and job_cfg.registry.path.startswith("s3://")
        assert args[args.index("-pyclientexec") + 1] == cfg.flink.python_executable
        assert spec["flinkConfiguration"]["python.executable"] == cfg.flink.python_executable


def test_no_shipped_file_carries_a_default_labeling_token():
    for path in [COMPOSE, *K8S, INFRA / "docker" / "Dockerfile", ROOT / "sensorloop.example.toml"]:
        text = path.read_text()
        assert "change-me" not in text and "LABEL_TOKEN:-" not in text, path


def test_unknown_environment_settings_are_refused():
    from settings import ConfigError

    with pytest.raises(ConfigError, match=r"SENSORLOOP_FLINK_PARALELISM: no setting flink.paralelism "
                                          r"\(did you mean \$SENSORLOOP_FLINK_PARALLELISM\?\)"):
        load_config(path=None, env={"SENSORLOOP_FLINK_PARALELISM": "2"})


def test_status_reads_every_taskmanager_of_every_job():
    """``flink.metrics_urls`` on a cluster names each job's TaskManagers by a name that resolves to all of them
    (``dns+``): on Kubernetes a headless service that selects the FlinkDeployment's TaskManager pods (the native
    Kubernetes labels ``app: <deployment>``, ``component: taskmanager``), in compose the replicated service."""
    from urllib.parse import urlsplit

    config_map = next(d for p in K8S for d in _documents(p) if d["kind"] == "ConfigMap")
    urls = load_config_text(config_map["data"]["sensorloop.toml"]).flink.metrics_urls.split(",")
    services = {d["metadata"]["name"]: d for p in K8S for d in _documents(p) if d["kind"] == "Service"}
    deployments = {d["metadata"]["name"]: d for p in K8S for d in _documents(p) if d["kind"] == "FlinkDeployment"}
    named = set()
    for url in urls:
        assert url.startswith("dns+http://"), url
        parts = urlsplit(url.removeprefix("dns+"))
        service = services[parts.hostname]["spec"]
        assert service["clusterIP"] == "None" and service["selector"]["component"] == "taskmanager"
        deployment = deployments[service["selector"]["app"]]
        assert str(parts.port) == deployment["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"]
        named.add(deployment["metadata"]["name"])
    assert named == set(deployments)
    compose = _compose_services()
    url = compose["jobmanager"]["environment"]["SENSORLOOP_FLINK_METRICS_URLS"]
    assert url.startswith("dns+http://") and urlsplit(url.removeprefix("dns+")).hostname == "taskmanager"
    assert compose["taskmanager"]["deploy"]["replicas"] > 1
    properties = dict(line.split(": ", 1) for line in
                      compose["taskmanager"]["environment"]["FLINK_PROPERTIES"].strip().splitlines())
    assert properties["taskmanager.load-balance.mode"] == "SLOTS"  # a job's subtasks spread over the replicas


def load_config_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        return load_config(f.name, env={})
