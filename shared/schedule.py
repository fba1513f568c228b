"""The clients' learning rate over server rounds: warm-up, constant, then a linear or cosine decay.

Hugging Face's Trainer schedules its learning rate over optimizer steps (``lr_scheduler_type``,
``warmup_steps``); a federated run restarts a fresh AdamW every round, so here the schedule is over
*rounds*: round ``r`` trains every client at ``lr * lr_factor(r)`` (values and head alike), and the
factor is a pure function of the round and the run config, so every node computes the same one and a
resumed run steps exactly as an uninterrupted one.

============  ============================================================================
constant      1 (after the warm-up)
linear        1 until the decay starts, then down in equal steps towards 0
cosine        1 until the decay starts, then ``(1 + cos(pi p)) / 2``
============  ============================================================================

Round ``r`` of ``R`` (1-based), ``W = lr-warmup-rounds``, ``D = lr-decay-rounds`` (0 = every round after the
warm-up): rounds ``1..W`` ramp up as ``r / (W + 1)``; the decay covers the last ``D`` rounds, round
``R - D + i`` at ``p = i / (D + 1)``, so no round trains at a rate of 0. ``D < R - W`` is a warm-up-stable-decay
schedule: a constant-rate run of ``R - D`` rounds, extended by ``D`` decaying rounds, is the same run as one made
with the schedule from round 1, which is how a run already on its plateau is annealed from its checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from shared.knobs import ConfigError

SCHEDULES = ("constant", "linear", "cosine")
# run-config keys of the schedule; with num-server-rounds they may change on resume when the rounds already made
# keep their factors (:func:`same_factors`)
SCHEDULE_KEYS = frozenset({"lr-schedule", "lr-warmup-rounds", "lr-decay-rounds"})


class ScheduleError(ConfigError):
    """An lr schedule that does not fit the run's rounds."""


def check_schedule(schedule: str, num_rounds: int, warmup_rounds: int = 0, decay_rounds: int = 0) -> None:
    """One-line :class:`ScheduleError` for a schedule that cannot run (checked with the run config)."""
    if schedule not in SCHEDULES:
        raise ScheduleError(f"run-config key 'lr-schedule' must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if warmup_rounds < 0 or decay_rounds < 0:
        raise ScheduleError("run-config keys 'lr-warmup-rounds' and 'lr-decay-rounds' must be >= 0")
    if schedule == "constant" and decay_rounds > 0:
        raise ScheduleError(f"lr-decay-rounds={decay_rounds} needs lr-schedule linear or cosine (constant does not "
                            f"decay)")
    if num_rounds > 0 and warmup_rounds + decay_rounds > num_rounds:
        raise ScheduleError(f"lr-warmup-rounds ({warmup_rounds}) + lr-decay-rounds ({decay_rounds}) exceed "
                            f"num-server-rounds ({num_rounds}); lower them or run more rounds")


def lr_factor(server_round: int, num_rounds: int, schedule: str = "constant", warmup_rounds: int = 0,
              decay_rounds: int = 0) -> float:
    """The multiplier of the clients' learning rates in ``server_round`` (1-based) of ``num_rounds``."""
    r = int(server_round)
    if r <= 0:
        return 1.0  # not a training round (the handshake, round 0's evaluation)
    if r <= warmup_rounds:
        return r / (warmup_rounds + 1)
    if schedule == "constant":
        return 1.0
    span = decay_rounds if decay_rounds > 0 else max(num_rounds - warmup_rounds, 0)
    start = num_rounds - span  # the last round at the full rate
    if r <= start or span == 0:
        return 1.0
    p = min(r - start, span) / (span + 1)
    return 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


def factors(run_config: Mapping[str, Any], rounds: int) -> list[float]:
    """``lr_factor`` of rounds ``1..rounds`` under a flat run config (kebab keys; absent keys take the defaults)."""
    total = int(run_config.get("num-server-rounds", 10))
    schedule = str(run_config.get("lr-schedule", "constant"))
    warmup, decay = int(run_config.get("lr-warmup-rounds", 0)), int(run_config.get("lr-decay-rounds", 0))
    return [lr_factor(r, total, schedule, warmup, decay) for r in range(1, int(rounds) + 1)]


def full_rate_rounds(run_config: Mapping[str, Any]) -> int | None:
    """The last round before the decay starts (None without a decay): a run's plateau is judged on the rounds up
    to here, since the decay's gain is the annealing's, not unfinished training's."""
    if str(run_config.get("lr-schedule", "constant")) == "constant":
        return None
    total = int(run_config.get("num-server-rounds", 10))
    warmup, decay = int(run_config.get("lr-warmup-rounds", 0)), int(run_config.get("lr-decay-rounds", 0))
    return total - (decay if decay > 0 else total - warmup)


def same_factors(old: Mapping[str, Any], new: Mapping[str, Any], rounds: int) -> bool:
    """True when rounds ``1..rounds`` train at the same rates under both run configs: a run made to ``rounds``
    under ``old`` may continue under ``new`` (more rounds, or a decay added after its plateau)."""
    return factors(old, rounds) == factors(new, rounds)


def describe(schedule: str, num_rounds: int, warmup_rounds: int = 0, decay_rounds: int = 0) -> str:
    """One line for the server's log, e.g. ``cosine decay over rounds 121-140``."""
    parts = [f"warm-up over rounds 1-{warmup_rounds}"] if warmup_rounds else []
    if schedule != "constant":
        span = decay_rounds if decay_rounds > 0 else num_rounds - warmup_rounds
        parts.append(f"{schedule} decay over rounds {num_rounds - span + 1}-{num_rounds}")
    return ", ".join(parts) or "constant"
