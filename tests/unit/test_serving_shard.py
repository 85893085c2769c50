"""The serving job's inference shard, driven directly: the same class the Flink operator calls."""

from __future__ import annotations

import orjson

from model.registry import ArtifactError, ModelRegistry
from operators.batching import ListStore
from operators.serving_model import ControlMessage, fixed_model, serving_spec
from operators.serving_shard import InferenceShard
from schemas import DriftEvent, ModelSnapshot, Topics
from settings import ServingSettings


def snapshot(version: int, name: str = "toy") -> ModelSnapshot:
    return ModelSnapshot(name, version, f"file:///r/{name}/v{version}/model.onnx", "0" * 64, {}, None, 1)


def payloads(outgoing, topic):
    return [orjson.loads(o.payload) for o in outgoing if o.topic == topic]


def test_pending_windows_are_scored_by_the_old_model_before_a_swap():
    shard = InferenceShard.for_tests(max_batch=10)
    store = ListStore()
    for device in ("a", "b", "c"):
        assert shard.on_window(store, shard.example_window(device, 10), now_ms=0) == []
    assert shard.due_at(store) == 10  # max_wait_ms after the oldest
    out, accepted = shard.on_control(store, ControlMessage(0, snapshot(2), 0, 7), now_ms=1)
    assert {p["model_version"] for p in payloads(out, Topics().predictions)} == {1}
    assert accepted.version == 2 and shard.model.version == 2 and store.count() == 0
    shard.on_window(store, shard.example_window("a", 11), now_ms=2)
    later = shard.on_timer(store, now_ms=12)
    assert {p["model_version"] for p in payloads(later, Topics().predictions)} == {2}
    assert shard.tally.model_swaps == 1 and shard.tally.predictions == 4


def test_a_refused_announcement_keeps_the_old_model_and_is_reported_once():
    def refuse(snap):
        raise ArtifactError("sha256 mismatch")

    shard = InferenceShard.for_tests()
    shard.load = refuse
    store = ListStore()
    out, accepted = shard.on_control(store, ControlMessage(0, snapshot(5), 0, 3), now_ms=0)
    letters = payloads(out, Topics().dead_letters)
    assert accepted is None and shard.model.version == 1 and len(letters) == 1
    assert "refused toy v5, still serving v1: sha256 mismatch" in letters[0]["reason"]
    out, _ = shard.on_control(store, ControlMessage(1, snapshot(5), 0, 3), now_ms=0)  # shard 1: no second report
    assert out == [] and shard.tally.model_refused == 2


def test_announcements_of_other_models_are_ignored():
    shard = InferenceShard.for_tests()
    out, accepted = shard.on_control(ListStore(), ControlMessage(0, snapshot(9, "other"), 0, 1), now_ms=0)
    assert out == [] and accepted is None and shard.model.version == 1


def test_a_drift_boost_raises_the_budget_until_it_expires():
    shard = InferenceShard.for_tests(max_batch=1, review_budget_per_minute=60)
    store = ListStore()
    event = DriftEvent("toy", "error", 0, 1, 600, 10, 0.5)
    shard.on_control(store, ControlMessage(0, event, 0, 0), now_ms=0)
    assert shard.scorer.router.capacity == 600
    shard.on_control(store, ControlMessage(0, DriftEvent("other", "error", 0, 1, 6000, 10, 0.5), 0, 0), now_ms=0)
    assert shard.scorer.router.capacity == 600  # another model's drift changes nothing here
    shard.on_window(store, shard.example_window("a", 5), now_ms=9_999)
    assert shard.scorer.router.capacity == 600
    shard.on_window(store, shard.example_window("a", 6), now_ms=10_000)
    assert shard.scorer.router.capacity == 60 and shard.boost_until is None


def test_low_confidence_windows_go_to_review_with_the_configured_threshold():
    shard = InferenceShard(ServingSettings(window=4, max_batch=2, confidence_threshold=0.95, audit_rate=0.0),
                           "toy", Topics(review_requests="asks"), fixed_model("toy", 1, (0.9, 0.1)),
                           lambda s: fixed_model("toy", s.version))
    store = ListStore()
    shard.on_window(store, shard.example_window("a", 4), 0)
    out = shard.on_window(store, shard.example_window("b", 4), 0)
    assert len(payloads(out, "asks")) == 2 and shard.tally.review_requests == 2


def test_serving_reads_the_channels_of_the_pinned_version(tmp_path):
    registry = ModelRegistry(str(tmp_path))
    registry.publish("m", b"onnx", b"w", {"channels": ["a", "b"], "window": 4, "classes": ["x"]})
    registry.publish("m", b"onnx", b"w", {"channels": ["a", "b", "c"], "window": 4, "classes": ["x"]})
    assert serving_spec(str(tmp_path), "m").channels == ("a", "b", "c")
    assert serving_spec(str(tmp_path), "m", 1).channels == ("a", "b")


def test_an_announced_model_with_another_window_or_channels_is_refused():
    from model.spec import ModelSpec
    from operators.serving_model import ServingModel

    shard = InferenceShard.for_tests()
    other = {6: ModelSpec(window=8, channels=("x", "y"), classes=("a", "b")),
             7: ModelSpec(window=4, channels=("x", "z"), classes=("a", "b"))}
    shard.load = lambda snap: ServingModel("toy", snap.version, other[snap.version], shard.model.runner)
    for version, why in ((6, "windows of 8 readings, serving cuts 4"), (7, "channels ['x', 'z'] differ")):
        out, accepted = shard.on_control(ListStore(), ControlMessage(0, snapshot(version), 0, 1), now_ms=0)
        assert accepted is None and shard.model.version == 1
        assert why in payloads(out, Topics().dead_letters)[0]["reason"]


def test_an_announcement_must_point_at_the_registrys_own_artifact(tmp_path, trained_registry):
    import shutil

    import pytest

    from operators.serving_model import load_snapshot

    registry = ModelRegistry(trained_registry)
    good = ModelSnapshot.from_dict(registry.announcement("basic-motions", 1))
    copy = tmp_path / "elsewhere.onnx"
    shutil.copyfile(registry.version_dir("basic-motions", 1) / "model.onnx", copy)
    shutil.copyfile(registry.version_dir("basic-motions", 1) / "metadata.json", tmp_path / "metadata.json")
    forged = ModelSnapshot.from_dict({**good.to_dict(), "artifact_uri": copy.as_uri()})  # its own sha256 matches
    assert load_snapshot(forged).version == 1  # without a registry to answer to, the file alone would pass
    with pytest.raises(ArtifactError, match="is not where the registry keeps basic-motions v1"):
        load_snapshot(forged, registry_root=trained_registry)
    assert load_snapshot(good, registry_root=trained_registry).version == 1


def test_a_drift_event_cannot_raise_the_budget_beyond_servings_own_cap():
    shard = InferenceShard.for_tests(review_budget_per_minute=60, drift_budget_per_minute=600, drift_boost_seconds=30)
    hostile = DriftEvent("toy", "error", 0, 1, 10**9, 10**6, 0.5)
    shard.on_control(ListStore(), ControlMessage(0, hostile, 0, 0), now_ms=0)
    assert shard.scorer.router.capacity == 600 and shard.boost_until == 30_000


def test_serving_starts_with_the_newest_version_that_loads(tmp_path, trained_registry):
    import shutil

    from operators.serving_model import load_newest_usable

    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    registry = ModelRegistry(str(root))
    v1 = registry.load("basic-motions", 1)
    registry.publish("basic-motions", v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {}, 1)  # v2
    (registry.version_dir("basic-motions", 2) / "model.onnx").unlink()  # deleted under the registry
    model, passed_over = load_newest_usable(str(root), "basic-motions")
    assert model.version == 1 and len(passed_over) == 1 and passed_over[0].startswith("v2: ")


def test_with_a_verify_key_serving_loads_only_announcements_signed_by_the_publishing_key(tmp_path, trained_registry):
    from control.cli import main
    from model.signing import AnnouncementVerifier, announcement
    from operators.serving_model import load_snapshot

    private, public = tmp_path / "announce.key", tmp_path / "announce.pub"
    assert main(["model", "keygen", "--private", str(private), "--public", str(public)]) == 0
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    main(["model", "keygen", "--private", str(tmp_path / "other.key"), "--public", str(tmp_path / "other.pub")])
    registry, name = ModelRegistry(trained_registry), "basic-motions"
    verifier = AnnouncementVerifier.load(str(public))

    def load(snap):
        return load_snapshot(snap, registry_root=trained_registry, verifier=verifier)

    assert load(announcement(registry, name, 1, str(private))).version == 1
    for snap, reason in ((announcement(registry, name, 1), "unsigned announcement"),
                         (announcement(registry, name, 1, str(tmp_path / "other.key")), "signature does not match")):
        shard = InferenceShard(ServingSettings(window=4), name, Topics(), fixed_model(name, 7), load)
        out, accepted = shard.on_control(ListStore(), ControlMessage(0, ModelSnapshot.decode(snap.encode()), 0, 1), 0)
        assert accepted is None and shard.model.version == 7
        assert reason in payloads(out, Topics().dead_letters)[0]["reason"]


def test_a_shadow_version_is_scored_beside_serving_and_its_disagreements_are_asked():
    import dataclasses

    def load(s: ModelSnapshot):  # the shadow says "b" where the version in service says "a"
        return fixed_model(s.model_name, s.version, (0.2, 0.8) if s.stage == "shadow" else (0.9, 0.1))

    shard = InferenceShard(ServingSettings(window=4, stride=1, max_batch=2, audit_rate=0.0), "toy", Topics(),
                           fixed_model("toy", 1), load)
    store, topics = ListStore(), Topics()

    def two_windows(end):
        return shard.on_window(store, shard.example_window("d1", end), 0) + shard.on_window(
            store, shard.example_window("d2", end), 0)

    assert payloads(two_windows(1), topics.review_requests) == []  # sure and alone: nothing asked
    shadow = dataclasses.replace(snapshot(2), stage="shadow")
    out, accepted = shard.on_control(store, ControlMessage(0, shadow, 0, 1), now_ms=0)
    assert out == [] and accepted is None and shard.shadow_snapshot is shadow and shard.model.version == 1
    out = two_windows(2)
    assert {(p["label"], p["model_version"]) for p in payloads(out, topics.predictions)} == {("a", 1)}
    reviews = payloads(out, topics.review_requests)
    assert [(r["reason"], r["predicted"], r["shadow_predicted"], r["shadow_version"]) for r in reviews] == [
        ("disagreement", "a", "b", 2)] * 2
    shard.on_control(store, ControlMessage(0, dataclasses.replace(snapshot(2), stage="withdrawn"), 0, 2), now_ms=0)
    assert shard.shadow_snapshot is None and payloads(two_windows(3), topics.review_requests) == []
    shard.on_control(store, ControlMessage(0, dataclasses.replace(snapshot(3), stage="shadow"), 0, 3), now_ms=0)
    out, accepted = shard.on_control(store, ControlMessage(0, snapshot(3), 0, 4), now_ms=0)  # promoted
    assert accepted.version == 3 and shard.model.version == 3 and shard.shadow_snapshot is None
    out, _ = shard.on_control(store, ControlMessage(0, dataclasses.replace(snapshot(2), stage="shadow"), 0, 5), 0)
    letters = payloads(out, topics.dead_letters)
    assert len(letters) == 1 and "not newer than the version in service" in letters[0]["reason"]
    assert shard.shadow_snapshot is None


def test_canary_devices_are_served_by_the_shadow_and_say_so_in_their_requests():
    import dataclasses

    def load(s: ModelSnapshot):
        return fixed_model(s.model_name, s.version, (0.2, 0.8) if s.stage == "shadow" else (0.9, 0.1))

    shard = InferenceShard(ServingSettings(window=4, stride=1, max_batch=40, audit_rate=0.0, canary_share=0.5),
                           "toy", Topics(), fixed_model("toy", 1), load)
    shard.on_control(ListStore(), ControlMessage(0, dataclasses.replace(snapshot(2), stage="shadow"), 0, 1), 0)
    store, out = ListStore(), []
    for d in range(40):
        out += shard.on_window(store, shard.example_window(f"dev-{d}", 1), 0)
    predictions, reviews = payloads(out, Topics().predictions), payloads(out, Topics().review_requests)
    canary = {p["device_id"] for p in predictions if p["model_version"] == 2}
    assert canary == {f"dev-{d}" for d in range(40) if shard.scorer.is_canary(f"dev-{d}")} and 10 < len(canary) < 30
    assert all(p["label"] == ("b" if p["device_id"] in canary else "a") for p in predictions)
    for r in reviews:  # every window is a disagreement; each request names the other version's answer
        mine = r["device_id"] in canary
        assert (r["model_version"], r["predicted"], r["shadow_version"], r["shadow_predicted"]) == (
            (2, "b", 1, "a") if mine else (1, "a", 2, "b"))



def test_windows_beyond_a_full_batch_are_scored_in_batches_of_at_most_max_batch_each_once():
    shard = InferenceShard.for_tests(max_batch=4)
    store = ListStore()
    assert shard.on_window(store, shard.example_window("a", 9), now_ms=0) == []  # pending, not yet due
    out = shard.on_windows(store, [shard.example_window("b", end) for end in range(10, 20)], now_ms=1)
    ends = sorted((p["device_id"], p["window_end"]) for p in payloads(out, Topics().predictions))
    assert ends == [("a", 9)] + [("b", end) for end in range(10, 20)]
    assert (shard.tally.batches, shard.tally.last_batch_size, store.count()) == (3, 3, 0)
    store.extend([shard.example_window("c", end) for end in range(20, 29)])  # as a restored store may hold
    flushed = shard.flush(store, now_ms=2)
    assert sorted(p["window_end"] for p in payloads(flushed, Topics().predictions)) == list(range(20, 29))
    assert (shard.tally.batches, shard.tally.last_batch_size, shard.tally.predictions) == (6, 1, 20)
