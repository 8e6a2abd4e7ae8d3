"""The engine's modules depend on each other one way, and the apps use only its public
surface. Read from the source: every import, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "jobs"


def engine_imports(path: Path) -> set[str]:
    """The `jobs` modules that the file at `path` imports."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jobs.")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module == "jobs" or (node.level == 1 and not module and path.parent == ENGINE):
                imported |= {a.name for a in node.names}
            elif node.level == 1 and path.parent == ENGINE:
                imported.add(module.split(".")[0])
            elif module.startswith("jobs."):
                imported.add(module.split(".")[1])
    return imported


def engine_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in ENGINE.glob("*.py")}
    return {name: engine_imports(path) & modules.keys() for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each as the path that closes it."""
    found, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        for neighbour in sorted(graph.get(node, ())):
            walk(neighbour, [*path, node])
        done.add(node)

    for node in sorted(graph):
        walk(node, [])
    return found


def test_the_engine_has_no_import_cycle():
    assert cycles(engine_graph()) == []


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_job_type_registry_knows_nothing_of_celery_or_the_rest_of_the_engine():
    tree = ast.parse((ENGINE / "registry.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }

    assert not any(name.startswith(("celery", "kombu", "jobsite")) for name in imported)
    assert engine_graph()["registry"] <= {"context"}  # only for a type annotation


def writes_job_state(path: Path) -> bool:
    """Whether the module updates a job's status, adds to a timeline or holds SQL that does."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            keywords = {k.arg for k in node.keywords}
            if name == "update" and keywords & {"status", "attempts", "cancel_requested"}:
                return True
            if name == "JobEvent" or (name == "create" and "kind" in keywords):
                return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if 'UPDATE "' in node.value or 'INSERT INTO "' in node.value:
                return True
    return False


def test_only_the_store_writes_a_jobs_status_or_its_events():
    writers = {path.stem for path in ENGINE.glob("*.py") if writes_job_state(path)}

    assert writers == {"store"}


def test_the_apps_use_the_engine_through_its_public_surface():
    for app in ("notes", "reports", "webhooks"):
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            assert engine_imports(path) <= {"engine"}, path
