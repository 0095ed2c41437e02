"""The Python Logger (``iii_helpers.observability.Logger``, iii-helpers 0.25.0)
inside a handler: its record travels as a ``LOGS`` frame on ``/otel`` and the
engine keeps it (protocol.md §7.1, §7.3, §12.1(c); §11 check 27).

The worker runs in its own process: the SDK's OpenTelemetry setup is
process-global and bound to the first engine URL it sees.
"""

from __future__ import annotations

import json
import re
import uuid

from conftest import wait_for, wait_for_function

LOGGING_WORKER = """
import sys, time
from iii import InitOptions, register_worker
from iii_helpers.observability import Logger

worker = register_worker(sys.argv[1], InitOptions(worker_name="py-logger"))

def handler(data):
    Logger().info("py-compat " + data["token"], {"k": 1, "token": data["token"]})
    Logger().warn("py-compat-warn " + data["token"])
    return {"logged": True}

worker.register_function("pylog::write", handler)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


def _records(client, **query):
    out = client.trigger({"function_id": "engine::logs::list", "payload": query, "timeout_ms": 5000})
    return out["logs"]


def test_logger_record_is_kept_and_listed(engine, worker, spawn_worker):
    proc = spawn_worker(LOGGING_WORKER, engine.worker_url)
    proc.expect("READY")
    caller = worker("py-logger-caller")
    wait_for_function(caller, "pylog::write")

    token = uuid.uuid4().hex
    assert caller.trigger({"function_id": "pylog::write", "payload": {"token": token}}) == {"logged": True}

    def find_info():
        return [r for r in _records(caller, search=token) if r["message"] == f"py-compat {token}"]

    records = wait_for(find_info, 10.0, interval=0.2, what="the Logger record in engine::logs::list")
    rec = records[0]
    assert rec["level"] == "info"
    assert rec["data"] == {"k": 1, "token": token}  # log.data kept as structured data (§7.1)
    # Emitted inside the handler's span: it carries that span's trace context.
    assert re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"] or "") and set(rec["trace_id"]) != {"0"}
    assert re.fullmatch(r"[0-9a-f]{16}", rec["span_id"] or "") and set(rec["span_id"]) != {"0"}
    assert isinstance(rec["seq"], int)
    assert isinstance(rec["time_unix_nano"], (int, str)) and int(rec["time_unix_nano"]) > 0

    warn = wait_for(lambda: [r for r in _records(caller, search=token, level="warn")
                             if r["message"] == f"py-compat-warn {token}"], 10.0, interval=0.2,
                    what="the warn record")
    assert warn[0]["level"] == "warn"
    # The level filter really filters.
    assert all(r["level"] == "warn" for r in _records(caller, search=token, level="warn"))

    # The same record through the CLI.
    cli = engine.cli("logs", "--url", engine.worker_url, "--json")
    assert cli.returncode == 0, cli.stderr
    assert f"py-compat {token}" in cli.stdout
    parsed = _parse_json_output(cli.stdout)
    assert any(isinstance(r, dict) and r.get("message") == f"py-compat {token}" for r in parsed)

    plain = engine.cli("logs", "--url", engine.worker_url)
    assert plain.returncode == 0, plain.stderr
    assert f"py-compat {token}" in plain.stdout

    # The telemetry socket is not a worker (§7.3): one worker named py-logger.
    workers = caller.trigger({"function_id": "engine::workers::list", "payload": {}})["workers"]
    assert len([w for w in workers if w.get("name") == "py-logger"]) == 1


def _parse_json_output(text: str) -> list:
    """``trine logs --json``: either one JSON document (list or {logs:[...]}) or one record per line."""
    text = text.strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "logs" in doc:
            return doc["logs"]
        return doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_logs_list_after_seq(engine, worker, spawn_worker):
    proc = spawn_worker(LOGGING_WORKER, engine.worker_url)
    proc.expect("READY")
    caller = worker("py-logger-pager")
    wait_for_function(caller, "pylog::write")

    tokens = [uuid.uuid4().hex for _ in range(3)]
    for t in tokens:
        caller.trigger({"function_id": "pylog::write", "payload": {"token": t}})
    for t in tokens:
        wait_for(lambda t=t: _records(caller, search=t), 10.0, interval=0.2, what=f"record {t}")

    first_seq = min(r["seq"] for r in _records(caller, search=tokens[0]))
    later = caller.trigger({"function_id": "engine::logs::list",
                            "payload": {"after_seq": first_seq, "limit": 1000}})
    assert "next_seq" in later
    assert all(r["seq"] > first_seq for r in later["logs"])
    messages = {r["message"] for r in later["logs"]}
    assert f"py-compat {tokens[1]}" in messages
    assert f"py-compat {tokens[2]}" in messages
    assert f"py-compat {tokens[0]}" not in messages
