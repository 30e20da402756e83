"""The plugin system: entry-point discovery, the notifier-echo example plugin and bad plugins."""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import json
import logging
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import notifier
from notifier import hookspecs
from notifier.plugins import Registry, default_registry, get_plugin_manager, load_entrypoints
from tiny import make_trainer

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = {"console": "notifier_backends.console", "slack": "notifier_backends.slack"}


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("notifier")
    ]


def fresh_registry(*plugins: tuple[str, str, object], before: bool = False) -> Registry:
    """A registry of the installed entry points plus ``(name, provider, plugin)`` extras,
    registered before or after the entry points."""
    pm = get_plugin_manager()
    if before:
        for name, _, plugin in plugins:
            pm.register(plugin, name=name)
    providers = load_entrypoints(pm)
    if not before:
        for name, _, plugin in plugins:
            pm.register(plugin, name=name)
    providers.update({name: provider for name, provider, _ in plugins})
    return Registry(pm, providers)


def plugin_module(name: str, register_backends: Callable[[Any], None]) -> types.ModuleType:
    """A plugin as an entry point would load it: a module with the hookimpl."""
    module = types.ModuleType(name)
    module.register_backends = notifier.hookimpl(register_backends)  # type: ignore[attr-defined]
    return module


# -- the installed example plugin ------------------------------------------------------------
def test_installed_plugin_is_found_with_its_distribution() -> None:
    assert {"console", "slack", "echo"} <= set(notifier.available_backends())
    providers = {info.name: info.provider for info in default_registry().info()}
    assert providers["echo"] == "notifier-echo"
    assert providers["console"] == providers["slack"] == "notifier"
    assert default_registry().get("echo").__module__ == "notifier_echo"


def test_plugin_backend_receives_a_real_training_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "notifications.jsonl"
    monkeypatch.setenv("ECHO_FILE", str(out))
    callback = notifier.NotifierCallback(backends=["echo"])
    make_trainer(tmp_path / "run-echo", [callback]).train()
    assert callback.flush(10)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["event"] for line in lines] == [
        "train_begin",
        "epoch_end",
        "epoch_end",
        "train_end",
    ]
    assert lines[0]["text"].startswith("🚀 Training started: run-echo")
    assert lines[2]["text"].startswith("📈 run-echo: epoch 2/2")
    assert lines[3]["text"].startswith("✅ Training finished: run-echo")
    assert callback.stats == {"echo": {"sent": 4, "dropped": 0, "failed": 0}}


def test_plugin_backend_options_and_their_errors(tmp_path: Path) -> None:
    stream = io.StringIO()
    backend = notifier.get_backend("echo", stream=stream)
    backend.send(notifier.Message(event="save", text="saved\nline two"))
    assert json.loads(stream.getvalue()) == {"event": "save", "text": "saved\nline two"}
    with pytest.raises(notifier.ConfigurationError, match="unknown option.*colour"):
        notifier.get_backend("echo", colour="red")
    with pytest.raises(notifier.ConfigurationError, match="ECHO_FILE"):
        notifier.get_backend("echo", path=str(tmp_path / "missing-dir" / "out.jsonl"))


# -- built-ins are plugins too ---------------------------------------------------------------
def test_builtins_register_through_entry_points_like_the_plugin() -> None:
    def group(distribution: str) -> dict[str, importlib.metadata.EntryPoint]:
        entry_points = importlib.metadata.distribution(distribution).entry_points
        return {ep.name: ep for ep in entry_points if ep.group == hookspecs.PROJECT}

    builtin, echo = group("notifier"), group("notifier-echo")
    assert {name: ep.value for name, ep in builtin.items() if name in BUILTINS} == BUILTINS
    assert {name: ep.value for name, ep in echo.items()} == {"echo": "notifier_echo"}

    pm = get_plugin_manager()
    providers = load_entrypoints(pm)
    registry = Registry(pm, providers)
    for name, ep in {**builtin, **echo}.items():
        module = ep.load()
        assert pm.get_plugin(name) is module
        assert hasattr(module.register_backends, f"{hookspecs.PROJECT}_impl"), name
        assert providers[name] == ep.dist.name  # type: ignore[union-attr]
    for name in (*BUILTINS, "echo"):
        assert registry.get(name).__module__ == builtin.get(name, echo.get(name)).value  # type: ignore[union-attr]


def test_the_core_imports_no_backend() -> None:
    code = (
        "import sys, notifier\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('notifier_backends.', "
        "'notifier_echo')))\n"
        "assert not loaded, loaded\n"
        "notifier.available_backends()\n"
        "assert 'notifier_backends.slack' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -- broken plugins --------------------------------------------------------------------------
BROKEN_MODULES = {
    "raises": "raise RuntimeError('plugin import exploded')\n",
    "bad-hook": "import notifier\n\n@notifier.hookimpl\ndef register_backends(registrar):\n"
    "    pass\n",
    "syntax": "def (\n",
}


@pytest.fixture
def forget_modules() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", [*BROKEN_MODULES, "missing-module"])
def test_plugin_that_fails_to_load_warns_once_and_others_work(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    notifier_logs: pytest.LogCaptureFixture,
    forget_modules: list[str],
) -> None:
    module = f"broken_notifier_plugin_{kind.replace('-', '_')}"
    forget_modules.append(module)
    dist_info = tmp_path / "broken_notifier_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-notifier-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[notifier]\nbroken = {module}\n")
    if kind in BROKEN_MODULES:
        (tmp_path / f"{module}.py").write_text(BROKEN_MODULES[kind])
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken-notifier-plugin" in {
        ep.dist.name  # type: ignore[union-attr]
        for ep in importlib.metadata.entry_points(group="notifier")
    }

    pm = get_plugin_manager()
    registry = Registry(pm, load_entrypoints(pm))

    warnings = warnings_from(notifier_logs)
    assert len(warnings) == 1, warnings
    assert "'broken'" in warnings[0] and "broken-notifier-plugin" in warnings[0]
    assert not pm.has_plugin("broken")
    assert {"console", "slack", "echo"} <= set(registry.names())
    stream = io.StringIO()
    registry.create("echo", stream=stream).send(notifier.Message(event="save", text="still here"))
    assert "still here" in stream.getvalue()


class Impostor(notifier.Backend):
    name = "slack"
    description = "claims the built-in Slack name"


class ConsoleImpostor(notifier.Backend):
    name = "console"


class Legit(notifier.Backend):
    name = "legit"


@pytest.mark.parametrize("before", [True, False], ids=["loaded-first", "loaded-last"])
@pytest.mark.parametrize("impostor", [Impostor, ConsoleImpostor])
def test_plugin_cannot_replace_a_builtin(
    impostor: type[notifier.Backend], before: bool, notifier_logs: pytest.LogCaptureFixture
) -> None:
    def register_backends(register: Any) -> None:
        register(impostor)
        register(Legit)

    plugin = plugin_module("impostor_plugin", register_backends)
    registry = fresh_registry(("impostor", "impostor-dist", plugin), before=before)

    original = default_registry().get(impostor.name)
    assert registry.get(impostor.name) is original
    assert {i.name: i.provider for i in registry.info()}[impostor.name] == "notifier"
    assert registry.get("legit") is Legit  # the plugin's other backend is kept
    warnings = warnings_from(notifier_logs)
    assert len(warnings) == 1, warnings
    assert repr(impostor.name) in warnings[0] and "impostor-dist" in warnings[0]


NOT_BACKENDS: list[tuple[str, object]] = [
    ("a-class", dict),
    ("a-string", "slack"),
    ("an-instance", Legit()),
    ("no-name", type("Nameless", (notifier.Backend,), {})),
]


@pytest.mark.parametrize("thing", [t for _, t in NOT_BACKENDS], ids=[i for i, _ in NOT_BACKENDS])
def test_plugin_registering_a_non_backend_is_skipped_with_a_warning(
    thing: object, notifier_logs: pytest.LogCaptureFixture
) -> None:
    def register_backends(register: Any) -> None:
        register(thing)

    plugin = plugin_module("odd_plugin", register_backends)
    registry = fresh_registry(("odd", "odd-dist", plugin))

    warnings = warnings_from(notifier_logs)
    assert len(warnings) == 1, warnings
    assert "'odd'" in warnings[0] and "odd-dist" in warnings[0]
    assert "notifier.Backend subclass" in warnings[0] or "has no `name`" in warnings[0]
    assert {"console", "slack", "echo"} <= set(registry.names())
    assert "" not in registry.names()


def test_plugin_whose_hook_raises_does_not_stop_the_others(
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    def register_backends(register: Any) -> None:
        raise KeyError("half-installed")

    registry = fresh_registry(("crashy", "crashy-dist", plugin_module("crashy", register_backends)))
    warnings = warnings_from(notifier_logs)
    assert len(warnings) == 1 and "'crashy'" in warnings[0] and "half-installed" in warnings[0]
    assert {"console", "slack", "echo"} <= set(registry.names())


class DupOk(notifier.Backend):
    """A valid backend a broken plugin registers before failing."""

    name = "dupok"


def _raise_after_registering(register: Any) -> None:
    register(DupOk)
    raise RuntimeError("exploded halfway")


def _register_junk_after(register: Any) -> None:
    register(DupOk)
    register("not a backend")


@pytest.mark.parametrize(
    ("hook", "reason"),
    [(_raise_after_registering, "exploded halfway"), (_register_junk_after, "Backend subclass")],
    ids=["raises", "registers-junk"],
)
def test_plugin_failing_halfway_registers_nothing(
    hook: Callable[[Any], None], reason: str, notifier_logs: pytest.LogCaptureFixture
) -> None:
    registry = fresh_registry(("halfway", "halfway-dist", plugin_module("halfway", hook)))
    warnings = warnings_from(notifier_logs)
    assert len(warnings) == 1, warnings
    assert "'halfway'" in warnings[0] and "is skipped" in warnings[0] and reason in warnings[0]
    assert "dupok" not in registry.names()
    with pytest.raises(notifier.ConfigurationError, match="unknown backend 'dupok'"):
        registry.get("dupok")
    assert {"console", "slack", "echo"} <= set(registry.names())


# -- choosing a backend by name --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("slak", "slack"), ("Slack", "slack"), ("consle", "console"), ("ecoh", "echo"), ("zzz", None)],
)
def test_unknown_backend_lists_names_and_suggests(name: str, suggestion: str | None) -> None:
    with pytest.raises(notifier.ConfigurationError) as caught:
        notifier.get_backend(name)
    message = str(caught.value)
    assert f"unknown backend {name!r}" in message
    assert "Available: " + ", ".join(notifier.available_backends()) in message
    assert "echo" in message and "slack" in message
    if suggestion is None:
        assert "Did you mean" not in message
    else:
        assert f"Did you mean {suggestion!r}?" in message


def test_unknown_backend_fails_at_callback_construction() -> None:
    with pytest.raises(notifier.ConfigurationError, match="Did you mean 'echo'"):
        notifier.NotifierCallback(backends=["console", "ehco"])


# -- the hook specification is documented ----------------------------------------------------
HOOKSPECS = [
    f
    for _, f in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(f, f"{hookspecs.PROJECT}_spec")
]


def test_hookspecs_exist() -> None:
    assert "register_backends" in [f.__name__ for f in HOOKSPECS]


@pytest.mark.parametrize("spec", HOOKSPECS, ids=[f.__name__ for f in HOOKSPECS])
def test_hookspec_has_a_docstring_and_is_in_the_readme(spec: Callable[..., Any]) -> None:
    assert (inspect.getdoc(spec) or "").strip(), f"{spec.__name__} has no docstring"
    signature = f"{spec.__name__}({', '.join(inspect.signature(spec).parameters)})"
    if spec.__name__ == "register_backends":
        assert signature == "register_backends(register)"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert signature in readme, f"README.md does not document {signature}"
