"""``sensorloop`` command line: set-up, embedded broker, topics, jobs, replay and the demo."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

from control.cli_data import add_data_commands
from control.cli_ops import add_operator_commands, config_of, progress_bar, resolve_bootstrap, table
from control.flink_rest import FlinkRestError
from control.replayer import DEFAULT_LINGER_MS

log = logging.getLogger("sensorloop")
BOOTSTRAP_HELP = "Kafka bootstrap servers (default: broker.bootstrap from the configuration, else the embedded stack's)"


def builtin_spec(args: argparse.Namespace):
    """The built-in (BasicMotions) model's spec from ``setup``'s flags: its heads (``--tasks``), the forecast's
    horizon, whether its classify head reads the window summary (``--summary-features``), and the samples per
    token of its encoder (``--patch``).

    >>> spec = builtin_spec(build_parser().parse_args(["setup", "--tasks", "classify,forecast", "--summary-features"]))
    >>> spec.tasks, spec.horizon, spec.summary_features
    (('classify', 'forecast'), 8, True)
    >>> builtin_spec(build_parser().parse_args(["setup"])).summary_features
    False
    >>> builtin_spec(build_parser().parse_args(["setup", "--patch", "4"])).tokens
    8
    """
    from model.spec import ModelSpec

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return ModelSpec(tasks=tasks, horizon=args.horizon if "forecast" in tasks else 0,
                     summary_features=args.summary_features, patch=args.patch)


def cmd_setup(args: argparse.Namespace) -> int:
    """Connector jars (verified), Java helpers, and model version 1 if the registry has none."""
    from infra.jars import ensure_all
    from model.registry import ModelRegistry

    for jar in ensure_all(config_of(args).flink.jars_dir, args.jars):
        print(f"jar ready: {jar}")
    if getattr(args, "jars_only", False):
        return 0
    registry = ModelRegistry(args.registry)
    declared = config_of(args).models.get(args.model_name)
    if declared is not None:  # the user's own model: its first version comes from their data
        version = registry.latest_version(args.model_name)
        print(f"model ready: {args.model_name} v{version} in {args.registry}" if version else
              f"{args.model_name} is declared in the configuration and has no version yet: "
              f"`sensorloop data import FILE --model {args.model_name}` then `sensorloop train --dataset ID`")
        return 0
    if registry.latest_version(args.model_name) is None or args.retrain:
        from model.train import bootstrap

        try:
            spec = builtin_spec(args)
        except ValueError as exc:
            raise SystemExit(f"sensorloop setup: {exc}") from None
        result = bootstrap(registry, args.model_name, spec=spec, epochs=args.epochs,
                           int8_min_agreement=config_of(args).int8_check(args.model_name))
        meta = result.metadata
        print(f"trained {meta.model_name} v{meta.version} ({', '.join(spec.tasks)}) in {result.train_seconds:.1f}s: "
              f"test accuracy {meta.metrics['test_accuracy']:.3f}")
    else:
        version = registry.latest_version(args.model_name)
        print(f"model ready: {args.model_name} v{version} in {args.registry}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded broker in the foreground with the topics created."""
    from infra.broker import EmbeddedBroker, ensure_topics

    def terminate(signum, frame):
        raise KeyboardInterrupt

    cfg = config_of(args)
    signal.signal(signal.SIGTERM, terminate)  # stop Tansu too when asked to stop
    broker = EmbeddedBroker(port=args.port or cfg.broker.embedded_port, storage=args.storage or cfg.broker.storage,
                            storage_endpoint=args.storage_endpoint or cfg.broker.storage_endpoint)
    broker.start()
    created = ensure_topics(broker.bootstrap, cfg.topics)
    print(f"broker on {broker.bootstrap} (topics created: {', '.join(created) or 'none'}); Ctrl-C stops it",
          flush=True)
    try:
        while broker.process and broker.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from infra.broker import ensure_topics

    topics = config_of(args).topics
    created = ensure_topics(args.bootstrap, topics)
    for name, parts in topics.partitions().items():
        print(f"{name:20s} partitions={parts} {'(created)' if name in created else ''}")
    return 0


def dataset_stream(args: argparse.Namespace):
    """``--dataset``'s recordings as a reading stream, and the rate that replays them at recorded speed
    times ``--speed``; (None, --rate) without a dataset."""
    if not args.dataset:
        return None, args.rate
    from recordings.store import DatasetStore, DatasetStream

    try:
        dataset = DatasetStore(config_of(args).data.dir).load(args.dataset)
    except FileNotFoundError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    stream = DatasetStream(dataset)
    cfg = config_of(args)
    if getattr(args, "device_type", None) is None and len(cfg.served_models) > 1:
        # several models served: its readings name their model's type
        args.device_type = cfg.device_types_of(dataset.manifest["model_name"])[0]
    return stream, float(dataset.manifest["sample_rate_hz"]) * len(stream.devices) * args.speed


def cmd_replay(args: argparse.Namespace) -> int:
    from operators.replay import DriftPlan
    from control.replayer import ReplayStats, replay

    drift = None
    if args.drift_after is not None:
        drift = DriftPlan(args.drift_after, gain={0: args.drift_gain, 1: args.drift_gain, 2: args.drift_gain},
                          classes=tuple(args.drift_classes.split(",")) if args.drift_classes else ())
    stats, failures = ReplayStats(), []
    stream, rate = dataset_stream(args)

    def send() -> None:
        try:
            replay(args.bootstrap, config_of(args).topics.readings, rate, args.count, args.duration, args.devices,
                   args.seed, args.split, drift, args.device_prefix, stats=stats, linger_ms=args.linger_ms,
                   stream=stream, device_type=args.device_type, samples_per_message=args.samples_per_message)
        except Exception as exc:  # re-raised below, on the command's own thread
            failures.append(exc)

    worker = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    worker.start()
    show = sys.stdout.isatty() and (args.count or args.duration)
    while worker.is_alive():
        worker.join(0.5)
        if show:
            done, total = (stats.sent, args.count) if args.count else (time.monotonic() - started, args.duration)
            print("\r" + progress_bar(done, total, label=f"{stats.sent} readings"), end="", flush=True)
    if show:
        print()
    if failures:
        raise failures[0]
    print(f"sent {stats.sent} readings in {stats.seconds:.1f}s ({stats.sent / max(stats.seconds, 1e-9):.0f}/s)"
          + (f" as {stats.messages} messages" if stats.messages != stats.sent else ""))
    return 0


def _bad_records() -> list[bytes]:
    """A few kinds of bad input the demo mixes in, to show dead-lettering."""
    return [b"{not json", b'{"device_id": "device-bad", "ts": 1, "values": [1, 2]}',
            b'{"device_id": "device-bad", "ts": 1, "values": [1, 2, 3, 4, 5, "x"]}',
            b'{"device_id": "device-bad", "ts": 1, "values": [1, 2, 3, 4, 5, 6], "colour": "red"}']


def _classes(args: argparse.Namespace) -> list[str]:
    """The served model's classes: its newest version's, else its declaration's (cold start)."""
    from model.registry import ArtifactError
    from operators.serving_model import serving_spec

    declared = config_of(args).models.get(args.model_name)
    try:
        return list(serving_spec(args.registry, args.model_name, None,
                                 declared.spec_dict() if declared is not None else None).classes)
    except ArtifactError as exc:
        raise SystemExit(f"{exc}; or declare the model as [models.{args.model_name}]") from None


def _model_classes(args: argparse.Namespace) -> dict[str, list[str]] | None:
    """Each served model's classes when several are served (None for one: ``_classes`` says it all)."""
    from model.registry import ArtifactError
    from operators.serving_model import serving_spec

    cfg = config_of(args)
    if len(cfg.served_models) < 2:
        return None
    try:
        return {name: list(serving_spec(args.registry, name, None, cfg.declared_spec(name)).classes)
                for name in cfg.served_models}
    except ArtifactError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None


def cmd_simulate_labelers(args: argparse.Namespace) -> int:
    from labeling.simulated import run_simulated_labelers

    classes = _classes(args)
    answered = run_simulated_labelers(args.bootstrap, config_of(args).topics, classes, args.delay_ms, args.error_rate,
                                      duration_s=args.duration, model_classes=_model_classes(args),
                                      creators=config_of(args).labeling.creators)
    print(f"answered {answered} review requests")
    return 0


DEMO_DEFAULTS = {"serving.audit_rate": 0.2, "serving.review_budget_per_minute": 600}  # under the file's values


def cmd_demo(args: argparse.Namespace) -> int:
    """Broker + serving job (+ learning job and simulated labelers) + replayed real data, with a
    gyroscope calibration drift partway through; prints a live status line.

    Both jobs read the effective configuration (the demo's defaults under the file, the environment
    and the flags) from one file written into the run folder."""
    from control.launcher import JobProcess
    from control.replayer import ReplayStats, replay
    from control.submit import job_environment, write_job_config
    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.kafka_tools import TopicTail, produce
    from labeling.simulated import run_simulated_labelers
    from model.registry import ModelRegistry
    from operators.monitor import ServingMonitor, status_line
    from operators.replay import DriftPlan

    cmd_setup(args)
    cfg = config_of(args)
    if ModelRegistry(args.registry).latest_version(args.model_name) is None:
        print(f"cold start: {args.model_name} has no trained version; every window goes to review until the "
              "learning job publishes v1 from the answers", flush=True)
    topics = cfg.topics
    run_dir = Path(args.run_dir)
    bootstrap = cfg.broker.bootstrap
    broker = None
    if not bootstrap:
        broker = EmbeddedBroker(log_path=run_dir / "broker.log", storage=cfg.broker.storage,
                                storage_endpoint=cfg.broker.storage_endpoint).start()
        bootstrap = broker.bootstrap
    ensure_topics(bootstrap, topics)
    run_id = int(time.time())
    job_cfg = cfg.with_values({"flink.state_dir": str(run_dir / "flink"), "flink.log_dir": str(run_dir / "logs")},
                              origin="demo")
    config_file = write_job_config("demo", job_cfg, bootstrap, run_dir)
    print(f"broker {bootstrap}; starting the serving job (configuration: {config_file}; "
          f"log: {run_dir / 'serving.log'})", flush=True)
    job = JobProcess("stream_jobs.serving_job", ["--config", str(config_file), "--group-id",
                                                  f"sensorloop-demo-{run_id}"], run_dir / "serving.log",
                     job_environment()).start()
    learner = None
    if not args.no_learning:
        learner = JobProcess("stream_jobs.learning_job", ["--config", str(config_file), "--group-id",
                                                          f"sensorloop-learn-{run_id}"], run_dir / "learning.log",
                             job_environment()).start()
        print(f"learning job started (log: {run_dir / 'learning.log'})", flush=True)
    stop = threading.Event()
    stats = ReplayStats()
    drift = None
    stream, rate = dataset_stream(args)
    if stream is not None:
        print(f"replaying dataset {args.dataset}: {len(stream.devices)} device(s) at {args.speed:g}x recorded speed "
              f"({rate:.0f} readings/s)", flush=True)
    elif args.drift_after_s > 0:
        drift = DriftPlan(after=int(args.drift_after_s * args.rate), offset={3: 4.0, 4: 4.0, 5: 4.0})
        print(f"the devices' gyroscopes pick up a +4.0 calibration bias after {args.drift_after_s:.0f} s", flush=True)
    replayer = threading.Thread(target=replay, kwargs=dict(
        bootstrap=bootstrap, topic=topics.readings, rate=rate, duration_s=args.duration,
        n_devices=args.devices, stop=stop, stats=stats, drift=drift, stream=stream,
        device_type=getattr(args, "device_type", None)), daemon=True)
    if learner is not None:
        threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
            bootstrap=bootstrap, topics=topics, classes=_classes(args), delay_ms=300,
            error_rate=args.label_error_rate, stop=stop, model_classes=_model_classes(args),
            creators=config_of(args).labeling.creators)).start()
    tail = TopicTail(bootstrap, [topics.predictions, topics.review_requests, topics.dead_letters, topics.labels])
    monitor = ServingMonitor()
    started = time.monotonic()
    next_line, next_bad = started + 1.0, started + 5.0
    replayer.start()
    watch_s, last_prediction = args.duration + args.drain, started
    try:
        while (elapsed := time.monotonic() - started) < watch_s or (
                elapsed < watch_s + args.start_timeout  # a job that started late, still catching up
                and (monitor.predictions == 0 or time.monotonic() - last_prediction < args.drain)):
            for record in tail.poll(200):
                if record.topic == topics.predictions:
                    monitor.observe_prediction(orjson.loads(record.value))
                    last_prediction = time.monotonic()
                elif record.topic == topics.review_requests:
                    monitor.observe_review()
                elif record.topic == topics.labels:
                    monitor.observe_label()
                else:
                    monitor.observe_dead_letter()
            now = time.monotonic()
            if now >= next_bad and now - started < args.duration:
                produce(bootstrap, topics.readings, [(b"device-bad", raw) for raw in _bad_records()])
                next_bad = now + 10.0
            if now >= next_line:
                print(status_line(monitor.snapshot(stats.sent, now - started)), flush=True)
                next_line = now + args.interval
            for name, process in (("serving", job), ("learning", learner)):
                if process is not None and not process.alive():
                    print(f"{name} job exited unexpectedly:\n" + process.log_tail(), file=sys.stderr)
                    return 1
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        tail.close()
        job.stop()
        if learner is not None:
            learner.stop()
        if broker:
            broker.stop()
    final = monitor.snapshot(stats.sent, time.monotonic() - started)
    print(f"done: {stats.sent} readings -> {final['predictions']} predictions, "
          f"{final['review_requests']} review requests, {final['dead_letters']} dead letters, "
          f"{final['labels']} labels, accuracy {final['accuracy'] if final['accuracy'] is not None else float('nan'):.3f}")
    for version, (acc, n) in monitor.version_accuracy().items():
        print(f"  model v{version}: accuracy {acc:.3f} on {n} windows")
    return 0 if final["predictions"] > 0 else 1


def cmd_label(args: argparse.Namespace) -> int:
    """Serve the labeling page."""
    from labeling.credentials import CredentialError, Credentials
    from labeling.server import LabelingServer, shared_token

    settings = config_of(args).labeling
    try:
        credentials = Credentials.load(settings.labelers_file, shared_token(args.token), settings.shared_labeler,
                                       behind_proxy=bool(settings.user_header))
    except CredentialError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    for name in ("host", "port", "lease_seconds", "answers_needed"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(settings, name))
    classes = args.classes.split(",") if args.classes else _classes(args)
    from control.cli_ops import metrics_urls
    from control.metrics import job_metrics

    urls = metrics_urls(args)
    server = LabelingServer(args.bootstrap, config_of(args).topics, credentials, classes, args.host, args.port,
                            args.lease_seconds, args.answers_needed, pipeline_metrics=lambda: job_metrics(urls),
                            max_queue=settings.max_queue, user_header=settings.user_header,
                            trusted_proxies=tuple(a.strip() for a in settings.trusted_proxies.split(",") if a.strip()),
                            model_classes=_model_classes(args), creators=settings.creators,
                            max_classes=settings.max_classes)
    print(f"labeling page on {server.url}/?token=<your token> (classes: {', '.join(classes)})", flush=True)
    server.run()
    return 0


def cmd_labeler_add(args: argparse.Namespace) -> int:
    """Give a labeler a token of their own; only its digest is kept (``labeling.labelers_file``)."""
    from labeling.credentials import CredentialError, add_labeler

    path = config_of(args).labeling.labelers_file
    try:
        token = add_labeler(path, args.name)
    except CredentialError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    print(f"labeler {args.name} added to {path}; their token (shown once, give it to them): {token}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    """Versions of ``--model-name``, or of every served model (one table each) when it is not given."""
    names = [args.model_name]
    if not getattr(args, "model_chosen", True):
        names = list(dict.fromkeys(config_of(args).served_models + names))
    found = 0
    for name in names:
        if len(names) > 1:
            print(f"model {name}")
        found += _version_table(args.registry, name)
    return 0 if found else 1


def _version_table(root: str, name: str) -> int:
    """Print one model's versions; returns how many there are."""
    from model.registry import INT8_FILE, ModelRegistry

    registry = ModelRegistry(root)
    versions = registry.versions(name)
    if not versions:
        print(f"no versions of {name} in {root}")
        return 0
    rows = []
    for v in versions:
        m = registry.metadata(name, v)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.created_at / 1000))
        accuracy = m.metrics.get("holdout_accuracy", m.metrics.get("test_accuracy"))
        ece = m.metrics.get("ece_after")
        agreed = m.metrics.get("int8_agreement")
        if agreed is not None:
            int8 = f"{'yes' if INT8_FILE in m.artifacts else 'refused'} ({agreed:.3f})"
        else:
            int8 = "failed" if "int8_failed" in m.metrics else "-"
        rows.append([v, m.parent_version or "-", created, m.sha256[:12], m.data_seen,
                     "-" if accuracy is None else f"{accuracy:.3f}", "-" if ece is None else f"{ece:.3f}", int8,
                     registry.stage(name, v) or "-", m.note or "-"])
    print(table(rows, ["version", "parent", "created (UTC)", "sha256", "data seen", "accuracy", "ECE",
                       "INT8 (agreement)", "stage", "note"]))
    return len(versions)


def cmd_model_show(args: argparse.Namespace) -> int:
    from model.registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    version = args.version or registry.latest_version(args.model_name)
    if version is None:
        raise SystemExit(f"sensorloop: no versions of {args.model_name} in {args.registry}")
    m = registry.metadata(args.model_name, version)
    rows = [["version", m.version], ["parent", m.parent_version or "-"], ["created (UTC)", time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime(m.created_at / 1000))], ["sha256", m.sha256], ["data seen", m.data_seen],
        ["note", m.note or "-"], ["artifact", registry.announcement(args.model_name, version)["artifact_uri"]],
        ["classes", ", ".join(m.spec.get("classes", []))]]
    rows += [[f"metric {k}", f"{v:.4f}"] for k, v in sorted(m.metrics.items())]
    print(table(rows, ["field", "value"]))
    return 0


def serving_announcement(bootstrap: str, topic: str, model_name: str) -> dict | None:
    """The newest announcement of ``model_name`` on the model-snapshots ``topic`` (what serving swapped to last)."""
    from infra.kafka_tools import read_quiet

    latest = None
    for record in read_quiet(bootstrap, [topic], quiet_s=1.5, timeout_s=30, first_s=4):
        try:
            message = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(message, dict) and message.get("model_name") == model_name:
            latest = message
    return latest


def cmd_model_announce(args: argparse.Namespace) -> int:
    """Announce a stored version on model-snapshots: serving swaps to it (promote or roll back).

    ``rollback`` without ``--version`` goes back to the parent of the version announced last."""
    from infra.kafka_tools import produce
    from model.registry import ModelRegistry
    from model.signing import announcement

    registry = ModelRegistry(args.registry)
    topic = config_of(args).topics.model_snapshots
    version = args.version
    if version is None:
        current = serving_announcement(args.bootstrap, topic, args.model_name)
        if current is None:
            raise SystemExit("sensorloop: nothing was announced on model-snapshots yet; pass --version")
        version = current.get("parent_version") or None
        if version is None:
            raise SystemExit(f"sensorloop: v{current.get('version')} has no parent to roll back to; pass --version")
    snapshot = announcement(registry, args.model_name, version, config_of(args).registry.signing_key)
    registry.load(args.model_name, version)  # refuse to announce an artifact that fails its checksum
    produce(args.bootstrap, topic, [(args.model_name.encode(), snapshot.encode())])
    registry.set_stage(args.model_name, version, None)  # served again: a fresh start may start from it
    print(f"announced {args.model_name} v{version} ({snapshot.artifact_uri})")
    return 0


def cmd_model_keygen(args: argparse.Namespace) -> int:
    """Make the key pair: the private key stays with whoever publishes (learning job, retrain, the
    operator's CLI), the public one goes to serving."""
    from model.signing import generate_keys

    registry = config_of(args).registry
    private = args.private or registry.signing_key or "var/keys/announce.key"
    public = args.public or registry.verify_key or "var/keys/announce.pub"
    try:
        generate_keys(private, public)
    except FileExistsError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    print(f"private key {private} (mode 0600; registry.signing_key on the publishing side)\n"
          f"public key {public} (registry.verify_key on serving: unsigned announcements are then refused)")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from control.retrain import describe, retrain

    cfg = config_of(args)
    margin = cfg.learning.gate_margin if args.gate_margin is None else args.gate_margin
    result = retrain(args.bootstrap, cfg.topics, args.registry, args.model_name, args.epochs, args.lr, margin,
                     cfg.learning.holdout_every, announce=not args.no_announce, signing_key=cfg.registry.signing_key,
                     int8_min_agreement=cfg.int8_check(args.model_name))
    print(describe(result))
    return 0


def run_job(module: str):
    """A subcommand that runs a job in the foreground on a local MiniCluster: the job loads the same
    configuration (``--config``, environment) and takes the remaining flags (``--set section.key=value``)."""
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        config = ["--config", args.config] if args.config else []
        broker = ["--bootstrap", args.bootstrap] if args.bootstrap else []
        importlib.import_module(module).main([*config, *broker, *rest])
        return 0
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensorloop", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--config", default=None,
                        help="TOML configuration file (default: $SENSORLOOP_CONFIG, else ./sensorloop.toml if present)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_operator_commands(sub)
    add_data_commands(sub)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", default=None, help="model registry folder")
        p.add_argument("--model-name", default=None)
        p.add_argument("--jars", default=None, help="folder with the Flink Kafka connector jars (else fetched)")
        p.add_argument("--epochs", type=int, default=25, help="epochs of the bootstrap training")
        p.add_argument("--retrain", action="store_true", help="train a new version even if one exists")
        p.add_argument("--tasks", default="classify",
                       help="heads of the built-in model, comma-separated: classify, anomaly, forecast")
        p.add_argument("--horizon", type=int, default=8, help="samples per channel a forecast head predicts")
        p.add_argument("--summary-features", action="store_true",
                       help="the built-in model's classify head also reads each channel's mean, deviation, minimum "
                            "and maximum over the window (a model's summary_features)")
        p.add_argument("--patch", type=int, default=1,
                       help="samples per token of the built-in model's encoder (a model's patch; 4: 8 tokens per "
                            "32-sample window, about a quarter of the work per window)")

    p = sub.add_parser("setup", help="fetch and verify connector jars, build helpers, train model v1")
    model_args(p)
    p.add_argument("--jars-only", action="store_true", help="jars and helpers only (container images)")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    p.add_argument("--port", type=int, default=None, help="default: broker.embedded_port (9092)")
    p.add_argument("--storage", default=None, help="Tansu storage engine URL (default: broker.storage)")
    p.add_argument("--storage-endpoint", default=None,
                   help="S3-compatible endpoint of s3:// storage (default: broker.storage_endpoint)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the topics on a broker")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.set_defaults(needs_bootstrap=True)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("replay", help="publish real readings: BasicMotions at a chosen rate, or an imported "
                       "dataset (--dataset) at its recorded speed")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.set_defaults(needs_bootstrap=True)
    p.add_argument("--rate", type=float, default=200.0, help="readings per second (0: as fast as possible)")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--dataset", default=None, help="an imported dataset (sensorloop data list); its devices, "
                   "at recorded speed times --speed (--rate is then ignored)")
    p.add_argument("--speed", type=float, default=1.0, help="multiple of the recorded speed (with --dataset)")
    p.add_argument("--device-type", default=None, help="stamp this device_type on every reading (it picks the "
                   "model when several are served; with --dataset and several served models: the dataset's model)")
    p.add_argument("--device-prefix", default="device", help="BasicMotions devices are named <prefix>-000, ...")
    p.add_argument("--samples-per-message", type=int, default=1,
                   help="send each device's readings as sample blocks of this many samples")
    p.add_argument("--drift-after", type=int, default=None, help="readings before the drift starts")
    p.add_argument("--drift-gain", type=float, default=1.8, help="accelerometer gain after the drift")
    p.add_argument("--drift-classes", default="", help="comma-separated activity mix after the drift")
    p.add_argument("--linger-ms", type=int, default=DEFAULT_LINGER_MS,
                   help="how long the producer gathers readings into one batch before sending it")
    p.set_defaults(func=cmd_replay)

    for command, job in (("serve", "serving"), ("learn", "learning")):
        p = sub.add_parser(command, help=f"run the {job} job in the foreground on its own local MiniCluster "
                           f"(--set section.key=value flags go to the job; see {command} --help)", add_help=False)
        p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
        p.set_defaults(needs_bootstrap=True, func=None, passthrough=run_job(f"stream_jobs.{job}_job"))

    p = sub.add_parser("model", help="model registry: list, show, promote, roll back")
    model_sub = p.add_subparsers(dest="model_command", required=True)
    q = model_sub.add_parser("list", help="versions with parent, sha256 and metrics")
    q.add_argument("--registry", default=None)
    q.add_argument("--model-name", default=None)
    q.set_defaults(func=cmd_model_list)
    q = model_sub.add_parser("show", help="one version's lineage, checksum, artifact and metrics")
    q.add_argument("--version", type=int, default=None, help="default: the newest")
    q.add_argument("--registry", default=None)
    q.add_argument("--model-name", default=None)
    q.set_defaults(func=cmd_model_show)
    for name, help_text in (
            ("announce", "publish a stored version on model-snapshots; serving swaps to it"),
            ("promote", "make serving use a stored version (same as announce)"),
            ("rollback", "make serving go back: to --version, else to the parent of the version announced last")):
        q = model_sub.add_parser(name, help=help_text)
        q.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
        q.set_defaults(needs_bootstrap=True)
        q.add_argument("--version", type=int, required=name != "rollback", default=None)
        q.add_argument("--registry", default=None)
        q.add_argument("--model-name", default=None)
        q.set_defaults(func=cmd_model_announce)

    q = model_sub.add_parser("keygen", help="make the Ed25519 key pair that signs announcements "
                             "(registry.signing_key, registry.verify_key)")
    q.add_argument("--private", default=None, help="default: registry.signing_key, else var/keys/announce.key")
    q.add_argument("--public", default=None, help="default: registry.verify_key, else var/keys/announce.pub")
    q.set_defaults(func=cmd_model_keygen)

    p = sub.add_parser("label", help="serve the labeling web page (review-requests in, labels out)")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.set_defaults(needs_bootstrap=True)
    p.add_argument("--host", default=None, help="bind address (default: labeling.host, loopback)")
    p.add_argument("--port", type=int, default=None, help="default: labeling.port (8080)")
    p.add_argument("--token", default=None, help="a shared token, for one person or a demo (default: "
                   "$SENSORLOOP_LABEL_TOKEN); labelers of their own: `sensorloop labeler add NAME`")
    p.add_argument("--classes", default="", help="comma-separated classes (default: the model's)")
    p.add_argument("--registry", default=None)
    p.add_argument("--model-name", default=None)
    p.add_argument("--lease-seconds", type=float, default=None, help="how long a request stays with one labeler")
    p.add_argument("--answers-needed", type=int, default=None, help="2 or more asks for double labeling")
    p.add_argument("--metrics-url", action="append", default=[],
                   help="Prometheus /metrics URL shown on /status (repeatable; default: flink.metrics_urls, "
                        "else the embedded stack's)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("labeler", help="labelers of the labeling page: add one (a token of their own)")
    q = p.add_subparsers(dest="labeler_command", required=True).add_parser(
        "add", help="give a labeler a new token (printed once; only its digest is stored)")
    q.add_argument("name")
    q.set_defaults(func=cmd_labeler_add)

    p = sub.add_parser("demo", help="broker + serving job + replayed data, with a live status line")
    model_args(p)
    p.add_argument("--bootstrap", default=None,
                   help="use this broker instead of the embedded one (default: broker.bootstrap)")
    p.add_argument("--duration", type=float, default=90.0, help="seconds of replay")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to keep watching after the replay")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="a serving job that started late (no prediction yet, or predictions still coming when "
                        "the drain ends) is watched up to this much longer, until --drain seconds pass "
                        "without a prediction")
    p.add_argument("--rate", type=float, default=400.0, help="readings per second")
    p.add_argument("--devices", type=int, default=16)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between status lines")
    p.add_argument("--run-dir", default="var/demo", help="logs and checkpoints")
    p.add_argument("--drift-after-s", type=float, default=30.0,
                   help="seconds of replay before the gyroscope calibration drift (0: no drift)")
    p.add_argument("--no-learning", action="store_true", help="serving only: no learning job, no labelers")
    p.add_argument("--dataset", default=None, help="replay an imported dataset (its devices, at recorded speed "
                   "times --speed) instead of BasicMotions; no drift is added")
    p.add_argument("--speed", type=float, default=1.0, help="multiple of the recorded speed (with --dataset)")
    p.add_argument("--audit-rate", type=float, default=None,
                   help="share of confident windows also sent to review (default: serving.audit_rate from the "
                        "configuration, else 0.2 in the demo)")
    p.add_argument("--review-budget", type=int, default=None,
                   help="review requests per minute at most (default: serving.review_budget_per_minute, else 600)")
    p.set_defaults(config_base=DEMO_DEFAULTS)
    p.add_argument("--label-error-rate", type=float, default=0.02, help="how often simulated labelers are wrong")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("retrain", help="train on the whole labeled archive; gate, publish and announce")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.set_defaults(needs_bootstrap=True)
    p.add_argument("--registry", default=None)
    p.add_argument("--model-name", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--gate-margin", type=float, default=None,
                   help="how much worse than serving a candidate may be on the held-out labels "
                        "(default: learning.gate_margin; negative asks for that much better)")
    p.add_argument("--no-announce", action="store_true", help="write the version but do not announce it")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("simulate-labelers", help="answer review requests from the replayed ground truth")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.set_defaults(needs_bootstrap=True)
    p.add_argument("--delay-ms", type=int, default=500)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--registry", default=None)
    p.add_argument("--model-name", default=None)
    p.set_defaults(func=cmd_simulate_labelers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kafka-python warns about slow event-loop tasks on a busy 2-core machine
        logging.getLogger("kafka").setLevel(logging.ERROR)
    cfg = config_of(args)
    if getattr(args, "registry", "-") is None:
        args.registry = cfg.registry.path
    if getattr(args, "model_name", "-") is None:
        args.model_name = cfg.registry.model_name
        args.model_chosen = False  # not named on the command line: commands over every served model may list all
    asks_help = getattr(args, "passthrough", None) and {"-h", "--help"} & set(rest)
    if getattr(args, "needs_bootstrap", False) and not asks_help:
        args.bootstrap = resolve_bootstrap(args)
    try:
        if getattr(args, "passthrough", None):
            return args.passthrough(args, rest)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return args.func(args)
    except FlinkRestError as exc:
        print(f"sensorloop: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
