"""mask_layout: where each static mask lies, checked against the masks themselves on the tiny model."""

from __future__ import annotations

import pytest
import torch

from shared.config import RunConfig
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from simulations.mask_layout import _kind_and_layer, format_layouts, layout, main, overlap


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
