import tomllib
from dataclasses import dataclass, field
from typing import Optional

import pytest

from dfcompress.config import RunConfig, make_run_config, read_config_file
from dfcompress.errors import ConfigError
from dfcompress.options import build, markdown_table, options_of, parse_assignments, to_toml


@dataclass(frozen=True)
class Example:
    iterations: int = field(default=2000, metadata={"help": "steps"})
    lr: float = field(default=0.05, metadata={"help": "learning rate"})
    flip: bool = field(default=True, metadata={"help": "flip"})
    layers: tuple[str, ...] = field(default=("conv",), metadata={"help": "layer types"})
    stats: Optional[str] = field(default=None, metadata={"help": "file"})


def test_build_coerces_strings_by_field_type():
    cfg = build(Example, {"iterations": "10", "lr": "1e-3", "flip": "false", "layers": "conv,linear", "stats": "a.st"})
    assert cfg == Example(10, 1e-3, False, ("conv", "linear"), "a.st")


@pytest.mark.parametrize("key,value", [("iterations", "ten"), ("iterations", "1.5"), ("flip", "maybe"), ("lr", True)])
def test_build_rejects_wrong_types(key, value):
    with pytest.raises(ConfigError, match=key):
        build(Example, {key: value})


def test_unknown_option_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid: iterations, lr, flip, layers, stats"):
        build(Example, {"iters": 3})


def test_parse_assignments():
    assert parse_assignments(["a=1", "b-c = x"], flag="-s") == {"a": "1", "b_c": "x"}
    with pytest.raises(ConfigError, match="-s expects key=value"):
        parse_assignments(["oops"], flag="-s")


def test_options_carry_help_and_markdown_table():
    names = [o.name for o in options_of(Example)]
    assert names == ["iterations", "lr", "flip", "layers", "stats"]
    table = markdown_table(Example)
    assert "| `lr` | float | `0.05` | learning rate |" in table


def test_run_config_toml_round_trip(tmp_path):
    cfg = make_run_config({"teacher": "cifar:resnet20", "ratio": "0.9"}, {"synth_options": {"iterations": 20}})
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert tomllib.loads(path.read_text())["synth_options"] == {"iterations": 20}
    again = make_run_config(read_config_file(path))
    assert again == cfg


def test_layers_precedence_and_table_merge():
    cfg = make_run_config(
        {"ratio": 0.3, "synth_options": {"iterations": 5, "lr": 0.1}},
        {"ratio": 0.7, "synth_options": {"iterations": 9}},
    )
    assert cfg.ratio == 0.7 and cfg.synth_options == {"iterations": 9, "lr": 0.1}


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ConfigError, match="ratio must be in"):
        make_run_config({"ratio": ratio})


def test_config_file_unknown_key_and_type(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('teacher = "demo"\nratoi = 0.5\n')
    with pytest.raises(ConfigError, match="unknown key.*ratoi.*valid:"):
        read_config_file(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('ratio = "half"\n')
    with pytest.raises(ConfigError, match="ratio expects a float"):
        make_run_config(read_config_file(wrong))


def test_to_toml_quotes_and_nesting():
    text = to_toml({"a": 'x"y', "b": [1, 2.5, True], "t": {"k": None, "s": {"z": 1}}})
    assert tomllib.loads(text) == {"a": 'x"y', "b": [1, 2.5, True], "t": {"s": {"z": 1}}}


def test_run_config_defaults_are_the_headline_command():
    cfg = RunConfig()
    assert (cfg.teacher, cfg.synth, cfg.task) == ("demo", "natural", "prune")
