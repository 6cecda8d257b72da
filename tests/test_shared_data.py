"""Issue 34.5: docs/data.md names every upstream data file the tests read, with its source, sha256 and where it
goes; a test without its file skips with one line naming the file and that page."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from rlg.files import sha256_file
from tests.helpers.shared_data import FILES, missing_reason, shared_data_dir, shared_path
from tests.helpers.runs import ROOT

DOC = (ROOT / "docs" / "data.md").read_text()


def test_the_page_names_every_file_its_source_its_url_and_sha256():
    for relative, (upstream, url, sha256) in FILES.items():
        assert f"| `{relative}` | {upstream} |" in DOC, relative
        assert f"\n{relative} {url} {sha256}\n" in DOC, relative  # the download script's line
    assert "../shared/data" in DOC and "RLG_SHARED_DATA" in DOC


def test_a_missing_file_skips_with_one_line_naming_it_and_the_page(monkeypatch, tmp_path):
    monkeypatch.setenv("RLG_SHARED_DATA", str(tmp_path))
    assert shared_path("geneval/object_names.txt") is None
    assert missing_reason("geneval/object_names.txt") == (
        f"needs the upstream data file geneval/object_names.txt (not in {tmp_path}); docs/data.md says where to "
        "get it")
    with pytest.raises(AssertionError, match="list it in tests/helpers/shared_data.py FILES and docs/data.md"):
        shared_path("geneval/unlisted.txt")


def test_each_file_present_has_the_listed_sha256():
    present = {rel: shared_path(rel) for rel in FILES if shared_path(rel)}
    if not present:
        pytest.skip(missing_reason(next(iter(FILES))))
    assert {rel: sha256_file(path) for rel, path in present.items()} == {rel: FILES[rel][2] for rel in present}


def test_the_pages_download_script_fetches_and_checks_every_file(tmp_path):
    """The bash block of docs/data.md, run with a curl that copies the listed URL from the local copy (no network)."""
    if any(shared_path(rel) is None for rel in FILES):
        pytest.skip(missing_reason(next(rel for rel in FILES if shared_path(rel) is None)))
    script = re.search(r"```bash\n(.*?)```", DOC, re.S).group(1).replace("../shared/data", str(tmp_path / "data"))
    by_url = {url: str(shared_data_dir() / rel) for rel, (_, url, _) in FILES.items()}
    shim = tmp_path / "bin" / "curl"
    shim.parent.mkdir()
    shim.write_text(f"#!{sys.executable}\nimport shutil, sys\nby_url = {by_url!r}\n"
                    "shutil.copyfile(by_url[sys.argv[-1]], sys.argv[sys.argv.index('-o') + 1])\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "checkout").mkdir()
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path / "checkout", capture_output=True,
                         text=True, env={**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{rel}: OK" for rel in FILES]
    assert {rel: sha256_file(tmp_path / "data" / rel) for rel in FILES} == {rel: v[2] for rel, v in FILES.items()}
