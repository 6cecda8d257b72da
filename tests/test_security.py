"""What may reach paths, shells and logs: no remote code, no shell, pickles only with weights_only,
no prompt text in a path, no secret in the run directory."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlg.harness import runner
from rlg.harness.provenance import redact
from rlg.pairs import PairError
from rlg.store import Store
from tests.helpers.runs import ROOT, ENV, FAST, one_thread, cfg_of, _fixture  # noqa: F401  (one_thread: autouse)


SOURCE_DIRS = ["rlg", "benchmarks", "run.py"]


def _sources(*suffixes: str):
    for d in SOURCE_DIRS:
        p = ROOT / d
        for f in [p] if p.is_file() else p.rglob("*"):
            if f.is_file() and f.suffix in suffixes:
                yield f, f.read_text(errors="replace")


def _dotted(node) -> str:
    import ast

    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_no_remote_code_no_shell_and_pickles_only_with_weights_only():
    """Read from the code itself (AST), so docstrings quoting upstream do not count."""
    import ast

    for path, text in _sources(".py", ".yaml", ".yml", ".toml"):
        assert not re.search(r"trust_remote_code\s*[=:]\s*(True|true|1)\b", text), path
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}
            where = f"{path}:{node.lineno} {name}"
            assert name not in ("eval", "exec", "os.system", "os.popen", "pickle.load", "pickle.loads"), where
            shell = kw.get("shell")
            assert not (isinstance(shell, ast.Constant) and shell.value), where
            trc = kw.get("trust_remote_code")
            assert trc is None or (isinstance(trc, ast.Constant) and trc.value is False), where
            if name == "torch.load":
                wo = kw.get("weights_only")
                assert isinstance(wo, ast.Constant) and wo.value is True, where


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path):
    sd = _fixture("sd")
    rl = tmp_path / "evil"
    shutil.copytree(sd / "rl-full", rl)
    (rl / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(rl / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Payload(marker)}, f)
    pair = ["pair=sd15_dpo", "pair.dtype=float32", "pair.offline=true", f"pair.base.id={sd / 'base'}",
            f"pair.rl.id={rl}", "pair.base.revision=null", "pair.base.variant=null"]
    with pytest.raises(PairError, match="allow_pickle=true"):  # safetensors only by default
        runner.run(cfg_of(*FAST, *pair), run_dir=tmp_path / "a")
    with pytest.raises(PairError):  # opted in: read with torch.load(weights_only=True), which refuses code
        runner.run(cfg_of(*FAST, *pair, "pair.allow_pickle=true"), run_dir=tmp_path / "b")
    assert not marker.exists(), "the pickle ran code"


def test_prompt_text_never_reaches_a_path_and_secrets_never_reach_the_run_directory(tmp_path):
    evil = "../../etc/passwd; rm -rf / $(touch pwned) `touch pwned2`"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{evil}\na sign that says \"OK\"\n")
    secret = "fake-wandb-key-0123456789abcdef0123456789abcdef"
    env = {**ENV, "WANDB_API_KEY": secret, "HF_TOKEN": "hf_fakeTokenValue0123456789", "WANDB_SILENT": "true"}
    passwd = Path("/etc/passwd").stat()
    cmd = [sys.executable, "run.py", f"paths.root={tmp_path / 'runs'}", "name=evil", *FAST,
           "prompts=file", f"prompts.path={prompts}", "tracker=wandb_offline", "report.n_resamples=20"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "evil"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "no W&B offline run was written"
    for p in run.rglob("*"):
        rel = str(p.relative_to(run))
        assert "passwd" not in rel and "rm -rf" not in rel and ".." not in p.relative_to(run).parts, rel
    assert all(re.fullmatch(r"[0-9a-f]{64}\.png", p.name) for p in run.glob("images/*/*"))
    with_prompt = {p for p in files if evil.encode() in p.read_bytes()}
    parquet = {p for p in with_prompt if p.suffix == ".parquet"}
    assert parquet and all(p.parent == run / "rows" / "images" for p in parquet)
    # besides the rows, only result views show it as data: the W&B image table, report figures
    assert all(p.suffix == ".parquet" or {"wandb", "report"} & set(p.relative_to(run).parts) for p in with_prompt), \
        with_prompt
    assert evil in set(Store(run).images().prompt)
    for p in files:  # neither secret in any file: store, meta.json, run.log, .hydra, W&B files
        data = p.read_bytes()
        assert secret.encode() not in data and b"hf_fakeTokenValue" not in data, p
    assert secret not in out.stdout + out.stderr
    assert not list(tmp_path.rglob("pwned*")) and not (ROOT / "pwned").exists()
    assert Path("/etc/passwd").stat().st_mtime == passwd.st_mtime


def test_secret_looking_config_values_are_redacted_from_run_metadata(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-123456")
    meta = {"overrides": ["tracker.wandb.entity=me", "x=s3cr3t-value-123456"], "api_key": "abc", "n": 1,
            "nested": {"password": "p", "ok": "fine"}}
    assert redact(meta) == {"overrides": ["tracker.wandb.entity=me", "x=<redacted>"],
                                       "api_key": "<redacted>", "n": 1,
                                       "nested": {"password": "<redacted>", "ok": "fine"}}
    assert redact({"tokenizer": "bert-base-uncased", "max_tokens": 77}) == \
        {"tokenizer": "bert-base-uncased", "max_tokens": 77}  # provenance is kept
