"""Typed parameter validation, YAML loading and the notebook <-> config agreement."""

import dataclasses
import typing
from pathlib import Path

import papermill
import pytest

from addmlib.config import NOTEBOOK_CONFIGS, PIPELINE_NOTEBOOKS, ConfigError, MethodConfig, load_yaml, notebook_config, validate

ROOT = Path(__file__).resolve().parent.parent


def test_validate_accepts_good_values_and_coerces():
    cfg = validate(MethodConfig, {"image_size": 32, "simplex_frequency": 16, "unet_channel_mult": [1, 2]}, "t")
    assert cfg.simplex_frequency == 16.0 and isinstance(cfg.simplex_frequency, float)
    assert cfg.unet_channel_mult == (1, 2)


@pytest.mark.parametrize("params, match", [
    ({"imag_size": 32}, "unknown parameter.*'imag_size'"),
    ({"image_size": "64"}, "'image_size' must be int"),
    ({"image_size": True}, "'image_size' must be int"),
    ({"image_size": 64.0}, "'image_size' must be int"),
    ({"schedule": "quadratic"}, "'schedule' must be 'linear' | 'cosine'"),
    ({"unet_channel_mult": [1, "2"]}, "'unet_channel_mult' must be tuple"),
    ({"t_star": 2000}, "t_star must be in"),
    ({"lambda_adv": -1}, "lambda_adv must be >= 0"),
])
def test_validate_names_the_bad_parameter(params, match):
    with pytest.raises(ConfigError, match=match) as err:
        validate(MethodConfig, params, "params/x.yaml")
    assert str(err.value).startswith("params/x.yaml")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(lst)
    assert load_yaml(ROOT / "params" / "ci" / "ci.yaml")["image_size"] == 32


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CONFIGS))
def test_notebook_parameters_cell_matches_its_config(name):
    nb = ROOT / "notebooks" / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(nb))
    cls = NOTEBOOK_CONFIGS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(declared) == set(fields), "parameters cell and config disagree"
    # defaults in the notebook are the config's defaults
    import ast
    for key, info in declared.items():
        value = ast.literal_eval(info["default"])
        f = fields[key]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert getattr(validate(cls, {key: value}, nb.name), key) == default, key


def test_shared_parameter_names_have_one_type():
    seen: dict[str, object] = {}
    for cls in NOTEBOOK_CONFIGS.values():
        for name, tp in typing.get_type_hints(cls).items():
            assert seen.setdefault(name, tp) == tp, f"{name} has two types across notebooks"


@pytest.mark.parametrize("yaml_name", ["ci/ci", "demo", "paper", "ddpm", "simplex"])
def test_every_params_file_is_valid_for_the_notebooks(yaml_name):
    params = load_yaml(ROOT / "params" / f"{yaml_name}.yaml")
    pipeline_configs = {n: NOTEBOOK_CONFIGS[n] for n in PIPELINE_NOTEBOOKS}
    for name, cls in pipeline_configs.items():
        own = {f.name for f in dataclasses.fields(cls)}
        validate(cls, {k: v for k, v in params.items() if k in own}, f"{yaml_name}.yaml for {name}")
    everything = {f.name for c in pipeline_configs.values() for f in dataclasses.fields(c)}
    assert set(params) <= everything, set(params) - everything


def test_notebook_config_ignores_ipython_and_other_notebooks_but_not_typos(monkeypatch):
    ns = {"In": [], "Out": {}, "_": None, "image_size": 32, "np": object(), "MethodConfig": MethodConfig}
    assert notebook_config(MethodConfig, ns, "00_method").image_size == 32
    monkeypatch.setitem(NOTEBOOK_CONFIGS, "99_other", dataclasses.make_dataclass("Other", [("epochs", int, 1)]))
    ns["epochs"] = 5  # belongs to another notebook of the pipeline: ignored here
    assert notebook_config(MethodConfig, ns, "00_method").image_size == 32
    ns["epoch"] = 5  # a typo: error naming it
    with pytest.raises(ConfigError, match="'epoch'"):
        notebook_config(MethodConfig, ns, "00_method")


@pytest.mark.parametrize("yaml_name,cls_name", [("ci/ablation_ci", "04_ablation"), ("ablation_demo", "04_ablation"),
                                                ("ablation_paper", "04_ablation"), ("ci/bench_ci", "06_benchmark"),
                                                ("bench_demo", "06_benchmark")])
def test_sweep_and_benchmark_params_files_are_valid(yaml_name, cls_name):
    validate(NOTEBOOK_CONFIGS[cls_name], load_yaml(ROOT / "params" / f"{yaml_name}.yaml"), f"{yaml_name}.yaml")
