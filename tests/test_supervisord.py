"""supervisord.conf under a real supervisord: the service starts, a killed executor comes
back, and stopping supervisord stops every Latigo process cleanly.

supervisord, the scheduler and both executors run for real, as in the container, with the
SUPERVISOR_* variables pointing into a temporary directory and a configuration with a
SQLite database there and a Gordo URL on which nothing listens: the scheduler logs the
failed discovery and keeps ticking, the executors wait on an empty queue. Every wait polls
with a deadline; supervisord is stopped in the fixture's teardown whatever happens, and any
Latigo process it leaves behind is killed by its PID.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from supervisor.xmlrpc import SupervisorTransport

pytestmark = pytest.mark.integration  # a real supervisord running the scheduler and executors

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "supervisord.conf"
# the virtualenv's bin folder, where pip put supervisord, supervisorctl and latigo
BIN = Path(sys.executable).parent

# how long supervisord may take to bring every process to RUNNING (startsecs is 3 s)
START_TIMEOUT = 60.0
# how long supervisord may take to stop everything after SIGTERM (stopwaitsecs is 60 s)
STOP_TIMEOUT = 90.0
# interval between two looks at a condition being waited for
POLL_INTERVAL = 0.1
# supervisor's names of the Latigo processes (group:process)
PROCESSES = ("scheduler:scheduler", "executor:executor-0", "executor:executor-1")

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float, on_timeout: Callable[[], str]) -> T:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds
    with ``what`` and the text ``on_timeout`` returns (supervisord's log)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}\n{on_timeout()}")
        time.sleep(POLL_INTERVAL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the Gordo that is not there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def handles_sigterm(pid: int) -> bool:
    """Whether the process has installed its own SIGTERM handler (Linux: SigCgt in
    /proc/<pid>/status). Latigo does that once it is set up and enters its loop; a SIGTERM
    before that would end it with the default action instead of a clean exit."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Supervisor:
    """A running supervisord with supervisord.conf, and the means to look at it."""

    process: subprocess.Popen
    env: dict[str, str]
    log_file: Path
    transport: SupervisorTransport  # supervisor's XML-RPC transport over the unix socket
    # every Latigo process id seen, so the teardown can kill any left behind
    pids: set[int] = field(default_factory=set)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "supervisord's output (tail):\n" + "\n".join(self.log().splitlines()[-lines:])

    def infos(self) -> dict[str, dict[str, Any]]:
        """getAllProcessInfo by group:name; empty while supervisord is not answering yet."""
        if self.process.poll() is not None:
            pytest.fail(f"supervisord exited with {self.process.returncode}\n{self.log_tail()}")
        try:
            rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", self.transport)
            infos = rpc.supervisor.getAllProcessInfo()
        except (OSError, http.client.HTTPException, xmlrpc.client.Fault):  # not answering yet
            self.transport.close()  # the next call connects afresh
            return {}
        self.pids.update(info["pid"] for info in infos if info["pid"])
        return {f"{info['group']}:{info['name']}": info for info in infos}

    def wait_all_running(self, replacing: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """Wait until every process is RUNNING and past its set-up (its SIGTERM handler
        installed); ``replacing`` maps names to pids that must have been replaced."""
        replacing = replacing or {}

        def ready() -> dict[str, dict[str, Any]] | None:
            infos = self.infos()
            if sorted(infos) != sorted(PROCESSES):
                return None
            for name, info in infos.items():
                if info["statename"] != "RUNNING" or info["pid"] == replacing.get(name):
                    return None
                if not handles_sigterm(info["pid"]):
                    return None
            return infos

        what = "scheduler and both executors RUNNING"
        if replacing:
            what += f", with new pids for {', '.join(replacing)}"
        return wait_for(ready, what, START_TIMEOUT, self.log_tail)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(CONFIG), *args],
            env=self.env, capture_output=True, text=True, timeout=30,
        )


def supervisor_env(base: Path, run_dir: Path) -> dict[str, str]:
    """The environment supervisord is started with: ours without any LATIGO_* or
    SUPERVISOR_* variable of the caller, plus the test's configuration and paths."""
    config = base / "latigo.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{base / 'latigo.db'}'}}\n"
        f"models: {{base_url: 'http://127.0.0.1:{free_port()}'}}\n"
    )
    work_dir = base / "work"
    work_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATIGO_", "SUPERVISOR_"))}
    env.update(
        LATIGO_CONFIG=str(config),
        SUPERVISOR_RUN_DIR=str(run_dir),
        SUPERVISOR_LATIGO_BIN=str(BIN / "latigo"),
        SUPERVISOR_LATIGO_DIR=str(work_dir),
    )
    return env


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    for program in ("supervisord", "supervisorctl", "latigo"):
        assert (BIN / program).is_file(), f"{BIN / program} is missing: run the tests with Latigo's venv"
    # a short folder of its own for the socket: unix socket paths are limited to 107 bytes
    run_dir = Path(tempfile.mkdtemp(prefix="latigo-sv-"))
    env = supervisor_env(tmp_path, run_dir)
    log_file = tmp_path / "supervisord.log"
    # append mode: supervisord and the programs (stdout_logfile=/dev/stdout) all write here
    with open(log_file, "ab") as output:
        process = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(CONFIG)],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run is not also sent to it
        )
    transport = SupervisorTransport(serverurl=f"unix://{run_dir / 'supervisor.sock'}")
    running = Supervisor(process, env, log_file, transport)
    try:
        yield running
    finally:
        try:
            if process.poll() is None:
                running.infos()  # one more look at the process ids
        finally:
            _stop(running)
            shutil.rmtree(run_dir, ignore_errors=True)


def _stop(running: Supervisor) -> None:
    """SIGTERM supervisord and wait; SIGKILL it if it hangs, then any Latigo process of
    this test still alive (recognised by this test's LATIGO_CONFIG in its environment)."""
    process = running.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    marker = f"LATIGO_CONFIG={running.env['LATIGO_CONFIG']}".encode()
    for pid in running.pids:
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass


def test_supervisord_runs_restarts_and_stops_latigo(supervisor: Supervisor) -> None:
    started = supervisor.wait_all_running()

    # supervisorctl finds supervisord through the [supervisorctl] section and the socket
    status = supervisor.supervisorctl("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in PROCESSES:
        group, process_name = name.split(":")
        shown = process_name if group == process_name else name  # as supervisorctl shows it
        line = rf"^{re.escape(shown)}\s+RUNNING\s+pid {started[name]['pid']},"
        assert re.search(line, status.stdout, re.M), status.stdout

    # an executor killed outright is started again, and nothing else is touched
    victim = "executor:executor-0"
    os.kill(started[victim]["pid"], signal.SIGKILL)
    restarted = supervisor.wait_all_running(replacing={victim: started[victim]["pid"]})
    assert re.search(r"exited: executor-0 \(terminated by SIGKILL; not expected\)", supervisor.log())
    for name in ("scheduler:scheduler", "executor:executor-1"):
        assert restarted[name]["pid"] == started[name]["pid"], f"{name} was restarted too"

    # SIGTERM to supervisord (a container being stopped) stops every process cleanly
    pids = {name: info["pid"] for name, info in restarted.items()}
    supervisor.process.terminate()
    try:
        code = supervisor.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"supervisord still runs {STOP_TIMEOUT:.0f} s after SIGTERM\n{supervisor.log_tail()}")
    log = supervisor.log()
    assert code == 0, supervisor.log_tail()
    for name in PROCESSES:
        process_name = name.split(":")[1]
        assert re.search(rf"stopped: {process_name} \(exit status 0\)", log), (
            f"{process_name} did not exit with status 0\n{supervisor.log_tail()}"
        )
        assert not is_alive(pids[name]), f"{name} (pid {pids[name]}) is still running"
