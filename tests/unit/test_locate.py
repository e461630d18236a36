"""Which config a command uses without --config, and where it says it looked."""

from __future__ import annotations

from dfagent.tools.locate import CONFIG_ENV, choose_config


def test_an_explicit_config_wins(tmp_path):
    default = tmp_path / "dfagent.yaml"
    default.write_text("")
    choice = choose_config("mine.yaml", {CONFIG_ENV: "env.yaml"}, default)
    assert (choice.path, choice.looked) == ("mine.yaml", ())


def test_the_environment_comes_before_the_default_path(tmp_path):
    default = tmp_path / "dfagent.yaml"
    default.write_text("")
    assert choose_config(None, {CONFIG_ENV: "env.yaml"}, default).path == "env.yaml"
    assert choose_config(None, {CONFIG_ENV: ""}, default).path == str(default)


def test_without_either_the_embedded_default_and_where_it_looked(tmp_path):
    default = tmp_path / "absent.yaml"
    choice = choose_config(None, {}, default)
    assert choice.path is None
    assert choice.looked == (f"${CONFIG_ENV} (unset)", f"{default} (absent)")
    assert choice.named == "the embedded default config"
