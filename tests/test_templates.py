"""Templates: overrides and lookup order, template errors, escaping, the sandbox and the context."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from transformers import Trainer, TrainingArguments

import notifier
import notifier.templates
from conftest import TOKEN, RecordingBackend
from notifier.context import CONTEXT_NAMES, sample_context
from notifier.plugins import default_registry
from notifier.templates import Templates
from slack_server import SlackServer
from tiny import TinyRegressor, make_trainer

HUB_TOKEN = "hf_NotARealTokenJustForTheTests0123456789"
#: The training events (alerts have their own tests).
EVENTS = ("train_begin", "epoch_end", "evaluate", "save", "train_end", "train_error")


class OtherBackend(RecordingBackend):
    """A second recording backend with its own name, for per-backend templates."""

    name = "other"


def write(directory: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


def as_source(kind: str, files: Mapping[str, str], tmp_path: Path) -> Any:
    """The same templates as a directory or as a dict ({event: text})."""
    if kind == "dir":
        return write(tmp_path / "templates", {f"{k}.j2": v for k, v in files.items()})
    return dict(files)


def train(
    tmp_path: Path,
    backends: list[notifier.Backend],
    *,
    templates: Any = None,
    events: list[str] | None = None,
    **args: Any,
) -> tuple[notifier.NotifierCallback, Trainer]:
    callback = notifier.NotifierCallback(backends, events=events, templates=templates)
    trainer = make_trainer(tmp_path / "run", [callback], **args)
    trainer.train()
    assert callback.flush(10)
    return callback, trainer


def texts(backend: RecordingBackend, event: str) -> list[str]:
    return [m.text for m in backend.messages if m.event == event]


# -- overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_override_replaces_one_event(
    kind: str, tmp_path: Path, recording: RecordingBackend
) -> None:
    source = as_source(
        kind,
        {"epoch_end": "Epoch {{ epoch|number }} of {{ run_name }} at {{ global_step }}"},
        tmp_path,
    )
    train(tmp_path, [recording], templates=source)
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert texts(recording, "epoch_end") == ["Epoch 1 of run at 4", "Epoch 2 of run at 8"]
    # Every other event keeps its default template.
    assert texts(recording, "train_begin")[0].startswith("🚀 Training started: run")
    assert texts(recording, "train_end")[0].startswith("✅ Training finished: run")


def test_dict_keys_may_carry_the_file_suffix(tmp_path: Path, recording: RecordingBackend) -> None:
    train(tmp_path, [recording], templates={"train_begin.j2": "go {{ run_name }}"})
    assert texts(recording, "train_begin") == ["go run"]


@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_extends_default_and_replaces_the_headline(
    kind: str, tmp_path: Path, recording: RecordingBackend
) -> None:
    child = (
        '{% extends "default:epoch_end.j2" %}'
        "{% block headline %}Epoch {{ epoch|number }} done{% endblock %}"
    )
    train(tmp_path, [recording], templates=as_source(kind, {"epoch_end": child}, tmp_path))
    messages = [m for m in recording.messages if m.event == "epoch_end"]
    assert [m.title for m in messages] == ["Epoch 1 done", "Epoch 2 done"]
    for message, step in zip(messages, (4, 8), strict=True):
        assert "📈" not in message.text
        assert f"step {step}/8" in message.body  # the default details block is still there
        assert "Train: loss" in message.body
        assert f"Output: {tmp_path / 'run'}" in message.body


def _split(text: str) -> tuple[str, str]:
    message = notifier.Message(event="x", text=text)
    return message.title, message.body


@pytest.mark.parametrize("event", EVENTS)
def test_extends_replacing_the_headline_keeps_the_rest(event: str) -> None:
    child = f'{{% extends "default:{event}.j2" %}}{{% block headline %}}NEW{{% endblock %}}'
    context = sample_context(event)
    default = Templates().render(event, context)["text"]
    replaced = Templates({event: child}).render(event, context)["text"]
    assert _split(replaced) == ("NEW", _split(default)[1])


@pytest.mark.parametrize("event", EVENTS)
def test_extends_replacing_the_details_keeps_the_rest(event: str) -> None:
    child = f'{{% extends "default:{event}.j2" %}}{{% block details %}}NEW{{% endblock %}}'
    context = sample_context(event)
    default_title, default_body = _split(Templates().render(event, context)["text"])
    title, body = _split(Templates({event: child}).render(event, context)["text"])
    assert title == default_title
    assert body.startswith("NEW")
    assert "Output:" not in body
    if event == "train_error":
        assert body.endswith(default_body[default_body.index("```") :])  # traceback kept
    else:
        assert body == "NEW"


def test_extends_replacing_the_traceback() -> None:
    child = (
        '{% extends "default:train_error.j2" %}'
        "{% block traceback %}(traceback in the logs){% endblock %}"
    )
    context = sample_context("train_error")
    default = Templates().render("train_error", context)["text"]
    replaced = Templates({"train_error": child}).render("train_error", context)["text"]
    assert "```" in default and "```" not in replaced
    assert replaced == default[: default.index("```")] + "(traceback in the logs)"


def test_super_keeps_the_default_block() -> None:
    child = (
        '{% extends "default:epoch_end.j2" %}'
        "{% block headline %}{{ super() }} (tuning run){% endblock %}"
    )
    context = sample_context("epoch_end")
    default = Templates().render("epoch_end", context)["text"]
    replaced = Templates({"epoch_end": child}).render("epoch_end", context)["text"]
    assert replaced == default.replace("epoch 2/3", "epoch 2/3 (tuning run)", 1)


# -- lookup order -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_backend_variant_beats_the_generic_template(
    kind: str, tmp_path: Path, recording: RecordingBackend
) -> None:
    other = OtherBackend()
    files = {
        "recording/epoch_end": "for recording: {{ epoch|number }}",
        "epoch_end": "for anyone: {{ epoch|number }}",
    }
    train(tmp_path, [recording, other], templates=as_source(kind, files, tmp_path))
    assert texts(recording, "epoch_end") == ["for recording: 1", "for recording: 2"]
    assert texts(other, "epoch_end") == ["for anyone: 1", "for anyone: 2"]
    # The variant is only for its event: train_begin is the default for both.
    assert texts(recording, "train_begin") == texts(other, "train_begin")


@pytest.fixture
def shipped_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default templates that also ship a variant for the "recording" backend."""
    defaults = tmp_path / "shipped"
    shutil.copytree(notifier.templates.default_templates_dir(), defaults)
    write(defaults, {"recording/epoch_end.j2": "shipped for recording"})
    monkeypatch.setattr(notifier.templates, "default_templates_dir", lambda: defaults)
    return defaults


@pytest.mark.parametrize(
    ("user", "for_recording", "for_other"),
    [
        (None, "shipped for recording", "default"),
        ({"epoch_end": "user generic"}, "user generic", "user generic"),
        ({"recording/epoch_end": "user for recording"}, "user for recording", "default"),
        ({"other/epoch_end": "user for other"}, "shipped for recording", "user for other"),
        (
            {"epoch_end": "user generic", "recording/epoch_end": "user for recording"},
            "user for recording",
            "user generic",
        ),
    ],
)
def test_lookup_order(
    shipped_variant: Path, user: dict[str, str] | None, for_recording: str, for_other: str
) -> None:
    context = sample_context("epoch_end")
    default = Templates().render("epoch_end", context)["text"]
    expected = {"recording": for_recording, "other": for_other}
    for backend in ("recording", "other"):
        rendered = Templates(user, backend=backend).render("epoch_end", context)["text"]
        assert rendered == (default if expected[backend] == "default" else expected[backend])


def test_shared_snippets_with_a_leading_underscore(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    directory = write(
        tmp_path / "templates",
        {
            "_macros.j2": "{% macro tag(name) %}[{{ name }}]{% endmacro %}",
            "train_begin.j2": '{% import "_macros.j2" as m %}{{ m.tag(run_name) }} started',
        },
    )
    train(tmp_path, [recording], templates=directory, epochs=1)
    assert texts(recording, "train_begin") == ["[run] started"]


# -- template errors at construction -------------------------------------------------------

BROKEN = [
    ("Epoch {{ epoch|number }}\n{% if checkpoint %}\nSaved\n", 3, "Unexpected end of template"),
    ("line one\n{{ epoch | numbr }}\n", 2, "No filter named 'numbr'"),
    ("a\nb\n{{ run_name }\n", 3, "unexpected '}'"),
    (
        '{% extends "default:epoch_end.j2" %}\n{% block headline %}{{ epoch }{% endblock %}',
        2,
        "unexpected '}'",
    ),
]


@pytest.mark.parametrize(("text", "line", "problem"), BROKEN)
def test_syntax_error_in_a_directory_names_event_file_and_line(
    text: str, line: int, problem: str, tmp_path: Path, recording: RecordingBackend
) -> None:
    directory = write(tmp_path / "templates", {"epoch_end.j2": text})
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates=directory)
    message = str(info.value)
    assert "'epoch_end'" in message
    assert str(directory / "epoch_end.j2") in message
    assert f"line {line}" in message
    assert problem in message
    assert isinstance(info.value, notifier.ConfigurationError)


@pytest.mark.parametrize(("text", "line", "problem"), BROKEN)
def test_syntax_error_in_a_dict_names_event_key_and_line(
    text: str, line: int, problem: str, recording: RecordingBackend
) -> None:
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates={"epoch_end": text})
    message = str(info.value)
    assert "'epoch_end'" in message
    assert "templates['epoch_end']" in message
    assert f"line {line}" in message
    assert problem in message


def test_syntax_error_in_a_backend_variant(tmp_path: Path, recording: RecordingBackend) -> None:
    directory = write(tmp_path / "templates", {"recording/save.j2": "ok\n{% for %}"})
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates=directory, events=["save"])
    assert "'save'" in str(info.value)
    assert str(directory / "recording" / "save.j2") in str(info.value)
    assert "line 2" in str(info.value)


@pytest.mark.parametrize(
    ("files", "name", "suggestion"),
    [
        ({"epoch_ned": "x"}, "epoch_ned", "epoch_end"),
        ({"recording/evalute": "x"}, "evalute", "evaluate"),
        ({"trian_begin.html": "x"}, "trian_begin", "train_begin"),
        ({"train_end": "x", "saved": "x"}, "saved", "save"),
    ],
)
@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_unknown_event_name_is_rejected_with_a_suggestion(
    kind: str,
    files: dict[str, str],
    name: str,
    suggestion: str,
    tmp_path: Path,
    recording: RecordingBackend,
) -> None:
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates=as_source(kind, files, tmp_path))
    message = str(info.value)
    assert f"({name!r})" in message
    assert f"Did you mean {suggestion!r}?" in message
    if kind == "dir":
        assert str(tmp_path / "templates") in message
        assert "_macros.j2" in message  # how to name a shared snippet instead


def test_missing_templates_directory(tmp_path: Path, recording: RecordingBackend) -> None:
    with pytest.raises(notifier.TemplateError, match="does not exist"):
        notifier.NotifierCallback([recording], templates=tmp_path / "nope")


# Each of these constructed fine before every user file was compiled and every selected
# template rendered once: the error only showed (as a fallback message) mid-training.
CAUGHT_AT_CONSTRUCTION = [
    pytest.param(
        {"evaluate": "ok\n{% if %}"},  # evaluate is not among the default events
        ["'evaluate'", "line 2", "Expected an expression"],
        id="unselected-event",
    ),
    pytest.param(
        {"save": "{% for %}"},
        ["'save'", "line 1"],
        id="unselected-event-file",
    ),
    pytest.param(
        {"epoch_end.subject": "a\nb\n{% if %}"},  # a part the recording backend does not have
        ["'epoch_end'", "epoch_end.subject", "line 3"],
        id="unused-part",
    ),
    pytest.param(
        {"epoch_end": 'Epoch {{ epoch }}\n{% include "_m.j2" %}'},
        ["'epoch_end'", "line 2", "'_m.j2'", "does not exist"],
        id="missing-include",
    ),
    pytest.param(
        {"epoch_end": '{% extends "epoch_end.j2" %}{% block headline %}x{% endblock %}'},
        ["'epoch_end'", "extends or includes itself", '"default:epoch_end.j2"'],
        id="extends-itself",
    ),
    pytest.param(
        {"train_end": 'Done\n{% include "train_end.j2" %}'},
        ["'train_end'", "extends or includes itself"],
        id="includes-itself",
    ),
    pytest.param(
        {"epoch_end": '{% extends "default:epoch_end.j2" %}\n{% block headlin %}x{% endblock %}'},
        ["'epoch_end'", "line 2", "'headlin'", "Did you mean 'headline'?", "details, headline"],
        id="misspelt-block",
    ),
    pytest.param(
        {"epoch_end": '{% extends "default:epoch_end.j2" %}{% block metrics %}x{% endblock %}'},
        ["'metrics'", "'default:epoch_end.j2' does not have", "details, headline"],
        id="block-of-another-template",
    ),
    pytest.param(
        {"epoch_end": '{% extends "epoch_end_base.j2" %}'},
        ["'epoch_end'", "'epoch_end_base.j2'", "does not exist"],
        id="missing-parent",
    ),
]


@pytest.mark.parametrize(("files", "expected"), CAUGHT_AT_CONSTRUCTION)
@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_every_template_is_checked_at_construction(
    kind: str,
    files: dict[str, str],
    expected: list[str],
    tmp_path: Path,
    recording: RecordingBackend,
) -> None:
    source = as_source(kind, files, tmp_path)
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates=source, config=False)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message
    (key,) = files
    where = str(tmp_path / "templates" / f"{key}.j2") if kind == "dir" else f"templates[{key!r}]"
    assert where in message, message


@pytest.mark.parametrize("kind", ["dir", "dict"])
def test_misspelt_backend_folder_is_named_with_the_installed_backends(
    kind: str, tmp_path: Path, recording: RecordingBackend
) -> None:
    source = as_source(kind, {"slak/epoch_end": "x", "epoch_end": "y"}, tmp_path)
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates=source, config=False)
    message = str(info.value)
    assert "('slak')" in message and "Did you mean 'slack'?" in message
    assert "Installed backends: " in message
    assert {"console", "slack"} <= set(
        message.split("Installed backends: ")[1].split(". ")[0].split(", ")
    )
    if kind == "dir":
        assert str(tmp_path / "templates" / "slak") in message


def test_a_folder_may_be_named_after_any_backend_in_use(tmp_path: Path) -> None:
    class Custom(RecordingBackend):
        name = "custom-only-here"

    files = {"custom-only-here/epoch_end": "custom", "slack/epoch_end": "s", "_parts/_m": "m"}
    Templates(files, backend="recording")  # a defined Backend class, an installed one, "_"
    with pytest.raises(notifier.TemplateError, match="'mine'"):
        Templates({"mine/epoch_end": "x"}, backend="recording")
    Templates({"mine/epoch_end": "x"}, backend="recording", known_backends=["mine"])


@pytest.mark.parametrize(
    "text",
    [
        "{{ (metrics.accuracy * 100)|number }}",  # fine whenever the run logs accuracy
        "{{ run_name ~ '' }}{% if error %}{{ error.message.upper() }}{% endif %}",
        '{% extends "_base.j2" %}{% block headline %}H{% endblock %}',  # a grandparent's block
        '{% import "_m.j2" as m %}{{ m.tag(run_name) }}',
        # Names a parent defines: a macro, a top-level set, an import.
        '{% extends "_defines.j2" %}'
        "{% block headline %}{{ tag(banner) }}{{ m.tag(1) }}{% endblock %}",
    ],
)
def test_checks_do_not_reject_templates_that_work_at_run_time(text: str) -> None:
    files = {
        "epoch_end": text,
        "_base": '{% extends "default:epoch_end.j2" %}',
        "_m": "{% macro tag(x) %}[{{ x }}]{% endmacro %}",
        "_defines": '{% macro tag(x) %}<{{ x }}>{% endmacro %}{% set banner = "b" %}'
        '{% import "_m.j2" as m %}{% block headline %}{% endblock %}',
    }
    Templates(files)


def test_hidden_files_and_snippet_folders_in_a_templates_directory(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    for name, text in {
        ".ipynb_checkpoints/epoch_end-checkpoint.j2": "{% if %}",  # JupyterLab's copies
        ".git/x.j2": "x",
        ".#epoch_end.j2": "lock",  # an editor's lock file
        "_shared/header.j2": "[{{ run_name }}]",  # a snippet folder: any file name
        "epoch_end.j2": '{% include "_shared/header.j2" %} epoch {{ epoch|number }}',
    }.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text(text, encoding="utf-8")
    templates = Templates(mine, events=("epoch_end",))
    context = sample_context("epoch_end")
    assert templates.render("epoch_end", context)["text"] == "[bert-base-sst2] epoch 2"


def test_a_copy_of_the_default_templates_is_accepted_for_every_backend(tmp_path: Path) -> None:
    # The way users start customising: copy the defaults (the e-mail ones use the layout's
    # ``table`` macro), then edit.
    shutil.copytree(
        Path(str(resources.files("notifier_templates"))),
        tmp_path / "mine",
        ignore=shutil.ignore_patterns("*.py", "__pycache__"),
    )
    for name in ("console", "slack", "discord", "email", "webhook"):
        cls = default_registry().get(name)
        events = [e for e in notifier.templates.EVENTS if e != "progress" or cls.progress_interval]
        Templates(
            tmp_path / "mine",
            backend=name,
            parts=cls.parts,
            optional_parts=cls.optional_parts,
            events=events,
        )


@pytest.mark.parametrize(
    "text",
    ["{% if false %}x{% endif %}", "  \n\t\n", "{{ '\u200b' }}\n", "\ufeff {{ '' }}\u200b"],
)
def test_a_template_showing_nothing_renders_exactly_empty(text: str) -> None:
    rendered = Templates({"save": text}, events=("save",)).render("save", {"checkpoint": None})
    assert rendered == {"text": ""}


def test_a_message_showing_nothing_is_not_posted_to_slack(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    # Slack answers no_text to a message of only invisible characters.
    only_last = "{% if epoch == num_train_epochs %}last epoch{% endif %}\u200b"
    callback = notifier.NotifierCallback(
        [_slack(slack_server)], templates={"epoch_end": only_last}, config=False
    )
    make_trainer(tmp_path / "run", [callback]).train()
    assert callback.flush(10)
    headlines = [text.split("\n")[0] for text in slack_server.texts()]
    assert headlines[1:] == ["last epoch", "✅ Training finished: run"]


@pytest.mark.parametrize(
    ("key", "text", "unknown", "suggestion"),
    [
        ("epoch_end", "{{ run_nmae }}", "run_nmae", "run_name"),
        ("epoch_end", "{% if chekpoint %}saved{% endif %}", "chekpoint", "checkpoint"),
        ("epoch_end", "{{ evalmetrics|metrics }}", "evalmetrics", "eval_metrics"),
        (
            "epoch_end",
            '{% extends "default:epoch_end.j2" %}{% block headline %}{{ epoc }}{% endblock %}',
            "epoc",
            "epoch",
        ),
        ("recording/train_end", "{{ globl_step }} steps", "globl_step", "global_step"),
        ("train_error", "{{ error.kind }} {{ eror.message }}", "eror", "error"),
    ],
)
def test_unknown_context_name_is_rejected(
    key: str, text: str, unknown: str, suggestion: str, recording: RecordingBackend
) -> None:
    with pytest.raises(notifier.TemplateError) as info:
        notifier.NotifierCallback([recording], templates={key: text})
    message = str(info.value)
    assert f"uses {unknown!r}" in message
    assert f"Did you mean {suggestion!r}?" in message
    assert f"templates[{key!r}]" in message


@pytest.mark.parametrize(
    "text",
    [
        "{% for name, value in metrics.items() %}{{ loop.index }}:{{ name }}={{ value }} "
        "{% endfor %}",
        "{% set done = global_step >= max_steps %}{{ 'done' if done else 'running' }}",
        "{% macro pct(x) %}{{ x|percent }}{% endmacro %}{{ pct(progress) }}",
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}",
        "{{ metrics.loss|number }} {{ eval_metrics.get('eval_loss')|number }}",
    ],
)
def test_template_constructs_are_not_mistaken_for_typos(text: str) -> None:
    templates = Templates({"epoch_end": text})
    assert templates.render("epoch_end", sample_context("epoch_end"))["text"]


# -- escaping ------------------------------------------------------------------------------

RUN_NAME = "<!channel> & co"
ESCAPED = "&lt;!channel&gt; &amp; co"


def _slack(server: SlackServer) -> notifier.Backend:
    return notifier.get_backend("slack", channel="#train", token=TOKEN, base_url=server.base_url)


def _blocks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = body.get("blocks") or []
    return list(json.loads(blocks) if isinstance(blocks, str) else blocks)


def test_slack_escapes_values_but_not_template_text(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    template = "Started {{ run_name }}: <https://example.org|link> *{{ host }}*"
    callback, _ = train(
        tmp_path,
        [_slack(slack_server)],
        templates={"train_begin": template},
        run_name=RUN_NAME,
        epochs=1,
    )
    requests = slack_server.wait_for(3)
    sent = [r.body["text"] for r in requests]
    assert sent[0].startswith(f"Started {ESCAPED}: <https://example.org|link> *")
    assert sent[1].startswith(f"📈 {ESCAPED}: epoch 1/1")
    assert sent[2].startswith(f"✅ Training finished: {ESCAPED}")
    for request in requests:
        assert "<!channel>" not in request.body["text"]
        assert "& co" not in request.body["text"]
        for block in _blocks(request.body):
            if block.get("text", {}).get("type") == "mrkdwn":
                assert "<!channel>" not in block["text"]["text"]


def test_slack_fallback_message_is_escaped_too(
    slack_server: SlackServer, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    train(
        tmp_path,
        [_slack(slack_server)],
        templates={"train_begin": "{{ run_name.__class__ }}"},
        events=["train_begin"],
        run_name=RUN_NAME,
        epochs=1,
    )
    assert [r.body["text"] for r in slack_server.wait_for(1)] == [
        f"train begin: {ESCAPED} (step 0)"
    ]


# -- the sandbox ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ run_name.__class__.__base__.__subclasses__()|length }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ '{0.__class__}'.format(run_name) }}",
        "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}x",
        "{% if metrics.__class__ %}yes{% endif %}x",
    ],
)
def test_sandbox_escape_fails_safely(
    attack: str,
    tmp_path: Path,
    recording: RecordingBackend,
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    _, trainer = train(tmp_path, [recording], templates={"epoch_end": attack})
    assert trainer.state.global_step == 8  # training was not disturbed
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert texts(recording, "epoch_end") == ["epoch end: run (step 4)", "epoch end: run (step 8)"]
    assert texts(recording, "train_begin")[0].startswith("🚀 Training started")
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per event and backend, not per message
    assert "epoch_end template for recording failed (SecurityError" in warnings[0]
    assert "plain message" in warnings[0]
    for message in recording.messages:
        assert "class" not in message.text


# -- the context --------------------------------------------------------------------------

PLAIN = (str, int, float, bool, type(None))


def walk(value: Any, path: str = "context") -> list[tuple[str, Any]]:
    """Every (path, leaf) of a context, failing on anything but plain values."""
    if isinstance(value, dict):
        leaves: list[tuple[str, Any]] = []
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r} is not a str"
            leaves += walk(item, f"{path}.{key}")
        return leaves
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in walk(item, f"{path}[{i}]")]
    assert type(value) in PLAIN, f"{path} is a {type(value).__name__}, not a plain value"
    return [(path, value)]


@pytest.fixture
def uncaught(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """sys.excepthook as a recorder, under the guard, to feed it an uncaught exception."""
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: seen.append(info))
    return seen


def _crashed_run(tmp_path: Path, backend: RecordingBackend, seen: list[tuple[Any, ...]]) -> None:
    """A run that dies in epoch 2, reported as Python would report an uncaught exception."""
    callback = notifier.NotifierCallback([backend], events=list(EVENTS))
    trainer = make_trainer(
        tmp_path / "crash",
        [callback],
        model=TinyRegressor(crash_at=7),
        hub_token=HUB_TOKEN,
        eval_strategy="epoch",
    )
    with pytest.raises(RuntimeError, match="boom") as info:
        trainer.train()
    sys.excepthook(info.type, info.value, info.tb)
    assert len(seen) == 1  # the guard handed the exception on
    assert callback.flush(10)


def test_context_holds_only_plain_documented_values(
    tmp_path: Path, recording: RecordingBackend, uncaught: list[tuple[Any, ...]]
) -> None:
    _, trainer = train(
        tmp_path,
        [recording],
        events=list(EVENTS),
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        hub_token=HUB_TOKEN,
    )
    assert trainer.args.hub_token == HUB_TOKEN
    _crashed_run(tmp_path, recording, uncaught)
    assert set(recording.events) == set(EVENTS)  # every event's context is walked
    for message in recording.messages:
        assert set(message.context) <= set(CONTEXT_NAMES)
        assert set(message.context) >= {"run_name", "metrics", "eval_metrics", "error"}
        for path, leaf in walk(dict(message.context)):
            assert not isinstance(leaf, TrainingArguments), path
            if isinstance(leaf, str):
                assert HUB_TOKEN not in leaf, path
        assert HUB_TOKEN not in message.text
    error = [m for m in recording.messages if m.event == "train_error"][0].context["error"]
    assert error["kind"] == "crash"
    assert error["type"] == "RuntimeError"
    assert "boom at forward call 7" in error["traceback"]


def test_no_message_says_none(
    tmp_path: Path, recording: RecordingBackend, uncaught: list[tuple[Any, ...]]
) -> None:
    train(
        tmp_path,
        [recording],
        events=list(EVENTS),
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
    )
    _crashed_run(tmp_path, recording, uncaught)
    begin = recording.messages[0]
    assert begin.event == "train_begin"
    assert begin.context["eta"] is None and begin.context["metrics"] == {}
    assert begin.context["best_metric"] is None
    assert set(recording.events) == set(EVENTS)
    for message in recording.messages:
        assert "None" not in message.text, message.text


#: Values the tracker leaves at None when it does not know them (yet).
UNKNOWN = (
    "hub_model_id",
    "epoch",
    "num_train_epochs",
    "global_step",
    "max_steps",
    "progress",
    "elapsed",
    "eta",
    "best_metric",
    "best_model_checkpoint",
    "checkpoint",
)


@pytest.mark.parametrize("event", EVENTS)
def test_default_templates_render_unknown_values_as_a_dash(event: str) -> None:
    context: dict[str, Any] = {**sample_context(event), **dict.fromkeys(UNKNOWN)}
    context.update(metrics={}, eval_metrics={}, output_dir=None, run_name=None)
    text = Templates().render(event, context)["text"]
    assert "None" not in text
    assert "—" in text
