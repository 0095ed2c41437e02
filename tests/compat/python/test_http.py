"""HTTP triggers bound by a Python 0.25 worker, reached with a real HTTP client.

Spec: http.md H1 (plain return = body), H2 (None → 200 null), H3 (hoisted body
fields), §4.1 (request object), §5 (conditions → 422), §6 (envelope mapping),
§9 (error shape), §15 (checks 1, 3, 4, 5, 9, 10, 12, 22).
"""

from __future__ import annotations

import threading
import time

from conftest import http_request, wait_for, wait_for_function, wait_for_route

REQUEST_FIELDS = ("query_params", "path_params", "headers", "path", "method", "body", "trigger")


def bind_http(client, function_id: str, path: str, method: str, **extra):
    config = {"api_path": path, "http_method": method, **extra}
    return client.register_trigger({"type": "http", "function_id": function_id, "config": config})


def test_route_reaches_handler_with_request_object(engine, worker):
    w = worker("py-http")
    seen: list[dict] = []

    def echo(req):
        seen.append(req)
        return {"seen": {k: req.get(k) for k in REQUEST_FIELDS}}

    w.register_function("pyhttp::echo", echo)
    bind_http(w, "pyhttp::echo", "/py/echo", "GET")

    resp = wait_for_route("GET", f"{engine.http_url}/py/echo?name=Ada&x=1&x=2",
                          headers={"X-Custom": "v"})
    assert resp.status == 200, resp.body
    assert resp.headers.get("content-type", "").startswith("application/json")
    got = resp.json()["seen"]
    assert got["method"] == "GET"
    assert got["path"] == "/py/echo"
    assert got["query_params"]["name"] == "Ada"
    assert got["query_params"]["x"] == "2"  # last value wins (§4.1)
    assert got["path_params"] == {}
    assert got["body"] is None
    assert got["headers"]["x-custom"] == "v"
    assert got["trigger"] == {"type": "http", "path": "/py/echo", "method": "GET"}
    assert seen, "handler was not invoked"


def test_request_object_carries_channel_refs(engine, worker):
    """§4.1: ``request_body`` (read) and ``response`` (write) channel refs.

    The SDK turns well-formed refs ({channel_id, access_key, direction}) into
    reader/writer objects, so their types show that the engine sent both refs
    with the right directions (protocol.md §2.0).
    """
    w = worker("py-http-channels")
    seen: list[dict] = []

    def handler(req):
        seen.append(req)
        return {"ok": True}

    w.register_function("pyhttp::channels", handler)
    bind_http(w, "pyhttp::channels", "/py/channels", "GET")
    assert wait_for_route("GET", f"{engine.http_url}/py/channels").status == 200
    assert seen
    assert type(seen[-1].get("request_body")).__name__ == "ChannelReader"
    assert type(seen[-1].get("response")).__name__ == "ChannelWriter"


def test_path_params(engine, worker):
    w = worker("py-http-params")
    w.register_function("pyhttp::user", lambda req: {"id": req["path_params"]["id"], "path": req["path"]})
    bind_http(w, "pyhttp::user", "/py/users/:id", "GET")

    resp = wait_for_route("GET", f"{engine.http_url}/py/users/42")
    assert resp.status == 200, resp.body
    assert resp.json() == {"id": "42", "path": "/py/users/:id"}

    resp = http_request("GET", f"{engine.http_url}/py/users/a%20b")
    assert resp.status == 200
    assert resp.json()["id"] == "a%20b"  # not percent-decoded (§2.2, §15.15)


def test_lowercase_method_and_hoisted_body_fields(engine, worker):
    w = worker("py-http-hoist")

    def create(req):
        return {
            "title": req.get("title"),
            "method": req.get("method"),
            "body": req.get("body"),
            "priority": req.get("priority"),
        }

    w.register_function("pyhttp::create", create)
    bind_http(w, "pyhttp::create", "/py/todos", "post")  # lower-case method (§15.2)

    payload = {"title": "buy milk", "method": "x", "priority": 3}
    resp = wait_for_route("POST", f"{engine.http_url}/py/todos", json_body=payload)
    assert resp.status == 200, resp.body
    got = resp.json()
    assert got["title"] == "buy milk"  # H3: body key copied to the top level
    assert got["priority"] == 3
    assert got["method"] == "POST"  # request-object fields win over body keys (H3, §15.29)
    assert got["body"] == payload  # body itself unchanged


def test_non_object_body_is_not_hoisted(engine, worker):
    w = worker("py-http-array")
    w.register_function("pyhttp::arr", lambda req: {"body": req.get("body"), "keys": sorted(req.keys())})
    bind_http(w, "pyhttp::arr", "/py/arr", "POST")
    resp = wait_for_route("POST", f"{engine.http_url}/py/arr", json_body=[1, 2])
    assert resp.status == 200, resp.body
    got = resp.json()
    assert got["body"] == [1, 2]
    assert set(got["keys"]) <= set(REQUEST_FIELDS) | {"request_body", "response"}


def test_plain_returns_are_the_body(engine, worker):
    w = worker("py-http-plain")
    returns = {
        "obj": {"a": 1},
        "list": [1, 2],
        "str": "x",
        "num": 7,
        "blog": {"title": "t", "body": "b"},  # body + other key → data, not an envelope (H1)
    }
    for name, value in returns.items():
        w.register_function(f"pyhttp::plain-{name}", lambda req, v=value: v)
        bind_http(w, f"pyhttp::plain-{name}", f"/py/plain/{name}", "GET")

    for name, value in returns.items():
        resp = wait_for_route("GET", f"{engine.http_url}/py/plain/{name}")
        assert resp.status == 200, (name, resp.body)
        assert resp.headers.get("content-type", "").startswith("application/json"), name
        assert resp.json() == value, name


def test_envelope_returns(engine, worker):
    w = worker("py-http-envelope")
    w.register_function(
        "pyhttp::created",
        lambda req: {"status_code": 201, "body": {"a": 1}, "headers": {"X-A": "1"}},
    )
    w.register_function("pyhttp::body-only", lambda req: {"body": {"a": 1}})
    w.register_function(
        "pyhttp::text",
        lambda req: {"status_code": 200, "body": "hi", "headers": {"Content-Type": "text/plain"}},
    )
    w.register_function("pyhttp::teapot", lambda req: {"status_code": 418, "body": {"why": "short and stout"}})
    bind_http(w, "pyhttp::created", "/py/env/created", "POST")
    bind_http(w, "pyhttp::body-only", "/py/env/body-only", "GET")
    bind_http(w, "pyhttp::text", "/py/env/text", "GET")
    bind_http(w, "pyhttp::teapot", "/py/env/teapot", "GET")

    resp = wait_for_route("POST", f"{engine.http_url}/py/env/created", json_body={})
    assert resp.status == 201, resp.body
    assert resp.headers.get("x-a") == "1"
    assert resp.headers.get("content-type", "").startswith("application/json")
    assert resp.json() == {"a": 1}

    resp = wait_for_route("GET", f"{engine.http_url}/py/env/body-only")
    assert resp.status == 200
    assert resp.json() == {"a": 1}

    resp = wait_for_route("GET", f"{engine.http_url}/py/env/text")
    assert resp.status == 200
    assert resp.body == b"hi"
    assert resp.headers.get("content-type", "").startswith("text/plain")

    resp = wait_for_route("GET", f"{engine.http_url}/py/env/teapot")
    assert resp.status == 418
    assert resp.json() == {"why": "short and stout"}


def test_none_return_is_200_null_promptly(engine, worker):
    w = worker("py-http-none")
    w.register_function("pyhttp::nothing", lambda req: None)
    bind_http(w, "pyhttp::nothing", "/py/nothing", "GET")

    wait_for_route("GET", f"{engine.http_url}/py/nothing")
    resp = http_request("GET", f"{engine.http_url}/py/nothing")
    assert resp.status == 200, resp.body
    assert resp.headers.get("content-type", "").startswith("application/json")
    assert resp.json() is None
    assert resp.body.strip() == b"null"
    assert resp.elapsed < 2.0, f"H2: None must answer within the grace period, took {resp.elapsed:.2f}s"


def test_handler_exception_is_500(engine, worker):
    w = worker("py-http-error")

    def boom(req):
        raise ValueError("boom")

    w.register_function("pyhttp::boom", boom)
    bind_http(w, "pyhttp::boom", "/py/boom", "GET")

    resp = wait_for_route("GET", f"{engine.http_url}/py/boom")
    assert resp.status == 500, resp.body
    body = resp.json()
    assert body["error"] == "boom"
    assert body["code"] == "invocation_failed"
    assert isinstance(body["error_id"], str) and body["error_id"]
    assert "Traceback" not in resp.body.decode()  # stacktrace is only logged (§9)


def test_unknown_route_is_404(engine, worker):
    worker("py-http-404")
    resp = http_request("GET", f"{engine.http_url}/py/definitely-not-here")
    assert resp.status == 404
    body = resp.json()
    assert body["error"] == "Not Found"
    assert body["code"] == "NOT_FOUND"
    assert "error_id" not in body


def test_condition_false_skips_with_422(engine, worker):
    w = worker("py-http-cond")
    handled: list[str] = []
    cond_inputs: list[dict] = []

    def deny(req):
        cond_inputs.append(req)
        return False

    def allow(req):
        return True

    def handler(req):
        handled.append(req["path"])
        return {"ran": True}

    w.register_function("pyhttp::deny", deny)
    w.register_function("pyhttp::allow", allow)
    w.register_function("pyhttp::guarded", handler)
    bind_http(w, "pyhttp::guarded", "/py/guarded/no", "POST", condition_function_id="pyhttp::deny")
    bind_http(w, "pyhttp::guarded", "/py/guarded/yes", "POST", condition_function_id="pyhttp::allow")

    resp = wait_for_route("POST", f"{engine.http_url}/py/guarded/no", json_body={"title": "t"})
    assert resp.status == 422, resp.body
    body = resp.json()
    assert body["skipped"] is True
    assert body["code"] == "CONDITION_NOT_MET"
    assert "/py/guarded/no" not in handled, "handler ran although the condition returned False"
    # Condition input: the request object without the channel refs (§4.2), with H3 keys.
    assert cond_inputs and cond_inputs[-1]["body"] == {"title": "t"}
    assert cond_inputs[-1].get("title") == "t"
    assert "request_body" not in cond_inputs[-1] and "response" not in cond_inputs[-1]

    resp = wait_for_route("POST", f"{engine.http_url}/py/guarded/yes", json_body={})
    assert resp.status == 200, resp.body
    assert resp.json() == {"ran": True}
    assert handled == ["/py/guarded/yes"]


def test_routes_disappear_when_worker_disconnects(engine, worker):
    from conftest import shutdown_client

    owner = worker("py-http-owner")
    owner.register_function("pyhttp::temp", lambda req: {"ok": True})
    bind_http(owner, "pyhttp::temp", "/py/temp", "GET")
    assert wait_for_route("GET", f"{engine.http_url}/py/temp").status == 200

    shutdown_client(owner)
    wait_for(lambda: http_request("GET", f"{engine.http_url}/py/temp").status == 404, 5.0,
             what="route removed after its worker disconnected (§8.1, http.md §15.22)")


def test_trigger_unregister_removes_route(engine, worker):
    w = worker("py-http-unreg")
    w.register_function("pyhttp::short", lambda req: {"ok": True})
    trig = bind_http(w, "pyhttp::short", "/py/short", "GET")
    assert wait_for_route("GET", f"{engine.http_url}/py/short").status == 200
    trig.unregister()
    wait_for(lambda: http_request("GET", f"{engine.http_url}/py/short").status == 404, 5.0,
             what="route removed after trigger.unregister() (§5.2)")


def test_concurrent_requests_are_served(engine, worker):
    """Slow handlers must not serialize each other (§1.5 step 5: invocations are async)."""
    w = worker("py-http-concurrent")

    def slow(req):
        time.sleep(0.5)
        return {"i": req["query_params"].get("i")}

    w.register_function("pyhttp::slow", slow)
    bind_http(w, "pyhttp::slow", "/py/slow", "GET")
    wait_for_route("GET", f"{engine.http_url}/py/slow?i=warm")

    results: dict[int, int] = {}

    def hit(i: int) -> None:
        results[i] = http_request("GET", f"{engine.http_url}/py/slow?i={i}").status

    start = time.monotonic()
    threads = [threading.Thread(target=hit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    elapsed = time.monotonic() - start
    assert results == {0: 200, 1: 200, 2: 200, 3: 200}
    assert elapsed < 1.8, f"4 requests of 0.5 s took {elapsed:.2f}s: handler calls were serialized"


def test_durable_trigger_via_engine_register_trigger(engine, worker):
    """engine::register_trigger / engine::unregister_trigger from Python (§4.3, §11.24)."""
    w = worker("py-http-durable")
    w.register_function("pyhttp::durable", lambda req: {"durable": True})
    wait_for_function(w, "pyhttp::durable")
    out = w.trigger({
        "function_id": "engine::register_trigger",
        "payload": {"trigger_type": "http", "function_id": "pyhttp::durable",
                    "config": {"api_path": "/py/durable", "http_method": "GET"}},
    })
    trigger_id = out["id"]
    assert isinstance(trigger_id, str) and trigger_id

    resp = wait_for_route("GET", f"{engine.http_url}/py/durable")
    assert resp.status == 200 and resp.json() == {"durable": True}

    listed = w.trigger({"function_id": "engine::triggers::list", "payload": {}})["triggers"]
    mine = [t for t in listed if t["id"] == trigger_id]
    assert len(mine) == 1
    assert mine[0]["trigger_type"] == "http"
    assert mine[0]["function_id"] == "pyhttp::durable"
    assert mine[0]["config"] == {"api_path": "/py/durable", "http_method": "GET"}

    removed = w.trigger({"function_id": "engine::unregister_trigger", "payload": {"id": trigger_id}})
    assert removed == {"removed": True}
    wait_for(lambda: http_request("GET", f"{engine.http_url}/py/durable").status == 404, 5.0,
             what="durable route removed")


def test_envelope_edge_cases(engine, worker):
    """http.md §6 / §15.6–8: quoted string body, header arrays, odd status codes."""
    w = worker("py-http-edges")
    cases = {
        "quoted": {"status_code": 200, "body": "hi"},
        "header-array": {"status_code": 200, "body": {"ok": 1}, "headers": ["X-B: two", "junk-without-colon"]},
        "status-1000": {"status_code": 1000, "body": {"s": 1000}},
        "status-string": {"status_code": "201", "body": {"s": "201"}},
        "no-body": {"status_code": 202},
    }
    for name, value in cases.items():
        w.register_function(f"pyhttp::edge-{name}", lambda req, v=value: v)
        bind_http(w, f"pyhttp::edge-{name}", f"/py/edge/{name}", "GET")

    resp = wait_for_route("GET", f"{engine.http_url}/py/edge/quoted")
    assert resp.status == 200
    assert resp.body == b'"hi"'
    assert resp.headers.get("content-type", "").startswith("application/json")

    resp = wait_for_route("GET", f"{engine.http_url}/py/edge/header-array")
    assert resp.status == 200
    assert resp.headers.get("x-b") == "two"
    assert resp.json() == {"ok": 1}

    resp = wait_for_route("GET", f"{engine.http_url}/py/edge/status-1000")
    assert resp.status == 200 and resp.json() == {"s": 1000}
    resp = wait_for_route("GET", f"{engine.http_url}/py/edge/status-string")
    assert resp.status == 200 and resp.json() == {"s": "201"}

    resp = wait_for_route("GET", f"{engine.http_url}/py/edge/no-body")
    assert resp.status == 202
    assert resp.json() == {}  # envelope without body → {} (§6 step 1)


def test_method_not_mounted_is_405(engine, worker):
    w = worker("py-http-405")
    w.register_function("pyhttp::get-only", lambda req: {"ok": True})
    bind_http(w, "pyhttp::get-only", "/py/get-only", "GET")
    assert wait_for_route("GET", f"{engine.http_url}/py/get-only").status == 200
    resp = http_request("POST", f"{engine.http_url}/py/get-only", json_body={})
    assert resp.status == 405  # http.md §3 step 1, §15.11
    assert "GET" in resp.headers.get("allow", "")
    # Trine's deliberate fix of http.md weakness 3: 405 carries the JSON error envelope too.
    assert resp.json() == {"error": "Method POST not allowed on /py/get-only", "code": "METHOD_NOT_ALLOWED"}


def test_body_parsing_rules(engine, worker):
    """http.md §4.3 / §15.14: JSON parsed only for JSON content types. Invalid JSON is a 400
    INVALID_JSON (issue #2 overrides the reference, which passed `null` to the handler)."""
    w = worker("py-http-body")
    # Not {"body": ...}: that would be an envelope (H1).
    w.register_function("pyhttp::body", lambda req: {"parsed": req.get("body")})
    bind_http(w, "pyhttp::body", "/py/body", "POST")
    resp = wait_for_route("POST", f"{engine.http_url}/py/body", json_body={"a": 1})
    assert resp.status == 200 and resp.json() == {"parsed": {"a": 1}}

    resp = http_request("POST", f"{engine.http_url}/py/body", raw_body=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.json()["code"] == "INVALID_JSON"

    resp = http_request("POST", f"{engine.http_url}/py/body", raw_body=b'{"a": 1}',
                        headers={"Content-Type": "text/plain"})
    assert resp.status == 200 and resp.json() == {"parsed": None}

    resp = http_request("POST", f"{engine.http_url}/py/body", raw_body=b'{"a": 2}',
                        headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200 and resp.json() == {"parsed": {"a": 2}}


def test_trigger_metadata_reaches_handler(engine, worker):
    """http.md §3 step 7: the trigger's metadata is the invocation's metadata sidecar."""
    w = worker("py-http-meta")

    def handler(req, metadata=None):
        return {"metadata": metadata}

    w.register_function("pyhttp::meta", handler)
    w.register_trigger({"type": "http", "function_id": "pyhttp::meta",
                        "config": {"api_path": "/py/meta", "http_method": "GET"},
                        "metadata": {"route": "meta", "n": 1}})
    resp = wait_for_route("GET", f"{engine.http_url}/py/meta")
    assert resp.status == 200
    assert resp.json() == {"metadata": {"route": "meta", "n": 1}}


def test_second_binding_of_a_route_is_a_standby(engine, worker):
    """Trine fixes http.md weakness 8: a second binding of (method, path) does not steal the
    route; it serves once the first binding goes away (reference §15.18: last wins)."""
    w = worker("py-http-dup-route")
    w.register_function("pyhttp::first", lambda req: "first")
    w.register_function("pyhttp::second", lambda req: "second")
    first = bind_http(w, "pyhttp::first", "/py/dup", "GET")
    assert wait_for_route("GET", f"{engine.http_url}/py/dup").json() == "first"
    bind_http(w, "pyhttp::second", "/py/dup", "GET")
    time.sleep(0.5)
    assert http_request("GET", f"{engine.http_url}/py/dup").json() == "first"
    first.unregister()
    wait_for(lambda: http_request("GET", f"{engine.http_url}/py/dup").json() == "second", 5.0,
             what="the standby binding to serve once the first is removed")


def test_bad_http_trigger_registrations_fail(engine, worker):
    """http.md §2.1 / §2.3 / §15.19, §15.21: registration errors are trigger_registration_failed."""
    from iii import InvocationError
    import pytest

    w = worker("py-http-bad")
    w.register_function("pyhttp::any", lambda req: None)
    wait_for_function(w, "pyhttp::any")

    with pytest.raises(InvocationError) as info:
        w.trigger({"function_id": "engine::register_trigger",
                   "payload": {"trigger_type": "http", "function_id": "pyhttp::any", "config": {}}})
    assert info.value.code == "trigger_registration_failed"
    assert "api_path" in info.value.message

    w.trigger({"function_id": "engine::register_trigger",
               "payload": {"trigger_type": "http", "function_id": "pyhttp::any",
                           "config": {"api_path": "/py/s/:a", "http_method": "GET"}}})
    with pytest.raises(InvocationError) as info:
        w.trigger({"function_id": "engine::register_trigger",
                   "payload": {"trigger_type": "http", "function_id": "pyhttp::any",
                               "config": {"api_path": "/py/s/:b", "http_method": "GET"}}})
    assert info.value.code == "trigger_registration_failed"


def test_condition_none_runs_and_condition_error_is_500(engine, worker):
    """http.md §5: a None result continues; a raising condition → 500 with its own error."""
    w = worker("py-http-cond2")

    def cond_none(req):
        return None

    def cond_raise(req):
        raise RuntimeError("condition exploded")

    w.register_function("pyhttp::cond-none", cond_none)
    w.register_function("pyhttp::cond-raise", cond_raise)
    w.register_function("pyhttp::target", lambda req: {"ran": True})
    bind_http(w, "pyhttp::target", "/py/cond/none", "GET", condition_function_id="pyhttp::cond-none")
    bind_http(w, "pyhttp::target", "/py/cond/raise", "GET", condition_function_id="pyhttp::cond-raise")

    resp = wait_for_route("GET", f"{engine.http_url}/py/cond/none")
    assert resp.status == 200 and resp.json() == {"ran": True}

    resp = wait_for_route("GET", f"{engine.http_url}/py/cond/raise")
    assert resp.status == 500
    body = resp.json()
    assert body["error"] == "condition exploded"
    assert body["code"] == "invocation_failed"
    assert isinstance(body.get("error_id"), str)
