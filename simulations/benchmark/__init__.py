"""The communication-cost benchmark: ``python -m simulations.benchmark --preset <name>`` (the command is
``benchmark.py``), its ``presets/``, and the analyses that read its runs: ``round_mix``, ``mask_layout``,
``sam_overlap``. ``lib/`` serves them: ``matrix`` (presets -> runs), ``run_store`` (skip, resume, extend, lock),
``runs`` (a run's results), ``report``, ``seeds`` (over seeds), ``targets``, ``plots``.

No other room imports this one.
"""
