"""set_env.py: creates local_config.yaml from the defaults, prints export lines that load
back to the same configuration, and refuses a bad file naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from latigo.config import BACKENDS, default_document

SET_ENV = Path(__file__).resolve().parent.parent / "set_env.py"


def run(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    return subprocess.run(
        [sys.executable, str(SET_ENV)], cwd=cwd, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def test_creates_the_file_and_prints_exports_that_load_back(tmp_path):
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    created = tmp_path / "local_config.yaml"
    written = yaml.safe_load(created.read_text())
    defaults = default_document()
    # every key, except that a backend section holds only its type and the keys common to
    # all its types; the others are comments
    assert {section: values for section, values in written.items() if section not in BACKENDS} == {
        section: values for section, values in defaults.items() if section not in BACKENDS
    }
    assert written["sensors"] == {"type": "sql"}
    assert written["predictions"] == {"type": "sql", "retention": None, "outputs": None}
    assert written["queue"] == {"type": "sql", "poll_interval": "1s"}
    assert "  # lease: 15m" in created.read_text() and "  # bootstrap_servers: 127.0.0.1:9092" in created.read_text()
    assert "created" in result.stderr

    # evaluate the export lines in a shell, then load the configuration from the environment only
    script = result.stdout + f"\ncd {tmp_path} && rm local_config.yaml && {sys.executable} -m latigo config show\n"
    shown = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")})
    assert "export LATIGO_SCHEDULE__INTERVAL=30m" in result.stdout
    assert "export LATIGO_MODELS__PROJECTS='[\"demo\"]'" in result.stdout
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout) == default_document()


def test_keeps_an_existing_file_and_exports_its_values(tmp_path):
    (tmp_path / "local_config.yaml").write_text("schedule:\n  interval: 10m\n")
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["export LATIGO_SCHEDULE__INTERVAL=10m"]
    assert (tmp_path / "local_config.yaml").read_text() == "schedule:\n  interval: 10m\n"


def test_a_bad_file_is_refused_naming_the_key(tmp_path):
    (tmp_path / "local_config.yaml").write_text("queue:\n  type: rabbitmq\n")
    result = run(tmp_path)
    assert result.returncode == 2
    assert "queue.type: 'rabbitmq' is not one of sql, kafka, eventhub" in result.stderr and result.stdout == ""


def _shell(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")})


def test_a_backend_type_switched_by_a_variable_works_on_the_generated_file(tmp_path):
    """LATIGO_<SECTION>__TYPE switches a backend on the file set_env.py made, read as a file
    or through its export lines: no key of the default type is left in the way."""
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    check = f"{sys.executable} -m latigo config show"
    switches = "LATIGO_QUEUE__TYPE=kafka LATIGO_SENSORS__TYPE=influx LATIGO_PREDICTIONS__TYPE=influx"
    for script in (f"{switches} {check}", result.stdout + f"\nexport {switches}\n{check}\n"):
        shown = _shell(script, tmp_path)
        assert shown.returncode == 0, shown.stderr
        effective = yaml.safe_load(shown.stdout)
        assert effective["queue"]["type"] == "kafka" and effective["queue"]["poll_interval"] == "1s"
        assert effective["sensors"]["type"] == effective["predictions"]["type"] == "influx"
    # the commented keys are the defaults of their type: uncommented, they load
    text = (tmp_path / "local_config.yaml").read_text().replace("  # lease: 15m", "  lease: 20m")
    (tmp_path / "local_config.yaml").write_text(text)
    assert _shell(check, tmp_path).returncode == 0


def test_a_key_of_another_type_is_named_with_its_type(tmp_path):
    (tmp_path / "local_config.yaml").write_text("queue:\n  type: sql\n  lease: 20m\n")
    shown = _shell(f"LATIGO_QUEUE__TYPE=kafka {sys.executable} -m latigo config check", tmp_path)
    assert shown.returncode == 2
    assert "queue.lease: a key of queue.type sql, not of kafka" in shown.stderr
    assert "Traceback" not in shown.stderr
