"""Each DVC stage depends on the code it runs: dvc.yaml's code deps are exactly the stage's import closure.

The closure is read from the source with `ast`: the stage script, the `maskvlp` CLI's top level with
the functions the stage's subcommand runs, and then every module those import, counting imports inside
functions (any of them may run). So a module only evaluation uses re-runs `evaluate` alone, and the
lists cannot drift from the imports (a test, not a comment, keeps them in step).
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = ("shard", "pretrain", "evaluate")


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(nodes) -> set[str]:
    """maskvlp modules imported anywhere inside `nodes` (functions included)."""
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("maskvlp")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskvlp"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return found


def packages(name: str) -> set[str]:
    """A module and the packages whose __init__ runs when it is imported."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(stage: str) -> set[Path]:
    script = ast.parse((ROOT / "stages" / f"{stage}.py").read_text())
    cli = ast.parse(module_file("maskvlp.cli").read_text())
    functions = {n.name: n for n in cli.body if isinstance(n, ast.FunctionDef)}
    wanted, todo = set(), ["main", f"cmd_{stage}"]
    while todo:  # the stage's handler and the cli functions it calls (the parser only names the others)
        name = todo.pop()
        if name in wanted or name not in functions:
            continue
        wanted.add(name)
        if name != "build_parser":
            todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    top = [n for n in cli.body if not isinstance(n, ast.FunctionDef)] + [functions[n] for n in wanted]
    modules, todo = {"maskvlp.cli"}, sorted(imported([script]) | imported(top))
    while todo:
        for name in packages(todo.pop()):
            path = module_file(name)
            if name not in modules and path is not None:
                modules.add(name)
                todo += sorted(imported([ast.parse(path.read_text())]))
    return {module_file(name).relative_to(ROOT) for name in modules}


def declared(stage: str) -> set[Path]:
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith("src/"):
            files |= {p.relative_to(ROOT) for p in path.rglob("*.py")} if path.is_dir() else {Path(dep)}
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_exactly_the_code_it_runs(stage):
    needed, listed = closure(stage), declared(stage)
    assert not needed - listed, f"dvc.yaml's {stage} stage misses {sorted(map(str, needed - listed))}"
    assert not listed - needed, (
        f"dvc.yaml's {stage} stage lists code it never imports: {sorted(map(str, listed - needed))}"
    )


def test_training_does_not_depend_on_evaluation_code():
    pretrain = {p.name for p in closure("pretrain")}
    assert {"evaluate.py", "linearprobe.py"}.isdisjoint(pretrain)
    assert {"evaluate.py", "linearprobe.py"} <= {p.name for p in closure("evaluate")}
