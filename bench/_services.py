"""Shared pieces of the benchmarks: the real servers they measure against, and how they
read time and memory.

Every server is bound to 127.0.0.1 and stopped (by its own PID, or ``pg_ctl stop``) when
its context manager exits, whatever happened inside. The servers are the same ones the
tests use: the local Gordo of ``latigo.demo.gordo`` and the PostgreSQL and InfluxDB
classes of ``latigo.demo.servers`` (a failure to start raises ``ServerError``).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from latigo.demo import gordo
from latigo.demo.models import demo_models

# how often a wait for a child's readiness looks again, seconds
POLL_S = 0.05


# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class GordoServer:
    base_url: str  # http://127.0.0.1:<port>
    port: int
    revision: str
    models: list[str]
    process: subprocess.Popen


@contextlib.contextmanager
def gordo_server(
    models: list[dict] | None = None,
    root: Path = gordo.DEFAULT_ROOT,
    revision: str = gordo.DEFAULT_REVISION,
    workers: int = 1,
) -> Iterator[GordoServer]:
    """A real Gordo 6.0.4 serving ``models`` (default: the demo models) and nothing else, as
    ``latigo.demo.gordo.serve`` runs it: gunicorn, gthread, 4 threads, every model kept
    loaded, 1 worker (or ``workers``: the same command with more). The models are built with
    gordo's own builder under ``root`` (cached there: a model is rebuilt only when its
    config changed) and served from a temporary revision folder linking just these, so
    models of earlier runs in ``root`` are not listed."""
    models = demo_models() if models is None else models
    names = [model["name"] for model in models]
    venv = gordo.ensure_venv(gordo.DEFAULT_VENV)
    built = gordo.build_models(venv, root, revision, models)
    with tempfile.TemporaryDirectory(prefix="latigo-bench-gordo-") as folder:
        revision_dir = Path(folder) / "models" / revision
        revision_dir.mkdir(parents=True)
        for name in names:
            (revision_dir / name).symlink_to(built / name, target_is_directory=True)
        port = gordo.free_port()
        log_file = Path(folder) / "gunicorn.log"
        proc = gordo.serve(venv, revision_dir, port, names, log_file, workers=workers)
        try:
            yield GordoServer(f"http://127.0.0.1:{port}", port, revision, names, proc)
        finally:
            gordo.stop(proc)


@contextlib.contextmanager
def postgres_server():
    """A fresh PostgreSQL 15 cluster (initdb in a temporary folder, fsync off), removed at the end."""
    from latigo.demo.servers import PostgresServer

    server = PostgresServer.create()
    try:
        yield server.start()
    finally:
        server.remove()


def postgres_pid(server) -> int:
    """The postmaster's PID (first line of postmaster.pid), for :func:`tree_cpu_seconds`."""
    return int((server.data / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def influx_server():
    """A fresh InfluxDB 1.x (influxd in a temporary folder), stopped and deleted at the end."""
    from latigo.demo.servers import InfluxServer

    root = Path(tempfile.mkdtemp(prefix="latigo-bench-influx-"))
    server = InfluxServer(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- memory


def _status_kib(pid: int | str, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident memory of a running process so far (VmHWM), MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a running process now (VmRSS), MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Start this process's VmHWM afresh from its current RSS (Linux: ``5`` into clear_refs),
    so a peak measures one phase and not the set-up before it. False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Exit:
    """How a child process ended, and what it used."""

    code: int
    peak_rss_mib: float  # wait4's ru_maxrss, kept by the kernel after /proc/<pid> is gone
    cpu_seconds: float  # user + system


def wait_with_peak(proc: subprocess.Popen, timeout: float | None = None) -> Exit:
    """Wait for a child to exit; its exit code, peak RSS and CPU time (from ``wait4``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return Exit(proc.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(POLL_S)


def stop_child(proc: subprocess.Popen, timeout: float = 60.0) -> Exit:
    """SIGTERM a child (a Latigo process stops gracefully on it), SIGKILL it if it lingers;
    how it ended."""
    if proc.returncode is None:
        proc.terminate()
    try:
        return wait_with_peak(proc, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return wait_with_peak(proc, timeout)


# ---------------------------------------------------------------- CPU

# clock ticks per second of /proc/<pid>/stat times
_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a running process and its descendants (a
    gunicorn master and its workers, a PostgreSQL postmaster and its backends), those still
    running and those that ended (their time is in their parent's cutime/cstime)."""
    usage: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # after the command: state, ppid, ... utime (14th field), stime, cutime, cstime (17th)
        usage[int(entry.name)] = (int(fields[1]), sum(int(ticks) for ticks in fields[11:15]))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += usage.get(current, (0, 0))[1]
        todo.extend(child for child, (parent, _) in usage.items() if parent == current)
    return total / _TICKS


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- metrics


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def await_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until a Latigo process answers ``/readyz`` (its loop runs and reached the database)."""
    deadline = time.monotonic() + timeout
    while not answers(f"http://127.0.0.1:{port}/readyz"):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args} not ready after {timeout} s")
        time.sleep(POLL_S)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """A Latigo process's Prometheus samples: (name, sorted label items) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def registry_samples() -> dict[tuple[str, tuple], float]:
    """This process's Prometheus samples, as :func:`scrape` returns them."""
    from prometheus_client import REGISTRY

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
    }


def last_ledger_update(engine) -> datetime:
    """When the newest ledger change happened (an executor's clock at ``finish``): the end of
    a drain to the millisecond, however seldom the bench looked."""
    from sqlalchemy import func, select

    from latigo.schema import ledger

    with engine.connect() as connection:
        return connection.execute(select(func.max(ledger.c.updated_at))).scalar_one()


def sample(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
