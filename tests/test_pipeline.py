"""The papermill pipeline runner and the notebook conventions."""

import dataclasses
import json
from pathlib import Path

import nbformat
import pytest

from addmlib import pipeline
from addmlib.config import NOTEBOOK_CONFIGS, PIPELINE_NOTEBOOKS, ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
    assert path.stem in NOTEBOOK_CONFIGS, "every notebook has a typed config"


def test_plan_refuses_parameters_no_notebook_declares(tmp_path):
    with pytest.raises(ConfigError, match="'learning_rat'.*declared by none"):
        pipeline.plan({"image_size": 32, "learning_rat": 1e-4}, ["00_method"], tmp_path, "p.yaml")


def test_plan_accepts_parameters_of_pipeline_notebooks_not_run_this_time(tmp_path):
    steps = pipeline.plan({"image_size": 32, "lesions_per_host": 2, "batch_size": 4}, ["00_method"], tmp_path, "p")
    assert steps[0].params == {"image_size": 32, "run_dir": str(tmp_path)}


def test_plan_type_checks_before_running(tmp_path):
    with pytest.raises(ConfigError, match="p.yaml \\(for notebook 00_method\\): parameter 'num_steps' must be int"):
        pipeline.plan({"num_steps": "many"}, ["00_method"], tmp_path, "p.yaml")


def test_plan_passes_each_notebook_only_its_parameters(tmp_path):
    steps = pipeline.plan({"image_size": 32, "seed": 3}, ["00_method"], tmp_path, "p.yaml")
    assert steps[0].params == {"image_size": 32, "seed": 3, "run_dir": str(tmp_path)}


def test_plan_refuses_a_notebook_whose_parameters_cell_lacks_a_config_field(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "02_train.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("min_snr_gamma"))
    nbformat.write(nb, tmp_path / "02_train.ipynb")
    with pytest.raises(ConfigError, match="02_train.ipynb: its parameters cell lacks 'min_snr_gamma' of TrainConfig"):
        pipeline.plan({"min_snr_gamma": 5.0}, ["02_train"], tmp_path / "run", "p.yaml", notebook_dir=tmp_path)


def test_the_demo_trains_with_every_training_parameter_of_its_file(tmp_path):
    """Every TrainConfig key of params/demo.yaml reaches 02_train (a key its parameters cell lacked would run at its
    default)."""
    params = pipeline.load_params([ROOT / "params" / "demo.yaml"])
    (step,) = pipeline.plan(params, ["02_train"], tmp_path, "demo.yaml")
    own = {f.name for f in dataclasses.fields(TrainConfig)} & set(params)
    assert {k: step.params[k] for k in own} == {k: params[k] for k in own}
    assert {"min_snr_gamma", "noise", "train_t_min", "train_t_max"} <= own, "the demo pins its training depths and loss"


def test_later_parameter_files_override_earlier_ones():
    params = pipeline.load_params([ROOT / "params" / "demo.yaml", ROOT / "params" / "ddpm.yaml"])
    assert params["lambda_adv"] == 0.0 and params["model_name"] == "ddpm" and params["image_size"] == 64


def test_cli_reports_bad_parameter_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_sise: 32\n")
    assert pipeline.main([str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert "image_sise" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing is written before the parameters are valid"


@pytest.mark.slow
def test_pipeline_runs_with_ci_params(ci_run):
    folder = ci_run
    status = json.loads((folder / "pipeline.json").read_text())["invocations"][-1]
    assert [n["status"] for n in status["notebooks"]] == ["ok"] * len(PIPELINE_NOTEBOOKS)
    record = json.loads((folder / "run.json").read_text())
    assert record["seed"] == 0 and record["packages"]["torch"].startswith("2.13.0") and "commit" in record["git"]
    checks = json.loads((folder / "00_method" / "method_checks.json").read_text())
    assert checks["closed_form"]["oracle_ddim_10_steps_reconstruction_max_abs_err"] < 1e-6
    assert checks["networks"]["lambda_0_equals_L_DDPM"] is True
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert {"eval_a", "eval_b", "ixi_test", "threshold"} <= set(next(iter(metrics["results"].values())))
    # the IXI test slices: calibrated on the IXI calibration individuals, per kind, with every floor beside
    results = metrics["results"]
    addm = next(r for label, r in results.items() if label.startswith("addm"))
    assert addm["calibration"]["ixi_calib"]["threshold"] != addm["calibration"]["val_healthy"]["threshold"]
    assert set(addm["ixi_test"]["by_kind"]) == {"hypo", "ring", "hyper", "iso"}
    assert set(addm["eval_b"]["by_kind"]) == {"hypo", "ring", "hyper", "iso"}
    by_size = addm["ixi_test"]["by_size"]  # every lesion in one size class, each kind split by size
    assert sum(m["lesion_voxels"] for m in by_size.values()) == addm["ixi_test"]["pooled"]["lesion_voxels"]
    assert set(addm["ixi_test"]["by_kind_size"]) == {"hypo", "ring", "hyper", "iso"}
    assert not addm["eval_a"]["by_size"], "real tumours have no drawn size"
    # the normative rows: the model fused with the IXI atlas, and the atlas alone, on the IXI test slices only
    normative = next(r for label, r in results.items() if label.startswith("addm") and "normative atlas" in label)
    atlas = results["normative atlas |x − μ|/σ (IXI training slices)"]
    for row in (normative, atlas):
        assert "ixi_test" in row and "eval_a" not in row and "eval_b" not in row
        assert set(row["calibration"]) == {"ixi_calib"}
    fit = "2 rounds of groupwise registration, the 8 nearest slices"  # params/ci/ci.yaml's atlas
    assert metrics["models"]["normative atlas |x − μ|/σ (IXI training slices)"]["fit"] == fit
    assert metrics["post_processing"]["gaussian_sigma"] == 2.0 and metrics["post_processing"]["median_size"] == 5
    assert set(json.loads((folder / "eval" / "detector.json").read_text())["models"]) == {"addm"}
    assert {"intensity floor (x itself)", "dark floor (−x)", "floor |x − brain median|"} <= set(results)
    assert len(list((folder / "eval" / "figures").glob("kind_ixi_test_*.png"))) == 4, "one figure per lesion kind"
    assert (folder / "data" / "figures" / "ixi_brain_masks.png").is_file()
    assert any(p.name.endswith("_map_native.nii.gz") for p in (folder / "eval" / "maps").rglob("*"))
    assert (folder / "notebooks" / "02_train-addm.ipynb").is_file()
    assert (folder / "notebooks" / "05_browse.ipynb").is_file()
    assert list((folder / "eval" / "figures").glob("browse_*_axial.png")), "05_browse saved its montage"
    executed = nbformat.read(folder / "notebooks" / "00_method.ipynb", as_version=4)
    assert any(o.get("output_type") == "display_data" for c in executed.cells if c.cell_type == "code"
               for o in c.outputs), "figures are in the executed notebook"


@pytest.mark.slow
def test_failing_notebook_is_reported_and_kept(tmp_path):
    with pytest.raises(RuntimeError, match="notebook 00_method failed"):
        pipeline.run(_params_with(tmp_path, device="cuda:7"), tmp_path / "run", cell_timeout=600)
    status = json.loads((tmp_path / "run" / "pipeline.json").read_text())["invocations"][-1]
    assert status["notebooks"][0]["status"] == "failed" and "CUDA" in status["notebooks"][0]["error"]
    assert (tmp_path / "run" / "notebooks" / "00_method.ipynb").exists()


def _params_with(tmp_path, **changes):
    import yaml
    params = yaml.safe_load((ROOT / "params" / "ci" / "ci.yaml").read_text())
    params.update(changes)
    out = tmp_path / "p.yaml"
    out.write_text(yaml.safe_dump(params))
    return out
