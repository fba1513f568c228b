"""Cross-check against ByzFL (EPFL's Byzantine-robust FL library): same vectors, same answers.

ByzFL is not a dependency. Its package ``__init__`` imports torchvision (for its training framework),
whose PyPI wheel is a CUDA build that does not load beside the CPU torch; its aggregators and attacks
need only numpy/torch, so they are loaded without that ``__init__``. To run this check:
``pip install --no-deps --target /tmp/byzfl byzfl`` and ``PYTHONPATH=/tmp/byzfl pytest this_file``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from server.aggregation import (centered_clip, coordinate_median, multi_krum, trim_count, trimmed_mean)
from simulations.robustness.attack_benchmark import make_scenario


@pytest.fixture(scope="module")
def byzfl():
    """(aggregators, attacks) modules of ByzFL, or a skip with one line saying why."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ByzFL not installed (optional cross-check: pip install --no-deps --target DIR byzfl)")
    saved = {k: v for k, v in sys.modules.items() if k == "byzfl" or k.startswith("byzfl.")}
    pkg = types.ModuleType("byzfl")  # bare package: skip byzfl/__init__.py and its torchvision import
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = pkg
    try:
        yield importlib.import_module("byzfl.aggregators"), importlib.import_module("byzfl.attacks")
    finally:
        for k in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _vectors(n: int = 10, k: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.01 * torch.randn(k, generator=g) + 0.02 * torch.randn(n, k, generator=g)).double().float()


def _np(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


@pytest.mark.parametrize("n", [9, 10])
def test_median_and_trimmed_mean_match_byzfl(byzfl, n):
    aggs, _ = byzfl
    d, w = _vectors(n), torch.ones(n)
    np.testing.assert_allclose(coordinate_median(d, w).numpy(), aggs.Median()(_np(d)), rtol=0, atol=1e-7)
    for frac in (0.1, 0.3):
        ours = trimmed_mean(d, w, trim_fraction=frac).numpy()
        np.testing.assert_allclose(ours, aggs.TrMean(f=trim_count(n, frac))(_np(d)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_multi_krum_matches_byzfl(byzfl, f):
    """ByzFL scores with the n - f - 1 nearest neighbours and averages n - f replies; ours uses Blanchard et
    al.'s n - f - 2. Its rule at f + 1 is ours at f with m = n - f - 1 (same neighbours, mean vs sum)."""
    aggs, _ = byzfl
    d = _vectors()
    n = d.shape[0]
    ours = multi_krum(d, torch.ones(n), krum_f=f, krum_m=n - f - 1).numpy()
    np.testing.assert_allclose(ours, aggs.MultiKrum(f=f + 1)(_np(d)), rtol=0, atol=1e-7)
    bad = make_scenario("scale-20", d, torch.ones(n), 3).deltas  # clear outliers: both keep the 7 honest
    np.testing.assert_allclose(multi_krum(bad, torch.ones(n), krum_f=3).numpy(), aggs.MultiKrum(f=3)(_np(bad)),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("tau,iterations", [(0.05, 1), (0.2, 3), (10.0, 2)])
def test_centered_clipping_matches_byzfl_from_the_same_start(byzfl, tau, iterations):
    aggs, _ = byzfl
    d = make_scenario("scale-20", _vectors(), torch.ones(10), 3).deltas
    start = coordinate_median(d, torch.ones(10)).double()
    theirs = aggs.CenteredClipping(L=iterations, tau=float(tau))
    theirs.m = _np(start)  # its constructor refuses any m (an always-true type check), so set it after
    np.testing.assert_allclose(centered_clip(d, start, tau, iterations).numpy(), theirs(_np(d)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("z", [0.5244, 1.0, 1.5])
def test_alie_and_ipm_attack_vectors_match_byzfl(byzfl, z):
    _, atts = byzfl
    d, w = _vectors(), torch.ones(10)
    honest = _np(d[3:])
    alie = make_scenario(f"alie-{z}", d, w, 3).deltas[0]
    np.testing.assert_allclose(alie.numpy(), atts.ALittleIsEnough(tau=-z)(honest), rtol=0, atol=1e-7)
    ipm = make_scenario("ipm-0.5", d, w, 3).deltas[0]
    np.testing.assert_allclose(ipm.numpy(), atts.InnerProductManipulation(tau=0.5)(honest), rtol=0, atol=1e-7)
