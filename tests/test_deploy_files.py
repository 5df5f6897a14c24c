"""Deployment files: the example config validates, units verify, the container's commands run."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tomolock.service.config import TomolockSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


def _example_with_token(tmp_path: Path) -> Path:
    token = tmp_path / "api-token"
    token.write_text("s3cret-token\n")
    text = (DEPLOY / "tomolock.example.toml").read_text()
    assert 'token_file = "/etc/tomolock/api-token"' in text
    cfg = tmp_path / "tomolock.toml"
    cfg.write_text(text.replace("/etc/tomolock/api-token", str(token)))
    return cfg


def test_example_config_validates(tmp_path):
    settings = TomolockSettings.load(_example_with_token(tmp_path))
    assert settings.api.host == "127.0.0.1"
    assert settings.api.token is not None
    assert settings.api.token.get_secret_value() == "s3cret-token"
    assert settings.feedback.mode == "publish-only"  # safe first rollout
    assert settings.epics.stage_prefix.startswith("32idc:")
    assert settings.record.directory == Path("/var/lib/tomolock/records")
    assert settings.ingest.documents_address == "tcp://127.0.0.1:5578"
    assert settings.feedback.interlocks.soft_limits["z"].high == 40.0


def test_example_config_refuses_a_typo_and_a_missing_token(tmp_path):
    cfg = _example_with_token(tmp_path)
    cfg.write_text(cfg.read_text().replace("max_step_um", "max_stepp_um"))
    with pytest.raises(ValueError, match="max_stepp_um"):
        TomolockSettings.load(cfg)
    # As shipped, the token file must exist: a clear error names it.
    if not Path("/etc/tomolock/api-token").exists():
        with pytest.raises(ValueError, match="/etc/tomolock/api-token"):
            TomolockSettings.load(DEPLOY / "tomolock.example.toml")


def test_proxy_and_service_addresses_agree():
    cfg = tomllib.loads((DEPLOY / "tomolock.example.toml").read_text())
    unit = (DEPLOY / "systemd" / "tomolock-proxy.service").read_text()
    out_port = cfg["ingest"]["documents_address"].rsplit(":", 1)[1]
    assert f"--out-address 127.0.0.1:{out_port}" in unit
    assert "0.0.0.0" not in unit.replace("never 0.0.0.0", "")


def _unit_for_here(name: str, tmp_path: Path) -> Path:
    """The unit with its /opt/tomolock/venv executables pointed at this venv."""
    text = (DEPLOY / "systemd" / name).read_text()
    assert "/opt/tomolock/venv/bin/" in text
    path = tmp_path / name
    path.write_text(text.replace("/opt/tomolock/venv/bin/", f"{VENV_BIN}/"))
    return path


@pytest.mark.parametrize("name", ["tomolock.service", "tomolock-proxy.service"])
def test_systemd_units_verify(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _unit_for_here(name, tmp_path)
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    # Warnings about the host's own units are not ours: only lines naming this unit count.
    ours = [ln for ln in (res.stdout + res.stderr).splitlines() if name in ln]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_systemd_exec_start_commands_run_here(tmp_path):
    for name in ("tomolock.service", "tomolock-proxy.service"):
        unit = _unit_for_here(name, tmp_path).read_text()
        (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
        argv = shlex.split(line.removeprefix("ExecStart="))
        # The command itself with --help (tomolock: the sub-command's help).
        head = argv[:2] if "serve" in argv else argv[:1]
        res = subprocess.run([*head, "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "--config" in res.stdout or "--in-address" in res.stdout


def _instructions() -> list[tuple[str, str]]:
    """Parse the Containerfile into (INSTRUCTION, arguments) with continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (DEPLOY / "Containerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_containerfile_shape():
    ins = _instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert froms and all(a.startswith("python:3.11-slim") for a in froms)
    final = ins[max(k for k, (i, _) in enumerate(ins) if i == "FROM"):]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "RUN" and "pip install" in a and ".whl" in a for i, a in final)
    (cmd,) = [json.loads(a) for i, a in final if i == "CMD"]
    assert cmd == ["tomolock", "serve", "--config", "/etc/tomolock/tomolock.toml"]
    (health,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "/health" in health


def test_container_cmd_runs_in_a_plain_venv():
    (cmd,) = [json.loads(a) for i, a in _instructions() if i == "CMD"]
    exe = VENV_BIN / cmd[0]
    res = subprocess.run([str(exe), *cmd[1:2], "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--config" in res.stdout


class _Health(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:
        self.send_response(self.code if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"state": "ok"}')

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("H", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_container_healthcheck_command(health_server):
    server, handler = health_server
    (health,) = [a for i, a in _instructions() if i == "HEALTHCHECK"]
    argv = json.loads(health.split("CMD", 1)[1].strip())
    assert argv[0] == "python"
    env = {**os.environ, "TOMOLOCK_API__PORT": str(server.server_address[1])}
    run = [sys.executable, *argv[1:]]
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
    handler.code = 503  # a failed service must make the container unhealthy
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
    with socket.socket() as s:  # nothing listening: unhealthy too
        s.bind(("127.0.0.1", 0))
        env["TOMOLOCK_API__PORT"] = str(s.getsockname()[1])
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
