"""Engine restart on the same ports: Python 0.25 workers reconnect by
themselves, replay functions and triggers, and everything works again
without restarting the workers (protocol.md §1.5, §1.6, §2.10; §11 check 26;
http.md §2.3 identity — no duplicate routes).
"""

from __future__ import annotations

from conftest import free_port, http_request, wait_for, wait_for_function, wait_for_route


def test_workers_survive_engine_restart(engine_factory, worker):
    eng = engine_factory(worker_port=free_port(), http_port=free_port(), stream_port=free_port()).start()
    first_worker_url = eng.worker_url

    owner = worker("py-restart-owner", url=eng.worker_url)
    owner.register_function("pyrs::hello", lambda data: {"hello": data.get("name") if data else None})
    owner.register_trigger({"type": "http", "function_id": "pyrs::hello",
                            "config": {"api_path": "/py/restart", "http_method": "GET"}})
    caller = worker("py-restart-caller", url=eng.worker_url)
    wait_for_function(caller, "pyrs::hello")
    assert caller.trigger({"function_id": "pyrs::hello", "payload": {"name": "before"}}) == {"hello": "before"}
    assert wait_for_route("GET", f"{eng.http_url}/py/restart").status == 200
    old_id = owner.worker_id

    eng.stop()
    wait_for(lambda: owner.get_connection_state() != "connected", 10.0, what="SDK to notice the engine went away")
    eng.start()
    assert eng.worker_url == first_worker_url

    # The route is replayed by the owner (no action from the test's side).
    resp = wait_for_route("GET", f"{eng.http_url}/py/restart", timeout=30.0)
    assert resp.status == 200, resp.body
    assert resp.json() == {"hello": None}

    def call_ok():
        return caller.trigger({"function_id": "pyrs::hello", "payload": {"name": "after"},
                               "timeout_ms": 2000}) == {"hello": "after"}

    wait_for(call_ok, 30.0, interval=0.3, what="the old caller to reach the replayed function")

    assert owner.worker_id and owner.worker_id != old_id  # a new connection, a new id (§1.6)
    triggers = caller.trigger({"function_id": "engine::triggers::list", "payload": {}})["triggers"]
    mine = [t for t in triggers if t["function_id"] == "pyrs::hello"]
    assert len(mine) == 1, f"replay must not duplicate the trigger: {mine}"
    workers = caller.trigger({"function_id": "engine::workers::list", "payload": {}})["workers"]
    assert len([w for w in workers if w.get("name") == "py-restart-owner"]) == 1
    assert http_request("GET", f"{eng.http_url}/py/restart").status == 200
