"""The layout's promises, checked statically: shared/ never imports flwr, the client never imports server/,
no import cycles, and no module outside a method's own folder tests a method's name."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

PACKAGES = ("shared", "wire", "server", "client", "simulations")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


@pytest.fixture(scope="module")
def graph(repo_root) -> dict[str, set[str]]:
    mods = _modules(repo_root)
    return {name: _imports(path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles(graph):
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_client_never_imports_the_server(graph):
    for name, deps in graph.items():
        if name.startswith(("client", "shared", "wire")):
            assert not {d for d in deps if d.startswith("server")}, name


def test_shared_never_imports_flwr(repo_root):
    code = ("import importlib, pkgutil, sys, shared, wire.codec, wire.index, wire.protocol\n"
            "for m in pkgutil.walk_packages(shared.__path__, 'shared.'):\n"
            "    importlib.import_module(m.name)\n"
            "from shared.methods import methods; methods()\n"
            "bad = sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.'))\n"
            "print(bad[:3]); sys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


def test_no_module_outside_a_method_folder_tests_a_method_name(repo_root):
    from shared.methods import methods

    names = "|".join(re.escape(n) for n in methods())
    pattern = re.compile(rf"""(method\s*(==|!=|\bin\b|\bnot in\b)\s*[\(\[\{{]?\s*["']({names})["'])""")
    folders = {m.replace("-", "_") for m in methods()}
    offenders = []
    for name, path in _modules(repo_root).items():
        if name.startswith("shared.methods.") and name.split(".")[2] in folders:
            continue  # a method's own folder may name itself
        offenders += [f"{path.relative_to(repo_root)}: {m[0]}" for m in pattern.findall(path.read_text())]
    assert not offenders, offenders


def test_no_module_tests_a_model_family_name(repo_root):
    """What a layout offers is found from its modules (``shared/architectures.py``), never from ``model_type`` or a
    model class's name: the apps and the methods serve a new family that follows a known layout unchanged."""
    pattern = re.compile(r"""(model_type\s*(==|!=|\bin\b)|isinstance\([^)]*(Bert|GPT2|Llama|Qwen2)\w*(Model|For))""")
    offenders = [f"{path.relative_to(repo_root)}: {m[0]}" for name, path in _modules(repo_root).items()
                 if name.startswith(("server", "client", "shared", "wire")) and not name.startswith("shared.tiny")
                 for m in pattern.findall(path.read_text())]
    assert not offenders, offenders


def _reachable(graph: dict[str, set[str]], roots: tuple[str, ...]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_the_fab_carries_the_apps_code_and_nothing_else(graph, repo_root):
    """``fab-include`` names the packages the ServerApp and ClientApp import; flwr's own build, run on this checkout
    plus a stray 12 MB merged model under docs/results (what a paper run leaves there, ignored by a nested .gitignore
    that flwr does not read), gives a FAB of those packages only, far under Flower's 10 MiB limit."""
    from flwr.cli.build import build_fab_from_files, collect_files

    include = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    packages = {p.split("/")[0] for p in include}
    needed = {m.split(".")[0] for m in _reachable(graph, ("server.server_app", "client.client_app"))}
    assert needed == packages, f"the apps import {sorted(needed)}; fab-include names {sorted(packages)}"

    files = dict(collect_files(repo_root))
    files["docs/results/paper/runs/pafi-s1/model/tokenizer.json"] = b"{" + b" " * (12 * 2**20) + b"}"
    fab, _ = build_fab_from_files(files)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert {n.split("/")[0] for n in names} == packages | {"pyproject.toml", ".info"}
    assert "server/server_app.py" in names and "client/client_app.py" in names
    assert len(fab) < 2 * 2**20


# ---- simulations/: rooms with their commands at the top and their machinery in lib/ ---------------------------
ROOMS = ("engines", "benchmark", "robustness", "performance")


def _is_command(path: Path) -> bool:
    """A command module: it runs as ``python -m`` (an ``if __name__ == "__main__"`` block)."""
    return any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
               for n in ast.parse(path.read_text()).body)


def test_simulations_holds_rooms_not_modules(repo_root):
    """Nothing lives directly in simulations/ but its map (``__init__``) and ``python -m simulations``; every
    folder is one of the rooms, each a package with a ``lib/`` package."""
    root = repo_root / "simulations"
    assert sorted(p.name for p in root.glob("*.py")) == ["__init__.py", "__main__.py"]
    rooms = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == sorted(ROOMS), rooms
    for room in ROOMS:
        assert (root / room / "__init__.py").is_file() and (root / room / "lib" / "__init__.py").is_file(), room


def test_commands_at_a_rooms_top_machinery_in_its_lib(repo_root):
    """A room's top holds commands only (each runnable with ``python -m``); its ``lib/`` holds none, and no
    deeper folder holds code: the tree says what runs and what serves."""
    root = repo_root / "simulations"
    for room in ROOMS:
        top = [p for p in (root / room).glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert top and all(_is_command(p) for p in top), [p.name for p in top if not _is_command(p)]
        assert not [p.name for p in (root / room / "lib").glob("*.py") if _is_command(p)], room
        assert not list((root / room / "lib").glob("*/*.py")), room


def test_a_room_uses_another_only_through_its_package(graph):
    """``simulations.<room>.<anything>`` is imported only from inside that room (and by tests): other rooms import
    the room's package, its stated public names. A room's package imports its own ``lib/`` only, never a command
    (so ``python -m simulations.<room>.<command>`` runs the module once)."""
    offenders = []
    for name, deps in graph.items():
        here = name.split(".")[1] if name.startswith("simulations.") and name.count(".") >= 1 else None
        for dep in deps:
            parts = dep.split(".")
            if dep.startswith("simulations.") and len(parts) > 2 and parts[1] in ROOMS and parts[1] != here:
                offenders.append(f"{name} imports {dep}")
        if here in ROOMS and name == f"simulations.{here}":
            offenders += [f"{name} imports the command {d}" for d in deps
                          if d.startswith(f"simulations.{here}.") and not d.startswith(f"simulations.{here}.lib")]
    assert not offenders, offenders


def test_the_apps_never_import_the_simulations(graph):
    for name, deps in graph.items():
        if name.startswith(("client", "server", "shared", "wire")):
            assert not {d for d in deps if d.startswith("simulations")}, name


def test_no_module_outside_the_task_folders_tests_a_task_name(repo_root):
    """The server, the client, the methods and the simulations ask the task (shared.tasks), never its name."""
    from shared.tasks import tasks

    names = "|".join(re.escape(n) for n in tasks())
    pattern = re.compile(rf"""(dataset\s*(==|!=|\bin\b|\bnot in\b)\s*[\(\[\{{]?\s*["']({names})["'])""")
    offenders = []
    for name, path in _modules(repo_root).items():
        if not name.startswith("shared.tasks"):
            offenders += [f"{path.relative_to(repo_root)}: {m[0]}" for m in pattern.findall(path.read_text())]
    assert not offenders, offenders
