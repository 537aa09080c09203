"""Inference on a Triton Inference Server: a Runner over tritonclient's gRPC, and a local server for tests,
benchmarks and trying a repository out.

``TritonRunner`` sends each ``submit`` as an asynchronous gRPC request, so several frames are in flight at
once and the server's dynamic batcher can group the requests of many clients. When the server goes away
(restart, network), the frames in flight fail; the runner reconnects with the same backoff as the
runtime's RTSP sources (runtime/sources.py: at once, then waits doubling from 0.5 s to 5 s), sends those
frames again and counts them (``counters``: ``outages``, ``resent``); after ``reconnect_timeout`` seconds
it gives up with an EngineError that says how many frames were in flight, never dropping one silently.

``TritonServer`` starts the ``tritonserver`` that the ``nvidia-pytriton`` wheel ships (CPU build with the
Python backend; it pins numpy < 2, so it lives in its own virtual environment, ``make triton`` creates
``.venv-triton``), bound to 127.0.0.1 unless told otherwise, and stops it.

tritonclient is imported lazily: only ``triton://`` engines need it.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .base import EngineError, Runner

SCHEME = "triton://"
MANIFEST_PARAMETER = "segdeploy.manifest"  # the model parameter export/serve/triton.py writes
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0  # as runtime/sources.py reconnects a lost stream
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-triton"


def parse_url(spec: str) -> tuple[str, str]:
    """``triton://HOST:PORT/MODEL`` -> ("HOST:PORT", "MODEL") (the gRPC endpoint; Triton's default is 8001)."""
    if not spec.startswith(SCHEME):
        raise EngineError(f"{spec!r} is not a Triton engine; expected triton://HOST:PORT/MODEL")
    address, _, model = spec[len(SCHEME):].partition("/")
    if not address or not model or "/" in model:
        raise EngineError(f"{spec!r}: expected triton://HOST:PORT/MODEL, e.g. triton://127.0.0.1:8001/bisenetv2_int8_python")
    return (address if ":" in address else f"{address}:8001"), model


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise EngineError("triton:// engines need tritonclient: pip install 'tritonclient[grpc]'") from None
    return grpcclient


def remote_manifest(address: str, model: str, timeout: float = 10.0) -> dict:
    """The manifest a served model carries (its ``segdeploy.manifest`` parameter)."""
    grpcclient = _grpc()
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    try:
        if not client.is_model_ready(model, client_timeout=timeout):
            raise EngineError(f"model {model!r} is not ready on the Triton server at {address}; check the server's "
                              "log and its model repository (python -m export triton writes one)")
        config = client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
    except InferenceServerException as exc:
        raise EngineError(f"cannot reach the Triton server at {address} ({exc.message()}); is it running, and is "
                          "that its gRPC port (default 8001)?") from None
    finally:
        client.close()
    value = config.get("parameters", {}).get(MANIFEST_PARAMETER, {}).get("string_value")
    if not value:
        raise EngineError(f"model {model!r} on {address} has no {MANIFEST_PARAMETER} parameter; serve a repository "
                          "written by python -m export triton")
    return json.loads(value)


class _Ticket:
    def __init__(self, feed: Mapping[str, np.ndarray]) -> None:
        self.feed = dict(feed)
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.sent_at = 0.0

    def callback(self, result, error) -> None:
        self.result, self.error = result, error
        self.done.set()


class TritonRunner(Runner):
    """One served model as a Runner: ``submit`` sends an asynchronous request, ``collect`` waits for it."""

    name = "triton"
    depth = 4  # frames the runtime keeps in flight (a network round trip hides behind the others)

    def __init__(self, address: str, model: str, output: str, *, reconnect_timeout: float = 30.0,
                 request_timeout: float = 30.0, log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.address, self.model, self.output = address, model, output
        self.reconnect_timeout, self.request_timeout = reconnect_timeout, request_timeout
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.client = None
        self.counters = {"requests": 0, "outages": 0, "resent": 0}
        self._in_flight: list[_Ticket] = []
        self._lock = threading.Lock()

    def activate_impl(self) -> None:
        self.client = self._connect()
        if not self._ready(self.client):
            self.client.close()
            raise EngineError(f"model {self.model!r} is not ready on the Triton server at {self.address}")

    def _connect(self):
        return _grpc().InferenceServerClient(self.address)

    def _ready(self, client) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(client.is_server_ready(client_timeout=5.0) and client.is_model_ready(self.model, client_timeout=5.0))
        except InferenceServerException:
            return False

    def deactivate_impl(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _send(self, ticket: _Ticket) -> None:
        grpcclient = _grpc()
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, array in ticket.feed.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        ticket.done.clear()
        ticket.result = ticket.error = None
        ticket.sent_at = time.monotonic()
        try:
            self.client.async_infer(self.model, inputs, ticket.callback,
                                    outputs=[grpcclient.InferRequestedOutput(self.output)],
                                    client_timeout=self.request_timeout)
        except InferenceServerException as exc:  # the channel refused at once: the same as a failed request
            ticket.callback(None, exc)

    def submit(self, feed: Mapping[str, np.ndarray]) -> _Ticket:
        if not self.is_active:
            raise EngineError(f"{self.name}: call activate() (or use it as a context manager) before submit()")
        ticket = _Ticket(feed)
        with self._lock:
            self._in_flight.append(ticket)
            self.counters["requests"] += 1
        self._send(ticket)
        return ticket

    def collect(self, ticket: _Ticket) -> dict[str, np.ndarray]:
        while True:
            if not ticket.done.wait(self.request_timeout + 5.0):
                ticket.callback(None, TimeoutError(f"no answer in {self.request_timeout:g} s"))
            if ticket.error is None:
                with self._lock:
                    self._in_flight.remove(ticket)
                return {self.output: ticket.result.as_numpy(self.output)}
            # A server shutting down first unloads its models ("unknown model ... no available versions"):
            # whatever the error says, a server or model that is not ready is an outage, not a bad request.
            if not _is_outage(ticket.error) and self._ready(self.client):
                with self._lock:
                    self._in_flight.remove(ticket)
                raise EngineError(f"Triton server at {self.address} refused a request for {self.model!r}: "
                                  f"{_message(ticket.error)}")
            self._recover(ticket)

    def _recover(self, failed: _Ticket) -> None:
        """Reconnect with backoff, then send again every frame still in flight (the failed one among them)."""
        with self._lock:
            pending = list(self._in_flight)
        self.counters["outages"] += 1
        lost_at, wait, attempt = time.monotonic(), BACKOFF_FIRST, 0
        self.log(f"triton {self.address}/{self.model}: request failed ({_message(failed.error)}); "
                 f"{len(pending)} frame(s) in flight, reconnecting")
        while True:
            attempt += 1
            if self.client is not None:
                self.client.close()
            self.client = self._connect()  # a new channel: gRPC's own reconnect backoff grows to minutes
            if self._ready(self.client):
                break
            elapsed = time.monotonic() - lost_at
            if elapsed >= self.reconnect_timeout:
                raise EngineError(f"Triton server at {self.address} lost for {elapsed:.0f} s; gave up after {attempt} "
                                  f"attempts with {len(pending)} frame(s) in flight unanswered; check the server, or "
                                  "allow longer with --reconnect-timeout")
            time.sleep(min(wait, self.reconnect_timeout - elapsed))
            wait = min(2 * wait, BACKOFF_MAX)
        self.log(f"triton {self.address}/{self.model}: reconnected after {time.monotonic() - lost_at:.1f} s "
                 f"({attempt} attempts); sending {len(pending)} frame(s) again")
        for ticket in pending:
            if ticket is failed or not ticket.done.is_set() or ticket.error is not None:
                self.counters["resent"] += 1
                self._send(ticket)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.collect(self.submit(feed))


def _message(error: BaseException) -> str:
    message = getattr(error, "message", None)
    return (message() if callable(message) else None) or str(error)


def _is_outage(error: BaseException) -> bool:
    """A failure of the connection or the server's life cycle (worth reconnecting), not of the request."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    status = str(getattr(error, "status", lambda: "")() or "")
    text = _message(error).lower()
    return ("unavailable" in status.lower() or "deadline" in status.lower() or "cancelled" in status.lower()
            or any(k in text for k in ("unavailable", "connection", "socket closed", "not ready", "unloading",
                                       "failed to connect", "deadline exceeded")))


# A local server ---------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """``tritonserver`` from the nvidia-pytriton wheel in ``venv``, serving ``repository`` on ``host`` (HTTP,
    gRPC; metrics off). ``models``: load only these (explicit model control), e.g. the ones whose backends
    this build has (Python; no ONNX Runtime or TensorRT backend in the wheel)."""

    def __init__(self, repository: Path, *, models: list[str] | None = None, venv: Path = DEFAULT_VENV,
                 host: str = "127.0.0.1", http_port: int | None = None, grpc_port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.repository, self.models, self.venv, self.host = Path(repository), models, Path(venv), host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._work: Path | None = None
        self._log_file = None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    def _site_packages(self) -> Path:
        found = sorted(self.venv.glob("lib/python3.*/site-packages/pytriton"))
        if not found:
            raise EngineError(f"no nvidia-pytriton in {self.venv}; create it with make triton")
        return found[0].parent

    def command(self) -> tuple[list[str], dict]:
        site = self._site_packages()
        dist = site / "pytriton" / "tritonserver"
        version = site.parent.name.removeprefix("python")  # the stub must match the environment's Python
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        self._work = Path(tempfile.mkdtemp(prefix="segdeploy-triton-"))
        backends = self._work / "backends"
        shutil.copytree(dist / "backends", backends)
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
        command = [str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={backends}", f"--http-address={self.host}", f"--http-port={self.http_port}",
                   f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
                   "--allow-sagemaker=false", "--allow-vertex-ai=false", "--disable-auto-complete-config",
                   "--exit-timeout-secs=5", "--log-verbose=0"]
        if self.models is not None:
            command += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [str(site / "nvidia_pytriton.libs"),
                                                                       os.environ.get("LD_LIBRARY_PATH")])),
               # The Python backend's stub takes the environment's packages (numpy, onnxruntime) from here.
               "PYTHONPATH": str(site), "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}"}
        env.pop("PYTHONHOME", None)
        return command, env

    def start(self, timeout: float = 120.0) -> "TritonServer":
        command, env = self.command()
        self._log_file = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_tail()
                self.stop()
                raise EngineError(f"tritonserver exited with {self.process.returncode} while starting:\n{log}")
            if self.ready():
                return self
            time.sleep(0.25)
        log = self.log_tail()
        self.stop()
        raise EngineError(f"tritonserver was not ready after {timeout:g} s:\n{log}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_address}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self._log_file is None:
            return ""
        self._log_file.flush()
        self._log_file.seek(0)
        return "\n".join(self._log_file.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)  # its own session: the Python backend's stubs go too
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
