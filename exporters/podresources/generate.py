"""Regenerate the committed pod-resources stubs from api.proto (run by hand, not at build time).

The stubs are committed so that installing fmdiag needs no protoc: the exporter depends on
grpcio and protobuf only. The proto is compiled under its import path
(``fmdiag/exporters/podresources/api.proto``) so the generated modules import each other as
``fmdiag.exporters.podresources`` and the descriptor's file name cannot clash with another
library's ``api.proto`` in protobuf's global pool.

Usage: ``python exporters/podresources/generate.py`` with grpcio-tools installed
(``pip install grpcio-tools``); tests/attribution checks the committed stubs are current.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Compile api.proto into ``out_dir`` (the three files of OUTPUTS)."""
    from grpc_tools import protoc  # noqa: PLC0415 - only this script needs grpcio-tools

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "fmdiag" / "exporters" / "podresources"
        tree.mkdir(parents=True)
        shutil.copy(HERE / "api.proto", tree / "api.proto")
        args = [
            "protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(tree / "api.proto"),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for name in OUTPUTS:
            shutil.copy(tree / name, out_dir / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
