"""End to end: the `ci` benchmark preset on the tiny model through the Simulation Engine, then a resumed rerun."""

from __future__ import annotations

import csv
import json

import pytest

from simulations.benchmark import benchmark

pytestmark = pytest.mark.integration


def test_ci_preset_end_to_end_and_resume(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "bench"
    args = ["--preset", "ci", "--out", str(out), "-c", f"model='{tiny_model_dir}'"]
    assert benchmark.main(args) == 0

    for name in ("runs.csv", "rounds.csv", "results.json", "results.md", "accuracy_vs_mb.png",
                 "accuracy_vs_round.png", "accuracy_vs_round_last10.png", "bytes_per_client_round.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "runs.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"pafi-float32", "magnitude-int8-block64"}
    pafi, mag = rows["pafi-float32"], rows["magnitude-int8-block64"]
    assert int(pafi["rounds"]) == 2 and int(mag["rounds"]) == 2
    # Measured bytes: int8 saves 3 of 4 bytes per value; the block scales, a second array and the fixed
    # per-message framing (~1.7 kB, large next to this tiny model's 885 values) take back part of it.
    saved = float(pafi["bytes_up_per_client_round"]) - float(mag["bytes_up_per_client_round"])
    assert 1.5 * int(pafi["num_trainable"]) < saved < 3 * int(pafi["num_trainable"])
    assert float(pafi["codec_rel_error"]) == 0.0 and 0.0 < float(mag["codec_rel_error"]) < 0.05
    with open(out / "rounds.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 3  # rounds 0..2 per run
    config = json.loads((out / "runs" / "magnitude-int8-block64" / "run_config.json").read_text())
    assert config["int8-block-size"] == 64 and config["model"] == str(tiny_model_dir)

    # Resumable: a rerun skips both runs (their summary.json exists) and rebuilds the same report.
    log_mtime = (out / "runs" / "pafi-float32" / "run.log").stat().st_mtime
    capsys.readouterr()
    assert benchmark.main(args) == 0
    assert (out / "runs" / "pafi-float32" / "run.log").stat().st_mtime == log_mtime
    assert "skip pafi-float32" in capsys.readouterr().err

    # A run stopped before its summary continues from its checkpoint instead of starting over.
    pafi_dir = out / "runs" / "pafi-float32"
    before = json.loads((pafi_dir / "history.json").read_text())
    (pafi_dir / "summary.json").unlink()
    capsys.readouterr()
    assert benchmark.main(args) == 0
    assert "resume pafi-float32 from its checkpoint" in capsys.readouterr().err
    assert [r["accuracy"] for r in json.loads((pafi_dir / "history.json").read_text())] == [r["accuracy"] for r in before]
    assert "resumed from" in (pafi_dir / "run.log").read_text()

    # A different config for the same folder is refused instead of silently mixing results.
    capsys.readouterr()
    assert benchmark.main(args[:-1] + [f"model='{tiny_model_dir}' lr=0.1"]) == 2
    assert "holds results for a different config" in capsys.readouterr().err.replace("\n", " ")
