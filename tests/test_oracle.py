"""The engine (torch backend) against the golden vectors of the original fairseq code, through the
checker delivered with them (../shared/oracle/oracle_check.py)."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["all", "torch"], ["dbs", "torch", "--batched"]], ids=["all", "dbs-batched"])
def test_oracle_checker_passes(oracle_dir, args):
    cmd = [sys.executable, str(oracle_dir / "oracle_check.py")] + args[:2] + [str(oracle_dir / "model")] + args[2:]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" not in proc.stdout
