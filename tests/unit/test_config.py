"""The configuration file, its environment overrides and validation; job flags built from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import Config, ConfigError, load_config, to_toml


def write(tmp_path, text: str):
    path = tmp_path / "sensorloop.toml"
    path.write_text(text)
    return path


def test_file_then_environment_precedence(tmp_path):
    path = write(tmp_path, '[flink]\nparallelism = 3\nstate_dir = "s3://bucket/flink"\n[serving]\nmax_batch = 128\n'
                           '[topics]\nlabels = "answers"\n')
    cfg = load_config(path, env={"SENSORLOOP_FLINK_PARALLELISM": "5", "SENSORLOOP_SERVING_AUDIT_RATE": "0.25",
                                 "SENSORLOOP_FLINK_EXACTLY_ONCE": "yes"})
    assert cfg.flink.parallelism == 5 and cfg.flink.state_dir == "s3://bucket/flink"
    assert cfg.serving.max_batch == 128 and cfg.serving.audit_rate == 0.25 and cfg.flink.exactly_once is True
    assert cfg.topics.labels == "answers" and cfg.topics.readings == "sensor-readings"
    assert load_config(path, env={"SENSORLOOP_TOPIC_LABELS": "from-env"}).topics.labels == "from-env"
    flagged = load_config(path, env={"SENSORLOOP_FLINK_PARALLELISM": "5"},
                          flags={"flink.parallelism": "7", "topics.labels": "from-flag"})
    assert flagged.flink.parallelism == 7 and flagged.topics.labels == "from-flag"


def test_flags_name_their_origin_and_unknown_keys(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, flags={"serving.confidence_treshold": "0.7", "serving.window": "wide"})
    problems = "\n".join(caught.value.problems)
    assert "no setting serving.confidence_treshold (did you mean serving.confidence_threshold?)" in problems
    assert "serving.window: expected an integer, got 'wide' (from flag serving.window)" in problems


def test_every_problem_is_reported_with_its_origin(tmp_path):
    path = write(tmp_path, '[flnk]\nparallelism = 2\n[serving]\nmax_bach = 3\nstride = 0\n[stack]\nrest_port = 70000\n'
                           'prometheus_ports = "high"\n[broker]\nembedded_port = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"SENSORLOOP_LEARNING_LR": "fast"})
    problems = "\n".join(caught.value.problems)
    assert "[flnk]: unknown section" in problems and "did you mean [flink]" in problems
    assert "serving.max_bach: unknown key" in problems and "did you mean max_batch" in problems
    assert "stride must be >= 1, got 0" in problems
    assert "stack.rest_port: port must lie in 1..65535, got 70000" in problems
    assert "stack.prometheus_ports: expected a port or a range" in problems
    assert f"broker.embedded_port: expected an integer, got 'x' (from {path})" in problems
    assert "learning.lr: expected a number, got 'fast' (from $SENSORLOOP_LEARNING_LR)" in problems


def test_the_anomaly_settings_refuse_values_that_mean_nothing(tmp_path):
    path = write(tmp_path, '[serving]\nanomaly_device_windows = 5\n[learning]\nunlabeled_max_score = -1\n'
                           'unlabeled_anchor = -0.5\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = "\n".join(caught.value.problems)
    assert "anomaly_device_windows must be 0 (off) or at least 10, got 5" in problems
    assert "unlabeled_anchor must be >= 0, got -0.5" in problems  # a section reports its first problem
    with pytest.raises(ConfigError, match="unlabeled_max_score must be >= 0, got -1"):
        load_config(path, env={}, flags={"serving.anomaly_device_windows": "0", "learning.unlabeled_anchor": "1"})
    for fine in ("0", "10"):
        assert load_config(path, env={}, flags={"serving.anomaly_device_windows": fine, "learning.unlabeled_max_score": "0",
                                              "learning.unlabeled_anchor": "0"}).serving.anomaly_device_windows == int(fine)


def test_message_grouping_settings_refuse_what_cannot_group(tmp_path):
    with pytest.raises(ConfigError, match="group_readings must be >= 1, got 0"):
        load_config(None, env={}, flags={"serving.group_readings": "0"})
    with pytest.raises(ConfigError, match="group_ms must be >= 0, got -1"):
        load_config(None, env={}, flags={"serving.group_ms": "-1"})
    off = load_config(None, env={"SENSORLOOP_SERVING_GROUP_MS": "0"}).serving
    assert (off.group_ms, off.group_readings) == (0, 256)


def test_the_interpreters_switch_interval_is_bounded(tmp_path):
    assert load_config(None, env={}).serving.switch_interval_ms == 1.0
    assert load_config(None, env={"SENSORLOOP_SERVING_SWITCH_INTERVAL_MS": "0.5"}).serving.switch_interval_ms == 0.5
    for wrong in ("0", "-1", "1000", "nan"):
        with pytest.raises(ConfigError, match="switch_interval_ms must lie in"):
            load_config(None, env={}, flags={"serving.switch_interval_ms": wrong})


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[flink\n"), env={})
    with pytest.raises(ConfigError, match="two topics share the name same"):
        load_config(write(tmp_path, '[topics]\nlabels = "same"\npredictions = "same"\n'), env={})


def test_config_file_is_found_from_the_environment(tmp_path):
    path = write(tmp_path, '[registry]\nmodel_name = "pump-vibration"\n')
    assert load_config("", env={"SENSORLOOP_CONFIG": str(path)}).registry.model_name == "pump-vibration"


def test_shown_configuration_loads_back_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, '[flink]\njobmanager = "flink:8081"\n[learning]\newc_strength = 5.0\n'), env={})
    again = load_config(write(tmp_path, to_toml(cfg)), env={})
    assert again == cfg and again != Config()


@pytest.mark.parametrize("job", ["serving", "learning"])
def test_a_submitted_job_reads_back_the_configuration_it_was_submitted_with(tmp_path, monkeypatch, job):
    from control.submit import flink_run_command, for_cluster, write_job_config
    from stream_jobs.flink_env import parse_job_args

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENSORLOOP_SERVING_CONFIDENCE_THRESHOLD", "0.75")  # environment, baked into the file
    cfg = load_config(write(tmp_path, '[flink]\nparallelism = 2\nexactly_once = true\nstate_dir = "s3://b/f"\n'
                                      '[serving]\nmax_batch = 96\n[learning]\nreplay_ratio = 2.0\n'
                                      '[labeling]\nanswers_needed = 2\n[topics]\npredictions = "preds"\n'))
    path = write_job_config(job, cfg, "k:9092")
    command = flink_run_command(job, cfg, path, "localhost:8081")
    assert command[-2:] == ["--config", str(path)] and f"stream_jobs.{job}_job" in command
    monkeypatch.delenv("SENSORLOOP_SERVING_CONFIDENCE_THRESHOLD")
    again, run = parse_job_args(job, command[command.index("--config"):])
    assert again == for_cluster(cfg, "k:9092") and run.group_id == ""
    assert again.broker.bootstrap == "k:9092" and again.serving.confidence_threshold == 0.75
    assert again.registry.path == str(tmp_path / "var" / "registry") and again.flink.state_dir == "s3://b/f"
    assert again.topics.predictions == "preds" and again.labeling.answers_needed == 2


def test_flink_run_failures_are_explained_without_stack_frames():
    from control.submit import explain_failure

    output = ("2026 INFO pyflink: starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
              "org.apache.flink.client.program.ProgramInvocationException: The main method caused an error\n"
              "\tat org.apache.flink.Foo.bar(Foo.java:1)\n"
              "Caused by: java.net.ConnectException: Connection refused: localhost/127.0.0.1:8081\n")
    explained = explain_failure(output)
    assert "Connection refused: localhost/127.0.0.1:8081" in explained and "Foo.java" not in explained


def test_the_example_file_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "sensorloop.example.toml"
    assert load_config(example, env={}).serving.max_batch == 64


def test_a_local_minicluster_gets_jvm_options_and_a_log_file_of_its_own(monkeypatch, tmp_path):
    from pyflink import java_gateway

    from stream_jobs.flink_env import prepare_local_jvm
    from infra.jvm_scratch import scratch_dir

    monkeypatch.setattr(java_gateway, "_gateway", None)
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    monkeypatch.setenv("JVM_ARGS", "-Xss2m")
    for name in ("FLINK_LOG_DIR", "FLINK_IDENT_STRING", "SENSORLOOP_JVM_SCRATCH"):
        monkeypatch.delenv(name, raising=False)
    scratch = tmp_path / "scratch"
    log_file = prepare_local_jvm("serving", "-XX:TieredStopAtLevel=1", str(tmp_path / "logs"), scratch)
    assert log_file.parent == tmp_path / "logs" and "sensorloop-serving-" in log_file.name
    assert os.environ["FLINK_LOG_DIR"] == str(tmp_path / "logs") and os.environ["FLINK_IDENT_STRING"] in log_file.name
    own = scratch_dir(os.getpid(), scratch)
    assert own.is_dir()
    prepare_local_jvm("serving", "-XX:TieredStopAtLevel=1", str(tmp_path / "logs"), scratch)  # already there
    assert os.environ["JVM_ARGS"] == f"-Xss2m -XX:TieredStopAtLevel=1 -Djava.io.tmpdir={own}"
    ours = os.environ["JVM_ARGS"]
    # A job process this one starts inherits JVM_ARGS with this process's folder in it, which this process
    # removes when it exits: the child's JVM gets a folder of its own.
    child = subprocess.run(
        [sys.executable, "-c", "import os, sys; from pathlib import Path; "
         "from stream_jobs.flink_env import prepare_local_jvm; "
         "prepare_local_jvm('serving', '-XX:TieredStopAtLevel=1', sys.argv[1], Path(sys.argv[2])); "
         "print(os.getpid(), os.environ['JVM_ARGS'])", str(tmp_path / "logs"), str(scratch)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, child.stderr
    pid, child_args = child.stdout.strip().split(" ", 1)
    assert child_args.startswith("-Xss2m -XX:TieredStopAtLevel=1 -Djava.io.tmpdir=") and str(own) not in child_args
    assert f"-Djava.io.tmpdir={scratch}/{pid}-" in child_args and own.is_dir()
    monkeypatch.setenv("JVM_ARGS", "-Djava.io.tmpdir=/var/tmp/mine")  # the user's own choice is kept
    prepare_local_jvm("serving", "", str(tmp_path / "logs"), scratch)
    assert os.environ["JVM_ARGS"] == "-Djava.io.tmpdir=/var/tmp/mine"
    monkeypatch.setenv("JVM_ARGS", ours)
    monkeypatch.setattr(java_gateway, "_gateway", object())
    assert prepare_local_jvm("serving", "-XX:TieredStopAtLevel=1", str(tmp_path)) is None  # the running JVM has it
    with pytest.raises(RuntimeError, match="already runs without -XX:\\+UseSerialGC"):
        prepare_local_jvm("serving", "-XX:+UseSerialGC", str(tmp_path))
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "25333")  # under `flink run`: the client's JVM, not ours
    assert prepare_local_jvm("serving", "-XX:+UseSerialGC", str(tmp_path)) is None


def test_the_stacks_taskmanager_gets_its_jvm_options(tmp_path):
    from infra.flink_cluster import flink_configuration
    from settings import StackSettings

    conf = flink_configuration(StackSettings(taskmanager_jvm_options="-XX:+UseSerialGC"), str(tmp_path), tmp_path)
    assert conf["env.java.opts.taskmanager"] == "-XX:+UseSerialGC"
    assert "add-opens" in conf["env"]["java"]["opts"]["all"]  # the shipped Java 17 options stay
    assert conf["taskmanager.load-balance.mode"] == "SLOTS"  # a job's subtasks spread over the TaskManagers


def test_the_stack_needs_a_metrics_port_for_each_of_its_processes(tmp_path):
    path = write(tmp_path, '[stack]\ntaskmanagers = 3\nprometheus_ports = "9300-9303"\n')
    assert load_config(path, env={}).stack.taskmanagers == 3
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"SENSORLOOP_STACK_PROMETHEUS_PORTS": "9300-9302"})
    assert "stack.prometheus_ports: 9300-9302 holds 3 ports; the JobManager and 3 TaskManagers need 4" in str(caught.value)
    with pytest.raises(ConfigError, match="holds 11 ports; the JobManager and 20 TaskManagers need 21"):
        load_config("", env={"SENSORLOOP_STACK_TASKMANAGERS": "20"})  # the default range: 9249-9259
    with pytest.raises(ConfigError, match="taskmanagers must be >= 1"):
        load_config("", env={"SENSORLOOP_STACK_TASKMANAGERS": "0"})


def test_job_and_stack_flags_set_the_parallelism_and_the_taskmanagers(tmp_path, monkeypatch):
    from control.cli import build_parser
    from control.cli_ops import config_of

    monkeypatch.chdir(tmp_path)
    resume = build_parser().parse_args(["job", "resume", "serving", "--parallelism", "2"])
    assert config_of(resume).flink.parallelism == 2 and resume.from_savepoint == "latest"
    assert config_of(build_parser().parse_args(["job", "submit", "learning"])).flink.parallelism == 1
    start = build_parser().parse_args(["stack", "start", "--taskmanagers", "3"])
    assert config_of(start).stack.taskmanagers == 3
    with pytest.raises(SystemExit):  # validated like the file: every problem listed, exit 2
        config_of(build_parser().parse_args(["job", "submit", "serving", "--parallelism", "0"]))


GESTURES = """
[registry]
model_name = "gestures"

[models.gestures]
channels = ["acc_z"]
units = ["g"]
sample_rate_hz = 100
window = "0.32s"
stride = 8
classes = ["1", "2", "3"]
d_model = 32
"""


def test_a_model_declared_in_the_file_sets_the_served_window_and_travels_with_the_config(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GESTURES)
    cfg = load_config(path, env={})
    model = cfg.served_model
    assert (model.channels, model.classes, model.window, model.stride, model.d_model) == (("acc_z",), ("1", "2", "3"),
                                                                                        32, 8, 32)
    assert (cfg.serving.window, cfg.serving.stride) == (32, 8)  # the served model's, not the defaults
    again = tmp_path / "again.toml"
    again.write_text(to_toml(cfg))
    assert load_config(again, env={}) == cfg  # what a job reads back from the written file
    assert cfg.with_values({"serving.max_batch": "8"}).serving.window == 32


def test_every_problem_of_a_model_declaration_is_named_with_its_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GESTURES.replace('stride = 8', 'stride = 64\nchanels = ["x"]').replace(
        'classes = ["1", "2", "3"]', 'classes = ["1", "1"]') + '\n[serving]\nwindow = 16\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = str(caught.value)
    assert f"models.gestures.chanels: unknown key (did you mean channels?) (from {path})" in text
    assert "models.gestures.classes: '1' appears twice" in text
    assert "models.gestures.stride: 64 is longer than the window (32)" in text
    path.write_text(GESTURES + "\n[serving]\nwindow = 16\n")
    with pytest.raises(ConfigError, match="serving.window: 16 differs from models.gestures.window"):
        load_config(path, env={})
