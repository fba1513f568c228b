"""The issue's measured targets, checked on the benchmark's run rows (see ``report.run_row``).

- PaFi at density 0.005 sends >= 800x fewer bytes up per client-round than ``full`` in float16,
  >= 1500x in int8;
- PaFi's final accuracy is within 1.0 point of ``full``'s;
- PaFi needs >= 2x fewer total bytes than LoRA to reach the target accuracy.

A check appears only when the runs it needs are in the results.
"""

from __future__ import annotations

from typing import Any

UPLINK_REDUCTION = {"float16": 800.0, "int8": 1500.0}  # value-dtype -> required reduction vs full
TARGET_DENSITY = 0.005
MAX_ACCURACY_GAP = 0.01  # 1.0 point
MIN_BYTES_ADVANTAGE = 2.0


def _check(target: str, run: str, measured: str, required: str, met: bool) -> dict[str, Any]:
    return {"target": target, "run": run, "measured": measured, "required": required, "met": bool(met)}


def uplink_checks(pafi: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in pafi:
        need = UPLINK_REDUCTION.get(row["value_dtype"])
        dens = row.get("mask_density")
        if need is None or row["reduction_up"] is None or dens is None or abs(dens - TARGET_DENSITY) > 1e-9:
            continue
        out.append(_check(f"up bytes vs full, {row['value_dtype']}", row["name"],
                          f"{row['reduction_up']:,.0f}× (vs {row['reduction_reference']})", f"≥ {need:,.0f}×",
                          row["reduction_up"] >= need))
    return out


def accuracy_checks(pafi: list[dict[str, Any]], has_full: bool) -> list[dict[str, Any]]:
    if not has_full:
        return []
    return [_check("final accuracy vs full", row["name"], f"{100 * row['accuracy_vs_reference']:+.2f} pts",
                   f"≥ {-100 * MAX_ACCURACY_GAP:.1f} pts", row["accuracy_vs_reference"] >= -MAX_ACCURACY_GAP)
            for row in pafi if row.get("accuracy_vs_reference") is not None]


def lora_checks(pafi: list[dict[str, Any]], lora: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in pafi:
        same = [r for r in lora if r["value_dtype"] == row["value_dtype"]] or lora
        if not same or row.get("target_accuracy") is None:
            continue
        other, mine = same[0], row["bytes_to_target"]
        theirs = other["bytes_to_target"]
        if mine is None:
            measured, met = "pafi did not reach the target", False
        elif theirs is None:
            measured, met = f"{other['name']} did not reach the target; pafi {mine / 1e6:,.2f} MB", True
        else:
            measured, met = f"{theirs / mine:,.1f}× ({theirs / 1e6:,.2f} vs {mine / 1e6:,.2f} MB)", \
                theirs / mine >= MIN_BYTES_ADVANTAGE
        out.append(_check(f"bytes to target vs {other['name']}", row["name"], measured,
                          f"≥ {MIN_BYTES_ADVANTAGE:.0f}× fewer", met))
    return out


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All applicable target checks for the run rows."""
    pafi = [r for r in rows if r.get("method") == "pafi"]
    lora = [r for r in rows if r.get("method") == "lora"]
    has_full = any(r.get("method") == "full" for r in rows)
    return uplink_checks(pafi) + accuracy_checks(pafi, has_full) + lora_checks(pafi, lora)
