"""Function calls between Python 0.25 workers through the engine.

Spec: protocol.md §2.3–§2.4, §3.1 (sync calls), §3.2 (void), §3.3 (enqueue
without a queue → enqueue_error), §3.5 (timeouts), §3.6 (error codes), §3.7
(executing worker disconnects → invocation_stopped), §8.2 (ownership),
§11 checks 6–10, 12–17.
"""

from __future__ import annotations

import threading
import time

import pytest
from iii import InvocationError, TriggerAction

from conftest import shutdown_client, wait_for, wait_for_function


def call(client, function_id, payload=None, **extra):
    return client.trigger({"function_id": function_id, "payload": payload, **extra})


def test_calls_both_ways_between_two_workers(worker):
    a = worker("py-caller-a")
    b = worker("py-caller-b")

    a.register_function("pya::double", lambda data: {"value": data["value"] * 2})

    def greet(data):
        # A call made from inside a handler, back to the other worker.
        doubled = b.trigger({"function_id": "pya::double", "payload": {"value": data["n"]}})
        return {"greeting": f"hello {data['name']}", "doubled": doubled["value"]}

    b.register_function("pyb::greet", greet)
    wait_for_function(a, "pya::double")
    wait_for_function(a, "pyb::greet")

    assert call(b, "pya::double", {"value": 21}) == {"value": 42}
    assert call(a, "pyb::greet", {"name": "Ada", "n": 5}) == {"greeting": "hello Ada", "doubled": 10}


def test_payload_arrives_intact_and_metadata_is_delivered(worker):
    a = worker("py-meta-a")
    b = worker("py-meta-b")
    received: list[tuple] = []

    def handler(data, metadata=None):
        received.append((data, metadata))
        return {"data": data, "metadata": metadata}

    a.register_function("pymeta::echo", handler)
    wait_for_function(b, "pymeta::echo")

    payload = {"s": "x", "n": 1.5, "nested": {"list": [1, None, True], "empty": {}}, "unicode": "héllo ✓"}
    out = call(b, "pymeta::echo", payload, metadata={"tenant": "acme"})
    # Every key the caller sent arrives unchanged (extra engine keys are not asserted either way).
    for key, value in payload.items():
        assert out["data"][key] == value
    assert out["metadata"] == {"tenant": "acme"}  # metadata sidecar (§2.3)


def test_none_payload_and_none_result(worker):
    a = worker("py-none-a")
    b = worker("py-none-b")
    seen: list = []

    def nothing(data):
        seen.append(data)
        return None

    a.register_function("pynone::nothing", nothing)
    wait_for_function(b, "pynone::nothing")
    # payload None → `data` absent on the wire; the engine must default it (§3.8, §11.12).
    assert call(b, "pynone::nothing", None, timeout_ms=5000) is None
    assert seen == [None]


def test_void_call_runs_target_once_and_returns_none(worker):
    a = worker("py-void-a")
    b = worker("py-void-b")
    runs: list[dict] = []
    ran = threading.Event()

    def target(data):
        runs.append(data)
        ran.set()
        return {"ignored": True}

    a.register_function("pyvoid::target", target)
    wait_for_function(b, "pyvoid::target")

    start = time.monotonic()
    assert call(b, "pyvoid::target", {"v": 1}, action=TriggerAction.Void()) is None
    assert time.monotonic() - start < 1.0
    assert ran.wait(5), "void call never reached the target (§3.2)"
    time.sleep(0.5)
    assert len(runs) == 1
    assert runs[0]["v"] == 1
    # The engine discarded the target's result quietly: the connection still works.
    assert call(b, "pyvoid::target", {"v": 2}) == {"ignored": True}


def test_void_call_to_unknown_function_is_silent(worker):
    b = worker("py-void-unknown")
    assert call(b, "pyvoid::nobody-home", {"v": 1}, action=TriggerAction.Void()) is None
    # Still connected and usable.
    assert call(b, "engine::echo", {"still": "alive"}) == {"still": "alive"}


def test_handler_exception_propagates(worker):
    a = worker("py-err-a")
    b = worker("py-err-b")

    def fail(data):
        raise ValueError("kaboom 42")

    a.register_function("pyerr::fail", fail)
    wait_for_function(b, "pyerr::fail")

    with pytest.raises(InvocationError) as info:
        call(b, "pyerr::fail", {})
    err = info.value
    assert err.code == "invocation_failed"
    assert err.message == "kaboom 42"
    assert err.stacktrace and "ValueError" in err.stacktrace  # passed through unchanged (§3.6)
    assert err.function_id == "pyerr::fail"


def test_unknown_function_is_function_not_found(worker):
    b = worker("py-notfound")
    start = time.monotonic()
    with pytest.raises(InvocationError) as info:
        call(b, "pynope::missing", {"x": 1}, timeout_ms=10000)
    elapsed = time.monotonic() - start
    assert info.value.code == "function_not_found"
    assert "pynope::missing" in info.value.message
    assert elapsed < 2.0, "function_not_found must come back immediately, not after a timeout (§11.9)"


def test_enqueue_without_queue_is_enqueue_error(worker):
    a = worker("py-enq-a")
    a.register_function("pyenq::job", lambda data: {"ok": True})
    wait_for_function(a, "pyenq::job")
    b = worker("py-enq-b")
    with pytest.raises(InvocationError) as info:
        call(b, "pyenq::job", {"j": 1}, action=TriggerAction.Enqueue(queue="jobs"), timeout_ms=5000)
    assert info.value.code == "enqueue_error"  # §3.3: answered, not left to time out
    assert info.value.message


def test_client_timeout_and_late_result(worker):
    a = worker("py-slow-a")
    b = worker("py-slow-b")

    def slow(data):
        time.sleep(1.2)
        return {"late": True}

    a.register_function("pyslow::sleep", slow)
    a.register_function("pyslow::fast", lambda data: {"fast": True})
    wait_for_function(b, "pyslow::sleep")
    wait_for_function(b, "pyslow::fast")

    start = time.monotonic()
    with pytest.raises(InvocationError) as info:
        call(b, "pyslow::sleep", {}, timeout_ms=300)
    elapsed = time.monotonic() - start
    assert info.value.code == "TIMEOUT"
    assert info.value.message == "invocation timed out after 300ms"
    assert elapsed < 1.0
    # The late result arrives after the caller gave up; nothing breaks (§11.14).
    time.sleep(1.5)
    assert call(b, "pyslow::fast", {}) == {"fast": True}
    assert call(b, "pyslow::sleep", {}, timeout_ms=5000) == {"late": True}


def test_engine_side_invocation_timeout(engine_factory, worker):
    eng = engine_factory(extra_args=("--invocation-timeout-ms", "300")).start()
    a = worker("py-etimeout-a", url=eng.worker_url)
    b = worker("py-etimeout-b", url=eng.worker_url)

    def slow(data):
        time.sleep(2.5)
        return {"late": True}

    a.register_function("pyet::slow", slow)
    a.register_function("pyet::fast", lambda data: {"fast": True})
    wait_for_function(b, "pyet::slow")

    start = time.monotonic()
    with pytest.raises(InvocationError) as info:
        call(b, "pyet::slow", {}, timeout_ms=10000)
    elapsed = time.monotonic() - start
    assert info.value.code == "invocation_timeout"
    assert 0.25 <= elapsed < 1.5, f"engine timeout of 300 ms answered after {elapsed:.2f}s"
    # The executing worker's late answer is dropped; both workers keep working.
    time.sleep(2.5)
    assert call(b, "pyet::fast", {}) == {"fast": True}


VICTIM = """
import sys, time
from iii import InitOptions, register_worker

worker = register_worker(sys.argv[1], InitOptions(worker_name="py-victim"))

def hang(data):
    print("STARTED", flush=True)
    time.sleep(60)
    return {"late": True}

worker.register_function("pyvictim::hang", hang)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


def test_killed_callee_fails_call_with_invocation_stopped(engine, worker, spawn_worker):
    victim = spawn_worker(VICTIM, engine.worker_url)
    victim.expect("READY")
    caller = worker("py-victim-caller")
    wait_for_function(caller, "pyvictim::hang")

    outcome: dict = {}

    def run_call() -> None:
        try:
            outcome["result"] = call(caller, "pyvictim::hang", {}, timeout_ms=20000)
        except InvocationError as err:
            outcome["error"] = err
        outcome["done_at"] = time.monotonic()

    t = threading.Thread(target=run_call)
    t.start()
    victim.expect("STARTED")
    killed_at = time.monotonic()
    victim.kill()  # SIGKILL: no close frame, the socket just drops
    t.join(15)
    assert not t.is_alive(), "call never completed after the callee was killed"
    assert "error" in outcome, f"expected an error, got {outcome!r}"
    assert outcome["error"].code == "invocation_stopped"
    assert outcome["done_at"] - killed_at < 1.0, "invocation_stopped must come promptly (§3.7, §11.13)"
    # The function left with its worker (§8.1).
    wait_for(lambda: _code_of(lambda: call(caller, "pyvictim::hang", {}, timeout_ms=3000)) == "function_not_found",
             5.0, what="function of the killed worker to disappear")


def _code_of(fn) -> str | None:
    try:
        fn()
    except InvocationError as err:
        return err.code
    return None


def test_unregistered_function_is_gone(worker):
    a = worker("py-unreg-a")
    b = worker("py-unreg-b")
    ref = a.register_function("pyunreg::temp", lambda data: {"ok": True})
    wait_for_function(b, "pyunreg::temp")
    assert call(b, "pyunreg::temp", {}) == {"ok": True}
    ref.unregister()
    wait_for(lambda: _code_of(lambda: call(b, "pyunreg::temp", {}, timeout_ms=3000)) == "function_not_found",
             5.0, what="function_not_found after unregister (§11.15)")


def test_duplicate_id_is_not_stolen(worker):
    """Issue #2: a function id owned by a live worker cannot be silently stolen. The second
    registrant waits as a standby and takes over when the owner leaves (reference §8.2: last wins)."""
    caller = worker("py-dup-caller")
    old = worker("py-dup-old")
    old.register_function("pydup::who", lambda data: "old")
    wait_for_function(caller, "pydup::who")
    assert call(caller, "pydup::who", {}) == "old"

    new = worker("py-dup-new")
    new.register_function("pydup::who", lambda data: "new")
    time.sleep(0.5)
    assert call(caller, "pydup::who", {}) == "old", "a live owner's function was stolen"

    shutdown_client(old)
    wait_for(lambda: call(caller, "pydup::who", {}) == "new", 5.0,
             what="the standby registration to take over when the owner left")

    shutdown_client(new)
    wait_for(lambda: _code_of(lambda: call(caller, "pydup::who", {}, timeout_ms=3000)) == "function_not_found",
             5.0, what="function removed when its newest owner left")


def test_large_payload_round_trip(worker):
    """20 MiB each way: Python fragments messages over 16 MiB (§1.3, §11.17)."""
    a = worker("py-large-a")
    b = worker("py-large-b")
    a.register_function("pylarge::echo", lambda data: {"len": len(data["blob"]), "blob": data["blob"]})
    wait_for_function(b, "pylarge::echo")
    blob = "abcdefghij" * (2 * 1024 * 1024)  # 20 MiB of ASCII
    out = call(b, "pylarge::echo", {"blob": blob}, timeout_ms=60000)
    assert out["len"] == len(blob)
    assert out["blob"] == blob
