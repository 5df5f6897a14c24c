from pathlib import Path

import pytest
from pydantic import ValidationError

from tomolock.service.config import TomolockSettings


def test_defaults_are_loopback_and_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("TOMOLOCK_"):
            monkeypatch.delenv(k)
    s = TomolockSettings()
    assert s.api.host == "127.0.0.1"
    assert s.ingest.frames_address.startswith("tcp://127.0.0.1:")
    assert s.feedback.publish_address.startswith("tcp://127.0.0.1:")
    assert s.feedback.mode == "publish-only"  # nothing moves unless configured
    assert s.api.token is None


def test_file_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[api]\nport = 8700\n[feedback]\nmode = "apply"\n'
        "[feedback.interlocks]\nmax_step_um = 0.2\n"
    )
    monkeypatch.setenv("TOMOLOCK_API__PORT", "8800")
    s = TomolockSettings.load(cfg)
    assert s.api.port == 8800  # env beats file
    assert s.feedback.mode == "apply"
    assert s.feedback.interlocks.max_step_um == 0.2


def test_token_file(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("s3cret\n")
    s = TomolockSettings(api={"token_file": tok})
    assert s.api.token is not None and s.api.token.get_secret_value() == "s3cret"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValidationError, match="empty"):
        TomolockSettings(api={"token_file": tmp_path / "empty"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[api]\nprot = 1\n", "prot"),  # typo: unknown key refused
        ('[ingest]\nframes_address = "localhost:5600"\n', "not a ZMQ address"),
        ("[feedback.interlocks]\nmax_step_um = -1\n", "max_step_um"),
        ("[feedback]\nsign_x = 2\n", "sign_x"),
    ],
)
def test_bad_config_is_refused_clearly(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ValidationError, match=match):
        TomolockSettings.load(cfg)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        TomolockSettings.load(tmp_path / "nope.toml")
    bad = tmp_path / "x.toml"
    bad.write_text("[api\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        TomolockSettings.load(bad)
