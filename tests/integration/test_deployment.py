"""The app on Flower's Deployment Engine for real: SuperLink + 2 SuperNodes on 127.0.0.1, TLS, node auth.

Every process is a real ``flower-superlink`` / ``flower-supernode`` (ServerApp and ClientApps in SuperExec
subprocesses), certificates come from ``docker/certs.sh`` and keys are registered with
``docker/register-supernodes.sh`` (the scripts docker-compose.yml uses). ``deployment()`` stops every
process tree on exit, also when an assertion fails.
"""

from __future__ import annotations

import json
import time

import pytest

from simulations.engines.deployment import deployment

pytestmark = pytest.mark.integration


def run_config(model, data, out) -> dict:
    return {"model": str(model), "data-dir": str(data), "output-dir": str(out), "num-server-rounds": 2,
            "fraction-train": 1.0, "min-available-nodes": 2, "node-wait-timeout": 120.0, "local-steps": 2,
            "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "mask-density": 0.05}


def test_two_supernodes_tls_auth_two_rounds(tmp_path, tiny_model_dir, sst2_dir):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with deployment(tmp_path / "deploy", num_supernodes=2, tls=True, auth=True) as dep:
        assert dep.online_nodes() == 2
        rc = dep.run(run_config(tiny_model_dir, sst2_dir, out), timeout=900)
        wall = time.perf_counter() - t0
        assert rc == 0, (dep.workdir / "flwr-run.log").read_text()[-3000:]
        runs = dep.list_runs()
        dep.restart_superlink()  # state lives in --database: a restarted SuperLink still knows the run
        assert [r["run-id"] for r in dep.list_runs()] == [r["run-id"] for r in runs] and len(runs) == 1
        secure = tmp_path / "secure"  # one SecAgg+ round on the same TLS + node-auth federation
        rc = dep.run({**run_config(tiny_model_dir, sst2_dir, secure), "num-server-rounds": 1,
                      "secure-aggregation": True}, timeout=900)
        assert rc == 0, (dep.workdir / "flwr-run.log").read_text()[-3000:]

    history = json.loads((out / "history.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2]
    for rec in history[1:]:
        assert rec["sampled"] == rec["replied"] == 2 and rec["rejected"] == 0 and rec["failed"] == 0
        assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0
    assert summary["rounds"] == 2
    assert 0 < summary["bytes_up_per_client_round"] < summary["dense_bytes_per_client_round"]
    assert (out / "model" / "config.json").is_file() and (out / "delta.safetensors").is_file()

    secure_rec = json.loads((secure / "history.json").read_text())[1]
    assert secure_rec["aggregated"] and secure_rec["replied"] == 2 and secure_rec["secagg"]["survivors"] == 2
    assert all(b["down"] > 0 and b["up"] > 0 for b in secure_rec["secagg"]["bytes"].values())

    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert sum(p.numel() for p in merged.parameters()) == summary["num_params"]
    print(f"\ndeployment: {wall:.1f}s wall (bring-up + run + teardown), {summary['rounds']} rounds, "
          f"{summary['bytes_up_per_client_round']:,.0f} B up / {summary['bytes_down_per_client_round']:,.0f} B down "
          f"per client-round, server wall {summary['wall_seconds']:.1f}s")


def test_unregistered_or_plaintext_supernode_is_refused(tmp_path):
    with deployment(tmp_path / "deploy", num_supernodes=1, tls=True, auth=True) as dep:
        unregistered = dep.start_supernode(2, 1, 2, register=False, max_wait_time=15)
        plaintext = dep.start_supernode(3, 1, 2, tls=False, auth=False, max_wait_time=15)
        assert dep.wait_exit(unregistered, 90) not in (None, 0)
        assert dep.wait_exit(plaintext, 90) not in (None, 0)
        assert dep.online_nodes() == 1  # only the registered TLS node
        assert "Failed to activate SuperNode" in (dep.workdir / "supernode-2.log").read_text()
        assert "could not establish a connection" in (dep.workdir / "supernode-3.log").read_text()
        assert dep.supernodes[0].poll() is None  # the legitimate node is unaffected
