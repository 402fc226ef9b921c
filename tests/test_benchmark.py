"""The benchmark: matched peer, case isolation, the fast-path choice, and the notebook end to end (tiny sizes)."""

import json
from pathlib import Path

import papermill
import pytest
import yaml

from addmlib import benchmark as bm
from addmlib import pipeline
from addmlib.config import BenchConfig, ConfigError, validate
from addmlib.nets import UNet

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [(64, 32, (1, 2, 2, 2), 1, None), (256, 128, (1, 1, 2, 2, 4, 4), 2, (16,))])
def test_diffusers_peer_has_our_layout_and_parameter_count(args):
    size, base, mult, blocks, attn = args
    ours = bm.count_params(UNet(bm.unet_config(size, base, mult, blocks, attn), size))
    assert bm.matched_diffusers_base(size, base, mult, blocks, attn) == base
    assert bm.count_params(bm.diffusers_unet(size, base, mult, blocks, attn)) == ours


def test_train_case_counts_flops_and_runs_in_its_own_process():
    spec = {"case": "train", "label": "t", "threads": 1, "model": "ours", "size": 16, "base": 8, "mult": [1, 2],
            "res_blocks": 1, "batch": 2, "steps": 1, "warmup": 1}
    row = bm.run_case(spec)
    assert "error" not in row, row
    # FLOPs of a training step are about 3x the forward pass: at least the stem conv's 2*B*H*W*C*9 times 3
    assert row["gflop_per_step"] * 1e9 > 3 * 2 * 2 * 16 * 16 * 8 * 9
    assert row["images_per_s"] > 0 and row["peak_memory_mb"] > 0


def test_a_failing_case_is_reported_not_raised():
    row = bm.run_case({"case": "train", "label": "bad", "threads": 1, "model": "nope", "size": 16, "base": 8,
                       "mult": [1, 2], "res_blocks": 1, "batch": 2})
    assert "unknown model 'nope'" in row["error"]


def test_fastest_picks_the_lowest_per_image_cost_among_what_evaluation_can_use():
    rows = [{"dtype": "fp32", "channels_last": False, "malloc": False, "best_batch": 4,
             "s_per_image_step": {"1": 0.02, "4": 0.01}},
            {"dtype": "fp32", "channels_last": True, "malloc": True, "best_batch": 1, "s_per_image_step": {"1": 0.008}},
            {"dtype": "bf16", "channels_last": True, "malloc": True, "best_batch": 4, "s_per_image_step": {"4": 0.001}},
            {"label": "failed", "error": "x"}]
    assert bm.fastest(rows) == {"dtype": "fp32", "channels_last": True, "malloc": True, "batch": 1,
                                "s_per_image_step": 0.008}
    assert bm.fastest(rows, ("fp32", "bf16")) == {"dtype": "bf16", "channels_last": True, "malloc": True,
                                                  "batch": 4, "s_per_image_step": 0.001}, "amp: auto picks bf16 here"


def test_bench_demo_scores_volumes_the_way_the_demo_does():
    demo = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text())
    bench = yaml.safe_load((ROOT / "params" / "bench_demo.yaml").read_text())
    for key, value in bench["demo_scoring"].items():
        assert demo.get(key) == value, f"bench_demo.yaml demo_scoring.{key} differs from demo.yaml"
    assert bench["compile_over_steps"] == demo["max_steps"]
    cfg = validate(BenchConfig, {k: v for k, v in bench.items()}, "bench_demo.yaml")
    fast = {"batch": 16, "dtype": "bf16", "channels_last": True, "malloc": True}
    demo_cases = [c for c in bm.volume_cases(cfg, 128, fast) if "demo scoring" in c["label"]]
    assert [c["label"] for c in demo_cases] == ["volume 128² demo scoring, fast", "volume 128² demo scoring, fast, compiled"]
    for key in ("deep_t_star_ensemble", "deep_draws"):  # a mix in the demo is timed as a mix
        assert bench["demo_scoring"].get(key) == demo.get(key), f"demo.yaml {key} is not in bench_demo.yaml"
    t_star, deep = demo["t_star"], list(demo.get("deep_t_star_ensemble") or [])
    assert demo_cases[0]["t_star"] == ([t_star, *deep] if deep else t_star)  # one network call per depth
    assert demo_cases[0]["steps"] == 1 and demo_cases[0]["draws"] == 1
    assert bm.demo_scoring(cfg) == ([t_star], 1, 1, "abs", "none")  # the quality curve scores the unnoised input
    assert bm.demo_deep(cfg) == (deep, int(demo.get("deep_draws", 1)))
    mixed = validate(BenchConfig, {"demo_scoring": {"t_star": 25, "sample_steps": 1, "draws": 2,
                                                    "deep_t_star_ensemble": [50, 100], "deep_draws": 3}}, "p.yaml")
    (case,) = [c for c in bm.volume_cases(mixed, 64, fast) if c["label"] == "volume 64² demo scoring, fast"]
    assert case["t_star"] == [25, 25, 50, 100, 50, 100, 50, 100] and case["draws"] == 1
    with pytest.raises(ConfigError, match="demo_scoring: \\['median_size'\\] unknown"):
        validate(BenchConfig, {"demo_scoring": {"median_size": 5}}, "p.yaml")


def test_bench_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="dtypes must include 'fp32'"):
        validate(BenchConfig, {"dtypes": ["bf16"]}, "p.yaml")
    with pytest.raises(ConfigError, match="volume_steps"):
        validate(BenchConfig, {"volume_steps": [300]}, "p.yaml")


@pytest.mark.slow
def test_benchmark_notebook_runs_end_to_end(tmp_path):
    run = tmp_path / "run"  # a tiny trained model for the quality-cost part
    pipeline.run(ROOT / "params" / "ci" / "ci.yaml", run, ["01_prepare_data", "02_train"], cell_timeout=600,
                 overrides={"model_name": "model", "max_steps": 5})
    params = {**yaml.safe_load((ROOT / "params" / "ci" / "bench_ci.yaml").read_text()),
              "run_dir": str(tmp_path / "bench"), "quality_run_dir": str(run)}
    papermill.execute_notebook(str(ROOT / "notebooks" / "06_benchmark.ipynb"), str(tmp_path / "06.ipynb"),
                               parameters=params, cwd=str(ROOT / "notebooks"), progress_bar=False,
                               kernel_name="python3")
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [r["label"] for r in result["rows"] if "error" in r] == []
    assert {"train_fp32_ours_over_diffusers", "train_best_ours_over_best_diffusers", "train_fp32_conv_peak_fraction",
            "volume_32_batched_over_naive", "volume_64_batched_over_naive", "volume_64_demo_scoring_wall_s",
            "volume_64_demo_scoring_compiled_wall_s", "train_compile_fp32_steady",
            "train_compile_fp32_net_40_steps"} <= set(result["ratios"])
    compiled = [r for r in result["rows"] if r.get("compile")]
    assert {r["label"] for r in compiled} == {"train ours fp32 compiled", "volume 32² demo scoring, fast, compiled",
                                              "volume 64² demo scoring, fast, compiled"}
    assert result["machine"]["torch"].startswith("2.13.0") and result["machine"]["cores"] >= 1
    assert [(q["scoring"], q["steps"], q["draws"]) for q in result["quality"]] == [("chain", 2, 1), ("chain", 4, 1),
                                                                                ("demo", 1, 2)]
    assert (tmp_path / "bench" / "figures" / "quality_cost.png").is_file()
