"""Typed parameter sets: validation of YAML files and of notebook parameters into dataclasses.

Every notebook declares its parameters twice, on purpose: in its papermill ``parameters`` cell (what papermill and the
pipeline runner see) and as a dataclass here (types, defaults, allowed values). A test keeps the two identical.
Validation happens once, at the top of a notebook (``notebook_config``) or before a pipeline starts (``validate``):
an unknown or ill-typed parameter is an error that names it and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from .post_processing import FUSION_QUANTILE, check_fusion_quantile

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter set is wrong; the message names the source and the parameter."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` or raise TypeError. int -> float is allowed; bool is never an int; lists -> tuples."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(tp)
        if origin is tuple and len(args) > 1 and Ellipsis not in args:  # a fixed length: tuple[float, float]
            if len(value) != len(args):
                raise TypeError
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError(f"unsupported parameter type {tp!r}")


def validate(cls: type[T], params: Mapping[str, Any], source: str) -> T:
    """Build dataclass ``cls`` from ``params``; unknown, ill-typed or missing parameters raise ConfigError.

    Dataclasses may define ``check(self) -> None`` for constraints between fields; its ValueError is re-raised as
    ConfigError naming ``source``.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: expected a mapping of parameter names to values, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          f"known parameters are: {', '.join(sorted(fields))}")
    values: dict[str, Any] = {}
    for name, value in params.items():
        try:
            values[name] = _coerce(value, hints[name])
        except TypeError:
            raise ConfigError(f"{source}: parameter {name!r} must be {_type_name(hints[name])}, "
                              f"got {value!r} ({type(value).__name__})") from None
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing required parameter(s) {', '.join(map(repr, missing))}")
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A flat YAML mapping of parameters; a clear error for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{path}: expected a mapping of parameter names to values at the top level")
    return data


def load_yaml_files(files: typing.Sequence[str | Path]) -> tuple[dict[str, Any], str]:
    """Merge flat YAML parameter files (later override earlier, like ``papermill -f a -f b``) -> (params, source),
    ``source`` naming the files for error messages ("a.yaml + b.yaml")."""
    params: dict[str, Any] = {}
    for f in files:
        params.update(load_yaml(f))
    return params, " + ".join(map(str, files)) or "parameters"


def pipeline_parameter_names(notebooks: typing.Iterable[str] = ()) -> set[str]:
    """Every parameter name declared by the pipeline's notebooks (``PIPELINE_NOTEBOOKS``) and by ``notebooks``."""
    names = dict.fromkeys((*PIPELINE_NOTEBOOKS, *notebooks))
    return {f.name for n in names if n in NOTEBOOK_CONFIGS for f in dataclasses.fields(NOTEBOOK_CONFIGS[n])}


def check_pipeline_parameters(params: Mapping[str, Any], source: str, known: typing.Iterable[str] = ()) -> None:
    """Refuse a name that no pipeline notebook declares (nor ``known``) and a value of the wrong type for the
    notebooks that declare it; one-line ConfigError naming ``source`` and the parameter."""
    names = pipeline_parameter_names() | set(known)
    unknown = sorted(set(params) - names)
    if unknown:
        hints = [f"{m[0]!r} for {u!r}" for u in unknown if (m := difflib.get_close_matches(u, names, n=1))]
        raise ConfigError(f"{source}: parameter(s) {', '.join(map(repr, unknown))} are declared by none of the "
                          f"pipeline's notebooks; check the spelling" + (f" (did you mean {', '.join(hints)}?)"
                                                                         if hints else ""))
    for name in PIPELINE_NOTEBOOKS:
        hints = typing.get_type_hints(NOTEBOOK_CONFIGS[name])
        for key in set(params) & set(hints):
            try:
                _coerce(params[key], hints[key])
            except TypeError:
                raise ConfigError(f"{source}: parameter {key!r} must be {_type_name(hints[key])}, "
                                  f"got {params[key]!r} ({type(params[key]).__name__})") from None


def load_checked(cls: type[T], files: typing.Sequence[str | Path], overrides: Mapping[str, Any] | None = None,
                 pipeline: bool = False) -> T:
    """The one validation of every command-line entry point: YAML file(s) -> ``cls``, every key checked.

    ``pipeline=False``: the files hold ``cls``'s parameters only (any other key is an error). ``pipeline=True``: the
    files are pipeline parameter files, which may hold parameters of the other pipeline notebooks (those are
    type-checked, not used); a key no pipeline notebook declares is an error. ``overrides`` win over the files.
    """
    params, source = load_yaml_files(files)
    params = {**params, **(overrides or {})}
    if not pipeline:
        return validate(cls, params, source)
    check_pipeline_parameters(params, source)
    own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return validate(cls, {k: v for k, v in params.items() if k in own}, source)


# ---------------------------------------------------------------------------------------------------------------
# Notebook parameter sets. Shared names have the same meaning (and type) in every notebook that declares them.
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Parameters every notebook has: where the run lives, the seed, torch threads."""

    run_dir: str = "../outputs/interactive"
    seed: int = 0
    threads: int = 2

    def check(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclasses.dataclass(frozen=True)
class DepthConfig(RunConfig):
    """The noising depth t* of detection, declared once for the model, the evaluation and the benchmark."""

    t_star: int = 250

    def check(self) -> None:
        super().check()
        if self.t_star < 1:
            raise ValueError(f"t_star must be >= 1, got {self.t_star}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(DepthConfig):
    """The diffusion model's definition: schedule, noise, networks, loss weight (shared by method and training).

    ``noise_region``: where the forward process noises, "image" (everywhere, the paper's) or "head" (inside the head
    only, eps * 1[x0 > -0.99], as the coarse-noise DAE does; ``noise.HeadOnlyNoise``). ``prediction``: what the U-Net
    outputs, "epsilon" (the paper's, Ho et al.; L_DDPM = ||eps - eps_theta||^2) or "x0" (MONAI's "sample"; L_DDPM =
    ||x0 - x0_hat||^2, the DAE's loss, which is the epsilon loss weighted by (1 - alpha_bar_t) / alpha_bar_t: deeper t
    count more). ``unet_scale_shift_norm``: the time (and condition) embedding scales and shifts each block's
    normalised features (improved-diffusion's) instead of being added before the norm (the DDPM's, ``nets.ResBlock``).
    ``unet_condition_channels`` > 0: the U-Net is conditioned on the clean input through an encoder of
    that width (cDDPM's input conditioning, ``nets`` module docstring); 0: unconditioned, the paper's."""

    device: str = "auto"
    image_size: int = 64
    num_steps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    noise: Literal["gaussian", "simplex", "coarse"] = "gaussian"
    simplex_octaves: int = 6
    simplex_persistence: float = 0.8
    simplex_frequency: float = 64.0
    coarse_spacing: int = 8
    noise_region: Literal["image", "head"] = "image"
    prediction: Literal["epsilon", "x0"] = "epsilon"
    lambda_adv: float = 0.05
    discriminator: Literal["paper", "conditional"] = "paper"
    unet_base_channels: int = 32
    unet_channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    unet_num_res_blocks: int = 1
    unet_attention_resolutions: tuple[int, ...] = (8,)
    unet_dropout: float = 0.0
    disc_base_channels: int = 32
    disc_channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    patch_size: int = 0
    unet_scale_shift_norm: bool = False
    unet_condition_channels: int = 0

    def check(self) -> None:
        super().check()
        if self.unet_condition_channels < 0:
            raise ValueError(f"unet_condition_channels must be 0 (unconditioned) or the width of the input encoder "
                             f"(cDDPM), got {self.unet_condition_channels}")
        if self.unet_condition_channels and not self.unet_scale_shift_norm:
            raise ValueError("unet_condition_channels > 0 needs unet_scale_shift_norm: true; added before the blocks' "
                             "GroupNorm the condition is removed by it wherever a group holds one channel")
        if not 0 <= self.patch_size < self.image_size:
            raise ValueError(f"patch_size must be 0 (noise the whole image) or in [1, image_size={self.image_size}), "
                             f"got {self.patch_size}")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        if self.image_size % (2 ** (len(self.unet_channel_mult) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(len(unet_channel_mult) - 1)")
        if self.num_steps < 2:
            raise ValueError(f"num_steps (T) must be >= 2, got {self.num_steps}")
        if self.t_star > self.num_steps:
            raise ValueError(f"t_star must be in [1, num_steps={self.num_steps}], got {self.t_star}")
        if self.lambda_adv < 0:
            raise ValueError(f"lambda_adv must be >= 0, got {self.lambda_adv}")
        if self.unet_base_channels < 1 or not 0 <= self.unet_dropout < 1:
            raise ValueError("unet_base_channels must be >= 1 and unet_dropout in [0, 1)")


@dataclasses.dataclass(frozen=True)
class MethodConfig(ModelConfig):
    """notebooks/00_method.ipynb: the diffusion maths, the noise, the networks and the loss, checked and shown."""


_PACKAGED_HEALTHY_TRAIN = ("mrhead", "robex_subject", "icbm2009a", "mni152_nlin6", "icbm_sym55", "oasis30",
                           "pydeface_mean", "mni152_2mm")


@dataclasses.dataclass(frozen=True)
class PrepareConfig(RunConfig):
    """notebooks/01_prepare_data.ipynb: the embedded dataset (and optional datasets on disk), prepared once.

    ``min_mask_overlap``: the least fraction of a lesion or brain mask's nonzero voxels that must lie inside its scan's
    field of view (a mask elsewhere in the world is refused). ``allow_empty_masks``: a tumour scan whose lesion, or a
    scan whose brain mask, is empty after preprocessing is an error; with this switch it is a warning recorded in the
    manifest instead (the scan is kept without lesion, or left out without brain). ``tune_draws``: how many times
    each tuning host gets its lesions (``lesions_per_host`` synthetic ones, of the same sizes and polarities as set B's,
    and one pasted tumour per donor), each time at new places, so that the tuning split holds enough lesions to rank
    settings; the other splits do not change with it. ``eval_b_draws``: the same for set B's hosts (a larger set B, for
    the report: its first draw, and every other split, stay as they were).

    ``ixi``: the embedded IXI mid-axial population (``data/ixi.py``): "" none; "benchmark" its calibration, tuning
    and test slices (``ixi_calib``, ``ixi_tune``, ``ixi_test``; each healthy slice ``ixi_draws`` times, a lesion of
    one of four kinds each time); "train" those and its training individuals in ``train`` (the first
    ``ixi_train_max`` of them; 0: all). ``lesion_mix``: the lesions of set B and the tuning hosts, "legacy"
    (hypo/hyper ellipsoids and pasted tumours) or "kinds" (``data/lesion_kinds.py``: hypo, ring, hyper, iso in equal
    numbers, as on the IXI slices; ``lesions_per_host`` of them per host, a multiple of 4 gives each kind alike).
    ``lesion_sites``: where the kinds (IXI slices, and set B with "kinds") may lie: "brain" (anywhere in the brain
    mask) or "tissue" (the parenchyma only; a lesion never paints over a ventricle). ``lesion_texture``: their fine
    texture in units of the surrounding tissue's std (0.25; 0: smooth lesions). ``lesion_diameter_mm``: [low, high],
    the range the kinds' diameters are drawn from, uniformly (4-25 mm).
    ``slices_root``: a folder of 2-D slices with lesion masks (``<stem>.png`` / ``<stem>.nii.gz`` and
    ``<stem>_mask.<ext>``), the split ``slices_test``, prepared like the IXI slices (``slices_skull``: skull on; a PNG's
    pixel size ``slices_spacing_mm``) and calibrated on ``ixi_calib`` (so it needs ``ixi``).
    """

    image_size: int = 64
    healthy_sources: tuple[str, ...] = _PACKAGED_HEALTHY_TRAIN
    holdout_hosts: tuple[str, ...] = ("colin27", "sri24")
    tune_hosts: tuple[str, ...] = ()
    tumour_sources: tuple[str, ...] = ("qtim_tumor2", "qtim_shape", "pyradiomics_brain1", "pyradiomics_brain2")
    paste_donors: tuple[str, ...] = ("qtim_tumor2", "pyradiomics_brain1", "pyradiomics_brain2")
    lesions_per_host: int = 6
    min_brain_fraction: float = 0.25
    strip_margin_mm: float = 2.0
    disk_healthy_format: Literal["", "nfbs", "ixi", "folder"] = ""
    disk_healthy_root: str = ""
    disk_tumour_format: Literal["", "edinburgh", "brats", "folder"] = ""
    disk_tumour_root: str = ""
    max_disk_subjects: int = 0
    disk_folder_skull: bool = False
    histogram_standardisation: bool = True
    data_cache_dir: str = ""
    min_mask_overlap: float = 0.5
    allow_empty_masks: bool = False
    tune_draws: int = 1
    eval_b_draws: int = 1
    ixi: Literal["", "benchmark", "train"] = ""
    ixi_draws: int = 4
    ixi_train_max: int = 0
    lesion_mix: Literal["legacy", "kinds"] = "legacy"
    lesion_sites: Literal["brain", "tissue"] = "brain"
    lesion_texture: float = 0.25
    lesion_diameter_mm: tuple[float, float] = (4.0, 25.0)
    slices_root: str = ""
    slices_skull: bool = True
    slices_spacing_mm: float = 1.0

    def check(self) -> None:
        super().check()
        if self.slices_root and not self.ixi:
            raise ValueError("slices_root needs ixi ('benchmark' or 'train'): its slices are calibrated on the IXI "
                             "calibration individuals")
        if self.slices_spacing_mm <= 0:
            raise ValueError(f"slices_spacing_mm must be > 0, got {self.slices_spacing_mm}")
        if self.ixi_train_max < 0:
            raise ValueError(f"ixi_train_max must be >= 0 (0: every IXI training slice), got {self.ixi_train_max}")
        if not 0 <= self.lesion_texture <= 2:
            raise ValueError(f"lesion_texture must be in [0, 2] (the lesions' fine texture in tissue stds), got "
                             f"{self.lesion_texture}")
        low, high = self.lesion_diameter_mm
        if not 0 < low <= high:
            raise ValueError(f"lesion_diameter_mm must be [low, high] with 0 < low <= high (mm), got "
                             f"{list(self.lesion_diameter_mm)}")
        for name in ("tune_draws", "eval_b_draws", "ixi_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        if not 0 < self.min_brain_fraction <= 1:
            raise ValueError(f"min_brain_fraction must be in (0, 1], got {self.min_brain_fraction}")
        if not 0 < self.min_mask_overlap <= 1:
            raise ValueError(f"min_mask_overlap must be in (0, 1], got {self.min_mask_overlap}")
        if self.lesions_per_host < 0 or self.max_disk_subjects < 0 or self.strip_margin_mm < 0:
            raise ValueError("lesions_per_host, max_disk_subjects and strip_margin_mm must be >= 0")
        for fmt, root, what in ((self.disk_healthy_format, self.disk_healthy_root, "disk_healthy"),
                                (self.disk_tumour_format, self.disk_tumour_root, "disk_tumour")):
            if bool(fmt) != bool(root):
                raise ValueError(f"{what}_format and {what}_root must be given together (got {fmt!r}, {root!r})")


@dataclasses.dataclass(frozen=True)
class TrainConfig(ModelConfig):
    """notebooks/02_train.ipynb and ``python -m addmlib.training``: ADDM (lambda_adv > 0) or DDPM (lambda_adv = 0).

    Defaults are the paper's where it states them (Adam, lr 1e-4 x 0.999 every 200 epochs, batch 4, lambda 0.05,
    3000 epochs); the choices it leaves open are documented in ``addmlib.training``. ``min_snr_gamma`` > 0 weights
    each sample's L_DDPM by min(SNR_t, gamma) / SNR_t (Min-SNR, Hang et al. 2023; ``losses.min_snr_weight``); 0, the
    default, leaves L_DDPM unweighted as the paper does.
    """

    model_name: str = "addm"
    variance: Literal["beta", "beta_tilde"] = "beta_tilde"
    batch_size: int = 4
    epochs: int = 3000
    max_steps: int = 0
    lr: float = 1e-4
    lr_decay: float = 0.999
    lr_decay_every_epochs: int = 200
    d_lr: float = 1e-4
    d_beta1: float = 0.5
    d_steps: int = 1
    adv_t_max: int = 0
    adv_target: Literal["x_prev", "x0"] = "x_prev"
    train_t_max: int = 0
    train_t_min: int = 1
    min_snr_gamma: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    augment: bool = True
    augment_strength: float = 1.0
    augment_elastic: float = 0.0
    augment_noise: float = 0.0
    checkpoint_every: int = 200
    log_every: int = 10
    fresh: bool = False
    sample_steps: int = 50
    preview_steps: int = 50

    def check(self) -> None:
        super().check()
        for name in ("batch_size", "epochs", "disc_base_channels", "lr_decay_every_epochs", "d_steps",
                     "checkpoint_every", "log_every", "sample_steps", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("augment_strength", "augment_elastic", "augment_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.d_lr <= 0 or self.max_steps < 0 or self.adv_t_max < 0:
            raise ValueError("lr and d_lr must be > 0, max_steps and adv_t_max >= 0")
        if not 0 <= self.train_t_max <= self.num_steps:
            raise ValueError(f"train_t_max must be in [0, num_steps={self.num_steps}] (0 = every t), "
                             f"got {self.train_t_max}")
        if not 1 <= self.train_t_min <= (self.train_t_max or self.num_steps):
            raise ValueError(f"train_t_min must be in [1, train_t_max] (train_t_max 0: num_steps = {self.num_steps}), "
                             f"got {self.train_t_min}")
        if not 0 <= self.min_snr_gamma < float("inf"):
            raise ValueError(f"min_snr_gamma must be a finite number >= 0 (0: no weighting), got {self.min_snr_gamma}")
        if not 0 < self.lr_decay <= 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("lr_decay must be in (0, 1], ema_decay in [0, 1)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise ValueError(f"model_name {self.model_name!r} may only hold letters, digits, '_', '.', '-'")


@dataclasses.dataclass(frozen=True)
class EvalConfig(DepthConfig):
    """notebooks/03_evaluate.ipynb: anomaly maps, thresholds calibrated on healthy data, Table-1-style metrics.

    ``models_from``: a lever campaign's run folder (relative to the repository); ``models`` then names its trained
    models (``<folder>/levers/models/<name>``, e.g. ``coarse8-s1``), which must have been trained on this run's
    training data. Empty: the run's own ``models/``.

    ``fusion`` (with ``intensity_weight`` > 0): "sum" ranks voxels by z(r) + w z(x); "max" by the larger of that and
    the residual alone, each read against its healthy-brain median and ``fusion_quantile``
    (``post_processing.max_fusion``).

    ``deep_t_star_ensemble`` (non-empty): each model's map (``t_star``, ``eval_noise``...) is mixed with its deep map,
    the one-step estimate from the input noised with the model's noise at these depths (``deep_draws`` draws each),
    each map read in units of its 99th percentile on the IXI calibration individuals (``evaluate.with_deep_map``;
    the data must hold them: ``ixi``).

    ``median_size``: the map's median filter, over that many voxels along each axis of the stack of scored slices (every
    ``slice_stride``-th slice of a volume: at stride 3 a 5-voxel window spans 15 slices); with ``median_in_plane`` over
    median_size x median_size voxels of each slice alone. A 2-D slice is filtered in its plane either way.
    ``gaussian_sigma`` > 0: then a Gaussian filter of that many pixels in each slice's plane (0: none).

    ``normative_weight`` > 0: each model gets one more row on the IXI sets, its map fused with the normative atlas of
    the IXI training slices, m = s_r (r / s_r + w z / s_z) / (1 + w) with z = |x - mu| / max(sigma, 0.1) per pixel
    (``normative.NormativeAtlas``, ``evaluate.with_normative``); the baseline ``atlas`` is z alone. Both read the IXI
    slices only: with no IXI set in ``eval_sets`` there is nothing for them to score, and the run says so.
    ``normative_registration``: rounds of groupwise registration of the training slices (0: crop-and-resize alignment
    alone), each image then read through the template warped onto it; ``normative_neighbours``: mu and sigma over the
    k training slices nearest each image (0: all of them)."""

    device: str = "auto"
    models: tuple[str, ...] = ("addm", "ddpm")
    baselines: tuple[str, ...] = ("floor_intensity", "floor_median", "ae", "dae")
    ae_steps: int = 1500
    dae_steps: int = 1500
    dae_noise_std: float = 0.2
    dae_noise_res: int = 16
    t_star_ensemble: tuple[int, ...] = ()
    sample_steps: int = 50
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    eval_noise: Literal["model", "gaussian", "simplex", "coarse", "none"] = "model"
    draws: int = 1
    eval_batch_size: int = 16
    slice_stride: int = 1
    eval_sets: tuple[str, ...] = ("eval_a", "eval_b")
    fpr: float = 0.05
    brain_erode_mm: float = 3.0
    median_size: int = 3
    median_in_plane: bool = False
    gaussian_sigma: float = 0.0
    min_component_voxels: int = 5
    anoddpm_protocol: bool = True
    write_nifti: bool = True
    eval_name: str = "eval"
    channels_last: Literal["auto", "on", "off"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    patch_stride: int = 0
    residual: Literal["abs", "positive"] = "abs"
    intensity_weight: float = 0.0
    fusion: Literal["sum", "max"] = "sum"
    fusion_quantile: float = FUSION_QUANTILE
    models_from: str = ""
    deep_t_star_ensemble: tuple[int, ...] = ()
    deep_draws: int = 1
    normative_weight: float = 0.0
    normative_registration: int = 0
    normative_neighbours: int = 0

    def check(self) -> None:
        super().check()
        if not 0 <= self.gaussian_sigma < float("inf"):
            raise ValueError(f"gaussian_sigma must be a finite number >= 0 (pixels; 0: no Gaussian filter), got "
                             f"{self.gaussian_sigma}")
        if not 0 <= self.normative_weight < float("inf"):
            raise ValueError(f"normative_weight must be a finite number >= 0 (0: no normative row), got "
                             f"{self.normative_weight}")
        if self.normative_registration < 0:
            raise ValueError(f"normative_registration must be >= 0 (rounds; 0: none), got "
                             f"{self.normative_registration}")
        if self.normative_neighbours < 0 or self.normative_neighbours == 1:
            raise ValueError(f"normative_neighbours must be 0 (all training slices) or >= 2, got "
                             f"{self.normative_neighbours}")
        if any(t < 1 for t in self.deep_t_star_ensemble):
            raise ValueError(f"deep_t_star_ensemble depths must be >= 1, got {list(self.deep_t_star_ensemble)}")
        if self.deep_draws < 1:
            raise ValueError(f"deep_draws must be >= 1, got {self.deep_draws}")
        if not 0 <= self.intensity_weight < float("inf"):
            raise ValueError(f"intensity_weight must be a finite number >= 0 (0: the residual alone), got "
                             f"{self.intensity_weight}")
        if self.fusion == "max" and not self.intensity_weight:
            raise ValueError("fusion 'max' takes the larger of the fused map and the residual alone: it needs "
                             "intensity_weight > 0")
        check_fusion_quantile(self.fusion_quantile)
        if self.patch_stride < 0:
            raise ValueError(f"patch_stride must be >= 0 (0 = half the model's patch), got {self.patch_stride}")
        if self.eval_noise == "none" and self.draws != 1:
            raise ValueError(f"eval_noise 'none' scores the unnoised input, which is the same every draw: draws must be "
                             f"1, got {self.draws}")
        for name in ("ae_steps", "dae_steps", "dae_noise_res", "sample_steps", "draws", "eval_batch_size",
                     "slice_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr}")
        sets = ("eval_a", "eval_b", "tune", "ixi_tune", "ixi_test", "slices_test")
        bad = [s for s in self.eval_sets if s not in sets]
        if bad or not self.eval_sets:
            raise ValueError(f"eval_sets must be a non-empty list of {', '.join(repr(s) for s in sets)}; "
                             f"got {list(self.eval_sets)}")
        if not self.models and not self.baselines:
            raise ValueError("nothing to evaluate: models and baselines are both empty")
        known = ("floor_intensity", "floor_dark", "floor_median", "ae", "dae", "atlas")
        bad = [b for b in self.baselines if b not in known]
        if bad:
            raise ValueError(f"baselines {bad} unknown; choose from {list(known)}")
        if any(t < 1 for t in self.t_star_ensemble):
            raise ValueError(f"t_star_ensemble depths must be >= 1, got {list(self.t_star_ensemble)}")
        if self.dae_noise_std <= 0:
            raise ValueError(f"dae_noise_std must be > 0, got {self.dae_noise_std}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.eval_name):
            raise ValueError(f"eval_name {self.eval_name!r} may only hold letters, digits, '_', '.', '-'")


@dataclasses.dataclass(frozen=True)
class AblationConfig(RunConfig):
    """notebooks/04_ablation.ipynb: a grid over lambda x T x seeds, each cell trained and evaluated by notebooks.

    ``seed`` and ``threads`` here are the data preparation's; ``threads_per_cell`` is each cell's (keep
    ``workers x threads_per_cell <= cores``). ``base_params`` (paths relative to the repository) are the pipeline
    parameter files every cell starts from, ``cell_params`` overrides them for every cell; the grid then sets
    ``lambda_adv``, ``num_steps``, the training ``seed`` and ``t_star`` (``t_star_at_1000`` scaled to the cell's T).
    ``eval_steps``: sampling steps each cell is evaluated with (0 = every step from t*). ``control_lambda`` (0: none):
    an extra lambda > 0 too small for the adversarial term to pull (e.g. 1e-6), run like the grid's. Its cells train the
    same discriminator, and so draw the same random numbers (t, noise, augmentation), as every lambda > 0 cell, while
    lambda = 0 cells draw others: claim 1 compares each lambda with it too, to tell the term's effect from the random
    stream's.
    """

    run_dir: str = "../outputs/interactive-ablation"
    base_params: tuple[str, ...] = ("params/demo.yaml",)
    cell_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    lambda_grid: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.5)
    num_steps_grid: tuple[int, ...] = (300, 500, 1000)
    seed_grid: tuple[int, ...] = (0, 1)
    t_star_at_1000: int = 250
    eval_steps: tuple[int, ...] = (0,)
    engine: Literal["local", "dask"] = "local"
    dask_address: str = ""
    workers: int = 2
    threads_per_cell: int = 1
    cell_timeout: int = 7200
    split: Literal["eval_a", "eval_b"] = "eval_a"
    metric: Literal["auprc", "auroc", "dice", "best_dice"] = "auprc"
    control_lambda: float = 0.0

    def check(self) -> None:
        super().check()
        if self.control_lambda < 0 or (self.control_lambda and self.control_lambda in self.lambda_grid):
            raise ValueError(f"control_lambda must be >= 0 and not in lambda_grid, got {self.control_lambda}")
        if not self.base_params:
            raise ValueError("base_params must name at least one parameter file (e.g. params/demo.yaml)")
        if not self.lambda_grid or not self.num_steps_grid or not self.seed_grid or not self.eval_steps:
            raise ValueError("lambda_grid, num_steps_grid, seed_grid and eval_steps must not be empty")
        for name in ("lambda_grid", "num_steps_grid", "seed_grid", "eval_steps"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated values: {list(values)}")
        if any(s < 0 for s in self.eval_steps):
            raise ValueError(f"eval_steps must be >= 0 (0 = every step from t*), got {list(self.eval_steps)}")
        if not 1 <= self.t_star_at_1000 <= 1000:
            raise ValueError(f"t_star_at_1000 must be in [1, 1000], got {self.t_star_at_1000}")
        if self.workers < 1 or self.threads_per_cell < 1 or self.cell_timeout < 1:
            raise ValueError("workers, threads_per_cell and cell_timeout must be >= 1")
        grid_keys = {"lambda_adv", "num_steps", "seed", "t_star", "model_name", "models", "run_dir", "eval_name",
                     "sample_steps", "baselines", "write_nifti", "threads", "fresh"}
        clash = sorted(grid_keys & set(self.cell_params))
        if clash:
            raise ValueError(f"cell_params may not set {clash}: the sweep sets them per cell")


@dataclasses.dataclass(frozen=True)
class BenchConfig(DepthConfig):
    """notebooks/06_benchmark.ipynb: speed and memory against a peer (diffusers), this machine's peak, volume scoring
    cost, the fast path's switches, and the quality-cost curve of the trained models of ``quality_run_dir``.

    The benchmarked U-Net is given by ``image_size`` and the ``unet_*`` sizes (the demo's by default); each case runs in
    its own process with ``threads`` torch threads. ``volume_steps``: strided steps from ``t_star`` (0 = every step);
    volume sizes above ``image_size`` are timed at the fewest of them only (time is linear in steps). The naive
    slice-by-slice loop is timed on ``naive_slices`` slices (per-slice cost). ``demo_scoring`` (t_star,
    t_star_ensemble, sample_steps, draws, residual, eval_noise, deep_t_star_ensemble, deep_draws: the demo's scoring,
    params/demo.yaml) adds one volume per size scored that way, and a point per model to the quality-cost curve.
    ``measure_compile`` adds ``torch.compile``d cases, read against eager over ``compile_over_steps`` training steps
    (the demo's) with the compile time counted.
    """

    run_dir: str = "../outputs/bench"
    device: str = "auto"
    image_size: int = 64
    unet_base_channels: int = 32
    unet_channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    unet_num_res_blocks: int = 1
    batch_size: int = 8
    train_steps: int = 10
    train_rounds: int = 3
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    denoise_batches: tuple[int, ...] = (1, 4, 16)
    volume_sizes: tuple[int, ...] = (64, 128)
    volume_slices: int = 150
    naive_slices: int = 30
    volume_steps: tuple[int, ...] = (50, 25)
    quality_run_dir: str = "../outputs/demo"
    quality_models: tuple[str, ...] = ("addm", "ddpm")
    quality_steps: tuple[int, ...] = (12, 25, 50)
    quality_slice_stride: int = 9
    quality_set: Literal["eval_a", "eval_b"] = "eval_a"
    demo_scoring: dict[str, Any] = dataclasses.field(default_factory=dict)
    measure_compile: bool = True
    compile_over_steps: int = 800

    def check(self) -> None:
        super().check()
        known = ("t_star", "t_star_ensemble", "sample_steps", "draws", "residual", "eval_noise",
                 "deep_t_star_ensemble", "deep_draws")
        bad = sorted(set(self.demo_scoring) - set(known))
        if bad:
            raise ValueError(f"demo_scoring: {bad} unknown; it may hold {', '.join(known)}")
        if self.demo_scoring:
            validate(EvalConfig, dict(self.demo_scoring), "demo_scoring")
        if self.compile_over_steps < 1:
            raise ValueError(f"compile_over_steps must be >= 1, got {self.compile_over_steps}")
        bad = [d for d in self.dtypes if d not in ("fp32", "bf16", "fp16")]
        if bad or "fp32" not in self.dtypes:
            raise ValueError(f"dtypes must include 'fp32' and hold only 'fp32', 'bf16', 'fp16'; got {list(self.dtypes)}")
        for name in ("batch_size", "train_steps", "train_rounds", "volume_slices", "naive_slices", "quality_slice_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(s < 0 or s > self.t_star for s in self.volume_steps) or not self.volume_steps:
            raise ValueError(f"volume_steps must be in [0, t_star={self.t_star}] (0 = every step), "
                             f"got {list(self.volume_steps)}")
        if any(s < 1 for s in self.quality_steps) or any(b < 1 for b in self.denoise_batches):
            raise ValueError("quality_steps and denoise_batches must be >= 1")
        for size in (self.image_size, *self.volume_sizes):
            if size % 2 ** (len(self.unet_channel_mult) - 1):
                raise ValueError(f"size {size} must be divisible by 2^(len(unet_channel_mult) - 1)")


@dataclasses.dataclass(frozen=True)
class LeverConfig(RunConfig):
    """The lever campaign (``addmlib.levers``, notebooks/07_levers.ipynb): training variants x seeds x scorings,
    measured on the tuning split only. ``variants``: name -> training parameters over the base set; ``scorings``:
    name -> scoring settings (t_star, t_star_ensemble, sample_steps, draws, median_size, sampler, patch_stride,
    residual, intensity_weight, eval_noise, fusion, fusion_quantile, deep_t_star_ensemble, deep_draws: see
    ``EvalConfig``); ``baseline_residuals`` x ``baseline_intensity_weights`` x ``baseline_fusions`` (at
    ``baseline_fusion_quantile``): the maps the AE and DAE are scored with; ``baseline_median_sizes``: median
    filters every baseline (floors included) is scored with besides the base's ``median_size``, so that a scoring's
    filter can be read against floors filtered alike;
    ``variant_scorings``: variant -> the scorings it gets (default: all; e.g. only cheap ones for patch models);
    ``variant_seeds``: variant or baseline -> the seeds it is trained with (default: all of ``seeds``);
    ``adv_profile_t``: the depths at which each ADDM variant's adversarial gradient is profiled (empty: none);
    ``base_overrides``: pipeline parameters over the ``base_params`` files for the whole campaign, data included (e.g.
    ``image_size`` or ``healthy_sources``: such a campaign needs its own run folder); ``beside_runs``: run folders of
    such campaigns (relative to the repository), whose summaries the notebook shows beside this one's;
    ``models_from``: the run folder (relative to the repository) of a campaign whose finished models this one scores
    on its own data instead of training them (same variants and training data, e.g. more tuning draws:
    ``base_overrides: {tune_draws: 6}``); the models must have been trained there. ``tune_split``: the split scored,
    "tune" (lesions in the tuning hosts, calibrated on ``val_healthy``) or "ixi_tune" (the IXI tuning slices,
    calibrated on ``ixi_calib``; the base parameters must set ``ixi``)."""

    run_dir: str = "../outputs/levers"
    base_params: tuple[str, ...] = ("params/demo.yaml",)
    base_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    tune_hosts: tuple[str, ...] = ("itk_t1",)
    tune_split: Literal["tune", "ixi_tune"] = "tune"
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {"gaussian": {}})
    scorings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {"default": {}})
    variant_scorings: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1)
    variant_seeds: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    baselines: tuple[str, ...] = ("floor_intensity", "floor_median", "dae")
    baseline_residuals: tuple[str, ...] = ("abs",)
    baseline_intensity_weights: tuple[float, ...] = (0.0,)
    baseline_fusions: tuple[str, ...] = ("sum",)
    baseline_fusion_quantile: float = FUSION_QUANTILE
    baseline_median_sizes: tuple[int, ...] = ()
    dae_steps: int = 1500
    slice_stride: int = 3
    adv_profile_t: tuple[int, ...] = (10, 50, 100, 250, 500, 750, 950)
    beside_runs: tuple[str, ...] = ()
    models_from: str = ""

    def check(self) -> None:
        super().check()
        if any(t < 1 for t in self.adv_profile_t):
            raise ValueError(f"adv_profile_t depths must be >= 1, got {list(self.adv_profile_t)}")
        if not self.variants or not self.scorings or not self.seeds or not self.base_params or not self.tune_hosts:
            raise ValueError("base_params, tune_hosts, variants, scorings and seeds must not be empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has repeated values: {list(self.seeds)}")
        for name in list(self.variants) + list(self.scorings):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"variant/scoring name {name!r} may only hold letters, digits, '_', '.', '-'")
        if self.dae_steps < 1 or self.slice_stride < 1:
            raise ValueError("dae_steps and slice_stride must be >= 1")
        bad = [r for r in self.baseline_residuals if r not in ("abs", "positive")]
        if bad or not self.baseline_residuals:
            raise ValueError(f"baseline_residuals must hold 'abs' and/or 'positive', got {list(self.baseline_residuals)}")
        bad_w = [w for w in self.baseline_intensity_weights if not 0 <= w < float("inf")]
        if bad_w or not self.baseline_intensity_weights or len(set(self.baseline_intensity_weights)) != len(
                self.baseline_intensity_weights):
            raise ValueError(f"baseline_intensity_weights must hold distinct finite numbers >= 0 (0: the residual "
                             f"alone), got {list(self.baseline_intensity_weights)}")
        bad = [f for f in self.baseline_fusions if f not in ("sum", "max")]
        if bad or not self.baseline_fusions or len(set(self.baseline_fusions)) != len(self.baseline_fusions):
            raise ValueError(f"baseline_fusions must hold distinct 'sum' and/or 'max', got "
                             f"{list(self.baseline_fusions)}")
        check_fusion_quantile(self.baseline_fusion_quantile, "baseline_fusion_quantile")
        if any(m < 1 for m in self.baseline_median_sizes) or len(set(self.baseline_median_sizes)) != len(
                self.baseline_median_sizes):
            raise ValueError(f"baseline_median_sizes must hold distinct sizes >= 1 (1: no filter), got "
                             f"{list(self.baseline_median_sizes)}")
        for name, chosen in self.variant_seeds.items():
            if name not in self.variants and name not in self.baselines:
                raise ValueError(f"variant_seeds names {name!r}, which is neither a variant nor a baseline")
            if not chosen or set(chosen) - set(self.seeds):
                raise ValueError(f"variant_seeds[{name!r}] must be a non-empty subset of seeds {list(self.seeds)}")
        for name, chosen in self.variant_scorings.items():
            if name not in self.variants:
                raise ValueError(f"variant_scorings names {name!r}, which is not a variant")
            unknown = sorted(set(chosen) - set(self.scorings))
            if unknown:
                raise ValueError(f"variant_scorings[{name!r}]: {unknown} are not scorings")


@dataclasses.dataclass(frozen=True)
class BrowseConfig(RunConfig):
    """notebooks/05_browse.ipynb: the slice browser and static figures of one evaluated volume.

    The volume is ``browse_model`` / ``browse_set`` / ``browse_volume`` of the maps that 03_evaluate wrote under
    ``run_dir/eval_name`` (an empty ``browse_volume``: the one with the largest lesion), or, when ``nifti_scan`` and
    ``nifti_map`` are set, those files (with optional mask, reconstruction and brain mask) on one grid, or, when
    ``score_dir`` is set, a scan scored by ``python -m addmlib.score`` (one of its per-scan folders).
    ``threshold``: None takes the threshold the evaluation calibrated on healthy brains.
    """

    eval_name: str = "eval"
    browse_model: str = "addm"
    browse_set: Literal["eval_a", "eval_b"] = "eval_a"
    browse_volume: str = ""
    plane: Literal["axial", "coronal", "sagittal"] = "axial"
    threshold: float | None = None
    radiological: bool = True
    montage_slices: int = 4
    figure_slices: int = 24
    nifti_scan: str = ""
    nifti_map: str = ""
    nifti_mask: str = ""
    nifti_recon: str = ""
    nifti_brain: str = ""
    score_dir: str = ""

    def check(self) -> None:
        super().check()
        if self.score_dir and self.nifti_scan:
            raise ValueError("score_dir (a folder written by python -m addmlib.score) and nifti_scan are two ways to "
                             "name what to browse: set one")
        if bool(self.nifti_scan) != bool(self.nifti_map):
            raise ValueError("nifti_scan and nifti_map go together: set both to browse your own files, or neither")
        if not self.nifti_scan and (self.nifti_mask or self.nifti_recon or self.nifti_brain):
            raise ValueError("nifti_mask, nifti_recon and nifti_brain need nifti_scan and nifti_map")
        for name in ("montage_slices", "figure_slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0 (or None for the calibrated one), "
                             f"got {self.threshold}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.eval_name):
            raise ValueError(f"eval_name {self.eval_name!r} may only hold letters, digits, '_', '.', '-'")


@dataclasses.dataclass(frozen=True)
class ScoreConfig(RunConfig):
    """notebooks/08_score.ipynb (and ``python -m addmlib.score``): score scans you have with the trained, evaluated
    run ``run_dir`` (or the detector shipped with the package of that name, e.g. "ixi-2400") and browse the result.

    ``scans``: 3-D NIfTI/NRRD files or 2-D axial slices (PNG, one-slice NIfTI); ``masks``: a lesion mask per scan, or
    none (a ``<stem>_mask.nii.gz`` or ``.png`` beside a scan is its mask); ``out_dir``: one folder per scan; ``model``: the
    evaluated model to score with (empty: the first); ``eval_name``: the evaluation whose threshold is used;
    ``skull``: whether the scans have their skull ("auto": by the volume of non-background tissue)."""

    run_dir: str = "../outputs/demo"
    scans: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    out_dir: str = "../outputs/interactive/score"
    model: str = ""
    eval_name: str = "eval"
    skull: Literal["on", "off", "auto"] = "auto"
    device: str = "auto"

    def check(self) -> None:
        super().check()
        if self.masks and len(self.masks) != len(self.scans):
            raise ValueError(f"{len(self.masks)} masks for {len(self.scans)} scans: give one per scan, or none")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.eval_name):
            raise ValueError(f"eval_name {self.eval_name!r} may only hold letters, digits, '_', '.', '-'")


NOTEBOOK_CONFIGS: dict[str, type] = {
    "00_method": MethodConfig,
    "01_prepare_data": PrepareConfig,
    "02_train": TrainConfig,
    "03_evaluate": EvalConfig,
    "04_ablation": AblationConfig,
    "05_browse": BrowseConfig,
    "06_benchmark": BenchConfig,
    "07_levers": LeverConfig,
    "08_score": ScoreConfig,
}
"""Notebook stem -> its config."""

PIPELINE_NOTEBOOKS: tuple[str, ...] = ("00_method", "01_prepare_data", "02_train", "03_evaluate", "05_browse")
"""What ``python -m addmlib.pipeline`` runs by default, in order (04 and 06 drive the pipeline themselves)."""

_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def notebook_config(cls: type[T], namespace: Mapping[str, Any], notebook: str) -> T:
    """Validate a notebook's parameters from its global namespace (after papermill's injected cell).

    Plain-data globals (numbers, strings, lists, dicts, None) that the notebook's config does not declare are
    errors, unless another notebook of the pipeline declares them (a shared params file passed with ``papermill -f``
    carries every notebook's parameters); those are ignored.
    """
    hidden = set(_IPYTHON_NAMES)
    try:
        hidden |= set(get_ipython().user_ns_hidden)  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        pass
    plain = (bool, int, float, str, list, tuple, dict, type(None))
    found = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in hidden and isinstance(v, plain)}
    own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    others = {f.name for c in NOTEBOOK_CONFIGS.values() for f in dataclasses.fields(c)} - own
    params = {k: v for k, v in found.items() if k not in others}
    return validate(cls, params, f"notebook {notebook} parameters")
