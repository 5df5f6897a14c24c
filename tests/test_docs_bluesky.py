"""``docs/bluesky.md`` runs as written: its session code blocks against the simulated beamline.

The blocks run in a fresh interpreter (the profile sets the CA environment before any CA
client is imported, and starts its own IOC, 0MQ proxy and service), with two edits only: fewer
angles and a free API port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "bluesky.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _session_script() -> str:
    text = DOC.read_text()
    session = text[text.index("## A session against the simulated beamline"):]
    blocks = _blocks(session)
    profile = next(b for b in blocks if "SimBeamline(" in b)
    plans = next(b for b in blocks if "RE(runout_calibration(" in b)
    check = next(b for b in blocks if "RE(drift_check(" in b)
    end = next(b for b in blocks if "bl.stop()" in b)
    script = "\n".join([profile, plans, check, _CHECKS, end])
    for old, new in (("np.linspace(0, 180, 91)", "np.linspace(0, 180, 13)"),
                     ('"port": 8600', '"port": 0')):
        assert old in script, f"the docs no longer contain {old!r}: update this test"
        script = script.replace(old, new)
    return script


#: Runs between the doc's blocks and its teardown: what the session must have produced.
_CHECKS = '''
assert model.n_harmonics == 4, model
assert result["scan_id"].startswith("check-") and 0 < result["confidence"] <= 1, result
assert RE.state == "idle"
print("DOCS-SESSION-OK", model.n_harmonics, round(result["axis_column_px"], 2))
'''


def test_docs_code_blocks_are_found() -> None:
    script = _session_script()
    assert "RE(tomo_scan(" in script and "bl.stop()" in script


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docs_bluesky_session_runs_as_written(tmp_path: Path) -> None:
    path = tmp_path / "session.py"
    path.write_text(_session_script())
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(path)], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its IOC and proxy children die with it on a timeout
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"the docs session hung:\n{out[-6000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-6000:]
    assert "DOCS-SESSION-OK 4" in out, out[-3000:]
    for plan in ("runout_calibration", "reference_scan", "tomo_scan", "drift_check"):
        assert re.search(rf"{plan}\s+\[#+\]", out), f"no finished {plan} progress bar:\n{out}"
