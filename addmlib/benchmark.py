"""Benchmarks, each case in its own process: ``python -m addmlib.benchmark --case JSON`` (one case, here) or
``--cases CASES.json [--out ROWS.json]`` (a list, each in its own process); notebooks/06_benchmark.ipynb plans them.

Cases (each returns one JSON row; measured in a fresh process so that peak memory, threads and allocator settings
belong to that case alone):

* ``peak``: this machine's dense peak for a GEMM and a channels-last 3x3 convolution (same dtype and threads);
* ``train``: one DDPM training step (forward, MSE, backward, Adam) of our U-Net or of a ``diffusers``
  ``UNet2DModel`` matched to it in parameters, at a dtype (fp32, or bf16/fp16 autocast) and memory layout;
  FLOPs per step counted with ``torch.utils.flop_counter`` give the achieved GFLOP/s;
* ``denoise``: seconds per image per reverse step for a list of batch sizes (to choose the scoring batch);
* ``volume``: scoring one synthetic N x N x Z volume end to end with ``detect.score_volume`` (timing does not depend
  on the weights, which are random), batched or slice by slice, with a number of strided steps from t*.

Timing is wall clock of whole steps after warm-up (CUDA synchronised), the median of the timed repeats.

The notebook plans the cases (``*_cases``), runs them (``run_cases``), scores a run's trained models at several
numbers of steps (``quality_curve``), and reads the rows with ``addmlib.bench_summary``.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
import typing
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .cli import ArgumentParser, run_main
from . import models
from .config import ConfigError, ModelConfig, _coerce, _type_name
from .diffusion import GaussianDiffusion, beta_schedule, resolve_steps
from .nets import UNet, UNetConfig
from .pipeline import SCORING_MALLOC_ENV

# ---------------------------------------------------------------------------------------------------------------
# machine and models
# ---------------------------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for torch, cores, torch version and build, GPU if any."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")
    info = {"cpu": model, "cpu_flags": [f for f in wanted if f in flags], "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _attn(size: int, mult: Sequence[int], attn: Sequence[int] | None) -> tuple[int, ...]:
    """Attention resolutions; default: the lowest level only (the demo's 8x8 at 64^2)."""
    return tuple(attn) if attn else (size // 2 ** (len(mult) - 1),)


def unet_config(size: int, base: int, mult: Sequence[int], res_blocks: int,
                attn: Sequence[int] | None = None) -> UNetConfig:
    """Our U-Net (attention at ``attn`` resolutions and in the middle), defined as a trained model defines it
    (``models.unet_config`` of a ``ModelConfig`` with these sizes)."""
    return models.unet_config(ModelConfig(image_size=size, unet_base_channels=base, unet_channel_mult=tuple(mult),
                                          unet_num_res_blocks=res_blocks,
                                          unet_attention_resolutions=_attn(size, mult, attn)))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def diffusers_unet(size: int, base: int, mult: Sequence[int], res_blocks: int,
                   attn: Sequence[int] | None = None) -> torch.nn.Module:
    """``diffusers.UNet2DModel`` with our layout: the same levels, blocks per level, attention levels and heads."""
    from diffusers import UNet2DModel

    at = _attn(size, mult, attn)
    levels = [size // 2 ** i in at for i in range(len(mult))]
    groups = 32 if base % 32 == 0 else 8
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=res_blocks,
                       block_out_channels=tuple(base * m for m in mult), norm_num_groups=groups,
                       down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels),
                       up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
                       attention_head_dim=max(8, base * mult[-1] // 4))


def matched_diffusers_base(size: int, base: int, mult: Sequence[int], res_blocks: int,
                           attn: Sequence[int] | None = None) -> int:
    """The diffusers base width (a multiple of 8) whose parameter count is closest to our U-Net's."""
    target = count_params(UNet(unet_config(size, base, mult, res_blocks, attn), size))
    if count_params(diffusers_unet(size, base, mult, res_blocks, attn)) == target:
        return base
    candidates = range(8, 2 * base + 1, 8)
    return min(candidates, key=lambda b: abs(count_params(diffusers_unet(size, b, mult, res_blocks, attn)) - target))


def build(model: str, size: int, base: int, mult: Sequence[int], res_blocks: int,
          attn: Sequence[int] | None = None) -> tuple[torch.nn.Module, Callable]:
    """(module, call(x, t) -> eps) for "ours" or "diffusers" (the latter matched in parameters to ours)."""
    if model == "ours":
        net = UNet(unet_config(size, base, mult, res_blocks, attn), size)
        return net, net
    if model == "diffusers":
        net = diffusers_unet(size, matched_diffusers_base(size, base, mult, res_blocks, attn), mult, res_blocks, attn)
        return net, lambda x, t: net(x, t).sample
    raise ValueError(f"unknown model {model!r}; expected 'ours' or 'diffusers'")


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, budget_s: float = 30.0) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls; stops early (at least one timed call,
    one warm-up) once ``budget_s`` is spent, so slow configurations (bf16 without hardware support) stay bounded."""
    t_start = time.perf_counter()
    for i in range(warmup):
        if i and time.perf_counter() - t_start > budget_s:
            break
        fn()
    _sync(device)
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if t0 - t_start > budget_s:
            break
    return statistics.median(times)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# ---------------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------------

def case_peak(device: torch.device, dtype: str = "fp32", gemm_n: int = 1024, conv_channels: int = 64,
              conv_size: int = 64, conv_batch: int = 8, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of an n x n x n GEMM (2n^3 FLOPs) and a channels-last 3x3 convolution (2 N C_out H W C_in 9 FLOPs)."""
    a, b = torch.randn(gemm_n, gemm_n, device=device), torch.randn(gemm_n, gemm_n, device=device)
    conv = torch.nn.Conv2d(conv_channels, conv_channels, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(conv_batch, conv_channels, conv_size, conv_size, device=device).to(
        memory_format=torch.channels_last)
    with torch.no_grad(), _autocast(device, dtype):
        t_gemm = _timed(lambda: a @ b, device, 2, repeats)
        t_conv = _timed(lambda: conv(x), device, 2, repeats)
    conv_flops = 2 * conv_batch * conv_channels * conv_size ** 2 * conv_channels * 9
    return {"gemm_gflops": round(2 * gemm_n ** 3 / t_gemm / 1e9, 2), "conv3x3_cl_gflops":
            round(conv_flops / t_conv / 1e9, 2), "gemm_n": gemm_n,
            "conv": f"{conv_batch}x{conv_channels}x{conv_size}x{conv_size}, 3x3, {conv_channels} out"}


def train_step_fn(net: torch.nn.Module, call: Callable, batch: int, size: int, device: torch.device, dtype: str,
                  channels_last: bool, num_steps: int = 1000) -> Callable[[], float]:
    """One DDPM step (Eq. L_DDPM): t ~ U, eps ~ N, || eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t) ||^2."""
    net.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(device).to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == "fp16")
    abar = torch.cumprod(1 - beta_schedule("linear", num_steps), 0).float().to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(batch, 1, size, size, device=device, generator=gen) * 2 - 1

    def step() -> float:
        t = torch.randint(0, num_steps, (batch,), device=device, generator=gen)
        eps = torch.randn(x0.shape, device=device, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * eps).contiguous(memory_format=fmt)
        with _autocast(device, dtype):
            loss = torch.nn.functional.mse_loss(call(xt, t).float(), eps)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    return step


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _compiled(call: Callable, compile: bool) -> Callable:
    """``torch.compile(call)`` (inductor, the default backend) when asked; its first calls pay the compile time."""
    return torch.compile(call) if compile else call


def case_train(device: torch.device, model: str, size: int, base: int, mult: Sequence[int], res_blocks: int,
               batch: int, dtype: str = "fp32", channels_last: bool = False, steps: int = 10,
               warmup: int = 3, attn: Sequence[int] | None = None, budget_s: float = 30.0,
               compile: bool = False) -> dict[str, Any]:
    """One training step's time (median after warm-up); with ``compile`` the network is ``torch.compile``d and
    ``compile_s`` is the first step's extra time over the steady step (what compiling costs once per process)."""
    torch.manual_seed(0)
    net, call = build(model, size, base, mult, res_blocks, attn)
    flops = _flops(train_step_fn(net, call, batch, size, device, dtype, channels_last))  # forward + backward, eager
    step = train_step_fn(net, _compiled(call, compile), batch, size, device, dtype, channels_last)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    s = _timed(step, device, warmup, steps, budget_s)
    return {"params": count_params(net), "gflop_per_step": round(flops / 1e9, 3), "s_per_step": round(s, 4),
            "images_per_s": round(batch / s, 2), "achieved_gflops": round(flops / s / 1e9, 2),
            "compile_s": round(max(first - s, 0.0), 2) if compile else 0.0, "peak_memory_mb": _peak_memory_mb(device)}


def _denoiser(net: torch.nn.Module, device: torch.device, dtype: str, channels_last: bool) -> Callable:
    """The scoring path's eps_theta (``detect.fast_denoiser``) at the chosen dtype and layout."""
    from .detect import fast_denoiser

    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return fast_denoiser(net.to(device), channels_last, amp)


def case_denoise(device: torch.device, size: int, base: int, mult: Sequence[int], res_blocks: int,
                 batches: Sequence[int], dtype: str = "fp32", channels_last: bool = False,
                 repeats: int = 5, attn: Sequence[int] | None = None) -> dict[str, Any]:
    """Seconds per image per network evaluation (one reverse step) for each batch size."""
    torch.manual_seed(0)
    net = UNet(unet_config(size, base, mult, res_blocks, attn), size)
    eps = _denoiser(net, device, dtype, channels_last)
    per_image = {}
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, 1, size, size, device=device)
            t = torch.full((b,), 100, device=device, dtype=torch.long)
            per_image[str(b)] = round(_timed(lambda: eps(x, t), device, 2, repeats) / b, 5)
    best = min(per_image, key=per_image.get)
    return {"s_per_image_step": per_image, "best_batch": int(best), "params": count_params(net),
            "peak_memory_mb": _peak_memory_mb(device)}


def case_volume(device: torch.device, size: int, base: int, mult: Sequence[int], res_blocks: int, slices: int,
                t_star: int | Sequence[int], steps: int, batch: int, dtype: str = "fp32", channels_last: bool = False,
                num_steps: int = 1000, attn: Sequence[int] | None = None, draws: int = 1,
                compile: bool = False) -> dict[str, Any]:
    """Wall time of ``detect.score_volume`` on one synthetic size x size x slices volume (batch 1 = slice by slice);
    ``t_star`` a list is an ensemble of depths, each scored ``draws`` times (network calls per slice:
    depths x draws x steps). With ``compile`` the network is ``torch.compile``d and the warm-up's time (compiling
    included) is reported as ``warmup_s``."""
    from .detect import score_volume

    torch.manual_seed(0)
    net = UNet(unet_config(size, base, mult, res_blocks, attn), size)
    eps = _compiled(_denoiser(net, device, dtype, channels_last), compile)
    diffusion = GaussianDiffusion(num_steps, "linear")
    volume = torch.rand(size, size, slices).numpy() * 2 - 1
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():  # warm-up on one batch
        score_volume(eps, diffusion, volume, list(range(min(batch, slices))), t_star, 2, "ddpm", batch_size=batch,
                     generator=gen, device=device)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_volume(eps, diffusion, volume, list(range(slices)), t_star, steps, "ddpm", batch_size=batch,
                 generator=gen, device=device, draws=draws)
    _sync(device)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "s_per_slice": round(wall / slices, 4), "warmup_s": round(warmup_s, 2),
            "params": count_params(net), "peak_memory_mb": _peak_memory_mb(device)}


def case_score(device: torch.device, run_dir: str, source: str = "sri24", skull: str = "auto") -> dict[str, Any]:
    """Wall time of scoring one embedded scan (``source``, a packaged source's name) as ``python -m addmlib.score``
    does, with the trained and evaluated run ``run_dir`` (the demo's: ``make demo``), into a temporary folder:
    preparation (deepbet where the skull is on; its mask is cached per scan, so only a first run pays for it), every
    selected slice, the native-space files, the PNG and the summary."""
    import tempfile

    from .data.datasets import packaged
    from .score import score_scans

    scan = packaged(source).image
    with tempfile.TemporaryDirectory(prefix="addm-bench-score-") as out:
        t0 = time.perf_counter()
        (summary,) = score_scans(run_dir, [scan], out, skull=skull, device=device.type,  # type: ignore[arg-type]
                                 threads=torch.get_num_threads())
        wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "slices": summary["slices_scored"],
            "s_per_slice": round(wall / summary["slices_scored"], 4), "skull_on": summary["skull"]["on"],
            "native_shape": summary["input"]["shape"], "peak_memory_mb": _peak_memory_mb(device)}


# ---------------------------------------------------------------------------------------------------------------
# plans: which cases the benchmark notebook runs, and how the fast path is chosen from the measurements
# ---------------------------------------------------------------------------------------------------------------

def arch(cfg: Any, size: int | None = None) -> dict[str, Any]:
    """The benchmarked U-Net (the demo's by default) at ``size``."""
    return {"size": size or cfg.image_size, "base": cfg.unet_base_channels, "mult": list(cfg.unet_channel_mult),
            "res_blocks": cfg.unet_num_res_blocks}


def peak_cases(cfg: Any) -> list[dict[str, Any]]:
    return [{"case": "peak", "label": f"peak {d}", "threads": cfg.threads, "device": cfg.device, "dtype": d}
            for d in cfg.dtypes]


def auto_dtype(device: str = "auto") -> str:
    """The dtype ``amp: auto`` trains and scores in on ``device`` ("fp32", "bf16" or "fp16")."""
    from .runtime import resolve_amp, resolve_device

    choice = resolve_amp("auto", resolve_device(device))
    return "fp32" if choice == "off" else choice


def train_cases(cfg: Any) -> list[dict[str, Any]]:
    """Ours and the matched diffusers U-Net, same batch/resolution/threads, for each dtype, plain and channels-last.

    fp32 cases are repeated ``cfg.train_rounds`` times, ours and diffusers alternating, so that drift of the machine
    (frequency, neighbours) hits both alike; the notebook takes the median over rounds. Other dtypes run once. With
    ``cfg.measure_compile``, ours is also timed ``torch.compile``d in fp32 and in the ``amp: auto`` dtype.
    """
    out = []
    for r in range(cfg.train_rounds):
        for d in cfg.dtypes:
            if r and d != "fp32":
                continue
            for cl in (False, True):
                for model in ("ours", "diffusers"):
                    out.append({"case": "train", "label": f"train {model} {d}{' CL' if cl else ''}", "model": model,
                                "round": r, "threads": cfg.threads, "device": cfg.device, "dtype": d,
                                "channels_last": cl, "batch": cfg.batch_size, "steps": cfg.train_steps,
                                "budget_s": 20.0, **arch(cfg)})
    if cfg.measure_compile:
        for d in dict.fromkeys(("fp32", auto_dtype(cfg.device))):
            if d in cfg.dtypes:
                out.append({"case": "train", "label": f"train ours {d} compiled", "model": "ours", "round": 0,
                            "threads": cfg.threads, "device": cfg.device, "dtype": d, "channels_last": False,
                            "batch": cfg.batch_size, "steps": cfg.train_steps, "budget_s": 20.0, "compile": True,
                            **arch(cfg)})
    return out


def denoise_cases(cfg: Any, size: int) -> list[dict[str, Any]]:
    """Per-image cost of a reverse step for each batch size: fp32 with each combination of channels-last and the
    allocator settings; other dtypes with the allocator settings, at every batch for the ``amp: auto`` dtype and at
    batches <= 4 for the others (slow where the CPU lacks them)."""
    out = []
    usable = auto_dtype(cfg.device)
    for d in cfg.dtypes:
        for cl in (False, True):
            for malloc in ((False, True) if d == "fp32" else (True,)):
                batches = (list(cfg.denoise_batches) if d in ("fp32", usable)
                           else [b for b in cfg.denoise_batches if b <= 4])
                out.append({"case": "denoise", "label": f"denoise {size}² {d}{' CL' if cl else ''}"
                            f"{' malloc' if malloc else ''}", "threads": cfg.threads, "device": cfg.device,
                            "dtype": d, "channels_last": cl, "malloc": malloc, "batches": batches or [1],
                            **arch(cfg, size)})
    return out


def fastest(rows: Sequence[Mapping[str, Any]], dtypes: Sequence[str] = ("fp32",)) -> dict[str, Any]:
    """The denoise row (dtype, layout, allocator) and batch with the lowest seconds per image-step among ``dtypes``:
    the switches the evaluation can use (fp32, and the dtype its ``amp: auto`` picks on this machine)."""
    best = min((r for r in rows if "s_per_image_step" in r and r.get("dtype", "fp32") in dtypes),
               key=lambda r: min(r["s_per_image_step"].values()))
    return {"dtype": best["dtype"], "channels_last": best["channels_last"], "malloc": best["malloc"],
            "batch": best["best_batch"], "s_per_image_step": min(best["s_per_image_step"].values())}


def demo_scoring(cfg: Any) -> tuple[list[int], int, int, str, str]:
    """(depths, steps per depth, draws, residual, noise) of ``cfg.demo_scoring``, with EvalConfig's defaults where it
    is silent (the depth: ``cfg.t_star``)."""
    sc = cfg.demo_scoring
    depths = [int(t) for t in sc.get("t_star_ensemble") or [sc.get("t_star", cfg.t_star)]]
    return (depths, int(sc.get("sample_steps", 50)), int(sc.get("draws", 1)), str(sc.get("residual", "abs")),
            str(sc.get("eval_noise", "model")))


def demo_deep(cfg: Any) -> tuple[list[int], int]:
    """(depths, draws) of the deep map that ``cfg.demo_scoring`` mixes in (``evaluate.with_deep_map``); no depths:
    no mix."""
    sc = cfg.demo_scoring
    return [int(t) for t in sc.get("deep_t_star_ensemble") or []], int(sc.get("deep_draws", 1))


def volume_cases(cfg: Any, size: int, fast: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One volume with the fast path for each of ``volume_steps`` (sizes above ``image_size``: the fewest only, time
    being linear in steps), and the naive loop (batch 1, fp32, no switches) at the fewest steps on ``naive_slices``."""
    steps_list = sorted({resolve_steps(s, cfg.t_star) for s in cfg.volume_steps}, reverse=True)
    if size > cfg.image_size:
        steps_list = steps_list[-1:]
    out = []
    for n in steps_list:
        common = {"case": "volume", "threads": cfg.threads, "device": cfg.device, "slices": cfg.volume_slices,
                  "t_star": cfg.t_star, "steps": n, **arch(cfg, size)}
        out.append({**common, "label": f"volume {size}² {n} steps, fast", "batch": fast["batch"],
                    "dtype": fast["dtype"], "channels_last": fast["channels_last"], "malloc": fast["malloc"]})
        if n == steps_list[-1]:
            out.append({**common, "label": f"volume {size}² {n} steps, naive loop", "batch": 1, "dtype": "fp32",
                        "channels_last": False, "malloc": False, "slices": min(cfg.naive_slices, cfg.volume_slices)})
    if cfg.demo_scoring:
        depths, steps, draws, _, _ = demo_scoring(cfg)  # the noise drawn (or not) costs nothing beside the network
        deep, deep_draws = demo_deep(cfg)
        if deep:  # the mix's network calls: each depth of both maps once per draw (the deep map's in one step)
            depths, draws = depths * draws + deep * deep_draws, 1
        demo = {"case": "volume", "threads": cfg.threads, "device": cfg.device, "slices": cfg.volume_slices,
                "t_star": depths if len(depths) > 1 else depths[0], "steps": steps, "draws": draws,
                "batch": fast["batch"], "dtype": fast["dtype"], "channels_last": fast["channels_last"],
                "malloc": fast["malloc"], **arch(cfg, size)}
        out.append({**demo, "label": f"volume {size}² demo scoring, fast"})
        if cfg.measure_compile:
            out.append({**demo, "label": f"volume {size}² demo scoring, fast, compiled", "compile": True})
    return out



def score_cases(cfg: Any, sources: Sequence[str] = ("sri24", "qtim_tumor2")) -> list[dict[str, Any]]:
    """One scan of each of ``sources`` (brain only, and skull on) scored with the evaluated run ``quality_run_dir``
    as ``python -m addmlib.score`` does; none when the run has no ``eval/detector.json`` (``make demo`` first)."""
    run = Path(cfg.quality_run_dir).resolve()
    if not (run / "eval" / "detector.json").is_file():
        return []
    return [{"case": "score", "threads": cfg.threads, "device": cfg.device, "run_dir": str(run), "source": source,
             "label": f"score a scan ({source}) with {run.name}"} for source in sources]


CASES: dict[str, Callable[..., dict[str, Any]]] = {"peak": case_peak, "train": case_train, "denoise": case_denoise,
                                                    "volume": case_volume, "score": case_score}


def run_case_here(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one case in this process (threads and device from ``spec``)."""
    spec = dict(spec)
    kind, threads, device = spec.pop("case"), int(spec.pop("threads")), spec.pop("device", "auto")
    for key in ("malloc", "label", "round"):
        spec.pop(key, None)
    torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    return CASES[kind](dev, **spec)


def run_case(spec: Mapping[str, Any], timeout: int = 1800) -> dict[str, Any]:
    """Run one case in a fresh Python process; returns the spec, the result (or the error) and the process's wall."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONUNBUFFERED": "1"}
    for k in SCORING_MALLOC_ENV:
        env.pop(k, None)
    if spec.get("malloc"):
        env.update(SCORING_MALLOC_ENV)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "addmlib.benchmark", "--case", json.dumps(dict(spec))],
                              capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {**spec, "process_wall_s": round(time.perf_counter() - t0, 1), "error": f"timeout after {timeout} s"}
    row: dict[str, Any] = {**spec, "process_wall_s": round(time.perf_counter() - t0, 1)}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    else:
        row.update(json.loads(lines[-1]))
    return row


def _print(line: str) -> None:
    print(line, flush=True)


def run_cases(specs: Sequence[Mapping[str, Any]],
              progress: Callable[[str], None] | None = _print) -> list[dict[str, Any]]:
    """Each case in its own process (``run_case``), in order; ``progress`` gets one line per case: its label and the
    process's wall time, or its error."""
    rows = []
    for spec in specs:
        row = run_case(spec)
        if progress:
            progress(f"{spec['label']}: " + (row.get("error") or f"{row['process_wall_s']} s"))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# quality against cost: trained models of a run, scored with the evaluation code at several numbers of steps
# ---------------------------------------------------------------------------------------------------------------

def missing_models(run_dir: str | Path, models: Sequence[str]) -> list[str]:
    """The models of ``models`` without a ``model.json`` in ``run_dir`` (all of them named when the list is empty)."""
    from .training import model_dir

    if not models:
        return ["(quality_models is empty)"]
    return [m for m in models if not (model_dir(run_dir, m) / "model.json").is_file()]


def quality_curve(cfg: Any, batch: int, device: torch.device,
                  progress: Callable[[str], None] | None = _print) -> list[dict[str, Any]]:
    """AUPRC, Dice and AUROC of each of ``cfg.quality_models`` (trained in ``cfg.quality_run_dir``) at each of
    ``cfg.quality_steps`` strided steps from ``cfg.t_star`` (``scoring`` "chain", |x - x_hat|), and with
    ``cfg.demo_scoring`` when given (``scoring`` "demo"), at the evaluation's ``amp: auto``, on every
    ``cfg.quality_slice_stride``-th slice of ``cfg.quality_set``, with notebook 03's evaluation (threshold at 5 % FPR
    on healthy brains, default post-processing), and the scoring wall time. One row per model and scoring."""
    from .data.prepare import PreparedDataset
    from .evaluate import (MIX_CALIBRATION, PostProcessing, diffusion_scorer, evaluate_model, use_channels_last,
                           with_deep_map)
    from .models import recorded_checkpoint
    from .training import model_dir

    run = Path(cfg.quality_run_dir).resolve()
    data, pp, rows = PreparedDataset(run / "data"), PostProcessing(), []
    plans: list[tuple[str, Any, int, int, str, str]] = [("chain", cfg.t_star, s, 1, "abs", "model")
                                                        for s in cfg.quality_steps]
    if cfg.demo_scoring:
        plans.append(("demo", *demo_scoring(cfg)))
    deep, deep_draws = demo_deep(cfg)
    for name in cfg.quality_models:
        ckpt = recorded_checkpoint(model_dir(run, name) / "model.json")
        for scoring, depths, steps, draws, residual, noise in plans:
            scorer, info = diffusion_scorer(ckpt, depths, steps, "ddpm", noise, draws, batch, cfg.seed, device,
                                            use_channels_last("auto", device), "auto", residual=residual)
            t0 = time.perf_counter()
            if scoring == "demo" and deep:  # its scales set on the run's IXI calibration individuals, timed with it
                scorer, info = with_deep_map(scorer, info, ckpt, deep, deep_draws, batch, cfg.seed, device,
                                             use_channels_last("auto", device), "auto", residual, pp,
                                             data.volumes(MIX_CALIBRATION))
            res, scored = evaluate_model(scorer, data, [cfg.quality_set], cfg.quality_slice_stride, 0.05, pp, False,
                                         None)
            wall = time.perf_counter() - t0
            p, v = res[cfg.quality_set]["pooled"], res[cfg.quality_set]["per_volume_summary"]
            rows.append({"model": name, "scoring": scoring, "lambda_adv": info["lambda_adv"], "T": info["T"],
                         "steps": info["steps"], "draws": draws,
                         "auprc": p["auprc"], "auprc_volume_mean": v["auprc"][0], "auprc_volume_std": v["auprc"][1],
                         "dice": p["dice"], "auroc": p["auroc"], "wall_s": round(wall, 1),
                         "slices": sum(len(x.slices) for xs in scored.values() for x in xs)})
            if progress:
                progress(str(rows[-1]))
    return rows


CASE_META: dict[str, Any] = {"case": str, "threads": int, "device": str, "malloc": bool, "label": str, "round": int}
"""Keys every case spec may carry besides its case function's parameters, with their types."""


def _case_type(tp: Any) -> Any:
    """A case function's annotation as ``config._coerce`` understands it (a Sequence is a list or tuple)."""
    origin = typing.get_origin(tp)
    if origin is collections.abc.Sequence:
        return tuple[(*typing.get_args(tp), ...)] if typing.get_args(tp) else tuple
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_case_type(a) for a in typing.get_args(tp))]
    return tp


def validate_case(spec: Any, source: str) -> None:
    """Refuse a case spec with an unknown case or parameter, a missing parameter or a value of the wrong type (one
    ConfigError naming ``source`` and the parameter) before any case runs."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: a case must be a JSON object, got {type(spec).__name__}")
    if spec.get("case") not in CASES:
        raise ConfigError(f"{source}: 'case' must be one of {', '.join(map(repr, CASES))}, got {spec.get('case')!r}")
    fn = CASES[spec["case"]]
    params = dict(list(inspect.signature(fn).parameters.items())[1:])  # the first is the device, from "device"
    hints = {**{k: _case_type(v) for k, v in typing.get_type_hints(fn).items() if k in params}, **CASE_META}
    unknown = sorted(set(spec) - set(hints))
    if unknown:
        raise ConfigError(f"{source}: unknown parameter(s) {', '.join(map(repr, unknown))} for case "
                          f"{spec['case']!r}; known: {', '.join(sorted(hints))}")
    missing = sorted(k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in spec)
    if missing or "threads" not in spec:
        raise ConfigError(f"{source}: case {spec['case']!r} needs parameter(s) "
                          f"{', '.join(map(repr, missing + (['threads'] if 'threads' not in spec else [])))}")
    for key, value in spec.items():
        try:
            _coerce(value, hints[key])
        except TypeError:
            raise ConfigError(f"{source}: parameter {key!r} must be {_type_name(hints[key])}, got {value!r} "
                              f"({type(value).__name__})") from None


def _read_cases(path: str) -> list[Any]:
    """The list of case specs in the JSON file ``path``, each validated (nothing runs when one is wrong)."""
    try:
        specs = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(specs, list):
        raise ConfigError(f"{path}: expected a JSON list of cases, got {type(specs).__name__}")
    for i, spec in enumerate(specs):
        validate_case(spec, f"{path} (case {i})")
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m addmlib.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help="run one case given as JSON in this process and print its result")
    parser.add_argument("--cases", help="a JSON file holding a list of cases: run each in its own process")
    parser.add_argument("--out", help="with --cases: write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.case and not args.cases:
        parser.error("give --case or --cases")
    return run_main(lambda: _bench_cli(args.case, args.cases, args.out))


def _bench_cli(case: str | None, cases: str | None, out: str | None) -> int:
    """``main`` after argument parsing: every case validated, then run."""
    if case:
        try:
            spec = json.loads(case)
        except ValueError as exc:
            raise ConfigError(f"--case: not valid JSON: {exc}") from None
        validate_case(spec, "--case")
        print(json.dumps(run_case_here(spec)), flush=True)
        return 0
    rows = []
    for spec in _read_cases(cases or ""):
        row = run_case(spec)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if out:
        Path(out).write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
