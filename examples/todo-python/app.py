"""The seed's reactive backend (a live todo list) on PyPI iii-sdk 0.25.0.

The same app as ../todo-node-0.9.0/app.js, in the Python SDK's API: HTTP routes write todos into
the ``todos`` state scope; two state triggers react to every change of that scope, one pushing a
``todo_changed`` event to the ``todos-live`` stream (clients subscribe at
ws://<host>:3112/stream/todos-live/all), the other keeping counters in ``todo-metrics``
(GET /todos/metrics).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from datetime import datetime, timezone
from typing import Any

from iii import InitOptions, TriggerAction, register_worker
from iii_helpers.observability import Logger

# iii-sdk 0.25.0 flags register_trigger as deprecated in favour of iii.observe(), but says to keep
# using it for the http and state trigger types, which have no source functions yet.
warnings.filterwarnings("ignore", message="register_trigger is deprecated", category=DeprecationWarning)

ENGINE_URL = os.environ.get("III_URL") or os.environ.get("III_ENGINE_URL") or "ws://localhost:49134"

iii = register_worker(ENGINE_URL, InitOptions(worker_name="reactive-backend"))


def now_ms() -> int:
    return int(time.time() * 1000)


def now_iso() -> str:
    """Like JavaScript's ``new Date().toISOString()``: UTC, milliseconds, ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def call(function_id: str, payload: dict[str, Any]) -> Any:
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


# --- CRUD: HTTP handlers; state is the database --------------------------------------------------


async def create(req: dict[str, Any]) -> dict[str, Any]:
    """POST /todos {title}"""
    todo_id = f"todo-{now_ms()}"
    todo = {"_key": todo_id, "id": todo_id, "title": req.get("title"), "completed": False, "created_at": now_iso()}
    await call("state::set", {"scope": "todos", "key": todo_id, "value": todo})
    return todo


async def toggle(req: dict[str, Any]) -> dict[str, Any]:
    """POST /todos/toggle {id}"""
    todo_id = req.get("id")
    current = await call("state::get", {"scope": "todos", "key": todo_id})
    if not current:
        raise Exception(f"Todo {todo_id} not found")
    completed = not current.get("completed")
    await call(
        "state::update",
        {
            "scope": "todos",
            "key": todo_id,
            "ops": [
                {"type": "set", "path": "completed", "value": completed},
                {"type": "set", "path": "updated_at", "value": now_iso()},
            ],
        },
    )
    return {"id": todo_id, "completed": completed}


async def list_todos(_req: Any) -> Any:
    """GET /todos"""
    return await call("state::list", {"scope": "todos"})


async def delete(req: dict[str, Any]) -> dict[str, Any]:
    """POST /todos/delete {id}"""
    await call("state::delete", {"scope": "todos", "key": req.get("id")})
    return {"deleted": req.get("id")}


# --- Reaction 1: broadcast every change of `todos` to stream clients ------------------------------


async def on_change(event: dict[str, Any]) -> dict[str, Any]:
    new_value, old_value, key = event.get("new_value"), event.get("old_value"), event.get("key")
    if old_value is None:
        action = "created"
    elif new_value is None:
        action = "deleted"
    else:
        action = "updated"
    Logger().info("Todo changed", {"key": key, "action": action})
    # Fire and forget: nothing comes back from a void call; the stream clients see the event.
    await iii.trigger_async(
        {
            "function_id": "stream::send",
            "payload": {
                "stream_name": "todos-live",
                "group_id": "all",
                "id": f"change-{now_ms()}",
                "event_type": "todo_changed",
                "data": {"action": action, "key": key, "todo": new_value},
            },
            "action": TriggerAction.Void(),
        }
    )
    return {"action": action, "key": key}


# --- Reaction 2: aggregate counters in `todo-metrics` --------------------------------------------


async def update_metrics(event: dict[str, Any]) -> None:
    new_value, old_value = event.get("new_value"), event.get("old_value")
    ops: list[dict[str, Any]] = []
    if new_value is not None and old_value is None:
        ops.append({"type": "increment", "path": "total", "by": 1})
    elif old_value is not None and new_value is None:
        ops.append({"type": "increment", "path": "total", "by": -1})
        if old_value.get("completed"):
            ops.append({"type": "increment", "path": "completed", "by": -1})
    elif new_value is not None and bool(new_value.get("completed")) != bool(old_value.get("completed")):
        ops.append({"type": "increment", "path": "completed", "by": 1 if new_value.get("completed") else -1})
    if ops:
        await call("state::update", {"scope": "todo-metrics", "key": "global", "ops": ops})


async def get_metrics(_req: Any) -> Any:
    """GET /todos/metrics: null until the first todo exists, then {total, completed?}"""
    return await call("state::get", {"scope": "todo-metrics", "key": "global"})


def http(function_id: str, path: str, method: str) -> None:
    iii.register_trigger(
        {"type": "http", "function_id": function_id, "config": {"api_path": path, "http_method": method}}
    )


iii.register_function("todos::create", create)
iii.register_function("todos::toggle", toggle)
iii.register_function("todos::list", list_todos)
iii.register_function("todos::delete", delete)
http("todos::create", "/todos", "POST")
http("todos::list", "/todos", "GET")
http("todos::toggle", "/todos/toggle", "POST")
http("todos::delete", "/todos/delete", "POST")

iii.register_function("todos::on-change", on_change)
iii.register_trigger({"type": "state", "function_id": "todos::on-change", "config": {"scope": "todos"}})

iii.register_function("todos::update-metrics", update_metrics)
iii.register_trigger({"type": "state", "function_id": "todos::update-metrics", "config": {"scope": "todos"}})

iii.register_function("todos::get-metrics", get_metrics)
http("todos::get-metrics", "/todos/metrics", "GET")

if __name__ == "__main__":
    print(f"reactive-backend (python): connected to {ENGINE_URL}", flush=True)
    threading.Event().wait()
