"""The plugin machinery: built-ins and third-party plugins, broken plugins, name clashes, lazy loading, docs.

Every test builds its own plugin manager (``get_plugin_manager``) so nothing leaks between tests; the
autouse fixture in conftest.py keeps installed third-party plugins out unless a test asks for them.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import re
import subprocess
import sys
import types
import warnings

import click
import click.testing
import pluggy
import pytest

from conftest import REPO
from dfcompress import hookimpl, hookspecs
from dfcompress._version import __version__
from dfcompress.errors import AmbiguousComponentError, DFCompressError, UnknownComponentError
from dfcompress.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    build_registry,
    get_plugin_manager,
    get_registry,
    plugin_table,
)
from dfcompress.registry import KINDS

HOOK_NAMES = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "dfcompress_spec")
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _lenient_by_default(monkeypatch):
    """Tests of the warn-and-skip behaviour must not inherit DFCOMPRESS_STRICT_PLUGINS from CI's environment."""
    monkeypatch.delenv("DFCOMPRESS_STRICT_PLUGINS", raising=False)


class Thing:
    """A stand-in component class; plugins below register it directly (not lazily)."""

    name = "thing"
    summary = "a thing for tests"


def plugin_registering(kind: str, *calls: tuple[tuple, dict], hook_name: str | None = None) -> object:
    """A class-based plugin whose ``register_<kind>`` hook (or ``hook_name``) makes the given
    ``register(*args, **kwargs)`` calls."""
    hook_name = hook_name or f"register_{kind}"

    def hook(self, register):
        for args, kwargs in calls:
            register(*args, **kwargs)

    hook.__name__ = hook_name
    cls = type(f"Plugin_{kind}", (), {hook_name: hookimpl(hook)})
    return cls()


def fresh_pm(**plugins):
    """A plugin manager with the built-ins, no entry points, and ``plugins`` registered by name."""
    pm = get_plugin_manager(load_entrypoints=False)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return pm


class FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points(group="dfcompress")`` yields: name, value, dist and load()."""

    group = ENTRY_POINT_GROUP

    def __init__(self, name: str, package: str, version: str, load):
        self.name, self.value, self.dist, self._load = name, f"{name}_module", FakeDist(package, version), load

    def load(self):
        return self._load()


def fake_entry_points(monkeypatch, *eps: FakeEntryPoint) -> None:
    def entry_points(**params):
        return list(eps) if params.get("group") == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def good_module() -> types.ModuleType:
    module = types.ModuleType("dfcompress_good")

    @hookimpl
    def register_pruners(register):
        register(Thing, name="good_pruner")

    module.register_pruners = register_pruners
    return module


def broken_import():
    raise ImportError("No module named 'torchx'")


# --------------------------------------------------------------------------- built-ins


def test_builtins_are_ordinary_plugins_listed_with_package_dfcompress():
    pm = fresh_pm()
    registered = dict(pm.list_name_plugin())
    for module_name in DEFAULT_PLUGINS:
        assert registered[module_name] is sys.modules[module_name]
        assert pm.get_hookcallers(registered[module_name]), f"{module_name} implements no hook"
    assert "dfcompress.default_plugins.synthesizers" in registered

    registry = build_registry(pm)
    assert registry.errors == []
    for kind in KINDS:
        entries = registry.list(kind)
        assert entries, f"no built-in {kind}"
        for entry in entries:
            assert entry.package == "dfcompress" and entry.version == __version__
            assert entry.plugin in DEFAULT_PLUGINS
            assert entry.summary, f"built-in {kind} {entry.name} has no summary"
    noise = registry.entry("synthesizers", "noise")
    assert noise.plugin == "dfcompress.default_plugins.synthesizers"
    assert registry.entry("synthesizers", "di").name == "deepinversion"
    assert registry.entry("synthesizers", "dfcompress:noise") is noise  # package qualifies too

    rows = {row["name"]: row for row in plugin_table(pm)}
    assert rows["dfcompress.default_plugins.pruners"] == {
        "name": "dfcompress.default_plugins.pruners",
        "package": "dfcompress",
        "version": __version__,
        "hooks": ["register_pruners"],
    }


def test_check_pending_passes_for_builtins_and_catches_a_mistyped_hook():
    pm = fresh_pm()
    pm.check_pending()

    class Typo:
        @hookimpl
        def register_synthesiser(self, register):  # British spelling: not a dfcompress hook
            register(Thing, name="typo")

    pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="register_synthesiser"):
        pm.check_pending()


def test_listing_builtins_imports_no_torch():
    code = (
        "import sys\n"
        "from dfcompress.plugins import get_registry\n"
        "from dfcompress.registry import KINDS\n"
        "r = get_registry()\n"
        "print(sum(len(r.list(k)) for k in KINDS), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "DFCOMPRESS_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    count, torch_loaded = out.stdout.split()
    assert int(count) > 10 and torch_loaded == "False"


# --------------------------------------------------------------------------- one test per hook


def _registers(kind: str, hook_name: str | None = None) -> None:
    name = f"my_{kind}"
    pm = fresh_pm(myplugin=plugin_registering(kind, ((Thing,), {"name": name, "aliases": ("mine",)}),
                                              hook_name=hook_name))
    registry = build_registry(pm)
    entry = registry.entry(kind, name)
    assert (entry.plugin, entry.package, entry.version) == ("myplugin", "myplugin", "")
    assert entry.summary == "a thing for tests"  # taken from the class
    assert registry.get(kind, "mine") is Thing
    assert registry.get(kind, f"myplugin:{name}") is Thing
    assert name in [e.name for e in registry.list(kind)]
    other_kinds = [k for k in KINDS if k != kind]
    assert all(e.plugin != "myplugin" for k in other_kinds for e in registry.list(k))


def test_hook_register_synthesizers():
    _registers("synthesizers")


def test_hook_register_distillers():
    _registers("distillers")


def test_hook_register_pruners():
    _registers("pruners")


def test_hook_register_quantizers():
    _registers("quantizers")


def test_hook_register_tasks():
    _registers("tasks")


def test_hook_register_models():
    """Model sources fill the registry kind "teachers" (the specs' prefixes, ``dfcompress models``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        _registers("teachers", hook_name="register_models")


def test_hook_register_teachers():
    """The hook's old name still registers model sources, for a release, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match=r"plugin myplugin: the hook register_teachers is deprecated.*"
                                                r"rename it to register_models"):
        _registers("teachers", hook_name="register_teachers")


def test_builtins_use_register_models_and_warn_nothing():
    pm = fresh_pm()
    callers = {impl.plugin_name for impl in pm.hook.register_models.get_hookimpls()}
    assert callers == {"dfcompress.default_plugins.models"}
    assert pm.hook.register_teachers.get_hookimpls() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        registry = build_registry(pm)
    assert registry.entry("teachers", "demo").plugin == "dfcompress.default_plugins.models"


def test_deprecated_hook_of_an_entry_point_plugin_registers_and_warns(monkeypatch):
    def load():
        module = types.ModuleType("dfcompress_oldhub")

        @hookimpl
        def register_teachers(register):
            register(Thing, name="oldhub", summary="a model source under the old hook name")

        module.register_teachers = register_teachers
        return module

    fake_entry_points(monkeypatch, FakeEntryPoint("oldhub", "dfcompress-oldhub", "0.1", load))
    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "oldhub")
    pm = get_plugin_manager()
    assert pm.load_errors == []
    with pytest.warns(DeprecationWarning, match="dfcompress-oldhub: the hook register_teachers is deprecated"):
        registry = build_registry(pm)
    entry = registry.entry("teachers", "oldhub")
    assert (entry.package, entry.target) == ("dfcompress-oldhub", Thing)
    assert registry.errors == []


def test_hook_register_datasets():
    _registers("datasets")


def test_hook_register_commands():
    @click.command()
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    pm = fresh_pm(commands_plugin=Commands())
    group = click.Group("dfcompress")
    builtins = [pm.get_plugin(name) for name in DEFAULT_PLUGINS]
    pm.subset_hook_caller("register_commands", remove_plugins=builtins)(cli=group)
    assert group.commands == {"hello": hello}
    assert click.testing.CliRunner().invoke(group, ["hello"]).output == "hello from a plugin\n"


def test_every_hook_has_a_test():
    """datasette's rule: each hook in hookspecs.py has a ``test_hook_<name>`` here."""
    assert HOOK_NAMES, "no hookspecs found"
    missing = [name for name in HOOK_NAMES if f"test_hook_{name}" not in globals()]
    assert missing == []


# --------------------------------------------------------------------------- third-party plugins


def test_module_plugin_registered_on_a_fresh_manager_shows_up_lazily(tmp_path, monkeypatch):
    module_name = "dfc_lazy_probe_plugin_target"
    (tmp_path / f"{module_name}.py").write_text("class Lazy:\n    name = 'lazy'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)

    plugin = types.ModuleType("lazy_plugin")

    @hookimpl
    def register_synthesizers(register):
        register(f"{module_name}:Lazy", name="lazy", summary="imported only when used")

    plugin.register_synthesizers = register_synthesizers
    registry = build_registry(fresh_pm(lazyplugin=plugin))
    entry = registry.entry("synthesizers", "lazy")
    assert entry.as_dict()["plugin"] == "lazyplugin"
    assert [e.name for e in registry.list("synthesizers")].count("lazy") == 1
    assert module_name not in sys.modules, "listing imported a lazy target"

    cls = registry.get("synthesizers", "lazy")
    assert module_name in sys.modules
    assert cls is sys.modules[module_name].Lazy
    assert registry.get("synthesizers", "lazyplugin:lazy") is cls


def test_lazy_target_that_fails_to_import_names_the_package():
    pm = fresh_pm(missing=plugin_registering("synthesizers", (("dfc_no_such_module_xyz:Gone",), {"name": "gone"})))
    registry = build_registry(pm)  # registering is fine: nothing is imported yet
    assert registry.errors == []
    with pytest.raises(DFCompressError, match=r"synthesizer 'gone' from package missing failed to load.*"
                                              r"ModuleNotFoundError"):
        registry.get("synthesizers", "gone")


def test_plugin_whose_hook_raises_is_skipped_with_a_warning(caplog):
    class Broken:
        @hookimpl
        def register_synthesizers(self, register):
            register(Thing, name="half_registered")

        @hookimpl
        def register_pruners(self, register):
            raise RuntimeError("boom")

    pm = fresh_pm(brokenplugin=Broken(), fine=plugin_registering("pruners", ((Thing,), {"name": "fine_pruner"})))
    with caplog.at_level(logging.WARNING, logger="dfcompress.plugins"):
        registry = build_registry(pm)
    assert "skipping plugin brokenplugin" in caplog.text and "boom" in caplog.text
    assert registry.errors == [("brokenplugin", "register_pruners raised RuntimeError: boom")]
    # nothing of the broken plugin stays registered, in any kind
    assert all(e.plugin != "brokenplugin" for kind in KINDS for e in registry.list(kind))
    assert registry.get("pruners", "fine_pruner") is Thing
    assert registry.entry("synthesizers", "noise").package == "dfcompress"


def test_plugin_whose_hook_raises_is_an_error_in_strict_mode(monkeypatch):
    class Broken:
        @hookimpl
        def register_tasks(self, register):
            raise RuntimeError("boom")

    monkeypatch.setenv("DFCOMPRESS_STRICT_PLUGINS", "1")
    with pytest.raises(DFCompressError, match=r"plugin brokenplugin: register_tasks raised RuntimeError: boom"):
        build_registry(fresh_pm(brokenplugin=Broken()))


def test_registering_without_a_name_breaks_only_that_plugin():
    class Nameless:
        summary = "no name"

    pm = fresh_pm(nameless=plugin_registering("distillers", ((Nameless,), {})))
    registry = build_registry(pm)
    assert registry.errors == [("nameless", "register_distillers raised DFCompressError: "
                                            "plugin nameless registered a distiller without a name")]
    assert registry.entry("distillers", "kd").plugin == "dfcompress.default_plugins.distillers"


def test_broken_entry_point_is_reported_with_its_package(monkeypatch, caplog):
    fake_entry_points(
        monkeypatch,
        FakeEntryPoint("kaput", "dfcompress-kaput", "0.3", broken_import),
        FakeEntryPoint("good", "dfcompress-good", "1.2", good_module),
    )
    monkeypatch.delenv("DFCOMPRESS_LOAD_PLUGINS")
    with caplog.at_level(logging.WARNING, logger="dfcompress.plugins"):
        pm = get_plugin_manager()
    assert "skipping plugin dfcompress-kaput" in caplog.text
    assert pm.load_errors == [("dfcompress-kaput", "failed to load: ImportError: No module named 'torchx'")]
    assert "kaput" not in dict(pm.list_name_plugin())

    registry = build_registry(pm)
    assert registry.errors == pm.load_errors
    good = registry.entry("pruners", "good_pruner")
    assert (good.plugin, good.package, good.version) == ("good", "dfcompress-good", "1.2")
    assert registry.entry("pruners", "dfcompress-good:good_pruner") is good
    assert registry.entry("synthesizers", "noise").package == "dfcompress"
    rows = {row["name"]: row for row in plugin_table(pm)}
    assert rows["good"] == {"name": "good", "package": "dfcompress-good", "version": "1.2",
                            "hooks": ["register_pruners"]}


def test_broken_entry_point_is_an_error_in_strict_mode(monkeypatch):
    fake_entry_points(monkeypatch, FakeEntryPoint("kaput", "dfcompress-kaput", "0.3", broken_import))
    monkeypatch.delenv("DFCOMPRESS_LOAD_PLUGINS")
    monkeypatch.setenv("DFCOMPRESS_STRICT_PLUGINS", "1")
    with pytest.raises(DFCompressError, match="plugin dfcompress-kaput: failed to load: ImportError"):
        get_plugin_manager()


def test_entry_point_with_a_hook_of_the_wrong_signature_is_skipped(monkeypatch):
    def load():
        module = types.ModuleType("dfcompress_wrongargs")

        @hookimpl
        def register_synthesizers(reg):  # the argument must be called `register`
            reg(Thing, name="never")

        module.register_synthesizers = register_synthesizers
        return module

    fake_entry_points(monkeypatch, FakeEntryPoint("wrongargs", "dfcompress-wrongargs", "0.1", load))
    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "wrongargs")
    pm = get_plugin_manager()
    assert [package for package, _ in pm.load_errors] == ["dfcompress-wrongargs"]
    assert "PluginValidationError" in pm.load_errors[0][1]
    with pytest.raises(UnknownComponentError):
        build_registry(pm).entry("synthesizers", "never")


def test_load_plugins_is_an_allow_list_of_entry_point_names(monkeypatch):
    fake_entry_points(
        monkeypatch,
        FakeEntryPoint("kaput", "dfcompress-kaput", "0.3", broken_import),
        FakeEntryPoint("good", "dfcompress-good", "1.2", good_module),
    )
    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "good")
    pm = get_plugin_manager()
    assert pm.load_errors == []  # kaput was never loaded
    assert "good" in dict(pm.list_name_plugin())

    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "")  # built-ins only
    names = {name for name, _ in get_plugin_manager().list_name_plugin()}
    assert names == set(DEFAULT_PLUGINS)


# --------------------------------------------------------------------------- names


def test_a_bare_name_claimed_by_two_plugins_is_ambiguous_and_qualified_names_resolve():
    class Alpha(Thing):
        """Alpha's component."""

    class Beta(Thing):
        """Beta's component."""

    pm = fresh_pm(
        alpha=plugin_registering("synthesizers", ((Alpha,), {"name": "twin"})),
        beta=plugin_registering("synthesizers", ((Beta,), {"name": "other", "aliases": ("twin",)})),
    )
    registry = build_registry(pm)
    with pytest.raises(AmbiguousComponentError, match=r"alpha:twin.*beta:other|beta:other.*alpha:twin") as info:
        registry.get("synthesizers", "twin")
    assert "<plugin>:twin" in str(info.value)
    assert registry.get("synthesizers", "alpha:twin") is Alpha
    assert registry.get("synthesizers", "beta:twin") is Beta
    assert registry.get("synthesizers", "other") is Beta
    assert [e.plugin for e in registry.list("synthesizers") if e.name in ("twin", "other")] == ["beta", "alpha"]


def test_a_plugin_may_reuse_a_builtin_name_under_its_own_qualifier():
    pm = fresh_pm(rival=plugin_registering("pruners", ((Thing,), {"name": "l1"})))
    registry = build_registry(pm)
    with pytest.raises(AmbiguousComponentError, match="dfcompress.default_plugins.pruners:l1"):
        registry.entry("pruners", "l1")
    assert registry.entry("pruners", "dfcompress:l1").package == "dfcompress"
    assert registry.get("pruners", "rival:l1") is Thing


def test_unknown_name_suggests_the_closest():
    registry = build_registry(fresh_pm())
    with pytest.raises(UnknownComponentError) as info:
        registry.get("synthesizers", "deepinversoin")
    message = str(info.value)
    assert "Did you mean 'deepinversion'?" in message
    assert message.startswith("unknown synthesizer 'deepinversoin'")  # no KeyError quoting
    assert "noise" in message  # the known names are listed
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownComponentError, match="unknown pruner 'nowhere:l1'"):
        registry.entry("pruners", "nowhere:l1")


# --------------------------------------------------------------------------- known defects (see report)


def test_a_hook_implementation_may_omit_the_register_argument():
    class Observer:
        calls = 0

        @hookimpl
        def register_synthesizers(self):
            Observer.calls += 1

    registry = build_registry(fresh_pm(observer=Observer()))
    assert registry.errors == [] and Observer.calls == 1


def test_entry_point_with_a_misspelled_hook_is_reported(monkeypatch):
    def load():
        module = types.ModuleType("dfcompress_typo")

        @hookimpl
        def register_synthesiser(register):
            register(Thing, name="typo")

        module.register_synthesiser = register_synthesiser
        return module

    fake_entry_points(monkeypatch, FakeEntryPoint("typo", "dfcompress-typo", "0.1", load))
    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "typo")
    pm = get_plugin_manager()
    assert [package for package, _ in pm.load_errors] == ["dfcompress-typo"]


def test_a_plugin_registering_a_name_twice_is_reported():
    pm = fresh_pm(twice=plugin_registering("pruners", ((Thing,), {"name": "dup"}), ((Thing,), {"name": "dup"})))
    registry = build_registry(pm)
    assert [plugin for plugin, _ in registry.errors] == ["twice"]


# --------------------------------------------------------------------------- the example plugin


def test_installed_example_plugin_is_discovered(monkeypatch):
    try:
        version = importlib.metadata.version("dfcompress-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dfcompress-example is not installed (pip install -e plugins/dfcompress-example); CI installs it")
    monkeypatch.delenv("DFCOMPRESS_LOAD_PLUGINS")
    get_registry.cache_clear()
    registry = get_registry()
    entry = registry.entry("synthesizers", "impressions")
    assert (entry.plugin, entry.package, entry.version) == ("example", "dfcompress-example", version)
    assert registry.entry("synthesizers", "example:impressions") is entry
    assert not any(package == "dfcompress-example" for package, _ in registry.errors)

    pm = get_plugin_manager()
    assert "example" in dict(pm.list_name_plugin())
    rows = {row["name"]: row for row in plugin_table(pm)}
    assert rows["example"]["hooks"] == ["register_synthesizers"]

    from dfcompress.components import Synthesizer

    assert issubclass(registry.get("synthesizers", "impressions"), Synthesizer)

    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "")
    with pytest.raises(UnknownComponentError):
        build_registry(get_plugin_manager()).entry("synthesizers", "impressions")


# --------------------------------------------------------------------------- docs


@pytest.fixture(scope="module")
def plugin_docs_headings() -> list[str]:
    text = (REPO / "docs" / "plugins.md").read_text()
    return [line.lstrip("#").strip().strip("`") for line in text.splitlines() if re.match(r"#{2,6} ", line)]


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_plugin_hooks_are_documented(hook, plugin_docs_headings):
    """datasette's rule: every hook has a heading ``name(args)`` in docs/plugins.md."""
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"{hook}({args})" in plugin_docs_headings


def test_plugin_docs_name_the_environment_variables_and_the_example():
    text = (REPO / "docs" / "plugins.md").read_text()
    for needle in ("DFCOMPRESS_LOAD_PLUGINS", "DFCOMPRESS_STRICT_PLUGINS", "plugins/dfcompress-example",
                   "[project.entry-points.dfcompress]"):
        assert needle in text


# --------------------------------------------------------------------------- dfcompress show / plugins


def test_show_prints_a_synthesizer_s_capabilities_and_its_options():
    from dfcompress.cli import cli

    result = click.testing.CliRunner().invoke(cli, ["show", "synthesizers", "deepinversion"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    block = lines[lines.index("capabilities:") + 1:]
    assert re.match(r"  uses_student: +true$", block[0])
    assert any(re.match(r"  needs_batchnorm: +true$", line) for line in block)
    assert any(re.match(r"  default_schedule: +offline$", line) for line in block)
    assert any(re.match(r"  --iterations: +sets option iterations$", line) for line in block)
    assert "| `iterations` | int | `2000` |" in result.output


def test_show_says_no_options_for_an_option_less_component_and_no_capabilities_outside_synthesizers():
    from dfcompress.cli import cli

    runner = click.testing.CliRunner()
    noise = runner.invoke(cli, ["show", "synthesizers", "noise"])
    assert noise.exit_code == 0 and noise.output.rstrip().endswith("no options") and "| option" not in noise.output
    assert re.search(r"  iterates: +false", noise.output)
    task = runner.invoke(cli, ["show", "tasks", "distill"])
    assert task.exit_code == 0 and "capabilities" not in task.output and "no options" in task.output
    pruner = runner.invoke(cli, ["show", "pruners", "l1"])
    assert "capabilities" not in pruner.output and "| `max_channel_ratio` |" in pruner.output


def test_the_plugins_command_imports_no_torch():
    code = "import sys\nfrom dfcompress.cli import main\nmain(['plugins'])\nprint('torch' in sys.modules, file=sys.stderr)\n"
    env = {**os.environ, "DFCOMPRESS_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "  noise " in out.stdout and "  demo " in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "False"


def test_plugins_lists_the_declared_capabilities_on_request(capsys):
    import json

    from dfcompress.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["plugins", "--capabilities", "--json"])
        raise SystemExit(0)
    assert (exc.value.code or 0) == 0
    data = json.loads(capsys.readouterr().out)
    caps = {e["name"]: e.get("capabilities") for e in data["synthesizers"]}
    assert caps["fast"]["stateful"] and caps["fast"]["default_schedule"] == "online"
    assert caps["deepinversion"]["iterates"] and caps["deepinversion"]["needs_batchnorm"]
    assert caps["seeded"]["needs_guides"] and not caps["noise"]["iterates"]
    with pytest.raises(SystemExit):
        main(["plugins", "--capabilities"])
        raise SystemExit(0)
    text = capsys.readouterr().out
    assert "student, stateful, needs BN; default schedule online" in text
