"""Start an SGLang server as a subprocess, wait until it is healthy, and stop it.

The server runs in its own process group (SGLang spawns scheduler and detokenizer children),
so stopping it signals the whole group: SIGTERM first, SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

from asynctls_sglang.eval.client import is_healthy

_LOG_TAIL_LINES = 40


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    pass


class Server:
    """`python -m <launcher> --model-path M --host 127.0.0.1 --port P <args>`, logging to `log_path`.

    start() returns at once; wait_ready() blocks until /health answers 200.
    """

    def __init__(self, launcher: str, model_path: str, args: Sequence[str], log_path: str,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [sys.executable, "-m", launcher, "--model-path", model_path,
                        "--host", "127.0.0.1", "--port", str(self.port), *args]
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    def start(self) -> Server:
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "wb") as log:
            log.write((" ".join(self.command) + "\n").encode())
            log.flush()
            self._process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        self._started_at = time.monotonic()
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from start() until healthy; raises ServerError with the log tail otherwise."""
        assert self._process is not None, "start() first"
        deadline = self._started_at + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(f"server exited with code {self._process.returncode} "
                                  f"before becoming healthy\n{self.log_tail()}")
            if is_healthy(self.url, timeout_s=2.0):
                return time.monotonic() - self._started_at
            time.sleep(1.0)
        raise ServerError(f"server not healthy after {timeout_s:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                tail = log.read().splitlines()[-lines:]
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def stop(self, grace_s: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)
        # Children that outlived the leader still hold the group id.
        _signal_group(process.pid, signal.SIGKILL)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def stop_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a job scheduler) unwinds like Ctrl-C, so the finally blocks that stop
    running servers run: a server in its own session outlives a parent killed outright."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
