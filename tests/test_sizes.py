"""Human sizes and rates (peercrypt/sizes.py) wherever a user gives a byte
count or a byte rate: the parser (property-tested), the click options and
arguments (one line, exit 2, naming the option, the value and the range in
human units), the configuration layers, and a real node taking a variable
and a config key with a suffix (its ``status --json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt import config, errors
from peercrypt.cli.app import main
from peercrypt.cli.runner import execute
from peercrypt.client import ControlClient
from peercrypt.core.modes import MAX_RATE
from peercrypt.sizes import accepted, checked, human, parse_size, readable
from peercrypt.testing.nodes import NodeProcess, run_cli, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import SendRequest, SendResult, SettingReply, SettingRequest

BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SUFFIXES = {
    **{"": 1, "B": 1},
    **{p + tail: n for p, n in BINARY.items() for tail in ("", "i", "iB")},
    **{p.lower() + tail: n for p, n in BINARY.items() for tail in ("", "i", "iB", "IB")},
    **{p + "B": 1000 ** (i + 1) for i, p in enumerate(BINARY)},
    **{p.lower() + "B": 1000 ** (i + 1) for i, p in enumerate(BINARY)},
}


# -- the parser ---------------------------------------------------------------------------


@given(st.integers(0, 10**12), st.sampled_from(sorted(SUFFIXES)), st.sampled_from(["", " "]))
def test_a_whole_number_with_any_suffix_parses_to_its_bytes(n: int, unit: str, gap: str) -> None:
    assert parse_size(f"{n}{gap}{unit}") == n * SUFFIXES[unit]
    assert parse_size(f"{n}{gap}{unit}/s", rate=True) == n * SUFFIXES[unit]


@given(
    st.integers(0, 10**9), st.integers(0, 999), st.sampled_from(sorted(set(SUFFIXES) - {"", "B"}))
)
def test_a_fraction_with_a_unit_is_rounded_down_to_a_whole_byte(
    whole: int, thousandths: int, unit: str
) -> None:
    text = f"{whole}.{thousandths:03d}{unit}"
    assert parse_size(text) == (whole * 1000 + thousandths) * SUFFIXES[unit] // 1000


@given(st.integers(0, 1 << 50), st.booleans())
def test_what_human_prints_reads_back(n: int, rate: bool) -> None:
    assert parse_size(human(n, rate=rate), rate=rate) == n


@given(st.integers(1, 10**12))
def test_a_negative_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match=r"^negative$"):
        parse_size(f"-{n}K")


@given(
    st.text().filter(
        lambda t: (
            not t.strip()
            or t.strip()[0] not in "+.0123456789"
            or any(c.isalpha() and c.lower() not in "kmgtib" for c in t)
        )
    )
)
def test_junk_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text, rate=True)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("-1", "negative"),
        ("3X", "unknown unit 'X' (K, M, G, T, KiB, MiB, GiB, TiB: 1024; KB, MB, GB, TB: 1000)"),
        ("3KX", "unknown unit 'KX' (K, M, G, T, KiB, MiB, GiB, TiB: 1024; KB, MB, GB, TB: 1000)"),
        ("10Mb", "'Mb': b is bits, bytes are B (MB, MiB)"),
        ("64kib", "'kib': b is bits, bytes are B (KB, KiB)"),
        ("1.5", "a fraction of a byte"),
        ("1e6", "not a number of bytes (e.g. 512, 64K, 1.5M, 2GiB)"),
        ("0x10", "not a number of bytes (e.g. 512, 64K, 1.5M, 2GiB)"),
        ("5M/s", "a rate (/s), not a size"),
        ("9" * 65, "too long (65 characters, at most 64)"),
        ("1" + " " * 70 + "K", "too long (72 characters, at most 64)"),
    ],
)
def test_what_is_refused_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_size(text)
    assert str(err.value) == why


def test_plain_integers_mean_bytes_as_the_old_tool_s_did() -> None:
    """`-b 1024 -r 512` of the old tool's README."""
    assert (parse_size("1024"), parse_size("512", rate=True), parse_size(1024)) == (1024, 512, 1024)
    assert parse_size("1_000") == 1000  # as int() (click's IntRange) read it


@pytest.mark.parametrize(
    ("low", "high", "rate", "text"),
    [
        (4 << 20, 1 << 30, False, "a size in 4MiB..1GiB"),
        (1, None, True, "a rate >= 1B/s"),
        (0, None, True, "a rate >= 0B/s"),
        (577, 65507, False, "a size in 577B..65507B"),
        (200_000, None, False, "a size >= 200KB"),
    ],
)
def test_ranges_read_in_human_units(low: int, high: int | None, rate: bool, text: str) -> None:
    assert accepted(low, high, rate=rate) == text


def test_the_range_check_names_the_value_read() -> None:
    with pytest.raises(ValueError) as err:
        checked("3M", 4 << 20, 1 << 30)
    assert str(err.value) == "out of range (3MiB); expected a size in 4MiB..1GiB"
    with pytest.raises(ValueError) as err:
        checked("0", 1, None, rate=True)
    assert str(err.value) == "zero; expected a rate >= 1B/s"
    assert checked("4M", 4 << 20, 1 << 30) == checked(4 << 20, 4 << 20, 1 << 30) == 4 << 20


# -- the configuration layers ------------------------------------------------------------


def _resolve(
    environ: dict[str, str] | None = None,
    file: dict[str, object] | None = None,
    dotenv: dict[str, str] | None = None,
) -> config.Effective:
    return config.resolve(
        {}, config=file or {}, config_path=Path("/etc/pc.toml"), dotenv=dotenv or {},
        dotenv_path=Path("/w/.env"), environ=environ or {},
    )  # fmt: skip


SIZE_SETTINGS = [s for s in config.SETTINGS if s.kind in ("size", "rate")]


def test_every_byte_setting_takes_sizes() -> None:
    names = {s.name for s in SIZE_SETTINGS}
    assert names >= {"receive_buffer", "max_rate", "peer_quota", "part_quota", "pending_quota",
                     "data_port_memory", "control_port_memory", "multicast_datagram"}  # fmt: skip


def test_every_byte_setting_has_a_documented_maximum() -> None:
    """A quota of 10 EiB or a cap of 100 PiB/s bounds nothing and is more
    likely a typo: each byte setting has a highest value (settings.py,
    core/modes.py say why), as docs/commands.md's table shows."""
    highs = {s.name: s.high for s in SIZE_SETTINGS}
    assert highs == {
        "receive_buffer": 1 << 30, "max_rate": 1 << 40, "multicast_datagram": 65507,
        "peer_quota": 1 << 50, "part_quota": 1 << 50, "pending_quota": 1 << 50,
        "data_port_memory": 64 << 30, "control_port_memory": 64 << 30,
    }  # fmt: skip


@pytest.mark.parametrize("setting", SIZE_SETTINGS, ids=[s.env for s in SIZE_SETTINGS])
def test_a_size_setting_takes_suffixes_in_every_layer(setting: config.Setting) -> None:
    value = int(setting.high) if setting.high is not None else 64 << 20
    text = human(value)
    assert _resolve(environ={setting.env: text})[setting.name] == value
    assert _resolve(file={setting.name: text})[setting.name] == value
    assert _resolve(file={setting.name: value})[setting.name] == value  # a TOML integer
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={setting.env: "12X"})
    assert str(err.value) == (
        f"{setting.env}='12X': unknown unit 'X' (K, M, G, T, KiB, MiB, GiB, TiB: 1024; "
        f"KB, MB, GB, TB: 1000); expected {setting.accepted()}"
    )
    with pytest.raises(config.ConfigError, match=rf"^/etc/pc\.toml: {setting.name}=-1: negative"):
        _resolve(file={setting.name: -1})
    # Past its maximum: out of range, from a variable, .env and the file.
    over, rate = human(value * 2), setting.kind == "rate"
    why = f"out of range ({human(value * 2, rate=rate)}); expected {setting.accepted()}"
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={setting.env: over})
    assert str(err.value) == f"{setting.env}='{over}': {why}"
    with pytest.raises(config.ConfigError) as err:
        _resolve(dotenv={setting.env: over})
    assert str(err.value) == f"/w/.env: {setting.env}='{over}': {why}"
    with pytest.raises(config.ConfigError) as err:
        _resolve(file={setting.name: value * 2})  # a TOML integer
    assert str(err.value) == f"/etc/pc.toml: {setting.name}={value * 2}: {why}"


@pytest.mark.parametrize("setting", SIZE_SETTINGS, ids=[s.env for s in SIZE_SETTINGS])
def test_a_size_flag_past_its_maximum_is_one_line(
    cli: Callable[..., tuple[int, list[str]]], setting: config.Setting
) -> None:
    assert setting.high is not None
    over, rate = int(setting.high) * 2, setting.kind == "rate"
    assert cli("node", setting.flag, human(over)) == (
        errors.USAGE,
        [f"{ERR}node: Invalid value for '{setting.flag}': '{human(over)}': out of range "
         f"({human(over, rate=rate)}); expected {setting.accepted()}"],
    )  # fmt: skip


def test_a_toml_float_is_a_size_only_when_whole() -> None:
    """TOML reads ``4e6`` as a float: a whole one is that many bytes, as a
    plain integer is; a fraction of a byte is refused, as from a variable;
    a whole float too large for the range says so (not 'not a number')."""
    assert _resolve(file={"receive_buffer": 8e6})["receive_buffer"] == 8_000_000
    with pytest.raises(config.ConfigError, match=r"=4194304\.5: a fraction of a byte"):
        _resolve(file={"receive_buffer": 4194304.5})
    with pytest.raises(config.ConfigError, match=r"receive_buffer=1e\+20: out of range"):
        _resolve(file={"receive_buffer": 1e20})


def test_a_value_too_long_for_a_size_says_so_from_every_layer() -> None:
    """Its own reason, not 'not a number of bytes'; the line shows its start."""
    long = "64" + "0" * 63
    why = "too long (65 characters, at most 64); expected a size in 4MiB..1GiB"
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={"PEERCRYPT_RECEIVE_BUFFER": long})
    assert str(err.value) == f"PEERCRYPT_RECEIVE_BUFFER='6400000000000000'...: {why}"
    with pytest.raises(config.ConfigError) as err:
        _resolve(file={"receive_buffer": long})
    assert str(err.value) == f"/etc/pc.toml: receive_buffer='6400000000000000'...: {why}"


def test_the_receive_buffer_s_range_is_in_human_units() -> None:
    with pytest.raises(config.ConfigError) as err:
        _resolve(environ={"PEERCRYPT_RECEIVE_BUFFER": "3M"})
    assert str(err.value) == (
        "PEERCRYPT_RECEIVE_BUFFER='3M': out of range (3MiB); expected a size in 4MiB..1GiB"
    )


# -- the command line --------------------------------------------------------------------


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """Run a command line in this process (nothing starts: every case is
    refused while its options are read); its exit code and stderr lines."""
    monkeypatch.chdir(tmp_path)  # no .env of the caller's
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, list[str]]:
        code = execute(main, ["--data-dir", str(tmp_path / "dd"), *args])
        return code, capsys.readouterr().err.splitlines()

    yield run


ERR = "peercrypt: error: "
RANGE_BUFFER = "expected a size in 4MiB..1GiB"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["node", "--receive-buffer", "3X"],
         "node: Invalid value for '--receive-buffer': '3X': unknown unit 'X' (K, M, G, T, KiB, "
         f"MiB, GiB, TiB: 1024; KB, MB, GB, TB: 1000); {RANGE_BUFFER}"),
        (["node", "--receive-buffer", "-4M"],
         f"node: Invalid value for '--receive-buffer': '-4M': negative; {RANGE_BUFFER}"),
        (["node", "--receive-buffer", "0"],
         f"node: Invalid value for '--receive-buffer': '0': zero; {RANGE_BUFFER}"),
        (["node", "--receive-buffer", "2G"],
         f"node: Invalid value for '--receive-buffer': '2G': out of range (2GiB); {RANGE_BUFFER}"),
        (["node", "--receive-buffer", ""],
         f"node: Invalid value for '--receive-buffer': '': empty; {RANGE_BUFFER}"),
        (["send", "f", "h", "1", "--chunk-size", "1K"],
         "send: Invalid value for '--chunk-size': '1K': out of range (1KiB); "
         "expected a size in 4KiB..16MiB"),
        (["send", "f", "h", "1", "-r", "0"],
         "send: Invalid value for '-r' / '--rate': '0': zero; expected a rate in 1B/s..1TiB/s"),
        (["send", "f", "h", "1", "-r", "1025G"],
         "send: Invalid value for '-r' / '--rate': '1025G': out of range (1025GiB/s); "
         "expected a rate in 1B/s..1TiB/s"),
        (["send", "f", "h", "1", "-b", "10Mb"],
         "send: Invalid value for '-b' / '--bucket': '10Mb': 'Mb': b is bits, bytes are B "
         "(MB, MiB); expected a size >= 1B"),
        (["rate", "--", "-1"],
         "rate: Invalid value for 'BYTES_PER_SEC': '-1': negative; "
         "expected a rate in 0B/s..1TiB/s"),
        (["rate", "2T"],
         "rate: Invalid value for 'BYTES_PER_SEC': '2T': out of range (2TiB/s); "
         "expected a rate in 0B/s..1TiB/s"),
        (["max-rate", "fast"],
         "max-rate: Invalid value for 'BYTES_PER_SEC': 'fast': not a number of bytes "
         "(e.g. 512, 64K, 1.5M, 2GiB); expected a rate in 0B/s..1TiB/s"),
        (["max-rate", "1" * 100],
         "max-rate: Invalid value for 'BYTES_PER_SEC': '1111111111111111'...: too long "
         "(100 characters, at most 64); expected a rate in 0B/s..1TiB/s"),
        (["node", "--max-rate", "1.5"],
         "node: Invalid value for '--max-rate': '1.5': a fraction of a byte; "
         "expected a rate in 0B/s..1TiB/s"),
        (["node", "--multicast-datagram", "64KiB"],
         "node: Invalid value for '--multicast-datagram': '64KiB': out of range (64KiB); "
         "expected a size in 577B..65507B"),
        (["actor", "receiver", "--attach", "h:1", "--receive-buffer", "1M"],
         f"actor receiver: Invalid value for '--receive-buffer': '1M': out of range (1MiB); "
         f"{RANGE_BUFFER}"),
    ],
    ids=["bad-suffix", "negative", "zero", "too-large", "empty", "chunk-too-small",
         "zero-rate", "rate-too-large", "bits", "negative-argument", "live-rate-too-large",
         "junk-argument", "too-long", "fraction",
         "datagram",
         "actor"],
)  # fmt: skip
def test_a_bad_size_is_one_line_naming_option_value_and_range(
    cli: Callable[..., tuple[int, list[str]]], tmp_path: Path, args: list[str], line: str
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    code, lines = cli(*args)
    assert (code, lines) == (errors.USAGE, [ERR + line])


def test_the_entry_point_says_the_same_in_one_line(tmp_path: Path) -> None:
    """The real command (a process): one line, exit 2, no traceback."""
    long = run_cli("max-rate", "9" * 65, data_dir=tmp_path / "dd", cwd=tmp_path)
    assert long.returncode == errors.USAGE, long.describe()
    assert long.stderr_lines == [
        f"{ERR}max-rate: Invalid value for 'BYTES_PER_SEC': '9999999999999999'...: too long "
        "(65 characters, at most 64); expected a rate in 0B/s..1TiB/s"
    ], long.describe()
    result = run_cli("node", "--receive-buffer", "3M", data_dir=tmp_path / "dd", cwd=tmp_path)
    assert result.returncode == errors.USAGE, result.describe()
    assert result.stderr_lines == [
        f"{ERR}node: Invalid value for '--receive-buffer': '3M': out of range (3MiB); "
        f"{RANGE_BUFFER}"
    ], result.describe()


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("node", ["--receive-buffer", "--max-rate", "--peer-quota", "--control-port-memory"]),
        ("send", ["--chunk-size", "--bucket", "--rate"]),
        ("actor sender", ["--receive-buffer", "--max-rate"]),
        ("rate", ["BYTES_PER_SEC"]),
        ("max-rate", ["BYTES_PER_SEC"]),
    ],
)
def test_help_says_sizes_take_suffixes(
    cli: Callable[..., tuple[int, list[str]]],
    capsys: pytest.CaptureFixture[str],
    command: str,
    options: list[str],
) -> None:
    assert execute(main, [*command.split(), "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for option in options:  # its help, before the next [env ...] or [default ...]
        assert re.search(rf"{option}(?: SIZE| RATE)? [^\[]*?[Tt]akes suffixes", text), option


def test_sizes_take_effect_on_a_real_node(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """A variable with a suffix (and /s), then a config key with one: the
    node's status shows the bytes per second they name."""
    node = node_factory(env={"PEERCRYPT_MAX_RATE": "1.5M/s"}, name="env")
    assert node.status()["max_rate"] == str(1536 * 1024)
    # Printed back in human units; --json keeps the bytes per second.
    assert "  max_rate: 1.5 MiB/s" in node.cli("status").stdout.splitlines()
    capped = node.cli("max-rate", "1610612736")
    assert capped.stdout == "node rate cap is now 1.5 GiB/s\n", capped.describe()

    def cap(*json_: str) -> str:
        lines = node.cli("status", *json_).stdout.splitlines()
        if json_:
            return str(json.loads(lines[0])["max_rate"])
        return next((x for x in lines if x.startswith("  max_rate: ")), "")

    wait_until(lambda: cap("--json") == "1610612736", 10, "the new cap in status --json")
    shown = node.cli("max-rate")  # no value: the cap, not a usage error
    assert (shown.returncode, shown.stdout) == (0, "node rate cap: 1.5 GiB/s\n"), shown.describe()
    assert node.cli("max-rate", "0").stdout == "node rate cap removed\n"
    wait_until(lambda: cap() == "  max_rate: none", 10, "no cap in status")
    assert node.cli("max-rate").stdout == "node rate cap: none\n"
    node.stop()
    configured = node_factory(name="file", start=False)
    configured.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (configured.data_dir / "config.toml").write_text('max_rate = "2MB"\n')
    configured.start()
    assert configured.status()["max_rate"] == "2000000"


def test_readable_prints_one_decimal_in_the_largest_unit() -> None:
    """What the CLI prints back (max-rate, status, stats): at a glance, not
    to be typed again (that is :func:`human`)."""
    assert readable(1610612736, rate=True) == "1.5 GiB/s"
    assert readable(5_000_000, rate=True) == "4.8 MiB/s"
    assert [readable(n) for n in (0, 512, 1023, 1024, 1 << 50, 3 << 60)] == [
        "0 B", "512 B", "1023 B", "1.0 KiB", "1.0 PiB", "3072.0 PiB"
    ]  # fmt: skip


def test_the_node_refuses_a_rate_past_the_maximum_from_its_control_socket(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A local client that bypasses the CLI: a live max-rate or rate past
    1 TiB/s, or a send at such a rate, is refused by the node in one line,
    as the CLI refuses it; the maximum itself is taken."""
    node = node_factory()
    over, path = MAX_RATE + 1, make_file(4096)
    expected = f"{over}: out of range (1099511627777B/s); expected a rate in 0B/s..1TiB/s"
    with ControlClient.for_data_dir(node.data_dir) as client:

        def ask(msg: codec.Message, answer: type = SettingReply) -> codec.Message:
            client.send(msg)  # a send's progress comes before its result
            return wait_until(
                lambda: next((m for m in [client.receive(10.0)] if isinstance(m, answer)), None),
                20,
                f"the answer to {msg.TYPE}",
            )

        for request, name in enumerate(("max-rate", "rate"), 1):
            reply = ask(SettingRequest(request=request, name=name, value=str(over)))
            assert isinstance(reply, SettingReply) and not reply.ok, reply
            assert reply.text == f"{name} {expected}", reply
        taken = ask(SettingRequest(request=3, name="max-rate", value=str(MAX_RATE)))
        assert isinstance(taken, SettingReply) and taken.ok, taken
        assert taken.text == "node rate cap is now 1.0 TiB/s"
        sent = ask(
            SendRequest(
                request=4, path=str(path), host="127.0.0.1", port=node.port, chunk_size=65536,
                mode="token-bucket", rate=over,
            ),
            SendResult,
        )  # fmt: skip
        assert isinstance(sent, SendResult) and sent.code == "local", sent
        assert sent.reason == f"-r {expected}", sent
    assert node.status()["max_rate"] == str(MAX_RATE)
