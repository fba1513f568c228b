"""Every user error is one line from the real ServerApp entry point, before any model loads, with no traceback."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client.client_app import app as client_app
from server.server_app import main
from tests.support.local_grid import LocalGrid


def _tsv(folder, train: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_bytes(train)
    (folder / "test.tsv").write_bytes(b"sentence\tlabel\na fine film\t1\n")
    return str(folder)


def _refusal(tmp_path, capsys, **rc) -> str:
    rc = {"output-dir": str(tmp_path / "out"), "model": str(tmp_path / "never-loaded"), **rc}
    with pytest.raises(SystemExit) as stop:
        main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                   run_config=rc))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsparse: error: "), err
    return lines[0]


@pytest.mark.parametrize("rc,needle", [
    ({"aggregator": "krum-ish"}, "'aggregator'"),
    ({"trust-weighting": "cosine", "aggregator": "median"}, "aggregator 'median' has none"),
    ({"trust-weighting": "cosine", "dp-clip-norm": 1.0}, "needs equal weights"),
    ({"trust-weighting": "cosine", "secure-aggregation": True}, "shows the server only their sum"),
    ({"trim-fraction": 0.5}, "'trim-fraction' must be in [0, 0.5)"),
    ({"max-reply-mb": float("inf")}, "'max-reply-mb'"),
    ({"server-beta2": 1.5}, "'server-beta2'"),
    ({"dp-noise-multiplier": -1.0}, "'dp-noise-multiplier'"),
    ({"dp-noise-multiplier": 1.0}, "needs dp-clip-norm"),
    ({"fail-rate": "often"}, "'fail-rate' must be float"),
    ({"lr": float("nan")}, "'lr'"),
    ({"lora-rnk": 4}, "did you mean 'lora-rank'"),
    ({"secure-aggregation": True, "method": "topk"}, "cannot run method 'topk': its updates are not aligned"),
    ({"secure-aggregation": True, "aggregator": "median"}, "cannot run aggregator 'median': it needs each client's"),
    ({"secure-aggregation": True, "secagg-modulus-range": 3 * 2**30}, "'secagg-modulus-range' must be a power of two"),
    ({"drift-correction": "scaffold", "method": "topk"}, "cannot run method 'topk': its updates are not aligned"),
    ({"drift-correction": "scaffold", "secure-aggregation": True}, "cannot run drift-correction='scaffold'"),
    ({"drift-correction": "scaffold", "dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5}, "not be covered by the noise"),
    ({"drift-correction": "fedprox"}, "'drift-correction' must be one of 'none', 'scaffold'"),
    ({"prox-mu": -0.1}, "'prox-mu' must be >= 0"),
])
def test_bad_knobs(tmp_path, capsys, rc, needle):
    assert needle in _refusal(tmp_path, capsys, **rc)


def test_bad_data_files_name_the_file_line_and_value(tmp_path, capsys):
    bad = _tsv(tmp_path / "labels", b"sentence\tlabel\ngood\t1\nodd\t\xc2\xb2\n")
    assert "train.tsv:3: unknown label '\u00b2'" in _refusal(tmp_path, capsys, **{"data-dir": bad})
    latin = _tsv(tmp_path / "latin", b"sentence\tlabel\ncaf\xe9\t1\n")
    assert "is not UTF-8 text" in _refusal(tmp_path, capsys, **{"data-dir": latin})


def test_resume_with_a_history_but_no_checkpoint_and_a_stale_temp_directory(tmp_path, capsys, sst2_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "history.json").write_text("[]")
    msg = _refusal(tmp_path, capsys, **{"resume": True, "data-dir": str(sst2_dir)})
    assert "checkpoint.safetensors is missing" in msg and "history.json" in msg
    (out / "history.json").unlink()
    (out / "checkpoint.safetensors.tmp").mkdir()
    assert "is a directory" in _refusal(tmp_path, capsys, **{"data-dir": str(sst2_dir)})
