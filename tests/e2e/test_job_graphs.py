"""The jobs' stateful operators carry fixed uids, so a savepoint maps onto a later version of the
job graph (savepoint upgrades) as long as those operators keep their uids."""

import pytest

from settings import Config
from stream_jobs.flink_env import make_env
from stream_jobs.learning_job import build_learning_job
from stream_jobs.serving_job import build_serving_job

pytestmark = pytest.mark.e2e  # needs the JVM and the connector jars, not a broker


def uids(env) -> dict[str, str | None]:
    graph = env._generate_stream_graph(clear_transformations=False)
    return {node.getOperatorName(): node.getTransformationUID() for node in graph.getStreamNodes().toArray()}


def config(tmp_path, registry) -> Config:
    return Config().with_values({"broker.bootstrap": "localhost:9", "registry.path": str(registry),
                                 "flink.state_dir": str(tmp_path / "flink"), "flink.log_dir": str(tmp_path / "logs")})


def test_stateful_operators_of_both_jobs_have_fixed_uids(tmp_path, registry_copy):
    cfg = config(tmp_path, registry_copy)
    serving_env = make_env(cfg, "serving")
    build_serving_job(serving_env, cfg)
    serving = uids(serving_env)
    for name in ("parse-and-window", "model-announcements", "inference"):
        assert serving[name] == name, serving
    assert serving["Source: sensor-readings"] == "sensor-readings"
    assert serving["sensor-readings-groups"] == "sensor-readings-groups"  # ReadingGrouper, on by default
    assert serving["Source: model-snapshots-and-drift-events"] == "model-snapshots-and-drift-events"
    assert serving["kafka-out: Writer"] == "kafka-out"

    learning_env = make_env(cfg, "learning")
    build_learning_job(learning_env, cfg)
    learning = uids(learning_env)
    for name in ("join-answers", "learn-and-publish"):
        assert learning[name] == name, learning
    assert learning["Source: reviews-and-labels"] == "reviews-and-labels"
    assert learning["kafka-out: Writer"] == "kafka-out"


def test_grouping_off_leaves_the_source_feeding_python_directly(tmp_path, registry_copy):
    cfg = config(tmp_path, registry_copy).with_values({"serving.group_ms": 0})
    env = make_env(cfg, "serving")
    build_serving_job(env, cfg)
    assert "sensor-readings-groups" not in uids(env)


def test_the_local_jvm_runs_with_the_configured_options(tmp_path, registry_copy):
    from pyflink.java_gateway import get_gateway

    cfg = config(tmp_path, registry_copy)
    make_env(cfg, "serving")  # starts the JVM unless the test above did
    arguments = list(get_gateway().jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert cfg.flink.local_jvm_options in arguments, arguments
