"""Reading a snapshot does not load Great Expectations: training, the dialogue build and `evaluate` read the lake's
splits and the contract's rules, and only checking a batch needs GX, the slowest import of the stack."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_snapshot_and_the_contract_s_rules_load_without_great_expectations() -> None:
    probe = "import sys\nfrom supportflow.validate import contracts, snapshot\nprint('great_expectations' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
