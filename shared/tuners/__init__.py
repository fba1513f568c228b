"""Tuners that are not a fixed mask: ``full`` / ``topk`` (dense), ``lora`` (PEFT), ``sam`` (selected mask).

Each module exposes one factory ``fn(base, cfg, digest) -> tuner`` registered in ``shared.runtime.TUNERS``;
every tuner implements the contract stated in ``shared.tuner.SparseTuner``'s docstring.
"""
