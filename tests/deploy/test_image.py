"""The exporter image's Dockerfile, checked structurally (no container engine needed).

The image must hold only what the exporter needs: the base install of the package (no extras:
pandas, pyarrow, numpy, plotly are hundreds of MB the exporter never imports), built in a stage
of its own so pip's caches and the sources stay out of the final image, which runs as a
non-root user with `fmdiag exporter` as its entrypoint.
"""

from __future__ import annotations

import re
import tomllib

from .conftest import K8S, REPO

DOCKERFILE = K8S / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            found.append([])
        assert found, f"{ins[0]} before the first FROM"
        found[-1].append(ins)
    return found


def test_two_stages_on_a_slim_python_that_the_package_supports() -> None:
    build, final = stages()  # exactly two: build, then run
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    bases = []
    for stage in (build, final):
        base = re.fullmatch(r"python:(\d+)\.(\d+)-slim(?:-\w+)?(?: AS \w+)?", stage[0][1], re.I)
        assert base is not None, f"not a slim Python base: {stage[0][1]}"
        assert (int(base[1]), int(base[2])) >= minimum
        bases.append(stage[0][1].split()[0])
    assert bases[0] == bases[1], "build and run stages must share the interpreter"


def test_only_the_base_package_is_installed() -> None:
    runs = [args for stage in stages() for word, args in stage if word == "RUN"]
    installs = [args for args in runs if "pip install" in args]
    assert len(installs) == 1
    targets = installs[0].split("pip install", 1)[1].split()
    assert "." in targets, installs[0]
    assert not [t for t in targets if "[" in t], f"extras installed: {installs[0]}"
    assert "--no-cache-dir" in installs[0], "pip's cache would end up in the layer"
    # Nor is an extra's dependency installed by name (pandas, pyarrow, numpy, plotly, ...).
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for dependency in {d for deps in extras.values() for d in deps if not d.startswith("fmdiag")}:
        name = re.match(r"[A-Za-z0-9_.-]+", dependency)[0]  # type: ignore[index]
        assert not [r for r in runs if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", r)], name


def test_the_run_stage_only_copies_the_install_and_runs_unprivileged() -> None:
    _, final = stages()
    words = [word for word, _ in final]
    assert "RUN" not in words and "ADD" not in words, "the run stage installs nothing itself"
    copies = [args for word, args in final if word == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), copies
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("0", "root") and group not in ("0", "root")
    assert final[-1] == ("ENTRYPOINT", '["fmdiag", "exporter"]'), "exec form, flags appended by the pod"
