"""Queues, durable topics, pub/sub and cron through the official Python SDK (PyPI iii-sdk 0.25.0).

Spec: shared/spec/queue.md §5.2 (black-box checks) with Trine's deliberate differences from
docs/queues.md: the handler's real error text in the DLQ (not ``function call failed``), jobs for an
unregistered function wait for it instead of failing, the ``default`` queue always exists, 5-field
cron expressions are accepted, ``iii::queue::status`` exists and receipts address DLQ messages,
messages published to a durable topic before any subscriber are kept for the first one, and a bad
cron expression is refused with a ``triggerregistrationresult`` (the SDK logs it).

One engine for the module, started with a config file declaring every queue used below; each test
uses queues and function ids of its own so that DLQ and status reads are exact.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any, Callable

import pytest
from iii import InitOptions, InvocationError, TriggerAction, register_worker

from conftest import Recorder, Engine, shutdown_client, wait_for, wait_for_function

CONFIG = """
workers:
  - name: iii-queue
    config:
      queue_configs:
        basic: {}
        retry: { max_retries: 3, backoff_ms: 100 }
        dead: { max_retries: 3, backoff_ms: 100 }
        rd: { max_retries: 1, backoff_ms: 50 }
        fifo: { type: fifo, message_group_field: g, concurrency: 2, max_retries: 3, backoff_ms: 100 }
        line: { concurrency: 1 }
        small: { max_payload_bytes: 1000 }
        later: { max_retries: 1, backoff_ms: 50 }
  - name: iii-state
  - name: iii-cron
  - name: iii-pubsub
"""


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def show(v: Any, n: int = 400) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= n else s[:n] + "…"


def is_uuid4(s: Any) -> bool:
    try:
        return isinstance(s, str) and str(uuid.UUID(s)) == s and uuid.UUID(s).version == 4
    except ValueError:
        return False


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class Env:
    """The engine, a worker hosting handlers (``w``) and a producer (``p``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.w = register_worker(engine.worker_url, InitOptions(worker_name=uniq("py-q-handlers-")))
        self.p = register_worker(engine.worker_url, InitOptions(worker_name=uniq("py-q-producer-")))
        self.extra: list[Any] = []

    def close(self) -> None:
        for c in self.extra:
            shutdown_client(c)
        shutdown_client(self.p)
        shutdown_client(self.w)
        self.engine.stop()

    # --- calls through the producer ---

    def call(self, function_id: str, payload: Any) -> Any:
        return self.p.trigger({"function_id": function_id, "payload": payload})

    def enqueue(self, queue: str, function_id: str, payload: Any) -> Any:
        return self.p.trigger({"function_id": function_id, "payload": payload,
                               "action": TriggerAction.Enqueue(queue=queue)})

    def enqueue_ok(self, queue: str, function_id: str, payload: Any) -> str:
        r = self.enqueue(queue, function_id, payload)
        assert isinstance(r, dict) and list(r.keys()) == ["messageReceiptId"], f"receipt shape: {show(r)}"
        assert is_uuid4(r["messageReceiptId"]), f"receipt {r['messageReceiptId']} is a UUID v4"
        return r["messageReceiptId"]

    def fails(self, fn: Callable[[], Any], code: str, message: str | None = None) -> InvocationError:
        try:
            got = fn()
        except InvocationError as err:
            assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
            assert err.message, "error message must be readable"
            assert str(err) == f"{err.code}: {err.message}"
            if message is not None:
                assert err.message == message
            return err
        pytest.fail(f"expected an InvocationError {code}, got {show(got)}")

    def status(self, queue: str, message_id: str | None = None) -> dict:
        payload: dict[str, Any] = {"queue": queue}
        if message_id is not None:
            payload["message_id"] = message_id
        return self.call("iii::queue::status", payload)

    def dlq(self, topic: str) -> list[dict]:
        return self.call("engine::queue::dlq_messages", {"topic": topic})

    def settled(self, queue: str, timeout: float = 5.0) -> dict:
        return wait_for(lambda: (lambda s: s if s["pending"] == 0 else None)(self.status(queue)), timeout,
                        what=f"queue {queue} settled (pending 0)")

    def handler(self, prefix: str, fn: Callable[[Any], Any], client: Any = None) -> str:
        """Registers ``fn`` under a fresh id on ``client`` (default ``w``) and waits until it is live."""
        fid = f"{uniq(prefix)}::run"
        (client or self.w).register_function(fid, fn)
        wait_for_function(self.p, fid)
        return fid

    def triggers(self) -> list[dict]:
        return self.call("engine::triggers::list", {"include_internal": True})["triggers"]

    def ready(self) -> None:
        """A probe registered last on ``w`` proves everything ``w`` sent before is applied."""
        probe = f"{uniq('pyprobe')}::ready"
        self.w.register_function(probe, lambda data: "ready")
        wait_for_function(self.p, probe)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("queue")
    cfg = base / "config.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    eng = Engine(data_dir=base / "data", log_path=base / "engine.log", extra_args=("--config", str(cfg))).start()
    e = Env(eng)
    yield e
    e.close()
    print(eng.log_tail(40))


# ---------------------------------------------------------------------------
# 1. Enqueue
# ---------------------------------------------------------------------------


def test_enqueue_receipt_and_exact_payload(env):
    rec = Recorder()

    def h(data):
        rec.push(data)
        return {"done": True}

    fid = env.handler("pyqbasic", h)
    payload = {"orderId": "o-1", "amount": 42, "nested": {"a": [1, None, "x"], "b": {"c": True}}, "s": "é✓"}
    env.enqueue_ok("basic", fid, payload)
    wait_for(lambda: rec.count == 1, 5.0, what="handler called")
    assert rec.snapshot()[0] == payload, "exactly the enqueued payload, no extra keys"
    env.settled("basic")
    time.sleep(0.3)
    assert rec.count == 1, "ran once"
    s = env.status("basic")
    assert s["queue"] == "basic" and s["dlq_count"] == 0
    assert s["enqueued"] >= 1 and s["delivered"] >= 1, show(s)

    # `default` always exists (docs/queues.md).
    env.enqueue_ok("default", fid, {"via": "default"})
    wait_for(lambda: rec.count == 2, 5.0, what="default-queue job ran")
    assert rec.snapshot()[1] == {"via": "default"}

    # Any JSON value is a valid payload on a standard queue.
    env.enqueue_ok("basic", fid, [1, "two", None])
    wait_for(lambda: rec.count == 3, 5.0, what="array payload ran")
    assert rec.snapshot()[2] == [1, "two", None]
    env.settled("basic")

    assert env.call("engine::queue::topic_stats", {"topic": "basic"}) == {
        "depth": 0, "consumer_count": 10, "dlq_depth": 0, "config": None}


# ---------------------------------------------------------------------------
# 2. Retries
# ---------------------------------------------------------------------------


def test_fails_twice_then_succeeds_with_backoff(env):
    times: list[float] = []
    lock = threading.Lock()

    def h(data):
        with lock:
            times.append(time.monotonic())
            n = len(times)
        if n <= 2:
            raise RuntimeError(f"not yet {n}")
        return {"ok": data["n"]}

    fid = env.handler("pyqflaky", h)
    env.enqueue_ok("retry", fid, {"n": 7})
    wait_for(lambda: len(times) == 3, 6.0, what="three attempts")
    env.settled("retry")
    time.sleep(0.4)
    assert len(times) == 3, "exactly three calls"
    gap1 = (times[1] - times[0]) * 1000
    gap2 = (times[2] - times[1]) * 1000
    assert 95 <= gap1 < 2000, f"first gap {gap1:.0f} ms (backoff 100 ms)"
    assert 195 <= gap2 < 3000, f"second gap {gap2:.0f} ms (backoff 200 ms)"
    assert env.dlq("retry") == []
    assert env.status("retry")["dlq_count"] == 0


# ---------------------------------------------------------------------------
# 3. Dead letters
# ---------------------------------------------------------------------------


def test_always_failing_job_is_dead_with_the_real_error(env):
    tag = uuid.uuid4().hex[:8]
    message = f"card declined {tag}"
    rec = Recorder()

    def h(data):
        rec.push(data)
        raise ValueError(message)

    fid = env.handler("pyqboom", h)
    payload = {"card": "x", "tag": tag}
    receipt = env.enqueue_ok("dead", fid, payload)
    # Wait on the listing, not on status.dlq_count: the counter can be ahead of the stored DLQ
    # record for a moment (reported to the engine owner).
    wait_for(lambda: len(env.dlq("dead")) == 1, 6.0, what="one dead letter")
    time.sleep(0.3)
    assert rec.count == 3, "exactly max_retries (3) calls"
    assert all(c == payload for c in rec.snapshot())

    entries = env.dlq("dead")
    assert len(entries) == 1, show(entries)
    assert env.status("dead")["dlq_count"] == 1
    m = entries[0]
    assert m["payload"] == payload
    # The Python SDK sends a raised exception as {code: invocation_failed, message: str(exc)}.
    assert message in m["error"], f"DLQ error {m['error']!r} must carry {message!r}"
    assert m["error_code"] == "invocation_failed"
    assert m["retries"] == 3
    assert m["message_id"] == receipt, "message_id = the producer receipt"
    assert m["function_id"] == fid
    assert isinstance(m["id"], str) and m["id"] and m["id"] != receipt
    assert 1.6e9 < m["failed_at"] < 1e10, f"failed_at {m['failed_at']} in seconds"
    assert m["size_bytes"] > 0

    st = env.status("dead", receipt)
    assert st["message"]["status"] == "dead", show(st)
    assert st["message"]["message_id"] == receipt
    assert st["message"]["attempts"] == 3
    assert st["message"]["last_error"] == {"code": "invocation_failed", "message": m["error"]}
    assert env.status("dead", m["id"])["message"]["status"] == "dead"
    assert env.status("dead", str(uuid.uuid4()))["message"]["status"] == "not_found"

    topics = [t for t in env.call("engine::queue::dlq_topics", {}) if t["topic"] == "dead"]
    assert len(topics) == 1 and topics[0]["message_count"] == 1, show(topics)


# ---------------------------------------------------------------------------
# 4. Redrive / discard
# ---------------------------------------------------------------------------


def test_redrive_and_discard(env):
    failing = {"on": True}
    rec = Recorder()

    def h(data):
        rec.push({**data, "failing": failing["on"]})
        if failing["on"]:
            raise RuntimeError(f"refused {data['m']}")
        return None

    fid = env.handler("pyqrd", h)
    receipts = {m: env.enqueue_ok("rd", fid, {"m": m}) for m in ("m1", "m2", "m3")}
    wait_for(lambda: len(env.dlq("rd")) == 3, 5.0, what="three dead letters")
    assert rec.count == 3, "max_retries 1: one call each"
    entries = env.dlq("rd")
    job_id = {e["payload"]["m"]: e["id"] for e in entries}
    assert sorted(job_id) == ["m1", "m2", "m3"]

    assert env.call("iii::queue::discard_message", {"queue": "rd", "message_id": job_id["m3"]}) == {
        "queue": "rd", "message_id": job_id["m3"], "redriven": 1}
    unknown = str(uuid.uuid4())
    assert env.call("iii::queue::discard_message", {"queue": "rd", "message_id": unknown})["redriven"] == 0
    assert env.call("iii::queue::redrive_message", {"queue": "rd", "message_id": unknown})["redriven"] == 0
    assert len(env.dlq("rd")) == 2

    failing["on"] = False
    # By the producer's receipt (Trine accepts receipts as message ids).
    assert env.call("iii::queue::redrive_message", {"queue": "rd", "message_id": receipts["m2"]}) == {
        "queue": "rd", "message_id": receipts["m2"], "redriven": 1}
    wait_for(lambda: any(c["m"] == "m2" and not c["failing"] for c in rec.snapshot()), 5.0, what="m2 ran again")

    assert env.call("iii::queue::redrive", {"queue": "rd"}) == {"queue": "rd", "redriven": 1}
    wait_for(lambda: any(c["m"] == "m1" and not c["failing"] for c in rec.snapshot()), 5.0, what="m1 ran again")
    env.settled("rd")
    time.sleep(0.2)
    assert env.dlq("rd") == [], "DLQ empty after the redrive"
    calls = rec.snapshot()
    assert [c for c in calls if c["m"] == "m3"] == [{"m": "m3", "failing": True}], "discarded job never ran again"
    assert len([c for c in calls if not c["failing"]]) == 2
    assert env.status("rd", receipts["m1"])["message"]["status"] == "not_found"
    assert env.call("iii::queue::redrive", {"queue": "rd"}) == {"queue": "rd", "redriven": 0}

    env.fails(lambda: env.call("iii::queue::redrive_message", {"queue": "rd", "message_id": ""}), "message_id_not_set")
    env.fails(lambda: env.call("iii::queue::redrive", {"queue": ""}), "queue_not_set")
    env.fails(lambda: env.call("iii::queue::redrive", {}), "deserialization_error")


# ---------------------------------------------------------------------------
# 5. Ordering
# ---------------------------------------------------------------------------


def test_fifo_per_group_order_under_failure(env):
    lock = threading.Lock()
    ok: list[str] = []
    attempts: list[str] = []
    inflight: dict[str, int] = {}
    peaks = {"group": 0, "all": 0}
    failed_a1 = {"done": False}

    def h(data):
        name = f"{data['g']}{data['n']}"
        with lock:
            attempts.append(name)
            inflight[data["g"]] = inflight.get(data["g"], 0) + 1
            peaks["group"] = max(peaks["group"], inflight[data["g"]])
            peaks["all"] = max(peaks["all"], sum(inflight.values()))
        try:
            time.sleep(0.02)
            with lock:
                if name == "a1" and not failed_a1["done"]:
                    failed_a1["done"] = True
                    raise RuntimeError("transient a1")
                ok.append(name)
        finally:
            with lock:
                inflight[data["g"]] -= 1

    fid = env.handler("pyqfifo", h)
    for g, n in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]:
        env.enqueue_ok("fifo", fid, {"g": g, "n": n})
    wait_for(lambda: len(ok) == 5, 6.0, what="five successful calls")
    env.settled("fifo")
    assert [x for x in ok if x[0] == "a"] == ["a1", "a2", "a3"], f"group a order; successes {ok}"
    assert [x for x in ok if x[0] == "b"] == ["b1", "b2"], f"group b order; successes {ok}"
    assert attempts.count("a1") == 2, f"a1 retried once: {attempts}"
    assert peaks["group"] == 1, "one job per group at a time"
    assert peaks["all"] <= 2, f"at most concurrency (2) groups in flight, saw {peaks['all']}"
    assert env.dlq("fifo") == []


def test_concurrency_one_is_strict_enqueue_order(env):
    seen = Recorder()
    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    def h(data):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.005)
        seen.push(data["i"])
        with lock:
            active["now"] -= 1

    fid = env.handler("pyqline", h)
    for i in range(8):
        env.enqueue_ok("line", fid, {"i": i})
    wait_for(lambda: seen.count == 8, 5.0, what="eight jobs ran")
    assert seen.snapshot() == list(range(8))
    assert active["max"] == 1


# ---------------------------------------------------------------------------
# 6. Cron
# ---------------------------------------------------------------------------


def test_cron_every_second_payload(env):
    rec = Recorder()
    fid = env.handler("pyqcron", lambda data: rec.push((data, time.monotonic())))
    started = time.monotonic()
    trig = env.w.register_trigger({"type": "cron", "function_id": fid, "config": {"expression": "* * * * * *"}})
    listed = wait_for(lambda: next((t for t in env.triggers()
                                    if t["function_id"] == fid and t["trigger_type"] == "cron"), None),
                      3.0, what="cron trigger listed")
    wait_for(lambda: rec.count >= 2, 3.5, what="two cron fires within 3.5 s")
    trig.unregister()
    calls = rec.snapshot()
    assert calls[1][1] - started <= 3.6
    for payload, _ in calls[:2]:
        assert sorted(payload) == ["actual_time", "job_id", "scheduled_time", "trigger"], show(payload)
        assert payload["trigger"] == "cron"
        assert payload["job_id"] == listed["id"], "job_id = trigger id"
        scheduled = parse_time(payload["scheduled_time"])
        actual = parse_time(payload["actual_time"])
        assert scheduled.microsecond == 0, "ticks are on whole seconds"
        assert -0.005 <= (actual - scheduled).total_seconds() < 2.0, show(payload)
    assert parse_time(calls[1][0]["scheduled_time"]) > parse_time(calls[0][0]["scheduled_time"])
    time.sleep(0.3)
    count = rec.count
    time.sleep(1.3)
    assert rec.count == count, "no fires after unregister"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_cron_five_fields_ok_invalid_refused(env):
    five = env.handler("pyqcron5", lambda data: None)
    rec = Recorder()
    bad = env.handler("pyqcronbad", lambda data: rec.push(data))

    # The SDK logs the engine's triggerregistrationresult error on logger "iii".
    capture = _Capture()
    logger = logging.getLogger("iii")
    logger.addHandler(capture)
    try:
        t5 = env.w.register_trigger({"type": "cron", "function_id": five, "config": {"expression": "0 8 * * 1-5"}})
        tb = env.w.register_trigger({"type": "cron", "function_id": bad,
                                     "config": {"expression": "every minute please"}})
        env.ready()
        wait_for(lambda: any(t["function_id"] == five and t["trigger_type"] == "cron" for t in env.triggers()),
                 3.0, what="5-field cron trigger listed")
        failures = wait_for(lambda: [m for m in capture.messages if "Trigger registration failed" in m], 3.0,
                            what="SDK logs the registration failure")
        assert "(cron)" in failures[0] and "every minute please" in failures[0], failures[0]
        assert not any(five in m for m in capture.messages)
        t5.unregister()
        tb.unregister()
    finally:
        logger.removeHandler(capture)
    assert [t for t in env.triggers() if t["function_id"] == bad] == [], "a refused trigger is not listed"
    time.sleep(1.2)
    assert rec.count == 0, "the refused trigger never fired"
    assert env.call(five, {}) is None, "engine still healthy"


# ---------------------------------------------------------------------------
# 7. Bad input
# ---------------------------------------------------------------------------


def test_enqueue_errors_and_connection_survives(env):
    rec = Recorder()
    fid = env.handler("pyqbad", lambda data: rec.push(data))
    env.fails(lambda: env.enqueue("nope", fid, {"a": 1}), "enqueue_error", "Queue 'nope' not found")
    env.fails(lambda: env.enqueue("fifo", fid, {"n": 1}), "enqueue_error",
              "FIFO queue 'fifo' requires field 'g' in data, but it was not found")
    env.fails(lambda: env.enqueue("fifo", fid, {"g": None}), "enqueue_error",
              "FIFO queue 'fifo': field 'g' must not be null")
    env.fails(lambda: env.enqueue("small", fid, {"blob": "x" * 2000}), "payload_too_large")
    env.fails(lambda: env.call("iii::durable::publish", {"topic": "", "data": 1}), "topic_not_set")
    env.fails(lambda: env.call("publish", {"topic": "", "data": 1}), "topic_not_set")
    env.fails(lambda: env.call("engine::queue::topic_stats", {}), "topic_required")

    env.enqueue_ok("small", fid, {"blob": "x" * 100})
    wait_for(lambda: rec.count == 1, 5.0, what="small job ran")
    assert rec.snapshot() == [{"blob": "x" * 100}], "refused jobs never ran"
    assert env.call(fid, {"direct": True}) is None
    assert rec.count == 2


# ---------------------------------------------------------------------------
# 8. Durable topics and pub/sub
# ---------------------------------------------------------------------------


def test_durable_topic_fan_out_and_pubsub(env):
    topic = uniq("pytopic-")
    rec_a, rec_b = Recorder(), Recorder()
    fa = env.handler("pyqsubA", lambda data: rec_a.push(data))
    fb = env.handler("pyqsubB", lambda data: rec_b.push(data))
    env.w.register_trigger({"type": "durable:subscriber", "function_id": fa, "config": {"topic": topic}})
    env.w.register_trigger({"type": "durable:subscriber", "function_id": fb, "config": {"topic": topic}})
    env.ready()
    wait_for(lambda: env.call("engine::queue::topic_stats", {"topic": topic})["consumer_count"] == 2, 3.0,
             what="two subscribers")
    assert env.call("iii::durable::publish", {"topic": topic, "data": {"x": 1}}) is None
    wait_for(lambda: rec_a.count == 1 and rec_b.count == 1, 5.0, what="A and B received the message")
    time.sleep(0.3)
    assert rec_a.snapshot() == [{"x": 1}]
    assert rec_b.snapshot() == [{"x": 1}]
    listed = [t for t in env.call("engine::queue::list_topics", {}) if t["name"] == topic]
    assert len(listed) == 1 and listed[0]["subscriber_count"] == 2, show(listed)

    # Published before any subscriber: kept for the first one (Trine).
    early = uniq("pyearly-")
    assert env.call("iii::durable::publish", {"topic": early, "data": {"seq": 1}}) is None
    assert env.call("iii::durable::publish", {"topic": early, "data": {"seq": 2}}) is None
    rec_e = Recorder()
    fe = env.handler("pyqsubE", lambda data: rec_e.push(data))
    env.w.register_trigger({"type": "durable:subscriber", "function_id": fe,
                            "config": {"topic": early, "queue_config": {"type": "fifo"}}})
    wait_for(lambda: rec_e.count == 2, 5.0, what="parked messages delivered to the first subscriber")
    assert rec_e.snapshot() == [{"seq": 1}, {"seq": 2}]

    # Non-durable pub/sub.
    ptopic = uniq("pyp-")
    rec_p = Recorder()
    fp = env.handler("pyqpub", lambda data: rec_p.push(data))
    env.w.register_trigger({"type": "subscribe", "function_id": fp, "config": {"topic": ptopic}})
    env.ready()
    assert env.call("publish", {"topic": ptopic, "data": "hi"}) is None
    wait_for(lambda: rec_p.count == 1, 3.0, what='subscriber received "hi"')
    time.sleep(0.2)
    assert rec_p.snapshot() == ["hi"]


def test_durable_subscriber_condition(env):
    topic = uniq("pycond-")
    rec, conds = Recorder(), Recorder()
    fid = env.handler("pyqcondh", lambda data: rec.push(data))

    def cond(data):
        conds.push(data)
        return data.get("pass") is True

    cid = env.handler("pyqcond", cond)
    env.w.register_trigger({"type": "durable:subscriber", "function_id": fid,
                            "config": {"topic": topic, "condition_function_id": cid}})
    env.ready()
    env.call("iii::durable::publish", {"topic": topic, "data": {"pass": False, "n": 1}})
    env.call("iii::durable::publish", {"topic": topic, "data": {"pass": True, "n": 2}})
    wait_for(lambda: rec.count == 1 and conds.count == 2, 5.0, what="condition ran twice, handler once")
    time.sleep(0.2)
    assert rec.snapshot() == [{"pass": True, "n": 2}]
    stats = env.call("engine::queue::topic_stats", {"topic": topic})
    assert stats["dlq_depth"] == 0 and stats["depth"] == 0, show(stats)


# ---------------------------------------------------------------------------
# 9. Unregistered target
# ---------------------------------------------------------------------------


def test_job_waits_for_an_unregistered_function(env):
    fid = f"{uniq('pyqlater')}::run"
    receipt = env.enqueue_ok("later", fid, {"k": 1})
    time.sleep(0.5)
    assert env.dlq("later") == [], "max_retries 1, yet nothing dead-lettered"
    assert env.status("later")["waiting_for_handler"] == 1
    assert env.status("later", receipt)["message"]["status"] == "pending"

    late = register_worker(env.engine.worker_url, InitOptions(worker_name=uniq("py-q-late-")))
    env.extra.append(late)
    rec = Recorder()
    late.register_function(fid, lambda data: rec.push(data))
    wait_for(lambda: rec.count == 1, 5.0, what="job ran once the function was registered")
    env.settled("later")
    time.sleep(0.3)
    assert rec.snapshot() == [{"k": 1}], "ran exactly once"
    assert env.dlq("later") == []
