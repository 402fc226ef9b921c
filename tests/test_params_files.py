"""Every parameter file under params/ is loaded and validated the way its command loads it.

* a lever campaign (a file with ``variants``): ``LeverConfig``, then ``levers.load_campaign_params`` (its
  ``base_params`` files exist and merge into valid pipeline parameters, every variant and scoring checked);
* an ablation sweep (``ablation_*``): ``sweep.load_config`` (its ``base_params`` files and ``cell_params`` too);
* a benchmark (``bench_*``): ``BenchConfig``;
* anything else is a pipeline file: a full set (it names ``image_size``) is validated for every pipeline notebook on
  its own; an overlay (``ddpm.yaml``, a report's set, a DAE seed) layered on ``params/demo.yaml``, as its command
  layers it.
"""

import dataclasses
from pathlib import Path

import pytest

from addmlib import levers, sweep
from addmlib.config import (NOTEBOOK_CONFIGS, PIPELINE_NOTEBOOKS, BenchConfig, ConfigError, LeverConfig,
                            check_pipeline_parameters, load_checked, load_yaml, load_yaml_files, validate)

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params"
FILES = sorted(PARAMS.rglob("*.yaml"))
DEMO = PARAMS / "demo.yaml"
SUB_FOLDERS = {"ci", "campaigns", "reports"}


def _id(path: Path) -> str:
    return str(path.relative_to(PARAMS))


def test_params_are_found_and_sorted_into_their_folders():
    assert len(FILES) >= 30
    for path in FILES:
        rel = path.relative_to(PARAMS)
        assert len(rel.parts) == 1 or rel.parts[0] in SUB_FOLDERS, f"{rel}: params/ holds only {sorted(SUB_FOLDERS)}"


def check_params_file(path: Path) -> None:
    """Load ``path`` as its command does and validate every key (a ConfigError naming the file otherwise)."""
    params = load_yaml(path)
    assert params, f"{path} is empty"
    name = path.stem
    if "variants" in params:
        cfg = load_checked(LeverConfig, [path])
        base = levers.load_campaign_params(cfg)
        assert base["image_size"] > 0
    elif name.startswith("ablation_"):
        cfg = sweep.load_config([path])
        assert cfg.base_params and all(sweep.resolve_param_file(p).is_file() for p in cfg.base_params)
    elif name.startswith("bench_"):
        load_checked(BenchConfig, [path])
    else:
        files = [path] if "image_size" in params else [DEMO, path]
        merged, source = load_yaml_files(files)
        check_pipeline_parameters(merged, source)
        for notebook in PIPELINE_NOTEBOOKS:
            cls = NOTEBOOK_CONFIGS[notebook]
            own = {f.name for f in dataclasses.fields(cls)}
            validate(cls, {k: v for k, v in merged.items() if k in own}, f"{source} for {notebook}")


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_params_file_loads_and_validates(path):
    check_params_file(path)


@pytest.mark.parametrize("name, text, match", [
    ("overlay.yaml", "lamda_adv: 0\n", "lamda_adv"),
    ("full.yaml", "image_size: 64\nt_star: 2000\n", "t_star"),
    ("levers_x.yaml", "base_params: [params/nope.yaml]\nvariants: {a: {}}\n", "nope.yaml"),
    ("levers_y.yaml", "base_params: [params/demo.yaml]\nvariants: {a: {nois: coarse}}\n", "nois"),
    ("ablation_x.yaml", "base_params: [params/demo.yaml]\ncell_params: {sed: 1}\n", "sed"),
    ("bench_x.yaml", "volume_steps: [300]\n", "volume_steps"),
])
def test_a_bad_params_file_is_refused(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        check_params_file(path)


def test_params_readme_describes_every_top_level_set():
    readme = (PARAMS / "README.md").read_text()
    for path in FILES:
        rel = path.relative_to(PARAMS)
        if len(rel.parts) == 1:
            assert f"`{rel}`" in readme, f"params/README.md does not describe {rel}"
    for folder in SUB_FOLDERS:
        assert f"`{folder}/`" in readme, f"params/README.md does not describe {folder}/"
