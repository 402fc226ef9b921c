"""The slice browser's logic without a browser: orientation, threshold -> prediction -> Dice, display arrays, figures."""

import json

import nibabel as nib
import numpy as np
import pytest

from addmlib.config import BrowseConfig, ConfigError, validate
from addmlib.data.io import VolumeError
from addmlib.visualization import SliceBrowser, load_nifti_set, overlap, predict, run_volumes, slice_figure
from addmlib.visualization.figures import OfflineNotebookRenderer, montage, pick_slices, slice_title
from addmlib.visualization.overlay import (View, blend, colormap, compose, gray, outline, panels, png, upscale)
from addmlib.visualization.prediction import largest_slice, starting_threshold
from addmlib.visualization.volumes import extract, open_for_browsing, pixel_spacing, select_volume

SHAPE = (20, 24, 16)


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def _las_set(tmp_path):
    """Files on an LAS grid (axis 0 runs to the patient's left, like our native maps), a bright marker in the
    patient's right-anterior-superior corner, a lesion block and a map that is high on part of it."""
    affine = np.diag([-2.0, 1.5, 3.0, 1.0])  # x flipped: voxel i -> world x = -2 i
    scan = np.zeros(SHAPE)
    scan[2:18, 2:22, 2:14] = 0.5
    scan[0, 23, 15] = 1.0  # i = 0 is the most *right* column (largest x), j = 23 most anterior, k = 15 most superior
    lesion = np.zeros(SHAPE)
    lesion[8:12, 10:14, 6:10] = 1
    amap = np.zeros(SHAPE)
    amap[8:12, 10:14, 6:8] = 0.9  # finds the lower half of the lesion
    amap[3, 3, 3] = 0.95  # one isolated false positive voxel
    paths = {n: _save(tmp_path / f"v_{n}.nii.gz", a, affine) for n, a in
             (("scan", scan), ("map", amap), ("lesion", lesion))}
    return paths, affine


def test_loading_turns_any_orientation_to_canonical_and_planes_display_as_documented(tmp_path):
    paths, _ = _las_set(tmp_path)
    vol = load_nifti_set(paths["scan"], paths["map"], paths["lesion"])
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.spacing == (2.0, 1.5, 3.0)
    # canonical index of the marker: the flipped x axis puts it at i = 19
    assert vol.image[19, 23, 15] == 1.0
    axial = extract(vol.image, "axial", 15)  # radiological: anterior at the top, patient's right on the left
    assert axial.shape == (24, 20) and axial[0, 0] == 1.0
    assert extract(vol.image, "axial", 15, radiological=False)[0, -1] == 1.0  # neurological: right on the right
    coronal = extract(vol.image, "coronal", 23)  # superior at the top
    assert coronal.shape == (16, 20) and coronal[0, 0] == 1.0
    sagittal = extract(vol.image, "sagittal", 19)  # superior at the top, anterior on the left
    assert sagittal.shape == (16, 24) and sagittal[0, 0] == 1.0
    assert pixel_spacing(vol.spacing, "coronal") == (3.0, 2.0) and pixel_spacing(vol.spacing, "sagittal") == (3.0, 1.5)
    assert vol.world_mm("sagittal", 19) == pytest.approx(0.0)  # canonical i = 19 is the file's i = 0, x = 0
    with pytest.raises(IndexError, match="axial slice 16 is outside"):
        extract(vol.image, "axial", 16)


def test_files_on_different_grids_are_refused_naming_the_file(tmp_path):
    paths, affine = _las_set(tmp_path)
    small = _save(tmp_path / "small_map.nii.gz", np.ones((10, 24, 16)), affine)
    with pytest.raises(VolumeError, match=r"small_map.nii.gz: the map has shape \(10, 24, 16\)"):
        load_nifti_set(paths["scan"], small)
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    moved = _save(tmp_path / "moved_mask.nii.gz", np.ones(SHAPE), shifted)
    with pytest.raises(VolumeError, match="moved_mask.nii.gz: the lesion lies on another grid"):
        load_nifti_set(paths["scan"], paths["map"], moved)
    with pytest.raises(VolumeError, match="file not found"):
        load_nifti_set(tmp_path / "nope.nii.gz", paths["map"])


def test_swapped_axes_are_transposed_to_canonical(tmp_path):
    """A PIR file (axis 0 posterior, 1 inferior, 2 right) lands on the same canonical grid as its RAS twin."""
    ras = np.zeros((6, 7, 8))
    ras[5, 6, 7] = 1.0  # right, anterior, superior corner
    pir_affine = np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])
    # PIR voxel (p, i, r) holds RAS voxel (r, 6 - p, 7 - i)
    pir = np.transpose(ras[:, ::-1, ::-1], (1, 2, 0))
    scan = _save(tmp_path / "pir.nii.gz", pir + 0.1, pir_affine)
    vol = load_nifti_set(scan, _save(tmp_path / "pir_map.nii.gz", pir, pir_affine))
    assert vol.image.shape == (6, 7, 8) and vol.amap[5, 6, 7] == 1.0
    assert extract(vol.amap, "axial", 7)[0, 0] == 1.0  # anterior at the top, patient's right on the left


def test_masks_may_be_empty_but_not_malformed(tmp_path):
    paths, affine = _las_set(tmp_path)
    empty = _save(tmp_path / "empty_lesion.nii.gz", np.zeros(SHAPE), affine)
    vol = load_nifti_set(paths["scan"], paths["map"], empty)
    assert not vol.lesion.any() and overlap(vol, predict(vol, 0.5)).tp == 0
    four_d = _save(tmp_path / "4d_lesion.nii.gz", np.zeros(SHAPE + (3,)), affine)
    with pytest.raises(VolumeError, match="4d_lesion.nii.gz: a 4-D volume"):
        load_nifti_set(paths["scan"], paths["map"], four_d)
    nan_map = np.zeros(SHAPE)
    nan_map[1, 1, 1] = np.nan
    with pytest.raises(VolumeError, match="nan_map.nii.gz: contains 1 NaN/Inf voxels"):
        load_nifti_set(paths["scan"], _save(tmp_path / "nan_map.nii.gz", nan_map, affine))
    no_brain = np.zeros(SHAPE)
    no_brain[:, :, 12:] = 1
    recon = np.zeros(SHAPE)
    recon[:, :, :8] = 0.1
    with pytest.raises(VolumeError, match="brain mask holds no voxel on the scored slices"):
        load_nifti_set(paths["scan"], paths["map"], None, _save(tmp_path / "r.nii.gz", recon, affine),
                       _save(tmp_path / "b.nii.gz", no_brain, affine), scored_from_recon=True)


def test_threshold_prediction_and_dice(tmp_path):
    paths, _ = _las_set(tmp_path)
    vol = load_nifti_set(paths["scan"], paths["map"], paths["lesion"])
    pred = predict(vol, 0.5)
    assert pred.sum() == 4 * 4 * 2 + 1
    o = overlap(vol, pred)  # TP 32, FP 1, FN 32 -> Dice 64 / 97
    assert (o.tp, o.fp, o.fn) == (32, 1, 32) and o.dice == pytest.approx(64 / 97)
    # small components are dropped the way the evaluation drops them
    vol.min_component_voxels = 2
    o2 = overlap(vol, predict(vol, 0.5))
    assert (o2.tp, o2.fp, o2.fn) == (32, 0, 32)
    # a slice through the found half vs one through the missed half
    k_found, k_missed = 6, 8
    assert overlap(vol, pred, "axial", k_found).dice == pytest.approx(1.0)
    assert overlap(vol, pred, "axial", k_missed).dice == 0.0
    assert overlap(vol, predict(vol, 0.99)).tp == 0
    assert largest_slice(vol.lesion, "axial") == 6 and largest_slice(pred, "axial") in (6, 7)


def test_dice_counts_only_scored_slices_and_the_brain(tmp_path):
    paths, affine = _las_set(tmp_path)
    recon = np.full(SHAPE, 0.1)
    recon[:, :, 8:] = 0  # slices 8.. were not scored: the lesion's upper half does not count
    brain = np.zeros(SHAPE)
    brain[4:, :, :] = 1  # file voxels i < 4 are outside the brain, the false-positive one (file i = 3) among them
    rp = _save(tmp_path / "v_recon.nii.gz", recon, affine)
    bp = _save(tmp_path / "v_brain.nii.gz", brain, affine)
    assert load_nifti_set(paths["scan"], paths["map"], paths["lesion"], rp, bp).scored.all(), "all count by default"
    vol = load_nifti_set(paths["scan"], paths["map"], paths["lesion"], rp, bp, scored_from_recon=True)
    assert vol.scored.tolist() == [True] * 8 + [False] * 8
    o = overlap(vol, predict(vol, 0.5))
    assert (o.tp, o.fp, o.fn) == (32, 0, 0), "the FP voxel lies outside the brain, the missed half on unscored slices"
    assert slice_title(vol, predict(vol, 0.5), "axial", 9).endswith("· not scored")
    assert starting_threshold(vol) == (pytest.approx(np.percentile(vol.amap[vol.region], 99)),
                                       "99th percentile of this map, not calibrated")
    vol.threshold = 0.3
    assert starting_threshold(vol) == (0.3, "calibrated on healthy brains")
    assert starting_threshold(vol, 0.7) == (0.7, "given")


def test_display_arrays():
    g = gray(np.array([[-1.0, 0.0, 1.0]]), -1, 1)
    assert g.dtype == np.uint8 and g[0, :, 0].tolist() == [0, 128, 255] and (g[..., 0] == g[..., 2]).all()
    c = colormap(np.array([[0.0, 2.0]]), 0.0, 1.0, "gray")
    assert c[0, 0].tolist() == [0, 0, 0] and c[0, 1].tolist() == [255, 255, 255]  # clipped at vmax
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        colormap(np.zeros((2, 2)), 0, 1, "nope")
    base, top = np.zeros((1, 2, 3), np.uint8), np.full((1, 2, 3), 200, np.uint8)
    assert blend(base, top, np.array([[0.0, 0.5]]))[0, :, 0].tolist() == [0, 100]
    sq = np.zeros((7, 7), bool)
    sq[1:6, 1:6] = True
    ring = outline(sq)
    assert ring.sum() == 16 and not ring[3, 3] and ring[1, 1]
    up = upscale(np.arange(6).reshape(2, 3), row_mm=2.0, col_mm=1.0, height=8)  # 4 mm x 3 mm -> 8 x 6 pixels
    assert up.shape == (8, 6) and up[0, 0] == 0 and up[-1, -1] == 5
    tiles = compose([("a", np.zeros((5, 4, 3), np.uint8)), ("b", np.zeros((5, 4, 3), np.uint8))], columns=2)
    assert tiles.shape == (4 + 5 + 14 + 4, 4 + 2 * (4 + 4), 3)
    assert png(tiles)[:8] == b"\x89PNG\r\n\x1a\n"


def test_panels_follow_what_the_volume_has(tmp_path):
    paths, affine = _las_set(tmp_path)
    bare = load_nifti_set(paths["scan"], paths["map"])
    assert [t for t, _ in panels(bare, View("axial", 6, 0.5))] == ["input", "anomaly map", "overlay (50%)",
                                                                     "map >= 0.5"]
    recon = np.full(SHAPE, 0.1)
    recon[:, :, 8:] = 0
    full = load_nifti_set(paths["scan"], paths["map"], paths["lesion"], _save(tmp_path / "r.nii.gz", recon, affine),
                          scored_from_recon=True)
    titles = [t for t, _ in panels(full, View("axial", 9, 0.5))]
    assert titles[:3] == ["input", "reconstruction (not scored)", "anomaly map (not scored)"] and len(titles) == 6
    # the prediction panel colours found lesion green, missed lesion blue; the outline toggle changes the overlay
    scored = load_nifti_set(paths["scan"], paths["map"], paths["lesion"])  # every slice scored

    def hue_counts(index):
        p = dict(panels(scored, View("axial", index, 0.5, height=24)))["map >= 0.5"].astype(int)
        return (p[..., 1] > p[..., 0] + 60).sum(), (p[..., 2] > p[..., 0] + 60).sum()  # green (found), blue (missed)

    assert hue_counts(6)[0] > 0 and hue_counts(6)[1] == 0
    assert hue_counts(8)[0] == 0 and hue_counts(8)[1] > 0
    assert (dict(panels(full, View("axial", 8, 0.5)))["map >= 0.5"] ==
            dict(panels(full, View("axial", 8, 0.5)))["input"]).all(), "nothing counts on an unscored slice"
    with_ring = dict(panels(full, View("axial", 6, 0.5, contour=True)))["overlay (50%)"]
    without = dict(panels(full, View("axial", 6, 0.5, contour=False)))["overlay (50%)"]
    assert (with_ring != without).any()
    opaque = dict(panels(full, View("axial", 6, 0.5, opacity=1.0)))["overlay (100%)"]
    assert (opaque != with_ring).any()


def test_browser_logic_without_a_browser(tmp_path):
    paths, affine = _las_set(tmp_path)
    vol = load_nifti_set(paths["scan"], paths["map"], paths["lesion"], threshold=0.5)
    other = load_nifti_set(paths["scan"], paths["map"], id="no-mask")
    b = SliceBrowser([vol, other])
    assert b.plane == "axial" and b.index == 6, "opens on the slice with the most lesion"
    assert b.threshold_w.value == 0.5 and "calibrated" in b.readout
    assert "slice Dice 1.000" in b.readout and "volume Dice <b>0.660</b>" in b.readout
    first = b.image_w.value
    b.set_slice("axial", 8)
    assert b.image_w.value != first and "slice Dice 0.000" in b.readout
    b.set_threshold(0.92)
    assert "volume Dice <b>0.000</b>" in b.readout and "FP 1" in b.readout
    b.set_slice("coronal", 12)
    assert b.plane == "coronal" and b.readout.startswith("<div class='addm-readout'><b>coronal slice 12")
    b.slice_w["sagittal"].value = 3
    assert b.plane == "sagittal", "moving a plane's slider shows that plane"
    b.plane_w.value = "axial"
    b.set_threshold(0.5)
    assert b.jump("lesion") == 6 and b.jump("anomaly") in (6, 7)
    b.volume_w.value = 1
    assert b.volume.id == "no-mask" and "no ground truth" in b.readout and b.jump_lesion_w.disabled
    assert "not calibrated" in b.readout
    # a volume of another shape, with a threshold above its map's maximum: nothing is clamped
    small = np.zeros((10, 12, 9))
    small[2:8, 2:10, 2:7] = 0.5
    other_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    third = load_nifti_set(_save(tmp_path / "s.nii.gz", small, other_affine),
                           _save(tmp_path / "s_map.nii.gz", small * 0.2, other_affine), threshold=3.0)
    b2 = SliceBrowser([vol, third], start=1)
    assert b2.threshold_w.value == 3.0 and "at threshold 3 " in b2.readout
    assert b2.slice_w["axial"].max == 8 and b2.slice_w["sagittal"].max == 9
    b2.volume_w.value = 0
    assert b2.slice_w["axial"].max == 15 and b2.threshold_w.value == 0.5
    with pytest.raises(ValueError, match="start 2 is outside"):
        SliceBrowser([vol, third], start=2)
    with pytest.raises(ValueError, match="jump target"):
        b.jump("elsewhere")
    with pytest.raises(ValueError, match="nothing to browse"):
        SliceBrowser([])


def test_static_figures(tmp_path):
    paths, _ = _las_set(tmp_path)
    vol = load_nifti_set(paths["scan"], paths["map"], paths["lesion"])
    assert pick_slices(vol, "axial", 3) == [6, 8, 9]
    assert set(pick_slices(vol, "axial", 10)) == {6, 7, 8, 9}
    fig = slice_figure(vol, 0.5, "axial", 4)
    assert len(fig.data) == 4 and [t.visible for t in fig.data].count(True) == 1
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["6", "7", "8", "9"]
    assert steps[2].args[0]["visible"] == [False, False, True, False]
    assert "slice Dice 0.000" in steps[2].args[1]["title.text"]
    assert "slice Dice n/a (TP 0, FP 0, FN 0)" in slice_title(vol, predict(vol, 0.5), "axial", 12)
    with pytest.raises(ValueError, match="no slices to show"):
        slice_figure(vol, 0.5, "axial", slices=[])
    with pytest.raises(ValueError, match=r"axial slices \[40\] are outside"):
        montage(vol, 0.5, "axial", slices=[40])
    assert all(t.source.startswith("data:image/png;base64,") for t in fig.data)
    m = montage(vol, 0.5, "coronal", 2)
    assert len(m.axes) == 2 * 5


def test_offline_renderer_loads_nothing_from_the_internet():
    import plotly.graph_objects as go

    bundle = OfflineNotebookRenderer().to_mimebundle(go.Figure(go.Scatter(y=[1, 2])).to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html and "https://" not in html and "<script src" not in html


def test_open_for_browsing_own_files(tmp_path):
    paths, _ = _las_set(tmp_path)
    sel = open_for_browsing(tmp_path / "run", nifti={"scan": str(paths["scan"]), "map": str(paths["map"]),
                                                     "mask": str(paths["lesion"]), "recon": ""}, threshold=0.5)
    assert sel.chosen is None and sel.start == 0 and sel.figures == tmp_path / "run" / "browse"
    assert sel.entries[0].threshold == 0.5 and sel.entries[0].lesion is not None and sel.entries[0].recon is None


def test_run_catalogue_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no anomaly maps under .*eval/maps: run notebooks/03_evaluate"):
        run_volumes(tmp_path)


def test_browse_config_validation():
    with pytest.raises(ConfigError, match="nifti_scan and nifti_map go together"):
        validate(BrowseConfig, {"nifti_scan": "a.nii.gz"}, "p")
    with pytest.raises(ConfigError, match="'plane'"):
        validate(BrowseConfig, {"plane": "oblique"}, "p")
    assert validate(BrowseConfig, {"threshold": 0.3}, "p").threshold == 0.3


@pytest.mark.slow
def test_browser_agrees_with_the_evaluation_on_a_real_run(ci_run):
    """At each volume's calibrated threshold, the browser's Dice is the one in metrics.json."""
    entries = run_volumes(ci_run)
    metrics = json.loads((ci_run / "eval" / "metrics.json").read_text())
    assert {e.model for e in entries} == {"addm", "ae", "dae"} and {e.split for e in entries} == {"eval_a", "eval_b"}
    checked = 0
    for e in entries:
        assert e.threshold is not None and e.dice is not None, f"{e.label}: metrics.json has no row for it"
        vol = e.load()
        assert overlap(vol, predict(vol, e.threshold)).dice == pytest.approx(e.dice, abs=1e-12), e.label
        checked += 1
    # floors have no maps; nor has the residual-alone row beside each fused one (ci.yaml sets intensity_weight)
    mapped = [label for label, info in metrics["models"].items() if (ci_run / "eval" / "maps" / info["name"]).is_dir()]
    assert len(mapped) == 3 and all(", + intensity w=2" in label for label in mapped), mapped
    assert len(metrics["models"]) == 3 + 3 + 3 + 3 + 1, ("fused and alone rows of addm, ae, dae; the three floors; "
                                                         "the normative rows of addm, ae, dae; the atlas")
    assert checked == sum(len(metrics["results"][label][s]["per_volume"]) for label in mapped
                          for s in ("eval_a", "eval_b"))
    biggest = select_volume(entries, "addm", "eval_a")
    assert biggest.lesion_voxels == max(e.lesion_voxels for e in entries if e.model == "addm" and e.split == "eval_a")
    with pytest.raises(ValueError, match="browse_volume 'nope' is not among addm/eval_a's volumes"):
        select_volume(entries, "addm", "eval_a", "nope")
    with pytest.raises(ValueError, match="browse_model 'ddpm' has no maps; the run has: addm, ae"):
        select_volume(entries, "ddpm", "eval_a")
