"""Operator commands of the ``sensorloop`` CLI: configuration, the embedded stack, jobs on a Flink
cluster (submit, list, cancel, savepoint, resume) and ``status``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from settings import Config, ConfigError, load_config, to_toml


def table(rows: list[list], headers: list[str]) -> str:
    """A plain-text table, columns as wide as their widest cell.

    >>> print(table([["serving", 3]], ["job", "n"]))
    job      n
    -------  -
    serving  3
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress_bar(done: float, total: float, width: int = 30, label: str = "") -> str:
    """A one-line progress bar.

    >>> progress_bar(25, 100, width=10, label="readings")
    '[##--------]  25% readings'
    """
    share = 0.0 if total <= 0 else min(1.0, done / total)
    filled = int(share * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {share * 100:3.0f}% {label}".rstrip()


# command-line flags that set a configuration key (when given)
FLAG_KEYS = {"bootstrap": "broker.bootstrap", "jobmanager": "flink.jobmanager", "registry": "registry.path",
             "model_name": "registry.model_name", "audit_rate": "serving.audit_rate",
             "review_budget": "serving.review_budget_per_minute", "parallelism": "flink.parallelism",
             "taskmanagers": "stack.taskmanagers"}


def config_of(args: argparse.Namespace) -> Config:
    """The validated configuration: ``--config`` (else ``$SENSORLOOP_CONFIG``, else ./sensorloop.toml),
    environment, then the command's own flags; exits with every problem listed."""
    cached = getattr(args, "_config", None)
    if cached is not None:
        return cached
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name, None) is not None}
    try:
        cfg = load_config(args.config if args.config else "", flags=flags, base=getattr(args, "config_base", None))
    except ConfigError as exc:
        print(f"sensorloop: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    args._config = cfg
    return cfg


def _resolve(args: argparse.Namespace, flag: str, configured: str, from_stack: str, missing: str) -> str:
    """A flag's value, else the configured one, else the running embedded stack's, else exit with ``missing``."""
    from control.stack import read_state

    explicit = getattr(args, flag, None)
    if explicit:
        return explicit
    if configured:
        return configured
    state = read_state(config_of(args).stack.run_dir)
    if state:
        return getattr(state, from_stack)
    raise SystemExit(f"sensorloop: {missing}")


def resolve_bootstrap(args: argparse.Namespace) -> str:
    """``--bootstrap``, else ``broker.bootstrap`` from the configuration, else the running embedded stack's."""
    return _resolve(args, "bootstrap", config_of(args).broker.bootstrap, "bootstrap",
                    "no Kafka broker: pass --bootstrap, set broker.bootstrap (or $SENSORLOOP_BROKER_BOOTSTRAP), "
                    "or run `sensorloop stack start`")


def resolve_jobmanager(args: argparse.Namespace) -> str:
    """``--jobmanager``, else ``flink.jobmanager``, else the running embedded stack's JobManager."""
    return _resolve(args, "jobmanager", config_of(args).flink.jobmanager, "jobmanager",
                    "no Flink cluster: pass --jobmanager host:port, set flink.jobmanager "
                    "(or $SENSORLOOP_FLINK_JOBMANAGER), or run `sensorloop stack start`")


def metrics_urls(args: argparse.Namespace) -> list[str]:
    """``--metrics-url`` flags, else ``flink.metrics_urls``, else the embedded stack's reporter ports."""
    from control.metrics import endpoints

    cfg = config_of(args)
    given = getattr(args, "metrics_url", None) or [u for u in cfg.flink.metrics_urls.split(",") if u.strip()]
    return [u.strip() for u in given] if given else endpoints(cfg.stack.prometheus_ports)


def _rest(args: argparse.Namespace):
    from control.flink_rest import FlinkRest

    return FlinkRest(resolve_jobmanager(args))


def cmd_config_show(args: argparse.Namespace) -> int:
    print(to_toml(config_of(args)), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration, and that every served model can start (a version or a declaration)."""
    from operators.model_routing import served_models

    cfg = config_of(args)
    print(f"configuration valid ({args.config or 'defaults, $SENSORLOOP_CONFIG or ./sensorloop.toml'} + environment)")
    try:
        models = served_models(cfg)
    except ValueError as exc:
        if not cfg.serving.models:  # the default model before `sensorloop setup`: a step to take, not an error
            print(f"note: serving cannot start yet: {exc}")
            return 0
        print(f"sensorloop: serving.models: serving cannot start: {exc}", file=sys.stderr)
        return 1
    for m in models:
        declared = cfg.models.get(m.name)
        kinds = ", ".join(cfg.device_types_of(m.name))
        devices = f", devices {', '.join(declared.devices)}" if declared and declared.devices else ""
        print(f"serves {m.name}: {len(m.channels)} channel(s), window {m.window}, stride {m.stride}; "
              f"device_type {kinds}{devices}")
    return 0


def cmd_stack_start(args: argparse.Namespace) -> int:
    from control.flink_rest import taskmanagers
    from control.stack import start_stack
    from infra.jars import ensure_all

    cfg = config_of(args)
    ensure_all(cfg.flink.jars_dir)
    state = start_stack(cfg)
    print(f"broker      {state.bootstrap}{'' if state.broker_pid else ' (external)'}")
    print(f"flink       {state.jobmanager}  (web UI and REST API; {taskmanagers(cfg.stack.taskmanagers)}"
          f" × {cfg.stack.taskmanager_slots} slots)")
    print(f"prometheus  localhost:{state.prometheus_ports}  (/metrics)")
    print(f"logs        {Path(cfg.stack.run_dir).resolve()}")
    return 0


def cmd_stack_stop(args: argparse.Namespace) -> int:
    from control.flink_rest import FlinkRestError
    from control.stack import read_state, record_savepoint, stop_stack

    cfg = config_of(args)
    state = read_state(cfg.stack.run_dir)
    if state and args.savepoint:
        rest = _rest(args)
        try:
            for job in rest.jobs():
                if job.state == "RUNNING":
                    location = rest.savepoint(job.job_id, stop=True)
                    record_savepoint(cfg, job.name.removeprefix("sensorloop-"), location)
                    print(f"stopped {job.name} with savepoint {location}")
        except FlinkRestError as exc:
            print(f"could not take savepoints: {exc}")
    stopped = stop_stack(cfg)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    from control.flink_rest import taskmanagers
    from infra.broker import broker_answers
    from infra.flink_cluster import rest_answers
    from control.stack import read_state

    state = read_state(config_of(args).stack.run_dir)
    if state is None:
        print("the embedded stack is not running (`sensorloop stack start`)")
        return 1
    broker_ok = broker_answers(state.bootstrap, 2.0)
    overview = rest_answers(state.jobmanager)
    print(table([["broker", state.bootstrap, "up" if broker_ok else "DOWN"],
                 ["flink", state.jobmanager, f"up, {taskmanagers(overview['taskmanagers'])}, "
                  f"{overview['slots-available']}/{overview['slots-total']} slots free" if overview else "DOWN"]],
                ["part", "address", "state"]))
    return 0 if broker_ok and overview else 1


def cmd_job_submit(args: argparse.Namespace) -> int:
    from control.stack import latest_restore_point
    from control.submit import SubmitError, submit

    cfg = config_of(args)
    savepoint, kind = args.from_savepoint, "savepoint"
    if savepoint == "latest":
        point = latest_restore_point(cfg, args.job)
        if point is None:
            raise SystemExit(f"sensorloop: no savepoint of the {args.job} job recorded in {cfg.stack.run_dir} "
                             f"and no retained checkpoint under {cfg.flink.state_dir}/checkpoints/{args.job}")
        savepoint, kind = point.location, point.kind
        taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(point.taken_at))
        print(f"resuming the {args.job} job from its newest {point.kind} (taken {taken})")
    if args.local:
        return _submit_local(args, cfg, savepoint)
    bootstrap, jobmanager = resolve_bootstrap(args), resolve_jobmanager(args)
    started = time.monotonic()
    try:
        submission = submit(args.job, cfg, bootstrap, jobmanager, savepoint)
    except SubmitError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    resumed = f" from {kind} {savepoint}" if savepoint else ""
    print(f"submitted {args.job} job {submission.job_id} to {jobmanager}{resumed} at parallelism "
          f"{cfg.flink.parallelism} ({time.monotonic() - started:.1f}s)")
    if args.wait_running:
        state = _rest(args).wait_state(submission.job_id, ("RUNNING", "FAILED", "CANCELED", "FINISHED"))
        if state == "RUNNING":
            _rest(args).wait_all_tasks_running(timeout_s=180)
        print(f"job {submission.job_id} is {state}")
        return 0 if state == "RUNNING" else 1
    return 0


def cmd_job_args(args: argparse.Namespace) -> int:
    """A FlinkDeployment's ``job.args``: the job reads its settings from ``$SENSORLOOP_CONFIG`` there."""
    from control.submit import JOB_MODULES

    cfg = config_of(args)
    flags = ["-pyclientexec", cfg.flink.python_executable or sys.executable, "-pym", JOB_MODULES[args.job]]
    if args.yaml:
        print("\n".join(f'- "{flag}"' for flag in flags))
    else:
        print(" ".join(flags))
    return 0


def _submit_local(args: argparse.Namespace, cfg: Config, savepoint: str | None) -> int:
    """The job on its own MiniCluster in a background process, its REST API on a fixed port."""
    from control.flink_rest import FlinkRest, FlinkRestError
    from control.launcher import JobProcess
    from control.submit import JOB_MODULES, job_environment, write_job_config
    from infra.broker import free_port
    from infra.flink_cluster import rest_answers

    port = args.rest_port or free_port()
    if rest_answers(f"http://localhost:{port}"):
        raise SystemExit(f"sensorloop: a Flink REST API already answers on localhost:{port}; pick another --rest-port")
    flags = ["--config", str(write_job_config(args.job, cfg, resolve_bootstrap(args))), "--rest-port", str(port)]
    flags += ["--savepoint-path", savepoint] if savepoint else []
    log_path = Path(cfg.stack.run_dir) / f"local-{args.job}-{port}.log"
    process = JobProcess(JOB_MODULES[args.job], flags, log_path, job_environment()).start()
    rest = FlinkRest(f"localhost:{port}", timeout_s=2)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if not process.alive():
            raise SystemExit(f"sensorloop: the {args.job} job exited:\n{process.log_tail(20)}")
        try:
            jobs = rest.jobs()
            ready = bool(jobs) and (not args.wait_running or rest.tasks_running(jobs[0].job_id))
        except FlinkRestError:
            ready = False
        if ready:
            print(f"{args.job} job {jobs[0].job_id} {jobs[0].state} on a local MiniCluster (pid {process.process.pid}, "
                  f"log {log_path}); manage it with --jobmanager localhost:{port}")
            return 0
        time.sleep(0.5)
    process.stop()
    raise SystemExit(f"sensorloop: the {args.job} job did not start within 180 s; see {log_path}")


def cmd_job_list(args: argparse.Namespace) -> int:
    from control.flink_rest import spread

    rest = _rest(args)
    jobs = rest.jobs()
    if not args.all:
        jobs = [j for j in jobs if j.state not in ("FINISHED", "CANCELED", "FAILED")]
    rows = [[j.job_id, j.name, j.state, spread(rest.placement(j.job_id)) if j.state == "RUNNING" else "-",
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time_ms / 1000)),
             f"{j.duration_ms / 1000:.0f}s"] for j in jobs]
    print(table(rows, ["job id", "name", "state", "parallelism", "started", "running for"]) if rows else "no jobs"
          + ("" if args.all else " running (--all lists finished ones too)"))
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    from control.flink_rest import JobManagerGone

    rest = _rest(args)
    job = rest.find(args.job)
    rest.cancel(job.job_id)
    try:
        state = rest.wait_state(job.job_id, ("CANCELED", "FAILED", "FINISHED"))
    except JobManagerGone:  # a local MiniCluster shuts down with its job
        state = "CANCELED (its local MiniCluster shut down with it)"
    print(f"{job.name} {job.job_id}: {state}")
    return 0


def newest_savepoint(target_dir: str, job_id: str, since: float) -> str | None:
    """The savepoint Flink wrote for ``job_id`` into a local ``target_dir`` after ``since`` (epoch s)."""
    from control.stack import local_path

    folder = local_path(target_dir)
    if folder is None:
        return None
    found = [p for p in folder.glob(f"savepoint-{job_id[:6]}-*") if (p / "_metadata").is_file()
             and p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime).as_uri() if found else None


def cmd_job_savepoint(args: argparse.Namespace) -> int:
    from control.flink_rest import JobManagerGone
    from control.stack import record_savepoint
    from infra.flink_cluster import state_uri

    cfg = config_of(args)
    rest = _rest(args)
    job = rest.find(args.job)
    name = job.name.removeprefix("sensorloop-")
    target = args.target_dir or state_uri(f"{cfg.flink.state_dir.rstrip('/')}/savepoints/{name}")
    started = time.time()
    try:
        location = rest.savepoint(job.job_id, target, stop=args.stop)
    except JobManagerGone:
        # A local MiniCluster shuts down as soon as its job stops; the savepoint is complete on disk by then.
        location = newest_savepoint(target, job.job_id, started) if args.stop else None
        if location is None:
            raise
    record_savepoint(cfg, name, location)
    print(f"savepoint of {job.name} {job.job_id}: {location}" + (" (job stopped)" if args.stop else ""))
    return 0


def calibration_line(cfg: Config, version: int, model_name: str | None = None) -> str:
    """How well the served version's confidence is calibrated (from its registry metrics)."""
    from model.calibration import MIN_WINDOWS
    from model.registry import ArtifactError, ModelRegistry

    try:
        metrics = ModelRegistry(cfg.registry.path).metadata(model_name or cfg.registry.model_name, version).metrics
    except ArtifactError as exc:
        return f"model v{version}: registry metadata unreadable ({exc})"
    if "temperature" not in metrics:
        return (f"model v{version}: no calibration recorded (published before calibration, or with under "
                f"{MIN_WINDOWS} held-out windows)")
    noise = metrics.get("ece_noise")
    return (f"model v{version}: temperature {metrics['temperature']:.2f}, expected calibration error "
            f"{metrics['ece_before']:.3f} -> {metrics['ece_after']:.3f} on {metrics['calibration_windows']:.0f} "
            "held-out windows" + ("" if noise is None else
                                  f" (a perfectly calibrated model reaches up to {noise:.3f} on as many)"))


def named_models(by_label: dict[str, dict], served: list[str]) -> dict[str, dict]:
    """Per-model metrics keyed by model name: Prometheus label values have '_' for other characters
    (``basic-motions`` arrives as ``basic_motions``).

    >>> named_models({"basic_motions": {"predictions": 1.0}}, ["basic-motions"])
    {'basic-motions': {'predictions': 1.0}}
    """
    names = {re.sub(r"[^A-Za-z0-9_]", "_", name): name for name in served}
    return {names.get(label, label): values for label, values in by_label.items()}


def cmd_status(args: argparse.Namespace) -> int:
    """Jobs on the cluster and their metrics from the Prometheus reporter."""
    from control.flink_rest import FlinkRestError
    from control.metrics import LEARNING, SERVING, job_and_model_metrics

    rest = _rest(args)
    try:
        jobs = [j for j in rest.jobs() if j.state == "RUNNING"]
    except FlinkRestError as exc:
        print(f"flink: {exc}")
        return 1
    metrics, per_model = job_and_model_metrics(metrics_urls(args))
    if not jobs:
        print("no running jobs")
    for job in jobs:
        values = metrics.get(job.name, {})
        wanted = SERVING if "serving" in job.name else LEARNING if "learning" in job.name else sorted(values)
        shown = ", ".join(f"{k}={values[k]:.0f}" for k in wanted if k in values)
        print(f"{job.name} {job.job_id[:8]} RUNNING {job.duration_ms / 1000:.0f}s: {shown or 'no metrics yet'}")
        try:
            checkpoints = rest.checkpoints(job.job_id)
        except FlinkRestError:
            checkpoints = None
        if checkpoints is not None:
            print(f"  checkpoints: {checkpoints.completed} completed, {checkpoints.failed} failed"
                  + (f" (latest failure: {checkpoints.latest_failure.splitlines()[0][:200]})"
                     if checkpoints.latest_failure else ""))
        models = named_models(per_model.get(job.name, {}), config_of(args).served_models)
        for name in sorted(models):  # several models served: each one's share, version and calibration
            shown = ", ".join(f"{k}={models[name][k]:.0f}" for k in wanted if k in models[name])
            print(f"  model {name}: {shown}")
            if "serving" in job.name and models[name].get("model_version"):
                print("    " + calibration_line(config_of(args), int(models[name]["model_version"]), name))
        if "serving" in job.name and values.get("model_version") and not models:
            print("  " + calibration_line(config_of(args), int(values["model_version"])))
        if values.get("source_stalled_partitions", 0) > 0:
            print(f"  STALLED: {values['source_stalled_partitions']:.0f} readings partition(s) lost records the job "
                  "had read (broker reset?); the job waits until they grow past its position. See the README's "
                  "'A stalled source'.")
    return 0


def add_operator_commands(sub) -> None:
    p = sub.add_parser("config", help="show or check the effective configuration (file + environment)")
    q = p.add_subparsers(dest="config_command", required=True)
    q.add_parser("show", help="print the effective configuration as TOML").set_defaults(func=cmd_config_show)
    q.add_parser("check", help="validate the configuration; exit 2 with every problem listed").set_defaults(
        func=cmd_config_check)

    p = sub.add_parser("stack", help="the embedded stack: broker + Flink session cluster in the background")
    q = p.add_subparsers(dest="stack_command", required=True)
    r = q.add_parser("start", help="start broker, topics and Flink (REST/web UI, Prometheus)")
    r.add_argument("--taskmanagers", type=int, default=None,
                   help="TaskManager processes (default: stack.taskmanagers, 1); a job's subtasks spread over them")
    r.set_defaults(func=cmd_stack_start)
    r = q.add_parser("stop", help="stop Flink and the broker")
    r.add_argument("--savepoint", action="store_true", help="stop running jobs with a savepoint first")
    r.set_defaults(func=cmd_stack_stop)
    q.add_parser("status", help="is each part up").set_defaults(func=cmd_stack_status)

    p = sub.add_parser("job", help="jobs on a Flink cluster: submit, list, cancel, savepoint, resume")
    q = p.add_subparsers(dest="job_command", required=True)

    def cluster_args(r: argparse.ArgumentParser) -> None:
        r.add_argument("--jobmanager", default=None, help="host:port of the JobManager REST API "
                       "(default: flink.jobmanager, else the embedded stack)")

    for name, help_text in (("submit", "submit the serving or learning job (detached)"),
                            ("resume", "submit a job from its newest savepoint or retained checkpoint")):
        r = q.add_parser(name, help=help_text)
        r.add_argument("job", choices=["serving", "learning"])
        r.add_argument("--bootstrap", default=None, help="Kafka (default: broker.bootstrap, else the stack's)")
        r.add_argument("--from-savepoint", default="latest" if name == "resume" else None,
                       help="savepoint or checkpoint path, or 'latest' (the newest recorded savepoint "
                            "or retained checkpoint)")
        r.add_argument("--wait-running", action="store_true", help="wait until the job and all its tasks run")
        r.add_argument("--parallelism", type=int, default=None,
                       help="the job's parallelism (default: flink.parallelism); from a savepoint this rescales it")
        r.add_argument("--local", action="store_true",
                       help="run it on its own local MiniCluster in the background instead of a cluster")
        r.add_argument("--rest-port", type=int, default=0, help="with --local: its REST port (default: a free one)")
        cluster_args(r)
        r.set_defaults(func=cmd_job_submit)
    r = q.add_parser("args", help="print a job's flags for this configuration (e.g. for a FlinkDeployment)")
    r.add_argument("job", choices=["serving", "learning"])
    r.add_argument("--bootstrap", default=None)
    r.add_argument("--yaml", action="store_true", help="as a YAML list")
    r.set_defaults(func=cmd_job_args)
    r = q.add_parser("list", help="jobs on the cluster")
    r.add_argument("--all", action="store_true", help="finished and cancelled ones too")
    cluster_args(r)
    r.set_defaults(func=cmd_job_list)
    r = q.add_parser("cancel", help="cancel a job (id, id prefix, or serving/learning)")
    r.add_argument("job")
    cluster_args(r)
    r.set_defaults(func=cmd_job_cancel)
    r = q.add_parser("savepoint", help="take a savepoint (--stop: and stop the job)")
    r.add_argument("job")
    r.add_argument("--stop", action="store_true")
    r.add_argument("--target-dir", default="", help="default: the cluster's savepoint directory")
    cluster_args(r)
    r.set_defaults(func=cmd_job_savepoint)

    p = sub.add_parser("status", help="running jobs and their metrics (Prometheus reporter)")
    p.add_argument("--metrics-url", action="append", default=[],
                   help="a Prometheus /metrics URL (repeatable; default: the stack's reporter ports)")
    cluster_args(p)
    p.set_defaults(func=cmd_status)
