"""The floors of rlg, computed from the imports: no cycle, and no arrow from a lower floor to a higher one.

The graph is read with ``ast`` from every module under rlg/, imports inside functions included (they
keep start-up light, but they are arrows all the same). A lazy entry (a "rlg.module:name" string of
``rlg.registry.Registry``, or a bare "rlg.module" string, as ``rlg/__init__.py`` hands to importlib) is an arrow
for the floors too (it imports on first use), but not for cycles (it never runs at import time: ``rlg.choices``
names functions of ``rlg.sampling``, which imports it).
The floors are written down once, here.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# top to bottom; a module may import its own floor and the floors below it. A module's floor is the one
# of its longest matching pattern (a module, a package with everything in it, or an fnmatch pattern).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    # the package's front door (``import rlg``): lazy names from every floor, rlg.run included; nothing imports it
    ("facade", ("rlg",)),
    # the zoo's measurement and its retrain driver, and the KL claim's response check, read the presets through
    # rlg.harness.api.job: harness users
    ("app", ("rlg.harness", "rlg.conf", "rlg.zoo.digits_eval", "rlg.zoo.text_eval", "rlg.zoo.train_digits",
             "rlg.zoo.train", "rlg.zoo.geneval_eval", "rlg.zoo.train_geneval", "rlg.kl_response")),
    ("report", ("rlg.report",)),
    ("science", ("rlg.kl_claim", "rlg.kl_learned", "rlg.fkc_learned", "rlg.kl_stats", "rlg.verdicts",
                 "rlg.ground_truth",
                 "rlg.zoo.train_*", "rlg.zoo.digits_rl")),
    ("zoo", ("rlg.zoo",)),  # the zoo's data, model builders and manifest helpers: above the evaluators that score it
    ("library", ("rlg.grid", "rlg.sampling", "rlg.sampler_spec", "rlg.surface", "rlg.pairs", "rlg.denoiser",
                 "rlg.guidance", "rlg.schedulers",
                 "rlg.methods", "rlg.evaluators", "rlg.tiny_pairs", "rlg.analytic", "rlg.analytic_metrics",
                 "rlg.choices", "rlg.kind_spec", "rlg.fkc", "rlg.fk_steering")),
    ("base", ("rlg.store", "rlg.files", "rlg.downloads", "rlg.runtime", "rlg.extras", "rlg.model_ids", "rlg.registry",
              "rlg.metrics")),
]
RANK = {name: i for i, (name, _) in enumerate(FLOORS)}  # 0 = top


def modules(root: Path, package: str = "rlg") -> dict[str, Path]:
    """Module name -> file, for every .py under ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


# "module:attribute" (a registry entry) or a bare "module.path" (a module name handed to importlib)
LAZY = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::[A-Za-z_]\w*)?")


def import_graph(root: Path, package: str = "rlg", lazy: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}, from every import statement (function-local ones too).
    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``. With ``lazy``: the
    arrows of "module:attribute" strings (lazy registry entries) instead."""
    mods = modules(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if lazy:
                hit = LAZY.fullmatch(node.value) if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    else None
                targets = [hit.group(1)] if hit and hit.group(1) in mods and hit.group(1) != package else []
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import rlg.x.y` of a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t.split(".")[0] == package and t != name:
                    edges.setdefault(t, node.lineno)
        graph[name] = edges
    return graph


def floor_of(module: str) -> str | None:
    best, floor = -1, None
    for name, patterns in FLOORS:
        for p in patterns:
            # "rlg" names the package module itself only; any other pattern also covers its submodules
            hit = module == p if p == "rlg" else (fnmatch.fnmatchcase(module, p) or module.startswith(p + "."))
            if hit and len(p) > best:
                best, floor = len(p), name
    return floor


def problems(graph: dict[str, dict[str, int]], floor=floor_of, lazy: dict[str, dict[str, int]] | None = None
             ) -> list[str]:
    """Every module without a floor, every upward arrow (of ``graph`` and of the ``lazy`` registry entries) and
    every cycle of ``graph``, one line each."""
    out = [f"{m} has no floor: add it to FLOORS in tests/test_layering.py" for m in graph if floor(m) is None]
    for verb, arrows in (("imports", graph), ("names (a lazy registry entry)", lazy or {})):
        for m, edges in arrows.items():
            for t, line in edges.items():
                fm, ft = floor(m), floor(t)
                if fm and ft and RANK[ft] < RANK[fm]:
                    out.append(f"{m}:{line} {verb} {t}: an arrow up from {fm} to {ft}")
    # cycles: strongly connected components with more than one module (Tarjan, iterative)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next((w for w in it if w in graph), None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    sccs.append(sorted(comp))
    for comp in sccs:
        arrows = ", ".join(f"{m}:{graph[m][t]} -> {t}" for m in comp for t in graph[m] if t in comp)
        out.append(f"import cycle among {comp}: {arrows}")
    return out


def test_the_floors_hold_no_cycle_and_no_arrow_up():
    lazy = import_graph(ROOT, lazy=True)
    assert {"rlg.sampling", "rlg.pairs"} <= set(lazy["rlg.choices"])  # the registries' entries are read
    found = problems(import_graph(ROOT), lazy=lazy)
    assert not found, "\n".join(found)


def _copy_with(tmp_path: Path, module: str, code: str) -> Path:
    """A copy of rlg/ (code only) with ``code`` appended to ``module``."""
    import shutil

    root = tmp_path / module
    shutil.copytree(ROOT / "rlg", root / "rlg", ignore=shutil.ignore_patterns("weights", "conf", "__pycache__"))
    path = root / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + code)
    return root


def test_the_checker_fails_on_an_injected_upward_import(tmp_path):
    """The same reader and checker on a copy of rlg/ with one import up, hidden inside a function."""
    root = _copy_with(tmp_path, "rlg.extras", "\n\ndef _late():\n    from rlg.report import stats\n    return stats\n")
    line = len((root / "rlg" / "extras.py").read_text().splitlines()) - 1
    assert problems(import_graph(root)) == [f"rlg.extras:{line} imports rlg.report.stats: an arrow up from base to "
                                            "report"]


def test_the_checker_sees_a_module_name_handed_to_importlib(tmp_path):
    """A bare module string (as rlg/__init__.py gives importlib) is an arrow too: one pointing up is found."""
    root = _copy_with(tmp_path, "rlg.extras", '\n\n_LATER = "rlg.report.stats"  # importlib.import_module(_LATER)\n')
    line = len((root / "rlg" / "extras.py").read_text().splitlines())
    assert problems(import_graph(root), lazy=import_graph(root, lazy=True)) == [
        f"rlg.extras:{line} names (a lazy registry entry) rlg.report.stats: an arrow up from base to report"]


def test_the_checker_fails_on_an_injected_cycle(tmp_path):
    root = _copy_with(tmp_path, "rlg.guidance", "\n\ndef _late():\n    import rlg.denoiser as d\n    return d\n")
    found = problems(import_graph(root))
    assert len(found) == 1 and found[0].startswith("import cycle among ['rlg.denoiser', 'rlg.guidance']: "), found
    assert "rlg.guidance:" in found[0] and "-> rlg.denoiser" in found[0] and "-> rlg.guidance" in found[0]


def test_the_graph_reader_sees_relative_function_local_and_submodule_imports(tmp_path):
    pkg = tmp_path / "rlg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..runtime import X\n    import rlg.sub\n    return X\n")
    (pkg / "store.py").write_text("from rlg import runtime\nimport rlg.sub.leaf\nimport os\n")
    graph = import_graph(tmp_path)
    assert graph == {"rlg": {}, "rlg.runtime": {}, "rlg.sub": {"rlg.sub.leaf": 1},
                     "rlg.sub.leaf": {"rlg.runtime": 2, "rlg.sub": 3},
                     "rlg.store": {"rlg.runtime": 1, "rlg.sub.leaf": 2}}
    assert problems(graph, floor=lambda m: "base") == [
        "import cycle among ['rlg.sub', 'rlg.sub.leaf']: rlg.sub:1 -> rlg.sub.leaf, rlg.sub.leaf:3 -> rlg.sub"]


@pytest.mark.parametrize("module,floor", [("rlg", "facade"), ("rlg.harness.runner", "app"), ("rlg.zoo", "zoo"),
                                          ("rlg.zoo.train_digits_dpo", "science"), ("rlg.zoo.digits", "zoo"),
                                          ("rlg.evaluators.geneval.detector", "library"), ("rlg.store", "base"),
                                          ("rlg.zoo.train", "app"), ("rlg.registry", "base"),
                                          ("rlg.choices", "library")])
def test_a_module_takes_the_floor_of_its_longest_pattern(module, floor):
    assert floor_of(module) == floor


def _third_party(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


LIBRARY_CORE = ["guidance", "denoiser", "pairs", "sampling", "sampler_spec", "grid", "schedulers", "tiny_pairs",
                "analytic", "analytic_metrics", "kind_spec", "metrics", "fkc", "fk_steering"]
SCIENCE_MEASUREMENTS = ["ground_truth", "kl_learned", "kl_stats", "verdicts", "fkc_learned"]  # science floor, held to the same rule


def test_the_library_core_imports_no_hydra_no_app_and_the_report_runs_no_model():
    graph = import_graph(ROOT)
    for name in LIBRARY_CORE + SCIENCE_MEASUREMENTS:  # they work without the app: no Hydra, store, report, evaluators
        mods = _third_party(ROOT / "rlg" / f"{name}.py")
        assert not mods & {"hydra", "omegaconf", "matplotlib"}, f"rlg/{name}.py imports {mods}"
        bad = {t for t in graph[f"rlg.{name}"] if t.startswith(("rlg.harness", "rlg.report", "rlg.evaluators",
                                                                 "rlg.store"))}
        assert not bad, f"rlg/{name}.py imports {bad}"
    for name in (m for m in graph if m.startswith("rlg.report")):  # the report draws stored rows; it runs no model
        assert not {t for t in graph[name] if t.startswith(("rlg.pairs", "rlg.sampling", "rlg.grid", "rlg.kl_learned",
                                                            "rlg.kl_claim", "rlg.ground_truth"))}, name
        assert "hydra" not in _third_party(modules(ROOT)[name]), name


def test_the_config_is_read_only_at_the_border():
    rlg = ROOT / "rlg"
    readers = {p.relative_to(ROOT).as_posix() for p in rlg.rglob("*.py") if "DictConfig" in p.read_text()}
    assert readers <= {"rlg/harness/build.py", "rlg/harness/config.py", "rlg/harness/cli.py"}, readers
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["rlg*"]  # the wheel installs one top-level package


def test_an_evaluator_that_imports_the_zoo_is_an_arrow_up(tmp_path):
    """The evaluators score the zoo's images but own their models (rlg.evaluators.digits.DigitClassifier)."""
    root = _copy_with(tmp_path, "rlg.evaluators.digits", "\n\ndef _late():\n    from rlg.zoo import digits\n")
    line = len((root / "rlg" / "evaluators" / "digits.py").read_text().splitlines())
    up = f"rlg.evaluators.digits:{line} imports rlg.zoo.digits: an arrow up from library to zoo"
    cycle = (f"import cycle among ['rlg.evaluators.digits', 'rlg.zoo.digits']: rlg.evaluators.digits:{line} -> "
             "rlg.zoo.digits, rlg.zoo.digits:")  # the zoo's digits import the scorers' digit_of_prompt
    found = problems(import_graph(root))
    assert found[0] == up and len(found) == 2 and found[1].startswith(cycle), found


def test_a_lazy_registry_entry_that_points_up_is_an_arrow_up(tmp_path):
    root = _copy_with(tmp_path, "rlg.registry", '\n\n_LATE = {"x": "rlg.harness.runner:run_job"}\n')
    line = len((root / "rlg" / "registry.py").read_text().splitlines())
    assert problems(import_graph(root), lazy=import_graph(root, lazy=True)) == [
        f"rlg.registry:{line} names (a lazy registry entry) rlg.harness.runner: an arrow up from base to app"]
