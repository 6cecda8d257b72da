"""Prompt sets: downloaded on first use from their upstream source (pinned commit + sha256) into a
cache, or read from a local path (``prompts.path``)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Source:
    url: str | None  # None: no public file (list it yourself with prompts.path)
    sha256: str | None  # None: upstream has no pinned version we know of; the hash is recorded instead
    parse: Callable[[str, str], list[Prompt]]
    filename: str


class PromptError(ValueError):
    pass


def _lines(text: str, where: str) -> list[Prompt]:
    out = []
    for line in text.splitlines():
        if line.strip():  # blank lines are skipped, never turned into empty prompts
            out.append(Prompt(len(out), line.strip()))
    if not out:
        raise PromptError(f"{where} holds no prompts")
    return out


def _jsonl(text: str, where: str) -> list[Prompt]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where} line {n} is not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise PromptError(f"{where} line {n} has no string field 'prompt'")
        out.append(Prompt(len(out), row["prompt"], row))
    if not out:
        raise PromptError(f"{where} holds no prompts")
    return out


def _geneval(text: str, where: str) -> list[Prompt]:
    """GenEval metadata rows, each checked against the schema the evaluator relies on."""
    from rlg.evaluators.geneval.metadata import MetadataError, validate_row

    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = validate_row(json.loads(line), f"{where} line {n}")
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where} line {n} is not JSON: {exc}") from exc
        except MetadataError as exc:
            raise PromptError(f"{exc}\nFix: correct that line, or use the upstream file (djghosh13/geneval @ "
                              "af4902f24d3c prompts/evaluation_metadata.jsonl)") from exc
        out.append(Prompt(len(out), row["prompt"], row))
    if not out:
        raise PromptError(f"{where} holds no prompts")
    return out


def _hpsv2(text: str, where: str) -> list[Prompt]:
    return [Prompt(i, p) for i, p in enumerate(json.loads(text))]


def _parti(text: str, where: str) -> list[Prompt]:
    rows = text.splitlines()
    head = rows[0].split("\t")
    return [Prompt(i, r.split("\t")[0], dict(zip(head, r.split("\t")))) for i, r in enumerate(rows[1:]) if r.strip()]


GH = "https://raw.githubusercontent.com"
SOURCES: dict[str, Source] = {
    "geneval": Source(f"{GH}/djghosh13/geneval/af4902f24d3c/prompts/evaluation_metadata.jsonl",
                      "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13", _geneval,
                      "geneval_evaluation_metadata.jsonl"),
    "flow_grpo_ocr": Source(f"{GH}/yifan123/flow_grpo/ac4c86e8cae0/dataset/ocr/test.txt",
                            "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc", _lines,
                            "flow_grpo_ocr_test.txt"),
    "flow_grpo_pickscore": Source(f"{GH}/yifan123/flow_grpo/ac4c86e8cae0/dataset/pickscore/test.txt",
                                  "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262", _lines,
                                  "flow_grpo_pickscore_test.txt"),
    # 4 styles x 800; fetched one style file at a time (see load_prompts)
    "hpsv2": Source("https://huggingface.co/datasets/zhwang/HPDv2/resolve/main/benchmark/{style}.json", None,
                    _hpsv2, "hpsv2_{style}.json"),
    "drawbench": Source("https://huggingface.co/datasets/sayakpaul/drawbench/resolve/main/drawbench.csv", None,
                        lambda t, w: [Prompt(i, r) for i, r in enumerate(_csv_first_column(t))], "drawbench.csv"),
    "parti": Source(f"{GH}/google-research/parti/main/PartiPrompts.tsv", None, _parti, "PartiPrompts.tsv"),
}
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")

# A small blocklist for prompts.sfw=true on the Pick-a-Pic prompts (whole words, case-insensitive).
NSFW_WORDS = ("nude", "naked", "nsfw", "sex", "sexy", "porn", "topless", "nipple", "nipples", "breasts", "boobs",
              "erotic", "lingerie", "hentai", "genitals", "penis", "vagina", "bikini", "undressed", "gore", "blood")


def _csv_first_column(text: str) -> list[str]:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    return [r[0] for r in rows[1:] if r and r[0].strip()]


def sha256_text(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(url: str, dest: Path, sha256: str | None, override_hint: str) -> bytes:
    if dest.exists():
        data = dest.read_bytes()
        if sha256 is None or sha256_text(data) == sha256:
            return data
        log.warning("cached %s has the wrong checksum; downloading again", dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except Exception as exc:
        raise PromptError(f"could not download {url} ({exc}). Fix: download it yourself and set "
                          f"{override_hint}") from exc
    if sha256 is not None and sha256_text(data) != sha256:
        raise PromptError(f"{url} has sha256 {sha256_text(data)}, expected {sha256}: upstream changed. "
                          f"Use a copy of the pinned file via {override_hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return data


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is dropped, not made part of the first prompt
    except UnicodeDecodeError as exc:
        raise PromptError(f"{where} is not UTF-8 text ({exc}); re-save it as UTF-8") from exc


def load_prompts(cfg, cache_dir: str | Path) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of a PromptsConf, plus provenance (source, url, sha256) for the run metadata."""
    cache = Path(cache_dir).expanduser() / "prompts"
    if cfg.source == "inline":
        prompts = [Prompt(i, p) for i, p in enumerate(cfg.items) if p.strip()]
        if not prompts:
            raise PromptError("prompts.items is empty; list at least one prompt")
        info: dict[str, Any] = {"source": "inline"}
    elif cfg.source == "file" or cfg.path:
        if not cfg.path:
            raise PromptError("prompts.source=file needs prompts.path=/path/to/prompts.txt (or .jsonl)")
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise PromptError(f"prompt file {path} does not exist; fix prompts.path")
        data = path.read_bytes()
        text = _decode(data, str(path))
        parse = SOURCES[cfg.source].parse if cfg.source in SOURCES else (_jsonl if path.suffix == ".jsonl" else _lines)
        prompts = parse(text, str(path))
        info = {"source": cfg.source, "path": str(path), "sha256": sha256_text(data)}
        expected = SOURCES[cfg.source].sha256 if cfg.source in SOURCES else None
        if expected and info["sha256"] != expected:
            log.warning("%s differs from the pinned upstream file (sha256 %s, expected %s)", path, info["sha256"], expected)
    elif cfg.source in SOURCES:
        src = SOURCES[cfg.source]
        hint = f"prompts.path=/local/{src.filename}"
        if cfg.source == "hpsv2":
            prompts, hashes = [], {}
            for style in HPS_STYLES:
                data = _fetch(src.url.format(style=style), cache / src.filename.format(style=style), None, hint)
                hashes[style] = sha256_text(data)
                for p in src.parse(_decode(data, style), style):
                    prompts.append(Prompt(len(prompts), p.text, {"style": style}))
            info = {"source": "hpsv2", "sha256": hashes}
        else:
            data = _fetch(src.url, cache / src.filename, src.sha256, hint)
            prompts = src.parse(_decode(data, src.url), src.url)
            info = {"source": cfg.source, "url": src.url, "sha256": sha256_text(data)}
        if src.sha256 is None:
            log.warning("prompt set %s has no pinned checksum; its sha256 is recorded in the run metadata", cfg.source)
    else:
        raise PromptError(f"unknown prompt source {cfg.source!r}; known: inline, file, {', '.join(SOURCES)}")
    if cfg.sfw:
        pattern = re.compile(r"\b(" + "|".join(NSFW_WORDS) + r")\b", re.IGNORECASE)
        before = len(prompts)
        prompts = [p for p in prompts if not pattern.search(p.text)]
        info["sfw_removed"] = before - len(prompts)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    info["count"] = len(prompts)
    return prompts, info
