"""The catalog follows Prometheus conventions and keeps dcgm-exporter's names."""

from __future__ import annotations

import re

import pytest

from fmdiag import catalog
from fmdiag.catalog import MetricType

FMDIAG = [m for m in catalog.CATALOG if not m.dcgm]
UNIT_WORDS = (
    "seconds",
    "bytes",
    "celsius",
    "joules",
    "watts",
    "hertz",
    "ratio",
    "meters",
    "volts",
    "amperes",
)

# dcgm-exporter's default-counters.csv and dcp-metrics-included.csv, and the names its
# documentation gives for fields it leaves off by default (name -> type on its TYPE line).
DCGM_EXPORTER = {
    "DCGM_FI_DEV_SM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEMORY_TEMP": "gauge",
    "DCGM_FI_DEV_GPU_TEMP": "gauge",
    "DCGM_FI_DEV_POWER_USAGE": "gauge",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "counter",
    "DCGM_FI_DEV_GPU_UTIL": "gauge",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "gauge",
    "DCGM_FI_DEV_ENC_UTIL": "gauge",
    "DCGM_FI_DEV_DEC_UTIL": "gauge",
    "DCGM_FI_DEV_XID_ERRORS": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge",
    "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_RESERVED": "gauge",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": "counter",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "counter",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": "counter",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": "gauge",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "gauge",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "gauge",
    "DCGM_FI_PROF_DRAM_ACTIVE": "gauge",
    "DCGM_FI_PROF_SM_ACTIVE": "gauge",
    "DCGM_FI_PROF_SM_OCCUPANCY": "gauge",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "gauge",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "gauge",
    "DCGM_FI_PROF_NVLINK_TX_BYTES": "gauge",
    "DCGM_FI_PROF_NVLINK_RX_BYTES": "gauge",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "counter",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "counter",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": "counter",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": "counter",
    "DCGM_FI_DEV_RETIRED_SBE": "counter",
    "DCGM_FI_DEV_RETIRED_DBE": "counter",
    "DCGM_FI_DEV_RETIRED_PENDING": "counter",
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": "counter",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": "counter",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": "counter",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": "counter",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": "gauge",
    "DCGM_FI_DEV_POWER_VIOLATION": "counter",
    "DCGM_FI_DEV_THERMAL_VIOLATION": "counter",
    "DCGM_EXP_XID_ERRORS_COUNT": "gauge",
}


def test_names_are_unique() -> None:
    names = [m.name for m in catalog.CATALOG]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("metric", FMDIAG, ids=lambda m: m.name)
def test_fmdiag_metrics_follow_prometheus_conventions(metric: catalog.Metric) -> None:
    assert re.fullmatch(r"fmdiag_[a-z][a-z0-9_]*[a-z0-9]", metric.name), "fmdiag_ prefix, snake case"
    assert metric.name.startswith(f"fmdiag_{metric.subsystem}_") or metric.subsystem in (
        "host",
        "steps",
    )
    if metric.type is MetricType.COUNTER:
        assert metric.name.endswith("_total")
    else:
        assert not metric.name.endswith("_total"), "only counters end in _total"
    if metric.unit == "seconds":
        assert "_seconds" in metric.name
    if metric.unit == "bytes":
        assert "_bytes" in metric.name
    for forbidden in (
        "_milliseconds",
        "_microseconds",
        "_usec",
        "_ms",
        "_kb",
        "_mb",
        "_mib",
        "_percent",
    ):
        assert forbidden not in metric.name, "base units only"
    for label in metric.all_labels:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label)
        assert not label.startswith("__")
        assert not any(label.endswith(u) for u in UNIT_WORDS), "no unit in a label"
    assert metric.help.strip().endswith("."), "help is a sentence"


@pytest.mark.parametrize("metric", catalog.CATALOG, ids=lambda m: m.name)
def test_no_label_clashes_with_a_prometheus_target_label(metric: catalog.Metric) -> None:
    # Prometheus attaches `job` and `instance` to every scraped series and renames an exported
    # label of the same name to `exported_job`/`exported_instance`, so `by (job)` would
    # silently group by scrape job. Every family, DCGM names included, must avoid them.
    assert {"job", "instance"} == catalog.TARGET_LABELS
    assert not set(metric.all_labels) & catalog.TARGET_LABELS, metric.all_labels


def test_step_metrics_carry_the_training_job_as_training_job() -> None:
    for metric in catalog.by_subsystem("steps"):
        if metric.labels:
            assert metric.labels[:2] == ("training_job", "rank"), metric.name


@pytest.mark.parametrize(("name", "mtype"), sorted(DCGM_EXPORTER.items()))
def test_dcgm_names_and_types_match_dcgm_exporter(name: str, mtype: str) -> None:
    metric = catalog.get(name)
    assert metric.dcgm
    assert metric.type.value == mtype
    assert metric.labels[:6] == ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")


def test_every_dcgm_entry_is_a_known_dcgm_field() -> None:
    for metric in catalog.CATALOG:
        if metric.dcgm:
            assert re.fullmatch(r"DCGM_(FI_DEV|FI_PROF|EXP)_[A-Z0-9_]+", metric.name)


def test_catalog_covers_every_efa_counter_in_the_domain_notes() -> None:
    port = {
        "tx_bytes",
        "tx_pkts",
        "rx_bytes",
        "rx_pkts",
        "rx_drops",
        "send_bytes",
        "send_wrs",
        "recv_bytes",
        "recv_wrs",
        "rdma_read_wrs",
        "rdma_read_bytes",
        "rdma_read_wr_err",
        "rdma_read_resp_bytes",
        "rdma_write_wrs",
        "rdma_write_bytes",
        "rdma_write_wr_err",
        "rdma_write_recv_bytes",
        "retrans_bytes",
        "retrans_pkts",
        "retrans_timeout_events",
        "unresponsive_remote_events",
        "impaired_remote_conn_events",
    }
    device = {
        "submitted_cmds",
        "completed_cmds",
        "cmds_err",
        "no_completion_cmds",
        "keep_alive_rcvd",
        "alloc_pd_err",
        "create_qp_err",
        "create_cq_err",
        "reg_mr_err",
        "alloc_ucontext_err",
        "create_ah_err",
        "mmap_err",
        "alloc_mr_err",  # amzn-drivers r2.12+, kernel verbs
        "get_dma_mr_err",
    }
    assert set(catalog.EFA_PORT_COUNTERS) == port
    assert set(catalog.EFA_DEVICE_COUNTERS) == device
    for name, _ in [*catalog.EFA_PORT_COUNTERS.values(), *catalog.EFA_DEVICE_COUNTERS.values()]:
        assert catalog.get(name).type is MetricType.COUNTER


@pytest.mark.parametrize("subsystem", catalog.SUBSYSTEMS)
def test_every_subsystem_has_metrics(subsystem: str) -> None:
    assert list(catalog.by_subsystem(subsystem))


def test_lustre_covers_llite_osc_mdc_read_ahead_and_rpc_state() -> None:
    names = {m.name for m in catalog.by_subsystem("lustre")}
    for target in ("llite", "osc", "mdc"):
        assert f"fmdiag_lustre_{target}_operations_total" in names
        assert f"fmdiag_lustre_{target}_operation_latency_seconds_total" in names
    assert {
        "fmdiag_lustre_llite_read_ahead_hits_total",
        "fmdiag_lustre_llite_read_ahead_misses_total",
        "fmdiag_lustre_osc_rpcs_in_flight",
        "fmdiag_lustre_osc_pending_pages",
        "fmdiag_lustre_osc_pages_per_rpc",
    } <= names


def test_family_of_maps_histogram_samples_back() -> None:
    assert catalog.family_of("fmdiag_step_duration_seconds_bucket") is catalog.get(
        "fmdiag_step_duration_seconds"
    )
    assert catalog.family_of("fmdiag_efa_tx_bytes_total") is catalog.get("fmdiag_efa_tx_bytes_total")
    assert catalog.family_of("fmdiag_efa_tx_bytes_total_bucket") is None
    assert catalog.family_of("node_cpu_seconds_total") is None


def test_get_names_the_missing_metric() -> None:
    with pytest.raises(KeyError, match="fmdiag_nope"):
        catalog.get("fmdiag_nope")


def test_markdown_reference_lists_every_metric() -> None:
    text = catalog.to_markdown()
    for metric in catalog.CATALOG:
        assert f"`{metric.name}`" in text


def test_docs_metrics_md_is_current() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    assert doc.read_text() == catalog.to_markdown() + "\n", (
        "regenerate: fmdiag catalog --format markdown > docs/metrics.md"
    )
