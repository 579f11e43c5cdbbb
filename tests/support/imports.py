"""Run code in a fresh interpreter and report which modules it loaded, and who loaded the heavy ones.

A test in this process cannot tell what a command imports (pytest and other tests have already
imported half the world), so the code runs in a subprocess with a ``sys.meta_path`` watcher that
sees every import. The watcher records, for each heavy module, the chain of modules that was
importing it the first time (so a failure names the offender, not just the symptom), and with
``block=True`` it makes those imports fail as they would on an install without the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: The analysis stack that must stay out of the CLI's start-up, the exporter and steptrace.
HEAVY = ("numpy", "pandas", "pyarrow", "plotly", "grafana_foundation_sdk")

_PROBE = r"""
import json, sys

_report_path, _code = sys.argv[1], sys.argv[4]
_heavy, _block = set(json.loads(sys.argv[2])), sys.argv[3] == "1"
_first = {}


def _importers():
    chain = []
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "?")
        if not frame.f_code.co_filename.startswith("<frozen") and not name.startswith("importlib"):
            if not chain or chain[-1] != name:
                chain.append(name)
        frame = frame.f_back
    return chain[::-1]


class _Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _heavy:
            if name == top and top not in sys.modules:
                _first[top] = _importers()  # the last attempt before it is loaded is the one that loads it
            if _block:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Watch())
_before = set(sys.modules)
_status = 0
try:
    exec(compile(_code, "<probe>", "exec"), {"__name__": "__probe__"})
except SystemExit as exc:
    _status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    with open(_report_path, "w") as f:
        _loaded = {top: chain for top, chain in _first.items() if top in sys.modules}
        json.dump({"new": sorted(set(sys.modules) - _before), "heavy": _loaded, "tried": sorted(_first)}, f)
sys.exit(_status)
"""


@dataclass
class Probe:
    returncode: int
    stdout: str
    stderr: str
    #: Modules in sys.modules at the end that were not there before the code ran.
    new_modules: list[str]
    #: heavy top-level module loaded -> the modules (outermost first) whose import loaded it.
    heavy: dict[str, list[str]]
    #: heavy top-level modules looked for, loaded or not (blocked, or only ``find_spec``).
    tried: list[str]

    def heavy_report(self) -> str:
        """One line per heavy module loaded, with the import chain that loaded it."""
        return "; ".join(f"{mod} imported via {' -> '.join(chain)}" for mod, chain in self.heavy.items())


def probe(code: str, *, block: bool = False, cwd: Path | None = None, timeout_s: float = 60) -> Probe:
    """Run ``code`` in a new interpreter (the test's own) and watch its imports.

    ``block``: make every import of a :data:`HEAVY` module raise ModuleNotFoundError, as on an
    install without the extra (``tried`` lists those attempts).
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        # cwd: not the repository, so the checkout's folders cannot shadow the installed package.
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(report), json.dumps(HEAVY), "1" if block else "0", code],
            cwd=cwd or tmp,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if not report.exists():
            raise AssertionError(f"the probe did not finish (status {out.returncode}):\n{out.stderr}")
        data = json.loads(report.read_text())
    return Probe(out.returncode, out.stdout, out.stderr, data["new"], data["heavy"], data["tried"])


def cli_code(*args: str) -> str:
    """Code that runs ``fmdiag ARGS`` the way the console script does (``fmdiag.cli:main``)."""
    return f"import sys; sys.argv = ['fmdiag', *{list(args)!r}]; from fmdiag.cli import main; main()"
