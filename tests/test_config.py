import pytest
from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, parse_config


class Cfg(StageConfig):
    """A test config."""

    name: str = Field(description="a name")
    size: int = 3
    tags: list[str] = []
    flag: bool = False


def test_precedence_defaults_yaml_env_flags(tmp_path, monkeypatch):
    y = tmp_path / "c.yaml"
    y.write_text("name: from_yaml\nsize: 5\ntags: [a, b]\n")
    assert parse_config(Cfg, "t", ["--config", str(y)]).size == 5
    monkeypatch.setenv("LOGANALYZER_T_SIZE", "7")
    assert parse_config(Cfg, "t", ["--config", str(y)]).size == 7
    cfg = parse_config(Cfg, "t", ["--config", str(y), "size=9", "--flag", "--tags", "x", "y"])
    assert (cfg.size, cfg.flag, cfg.tags, cfg.name) == (9, True, ["x", "y"], "from_yaml")
    assert parse_config(Cfg, "t", ["--name", "n", "tags=p,q"]).tags == ["p", "q"]


def test_yes_no_on_off_are_words_unless_the_field_is_a_bool(monkeypatch):
    """PyYAML reads on/off/yes/no as booleans (YAML 1.1): an override `redact=off` must stay the word."""
    assert parse_config(Cfg, "t", ["name=off"]).name == "off"
    assert parse_config(Cfg, "t", ["--name", "no", "flag=on"]).flag is True
    monkeypatch.setenv("LOGANALYZER_T_NAME", "Yes")
    monkeypatch.setenv("LOGANALYZER_T_FLAG", "off")
    assert (parse_config(Cfg, "t", []).name, parse_config(Cfg, "t", []).flag) == ("Yes", False)
    assert parse_config(Cfg, "t", ["flag=true", "size=4"]).flag is True


@pytest.mark.parametrize("argv, env, message", [
    (["--name", "n", "colour=red"], {}, "unknown key"),
    (["--name", "n"], {"LOGANALYZER_T_COLOUR": "red"}, "unknown key"),
    (["--name", "n", "size=big"], {}, "size"),
    ([], {}, "name"),
    (["--name", "n", "nonsense"], {}, "not key=value"),
])
def test_bad_config_is_a_config_error_and_exit_2_on_the_command_line(argv, env, message, monkeypatch, capsys):
    from loganalyzer.cli import entry

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        parse_config(Cfg, "t", argv)
    with pytest.raises(SystemExit) as e:
        entry(lambda a: parse_config(Cfg, "t", a), argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_unknown_yaml_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: x\nlearning_rat: 1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        parse_config(Cfg, "t", ["--config", str(y)])


def test_config_error_is_an_ordinary_exception():
    """KFP steps and Ray workers catch it like any other error: it is no SystemExit and prints nothing."""
    with pytest.raises(Exception) as e:  # noqa: PT011  the point is that `except Exception` sees it
        raise ConfigError("bad value")
    assert not isinstance(e.value, SystemExit) and str(e.value) == "bad value"


def test_cli_dispatch_and_unknown_command(capsys):
    from loganalyzer.cli import main

    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "build-datasets" in capsys.readouterr().out


def test_config_by_recipe_name_and_search_path(tmp_path, monkeypatch):
    """--config takes a recipe name; LOGANALYZER_CONFIGS_DIR is a search path (ConfigMap first, image copy next)."""
    first, second = tmp_path / "cm", tmp_path / "image"
    for d, size in ((first, 1), (second, 2)):
        (d / "deepspeed").mkdir(parents=True)
        (d / "r.yaml").write_text(f"name: {d.name}\nsize: {size}\n")
    (second / "only_here.yaml").write_text("name: img\n")
    monkeypatch.setenv("LOGANALYZER_CONFIGS_DIR", f"{first}:{second}")
    assert parse_config(Cfg, "t", ["--config", "r"]).name == "cm"
    assert parse_config(Cfg, "t", ["--config", "only_here.yaml"]).name == "img"
    with pytest.raises(ConfigError, match=f"{first}, {second}"):
        parse_config(Cfg, "t", ["--config", "missing"])


def test_a_repeated_list_flag_adds_to_the_list():
    from loganalyzer.evaluate import EvaluateConfig

    cfg = parse_config(EvaluateConfig, "evaluate", ["--test", "t.jsonl", "--out", "o", "--models", "base=a",
                                                    "sft=b", "--models", "sft=c", "--eval-set", "x.jsonl",
                                                    "--eval-set", "y=z.json"])
    assert cfg.models == ["base=a", "sft=b", "sft=c"] and cfg.eval_set == ["x=x.jsonl", "y=z.json"]
