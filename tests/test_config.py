"""Config dataclasses: round trips through dicts and files, typos and bad values are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metafit.app.config import RunConfig, apply_overrides, config_diff, load_config, save_config


def test_config_defaults_round_trip_through_dict() -> None:
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_config_round_trips_through_files(tmp_path: Path, suffix: str) -> None:
    cfg = RunConfig.from_dict(
        {
            "name": "x",
            "data": {"dataset": "omniglot", "n_way": 20, "k_shot": 1, "eval_k_shot": 5},
            "model": {"width": 32, "downsample": "stride"},
            "algo": {"name": "metasgd", "inner_lr": 0.4, "eval_inner_steps": 3},
            "train": {"steps": 7, "optimizer": "SGD", "optimizer_kwargs": {"momentum": 0.9}, "grad_clip": 1.0},
        }
    )
    p = save_config(cfg, tmp_path / f"c{suffix}")
    assert load_config(p) == cfg


def test_config_unknown_key_names_key_section_and_valid_keys() -> None:
    with pytest.raises(ValueError) as e:
        RunConfig.from_dict({"train": {"stesp": 10}})
    msg = str(e.value)
    assert "'stesp'" in msg and "'train'" in msg and "steps" in msg and "did you mean 'steps'" in msg
    with pytest.raises(ValueError, match="unknown config section 'trian'"):
        RunConfig.from_dict({"trian": {}})


def test_config_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("algo:\n  inner_lr: 0.1\n  innr_steps: 3\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*'innr_steps'.*'algo'"):
        load_config(p)


@pytest.mark.parametrize(
    ("section", "values", "pattern"),
    [
        ("train", {"steps": -1}, r"train\.steps must be an int >= 0, got -1"),
        ("train", {"optimizer": "Adamm"}, r"train\.optimizer must be a torch\.optim optimizer class name.*'Adamm'"),
        (
            "train",
            {"path": "fast"},
            r"train\.path must be one of \['auto', 'vmap', 'loop', 'compile', 'vmap_compile'\], got 'fast'",
        ),
        ("algo", {"inner_lr": 0}, r"algo\.inner_lr must be a finite number > 0, got 0"),
        ("algo", {"name": "mamal"}, r"algo\.name must be one of .*'mamal'"),
        ("data", {"n_way": 0}, r"data\.n_way must be an int >= 1, got 0"),
        ("model", {"hidden": [4, -2]}, r"model\.hidden must be a list of ints >= 1"),
        ("model", {"label_dim": 64}, r"model\.label_dim must be an int below model\.d_model=64, got 64"),
        ("model", {"label_dim": -1}, r"model\.label_dim must be .*>= 0.*-1"),
        ("model", {"tied_qk": "yes"}, r"model\.tied_qk must be"),
    ],
)
def test_config_bad_values_name_field_expected_and_actual(section: str, values: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RunConfig.from_dict({section: values})


def test_config_cross_section_checks() -> None:
    with pytest.raises(ValueError, match="protonet"):
        RunConfig.from_dict({"algo": {"name": "protonet"}})
    with pytest.raises(ValueError, match=r"model\.arch"):
        RunConfig.from_dict({"model": {"arch": "conv4"}})
    assert RunConfig.from_dict({"algo": {"name": "cnp"}}).algo.name == "cnp"
    with pytest.raises(ValueError, match=r"model.min_variance must be a number in \(0, 1\), got 1.5"):
        RunConfig.from_dict({"algo": {"name": "cnp"}, "model": {"min_variance": 1.5}})
    with pytest.raises(ValueError, match="model.variance_bound"):
        RunConfig.from_dict({"algo": {"name": "cnp"}, "model": {"variance_bound": "logvar"}})
    with pytest.raises(ValueError, match="model.post_layers"):
        RunConfig.from_dict({"algo": {"name": "cnp"}, "model": {"post_layers": -1}})


def test_config_overrides_parse_values_and_reject_typos() -> None:
    cfg = apply_overrides(
        RunConfig(), ["train.steps=5", "model.hidden=[3, 4]", "algo.eval_inner_steps=null", "data.rotations=false"]
    )
    assert cfg.train.steps == 5 and cfg.model.hidden == (3, 4) and cfg.algo.eval_inner_steps is None
    assert config_diff(RunConfig(), cfg) == ["data.rotations", "model.hidden", "train.steps"]
    with pytest.raises(ValueError, match="unknown config key 'step'"):
        apply_overrides(RunConfig(), ["train.step=5"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(RunConfig(), ["steps"])


def test_config_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps=1")
    with pytest.raises(ValueError, match="cannot parse config file .*bad.toml"):
        load_config(bad)
    odd = tmp_path / "c.ini"
    odd.write_text("")
    with pytest.raises(ValueError, match=r"\.json, \.yaml"):
        load_config(odd)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path: Path) -> None:
    # each reported figure's config parses and validates (a broken one fails here, not hours into a queue)
    cfg = load_config(path)
    assert cfg.name and cfg.algo.name
