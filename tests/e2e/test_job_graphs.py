"""The jobs' stateful operators carry fixed uids, so a savepoint maps onto a later version of the
job graph (savepoint upgrades) as long as those operators keep their uids."""

import pytest

from settings import ServingSettings
from settings import LearningSettings
from schemas import Topics
from stream_jobs.flink_env import FlinkSettings, make_env
from stream_jobs.learning_job import build_learning_job
from stream_jobs.serving_job import build_serving_job

pytestmark = pytest.mark.e2e  # needs the JVM and the connector jars, not a broker


def uids(env) -> dict[str, str | None]:
    graph = env._generate_stream_graph(clear_transformations=False)
    return {node.getOperatorName(): node.getTransformationUID() for node in graph.getStreamNodes().toArray()}


def test_stateful_operators_of_both_jobs_have_fixed_uids(tmp_path, registry_copy):
    settings = FlinkSettings(checkpoint_dir=str(tmp_path / "ck"))
    serving_env = make_env(settings)
    build_serving_job(serving_env, "localhost:9", ServingSettings(registry=str(registry_copy)), Topics(), settings)
    serving = uids(serving_env)
    for name in ("parse-and-window", "model-announcements", "inference"):
        assert serving[name] == name, serving
    assert serving["Source: sensor-readings"] == "sensor-readings"
    assert serving["Source: model-snapshots-and-drift-events"] == "model-snapshots-and-drift-events"
    assert serving["kafka-out: Writer"] == "kafka-out"

    learning_env = make_env(settings)
    build_learning_job(learning_env, "localhost:9", str(registry_copy), "basic-motions", LearningSettings(), Topics(),
                       settings)
    learning = uids(learning_env)
    for name in ("join-answers", "learn-and-publish"):
        assert learning[name] == name, learning
    assert learning["Source: reviews-and-labels"] == "reviews-and-labels"
    assert learning["kafka-out: Writer"] == "kafka-out"


def test_the_local_jvm_runs_with_the_configured_options(tmp_path):
    from pyflink.java_gateway import get_gateway

    make_env(FlinkSettings(checkpoint_dir=str(tmp_path / "ck")))  # starts the JVM unless the test above did
    arguments = list(get_gateway().jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert FlinkSettings().jvm_options in arguments, arguments
