"""The serving job: sensor-readings → parse → per-device windows → micro-batched inference →
predictions, review requests and dead letters.

Run: ``python -m stream_jobs.serving_job [--config FILE] [--set section.key=value ...]`` (the CLI's
``serve``, ``job submit serving`` and a FlinkDeployment all start it this way).
"""

from __future__ import annotations

import logging

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction

from model.signing import AnnouncementVerifier
from operators.model_routing import served_models
from operators.parse import raw_text
from operators.serving_model import ControlMessage
from schemas import DeadLetter, DriftEvent, ModelSnapshot, SchemaError
from settings import Config
from stream_jobs.flink_env import JobRun, keyed_by_first_field, make_env, parse_job_args
from stream_jobs.kafka_io import DEAD_LETTERS, dead_letter_record, keyed_source, now_ms, sink_routed, split_envelope
from stream_jobs.serving_per_device import InferBatches, ReadingsToWindows
from stream_jobs.serving_sharded import ServeShards

log = logging.getLogger(__name__)
SHARDED_MIN_SHARDS = 8


class FanOutControls(KeyedProcessFunction):
    """Validates ``model-snapshots`` and ``drift-events`` messages and sends each to every inference shard."""

    def __init__(self, cfg: Config, shards: int) -> None:
        self.topics, self.shards = cfg.topics, shards

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        topic, partition, offset, _, payload = split_envelope(value)
        contract = DriftEvent if topic == self.topics.drift_events else ModelSnapshot
        try:
            message = contract.decode(payload)
        except SchemaError as exc:
            letter = DeadLetter(topic, partition, offset, str(exc), raw_text(payload), exc.field, "control",
                                now_ms())
            yield DEAD_LETTERS, dead_letter_record(self.topics.dead_letters, letter)
            return
        for shard in range(self.shards):
            yield ControlMessage(shard, message, partition, offset)


def inference_shard_count(cfg: Config) -> int:
    """``serving.inference_shards``, else: the parallelism (``per_device`` layout), or at least
    ``SHARDED_MIN_SHARDS`` (``sharded``: device states live under their shard, so the count is kept
    across rescales up to it)."""
    if cfg.serving.inference_shards:
        return cfg.serving.inference_shards
    parallelism = max(1, cfg.flink.parallelism)
    return max(SHARDED_MIN_SHARDS, parallelism) if cfg.serving.layout == "sharded" else parallelism


def build_serving_job(env, cfg: Config, run: JobRun = JobRun()) -> None:
    """Add the serving pipeline to ``env``."""
    topics, group_id = cfg.topics, run.group_id or "sensorloop-serving"
    if cfg.registry.verify_key:
        try:
            AnnouncementVerifier.load(cfg.registry.verify_key)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"sensorloop serving job: registry.verify_key {cfg.registry.verify_key}: {exc}") from None
    try:
        models = served_models(cfg)
    except ValueError as exc:
        raise SystemExit(f"sensorloop serving job: {exc} (serving.window = {cfg.serving.window})") from None
    shards = inference_shard_count(cfg)
    sharded = cfg.serving.layout == "sharded"
    readings = keyed_source(env, cfg.broker.bootstrap, [topics.readings], group_id, "sensor-readings", "device_id",
                            group=(cfg.serving.group_readings, cfg.serving.group_ms), shards=shards if sharded else 0,
                            fetch_wait_ms=cfg.broker.fetch_wait_ms, quiet_ms=cfg.serving.quiet_ms)
    announcements = keyed_source(env, cfg.broker.bootstrap, [topics.model_snapshots, topics.drift_events],
                                 f"{group_id}-controls", "model-snapshots-and-drift-events", "model_name",
                                 fetch_wait_ms=cfg.broker.rare_fetch_wait_ms)
    controls = (announcements.process(FanOutControls(cfg, shards), output_type=Types.PICKLED_BYTE_ARRAY())
                .name("model-announcements").uid("model-announcements"))
    controls_by_shard = controls.key_by(lambda c: c.shard, key_type=Types.INT())
    if sharded:
        scored = (readings.connect(controls_by_shard)
                  .process(ServeShards(cfg, models, shards, run.stats_file, group_id), output_type=Types.STRING())
                  .name("serve-shards").uid("serve-shards"))
        dead = [scored.get_side_output(DEAD_LETTERS)]
    else:
        windows = (readings.process(ReadingsToWindows(cfg, models, shards, group_id),
                                    output_type=Types.ROW([Types.INT(), Types.PICKLED_BYTE_ARRAY()]))
                   .name("parse-and-window").uid("parse-and-window"))
        by_shard = keyed_by_first_field(windows, Types.INT(), Types.PICKLED_BYTE_ARRAY())
        scored = (by_shard.connect(controls_by_shard)
                  .process(InferBatches(cfg, models, run.stats_file), output_type=Types.STRING())
                  .name("inference").uid("inference"))
        dead = [windows.get_side_output(DEAD_LETTERS)]
    out = scored.union(*dead, controls.get_side_output(DEAD_LETTERS))
    sink_routed(out, cfg.broker.bootstrap, cfg.flink.exactly_once, f"{group_id}-tx")


def main(argv: list[str] | None = None) -> None:
    cfg, run = parse_job_args("serving", argv)
    env = make_env(cfg, "serving", run)
    build_serving_job(env, cfg, run)
    env.execute("sensorloop-serving")


if __name__ == "__main__":
    main()
