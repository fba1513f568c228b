"""The benchmark's run store: every selected run is planned before any starts; a folder made with another config or
a run another process is making now stops the command in one line, with nothing launched."""

from __future__ import annotations

import json
import os

import pytest


def test_a_stale_run_folder_stops_the_command_before_its_first_run(tmp_path, capsys, monkeypatch):
    """The plan is made for every selected run before any starts: a folder made with another config, even the
    last one's, is refused in one line with nothing launched (it used to surface only when its turn came)."""
    from simulations.benchmark import benchmark
    preset_file = tmp_path / "p.toml"
    preset_file.write_text('seeds = [1, 2, 3]\n[run-config]\nnum-server-rounds = 4\n[matrix]\nmethod = ["pafi"]\n')
    out = tmp_path / "out"
    preset = benchmark.load_preset(str(preset_file))
    done, stopped, stale = (out / "runs" / f"pafi-s{s}" for s in (1, 2, 3))
    for run_dir, spec in zip((done, stopped, stale), preset.runs):
        run_dir.mkdir(parents=True)
        (run_dir / "run_config.json").write_text(json.dumps({**spec.run_config, "output-dir": "x"}))
        (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(3)]))
    (done / "summary.json").write_text("{}")
    (stopped / "checkpoint.safetensors").write_bytes(b"x")
    assert [a for _, a in benchmark.plan_runs(preset.runs[:2], out)] == ["skip", "resume"]
    assert [a for _, a in benchmark.plan_runs(preset.runs[:2], out, rerun=True)] == ["start", "start"]

    assert benchmark.main(["--preset", str(preset_file), "--out", str(out), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:2] for line in listed] == [["pafi-s1", "[done (2 rounds)]"],
                                                          ["pafi-s2", "[resumes at round 3 of 4]"],
                                                          ["pafi-s3", "[starts over (has 2 rounds)]"]]

    (stale / "run_config.json").write_text(json.dumps({**preset.runs[2].run_config, "lr": 0.5}))
    (stale / "summary.json").write_text("{}")
    monkeypatch.setattr(benchmark, "run_one", lambda *a, **k: pytest.fail("a run was launched"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert benchmark.main(["--preset", str(preset_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pafi-s3 holds results for a different config (keys ['lr'])" in err.replace("\n", " ")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing launched, nothing touched
    assert benchmark.main(["--preset", str(preset_file), "--out", str(out), "--list", "--only", "pafi-s3"]) == 0
    assert "[refused: made with another config (2 rounds)]" in capsys.readouterr().out
    (stale / "summary.json").unlink()  # stopped, not finished: its rounds are not thrown away unasked either
    assert benchmark.main(["--preset", str(preset_file), "--out", str(out)]) == 2
    assert "holds 2 rounds of a stopped run made with a different config (keys ['lr'])" in \
        capsys.readouterr().err.replace("\n", " ")
    assert [a for _, a in benchmark.plan_runs(preset.runs, out, rerun=True)] == ["start"] * 3


def test_a_run_another_benchmark_is_making_is_refused_not_written_twice(tmp_path, capsys, monkeypatch):
    """Two `make bench PRESET=paper` at once (a second terminal, a queue script beside a manual run) would both write
    one run's history and checkpoint; the second is refused before any work, and --list says who holds it."""
    import subprocess
    import sys
    from simulations.benchmark import benchmark
    preset_file = tmp_path / "p.toml"
    preset_file.write_text('seeds = [1, 2]\n[run-config]\nnum-server-rounds = 4\n[matrix]\nmethod = ["pafi"]\n')
    out = tmp_path / "out"
    run_dir = out / "runs" / "pafi-s2"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from simulations.benchmark.benchmark import run_lock\n"
                               "with run_lock(Path(sys.argv[1]), 'pafi-s2'):\n    print('held', flush=True); time.sleep(120)",
         str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=benchmark.REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert benchmark.run_holder(run_dir) == holder.pid
        monkeypatch.setattr(benchmark, "run_one", lambda *a, **k: pytest.fail("a run was launched"))
        assert benchmark.main(["--preset", str(preset_file), "--out", str(out)]) == 2
        err = capsys.readouterr().err.replace("\n", " ")
        assert f"pafi-s2 is being made by another benchmark process (pid {holder.pid}, 0 of ? rounds so far)" in err
        assert not (out / "runs" / "pafi-s1").exists()  # refused before the first run, which is free
        assert benchmark.main(["--preset", str(preset_file), "--out", str(out), "--list"]) == 0
        assert f"pafi-s2  [being made now by pid {holder.pid}: round 0 of 4]" in capsys.readouterr().out
        with pytest.raises(benchmark.RunBusyError, match="pafi-s2 is being made by another benchmark process"):
            with benchmark.run_lock(run_dir, "pafi-s2"):  # the race after the plan: run_matrix leaves it to the holder
                pass
    finally:
        holder.kill()
        holder.wait()
    assert benchmark.run_holder(run_dir) is None  # a killed holder's flock is gone with it
    launched = []
    monkeypatch.setattr(benchmark, "run_one", lambda spec, run_dir, *a, **k: launched.append(
        (spec.name, benchmark.run_holder(run_dir), int((run_dir / benchmark.RUN_LOCK).read_text()))) or 1)
    assert benchmark.main(["--preset", str(preset_file), "--out", str(out), "--only", "pafi-s2"]) == 1
    assert launched == [("pafi-s2", os.getpid(), os.getpid())]  # held, by this process, while the run is made



def _attempts(run_dir, plan):
    """A stand-in for run_one: each attempt ends at the next (round, exit code) of ``plan``, after writing the history
    and checkpoint a real run leaves behind (a summary only when it exits 0)."""
    plan, calls = iter(plan), []

    def attempt(spec, run_dir_, preset, progress, task, *, resume):
        from simulations.benchmark.lib.run_store import history_rounds
        calls.append((resume, history_rounds(run_dir)[0]))
        end, rc = next(plan)
        (run_dir / "history.json").write_text(json.dumps([{"round": r, "accuracy": 0.5} for r in range(end + 1)]))
        (run_dir / "checkpoint.safetensors").write_bytes(b"x")
        if rc == 0:
            (run_dir / "summary.json").write_text("{}")
        return rc
    return attempt, calls


@pytest.mark.parametrize("plan, rc, calls", [
    # paused past the heartbeat twice: resumed from rounds 3 and 6, finished
    ([(3, 1), (6, 1), (9, 0)], 0, [(False, 0), (True, 3), (True, 6)]),
    # fails again without adding a round: one retry, then left for the user
    ([(3, 1), (3, 1)], 1, [(False, 0), (True, 3)]),
    # a timeout or a stop is not retried, whatever it made
    ([(5, 124)], 124, [(False, 0)]),
    # at most MAX_RESUMES resumes in one invocation
    ([(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], 1, [(False, 0), (True, 1), (True, 2), (True, 3)]),
])
def test_a_run_that_ends_early_after_adding_rounds_resumes_from_its_checkpoint(tmp_path, monkeypatch, plan, rc, calls):
    """Session 13: a VM pause made the SuperLink end random-s43 at round 72 (task heartbeat expired, `flwr run`
    returned); the benchmark now resumes such a run at once instead of reporting it failed and going on."""
    from rich.progress import Progress

    from simulations.benchmark import benchmark
    from simulations.benchmark.lib.matrix import Preset, RunSpec, Simulation
    assert benchmark.MAX_RESUMES == 3
    spec = RunSpec("pafi-s1", {"method": "pafi", "num-server-rounds": 9})
    run_dir = tmp_path / "pafi-s1"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text(json.dumps({**spec.run_config, "output-dir": str(run_dir)}))
    attempt, seen = _attempts(run_dir, plan)
    monkeypatch.setattr(benchmark, "run_one", attempt)
    with Progress(disable=True) as progress:
        got = benchmark.make_run(spec, run_dir, Preset("p", "", None, Simulation()), progress,
                                 progress.add_task("r", total=1), resume=False)
    assert (got, seen) == (rc, calls)
