"""What a round costs: ``perf_benchmark`` (steps, rounds, optimizer, parallelism, aggregation, memory),
``scale_benchmark`` (up to 10,000 virtual clients) and ``wire_truth`` (the bytes on a real socket against the
reported ones). ``lib/`` serves them: ``perf_steps`` (the step timings), ``proxy`` (the counting TCP proxy),
``rss`` (peak memory of a simulation's process tree).

No other room imports this one.
"""
