"""The plugin manager factory: hook specs, the ``escalier`` entry-point group, the built-ins."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from escalier.core import hookspecs
from escalier.core.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "describe_plugins", "get_plugin_manager", "notify_plugins"]

log = logging.getLogger("escalier.plugins")

# Our own connectors are registered through the entry-point group like anyone's; these are the
# modules to register directly when entry points are not loaded (tests, a bare checkout).
BUILTIN_PLUGINS = (
    "escalier.connectors.jira.plugin",
    "escalier.connectors.zendesk.plugin",
    "escalier.connectors.email.plugin",
)


def get_plugin_manager(
    *, load_entrypoints: bool = True, plugins: Iterable[object] = ()
) -> pluggy.PluginManager:
    """A new plugin manager with every hook spec, the installed plugins and ``plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as exc:  # a broken third-party package must name itself
            raise PluginError(f"could not load an '{hookspecs.PROJECT}' entry point: {exc}") from exc
    for name in BUILTIN_PLUGINS:
        if pm.get_plugin(name) is None and not _registered_module(pm, name):
            pm.register(__import__(name, fromlist=["_"]), name=name)
    for plugin in plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def _registered_module(pm: pluggy.PluginManager, module_name: str) -> bool:
    return any(getattr(p, "__name__", None) == module_name for p in pm.get_plugins())


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, object]]:
    """Each loaded plugin: its name, module, distribution, hooks, and what it registers."""
    dists = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    offers: dict[str, dict[str, list[str]]] = {}
    registers = {
        "connectors": ("register_connectors", "name"),
        "channels": ("register_notification_channels", "kind"),
        "templates": ("register_comment_templates", "name"),
        "criteria": ("register_criteria", "name"),
        "webhooks": ("register_webhooks", "name"),
    }
    for kind, (hook_name, attribute) in registers.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            names = [getattr(spec, attribute) for spec in impl.function() or ()]
            offers.setdefault(impl.plugin_name, {}).setdefault(kind, []).extend(names)
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        row: dict[str, object] = {
            "name": name,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "distribution": dists.get(id(plugin)),
            "hooks": hooks,
        }
        for kind in registers:
            row[kind] = sorted(offers.get(name, {}).get(kind, []))
        rows.append(row)
    return rows


def notify_plugins(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[str]:
    """Call a notification hook on every plugin, isolating failures; returns the plugins that failed.

    pluggy stops a hook call at the first exception; a notification must reach every plugin, and a
    broken one must be named in the log rather than silence the others.
    """
    failed = []
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:  # isolate: one plugin's bug must not stop the others
            failed.append(impl.plugin_name)
            log.error(
                "plugin.notification.failed",
                extra={"hook": hook_name, "plugin": impl.plugin_name, "error": repr(exc)},
            )
    return failed
