"""Layered configuration: the five layers, every old variable, invalid values.

Pure tests of :mod:`peercrypt.config`, then the real CLI (``config show``,
``config init``, ``node`` refusing to start) as subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt import config, config_sources, errors
from peercrypt.testing.nodes import (
    CliResult,
    NodeProcess,
    assert_sent,
    cli_env,
    run_cli,
    wait_until,
)


def _resolve(
    flags: dict[str, Any] | None = None,
    file: dict[str, Any] | None = None,
    dotenv: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
) -> config.Effective:
    return config.resolve(
        flags or {},
        config=file or {},
        config_path=Path("/etc/pc.toml"),
        dotenv=dotenv or {},
        dotenv_path=Path("/w/.env"),
        environ=environ or {},
    )


def test_every_old_variable_is_in_the_table() -> None:
    for name in config.OLD_TOOL_VARIABLES:
        assert name in config.VARIABLES, name
    for s in config.SETTINGS:
        assert s.env in config.OLD_TOOL_VARIABLES or s.env.startswith("PEERCRYPT_"), s.env


def test_each_layer_beats_the_one_below() -> None:
    layers: list[dict[str, Any]] = [
        {"file": {"gossip_interval": 1.5}},
        {"dotenv": {"GOSSIP_INTERVAL": "2.5"}},
        {"environ": {"GOSSIP_INTERVAL": "3.5"}},
        {"flags": {"gossip_interval": 4.5}},
    ]
    expected = [
        (1.5, "config file /etc/pc.toml"),
        (2.5, ".env /w/.env"),
        (3.5, "environment"),
        (4.5, "flag"),
    ]
    assert _resolve().sources["gossip_interval"] == "default"
    for top in range(len(layers)):
        kwargs: dict[str, Any] = {}
        for layer in layers[: top + 1]:
            kwargs.update(layer)
        eff = _resolve(**kwargs)
        assert (eff["gossip_interval"], eff.sources["gossip_interval"]) == expected[top]


def test_the_main_variable_beats_its_alias() -> None:
    eff = _resolve(
        environ={"MULTICAST_GROUP": "239.1.1.1:7000", "PEERCRYPT_MULTICAST_GROUP": "239.2.2.2:7"}
    )
    assert eff["multicast_group"] == "239.2.2.2:7"
    assert _resolve(environ={"MULTICAST_GROUP": "239.1.1.1:7000"})["multicast_group"] == (
        "239.1.1.1:7000"
    )


def _invalid(s: config.Setting) -> str:
    if s.kind == "int":
        return str(int(s.high) + 1) if s.high is not None else str(int(s.low or 0) - 1)
    if s.kind == "float":
        return "fast"
    if s.kind == "bool":
        return "maybe"
    return "warp-speed"


INVALID = [s for s in config.SETTINGS if s.kind in ("int", "float", "bool", "choice")]


@pytest.mark.parametrize("setting", INVALID, ids=[s.env for s in INVALID])
def test_an_invalid_variable_names_itself_its_value_and_the_range(
    setting: config.Setting,
) -> None:
    value = _invalid(setting)
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={setting.env: value})
    text = str(err.value)
    assert text.startswith(f"{setting.env}={value!r}: expected "), text
    assert setting.accepted() in text
    with pytest.raises(config.ConfigError, match=rf"\.env: {setting.env}="):
        _resolve(dotenv={setting.env: value})
    with pytest.raises(config.ConfigError, match=rf"pc\.toml: {setting.name}="):
        _resolve(file={setting.name: value})


FLOATS = [s for s in config.SETTINGS if s.kind == "float"]


@pytest.mark.parametrize("setting", FLOATS, ids=[s.env for s in FLOATS])
def test_a_number_setting_refuses_what_is_not_finite(setting: config.Setting) -> None:
    """``inf`` (and ``nan``) from a variable, a .env or a TOML float: refused
    in one line as the flag refuses them, whether or not the range has a high
    bound (``PEERCRYPT_PART_EXPIRY=inf`` was taken)."""
    for text in ("inf", "-inf", "nan", "Infinity"):
        with pytest.raises(config.ConfigError) as err:
            _resolve(environ={setting.env: text})
        assert str(err.value).startswith(f"{setting.env}={text!r}: expected "), err.value
        assert setting.accepted() in str(err.value)
    with pytest.raises(config.ConfigError, match=rf"pc\.toml: {setting.name}=inf: expected "):
        _resolve(file={setting.name: math.inf})  # TOML's `inf`


HOSTS = [s for s in config.SETTINGS if s.kind == "host"]


@pytest.mark.parametrize("setting", HOSTS, ids=[s.env for s in HOSTS])
def test_a_host_setting_refuses_blanks_and_control_characters(setting: config.Setting) -> None:
    """A host goes into this node's signed record, which other members show
    their users (and refuse as malformed with a control character in it):
    refused in one line from a variable, a .env or TOML; names and
    addresses pass."""
    for text in ("a\x1b[2Jb", "ho st", "\x07", "h\u202eost", "tab\there"):
        with pytest.raises(config.ConfigError) as err:
            _resolve(environ={setting.env: text})
        assert str(err.value).startswith(f"{setting.env}={text!r}: expected a host"), err.value
        with pytest.raises(config.ConfigError, match=rf"pc\.toml: {setting.name}="):
            _resolve(file={setting.name: text})
        with pytest.raises(config.ConfigError, match=rf"\.env: {setting.env}="):
            _resolve(dotenv={setting.env: text})
    for text in ("example.org", "::1", "10.0.0.1", "node-1.lan"):
        assert _resolve(environ={setting.env: text}).values[setting.name] == text
    # Empty where its help says what empty means; the address to bind, never.
    assert {s.name for s in HOSTS} == {"host", "advertise_host", "bootstrap_host"}
    if setting.empty_ok:
        assert _resolve(environ={setting.env: ""}).values[setting.name] == ""
        assert setting.accepted().endswith("; or empty")
    else:
        assert setting.name == "host"
        with pytest.raises(config.ConfigError) as err:
            _resolve(file={setting.name: ""})
        assert str(err.value) == f"/etc/pc.toml: host='': expected {setting.accepted()}"


def test_a_multicast_group_is_checked_where_it_is_set() -> None:
    """What the node takes as a group (core/fragments.py, parse_group) and
    nothing else, from a variable (or its older name), a .env or TOML: the
    line names where it was set, not the flag nobody gave."""
    s = config.BY_NAME["multicast_group"]
    for text in ("239.1.1.1", "239.1.1.1:0", "239.1.1.1:70000", "10.0.0.1:7480", "group:1"):
        for var in ("PEERCRYPT_MULTICAST_GROUP", "MULTICAST_GROUP"):
            with pytest.raises(config.ConfigError) as err:
                _resolve(environ={var: text})
            assert str(err.value) == f"{var}={text!r}: expected {s.accepted()}"
        with pytest.raises(config.ConfigError, match=rf"\.env: MULTICAST_GROUP='{text}'"):
            _resolve(dotenv={"MULTICAST_GROUP": text})
        with pytest.raises(config.ConfigError, match=rf"pc\.toml: multicast_group='{text}'"):
            _resolve(file={"multicast_group": text})
    assert _resolve(environ={s.env: " 239.1.1.1:7000 "})["multicast_group"] == "239.1.1.1:7000"
    assert _resolve(environ={s.env: " "}, file={"multicast_group": "239.1.1.1:1"})[s.name] == ""


def test_a_multicast_group_flag_is_checked_by_config_show_too(tmp_path: Path) -> None:
    """`config show --multicast-group 239.1.1.1` showed it, exit 0; only the
    node refused it: the flag is checked as the variable is."""
    shown = run_cli("config", "show", "--multicast-group", "239.1.1.1", data_dir=tmp_path / "d")
    assert shown.returncode == errors.USAGE, shown.stderr
    assert shown.stderr.splitlines() == [
        "peercrypt: error: config show: Invalid value for '--multicast-group': "
        "multicast group must be GROUP:PORT, got '239.1.1.1'"
    ], shown.stderr
    good = run_cli("config", "show", "--multicast-group", "239.1.1.1:7000", data_dir=tmp_path / "d")
    assert good.returncode == 0 and "239.1.1.1:7000" in good.stdout, good.stderr


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ("AIMD_WINDOW", "an integer in 1..1048576 KB"),
        ("GOSSIP_INTERVAL", "a number in 0.01..3600 s"),
        ("PEERCRYPT_PART_EXPIRY", "a number >= 1 s"),
    ],
)
def test_ranges_read_as_written(env: str, words: str) -> None:
    """Bounds as a user types them (1048576, not 1.04858e+06)."""
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={env: "abc"})
    assert str(err.value) == f"{env}='abc': expected {words}"


def test_a_secret_is_never_in_an_error() -> None:
    with pytest.raises(config.ConfigError) as err:
        _resolve(file={"network_key": 12345})
    assert "12345" not in str(err.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"AIMD_WINDOW": "32"}, (32, 32, 16384)),
        ({"AIMD_MIN_WINDOW": "8"}, (4096, 8, 16384)),
        ({"AIMD_MAX_WINDOW": "128"}, (32, 2, 128)),  # (not a fixed window of 128)
        ({"AIMD_WINDOW": "32", "AIMD_MIN_WINDOW": "8", "AIMD_MAX_WINDOW": "128"}, (32, 8, 128)),
        ({"AIMD_MIN_WINDOW": "20000"}, (20000, 20000, 20000)),
    ],
)
def test_missing_window_bounds_are_derived(
    given: dict[str, str], expected: tuple[int, ...]
) -> None:
    eff = _resolve(environ=given)
    got = (eff["aimd_window"], eff["aimd_min_window"], eff["aimd_max_window"])
    assert got == expected


def test_contradicting_windows_name_the_variables() -> None:
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={"AIMD_WINDOW": "32"}, file={"aimd_min_window": 64})
    text = str(err.value)
    assert "AIMD_MIN_WINDOW=64" in text and "AIMD_WINDOW=32" in text


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# comment\n\nexport DEFAULT_MODE=aimd\nGOSSIP_INTERVAL = '2.5'\n"
        'PEERCRYPT_HOST="127.0.0.1"\nMAX_RETRIES=5 # five\n'
    )
    assert config_sources.read_env_file(path) == {
        "DEFAULT_MODE": "aimd",
        "GOSSIP_INTERVAL": "2.5",
        "PEERCRYPT_HOST": "127.0.0.1",
        "MAX_RETRIES": "5",
    }
    path.write_text("GOSSIP_INTERVAL\n")
    with pytest.raises(config.ConfigError, match=r"\.env:1: expected KEY=VALUE"):
        config_sources.read_env_file(path)
    assert config_sources.read_env_file(tmp_path / "absent") == {}


def test_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("gosip_interval = 2\n")
    with pytest.raises(config.ConfigError, match="unknown setting 'gosip_interval'"):
        config.read_config_file(path, required=False)
    path.write_text("colour = 2\n")  # nothing close: the keys it takes
    with pytest.raises(config.ConfigError, match=r"unknown setting 'colour' \(known: .*, mode, "):
        config.read_config_file(path, required=False)
    path.write_text("gossip_interval = \n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.read_config_file(path, required=False)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.read_config_file(tmp_path / "none.toml", required=True)
    assert config.read_config_file(tmp_path / "none.toml", required=False) == {}


def test_the_commented_config_parses_and_sets_nothing() -> None:
    text = config.commented_config()
    assert tomllib.loads(text) == {}
    uncommented = "\n".join(
        line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line
    )
    data = tomllib.loads(uncommented)
    assert set(data) == set(config.BY_NAME)
    eff = _resolve(file=data)
    for s in config.SETTINGS:
        assert eff[s.name] == s.default, s.name


def test_direct_writes_is_on_unless_a_layer_turns_it_off() -> None:
    """``direct_writes`` (the writer's O_DIRECT): on by default; each layer
    may turn it off, and the one above turn it on again."""
    assert (_resolve()["direct_writes"], _resolve().sources["direct_writes"]) == (True, "default")
    var = "PEERCRYPT_DIRECT_WRITES"
    layers: list[tuple[dict[str, Any], str]] = [
        ({"file": {"direct_writes": False}}, "config file /etc/pc.toml"),
        ({"dotenv": {var: "off"}}, ".env /w/.env"),
        ({"environ": {var: "0"}}, "environment"),
        ({"flags": {"direct_writes": False}}, "flag"),
    ]
    for layer, source in layers:
        eff = _resolve(**layer)
        assert (eff["direct_writes"], eff.sources["direct_writes"]) == (False, source)
    eff = _resolve(file={"direct_writes": False}, environ={var: "yes"})
    assert (eff["direct_writes"], eff.sources["direct_writes"]) == (True, "environment")
    eff = _resolve(environ={var: "false"}, flags={"direct_writes": True})
    assert (eff["direct_writes"], eff.sources["direct_writes"]) == (True, "flag")
    with pytest.raises(config.ConfigError, match=f"{var}='sometimes'"):
        _resolve(environ={var: "sometimes"})


# -- the real CLI -----------------------------------------------------------------------


def _show(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli(
        "config", "show", "--json", *args, data_dir=tmp_path / "dd", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.describe()
    rows: dict[str, Any] = json.loads(result.stdout)
    return rows


def test_config_show_across_all_five_layers(tmp_path: Path) -> None:
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "config.toml").write_text(
        "max_retries = 5\nhealth_check_interval = 7.0\nparallel_threads = 6\nmode = 'qos'\n"
    )
    (tmp_path / ".env").write_text(
        "HEALTH_CHECK_INTERVAL=8\nPARALLEL_THREADS=7\nDEFAULT_MODE=aimd\n"
    )
    rows = _show(
        tmp_path, "--mode", "parallel", env={"PARALLEL_THREADS": "8", "DEFAULT_MODE": "normal"}
    )
    names = ("gossip_interval", "max_retries", "health_check_interval", "parallel_threads", "mode")
    got = {k: (rows[k]["value"], rows[k]["source"].split(" ")[0]) for k in names}
    assert got == {
        "gossip_interval": (5.0, "default"),
        "max_retries": (5, "config"),
        "health_check_interval": (8.0, ".env"),
        "parallel_threads": (8, "environment"),
        "mode": ("parallel", "flag"),
    }
    # --config FILE replaces DATA_DIR/config.toml.
    other = tmp_path / "other.toml"
    other.write_text("max_retries = 9\n")
    result = run_cli(
        "--config", str(other), "config", "show", "--json", data_dir=tmp_path / "dd", cwd=tmp_path
    )
    assert json.loads(result.stdout)["max_retries"] == {
        "value": 9,
        "source": f"config file {other}",
        "variable": "MAX_RETRIES",
    }


def test_config_show_takes_both_direct_writes_flags(tmp_path: Path) -> None:
    """``--no-direct-writes`` over a config file that leaves it on, and
    ``--direct-writes`` over a variable that turns it off."""
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "config.toml").write_text("direct_writes = true\n")
    assert _show(tmp_path)["direct_writes"]["source"].startswith("config file")
    off = _show(tmp_path, "--no-direct-writes")["direct_writes"]
    assert (off["value"], off["source"]) == (False, "flag")
    env = {"PEERCRYPT_DIRECT_WRITES": "false"}
    assert _show(tmp_path, env=env)["direct_writes"]["value"] is False
    on = _show(tmp_path, "--direct-writes", env=env)["direct_writes"]
    assert (on["value"], on["source"]) == (True, "flag")


def test_config_show_never_prints_the_key(tmp_path: Path, network_key: str) -> None:
    result = run_cli(
        "config",
        "show",
        data_dir=tmp_path / "dd",
        env={"PEERCRYPT_NETWORK_KEY": network_key},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.describe()
    assert network_key not in result.stdout + result.stderr
    assert "(set)" in result.stdout


def _assert_one_error(result: CliResult, code: int, *words: str) -> str:
    assert result.returncode == code, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error: "), result.describe()
    for word in words:
        assert word in lines[0], result.describe()
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEFAULT_MODE", "turbo"),
        ("GOSSIP_INTERVAL", "0"),
        ("DISABLE_GOSSIP", "maybe"),
        ("AIMD_WINDOW", "0"),
        ("AIMD_MIN_WINDOW", "x"),
        ("AIMD_MAX_WINDOW", "-3"),
        ("PARALLEL_THREADS", "65"),
        ("MAX_RETRIES", "101"),
        ("CONNECTION_TIMEOUT", "0.01"),
        ("HEALTH_CHECK_INTERVAL", "never"),
        ("PEERCRYPT_PORT", "70000"),
        ("PEERCRYPT_MULTICAST_TTL", "256"),
        ("PEERCRYPT_MULTICAST_GROUP", "239.1.1.1"),
        ("MULTICAST_GROUP", "239.1.1.1"),
    ],
)
def test_node_refuses_to_start_on_an_invalid_variable(
    tmp_path: Path, network_key: str, variable: str, value: str
) -> None:
    data_dir = tmp_path / "dd"
    result = run_cli(
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        data_dir=data_dir,
        env={variable: value, "PEERCRYPT_NETWORK_KEY": network_key},
        cwd=tmp_path,
        timeout=30,
    )
    setting = config.VARIABLES[variable]
    line = _assert_one_error(result, errors.USAGE, f"{variable}={value!r}", setting.accepted())
    assert setting.flag not in line  # (not given)
    assert not (data_dir / "control.json").exists()
    # `config show` refuses what the node refuses, in the same line.
    shown = run_cli("config", "show", data_dir=data_dir, env={variable: value}, cwd=tmp_path)
    assert _assert_one_error(shown, errors.USAGE) == line


def test_node_refuses_an_invalid_dotenv_and_config_file(tmp_path: Path, network_key: str) -> None:
    (tmp_path / ".env").write_text("AIMD_WINDOW=lots\n")
    args = ("node", "--host", "127.0.0.1", "--port", "0", "--network-key", network_key)
    result = run_cli(*args, data_dir=tmp_path / "dd", cwd=tmp_path, timeout=30)
    _assert_one_error(result, errors.USAGE, ".env: AIMD_WINDOW='lots'")
    (tmp_path / ".env").unlink()
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "config.toml").write_text("parallel_threads = 0\n")
    result = run_cli(*args, data_dir=tmp_path / "dd", cwd=tmp_path, timeout=30)
    _assert_one_error(result, errors.USAGE, "parallel_threads=0")


def test_a_node_cap_too_low_for_any_send_is_refused_naming_where_it_was_set(
    tmp_path: Path, network_key: str
) -> None:
    """--max-rate (or its variable, or the config file) below the lowest
    cap that moves a 4 KiB chunk within half the receiver's idle limit:
    every send would be dropped as idle, so the node does not start."""
    args = ("node", "--host", "127.0.0.1", "--port", "0", "--network-key", network_key)
    data_dir = tmp_path / "dd"
    result = run_cli(*args, "--max-rate", "100", data_dir=data_dir, cwd=tmp_path, timeout=30)
    line = _assert_one_error(result, errors.USAGE, "--max-rate 100 is too low", "use 274 or more")
    assert "idle limit" in line
    env = {"PEERCRYPT_MAX_RATE": "273"}
    result = run_cli(*args, data_dir=data_dir, env=env, cwd=tmp_path, timeout=30)
    _assert_one_error(result, errors.USAGE, "PEERCRYPT_MAX_RATE 273 is too low")
    data_dir.mkdir(exist_ok=True)
    (data_dir / "config.toml").write_text("max_rate = 1\n")
    result = run_cli(*args, data_dir=data_dir, cwd=tmp_path, timeout=30)
    _assert_one_error(result, errors.USAGE, "max_rate (config file ", "1 is too low")
    assert not (data_dir / "control.json").exists()


def test_status_shows_the_settings_the_running_node_took(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """The old tool's `status` showed the mode and configuration in effect:
    a node started with the old variables says them (`config show` tells
    what a node would start with here, not what the running one took)."""
    env = {"MAX_RETRIES": "5", "CONNECTION_TIMEOUT": "4.5", "PARALLEL_THREADS": "8"}
    node = node_factory(env={**env, "DEFAULT_MODE": "aimd"})
    facts = wait_until(lambda: _facts_with(node, "parallel_threads"), 30, "the facts")
    assert {k: facts[k] for k in ("mode", "max_retries", "connection_timeout")} == {
        "mode": "aimd", "max_retries": 5, "connection_timeout": 4.5
    }  # fmt: skip
    assert facts["parallel_threads"] == 8
    text = node.cli("status").stdout
    assert "  max_retries: 5\n" in text and "  parallel_threads: 8\n" in text, text


def _facts_with(node: NodeProcess, key: str) -> dict[str, Any] | None:
    shown = node.cli("status", "--json")
    facts: dict[str, Any] = json.loads(shown.stdout) if shown.returncode == 0 else {}
    return facts if key in facts else None


def test_config_init_writes_a_file_that_config_show_reads(tmp_path: Path) -> None:
    data_dir = tmp_path / "dd"
    result = run_cli("config", "init", data_dir=data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    path = data_dir / "config.toml"
    text = path.read_text()
    for s in config.SETTINGS:
        assert f"# {s.name} = " in text
    again = run_cli("config", "init", data_dir=data_dir, cwd=tmp_path)
    _assert_one_error(again, errors.USAGE, "exists")
    path.write_text(text.replace("# max_retries = 3", "max_retries = 4"))
    assert _show(tmp_path)["max_retries"]["value"] == 4


def test_config_init_writes_no_file_through_a_link_nor_makes_a_path_it_was_given(
    tmp_path: Path,
) -> None:
    """A dangling link is a file there (writing would have made its target),
    and a path given whose folder is missing is an error, not a tree made
    (a typo made folders); the data dir's own file still makes its dir."""
    link, away = tmp_path / "config.toml", tmp_path / "elsewhere" / "target.toml"
    (tmp_path / "elsewhere").mkdir()
    link.symlink_to(away)
    result = run_cli("config", "init", str(link), data_dir=tmp_path / "dd", cwd=tmp_path)
    _assert_one_error(result, errors.USAGE, f"{link} exists", "--force")
    assert not away.exists() and link.is_symlink()
    forced = run_cli("config", "init", "--force", str(link), data_dir=tmp_path / "dd", cwd=tmp_path)
    assert forced.returncode == 0, forced.describe()  # as asked: through the link
    assert "# max_retries = 3" in away.read_text()
    typo = tmp_path / "no-such-dir" / "deeper" / "config.toml"
    missing = run_cli("config", "init", str(typo), data_dir=tmp_path / "dd", cwd=tmp_path)
    _assert_one_error(missing, errors.USAGE, f"cannot write {typo}", "No such file or directory")
    assert not (tmp_path / "no-such-dir").exists()
    fresh = tmp_path / "new-data-dir"
    made = run_cli("config", "init", data_dir=fresh, cwd=tmp_path)
    assert made.returncode == 0, made.describe()
    assert made.stdout == f"wrote {fresh / 'config.toml'}\n"


def test_the_help_names_the_variables_of_the_table() -> None:
    from peercrypt.cli.app import main

    names = {p.name: p.help or "" for p in main.params}
    assert f"[env {config_sources.DATA_DIR_ENV}]" in names["data_dir"]
    assert f"[env {config_sources.CONFIG_ENV}]" in names["config_file"]


def test_config_show_takes_the_network_key_file_as_the_node_does(tmp_path: Path) -> None:
    """Shown as set, from the flag, never its value (it said "not set")."""
    key = tmp_path / "key.txt"
    key.write_text("s3cr3t-network-key-for-the-test\n")
    key.chmod(0o600)
    rows = _show(tmp_path, "--network-key-file", str(key))
    assert rows["network_key"] == {
        "value": "(set)",
        "source": "flag",
        "variable": "PEERCRYPT_NETWORK_KEY",
    }
    assert _show(tmp_path)["network_key"]["value"] == "(not set)"
    shown = run_cli("config", "show", "--network-key-file", str(key), data_dir=tmp_path / "dd")
    assert shown.returncode == 0 and "s3cr3t" not in shown.stdout + shown.stderr
    assert [line.split()[:3] for line in shown.stdout.splitlines() if "network_key" in line] == [
        ["network_key", "(set)", "flag"]
    ], shown.stdout


def test_a_network_key_file_may_be_a_pipe(tmp_path: Path) -> None:
    """`--network-key-file <(pass show key)` names a pipe: taken, as a
    file is (a device is refused: it is no regular file, and its mode says
    nothing of the key)."""
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo, 0o600)

    def write() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # (waits for the command to open it)
        with os.fdopen(fd, "w") as f:
            f.write("s3cr3t-network-key-for-the-test\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        rows = _show(tmp_path, "--network-key-file", str(fifo))
    finally:
        if writer.is_alive():  # (the command never opened it: let the writer go)
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)
    assert (rows["network_key"]["value"], rows["network_key"]["source"]) == ("(set)", "flag")


def test_keygen_writes_an_owner_only_key_that_nodes_take_and_never_replaces_one(
    tmp_path: Path,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """`keygen > key` made a file others could read, which the node then
    refused: `keygen -o` writes it owner-only, as --network-key-file wants."""
    key = tmp_path / "net.key"
    made = run_cli("keygen", "-o", str(key), data_dir=tmp_path / "dd")
    assert made.returncode == 0 and made.stdout == "", made.describe()
    assert made.stderr_lines == [f"network key written to {key} (owner-only)"]
    assert key.stat().st_mode & 0o777 == 0o600
    text = key.read_text()
    assert text.startswith("pcn1.") and text.endswith("\n") and text.count("\n") == 1
    again = run_cli("keygen", "-o", str(key), data_dir=tmp_path / "dd")
    assert again.returncode == errors.USAGE
    assert again.stderr_lines == [f"peercrypt: error: {key} exists: not replaced"]
    assert key.read_text() == text  # the key in use is kept
    nowhere = run_cli("keygen", "-o", str(tmp_path / "no" / "such" / "k"), data_dir=tmp_path)
    assert nowhere.returncode == errors.USAGE and len(nowhere.stderr_lines) == 1
    assert nowhere.stderr_lines[0].startswith("peercrypt: error: cannot create ")
    # A disk that takes no byte (a file size limit of 0: EFBIG): one line,
    # and no empty file left behind that the next try would refuse.
    full = tmp_path / "full.key"
    argv = [sys.executable, "-m", "peercrypt", "--data-dir", str(tmp_path / "dd")]
    limited = subprocess.run(
        [*argv, "keygen", "-o", str(full)],
        capture_output=True, text=True, timeout=60, env=cli_env(None),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
    )  # fmt: skip
    assert limited.returncode == errors.USAGE, limited
    assert limited.stderr.splitlines() == [
        f"peercrypt: error: cannot write {full}: File too large"
    ], limited.stderr
    assert not full.exists()
    # Two nodes of that key: one network.
    receiver = node_factory("--network-key-file", str(key), network_key=None)
    sender = node_factory("--network-key-file", str(key), network_key=None)
    path = make_file(100_000)
    assert_sent(receiver, sender.send_to(path, receiver), path)


# -- what the layers hold that no setting reads -----------------------------------------


@pytest.mark.parametrize(
    ("name", "bare_too", "expected"),
    [
        ("PEERCRYPT_GOSIP_INTERVAL", False, "did you mean GOSSIP_INTERVAL?"),
        ("PEERCRYPT_GOSSIP_INTERVAL", False, "did you mean GOSSIP_INTERVAL?"),
        ("PEERCRYPT_DATADIR", False, "did you mean PEERCRYPT_DATA_DIR?"),
        ("PEERCRYPT_ALOW", True, "did you mean PEERCRYPT_ALLOW?"),
        ("PEERCRYPT_MODE", False, "did you mean DEFAULT_MODE?"),
        ("PEERCRYPT_FOO", False, ""),
        ("GOSIP_INTERVAL", True, "did you mean GOSSIP_INTERVAL?"),
        ("PARALLEL_THREAD", True, "did you mean PARALLEL_THREADS?"),
        ("DISABLE_GOSIPP", True, "did you mean DISABLE_GOSSIP?"),
    ],
)
def test_an_unknown_variable_of_ours_is_named_with_the_closest_known_one(
    name: str, bare_too: bool, expected: str
) -> None:
    hint = f"; {expected}" if expected else ""
    assert config.unknown_variable(name, bare_too=bare_too) == (
        f"unknown variable {name} (ignored){hint}"
    )


@pytest.mark.parametrize(
    ("name", "bare_too"),
    [
        *[(v, True) for v in config.VARIABLES],
        *[(v, True) for v in config.OTHER_VARIABLES],  # the data dir's, the container's
        ("GOSIP_INTERVAL", False),  # a bare name in the environment: anybody's
        ("DEFAULT_MODEL", True),  # a word added: another program's
        ("MAX_RETRIES_TOTAL", True),
        ("COMPOSE_PROJECT_NAME", True),
        ("HOSTNAME", True),
        ("TIMEOUT", True),
        ("peercrypt_gossip_interval", True),
    ],
)
def test_known_and_other_programs_variables_are_no_mistake(name: str, bare_too: bool) -> None:
    assert config.unknown_variable(name, bare_too=bare_too) is None


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("PEERCRYPT-NETWORK-KEY", "PEERCRYPT_NETWORK_KEY"),
        ("gossip-interval", "GOSSIP_INTERVAL"),
        ("DEFAULT-MODE", "DEFAULT_MODE"),
    ],
)
def test_a_variable_spelled_with_dashes_is_named_with_ours(name: str, meant: str) -> None:
    """A .env's ``PEERCRYPT-NETWORK-KEY=...`` was ignored without a word
    (the node then had no key, or another); a name that is ours once its
    dashes are underscores is warned of, in the environment too."""
    for bare_too in (True, False):
        assert config.unknown_variable(name, bare_too=bare_too) == (
            f"unknown variable {name} (ignored: names take _, not -); did you mean {meant}?"
        )
    assert config.unknown_variable("SOME-OTHER-TOOL", bare_too=True) is None


def _env_warnings(result: CliResult) -> list[str]:
    return [line for line in result.stderr_lines if line.startswith("peercrypt: warning: ")]


def test_unknown_variables_are_warned_of_once_on_stderr_naming_where(tmp_path: Path) -> None:
    """A typo of ours in .env (file and line) or the environment: one
    warning line each on stderr, once per command (the data dir given after
    the command resolves the layers again), and ``--json`` stays JSON. The
    .env's other programs' variables are left alone."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "COMPOSE_PROJECT_NAME=cluster\nPEERCRYPT_GOSIP_INTERVAL=2\nDEFAULT_MODE=aimd\n"
        "# a comment\nGOSIP_INTERVAL=3\nDEFAULT_MODEL=gpt\n"
    )
    env = {"PEERCRYPT_WINDOWS": "8", "PEERCRYPT_PORT": "7411", "GOSIP_INTERVAL": "4"}
    result = run_cli(
        "config", "show", "--json", "--data-dir", tmp_path / "dd", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.describe()
    rows = json.loads(result.stdout)
    assert rows["gossip_interval"]["value"] == 5.0 and rows["mode"]["value"] == "aimd"
    assert rows["port"]["value"] == 7411
    assert result.stderr_lines == [
        f"peercrypt: warning: {dotenv}:2: unknown variable PEERCRYPT_GOSIP_INTERVAL "
        "(ignored); did you mean GOSSIP_INTERVAL?",
        f"peercrypt: warning: {dotenv}:5: unknown variable GOSIP_INTERVAL (ignored); "
        "did you mean GOSSIP_INTERVAL?",
        "peercrypt: warning: environment: unknown variable PEERCRYPT_WINDOWS (ignored); "
        "did you mean PEERCRYPT_WINDOW?",
    ]
    # A command that reads no setting says it too; one that fails still says it first.
    status = run_cli("status", data_dir=tmp_path / "dd", env=env, cwd=tmp_path)
    assert status.returncode == errors.FAILED
    assert _env_warnings(status) == result.stderr_lines
    dotenv.write_text("DEFAULT_MODE=aimd\nCOMPOSE_PROJECT_NAME=cluster\n")
    clean = run_cli("config", "show", "--json", data_dir=tmp_path / "dd", cwd=tmp_path)
    assert clean.returncode == 0 and clean.stderr == "", clean.describe()


def test_a_shell_warns_once_not_at_every_line(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    node = node_factory()
    (tmp_path / ".env").write_text("PEERCRYPT_MAX_OUTGONG=4\n")
    proc = subprocess.run(
        [sys.executable, "-m", "peercrypt", "--data-dir", str(node.data_dir), "shell"],
        input="config show --json\nconfig show --json\n",
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env=cli_env({"PEERCRYPT_FOO": "1"}),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["max_outgoing"]["value"] for line in proc.stdout.splitlines()] == [
        16,
        16,
    ]
    assert proc.stderr.splitlines() == [
        f"peercrypt: warning: {tmp_path / '.env'}:1: unknown variable PEERCRYPT_MAX_OUTGONG "
        "(ignored); did you mean PEERCRYPT_MAX_OUTGOING?",
        "peercrypt: warning: environment: unknown variable PEERCRYPT_FOO (ignored)",
    ]


def test_a_dotenv_holding_the_key_that_others_may_read_is_warned_of(
    tmp_path: Path, network_key: str
) -> None:
    """As a key file is refused (mode & 077), but warned of: the .env is
    docker compose's too, made with the umask. Mode bits, not access: the
    tests run as root, who reads any file."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"DEFAULT_MODE=qos\nPEERCRYPT_NETWORK_KEY={network_key}\n")
    for mode in (0o644, 0o640, 0o604):
        dotenv.chmod(mode)
        result = run_cli("config", "show", "--json", data_dir=tmp_path / "dd", cwd=tmp_path)
        assert result.returncode == 0, result.describe()
        assert json.loads(result.stdout)["network_key"]["value"] == "(set)"
        assert result.stderr_lines == [
            f"peercrypt: warning: {dotenv} holds PEERCRYPT_NETWORK_KEY and is accessible by "
            f"other users (mode {mode:o}); run: chmod 600 {dotenv}"
        ]
        assert network_key not in result.stderr
    dotenv.chmod(0o600)
    private = run_cli("config", "show", data_dir=tmp_path / "dd", cwd=tmp_path)
    assert private.returncode == 0 and private.stderr == "", private.describe()
    dotenv.write_text("DEFAULT_MODE=qos\nPEERCRYPT_NETWORK_KEY=\n")  # no key in it
    dotenv.chmod(0o644)
    empty = run_cli("config", "show", data_dir=tmp_path / "dd", cwd=tmp_path)
    assert empty.returncode == 0 and empty.stderr == "", empty.describe()


@pytest.mark.parametrize(
    ("line", "meant"),
    [
        ('DEFAULT_MODE = "aimd"', "mode"),  # the .env's name for it
        ('modee = "aimd"', "mode"),
        ('[node]\nDEFAUT_MODE = "aimd"', "mode"),
        ("max-retries = 4", "max_retries"),
        ("GOSIP_INTERVAL = 2.0", "gossip_interval"),
        ("PEERCRYPT_MAX_OUTGONG = 4", "max_outgoing"),
    ],
)
def test_a_config_file_key_with_a_slip_or_an_old_name_says_which_key_it_means(
    tmp_path: Path, line: str, meant: str
) -> None:
    data_dir = tmp_path / "dd"
    data_dir.mkdir()
    path = data_dir / "config.toml"
    path.write_text(line + "\n")
    key = line.split("\n")[-1].split(" = ")[0]
    result = run_cli("config", "show", data_dir=data_dir, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr_lines) == (
        errors.USAGE,
        "",
        [f"peercrypt: error: config file {path}: unknown setting {key!r}; did you mean {meant!r}?"],
    ), result.describe()


def test_a_config_file_holding_the_key_that_others_may_read_is_warned_of(
    tmp_path: Path, network_key: str
) -> None:
    """As a .env is: one warning line naming the file (never the key), from
    each command that reads the file for a node's settings; and `config
    init` writes the file 0600, its `# network_key = ""` ready to fill."""
    data_dir = tmp_path / "dd"
    init = run_cli("config", "init", data_dir=data_dir, cwd=tmp_path)
    assert init.returncode == 0, init.describe()
    path = data_dir / "config.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text(f'mode = "qos"\n[node]\nnetwork_key = "{network_key}"\n')
    warning = (
        f"peercrypt: warning: {path} holds network_key and is accessible by other users "
        f"(mode 644); run: chmod 600 {path}"
    )
    path.chmod(0o644)
    show = run_cli("config", "show", "--json", data_dir=data_dir, cwd=tmp_path)
    assert show.returncode == 0, show.describe()
    assert json.loads(show.stdout)["network_key"]["value"] == "(set)"
    assert show.stderr_lines == [warning]
    assert network_key not in show.stderr
    with NodeProcess(data_dir, host="127.0.0.1") as node:  # its key: the file's
        assert node.log_text().splitlines()[0] == warning, node.log_tail()
        node.send_signal()
        assert node.stop() == 0, node.log_tail()
    path.chmod(0o600)
    private = run_cli("config", "show", data_dir=data_dir, cwd=tmp_path)
    assert private.returncode == 0 and private.stderr == "", private.describe()
    path.write_text('mode = "qos"\n# network_key = ""\n')  # no key in it
    path.chmod(0o644)
    empty = run_cli("config", "show", data_dir=data_dir, cwd=tmp_path)
    assert empty.returncode == 0 and empty.stderr == "", empty.describe()
    forced = run_cli("config", "init", "--force", data_dir=data_dir, cwd=tmp_path)
    assert forced.returncode == 0, forced.describe()
    assert path.stat().st_mode & 0o777 == 0o600


# -- fingerprints, and flags that undo the layers below ---------------------------------

FINGERPRINT = "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4567"


def test_an_allow_list_is_checked_with_the_settings_naming_where(tmp_path: Path) -> None:
    """Not a fingerprint in --allow (or --attach-allow), its variable, the
    .env or the config file: one line naming the setting, exit 2, as every
    other invalid setting (the node refused it later, without its name)."""
    data_dir = tmp_path / "dd"
    flag = run_cli("config", "show", "--allow", "abc", data_dir=data_dir, cwd=tmp_path)
    _assert_one_error(
        flag, errors.USAGE, "config show: Invalid value for '--allow': not a PeerCrypt "
        "fingerprint: 'abc'"
    )  # fmt: skip
    both = run_cli("node", "--attach-allow", "xyz", "--open", data_dir=data_dir, cwd=tmp_path)
    _assert_one_error(both, errors.USAGE, "Invalid value for '--attach-allow'", "'xyz'")
    env = run_cli(
        "config", "show", data_dir=data_dir, cwd=tmp_path,
        env={"PEERCRYPT_ALLOW": f"{FINGERPRINT},abc"},
    )  # fmt: skip
    assert _assert_one_error(env, errors.USAGE) == (
        f"peercrypt: error: PEERCRYPT_ALLOW='{FINGERPRINT},abc': not a PeerCrypt fingerprint: 'abc'"
    )
    (tmp_path / ".env").write_text("PEERCRYPT_ATTACH_ALLOW=abc\n")
    dotenv = run_cli("node", "--open", "--port", "0", data_dir=data_dir, cwd=tmp_path)
    _assert_one_error(dotenv, errors.USAGE, f"{tmp_path / '.env'}: PEERCRYPT_ATTACH_ALLOW='abc'")
    (tmp_path / ".env").unlink()
    data_dir.mkdir()
    (data_dir / "config.toml").write_text('allow = ["abc"]\n')
    file = run_cli("config", "show", data_dir=data_dir, cwd=tmp_path)
    _assert_one_error(file, errors.USAGE, "config.toml: allow=['abc']: not a PeerCrypt")
    assert not (data_dir / "control.json").exists()
    # Any case, with or without dashes: shown as `peercrypt status` shows it.
    (data_dir / "config.toml").write_text(f'allow = ["{FINGERPRINT.replace("-", "").upper()}"]\n')
    rows = _show(tmp_path, "--attach-allow", FINGERPRINT.upper())
    assert rows["allow"]["value"] == [FINGERPRINT]
    assert rows["attach_allow"] == {
        "value": [FINGERPRINT], "source": "flag", "variable": "PEERCRYPT_ATTACH_ALLOW"
    }  # fmt: skip


def test_every_yes_or_no_setting_has_a_flag_each_way() -> None:
    """A flag undoes what a lower layer turned on (or off): each boolean
    setting has both, and the old spellings (`--no-gossip`, `--open`) stay."""
    import click

    from peercrypt.cli.node import NODE_OPTIONS, node

    params = {p.name: p for p in node.params if isinstance(p, click.Option)}
    for s in config.SETTINGS:
        if s.kind != "bool":
            continue
        param = params[NODE_OPTIONS[s.name]]
        assert param.secondary_opts, s.name
        assert "/".join(param.opts + param.secondary_opts) == s.flag
    old = {"disable_gossip": "--no-gossip", "open": "--open", "no_stats": "--no-stats"}
    for name, spelled in old.items():
        assert params[NODE_OPTIONS[name]].opts == [spelled]


@pytest.mark.parametrize(
    ("line", "flag", "name", "value"),
    [
        ("DISABLE_GOSSIP=true", "--gossip", "disable_gossip", False),
        ("DISABLE_GOSSIP=false", "--no-gossip", "disable_gossip", True),
        ("PEERCRYPT_NO_STATS=yes", "--stats", "no_stats", False),
        ("PEERCRYPT_NO_LOCAL_IPC=1", "--local-ipc", "no_local_ipc", False),
        ("PEERCRYPT_SHM_RING=on", "--no-shm-ring", "shm_ring", False),
        ("PEERCRYPT_OPEN=true", "--no-open", "open", False),
    ],
)
def test_a_flag_wins_over_the_dotenv_either_way(
    tmp_path: Path, line: str, flag: str, name: str, value: bool
) -> None:
    (tmp_path / ".env").write_text(line + "\n")
    below = _show(tmp_path)[name]
    assert (below["value"], below["source"]) == (not value, f".env {tmp_path / '.env'}")
    assert _show(tmp_path, flag)[name] == {
        "value": value, "source": "flag", "variable": config.BY_NAME[name].env
    }  # fmt: skip
    text = run_cli("config", "show", flag, data_dir=tmp_path / "dd", cwd=tmp_path)
    row = next(r for r in text.stdout.splitlines() if r.startswith(f"{name} "))
    assert row.split()[1:3] == [str(value).lower(), "flag"]


def test_send_no_open_undoes_an_open_environment(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A temporary node's `--no-open` over PEERCRYPT_OPEN=true: it joins the
    receiver's network with the key of the environment (it said "--open and
    a network key exclude each other")."""
    receiver = node_factory()
    path = make_file(50_000)
    env = {"PEERCRYPT_OPEN": "true", "PEERCRYPT_NETWORK_KEY": network_key}
    args = ("send", path, receiver.host, str(receiver.port), "--json")
    refused = run_cli(*args, data_dir=tmp_path / "t1", env=env)
    _assert_one_error(
        refused, errors.USAGE, "--open and a network key exclude each other", "--no-open"
    )
    sent = run_cli(*args, "--no-open", data_dir=tmp_path / "t2", env=env)
    assert sent.returncode == 0, sent.describe()
    assert_sent(receiver, (sent.returncode, json.loads(sent.stdout)), path)


def test_a_list_option_takes_commas_as_its_variable_and_empty_undoes_it(tmp_path: Path) -> None:
    """`--allow A,B` is what PEERCRYPT_ALLOW=A,B and `config show` say (it was
    refused as one fingerprint), and `--allow ""` the empty list: it undoes an
    allow-list of a lower layer, as the yes/no flags do theirs (it was refused
    as "not a fingerprint: ''"). So for `--attach-allow` and `--remote-actor`."""
    other = "2345-67ab-cdef-ghij-klmn-opqr-stuv-wxyz"
    env = {"PEERCRYPT_ALLOW": FINGERPRINT, "PEERCRYPT_REMOTE_ACTORS": "health"}
    rows = _show(tmp_path, "--allow", "", "--remote-actor", "", env=env)
    assert rows["allow"] == {"value": [], "source": "flag", "variable": "PEERCRYPT_ALLOW"}
    assert rows["remote_actors"]["value"] == []
    rows = _show(
        tmp_path, "--allow", f"{FINGERPRINT},{other.upper()}", "--allow", FINGERPRINT,
        "--attach-allow", other, "--remote-actor", "receiver,sender",
    )  # fmt: skip
    assert rows["allow"]["value"] == [FINGERPRINT, other]
    assert rows["attach_allow"]["value"] == [other]
    assert rows["remote_actors"]["value"] == ["receiver", "sender"]
    bad = run_cli(
        "config", "show", "--allow", f"{FINGERPRINT},abc", data_dir=tmp_path / "dd", cwd=tmp_path
    )
    _assert_one_error(
        bad, errors.USAGE, "config show: Invalid value for '--allow': not a PeerCrypt "
        "fingerprint: 'abc'"
    )  # fmt: skip


def test_allow_empty_on_the_command_line_admits_every_member(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A real node whose environment has an allow-list naming someone else
    refuses the sender (exit 4); with `--allow ""` it admits it, and with
    `--allow OTHER,SENDER` too."""
    sender = node_factory()
    path = make_file(20_000)
    env = {"PEERCRYPT_ALLOW": FINGERPRINT}
    listed = node_factory(env=env)
    code, refused = sender.send_to(path, listed)
    assert (code, refused["code"]) == (errors.NOT_ADMITTED, "not-admitted"), refused
    listed.stop()
    for allow in ("", f"{FINGERPRINT},{sender.facts['fingerprint']}"):
        receiver = node_factory("--allow", allow, env=env)
        assert_sent(receiver, sender.send_to(path, receiver), path)
        receiver.stop()
