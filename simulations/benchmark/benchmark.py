"""Communication-cost benchmark: every run of a preset through Flower's Simulation Engine, one results folder.

    python -m simulations.benchmark --preset quick [--out DIR] [-c "num-server-rounds=5 lr=0.01"]

Each run goes to ``<out>/runs/<name>/`` (history.json, summary.json, run.log, run_config.json);
a rerun skips runs whose summary.json exists and continues a stopped run from its last round's
checkpoint (``resume``), so a preset of many seeds resumes where it stopped. At the end ``<out>`` holds runs.csv,
rounds.csv, results.json, results.md and the PNG plots, all in the task's headline metric. ``-c`` overrides any
run-config key for every run (and ``target-score``, alias ``target-accuracy``: the target of the headline score).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from server.checkpoint import CHECKPOINT_NAME
from simulations.engines import REPO, flower_env, format_run_config, parse_overrides, stop_tree
from simulations.benchmark.lib.matrix import Preset, PresetError, RunSpec, load_preset
from simulations.benchmark.lib.plots import write_plots
from simulations.benchmark.lib.report import load_run, write_report
from simulations.benchmark.lib.run_store import (  # noqa: F401  (re-exported: the benchmark's public names)
    EXTENSION_KEYS, RUN_LOCK, RunBusyError, StaleResultError, can_extend, can_resume, describe, is_done,
    history_rounds, plan_runs, run_holder, run_lock,
)

console = Console(stderr=True)


def run_one(spec: RunSpec, run_dir: Path, preset: Preset, progress: Progress, task, *, resume: bool) -> int:
    """Launch one run (``simulations.engines.launcher`` in a child process, output to run.log), from round 1 or, with
    ``resume`` (the plan's decision, :func:`plan_runs`), from its checkpoint, and follow its history.json on the
    round bar; returns the launcher's exit code (124 on timeout)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(spec.run_config, **{"output-dir": str(run_dir)})
    (run_dir / "run_config.json").write_text(json.dumps(config, indent=2))
    if resume:
        config["resume"] = True
        # an extended run is no longer finished: stopped part-way, it must read as stopped (and resume), not as done
        (run_dir / "summary.json").unlink(missing_ok=True)
        progress.console.print(f"[dim]resume {spec.name} from its checkpoint[/dim]")
    else:  # a fresh start (or --rerun): nothing of a run it replaces stays, its log included
        for name in ("history.json", CHECKPOINT_NAME, "run.log"):
            (run_dir / name).unlink(missing_ok=True)
    progress.reset(task, total=int(config.get("num-server-rounds", 10)), description=f"{spec.name}: starting")
    sim = preset.simulation
    nodes = spec.num_supernodes or sim.num_supernodes
    cmd = [sys.executable, "-m", "simulations.engines.launcher", "--num-supernodes", str(nodes),
           "--cpus-per-client", str(sim.cpus_per_client), "--gpus-per-client", str(sim.gpus_per_client),
           "--ray-cpus", str(sim.ray_cpus), "--timeout", str(sim.timeout),
           "--flwr-home", str(run_dir / ".flwr"),
           "-c", format_run_config(config)]
    proc = None
    try:
        with open(run_dir / "run.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=flower_env(run_dir / ".flwr"), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + sim.timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            done, score = history_rounds(run_dir)
            desc = f"{spec.name}: score {100 * score:.1f}" if score is not None else f"{spec.name}: starting"
            progress.update(task, completed=done, description=desc)
    finally:
        if proc is not None:  # on timeout, Ctrl-C or SIGTERM: the launcher stops its SuperLink tree, then we stop it
            stop_tree(proc.pid)
    return proc.returncode if proc.returncode is not None else 124


# how many times one invocation resumes a run that ended early after making progress (see make_run)
MAX_RESUMES = 3


def make_run(spec: RunSpec, run_dir: Path, preset: Preset, progress: Progress, task, *, resume: bool) -> int:
    """:func:`run_one`, and again from the checkpoint while the run ends early (exit 1, no summary) after adding
    rounds: a run of hours dies of what it cannot see, such as the machine pausing past Flower's task heartbeat (the
    SuperLink then ends the run, and ``flwr run`` returns as if it had finished). A resumed run is bit-identical to
    one made in a single go, so this costs nothing; a run that fails again without adding a round, a timeout (124)
    or a stop (Ctrl-C, SIGTERM) is not retried, and at most :data:`MAX_RESUMES` resumes are made."""
    rounds = history_rounds(run_dir)[0] if resume else 0
    rc = run_one(spec, run_dir, preset, progress, task, resume=resume)
    for _ in range(MAX_RESUMES):
        now = history_rounds(run_dir)[0]
        if rc != 1 or (run_dir / "summary.json").is_file() or now <= rounds or not can_resume(spec, run_dir):
            break
        progress.console.print(f"[yellow]{spec.name} ended after round {now} without finishing (see "
                               f"{run_dir / 'run.log'}); resuming it from its checkpoint[/yellow]")
        rounds = now
        rc = run_one(spec, run_dir, preset, progress, task, resume=True)
    return rc


def select_runs(preset: Preset, only: str | None) -> list[RunSpec]:
    """The runs ``--only``'s comma-separated name globs select; a glob that selects nothing is refused (a typo, or a
    group's name where its runs are ``<group>-s<seed>``), so the benchmark never ends "done" having run nothing."""
    globs = [g.strip() for g in (only or "*").split(",") if g.strip()]
    for g in globs:
        if not any(fnmatch.fnmatch(s.name, g) for s in preset.runs):
            near = sorted(s.name for s in preset.runs if s.group == g or s.name.startswith(g))[:3]
            hint = f"did you mean {', '.join(near)} or '{g}-*'?" if near else "--list prints every run's name"
            raise PresetError(f"--only {g!r} matches no run of preset {preset.name}: {hint}")
    return [s for s in preset.runs if any(fnmatch.fnmatch(s.name, g) for g in globs)]


def run_matrix(preset: Preset, out: Path, plan: list[tuple[RunSpec, str]]) -> list[str]:
    """Make the runs of ``plan`` (from :func:`plan_runs`), skipping the done ones; returns the names of runs that
    failed."""
    failed = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        runs_task = progress.add_task("runs", total=len(plan))
        round_task = progress.add_task("rounds", total=1)
        for spec, action in plan:
            run_dir = out / "runs" / spec.name
            if action == "skip":
                progress.console.print(f"[dim]skip {spec.name}: results exist[/dim]")
            else:
                t0 = time.monotonic()
                try:
                    with run_lock(run_dir, spec.name):
                        (run_dir / "summary.json").unlink(missing_ok=True)
                        rc = make_run(spec, run_dir, preset, progress, round_task, resume=action == "resume")
                except RunBusyError as exc:  # another process took it since the plan was made: leave it to that one
                    progress.console.print(f"[red]{exc}[/red]")
                    failed.append(spec.name)
                    progress.advance(runs_task)
                    continue
                ok = rc == 0 and (run_dir / "summary.json").is_file()
                progress.console.print(f"{'done' if ok else '[red]FAILED[/red]'} {spec.name} in "
                                       f"{time.monotonic() - t0:.0f}s" + ("" if ok else f" (see {run_dir / 'run.log'})"))
                if not ok:
                    failed.append(spec.name)
            progress.advance(runs_task)
    return failed


def reproduce_command(args: argparse.Namespace) -> str:
    """The command that makes (and, rerun, resumes) every run of the report: the invocation's preset, results
    folder, overrides and simulation flags, without the flags that only pick what this one call does."""
    cmd = ["python", "-m", "simulations.benchmark", "--preset", args.preset]
    if args.out is not None:
        cmd += ["--out", str(args.out)]
    if args.run_config:
        cmd += ["-c", args.run_config]
    for flag in ("num_supernodes", "cpus_per_client", "gpus_per_client", "ray_cpus"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(cmd)


def write_results(preset: Preset, out: Path, command: str | None = None) -> Path | None:
    """Report and plots over every finished run of the preset; returns results.md (None if no run finished).
    ``command`` (what makes the runs) heads the report, with how many of the preset's runs it holds."""
    done = [load_run(out / "runs" / s.name, s.group, s.variant) for s in preset.runs
            if (out / "runs" / s.name / "summary.json").is_file()]
    if not done:
        return None
    meta = {"preset": preset.name, "description": preset.description,
            "simulation": vars(preset.simulation), "command": command,
            "runs_finished": len(done), "runs_in_preset": len(preset.runs)}
    made_by = None
    if command:
        rebuild = "`--report-only` added rebuilds this page and the plots from the runs alone."
        made_by = (f"All {len(done)} runs of the preset, made by `{command}`; {rebuild}" if len(done) == len(preset.runs)
                   else f"{len(done)} of the preset's {len(preset.runs)} runs, made by `{command}`: rerun it to make "
                        f"or resume the others (finished runs are skipped); {rebuild}")
    write_report(out, done, preset.target_score, f"Communication-cost benchmark: preset `{preset.name}`", meta,
                 made_by=made_by)
    write_plots(out, done, preset.target_score)
    return out / "results.md"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so ``run_one``'s ``finally`` stops the launcher's tree.

    SIGTERM would otherwise end this process and leave the launcher, its SuperLink and Ray running;
    SIGINT is ignored outright in a job a non-interactive shell put in the background.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="preset name in simulations/benchmark/presets/ or a .toml path")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: the preset's `out`, else outputs/benchmark/<preset>)")
    ap.add_argument("-c", "--run-config", default="", help="overrides for every run, e.g. \"num-server-rounds=3\"")
    ap.add_argument("--num-supernodes", type=int, default=None)
    ap.add_argument("--cpus-per-client", type=int, default=None)
    ap.add_argument("--gpus-per-client", type=float, default=None,
                    help="GPUs per virtual client (fractional: 0.25 = four clients per GPU)")
    ap.add_argument("--ray-cpus", type=int, default=None,
                    help="CPUs the local Ray schedules clients on (0: the machine's; e.g. 3 on 2 cores, see launcher)")
    ap.add_argument("--only", default=None, help="comma-separated name globs of the runs to make, e.g. \"pafi-*,magnitude-*\"")
    ap.add_argument("--rerun", action="store_true", help="run again even where results exist")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report and plots")
    ap.add_argument("--list", action="store_true", help="print the runs of the preset and exit")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.run_config)
    target = overrides.pop("target-score", overrides.pop("target-accuracy", None))
    try:
        preset = load_preset(args.preset, overrides, {"num_supernodes": args.num_supernodes,
                                                      "cpus_per_client": args.cpus_per_client,
                                                      "gpus_per_client": args.gpus_per_client,
                                                      "ray_cpus": args.ray_cpus})
    except PresetError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if target is not None:
        preset = dataclasses.replace(preset, target_score=float(target))
    out = (args.out or preset.out or REPO / "outputs" / "benchmark" / preset.name).resolve()
    try:
        specs = select_runs(preset, args.only)
        if args.list:
            for spec in specs:
                print(describe(spec, out, args.rerun))
            return 0
        plan = [] if args.report_only else plan_runs(specs, out, args.rerun)
    except (PresetError, StaleResultError, RunBusyError) as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        return 2
    failed = run_matrix(preset, out, plan) if plan else []
    report = write_results(preset, out, reproduce_command(args))
    if report is not None:
        print(report.read_text())
        console.print(f"results in {out}")
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed: {', '.join(failed)}[/red]")
    return 1 if failed or report is None else 0


if __name__ == "__main__":
    install_signal_handlers()
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        console.print(f"[red]interrupted ({exc}): the running simulation was stopped; finished runs are kept, "
                      f"rerun the same command to go on[/red]")
        sys.exit(130)
