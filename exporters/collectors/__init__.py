"""One module per source (efa, lustre, host, steps, ...); each registers itself by name.

:func:`discover` imports every module of this package, so adding a collector is adding a
file with an ``@register``-ed class: there is no shared list to edit.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("fmdiag.exporter")


def discover() -> dict[str, str]:
    """Import every collector module; returns module -> error for those that failed to import.

    A collector whose module cannot be imported (a missing optional dependency, a bug) is
    left out and named in the log; the others still load, so one broken file never takes
    the whole exporter down.
    """
    failed: dict[str, str] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = f"{__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = f"{type(exc).__name__}: {exc}"
            log.error("collector module %s not loaded: %s", module, failed[module])
    return failed
