"""Config tree: YAML maps 1:1, unknown keys name the valid ones, dotted overrides, saved config reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentic_gcpo.config import Config, ConfigError, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml"))


def test_defaults_validate():
    cfg = load_config()
    assert cfg.algorithm.name == "gcpo" and cfg.rollout.group_size == 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), Config)


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny_cpu.yaml", "embedded_gcpo.yaml"} <= names


def test_unknown_top_level_key_lists_sections(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  steps: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "unknown key 'trian'" in msg and "train" in msg and "rollout" in msg


def test_unknown_nested_key_lists_that_sections_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "rollout.group_sise" in str(e.value) and "group_size" in str(e.value)


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout.group_size"):
        load_config(None, ["rollout.group_size=zero"])
    with pytest.raises(ConfigError, match=r"rollout.temperature"):
        load_config(None, ["rollout.temperature=-1"])


def test_dotted_overrides_are_typed():
    cfg = load_config(
        None, ["train.lr=3e-5", "rollout.group_size=4", "tools.names=[python]", "golden.enabled=false"]
    )
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.rollout.group_size == 4 and cfg.tools.names == ["python"] and cfg.golden.enabled is False


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train.lr=[unclosed"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError):
        load_config(None, [bad])


def test_malformed_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_unknown_algorithm_lists_valid_ones():
    with pytest.raises(ConfigError, match="gcpo"):
        load_config(None, ["algorithm.name=ppoo"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS[0], ["train.steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.train.steps == 7
