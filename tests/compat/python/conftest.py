"""Fixtures for the black-box compatibility tests: the official Python SDK
(PyPI ``iii-sdk`` 0.25.0) against a real ``trine serve`` process.

What lives here:

- ``Engine``: spawns ``$TRINE_BIN serve`` on loopback, waits for its single
  ``trine ready {...}`` stdout line, and stops it with SIGTERM. Ports are
  ephemeral unless a test pins them (restart tests do).
- ``engine`` / ``engine_factory`` fixtures: one engine per test, torn down
  afterwards; the engine's stderr is printed on teardown so a failing test
  shows what the engine said.
- ``worker`` fixture: a factory of in-process SDK clients (``register_worker``),
  all shut down at teardown.
- ``WorkerProcess`` / ``spawn_worker``: a worker in its own Python process,
  started with ``sys.executable`` (whatever interpreter runs pytest, venv or
  not), for tests that must kill a worker or need a process of its own
  (OpenTelemetry state is process-global in the SDK).
- small helpers: ``http_request``, ``wait_for``, ``wait_for_function``,
  ``wait_for_route``, ``free_port``.

Tests assert what the specification says (shared/spec/protocol.md, http.md),
never what the engine happens to answer today.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
TRINE_BIN = os.environ.get("TRINE_BIN") or str(REPO_ROOT / "target" / "debug" / "trine")
READY_PREFIX = "trine ready "
READY_TIMEOUT_S = 30.0

# The SDK reads these from the environment and they would change what it sends.
for _var in ("III_WORKER_NAME", "III_NAMESPACE", "III_TOKEN", "III_URL", "OTEL_ENABLED"):
    os.environ.pop(_var, None)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - remembered for the failure message
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Engine process
# ---------------------------------------------------------------------------


class Engine:
    """One ``trine serve`` process."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        worker_port: int = 0,
        http_port: int = 0,
        stream_port: int = 0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.worker_port = worker_port
        self.http_port = http_port
        self.stream_port = stream_port
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.worker_url = ""
        self.http_url = ""
        self.stream_url = ""
        self._stdout_lines: "queue.Queue[str | None]" = queue.Queue()

    def start(self) -> "Engine":
        if not os.path.exists(TRINE_BIN):
            pytest.fail(f"engine binary not found at {TRINE_BIN} (set TRINE_BIN or build the workspace)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            TRINE_BIN,
            "serve",
            "--host", "127.0.0.1",
            "--worker-port", str(self.worker_port),
            "--http-port", str(self.http_port),
            "--stream-port", str(self.stream_port),
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]
        log_file = open(self.log_path, "a", encoding="utf-8")
        log_file.write(f"$ {' '.join(cmd)}\n")
        log_file.flush()
        self._stdout_lines = queue.Queue()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        log_file.close()
        lines = self._stdout_lines
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

        deadline = time.monotonic() + READY_TIMEOUT_S
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                pytest.fail(f"engine printed no ready line within {READY_TIMEOUT_S}s; stdout={seen!r}\n{self.log_tail()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = proc.wait(timeout=5)
                pytest.fail(f"engine exited with {code} before it was ready; stdout={seen!r}\n{self.log_tail()}")
            seen.append(line)
            if line.startswith(READY_PREFIX):
                info = json.loads(line[len(READY_PREFIX):])
                self.worker_url = info["worker_url"]
                self.http_url = info["http_url"]
                self.stream_url = info["stream_url"]
                return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no engine log)"
        return "engine stderr (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a ``trine`` subcommand (``logs``, ``call``) against this engine."""
        return subprocess.run(
            [TRINE_BIN, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )


@pytest.fixture
def engine_factory(tmp_path: Path):
    """Build (not start) engines for this test; every one is stopped at teardown."""
    engines: list[Engine] = []
    counter = [0]

    def make(**kwargs: Any) -> Engine:
        counter[0] += 1
        kwargs.setdefault("data_dir", tmp_path / f"data{counter[0]}")
        kwargs.setdefault("log_path", tmp_path / f"engine{counter[0]}.log")
        eng = Engine(**kwargs)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.stop()
    for eng in engines:
        tail = eng.log_tail(40)
        print(tail)


@pytest.fixture
def engine(engine_factory) -> Engine:
    """A started engine on ephemeral ports."""
    return engine_factory().start()


# ---------------------------------------------------------------------------
# In-process SDK clients
# ---------------------------------------------------------------------------


@pytest.fixture
def worker(engine_factory, request):
    """Factory: ``worker(name, url=None, **InitOptions fields)`` → a connected ``iii.III``.

    Without ``url`` the client connects to the test's ``engine`` fixture.
    Clients are shut down before the engines are stopped.
    """
    from iii import InitOptions, register_worker

    clients: list[Any] = []

    def make(name: str, url: str | None = None, **options: Any):
        opts = InitOptions(worker_name=name, **options)
        if url is None:
            url = request.getfixturevalue("engine").worker_url
        client = register_worker(url, opts)
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        shutdown_client(client)


def shutdown_client(client: Any, timeout: float = 10.0) -> None:
    """Shut a client down once, without letting a stuck shutdown hang the suite.

    ``III.shutdown()`` stops the client's event loop, so a second call would
    block forever; the fixture's teardown may meet clients a test already
    closed.
    """
    if getattr(client, "_compat_closed", False):
        return
    client._compat_closed = True
    t = threading.Thread(target=client.shutdown, daemon=True)
    t.start()
    t.join(timeout)


def list_function_ids(client: Any) -> set[str]:
    result = client.trigger({"function_id": "engine::functions::list", "payload": {}, "timeout_ms": 5000})
    return {f["function_id"] for f in result["functions"]}


def wait_for_function(client: Any, function_id: str, timeout: float = 10.0) -> None:
    """Wait until the engine lists ``function_id`` (registrations are asynchronous, §1.5)."""
    wait_for(lambda: function_id in list_function_ids(client), timeout, interval=0.1,
             what=f"function {function_id} to be registered")


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def http_request(
    method: str,
    url: str,
    json_body: Any = None,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> HttpResponse:
    """A real HTTP request (urllib); never raises on 4xx/5xx."""
    hdrs = dict(headers or {})
    data = raw_body
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body,
                                time.monotonic() - start)
    except urllib.error.HTTPError as err:
        body = err.read()
        return HttpResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, body,
                            time.monotonic() - start)


def wait_for_route(method: str, url: str, timeout: float = 10.0, **kwargs: Any) -> HttpResponse:
    """Poll until the route stops answering 404 (route registration is asynchronous)."""
    def probe() -> HttpResponse | None:
        resp = http_request(method, url, **kwargs)
        return resp if resp.status != 404 else None

    return wait_for(probe, timeout, interval=0.1, what=f"route {method} {url}")


# ---------------------------------------------------------------------------
# Workers in their own process
# ---------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A Python worker script running under ``sys.executable``.

    The script talks to the test through stdout lines; ``expect(prefix)``
    waits for one.
    """

    proc: subprocess.Popen[str]
    log_path: Path
    lines: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"worker printed no {prefix!r} line in {timeout}s; saw {self.seen!r}\n{self.stderr_tail()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"worker exited ({self.proc.wait()}) before printing {prefix!r}; saw {self.seen!r}\n"
                            f"{self.stderr_tail()}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix):]

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "worker stderr (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def spawn_worker(tmp_path: Path):
    """Factory: ``spawn_worker(source, url, env=None)`` runs ``source`` as a worker process.

    The engine URL reaches the script as ``III_URL`` (which the SDK reads when
    ``register_worker()`` gets no address) and as ``sys.argv[1]``.
    """
    procs: list[WorkerProcess] = []

    def spawn(source: str, url: str, env: dict[str, str] | None = None) -> WorkerProcess:
        idx = len(procs) + 1
        script = tmp_path / f"worker{idx}.py"
        script.write_text(textwrap.dedent(source), encoding="utf-8")
        log_path = tmp_path / f"worker{idx}.stderr"
        full_env = dict(os.environ)
        full_env.update({"III_URL": url, "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        with open(log_path, "w", encoding="utf-8") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), url],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                env=full_env,
                cwd=str(tmp_path),
            )
        wp = WorkerProcess(proc=proc, log_path=log_path)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                wp.lines.put(line.rstrip("\n"))
            wp.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        procs.append(wp)
        return wp

    yield spawn
    for wp in procs:
        wp.kill()


class Recorder:
    """Values handed to a handler, in arrival order (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()

    def push(self, v: Any) -> None:
        with self.lock:
            self.calls.append(v)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.calls)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.calls)
