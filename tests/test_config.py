"""Configuration files and NOTIFIER_* variables: discovery, precedence, validation and secrets."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

import notifier
from conftest import TOKEN
from notifier import ConfigurationError
from notifier.alerts import AlertRules
from notifier.backend import check_options
from notifier.config import Config, load_config
from notifier.plugins import BackendInfo, default_registry
from slack_server import SlackServer

SAMPLE = """
events = ["train_begin", "epoch_end", "train_end", "train_error", "alert"]
templates = "notify-templates"
flush_timeout = 20
max_backlog = 5
stall_after = 1800
plots = true
only_improvements = {metric = "wer", greater_is_better = false}

[backends.slack]
channel = "#training"
blocks = false

[backends.console]

[alerts]
eval_accuracy = ">= 0.9"
loss = ["> 10", "< 0"]
spike_factor = 4.0
recoveries = true

[throttle.epoch_end]
every_n_epochs = 2

[throttle.evaluate]
min_interval = 600

[routes]
console = ["train_error", "train_end"]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, env: dict[str, str] | None = None, path: Any = None) -> Config:
    return load_config(path, environ=env or {}, cwd=tmp_path)


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    write(tmp_path / "notifier.toml", text)
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, env)
    return str(info.value)


# -- discovery ----------------------------------------------------------------------------
def test_no_file_no_environment_sets_nothing(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')  # no [tool.notifier]
    config = load(tmp_path)
    assert config == Config()
    assert config.source is None
    assert config.callback_kwargs() == {}


def test_sample_file_is_read_and_validated(tmp_path: Path) -> None:
    (tmp_path / "notify-templates").mkdir()
    source = write(tmp_path / "notifier.toml", SAMPLE)
    config = load(tmp_path)
    assert config.source == source
    assert config.backends == ("slack", "console")
    assert config.backend_options == {
        "slack": {"channel": "#training", "blocks": False},
        "console": {},
    }
    assert config.events == ("train_begin", "epoch_end", "train_end", "train_error", "alert")
    assert config.templates == tmp_path / "notify-templates"
    assert config.alerts == {
        "thresholds": {"eval_accuracy": ">= 0.9", "loss": ["> 10", "< 0"]},
        "spike_factor": 4.0,
        "recoveries": True,
    }
    assert config.throttle == {
        "epoch_end": {"every_n_epochs": 2},
        "evaluate": {"min_interval": 600},
    }
    assert config.routes == {"console": ("train_error", "train_end")}
    assert (config.flush_timeout, config.max_backlog, config.stall_after, config.plots) == (
        20.0,
        5,
        1800.0,
        True,
    )
    assert config.only_improvements == {"metric": "wer", "greater_is_better": False}
    assert set(config.origins.values()) == {str(source)}
    kwargs = config.callback_kwargs()
    improvement = kwargs.pop("only_improvements")
    assert (improvement.metric, improvement.greater_is_better) == ("eval_wer", False)
    rules = kwargs.pop("alerts")
    assert isinstance(rules, AlertRules)
    assert [a.kind for a in rules.check({"eval_accuracy": 0.95}, step=1)] == ["threshold"]
    assert kwargs == {
        "backends": ["slack", "console"],
        "events": ["train_begin", "epoch_end", "train_end", "train_error", "alert"],
        "templates": tmp_path / "notify-templates",
        "flush_timeout": 20.0,
        "max_backlog": 5,
        "throttle": {"epoch_end": {"every_n_epochs": 2}, "evaluate": {"min_interval": 600}},
        "routes": {"console": ["train_error", "train_end"]},
        "stall_after": 1800.0,
        "plots": True,
    }
    assert config.callback_kwargs()["alerts"] is not rules  # each callback gets fresh state


def test_pyproject_tool_table_is_used(tmp_path: Path) -> None:
    source = write(
        tmp_path / "pyproject.toml",
        """
        [project]
        name = "mine"

        [tool.notifier]
        backends = ["console"]
        flush_timeout = 3.5
        """,
    )
    config = load(tmp_path)
    assert (config.source, config.backends, config.flush_timeout) == (source, ("console",), 3.5)


def test_notifier_toml_wins_over_pyproject_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "pyproject.toml", "[tool.notifier]\nflush_timeout = 1\n")
    own = write(tmp_path / "notifier.toml", "flush_timeout = 2\n")
    with caplog.at_level(logging.WARNING, logger="notifier"):
        config = load(tmp_path)
    assert (config.source, config.flush_timeout) == (own, 2.0)
    assert "pyproject.toml is ignored (keep one of them)" in caplog.text


def test_path_argument_beats_notifier_config_beats_discovery(tmp_path: Path) -> None:
    write(tmp_path / "notifier.toml", "flush_timeout = 1\n")
    from_env = write(tmp_path / "conf" / "env.toml", "flush_timeout = 2\n")
    given = write(tmp_path / "conf" / "given.toml", "flush_timeout = 3\n")
    env = {"NOTIFIER_CONFIG": "conf/env.toml"}  # relative to the working directory
    assert load(tmp_path).flush_timeout == 1.0
    assert load(tmp_path, env).source == from_env
    assert load(tmp_path, env, path="conf/given.toml").source == given
    assert load(tmp_path, env, path=given).flush_timeout == 3.0


def test_explicit_pyproject_path_needs_the_tool_table(tmp_path: Path) -> None:
    other = write(tmp_path / "elsewhere" / "pyproject.toml", "[tool.notifier]\nplots = false\n")
    assert load(tmp_path, path=other).plots is False
    bare = write(tmp_path / "bare" / "pyproject.toml", "[tool.other]\nx = 1\n")
    with pytest.raises(ConfigurationError, match=r"has no \[tool.notifier\] table"):
        load(tmp_path, path=bare)


@pytest.mark.parametrize(
    ("path", "env", "fragment"),
    [
        ("missing.toml", {}, "the config path 'missing.toml' does not exist"),
        (None, {"NOTIFIER_CONFIG": "nope.toml"}, "NOTIFIER_CONFIG 'nope.toml' does not exist"),
    ],
)
def test_a_named_file_must_exist(
    tmp_path: Path, path: str | None, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        load(tmp_path, env, path=path)


def test_templates_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "project" / "tpl").mkdir(parents=True)
    source = write(tmp_path / "project" / "notifier.toml", 'templates = "tpl"\n')
    config = load(tmp_path, {"NOTIFIER_CONFIG": str(source)})
    assert config.templates == tmp_path / "project" / "tpl"
    message = error(tmp_path, 'templates = "tpl"\n')  # ./tpl does not exist next to this one
    assert "templates" in message and "relative to the configuration file" in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    message = error(tmp_path, "events = [\n")
    assert "notifier.toml is not valid TOML" in message


# -- environment --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"NOTIFIER_BACKENDS": "console, slack ,console"}, "backends", ("console", "slack")),
        ({"NOTIFIER_EVENTS": "train_end,train_error"}, "events", ("train_end", "train_error")),
        ({"NOTIFIER_FLUSH_TIMEOUT": "0"}, "flush_timeout", 0.0),
        ({"NOTIFIER_FLUSH_TIMEOUT": " 2.5 "}, "flush_timeout", 2.5),
        ({"NOTIFIER_BACKENDS": ""}, "backends", ("slack",)),  # empty means unset
    ],
)
def test_environment_overrides_the_file(
    tmp_path: Path, env: dict[str, str], field: str, value: Any
) -> None:
    source = write(
        tmp_path / "notifier.toml",
        'backends = ["slack"]\nevents = ["train_begin"]\nflush_timeout = 30\n',
    )
    config = load(tmp_path, env)
    assert getattr(config, field) == value
    variable = next(iter(env))
    assert config.origins[field] == (variable if env[variable].strip() else str(source))
    assert config.origins["events" if field != "events" else "backends"] == str(source)


def test_notifier_templates_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    config = load(tmp_path, {"NOTIFIER_TEMPLATES": "mine"})
    assert config.templates == tmp_path / "mine"
    assert config.source is None
    assert config.callback_kwargs() == {"templates": tmp_path / "mine"}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NOTIFIER_EVENTS": "train_begin,epoch_ends"}, "Did you mean 'epoch_end'?"),
        ({"NOTIFIER_EVENTS": "train_begin,progress"}, "'progress', which cannot be chosen"),
        ({"NOTIFIER_FLUSH_TIMEOUT": "ten"}, "NOTIFIER_FLUSH_TIMEOUT='ten' must be a number"),
        ({"NOTIFIER_FLUSH_TIMEOUT": "-1"}, "must be a number of seconds >= 0"),
        ({"NOTIFIER_FLUSH_TIMEOUT": "nan"}, "must be a number of seconds >= 0"),
        ({"NOTIFIER_TEMPLATES": "nowhere"}, "NOTIFIER_TEMPLATES='nowhere'"),
        ({"NOTIFIER_BACKENDS": " , "}, "NOTIFIER_BACKENDS=' , ' names nothing"),
    ],
)
def test_bad_environment_values_raise(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("?", r"\?")):
        load(tmp_path, env)


def test_a_misspelt_variable_is_pointed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="notifier"):
        config = load(tmp_path, {"NOTIFIER_BACKEND": "slack", "NOTIFIER_UNRELATED_THING": "x"})
    assert config.backends is None
    assert "ignoring environment variable NOTIFIER_BACKEND; did you mean NOTIFIER_BACKENDS?" in (
        caplog.text
    )
    assert "NOTIFIER_UNRELATED_THING" not in caplog.text


# -- secrets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ('[backends.slack]\ntoken = "{s}"\n', "backends.slack.token", "SLACK_BOT_TOKEN"),
        (
            '[backends.slack]\nwebhook_url = "{s}"\n',
            "backends.slack.webhook_url",
            "SLACK_WEBHOOK_URL",
        ),
        ('[backends.email]\npassword = "{s}"\n', "backends.email.password", "SMTP_PASSWORD"),
        ('[backends.email]\nsmtp_password = "{s}"\n', "backends.email.smtp_password", "email"),
        ('[backends.webhook]\nurl = "{s}"\n', "backends.webhook.url", "NOTIFIER_WEBHOOK_URL"),
        ('[backends.apprise]\nurls = ["{s}"]\n', "backends.apprise.urls", "APPRISE_URLS"),
        (
            '[backends.webhook.headers]\nX = "{s}"\n',
            "backends.webhook.headers",
            "NOTIFIER_WEBHOOK_HEADERS",
        ),
        (
            '[backends.discord]\nwebhook_url = "{s}"\n',
            "backends.discord.webhook_url",
            "set the DISCORD_WEBHOOK_URL environment variable instead",
        ),
        ('[backends.x]\nopts = {{ api_secret = "{s}" }}\n', "backends.x.opts.api_secret", "x"),
        ('[backends.discord]\nBot_Token = "{s}"\n', "backends.discord.Bot_Token", "discord"),
        ('token = "{s}"\n', "token", "the backend that needs it"),
    ],
)
def test_secrets_in_a_file_are_refused(tmp_path: Path, text: str, key: str, fix: str) -> None:
    message = error(tmp_path, text.format(s=TOKEN))
    assert f"{tmp_path / 'notifier.toml'}: {key} is a secret" in message
    assert fix in message
    assert "environment variable" in message
    assert TOKEN not in message


def test_secrets_in_pyproject_name_the_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", f'[tool.notifier.backends.slack]\ntoken = "{TOKEN}"\n')
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    assert f"{tmp_path / 'pyproject.toml'} [tool.notifier]: backends.slack.token" in str(info.value)
    assert TOKEN not in str(info.value)


# -- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('backend = ["slack"]\n', "backend is not a setting. Did you mean 'backends'?"),
        ("flush_timout = 3\n", "Did you mean 'flush_timeout'?"),
        ("colour = 3\n", "colour is not a setting. Settings: backends, events"),
        ("[throttle.epoch_end]\nevery_n_epoch = 2\n", "Did you mean 'every_n_epochs'?"),
        ("[throttle.epoch_ends]\nmin_interval = 2\n", "Did you mean 'epoch_end'?"),
        ("[alerts]\nspike_factr = 3.0\n", "Did you mean 'spike_factor'?"),
        ('events = ["train_begin", "epoch_ends"]\n', "Did you mean 'epoch_end'?"),
        ('backends = ["console"]\n[routes]\nconsol = ["train_end"]\n', "Did you mean 'console'?"),
    ],
)
def test_unknown_keys_raise_with_a_suggestion(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, text)


CHOSEN = "names 'progress', which cannot be chosen: it goes to the backends that ask for it"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('events = ["train_begin", "progress"]\n', f"events {CHOSEN}"),
        ('[routes]\nconsole = ["progress", "train_end"]\n', f"routes.console {CHOSEN}"),
        ("[throttle.progress]\nmin_interval = 5\n", "throttle.progress cannot be throttled here"),
    ],
)
def test_progress_cannot_be_chosen_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    # NotifierCallback rejects it: reading the file must too, naming the file and the key.
    assert error(tmp_path, text).startswith(f"{tmp_path / 'notifier.toml'}: {message}")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('backends = "slack"\n', "backends must be a list of names"),
        ("backends = [1]\n", "backends must be a list of names; 1 is not one"),
        ("[backends]\nslack = 1\n", "backends.slack must be a table of options"),
        ('events = "train_end"\n', "events must be a list of names"),
        ("templates = 3\n", "templates must be a directory path"),
        ('flush_timeout = "10"\n', "flush_timeout must be a number of seconds >= 0, got '10'"),
        ("flush_timeout = -1\n", "flush_timeout must be a number of seconds >= 0"),
        ("flush_timeout = inf\n", "flush_timeout must be a number of seconds"),
        ("stall_after = 0\n", "stall_after must be a number of seconds > 0"),
        ("only_improvements = 1\n", "only_improvements must be an eval metric name"),
        ('only_improvements = {metric = "x", lower = true}\n', "only_improvements must be"),
        ('only_improvements = {metric = "x", greater_is_better = 1}\n', "only_improvements"),
        ("max_backlog = 0\n", "max_backlog must be an integer >= 1"),
        ("max_backlog = 2.5\n", "max_backlog must be an integer >= 1"),
        ("plots = 1\n", "plots must be true or false"),
        ('plots = "yes"\n', "plots must be true or false"),
        ('alerts = "loss > 1"\n', "alerts must be a table"),
        ('[alerts]\neval_accuracy = "=> 0.9"\n', "'eval_accuracy'"),
        ("[alerts]\nspike_factor = 0.5\n", "spike_factor must be a number greater than 1"),
        ('[alerts]\nnan = "yes"\n', "alerts.nan must be true or false"),
        ("[alerts]\nloss = 10\n", "alerts.loss = 10 is neither a threshold"),
        ("[throttle.train_error]\nmin_interval = 5\n", "throttle.train_error cannot be throttled"),
        ("[throttle.evaluate]\nevery_n_epochs = 2\n", "applies to epoch_end only"),
        ("[throttle.epoch_end]\nevery_n_epochs = 0\n", "must be an integer >= 1"),
        ("[throttle.save]\nmin_interval = -5\n", "throttle.save.min_interval must be a number"),
        # NotifierCallback refuses 0 too: the file must not accept what the callback rejects
        ("[throttle.save]\nmin_interval = 0\n", "throttle.save.min_interval must be a number"),
        ("throttle = 5\n", "throttle must be a table"),
        ('[routes]\nconsole = "train_end"\n', "routes.console must be a list of names"),
        ('[routes]\nconsole = ["train_ends"]\n', "routes.console names an unknown event"),
        ('backends = ["slack"]\n[routes]\nemail = ["train_end"]\n', "not in backends (slack)"),
        ("[tool]\nx = 1\n", "tool is not a setting"),
    ],
)
def test_invalid_values_raise_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    message = error(tmp_path, text)
    assert message.startswith(str(tmp_path / "notifier.toml"))
    assert fragment in message


def test_routes_for_backends_chosen_elsewhere_are_kept(tmp_path: Path) -> None:
    write(tmp_path / "notifier.toml", '[routes]\nemail = ["train_error"]\n')
    config = load(tmp_path, {"NOTIFIER_BACKENDS": "slack,email"})
    assert config.routes == {"email": ("train_error",)}
    assert config.backends == ("slack", "email")


def test_backends_as_a_list(tmp_path: Path) -> None:
    write(tmp_path / "notifier.toml", 'backends = ["slack", "console", "slack"]\n')
    config = load(tmp_path)
    assert (config.backends, config.backend_options) == (("slack", "console"), {})


# -- building backends --------------------------------------------------------------------
def test_build_backends_applies_the_file_options(
    tmp_path: Path, slack_env: SlackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLACK_CHANNEL")  # the environment would win (see below)
    write(
        tmp_path / "notifier.toml", '[backends.slack]\nchannel = "#from-file"\n[backends.console]\n'
    )
    config = load(tmp_path)
    built = config.build_backends()
    assert built is not None
    assert [b.describe() for b in built] == ["slack #from-file", "console"]
    # names chosen elsewhere (NOTIFIER_BACKENDS, an argument) still get the file's options
    (slack,) = config.build_backends(["slack"]) or []
    assert slack.describe() == "slack #from-file"
    assert config.build_backends(slack) == [slack]  # instances pass through
    assert Config().build_backends() is None  # nothing chosen: the callback's default


EMAIL_FILE = """
[backends.email]
host = "file.example.org"
sender = "file@example.org"
to = "team@example.org"
starttls = false
"""


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[backends.slack]\nchannel = "#file"\n', {}, {"channel": "#file"}),
        (
            '[backends.slack]\nchannel = "#file"\nblocks = false\n',
            {"SLACK_CHANNEL": "#env"},
            {"channel": "#env", "use_blocks": "False"},  # an option without a variable applies
        ),
        (
            EMAIL_FILE,
            {"SMTP_HOST": "env.example.org", "SMTP_FROM": "env@example.org"},
            {"host": "env.example.org", "sender": "env@example.org", "to": "team@example.org"},
        ),
        (EMAIL_FILE, {"SMTP_STARTTLS": "1"}, {"host": "file.example.org", "starttls": "True"}),
        (EMAIL_FILE, {"SMTP_HOST": ""}, {"host": "file.example.org"}),  # empty counts as unset
    ],
    ids=["slack-file", "slack-env-wins", "email-env-wins", "email-flag", "empty-is-unset"],
)
def test_environment_variables_override_the_files_backend_options(
    text: str,
    env: dict[str, str],
    expected: dict[str, str],
    tmp_path: Path,
    slack_env: SlackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 5: "NotifierCallback() with no arguments uses it, environment variables override it".
    for name in ("SLACK_CHANNEL", "SMTP_HOST", "SMTP_SENDER", "SMTP_FROM", "SMTP_STARTTLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write(tmp_path / "notifier.toml", text)
    (backend,) = load(tmp_path).build_backends() or []
    for attribute, value in expected.items():
        assert value in str(getattr(backend, attribute)), attribute


def test_an_explicit_option_still_beats_the_environment(
    tmp_path: Path, slack_env: SlackServer
) -> None:
    from notifier.plugins import get_backend

    assert get_backend("slack", channel="#explicit").describe() == "slack #explicit"
    write(tmp_path / "notifier.toml", '[backends.slack]\nchannel = "#file"\n')
    (slack,) = load(tmp_path).build_backends() or []
    assert slack.describe() == "slack #train"  # SLACK_CHANNEL, from slack_env


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[backends.slack]\nchanel = "#x"\n',
            "backends.slack.chanel is not an option of the slack backend. Did you mean "
            "'channel'? Options: channel, token, base_url,",
        ),
        (
            '[backends.console]\ncolour = "red"\n',
            "backends.console.colour is not an option of the console backend. Options: stream.",
        ),
        (
            '[backends.email]\nhots = "x"\n',
            "backends.email.hots is not an option of the email backend. Did you mean 'host'? "
            "Options: host, port, sender,",
        ),
    ],
    ids=["slack", "console", "email"],
)
def test_build_backends_names_the_file_and_key_of_an_unknown_option(
    text: str, message: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "notifier.toml", text)
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path).build_backends()
    assert str(info.value).startswith(f"{source}: {message}")


class Legacy(notifier.Backend):
    """A plugin taking an option only through **options, checked the older way."""

    name = "legacy"

    def __init__(self, **options: Any) -> None:
        check_options(self.name, options, {"colour"})
        self.colour = options.get("colour")


class Modern(notifier.Backend):
    """A plugin that lets check_options read its signature."""

    name = "modern"

    def __init__(self, channel: str = "", *, timeout: float = 1.0, **options: Any) -> None:
        check_options(self, options)
        self.channel = channel


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Legacy and Modern registered by name, as an installed plugin would be."""
    for cls in (Legacy, Modern):
        monkeypatch.setitem(
            default_registry()._backends, cls.name, BackendInfo(cls.name, cls, "tests")
        )


@pytest.mark.parametrize(
    ("text", "attribute", "value"),
    [
        ('[backends.legacy]\ncolour = "red"\n', "colour", "red"),
        ("[backends.modern]\n", "channel", ""),
    ],
)
def test_a_plugins_own_options_are_honoured(
    text: str, attribute: str, value: str, tmp_path: Path, plugins: None
) -> None:
    write(tmp_path / "notifier.toml", text)
    (backend,) = load(tmp_path).build_backends() or []
    assert getattr(backend, attribute) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[backends.legacy]\ncolor = "red"\n',
            "backends.legacy.color is not an option of the legacy backend. Did you mean "
            "'colour'? Options: colour.",
        ),
        (
            '[backends.modern]\nchanel = "#x"\n',
            "backends.modern.chanel is not an option of the modern backend. Did you mean "
            "'channel'? Options: channel, timeout.",
        ),
    ],
)
def test_a_plugins_unknown_option_names_the_file_and_key(
    text: str, message: str, tmp_path: Path, plugins: None
) -> None:
    source = write(tmp_path / "notifier.toml", text)
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path).build_backends()
    assert str(info.value) == f"{source}: {message}"


def test_check_options_reads_the_signature_when_given_the_backend() -> None:
    with pytest.raises(ConfigurationError) as info:
        Modern(chanel="#x", tmeout=2)
    assert str(info.value) == (
        "modern backend: unknown option(s) chanel (did you mean channel?), tmeout (did you "
        "mean timeout?); accepted: channel, timeout."
    )
    with pytest.raises(
        ConfigurationError, match=r"unknown option\(s\) color \(did you mean colour"
    ):
        Legacy(color="red")


def test_build_backends_names_the_file_when_an_option_value_is_wrong(
    tmp_path: Path, slack_env: SlackServer
) -> None:
    source = write(tmp_path / "notifier.toml", '[backends.slack]\ntimeout = "soon"\n')
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path).build_backends()
    assert "slack backend: timeout must be a number of seconds" in str(info.value)
    assert f"(with options timeout from {source})" in str(info.value)


class Strict(notifier.Backend):
    """A plugin whose constructor takes no **options: Python itself refuses an unknown one."""

    name = "strict"

    def __init__(self, colour: str = "red") -> None:
        self.colour = colour


def test_a_strict_plugin_refusing_a_file_option_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(default_registry(), "get", lambda name: Strict)
    monkeypatch.setattr("notifier.plugins.get_backend", lambda name, **o: Strict(**o))
    source = write(tmp_path / "notifier.toml", '[backends.strict]\ncolor = "blue"\n')
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path).build_backends()
    assert str(info.value).startswith(
        f"{source}: the strict backend refused its options (backends.strict.color): "
    )
    assert "unexpected keyword argument 'color'" in str(info.value)
