"""Config schema: YAML loading, dotted overrides, errors naming the key, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tcm.losses import build_loss
from tcm.models import available_backbones
from tcm.train.config import (
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert "demo" in names
    for ds in ("cub", "cars", "sop", "inat"):
        for bb in ("resnet50", "vit_b_16"):
            for loss in ("smooth_ap", "rsk", "proxy_anchor", "ms"):
                assert f"{ds}_{bb}_{loss}" in names and f"{ds}_{bb}_{loss}_tcm" in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.backbone in available_backbones()
    assert cfg.loss.tcm.enabled == path.stem.endswith("_tcm")
    # the loss and its parameters are accepted by the loss factory
    tcm = cfg.loss.tcm.model_dump(exclude={"enabled"}) if cfg.loss.tcm.enabled else False
    build_loss(
        cfg.loss.name,
        tcm=tcm,
        num_classes=4,
        embedding_dim=cfg.model.embedding_dim,
        **cfg.loss.params,
    )
    # every key written in the file is part of the schema (nothing silently defaulted)
    raw = yaml.safe_load(path.read_text())
    dumped = cfg.model_dump(mode="json")
    for section, values in raw.items():
        if isinstance(values, dict):
            for k in values:
                assert k in dumped[section], f"{section}.{k}"


def test_demo_yaml_matches_builtin_demo_recipe(tmp_path: Path) -> None:
    from tcm.cli.main import demo_configs

    base = demo_configs(tmp_path)[0][1].model_dump()
    shipped = load_config(CONFIGS[[p.stem for p in CONFIGS].index("demo")]).model_dump()
    base.pop("output_dir")
    shipped.pop("output_dir")
    assert base == shipped


def test_defaults_and_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert isinstance(cfg, TrainingConfig) and cfg.loss.tcm.enabled is False
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "optim.lr=1e-4",
            "train.amp=false",
            "train.max_steps=null",
            "eval.far_range=[0.001, 0.2]",
            "loss.params.alpha=2",
            "loss.tcm=true",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-4 and cfg.train.amp is False
    assert cfg.train.max_steps is None and cfg.eval.far_range == (0.001, 0.2)
    assert cfg.loss.params == {"alpha": 2} and cfg.loss.tcm.enabled is True


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_parse_override_int_property(n: int) -> None:
    assert parse_override(f"a.b={n}") == (["a", "b"], n)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_parse_override_float_property(x: float) -> None:
    keys, v = parse_override(f"optim.lr={x!r}")
    assert keys == ["optim", "lr"] and float(v) == x


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(), max_size=3))
def test_apply_overrides_does_not_mutate_input(d: dict[str, int]) -> None:
    orig = dict(d)
    out = apply_overrides(d, ["x.y=1"])
    assert d == orig and out["x"] == {"y": 1}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.epoch=2"], "train.epoch: unknown key"),
        (["trian.epochs=2"], "trian: unknown key"),
        (["optim.lr=fast"], "optim.lr"),
        (["train.epochs=0"], "train.epochs"),
        (["optim.name=adam"], "optim.name"),
        (["model.embedding_dim=1.5"], "model.embedding_dim"),
        (["data.root=/definitely/not/here"], "data root does not exist: '/definitely/not/here'"),
        (["data.batch_size=10"], "must be a multiple of data.m_per_class"),
        (["eval.far_range=[0.2, 0.1]"], "eval.far_range"),
        (["optim.lr=.nan"], "optim.lr"),
        (["model.pretrained=/no/such/weights.pt"], "pretrained weights file does not exist"),
        (["loss.tcm.margin_pos=2"], "loss.tcm.margin_pos"),
        (["loss.memory_warmup=50"], "loss.memory_warmup (50) needs a cross-batch memory"),
        (["loss.memory_size=64", "loss.memory_warmup=-1"], "loss.memory_warmup"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match="invalid config") as ei:
        load_config(None, overrides)
    assert needle in str(ei.value)


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"train\.learning_rate: unknown key"):
        load_config(p)


def test_override_without_equals() -> None:
    with pytest.raises(ValueError, match="must look like key=value"):
        load_config(None, ["train.epochs"])


def test_override_empty_key() -> None:
    with pytest.raises(ValueError, match="empty key"):
        parse_override("train..epochs=2")


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="seed is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])
    with pytest.raises(ValueError, match=r"  seed: Input should be a valid integer"):
        load_config(None, ["seed.x=1"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(p)


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(p)


def test_config_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        config_from_dict([1, 2])  # type: ignore[arg-type]
