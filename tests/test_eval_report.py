"""The lesion-kind breakdown of an evaluation (eval_report.lesion_kind, lesion_kind_table, size_table)."""

from __future__ import annotations

import pytest

from addmlib.eval_report import lesion_kind, lesion_kind_table, size_table


@pytest.mark.parametrize("volume_id, kind", [
    ("colin27+synthetic00-hyper", "synthetic hyper"),
    ("sri24+synthetic01-hypo-draw3", "synthetic hypo"),
    ("colin27+pasted-pyradiomics_brain1-draw1", "pasted pyradiomics_brain1"),
    ("itk_t1+pasted-qtim_tumor2", "pasted qtim_tumor2"),
    ("qtim_tumor2", "qtim_tumor2"),
    ("colin27+ring01", "ring"),
    ("sri24+hypo04-draw2", "hypo"),
    ("IXI012+iso-d3", "iso"),
])
def test_lesion_kind_reads_the_volume_id(volume_id: str, kind: str) -> None:
    assert lesion_kind(volume_id) == kind


def _result(auprcs: dict[str, float]) -> dict:
    return {"eval_b": {"per_volume": [{"id": i, "auprc": a} for i, a in auprcs.items()]}}


def test_lesion_kind_table_averages_each_kind_over_its_volumes() -> None:
    ids = ["a+synthetic00-hyper", "a+synthetic01-hypo", "a+synthetic00-hyper-draw1", "a+pasted-d1"]
    results = {"model": _result(dict(zip(ids, [0.2, 0.0, 0.6, 0.5]))),
               "intensity floor (x itself)": _result(dict(zip(ids, [0.1, 0.1, 0.1, 0.9]))),
               "set A only": {"eval_a": {"per_volume": []}}}
    lines = lesion_kind_table(results, "eval_b").splitlines()
    assert lines[2] == "| map | synthetic hyper (2) | synthetic hypo (1) | pasted d1 (1) |"
    assert lines[4] == "| model | 0.400 | 0.000 | 0.500 |"
    assert lines[5] == "| *intensity floor (x itself)* | 0.100 | 0.100 | 0.900 |"
    assert len(lines) == 6  # the result without set B has no row
    with pytest.raises(ValueError, match="eval_x"):
        lesion_kind_table(results, "eval_x")


@pytest.mark.parametrize("fusion", ["sum", "max"])
def test_the_reading_names_the_fusion_rule(fusion: str) -> None:
    from addmlib.eval_report import reading
    pooled = {"eval_b": {"pooled": {"auprc": 0.3, "auroc": 0.9}}}
    floor = "intensity floor (x itself)"
    results = {"addm, + intensity w=4": pooled, floor: {"eval_b": {"pooled": {"auprc": 0.2, "auroc": 0.86}}}}
    infos = {"addm, + intensity w=4": {"kind": "diffusion", "lambda_adv": 0.05, "intensity_weight": 4.0,
                                       "fusion": fusion},
             floor: {"kind": "floor"}}
    text = reading(results, infos, ["eval_b"])
    assert "addm, + intensity w=4 beats the best floor, intensity floor (x itself) (AUPRC 0.300 vs 0.200" in text
    assert ("By the max rule" in text) == (fusion == "max")


def test_size_table_shows_each_kind_by_size_and_leaves_real_tumours_out() -> None:
    def res(hyper_large: float) -> dict:
        return {"ixi_test": {"by_kind_size": {
            "hyper": {"<10 mm": {"auroc": 0.9, "auprc": 0.2}, ">=17 mm": {"auroc": hyper_large, "auprc": 0.1}},
            "hypo": {"<10 mm": {"auroc": 0.95, "auprc": 0.3}, "10-17 mm": {"auroc": 0.97, "auprc": 0.4},
                     ">=17 mm": {"auroc": 0.94, "auprc": 0.5}}}},
            "eval_a": {"pooled": {"auroc": 0.5, "auprc": 0.1}}}
    results = {"addm (t*=25)": res(0.64), "intensity floor": res(0.81)}
    lines = size_table(results, "ixi_test").splitlines()
    assert "<10 mm / 10-17 mm / >=17 mm" in lines[0]
    assert lines[2] == "| map | hyper | hypo |"
    assert lines[4] == "| addm (t*=25) | 0.900 / – / 0.640 | 0.950 / 0.970 / 0.940 |"
    assert lines[5].endswith("| 0.900 / – / 0.810 | 0.950 / 0.970 / 0.940 |")
    assert "0.100" in size_table(results, "ixi_test", "auprc")
    assert size_table(results, "eval_a") == ""
    with pytest.raises(ValueError, match="no result holds the split 'eval_x'"):
        size_table(results, "eval_x")
