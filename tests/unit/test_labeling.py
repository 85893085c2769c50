import pytest
from starlette.testclient import TestClient

from labeling.app import create_app
from labeling.credentials import CredentialError, Credentials, add_labeler, digest
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


ALICE, BOB, SHARED = "alice-token-0123456789", "bob-token-0123456789ab", "shared-token-0123456789"


def creds():
    return Credentials({"alice": digest(ALICE), "bob": digest(BOB)}, shared_token=SHARED, shared_labeler="demo")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client():
    q = filled(2)
    published = []

    def publish(label):
        published.append(label)
        q.record(label)

    app = create_app(q, publish, creds(), clock=lambda: 100.0)
    return TestClient(app), published


def test_api_requires_a_token(client):
    c, _ = client
    assert c.get("/api/next").status_code == 401
    assert c.get("/api/next", headers=bearer("wrong-wrong-wrong-wrong")).status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/?token=wrong").status_code == 401
    ok = c.get(f"/?token={ALICE}", follow_redirects=False)
    assert ok.status_code == 303 and "sl_token" in ok.headers["set-cookie"]
    assert "secure" not in ok.headers["set-cookie"].lower()  # plain http here
    assert c.get("/api/whoami").json() == {"labeler": "alice"}  # the cookie now authorises
    behind_tls = c.get(f"/?token={ALICE}", headers={"X-Forwarded-Proto": "https"}, follow_redirects=False)
    assert "secure" in behind_tls.headers["set-cookie"].lower()


def test_the_labeler_is_who_the_token_says(client):
    c, published = client
    got = c.get("/api/next", headers=bearer(ALICE)).json()
    assert got["request"]["review_id"] == "dev:0" and got["labeler"] == "alice" and got["classes"] == CLASSES
    assert c.get("/api/next?labeler=carol", headers=bearer(ALICE)).status_code == 403  # a claimed name
    stolen = c.post("/api/answer", headers=bearer(BOB), json={"review_id": "dev:0", "label": "walking"})
    assert stolen.status_code == 409  # bob cannot answer alice's lease
    forged = c.post("/api/answer", headers=bearer(BOB), json={"review_id": "dev:0", "label": "walking",
                                                               "labeler": "alice"})
    assert forged.status_code == 403 and "not who your token says" in forged.json()["error"]
    bad = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": "flying"})
    assert bad.status_code == 400 and "unknown class" in bad.json()["error"]
    unknown = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "zzz", "label": "running"})
    assert unknown.status_code == 404
    ok = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": "walking"})
    assert ok.status_code == 200 and published[-1].label == "walking" and published[-1].labeler == "alice"
    assert c.get("/api/status", headers=bearer(BOB)).json()["answers_per_labeler"] == {"alice": 1}
    assert c.post("/api/answer", headers=bearer(ALICE), content=b"nope").status_code == 400
    assert c.get("/api/whoami", headers=bearer(SHARED)).json() == {"labeler": "demo"}


def test_one_open_lease_per_labeler(client):
    c, _ = client
    first = c.get("/api/next", headers=bearer(ALICE)).json()["request"]["review_id"]
    again = [c.get("/api/next", headers=bearer(ALICE)).json()["request"]["review_id"] for _ in range(5)]
    assert again == [first] * 5  # asking again renews the same lease, it never takes a second request
    assert c.get("/api/next", headers=bearer(BOB)).json()["request"]["review_id"] != first


def test_wrong_tokens_are_slowed_down_per_client():
    c = TestClient(create_app(filled(1), lambda label: None, creds(), failures_per_minute=5))
    codes = [c.get("/api/next", headers=bearer(f"guess-{i:020d}")).status_code for i in range(8)]
    assert codes == [401] * 5 + [429] * 3
    assert c.get("/api/next", headers=bearer(ALICE)).status_code == 429  # even a right one, for a minute


def test_bodies_are_size_limited_and_every_response_carries_security_headers(client):
    c, _ = client
    c.get("/api/next", headers=bearer(ALICE))
    huge = c.post("/api/answer", headers=bearer(ALICE), content=b'{"review_id": "' + b"x" * 70_000 + b'"}')
    assert huge.status_code == 413
    for response in (huge, c.get("/"), c.get("/app.js"), c.get("/api/status", headers=bearer(ALICE))):
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_tokens_must_be_long_and_files_hold_only_digests(tmp_path):
    with pytest.raises(CredentialError, match="at least 16"):
        Credentials({}, shared_token="change-me")
    with pytest.raises(CredentialError, match="no labeler can sign in"):
        Credentials({})
    path = tmp_path / "labelers.toml"
    token = add_labeler(str(path), "carol")
    assert len(token) >= 16 and token not in path.read_text() and "sha256:" in path.read_text()
    assert Credentials.load(str(path)).labeler_of(token) == "carol"
    newer = add_labeler(str(path), "carol")  # a new token replaces the old one
    loaded = Credentials.load(str(path))
    assert loaded.labeler_of(newer) == "carol" and loaded.labeler_of(token) is None
    with pytest.raises(CredentialError, match="must be letters"):
        add_labeler(str(path), "eve</script>")


def test_the_queue_keeps_a_bounded_number_of_requests_and_early_answers():
    q = ReviewQueue(CLASSES, lease_s=30, capacity=5)
    for i in range(3):
        q.add(request(i), 0, i)
    q.record(q.answer("dev:0", "a", "running", now=0.0) if q.lease("a", 0.0) else None)
    for i in range(3, 9):
        q.add(request(i), 0, i)
    assert len(q.entries) == 5 and "dev:0" not in q.entries  # the answered one went first
    for i in range(100, 120):
        q.record(Label(f"never:{i}", "running", "x", 0))  # answers for requests that never come
    assert len(q._early) <= 5


def test_failed_publish_keeps_the_request():
    q = filled(1)

    def broken(label):
        raise RuntimeError("broker down")

    c = TestClient(create_app(q, broken, creds(), clock=lambda: 1.0))
    c.get("/api/next", headers=bearer(ALICE))
    r = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": "running"})
    assert r.status_code == 503 and q.waiting() == 1


def test_status_shows_the_pipeline_metrics():
    from control.metrics import parse_prometheus, summarize

    exposition = ('flink_taskmanager_job_task_operator_predictions{job_name="sensorloop_serving",subtask_index="0",} 40.0\n'
                  'flink_taskmanager_job_task_operator_predictions{job_name="sensorloop_serving",subtask_index="1",} 2.0\n'
                  'flink_taskmanager_job_task_operator_model_version{job_name="sensorloop_serving",subtask_index="1",} 3.0\n')
    app = create_app(filled(), lambda label: None, creds(),
                     pipeline_metrics=lambda: summarize(parse_prometheus(exposition)))
    status = TestClient(app).get("/api/status", headers=bearer(ALICE)).json()
    assert status["pipeline"] == {"sensorloop-serving": {"predictions": 42.0, "model_version": 3.0}}

    def unreachable():
        raise OSError("connection refused")

    app = create_app(filled(), lambda label: None, creds(), pipeline_metrics=unreachable)
    status = TestClient(app).get("/api/status", headers=bearer(ALICE)).json()
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


def test_behind_a_sign_on_proxy_the_user_header_names_the_labeler_only_from_the_proxy():
    q = filled(2)
    proxied = TestClient(create_app(q, q.record, creds(), user_header="X-Forwarded-User",
                                    trusted_proxies=("testclient",), failures_per_minute=3))
    got = proxied.get("/api/next", headers={"X-Forwarded-User": "dana"}).json()
    assert got["labeler"] == "dana" and got["request"]["review_id"] == "dev:0"
    forged = proxied.post("/api/answer", headers={"X-Forwarded-User": "dana"},
                          json={"review_id": "dev:0", "label": "walking", "labeler": "alice"})
    assert forged.status_code == 403  # the body cannot name someone else
    assert proxied.get("/api/whoami", headers={"X-Forwarded-User": "x y<script>"}).status_code == 401
    assert proxied.get("/api/whoami", headers=bearer(ALICE)).json() == {"labeler": "alice"}  # tokens still work
    # the same header from an address that is not the proxy is a forgery: refused, and counted
    direct = TestClient(create_app(filled(2), lambda label: None, creds(), user_header="X-Forwarded-User",
                                   trusted_proxies=("10.0.0.5",), failures_per_minute=3))
    refused = direct.get("/api/next", headers={"X-Forwarded-User": "alice"})
    assert refused.status_code == 401 and "trusted proxy" in refused.json()["error"]
    for _ in range(3):
        direct.get("/api/next", headers={"X-Forwarded-User": "alice"})
    assert direct.get("/api/whoami", headers=bearer(ALICE)).status_code == 429
    # without the setting the header means nothing
    plain = TestClient(create_app(filled(2), lambda label: None, creds()))
    assert plain.get("/api/next", headers={"X-Forwarded-User": "alice"}).status_code == 401


def test_only_a_configured_proxy_lets_the_page_start_without_tokens():
    with pytest.raises(CredentialError, match="labeling.user_header"):
        Credentials({}, "")
    assert Credentials({}, "", behind_proxy=True).labeler_of("anything-at-all-long") is None


def test_only_class_creators_may_answer_with_a_new_class():
    q = filled(3, creators={"alice"}, max_classes=5)
    published = []

    def publish(label):
        published.append(label)
        q.record(label)

    c = TestClient(create_app(q, publish, creds(), clock=lambda: 100.0))
    assert c.get("/api/next", headers=bearer(ALICE)).json()["may_name_classes"] is True
    assert c.get("/api/next", headers=bearer(BOB)).json()["may_name_classes"] is False
    bob_id = c.get("/api/next", headers=bearer(BOB)).json()["request"]["review_id"]
    refused = c.post("/api/answer", headers=bearer(BOB), json={"review_id": bob_id, "label": "cycling",
                                                                "new_class": True})
    assert refused.status_code == 403 and "may not name new classes" in refused.json()["error"]
    for name in (" cycling", "x" * 65, "cyc\u0007ling"):
        bad = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": name,
                                                                  "new_class": True})
        assert bad.status_code == 400 and "new class name" in bad.json()["error"], name
    assert c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": "cycling",
                                                               "new_class": "yes"}).status_code == 400
    ok = c.post("/api/answer", headers=bearer(ALICE), json={"review_id": "dev:0", "label": "cycling",
                                                             "new_class": True})
    assert ok.status_code == 200 and published[-1].new_class is True and published[-1].label == "cycling"
    decoded = Label.decode(published[-1].encode(), classes=CLASSES)  # the bridge reads it back from the topic
    assert decoded.new_class and decoded.label == "cycling"
    full = ReviewQueue(CLASSES, creators={"alice"}, max_classes=4)
    full.add(request(9), 0, 0)
    full.lease("alice", 0)
    with pytest.raises(ReviewError, match="most allowed"):
        full.answer("dev:9", "alice", "cycling", 1, new_class=True)


def test_a_class_the_serving_version_learned_is_offered_to_everyone():
    q = filled(0)
    newer = ReviewRequest("dev:7", "dev", 7, 38, ["x", "y"], [[0.0, 1.0]] * 4, "cycling", 0.4,
                          {**{c: 0.2 for c in CLASSES}, "cycling": 0.2}, 2, "low_confidence", 0)
    q.add(newer, 0, 0)
    assert q.classes_for(newer) == [*CLASSES, "cycling"] and "cycling" in q.all_classes
    q.lease("bob", 0)
    assert q.answer("dev:7", "bob", "cycling", 1).new_class is None  # known now: nothing new about it
