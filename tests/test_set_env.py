"""set_env.py: creates local_config.yaml from the defaults, prints export lines that load
back to the same configuration, and refuses a bad file naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from latigo.config import default_document

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
    assert yaml.safe_load(created.read_text()) == default_document()
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
    assert "queue: Input tag 'rabbitmq'" in result.stderr and result.stdout == ""
