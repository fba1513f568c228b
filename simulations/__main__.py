"""``python -m simulations``: every command of the four rooms with its invocation and first line."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOMS = ("engines", "benchmark", "robustness", "performance")


def commands(root: Path = Path(__file__).resolve().parent) -> list[tuple[str, str]]:
    """(invocation, the command's first docstring line) of every command module, room by room."""
    out = []
    for room in ROOMS:
        for path in sorted((root / room).glob("*.py")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            eponymous = path.stem == room and (root / room / "__main__.py").is_file()  # run as the room itself
            name = f"simulations.{room}" if eponymous else f"simulations.{room}.{path.stem}"
            out.append((f"python -m {name}", doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def main() -> int:
    rows = commands()
    width = max(len(cmd) for cmd, _ in rows)
    for cmd, line in rows:
        print(f"{cmd:<{width}}  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
