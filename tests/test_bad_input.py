"""Bad input: masks that do not belong to their scan or end up empty, parameters no entry point may start with, and
metrics on volumes with a single class (see docs/bad-input.md)."""

import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from addmlib import benchmark, book, pipeline, sweep, training
from addmlib.config import ConfigError, TrainConfig, load_checked
from addmlib.data.io import VolumeError, fov_fraction
from addmlib.data.prepare import EmptyMaskError, PreparedDataset, PrepareSettings, build
from addmlib.data.preprocess import Volume
from addmlib.metrics import BinnedScores, mean_std, overlap_metrics

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = np.array([-20.0, -24.0, -18.0])
SHAPE = (40, 48, 36)


def _affine(zoom: float = 1.0, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([zoom, zoom, zoom, 1.0])
    a[:3, 3] = ORIGIN + np.asarray(shift)
    return a


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain, lesion) on SHAPE at 1 mm: an ellipsoidal 'brain' on a zero background and a bright blob."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (g ** 2).sum(0) < 0.7
    image = np.where(brain, 100 + 20 * g[0] + 10 * np.sin(6 * g[1]) + rng.normal(0, 2, SHAPE), 0)
    lesion = ((g[0] - 0.3) ** 2 + (g[1] + 0.1) ** 2 + g[2] ** 2) < 0.04
    image[lesion] = 200
    return image.astype(np.float32), brain, lesion


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _folders(root: Path, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> Path:
    """Two healthy phantoms and one tumour phantom (with ``lesion`` on ``lesion_affine`` as its *_mask) as the
    'folder' disk datasets."""
    for i in range(2):
        _save(root / "healthy" / f"h{i}.nii.gz", _phantom(i)[0], _affine())
    image, _, own = _phantom(5)
    _save(root / "tumour" / "p1.nii.gz", image, _affine())
    mask = own if lesion is None else lesion
    _save(root / "tumour" / "p1_mask.nii.gz", mask.astype(np.uint8),
          _affine() if lesion_affine is None else lesion_affine)
    return root


def _settings(root: Path, size: int = 16, **kw) -> PrepareSettings:
    """Only the disk folders (no packaged source, nothing downloaded), no held-out host."""
    return PrepareSettings(size, (), (), (), (), 0, 0.25, 2.0, 0, "folder", str(root / "healthy"), "folder",
                           str(root / "tumour"), **kw)


def _build(root: Path, **kw) -> dict:
    return build(_settings(root, **kw), root / "data", cache_dir=root / "cache")


# ----- masks and scans ------------------------------------------------------------------------------------------

def test_a_mask_500_mm_away_is_refused_naming_both_files_and_the_fraction(tmp_path):
    _folders(tmp_path, lesion_affine=_affine(shift=(500.0, 0.0, 0.0)))
    with pytest.raises(VolumeError) as err:
        _build(tmp_path)
    message = str(err.value)
    assert "p1_mask.nii.gz" in message and "p1.nii.gz" in message and "0.0%" in message and "\n" not in message
    assert not (tmp_path / "data" / "dataset.npz").exists()


def test_fov_fraction_counts_the_masks_nonzero_voxels_inside_the_scan():
    scan = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4))
    mask = np.zeros((20, 10, 10), np.uint8)
    mask[5:15, 2:4, 2:4] = 1  # half of it beyond x = 9.5
    assert fov_fraction(nib.Nifti1Image(mask, np.eye(4)), scan) == pytest.approx(0.5)
    # a much larger grid is fine when its nonzero voxels lie inside the scan
    big = np.zeros((200, 200, 200), np.uint8)
    big[2:5, 2:5, 2:5] = 1
    assert fov_fraction(nib.Nifti1Image(big, np.eye(4)), scan) == 1.0
    assert np.isnan(fov_fraction(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), scan))
    img = nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 1.0  # the mask's x = 5..14 land on the scan's 6..15: 4 of 10 inside
    with pytest.raises(VolumeError, match="lesion.nii.gz: only 40.0% .* field of view of scan.nii.gz"):
        Volume.from_nifti(img, lesion=nib.Nifti1Image(mask, shifted),
                          names={"image": "scan.nii.gz", "lesion": "lesion.nii.gz"})
    assert Volume.from_nifti(img, lesion=nib.Nifti1Image(mask, shifted), min_overlap=0.4).lesion.sum() == 4 * 2 * 2


def test_an_overlapping_mask_on_another_grid_is_resampled_and_the_manifest_says_so(tmp_path):
    lesion = _phantom(5)[2]
    coarse = lesion[::2, ::2, ::2] | lesion[1::2, 1::2, 1::2]  # the same lesion on a 2 mm grid
    _folders(tmp_path, lesion=coarse, lesion_affine=_affine(zoom=2.0, shift=(0.5, 0.5, 0.5)))
    manifest = _build(tmp_path)
    (entry,) = manifest["volumes"]["eval_a"]
    assert entry["lesion_resampled"] is True and entry["lesion_fov_fraction"] == 1.0
    assert entry["lesion_voxels"] > 0 and entry["lesion_slices"] > 0 and "warnings" not in entry
    assert manifest["warnings"] == [] and manifest["skipped"] == []
    _folders(tmp_path / "same")
    (same,) = _build(tmp_path / "same")["volumes"]["eval_a"]
    assert same["lesion_resampled"] is False and "lesion_fov_fraction" not in same


def test_an_empty_lesion_after_preprocessing_is_an_error_or_with_the_switch_a_recorded_warning(tmp_path):
    corner = np.zeros(SHAPE, bool)
    corner[:3, :3, :3] = True  # inside the scan, outside the brain's bounding box: cropped away
    _folders(tmp_path, lesion=corner)
    with pytest.raises(EmptyMaskError, match="p1_mask.nii.gz: the lesion of tumour scan .*p1.nii.gz is empty after "
                                             "preprocessing .*allow_empty_masks: true keeps"):
        _build(tmp_path)
    manifest = _build(tmp_path, allow_empty_masks=True)
    (entry,) = manifest["volumes"]["eval_a"]
    assert entry["lesion_voxels"] == 0 and len(entry["warnings"]) == 1 and "p1_mask.nii.gz" in entry["warnings"][0]
    assert manifest["warnings"] == entry["warnings"]
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["warnings"] == entry["warnings"]


def test_an_empty_brain_mask_after_preprocessing_is_an_error_or_with_the_switch_the_scan_is_left_out(tmp_path):
    _folders(tmp_path)
    # a brain mask on a 0.2 mm grid whose one voxel lies between the scan's voxel centres: inside the field of view,
    # gone after nearest-neighbour resampling onto the scan
    fine = np.zeros((60, 60, 60), np.uint8)
    fine[22, 22, 22] = 1
    _save(tmp_path / "healthy" / "h0_brainmask.nii.gz", fine, _affine(zoom=0.2, shift=(0.05, 0.05, 0.05)))
    with pytest.raises(EmptyMaskError, match="h0_brainmask.nii.gz: the brain mask is empty after resampling to 1 mm; "
                                             "allow_empty_masks: true leaves the scan out"):
        _build(tmp_path)
    manifest = _build(tmp_path, allow_empty_masks=True)
    assert manifest["split"]["train"] == ["folder-h1"]
    assert [s["id"] for s in manifest["skipped"]] == ["folder-h0"]
    assert "h0_brainmask.nii.gz" in manifest["warnings"][0]
    assert PreparedDataset(tmp_path / "data").ids("train") == ["folder-h1"]


# ----- one parameter validation for every entry point ---------------------------------------------------------

def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _yaml(path: Path, **params) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("params, match", [
    ({"lamda_adv": 0.0, "image_size": 32}, "'lamda_adv' are declared by none .*did you mean 'lambda_adv'"),
    ({"lambda_adv": "zero"}, "parameter 'lambda_adv' must be float"),
    ({"models": 3}, "parameter 'models' must be tuple"),  # another notebook's parameter, of the wrong type
    ({"t_star": 5000}, "t_star must be in"),
])
def test_training_cli_refuses_bad_parameters_in_one_line_before_anything(tmp_path, capsys, params, match):
    path = _yaml(tmp_path / "p.yaml", **params)
    assert training.main([str(path), "--run-dir", str(tmp_path / "run")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {path}") and re.search(match, line), line
    assert not (tmp_path / "run").exists(), "nothing started"


def test_training_cli_accepts_other_pipeline_notebooks_parameters(tmp_path, capsys):
    cfg = load_checked(TrainConfig, [ROOT / "params" / "demo.yaml"], {"run_dir": "x"}, pipeline=True)
    assert cfg.image_size == 64 and cfg.run_dir == "x"  # demo.yaml holds evaluation keys (models, slice_stride...)
    # valid parameters, no prepared data: a one-line error (exit 1), not a traceback
    assert training.main([str(ROOT / "params" / "ci" / "ci.yaml"), "--run-dir", str(tmp_path)]) == 1
    assert "manifest.json not found" in _one_line(capsys.readouterr().err)


def test_training_cli_in_a_process_exits_2_with_one_line(tmp_path):
    import subprocess

    path = _yaml(tmp_path / "p.yaml", lamda_adv=0.0)
    proc = subprocess.run([sys.executable, "-m", "addmlib.training", str(path), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "lamda_adv" in _one_line(proc.stderr) and "Traceback" not in proc.stderr


def test_sweep_cli_refuses_bad_cell_and_base_parameters_before_preparing_data(tmp_path, capsys):
    ci = yaml.safe_load((ROOT / "params" / "ci" / "ablation_ci.yaml").read_text())
    typo = _yaml(tmp_path / "a.yaml", **{**ci, "cell_params": {"max_stepz": 10}})
    assert sweep.main([str(typo), "--run-dir", str(tmp_path / "s")]) == 2
    assert "'max_stepz' are declared by none" in _one_line(capsys.readouterr().err)
    base = _yaml(tmp_path / "base.yaml", image_size="32")
    ill = _yaml(tmp_path / "b.yaml", **{**ci, "base_params": [str(base)]})
    assert sweep.main([str(ill), "--run-dir", str(tmp_path / "s")]) == 2
    assert "parameter 'image_size' must be int" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists(), "nothing started"
    with pytest.raises(ConfigError, match="base.yaml"):
        sweep.load_config([ill])


def test_benchmark_cli_validates_every_case_before_running_any(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(benchmark, "run_case", lambda spec: ran.append(spec) or {})
    good = {"case": "peak", "label": "p", "threads": 1, "gemm_n": 64}
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([good, {**good, "gemm": 64}]))
    assert benchmark.main(["--cases", str(cases)]) == 2
    assert "cases.json (case 1): unknown parameter(s) 'gemm' for case 'peak'" in _one_line(capsys.readouterr().err)
    assert ran == [], "no case ran"
    assert benchmark.main(["--case", json.dumps({**good, "gemm_n": "64"})]) == 2
    assert "parameter 'gemm_n' must be int" in _one_line(capsys.readouterr().err)
    assert benchmark.main(["--case", json.dumps({"case": "train", "threads": 1})]) == 2
    assert "needs parameter(s) 'base', 'batch', 'model', 'mult'" in _one_line(capsys.readouterr().err)
    cases.write_text(json.dumps([good]))
    assert benchmark.main(["--cases", str(cases)]) == 0 and ran == [good]


@pytest.mark.parametrize("module, argv", [(book, ["--run-dir", "x"]), (pipeline, ["p.yaml", "--cell-timeout", "x"]),
                                          (training, ["p.yaml"]), (sweep, []), (benchmark, ["--nope"])])
def test_every_cli_reports_a_bad_command_line_in_one_line_with_exit_code_2(capsys, module, argv):
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    assert _one_line(capsys.readouterr().err).startswith("error: python -m addmlib.")


def test_book_cli_refuses_a_run_without_executed_notebooks_in_one_line(tmp_path, capsys):
    assert book.main(["--run-dir", str(tmp_path), "--out", str(tmp_path / "site")]) == 2
    assert "no executed notebooks" in _one_line(capsys.readouterr().err)


def test_yaml_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    assert pipeline.main([str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert "bad.yaml: not valid YAML" in _one_line(capsys.readouterr().err)


# ----- metrics on single-class inputs ----------------------------------------------------------------------------

def test_ranking_metrics_are_undefined_with_one_class_and_dice_of_empty_vs_empty_is_one_everywhere():
    rng = np.random.default_rng(0)
    healthy = BinnedScores()
    healthy.update(rng.uniform(0, 1, 500), np.zeros(500, bool))
    assert np.isnan(healthy.auroc()) and np.isnan(healthy.auprc())
    assert healthy.best_dice() == (1.0, 2.0), "predicting nothing matches the empty ground truth"
    assert healthy.best_dice()[0] == overlap_metrics(0, 0, 0)["dice"]
    assert healthy.warnings() == ["no lesion voxels: AUROC/AUPRC undefined (NaN); Dice/IoU are 1 only if nothing is "
                                  "predicted"]
    lesion_only = BinnedScores()
    lesion_only.update(rng.uniform(0, 1, 500), np.ones(500, bool))
    assert np.isnan(lesion_only.auroc()) and np.isnan(lesion_only.auprc()), "no trivial AUPRC of 1"
    assert lesion_only.warnings() == ["no non-lesion voxels: AUROC/AUPRC undefined (NaN)"]
    both = BinnedScores()
    both.update(np.r_[rng.uniform(0, 1, 50), rng.uniform(1, 2, 50)], np.arange(100) >= 50)
    assert both.warnings() == [] and both.auroc() == pytest.approx(1.0) and both.best_dice()[0] == pytest.approx(1.0)
    assert np.isnan(mean_std([float("nan")] * 3)).all(), "all undefined: NaN, not 0"
    assert mean_std([0.5, float("nan"), 0.7]) == pytest.approx((0.6, 0.1))


def test_measure_records_warnings_per_volume_and_summaries_leave_nan_out():
    from addmlib.data.prepare import PreparedVolume
    from addmlib.evaluate import PostProcessing, ScoredVolume, measure

    rng = np.random.default_rng(1)
    brain = np.zeros((16, 16, 3), bool)
    brain[2:14, 2:14] = True

    def scored(vid: str, lesion: np.ndarray) -> ScoredVolume:
        amap = rng.uniform(0, 0.2, brain.shape) + 1.0 * lesion
        vol = PreparedVolume(vid, "eval_a", amap, brain, lesion, np.eye(4), np.arange(3), {})
        return ScoredVolume(vid, "eval_a", np.arange(3), amap, amap, amap, amap ** 2, brain, lesion, vol)

    lesion = np.zeros_like(brain)
    lesion[5:9, 5:9, 1] = True
    vols = [scored("tumour", lesion), scored("clean", np.zeros_like(brain))]
    res = measure(vols, {"tumour": 0.5, "clean": 0.5}, PostProcessing(0.0, 1, 1), anoddpm=False)
    tumour, clean = res["per_volume"]
    assert tumour["warnings"] == [] and tumour["auroc"] == pytest.approx(1.0)
    assert clean["warnings"][0].startswith("no lesion voxels") and np.isnan(clean["auroc"])
    assert clean["dice"] == 1.0 and clean["best_dice"] == 1.0, "nothing predicted, nothing to find"
    assert res["per_volume_summary"]["auroc"] == pytest.approx((1.0, 0.0)), "the undefined AUROC is left out"
    assert res["per_volume_summary"]["dice"] == pytest.approx((1.0, 0.0))
