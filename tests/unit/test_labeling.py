import pytest
from starlette.testclient import TestClient

from labeling.app import create_app
from operators.review_queue import ReviewError, ReviewQueue
from schemas import Label, ReviewRequest

CLASSES = ["badminton", "running", "standing", "walking"]


def request(i, predicted="running", version=1):
    return ReviewRequest(f"dev:{i}", "dev", i, i + 31, ["x", "y"], [[0.0, 1.0]] * 4, predicted, 0.4,
                         {c: 0.25 for c in CLASSES}, version, "low_confidence", 0)


def filled(n=3, **kw):
    q = ReviewQueue(CLASSES, lease_s=30, **kw)
    for i in range(n):
        q.add(request(i), partition=0, offset=i)
    return q


def test_one_labeler_at_a_time_and_lease_expiry():
    q = filled(2)
    assert q.lease("a", 0).review_id == "dev:0"
    assert q.lease("b", 0).review_id == "dev:1"
    assert q.lease("c", 0) is None
    assert q.lease("a", 10).review_id == "dev:0"  # asking again keeps (and renews) your own lease
    assert q.lease("c", 41).review_id == "dev:0"  # a's lease (renewed at 10) ran out at 40
    with pytest.raises(ReviewError, match="not leased"):
        q.answer("dev:0", "a", "running", now=42)


def test_answers_are_validated():
    q = filled(1)
    q.lease("a", 0)
    with pytest.raises(ReviewError, match="unknown class") as err:
        q.answer("dev:0", "a", "flying", now=1)
    assert err.value.status == 400
    with pytest.raises(ReviewError, match="unknown review id") as err:
        q.answer("nope", "a", "running", now=1)
    assert err.value.status == 404
    label = q.answer("dev:0", "a", "walking", now=1)
    q.record(label)
    with pytest.raises(ReviewError, match="already answered"):
        q.answer("dev:0", "a", "walking", now=2)
    assert q.status()["answers_per_labeler"] == {"a": 1} and q.recent_accuracy() == 0.0


def test_skip_and_unsure_pass_the_request_on():
    q = filled(1)
    q.lease("a", 0)
    q.record(q.answer("dev:0", "a", "", now=1, status="skipped"))
    assert q.lease("a", 2) is None and q.lease("b", 2).review_id == "dev:0"
    q.record(q.answer("dev:0", "b", "", now=3, status="unsure"))
    assert q.waiting() == 1 and q.lease("c", 4).review_id == "dev:0"


def test_double_labeling_needs_two_distinct_labelers():
    q = filled(1, answers_needed=2)
    assert q.lease("a", 0) and q.lease("b", 0)
    q.record(q.answer("dev:0", "a", "running", now=1))
    assert q.waiting() == 1 and q.lease("a", 2) is None
    q.record(q.answer("dev:0", "b", "running", now=2))
    assert q.waiting() == 0 and q.recent_accuracy() == 1.0


def test_answers_seen_on_the_topic_first_are_kept():
    q = ReviewQueue(CLASSES)
    q.record(Label("dev:0", "running", "elsewhere", 1))
    q.add(request(0), 0, 0)
    assert q.waiting() == 0


def test_resume_offsets_stop_at_first_unanswered():
    q = filled(3)
    for i in (0, 2):
        q.lease("a", 0)
        q.record(Label(f"dev:{i}", "running", "a", 1))
    assert q.resume_offsets() == {0: 1}
    q.record(Label("dev:1", "running", "b", 1))
    assert q.resume_offsets() == {0: 3}


@pytest.fixture
def client():
    q = filled(2)
    published = []

    def publish(label):
        published.append(label)
        q.record(label)

    app = create_app(q, publish, token="s3cret", clock=lambda: 100.0)
    return TestClient(app), published


def test_api_requires_the_token(client):
    c, _ = client
    assert c.get("/api/next?labeler=a").status_code == 401
    assert c.get("/api/next?labeler=a", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/?token=wrong").status_code == 401
    ok = c.get("/?token=s3cret", follow_redirects=False)
    assert ok.status_code == 303 and "sl_token" in ok.headers["set-cookie"]
    assert c.get("/api/status").status_code == 200  # the cookie now authorises


def test_api_next_and_answer(client):
    c, published = client
    h = {"Authorization": "Bearer s3cret"}
    got = c.get("/api/next?labeler=alice", headers=h).json()
    assert got["request"]["review_id"] == "dev:0" and got["waiting"] == 2 and got["classes"] == CLASSES
    bad = c.post("/api/answer", headers=h, json={"review_id": "dev:0", "label": "flying", "labeler": "alice"})
    assert bad.status_code == 400 and "unknown class" in bad.json()["error"]
    unknown = c.post("/api/answer", headers=h, json={"review_id": "zzz", "label": "running", "labeler": "alice"})
    assert unknown.status_code == 404
    ok = c.post("/api/answer", headers=h, json={"review_id": "dev:0", "label": "walking", "labeler": "alice"})
    assert ok.status_code == 200 and published[-1].label == "walking" and published[-1].labeler == "alice"
    assert c.get("/api/status", headers=h).json()["answers_per_labeler"] == {"alice": 1}
    assert c.post("/api/answer", headers=h, content=b"nope").status_code == 400
    assert c.get("/api/next?labeler=%0a", headers=h).status_code == 400


def test_failed_publish_keeps_the_request(client):
    q = filled(1)

    def broken(label):
        raise RuntimeError("broker down")

    c = TestClient(create_app(q, broken, token="t", clock=lambda: 1.0))
    h = {"Authorization": "Bearer t"}
    c.get("/api/next?labeler=a", headers=h)
    r = c.post("/api/answer", headers=h, json={"review_id": "dev:0", "label": "running", "labeler": "a"})
    assert r.status_code == 503 and q.waiting() == 1


def test_status_shows_the_pipeline_metrics():
    from control.metrics import parse_prometheus, summarize

    exposition = ('flink_taskmanager_job_task_operator_predictions{job_name="sensorloop_serving",subtask_index="0",} 40.0\n'
                  'flink_taskmanager_job_task_operator_predictions{job_name="sensorloop_serving",subtask_index="1",} 2.0\n'
                  'flink_taskmanager_job_task_operator_model_version{job_name="sensorloop_serving",subtask_index="1",} 3.0\n')
    app = create_app(filled(), lambda label: None, "s3cret",
                     pipeline_metrics=lambda: summarize(parse_prometheus(exposition)))
    status = TestClient(app).get("/api/status", headers={"Authorization": "Bearer s3cret"}).json()
    assert status["pipeline"] == {"sensorloop-serving": {"predictions": 42.0, "model_version": 3.0}}

    def unreachable():
        raise OSError("connection refused")

    app = create_app(filled(), lambda label: None, "s3cret", pipeline_metrics=unreachable)
    status = TestClient(app).get("/api/status", headers={"Authorization": "Bearer s3cret"}).json()
    assert status["pipeline_error"] == "connection refused" and status["waiting"] == 3


def test_simulated_labelers_remember_a_bounded_number_of_unreviewed_windows():
    from labeling.simulated import SimulatedLabelers

    labelers = SimulatedLabelers(["a", "b"], delay_ms=0, memory=100)
    for i in range(1_000):  # most windows are never reviewed: their truths must not pile up
        labelers.on_prediction({"device_id": "d", "window_end": i, "truth": "a"}, now_ms=i)
        labelers.on_request({"review_id": f"other:{i}"}, now_ms=i)  # requests whose prediction never comes
    assert len(labelers.truth) <= 100 and len(labelers.waiting) <= 100
    labelers.on_request({"review_id": "d:999"}, now_ms=1_000)  # a recent one is still answered
    assert [label.label for label in labelers.due(1_000)] == ["a"]
