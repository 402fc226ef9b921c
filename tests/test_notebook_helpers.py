"""What the notebooks call to show things: slice panels, charts, the training views, dataset tables and settings."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from addmlib.config import PrepareConfig
from addmlib.data.prepare import PreparedVolume, PrepareSettings, settings_from_config
from addmlib.data.report import SPLIT_TITLES, counts_table, sources_table, volumes_table
from addmlib.data.sources import SOURCES
from addmlib.diffusion import GaussianDiffusion
from addmlib.nets import UNet, UNetConfig
from addmlib.noise import make_noise
from addmlib.visualization import charts, slices, trained_model


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def volume(vid: str, lesion_at: int | None = None, n: int = 8, z: int = 5) -> PreparedVolume:
    rng = np.random.default_rng(0)
    lesion = None
    if lesion_at is not None:
        lesion = np.zeros((n, n, z), bool)
        lesion[2:4, 5:7, lesion_at] = True
    return PreparedVolume(vid, "eval_a", rng.uniform(-1, 1, (n, n, z)).astype(np.float32), np.ones((n, n, z), bool),
                          lesion, np.eye(4), np.array([1, 2, 3]), {})


def test_show_slice_draws_in_the_documented_display_orientation():
    img = np.arange(12, dtype=float).reshape(3, 4)
    fig, ax = plt.subplots()
    slices.show_slice(ax, img, title="t")
    shown = ax.get_images()[0].get_array()
    assert np.array_equal(shown, np.flipud(img.T)[:, ::-1]), "anterior up, radiological"
    assert ax.get_title() == "t" and not ax.axison


def test_pick_slice_and_montage_grid():
    assert slices.pick_slice(volume("a"), "middle") == 2
    assert slices.pick_slice(volume("a", lesion_at=4), "lesion") == 4
    with pytest.raises(ValueError, match="no lesion mask"):
        slices.pick_slice(volume("a"), "lesion")
    vols = [volume(f"v{i}", lesion_at=1) for i in range(11)]
    fig = slices.volume_montage(vols, "lesion", columns=9, title="Set A")
    assert len(fig.axes) == 18 and fig.axes[0].get_title() == "v0\nz=1" and fig._suptitle.get_text() == "Set A"
    assert len(fig.axes[0].collections) >= 1, "the lesion is outlined"
    assert len(slices.volume_montage(vols[:3], "middle").axes) == 3


def test_slice_rows_draws_maps_on_their_own_scale():
    x = np.zeros((3, 1, 8, 8))
    fig = slices.slice_rows({"input": x, "|error|": np.ones((2, 8, 8))}, maps=["|error|"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 0].get_title(loc="left") == "input"
    assert axes[1, 0].get_images()[0].get_clim() == (0.0, 1.0) and axes[0, 0].get_images()[0].get_clim() == (-1, 1)
    assert axes[1, 2].get_images() == [], "a shorter row leaves its last panels empty"


def test_moving_average_and_loss_figure():
    assert np.allclose(charts.moving_average([1, 2, 3, 4], 2), [1.5, 2.5, 3.5])
    with pytest.raises(ValueError):
        charts.moving_average([1.0], 0)
    log = [{"step": s, "l_ddpm": 1.0 / s, "l_adv": 0.7, "d_loss": 1.3, "d_acc_real": 0.5, "d_acc_fake": 0.5,
            "lr": 1e-4} for s in range(1, 101)]
    fig = charts.loss_figure(log, 1e-4)
    assert [a.get_title() for a in fig.axes] == ["l_ddpm", "l_adv", "d_loss", "D accuracy, lr"]
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines[1].get_xdata()) == 99, "smoothed over 2"
    ddpm_only = [{k: r[k] for k in ("step", "l_ddpm", "lr")} for r in log]
    assert [a.get_title() for a in charts.loss_figure(ddpm_only, 1e-4).axes] == ["l_ddpm", "D accuracy, lr"]


def test_ablation_and_quality_charts():
    rows = [{"cell": f"lam{lam}_T{T}_seed{s}", "lambda_adv": lam, "num_steps": T, "seed": s, "steps": steps,
             "split": "eval_a", "auprc": 0.1 + lam + s / 100, "train_wall_s": 10.0, "eval_wall_s": steps / 10}
            for lam in (0.0, 0.5) for T in (50, 100) for s in (0, 1) for steps in (5, 10)]
    fig = charts.ablation_figure(pd.DataFrame(rows), "eval_a", "auprc")
    left, middle, right = fig.axes
    assert len(left.containers) == 2, "one line per T"
    assert len(middle.containers) == 4, "one line per (lambda, T)"
    assert len(right.collections) == 2, "one scatter per lambda"
    with_control = pd.DataFrame(rows + [{**r, "lambda_adv": 1e-6, "cell": r["cell"] + "c"} for r in rows
                                        if r["lambda_adv"] == 0.0])
    left, middle, _ = charts.ablation_figure(with_control, "eval_a", "auprc", control_lambda=1e-6).axes
    assert len(left.containers) == 4, "per T, the line over lambda 0 and 0.5, and the control off it"
    assert [list(c.lines[0].get_xdata()) for c in left.containers] == [[0.0, 0.5], [1e-6], [0.0, 0.5], [1e-6]]
    assert sum(c.lines[0].get_linestyle() == ":" for c in middle.containers) == 2, "the control dotted, per T"
    q = pd.DataFrame([{"model": m, "steps": s, "auprc": 0.1, "auprc_volume_mean": 0.1, "auprc_volume_std": 0.01,
                       "wall_s": s, "slices": 40} for m in ("addm", "ddpm") for s in (12, 25)])
    fig = charts.quality_figure(q, "eval_a")
    assert fig.axes[1].get_xlabel() == "scoring wall time, 40 slices (s)" and len(fig.axes[1].lines) == 2
    demo = pd.DataFrame([{"model": m, "scoring": "demo", "steps": 1, "auprc": 0.3, "auprc_volume_mean": 0.3,
                          "auprc_volume_std": 0.02, "wall_s": 5, "slices": 40} for m in ("addm", "ddpm")])
    fig = charts.quality_figure(pd.concat([q.assign(scoring="chain"), demo]), "eval_a")
    labels = [line.get_label() for line in fig.axes[1].lines]
    assert labels == ["addm: chain", "addm: the demo's scoring", "ddpm: chain", "ddpm: the demo's scoring"]
    chain_only = charts.quality_figure(q, "eval_a")
    assert len(fig.axes[0].lines) == len(chain_only.axes[0].lines), "the steps panel holds the chains only"


def test_training_views_on_a_tiny_model():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,)), 16)
    diffusion, gen = GaussianDiffusion(20, "linear"), torch.Generator().manual_seed(0)
    fig = trained_model.samples_figure(unet, diffusion, 16, 50, gen, torch.device("cpu"), n=3)
    assert fig.axes[0].get_title(loc="left") == "samples from noise (DDIM, 20 steps)", "steps capped at T"
    drawn = []

    def model_noise(like, generator=None):  # the noise a model was trained with: x_T and every step draw it
        drawn.append(tuple(like.shape))
        return make_noise("coarse")(like, generator)

    trained_model.samples_figure(unet, diffusion, 16, 4, gen, torch.device("cpu"), n=2, noise_fn=model_noise)
    assert drawn and drawn[0] == (2, 1, 16, 16), "x_T comes from the model's noise, not white noise"
    images = np.random.default_rng(0).uniform(-1, 1, (10, 16, 16)).astype(np.float32)
    fig, err = trained_model.reconstruction_figure(unet, diffusion, make_noise("gaussian"), images, 5, 50, gen,
                                                   torch.device("cpu"), n=4)
    assert len(fig.axes) == 16 and fig.axes[8].get_title(loc="left") == "reconstruction (5 steps)"
    assert 0 < err < 3
    result = {"resumed_from": None, "step": 10, "total_steps": 10, "steps_per_epoch": 2, "device": "cpu",
              "amp": "off", "wall_time_s": 1.5, "peak_memory_mb": 300.0}
    text = trained_model.session_summary(result, [{"steps_per_s": 1.0}, {"steps_per_s": 3.0}], "auto", unet)
    assert text.startswith("new run; now at step 10/10 (2 steps per epoch) on cpu, amp off (setting 'auto')")
    assert "3.00 steps/s (2nd half of the log)" in text
    assert f"U-Net {sum(p.numel() for p in unet.parameters()):,} parameters" in text


MANIFEST = {
    "counts": {s: {"volumes": 1, "slices": 10, "lesion_slices": 2 if s.startswith("eval") else 0}
               for s in ("train", "val_healthy", "eval_a", "eval_b", "tune")},
    "volumes": {"train": [{"id": "colin27", "slices": [1, 2]}], "val_healthy": [], "tune": [],
                "eval_a": [{"id": "mine", "dataset": "brats", "slices": [1], "lesion_voxels": 40,
                            "lesion_inside_brain_fraction": 0.9}],
                "eval_b": [{"id": "colin27_les0", "synthetic": True, "slices": [3], "lesion_voxels": 5}]},
    "sources": {"colin27": {"requirement": "pkg==1.0", "archive_sha256": "ab" * 32, "licence": "MIT"}},
}


def test_dataset_tables():
    counts = counts_table(MANIFEST).splitlines()
    assert counts[0].split() == ["split", "volumes", "slices", "slices", "with", "lesion"]
    assert counts[3].split() == ["eval_a", "1", "10", "2"]
    vols = volumes_table(MANIFEST).splitlines()
    assert vols[1].split() == ["train", "colin27", SOURCES["colin27"].kind, "2", "0"], "a packaged source's kind"
    assert vols[2].split() == ["eval_a", "mine", "brats", "1", "40", "0.9"]
    assert vols[3].split()[2] == "synthetic"
    assert sources_table(MANIFEST).splitlines()[1].split() == ["colin27", "pkg==1.0", "abababababab…", "MIT"]
    assert set(SPLIT_TITLES) == {"eval_a", "eval_b", "tune", "ixi_tune", "ixi_test", "slices_test"}


def test_prepare_settings_from_the_notebook_config():
    cfg = PrepareConfig(image_size=32, lesions_per_host=2, allow_empty_masks=True)
    settings = settings_from_config(cfg)
    assert isinstance(settings, PrepareSettings) and settings.image_size == 32 and settings.allow_empty_masks
    assert settings.tune_hosts == cfg.tune_hosts and settings.seed == cfg.seed
    by_hand = PrepareSettings(cfg.image_size, cfg.healthy_sources, cfg.holdout_hosts, cfg.tumour_sources,
                              cfg.paste_donors, cfg.lesions_per_host, cfg.min_brain_fraction, cfg.strip_margin_mm,
                              cfg.seed, tune_hosts=cfg.tune_hosts, allow_empty_masks=True)
    assert settings.fingerprint() == by_hand.fingerprint(), "the notebook's data is unchanged"
