"""Custom trigger types provided by a Python 0.25 worker.

Spec: protocol.md §2.5–§2.8, §5.1 (unknown types are parked), §5.2
(unbinding), §5.3 (provider delivery, firing by calling the function),
§8.1 step 3 (binding worker leaves → provider told), §11 checks 19–22.
"""

from __future__ import annotations

import threading
import time

from iii.triggers import TriggerConfig, TriggerHandler

from conftest import shutdown_client, wait_for, wait_for_function


class RecordingHandler(TriggerHandler):
    """Remembers every (un)registration the engine delivers."""

    def __init__(self) -> None:
        self.registered: list[TriggerConfig] = []
        self.unregistered: list[TriggerConfig] = []
        self.lock = threading.Lock()

    async def register_trigger(self, config: TriggerConfig) -> None:
        with self.lock:
            self.registered.append(config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        with self.lock:
            self.unregistered.append(config)

    def find(self, function_id: str) -> TriggerConfig | None:
        with self.lock:
            for cfg in self.registered:
                if cfg.function_id == function_id:
                    return cfg
        return None


def test_provider_receives_binding_and_fires_it(worker):
    provider = worker("py-provider")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pyhook", "description": "python webhook"}, handler)

    binder = worker("py-binder")
    fired: list[tuple] = []
    got_fire = threading.Event()

    def on_hook(data, metadata=None):
        fired.append((data, metadata))
        got_fire.set()
        return {"handled": data["event"]}

    binder.register_function("pybind::on-hook", on_hook)
    wait_for_function(provider, "pybind::on-hook")
    time.sleep(0.2)  # let the trigger type registration land before binding
    trig = binder.register_trigger({
        "type": "pyhook",
        "function_id": "pybind::on-hook",
        "config": {"path": "/incoming"},
        "metadata": {"m": 1},
    })

    cfg = wait_for(lambda: handler.find("pybind::on-hook"), 5.0, what="provider to receive the binding (§5.3)")
    assert cfg.config == {"path": "/incoming"}
    assert cfg.metadata == {"m": 1}
    assert cfg.id  # the binder's trigger id

    listed = provider.trigger({"function_id": "engine::triggers::list", "payload": {}})["triggers"]
    assert [t["id"] for t in listed if t["id"] == cfg.id] == [cfg.id]
    entry = next(t for t in listed if t["id"] == cfg.id)
    assert entry["trigger_type"] == "pyhook"
    assert entry["function_id"] == "pybind::on-hook"

    # The provider fires the trigger by calling the bound function (§5.3 step 5).
    result = provider.trigger({
        "function_id": cfg.function_id,
        "payload": {"event": "push"},
        "metadata": cfg.metadata,
    })
    assert result == {"handled": "push"}
    assert got_fire.wait(2)
    assert fired[-1] == ({"event": "push"}, {"m": 1})

    # Unbinding reaches the provider as unregistertrigger with the same id (§5.2, §5.3 step 6).
    trig.unregister()
    wait_for(lambda: any(u.id == cfg.id for u in handler.unregistered), 5.0,
             what="provider to receive unregister_trigger")


def test_binding_before_provider_is_parked_then_delivered(worker):
    binder = worker("py-early-binder")
    binder.register_function("pyearly::target", lambda data: {"ok": True})
    binder.register_trigger({"type": "pylate", "function_id": "pyearly::target", "config": {"k": "v"}})
    # Unknown type: parked, no error, the binder's connection is unaffected (§5.1 step 3).
    wait_for_function(binder, "pyearly::target")

    provider = worker("py-late-provider")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pylate", "description": "late provider"}, handler)
    cfg = wait_for(lambda: handler.find("pyearly::target"), 5.0,
                   what="parked trigger to be delivered when the provider appears (§11.19)")
    assert cfg.config == {"k": "v"}


def test_binding_worker_disconnect_tells_provider(worker):
    provider = worker("py-provider2")
    handler = RecordingHandler()
    provider.register_trigger_type({"id": "pyhook2", "description": "second"}, handler)
    time.sleep(0.2)

    binder = worker("py-binder2")
    binder.register_function("pybind2::target", lambda data: None)
    binder.register_trigger({"type": "pyhook2", "function_id": "pybind2::target", "config": {}})
    cfg = wait_for(lambda: handler.find("pybind2::target"), 5.0, what="binding delivered")

    shutdown_client(binder)
    wait_for(lambda: any(u.id == cfg.id for u in handler.unregistered), 5.0,
             what="provider told about the departed binder's trigger (§8.1 step 3, §11.21)")


def test_provider_reconnect_redelivers_triggers(worker):
    """A provider that leaves and comes back gets the same trigger ids again (§5.3 step 7, §11.22)."""
    binder = worker("py-binder3")
    binder.register_function("pybind3::target", lambda data: None)
    binder.register_trigger({"type": "pyhook3", "function_id": "pybind3::target", "config": {"n": 3}})

    first = worker("py-provider3a")
    h1 = RecordingHandler()
    first.register_trigger_type({"id": "pyhook3", "description": "third"}, h1)
    cfg1 = wait_for(lambda: h1.find("pybind3::target"), 5.0, what="delivery to the first provider")
    shutdown_client(first)

    second = worker("py-provider3b")
    h2 = RecordingHandler()
    second.register_trigger_type({"id": "pyhook3", "description": "third again"}, h2)
    cfg2 = wait_for(lambda: h2.find("pybind3::target"), 5.0, what="re-delivery to the new provider")
    assert cfg2.id == cfg1.id
    assert cfg2.config == {"n": 3}
