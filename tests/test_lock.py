"""Issue 34.2: make setup installs the locked tested set; make setup-latest says what the newest versions change."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers.runs import ROOT

LOCK = ROOT / "constraints" / "tested.txt"


def test_setup_installs_torch_and_the_project_under_the_lock():
    make = (ROOT / "Makefile").read_text()
    setup = make.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in setup.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 2 and all("-c $(LOCK)" in line for line in installs), installs
    assert "LOCK := constraints/tested.txt" in make and "$(LOCK)" in setup.splitlines()[0]  # a new lock reinstalls
    pins = dict(line.split("==", 1) for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    torch = re.search(r"^TORCH \?= torch==(\S+) torchvision==(\S+)$", make, re.M)
    assert (pins["torch"], pins["torchvision"]) == torch.groups()  # the local-disk torch is the locked one


def test_setup_latest_lists_every_change_against_the_lock(tmp_path):
    lock = tmp_path / "tested.txt"
    lock.write_text("# a comment\ntorch==2.14.1\nPyYAML==6.0.4\nsix==1.17.0\nnumpy==2.4.6\n")
    freeze = "torch==2.15.0\npyyaml==6.0.4\nnumpy==2.4.6\nfresh_pkg==1.0\n"  # PEP 503 names: PyYAML is pyyaml
    out = subprocess.run([sys.executable, "constraints/changes.py", str(lock)], input=freeze, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == (f"3 package(s) differ from {lock}:\n  fresh_pkg: (not in the lock) -> 1.0\n"
                   "  six: 1.17.0 -> (not installed)\n  torch: 2.14.1 -> 2.15.0\n")
    same = subprocess.run([sys.executable, "constraints/changes.py", str(lock)], input=lock.read_text(), cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert same == f"0 package(s) differ from {lock}\n"
