"""The labeling page in a real headless Chromium, against the real app and a real broker."""

import shutil
import time
from pathlib import Path

import orjson
import pytest

from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import produce, read_until
from schemas import Label, ReviewRequest, Topics

pytestmark = pytest.mark.e2e
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e .[browser-test] for browser tests")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (scripts/bootstrap.sh installs it as root)", allow_module_level=True)

TOPICS = Topics()
TOKENS: dict[str, str] = {}  # labeler -> their own token, made by the stack fixture
LABELERS: list[str] = []  # the stack fixture's labelers file
CLASSES = ["badminton", "running", "standing", "walking"]
EVIL = '<img src=x onerror="window.__pwned=1">'
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def review(i: int, device: str = "device-007") -> ReviewRequest:
    from model.datasets import load_basic_motions

    values = load_basic_motions("test").series[i, 20:52].round(4).tolist()  # a real smartwatch window
    return ReviewRequest(f"{device}:{1_700_000_000_000 + i}", device, 1_700_000_000_000 + i - 3100,
                         1_700_000_000_000 + i, ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"], values,
                         "running", 0.41, {"badminton": 0.2, "running": 0.41, "standing": 0.1, "walking": 0.29},
                         1, "low_confidence", int(time.time() * 1000))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from labeling.credentials import Credentials, add_labeler
    from labeling.server import LabelingServer

    logs = tmp_path_factory.mktemp("labeling")
    labelers = logs / "labelers.toml"
    LABELERS.append(str(labelers))
    TOKENS.update({name: add_labeler(str(labelers), name) for name in ("alice", "bob", "carol", "dave")})
    with EmbeddedBroker(log_path=logs / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        server = LabelingServer(broker.bootstrap, TOPICS, Credentials.load(str(labelers)), CLASSES,
                                port=free_port(), lease_s=60).start()
        try:
            yield broker, server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def open_as(browser, server, labeler: str):
    """A browser of its own for ``labeler``, signed in with their own token."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    response = page.goto(f"{server.url}/?token={TOKENS[labeler]}")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    return context, page


def wait_until(page, expression: str, timeout_s: float = 20.0) -> None:
    """Poll a JavaScript expression until it is true. Playwright's ``wait_for_function`` evaluates a
    string predicate with ``eval`` inside the page when it has to poll, which the page's CSP (no
    'unsafe-eval') rightly refuses; ``evaluate`` goes through the debugger protocol instead."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
        time.sleep(0.1)


def wait_labels(bootstrap: str, n: int) -> list[Label]:
    records = read_until(bootstrap, [TOPICS.labels], lambda rs: len(rs) >= n, timeout_s=20)
    return [Label.decode(r.value) for r in records]


def test_labelers_answer_in_the_browser(stack, browser):
    broker, server = stack
    requests = [review(1), review(2), review(3)]
    produce(broker.bootstrap, TOPICS.review_requests, [(r.review_id.encode(), r.encode()) for r in requests])

    alice, page = open_as(browser, server, "alice")
    page.wait_for_selector("#review:not(.hidden)", timeout=20_000)
    wait_until(page, "document.getElementById('waiting').textContent === '3'")
    first = page.text_content("#review-id")
    assert first in {r.review_id for r in requests}
    assert page.locator("#chart polyline").count() == 6
    assert page.locator("#buttons button.cls").count() == len(CLASSES)
    assert page.text_content("#who") == "alice"  # the name comes from her token, shown, not typed
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labeling.png"))

    # a second labeler never gets the request alice holds
    bob, bob_page = open_as(browser, server, "bob")
    bob_page.wait_for_selector("#review:not(.hidden)", timeout=20_000)
    bobs = bob_page.text_content("#review-id")
    assert bobs != first
    # bob's page cannot answer as alice, nor answer alice's request
    forged = bob_page.request.post(f"{server.url}/api/answer", data={"review_id": first, "label": "running",
                                                                     "labeler": "alice"})
    assert forged.status == 403
    stolen = bob_page.request.post(f"{server.url}/api/answer", data={"review_id": first, "label": "running"})
    assert stolen.status == 409

    # clicking a class writes the answer to the labels topic
    page.click("#buttons button[data-label='walking']")
    labels = wait_labels(broker.bootstrap, 1)
    assert (labels[0].review_id, labels[0].label, labels[0].labeler, labels[0].status) == (first, "walking", "alice",
                                                                                           "answered")
    # the next request appears without a reload; a number key answers it
    wait_until(page, f"document.getElementById('review-id').textContent !== {orjson.dumps(first).decode()}"
                     " || !document.getElementById('empty').classList.contains('hidden')")
    second = page.text_content("#review-id")
    assert second not in (first, bobs)
    page.keyboard.press("2")
    labels = wait_labels(broker.bootstrap, 2)
    assert (labels[1].review_id, labels[1].label, labels[1].labeler) == (second, CLASSES[1], "alice")
    page.wait_for_selector("#empty:not(.hidden)", timeout=20_000)  # bob still holds the last one

    status = page.request.get(f"{server.url}/api/status").json()
    assert status["answers_per_labeler"] == {"alice": 2} and status["waiting"] == 1
    alice.close()
    bob.close()


def test_malicious_text_is_shown_as_text(stack, browser):
    broker, server = stack
    evil = review(4, device=EVIL)
    produce(broker.bootstrap, TOPICS.review_requests, [(b"evil", evil.encode())])
    carol, page = open_as(browser, server, "carol")  # bob's lease on his request is still live
    page.wait_for_selector("#review:not(.hidden)", timeout=20_000)
    assert page.text_content("#review-id") == evil.review_id
    assert page.text_content("#device") == EVIL
    assert page.locator("#device img").count() == 0 and page.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    carol.close()


def test_wrong_token_is_refused(stack, browser):
    _, server = stack
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{server.url}/?token=not-the-token")
    assert response.status == 401 and "Access refused" in page.text_content("h1")
    assert page.goto(f"{server.url}/").status == 401
    api = page.request.get(f"{server.url}/api/next", headers={"Authorization": "Bearer nope"})
    assert api.status == 401 and "token" in api.json()["error"]
    context.close()


def test_behind_a_sign_on_proxy_the_page_is_the_proxied_user(stack, browser):
    """``labeling.user_header``: the browser comes through the proxy (loopback here), which names the
    user; no token anywhere. The same page without the header is refused."""
    from labeling.credentials import Credentials
    from labeling.server import LabelingServer

    broker, _ = stack
    server = LabelingServer(broker.bootstrap, TOPICS, Credentials({}, "", behind_proxy=True), CLASSES,
                            port=free_port(), group_id="labeling-proxied", user_header="X-Forwarded-User").start()
    try:
        context = browser.new_context(extra_http_headers={"X-Forwarded-User": "dana"})
        page = context.new_page()
        assert page.goto(f"{server.url}/").status == 200
        wait_until(page, "document.getElementById('who').textContent === 'dana'")
        context.close()
        plain = browser.new_context()
        assert plain.new_page().goto(f"{server.url}/").status == 401
        plain.close()
    finally:
        server.stop()


def test_bad_requests_and_labels_go_to_dead_letters(stack):
    broker, server = stack
    produce(broker.bootstrap, TOPICS.review_requests, [(b"x", b"{broken"), (b"y", orjson.dumps({"review_id": "y"}))])
    records = read_until(broker.bootstrap, [TOPICS.dead_letters], lambda rs: len(rs) >= 2, timeout_s=20)
    reasons = [orjson.loads(r.value)["reason"] for r in records]
    assert any("malformed JSON" in r for r in reasons) and any("missing required field" in r for r in reasons)
    assert all(orjson.loads(r.value)["source_topic"] == TOPICS.review_requests for r in records)


def test_an_anomaly_question_is_answered_normal_or_abnormal(stack, browser):
    """A request asking about an anomaly shows its score, the window over each channel's typical range and
    the verdict buttons; a class picked first goes with the verdict. A model that does not classify asks
    with no prediction at all, and a key gives the verdict."""
    from labeling.credentials import Credentials
    from labeling.server import LabelingServer

    broker, _ = stack
    topics = Topics(review_requests="anomaly-reviews", labels="anomaly-labels")
    ensure_topics(broker.bootstrap, topics)
    flagged = review(5, device="device-101")
    flagged.reason, flagged.anomaly = "anomaly", 4.25
    flagged.typical_range = [[-3.0, 3.0]] * 6
    scored_only = review(6, device="device-102")
    scored_only.predicted = scored_only.confidence = scored_only.probabilities = None
    scored_only.reason, scored_only.anomaly = "anomaly", 6.5
    produce(broker.bootstrap, topics.review_requests,
            [(r.review_id.encode(), r.encode()) for r in (flagged, scored_only)])
    credentials = Credentials.load(LABELERS[0])
    server = LabelingServer(broker.bootstrap, topics, credentials, CLASSES, port=free_port(), lease_s=60,
                            group_id="labeling-anomalies").start()
    try:
        context, page = open_as(browser, server, "dave")
        page.wait_for_selector("#review:not(.hidden)", timeout=20_000)
        answered = []
        for n in (1, 2):  # the two requests come from two partitions, in either order
            if n == 2:
                wait_until(page, "document.getElementById('review-id').textContent !== "
                                 + orjson.dumps(answered[0]).decode())
            shown = page.text_content("#review-id")
            answered.append(shown)
            if shown == flagged.review_id:
                assert page.text_content("#anomaly") == "4.25" and page.text_content("#predicted") == "running"
                assert page.locator("#verdicts button").count() == 2
                assert page.locator("#chart rect[data-typical]").count() == 6
                page.click("#buttons button[data-label='standing']")  # picks the class; nothing is sent yet
                page.click("#verdicts button[data-verdict='normal']")
            else:
                assert shown == scored_only.review_id and page.text_content("#predicted") == "–"
                page.keyboard.press("a")
            read_until(broker.bootstrap, [topics.labels], lambda rs, n=n: len(rs) >= n, timeout_s=20)
        labels = {x.review_id: x for x in (Label.decode(r.value) for r in
                                           read_until(broker.bootstrap, [topics.labels], lambda rs: len(rs) >= 2,
                                                      timeout_s=20))}
        assert (labels[flagged.review_id].label, labels[flagged.review_id].verdict) == ("standing", "normal")
        assert (labels[scored_only.review_id].label, labels[scored_only.review_id].verdict) == ("", "abnormal")
        context.close()
    finally:
        server.stop()
