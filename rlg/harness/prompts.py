"""Prompt sets: fetched on first use from their upstream source, or read from a local path
(``prompts.path``).

Sets hosted on the Hugging Face hub (HPDv2, DrawBench) come through ``huggingface_hub`` (its cache,
HF_HUB_OFFLINE and HF_ENDPOINT mirrors apply; the commit read is recorded); sets on GitHub come from
a URL pinned to a commit and a sha256, cached under ``<cache>/prompts`` (``rlg.downloads``).

    prompts, info = load_prompt_set("geneval", cache_dir="~/.cache/rlg-bench", max_prompts=64)
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlg.files import sha256_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Source:
    """Where a prompt set lives: a URL (pinned by ``sha256``) or, with ``hub_repo``, a file of a hub
    dataset repo at ``revision`` (``url`` is then the file's path inside the repo)."""
    url: str | None  # None: no public file (list it yourself with prompts.path)
    sha256: str | None  # None: upstream has no pinned version we know of; the hash is recorded instead
    parse: Callable[[str, str], list[Prompt]]
    filename: str
    hub_repo: str | None = None
    revision: str | None = None  # a hub commit; None reads the default branch (the commit read is recorded)


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


def _jsonl(text: str, where: str, check=None) -> list[Prompt]:
    """One prompt per JSON line (blank lines skipped): a dict with a string field 'prompt', after ``check(row,
    where)`` when given (it returns the row or raises PromptError)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where} line {n} is not JSON: {exc}") from exc
        row = check(row, f"{where} line {n}") if check is not None else row
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise PromptError(f"{where} line {n} has no string field 'prompt'")
        out.append(Prompt(len(out), row["prompt"], row))
    if not out:
        raise PromptError(f"{where} holds no prompts")
    return out


def _geneval(text: str, where: str) -> list[Prompt]:
    """GenEval metadata rows, each checked against the schema the evaluator relies on."""
    from rlg.evaluators.geneval.metadata import MetadataError, validate_row

    def check(row, at):
        try:
            return validate_row(row, at)
        except MetadataError as exc:
            raise PromptError(f"{exc}\nFix: correct that line, or use the upstream file (djghosh13/geneval @ "
                              "af4902f24d3c prompts/evaluation_metadata.jsonl)") from exc

    return _jsonl(text, where, check)


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
    # 4 styles x 800; fetched one style file at a time (see load_prompt_set)
    "hpsv2": Source("benchmark/{style}.json", None, _hpsv2, "hpsv2_{style}.json", hub_repo="zhwang/HPDv2"),
    "drawbench": Source("drawbench.csv", None, lambda t, w: [Prompt(i, r) for i, r in enumerate(_csv_first_column(t))],
                        "drawbench.csv", hub_repo="sayakpaul/drawbench"),
    "parti": Source(f"{GH}/google-research/parti/main/PartiPrompts.tsv", None, _parti, "PartiPrompts.tsv"),
}
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
# prompt sets shipped inside the package (the zoo's own): name -> (path relative to the rlg package, parser)
PACKAGE_SOURCES: dict[str, tuple[str, Any]] = {
    "zoo_geneval": ("zoo/geneval_digits_metadata.jsonl", _geneval),  # rlg.zoo.geneval.rows(), GenEval format
}

# A small blocklist for prompts.sfw=true on the Pick-a-Pic prompts (whole words, case-insensitive).
NSFW_WORDS = ("nude", "naked", "nsfw", "sex", "sexy", "porn", "topless", "nipple", "nipples", "breasts", "boobs",
              "erotic", "lingerie", "hentai", "genitals", "penis", "vagina", "bikini", "undressed", "gore", "blood")


def _csv_first_column(text: str) -> list[str]:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    return [r[0] for r in rows[1:] if r and r[0].strip()]


def _fetch(src: Source, cache: Path, hint: str, revision: str | None = None, **fmt: str) -> tuple[bytes, dict]:
    """The bytes of one source file and where they came from (url or hub repo@commit, sha256)."""
    from rlg.downloads import DownloadError, hub_file, url_file

    try:
        if src.hub_repo:
            got = hub_file(src.hub_repo, src.url.format(**fmt), revision=revision or src.revision,
                           repo_type="dataset", fix=hint)
            where = {"hub": src.hub_repo, "file": src.url.format(**fmt), "commit": got.commit}
        else:
            got = url_file(src.url.format(**fmt), cache / src.filename.format(**fmt), sha256=src.sha256,
                           fix=f"download it yourself and set {hint}")
            where = {"url": src.url.format(**fmt)}
    except DownloadError as exc:
        raise PromptError(str(exc)) from exc
    return got.read_bytes(), {**where, "sha256": got.sha256}


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is dropped, not made part of the first prompt
    except UnicodeDecodeError as exc:
        raise PromptError(f"{where} is not UTF-8 text ({exc}); re-save it as UTF-8") from exc


def load_prompts(cfg, cache_dir: str | Path) -> tuple[list[Prompt], dict[str, Any]]:
    """``load_prompt_set`` from a PromptsConf (any object with its fields)."""
    get = (lambda k, d=None: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    return load_prompt_set(get("source"), cache_dir=cache_dir, path=get("path"), items=get("items"),
                           max_prompts=get("max_prompts"), sfw=bool(get("sfw", False)), revision=get("revision"))


def load_prompt_set(source: str, *, cache_dir: str | Path, path: str | Path | None = None,
                    items: list[str] | None = None, max_prompts: int | None = None, sfw: bool = False,
                    revision: str | None = None) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of ``source`` (inline, file, or a name in SOURCES), plus provenance for the run
    metadata (source, url or hub repo and commit, sha256, count).

    ``path``: a local copy (read instead of downloading; checked against the pinned sha256 if any).
    ``revision``: hub commit for hub-hosted sets (default: Source.revision). Raises PromptError.
    """
    cache = Path(cache_dir).expanduser() / "prompts"
    if source == "inline":
        prompts = [Prompt(i, p) for i, p in enumerate(items or []) if p.strip()]
        if not prompts:
            raise PromptError("prompts.items is empty; list at least one prompt")
        info: dict[str, Any] = {"source": "inline"}
    elif source in PACKAGE_SOURCES and not path:
        rel, parse = PACKAGE_SOURCES[source]
        data = (Path(__file__).resolve().parent.parent / rel).read_bytes()
        prompts = parse(_decode(data, rel), f"rlg/{rel}")
        info = {"source": source, "path": f"rlg/{rel}", "sha256": sha256_bytes(data)}
    elif source == "file" or path:
        if not path:
            raise PromptError("prompts.source=file needs prompts.path=/path/to/prompts.txt (or .jsonl)")
        path = Path(path).expanduser()
        if not path.is_file():
            raise PromptError(f"prompt file {path} does not exist; fix prompts.path")
        data = path.read_bytes()
        text = _decode(data, str(path))
        parse = SOURCES[source].parse if source in SOURCES else (_jsonl if path.suffix == ".jsonl" else _lines)
        prompts = parse(text, str(path))
        info = {"source": source, "path": str(path), "sha256": sha256_bytes(data)}
        expected = SOURCES[source].sha256 if source in SOURCES else None
        if expected and info["sha256"] != expected:
            log.warning("%s differs from the pinned upstream file (sha256 %s, expected %s)", path, info["sha256"],
                        expected)
    elif source in SOURCES:
        src = SOURCES[source]
        hint = f"prompts.path=/local/{src.filename}"
        if source == "hpsv2":
            prompts, files = [], {}
            for style in HPS_STYLES:
                data, files[style] = _fetch(src, cache, hint.format(style=style), revision, style=style)
                for p in src.parse(_decode(data, style), style):
                    prompts.append(Prompt(len(prompts), p.text, {"style": style}))
            info = {"source": "hpsv2", "files": files, "sha256": {k: v["sha256"] for k, v in files.items()}}
        else:
            data, where = _fetch(src, cache, hint, revision)
            prompts = src.parse(_decode(data, src.url), src.url)
            info = {"source": source, **where}
        if src.sha256 is None and not (src.hub_repo and (revision or src.revision)):
            log.warning("prompt set %s is not pinned upstream; its sha256 (and hub commit) are recorded in the run "
                        "metadata", source)
    else:
        raise PromptError(f"unknown prompt source {source!r}; known: inline, file, "
                          f"{', '.join([*SOURCES, *PACKAGE_SOURCES])}")
    if sfw:
        pattern = re.compile(r"\b(" + "|".join(NSFW_WORDS) + r")\b", re.IGNORECASE)
        before = len(prompts)
        prompts = [p for p in prompts if not pattern.search(p.text)]
        info["sfw_removed"] = before - len(prompts)
    if max_prompts is not None:
        prompts = prompts[:max_prompts]
    info["count"] = len(prompts)
    return prompts, info
