"""Attack benchmark: attack x aggregator on real aligned deltas of the bundled MiniLM (docs/robustness.md).

Honest deltas come from the project's own path: ``parse_run_config`` -> ``build_runtime`` (pafi mask) ->
``client_partition`` (Dirichlet partitions of SST-2) -> ``train_local`` from the round-1 global state
(values 0, the fresh head), one (k + head,) vector per client, weighted by its partition size as in a round.
They are cached (``--out``/honest_deltas.pt, keyed by the settings), so reruns take seconds:

    python -m simulations.robustness.attack_benchmark                  # 10 clients, 3 attackers, table + CSV + markdown
    python -m simulations.robustness.attack_benchmark --refresh        # retrain the honest deltas
    python -m simulations.robustness.attack_benchmark --federated      # + whole federations under attack (resumable)
    python -m simulations.robustness.attack_benchmark --federated --defaults   # only the default-settings matrix

The first ``--attackers`` clients attack; every aggregator runs through ``server_step`` (the server's
path: clipping, aggregation, optimizer) and is scored by ``||agg - honest_mean|| / ||honest_mean||``, where
honest_mean is the example-weighted mean of the honest clients' true deltas (what FedAvg would compute
without attackers). The attackers' statistics are the honest replies' (omniscient attackers).
``--federated`` also runs the cells of ``simulations.robustness.lib.adversary.FEDERATED_CELLS`` as whole federations
(the real server and clients, the attackers' replies rewritten in flight) and prints their accuracy.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch

from server.aggregation import weighted_mean
from server.server_opt import ServerSettings, server_step
from simulations import REPO, SST2
from simulations.robustness.lib.attacks import ATTACKS, HUGE_CLAIM, attack_rows, honest_stats, alie_z_max

BENCH_AGGREGATORS = ("fedavg", "norm-clip", "median", "trimmed-mean", "centered-clipping", "multi-krum")


@dataclass
class Scenario:
    """One round under attack: the replies (n, d), their claimed weights (n,), which rows are honest (n,)."""

    deltas: torch.Tensor
    weights: torch.Tensor
    honest: torch.Tensor


def make_scenario(attack: str, deltas: torch.Tensor, weights: torch.Tensor, attackers: int) -> Scenario:
    """Clients 0..attackers-1 replace their true delta by the attack (``weight-claim``: client 0 alone sends
    its sign-flipped delta and claims ``HUGE_CLAIM`` examples; ``none``: every client is honest)."""
    n = deltas.shape[0]
    honest = torch.ones(n, dtype=torch.bool)
    out, w = deltas.clone(), weights.double().clone()
    if attack == "none":
        return Scenario(out, w, honest)
    if attack == "weight-claim":
        honest[0] = False
        out[0], w[0] = -deltas[0], HUGE_CLAIM
        return Scenario(out, w, honest)
    honest[:attackers] = False
    mean, std = honest_stats(deltas, honest)
    out[:attackers] = attack_rows(attack, deltas[:attackers], mean, std, n)
    return Scenario(out, w, honest)


def robust_settings(name: str, attackers: int, n: int) -> ServerSettings:
    """The server settings each benchmarked rule runs with: trimming and Krum sized for the attackers."""
    plan = "fedavg" if name == "norm-clip" else name
    return ServerSettings(aggregator=plan, trim_fraction=min(attackers / n, 0.49), krum_f=attackers)


def aggregate_scenario(name: str, sc: Scenario, attackers: int) -> torch.Tensor:
    """The server's update for this scenario under aggregator ``name`` (server-lr 1, no state); (d,) float32.

    ``norm-clip`` is DP-style clipping (Sun et al. 2019) of every reply to the median reply norm,
    then the equal-weight mean (``dp-clip-norm`` with no noise)."""
    hp = robust_settings(name, attackers, sc.deltas.shape[0])
    if name == "norm-clip":
        norms = sc.deltas.double().norm(dim=1)
        hp = ServerSettings(aggregator="fedavg", dp_clip_norm=float(norms.median()))
    update, _ = server_step(sc.deltas, sc.weights, {}, hp, 1)
    return update


def relative_errors(sc: Scenario, attackers: int, names=BENCH_AGGREGATORS) -> dict[str, float]:
    """||agg - honest_mean|| / ||honest_mean|| per aggregator (honest_mean: true weights, honest rows)."""
    ref = weighted_mean(sc.deltas[sc.honest], sc.weights[sc.honest]).double()
    return {name: float((aggregate_scenario(name, sc, attackers).double() - ref).norm() / ref.norm())
            for name in names}


def attack_matrix(deltas: torch.Tensor, weights: torch.Tensor, attackers: int,
                  attacks=ATTACKS, names=BENCH_AGGREGATORS) -> dict[str, dict[str, float]]:
    """attack -> aggregator -> relative error on the given honest deltas (n, d) and example counts (n,)."""
    return {a: relative_errors(make_scenario(a, deltas, weights, attackers), attackers, names) for a in attacks}


def train_honest(run_config: dict, num_clients: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-1 deltas of ``num_clients`` clients trained with the project's own code; (n, d), (n,)."""
    from shared.device import to_cpu
    from shared.runtime import build_runtime, client_partition
    from shared.settings import local_loss, parse_run_config
    from shared.training import train_local
    from wire.protocol import flatten_head

    cfg = parse_run_config(run_config)
    rt = build_runtime(cfg)
    names, head0 = rt.base.head_names, to_cpu(rt.tuner.head_state())  # deltas are built on the CPU
    head_vec0 = flatten_head(head0, names)
    lr, head_lr = rt.method.learning_rates(cfg)
    rows, counts = [], []
    for pid in range(num_clients):
        rt.tuner.load(torch.zeros(rt.tuner.k), {k: v.clone() for k, v in head0.items()})
        data = client_partition(cfg, rt.base.tokenizer, pid, num_clients)
        params = rt.tuner.trainable()
        groups = [{"params": params[:1], "lr": lr}, {"params": params[1:], "lr": head_lr}]
        res = train_local(rt.base.model, groups, data, cfg.local_steps, cfg.batch_size,
                          seed=cfg.seed * 100_003 + pid * 1_009 + 1, weight_decay=cfg.weight_decay,
                          group_by_length=cfg.group_by_length, loss=local_loss(cfg))
        delta = rt.tuner.values.detach().cpu().clone()
        rows.append(torch.cat([delta, flatten_head(to_cpu(rt.tuner.head_state()), names) - head_vec0]))
        counts.append(float(len(data)))
        print(f"client {pid}: {len(data)} examples, loss {res.loss:.4f}, {res.seconds:.1f}s", flush=True)
    return torch.stack(rows).float(), torch.tensor(counts, dtype=torch.float64)


def honest_deltas(run_config: dict, num_clients: int, cache: Path, refresh: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached honest deltas for these settings, training them first if absent or stale."""
    key = {"run_config": dict(sorted(run_config.items())), "num_clients": num_clients}
    if cache.exists() and not refresh:
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == repr(key):
            return stored["deltas"], stored["weights"]
    deltas, weights = train_honest(run_config, num_clients)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": repr(key), "deltas": deltas, "weights": weights}, cache)
    return deltas, weights


def markdown_table(matrix: dict[str, dict[str, float]]) -> str:
    """The matrix as a markdown table, attacks as rows; the best rule of each row in bold."""
    names = list(next(iter(matrix.values())))
    lines = ["| attack | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for attack, row in matrix.items():
        best = min(row.values())
        cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in row.values()]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(tables: dict[str, dict[str, dict[str, float]]], out: Path, text: str) -> None:
    """attack_matrix.csv (long form: weighting, attack, aggregator, error) and attack_matrix.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "attack_matrix.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["weights", "attack", "aggregator", "relative_error"])
        for weighting, matrix in tables.items():
            for attack, row in matrix.items():
                writer.writerows([weighting, attack, name, f"{err:.6f}"] for name, err in row.items())
    (out / "attack_matrix.md").write_text(text + "\n")


def _parse_overrides(items: list[str]) -> dict:
    import tomllib
    return tomllib.loads("\n".join(items)) if items else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--attackers", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "attack_benchmark")
    ap.add_argument("--refresh", action="store_true", help="retrain the honest deltas")
    ap.add_argument("-c", "--run-config", action="append", default=[], help='extra knobs, e.g. "mask-density=0.01"')
    ap.add_argument("--federated", action="store_true", help="also run whole federations under attack")
    ap.add_argument("--defaults", action="store_true",
                    help="with --federated: only the default-settings matrix (DEFAULT_CELLS: every attack with 1, 2 "
                         "and 3 attackers, FedAvg and every defence at its default); no one-round matrix")
    ap.add_argument("--fed-clients", type=int, default=None,
                    help="federated runs: clients (default 5, all sampled every round; --defaults: 10)")
    ap.add_argument("--fed-attackers", type=int, default=2, help="federated runs: attackers among them")
    ap.add_argument("--fed-rounds", type=int, default=None, help="federated runs: rounds (default 6; --defaults: 8)")
    ap.add_argument("--tabulate", action="store_true",
                    help="with --defaults: write the table and CSV of the cells finished so far, run none")
    ap.add_argument("--fed-eval-examples", type=int, default=400,
                    help="--defaults: max-eval-examples of each run (0 = the whole split)")
    ap.add_argument("--fed-results", type=Path, default=REPO / "docs" / "results" / "robustness",
                    help="--defaults: where defaults_matrix.csv and .md are written")
    ap.add_argument("--fed-local-steps", type=int, default=10, help="federated runs: local steps per round")
    ap.add_argument("--fed-batch-size", type=int, default=16, help="federated runs: local batch size")
    ap.add_argument("--fed-partitioner", default="iid", choices=("iid", "dirichlet"),
                    help="federated runs: partitions (iid: the attack's effect is not mixed with the label skew's)")
    args = ap.parse_args(argv)
    if (args.defaults or args.tabulate) and not (args.federated and args.defaults):
        raise SystemExit("--defaults needs --federated, and --tabulate needs --federated --defaults")
    if args.defaults:
        return _federated_defaults(args)
    args.fed_clients = 5 if args.fed_clients is None else args.fed_clients
    args.fed_rounds = 6 if args.fed_rounds is None else args.fed_rounds
    if not 0 < args.attackers < args.num_clients / 2:
        raise SystemExit(f"--attackers must be a minority of --num-clients, got {args.attackers}")
    if args.federated and not 0 < args.fed_attackers < args.fed_clients / 2:
        raise SystemExit(f"--fed-attackers must be a minority of --fed-clients, got {args.fed_attackers}")
    # The settings docs/robustness.md's figures were measured with, pinned so that later changes of the
    # defaults (head-lr 1e-3, length-grouped batches) do not move them; -c overrides any of them.
    run_config = {"data-dir": str(SST2), "method": "pafi", "mask-density": 0.005, "local-steps": args.local_steps,
                  "dirichlet-alpha": 0.5, "lr": 0.005, "head-lr": 0.005, "group-by-length": False,
                  **_parse_overrides(args.run_config)}
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    deltas, weights = honest_deltas(run_config, args.num_clients, args.out / "honest_deltas.pt", args.refresh)
    tables = {"examples": attack_matrix(deltas, weights, args.attackers),
              "equal": attack_matrix(deltas, torch.ones_like(weights), args.attackers)}
    text = _report(deltas, weights, args.attackers, tables)
    if args.federated:
        text += "\n\n" + _federated(run_config, args)
    write_outputs(tables, args.out, text)
    print(text + f"\n\nwritten: {args.out / 'attack_matrix.md'}, {args.out / 'attack_matrix.csv'}")


def _federated_defaults(args) -> None:
    """The default-settings matrix: declared defaults but for the run's size (rounds, local steps, evaluation
    examples, ``-c`` overrides); resumable per cell; the table and CSV under ``--fed-results``."""
    from simulations.robustness.lib.adversary import (DEFAULT_CELLS, default_rows, default_table, run_default_cells,
                                                      write_default_rows)

    n = 10 if args.fed_clients is None else args.fed_clients
    if n < 7:
        raise SystemExit(f"--defaults needs --fed-clients >= 7 (3 attackers must stay a minority), got {n}")
    rc = {"data-dir": str(SST2), "num-server-rounds": 8 if args.fed_rounds is None else args.fed_rounds,
          "local-steps": args.fed_local_steps, "max-eval-examples": args.fed_eval_examples,
          **_parse_overrides(args.run_config)}
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    cells = run_default_cells(DEFAULT_CELLS, rc, n, args.out, run=not args.tabulate)
    rows = default_rows(cells, rc, n)
    write_default_rows(rows, args.fed_results / "defaults_matrix.csv")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(rc.items()) if k != "data-dir")
    text = (f"Default-settings matrix: {n} clients, FedAvg and every defence at its default; {settings}; "
            f"{len(cells)} of {len(DEFAULT_CELLS)} cells done\n\n" + default_table(rows))
    (args.fed_results / "defaults_matrix.md").write_text(text + "\n")
    print(text + f"\n\nwritten: {args.fed_results / 'defaults_matrix.csv'}, {args.fed_results / 'defaults_matrix.md'}")


def _federated(base: dict, args) -> str:
    """The federated cells under these settings (every client sampled every round), as a titled table."""
    from simulations.robustness.lib.adversary import FEDERATED_CELLS, federated_table, run_cells

    f = args.fed_attackers
    rc = {**base, "num-server-rounds": args.fed_rounds, "fraction-train": 1.0, "max-length": 64,
          "local-steps": args.fed_local_steps, "batch-size": args.fed_batch_size,
          "partitioner": args.fed_partitioner, "krum-f": f}
    cells = run_cells(FEDERATED_CELLS, rc, args.fed_clients, f, args.out)
    return (f"Federated runs: {args.fed_clients} clients (all sampled every round), clients 0..{f - 1} attack "
            f"every round, {args.fed_rounds} rounds x {args.fed_local_steps} local steps of batch {args.fed_batch_size}, pafi at "
            f"{rc['mask-density']}, {args.fed_partitioner} partitions; accuracy on the 872-row SST-2 dev split "
            f"(multi-krum cells: krum-f = {f}, min-train-replies = {2 * f + 3}):\n\n" + federated_table(cells))


def _report(deltas: torch.Tensor, weights: torch.Tensor, attackers: int, tables: dict) -> str:
    """Both tables with a header line of the figures that explain them."""
    n = deltas.shape[0]
    norms = deltas.double().norm(dim=1).tolist()
    share = float(weights[:attackers].sum() / weights.sum())
    ratio = float(weighted_mean(deltas, weights).double().norm()) / median(norms)
    head = (f"Relative error ||agg - honest_mean|| / ||honest_mean||; {attackers} attackers "
            f"(clients 0..{attackers - 1}) of {n}; d = {deltas.shape[1]} (pafi values + head); "
            f"alie-zmax z = {alie_z_max(n, attackers):.3f}; "
            f"median reply norm {median(norms):.4g}; ||mean|| / median reply norm {ratio:.3f}; "
            f"the attackers' clients hold {share:.0%} of the examples.")
    parts = [head]
    for weighting, matrix in tables.items():
        what = ("weights = each client's num-examples (its partition size), honest_mean example-weighted"
                if weighting == "examples" else "weights = 1 for every client, honest_mean the plain mean")
        parts += [f"\n{what}:\n", markdown_table(matrix)]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
