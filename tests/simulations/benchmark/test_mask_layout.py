"""mask_layout: where each static mask lies, checked against the masks themselves on the tiny model."""

from __future__ import annotations

import pytest
import torch

from shared.config import RunConfig
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from simulations.benchmark.mask_layout import _kind_and_layer, format_layouts, layout, main, overlap, sam_run_mask


@pytest.fixture(scope="module")
def masks(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir), 2, 0)
    digest = base_weights_digest(base.model, base.head_names)
    out = {m: select_mask(base.model, RunConfig(model=str(tiny_model_dir), method=m, mask_density=0.05), digest)
           for m in ("pafi", "random", "magnitude")}
    return base, out


def test_kind_and_layer_are_read_from_the_parameter_name():
    assert _kind_and_layer("bert.encoder.layer.3.attention.self.query.weight") == ("attention.self.query", "3")
    assert _kind_and_layer("bert.encoder.layer.11.output.dense.weight") == ("output.dense", "11")


def test_layout_counts_every_entry_once_and_matches_the_weights(masks):
    base, by_method = masks
    params = dict(base.model.named_parameters())
    for name, mask in by_method.items():
        lay = layout(base.model, mask)
        assert lay["k"] == mask.k
        for key in ("kind", "layer"):  # the shares of k add up to the whole mask
            assert sum(lay["share"][key].values()) == pytest.approx(1.0)
        assert set(lay["share"]["layer"]) == {"0", "1"}  # the tiny model's two layers
        values = torch.cat([params[n].detach().flatten()[idx].abs() for n, idx, _, _ in mask.items()])
        assert lay["max_abs_w"] == pytest.approx(float(values.max()))
        assert 0.0 < lay["rows_touched"] <= 1.0 and 0.0 < lay["cols_touched"] <= 1.0
    pafi, mag = layout(base.model, by_method["pafi"]), layout(base.model, by_method["magnitude"])
    # smallest |w| and largest |w| sit at the two ends of the candidates' weights
    assert pafi["max_abs_w"] <= pafi["candidate_median_abs_w"] <= mag["median_abs_w"]


def test_overlap_is_one_with_itself_and_zero_between_smallest_and_largest(masks):
    _, by_method = masks
    assert overlap(by_method["pafi"], by_method["pafi"]) == 1.0
    assert overlap(by_method["pafi"], by_method["magnitude"]) == 0.0  # 5 % smallest and 5 % largest are disjoint
    table = format_layouts({"pafi": layout(masks[0].model, by_method["pafi"])}, {"pafi": by_method["pafi"]})
    assert "| attention.self.query |" in table and "| pafi | 1.0000 |" in table


def test_the_command_prints_the_tables_and_refuses_bad_names_in_one_line(tiny_model_dir, capsys):
    main(["--methods", "pafi,magnitude", "-c", f"model='{tiny_model_dir}' mask-density=0.05"])
    out = capsys.readouterr().out
    assert "density per matrix kind" in out and "| 0 |" in out and "overlap" in out
    for methods, says in (("pafi,nope", "must be one of"), ("pafi,lora", "no static mask selector"),
                          ("", "--methods is empty")):
        with pytest.raises(SystemExit) as exc:
            main(["--methods", methods, "-c", f"model='{tiny_model_dir}'"])
        assert says in str(exc.value) and "\n" not in str(exc.value)


def _sam_run(tmp_path, tiny_model_dir, positions: dict, **config):
    """A sam run folder as the benchmark and the ServerApp leave it: run_config.json and a checkpoint whose selection
    holds the broadcast flat positions (written by the server's own save_checkpoint)."""
    import json

    from server.checkpoint import Checkpoint, save_checkpoint
    from shared.methods.sam.phase import SAM_POSITIONS
    from shared.methods.sam.statistic import candidate_shapes, to_flat_index

    base = load_base_model(str(tiny_model_dir), 2, 0)
    run = tmp_path / "sam-s1"
    run.mkdir()
    cfg = {"method": "sam", "model": str(tiny_model_dir), "mask-density": 0.05, "seed": 1, "data-dir": "/elsewhere",
           **config}
    (run / "run_config.json").write_text(json.dumps(cfg))
    selection = {} if positions is None else {SAM_POSITIONS: to_flat_index(positions, candidate_shapes(base.model))}
    save_checkpoint(run, Checkpoint(round=3, values=torch.zeros(1), head=torch.zeros(1), selection=selection))
    return run


def test_a_sam_runs_mask_is_read_from_its_checkpoint_and_laid_out(tmp_path, tiny_model_dir, masks, capsys):
    base, by_method = masks
    # positions in three matrices only: the layout still counts every candidate matrix in the densities
    pafi = dict(zip(by_method["pafi"].names, by_method["pafi"].indices))
    some = {n: pafi[n] for n in list(pafi)[:3]}
    run = _sam_run(tmp_path, tiny_model_dir, some)
    digest = base_weights_digest(base.model, base.head_names)
    sam = sam_run_mask(run, base, digest, str(tiny_model_dir), 0.05)
    assert sam.k == sum(int(i.numel()) for i in some.values())
    assert overlap(sam, by_method["pafi"]) == 1.0  # the same positions, read back through the flat index
    lay, full = layout(base.model, sam), layout(base.model, by_method["pafi"])
    assert lay["candidate_median_abs_w"] == full["candidate_median_abs_w"]  # the same candidates, not the 3 matrices
    assert sum(lay["share"]["kind"].values()) == pytest.approx(1.0)
    assert 0 < lay["cols_touched"] < full["cols_touched"]
    main(["--methods", "pafi", "-c", f"model='{tiny_model_dir}' mask-density=0.05", "--sam-run", str(run)])
    out = capsys.readouterr().out
    assert "| pafi | sam (sam-s1) |" in out and "| sam (sam-s1) | 1.0000 | 1.0000 |" in out


def test_a_sam_run_that_does_not_fit_is_refused_in_one_line(tmp_path, tiny_model_dir, masks):
    _, by_method = masks
    some = {by_method["pafi"].names[0]: by_method["pafi"].indices[0]}
    cases = [(tmp_path / "nothing-here", "no run_config.json")]
    for name, positions, cfg, says in (("unselected", None, {}, "holds no sam.mask-index"),
                                       ("pafi-run", some, {"method": "pafi"}, "is a 'pafi' run, whose mask no selection phase"),
                                       ("denser", some, {"mask-density": 0.1}, "same model and mask-density"),
                                       ("broken", some, {}, "checkpoint")):
        (tmp_path / name).mkdir()
        cases.append((_sam_run(tmp_path / name, tiny_model_dir, positions, **cfg), says))
    broken = cases[-1][0] / "checkpoint.safetensors"
    data = bytearray(broken.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte of a tensor: the checkpoint's digest refuses it
    broken.write_bytes(bytes(data))
    for folder, says in cases:
        with pytest.raises(SystemExit) as exc:
            main(["--methods", "pafi", "-c", f"model='{tiny_model_dir}' mask-density=0.05", "--sam-run", str(folder)])
        assert says in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
