from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwatch import config
from tests.conftest import REPO


def test_the_example_config_is_valid_and_matches_the_defaults_it_documents() -> None:
    cfg = config.load(REPO / "fleetwatch.example.toml", env={})
    assert cfg.mqtt.subscriptions[0].template == "sensors/{site}/{device}/{metric}"
    assert cfg.windows.tumbling == [timedelta(seconds=10), timedelta(minutes=1)]
    assert cfg.influxdb.flush_interval == timedelta(milliseconds=250)
    assert cfg.flow.epoch_interval == config.FlowConfig().epoch_interval


def test_errors_name_every_bad_key_and_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[mqtt]\nport = "abc"\n[[mqtt.subscriptions]]\ntopic = "a/#/b"\nqos = 3\n'
        '[windows]\ntumbling = ["10x"]\nallowed_latenes = "5s"\n'
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    problems = err.value.problems
    assert "mqtt.port: expected an integer (got 'abc')" in problems
    assert "mqtt.subscriptions[0].qos: expected 0 or 1 (got 3)" in problems
    assert any(p.startswith("mqtt.subscriptions[0].topic:") and "'#'" in p for p in problems)
    assert any(p.startswith("windows.tumbling[0]:") and "duration" in p for p in problems)
    assert "windows.allowed_latenes: unknown key" in problems


def test_a_qos_2_subscription_is_refused_at_start_with_the_reason(tmp_path: Path) -> None:
    """fleetwatch does not deduplicate QoS 2 redeliveries: it refuses the subscription instead of running it."""
    path = tmp_path / "qos2.toml"
    path.write_text(
        '[[mqtt.subscriptions]]\ntopic = "a/+"\nmetric = "m"\n'
        '[[mqtt.subscriptions]]\ntopic = "b/+"\nmetric = "m"\nqos = 2\n'
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    [problem] = err.value.problems
    assert problem.startswith("mqtt.subscriptions[1].qos: QoS 2 is not supported")
    assert "redeliveries" in problem and "qos = 1" in problem and "exactly-once" in problem


@pytest.mark.parametrize(
    "toml,key",
    [
        ('[[mqtt.subscriptions]]\ntopic = "s/+"\nformat = "number"\n', "mqtt.subscriptions[0]"),
        ('[[mqtt.subscriptions]]\ntopic = "s/+"\ntemplate = "s/{a}/{a}"\nmetric = "x"\n', "mqtt.subscriptions[0]"),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+"\nmetric = "m"\nmeasurement = "#m"\n',
            "mqtt.subscriptions[0].measurement: expected a measurement name not starting with '#'",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+"\nmetric = "m"\nmeasurement = "\\\\"\n',
            "mqtt.subscriptions[0].measurement: expected a measurement name",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+"\ntemplate = "t/{device}"\nmetric = "m"\n',
            "can never fit topic filter 's/+': level 1 is 's' in the filter and 't' in the template",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+"\ntemplate = "s/{site}/{device}"\nmetric = "m"\n',
            "the template has 3 levels, the filter's topics 2",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+"\nmetric = "m"\n'
            '[[mqtt.subscriptions]]\ntopic = "s/+"\nmetric = "n"\n',
            "mqtt: subscriptions[1]: the same topic filter 's/+' as subscriptions[0]",
        ),
        ('[windows]\nsliding = [{ length = "1m", offset = "7s" }]\n', "windows.sliding[0]"),
        ("[windows]\nquantiles = [1.5]\n", "windows.quantiles"),
        (
            '[windows]\nstatistics = ["count", "median"]\n',
            "windows.statistics: unknown statistics ['median']: expected any of count, min, max",
        ),
        ('[windows]\nstatistics = ["mean", "max"]\n', "windows.statistics: statistics must include count"),
        ('[windows]\nstatistics = ["count", "max", "max"]\n', "windows.statistics: statistics must not"),
        ('[influxdb]\nurl = "localhost:8086"\n', "influxdb.url"),
        ('[influxdb]\napi = "v3"\n', "influxdb.api"),
        ('[mqtt.tls]\ncert_file = "c.pem"\n', "mqtt.tls"),
        ("not toml = = =", "not valid TOML"),
        ('[elasticsearch]\nhosts = ["localhost:9200"]\n', "elasticsearch.hosts"),
        ('[elasticsearch]\napi_key = "k"\nusername = "u"\n', "elasticsearch"),
        ('[elasticsearch]\nindex_prefix = "Fleet Watch"\n', "elasticsearch.index_prefix"),
        ('[[logs.files]]\nname = "a"\npaths = ["/l/*.log"]\nparser = { kind = "regex" }\n', "logs.files[0].parser"),
        (
            '[[logs.files]]\nname = "a"\npaths = ["/l"]\nparser = { kind = "regex", pattern = "(?P<x" }\n',
            "logs.files[0].parser",
        ),
        ('[[logs.files]]\nname = "a"\npaths = ["/l"]\nmultiline = { start_pattern = "[" }\n', "logs.files[0]"),
        ('[[logs.files]]\nname = "a"\npaths = ["/l"]\n[[logs.syslog]]\nname = "a"\n', "logs"),
        ('[[logs.syslog]]\nname = "s"\nlisten = "5514"\n', "logs.syslog[0].listen"),
        (
            '[[logs.files]]\nname = "a"\npaths = ["/l"]\nparser = { kind = "json", default_level = "loud" }\n',
            "logs.files[0].parser.default_level: Input should be 'trace'",
        ),
        ('[[logs.syslog]]\nname = "s"\nparser = { kind = "syslog", timezone = "Mars/Base" }\n', "logs.syslog[0]"),
        (
            '[[logs.files]]\nname = "a"\npaths = ["/l"]\nparser = { kind = "json", timestamp_format = "%d %Q" }\n',
            "logs.files[0].parser.timestamp_format: expected a strptime format such as",
        ),
        ('[logs]\nrate_idle_after = "0s"\n', "logs: rate_idle_after must be > 0"),
        ("[logs]\nrate_max_services = 0\n", "logs.rate_max_services: Input should be greater than or equal to 1"),
        ('[alerts]\nstate_idle_after = "0s"\n', "alerts.state_idle_after: expected a duration > 0"),
        ("[alerts]\nmax_states = 0\n", "alerts.max_states: Input should be greater than or equal to 1"),
        ("[alerts]\nmax_pending_notifications = 0\n", "alerts.max_pending_notifications: Input should be"),
        # Found by tests/unit/test_config_fuzz.py: these raised OverflowError, or named no key.
        ("[windows]\nallowed_lateness = 1e300\n", "windows.allowed_lateness: expected a finite duration"),
        ('[windows]\nmax_age = "99999999999999999999d"\n', "windows.max_age: expected a finite duration"),
        ('[mqtt]\n"" = 1\n', 'mqtt."": unknown key'),
        ('[mqtt]\n"max payload" = 1\n', 'mqtt."max payload": unknown key'),
        ("[mqtt]\ntopic_cache_max_bytes = 1000\n", "mqtt.topic_cache_max_bytes: Input should be greater"),
        # Found by a review: accepted, then 80,000 health points a second, or a store call that never succeeds.
        ('[flow]\nhealth_interval = "0s"\n', "flow.health_interval: expected a duration > 0"),
        ('[flow]\nepoch_interval = "0s"\n', "flow.epoch_interval: expected a duration > 0"),
        ('[influxdb]\ntimeout = "0s"\n', "influxdb.timeout: expected a duration > 0"),
        ('[influxdb]\nflush_interval = "0ms"\n', "influxdb.flush_interval: expected a duration > 0"),
        ('[elasticsearch]\ntimeout = "0s"\n', "elasticsearch.timeout: expected a duration > 0"),
        # check-config passed it; the start then failed on CREATE DATABASE "".
        ('[influxdb]\ndatabase = ""\n', "influxdb.database: String should have at least 1 character"),
        # JSON settings on a bare-value or line-protocol subscription did nothing (a forgotten format = "json").
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+/+"\ntemplate = "s/{device}/{metric}"\ntimestamp_field = "ts"\n',
            "mqtt.subscriptions[0]: format 'number' reads a bare value, without fields or a time: timestamp_field",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "lp/#"\nformat = "influx_line"\nignore_fields = ["x"]\n',
            "mqtt.subscriptions[0]: format 'influx_line' reads line protocol: ignore_fields would do nothing",
        ),
        # Pydantic's lax mode took text for switches and counts: "yes" and "false" as true and false, "1" as 1.
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+/+"\ntemplate = "s/{device}/{metric}"\nwrite_raw = "yes"\n',
            "mqtt.subscriptions[0].write_raw: expected true or false (got 'yes')",
        ),
        ('[recovery]\nenabled = "false"\n', "recovery.enabled: expected true or false (got 'false')"),
        ("[recovery]\nenabled = 0\n", "recovery.enabled: expected true or false (got 0)"),
        ('[mqtt]\nport = "1883"\n', "mqtt.port: expected an integer (got '1883')"),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+/+"\ntemplate = "s/{device}/{metric}"\nqos = "1"\n',
            "mqtt.subscriptions[0].qos: expected an integer (got '1')",
        ),
        # Each window would be computed and written twice.
        ('[windows]\ntumbling = ["10s", "10s"]\n', "windows.tumbling: a window length is listed twice"),
        # Found by a review: accepted, then a crash at the first alert, nothing received, data lost, a busy loop.
        (
            '[[alerts.webhooks]]\nurl = "http://h/x"\nheaders = { Authorization = """Bearer t\n""" }\n',
            "alerts.webhooks[0].headers: header Authorization: its value has a line break or a NUL",
        ),
        (
            '[[alerts.webhooks]]\nurl = "http://h/x"\nheaders = { "Bad Header" = "x" }\n',
            "alerts.webhooks[0].headers: header name 'Bad Header': expected letters, digits",
        ),
        ('[[alerts.webhooks]]\nurl = "http://h:99999/x"\n', "alerts.webhooks[0].url: expected a host and a port"),
        ('[mqtt]\nshared_group = "a/b"\n', "mqtt.shared_group: expected a name without '/', '+' or '#'"),
        (
            '[[mqtt.subscriptions]]\ntopic = "$share/g/s/+"\nmetric = "m"\n',
            "mqtt.subscriptions[0].topic: expected a plain topic filter; name the group in mqtt.shared_group",
        ),
        (
            '[mqtt]\nprotocol = "5"\nsession_expiry = "0s"\n',
            "mqtt: session_expiry: expected at least 1s with persistent_session = true",
        ),
        ('[mqtt]\nprotocol = "5"\nsession_expiry = "100000d"\n', "mqtt.session_expiry: expected at most"),
        ('[mqtt]\nkeepalive = "1d"\n', "mqtt.keepalive: expected from 1s to 65535s (got 86400s)"),
        ('[mqtt]\nkeepalive = "500ms"\n', "mqtt.keepalive: expected from 1s to 65535s (got 0.5s)"),
        ('[mqtt]\nhost = "mqtt://127.0.0.1"\n', "mqtt.host: expected a host name or address"),
        (
            '[mqtt]\nreconnect_min_delay = "0s"\nreconnect_max_delay = "0s"\n',
            "mqtt: reconnect_min_delay: expected at least 0.01s",
        ),
        ('[influxdb]\nretry_max_delay = "0s"\n', "influxdb.retry_max_delay: expected at least 0.01s"),
        ('[elasticsearch]\nretry_max_delay = "0s"\n', "elasticsearch: retry_max_delay: expected at least 0.01s"),
        ('[flow]\nhealth_interval = "1us"\n', "flow.health_interval: expected at least 1s"),
        # (0 is "no limit" for max_age, and was "nothing ahead at all" here: every clock a millisecond fast refused)
        ('[windows]\nmax_future_skew = "0s"\n', "windows.max_future_skew: expected at least 1s"),
        ('[logs]\nmax_future_skew = "500ms"\n', "logs.max_future_skew: expected at least 1s"),
        (
            '[[mqtt.subscriptions]]\ntopic = "s/+/+"\ntemplate = "s/{time}/{metric}"\n',
            "mqtt.subscriptions[0]: tag {time} in template 's/{time}/{metric}' is a name InfluxDB reserves",
        ),
        (
            '[[logs.syslog]]\nname = "a"\nprotocol = "tcp"\n[[logs.syslog]]\nname = "b"\nprotocol = "tcp"\n',
            "logs: syslog[1].listen: tcp 127.0.0.1:5514 is syslog[0]'s already",
        ),
        # Numbers written as text were taken for float settings, as they were refused for counts.
        ('[[alerts.rules]]\nname = "r"\nwarning = "30"\n', "alerts.rules[0].warning: expected a number (got '30')"),
        ('[windows]\nquantiles = ["0.5"]\n', "windows.quantiles: expected numbers (got ['0.5'])"),
        (
            '[windows]\nsliding = [{ length = "1m", offset = "10s" }, { length = "60s", offset = "10s" }]\n',
            "windows.sliding: a sliding window (length and offset) is listed twice",
        ),
        (
            '[[logs.files]]\nname = "a"\npaths = ["/l"]\nparser = { kind = "json", pattern = "(?P<level>x)" }\n',
            "logs.files[0].parser: pattern is only read by kind 'regex' (got kind 'json')",
        ),
        ('[[logs.files]]\nname = "a"\npaths = [""]\n', "logs.files[0].paths: expected file paths or globs"),
        (
            '[elasticsearch]\nca_file = "/etc/hostname"\n',
            "elasticsearch: ca_file: expected https:// hosts only with a CA file (got http://127.0.0.1:9200)",
        ),
    ],
)
def test_rejects_broken_values(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    assert any(p.startswith(key) or key in p for p in err.value.problems), err.value.problems


def test_secrets_come_from_the_environment_and_never_print(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\nusername = "fw"\npassword = "in-file"\n')
    cfg = config.load(
        path,
        env={
            "FLEETWATCH_MQTT_PASSWORD": "from-env",
            "FLEETWATCH_INFLUXDB_TOKEN": "tok",
            "FLEETWATCH_ELASTICSEARCH_API_KEY": "es-key",
        },
    )
    assert cfg.mqtt.resolved_password() is not None
    assert cfg.mqtt.resolved_password().get_secret_value() == "from-env"  # type: ignore[union-attr]
    assert cfg.influxdb.resolved_token().get_secret_value() == "tok"  # type: ignore[union-attr]
    assert cfg.elasticsearch.resolved_api_key().get_secret_value() == "es-key"  # type: ignore[union-attr]
    assert "from-env" not in repr(cfg) and "tok'" not in repr(cfg) and "es-key" not in repr(cfg)


def test_secrets_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = config.from_dict({"influxdb": {"password_file": str(secret)}}, env={})
    assert cfg.influxdb.resolved_password().get_secret_value() == "s3cret"  # type: ignore[union-attr]


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("1m30s", 90), ("250ms", 0.25), ("7d", 604800), (5, 5)])
def test_durations(text: str | int, seconds: float) -> None:
    assert config.parse_duration(text).total_seconds() == seconds


def test_check_config_command_rejects_a_broken_file_and_names_the_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetwatch.cli import app

    path = tmp_path / "bad.toml"
    path.write_text("[influxdb]\nbatch_size = 0\n")
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 2
    assert "influxdb.batch_size" in result.output
    ok = CliRunner().invoke(app, ["check-config", str(REPO / "fleetwatch.example.toml")])
    assert ok.exit_code == 0, ok.output


_SUBSCRIPTION = '[[mqtt.subscriptions]]\ntopic = "a/+/+"\ntemplate = "a/{device}/{metric}"\n'
_NOTHING_LISTENS = "127.0.0.1:1"


def test_check_config_names_a_config_section_and_shows_no_password_written_into_a_url(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetwatch.cli import app

    path = tmp_path / "urls.toml"
    path.write_text(
        '[influxdb]\nurl = "http://admin:pw-in-url-1@127.0.0.1:8086"\n'
        '[elasticsearch]\nhosts = ["https://elastic:pw-in-url-2@es.example:9200"]\n' + _SUBSCRIPTION
    )
    ok = CliRunner().invoke(app, ["check-config", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "at http://127.0.0.1:8086, Elasticsearch at https://es.example:9200" in ok.output
    assert "pw-in-url" not in ok.output
    # A message naming a section in brackets keeps it (not taken for a style tag).
    path.write_text('[elasticsearch]\nindex_prefix = "Upper"\n')
    bad = CliRunner().invoke(app, ["check-config", str(path)])
    assert bad.exit_code == 2
    assert "^[a-z0-9][a-z0-9_.-]*$" in bad.output


@pytest.mark.parametrize(
    ("args", "config_text", "code", "message"),
    [
        (["check-config"], "", 2, "expected at least one input: [[mqtt.subscriptions]], [[logs.files]]"),
        (
            ["check-config"],
            "[influxdb]\nenabled = false\n[elasticsearch]\nenabled = false\n" + _SUBSCRIPTION,
            2,
            "expected influxdb.enabled or elasticsearch.enabled: with both off nothing is stored",
        ),
        (
            ["run"],
            '[recovery]\ndir = "/proc/no/such"\n' + _SUBSCRIPTION,
            2,
            "",
        ),
        (
            ["check-config"],
            '[mqtt.tls]\nenabled = true\nca_file = "/nonexistent/ca.pem"\n' + _SUBSCRIPTION,
            2,
            "mqtt.tls.ca_file: expected a readable file (got '/nonexistent/ca.pem': No such file or directory)",
        ),
        (
            ["check-config"],
            '[influxdb]\nurl = "http://127.0.0.1:99999"\n' + _SUBSCRIPTION,
            2,
            "influxdb.url: expected a host and a port from 1 to 65535 (got 'http://127.0.0.1:99999')",
        ),
        # The default retention.windows names 10s and 1m; other windows are no error.
        (["check-config"], '[windows]\ntumbling = ["5m"]\n' + _SUBSCRIPTION, 0, "ok "),
        (["run", "-i", "0", "-a", "127.0.0.1:x"], _SUBSCRIPTION, 2, "--addresses: expected host:port of every"),
        (["run", "-i", "2", "-a", "h:1,h:2"], _SUBSCRIPTION, 2, "--process-id: expected an index into the 2"),
        (["run", "-w", "0"], _SUBSCRIPTION, 2, "--workers"),
        (
            ["simulate", "--duration", "1"],
            "[mqtt]\nport = 1\n",
            1,
            "error: cannot connect to the MQTT broker at 127.0.0.1:1:",
        ),
        (
            ["retention", "--dry-run"],
            f'[elasticsearch]\nhosts = ["http://{_NOTHING_LISTENS}"]\n',
            1,
            f"error: Elasticsearch at http://{_NOTHING_LISTENS} cannot be reached",
        ),
        (["snapshot", "--last", "banana"], "", 2, "--last: expected a duration such as 1h or 30m"),
        (
            ["snapshot", "--last", "5m"],
            f'[influxdb]\nurl = "http://{_NOTHING_LISTENS}"\n[elasticsearch]\nhosts = ["http://{_NOTHING_LISTENS}"]\n',
            1,
            f"warning: no dashboard drawn: InfluxDB at http://{_NOTHING_LISTENS} cannot be reached",
        ),
        (
            ["grafana", "sync", "--url", f"http://{_NOTHING_LISTENS}", "--token-file", "/nonexistent"],
            "",
            2,
            "--token-file: cannot read '/nonexistent'",
        ),
    ],
)
def test_a_user_error_ends_in_one_message_naming_what_to_fix_and_no_traceback(
    tmp_path: Path, args: list[str], config_text: str, code: int, message: str
) -> None:
    from typer.testing import CliRunner

    from fleetwatch.cli import app

    path = tmp_path / "fleetwatch.toml"
    path.write_text(config_text)
    result = CliRunner().invoke(app, [*args, "--config", str(path)])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split()), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_alert_rules_must_watch_windows_and_quantiles_the_pipeline_computes(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "p90"\ntarget = "window"\nwindow = "1m"\nstat = "p90"\nwarning = 1.0\n')
    path = tmp_path / "c.toml"
    path.write_text(
        f'[alerts]\nrules_file = "{rules}"\n'
        '[[alerts.rules]]\nname = "w5m"\ntarget = "window"\nwindow = "5m"\nstat = "mean"\nwarning = 1.0\n'
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    assert err.value.problems == [
        "alerts: rule 'w5m': window '5m' is not computed (windows: 10s, 1m)",
        "alerts: rule 'p90': stat 'p90' is not computed (windows.quantiles gives p50, p95, p99)",
    ]


def test_the_limits_on_memory_and_pending_notifications_have_defaults_and_can_be_set() -> None:
    cfg = config.from_dict({}, env={})
    assert cfg.alerts.max_pending_notifications == 10_000
    assert (cfg.alerts.state_idle_after, cfg.alerts.max_states) == (timedelta(hours=1), 500_000)
    assert (cfg.logs.rate_idle_after, cfg.logs.rate_max_services) == (timedelta(hours=1), 20_000)
    cfg = config.from_dict(
        {
            "alerts": {"max_pending_notifications": 50, "state_idle_after": "10m", "max_states": 1000},
            "logs": {"rate_idle_after": "30m", "rate_max_services": 100},
        },
        env={},
    )
    assert (cfg.alerts.max_pending_notifications, cfg.alerts.state_idle_after, cfg.alerts.max_states) == (
        50,
        timedelta(minutes=10),
        1000,
    )
    assert (cfg.logs.rate_idle_after, cfg.logs.rate_max_services) == (timedelta(minutes=30), 100)


def test_a_broken_rules_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "x"\ncondition = "~"\nwarning = 1.0\n')
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"alerts": {"rules_file": str(rules)}}, env={})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"alerts.rules_file: {rules}: rules[0].condition:")


@pytest.mark.parametrize(
    "data",
    [
        {"mqtt": {"password": 987_654_321}},
        {"influxdb": {"token": ["tok-SECRET-1"]}},
        {"elasticsearch": {"api_key": {"id": "key-SECRET-2"}}},
        {"elasticsearch": {"hosts": ["ftp://user:pw-SECRET-3@es.example:9200"]}},
        {"alerts": {"webhooks": [{"url": "ftp://hooks.example/services/T0/B0/url-SECRET-4"}]}},
        {"alerts": {"webhooks": [{"url": "hooks.example/services/T0/B0/url-SECRET-5"}]}},
        {"alerts": {"webhooks": [{"url": "https://hooks.example/x", "headers": {"Authorization": 5_551_234}}]}},
        {"alerts": {"grafana": {"url": "gopher://user:pw-SECRET-6@grafana.example/", "token": 42_424_242}}},
        # A table or list where another type was expected was printed whole.
        {"alerts": {"webhooks": {"url": "https://hooks.example/services/T0/B0/url-SECRET-7", "headers": {}}}},
        {"influxdb": {"database": [{"password": "pw-SECRET-8"}]}},
        {"elasticsearch": {"hosts": "http://elastic:pw-SECRET-9@127.0.0.1:9200"}},
        {"influxdb": {"url": ["https://x/services/T0/url-SECRET-10"]}},
        # A "/" in a password, and a URL without scheme but with a query.
        {"influxdb": {"url": "ftp://admin:pw-SE/CRET-11@db:8086"}},
        {"alerts": {"grafana": {"url": "localhost:3000?token=SECRET-12"}}},
    ],
    ids=[
        "mqtt-password",
        "influx-token",
        "es-api-key",
        "es-host-userinfo",
        "webhook-url",
        "webhook-no-scheme",
        "webhook-header",
        "grafana",
        "webhooks-as-table",
        "influxdb-database-as-list",
        "es-hosts-as-string",
        "influx-url-as-list",
        "password-with-slash",
        "query-without-scheme",
    ],
)
def test_a_config_error_names_the_key_but_never_prints_the_secret(data: dict[str, Any]) -> None:
    """A secret given wrongly (the wrong type, a URL with a token in its path or a password in it) still
    fails at start with the key, but the message shows no part of the value that can be a secret."""
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(data, env={})
    message = str(exc.value)
    for secret in ("SECRET", "987654321", "5551234", "42424242", "pw-", "services/T0"):
        assert secret not in message, message
    section = next(iter(data))
    assert f"{section}." in message


def test_a_file_that_is_not_utf8_or_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    """Found by tests/unit/test_config_fuzz.py: these raised UnicodeDecodeError and IsADirectoryError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[mqtt]\nhost = "b\xe9ton"\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    assert err.value.problems == ["not UTF-8 text (TOML is): byte 16: invalid continuation byte"]
    with pytest.raises(config.ConfigError) as err:
        config.load(tmp_path, env={})
    assert err.value.problems == ["cannot read the file: Is a directory"]


def test_an_unreadable_secret_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-password"
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"influxdb": {"username": "fw", "password_file": str(missing)}}, env={})
    assert err.value.problems == [
        f"influxdb.password_file: cannot read secret file {missing}: No such file or directory"
    ]
    # A store that is off needs no credentials.
    config.from_dict({"elasticsearch": {"enabled": False, "password_file": str(missing)}}, env={})


def test_a_secret_file_that_never_ends_or_blocks_is_refused_at_once(tmp_path: Path) -> None:
    """/dev/zero named by mistake was read until memory ran out; a FIFO blocked the start. The config file
    itself too: a FIFO as the config path hung check-config."""
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"influxdb": {"username": "fw", "password_file": "/dev/zero"}}, env={})
    assert err.value.problems == ["influxdb.password_file: cannot read secret file /dev/zero: not a regular file"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"influxdb": {"username": "fw", "password_file": str(fifo)}}, env={})
    assert err.value.problems == [f"influxdb.password_file: cannot read secret file {fifo}: not a regular file"]
    with pytest.raises(config.ConfigError) as err:
        config.load(fifo, env={})
    assert err.value.problems == ["not a regular file"]
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * 100_000)
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"influxdb": {"username": "fw", "password_file": str(huge)}}, env={})
    assert err.value.problems == [f"influxdb.password_file: secret file {huge} is longer than 65536 bytes"]


def test_the_influxdb_password_file_can_come_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = config.from_dict(
        {}, env={"FLEETWATCH_INFLUXDB_USERNAME": "admin", "FLEETWATCH_INFLUXDB_PASSWORD_FILE": str(secret)}
    )
    assert cfg.influxdb.v1_credentials() == ("admin", "from-file")
    assert "from-file" not in repr(cfg)


def test_a_secret_in_the_environment_wins_over_a_secret_file(tmp_path: Path) -> None:
    """As the example config says; the file of the config was read first, so a stale file beat the variable."""
    stale = tmp_path / "pw"
    stale.write_text("stale\n")
    data = {
        "mqtt": {"password_file": str(stale)},
        "influxdb": {"username": "admin", "password_file": str(stale)},
        "elasticsearch": {"password_file": str(stale)},
    }
    env = {
        "FLEETWATCH_MQTT_PASSWORD": "m-env",
        "FLEETWATCH_INFLUXDB_PASSWORD": "i-env",
        "FLEETWATCH_ELASTICSEARCH_PASSWORD": "e-env",
    }
    cfg = config.from_dict(data, env=env)
    assert cfg.mqtt.resolved_password().get_secret_value() == "m-env"  # type: ignore[union-attr]
    assert cfg.influxdb.v1_credentials() == ("admin", "i-env")
    assert cfg.elasticsearch.resolved_password().get_secret_value() == "e-env"  # type: ignore[union-attr]
    assert config.from_dict(data, env={}).influxdb.v1_credentials() == ("admin", "stale")


def test_tls_files_that_do_not_load_are_refused_at_start(tmp_path: Path) -> None:
    """A CA file that is not PEM, or a key of another certificate, passed check-config and then stopped the
    start with an SSLError traceback."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"mqtt": {"tls": {"enabled": True, "ca_file": str(not_pem)}}}, env={})
    assert err.value.problems == [
        "mqtt.tls.ca_file: expected PEM certificates TLS can load (got NO_CERTIFICATE_OR_CRL_FOUND)"
    ]
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(
            {"elasticsearch": {"hosts": ["https://es:9200"], "ca_file": str(not_pem)}, "influxdb": {"enabled": False}},
            env={},
        )
    assert err.value.problems[0].startswith("elasticsearch.ca_file: expected PEM certificates TLS can load")


def test_a_webhook_header_is_checked_at_start_and_its_value_never_shown() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(
            {"alerts": {"webhooks": [{"url": "http://h/x", "headers": {"Authorization": "Bearer TOKEN42\r\nX: 1"}}]}},
            env={},
        )
    assert "TOKEN42" not in str(err.value)
    assert "alerts.webhooks[0].headers: header Authorization" in str(err.value)


def test_the_devices_key_must_be_a_tag_some_subscription_has(tmp_path: Path) -> None:
    inventory = tmp_path / "devices.csv"
    inventory.write_text("device,model\nd1,m1\n")
    subscription = {"topic": "s/+/+/+", "template": "s/{site}/{device}/{metric}"}
    data = {"mqtt": {"subscriptions": [subscription], "devices": {"file": str(inventory), "key": "devce"}}}
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data, env={})
    assert err.value.problems[0].startswith("mqtt: devices.key: expected a tag of a subscription's template")
    data["mqtt"]["devices"]["key"] = "device"  # type: ignore[index]
    config.from_dict(data, env={})
