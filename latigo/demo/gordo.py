"""A real Gordo 6.0.4 server on this machine, for development, the demo and the tests.

(Over 400 lines on purpose: it is the whole life of one foreign server, from virtualenv to
built models to a served and stopped process, and every step shares its paths and pins.)

Gordo pins old libraries (pandas<2, numpy<2), so it cannot share Latigo's virtualenv. This
module never imports gordo: it drives a separate virtualenv by subprocess.

* :func:`ensure_venv` creates that virtualenv from exact pins: by default gordo's light
  install (no TensorFlow) from ``gordo-requirements.txt``, plus the import shim
  ``latigo_gordo_shim.py`` that answers gordo's TensorFlow/Keras imports; or, for windowed
  models (Keras LSTMs, which the shim cannot stand in for), the full install from
  ``gordo-full-requirements.txt`` without the shim, in :data:`FULL_VENV`.
* :func:`build_models` trains the demo models (``latigo.demo.models``), or any others given,
  with gordo's own builder on the synthetic process of ``latigo.demo.signals``.
* :func:`serve` starts gunicorn on 127.0.0.1 and waits until it answers; :func:`stop` ends it.

Command line, from the repository root with Latigo's virtualenv (the light install: the
demo models need no TensorFlow)::

    python -m latigo.demo.gordo setup              # virtualenv + models under .gordo/
    python -m latigo.demo.gordo build [--force]    # (re)build the models
    python -m latigo.demo.gordo serve --port 5555  # setup if needed, serve until Ctrl-C/SIGTERM

Everything is idempotent: a virtualenv or a model is redone only when what it was made
from (pins, shim, model config, data generator, the virtualenv it was built with)
changed. A running server keeps the models it has loaded in memory: restart it after a
rebuild.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from latigo.demo.models import DEMO_PROJECT, demo_models

# root of the Latigo repository; put on PYTHONPATH of gordo processes for latigo.demo.*
REPO_ROOT = Path(__file__).resolve().parents[2]
# where the local Gordo lives by default (git-ignored)
GORDO_HOME = REPO_ROOT / ".gordo"
# default Gordo virtualenv: the light install, for the demo
DEFAULT_VENV = GORDO_HOME / "venv"
# Gordo virtualenv with TensorFlow, for windowed (Keras LSTM) models: 2.4 GB, so only on demand
FULL_VENV = GORDO_HOME / "venv-full"
# default model collection root: one folder per revision, one per model inside
DEFAULT_ROOT = GORDO_HOME / "models"
# default gunicorn log of the command line server
DEFAULT_LOG = GORDO_HOME / "gunicorn.log"
# default revision: 2026-02-01T00:00Z, the end of the demo models' training window
DEFAULT_REVISION = "1769904000"
# default port of the command line server
DEFAULT_PORT = 5555

# exact pins of everything installed into the light Gordo virtualenv (installed with --no-deps)
REQUIREMENTS = Path(__file__).with_name("gordo-requirements.txt")
# exact pins of the full install, TensorFlow included (installed with --no-deps, no shim)
FULL_REQUIREMENTS = Path(__file__).with_name("gordo-full-requirements.txt")
# import shim copied into the light Gordo virtualenv's site-packages
SHIM = Path(__file__).with_name("latigo_gordo_shim.py")
# sources whose change must retrain the models: they define the training data (the venv's
# pins count too: each build marker records the marker of the virtualenv it was built with)
BUILD_INPUTS = (
    Path(__file__).with_name("signals.py"),
    Path(__file__).with_name("gordo_provider.py"),
)
# file in the virtualenv recording what it was made from
VENV_MARKER = "latigo-gordo-spec.txt"
# infix of the name an outdated virtualenv is renamed to (".<name><infix><pid>") while deleted
VENV_ASIDE = ".removing-"
# file in each model folder recording what it was built from
BUILD_MARKER = "latigo-build-spec.json"

# limit for creating the virtualenv and installing into it, seconds
INSTALL_TIMEOUT_S = 900
# limit for the import check of a fresh virtualenv, seconds
IMPORT_CHECK_TIMEOUT_S = 120
# limit for building one model, seconds
BUILD_TIMEOUT_S = 600
# models built at once (the machine has 2 cores)
BUILD_WORKERS = 2
# how long the server may take to answer /healthcheck, seconds
START_TIMEOUT_S = 30.0
# the same for a full install's server (imports TensorFlow): 2.7-3.3 s here, 4.9 s cold on busy cores
FULL_START_TIMEOUT_S = 60.0
# how often the start-up wait looks at the server, seconds
START_POLL_S = 0.1
# how long a stopping server may take before it is killed, seconds
STOP_TIMEOUT_S = 15.0
# gunicorn's own grace for in-flight requests on SIGTERM, seconds
GRACEFUL_TIMEOUT_S = 5
# lines of a log quoted in errors
LOG_TAIL_LINES = 40


class GordoError(RuntimeError):
    """Setting up, building or serving the local Gordo failed."""


# ---------------------------------------------------------------- virtualenv


def ensure_venv(
    venv_dir: Path = DEFAULT_VENV,
    python: str = sys.executable,
    *,
    requirements: Path = REQUIREMENTS,
    shim: bool = True,
) -> Path:
    """Make ``venv_dir`` a Gordo virtualenv matching ``requirements``; return it.

    The defaults make the light install (with the shim) that the demo uses; windowed
    models need ``ensure_venv(FULL_VENV, requirements=FULL_REQUIREMENTS, shim=False)``,
    whose TensorFlow is real. Fast when it already matches (a marker file records the
    Python version, the requirements file's name and pins, and the shim); otherwise the
    folder is recreated from scratch with ``python -m venv`` and ``pip install --no-deps
    -r <requirements>``, the shim is installed if asked for, and gordo's server is
    imported once as a check (TensorFlow too when there is no shim to answer it). Safe to
    call from several processes at once.
    """
    venv_dir = Path(venv_dir).absolute()
    requirements = Path(requirements)
    spec = _venv_spec(python, requirements, shim)
    marker = venv_dir / VENV_MARKER
    with _locked(venv_dir):
        if marker.is_file() and marker.read_text() == spec:
            return venv_dir
        _remove_venv(venv_dir)
        _run([python, "-m", "venv", str(venv_dir)], timeout=INSTALL_TIMEOUT_S, what="create the Gordo venv")
        venv_python = str(_python(venv_dir))
        _run(
            [
                venv_python,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(requirements),
            ],
            timeout=INSTALL_TIMEOUT_S,
            what="install gordo into its venv",
        )
        modules = "gordo.server.server, gordo.cli.cli, gordo_core"
        if shim:
            _install_shim(venv_python)
        else:
            modules += ", tensorflow, keras"
        _run(
            [venv_python, "-c", f"import {modules}"],
            timeout=IMPORT_CHECK_TIMEOUT_S,
            what="import gordo in its venv",
        )
        marker.write_text(spec)
    return venv_dir


def _venv_spec(python: str, requirements: Path, shim: bool) -> str:
    """What a Gordo virtualenv is made from: Python version, which requirements file and its
    pins, and the shim's digest (or that there is none)."""
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    shim_line = f"shim sha256 {_digest(SHIM)}" if shim else "shim none"
    return f"python {version}\nrequirements {requirements.name}\n{shim_line}\n{requirements.read_text()}"


def _remove_venv(venv_dir: Path) -> None:
    """Delete an outdated virtualenv; refuse a folder that is neither empty nor a virtualenv.

    The folder is renamed aside first and deleted there, so a deletion cut short (a killed
    process; a server of the old virtualenv still writing ``__pycache__``) never leaves a
    half-deleted virtualenv under its name, which would then be refused as "not a
    virtualenv"; what is left aside is deleted by the next call. A folder holding our
    marker counts as a virtualenv (one half deleted by an older version of this function).
    """
    for leftover in venv_dir.parent.glob(f".{venv_dir.name}{VENV_ASIDE}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not venv_dir.exists():
        return
    ours = (venv_dir / "pyvenv.cfg").is_file() or (venv_dir / VENV_MARKER).is_file()
    if not ours and any(venv_dir.iterdir()):
        raise GordoError(f"{venv_dir} exists and is not a virtualenv; not touching it")
    aside = venv_dir.with_name(f".{venv_dir.name}{VENV_ASIDE}{os.getpid()}")
    venv_dir.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _install_shim(venv_python: str) -> None:
    """Copy the import shim into the venv's site-packages and load it from a .pth file."""
    site_packages = Path(
        subprocess.run(
            [venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    )
    shutil.copyfile(SHIM, site_packages / SHIM.name)
    (site_packages / f"{SHIM.stem}.pth").write_text(f"import {SHIM.stem}\n")


def _python(venv_dir: Path) -> Path:
    """The Python interpreter of a virtualenv."""
    return Path(venv_dir) / "bin" / "python"


# ---------------------------------------------------------------- models


def build_models(
    venv_dir: Path,
    collection_root: Path,
    revision: str,
    models: list[dict] | None = None,
    force: bool = False,
) -> Path:
    """Build ``models`` (default: the demo models) into ``<collection_root>/<revision>/<name>``.

    Uses gordo's own builder from ``venv_dir`` (made by :func:`ensure_venv`),
    ``BUILD_WORKERS`` at a time. A model whose folder has a ``model.pkl`` built from the
    same config and data generator with the same virtualenv (its marker: Python, pins,
    shim) is kept unless ``force``.
    Each model is built in a staging folder beside ``collection_root`` and moved into place
    when complete, so the server never sees a half-built model. Returns the revision folder.
    """
    if not revision.isdigit():
        raise ValueError(f"gordo revisions are digits only, got {revision!r}")
    models = demo_models() if models is None else models
    collection_root = Path(collection_root).absolute()
    venv_dir = Path(venv_dir).absolute()
    venv_marker = venv_dir / VENV_MARKER
    if not venv_marker.is_file():
        raise GordoError(f"{venv_dir} is not a Gordo virtualenv; run ensure_venv() first")
    venv_spec = venv_marker.read_text()
    revision_dir = collection_root / revision
    revision_dir.mkdir(parents=True, exist_ok=True)
    with _locked(collection_root):
        todo = [m for m in models if force or not _is_built(revision_dir / m["name"], m, venv_spec)]
        with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
            outcomes = list(pool.map(lambda m: _build_one(venv_dir, revision_dir, m, venv_spec), todo))
    failures = [message for message in outcomes if message]
    if failures:
        raise GordoError("building Gordo models failed:\n" + "\n\n".join(failures))
    return revision_dir


def _build_spec(config: dict, venv_spec: str) -> str:
    """What a model is built from: its config, the digests of the build inputs, and the
    digest of the marker of the virtualenv that builds it (so new pins retrain it)."""
    inputs = {path.name: _digest(path) for path in BUILD_INPUTS}
    inputs[VENV_MARKER] = hashlib.sha256(venv_spec.encode()).hexdigest()
    return json.dumps({"config": config, "inputs": inputs}, sort_keys=True, indent=1)


def _is_built(model_dir: Path, config: dict, venv_spec: str) -> bool:
    """Whether ``model_dir`` holds a model built from ``config`` and the current inputs."""
    marker = model_dir / BUILD_MARKER
    return (
        (model_dir / "model.pkl").is_file()
        and marker.is_file()
        and marker.read_text() == _build_spec(config, venv_spec)
    )


def _build_one(venv_dir: Path, revision_dir: Path, config: dict, venv_spec: str) -> str | None:
    """Build one model and move it into ``revision_dir``; the error text, or None on success."""
    name = config["name"]
    staging = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=revision_dir.parent.parent))
    try:
        output = staging / name
        command = [str(_python(venv_dir)), "-m", "gordo.cli.cli", "build", json.dumps(config), str(output)]
        try:
            done = subprocess.run(
                command,
                env=_gordo_env(),
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{name}: gordo build took over {BUILD_TIMEOUT_S} s"
        if done.returncode != 0 or not (output / "model.pkl").is_file():
            return f"{name}: gordo build exited {done.returncode}:\n{_tail(done.stdout + done.stderr)}"
        (output / BUILD_MARKER).write_text(_build_spec(config, venv_spec))
        target = revision_dir / name
        if target.exists():
            shutil.rmtree(target)
        output.rename(target)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- server


def serve(
    venv_dir: Path,
    revision_dir: Path,
    port: int,
    expected_models: list[str],
    log_file: Path,
    start_timeout: float = START_TIMEOUT_S,
    workers: int = 1,
    access_log: bool = False,
) -> subprocess.Popen:
    """Start Gordo's server on 127.0.0.1:``port`` for the models in ``revision_dir``.

    gunicorn with ``workers`` workers (1 by default), gthread, 4 threads, in its own session,
    output to ``log_file`` (with ``access_log``, a line per request too: tests and benchmarks
    count Gordo's calls there). Returns once ``/healthcheck`` answers 200; raises
    :class:`GordoError` with the log's tail if the port is taken, the server dies, or it
    does not answer within ``start_timeout`` (for a full install's server, which imports
    TensorFlow, pass :data:`FULL_START_TIMEOUT_S`).
    Sibling folders of ``revision_dir`` are served as other revisions. End it with :func:`stop`.
    """
    if not _port_is_free(port):
        raise GordoError(f"port {port} on 127.0.0.1 is already in use")
    revision_dir = Path(revision_dir).absolute()
    if not _python(venv_dir).is_file():
        raise GordoError(f"{venv_dir} is not a Gordo virtualenv; run ensure_venv() first")
    if not revision_dir.is_dir():
        raise GordoError(f"no model revision folder {revision_dir}; run build_models() first")
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = _gordo_env()
    env.update(
        MODEL_COLLECTION_DIR=str(revision_dir),
        EXPECTED_MODELS=json.dumps(list(expected_models)),
        # keep every model loaded, so requests do not reload them in turn (gordo's default: 2)
        N_CACHED_MODELS=str(max(2, len(expected_models))),
    )
    command = [
        str(_python(venv_dir)),
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        *(["--access-logfile", "-"] if access_log else []),
        "gordo.server.server:build_app()",
    ]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _await_health(proc, port, log_file, start_timeout)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """Stop a server from :func:`serve`: SIGTERM (graceful), then SIGKILL of its whole session."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _await_health(proc: subprocess.Popen, port: int, log_file: Path, timeout: float) -> None:
    """Wait until the server answers /healthcheck; raise if it exits or the deadline passes."""
    url = f"http://127.0.0.1:{port}/healthcheck"
    deadline = time.monotonic() + timeout
    while True:
        try:
            code = proc.wait(timeout=START_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        else:
            raise GordoError(f"Gordo server exited with {code} while starting; {log_file}:\n{_tail_file(log_file)}")
        if _answers(url):
            return
        if time.monotonic() > deadline:
            raise GordoError(
                f"Gordo server did not answer {url} within {timeout} s; {log_file}:\n{_tail_file(log_file)}"
            )


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound right now, as gunicorn binds it: with
    SO_REUSEADDR, so connections of a stopped server lingering in TIME_WAIT do not count,
    while a server still listening does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- helpers


def _gordo_env() -> dict[str, str]:
    """Environment of gordo processes: ours, with the repository root as PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("VIRTUAL_ENV", None)
    return env


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path``, in a file beside it (not inside: gordo lists folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], timeout: float, what: str) -> None:
    """Run a command; raise :class:`GordoError` with its output's tail if it fails or hangs."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GordoError(f"could not {what}: {command[:4]} took over {timeout} s") from None
    if done.returncode != 0:
        raise GordoError(f"could not {what}: exit {done.returncode}:\n{_tail(done.stdout + done.stderr)}")


def _digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        return _tail(Path(path).read_text(errors="replace"), lines)
    except FileNotFoundError:
        return f"({path} does not exist)"


# ---------------------------------------------------------------- command line


class _Stop(Exception):
    """Raised by the signal handler to leave the foreground wait."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _setup(args: argparse.Namespace, force: bool = False) -> Path:
    """Ensure the virtualenv and build the demo models; the revision folder."""
    started = time.monotonic()
    venv_dir = ensure_venv(args.venv)
    print(f"gordo venv ready: {venv_dir} ({time.monotonic() - started:.1f} s)", flush=True)
    started = time.monotonic()
    revision_dir = build_models(venv_dir, args.root, args.revision, force=force)
    print(f"models ready: {revision_dir} ({time.monotonic() - started:.1f} s)", flush=True)
    return revision_dir


def _serve_foreground(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop gunicorn; 0 when stopped, 1 if it died."""
    revision_dir = _setup(args)
    names = [model["name"] for model in demo_models()]
    started = time.monotonic()
    proc = serve(args.venv, revision_dir, args.port, names, args.log_file)
    base = f"http://127.0.0.1:{args.port}/gordo/v0/{DEMO_PROJECT}"
    print(
        f"Gordo serving {', '.join(names)} at {base}/ ({time.monotonic() - started:.1f} s to start;"
        f" log {args.log_file}); Ctrl-C to stop",
        flush=True,
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
        print(f"Gordo server exited with {code}; {args.log_file}:\n{_tail_file(args.log_file)}", file=sys.stderr)
        return 1
    except _Stop:
        return 0
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("Gordo server stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m latigo.demo.gordo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Gordo virtualenv (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="model collection root (default: %(default)s)")
    parser.add_argument("--revision", default=DEFAULT_REVISION, help="revision to build/serve (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="create the Gordo venv and build the demo models")
    build = commands.add_parser("build", help="build the demo models (creates the venv if needed)")
    build.add_argument("--force", action="store_true", help="rebuild models that are up to date")
    run = commands.add_parser("serve", help="setup if needed, then serve in the foreground until Ctrl-C/SIGTERM")
    run.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    run.add_argument("--log-file", type=Path, default=DEFAULT_LOG, help="gunicorn log (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve_foreground(args)
        _setup(args, force=getattr(args, "force", False))
        return 0
    except GordoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
