"""The configuration's sections: one frozen dataclass per concern, each validated on creation.

Every class here is the only definition of its settings: the TOML file's ``[section]``, the
``SENSORLOOP_<SECTION>_<KEY>`` variables, the jobs and the plain-Python operators all read the same
fields.

>>> ServingSettings(window=16, stride=4).window
16
>>> ServingSettings(stride=0)
Traceback (most recent call last):
...
ValueError: stride must be >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass

# The JVM's optimising compiler (C2) kept about a third of a core busy for the first minutes of a job
# on a 2-core machine; C1 alone is the default for the jobs' JVMs (see the README's benchmark section).
C1_ONLY = "-XX:TieredStopAtLevel=1"


def _at_least(obj: object, minimum: float, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(obj, name)}")


def _share(obj: object, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(obj, name)}")


@dataclass(frozen=True)
class BrokerSettings:
    """Kafka: an existing cluster (``bootstrap``) or the embedded broker the stack starts."""

    bootstrap: str = ""  # empty: the embedded stack's broker
    embedded_port: int = 9092
    storage: str = "memory://tansu/"  # Tansu storage engine; s3://bucket/ keeps records across restarts
    storage_endpoint: str = ""  # the S3-compatible endpoint of s3:// storage (credentials: AWS_* variables)
    # how long the jobs' sources let the broker hold a fetch that finds nothing: the readings source, and the
    # sources of rare records (announcements, drift events, answers, unlabeled windows). The embedded broker
    # answers a waiting fetch only when the wait ends, so these bound its latency; Apache Kafka answers at once.
    fetch_wait_ms: int = 10
    rare_fetch_wait_ms: int = 250

    def __post_init__(self) -> None:
        _at_least(self, 0, "fetch_wait_ms", "rare_fetch_wait_ms")


@dataclass(frozen=True)
class RegistrySettings:
    """Where model versions live (a folder, or any fsspec URL on a cluster) and which model is served."""

    path: str = "var/registry"
    model_name: str = "basic-motions"
    signing_key: str = ""  # the publishing side's Ed25519 private key (PEM): announcements are signed with it
    verify_key: str = ""  # its public key: serving then refuses unsigned or wrongly signed announcements
    keep_withdrawn: int = 10  # versions withdrawn in their shadow phase (never served) kept; older ones are deleted.
    #                           Every version that served is kept.

    def __post_init__(self) -> None:
        _at_least(self, 0, "keep_withdrawn")


@dataclass(frozen=True)
class DataSettings:
    """Where imported datasets live (``sensorloop data import``)."""

    dir: str = "var/datasets"


@dataclass(frozen=True)
class FlinkSettings:
    """How both jobs run, wherever they run; ``jobmanager`` empty means the embedded stack's cluster."""

    jobmanager: str = ""  # host:port of a JobManager's REST API; empty: the embedded stack
    state_dir: str = "var/flink"  # checkpoints/<job> and savepoints/<job> under it: a path, file:// or s3:// URL
    parallelism: int = 1
    checkpoint_interval_ms: int = 5_000
    exactly_once: bool = False
    execution_mode: str = "thread"  # PyFlink's Python operators in the TaskManager's JVM (thread) or a worker
    python_executable: str = ""  # Python on the TaskManagers; empty: this interpreter
    metrics_urls: str = ""  # comma-separated Prometheus /metrics URLs of the TaskManagers; empty: the stack's
    # checkpoints that may fail in a row (storage unwritable or away) while the job keeps processing; one
    # more restarts it from the last good one. Keep it × checkpoint_interval_ms well under the Kafka
    # transaction timeout (10 min) when exactly_once is on: its open transactions commit only on a checkpoint.
    tolerable_checkpoint_failures: int = 60
    restart_max_backoff_ms: int = 60_000  # restarts never stop: 1 s, 2 s, 4 s ... up to this, reset after 10 min
    # process mode only: the longest and largest bundle of elements sent to the Python worker (thread mode has
    # no bundles)
    bundle_time_ms: int = 5
    bundle_size: int = 500
    buffer_timeout_ms: int = 5
    jars_dir: str = ""  # the verified connector jars and Java helpers; empty: ~/.cache/sensorloop/jars
    log_dir: str = "var/logs"  # a job started on its own local MiniCluster logs here, one file per start
    local_jvm_options: str = C1_ONLY  # that local MiniCluster's JVM; "" for the JVM's defaults
    local_taskmanager_memory: str = "2g"  # that local MiniCluster's TaskManager memory

    def __post_init__(self) -> None:
        _at_least(self, 1, "parallelism", "checkpoint_interval_ms", "bundle_size")
        _at_least(self, 1000, "restart_max_backoff_ms")
        _at_least(self, 0, "bundle_time_ms", "buffer_timeout_ms", "tolerable_checkpoint_failures")
        if self.execution_mode not in ("thread", "process"):
            raise ValueError(f"execution_mode must be 'thread' or 'process', got {self.execution_mode!r}")


@dataclass(frozen=True)
class StackSettings:
    """The embedded single-machine stack: broker + a Flink session cluster from the installed PyFlink."""

    run_dir: str = "var/stack"
    rest_port: int = 8081
    rpc_port: int = 6123
    taskmanagers: int = 1  # TaskManager processes; slots are spread evenly over them (one subtask per process
    #                        first), so a job at parallelism N runs on N processes when the stack has N
    taskmanager_slots: int = 4  # per TaskManager
    taskmanager_memory: str = "2g"  # per TaskManager
    jobmanager_memory: str = "1g"
    prometheus_ports: str = "9249-9259"  # one port each for the JobManager and every TaskManager
    taskmanager_jvm_options: str = C1_ONLY  # "" for the JVM's defaults (C2: long runs, cores to spare)

    def __post_init__(self) -> None:
        _at_least(self, 1, "taskmanagers", "taskmanager_slots")


@dataclass(frozen=True)
class ServingSettings:
    """Every knob of the serving path, with defaults that suit 10 Hz wearable sensors."""

    model_version: int = 0  # 0: the registry's latest at start; announcements on model-snapshots swap it
    window: int = 32
    stride: int = 8
    max_out_of_order_ms: int = 0
    max_seq_gap_buffer: int = 32
    seq_gap_timeout_ms: int = 1_000
    reset_gap_ms: int = 10_000
    max_batch: int = 64
    max_wait_ms: int = 10  # the longest a window waits for a fuller batch (but see quiet_ms)
    quiet_ms: int = 1  # sharded layout: once no reading has come for this long (a burst ended), the windows
    #                    waiting for a fuller batch are scored at once, not after max_wait_ms; 0: off
    inference_shards: int = 0  # micro-batch keys (devices hash onto them); 0: flink.parallelism. Rescaling keeps
    #                            each shard's pending batches and served version: set it to the highest
    #                            parallelism the job will be rescaled to (fewer, larger batches below it)
    confidence_threshold: float = 0.6
    audit_rate: float = 0.01
    review_budget_per_minute: int = 120
    max_message_bytes: int = 64 * 1024
    max_block_samples: int = 1_000  # samples one message (a sample block) may carry
    max_abs_value: float = 1e9  # a reading's values beyond this magnitude are refused (float32 would overflow)
    max_future_ms: int = 600_000  # a reading dated further ahead of the job's clock is refused; 0: no bound
    max_seq_jump: int = 100_000  # a sequence number further ahead of the device's next one is refused; 0: none
    device_expiry_ms: int = 3_600_000  # a device silent this long is forgotten (its window state); 0: never
    source_check_ms: int = 5_000  # how often the broker is asked whether the readings read still exist; 0: off
    runtime: str = "onnx"
    precision: str = "fp32"  # "int8": versions get an INT8 graph on publish (if it agrees) and serving uses it
    device: str = "auto"
    inference_threads: int = 1
    confidence_drift_delta: float = 0.002  # ADWIN on served confidence (a fall is a drift event); 0: off
    drift_budget_per_minute: int = 600  # review budget for a while after a drift (either job's detector)
    drift_boost_seconds: int = 120
    models: str = ""  # comma-separated models served side by side (readings pick one); empty: registry.model_name
    query_strategy: str = "confidence"  # which windows are unsure: confidence, margin or entropy
    query_threshold: float = 0.0  # margin below / entropy above it is unsure; 0: 0.2 / 0.5 (confidence_threshold)
    review_device_share: float = 1.0  # most of a minute's review budget one device's unsure windows may take
    review_class_share: float = 1.0  # the same for one predicted class (1.0: no cap; the audit is never capped)
    anomaly_threshold: float = 3.0  # a window scoring at least this is asked about (reason anomaly): 3 is the top
    #                                 0.1 % of normal windows (model.network.WindowTransformer.anomaly_score)
    anomaly_device_windows: int = 0  # >= 10: each device's scores are re-expressed as how rare they are among its
    #                                  own first this many windows under a version (operators.device_baseline);
    #                                  0: the model's score as it is
    device_normalisation_windows: int = 0  # > 0: each device's inputs are re-expressed with the model's per-channel
    #                                        mean and deviation in place of the device's own, learned online from
    #                                        its windows once it has sent this many (operators.device_normalisation)
    device_normalisation_halflife: int = 0  # windows after which a device's older windows count half (0: all the same)
    unlabeled_share: float = 0.05  # share of the windows of a model with anomaly or forecast heads passed to the
    #                                learning side unlabeled (topics.windows) for their self-supervised objectives
    layout: str = "sharded"  # "sharded": one Python operator keyed by inference shard parses, windows and scores,
    #                          a shard's messages of many devices crossing into Python together; "per_device": the
    #                          earlier layout (window state keyed by device, a second operator scores), whose
    #                          savepoints the sharded layout cannot read
    group_readings: int = 256  # up to this many messages of one device (one shard: sharded layout) are grouped in
    #                            Java (ReadingGrouper) and cross into Python as one record; 1: each message alone
    group_ms: int = 10  # the longest a message waits for its group (the latency grouping may add); 0: no grouping.
    #                     While fewer than 2 messages per shard come within it, the wait is 2 ms (ReadingGrouper)
    scoring_thread: bool = False  # sharded layout: score batches on a thread of their own, beside the task thread
    #                               that parses (they share the interpreter lock). Off, the task thread scores them
    #                               itself: on 2 cores that moved 36-40 % more samples/s at 10 samples per message
    #                               (6-16 % more since only the model runs on that thread); on, the p99 at 1,000
    #                               messages/s was lower in three pairs and mixed in six more (81-157 ms against 88-115)
    switch_interval_ms: float = 1.0  # the sharded layout's interpreter hands the lock between its threads at least
    #                                  this often (Python's default 5 ms kept the scoring thread waiting for it after
    #                                  each model call while the task thread parsed)
    canary_share: float = 0.0  # during a version's shadow phase, the share of devices (by a hash of their id) it
    #                            serves as a canary; the rest keep the version in service (0: shadow only)

    def __post_init__(self) -> None:
        _at_least(self, 1, "window", "stride", "max_batch", "max_seq_gap_buffer", "inference_threads",
                  "max_block_samples", "group_readings")
        _at_least(self, 0, "model_version", "inference_shards", "max_out_of_order_ms", "seq_gap_timeout_ms",
                  "max_wait_ms", "review_budget_per_minute", "reset_gap_ms", "drift_budget_per_minute", "drift_boost_seconds",
                  "max_future_ms", "max_seq_jump", "device_expiry_ms", "source_check_ms", "anomaly_device_windows",
                  "group_ms", "device_normalisation_windows", "device_normalisation_halflife", "quiet_ms")
        if not self.max_abs_value > 0:
            raise ValueError(f"max_abs_value must be > 0, got {self.max_abs_value}")
        if not 0.05 <= self.switch_interval_ms <= 100:
            raise ValueError(f"switch_interval_ms must lie in [0.05, 100], got {self.switch_interval_ms}")
        if 0 < self.anomaly_device_windows < 10:
            raise ValueError(f"anomaly_device_windows must be 0 (off) or at least 10, got {self.anomaly_device_windows}")
        if not (isinstance(self.anomaly_threshold, (int, float)) and 0 < self.anomaly_threshold < 1e6):
            raise ValueError(f"anomaly_threshold must be a positive number, got {self.anomaly_threshold!r}")
        _share(self, "confidence_threshold", "audit_rate")
        if not 0.0 <= self.confidence_drift_delta < 1.0:
            raise ValueError("confidence_drift_delta must lie in [0, 1)")
        if self.layout not in ("sharded", "per_device"):
            raise ValueError(f"layout must be sharded or per_device, got {self.layout!r}")
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"runtime must be 'onnx' or 'torch', got {self.runtime!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be fp32 or int8, got {self.precision!r}")
        if self.query_strategy not in ("confidence", "margin", "entropy"):
            raise ValueError(f"query_strategy must be confidence, margin or entropy, got {self.query_strategy!r}")
        _share(self, "query_threshold", "review_device_share", "review_class_share", "canary_share", "unlabeled_share")
        if not self.review_device_share > 0 or not self.review_class_share > 0:
            raise ValueError("review_device_share and review_class_share must be > 0")

    @property
    def query_threshold_or_default(self) -> float:
        """The unsure threshold of ``query_strategy``: ``query_threshold``, else the strategy's default.

        >>> ServingSettings().query_threshold_or_default, ServingSettings(query_strategy="margin").query_threshold_or_default
        (0.6, 0.2)
        """
        if self.query_threshold:
            return self.query_threshold
        return {"margin": 0.2, "entropy": 0.5}.get(self.query_strategy, self.confidence_threshold)


@dataclass(frozen=True)
class LearningSettings:
    """The online trainer, the holdout and gate, and the label join of the learning job.

    The gate accepts a candidate whose held-out accuracy is at most ``gate_margin`` *below* the
    serving version's (0: not worse; a negative margin asks for that much better) and, with
    ``gate_z`` > 0, that wins clearly more of the held-out windows the two disagree on (a paired sign
    test at ``gate_z`` standard deviations; 1.645 is one-sided 95 %; 0, the default, turns it off).
    """

    lr: float = 1e-3
    batch_size: int = 8
    replay_ratio: float = 1.0  # replayed windows per new window in each update
    steps_per_update: int = 1  # gradient steps per mini-batch of new windows (each with a fresh replay sample)
    unlabeled_steps: int = 4  # the same for unlabeled windows (the self-supervised heads: anomaly, forecast)
    unlabeled_anchor: float = 1.0  # a classifying network's class outputs on the unlabeled windows are held to
    #                                those of the network as the last labels left it (distillation at this
    #                                weight), so learning every window does not move the classes; 0 turns it off
    unlabeled_max_score: float = 3.0  # an unlabeled window the version in service scores at least this anomalous
    #                                   is set aside, neither learned nor held out, unless a labeler calls it
    #                                   normal (so faults do not teach the model that they are normal); 0: learn all
    head: str = "sgd"  # how the output layer learns: "sgd" (gradient steps on encoder and head) or "lda"
    #                    (streaming linear discriminant analysis on the version's encoder, which stays fixed)
    lda_shrinkage: float = 0.01  # the LDA covariance shrunk this far towards the identity
    lda_decay: float = 0.0  # the LDA statistics forget at this rate per label (0: a running average)
    ewc_strength: float = 0.0  # 0 turns EWC off
    distill_strength: float = 0.0  # learning without forgetting: weight of the distillation loss against the
    #                                version in service (0 turns it off)
    distill_temperature: float = 2.0  # softening of both sides' outputs in the distillation loss
    reservoir_capacity: int = 2000
    class_balanced: bool = True  # one reservoir share per class, so rare classes are not crowded out
    seed: int = 0
    calibration: str = "auto"  # what each published version's probabilities are calibrated by, fitted on the
    #                            gate's held-out windows: "temperature", "temperature_bias" (one bias per class too:
    #                            fixes a model that is overconfident on some classes, and may change which class is
    #                            predicted; model.calibration), or "auto" (the biases only where the temperature
    #                            leaves an ECE above chance and they lower it out of fold: calibration.biases_help)
    holdout: str = "hashed"  # the gate's held-out windows: "hashed" (1 in holdout_every of all answers) or
    #                          "audit" (1 in holdout_every of the answered audit windows: a uniform sample)
    holdout_every: int = 4  # 1 labeled window in this many is held out for the gate, never trained on
    gate_every: int = 8  # labeled windows between gate checks
    gate_margin: float = 0.0
    gate_z: float = 0.0  # 1.645: a one-sided 95 % sign test (fewer, surer versions; slower after a drift)
    min_holdout: int = 20  # held-out windows before an ordinary (not worse) pass; before that only early_z
    gate_forgets_on_drift: bool = True  # a drift in serving's error empties the gate's held-out windows: those from
    #                                      before it judge by the old concept and refuse candidates that learned the
    #                                      new one (the gate then decides on fresh windows, early_z first)
    gate_early_z: float = 2.33  # with fewer than min_holdout held-out windows a candidate still passes when it
    #                              wins clearly at this z (a one-sided 99 % sign test); 0: always wait
    rollback_z: float = 3.0  # roll back the version in service when, on the same live audit windows, its
    #                          predecessor wins this many standard deviations more often (paired sign test,
    #                          repeated after each answer); 0 turns automatic rollback off
    rollback_min_audits: int = 30  # audit answers of the version in service before it is judged
    shadow_answers: int = 0  # > 0: a candidate that passed the gate is first scored beside the version in service
    #                          (its shadow phase) and serves only once it wins clearly on answered live windows,
    #                          or is not worse after this many; 0: it serves at once
    shadow_z: float = 1.645  # the paired sign test that promotes or withdraws it
    shadow_min_answers: int = 20  # answered windows before the shadow phase can end
    publish_interval_s: float = 0.0  # periodic deployment: a candidate that is not worse but not clearly better
    #                                  waits this long after the last version (by answer time); 0: no wait
    publish_now_z: float = 1.645  # ... unless it wins clearly more held-out windows (sign test at this z)
    int8_min_agreement: float = 0.98  # an INT8 graph is kept only if it predicts FP32's class this often
    holdout_size: int = 300
    label_ttl_ms: int = 3_600_000  # how long a review request waits for its answers

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "steps_per_update", "unlabeled_steps", "reservoir_capacity", "holdout_every", "gate_every",
                  "min_holdout", "holdout_size", "label_ttl_ms", "shadow_min_answers")
        _at_least(self, 0, "replay_ratio", "unlabeled_anchor", "unlabeled_max_score", "ewc_strength", "distill_strength", "gate_z", "gate_early_z", "rollback_z",
                  "publish_interval_s", "publish_now_z", "shadow_answers", "shadow_z")
        _at_least(self, 1, "rollback_min_audits")
        _share(self, "int8_min_agreement")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.head not in ("sgd", "lda"):
            raise ValueError(f"head must be sgd or lda, got {self.head!r}")
        _share(self, "lda_shrinkage")
        if not 0.0 <= self.lda_decay < 1.0:
            raise ValueError(f"lda_decay must be in [0, 1), got {self.lda_decay}")
        if self.holdout not in ("hashed", "audit"):
            raise ValueError(f"holdout must be hashed or audit, got {self.holdout!r}")
        if self.calibration not in ("temperature", "temperature_bias", "auto"):
            raise ValueError(f"calibration must be temperature, temperature_bias or auto, got {self.calibration!r}")


@dataclass(frozen=True)
class LabelingSettings:
    """The labeling page, and how many answers make a label (the learning job's join uses the same)."""

    host: str = "127.0.0.1"
    port: int = 8080
    lease_seconds: float = 120.0
    answers_needed: int = 1
    labelers_file: str = "var/labelers.toml"  # labeler -> token digest (sensorloop labeler add NAME)
    shared_labeler: str = "labeler"  # who holds the shared token (--token, $SENSORLOOP_LABEL_TOKEN), if one is used
    max_queue: int = 10_000  # review requests the page keeps; answered ones are forgotten first
    user_header: str = ""  # behind a single-sign-on proxy: its user header (X-Forwarded-User) names the labeler
    trusted_proxies: str = "127.0.0.1,::1"  # comma-separated addresses whose user header is believed
    class_creators: str = ""  # comma-separated labelers who may name a class the model does not have yet
    max_classes: int = 64  # no model grows beyond this many classes

    def __post_init__(self) -> None:
        _at_least(self, 1, "answers_needed", "max_queue")
        _at_least(self, 2, "max_classes")
        if not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")

    @property
    def creators(self) -> frozenset[str]:
        """The labelers allowed to name new classes."""
        return frozenset(n.strip() for n in self.class_creators.split(",") if n.strip())

