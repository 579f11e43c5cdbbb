"""The kernel classification table: its entries, its integrity, and its use by reader and reports."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from analyze import kineto_builder as kb
from analyze.helpers import REPO
from click.testing import CliRunner

from fmdiag.analyzers.cli import analyze
from fmdiag.analyzers.frames import hta_compat, kineto_breakdown
from fmdiag.analyzers.readers import kernel_classes
from fmdiag.analyzers.readers import kineto_frame as kf
from fmdiag.analyzers.readers.kineto_reader import kind_of, read_trace

ENTRIES = kernel_classes.entries()

# Kernel names from DeepSeek's training trace (its internal DeepEP build, dpsk::ep).
DPSK_DISPATCH = (
    "void dpsk::ep::internode::dispatch<false, 8, true, 8>(int4*, float*, long*, float*, "
    "dpsk::ep::internode::SourceMeta*, int4 const*, float const*, long const*, float const*, int*, int*, "
    "int*, int*, int const*, int const*, int const*, int const*, int, int, int, int, int, bool const*, "
    "void*, int, int, void**, int, int, int, int, int*)"
)
DPSK_COMBINE = (
    "void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 8, 2, 16, 24>(int4*, float*, bool const*, "
    "int4 const*, float const*, int4 const*, int4 const*, int const*, int const*, "
    "dpsk::ep::internode::SourceMeta const*, int const*, int const*, int const*, int, int, int, int, void*, "
    "int, int, void**, int, int, int, int, int*)"
)
DPSK_CACHED_NOTIFY = (
    "void dpsk::ep::internode::cached_notify<false>(int, int, int, int, int*, int, int, int const*, "
    "int const*, int*, void*, void**, int**, int, int, int, int*, bool, int)"
)
DPSK_NOTIFY_DISPATCH = (
    "void dpsk::ep::internode::notify_dispatch<false, 8>(int const*, long*, int, int const*, int*, "
    "int const*, int*, int, bool const*, int, int, int, int, int, int, int, int*, int*, int*, int*, void*, "
    "void**, int**, int, int, int*, int)"
)
DPSK_LAYOUT = (
    "void dpsk::ep::cuda::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, bool*, int, int, "
    "int, int)"
)
DEEPEP_DISPATCH = next(e.example for e in ENTRIES if "deep_ep::intranode::dispatch<" in e.example)
UNKNOWN = "void my_model::fused_rotary_kernel<128>(float*, float const*, int)"


@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=lambda i: f"{i + 1}-{ENTRIES[i].library}")
def test_every_example_is_classified_by_its_own_entry(index: int) -> None:
    e = ENTRIES[index]
    assert kernel_classes.match(e.example) == index, f"an earlier entry takes {e.example!r}"
    assert kernel_classes.classify(e.example) == (e.kind, e.library, e.op)


def test_table_integrity() -> None:
    assert len(ENTRIES) >= 60
    patterns = [e.pattern for e in ENTRIES]
    assert len(set(patterns)) == len(patterns), "duplicate patterns"
    token = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
    for e in ENTRIES:
        re.compile(e.pattern)
        assert e.kind in kernel_classes.KINDS
        assert token.match(e.library) and token.match(e.op), e
        assert e.example.strip() == e.example and len(e.example) > 5, e
    # every family the table is for has entries (and communication is not only NCCL)
    libraries = {(e.library, e.kind) for e in ENTRIES}
    for lib in ("nccl", "rccl", "deepep", "nvshmem", "symm_mem"):
        assert (lib, "comm") in libraries, lib
    for lib in ("cublas", "cutlass", "flash-attention", "triton", "aten"):
        assert (lib, "compute") in libraries, lib
    assert ("cuda", "memory") in libraries and ("hip", "memory") in libraries


def test_load_rejects_bad_entries() -> None:
    ok = 'pattern = "x"\nkind = "comm"\nlibrary = "a"\nop = "b"\nexample = "x"\n'
    assert kernel_classes.load("[[kernel]]\n" + ok) == [kernel_classes.Entry("x", "comm", "a", "b", "x")]
    with pytest.raises(ValueError, match="kind 'network'"):
        kernel_classes.load("[[kernel]]\n" + ok.replace('"comm"', '"network"'))
    with pytest.raises(ValueError, match="pattern"):
        kernel_classes.load("[[kernel]]\n" + ok.replace('pattern = "x"', "pattern = '(x'"))
    with pytest.raises(ValueError, match="missing example"):
        kernel_classes.load("[[kernel]]\n" + ok.replace('example = "x"\n', ""))
    with pytest.raises(ValueError, match="unknown fields"):
        kernel_classes.load("[[kernel]]\n" + ok + 'colour = "red"\n')


def test_the_table_is_package_data_of_the_installed_package() -> None:
    text = (
        resources.files("fmdiag.analyzers.readers")
        .joinpath("kernel_classes.toml")
        .read_text(encoding="utf-8")
    )
    assert kernel_classes.load(text) == list(ENTRIES)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert (
        "kernel_classes.toml" in pyproject["tool"]["setuptools"]["package-data"]["fmdiag.analyzers.readers"]
    )


def test_the_table_is_in_the_built_wheel(tmp_path: Path) -> None:
    """What pip installs: build the wheel from a copy of the packages (the tree is not touched)."""
    src = tmp_path / "src"
    for d in ("fmdiag", "analyzers", "exporters", "dashboards", "simulate", "testbed"):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", "out"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = (src / "out").glob("*.whl")
    assert "fmdiag/analyzers/readers/kernel_classes.toml" in zipfile.ZipFile(wheel).namelist()


@pytest.mark.parametrize(
    ("name", "op"),
    [
        (DPSK_DISPATCH, "dispatch"),
        (DPSK_COMBINE, "combine"),
        (DPSK_CACHED_NOTIFY, "notify"),
        (DPSK_NOTIFY_DISPATCH, "notify"),
    ],
)
def test_deepseek_internal_deepep_kernels_are_communication(name: str, op: str) -> None:
    assert kernel_classes.classify(name) == ("comm", "deepep", op)
    assert kind_of(name, kf.CAT_KERNEL) == kf.KIND_COMM


def test_compute_and_unknown_names() -> None:
    # DeepEP's layout kernel runs locally
    assert kernel_classes.classify(DPSK_LAYOUT) == ("compute", "deepep", "layout")
    assert kernel_classes.classify("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == (
        "compute",
        "cublas",
        "gemm",
    )
    assert kernel_classes.classify(UNKNOWN) is None
    assert kernel_classes.classify("") is None


def test_kind_of_categories() -> None:
    # memcpy/memset events are memory whatever their name
    assert kind_of("ncclDevKernel_SendRecv(x)", kf.CAT_MEMCPY) == kf.KIND_MEMORY
    assert kind_of("anything", kf.CAT_MEMSET) == kf.KIND_MEMORY
    # an unclassified kernel is compute; an unclassified or compute-class non-kernel event is nothing
    assert kind_of(UNKNOWN, kf.CAT_KERNEL) == kf.KIND_COMPUTE
    assert kind_of(UNKNOWN, kf.CAT_OTHER) == kf.KIND_NONE
    assert kind_of("triton_poi_fused_add_0", kf.CAT_OTHER) == kf.KIND_NONE
    # communication and memory names count in any category
    assert kind_of(DEEPEP_DISPATCH, kf.CAT_OTHER) == kf.KIND_COMM
    assert kind_of("__amd_rocclr_copyBuffer", kf.CAT_KERNEL) == kf.KIND_MEMORY


def test_hta_keeps_its_own_classification() -> None:
    """--hta-compatible reproduces HTA, which knows NCCL names only."""
    assert hta_compat.kernel_type(DPSK_DISPATCH) == hta_compat.TYPE_COMPUTE
    assert hta_compat.kernel_type(kb.NEW_NCCL) == hta_compat.TYPE_COMM


def _trace(tmp_path: Path, comm_name: str, rename: dict[str, str] | None = None) -> Path:
    doc = kb.build(kb.Options(rank=0, steps=3, nccl_name=comm_name))
    for ev in doc["traceEvents"]:
        if rename and ev.get("name") in rename:
            ev["name"] = rename[ev["name"]]
    return kb.write(tmp_path / "kineto" / "rank0.json", doc)


def test_deepep_kernel_time_is_communication_in_the_breakdown(tmp_path: Path) -> None:
    nccl = kineto_breakdown.breakdown(read_trace(_trace(tmp_path / "a", kb.NEW_NCCL)))
    deepep = kineto_breakdown.breakdown(read_trace(_trace(tmp_path / "b", DEEPEP_DISPATCH)))
    assert deepep["comm_s"].sum() > 0
    for col in ("comm_s", "comm_exposed_s", "comm_overlapped_s", "compute_s"):
        assert deepep[col].tolist() == pytest.approx(nccl[col].tolist(), abs=1e-12), col


def test_trace_summary_and_merge(tmp_path: Path) -> None:
    gelu = kb.COMPUTE_KERNELS[2]
    trace = read_trace(_trace(tmp_path, DEEPEP_DISPATCH, {gelu: UNKNOWN}))
    s = kernel_classes.trace_summary(trace.names, trace.gpu)
    g = trace.gpu
    on = (g["cat"] == kf.CAT_KERNEL) & (g["name"] == trace.names.index(UNKNOWN))
    assert s["unclassified"]["names"] == 1 and s["unclassified"]["complete"]
    assert s["unclassified"]["kernel_time_us"] == pytest.approx(g["dur"][on].sum())
    assert s["unclassified"]["top"] == [[UNKNOWN, pytest.approx(g["dur"][on].sum())]]
    comm = g["kind"] == kf.KIND_COMM
    assert s["comm_by_library"] == {"deepep": {"dispatch": pytest.approx(g["dur"][comm].sum())}}
    merged = kernel_classes.merge([(0, s), (1, s)])
    assert merged["names"] == 1 and merged["names_exact"]
    assert merged["kernel_time_us"] == pytest.approx(2 * s["unclassified"]["kernel_time_us"])
    assert merged["share"] == pytest.approx(s["unclassified"]["kernel_time_us"] / s["kernel_time_us"])
    assert merged["top"][0]["name"] == UNKNOWN and merged["top"][0]["ranks"] == 2
    assert set(merged["by_rank"]) == {"0", "1"}


def test_merge_of_truncated_lists_is_a_lower_bound() -> None:
    part = {
        "kernel_time_us": 100.0,
        "unclassified": {
            "names": 70,
            "kernel_time_us": 50.0,
            "top": [["a", 30.0], ["b", 20.0]],
            "complete": False,
        },
    }
    merged = kernel_classes.merge([(3, part)])
    assert merged["names"] == 70 and not merged["names_exact"]
    assert kernel_classes.merge([])["share"] is None


def test_unclassified_kernels_are_listed_in_the_reports(tmp_path: Path) -> None:
    long_name = "void my_model::" + "very_long_kernel_name_" * 8 + "<128>(float*, float const*, int)"
    _trace(tmp_path, DEEPEP_DISPATCH, {kb.COMPUTE_KERNELS[2]: long_name})
    r = CliRunner().invoke(analyze, [str(tmp_path), "--json", "--workers", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    u = doc["coverage"]["kineto"]["unclassified_kernels"]
    assert u["names"] == 1 and u["names_exact"] and 0 < u["share"] < 1
    assert [t["name"] for t in u["top"]] == [long_name] and u["by_rank"]["0"]["names"] == 1
    comm = doc["kineto"]["comm_kernel_time_us"]
    assert set(comm) == {"0"} and set(comm["0"]) == {"deepep"} and comm["0"]["deepep"]["dispatch"] > 0
    # the terminal summary: the count, the share, the name cut to 80 characters
    r = CliRunner().invoke(analyze, [str(tmp_path), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert (
        f"kernels not in the classification table: 1 names, {100 * u['share']:.1f}% of kernel time"
        in r.output
    )
    line = next(x for x in r.output.splitlines() if "my_model::" in x)
    assert long_name[:60] in line and long_name not in line and line.rstrip().endswith("…")
    # the HTML summary
    page = tmp_path / "report.html"
    r = CliRunner().invoke(analyze, [str(tmp_path), "--workers", "1", "--html", str(page)])
    assert r.exit_code == 0, r.output
    text = page.read_text(encoding="utf-8")
    assert 'id="unclassified-kernels"' in text and "kernels not in the classification table" in text
    assert f'title="{html.escape(long_name)}"' in text


def test_no_unclassified_line_when_every_kernel_is_known(tmp_path: Path) -> None:
    _trace(tmp_path, kb.NEW_NCCL)
    r = CliRunner().invoke(analyze, [str(tmp_path), "--workers", "1"])
    assert r.exit_code == 0 and "classification table" not in r.output
    r = CliRunner().invoke(analyze, [str(tmp_path), "--workers", "1", "--json"])
    assert json.loads(r.output)["coverage"]["kineto"]["unclassified_kernels"]["names"] == 0


def test_docs_show_the_current_table() -> None:
    doc = (REPO / "docs" / "kernel-classes.md").read_text(encoding="utf-8")
    assert kernel_classes.markdown_table() in doc
    assert "kernel-classes.md" in (REPO / "docs" / "analyze.md").read_text(encoding="utf-8")
