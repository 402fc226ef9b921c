"""Reading the benchmark rows: median over rounds, peak fractions, ratios, the volume target, ADDM vs DDPM."""

import math
from pathlib import Path

import pytest

from addmlib import bench_summary as bs
from addmlib import benchmark as bm

PEAKS = [{"label": "peak fp32", "dtype": "fp32", "gemm_gflops": 200.0, "conv3x3_cl_gflops": 100.0}]


def train_row(model, ips, rnd=0, dtype="fp32", cl=False, **extra):
    label = f"train {model} {dtype}{' CL' if cl else ''}"
    return {"case": "train", "label": label, "model": model, "round": rnd, "dtype": dtype, "channels_last": cl,
            "params": 100, "gflop_per_step": 1.0, "s_per_step": 8 / ips, "images_per_s": ips,
            "achieved_gflops": ips * 2, "peak_memory_mb": 500.0 + rnd, "process_wall_s": 3.0, **extra}


def test_training_rounds_are_summarised_by_their_median_with_range_and_peak_fractions():
    rows = [train_row("ours", v, r) for r, v in enumerate([10.0, 14.0, 12.0])] + \
        [train_row("diffusers", v, r) for r, v in enumerate([8.0, 6.0, 7.0])] + \
        [train_row("ours", 30.0, cl=True), {"label": "train diffusers fp32 CL", "model": "diffusers", "error": "x"}]
    s = bs.train_summary(rows, PEAKS)
    t = s.table.set_index("label")
    assert list(t.index) == ["train ours fp32", "train diffusers fp32", "train ours fp32 CL"], "failed case left out"
    assert t.loc["train ours fp32", "images_per_s"] == 12.0 and t.loc["train ours fp32", "peak_memory_mb"] == 502.0
    assert t.loc["train ours fp32", "images_per_s_range"] == "10.00–14.00 (3 runs)"
    assert t.loc["train ours fp32", "conv_peak_fraction"] == pytest.approx(24.0 / 100.0)
    assert t.loc["train ours fp32", "gemm_peak_fraction"] == pytest.approx(24.0 / 200.0)
    assert s.ratios["train_fp32_ours_over_diffusers"] == pytest.approx(12.0 / 7.0)
    assert s.ratios["train_best_ours_over_best_diffusers"] == pytest.approx(30.0 / 7.0)
    assert s.ratios["train_fp32_conv_peak_fraction"] == pytest.approx(0.24)
    assert "ours train ours fp32 CL against diffusers train diffusers fp32" in s.text
    assert set(bs.TRAIN_COLUMNS) <= set(s.table.columns)


def test_training_summary_without_a_finished_case_gives_nan_ratios():
    s = bs.train_summary([{"label": "train ours fp32", "model": "ours", "error": "boom"}], PEAKS)
    assert s.table.empty and all(math.isnan(v) for v in s.ratios.values())


def test_denoise_table_gives_each_switch_set_its_speed_up_over_plain_fp32():
    rows = [{"label": "denoise 64² fp32", "s_per_image_step": {"1": 0.04, "4": 0.02}},
            {"label": "denoise 64² fp32 CL malloc", "s_per_image_step": {"1": 0.02, "4": 0.01}},
            {"label": "denoise 64² bf16 malloc", "error": "no bf16"}]
    t = bs.denoise_table(rows)
    assert list(t.index) == ["fp32", "fp32 CL malloc"] and list(t.columns[:2]) == ["batch 1", "batch 4"]
    assert list(t["speed-up vs plain fp32 (best batch)"]) == [1.0, 2.0]


def volume_row(size, steps, s_per_slice, naive=False, batch=16):
    return {"label": f"volume {size}² {steps} steps, {'naive loop' if naive else 'fast'}", "size": size,
            "steps": steps, "s_per_slice": s_per_slice, "wall_s": s_per_slice * (3 if naive else 150),
            "slices": 3 if naive else 150, "batch": 1 if naive else batch, "dtype": "fp32", "channels_last": not naive,
            "malloc": not naive, "peak_memory_mb": 700.0}


def test_volume_summary_compares_the_fast_path_with_the_naive_loop_and_checks_the_128_target():
    rows = [volume_row(64, 50, 0.8), volume_row(64, 25, 0.4), volume_row(64, 25, 1.0, naive=True),
            volume_row(128, 25, 0.5), volume_row(128, 25, 2.0, naive=True)]
    s = bs.volume_summary(rows, volume_slices=150, t_star=250)
    assert s.ratios == {"volume_64_batched_over_naive": pytest.approx(2.5), "volume_128_batched_over_naive": 4.0,
                        "volume_128_fewest_steps_wall_s": 75.0}
    assert list(s.table["volume_wall_s"]) == pytest.approx([120.0, 60.0, 150.0, 75.0, 300.0])
    assert "every step from t* (250 steps) would take ≈ 600 s" in s.text
    assert s.text.splitlines()[-1] == ("- target: one 150-slice volume at 128² in ≤ 60 s: **75.0 s** at 25 steps "
                                       "→ not met")


def test_quality_summary_reads_addm_against_ddpm_at_about_twice_the_steps():
    q = [{"model": "addm", "lambda_adv": 0.05, "steps": 12, "auprc": 0.30, "auprc_volume_std": 0.05},
         {"model": "addm", "lambda_adv": 0.05, "steps": 50, "auprc": 0.30, "auprc_volume_std": 0.05},
         {"model": "ddpm", "lambda_adv": 0.0, "steps": 25, "auprc": 0.10, "auprc_volume_std": 0.02},
         {"model": "ddpm", "lambda_adv": 0.0, "steps": 50, "auprc": 0.28, "auprc_volume_std": 0.02}]
    q.append({"model": "addm", "scoring": "demo", "lambda_adv": 0.05, "steps": 1, "auprc": 0.5,
              "auprc_volume_std": 0.05})
    q.append({"model": "ddpm", "scoring": "demo", "lambda_adv": 0.0, "steps": 2, "auprc": 0.5,
              "auprc_volume_std": 0.05})
    for row in q[:4]:
        row["scoring"] = "chain"
    lines = bs.quality_summary(q).text.splitlines()
    assert lines[0] == "ADDM with half the steps against DDPM (one training seed each):"
    assert lines[2:] == ["- ADDM at 12 steps: pooled AUPRC 0.3000 against DDPM at 25 steps 0.1000 (Δ +0.2000, "
                         "spread 0.0500): **better**"], "12 pairs with 25 (within 10 % of 24); 50 has no pair"
    assert bs.quality_summary([]).text.endswith("- no ADDM and DDPM pair at steps in ratio 1:2")


def test_run_cases_reports_each_case_and_keeps_the_order(monkeypatch):
    monkeypatch.setattr(bm, "run_case", lambda spec: {**spec, "process_wall_s": 1.5, **spec.get("result", {})})
    said = []
    rows = bm.run_cases([{"label": "a"}, {"label": "b", "result": {"error": "boom"}}], progress=said.append)
    assert [r["label"] for r in rows] == ["a", "b"] and said == ["a: 1.5 s", "b: boom"]


def test_missing_models_are_those_without_a_model_record(tmp_path: Path):
    (tmp_path / "models" / "addm").mkdir(parents=True)
    (tmp_path / "models" / "addm" / "model.json").write_text("{}")
    assert bm.missing_models(tmp_path, ["addm", "ddpm"]) == ["ddpm"]
    assert bm.missing_models(tmp_path, []) == ["(quality_models is empty)"]


def test_compile_is_read_against_eager_with_its_compile_time_counted():
    rows = [train_row("ours", 10.0), train_row("ours", 20.0, dtype="bf16"),
            {**train_row("ours", 16.0), "label": "train ours fp32 compiled", "compile": True, "compile_s": 40.0},
            {**train_row("ours", 21.0, dtype="bf16"), "label": "train ours bf16 compiled", "compile": True,
             "compile_s": 60.0}]
    table = bs.train_summary(rows, PEAKS).table
    s = bs.compile_summary(table, over_steps=800)
    # fp32: 0.8 -> 0.5 s per step: 640 s eager against 40 + 400 s compiled
    assert s.ratios["train_compile_fp32_steady"] == pytest.approx(1.6)
    assert s.ratios["train_compile_fp32_net_800_steps"] == pytest.approx(640 / 440)
    # bf16: 0.4 -> 0.381 s: 320 s against 60 + 304.8 s: the compile time eats the gain
    assert s.ratios["train_compile_bf16_net_800_steps"] == pytest.approx(320 / (60 + 800 * 8 / 21))
    lines = s.text.splitlines()
    assert "worth adopting" in lines[0] and "not adopted" in lines[1]
    assert bs._images_per_s(table, "ours") == 10.0, "the eager row, not the compiled one"


def test_volume_summary_reads_the_demo_scoring_rows_and_its_60_s_target():
    demo = {**volume_row(128, 1, 0.36), "label": "volume 128² demo scoring, fast", "t_star": [100, 150, 250],
            "draws": 4, "wall_s": 54.6}
    comp = {**demo, "label": "volume 128² demo scoring, fast, compiled", "wall_s": 50.0, "warmup_s": 70.0}
    rows = [volume_row(128, 25, 0.5), volume_row(128, 25, 2.0, naive=True), demo, comp]
    s = bs.volume_summary(rows, volume_slices=150, t_star=250)
    assert s.ratios["volume_128_demo_scoring_wall_s"] == 54.6
    assert s.ratios["volume_128_demo_scoring_compiled_wall_s"] == 50.0
    assert s.ratios["volume_128_fewest_steps_wall_s"] == 75.0, "the strided-chain target ignores the demo rows"
    assert "the demo's scoring ([100, 150, 250] × 4 draws, 1 step), fp32: 150 slices in **54.6 s** → the 60 s " \
           "target is met" in s.text
    assert "compiled: 150 slices in **50.0 s** (warm-up with compiling 70 s)" in s.text
