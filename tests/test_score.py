"""Scoring a scan you have (``python -m addmlib.score``): native-space outputs, skull on and off, 2-D slices, masks and
their metrics, bad input, relocated runs, and the notebook."""

import json
import shutil
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pytest
import torch

from addmlib import pipeline, score
from addmlib.data import ixi
from addmlib.data.datasets import packaged
from addmlib.data.io import read_volume
from addmlib.visualization.volumes import open_for_browsing

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "params" / "ci" / "ci.yaml"
FAST = {"sample_steps": 1, "eval_noise": "none", "baselines": [], "eval_sets": ["eval_a", "ixi_test"],
        "write_nifti": False}
"""The ci run evaluated again scoring as the demo does (one network call per slice), on set A and the IXI test slices
(calibrated on val_healthy and on ixi_calib): what scoring reads (detector.json), at a few seconds per scan."""

pytestmark = [pytest.mark.slow, pytest.mark.registry]


@pytest.fixture(scope="module")
def run(ci_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("score") / "run"
    shutil.copytree(ci_run, folder, ignore=shutil.ignore_patterns("notebooks", "maps", "figures"))
    return pipeline.run(CI, folder, notebooks=["03_evaluate"], overrides=FAST, cell_timeout=600)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """A brain-only scan (SRI24), the same in another orientation and voxel order, a skull-on tumour scan with its
    tumour mask beside it (qtim), and a 2-D axial slice as PNG and as a one-slice NIfTI."""
    folder = tmp_path_factory.mktemp("scans")
    sri = read_volume(packaged("sri24").image)
    out = {"brain": folder / "brain.nii.gz", "turned": folder / "turned.nii.gz", "tumour": folder / "tumour.nii.gz",
           "png": folder / "axial.png", "slice": folder / "slice.nii.gz"}
    nib.save(sri, out["brain"])
    data = np.asarray(sri.dataobj)
    turned = np.ascontiguousarray(np.transpose(data, (2, 0, 1))[::-1])  # axes (z, x, y), z reversed
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1  # turned voxel (k, i, j) -> original (i, j, k)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[2] - 1
    nib.save(nib.Nifti1Image(turned, sri.affine @ perm @ flip), out["turned"])
    qtim = packaged("qtim_tumor2")
    shutil.copy(qtim.image, out["tumour"])
    label = nib.load(qtim.lesion)
    tumour = (np.rint(np.asarray(label.dataobj)) == qtim.lesion_label).astype(np.uint8)
    nib.save(nib.Nifti1Image(tumour, label.affine), folder / "tumour_mask.nii.gz")
    mid = np.asarray(nib.as_closest_canonical(sri).dataobj)[:, :, 80]
    matplotlib.image.imsave(out["png"], np.flipud(mid.T), cmap="gray")  # rows anterior to posterior (slices2d)
    nib.save(nib.Nifti1Image(mid[:, :, None], np.diag([1.0, 1.0, 1.0, 1.0])), out["slice"])
    return out


def _ran(argv: list[str], capsys) -> tuple[int, str]:
    code = score.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_a_volume_without_mask_comes_back_on_its_own_grid_in_any_orientation(run, scans, tmp_path, capsys):
    from nilearn import image, plotting

    code, err = _ran([run, scans["brain"], scans["turned"], "--out", tmp_path], capsys)
    assert code == 0, err
    det = json.loads((run / "eval" / "detector.json").read_text())
    maps = {}
    for name in ("brain", "turned"):
        folder = tmp_path / name
        summary = json.loads((folder / "summary.json").read_text())
        src = nib.load(scans[name])
        for kind in ("map", "flagged", "recon", "brain", "input"):
            out = nib.load(folder / f"{name}_{kind}.nii.gz")
            assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        flagged = np.asarray(nib.load(folder / f"{name}_flagged.nii.gz").dataobj)
        assert set(np.unique(flagged)) <= {0, 1} and flagged.any()
        assert summary["threshold"] == det["models"]["addm"]["threshold"] and summary["metrics"] is None
        assert summary["calibrated_on"] == "val_healthy"
        assert summary["skull"]["on"] is False and summary["warnings"] == []
        voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
        assert summary["flagged_ml"] == pytest.approx(flagged.sum() * voxel_ml, abs=1e-3)
        sizes = [c["voxels"] for c in summary["components"]]
        assert sizes == sorted(sizes, reverse=True) and sum(sizes) <= flagged.sum()
        assert (folder / summary["files"]["png"]).stat().st_size > 10_000
        maps[name] = folder / f"{name}_map.nii.gz"
    # the same brain in another voxel order: the same map in the world
    on_brain = image.resample_to_img(str(maps["turned"]), str(scans["brain"]), interpolation="nearest",
                                     force_resample=True, copy_header=True)
    a, b = np.asarray(nib.load(maps["brain"]).dataobj), np.asarray(on_brain.dataobj)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    display = plotting.plot_stat_map(str(maps["brain"]), bg_img=str(scans["brain"]), display_mode="z", cut_coords=3)
    display.savefig(tmp_path / "overlay.png")
    display.close()
    assert (tmp_path / "overlay.png").stat().st_size > 0


def test_skull_on_with_a_mask_beside_the_scan_gives_its_metrics(run, scans, tmp_path, capsys):
    code, err = _ran([run, scans["tumour"], "--out", tmp_path], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "tumour" / "summary.json").read_text())
    assert summary["skull"]["on"] is True and summary["skull"]["non_background_ml"] > score.SKULL_HEAD_ML
    assert summary["mask"].endswith("tumour_mask.nii.gz")
    m = summary["metrics"]
    assert m["lesion_voxels_scored"] > 0 and 0 <= m["dice"] <= 1 and 0.5 < m["auroc"] <= 1 and 0 < m["auprc"] <= 1
    lesion = nib.load(tmp_path / "tumour" / "tumour_lesion.nii.gz")
    assert lesion.shape == nib.load(scans["tumour"]).shape and np.asarray(lesion.dataobj).any()
    sel = open_for_browsing(run, score_dir=str(tmp_path / "tumour"))
    vol = sel.entries[0]
    assert vol.threshold == summary["threshold"] and vol.lesion is not None and vol.lesion.any()


def test_two_d_slices_png_and_one_slice_nifti(run, scans, tmp_path, capsys):
    code, err = _ran([run, scans["png"], scans["slice"], "--skull", "off", "--out", tmp_path], capsys)
    assert code == 0, err
    code, err = _ran([run, ixi.IXI_DIR / "png" / "sub-IXI002.png", "--out", tmp_path], capsys)  # skull on: auto
    assert code == 0, err
    ixi_summary = json.loads((tmp_path / "sub-IXI002" / "summary.json").read_text())
    assert ixi_summary["skull"]["on"] is True and ixi_summary["skull"]["non_background_cm2"] > score.SKULL_SLICE_CM2
    calibrations = json.loads((run / "eval" / "detector.json").read_text())["models"]["addm"]["calibrations"]
    assert ixi_summary["calibrated_on"] == "ixi_calib"
    thresholds = {split: c["threshold"] for split, c in calibrations.items()}
    assert ixi_summary["threshold"] == thresholds["ixi_calib"] != thresholds["val_healthy"]
    for name, shape in (("slice", nib.load(scans["slice"]).shape), ("axial", None)):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["input"]["two_d"] is True and summary["slices_scored"] == 1
        amap = nib.load(tmp_path / name / f"{name}_map.nii.gz")
        assert amap.shape[2] == 1 and np.asarray(amap.dataobj).any()
        if shape:
            assert amap.shape == shape
    png = json.loads((tmp_path / "axial" / "summary.json").read_text())
    assert png["skull"]["on"] is False and png["depth_contrast"] > score.DEPTH_CONTRAST_LIMIT


def test_an_inverted_contrast_is_warned_about(run, scans, tmp_path, capsys):
    img = nib.load(scans["slice"])
    data = np.asarray(img.dataobj, dtype=np.float32)
    inverted = np.where(data > 0, data.max() - data, 0)
    nib.save(nib.Nifti1Image(inverted, img.affine), tmp_path / "inverted.nii.gz")
    code, err = _ran([run, tmp_path / "inverted.nii.gz", "--out", tmp_path / "out"], capsys)
    assert code == 0 and "far from the training data" in err
    summary = json.loads((tmp_path / "out" / "inverted" / "summary.json").read_text())
    assert summary["depth_contrast"] < score.DEPTH_CONTRAST_LIMIT and summary["warnings"]


@pytest.mark.parametrize("case", ["missing", "format", "corrupt", "mask_elsewhere", "no_threshold", "no_model",
                                  "no_run"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, run, scans, tmp_path, capsys):
    scan, run_dir = scans["brain"], run
    if case == "missing":
        scan = tmp_path / "nowhere.nii.gz"
    elif case == "format":
        scan = tmp_path / "notes.txt"
        scan.write_text("not a scan")
    elif case == "corrupt":
        scan = tmp_path / "broken.nii.gz"
        scan.write_bytes(scans["brain"].read_bytes()[:5000])
    elif case == "mask_elsewhere":
        img = nib.load(scans["brain"])
        shifted = img.affine.copy()
        shifted[:3, 3] += 1000.0
        nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), shifted), tmp_path / "brain_mask.nii.gz")
        scan = tmp_path / "brain.nii.gz"
        shutil.copy(scans["brain"], scan)
    elif case in ("no_threshold", "no_model"):
        run_dir = tmp_path / "copy"
        shutil.copytree(run, run_dir, ignore=shutil.ignore_patterns("data", "notebooks"))
        (run_dir / ("eval/detector.json" if case == "no_threshold" else "models/addm/checkpoint.pt")).unlink()
    else:
        run_dir = tmp_path / "no-run"
    code, err = _ran([run_dir, scan, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    named = {"missing": "nowhere.nii.gz", "format": "notes.txt", "corrupt": "broken.nii.gz",
             "mask_elsewhere": "brain_mask.nii.gz",
             "no_threshold": "--notebooks 03_evaluate", "no_model": "--notebooks 02_train", "no_run": "no-run"}
    assert named[case] in err
    assert not (tmp_path / "out").exists()


def test_a_copied_run_scores_with_its_own_weights(run, scans, tmp_path, capsys):
    record = json.loads((run / "models" / "addm" / "model.json").read_text())
    assert record["checkpoint"] == "checkpoint.pt"
    original, copy = tmp_path / "original", tmp_path / "copy"
    shutil.copytree(run, original, ignore=shutil.ignore_patterns("data", "notebooks"))
    shutil.copytree(original, copy)
    # an older record names its checkpoint by absolute path: the copy's own file wins
    (copy / "models" / "addm" / "model.json").write_text(json.dumps(
        {**record, "checkpoint": str(original / "models" / "addm" / "checkpoint.pt")}))
    shutil.rmtree(original)
    code, err = _ran([copy, scans["slice"], "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "slice" / "summary.json").read_text())
    assert Path(summary["checkpoint"]) == (copy / "models" / "addm" / "checkpoint.pt").resolve()


def test_an_exported_detector_scores_as_its_run_does_and_is_never_overwritten(run, scans, tmp_path, capsys):
    from addmlib import shipped
    packed = shipped.export(run, "eval", "addm", tmp_path / "packed")
    slim = torch.load(packed / "models" / "addm" / "checkpoint.pt", weights_only=True)
    assert "ema" in slim and not {"unet", "disc", "opt_g", "opt_d"} & set(slim)  # what scoring needs, no more
    assert not (packed / "models" / "addm" / "checkpoint-prev.pt").exists()
    shipped.verify(packed)
    for source, out in ((run, tmp_path / "from-run"), (packed, tmp_path / "from-packed")):
        code, err = _ran([source, scans["slice"], "--out", out], capsys)
        assert code == 0, err
    maps = [np.asarray(nib.load(tmp_path / d / "slice" / "slice_map.nii.gz").dataobj)
            for d in ("from-run", "from-packed")]
    assert np.array_equal(*maps)
    with pytest.raises(shipped.ShippedDetectorError, match="exists; export writes a new folder"):
        shipped.export(run, "eval", "addm", packed)
    assert shipped.main([str(run), "--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no model 'nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_detector_records_its_median_window_and_an_older_record_reads_cubic(run, tmp_path):
    assert score.load_detector(run).post_processing.median_in_plane  # params/ci/ci.yaml filters in-plane
    older = tmp_path / "older"
    shutil.copytree(run, older, ignore=shutil.ignore_patterns("data", "notebooks"))
    path = older / "eval" / "detector.json"
    record = json.loads(path.read_text())
    assert record["post_processing"]["gaussian_sigma"] == 2.0  # params/ci/ci.yaml: the median, then the Gaussian
    del record["post_processing"]["median_in_plane"]  # written before the key existed: the cube
    del record["post_processing"]["gaussian_sigma"]  # written before the key existed: no Gaussian
    path.write_text(json.dumps(record))
    pp = score.load_detector(older).post_processing
    assert not pp.median_in_plane and pp.median_size == 5 and pp.gaussian_sigma == 0.0  # as such records were made


def test_the_notebook_scores_and_browses(run, scans, tmp_path):
    out = tmp_path / "08_score.ipynb"
    pipeline.execute_notebook(ROOT / "notebooks" / "08_score.ipynb", out,
                              {"run_dir": str(run), "scans": [str(scans["slice"])], "out_dir": str(tmp_path / "out"),
                               "skull": "off"}, cell_timeout=600)
    assert (tmp_path / "out" / "slice" / "summary.json").is_file()


def test_the_benchmark_times_scoring_a_scan(run):
    from addmlib import benchmark as bm
    from addmlib.config import BenchConfig, validate

    cfg = validate(BenchConfig, {"quality_run_dir": str(run), "threads": 1, "device": "cpu"}, "test")
    (case,) = bm.score_cases(cfg, ("sri24",))
    bm.validate_case(case, "test")
    row = bm.run_case_here(case)
    assert row["slices"] > 0 and 0 < row["wall_s"] and row["skull_on"] is False and len(row["native_shape"]) == 3
    assert bm.score_cases(validate(BenchConfig, {"quality_run_dir": str(run / "nowhere")}, "test")) == []
