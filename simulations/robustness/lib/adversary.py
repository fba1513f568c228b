"""Attackers in a real federation: a Grid wrapper that rewrites the attackers' train replies in flight.

The attack benchmark's matrix scores one round's aggregate; this module runs whole federations under
attack, to measure what an attack does to the model the server ends with. Every part of the run is
the real one (the ServerApp's ``main``, the one server path with its wall, guards and aggregator, the
ClientApp's training): :class:`AttackingGrid` sits between the server and an in-process grid
(:class:`simulations.engines.lib.inprocess.LocalGrid`) and, in each pull, replaces the train replies of the attacker
nodes by the attack computed from that round's honest replies (omniscient, colluding attackers, the
threat model of Baruch et al. 2019 and Xie et al. 2019). The attackers train honestly first, so
``sign-flip`` and ``scale-20`` start from their own true delta. The rewritten replies are well formed:
the same arrays, dtype and fingerprint, so only the server's robustness stands between them and the model.

    python -m simulations.robustness.attack_benchmark --federated     # the cells of FEDERATED_CELLS, resumable
    python -m simulations.robustness.attack_benchmark --federated --defaults   # DEFAULT_CELLS under the defaults

``--defaults`` runs the matrix of issue 40: every attack of DEFAULT_ATTACKS with 1, 2 and 3 attackers (partitions
0..f-1) of the federation, FedAvg and every defence at its default, and the no-attack run for reference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from simulations.robustness.lib.attacks import (ATTACKS, DECLARED_CLAIM, FEDERATED_ATTACKS, HUGE_CLAIM, alie_z_max,
                                               attack_rows)
from wire.protocol import HANDSHAKE, TRAIN, UP_KEYS
from wire.records import message_parts, to_recorddict

# (attack, aggregator): what an attack does to FedAvg, and whether each defence undoes it
FEDERATED_CELLS = (
    ("none", "fedavg"),
    ("scale-20", "fedavg"),
    ("scale-20", "centered-clipping"),
    ("alie-zmax", "fedavg"),
    ("alie-zmax", "median"),
    ("alie-zmax", "centered-clipping"),
)

# the default-settings matrix (``--defaults``): (attack, attackers); the single-attacker cells first, then 3, then 2,
# and last ALIE at z_max with one attacker (z_max(10, 1) = 0: it sends the honest mean)
DEFAULT_ATTACKS = ("scale-20", "huge", "declare-1e9", "zeros", "ipm-0.5", "alie-1.0", "alie-zmax")
DEFAULT_CELLS = ((("none", 0),) + tuple((a, f) for f in (1, 3, 2) for a in DEFAULT_ATTACKS
                                        if (a, f) != ("alie-zmax", 1)) + (("alie-zmax", 1),))


class AttackingGrid(Grid):
    """``inner`` with the train replies of ``attackers`` (node ids) replaced by ``attack``'s rows.

    Works on grids that return a round's replies in one pull (the in-process grid): the honest
    statistics are those of the honest train replies of the same pull. Needs ``value-dtype = float32``
    (the attack is written in the wire's values); any other dtype is refused. ``population``: ALIE's z_max
    from the federation's size and attackers (Baruch et al.'s n and f), not from each round's sampled replies
    (3 attackers among 5 sampled would own the majority, where z_max is infinite). ``declare-1e9`` also
    rewrites the attackers' handshake replies: each declares ``DECLARED_CLAIM`` examples.
    """

    def __init__(self, inner: Grid, attack: str, attackers: Iterable[int], population: int | None = None):
        if attack not in ATTACKS + FEDERATED_ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS + FEDERATED_ATTACKS}")
        self.inner, self.attack, self.attackers = inner, attack, frozenset(attackers)
        self.rows_attack = attack  # the attack_rows name (ALIE at the federation's z_max, with a population)
        if attack == "alie-zmax" and population is not None and self.attackers:
            self.rows_attack = f"alie-{alie_z_max(population, len(self.attackers))!r}"
        self.rewritten = 0  # train replies replaced so far

    def set_run(self, run) -> None:  # pragma: no cover - delegated
        self.inner.set_run(run)

    @property
    def run(self):  # pragma: no cover
        return self.inner.run

    def create_message(self, *args, **kwargs):  # pragma: no cover
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        got = list(self.inner.pull_messages(message_ids))
        if self.attack == "declare-1e9":
            for m in got:
                if m.metadata.message_type == HANDSHAKE and m.metadata.src_node_id in self.attackers \
                        and not m.has_error():
                    arrays, metrics, config = message_parts(m)
                    m.content = to_recorddict(arrays, config, {**metrics, "num-examples": DECLARED_CLAIM})
        train = [m for m in got if m.metadata.message_type == TRAIN and not m.has_error()]
        bad = [m for m in train if m.metadata.src_node_id in self.attackers]
        if self.attack != "none" and bad:
            self._rewrite(train, bad)
        return got

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))

    def _rewrite(self, train: list[Message], bad: list[Message]) -> None:
        parts = {id(m): message_parts(m) for m in train}
        for m in train:
            arrays = parts[id(m)][0]
            if any(arrays.get(key) is None or arrays[key].dtype != np.float32 for key in UP_KEYS):
                raise ValueError("the federated attack benchmark needs value-dtype='float32' (plain float32 replies)")
        rows = {id(m): torch.from_numpy(np.concatenate([parts[id(m)][0][key] for key in UP_KEYS])) for m in train}
        honest = [rows[id(m)] for m in train if m.metadata.src_node_id not in self.attackers]
        stack = torch.stack(honest).double() if honest else torch.zeros(1, next(iter(rows.values())).numel())
        mean = stack.mean(dim=0)
        std = stack.std(dim=0, unbiased=True) if stack.shape[0] > 1 else torch.zeros_like(mean)
        if self.attack == "weight-claim":
            bad = bad[:1]  # one liar: it sign-flips its delta and claims HUGE_CLAIM examples
            forged = -torch.stack([rows[id(m)] for m in bad])
        else:
            own = torch.stack([rows[id(m)] for m in bad])
            forged = attack_rows(self.rows_attack, own, mean, std, len(train))
        k = parts[id(train[0])][0][UP_KEYS[0]].size
        for m, row in zip(bad, forged):
            arrays, metrics, config = parts[id(m)]
            row = row.float().numpy()
            arrays = {**arrays, UP_KEYS[0]: row[:k].copy(), UP_KEYS[1]: row[k:].copy()}
            if self.attack in ("weight-claim", "declare-1e9"):
                metrics = {**metrics, "num-examples": HUGE_CLAIM if self.attack == "weight-claim" else DECLARED_CLAIM}
            m.content = to_recorddict(arrays, config, metrics)
            self.rewritten += 1


def run_cell(attack: str, aggregator: str, run_config: dict, num_clients: int, attackers: int,
             out_dir: Path, population: int | None = None) -> dict:
    """One federated run under ``attack`` with ``aggregator``; its per-round accuracy and the wall's notes, and per
    round what the server did (``rounds``: the bound, the median norm, clipped / capped / rejected replies, the
    skip reason). ``population``: see :class:`AttackingGrid`."""
    from client.client_app import app as client_app
    from server.server_app import main
    from shared.settings import declared_defaults
    from simulations.engines import LocalGrid

    rc = {**declared_defaults(), "value-dtype": "float32", **run_config, "aggregator": aggregator,
          "output-dir": str(out_dir), "min-available-nodes": num_clients}
    if aggregator == "multi-krum":  # a round it cannot score is skipped, not failed
        rc["min-train-replies"] = max(int(rc.get("min-train-replies", 1)), 2 * int(rc.get("krum-f", 1)) + 3)
    if rc["value-dtype"] != "float32":
        raise ValueError(f"the federated attack runs need value-dtype='float32', got {rc['value-dtype']!r}")
    inner = LocalGrid(client_app, rc, num_clients)
    nodes = sorted(inner.get_node_ids())  # partition i is node nodes[i]: the first `attackers` attack
    grid = AttackingGrid(inner, attack, nodes[:attackers], population)
    t0 = time.perf_counter()
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    history = json.loads((out_dir / "history.json").read_text())
    return {"attack": attack, "aggregator": aggregator, "attackers": attackers,
            "accuracy": [r["accuracy"] for r in history],
            "aggregated": [r.get("aggregated") for r in history], "rewritten": grid.rewritten,
            "notes": sorted({n for r in history for n in r.get("rejected_reasons", []) + r.get("notes", [])})[:6],
            "rounds": [round_evidence(r) for r in history if r["round"] >= 1],
            "seconds": round(time.perf_counter() - t0, 1)}


def round_evidence(rec: dict) -> dict:
    """What the server did in one round of history.json: its bound and median norm, how many replies it clipped,
    capped or rejected, and why it skipped the round (None if it did not)."""
    reasons = rec.get("rejected_reasons", [])
    skipped = next((r for r in reasons if r.startswith("round skipped")), None)
    return {"round": rec["round"], "accuracy": rec["accuracy"], "loss": rec["loss"],
            "aggregated": rec.get("aggregated"), "norm_bound": rec.get("norm_bound"),
            "norm_median": rec.get("norm_median"), "clipped": sum("clipped" in r and "update norm" in r for r in reasons),
            "capped": sum("capped" in r and "num-examples" in r for r in reasons), "rejected": rec.get("rejected", 0),
            "skipped": skipped}


def run_cells(cells, run_config: dict, num_clients: int, attackers: int, out: Path) -> dict[str, dict]:
    """Every cell not already in ``out``/federated.json (resumable), each written as soon as it ends."""
    store = out / "federated.json"
    key = repr({"run_config": dict(sorted(run_config.items())), "num_clients": num_clients, "attackers": attackers})
    done = json.loads(store.read_text()) if store.exists() else {}
    if done.get("key") != key:
        done = {"key": key, "cells": {}}
    for attack, aggregator in cells:
        name = f"{attack}|{aggregator}"
        if name in done["cells"]:
            continue
        print(f"federated: {attack} x {aggregator} ...", flush=True)
        done["cells"][name] = run_cell(attack, aggregator, run_config, num_clients, attackers,
                                       out / "runs" / f"{attack}-{aggregator}")
        print(f"  accuracy per round {done['cells'][name]['accuracy']}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(done, indent=1))
    return done["cells"]


def run_default_cells(cells, run_config: dict, num_clients: int, out: Path, run: bool = True) -> dict[str, dict]:
    """The (attack, attackers) cells under the defaults (FedAvg), every one not already in
    ``out``/federated_defaults.json (resumable: a cell is written as soon as it ends; an unfinished one reruns
    from scratch). Each run's files are kept under ``out``/defaults/<attack>-<attackers>. ``run=False``: only the
    finished cells of these settings, in ``cells``' order, nothing run."""
    store = out / "federated_defaults.json"
    key = repr({"run_config": dict(sorted(run_config.items())), "num_clients": num_clients})
    done = json.loads(store.read_text()) if store.exists() else {}
    if done.get("key") != key:
        done = {"key": key, "run_config": run_config, "num_clients": num_clients, "cells": {}}
    if not run:
        return {f"{a}|{f}": done["cells"][f"{a}|{f}"] for a, f in cells if f"{a}|{f}" in done["cells"]}
    for attack, attackers in cells:
        name = f"{attack}|{attackers}"
        if name in done["cells"]:
            continue
        if not 0 <= attackers < num_clients / 2 or (attack == "none") != (attackers == 0):
            raise ValueError(f"cell {name}: attackers must be a minority of {num_clients} (0 only for 'none')")
        print(f"federated (defaults): {attack} x {attackers} of {num_clients} ...", flush=True)
        run_dir = out / "defaults" / f"{attack}-{attackers}"
        shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted run of this cell left
        done["cells"][name] = run_cell(attack, "fedavg", run_config, num_clients, attackers, run_dir,
                                       population=num_clients)
        print(f"  accuracy per round {done['cells'][name]['accuracy']} ({done['cells'][name]['seconds']:.0f}s)",
              flush=True)
        out.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(done, indent=1))
    return run_default_cells(cells, run_config, num_clients, out, run=False)


def default_rows(cells: dict[str, dict], run_config: dict, num_clients: int) -> list[dict]:
    """One summary row per default-settings cell: final accuracy against the no-attack run's, the rounds the
    attackers were sampled in, and what the server did (rounds skipped, replies clipped / capped / rejected)."""
    from server.strategy import seeded_sample
    from shared.settings import declared_defaults

    rc = {**declared_defaults(), **run_config}
    base = cells.get("none|0", {}).get("accuracy", [None])[-1]
    rows = []
    for cell in cells.values():
        f, rounds = cell["attackers"], cell["rounds"]
        sampled = [r["round"] for r in rounds
                   if min(seeded_sample(list(range(num_clients)), float(rc["fraction-train"]), int(rc["seed"]),
                                        r["round"])) < f]
        bounds = [r["norm_bound"] for r in rounds if r["norm_bound"] is not None]
        final = cell["accuracy"][-1]
        rows.append({
            "attack": cell["attack"], "attackers": f,
            "z": round(alie_z_max(num_clients, f), 3) if cell["attack"] == "alie-zmax" else "",
            "final_accuracy": round(final, 4), "delta_pts": round(100 * (final - base), 1) if base is not None else "",
            "min_accuracy": round(min(cell["accuracy"][1:]), 4), "attacked_rounds": len(sampled),
            "rounds_skipped": sum(r["skipped"] is not None for r in rounds),
            "replies_clipped": sum(r["clipped"] for r in rounds), "replies_capped": sum(r["capped"] for r in rounds),
            "replies_rejected": sum(r["rejected"] for r in rounds),
            "norm_bound_first_last": f"{bounds[0]:.3g}/{bounds[-1]:.3g}" if bounds else "",
            "final_loss": round(rounds[-1]["loss"], 4) if rounds else "",
            "seconds": cell["seconds"], "accuracy_per_round": " ".join(f"{a:.3f}" for a in cell["accuracy"])})
    return rows


def default_table(rows: list[dict]) -> str:
    """The default-settings matrix as markdown: one row per cell."""
    lines = ["| attack | attackers | final acc. | Δ vs none (pts) | lowest acc. | rounds attacked | rounds skipped | "
             "replies clipped | claims capped | bound first/last | final loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        name = r["attack"] + (f" (z={r['z']})" if r["z"] != "" else "")
        lines.append(f"| {name} | {r['attackers']} | {r['final_accuracy']:.3f} | "
                     f"{r['delta_pts'] if r['delta_pts'] == '' else format(r['delta_pts'], '+.1f')} | "
                     f"{r['min_accuracy']:.3f} | {r['attacked_rounds']} | {r['rounds_skipped']} | "
                     f"{r['replies_clipped']} | {r['replies_capped']} | {r['norm_bound_first_last']} | "
                     f"{r['final_loss']} |")
    return "\n".join(lines)


def write_default_rows(rows: list[dict], path: Path) -> None:
    """The rows as CSV at ``path`` (its folder made)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["attack"])
        writer.writeheader()
        writer.writerows(rows)


def federated_table(cells: dict[str, dict]) -> str:
    """Final and best accuracy per cell, as markdown."""
    lines = ["| attack | aggregator | final acc. | best acc. | accuracy per round (round 0 = start) |",
             "|---|---|---:|---:|---|"]
    for cell in cells.values():
        acc = cell["accuracy"]
        per_round = " ".join(f"{a:.3f}" if a is not None else "–" for a in acc)
        finite = [a for a in acc if a is not None]
        lines.append(f"| {cell['attack']} | {cell['aggregator']} | {acc[-1]:.3f} | {max(finite):.3f} | "
                     f"{per_round} |")
    return "\n".join(lines)
