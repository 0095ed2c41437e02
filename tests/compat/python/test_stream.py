"""The STREAM module through the official Python SDK (PyPI iii-sdk 0.25.0),
observed by plain WebSocket clients (``websockets``, a dependency of the SDK)
of the stream port.

Spec: shared/spec/stream.md §2–§5, R1–R3 and the §10 checks 1–13, 16–27;
docs/streams.md for Trine's additions (``seq``/``epoch`` and resume, error
frames, the 64 KiB client frame limit, fail-closed join handling rules).

One engine for the module; every test works on stream names of its own, and
join/leave triggers always carry a ``stream_name`` filter so that tests do not
see each other.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
import warnings
from typing import Any, Callable

import pytest
from iii import InitOptions, InvocationError, TriggerAction, register_worker
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from conftest import Recorder, Engine, http_request, shutdown_client, wait_for, wait_for_function

STREAM_FUNCTIONS = ["stream::set", "stream::get", "stream::delete", "stream::list", "stream::list_groups",
                    "stream::list_all", "stream::send", "stream::update"]
# Waits are generous: the suites run on a loaded 2-core machine.
T = 10.0
D = "deserialization_error"


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def show(v: Any, n: int = 400) -> str:
    s = json.dumps(v, default=str, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


def strip(envelope: dict) -> dict:
    """The envelope as ``stream`` triggers see it: without Trine's seq / epoch."""
    return {k: v for k, v in envelope.items() if k not in ("seq", "epoch")}


def is_envelope(m: Any) -> bool:
    return isinstance(m, dict) and m.get("type") == "stream"


def event_type(m: dict) -> Any:
    return (m.get("event") or {}).get("type")


def is_sync(m: Any) -> bool:
    return is_envelope(m) and event_type(m) == "sync"


def is_event(m: Any) -> bool:
    return is_envelope(m) and event_type(m) not in ("sync", "unauthorized")


def named(name: str) -> Callable[[Any], bool]:
    return lambda m: is_envelope(m) and event_type(m) == "event" and m["event"].get("event", {}).get("type") == name


def is_marker(m: dict) -> bool:
    return event_type(m) == "event" and str(m["event"].get("event", {}).get("type")).startswith("marker-")


def no_markers(envs: list[dict]) -> list[dict]:
    return [m for m in envs if not is_marker(m)]


def assert_envelope(m: dict, stream: str, group: str, id: Any = None, event: Any = ..., label: str = "envelope") -> None:
    """Shape of every envelope (§3)."""
    assert m.get("type") == "stream", f"{label}: {show(m)}"
    assert isinstance(m.get("timestamp"), int) and not isinstance(m.get("timestamp"), bool), f"{label}: timestamp {show(m)}"
    assert abs(m["timestamp"] - time.time() * 1000) < 120_000, f"{label}: timestamp is Unix ms: {m['timestamp']}"
    assert m.get("streamName") == stream, f"{label}: streamName {show(m)}"
    assert m.get("groupId") == group, f"{label}: groupId {show(m)}"
    assert "id" in m, f"{label}: id always present"
    assert m["id"] == id, f"{label}: id {show(m)}"
    if event is not ...:
        assert m["event"] == event, f"{label}: event {show(m)}"


def assert_consecutive(envs: list[dict], label: str, first_seq: int | None = None) -> None:
    """``seq`` +1 per envelope and one ``epoch`` (the envelopes of one group)."""
    assert envs, f"{label}: no envelopes"
    epoch = envs[0].get("epoch")
    assert isinstance(epoch, str) and epoch, f"{label}: epoch {show(envs[0])}"
    if first_seq is not None:
        assert envs[0].get("seq") == first_seq, f"{label}: first seq {envs[0].get('seq')} != {first_seq}"
    for i, m in enumerate(envs):
        assert isinstance(m.get("seq"), int), f"{label}: seq of #{i}: {show(m)}"
        assert m["epoch"] == epoch, f"{label}: epoch of #{i}"
        if i:
            assert m["seq"] == envs[i - 1]["seq"] + 1, f"{label}: seqs {[e['seq'] for e in envs]}"


def canon(xs: list[Any]) -> list[str]:
    return sorted(json.dumps(x, sort_keys=True) for x in xs)


# ---------------------------------------------------------------------------
# A plain WebSocket client of the stream port
# ---------------------------------------------------------------------------


class StreamSocket:
    """Reads every frame on a thread of its own; tests wait for frames with ``next``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws = ws_connect(url, open_timeout=T, max_size=None, compression=None, proxy=None,
                             ping_interval=None, close_timeout=2)
        self.frames: list[Any] = []
        self.cond = threading.Condition()
        self.close_code: int | None = None
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.ws.recv()
            except ConnectionClosed:
                break
            except Exception:  # noqa: BLE001 - anything else also ends the reader
                break
            if isinstance(msg, bytes):
                item: Any = {"__binary__": msg}
            else:
                try:
                    item = json.loads(msg)
                except ValueError:
                    item = {"__text__": msg}
            with self.cond:
                self.frames.append(item)
                self.cond.notify_all()
        with self.cond:
            self.close_code = self.ws.close_code
            self.closed.set()
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.frames)

    def messages(self, since: int = 0) -> list[Any]:
        with self.cond:
            return list(self.frames[since:])

    def envelopes(self, since: int = 0) -> list[dict]:
        return [m for m in self.messages(since) if is_envelope(m)]

    def next(self, pred: Callable[[Any], bool], since: int = 0, timeout: float = T, what: str = "matching frame") -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.frames[since:]:
                    if pred(m):
                        return m
                if self.closed.is_set():
                    pytest.fail(f"socket closed ({self.close_code}) while waiting for {what}; got {show(self.frames, 2000)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"timed out after {timeout}s waiting for {what}; got {show(self.frames[since:], 2000)}")
                self.cond.wait(remaining)

    def send(self, message: Any) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def wait_closed(self, timeout: float = T) -> int | None:
        assert self.closed.wait(timeout), f"socket {self.url} not closed within {timeout}s"
        return self.close_code

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self.closed.wait(5)


def group_path(stream: str, group: str, item: str | None = None) -> str:
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    return f"/stream/{q(stream)}/{q(group)}" + ("" if item is None else f"/{q(item)}")


# ---------------------------------------------------------------------------
# Stream calls through the SDK
# ---------------------------------------------------------------------------


class Streams:
    def __init__(self, client: Any) -> None:
        self.client = client

    def call(self, function_id: str, payload: Any, **extra: Any) -> Any:
        return self.client.trigger({"function_id": function_id, "payload": payload, **extra})

    def set(self, s: str, g: str, i: str, data: Any) -> Any:
        return self.call("stream::set", {"stream_name": s, "group_id": g, "item_id": i, "data": data})

    def get(self, s: str, g: str, i: str) -> Any:
        return self.call("stream::get", {"stream_name": s, "group_id": g, "item_id": i})

    def delete(self, s: str, g: str, i: str) -> Any:
        return self.call("stream::delete", {"stream_name": s, "group_id": g, "item_id": i})

    def update(self, s: str, g: str, i: str, ops: list) -> Any:
        return self.call("stream::update", {"stream_name": s, "group_id": g, "item_id": i, "ops": ops})

    def list(self, s: str, g: str) -> Any:
        return self.call("stream::list", {"stream_name": s, "group_id": g})

    def groups(self, s: str) -> Any:
        return self.call("stream::list_groups", {"stream_name": s})

    def all(self) -> Any:
        return self.call("stream::list_all", {})

    def send(self, s: str, g: str, **fields: Any) -> Any:
        return self.call("stream::send", {"stream_name": s, "group_id": g, **fields})

    def fails(self, function_id: str, payload: Any, code: str) -> InvocationError:
        try:
            got = self.call(function_id, payload)
        except InvocationError as err:
            assert err.code == code, f"{function_id} {show(payload, 200)}: expected {code}, got {err.code}: {err.message}"
            assert err.message, f"{function_id}: empty error message"
            return err
        pytest.fail(f"{function_id} {show(payload, 200)} must fail with {code}, got {show(got, 200)}")


class Env:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writer = register_worker(engine.worker_url, InitOptions(worker_name=uniq("py-stream-writer-")))
        self.sub = register_worker(engine.worker_url, InitOptions(worker_name=uniq("py-stream-sub-")))
        self.S = Streams(self.writer)
        self.sockets: list[StreamSocket] = []
        self.ready()

    def ready(self) -> None:
        """Registrations of one connection apply in order: a probe registered last proves the rest."""
        probe = f"{uniq('pyprobe')}::ready"
        self.sub.register_function(probe, lambda data: "ready")
        wait_for_function(self.writer, probe)

    @property
    def base(self) -> str:
        return self.engine.stream_url.rstrip("/")

    def sock(self, path: str) -> StreamSocket:
        s = StreamSocket(f"{self.base}{path}")
        self.sockets.append(s)
        return s

    def triggers(self) -> list[dict]:
        return self.writer.trigger({"function_id": "engine::triggers::list", "payload": {"include_internal": True}})["triggers"]

    def bind(self, type_: str, config: Any, on_call: Callable[[dict], Any] | None = None, prefix: str = "pywatch"):
        """A recording handler on ``sub`` bound to a trigger of ``type_``; returns (id, rec, trigger)."""
        fn_id = f"{uniq(prefix)}::handler"
        rec = Recorder()

        def handler(data):
            rec.push(data)
            return on_call(data) if on_call else None

        self.sub.register_function(fn_id, handler)
        trig = self.sub.register_trigger({"type": type_, "function_id": fn_id, "config": config})
        wait_for(lambda: any(t["function_id"] == fn_id and t["trigger_type"] == type_ for t in self.triggers()), T,
                 what=f"{type_} trigger for {fn_id} listed")
        return fn_id, rec, trig

    def join(self, sock: StreamSocket, data: dict) -> dict:
        """Joins on a ``/`` socket and waits for the answer (sync or unauthorized)."""
        since = sock.mark()
        sock.send({"type": "join", "data": data})
        return sock.next(lambda m: is_envelope(m) and event_type(m) in ("sync", "unauthorized")
                         and m["streamName"] == data["streamName"] and m["groupId"] == data["groupId"],
                         since, what=f"answer to join {show(data)}")

    def until_marker(self, sock: StreamSocket, stream: str, group: str, since: int = 0,
                     id: str | None = None) -> tuple[list[dict], dict]:
        """Sends a marker on the group; returns what ``sock`` got from ``since`` before it, and the marker."""
        name = uniq("marker-")
        fields: dict[str, Any] = {"type": name, "data": None}
        if id is not None:
            fields["id"] = id
        self.S.send(stream, group, **fields)
        marker = sock.next(named(name), since, what=f"marker {name}")
        envs = sock.envelopes(since)
        return envs[:envs.index(marker)], marker

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        shutdown_client(self.sub)
        shutdown_client(self.writer)
        self.engine.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    e = Env(Engine(data_dir=base / "data", log_path=base / "engine.log").start())
    yield e
    e.close()
    print(e.engine.log_tail(40))


# ---------------------------------------------------------------------------
# Functions and envelopes
# ---------------------------------------------------------------------------


def test_stream_functions_registered(env):
    ids = {f["function_id"] for f in env.S.call("engine::functions::list", {})["functions"]}
    for fid in STREAM_FUNCTIONS:
        assert fid in ids, f"{fid} missing from engine::functions::list"


def test_set_get_update_delete_and_root_subscriber(env):
    """§10 2–6: results, and the envelopes of a ``/`` subscriber."""
    S, s, g = env.S, uniq("py-items-"), "g1"
    c = env.sock("/")
    sync = env.join(c, {"subscriptionId": "sub-1", "streamName": s, "groupId": g})
    assert_envelope(sync, s, g, None, {"type": "sync", "data": []}, "check 2")
    assert isinstance(sync.get("seq"), int) and isinstance(sync.get("epoch"), str), show(sync)
    since = c.mark()

    assert S.set(s, g, "a", {"v": 1}) == {"old_value": None, "new_value": {"v": 1}}
    assert S.set(s, g, "a", {"v": 2}) == {"old_value": {"v": 1}, "new_value": {"v": 2}}
    assert S.get(s, g, "a") == {"v": 2}
    assert S.get(s, g, "missing") is None
    assert S.get(uniq("py-never-"), "g", "x") is None
    assert S.update(s, g, "b", [{"type": "increment", "path": "n", "by": 1}]) == {"old_value": None, "new_value": {"n": 1}}
    assert S.update(s, g, "b", [{"type": "increment", "path": "n", "by": 2}, {"type": "set", "path": "tag", "value": "x"}]) == {
        "old_value": {"n": 1}, "new_value": {"n": 3, "tag": "x"}}
    u3 = S.update(s, g, "b", [{"type": "merge", "value": [1]}])
    assert [e["code"] for e in u3.get("errors", [])] == ["merge.value.not_an_object"], show(u3)
    assert u3["new_value"] == {"n": 3, "tag": "x"}
    assert S.delete(s, g, "a") == {"old_value": {"v": 2}}
    assert S.get(s, g, "a") is None
    assert S.delete(s, g, "a") == {"old_value": None}, "delete of a missing item"

    got, _ = env.until_marker(c, s, g, since)
    expected = [
        ("a", {"type": "create", "data": {"v": 1}}),
        ("a", {"type": "update", "data": {"v": 2}}),
        ("b", {"type": "create", "data": {"n": 1}}),
        ("b", {"type": "update", "data": {"n": 3, "tag": "x"}}),
        ("b", {"type": "update", "data": {"n": 3, "tag": "x"}}),
        ("a", {"type": "delete", "data": {"v": 2}}),
    ]
    assert [(m["id"], m["event"]) for m in got] == expected, f"one envelope per change, none for the missing delete: {show(got, 3000)}"
    for i, m in enumerate(got):
        assert_envelope(m, s, g, expected[i][0], label=f"event #{i}")
    assert_consecutive(got, "events after the sync", sync["seq"] + 1)
    assert got[0]["epoch"] == sync["epoch"]

    item_sync = env.join(c, {"subscriptionId": "sub-2", "streamName": s, "groupId": g, "id": "b"})
    assert_envelope(item_sync, s, g, "b", {"type": "sync", "data": {"n": 3, "tag": "x"}}, "check 3")
    missing = env.join(c, {"subscriptionId": "sub-3", "streamName": s, "groupId": g, "id": "nope"})
    assert_envelope(missing, s, g, "nope", {"type": "sync", "data": None}, "check 3: missing item")
    assert env.join(c, {"subscriptionId": "sub-4", "streamName": s, "groupId": g})["event"]["data"] == [{"n": 3, "tag": "x"}]


def test_input_validation(env):
    S, s = env.S, uniq("py-bad-")
    S.fails("stream::set", {"stream_name": s, "group_id": "g", "data": 1}, D)
    S.fails("stream::set", {"stream_name": s, "group_id": "g", "item_id": "i"}, D)
    S.fails("stream::get", {"group_id": "g", "item_id": "i"}, D)
    S.fails("stream::list", {"stream_name": s}, D)
    S.fails("stream::send", {"stream_name": s, "group_id": "g", "type": "x"}, D)
    S.fails("stream::send", {"stream_name": s, "group_id": "g", "type": 5, "data": 1}, D)
    S.fails("stream::list_all", "nope", D)
    S.fails("stream::set", {"stream_name": "", "group_id": "g", "item_id": "i", "data": 1}, "INVALID_STREAM_ADDRESS")
    S.fails("stream::set", {"stream_name": s, "group_id": "g" * 257, "item_id": "i", "data": 1}, "INVALID_STREAM_ADDRESS")
    S.fails("stream::set", {"stream_name": s, "group_id": "g", "item_id": "i" * 1025, "data": 1}, "INVALID_STREAM_ADDRESS")
    S.fails("stream::send", {"stream_name": "s" * 257, "group_id": "g", "type": "t", "data": 1}, "INVALID_STREAM_ADDRESS")
    assert S.set(s, "g" * 256, "i" * 1024, 1) == {"old_value": None, "new_value": 1}, "limits are inclusive"
    assert S.list(s, "g") == []


def test_list_list_groups_list_all(env):
    """§10 11–12."""
    S = env.S
    s, s2 = uniq("py-lists-b-"), uniq("py-lists-a-")
    for i in ["c", "a", "b"]:
        S.set(s, "g-2", i, {"id": i})
    S.set(s, "g-1", "x", 1)
    S.set(s2, "only", "y", 2)
    assert S.list(s, "g-2") == [{"id": "c"}, {"id": "a"}, {"id": "b"}], "values only, insertion order"
    assert S.list(s, "no-such-group") == []
    assert S.groups(s) == ["g-1", "g-2"], "a bare sorted array"
    assert S.groups(uniq("py-nothing-")) == []
    everything = S.all()
    assert sorted(everything) == ["count", "stream"], show(everything)
    assert everything["count"] == len(everything["stream"])
    ids = [x["id"] for x in everything["stream"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {"id": s, "groups": ["g-1", "g-2"]} in everything["stream"]
    assert {"id": s2, "groups": ["only"]} in everything["stream"]
    for x in everything["stream"]:
        assert x["groups"] == sorted(x["groups"]), x


def test_send_names_ids_and_void(env):
    """§10 7–9, R2, R3."""
    S, s, g = env.S, uniq("py-send-"), "room"
    group = env.sock(group_path(s, g))
    item = env.sock(group_path(s, g, "it"))
    other = env.sock(group_path(s, "elsewhere"))
    assert S.send(s, g, type="ping", data={"x": 1}) is None
    assert S.send(s, g, event_type="todo_changed", data={"action": "created"}) is None
    assert S.send(s, g, type="wins", event_type="loses", data=2) is None
    assert S.send(s, g, data="no name") is None
    assert S.send(s, g, type="for-item", id="it", data=[1]) is None
    assert S.send(s, g, type="for-other-item", id="other", data=None) is None
    env.writer.trigger({"function_id": "stream::send", "action": TriggerAction.Void(),
                        "payload": {"stream_name": s, "group_id": g, "id": "change-1", "event_type": "todo_changed",
                                    "data": {"action": "void"}}})
    group.next(lambda m: named("todo_changed")(m) and m["id"] == "change-1", what="the Void send")
    got = group.envelopes()

    def ev(name, data):
        return {"type": "event", "event": {"type": name, "data": data}}

    assert [(m["id"], m["event"]) for m in got] == [
        (None, ev("ping", {"x": 1})),
        (None, ev("todo_changed", {"action": "created"})),
        (None, ev("wins", 2)),
        (None, ev("message", "no name")),
        ("it", ev("for-item", [1])),
        ("other", ev("for-other-item", None)),
        ("change-1", ev("todo_changed", {"action": "void"})),
    ], show(got, 3000)
    for m in got:
        assert_envelope(m, s, g, m["id"])
    assert_consecutive(got, "sends")
    item_got, _ = env.until_marker(item, s, g, 0, "it")
    assert [m["event"]["event"]["type"] for m in item_got] == ["for-item"], "item subscriber: sends with its id only"
    other_got, _ = env.until_marker(other, s, "elsewhere")
    assert other_got == []


# ---------------------------------------------------------------------------
# URL forms
# ---------------------------------------------------------------------------


def test_path_form_no_sync_sync_true_trailing_slash_item(env):
    """R1; §10 21, 22, 24, 26."""
    S, s, g = env.S, uniq("py-path-"), "all"
    S.set(s, g, "x", {"v": 1})
    S.set(s, g, "y", {"v": 2})
    c1 = env.sock(group_path(s, g))
    S.send(s, g, event_type="todo_changed", data={"action": "created"})  # right after open
    first = c1.next(is_envelope, what="first frame")
    assert_envelope(first, s, g, None, {"type": "event", "event": {"type": "todo_changed", "data": {"action": "created"}}},
                    "check 21/26: the event, no sync before it")

    slash = env.sock(group_path(s, g) + "/")
    synced = env.sock(group_path(s, g) + "?sync=true")
    item_x = env.sock(group_path(s, g, "x"))
    item_x_sync = env.sock(group_path(s, g, "x") + "/?sync=true")
    missing_sync = env.sock(group_path(s, g, "nope") + "?sync=true")
    sync_frame = synced.next(is_envelope, what="sync frame")
    assert_envelope(sync_frame, s, g, None, {"type": "sync", "data": [{"v": 1}, {"v": 2}]}, "check 22")
    assert sync_frame.get("snapshot") in (None, False)
    assert_envelope(item_x_sync.next(is_envelope, what="item sync"), s, g, "x", {"type": "sync", "data": {"v": 1}})
    assert_envelope(missing_sync.next(is_envelope, what="missing item sync"), s, g, "nope", {"type": "sync", "data": None})

    S.set(s, g, "y", {"v": 3})
    S.set(s, g, "x", {"v": 4})
    S.delete(s, g, "x")
    changes = [("y", "update", {"v": 3}), ("x", "update", {"v": 4}), ("x", "delete", {"v": 4})]

    def tup(m):
        return (m["id"], m["event"]["type"], m["event"]["data"])

    assert [tup(m) for m in no_markers(env.until_marker(slash, s, g)[0])] == changes
    assert [tup(m) for m in no_markers(env.until_marker(synced, s, g)[0])] == [(None, "sync", [{"v": 1}, {"v": 2}])] + changes
    c1_raw, _ = env.until_marker(c1, s, g)
    c1_got = no_markers(c1_raw)
    assert not [m for m in c1_got if is_sync(m)]
    assert [tup(m) for m in c1_got[1:]] == changes
    assert_consecutive(c1_raw, "path-form envelopes")
    x_changes = [t for t in changes if t[0] == "x"]
    assert [tup(m) for m in no_markers(env.until_marker(item_x, s, g, 0, "x")[0])] == x_changes, "check 24"
    assert [tup(m) for m in no_markers(env.until_marker(item_x_sync, s, g, 0, "x")[0])] == [("x", "sync", {"v": 1})] + x_changes


def test_path_form_percent_decoding_and_extra_join(env):
    """R1 rules 1 and 7; §10 23."""
    S, s = env.S, uniq("py pct ✓-")
    c = env.sock(f"/stream/{urllib.parse.quote(s, safe='')}/room%201/caf%C3%A9")
    slash_group = env.sock(f"/stream/{urllib.parse.quote(s, safe='')}/a%2Fb/")
    S.set(s, "room 1", "café", {"ok": 1})
    S.set(s, "room 1", "other", {"ok": 2})
    S.set(s, "a/b", "k", {"ok": 3})
    assert_envelope(c.next(is_event, what="room 1 / café"), s, "room 1", "café", {"type": "create", "data": {"ok": 1}}, "check 23")
    assert_envelope(slash_group.next(is_event, what="a/b"), s, "a/b", "k", {"type": "create", "data": {"ok": 3}})
    assert [m["id"] for m in env.until_marker(c, s, "room 1", 0, "café")[0]] == ["café"]
    extra = env.join(c, {"subscriptionId": "extra", "streamName": s, "groupId": "a/b"})
    assert_envelope(extra, s, "a/b", None, {"type": "sync", "data": [{"ok": 3}]}, "join on a path socket")
    since = c.mark()
    S.set(s, "a/b", "k2", 4)
    assert c.next(lambda m: is_event(m) and m["groupId"] == "a/b", since, what="event of the joined group")["id"] == "k2"


def test_overlapping_subscriptions_duplicate(env):
    """§10 10."""
    S, s = env.S, uniq("py-dup-")
    c = env.sock("/")
    env.join(c, {"subscriptionId": "group", "streamName": s, "groupId": "g"})
    env.join(c, {"subscriptionId": "item", "streamName": s, "groupId": "g", "id": "x"})
    since = c.mark()
    S.set(s, "g", "x", 1)
    S.set(s, "g", "y", 2)
    got, _ = env.until_marker(c, s, "g", since)
    assert [m["id"] for m in got] == ["x", "x", "y"], show(got, 2000)
    assert got[0] == got[1]
    c.send({"type": "leave", "data": {"subscriptionId": "item", "streamName": s, "groupId": "g"}})
    since = c.mark()
    S.set(s, "g", "x", 3)
    got, _ = env.until_marker(c, s, "g", since)
    assert [(m["id"], m["event"]["data"]) for m in got] == [("x", 3)], "one copy after the leave"


def test_rejoin_with_same_subscription_id_replaces_it(env):
    """§4.3: joining with an existing subscriptionId replaces that subscription."""
    S, s = env.S, uniq("py-rejoin-")
    c = env.sock("/")
    env.join(c, {"subscriptionId": "z", "streamName": s, "groupId": "g1"})
    env.join(c, {"subscriptionId": "z", "streamName": s, "groupId": "g1"})
    since = c.mark()
    S.set(s, "g1", "k", 1)
    assert [m["id"] for m in env.until_marker(c, s, "g1", since)[0]] == ["k"], "same group twice: one copy"

    env.join(c, {"subscriptionId": "z", "streamName": s, "groupId": "g2"})
    since = c.mark()
    S.set(s, "g1", "k", 2)
    S.set(s, "g2", "k", 3)
    assert c.next(lambda m: is_event(m) and m["groupId"] == "g2", since, what="event of the new group")["event"]["data"] == 3
    # A marker on g2 (which z now follows) comes after everything published before it.
    got, _ = env.until_marker(c, s, "g2", since)
    assert [m for m in got if m["groupId"] == "g1"] == [], f"subscription z moved to g2: nothing from g1, got {show(got, 1500)}"

    c.send({"type": "leave", "data": {"subscriptionId": "z", "streamName": s, "groupId": "g2"}})
    probe = env.sock("/")
    env.join(probe, {"subscriptionId": "p", "streamName": s, "groupId": "g1"})
    since = c.mark()
    S.set(s, "g1", "k", 4)
    probe.next(lambda m: is_event(m) and m["event"]["data"] == 4, what="probe got the g1 event")
    S.set(s, "g2", "k", 5)
    env.until_marker(probe, s, "g1")
    assert c.envelopes(since) == [], "nothing after the leave"


def test_unknown_paths_404_and_plain_http(env):
    """§10 1, docs: 404 {error, code: NOT_FOUND}; plain HTTP on / → 426."""
    assert env.sock("/").ws is not None
    assert env.sock("/stream/a/b").ws is not None
    http_base = "http" + env.base[len("ws"):]
    for p in ["/other", "/stream", "/stream/", "/stream/a", "/stream/a/", "/stream//b", "/stream/a//b", "/stream/a/b/c/d",
              "/streams/a/b"]:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(f"{env.base}{p}", open_timeout=T, proxy=None)
        assert info.value.response.status_code == 404, p
        r = http_request("GET", f"{http_base}{p}")
        assert r.status == 404, p
        body = r.json()
        assert body.get("code") == "NOT_FOUND" and isinstance(body.get("error"), str), (p, body)
    assert http_request("GET", f"{http_base}/").status == 426


# ---------------------------------------------------------------------------
# seq / epoch / resume (Trine additions)
# ---------------------------------------------------------------------------


def test_seq_and_epoch_per_group(env):
    S, s = env.S, uniq("py-seq-")
    g1, g2 = env.sock(group_path(s, "g1")), env.sock(group_path(s, "g2"))
    x = env.sock(group_path(s, "g1", "x"))
    for i in range(4):
        S.set(s, "g1", "x" if i % 2 else "y", i)
        S.send(s, "g2", type="tick", data=i)
        S.update(s, "g2", "z", [{"type": "increment", "path": "n", "by": 1}])
    S.send(s, "g1", type="tick", id="x", data="x")
    S.delete(s, "g1", "x")
    e1, _ = env.until_marker(g1, s, "g1")
    e2, _ = env.until_marker(g2, s, "g2")
    assert len(e1) == 6 and len(e2) == 8
    assert_consecutive(e1, "g1")
    assert_consecutive(e2, "g2")
    ex, _ = env.until_marker(x, s, "g1", 0, "x")
    assert ex == [m for m in e1 if m["id"] == "x"], "item subscriber: the same envelopes, same seq/epoch"


def test_resume_replays_missed_events_and_unknown_epoch_snapshots(env):
    S, s, g = env.S, uniq("py-resume-"), "all"
    witness = env.sock(group_path(s, g))
    c = env.sock(group_path(s, g))
    S.set(s, g, "a", 1)
    S.set(s, g, "b", 2)
    S.send(s, g, type="hello", data=0)
    seen, c_marker = env.until_marker(c, s, g)
    assert len(seen) == 3
    epoch = seen[0]["epoch"]
    c.close()

    S.set(s, g, "a", 10)
    S.update(s, g, "c", [{"type": "set", "path": "k", "value": "v"}])
    S.send(s, g, type="while-away", data={"n": 1})
    S.delete(s, g, "b")
    w1, w_marker = env.until_marker(witness, s, g)
    assert w1[:3] == seen and w1[3] == c_marker
    missed = w1[4:]
    assert [(m["id"], m["event"]["type"]) for m in missed] == [("a", "update"), ("c", "create"), (None, "event"), ("b", "delete")]
    tail = missed + [w_marker]
    assert_consecutive(seen + [c_marker] + tail, "the group")

    def resume_url(seq, e):
        return f"{group_path(s, g)}?last_seq={seq}&epoch={urllib.parse.quote(e, safe='')}"

    r = env.sock(resume_url(c_marker["seq"], epoch))
    wait_for(lambda: len(r.envelopes()) >= len(tail), T, what="replayed envelopes")
    assert r.envelopes() == tail, "exactly the missed envelopes (same seq, epoch, timestamp), no sync"

    current = env.sock(resume_url(w_marker["seq"], epoch))
    joined = env.sock("/")
    joined.send({"type": "join", "data": {"subscriptionId": "r", "streamName": s, "groupId": g,
                                          "lastSeq": missed[1]["seq"], "epoch": epoch}})
    stale = env.sock(resume_url(1, "not-an-epoch"))
    stale_join = env.sock("/")
    stale_join.send({"type": "join", "data": {"subscriptionId": "q", "streamName": s, "groupId": g, "lastSeq": 1,
                                              "epoch": "not-an-epoch"}})
    snap = stale.next(is_envelope, what="snapshot sync (path)")
    snap2 = stale_join.next(is_envelope, what="snapshot sync (join)")
    joined.next(lambda m: is_envelope(m) and m.get("seq") == w_marker["seq"], what="replay on the / join")

    S.set(s, g, "live", True)
    live = witness.next(lambda m: is_event(m) and m["id"] == "live", what="live event")
    assert live["seq"] == w_marker["seq"] + 1

    r_all, r_marker = env.until_marker(r, s, g)
    assert r_all == tail + [live], "replay, then live: no gap, no duplicate"
    current_all, _ = env.until_marker(current, s, g)
    assert current_all[:2] == [live, r_marker], "nothing replayed when nothing was missed"
    joined_all, _ = env.until_marker(joined, s, g)
    assert joined_all[:4] == tail[2:] + [live], "/ join resume replays after lastSeq"
    assert not [m for m in joined_all if is_sync(m)]
    assert_consecutive(joined_all, "/ resume", missed[2]["seq"])

    for label, m, sock in [("path", snap, stale), ("join", snap2, stale_join)]:
        assert_envelope(m, s, g, None, label=f"{label} snapshot")
        assert event_type(m) == "sync" and m.get("snapshot") is True, f"{label}: {show(m)}"
        assert m["event"]["data"] == [10, {"k": "v"}], f"{label}: the group's current values"
        assert m["epoch"] == epoch
        assert m["seq"] == w_marker["seq"], f"{label}: the position when the client attached"
        got, _ = env.until_marker(sock, s, g)
        assert got[0] == m and got[1] == live
        assert len([x for x in got if is_sync(x)]) == 1
        assert_consecutive(got, f"{label}: snapshot + live")


# ---------------------------------------------------------------------------
# Trigger types
# ---------------------------------------------------------------------------


def test_stream_triggers_receive_the_envelope(env):
    """§5.1; §10 17: exactly the pushed envelope without seq/epoch, incl. stream::send; filters."""
    S, s = env.S, uniq("py-trig-")
    cond = f"{uniq('pycond')}::check"
    env.sub.register_function(cond, lambda data: data.get("id") != "b")
    binds = {
        "room1": env.bind("stream", {"stream_name": s, "group_id": "room-1"}),
        "room2": env.bind("stream", {"stream_name": s, "group_id": "room-2"}),
        "any": env.bind("stream", {"stream_name": s}),
        "empty": env.bind("stream", {"stream_name": s, "group_id": "", "item_id": ""}),
        "item_a": env.bind("stream", {"stream_name": s, "item_id": "a"}),
        "cond": env.bind("stream", {"stream_name": s, "group_id": "room-1", "condition_function_id": cond}),
        "other": env.bind("stream", {"stream_name": f"{s}-other"}),
    }
    rec = {k: v[1] for k, v in binds.items()}
    c = env.sock(group_path(s, "room-1"))
    S.set(s, "room-1", "a", {"v": 1})
    S.set(s, "room-1", "a", {"v": 2})
    S.update(s, "room-1", "b", [{"type": "increment", "path": "n", "by": 1}])
    S.delete(s, "room-1", "a")
    S.delete(s, "room-1", "never")
    S.send(s, "room-1", type="ping", data={"x": 1})
    S.send(s, "room-1", event_type="todo_changed", id="a", data={"action": "created"})
    pushed = wait_for(lambda: (lambda e: e if len(e) >= 6 else None)(c.envelopes()), T, what="six envelopes")
    assert len(pushed) == 6
    expected = [strip(m) for m in pushed]

    wait_for(lambda: rec["room1"].count >= 6, T, what="room-1 trigger")
    assert canon(rec["room1"].snapshot()) == canon(expected), "exactly the socket envelopes without seq/epoch"
    for p in rec["room1"].snapshot():
        assert "seq" not in p and "epoch" not in p
    for item in ["a", "b", None]:
        assert [p for p in rec["room1"].snapshot() if p["id"] == item] == [p for p in expected if p["id"] == item], \
            f"in order per item {item}"
    wait_for(lambda: rec["any"].count >= 6 and rec["empty"].count >= 6 and rec["item_a"].count >= 4
             and rec["cond"].count >= 5, T, what="the other triggers")
    S.set(s, "room-2", "z", "z")
    wait_for(lambda: rec["room2"].count >= 1 and rec["any"].count >= 7 and rec["empty"].count >= 7, T, what="room-2 event")
    assert [(p["groupId"], p["id"], p["event"]) for p in rec["room2"].snapshot()] == [("room-2", "z", {"type": "create", "data": "z"})]
    assert rec["room1"].count == 6 and rec["any"].count == 7 and rec["empty"].count == 7
    assert canon(rec["item_a"].snapshot()) == canon([p for p in expected if p["id"] == "a"])
    assert canon(rec["cond"].snapshot()) == canon([p for p in expected if p["id"] != "b"]), "condition false skips b"
    assert rec["other"].count == 0
    for _, _, trig in binds.values():
        trig.unregister()


def test_stream_trigger_without_stream_name_fails(env, caplog):
    """§10 18: trigger_registration_failed (the reference panicked)."""
    fn_id = f"{uniq('pynostream')}::fn"
    with ws_connect(env.engine.worker_url, max_size=None, proxy=None) as ws:
        ws.send(json.dumps({"type": "registerfunction", "id": fn_id}))
        cases = [("stream", c) for c in ({"group_id": "g"}, {}, None, {"stream_name": 5}, "chat")]
        cases += [("stream:join", {"stream_name": 5}), ("stream:leave", "chat")]
        for trigger_type, config in cases:
            tid = str(uuid.uuid4())
            ws.send(json.dumps({"type": "registertrigger", "id": tid, "trigger_type": trigger_type,
                                "function_id": fn_id, "config": config}))
            deadline = time.monotonic() + T
            report = None
            while report is None:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no triggerregistrationresult for config {config!r}"
                msg = json.loads(ws.recv(timeout=remaining))
                if msg.get("type") == "triggerregistrationresult" and msg.get("id") == tid:
                    report = msg
            assert (report.get("error") or {}).get("code") == "trigger_registration_failed", (trigger_type, config, report)
    sdk_fn = f"{uniq('pysdk-nostream')}::fn"
    env.sub.register_function(sdk_fn, lambda data: None)
    wait_for_function(env.writer, sdk_fn)
    env.S.fails("engine::register_trigger", {"trigger_type": "stream", "function_id": sdk_fn, "config": {"group_id": "g"}},
                "trigger_registration_failed")
    caplog.set_level("ERROR", logger="iii.iii")
    bad = env.sub.register_trigger({"type": "stream", "function_id": sdk_fn, "config": {"group_id": "g"}})
    wait_for(lambda: any("Trigger registration failed" in r.getMessage() for r in caplog.records), T,
             what="the SDK logged the registration failure")
    _, _, good = env.bind("stream", {"stream_name": uniq("py-later-")})
    assert not [t for t in env.triggers() if t["function_id"] in (fn_id, sdk_fn)], "failed registrations are not listed"
    bad.unregister()
    good.unregister()


def test_join_trigger_on_root_socket(env):
    """§5.2; §10 13: payload, refusal, non-boolean/failing handlers admit, stream_name filter."""
    S, s = env.S, uniq("py-join-")

    def decide(p):
        if p["group_id"] == "boom":
            raise RuntimeError("join handler failed")
        if p["group_id"] == "weird":
            return {"unauthorized": "true"}
        return {"unauthorized": p["group_id"].startswith("secret")}

    _, joins, trig = env.bind("stream:join", {"stream_name": s}, decide, prefix="pyonjoin")
    c = env.sock("/")
    refused = env.join(c, {"subscriptionId": "j1", "streamName": s, "groupId": "secret"})
    assert_envelope(refused, s, "secret", None, {"type": "unauthorized"}, "check 13")
    refused_item = env.join(c, {"subscriptionId": "j2", "streamName": s, "groupId": "secret-2", "id": "it"})
    assert_envelope(refused_item, s, "secret-2", "it", {"type": "unauthorized"})
    assert env.join(c, {"subscriptionId": "j3", "streamName": s, "groupId": "open", "id": "it"})["event"]["type"] == "sync"
    assert env.join(c, {"subscriptionId": "j4", "streamName": s, "groupId": "weird"})["event"]["type"] == "sync"
    assert env.join(c, {"subscriptionId": "j5", "streamName": s, "groupId": "boom"})["event"]["type"] == "sync"
    assert joins.snapshot()[:3] == [
        {"subscription_id": "j1", "stream_name": s, "group_id": "secret", "id": None, "context": None},
        {"subscription_id": "j2", "stream_name": s, "group_id": "secret-2", "id": "it", "context": None},
        {"subscription_id": "j3", "stream_name": s, "group_id": "open", "id": "it", "context": None},
    ]
    assert joins.count == 5
    assert env.join(c, {"subscriptionId": "j6", "streamName": f"{s}-other", "groupId": "secret"})["event"]["type"] == "sync"
    assert joins.count == 5, "stream_name filter honoured"
    since = c.mark()
    S.set(s, "secret", "it", 1)
    S.set(s, "secret-2", "it", 1)
    got, _ = env.until_marker(c, s, "open", since, "it")
    assert got == [], f"nothing for refused subscriptions: {show(got)}"
    trig.unregister()


def test_join_trigger_on_path_form_and_leave(env):
    """R1 rules 3–4; §10 25, 27."""
    s = uniq("py-pjoin-")

    def decide(p):
        if "held" in p["group_id"]:
            payload = {"stream_name": s, "group_id": p["group_id"], "type": "during-join", "data": p["group_id"]}
            if p.get("id"):
                payload["id"] = p["id"]
            env.sub.trigger({"function_id": "stream::send", "payload": payload})
        return {"unauthorized": p["group_id"].startswith("secret")}

    _, joins, jt = env.bind("stream:join", {"stream_name": s}, decide, prefix="pyonpjoin")
    _, leaves, lt = env.bind("stream:leave", {"stream_name": s}, prefix="pyonpleave")
    refused = env.sock(group_path(s, "secret"))
    assert refused.wait_closed() == 1008
    frames = refused.envelopes()
    assert len(frames) == 1, show(frames)
    assert_envelope(frames[0], s, "secret", None, {"type": "unauthorized"}, "check 25")
    refused_held = env.sock(group_path(s, "secret-held", "it"))
    assert refused_held.wait_closed() == 1008
    assert [(m["id"], event_type(m)) for m in refused_held.envelopes()] == [("it", "unauthorized")], "held event dropped"

    held = env.sock(group_path(s, "held"))
    first = held.next(is_envelope, what="event published during the join")
    assert_envelope(first, s, "held", None, {"type": "event", "event": {"type": "during-join", "data": "held"}}, "R1 rule 4")
    join_of_held = next(p for p in joins.snapshot() if p["group_id"] == "held")
    sid = join_of_held["subscription_id"]
    assert isinstance(sid, str) and len(str(uuid.UUID(sid))) == 36, join_of_held
    assert join_of_held == {"subscription_id": sid, "stream_name": s, "group_id": "held", "id": None, "context": None}
    held.close()
    leave = wait_for(lambda: next((p for p in leaves.snapshot() if p["group_id"] == "held"), None), T, what="leave")
    assert leave == join_of_held, "check 27"
    time.sleep(0.2)
    assert len([p for p in leaves.snapshot() if p["group_id"] == "held"]) == 1
    assert not [p for p in leaves.snapshot() if p["group_id"].startswith("secret")], "no leave for refused joins"
    jt.unregister()
    lt.unregister()


def test_leave_trigger_per_subscription(env):
    """§4.5; §10 16."""
    s = uniq("py-leave-")
    _, leaves, trig = env.bind("stream:leave", {"stream_name": s}, prefix="pyonleave")
    c = env.sock("/")
    env.join(c, {"subscriptionId": "l1", "streamName": s, "groupId": "g"})
    env.join(c, {"subscriptionId": "l2", "streamName": s, "groupId": "g", "id": "x"})
    env.join(c, {"subscriptionId": "l3", "streamName": s, "groupId": "g2"})
    env.join(c, {"subscriptionId": "l4", "streamName": f"{s}-other", "groupId": "g"})
    c.send({"type": "leave", "data": {"subscriptionId": "l3", "streamName": s, "groupId": "g2"}})
    wait_for(lambda: leaves.count >= 1, T, what="leave for l3")
    assert leaves.snapshot() == [{"subscription_id": "l3", "stream_name": s, "group_id": "g2", "id": None, "context": None}]
    c.close()
    wait_for(lambda: leaves.count >= 3, T, what="leaves on close")
    time.sleep(0.2)
    assert sorted(leaves.snapshot(), key=lambda p: p["subscription_id"]) == [
        {"subscription_id": "l1", "stream_name": s, "group_id": "g", "id": None, "context": None},
        {"subscription_id": "l2", "stream_name": s, "group_id": "g", "id": "x", "context": None},
        {"subscription_id": "l3", "stream_name": s, "group_id": "g2", "id": None, "context": None},
    ]
    trig.unregister()


# ---------------------------------------------------------------------------
# create_stream
# ---------------------------------------------------------------------------


def test_create_stream_overrides(env):
    """§2.0; §10 20."""
    from iii.helpers import create_stream
    from iii_helpers.stream import StreamDeleteResult, StreamSetResult

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from iii.stream import IStream

        store: dict[tuple[str, str], Any] = {("g", "w1"): {"from": "worker"}}
        calls = Recorder()

        class Custom(IStream):
            async def get(self, input):
                calls.push(("get", input.model_dump()))
                return store.get((input.group_id, input.item_id))

            async def set(self, input):
                calls.push(("set", input.model_dump()))
                if input.item_id == "no-result":
                    return None
                old = store.get((input.group_id, input.item_id))
                store[(input.group_id, input.item_id)] = input.data
                return StreamSetResult(old_value=old, new_value=input.data)

            async def delete(self, input):
                calls.push(("delete", input.model_dump()))
                old = store.pop((input.group_id, input.item_id), None)
                return StreamDeleteResult(old_value=old)

            async def list(self, input):
                calls.push(("list", input.model_dump()))
                return [v for (g, _), v in store.items() if g == input.group_id]

            async def list_groups(self, input):
                calls.push(("list_groups", input.model_dump()))
                return sorted({g for g, _ in store})

            async def update(self, input):
                raise RuntimeError("update is not registered by create_stream")

        S, s = env.S, uniq("py-custom-")
        create_stream(env.sub, s, Custom())
    env.ready()
    ids = {f["function_id"] for f in S.call("engine::functions::list", {})["functions"]}
    for op in ["get", "set", "delete", "list", "list_groups"]:
        assert f"stream::{op}({s})" in ids, f"create_stream registered stream::{op}({s})"

    assert S.get(s, "g", "w1") == {"from": "worker"}
    assert calls.snapshot()[-1] == ("get", {"stream_name": s, "group_id": "g", "item_id": "w1"})
    assert S.get(s, "g", "nothing") is None
    assert S.list(s, "g") == [{"from": "worker"}]
    assert S.groups(s) == ["g"]

    c = env.sock("/")
    sync = env.join(c, {"subscriptionId": "cs", "streamName": s, "groupId": "g"})
    assert_envelope(sync, s, "g", None, {"type": "sync", "data": [{"from": "worker"}]}, "group join syncs through list")
    item_sync = env.join(c, {"subscriptionId": "ci", "streamName": s, "groupId": "g", "id": "w1"})
    assert_envelope(item_sync, s, "g", "w1", {"type": "sync", "data": {"from": "worker"}}, "item join syncs through get")
    path_sync = env.sock(group_path(s, "g") + "?sync=true")
    assert path_sync.next(is_envelope, what="path sync")["event"] == {"type": "sync", "data": [{"from": "worker"}]}

    _, watcher, wt = env.bind("stream", {"stream_name": s})
    since = c.mark()
    assert S.set(s, "g", "n1", {"v": 1}) == {"old_value": None, "new_value": {"v": 1}}
    assert S.set(s, "g", "n1", {"v": 2}) == {"old_value": {"v": 1}, "new_value": {"v": 2}}
    assert S.delete(s, "g", "n1") == {"old_value": {"v": 2}}
    assert S.delete(s, "g", "n1") == {"old_value": None}
    S.fails("stream::set", {"stream_name": s, "group_id": "g", "item_id": "no-result", "data": 1}, "STREAM_SET_ERROR")
    assert S.list(s, "g") == [{"from": "worker"}]
    got, _ = env.until_marker(c, s, "g", since)
    assert [(m["id"], m["event"]) for m in got] == [
        ("n1", {"type": "create", "data": {"v": 1}}),
        ("n1", {"type": "update", "data": {"v": 2}}),
        ("n1", {"type": "delete", "data": {"v": 2}}),
    ], show(got, 2000)
    assert_consecutive(got, "override events")
    wait_for(lambda: len(no_markers(watcher.snapshot())) >= 3, T, what="stream trigger got the override events")
    assert no_markers(watcher.snapshot()) == [strip(m) for m in got], "stream triggers fire for the overrides' changes too"
    wt.unregister()


# ---------------------------------------------------------------------------
# Bad client input
# ---------------------------------------------------------------------------


def test_bad_client_input(env):
    """invalid_message error frames keep the socket usable; blank, binary, ping; > 64 KiB → 1009."""
    S, s = env.S, uniq("py-badin-")
    c = env.sock("/")

    def error_after(message, what):
        since = c.mark()
        c.send(message)
        return c.next(lambda m: isinstance(m, dict) and m.get("type") == "error", since, what=what)

    e1 = error_after("{not json", "error for invalid JSON")
    assert e1["error"]["code"] == "invalid_message" and isinstance(e1["error"]["message"], str), e1
    assert error_after({"type": "join", "data": {"subscriptionId": "x", "streamName": s}}, "join without groupId")["error"]["code"] == "invalid_message"
    assert error_after({"type": "join", "data": {"subscriptionId": 1, "streamName": s, "groupId": "g"}}, "numeric id")["error"]["code"] == "invalid_message"
    assert isinstance(error_after({"type": "subscribe", "data": {"subscriptionId": "x", "streamName": s, "groupId": "g"}},
                                  "unknown type")["error"]["code"], str)
    since = c.mark()
    c.send("   ")
    c.send("")
    c.send(json.dumps({"type": "join", "data": {"subscriptionId": "ok", "streamName": s, "groupId": "g"}}).encode())
    assert c.next(is_sync, since, what="sync after a binary join")["streamName"] == s
    assert not [m for m in c.messages(since) if isinstance(m, dict) and m.get("type") == "error"], "blank frames ignored"
    assert c.ws.ping(b"are-you-there").wait(T), "pong"

    since = c.mark()
    c.send({"type": "join", "data": {"subscriptionId": "big", "streamName": s, "groupId": "g2", "pad": "p" * (60 * 1024)}})
    assert c.next(is_sync, since, what="sync for a 60 KiB join")["groupId"] == "g2"
    S.set(s, "g", "k", 1)
    c.next(lambda m: is_event(m) and m["id"] == "k", since, what="event after the bad input")
    try:
        c.send("x" * (70 * 1024))
    except ConnectionClosed:
        pass
    assert c.wait_closed() == 1009

    p = env.sock(group_path(s, "g"))
    p.send("{bad")
    p.next(lambda m: isinstance(m, dict) and m.get("type") == "error" and m["error"].get("code") == "invalid_message",
           what="error frame on a path socket")
    S.set(s, "g", "k", 2)
    assert p.next(lambda m: is_event(m) and m["id"] == "k", what="event after a bad frame")["event"]["data"] == 2
