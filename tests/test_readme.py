"""The README's promises: what it shows exists, and its Python example runs offline as written.

Every ``make X`` is a Makefile target, every ``group=option`` (``experiment=quickstart``, ``method=[rlg,...]``)
an option Hydra finds for that group, every ``rlg-bench*`` command a console script of pyproject.toml, every
relative link and repository path a file, every Python name its code blocks use importable; the same holds
for the pages under docs/. The
README's offline example runs line for line on the shipped zoo weights, and its w = 0 and w = 1 images are
checked against the stock diffusers pipeline with the base model and with the LoRA loaded by diffusers.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
CONF = ROOT / "rlg" / "conf"
EXAMPLE_HEADING = "## From Python, offline"


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(markdown: str, lang: str | None = None) -> list[str]:
    """The fenced code blocks of ``markdown`` (only those tagged ``lang`` when given)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.M | re.S)
    return [body for tag, body in blocks if lang is None or tag == lang]


def section(markdown: str, heading: str) -> str:
    """The text from ``heading`` (a whole line) to the next heading of the same level."""
    start = markdown.index(f"\n{heading}\n")
    level = heading.split()[0]
    nxt = re.search(rf"^{level} ", markdown[start + len(heading) + 2:], flags=re.M)
    return markdown[start:start + len(heading) + 2 + nxt.start()] if nxt else markdown[start:]


def commands(markdown: str) -> str:
    """What a reader types or reads as a name: the code blocks and the inline code spans."""
    return "\n".join(code_blocks(markdown) + re.findall(r"`([^`\n]+)`", markdown))


def test_readme_is_a_five_minute_read():
    lines = text(README).splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; reference text belongs in docs/"
    quickstart = code_blocks(section(text(README), "## Quickstart"), "bash")[0]
    assert re.findall(r"^make (\S+)", quickstart, flags=re.M) == ["quickstart", "test"]


def test_make_targets_exist():
    makefile = text(ROOT / "Makefile")
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, flags=re.M))
    for page in PAGES:
        used = set(re.findall(r"\bmake ([a-z][\w-]*)", commands(text(page))))
        assert used <= targets, f"{page.name}: make targets {sorted(used - targets)} are not in the Makefile"
    assert {"quickstart", "test", "setup"} <= targets


@pytest.fixture(scope="module")
def hydra_groups() -> dict[str, set[str]]:
    """Every config group Hydra sees from rlg/conf (plugins' groups too, e.g. hydra/launcher) and its options."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def walk(prefix: str):
            for name in loader.list_groups(prefix):
                group = f"{prefix}/{name}" if prefix else name
                yield group
                yield from walk(group)

        return {group: set(loader.get_group_options(group)) for group in walk("")}


def group_options(markdown: str, groups) -> list[tuple[str, str]]:
    """(group, option) for every ``group=option`` / ``group=[a,b]`` whose group is a config group (a pattern
    such as ``experiment=zoo_*`` names no option)."""
    found = []
    for group, value in re.findall(r"(?<![\w./+-])([a-z_]+(?:/[a-z_]+)?)=(\[[^\]\s]*\]|[A-Za-z_][\w-]*(?![\w*-]))",
                                   commands(markdown)):
        if group in groups:
            found += [(group, option.strip()) for option in value.strip("[]").split(",") if option.strip()]
    return found


def test_presets_and_group_options_exist(hydra_groups):
    assert {"experiment", "pair", "sampler", "hydra/launcher"} <= set(hydra_groups)
    seen = set()
    for page in PAGES:
        for group, option in group_options(text(page), hydra_groups):
            assert option in hydra_groups[group], \
                f"{page.name} shows {group}={option}; the options of {group} are {sorted(hydra_groups[group])}"
            seen.add((group, option))
    assert {("experiment", "quickstart"), ("experiment", "hp_sd15_dpo")} <= seen


def test_console_scripts_exist():
    scripts = set(tomllib.loads(text(ROOT / "pyproject.toml"))["project"]["scripts"])
    for page in PAGES:
        used = set(re.findall(r"\b(rlg-bench(?:-[a-z]+)?)\b(?![\[\w])", commands(text(page))))
        assert used <= scripts, f"{page.name}: {sorted(used - scripts)} are not console scripts in pyproject.toml"
    assert {"rlg-bench", "rlg-bench-export", "rlg-bench-report"} <= scripts


def test_relative_links_are_files():
    checked = 0
    for page in PAGES + [ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(page)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
            checked += 1
    assert checked >= 20


def test_repository_paths_shown_exist():
    """``tests/test_api.py``, ``benchmarks/busy_cpu.py``, ``rlg/conf/config.yaml``, ...: paths from the repository
    root, in code spans and blocks of the README and docs/ (patterns with ``*`` name no file)."""
    pattern = r"(?<![\w/.-])((?:rlg|tests|benchmarks|docs|constraints)/[\w./-]*\.(?:py|yaml|md|txt|json|png|sh))(?![\w*])"
    checked = 0
    for page in PAGES:
        for path in set(re.findall(pattern, commands(text(page)))):
            assert (ROOT / path).exists(), f"{page.name} shows {path}, which does not exist"
            checked += 1
    assert checked >= 20


def module_names(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, attribute chain) for every import and every ``alias.a.b`` chain rooted at an imported module."""
    aliases, names = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                names.append((a.name, []))
        elif isinstance(node, ast.ImportFrom):
            names += [(node.module, [a.name]) for a in node.names]
    for node in ast.walk(tree):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in aliases:
            names.append((aliases[node.id], chain))
    return names


def test_python_names_exist():
    checked = set()
    for page in PAGES:
        for block in code_blocks(text(page), "python"):
            for module, chain in module_names(ast.parse(block)):
                obj = importlib.import_module(module)
                for i, attr in enumerate(chain):
                    assert hasattr(obj, attr), f"{page.name}: {module}.{'.'.join(chain[:i + 1])} does not exist"
                    obj = getattr(obj, attr)
                checked.add((module, tuple(chain)))
    assert ("rlg", ("from_pipeline",)) in checked and ("rlg.model_ids", ("resolve_zoo_id",)) in checked


def stock_image(pipe, prompt: str, steps: int, cfg: float, eta: float, seed: int) -> np.ndarray:
    """The stock pipeline's image of (prompt 0, sample 0), from the noise the grid gives that image."""
    import torch

    from rlg.sampling import noise_seed

    generator = torch.Generator().manual_seed(noise_seed(seed, 0, 0))
    with torch.no_grad():
        out = pipe(prompt=[prompt], negative_prompt=[""], num_inference_steps=steps, guidance_scale=cfg, eta=eta,
                   generator=[generator], output_type="np").images[0]
    return (np.asarray(out).clip(0, 1) * 255).round().astype(np.uint8)


def test_readme_python_example_runs_offline_on_the_zoo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    block = code_blocks(section(text(README), EXAMPLE_HEADING), "python")[0]
    tree = ast.parse(block)
    last = tree.body.pop() if isinstance(tree.body[-1], ast.Expr) else None
    ns: dict = {}
    exec(compile(tree, "README.md", "exec"), ns)  # the example as written, its last expression evaluated below
    sheet = eval(compile(ast.Expression(last.value), "README.md", "eval"), ns)

    grid = ns["grid"]
    images = [np.asarray(im) for im in grid[0][0]]
    assert len(grid) == 1 and len(grid[0]) == 1 and len(images) == 4
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    assert sheet.size == (4 * 32, 32)
    assert not np.array_equal(images[0], images[3]), "w = 0 and w = 3 gave the same image"

    # The example's own settings, read from its call, for the stock pipelines below.
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "generate_grid")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    prompt, scales = ast.literal_eval(call.args[1])[0], kw["scales"]
    args = dict(prompt=prompt, steps=kw["num_inference_steps"], cfg=kw["guidance_scale"], eta=kw["eta"],
                seed=kw["seed"])
    assert scales[:2] == [0, 1]

    import diffusers

    from rlg.model_ids import resolve_zoo_id

    # w = 0: the stock pipeline with the base model; w = 1: with the LoRA loaded by diffusers itself. Within one
    # level: the grid batches the 4 scales of a call, and CPU kernels are not batch invariant everywhere.
    stock = diffusers.StableDiffusionPipeline.from_pretrained(resolve_zoo_id("zoo:digits_base"))
    stock.set_progress_bar_config(disable=True)
    base = stock_image(stock, **args)
    assert np.abs(images[0].astype(int) - base.astype(int)).max() <= 1
    stock.load_lora_weights(resolve_zoo_id("zoo:digits_ddpo_incompress"))
    rl = stock_image(stock, **args)
    assert np.abs(images[1].astype(int) - rl.astype(int)).max() <= 1
    assert not np.array_equal(base, rl), "the LoRA changed nothing: the check would not see a wrong RL model"
