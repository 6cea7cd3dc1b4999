"""The house rules of DESIGN.md's module map, read from the source (no TensorFlow needed).

- what varies by task is asked of the `Task` objects in `tasks.py`: no other module
  compares a task with a task's name;
- Keras' private modules are read in `structure.py` alone;
- module-level imports inside the package form no cycle, and `finetunekit.data` builds
  no models (it imports none of the modules that do).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finetunekit"
PRIVATE = "keras.src"
TASK_NAMES = {"multiclass", "binary", "multilabel", "regression"}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("finetunekit", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {s for element in node.elts for s in strings(element)}
    return set()


def task_comparisons(tree: ast.Module) -> list[str]:
    """`task == "binary"`, `spec.task in ("regression", ...)` and the like."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        named = set().union(*(strings(o) for o in operands)) & TASK_NAMES
        about_task = any("task" in ast.unparse(o).lower() for o in operands)
        if named and about_task:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_tasks_branches_on_task_names():
    offenders = {
        name: found
        for name, tree in modules().items()
        if name != "finetunekit.tasks" and (found := task_comparisons(tree))
    }
    assert not offenders, f"ask the Task object instead: {offenders}"


def test_the_rule_sees_a_branch():
    tree = ast.parse('if classifier.task == "regression":\n    pass\nok = x == "binary"\n')
    assert task_comparisons(tree) == ["line 1: classifier.task == 'regression'"]


def test_keras_privates_only_in_structure():
    readers = sorted(
        name
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PRIVATE))
        or (isinstance(node, ast.Import) and any(a.name.startswith(PRIVATE) for a in node.names))
        or (isinstance(node, ast.Attribute) and ast.unparse(node).startswith(PRIVATE))
    )
    assert set(readers) <= {"finetunekit.structure"}, readers


def module_imports(tree: ast.Module, name: str, known: set[str]) -> set[str]:
    """The package's modules that `name` imports when it is imported (module level)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in known:
                found.add(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found - {name}


def test_no_import_cycles_and_data_builds_no_models():
    trees = modules()
    known = set(trees)
    graph = {name: module_imports(tree, name, known) for name, tree in trees.items()}
    # A package's __init__ importing its own submodules is how packages are made.
    graph = {
        name: {t for t in targets if not t.startswith(name + ".")}
        for name, targets in graph.items()
    }
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join((*path, target))}"
            if target not in state:
                visit(target, (*path, target))
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, (name,))

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    data = {m for name in known if name.startswith("finetunekit.data") for m in reachable(name)}
    model_builders = {
        "finetunekit.bases", "finetunekit.heads", "finetunekit.finetuner", "finetunekit._steps"
    }
    assert not data & model_builders, data & model_builders
