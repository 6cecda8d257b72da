"""rlg.harness.prompts: prompt files and GenEval metadata rows are checked, with messages naming the fix."""

from __future__ import annotations

import json

import pytest

from rlg.harness import runner
from rlg.harness.config import validate
from rlg.harness.prompts import PromptError
from tests.helpers.runs import FAST, one_thread, cfg_of  # noqa: F401  (one_thread: autouse)


def test_prompt_files_empty_not_utf8_blank_lines_bom(tmp_path):
    from rlg.harness.prompts import load_prompts

    def load(name: str, data: bytes, source: str = "file"):
        path = tmp_path / name
        path.write_bytes(data)
        return load_prompts(validate(cfg_of(f"prompts.source={source}", f"prompts.path={path}")).prompts, tmp_path)[0]

    with pytest.raises(PromptError, match="holds no prompts"):
        load("empty.txt", b"")
    with pytest.raises(PromptError, match="holds no prompts"):
        load("blank.txt", b"\n   \n\t\n")
    with pytest.raises(PromptError, match=r"not UTF-8.*re-save it as UTF-8"):
        load("latin1.txt", "caf\xe9\n".encode("latin-1"))
    assert [p.text for p in load("gaps.txt", b"a cat\n\n  \na dog\r\n")] == ["a cat", "a dog"]
    assert [p.text for p in load("bom.txt", "\ufeffa cat\n".encode())] == ["a cat"]
    with pytest.raises(PromptError, match=r"line 2 is not JSON"):
        load("bad.jsonl", b'{"prompt": "a"}\n{oops\n')


def test_geneval_metadata_rows_are_checked_against_the_schema(tmp_path):
    from rlg.harness.prompts import load_prompts

    good = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    bad_rows = [({**good, "tag": "shapes"}, "tag 'shapes'"),
                ({**good, "include": [{"class": "unicorn", "count": 1}]}, "class 'unicorn'"),
                ({**good, "include": [{"class": "cat", "count": 0}]}, "count must be"),
                ({**good, "extra": 1}, "unknown key")]
    for row, match in bad_rows:
        path = tmp_path / "meta.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(PromptError, match=rf"(?s)meta.jsonl line 2.*{match}.*Fix"):
            load_prompts(validate(cfg_of("prompts=geneval", f"prompts.path={path}")).prompts, tmp_path)
    # the GenEval evaluator on prompts without metadata: refused at start-up
    with pytest.raises(PromptError, match="GenEval needs a metadata row with every prompt"):
        runner.run(cfg_of(*FAST, "evaluators.selected=[geneval]"), run_dir=tmp_path / "g")
