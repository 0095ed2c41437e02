"""Worker identity as the engine sees a Python 0.25 worker.

Spec: protocol.md §2.11 (workerregistered, UUID worker_id), §4.1
(engine::workers::register fields), §4.3 (discovery shapes), §7.3 (the
/otel socket is not a worker), §11 checks 1–3.
"""

from __future__ import annotations

import os
import uuid

from conftest import wait_for, wait_for_function


def _function_ids(entry: dict) -> set[str]:
    return {f if isinstance(f, str) else f["function_id"] for f in entry.get("functions", [])}


def test_worker_id_is_engine_assigned_uuid(worker):
    w = worker("py-uuid")
    wait_for(lambda: w.worker_id, 5.0, what="workerregistered to arrive")
    parsed = uuid.UUID(w.worker_id)
    assert str(parsed) == w.worker_id  # lowercase hyphenated (§1.3)


def test_workers_list_shows_python_identity(worker):
    w = worker("py-identity", worker_description="compat test worker")
    w.register_function("pyid::a", lambda data: 1, description="first")
    w.register_function("pyid::b", lambda data: 2, description="second")
    wait_for_function(w, "pyid::b")
    wait_for(lambda: w.worker_id, 5.0, what="worker id")

    def entry():
        workers = w.trigger({"function_id": "engine::workers::list", "payload": {}})["workers"]
        mine = [x for x in workers if x.get("name") == "py-identity"]
        return mine if mine and _function_ids(mine[0]) >= {"pyid::a", "pyid::b"} else None

    mine = wait_for(entry, 5.0, what="worker entry with its functions")
    assert len(mine) == 1, f"exactly one worker named py-identity (the /otel socket is not one): {mine}"
    e = mine[0]
    assert e["id"] == w.worker_id
    assert e["runtime"] == "python"
    assert e["version"] == "0.25.0"
    assert e["pid"] == os.getpid()
    assert e["status"] in ("connected", "available", "busy")
    assert "Linux" in e["os"]
    assert e.get("description") == "compat test worker"
    assert _function_ids(e) == {"pyid::a", "pyid::b"}
    assert e["function_count"] == 2

    functions = w.trigger({"function_id": "engine::functions::list", "payload": {}})["functions"]
    by_id = {f["function_id"]: f for f in functions}
    assert by_id["pyid::a"]["description"] == "first"
    assert by_id["pyid::a"]["worker_name"] == "py-identity"
    assert by_id["pyid::b"]["worker_name"] == "py-identity"


def test_engine_echo_and_call_cli(engine, worker):
    w = worker("py-echo")
    payload = {"a": [1, 2, {"b": None}], "s": "x"}
    assert w.trigger({"function_id": "engine::echo", "payload": payload}) == payload

    w.register_function("pycli::add", lambda data: {"sum": data["a"] + data["b"]})
    wait_for_function(w, "pycli::add")
    out = engine.cli("call", "pycli::add", "--data", '{"a": 2, "b": 3}', "--url", engine.worker_url)
    assert out.returncode == 0, out.stderr
    import json
    assert json.loads(out.stdout) == {"sum": 5}


def test_idle_connection_stays_up(worker):
    """§1.4, §11.4: Python's websockets client pings every 20 s and drops the
    link if no Pong comes within 20 s; 42 s idle covers one full ping cycle.
    The engine must answer pings and must not close silent connections."""
    import time

    w = worker("py-idle")
    wait_for(lambda: w.worker_id, 5.0, what="worker id")
    first_id = w.worker_id
    states: list[str] = []
    w.add_connection_state_listener(states.append)
    time.sleep(42)
    assert w.get_connection_state() == "connected"
    assert w.worker_id == first_id, "the worker reconnected while idle"
    assert "disconnected" not in states and "reconnecting" not in states, states
    assert w.trigger({"function_id": "engine::echo", "payload": {"idle": "ok"}}) == {"idle": "ok"}
