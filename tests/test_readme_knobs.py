"""The README's knob table names every core knob with its declared default (issue 42: one set of defaults, shown)."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import RunConfig
from shared.knobs import knobs

README = Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> list[tuple[list[str], list[str]]]:
    text = README.read_text()
    table = text[text.index("## Knobs"):text.index("## Outputs")]
    rows = []
    for line in table.splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 3:
            continue
        keys = re.findall(r"`([a-z0-9-]+)`", cells[0])
        defaults = [d.strip() for d in re.split(r",(?![^(]*\))| / ", cells[1])]
        rows.append((keys, defaults))
    return rows


def _same(shown: str, default) -> bool:
    token = shown.split(" (")[0].strip().strip("`")
    if re.fullmatch(r"\d+\^\d+", token):  # 2^24
        base, power = token.split("^")
        token = str(int(base) ** int(power))
    if isinstance(default, bool):
        return token == str(default).lower()
    if isinstance(default, (int, float)):
        return float(token) == float(default)
    return token.strip('"') == default


def test_every_core_knob_is_in_the_readme_with_its_default():
    declared = {key: f.default for key, (f, _) in knobs(RunConfig).items()}
    shown: dict[str, str] = {}
    for keys, defaults in _rows():
        assert len(keys) == len(defaults), (keys, defaults)
        shown.update(zip(keys, defaults))
    missing = sorted(set(declared) - set(shown))
    assert not missing, f"README knob table lacks {missing}"
    wrong = {key: (shown[key], declared[key]) for key in declared if not _same(shown[key], declared[key])}
    assert not wrong, f"README shows other defaults than the code: {wrong}"
