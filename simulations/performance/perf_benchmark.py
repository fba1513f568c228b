"""Performance benchmark: what a round costs, where the time goes, and what memory the clients take.

Eight sections, printed side by side in one rich table (see docs/performance.md):

- ``steps``: one local training step (forward, backward, AdamW) of the masked model, dense-gradient
  reference path (``sparse-grad=false``) vs the sparse weight-gradient path, same batches, median
  of several steps after warm-up, plus how far the two paths' trained values differ;
- ``round``: a real simulation (``simulations.engines.launcher``, default settings, few rounds); each
  round's wall time split into the clients' local training (``train_seconds`` in history.json)
  and everything else (the federated overhead);
- ``grouping``: padding and step time of uniformly random batches vs length-grouped ones
  (``group-by-length``): real tokens / processed tokens over one pass of 8,000 SST-2 training
  sentences, and the mean step time (sparse path) in alternating random/grouped blocks;
- ``optimizer``: one AdamW step on pafi's and full's value counts, torch's default (foreach) vs the fused
  kernel the training loop uses (:func:`shared.training.adamw`), alternating blocks;
- ``dense``: full's local step (every parameter trains), the value vector split once per forward pass vs one
  slice per parameter, alternating blocks;
- ``parallel``: one process on all the cores vs one single-thread process per core, the same pafi steps
  (steps per second summed over the processes): what ``--cpus-per-client`` trades;
- ``aggregate``: server-side stacking + FedAvg + state update for 10/100/1000 synthetic replies;
- ``rss``: peak resident memory of the whole simulation process tree (SuperLink, ServerApp,
  Ray workers; RSS summed, sampled by psutil) for 10/100/1000 virtual clients, fraction-train 0.1.

Each section stores its figures in ``--out/<section>.json``; the table shows every stored section,
so sections can run separately (each under the shared lock) and still print side by side:

    python -m simulations.performance.perf_benchmark --sections steps,aggregate
    python -m simulations.performance.perf_benchmark --sections grouping
    python -m simulations.performance.perf_benchmark --sections round
    python -m simulations.performance.perf_benchmark --sections rss --rss-clients 10,100,1000
    python -m simulations.performance.perf_benchmark --sections none     # just print the stored table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from simulations import REPO, SST2
from simulations.performance.lib.perf_steps import (_median_spread, bench_dense, bench_grouping, bench_optimizer,
                                                    bench_parallel, bench_steps)
from simulations.performance.lib.rss import run_with_peak_rss


def _base_run_config(args, out: Path, **extra) -> dict:
    conf = {"data-dir": str(args.data_dir), "output-dir": str(out)}
    if args.model:
        conf["model"] = args.model
    conf.update(extra)
    return conf


def bench_round(args) -> dict:
    """Round wall time vs the clients' local-training seconds, from a real simulation's history."""
    out = args.out / "round-run"
    conf = _base_run_config(args, out, **{"num-server-rounds": args.rounds})
    run = run_with_peak_rss(conf, args.round_clients, args.timeout)
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
    rounds = [{"round": r["round"], "round_seconds": r["round_seconds"], "train_seconds": r.get("train_seconds", 0.0),
               "overhead_share": 1.0 - r.get("train_seconds", 0.0) / r["round_seconds"]}
              for r in history if r["round"] >= 1 and r["round_seconds"] > 0]
    steady = [r["overhead_share"] for r in rounds if r["round"] >= 2] or [r["overhead_share"] for r in rounds]
    return {"run": run, "rounds": rounds, "overhead_share_all": _share(rounds),
            "overhead_share_steady": statistics.median(steady) if steady else None,
            "num_supernodes": args.round_clients, "run_config": conf}


def _share(rounds: list[dict]) -> float | None:
    wall = sum(r["round_seconds"] for r in rounds)
    return 1.0 - sum(r["train_seconds"] for r in rounds) / wall if wall else None


def bench_aggregate(args) -> dict:
    """Stack n decoded (k,) replies, FedAvg them (values and head), update the global state."""
    from server.aggregation import aggregate

    # One thread by default: aggregation is memory-bound, and on a loaded 2-core machine a second
    # OpenMP thread mostly spin-waits for a core (measured 10-100x slower under contention).
    torch.set_num_threads(args.agg_threads)
    k, h, out = args.agg_k, 770, {}
    gen = torch.Generator().manual_seed(0)
    for n in (10, 100, 1000):
        deltas = [torch.randn(k, generator=gen) * 1e-3 for _ in range(n)]
        heads = [torch.randn(h, generator=gen) * 1e-3 for _ in range(n)]
        weights = torch.randint(10, 2000, (n,), generator=gen).double()
        values, head = torch.zeros(k), torch.zeros(h)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            delta = aggregate("fedavg", torch.stack(deltas), weights)
            head_delta = aggregate("fedavg", torch.stack(heads), weights)
            values, head = values + delta, head + head_delta
            times.append(time.perf_counter() - t0)
        out[str(n)] = _median_spread(times)
    return {"k": k, "head": h, "replies": out, "threads": torch.get_num_threads()}


def bench_rss(args) -> dict:
    """Peak RSS of whole simulations with 10/100/1000 virtual clients, fraction-train 0.1."""
    out = {}
    for n in args.rss_clients:
        run_dir = args.out / f"rss-{n}"
        conf = _base_run_config(args, run_dir, **{
            "num-server-rounds": args.rss_rounds, "fraction-train": 0.1, "local-steps": args.rss_local_steps,
            "max-eval-examples": 128, "min-available-nodes": n})
        if args.rss_model:
            conf["model"] = args.rss_model
        out[str(n)] = run_with_peak_rss(conf, n, args.timeout)
        out[str(n)]["completed"] = (run_dir / "summary.json").is_file()
        out[str(n)]["model"] = conf.get("model", "bundled all-MiniLM-L6-v2")
    return {"clients": out, "rounds": args.rss_rounds, "local_steps": args.rss_local_steps}


SECTIONS = {"steps": bench_steps, "grouping": bench_grouping, "optimizer": bench_optimizer, "dense": bench_dense,
            "parallel": bench_parallel,
            "round": bench_round,
            "aggregate": bench_aggregate, "rss": bench_rss}


def _fmt_spread(d: dict, unit: float = 1.0, suffix: str = " s") -> str:
    return f"{d['median'] * unit:.3f}{suffix} (min {d['min'] * unit:.3f}, max {d['max'] * unit:.3f}, n={d['n']})"


def _verdict(ok: bool | None) -> str:
    return "[dim]n/a[/]" if ok is None else ("[green]met[/]" if ok else "[red]missed[/]")


def table_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(section, measure, value, target, verdict) rows for every stored section."""
    rows = []
    if "steps" in results:
        r = results["steps"]
        rows += [("local step", f"dense-gradient step (k={r['k']:,}, {r['threads']} threads)", _fmt_spread(r["dense"]), "", ""),
                 ("local step", "sparse-gradient step", _fmt_spread(r["sparse"]), "", ""),
                 ("local step", "speed-up dense/sparse", f"{r['ratio']:.2f}x", ">= 1.3x", _verdict(r["ratio"] >= 1.3)),
                 ("local step", "max |values_sparse - values_dense|",
                  f"{r['max_abs_value_diff']:.2e} (of max |v| {r['max_abs_value']:.2e})", "float32 tolerance", "")]
    if "grouping" in results:
        r = results["grouping"]
        sh, w, st = r["real_token_share"], r["mean_width"], r["step"]
        where = f"{r['rows']:,} SST-2 rows, batch {r['batch_size']}, mean length {r['mean_length']:.1f}"
        rows += [("grouping", f"real / processed tokens, random batches ({where})",
                  f"{sh['random']:.3f} (mean width {w['random']:.1f})", "", ""),
                 ("grouping", "real / processed tokens, length-grouped batches",
                  f"{sh['grouped']:.3f} (mean width {w['grouped']:.1f})", ">= 0.9", _verdict(sh["grouped"] >= 0.9)),
                 ("grouping", f"step, random batches ({r['method']}, {r['threads']} threads)",
                  f"mean {st['random']['mean']:.3f} s; " + _fmt_spread(st["random"]), "", ""),
                 ("grouping", "step, length-grouped batches",
                  f"mean {st['grouped']['mean']:.3f} s; " + _fmt_spread(st["grouped"]), "", ""),
                 ("grouping", "speed-up random/grouped (mean step)", f"{r['ratio']:.2f}x", ">= 2.5x",
                  _verdict(r["ratio"] >= 2.5))]
    if "optimizer" in results:
        r = results["optimizer"]
        for n, d in r["sizes"].items():
            rows += [("optimizer", f"AdamW step, {int(n):,} values + head, foreach ({r['threads']} thread)",
                      _fmt_spread(d["foreach"], 1e3, " ms"), "", ""),
                     ("optimizer", "AdamW step, fused", _fmt_spread(d["fused"], 1e3, " ms"), "", ""),
                     ("optimizer", "speed-up foreach/fused (median); max |values diff|",
                      f"{d['ratio']:.2f}x; {d['max_abs_diff']:.1e}", "", "")]
    if "dense" in results:
        r = results["dense"]
        rows += [("full step", f"one slice per parameter ({r['n']:,} values, {r['threads']} thread)",
                  _fmt_spread(r["slices"]), "", ""),
                 ("full step", "one split per forward pass (the tuner)", _fmt_spread(r["split"]), "", ""),
                 ("full step", "speed-up (median); max |values diff|", f"{r['ratio']:.2f}x; {r['max_abs_value_diff']:.1e}",
                  "", "")]
    if "parallel" in results:
        r = results["parallel"]
        sps = r["steps_per_second"]
        rows += [("parallel", f"1 process x {r['procs']} threads (steps/s, pafi, grouped batches)",
                  ", ".join(f"{x:.2f}" for x in sps["one_process"]), "", ""),
                 ("parallel", f"{r['procs']} processes x 1 thread (summed steps/s)",
                  ", ".join(f"{x:.2f}" for x in sps["processes"]), "", ""),
                 ("parallel", "throughput ratio (means)", f"{r['ratio']:.2f}x", "", "")]
    if "round" in results:
        r = results["round"]
        for rd in r["rounds"]:
            rows.append(("round", f"round {rd['round']}: wall / local training",
                         f"{rd['round_seconds']:.1f} s / {rd['train_seconds']:.1f} s -> overhead {rd['overhead_share']:.1%}", "", ""))
        share = r["overhead_share_steady"]
        model = r["run_config"].get("model", "bundled all-MiniLM-L6-v2")
        rows.append(("round", f"federated overhead share (rounds >= 2, {r['num_supernodes']} nodes, {model})",
                     "-" if share is None else f"{share:.1%}", "<= 5%", _verdict(None if share is None else share <= 0.05)))
    if "aggregate" in results:
        r = results["aggregate"]
        for n, d in r["replies"].items():
            target = "< 50 ms" if n == "100" else ""
            rows.append(("aggregate", f"{n} replies, k={r['k']:,} (+head {r['head']}), {r.get('threads', '?')} thread(s)", _fmt_spread(d, 1e3, " ms"),
                         target, _verdict(d["median"] < 0.05) if n == "100" else ""))
    if "rss" in results:
        r = results["rss"]
        for n, d in r["clients"].items():
            gib = d["peak_rss_bytes"] / 2**30
            ok = d["completed"] and gib < 6 if n == "1000" else None
            rows.append(("peak RSS", f"{n} clients, fraction-train 0.1 ({d['model']}, {r['rounds']} round(s), "
                         f"{r['local_steps']} local step(s))",
                         f"{gib:.2f} GiB over {d['processes_at_peak']} processes, {d['wall_seconds']:.0f} s"
                         + ("" if d["completed"] else " [red](run incomplete)[/]"),
                         "< 6 GiB" if n == "1000" else "", _verdict(ok) if n == "1000" else ""))
    return rows


def render(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedsparse performance (see docs/performance.md)")
    for col in ("section", "measure", "value", "target", "verdict"):
        table.add_column(col, overflow="fold")
    for row in table_rows(results):
        table.add_row(*row)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="steps,grouping,optimizer,round,aggregate,rss", help="comma list of " + ",".join(SECTIONS) + " or none")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "perf")
    ap.add_argument("--data-dir", type=Path, default=SST2)
    ap.add_argument("--model", default="", help="model for steps/round/rss (default: the bundled MiniLM)")
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per block (after 2 warm-up steps)")
    ap.add_argument("--repeats", type=int, default=4, help="alternating dense/sparse blocks")
    ap.add_argument("--group-steps", type=int, default=24, help="timed steps per grouping block (after 2 warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the step section (0 = default)")
    ap.add_argument("--device", default="auto", help="device of the step section (auto, cpu, cuda, cuda:N, mps)")
    ap.add_argument("--precision", default="fp32", help="precision of the step section (fp32 or bf16)")
    ap.add_argument("--opt-sizes", default="53084,22713986", help="value counts of the optimizer section (pafi's k, "
                    "full's N on MiniLM)")
    ap.add_argument("--parallel-procs", type=int, default=2, help="cores compared by the parallel section")
    ap.add_argument("--parallel-steps", type=int, default=20, help="timed steps per process in the parallel section")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the round-split simulation")
    ap.add_argument("--round-clients", type=int, default=10)
    ap.add_argument("--agg-k", type=int, default=54_000)
    ap.add_argument("--agg-threads", type=int, default=1)
    ap.add_argument("--rss-clients", default="10,100,1000")
    ap.add_argument("--rss-model", default="", help="model for the RSS runs (default: --model)")
    ap.add_argument("--rss-rounds", type=int, default=1)
    ap.add_argument("--rss-local-steps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.rss_clients = [int(n) for n in args.rss_clients.split(",") if n]
    for name in [s for s in args.sections.split(",") if s and s != "none"]:
        if name not in SECTIONS:
            ap.error(f"unknown section {name!r}; choose from {sorted(SECTIONS)}")
        print(f"== {name} ...", flush=True)
        result = SECTIONS[name](args)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    results = {n: json.loads((args.out / f"{n}.json").read_text()) for n in SECTIONS if (args.out / f"{n}.json").is_file()}
    render(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
