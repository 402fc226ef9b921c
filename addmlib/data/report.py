"""Plain-text tables of what a prepared dataset holds, from its ``manifest.json`` (as ``prepare.build`` returns it),
and the titles the notebooks give its evaluation splits."""

from __future__ import annotations

from typing import Any, Mapping

from .prepare import SPLITS
from .sources import SOURCES

SPLIT_TITLES = {"eval_a": "Set A: real tumours (4 scans, ~3 patients)",
                "eval_b": "Set B: lesions inserted into held-out healthy brains (synthetic)",
                "tune": "Tuning split: lesions inserted into a healthy brain neither trained on nor evaluated",
                "ixi_tune": "IXI tuning slices: 30 healthy individuals, lesions of four kinds inserted (settings are "
                            "chosen here)",
                "ixi_test": "IXI test slices: 40 other healthy individuals, lesions of four kinds inserted",
                "slices_test": "2-D slices from a folder, with their lesion masks"}
"""Figure and table titles of the evaluation and tuning splits of the embedded dataset."""


def counts_table(manifest: Mapping[str, Any]) -> str:
    """Volumes, slices and slices with lesion per split."""
    lines = [f"{'split':12s} {'volumes':>8s} {'slices':>8s} {'slices with lesion':>19s}"]
    for split in SPLITS:
        c = manifest["counts"].get(split, {"volumes": 0, "slices": 0, "lesion_slices": 0})
        lines.append(f"{split:12s} {c['volumes']:8d} {c['slices']:8d} {c['lesion_slices']:19d}")
    return "\n".join(lines)


def volumes_table(manifest: Mapping[str, Any]) -> str:
    """One line per volume (one per split for the IXI slices): split, id, kind (individual, average, synthetic, or its
    dataset), selected slices, lesion voxels and the fraction of the lesion inside the brain."""
    lines = [f"{'split':12s} {'volume':36s} {'kind':10s} {'slices':>6s} {'lesion vox':>10s} {'in brain':>8s}"]
    for split in SPLITS:
        population = [v for v in manifest["volumes"].get(split, []) if v.get("dataset") == "ixi_midaxial"]
        if population:
            kinds = sorted({v["lesion_kind"] for v in population if "lesion_kind" in v})
            lines.append(f"{split:12s} {f'{len(population)} IXI mid-axial slices':36s} {'ixi':10s} "
                         f"{'1 each':>6s} {sum(v.get('lesion_voxels', 0) for v in population):10d} "
                         + (f"  kinds: {', '.join(kinds)}" if kinds else ""))
        for v in manifest["volumes"].get(split, []):
            if v.get("dataset") == "ixi_midaxial":
                continue
            packaged = v["id"] in SOURCES
            kind = "synthetic" if v.get("synthetic") else (SOURCES[v["id"]].kind if packaged else v["dataset"])
            frac = v.get("lesion_inside_brain_fraction", "")
            lines.append(f"{split:12s} {v['id']:36s} {kind:10s} {len(v['slices']):6d} {v.get('lesion_voxels', 0):10d} "
                         f"{frac!s:>8s}")
    return "\n".join(lines)


def sources_table(manifest: Mapping[str, Any]) -> str:
    """The packaged sources used: package release, archive sha256 (first 12 digits) and licence."""
    lines = ["Packaged sources used (package release, archive sha256, licence):"]
    for name, s in manifest["sources"].items():
        lines.append(f"  {name:20s} {s['requirement']:22s} {s['archive_sha256'][:12]}…  {s['licence']}")
    return "\n".join(lines)
