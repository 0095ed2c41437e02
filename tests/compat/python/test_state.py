"""The STATE module through the official Python SDK (PyPI iii-sdk 0.25.0).

Spec: shared/spec/state.md §2–§5 and §11 checks 1–22, 24–32, 34, with
Trine's choices: deleting a missing key fires nothing (check 23 inverted),
fractional ``by`` is accepted, ``--state-max-value-bytes`` also guards update
results, triggers are delivered at least once and in order per
(trigger, key) with retries and dead letters, compare-and-set through
``expected_version`` / ``with_meta``, durable storage under
``<data-dir>/state``.

Engines are shared per module (one per configuration) to keep the file fast;
every test uses scopes of its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from iii import InitOptions, InvocationError, register_worker

from conftest import Engine, Recorder as BaseRecorder, shutdown_client, wait_for, wait_for_function

STATE_FUNCTIONS = ["state::set", "state::get", "state::delete", "state::update", "state::list", "state::list_groups"]
DOC_URL = "https://iii.dev/docs/workers/iii-state#error-codes"
I64_MAX = 9223372036854775807
# Trine's integer range is [i64::MIN, u64::MAX] (like the reference's u64 retry); beyond it an
# increment/decrement reports `<op>.overflow`.
U64_MAX = 18446744073709551615
I64_MIN = -9223372036854775808
D = "deserialization_error"


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def nested(depth: int) -> Any:
    """``depth`` nested objects: nested(1) == {"a": 1}."""
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


def show(v: Any, n: int = 300) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= n else s[:n] + "…"


def assert_chain(events: list[dict], label: str) -> None:
    """Consecutive events of one key: event[n+1].old_value == event[n].new_value."""
    for i in range(1, len(events)):
        assert events[i]["old_value"] == events[i - 1]["new_value"], (
            f"{label}: event {i} old_value must equal event {i - 1} new_value (per-key order): {show(events, 3000)}"
        )


def drop_consecutive_duplicates(events: list[dict]) -> list[dict]:
    out: list[dict] = []
    for e in events:
        if out and out[-1] == e:
            continue  # an at-least-once redelivery of the event just before
        out.append(e)
    return out


def assert_op_errors(result: dict, expected: list[tuple[int, str]], label: str = "update") -> None:
    """Exact (op_index, code) list in ``errors``; each error has a message and the doc URL."""
    if not expected:
        assert "errors" not in result, f"{label}: no errors key when nothing failed, got {show(result)}"
        return
    assert isinstance(result.get("errors"), list), f"{label}: errors expected, got {show(result)}"
    assert [(e["op_index"], e["code"]) for e in result["errors"]] == expected, f"{label}: {show(result['errors'], 1000)}"
    for e in result["errors"]:
        assert isinstance(e["message"], str) and e["message"], f"{label}: message of {e['code']}"
        assert e["doc_url"] == DOC_URL, f"{label}: doc_url of {e['code']}"


class Recorder(BaseRecorder):
    def for_key(self, key: str) -> list[dict]:
        return [e for e in self.snapshot() if isinstance(e, dict) and e.get("key") == key]


class State:
    """State calls through ``III.trigger``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def call(self, function_id: str, payload: Any, **extra: Any) -> Any:
        return self.client.trigger({"function_id": function_id, "payload": payload, **extra})

    def set(self, scope: str, key: str, value: Any, **extra: Any) -> Any:
        return self.call("state::set", {"scope": scope, "key": key, "value": value, **extra})

    def get(self, scope: str, key: str, **extra: Any) -> Any:
        return self.call("state::get", {"scope": scope, "key": key, **extra})

    def delete(self, scope: str, key: str, **extra: Any) -> Any:
        return self.call("state::delete", {"scope": scope, "key": key, **extra})

    def update(self, scope: str, key: str, ops: list, **extra: Any) -> Any:
        return self.call("state::update", {"scope": scope, "key": key, "ops": ops, **extra})

    def list(self, scope: str) -> Any:
        return self.call("state::list", {"scope": scope})

    def groups(self) -> list[str]:
        return self.call("state::list_groups", {})["groups"]

    def dead_letters(self, **flt: Any) -> list[dict]:
        return self.call("engine::state::dead_letters::list", flt)["dead_letters"]

    def discard(self, **inp: Any) -> Any:
        return self.call("engine::state::dead_letters::discard", inp)

    def fails(self, function_id: str, payload: Any, code: str, label: str = "", **extra: Any) -> InvocationError:
        try:
            got = self.call(function_id, payload, **extra)
        except InvocationError as err:
            assert err.code == code, f"{label or function_id}: expected {code}, got {err.code}: {err.message}"
            assert err.message, f"{label or function_id}: empty error message"
            return err
        pytest.fail(f"{label or function_id} {show(payload, 200)} must fail with {code}, got {show(got, 200)}")


def state_triggers(client: Any) -> list[dict]:
    listed = client.trigger({"function_id": "engine::triggers::list", "payload": {"include_internal": True}})
    return [t for t in listed["triggers"] if t.get("trigger_type") == "state"]


class Watch:
    def __init__(self, fn_id: str, rec: Recorder, trigger: Any, trigger_id: str) -> None:
        self.id = fn_id
        self.rec = rec
        self.trigger = trigger
        self.trigger_id = trigger_id


def watch(sub: Any, config: Any, drop: list | None = None, fn_id: str | None = None,
          on_event: Callable[[dict], Any] | None = None) -> Watch:
    """Registers a recording handler on ``sub`` and binds a ``state`` trigger with ``config``."""
    fn_id = fn_id or f"{uniq('pywatch')}::on-state"
    rec = Recorder()

    def handler(data):
        rec.push(data)
        if on_event is not None:
            return on_event(data)
        return {"seen": True}

    sub.register_function(fn_id, handler)
    trig = sub.register_trigger({"type": "state", "function_id": fn_id, "config": config})
    if drop is not None:
        drop.append(trig)
    listed = wait_for(lambda: next((t for t in state_triggers(sub) if t["function_id"] == fn_id), None), 5.0,
                      what=f"state trigger for {fn_id} listed")
    return Watch(fn_id, rec, trig, listed["id"])


def connect(url: str, name: str) -> Any:
    return register_worker(url, InitOptions(worker_name=name))


class Env:
    """One engine plus a writer and a subscriber client."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writer = connect(engine.worker_url, uniq("py-state-writer-"))
        self.sub = connect(engine.worker_url, uniq("py-state-sub-"))
        self.S = State(self.writer)
        probe = f"{uniq('pyprobe')}::ready"
        self.sub.register_function(probe, lambda data: "ready")
        wait_for_function(self.writer, probe)

    def close(self) -> None:
        shutdown_client(self.sub)
        shutdown_client(self.writer)
        self.engine.stop()


def make_env(tmp_path_factory, name: str, extra_args: tuple[str, ...] = ()) -> Env:
    base = tmp_path_factory.mktemp(name)
    eng = Engine(data_dir=base / "data", log_path=base / "engine.log", extra_args=extra_args).start()
    return Env(eng)


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    env = make_env(tmp_path_factory, "state-main")
    yield env
    env.close()
    print(env.engine.log_tail(40))


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    env = make_env(tmp_path_factory, "state-fast", ("--trigger-max-attempts", "3", "--trigger-retry-ms", "20"))
    yield env
    env.close()
    print(env.engine.log_tail(40))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    env = make_env(tmp_path_factory, "state-small", ("--state-max-value-bytes", "10"))
    yield env
    env.close()


@pytest.fixture
def drop():
    """Triggers to unregister when the test ends."""
    triggers: list = []
    yield triggers
    for t in triggers:
        try:
            t.unregister()
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------


def test_state_functions_registered(main):
    listed = main.S.call("engine::functions::list", {})["functions"]
    ids = {f["function_id"] for f in listed}
    for fid in STATE_FUNCTIONS:
        assert fid in ids, f"{fid} missing from engine::functions::list"


def test_get_set_alias_delete_shapes(main):
    S = main.S
    s = uniq("s")
    assert S.get(s, "nope") is None  # check 1
    assert S.set(s, "k", {"a": 1}) == {"old_value": None, "new_value": {"a": 1}}  # check 2
    assert S.set(s, "k", {"a": 2}) == {"old_value": {"a": 1}, "new_value": {"a": 2}}  # check 3
    assert S.call("state::set", {"scope": s, "key": "k2", "data": 5}) == {"old_value": None, "new_value": 5}
    assert S.get(s, "k2") == 5  # check 4
    S.fails("state::set", {"scope": s, "key": "k3"}, D)  # check 5
    assert S.get(s, "k3") is None
    for i, v in enumerate(["text ✓ é", 0, -1.25, True, False, [1, [2, {"x": None}]], {"deep": {"er": [{}]}}, None]):
        assert S.set(s, f"v{i}", v) == {"old_value": None, "new_value": v}
        assert S.get(s, f"v{i}") == v
    assert S.set(s, "a:b/c.d ü", 1) == {"old_value": None, "new_value": 1}
    assert S.get(s, "A:B/C.D Ü") is None  # case-sensitive
    assert S.delete(s, "k") == {"a": 2}  # check 6: the raw old value
    assert S.get(s, "k") is None
    assert S.delete(s, "k") is None
    assert S.delete(uniq("never"), "x") is None


def test_list_order(main):
    S = main.S
    s = uniq("order")
    for k in ["c", "a", "b"]:
        S.set(s, k, {"id": k})
    assert S.list(s) == [{"id": "c"}, {"id": "a"}, {"id": "b"}]  # check 7: values only
    S.set(s, "a", {"id": "a", "v": 2})
    assert S.list(s) == [{"id": "c"}, {"id": "a", "v": 2}, {"id": "b"}], "overwrite keeps the position"
    S.update(s, "b", [{"type": "set", "path": "v", "value": 3}])
    assert S.list(s) == [{"id": "c"}, {"id": "a", "v": 2}, {"id": "b", "v": 3}], "update keeps the position"
    S.delete(s, "a")
    S.set(s, "a", {"id": "a", "v": 4})
    assert S.list(s) == [{"id": "c"}, {"id": "b", "v": 3}, {"id": "a", "v": 4}], "re-create moves to the end"
    assert S.list(uniq("empty")) == []  # check 8


def test_list_groups_drops_empty_scopes(main):
    S = main.S
    g1, g2 = uniq("pygrp-b-"), uniq("pygrp-a-")
    S.set(g1, "x", 1)
    S.set(g2, "y", 1)
    S.set(g2, "z", 1)
    res = S.call("state::list_groups", {})
    assert list(res.keys()) == ["groups"]
    groups = res["groups"]
    assert g1 in groups and g2 in groups
    assert groups == sorted(groups, key=lambda g: g.encode("utf-8")), "sorted byte-wise"
    assert len(set(groups)) == len(groups)
    S.delete(g1, "x")
    assert g1 not in S.groups(), "T2: gone with its last key"
    S.delete(g2, "y")
    assert g2 in S.groups()
    S.delete(g2, "z")
    assert g2 not in S.groups()


def test_update_on_missing_keys(main):
    S = main.S
    s = uniq("upd")
    assert S.update(s, "m1", [{"type": "increment", "path": "n", "by": 2}]) == {"old_value": None, "new_value": {"n": 2}}
    assert S.update(s, "m2", [{"type": "increment", "path": "", "by": 3}]) == {"old_value": None, "new_value": 3}
    assert S.update(s, "m3", [{"type": "decrement", "path": "n", "by": 2}]) == {"old_value": None, "new_value": {"n": -2}}
    assert S.update(s, "metrics", [{"type": "increment", "path": "total", "by": -1}]) == {
        "old_value": None, "new_value": {"total": -1}}
    assert S.update(s, "empty", []) == {"old_value": None, "new_value": {}}
    assert S.get(s, "empty") == {}


def test_update_merge(main):
    S = main.S
    s = uniq("merge")
    r = S.update(s, "k", [{"type": "merge", "value": [1]}])
    assert_op_errors(r, [(0, "merge.value.not_an_object")], "check 13")
    assert r["new_value"] == {}
    assert S.get(s, "k") == {}, "value still written"
    S.set(s, "m", {"a": 1, "b": {"c": 1}})
    assert S.update(s, "m", [{"type": "merge", "path": "", "value": {"b": {"d": 2}}}])["new_value"] == {"a": 1, "b": {"d": 2}}
    S.set(s, "n", {"a": 5})
    assert S.update(s, "n", [{"type": "merge", "path": ["a", "b"], "value": {"c": 1}}])["new_value"] == {"a": {"b": {"c": 1}}}
    S.set(s, "five", 5)
    assert S.update(s, "five", [{"type": "merge", "value": {"a": 1}}]) == {"old_value": 5, "new_value": 5}


def test_update_path_and_value_validation(main):
    S = main.S
    s = uniq("validate")
    base = {"keep": 1}
    S.set(s, "k", base)
    cases = [
        ("33-segment merge path", {"type": "merge", "path": [f"p{i}" for i in range(33)], "value": {"a": 1}}, "merge.path.too_deep"),
        ("__proto__ segment", {"type": "merge", "path": ["__proto__"], "value": {"a": 1}}, "merge.path.proto_polluted"),
        ("constructor segment", {"type": "merge", "path": ["a", "constructor"], "value": {"a": 1}}, "merge.path.proto_polluted"),
        ("empty segment", {"type": "merge", "path": ["a", ""], "value": {"a": 1}}, "merge.path.empty_segment"),
        ("257-byte segment", {"type": "merge", "path": ["x" * 257], "value": {"a": 1}}, "merge.path.segment_too_long"),
        ("1025 keys", {"type": "merge", "value": {f"k{i}": i for i in range(1025)}}, "merge.value.too_many_keys"),
        ("__proto__ key", {"type": "merge", "value": {"__proto__": {"x": 1}}}, "merge.value.proto_polluted"),
        ("17-deep value", {"type": "merge", "value": nested(17)}, "merge.value.too_deep"),
        ("set __proto__", {"type": "set", "path": "__proto__", "value": 1}, "set.path.proto_polluted"),
    ]
    for name, op, code in cases:
        r = S.update(s, "k", [op])
        assert_op_errors(r, [(0, code)], name)
        assert r["new_value"] == base, name
        assert S.get(s, "k") == base, f"{name}: stored value unchanged"
    ok = S.update(s, "deep", [
        {"type": "merge", "path": [f"p{i}" for i in range(32)], "value": {"leaf": True}},
        {"type": "merge", "path": ["nest"], "value": nested(16)},
    ])
    assert_op_errors(ok, [], "limits")
    assert ok["new_value"]["nest"] == nested(16)


def test_update_op_errors(main):
    S = main.S
    s = uniq("ops")
    S.set(s, "k", {"name": "x", "nil": None})
    assert_op_errors(S.update(s, "k", [{"type": "increment", "path": "name", "by": 1}]), [(0, "increment.not_number")])
    assert_op_errors(S.update(s, "k", [{"type": "increment", "path": "nil", "by": 1}]), [(0, "increment.not_number")])
    assert_op_errors(S.update(s, "k", [{"type": "decrement", "path": "name", "by": 1}]), [(0, "decrement.not_number")])
    assert S.get(s, "k") == {"name": "x", "nil": None}
    S.set(s, "five", 5)
    r = S.update(s, "five", [
        {"type": "set", "path": "x", "value": 1},
        {"type": "increment", "path": "n", "by": 1},
        {"type": "decrement", "path": "n", "by": 1},
        {"type": "remove", "path": "x"},
        {"type": "append", "path": "x", "value": 1},
        {"type": "increment", "path": "", "by": 2},
    ])
    assert_op_errors(r, [(0, "set.target_not_object"), (1, "increment.target_not_object"),
                         (2, "decrement.target_not_object"), (3, "remove.target_not_object"),
                         (4, "append.target_not_object")])
    assert r["new_value"] == 7, "later ops still apply (best effort)"
    r = S.update(s, "dots", [{"type": "set", "path": "user.name", "value": "v"}, {"type": "remove", "path": "absent"}])
    assert r == {"old_value": None, "new_value": {"user.name": "v"}}


def test_update_append(main):
    S = main.S
    s = uniq("append")
    assert S.update(s, "k", [{"type": "append", "path": "t", "value": "x"}]) == {"old_value": None, "new_value": {"t": "x"}}
    r = S.update(s, "k", [{"type": "append", "path": "t", "value": 1}])
    assert_op_errors(r, [(0, "append.type_mismatch")])
    assert r["new_value"] == {"t": "x"}
    r = S.update(s, "nested", [{"type": "append", "path": ["p", "q"], "value": "x"}])
    assert r == {"old_value": None, "new_value": {"p": {"q": ["x"]}}}  # check 32
    S.set(s, "ex", {"events": [], "text": "hi"})
    r = S.update(s, "ex", [
        {"type": "append", "path": "events", "value": {"k": 1}},
        {"type": "append", "path": "text", "value": " there"},
        {"type": "append", "path": "text", "value": 7},
    ])
    assert r["new_value"] == {"events": [{"k": 1}], "text": "hi there"}
    assert_op_errors(r, [(2, "append.type_mismatch")], "§4.6 example")


def test_update_remove_root(main):
    S = main.S
    s = uniq("remove")
    S.set(s, "k", {"a": 1})
    assert S.update(s, "k", [{"type": "remove", "path": ""}]) == {"old_value": {"a": 1}, "new_value": None}
    assert S.get(s, "k") is None
    assert S.list(s) == [None]  # check 18


def test_numbers_fractional_and_overflow(main):
    S = main.S
    s = uniq("num")
    assert S.update(s, "f", [{"type": "increment", "path": "n", "by": 1.5}]) == {"old_value": None, "new_value": {"n": 1.5}}
    S.set(s, "g", {"n": 5.5})
    assert S.update(s, "g", [{"type": "increment", "path": "n", "by": 1}])["new_value"] == {"n": 6.5}
    S.set(s, "h", {"n": 1})
    assert S.update(s, "h", [{"type": "decrement", "path": "n", "by": 0.25}])["new_value"] == {"n": 0.75}
    r = S.update(s, "ints", [{"type": "increment", "by": 2}, {"type": "increment", "by": 3}])
    assert r["new_value"] == 5 and isinstance(r["new_value"], int), "integers stay integers"

    S.set(s, "max", {"n": U64_MAX})
    r = S.update(s, "max", [{"type": "increment", "path": "n", "by": 1}])
    assert_op_errors(r, [(0, "increment.overflow")])
    assert S.get(s, "max") == {"n": U64_MAX}, "unchanged, exact"
    S.set(s, "one", {"n": 1})
    assert_op_errors(S.update(s, "one", [{"type": "increment", "path": "n", "by": U64_MAX}]), [(0, "increment.overflow")])
    assert S.get(s, "one") == {"n": 1}
    S.set(s, "min", {"n": I64_MIN})
    assert_op_errors(S.update(s, "min", [{"type": "decrement", "path": "n", "by": 1}]), [(0, "decrement.overflow")])
    assert S.get(s, "min") == {"n": I64_MIN}
    assert S.update(s, "big", [{"type": "increment", "by": I64_MAX}])["new_value"] == I64_MAX

    S.fails("state::update", {"scope": s, "key": "h", "ops": [{"type": "multiply", "path": "n", "by": 2}]}, D)
    S.fails("state::update", {"scope": s, "key": "h", "ops": [{"type": "increment", "path": "n", "by": "2"}]}, D)
    assert S.get(s, "h") == {"n": 0.75}


def test_omitted_or_null_path_is_root(main):
    S = main.S
    s = uniq("t1")
    assert S.update(s, "a", [{"type": "set", "value": {"a": 1}}]) == {"old_value": None, "new_value": {"a": 1}}
    assert S.update(s, "a", [{"type": "set", "path": None, "value": {"b": 2}}])["new_value"] == {"b": 2}
    assert S.update(s, "n", [{"type": "increment", "by": 2}])["new_value"] == 2
    assert S.update(s, "n", [{"type": "increment", "path": None, "by": 3}])["new_value"] == 5
    assert S.update(s, "n", [{"type": "decrement", "by": 1}])["new_value"] == 4
    assert S.update(s, "n", [{"type": "decrement", "path": None, "by": 1}])["new_value"] == 3
    assert S.update(s, "n", [{"type": "remove"}]) == {"old_value": 3, "new_value": None}
    assert S.get(s, "n") is None
    assert S.update(s, "ap", [{"type": "append", "value": "x"}])["new_value"] == "x"
    assert S.update(s, "ap", [{"type": "append", "path": None, "value": "y"}])["new_value"] == "xy"
    assert S.update(s, "mg", [{"type": "merge", "value": {"a": 1}}])["new_value"] == {"a": 1}
    assert S.update(s, "mg", [{"type": "merge", "path": None, "value": {"b": 2}}])["new_value"] == {"a": 1, "b": 2}


def test_compare_and_set(main, drop):
    S = main.S
    s = uniq("cas")
    w = watch(main.sub, {"scope": s}, drop)
    assert S.set(s, "plain", 1) == {"old_value": None, "new_value": 1}, "no version key without CAS fields"
    assert S.call("state::get", {"scope": s, "key": "k", "with_meta": True}) == {"value": None, "version": 0}
    assert S.call("state::delete", {"scope": s, "key": "k", "with_meta": True}) == {"old_value": None, "version": 0}

    r1 = S.set(s, "k", {"v": 1}, expected_version=0)
    assert sorted(r1.keys()) == ["new_value", "old_value", "version"]
    assert r1["old_value"] is None and r1["new_value"] == {"v": 1}
    assert isinstance(r1["version"], int) and r1["version"] > 0

    S.fails("state::set", {"scope": s, "key": "k", "value": "dup", "expected_version": 0}, "VERSION_CONFLICT")
    assert S.call("state::get", {"scope": s, "key": "k", "with_meta": True}) == {"value": {"v": 1}, "version": r1["version"]}
    r2 = S.call("state::set", {"scope": s, "key": "k", "value": {"v": 2}, "expected_version": r1["version"]})
    assert r2["old_value"] == {"v": 1} and r2["version"] > r1["version"]
    S.fails("state::set", {"scope": s, "key": "k", "value": "stale", "expected_version": r1["version"]}, "VERSION_CONFLICT")
    S.fails("state::update", {"scope": s, "key": "k", "ops": [{"type": "set", "path": "v", "value": 0}],
                              "expected_version": r1["version"]}, "VERSION_CONFLICT")
    S.fails("state::delete", {"scope": s, "key": "k", "expected_version": r1["version"]}, "VERSION_CONFLICT")
    assert S.get(s, "k") == {"v": 2}
    r3 = S.call("state::update", {"scope": s, "key": "k", "ops": [{"type": "increment", "path": "v", "by": 1}],
                                  "expected_version": r2["version"]})
    assert r3["old_value"] == {"v": 2} and r3["new_value"] == {"v": 3} and "errors" not in r3
    assert r3["version"] > r2["version"]
    r4 = S.call("state::set", {"scope": s, "key": "k", "value": {"v": 4}, "with_meta": True})
    assert r4["version"] > r3["version"]
    d = S.call("state::delete", {"scope": s, "key": "k", "expected_version": r4["version"]})
    assert d == {"old_value": {"v": 4}, "version": r4["version"]}
    again = S.call("state::set", {"scope": s, "key": "k", "value": "again", "expected_version": 0})
    assert again["version"] > r4["version"], "versions keep increasing across delete + re-create (no ABA)"
    S.fails("state::update", {"scope": s, "key": "none", "ops": [], "expected_version": 3}, "VERSION_CONFLICT")
    assert S.get(s, "none") is None
    S.fails("state::set", {"scope": s, "key": "k", "value": 1, "expected_version": "1"}, D)

    # Conflicting writes fired nothing: the events of k are exactly the successful writes.
    S.set(s, "marker", 1)
    wait_for(lambda: w.rec.for_key("marker"), 5.0, what="marker event")
    wait_for(lambda: len(w.rec.for_key("k")) >= 6, 5.0, what="events of k")
    time.sleep(0.3)
    assert [(e["event_type"], e["new_value"]) for e in w.rec.for_key("k")] == [
        ("state:created", {"v": 1}), ("state:updated", {"v": 2}), ("state:updated", {"v": 3}),
        ("state:updated", {"v": 4}), ("state:deleted", None), ("state:created", "again"),
    ]


def test_compare_and_set_race(main):
    s = uniq("race")
    client = main.writer

    async def race(payloads):
        return await asyncio.gather(
            *[client.trigger_async({"function_id": fid, "payload": p}) for fid, p in payloads],
            return_exceptions=True,
        )

    res = asyncio.run(race([("state::set", {"scope": s, "key": "k", "value": {"w": i}, "expected_version": 0})
                            for i in range(10)]))
    wins = [r for r in res if not isinstance(r, BaseException)]
    assert len(wins) == 1, f"exactly one create wins: {res}"
    assert all(isinstance(r, InvocationError) and r.code == "VERSION_CONFLICT" for r in res if r is not wins[0])
    v = wins[0]["version"]
    res = asyncio.run(race([("state::update", {"scope": s, "key": "k", "ops": [{"type": "set", "path": "by", "value": i}],
                                               "expected_version": v}) for i in range(10)]))
    assert len([r for r in res if not isinstance(r, BaseException)]) == 1


def test_bad_input_table(main):
    S = main.S
    s = uniq("bad")
    base = {"keep": 1}
    S.set(s, "k", base)
    scope257 = "é" * 128 + "a"  # 257 UTF-8 bytes
    key1025 = "ü" * 512 + "a"  # 1025 UTF-8 bytes
    cases = [
        ("set scope number", "state::set", {"scope": 5, "key": "k", "value": 1}, D),
        ("set scope missing", "state::set", {"key": "k", "value": 1}, D),
        ("set key null", "state::set", {"scope": s, "key": None, "value": 1}, D),
        ("set value and data", "state::set", {"scope": s, "key": "k", "value": 1, "data": 2}, D),
        ("set payload string", "state::set", "not an object", D),
        ("list_groups payload null", "state::list_groups", None, D),
        ("get key number", "state::get", {"scope": s, "key": 7}, D),
        ("list scope list", "state::list", {"scope": []}, D),
        ("update ops string", "state::update", {"scope": s, "key": "k", "ops": "increment"}, D),
        ("update ops missing", "state::update", {"scope": s, "key": "k"}, D),
        ("update op without type", "state::update", {"scope": s, "key": "k", "ops": [{"path": "n", "by": 1}]}, D),
        ("update unknown op", "state::update", {"scope": s, "key": "k", "ops": [{"type": "multiply", "path": "n", "by": 2}]}, D),
        ("by string", "state::update", {"scope": s, "key": "k", "ops": [{"type": "increment", "path": "n", "by": "1"}]}, D),
        ("by missing", "state::update", {"scope": s, "key": "k", "ops": [{"type": "increment", "path": "n"}]}, D),
        ("by null", "state::update", {"scope": s, "key": "k", "ops": [{"type": "decrement", "path": "n", "by": None}]}, D),
        ("set path number", "state::update", {"scope": s, "key": "k", "ops": [{"type": "set", "path": 5, "value": 1}]}, D),
        ("good op then bad op", "state::update",
         {"scope": s, "key": "k", "ops": [{"type": "set", "path": "keep", "value": 2}, {"type": "increment", "path": "n", "by": "x"}]}, D),
        ("set empty scope", "state::set", {"scope": "", "key": "k", "value": 1}, "INVALID_SCOPE"),
        ("set 257-byte scope", "state::set", {"scope": scope257, "key": "k", "value": 1}, "INVALID_SCOPE"),
        ("update empty scope", "state::update", {"scope": "", "key": "k", "ops": []}, "INVALID_SCOPE"),
        ("get empty scope", "state::get", {"scope": "", "key": "k"}, "INVALID_SCOPE"),
        ("list empty scope", "state::list", {"scope": ""}, "INVALID_SCOPE"),
        ("delete 257-byte scope", "state::delete", {"scope": scope257, "key": "k"}, "INVALID_SCOPE"),
        ("set empty key", "state::set", {"scope": s, "key": "", "value": 1}, "INVALID_KEY"),
        ("set 1025-byte key", "state::set", {"scope": s, "key": key1025, "value": 1}, "INVALID_KEY"),
        ("update empty key", "state::update", {"scope": s, "key": "", "ops": [{"type": "increment", "by": 1}]}, "INVALID_KEY"),
        ("get empty key", "state::get", {"scope": s, "key": ""}, "INVALID_KEY"),
        ("delete 1025-byte key", "state::delete", {"scope": s, "key": key1025}, "INVALID_KEY"),
    ]
    for name, fid, payload, code in cases:
        S.fails(fid, payload, code, label=name)
        assert S.list(s) == [base], f"{name}: nothing written"
    groups = S.groups()
    assert "" not in groups and scope257 not in groups
    for op, code in [
        ({"type": "merge", "path": ["s"] * 33, "value": {"a": 1}}, "merge.path.too_deep"),
        ({"type": "merge", "path": ["__proto__", "x"], "value": {"a": 1}}, "merge.path.proto_polluted"),
        ({"type": "merge", "value": nested(17)}, "merge.value.too_deep"),
    ]:
        assert_op_errors(S.update(s, "k", [op]), [(0, code)], code)
        assert S.get(s, "k") == base, f"{code}: value unchanged"
    scope256, key1024 = "é" * 128, "ü" * 512
    assert S.set(scope256, key1024, "edge") == {"old_value": None, "new_value": "edge"}
    assert S.get(scope256, key1024) == "edge"
    assert S.delete(scope256, key1024) == "edge"
    assert S.get(s, "k") == base  # connection still usable


def test_huge_value_over_default_limit(main):
    S = main.S
    s = uniq("huge")
    S.set(s, "k", "small")
    S.fails("state::set", {"scope": s, "key": "k", "value": "x" * (16 * 1024 * 1024 + 64)}, "VALUE_TOO_LARGE",
            timeout_ms=60000)
    assert S.get(s, "k") == "small"
    assert S.list(s) == ["small"]


# ---------------------------------------------------------------------------
# Triggers
# ---------------------------------------------------------------------------


def test_event_payloads(main, drop):
    S = main.S
    scope = uniq("todos")
    w = watch(main.sub, {"scope": scope}, drop)
    steps = [
        (lambda: S.set(scope, "t1", {"title": "a"}), ("state:created", "t1", None, {"title": "a"})),
        (lambda: S.set(scope, "t1", {"title": "a"}), ("state:updated", "t1", {"title": "a"}, {"title": "a"})),
        (lambda: S.update(scope, "t1", [{"type": "set", "path": "done", "value": True}]),
         ("state:updated", "t1", {"title": "a"}, {"title": "a", "done": True})),
        (lambda: S.update(scope, "t2", [{"type": "increment", "path": "n", "by": 1}]), ("state:created", "t2", None, {"n": 1})),
        (lambda: S.delete(scope, "t1"), ("state:deleted", "t1", {"title": "a", "done": True}, None)),
        (lambda: S.set(scope, "t3", None), ("state:created", "t3", None, None)),
        (lambda: S.set(scope, "t3", 0), ("state:updated", "t3", None, 0)),
    ]
    for i, (write, (etype, key, old, new)) in enumerate(steps):
        write()
        ev = wait_for(lambda: w.rec.count > i and w.rec.snapshot()[i], 5.0, what=f"event {etype} {key}")
        assert ev == {"type": "state", "event_type": etype, "scope": scope, "key": key, "old_value": old, "new_value": new}
    time.sleep(0.3)
    assert w.rec.count == len(steps)


def test_delete_of_missing_key_fires_nothing(main, drop):
    S = main.S
    scope = uniq("ghosts")
    w = watch(main.sub, {"scope": scope}, drop)
    assert S.delete(scope, "ghost") is None
    S.set(scope, "marker", 1)
    wait_for(lambda: w.rec.for_key("marker"), 5.0, what="marker event")
    time.sleep(0.3)
    assert w.rec.for_key("ghost") == [], "Trine: no event for deleting a missing key"


def test_trigger_filters(main, drop):
    S = main.S
    scope, other = uniq("filt"), uniq("other")
    by_key = watch(main.sub, {"scope": scope, "key": "k1"}, drop)
    by_scope = watch(main.sub, {"scope": scope}, drop)
    by_other = watch(main.sub, {"scope": other}, drop)
    everything = watch(main.sub, {}, drop)
    S.set(scope, "k2", 2)
    S.set(scope.upper(), "k1", "case")
    S.set(other, "k9", 9)
    S.set(scope, "k1", 1)

    def mine():
        return [e for e in everything.rec.snapshot() if e["scope"] in (scope, other, scope.upper())]

    wait_for(lambda: by_key.rec.count >= 1 and by_scope.rec.count >= 2 and by_other.rec.count >= 1 and len(mine()) >= 4,
             5.0, what="filtered triggers fired")
    time.sleep(0.3)
    assert [(e["scope"], e["key"]) for e in by_key.rec.snapshot()] == [(scope, "k1")]
    assert sorted(e["key"] for e in by_scope.rec.snapshot()) == ["k1", "k2"]
    assert [e["key"] for e in by_other.rec.snapshot()] == ["k9"]
    assert len(mine()) == 4


def test_user_function_under_state_prefix(main, drop):
    rec = Recorder()

    def on_user_updated(data):
        rec.push(data)
        return None

    main.sub.register_function("state::onUserUpdated", on_user_updated)
    drop.append(main.sub.register_trigger({"type": "state", "function_id": "state::onUserUpdated",
                                           "config": {"scope": "users", "key": "profile"}}))
    wait_for(lambda: any(t["function_id"] == "state::onUserUpdated" for t in state_triggers(main.writer)), 5.0,
             what="state::onUserUpdated trigger listed")
    S = main.S
    S.set("users", "settings", {"theme": "dark"})
    S.set("accounts", "profile", {"name": "not a user"})
    S.set("users", "profile", {"name": "Ada"})
    wait_for(lambda: rec.count >= 1, 5.0, what="state::onUserUpdated called")
    time.sleep(0.3)
    assert rec.snapshot() == [{"type": "state", "event_type": "state:created", "scope": "users", "key": "profile",
                               "old_value": None, "new_value": {"name": "Ada"}}]


def test_conditions_only_literal_false_skips(main, drop):
    scope = uniq("cond")
    conds: dict[str, Recorder] = {}
    handlers: dict[str, Watch] = {}
    for name, ret in [("false", False), ("none", None), ("zero", 0), ("true", True)]:
        cond_id = f"{uniq('pycond-' + name)}::check"
        seen = Recorder()

        def cond(data, seen=seen, ret=ret):
            seen.push(data)
            return ret

        main.sub.register_function(cond_id, cond)
        conds[name] = seen
        handlers[name] = watch(main.sub, {"scope": scope, "condition_function_id": cond_id}, drop)
    main.S.set(scope, "k", {"v": 1})
    want = {"type": "state", "event_type": "state:created", "scope": scope, "key": "k", "old_value": None, "new_value": {"v": 1}}
    for name in ["none", "zero", "true"]:
        assert wait_for(lambda: handlers[name].rec.snapshot()[:1], 5.0, what=f"handler behind {name}") == [want]
    assert wait_for(lambda: conds["false"].snapshot()[:1], 5.0, what="false condition evaluated") == [want]
    time.sleep(0.3)
    assert handlers["false"].rec.count == 0


def test_trigger_metadata_is_the_sidecar(main, drop):
    scope = uniq("meta")
    fn_id = f"{uniq('pymeta')}::on-state"
    seen = Recorder()

    def handler(data, metadata=None):
        seen.push((data, metadata))
        return None

    main.sub.register_function(fn_id, handler)
    drop.append(main.sub.register_trigger({"type": "state", "function_id": fn_id, "config": {"scope": scope},
                                           "metadata": {"tenant": "acme"}}))
    wait_for(lambda: any(t["function_id"] == fn_id for t in state_triggers(main.writer)), 5.0, what="trigger listed")
    main.S.set(scope, "k", 1)
    data, metadata = wait_for(lambda: seen.snapshot()[:1], 5.0, what="handler called")[0]
    assert data == {"type": "state", "event_type": "state:created", "scope": scope, "key": "k",
                    "old_value": None, "new_value": 1}
    assert metadata == {"tenant": "acme"}


def test_handlers_may_write_state_even_the_firing_key(main, drop):
    """Seed metrics pattern: a handler updates another scope; it may also write the key that fired it."""
    scope, metrics = uniq("todos"), uniq("metrics")
    writer = State(main.sub)

    def on_todo(data):
        by = {"state:created": 1, "state:deleted": -1}.get(data["event_type"], 0)
        writer.update(metrics, "global", [{"type": "increment", "path": "total", "by": by},
                                          {"type": "increment", "path": "events", "by": 1}])
        if data["key"] == "self" and data["new_value"] is not None and data["new_value"]["n"] < 3:
            writer.update(scope, "self", [{"type": "increment", "path": "n", "by": 1}])
        return None

    todo = watch(main.sub, {"scope": scope}, drop, on_event=on_todo)
    met = watch(main.sub, {"scope": metrics}, drop)
    S = main.S
    S.set(scope, "a", {"title": "a"})
    S.set(scope, "b", {"title": "b"})
    S.delete(scope, "a")
    S.set(scope, "self", {"n": 0})
    wait_for(lambda: (S.get(scope, "self") or {}).get("n") == 3, 5.0, what="self-writes reached n = 3")
    wait_for(lambda: todo.rec.count >= 7 and met.rec.count >= 7, 5.0, what="all events handled")
    assert [e["new_value"] for e in todo.rec.for_key("self")] == [{"n": n} for n in range(4)]
    assert S.get(metrics, "global") == {"total": 2, "events": 7}
    m = met.rec.for_key("global")
    assert len(m) == 7
    assert_chain(m, "metrics")


def test_throwing_handler_does_not_change_write_result(main, drop):
    scope = uniq("throws")

    def boom(data):
        raise RuntimeError("handler exploded")

    w = watch(main.sub, {"scope": scope}, drop, on_event=boom)
    assert main.S.set(scope, "k", 1) == {"old_value": None, "new_value": 1}
    wait_for(lambda: w.rec.count >= 1, 5.0, what="throwing handler called")
    assert main.S.set(scope, "k", 2) == {"old_value": 1, "new_value": 2}


def test_slow_handler_does_not_delay_the_write(main, drop):
    scope = uniq("slow")
    finished = Recorder()

    def slow(data):
        time.sleep(2.0)
        finished.push(data)
        return None

    w = watch(main.sub, {"scope": scope}, drop, on_event=slow)
    start = time.monotonic()
    assert main.S.set(scope, "k", "v") == {"old_value": None, "new_value": "v"}
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"state::set waited {elapsed:.2f}s for a 2 s handler"
    assert finished.count == 0
    wait_for(lambda: w.rec.count >= 1, 3.0, what="slow handler started")
    wait_for(lambda: finished.count >= 1, 5.0, what="slow handler finished")


def test_trigger_with_null_config_fails_registration(main, caplog):
    from websockets.sync.client import connect as ws_connect

    fn_id = f"{uniq('pybadcfg')}::fn"
    with ws_connect(main.engine.worker_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "registerfunction", "id": fn_id}))
        for config in (None, {"scope": 5}):
            tid = str(uuid.uuid4())
            ws.send(json.dumps({"type": "registertrigger", "id": tid, "trigger_type": "state",
                                "function_id": fn_id, "config": config}))
            deadline = time.monotonic() + 5
            report = None
            while report is None:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no triggerregistrationresult for config {config!r}"
                msg = json.loads(ws.recv(timeout=remaining))
                if msg.get("type") == "triggerregistrationresult" and msg.get("id") == tid:
                    report = msg
            assert (report.get("error") or {}).get("code") == "trigger_registration_failed", report
    # The SDK path: register_trigger with config None is reported (logged) by the SDK.
    caplog.set_level("ERROR", logger="iii.iii")
    main.sub.register_function(f"{fn_id}-sdk", lambda data: None)
    main.sub.register_trigger({"type": "state", "function_id": f"{fn_id}-sdk", "config": None})
    wait_for(lambda: any("Trigger registration failed" in r.getMessage() for r in caplog.records), 5.0,
             what="SDK logged the registration failure")
    assert not any(t["function_id"] in (fn_id, f"{fn_id}-sdk") for t in state_triggers(main.writer))


def test_disconnect_removes_state_triggers(main):
    scope = uniq("gone")
    fn_id = f"{uniq('pygone')}::on-state"
    temp = connect(main.engine.worker_url, uniq("py-temp-"))
    try:
        w1 = watch(temp, {"scope": scope}, fn_id=fn_id)
        main.S.set(scope, "before", 1)
        wait_for(lambda: w1.rec.count == 1, 5.0, what="first worker got the event")
    finally:
        shutdown_client(temp)
    wait_for(lambda: not any(t["function_id"] == fn_id for t in state_triggers(main.writer)), 5.0,
             what="trigger removed with its worker")
    main.S.set(scope, "during", 2)
    temp2 = connect(main.engine.worker_url, uniq("py-temp2-"))
    try:
        w2 = watch(temp2, {"scope": scope}, fn_id=fn_id)
        main.S.set(scope, "after", 3)
        wait_for(lambda: w2.rec.for_key("after"), 5.0, what="new worker got the new event")
        time.sleep(0.3)
        assert [e["key"] for e in w2.rec.snapshot()] == ["after"], "nothing from the gap"
    finally:
        shutdown_client(temp2)


def test_per_key_order_under_burst(main, drop):
    scope = uniq("burst")

    def jitter(data):
        time.sleep(random.random() * 0.004)
        return None

    w = watch(main.sub, {"scope": scope, "key": "counter"}, drop, on_event=jitter)
    client = main.writer

    async def burst():
        op = [{"type": "increment", "path": "n", "by": 1}]
        return await asyncio.gather(*[
            client.trigger_async({"function_id": "state::update", "payload": {"scope": scope, "key": "counter", "ops": op}})
            for _ in range(100)
        ])

    results = asyncio.run(burst())
    olds = sorted((r["old_value"] or {"n": 0})["n"] for r in results)
    assert olds == list(range(100)), "every increment saw a distinct old value"
    assert main.S.get(scope, "counter") == {"n": 100}
    wait_for(lambda: w.rec.count >= 100, 30.0, what="100 events delivered")
    events = drop_consecutive_duplicates(w.rec.for_key("counter"))
    assert len(events) == 100
    assert events[0]["event_type"] == "state:created" and events[0]["old_value"] is None
    assert_chain(events, "counter")
    assert events[-1]["new_value"] == {"n": 100}


def test_failing_trigger_does_not_delay_another(main, drop):
    scope = uniq("mixed")
    attempts_at: dict[str, list[float]] = {}
    lock = threading.Lock()

    def fail(data):
        with lock:
            attempts_at.setdefault(json.dumps(data["new_value"]), []).append(time.monotonic())
        raise RuntimeError("always fails")

    bad = watch(main.sub, {"scope": scope}, drop, on_event=fail)
    good = watch(main.sub, {"scope": scope}, drop)
    for i in range(1, 6):
        main.S.set(scope, "k", {"i": i})
    start = time.monotonic()
    wait_for(lambda: good.rec.count >= 5, 5.0, what="healthy trigger got all five events promptly")
    events = good.rec.for_key("k")
    assert [e["new_value"] for e in events] == [{"i": i} for i in range(1, 6)]
    assert_chain(events, "healthy trigger")
    assert bad.rec.count >= 1
    assert time.monotonic() - start < 5.0
    # Exponential backoff from --trigger-retry-ms (100 ms): lower bounds only.
    first = wait_for(lambda: (lambda t: t if t and len(t) >= 3 else None)(attempts_at.get(json.dumps({"i": 1}))),
                     5.0, what="three attempts of the first event")
    gaps = [first[1] - first[0], first[2] - first[1]]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.18, f"retry gaps {gaps} must grow from 100 ms, doubling"
    # In order per (trigger, key): event 2 of k is not delivered while event 1 is still retried.
    assert {json.dumps(e["new_value"]) for e in bad.rec.for_key("k")} == {json.dumps({"i": 1})}


# ---------------------------------------------------------------------------
# Retries and dead letters (--trigger-max-attempts 3 --trigger-retry-ms 20)
# ---------------------------------------------------------------------------


def test_dead_letters_after_attempts(fast, drop):
    S = fast.S
    scope = uniq("dl")
    started_ms = time.time() * 1000

    def fail(data):
        raise RuntimeError(f"always fails: {data['key']}")

    bad = watch(fast.sub, {"scope": scope}, drop, on_event=fail)
    good = watch(fast.sub, {"scope": scope}, drop)
    S.set(scope, "k", {"v": 1})
    S.set(scope, "k", {"v": 2})
    S.update(scope, "k", [{"type": "increment", "path": "v", "by": 1}])
    S.delete(scope, "k")
    S.set(scope, "k2", "other")
    wait_for(lambda: good.rec.count >= 5, 5.0, what="healthy trigger got all five events")
    k_events = good.rec.for_key("k")
    assert [e["event_type"] for e in k_events] == ["state:created", "state:updated", "state:updated", "state:deleted"]
    assert_chain(k_events, "healthy trigger")

    dls = wait_for(lambda: (lambda l: l if len(l) >= 5 else None)(S.dead_letters(function_id=bad.id)), 20.0,
                   what="five dead letters")
    assert len(dls) == 5, show(dls, 3000)
    now_ms = time.time() * 1000
    good_events = good.rec.snapshot()
    for dl in dls:
        assert dl["trigger_id"] == bad.trigger_id
        assert dl["function_id"] == bad.id
        assert dl["attempts"] == 3
        assert isinstance(dl["seq"], int)
        assert dl["error"]["code"] == "invocation_failed", dl["error"]
        assert dl["error"]["message"] == f"always fails: {dl['event']['key']}"
        assert started_ms - 1000 <= dl["failed_at_ms"] <= now_ms + 1000
        assert dl["event"] in good_events, f"dead-lettered event is a real event: {dl['event']}"
    assert len({str(d["id"]) for d in dls}) == 5
    k_dead = [d["event"] for d in sorted(dls, key=lambda d: d["seq"]) if d["event"]["key"] == "k"]
    assert k_dead == k_events, "dead letters of one key keep the event order"
    time.sleep(0.3)
    assert bad.rec.count == 15, "exactly three attempts per event"
    tags = [(e["event_type"], e["new_value"]) for e in bad.rec.for_key("k")]
    assert tags == [(e["event_type"], e["new_value"]) for e in k_events for _ in range(3)], (
        "attempts of key k: each event three times, in event order")

    assert len(S.dead_letters(trigger_id=bad.trigger_id)) == 5
    assert S.dead_letters(function_id=good.id) == []
    assert len(S.dead_letters(function_id=bad.id, limit=2)) == 2
    assert S.discard(id=dls[0]["id"])["removed"] is True
    assert S.discard(id=dls[0]["id"])["removed"] is False
    assert len(S.dead_letters(function_id=bad.id)) == 4
    S.discard(all=True)
    assert S.dead_letters() == []


def test_retry_after_one_failure_keeps_order(fast, drop):
    S = fast.S
    scope = uniq("flaky")
    tried: set[str] = set()
    delivered = Recorder()
    lock = threading.Lock()

    def flaky(data):
        tag = json.dumps(data, sort_keys=True)
        with lock:
            first = tag not in tried
            tried.add(tag)
        if first:
            raise RuntimeError("first attempt fails")
        delivered.push(data)
        return None

    w = watch(fast.sub, {"scope": scope}, drop, on_event=flaky)
    for _ in range(6):
        S.update(scope, "k", [{"type": "increment", "path": "n", "by": 1}])
    wait_for(lambda: delivered.count >= 6, 10.0, what="six events delivered after one retry each")
    events = drop_consecutive_duplicates(delivered.snapshot())
    assert [e["new_value"] for e in events] == [{"n": n} for n in range(1, 7)]
    assert_chain(events, "retried deliveries")
    assert w.rec.count >= 12
    assert S.dead_letters(function_id=w.id) == []


def test_condition_that_throws_is_dead_lettered(fast, drop):
    S = fast.S
    scope = uniq("condfail")
    cond_id = f"{uniq('pycond-throws')}::check"
    cond_calls = Recorder()

    def cond(data):
        cond_calls.push(data)
        raise RuntimeError("condition exploded")

    fast.sub.register_function(cond_id, cond)
    w = watch(fast.sub, {"scope": scope, "condition_function_id": cond_id}, drop)
    S.set(scope, "k", 1)
    dls = wait_for(lambda: S.dead_letters(trigger_id=w.trigger_id), 10.0, what="condition failure dead-lettered")
    assert len(dls) == 1
    assert dls[0]["error"]["code"] == "invocation_failed"
    assert dls[0]["error"]["message"] == "condition exploded"
    assert dls[0]["attempts"] == 3
    assert dls[0]["event"] == {"type": "state", "event_type": "state:created", "scope": scope, "key": "k",
                               "old_value": None, "new_value": 1}
    assert cond_calls.count == 3
    assert w.rec.count == 0
    S.discard(id=dls[0]["id"])


# ---------------------------------------------------------------------------
# Value size limit (--state-max-value-bytes 10)
# ---------------------------------------------------------------------------


def test_value_size_limit_guards_set_and_update(small, drop):
    S = small.S
    scope = uniq("sz")
    w = watch(small.sub, {"scope": scope}, drop)
    assert S.set(scope, "k", "12345678") == {"old_value": None, "new_value": "12345678"}  # 10 bytes
    S.fails("state::set", {"scope": scope, "key": "k", "value": "123456789"}, "VALUE_TOO_LARGE")
    assert S.get(scope, "k") == "12345678"
    S.set(scope, "n", {"n": 1})
    S.fails("state::update", {"scope": scope, "key": "n", "ops": [{"type": "set", "path": "long", "value": "xxxxxxxxxx"}]},
            "VALUE_TOO_LARGE")
    assert S.get(scope, "n") == {"n": 1}
    S.fails("state::update", {"scope": scope, "key": "fresh", "ops": [{"type": "set", "value": "way too long"}]},
            "VALUE_TOO_LARGE")
    assert S.get(scope, "fresh") is None
    assert S.list(scope) == ["12345678", {"n": 1}]
    S.set(scope, "marker", 1)
    wait_for(lambda: w.rec.for_key("marker"), 5.0, what="marker event")
    time.sleep(0.3)
    assert [(e["key"], e["event_type"]) for e in w.rec.snapshot()] == [
        ("k", "state:created"), ("n", "state:created"), ("marker", "state:created")], "rejected writes fired nothing"


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


def test_sigkill_after_acknowledged_writes_keeps_data(tmp_path: Path):
    eng = Engine(data_dir=tmp_path / "data", log_path=tmp_path / "engine.log").start()
    client = connect(eng.worker_url, uniq("py-persist-"))
    try:
        S = State(client)
        s, bulk = uniq("keep"), uniq("bulk")
        S.set(s, "c", {"id": "c"})
        S.set(s, "a", "A")
        S.set(s, "b", [1, 2])
        S.set(s, "a", "A2")
        S.update(s, "cnt", [{"type": "increment", "path": "n", "by": 5}])
        S.set(s, "gone", 1)
        S.delete(s, "gone")
        emptied = uniq("emptied")
        S.set(emptied, "x", 1)
        S.delete(emptied, "x")
        # Names that are awkward for a file-based store: path syntax, NUL, long UTF-8.
        odd_scopes = [".", "..", "a/b", "%2F", " ", "\u0000nul", "é" * 128, "x" * 256]
        odd_keys = [".", "..", "k/1", "\u0000", "ü" * 512]
        for os_ in odd_scopes:
            for ok in odd_keys:
                S.set(os_, ok, {"os": os_, "ok": ok})
        cas = S.call("state::set", {"scope": s, "key": "cas", "value": "v", "expected_version": 0})
        S.set(s, "big", {"n": I64_MAX})

        async def many():
            return await asyncio.gather(*[
                client.trigger_async({"function_id": "state::set", "payload": {"scope": bulk, "key": f"k{i}", "value": {"i": i}}})
                for i in range(50)
            ])

        asyncio.run(many())
        assert S.set(s, "last", "just before the kill") == {"old_value": None, "new_value": "just before the kill"}
        eng.stop(signal.SIGKILL)
    finally:
        shutdown_client(client)
    assert (tmp_path / "data" / "state").exists(), "state lives under <data-dir>/state"

    eng.start()
    client = connect(eng.worker_url, uniq("py-persist2-"))
    try:
        S = State(client)
        assert S.list(s) == [{"id": "c"}, "A2", [1, 2], {"n": 5}, "v", {"n": I64_MAX}, "just before the kill"]
        assert S.get(s, "gone") is None
        assert sorted(v["i"] for v in S.list(bulk)) == list(range(50))
        groups = S.groups()
        assert s in groups and bulk in groups
        assert emptied not in groups, "a scope emptied before the kill stays gone (T2)"
        for os_ in odd_scopes:
            assert os_ in groups, f"scope {os_[:40]!r} listed after restart"
            assert S.list(os_) == [{"os": os_, "ok": ok} for ok in odd_keys], f"scope {os_[:40]!r} intact"
        assert S.call("state::get", {"scope": s, "key": "cas", "with_meta": True}) == {"value": "v", "version": cas["version"]}
        nxt = S.call("state::set", {"scope": s, "key": "cas", "value": "v2", "expected_version": cas["version"]})
        assert nxt["version"] > cas["version"]
    finally:
        shutdown_client(client)
        eng.stop()


def test_sigterm_restart_and_in_memory(tmp_path: Path):
    eng = Engine(data_dir=tmp_path / "d1", log_path=tmp_path / "e1.log").start()
    s = uniq("term")
    client = connect(eng.worker_url, uniq("py-term-"))
    try:
        State(client).set(s, "k", {"ok": True})
    finally:
        shutdown_client(client)
    eng.stop()
    eng.start()
    client = connect(eng.worker_url, uniq("py-term2-"))
    try:
        assert State(client).get(s, "k") == {"ok": True}
    finally:
        shutdown_client(client)
        eng.stop()

    mem = Engine(data_dir=tmp_path / "d2", log_path=tmp_path / "e2.log", extra_args=("--state-store", "in_memory")).start()
    client = connect(mem.worker_url, uniq("py-mem-"))
    try:
        State(client).set(s, "k", 1)
        assert State(client).get(s, "k") == 1
    finally:
        shutdown_client(client)
    mem.stop()
    mem.start()
    client = connect(mem.worker_url, uniq("py-mem2-"))
    try:
        assert State(client).get(s, "k") is None
        assert s not in State(client).groups()
    finally:
        shutdown_client(client)
        mem.stop()
