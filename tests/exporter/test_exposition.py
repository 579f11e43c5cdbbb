"""The hand-written exposition against prometheus_client's parsers and its own writer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from fmdiag.catalog import GPU_LABELS
from fmdiag.exporters.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Format,
    format_value,
    negotiate,
    render,
)
from fmdiag.exporters.families import Families

PROMETHEUS_2_42_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, Format.TEXT),
        ("", Format.TEXT),
        ("*/*", Format.TEXT),
        ("text/plain;version=0.0.4", Format.TEXT),
        (PROMETHEUS_2_42_ACCEPT, Format.OPENMETRICS),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", Format.OPENMETRICS),
        ("application/openmetrics-text", Format.OPENMETRICS),
        ("application/openmetrics-text;version=0.0.1", Format.OPENMETRICS),
        ("application/openmetrics-text;version=2.0.0", Format.TEXT),
        ("application/openmetrics-text;q=0", Format.TEXT),
        ("application/openmetrics-text;q=0.5,text/plain;q=1", Format.TEXT),
        ("text/plain;q=0.2,application/openmetrics-text;q=0.9", Format.OPENMETRICS),
        ("application/openmetrics-text;q=nonsense", Format.TEXT),
        ("text/html,application/xhtml+xml", Format.TEXT),
    ],
)
def test_negotiation(accept: str | None, expected: Format) -> None:
    assert negotiate(accept) is expected


def test_content_types() -> None:
    assert Format.TEXT.content_type == TEXT_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert Format.OPENMETRICS.content_type == OPENMETRICS_CONTENT_TYPE


GPU = {
    "gpu": "0",
    "UUID": "GPU-1",
    "pci_bus_id": "00000000:18:00.0",
    "device": "nvidia0",
    "modelName": "NVIDIA H100 80GB HBM3",
    "Hostname": "node-1",
}
assert tuple(GPU) == GPU_LABELS


def _families() -> list[Metric]:
    fams = Families()
    fams.add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 123456789, GPU)
    fams.add("DCGM_FI_DEV_GPU_TEMP", 45, GPU)
    fams.add("fmdiag_efa_tx_bytes_total", 2**60, {"device": "rdmap79s0", "port": "1"})
    fams.add("fmdiag_efa_hw_counters_lifespan_seconds", 0.01, {"device": "rdmap79s0", "port": "1"})
    fams.add(
        "fmdiag_efa_info",
        1,
        {
            "device": "rdmap79s0",
            "fw_ver": 'a"b\\c\nd',
            "node_guid": "x",
            "pci_address": "0000:4f:00.0",
            "numa_node": "0",
            "link_layer": "é",
        },
    )
    fams.add_histogram(
        "fmdiag_step_duration_seconds",
        {"training_job": "j", "rank": "0"},
        [(0.5, 1), (1.0, 3)],
        count=4,
        total=5.5,
    )
    fams.add("fmdiag_exporter_build_info", 1, {"version": "0.1.0", "python_version": "3.11"})
    return list(fams)


def test_text_keeps_catalog_names_for_dcgm_and_fmdiag_counters() -> None:
    text = render(_families(), Format.TEXT).decode()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    assert (
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n" in text
    )
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in text
    assert "# TYPE fmdiag_efa_tx_bytes_total counter\n" in text
    assert "# TYPE fmdiag_step_duration_seconds histogram\n" in text
    assert 'fmdiag_step_duration_seconds_bucket{training_job="j",rank="0",le="+Inf"} 4\n' in text
    assert 'fw_ver="a\\"b\\\\c\\nd"' in text
    assert not text.endswith("# EOF\n")


def test_text_parses_back_with_prometheus_client() -> None:
    parsed = {fam.name: fam for fam in text_parse(render(_families(), Format.TEXT).decode())}
    # prometheus_client's parser strips `_total` from counter families, like its writer.
    assert parsed["fmdiag_efa_tx_bytes"].type == "counter"
    assert parsed["fmdiag_efa_tx_bytes"].samples[0].value == 2**60
    info = parsed["fmdiag_efa_info"].samples[0].labels
    assert info["fw_ver"] == 'a"b\\c\nd' and info["link_layer"] == "é"
    assert parsed["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].value == 123456789
    hist = parsed["fmdiag_step_duration_seconds"]
    assert [(s.name, s.labels.get("le"), s.value) for s in hist.samples] == [
        ("fmdiag_step_duration_seconds_bucket", "0.5", 1),
        ("fmdiag_step_duration_seconds_bucket", "1.0", 3),
        ("fmdiag_step_duration_seconds_bucket", "+Inf", 4),
        ("fmdiag_step_duration_seconds_count", None, 4),
        ("fmdiag_step_duration_seconds_sum", None, 5.5),
    ]


def test_openmetrics_is_valid_and_types_dcgm_counters_unknown() -> None:
    text = render(_families(), Format.OPENMETRICS).decode()
    assert text.endswith("# EOF\n")
    fams = {fam.name: fam for fam in om_parse(text)}  # strict parser: raises on invalid input
    assert fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "unknown"
    assert (
        fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    )
    assert fams["fmdiag_efa_tx_bytes"].type == "counter"
    assert fams["fmdiag_efa_tx_bytes"].samples[0].name == "fmdiag_efa_tx_bytes_total"
    assert fams["fmdiag_step_duration_seconds"].type == "histogram"
    assert fams["fmdiag_efa_info"].samples[0].labels["fw_ver"] == 'a"b\\c\nd'


def test_same_samples_as_prometheus_client_writer() -> None:
    """Without DCGM counters (which prometheus_client would rename), both writers agree."""
    fams = [f for f in _families() if f.name != "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]

    class _Registry:
        def collect(self) -> list[Metric]:
            return fams

    ours = [
        (f.name, f.type, f.documentation, f.samples) for f in text_parse(render(fams, Format.TEXT).decode())
    ]
    theirs = [
        (f.name, f.type, f.documentation, f.samples)
        for f in text_parse(generate_latest(_Registry()).decode())
    ]  # type: ignore[arg-type]
    assert ours == theirs


def test_empty_families_are_left_out() -> None:
    assert render([Metric("x", "help", "gauge")], Format.TEXT) == b""
    assert render([], Format.OPENMETRICS) == b"# EOF\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (12.0, "12"),
        (-3.0, "-3"),
        (0.25, "0.25"),
        (2.0**60, "1.152921504606847e+18"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
    assert (math.isnan(float(text)) and math.isnan(value)) or float(text) == value or text.endswith("Inf")


label_text = st.text(st.characters(codec="utf-8"), max_size=40)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 2**64 - 1).map(float)


@given(fw=label_text, guid=label_text, gauge=numbers, counter=st.integers(0, 2**64 - 1))
def test_any_label_and_value_round_trips_in_both_formats(
    fw: str, guid: str, gauge: float, counter: int
) -> None:
    fams = Families()
    fams.add(
        "fmdiag_efa_info",
        gauge,
        {
            "device": "d",
            "fw_ver": fw,
            "node_guid": guid,
            "pci_address": "p",
            "numa_node": "0",
            "link_layer": "l",
        },
    )
    fams.add("fmdiag_efa_rx_bytes_total", counter, {"device": "d", "port": "1"})
    fams.add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", counter, GPU)
    built = list(fams)
    for fmt, parse in ((Format.TEXT, text_parse), (Format.OPENMETRICS, om_parse)):
        body = render(built, fmt).decode()
        got = {s.name: s for f in parse(body) for s in f.samples}
        info = got["fmdiag_efa_info"]
        assert info.labels["fw_ver"] == fw and info.labels["node_guid"] == guid
        assert (math.isnan(info.value) and math.isnan(gauge)) or info.value == gauge
        assert got["fmdiag_efa_rx_bytes_total"].value == counter  # exact, also beyond 2**53
        # prometheus_client's text parser renames a counter sample without `_total` (Prometheus
        # does not; the integration test checks the real server keeps the DCGM name).
        dcgm = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" + ("_total" if fmt is Format.TEXT else "")
        assert got[dcgm].value == counter
