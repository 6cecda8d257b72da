"""rlg.runtime: the one offline rule (huggingface_hub's) and the one dtype table, used by every caller."""

from __future__ import annotations

import pytest
import torch

from rlg.runtime import DTYPE_NAMES, hub_offline, torch_dtype


@pytest.mark.parametrize("env,want", [({}, False), ({"HF_HUB_OFFLINE": "1"}, True), ({"HF_HUB_OFFLINE": "yes"}, True),
                                      ({"TRANSFORMERS_OFFLINE": "1"}, True), ({"HF_HUB_OFFLINE": "0"}, False),
                                      ({"HF_HUB_OFFLINE": "true"}, True)])
def test_offline_follows_the_hub_environment_unless_a_flag_is_given(monkeypatch, env, want):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as imported with no flag set
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hub_offline() is want and hub_offline(None) is want
    assert hub_offline(True) is True and hub_offline(False) is False  # an explicit option wins


def test_transformers_offline_stops_prompt_downloads_too(tmp_path, monkeypatch):
    """Review 2, section 3.4: TRANSFORMERS_OFFLINE=1 made the evaluators offline but not url_file."""
    from rlg.downloads import DownloadError, url_file

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline mode is on"):
        url_file("http://127.0.0.1:9/never", tmp_path / "x.txt", sha256=None)


def test_one_dtype_table_for_pairs_evaluators_and_the_config():
    assert torch_dtype("fp16") is torch.float16 and torch_dtype("half") is torch.float16
    assert torch_dtype("torch.bfloat16") is torch.bfloat16 and torch_dtype("BF16") is torch.bfloat16
    assert torch_dtype(None) is torch.float32 and torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; use one of float32, fp32"):
        torch_dtype("fp8")
    from rlg.pairs import PairError
    from rlg.pairs import torch_dtype as pair_dtype

    with pytest.raises(PairError, match="unknown dtype 'int8'"):
        pair_dtype("int8")
    assert set(DTYPE_NAMES.values()) == {"float32", "float16", "bfloat16"}
