"""The in-process sections of the performance benchmark: what one local step and one optimizer step cost.

``steps`` (dense vs sparse gradient), ``grouping`` (random vs length-grouped batches), ``dense`` (full's step,
one split vs per-parameter slices), ``optimizer`` (foreach vs fused AdamW), ``parallel`` (one client on all cores
vs one per core). Each takes the parsed arguments of :mod:`simulations.performance.perf_benchmark` and returns its figures;
that module runs them, stores them and prints the table.
"""

from __future__ import annotations

import statistics
import time

import torch

def _median_spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _timed_steps(rt, head0: dict, batches, sparse: bool, lr: float,
                 precision: str = "fp32") -> tuple[list[float], torch.Tensor]:
    """Train from zero values on ``batches`` (on the runtime's device); per-step wall seconds and the final values."""
    from shared.device import autocast, model_device, to_device
    from shared.training import adamw

    tuner, model = rt.tuner, rt.base.model
    device = model_device(model)
    tuner.sparse_grad = sparse
    tuner.load(torch.zeros(tuner.k), head0)
    params = tuner.trainable()
    opt = adamw([{"params": params, "lr": lr}])
    torch.manual_seed(0)  # same dropout masks on both paths
    model.train()
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        with autocast(device, precision):
            out = model(**to_device(batch, device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    return times, tuner.values.detach().cpu().clone()


def bench_steps(args) -> dict:
    """Dense-gradient vs sparse-gradient masked training step on the real model (in-process)."""
    from shared.config import RunConfig
    from shared.data import batch_indices, encode, run_splits
    from shared.runtime import build_runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig(model=args.model, data_dir=str(args.data_dir), mask_density=args.density, device=args.device,
                    precision=args.precision)
    rt = build_runtime(cfg)
    head0 = rt.tuner.head_state()
    train = run_splits(cfg)["train"].shuffle(seed=0).select(range(4096))
    data = encode(train, rt.base.tokenizer, cfg.max_length)
    batches = [data.batch(i) for i in batch_indices(len(data), cfg.batch_size, args.steps + 2, seed=1)]
    res: dict[bool, list[float]] = {False: [], True: []}
    finals = {}
    for rep in range(args.repeats):  # alternate the order so drifting machine load hits both alike
        for sparse in ((False, True) if rep % 2 == 0 else (True, False)):
            times, finals[sparse] = _timed_steps(rt, head0, batches, sparse, rt.method.learning_rates(cfg)[0],
                                                 cfg.precision)
            res[sparse] += times[2:]  # the first two steps are warm-up
    dense, sparse = _median_spread(res[False]), _median_spread(res[True])
    return {"dense": dense, "sparse": sparse, "ratio": dense["median"] / sparse["median"],
            "max_abs_value_diff": float((finals[True] - finals[False]).abs().max()),
            "max_abs_value": float(finals[False].abs().max()), "k": rt.tuner.k,
            "threads": torch.get_num_threads(), "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "density": cfg.mask_density, "model": rt.base.source, "device": str(rt.tuner.values.device),
            "precision": cfg.precision}


def real_token_share(lengths: torch.Tensor, batches: list[torch.Tensor]) -> float:
    """Real tokens / processed tokens: a batch runs ``len(batch) x its longest row`` positions."""
    real = sum(int(lengths[b].sum()) for b in batches)
    return real / sum(len(b) * int(lengths[b].max()) for b in batches)


def bench_grouping(args) -> dict:
    """Random vs length-grouped local batches on the real model: padding share and step time."""
    from shared.config import RunConfig
    from shared.data import batch_indices, encode, run_splits
    from shared.runtime import build_runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig(model=args.model, data_dir=str(args.data_dir), mask_density=args.density)
    rt = build_runtime(cfg)
    head0 = rt.tuner.head_state()
    train = run_splits(cfg)["train"].shuffle(seed=0).select(range(8000))
    data = encode(train, rt.base.tokenizer, cfg.max_length)
    lengths, bs = data.lengths, cfg.batch_size
    one_pass = len(data) // bs
    plans = {"random": batch_indices(len(data), bs, one_pass, seed=1),
             "grouped": batch_indices(len(data), bs, one_pass, seed=1, lengths=lengths)}
    share = {m: real_token_share(lengths, b) for m, b in plans.items()}
    width = {m: statistics.mean(int(lengths[i].max()) for i in b) for m, b in plans.items()}
    per_block = args.group_steps + 2
    times: dict[str, list[float]] = {"random": [], "grouped": []}
    lr = rt.method.learning_rates(cfg)[0]
    for rep in range(args.repeats):  # alternate the order so drifting machine load hits both alike
        for mode in (("random", "grouped") if rep % 2 == 0 else ("grouped", "random")):
            block = [data.batch(i) for i in plans[mode][rep * per_block:(rep + 1) * per_block]]
            times[mode] += _timed_steps(rt, head0, block, True, lr)[0][2:]  # two warm-up steps
    mean = {m: statistics.mean(t) for m, t in times.items()}
    return {"real_token_share": share, "mean_width": width, "mean_length": float(lengths.float().mean()),
            "step": {m: {**_median_spread(t), "mean": mean[m]} for m, t in times.items()},
            "ratio": mean["random"] / mean["grouped"], "rows": len(data), "batch_size": bs,
            "threads": torch.get_num_threads(), "model": rt.base.source, "method": cfg.method}


def _steps_per_second(threads: int, steps: int, data_dir: str, model: str, barrier, queue) -> None:
    """Child process of :func:`bench_parallel`: ``steps`` pafi steps on grouped SST-2 batches, steps per second."""
    from shared.config import RunConfig
    from shared.data import batch_indices, encode, run_splits
    from shared.runtime import build_runtime

    torch.set_num_threads(threads)
    cfg = RunConfig(model=model, data_dir=data_dir)
    rt = build_runtime(cfg)
    train = run_splits(cfg)["train"].shuffle(seed=0).select(range(4000))
    data = encode(train, rt.base.tokenizer, cfg.max_length)
    batches = [data.batch(i) for i in batch_indices(len(data), cfg.batch_size, steps + 2, seed=1, lengths=data.lengths)]
    barrier.wait()  # every process has loaded its model: they time their steps together
    times, _ = _timed_steps(rt, rt.tuner.head_state(), batches, True, rt.method.learning_rates(cfg)[0])
    queue.put(len(times[2:]) / sum(times[2:]))


def _run_children(threads: int, procs: int, steps: int, args) -> list[float]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(procs)
    children = [ctx.Process(target=_steps_per_second,
                            args=(threads, steps, str(args.data_dir), args.model, barrier, queue)) for _ in range(procs)]
    for c in children:
        c.start()
    results = [queue.get() for _ in range(procs)]
    for c in children:
        c.join()
    return results


def bench_parallel(args) -> dict:
    """Throughput of one client on all cores vs one client per core: one process of ``--parallel-procs`` threads
    vs ``--parallel-procs`` processes of one thread each, the same pafi steps, alternating (what cpus-per-client
    decides in the Simulation Engine)."""
    n = args.parallel_procs
    out: dict[str, list[float]] = {"one_process": [], "processes": []}
    for rep in range(args.repeats // 2 or 1):
        for mode in (("one_process", "processes") if rep % 2 == 0 else ("processes", "one_process")):
            if mode == "one_process":
                out[mode].append(_run_children(n, 1, args.parallel_steps * n, args)[0])
            else:
                out[mode].append(sum(_run_children(1, n, args.parallel_steps, args)))
    one, many = statistics.mean(out["one_process"]), statistics.mean(out["processes"])
    return {"procs": n, "steps_per_second": out, "ratio": many / one, "steps": args.parallel_steps}


def bench_dense(args) -> dict:
    """full's local step (every MiniLM parameter trains), the value vector split once per forward pass (what the
    tuner does) vs one slice per parameter (what it did), alternating blocks on the same grouped batches."""
    from shared.config import RunConfig
    from shared.data import batch_indices, encode, run_splits
    from shared.runtime import build_runtime

    torch.set_num_threads(args.threads or 1)
    cfg = RunConfig(model=args.model, data_dir=str(args.data_dir), method="full")
    rt = build_runtime(cfg)
    tuner, head0 = rt.tuner, rt.tuner.head_state()
    train = run_splits(cfg)["train"].shuffle(seed=0).select(range(4000))
    data = encode(train, rt.base.tokenizer, cfg.max_length)
    batches = [data.batch(i) for i in batch_indices(len(data), cfg.batch_size, args.steps + 2, seed=1, lengths=data.lengths)]
    lr = rt.method.learning_rates(cfg)[0]
    split_piece = tuner.piece
    times: dict[str, list[float]] = {"split": [], "slices": []}
    finals = {}
    for rep in range(args.repeats):  # alternate the order so drifting machine load hits both alike
        for mode in (("slices", "split") if rep % 2 == 0 else ("split", "slices")):
            tuner.piece = split_piece if mode == "split" else (lambda i, a, b: tuner.values[a:b])
            try:
                t, finals[mode] = _timed_steps(rt, head0, batches, True, lr)
            finally:
                tuner.piece = split_piece
            times[mode] += t[2:]
    return {"split": _median_spread(times["split"]), "slices": _median_spread(times["slices"]),
            "ratio": statistics.median(times["slices"]) / statistics.median(times["split"]),
            "max_abs_value_diff": float((finals["split"] - finals["slices"]).abs().max()), "n": tuner.k,
            "threads": torch.get_num_threads()}


def bench_optimizer(args) -> dict:
    """One AdamW step (values + a 770-entry head), torch's default (foreach) vs fused, in alternating blocks."""
    from shared.training import adamw

    torch.set_num_threads(args.threads or 1)
    out = {}
    for n in (int(x) for x in args.opt_sizes.split(",")):
        values, head = torch.nn.Parameter(torch.zeros(n)), torch.nn.Parameter(torch.zeros(770))
        gen = torch.Generator().manual_seed(0)
        grads = (torch.randn(n, generator=gen), torch.randn(770, generator=gen))
        times: dict[str, list[float]] = {"foreach": [], "fused": []}
        finals = {}
        for rep in range(args.repeats):  # alternate the order so drifting machine load hits both alike
            for mode in (("foreach", "fused") if rep % 2 == 0 else ("fused", "foreach")):
                with torch.no_grad():
                    values.zero_(), head.zero_()
                groups = [{"params": [values], "lr": 1e-3}, {"params": [head], "lr": 1e-3}]
                opt = adamw(groups) if mode == "fused" else torch.optim.AdamW(groups, weight_decay=0.0, foreach=True)
                values.grad, head.grad = grads[0].clone(), grads[1].clone()
                opt.step()  # warm-up: allocates the moments
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    opt.step()
                    times[mode].append(time.perf_counter() - t0)
                finals[mode] = values.detach().clone()
        out[str(n)] = {"foreach": _median_spread(times["foreach"]), "fused": _median_spread(times["fused"]),
                       "ratio": statistics.median(times["foreach"]) / statistics.median(times["fused"]),
                       "max_abs_diff": float((finals["fused"] - finals["foreach"]).abs().max())}
    return {"sizes": out, "threads": torch.get_num_threads()}
