"""Config: every kind of mistake is named by file, key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from _amsha_support import make_config

from amsha import ExecutionSession, load_config
from amsha.errors import ConfigError, UnknownBackendError


def _error(config: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        ExecutionSession(config)  # type: ignore[arg-type]
    return info.value


def test_defaults_are_a_valid_config() -> None:
    config, _ = load_config({})
    assert config.provider.name == "scripted"
    assert config.orchestrator.name == "direct"
    assert config.state.name == "memory"


def test_unknown_top_level_key_is_named() -> None:
    err = _error({"provdier": {"name": "scripted"}})
    assert err.problems == [("provdier", "unknown key")]


def test_wrong_type_names_key_and_value() -> None:
    err = _error(make_config(retry={"max_retries": "many"}))
    ((key, msg),) = err.problems
    assert key == "retry.max_retries"
    assert "integer" in msg and "'many'" in msg


def test_missing_required_key() -> None:
    config = make_config()
    del config["tasks"]["write"]["description"]
    assert ("tasks.write.description", "required key is missing") in _error(config).problems


def test_dangling_references_are_all_reported() -> None:
    config = make_config()
    config["tasks"]["write"]["agent"] = "editor"
    config["tasks"]["write"]["context"] = ["nope"]
    config["pipeline"] = ["research", "publish"]
    keys = {k for k, _ in _error(config).problems}
    assert keys == {"tasks.write.agent", "tasks.write.context[0]", "pipeline[1]"}


def test_context_must_come_before() -> None:
    config = make_config()
    config["tasks"]["research"]["context"] = ["write"]
    assert any(k == "tasks.research.context[0]" and "before" in m for k, m in _error(config).problems)


def test_backend_options_are_validated_with_their_key_path() -> None:
    err = _error(make_config(provider_options={"token_delay_s": "slow"}))
    assert err.problems[0][0] == "provider.options.token_delay_s"
    err = _error(make_config(provider_options={"tokne_delay_s": 1}))
    assert err.problems[0] == ("provider.options.tokne_delay_s", "unknown key")


def test_unknown_backend_lists_installed_names_and_hint() -> None:
    with pytest.raises(UnknownBackendError) as info:
        ExecutionSession(make_config(state={"name": "sqlite"}))
    text = str(info.value)
    assert "state.name" in text and "'sqlite'" in text
    assert "memory" in text and "file" in text
    assert "pip install amsha-state-sqlite" in text


def test_unknown_orchestrator_shorthand() -> None:
    with pytest.raises(UnknownBackendError, match="crewai"):
        ExecutionSession(make_config(orchestrator="crewai"))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_text("provider:\n  name: scripted\n  model: [unclosed\n")
    err = _error(str(path))
    assert str(path) in str(err) and "line" in str(err)


def test_toml_config_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "amsha.toml"
    path.write_text('[provider]\nname = "scripted"\nmodel = "m"\n[retry]\nmax_retries = 1\n')
    config, base = load_config(path)
    assert config.provider.model == "m" and config.retry.max_retries == 1 and base == tmp_path
    path.write_text("[provider\n")
    assert "invalid TOML" in str(_error(str(path)))


def test_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    assert "not found" in str(_error(str(tmp_path / "nope.yaml")))
    other = tmp_path / "amsha.ini"
    other.write_text("x")
    assert "unsupported config file type" in str(_error(str(other)))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_text("- a\n- b\n")
    assert "mapping" in str(_error(str(path)))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_text("retry:\n  max_retries: -1\n")
    err = _error(str(path))
    assert err.source == str(path)
    assert str(err).startswith(str(path))
    assert err.problems[0][0] == "retry.max_retries"


def test_environment_overrides() -> None:
    env = {"AMSHA__PROVIDER__MODEL": "other-model", "AMSHA__RETRY__MAX_RETRIES": "5", "AMSHA__STATE": "file"}
    config, _ = load_config(make_config(), environ=env)
    assert config.provider.model == "other-model"
    assert config.retry.max_retries == 5
    assert config.state.name == "file"


def test_environment_override_errors_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, environ={"AMSHA__RETRY__MAX_RETRIES": "lots"})
    assert info.value.problems[0][0] == "retry.max_retries"


def test_crewai_style_registry_files(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        "researcher:\n  role: R\n  goal: G {topic}\n  backstory: B\n  verbose: true\n  allow_delegation: false\n"
    )
    (tmp_path / "tasks.yaml").write_text("research:\n  description: D\n  expected_output: E\n  agent: researcher\n")
    (tmp_path / "amsha.yaml").write_text("agents: agents.yaml\ntasks: tasks.yaml\n")
    config, _ = load_config(tmp_path / "amsha.yaml")
    assert config.agents["researcher"].options == {"verbose": True, "allow_delegation": False}
    assert config.tasks["research"].agent == "researcher"


def test_named_llms_inherit_from_provider() -> None:
    config = make_config(llms={"fast": {"model": "tiny"}, "echo": "echo-model"})
    config["agents"]["writer"]["llm"] = "fast"
    session = ExecutionSession(config)
    try:
        fast = session.llm("fast")
        assert fast.model == "tiny" and fast.provider_name == "scripted"
        assert session.llm("echo").model == "echo-model"
        assert session.llm().model == "scripted-1"
    finally:
        session.close()


def test_unknown_llm_reference() -> None:
    config = make_config()
    config["agents"]["writer"]["llm"] = "missing"
    assert _error(config).problems[0][0] == "agents.writer.llm"


def test_tools_need_import_paths() -> None:
    config = make_config(tools={"search": "no_colon"})
    assert _error(config).problems[0][0] == "tools.search"
