"""HTTP streaming over the response channel, the raw request body channel, and middleware
(http.md §4.3, §7, §10) with the official Python SDK 0.25.0."""

import json

from conftest import http_request, wait_for_route


def bind_http(client, function_id, path, method, **extra):
    config = {"api_path": path, "http_method": method, **extra}
    return client.register_trigger({"type": "http", "function_id": function_id, "config": config})


def test_streamed_response_sets_status_headers_and_body(engine, worker):
    w = worker("py-stream")

    async def stream(req):
        out = req["response"]
        await out.send_message_async(json.dumps({"type": "set_status", "status_code": 206}))
        await out.send_message_async(json.dumps({"type": "set_headers", "headers": {"content-type": "text/plain"}}))
        await out.write(b"hel")
        await out.write(b"lo")
        await out.close_async()
        return None

    w.register_function("pystream::hello", stream)
    bind_http(w, "pystream::hello", "/py/stream", "GET")
    resp = wait_for_route("GET", f"{engine.http_url}/py/stream")
    assert resp.status == 206
    assert resp.headers.get("content-type") == "text/plain"
    assert resp.body == b"hello"


def test_raw_body_is_readable_from_request_body_channel(engine, worker):
    w = worker("py-rawbody")

    async def raw(req):
        data = await req["request_body"].read_all()
        return {"raw": data.decode(), "parsed": req["body"]}

    w.register_function("pyraw::echo", raw)
    bind_http(w, "pyraw::echo", "/py/raw", "POST")
    resp = wait_for_route("POST", f"{engine.http_url}/py/raw", raw_body=b"a=1&b=two",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert resp.json() == {"raw": "a=1&b=two", "parsed": None}


def test_global_and_route_middleware(engine_factory, worker, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "workers:\n"
        "  - name: iii-http\n"
        "    config:\n"
        "      middleware:\n"
        "        - function_id: pymw::gate\n"
        "          phase: preHandler\n"
        "          priority: 1\n"
    )
    eng = engine_factory(extra_args=("--config", str(cfg))).start()
    w = worker("py-mw", url=eng.worker_url)
    seen = []

    def gate(inp):
        seen.append(inp)
        if inp["request"]["headers"].get("x-token") != "ok":
            return {"action": "respond", "response": {"status_code": 401, "body": {"e": "token"}}}
        return {"action": "continue"}

    def route_mw(inp):
        if inp["request"]["query_params"].get("deny") == "1":
            return {"action": "respond", "response": {"status_code": 403, "body": "denied", "headers": {"X-Why": "q"}}}
        return None

    w.register_function("pymw::gate", gate)
    w.register_function("pymw::route", route_mw)
    w.register_function("pymw::handler", lambda req: {"ok": True})
    bind_http(w, "pymw::handler", "/py/mw/:id", "POST", middleware_function_ids=["pymw::route"])

    url = f"{eng.http_url}/py/mw/7"
    resp = wait_for_route("POST", url, json_body={"secret": 1})
    assert resp.status == 401 and resp.json() == {"e": "token"}
    # Middleware input has no body, path or trigger (http.md §10).
    assert seen[-1]["phase"] == "preHandler"
    assert set(seen[-1]["request"]) == {"path_params", "query_params", "headers", "method"}
    assert seen[-1]["request"]["path_params"] == {"id": "7"}

    ok = {"X-Token": "ok"}
    resp = http_request("POST", url + "?deny=1", json_body={}, headers=ok)
    assert resp.status == 403 and resp.body == b'"denied"' and resp.headers.get("x-why") == "q"
    resp = http_request("POST", url, json_body={}, headers=ok)
    assert resp.status == 200 and resp.json() == {"ok": True}
