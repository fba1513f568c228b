"""``python -m simulations``: the map of the rooms lists every command with the invocation that runs it."""

from __future__ import annotations

import subprocess
import sys

from simulations.__main__ import commands


def test_every_command_is_listed_once_with_its_invocation(repo_root):
    listed = dict(commands())
    assert "python -m simulations.benchmark" in listed  # the benchmark runs as its room (the runs of record's line)
    assert "python -m simulations.benchmark.benchmark" not in listed
    assert "python -m simulations.engines.launcher" in listed  # make run
    tops = [p for room in ("engines", "benchmark", "robustness", "performance")
            for p in (repo_root / "simulations" / room).glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(listed) == len(tops) == 15
    assert all(line for line in listed.values()), listed  # every command says what it does in one line


def test_the_map_prints_without_importing_the_commands(repo_root):
    out = subprocess.run([sys.executable, "-m", "simulations"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    assert "python -m simulations.robustness.attack_benchmark" in out and len(out.strip().splitlines()) == 15
    code = ("import sys; from simulations.__main__ import commands; commands(); "
            "print(sorted(m for m in sys.modules if m.startswith('simulations.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['simulations.__main__']"  # ast only: listing imports no command
