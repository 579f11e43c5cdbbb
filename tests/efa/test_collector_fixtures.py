"""The EFA collector on hand-written trees in the real sysfs layout (tests/fixtures/efa/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from fmdiag import catalog
from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters.collector import REGISTRY, CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.efa import EfaCollector
from fmdiag.exporters.exposition import Format, render

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "efa"
PORT_ORDER = [*list(EFA_PORT_COUNTERS)]  # the fixtures' file order follows DOMAIN.md = catalog order
SRD = [
    "retrans_bytes",
    "retrans_pkts",
    "retrans_timeout_events",
    "unresponsive_remote_events",
    "impaired_remote_conn_events",
]

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def collect(sysfs: Path, **options: str) -> tuple[Values, list[Metric], ErrorReporter]:
    errors = ErrorReporter()
    c = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs), options=options, errors=errors))
    fams = list(c.collect())
    values: Values = {}
    for fam in fams:
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in values, f"duplicate series {key}"
            values[key] = s.value
    return values, fams, errors


def get(values: Values, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def port_counter(seed: int, file: str, order: list[str]) -> int:
    return seed * 1_000_000 + (order.index(file) + 1) * 1111


def test_registered() -> None:
    assert REGISTRY["efa"] is EfaCollector
    assert EfaCollector.default_enabled


def test_nitro_v4_every_counter_of_both_efas_and_no_mellanox() -> None:
    values, _fams, errors = collect(FIXTURES / "nitro_v4" / "sys")
    assert errors.count("efa") == 0
    assert get(values, "fmdiag_efa_devices") == 2
    for seed, dev in ((1, "rdmap79s0"), (2, "rdmap151s0")):
        port = {"device": dev, "port": "1"}
        for file, (name, _help) in EFA_PORT_COUNTERS.items():
            assert get(values, name, **port) == port_counter(seed, file, PORT_ORDER), file
        # The 12 device counters of drivers without kernel verbs (no alloc_mr_err, get_dma_mr_err).
        for i, (_file, (name, _help)) in enumerate(list(EFA_DEVICE_COUNTERS.items())[:12]):
            assert get(values, name, device=dev) == seed * 1000 + i
        assert not any(k[0] == "fmdiag_efa_alloc_mr_errors_total" for k in values)
        assert get(values, "fmdiag_efa_port_state_id", **port) == 4
        assert get(values, "fmdiag_efa_port_physical_state_id", **port) == 5
        assert get(values, "fmdiag_efa_port_rate_bytes_per_second", **port) == 12.5e9
        assert get(values, "fmdiag_efa_hw_counters_lifespan_seconds", **port) == 0.01
    assert (
        get(
            values,
            "fmdiag_efa_info",
            device="rdmap79s0",
            fw_ver="0.0.0.0",
            node_guid="0ab1:23ff:fe45:6789",
            pci_address="0000:4f:00.0",
            numa_node="0",
            link_layer="Unknown",
        )
        == 1
    )
    assert (
        get(
            values,
            "fmdiag_efa_info",
            device="rdmap151s0",
            fw_ver="0.0.0.0",
            node_guid="0ab1:23ff:fe45:678a",
            pci_address="0000:97:00.0",
            numa_node="1",
            link_layer="Unknown",
        )
        == 1
    )
    assert not any("mlx5_0" in str(key) for key in values)
    assert not any(name.endswith("other_counter_total") for name, _ in values)
    # 22 port counters + 12 device counters + lifespan, state, phys_state, rate + info = 39 per device
    assert len(values) == 2 * 39 + 1


def test_nitro_v3_without_srd_counters() -> None:
    values, _fams, errors = collect(FIXTURES / "nitro_v3" / "sys")
    assert errors.count("efa") == 0
    assert get(values, "fmdiag_efa_devices") == 1
    names = {name for name, _ in values}
    for file in [*SRD, "rdma_write_bytes", "rdma_write_wrs"]:
        assert EFA_PORT_COUNTERS[file][0] not in names
    order = [
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
    ]
    for file in order:
        assert get(values, EFA_PORT_COUNTERS[file][0], device="efa_0", port="1") == port_counter(
            3, file, order
        )
    assert (
        get(
            values,
            "fmdiag_efa_info",
            device="efa_0",
            fw_ver="0.0.0.0",
            node_guid="0e4a:b1ff:fe2c:03d1",
            pci_address="0000:10:1b.0",
            numa_node="0",
            link_layer="Unknown",
        )
        == 1
    )


def test_unknown_counters_are_kept_under_other_counter() -> None:
    values, _fams, errors = collect(FIXTURES / "newer_driver" / "sys")
    assert errors.count("efa") == 0
    order = [*list(EFA_PORT_COUNTERS), "rdma_write_resp_bytes_ext"]
    assert get(
        values,
        "fmdiag_efa_port_other_counter_total",
        device="rdmap79s0",
        port="1",
        counter="rdma_write_resp_bytes_ext",
    ) == port_counter(4, "rdma_write_resp_bytes_ext", order)
    assert (
        get(values, "fmdiag_efa_device_other_counter_total", device="rdmap79s0", counter="destroy_qp_err")
        == 4 * 1000 + 12
    )
    assert get(values, "fmdiag_efa_port_rate_bytes_per_second", device="rdmap79s0", port="1") == 50e9


def test_every_emitted_name_is_catalogued_with_its_labels() -> None:
    _values, fams, _errors = collect(FIXTURES / "newer_driver" / "sys")
    for fam in fams:
        for s in fam.samples:
            spec = catalog.family_of(s.name)
            assert spec is not None and spec.subsystem == "efa", s.name
            assert set(spec.labels) <= set(s.labels) <= set(spec.all_labels)


def test_device_exclude_option() -> None:
    values, _fams, _errors = collect(FIXTURES / "nitro_v4" / "sys", **{"device-exclude": "rdmap151.*"})
    assert get(values, "fmdiag_efa_devices") == 1
    assert not any("rdmap151s0" in str(key) for key in values)
    with pytest.raises(ValueError, match="device-exclude"):
        EfaCollector(CollectorContext(options={"device-exclude": "("}))


def test_no_infiniband_class_means_no_devices_and_no_error(tmp_path: Path) -> None:
    values, _fams, errors = collect(tmp_path)
    assert values == {("fmdiag_efa_devices", ()): 0}
    assert errors.count("efa") == 0


def test_device_link_that_is_not_a_symlink_is_reported(efa_tree) -> None:  # type: ignore[no-untyped-def]
    """Without the ``device`` symlink there is no PCI address: the label is empty and counted."""
    sysfs = efa_tree("nitro_v3")
    dev = sysfs / "class" / "infiniband" / "efa_0"
    target = os.path.realpath(dev / "device")
    (dev / "device").unlink()
    (dev / "device").mkdir()
    for f in ("vendor", "numa_node"):
        (dev / "device" / f).write_text(Path(target, f).read_text())
    values, _fams, errors = collect(sysfs)
    assert errors.count("efa") == 1
    assert get(values, "fmdiag_efa_devices") == 1
    info = [dict(lab) for (name, lab) in values if name == "fmdiag_efa_info"]
    assert info[0]["pci_address"] == "" and info[0]["numa_node"] == "0"


def test_exposition_of_fixture_parses(tmp_path: Path) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    _values, fams, _errors = collect(FIXTURES / "nitro_v4" / "sys")
    list(text_string_to_metric_families(render(fams, Format.OPENMETRICS).decode()))


def test_fixture_files_are_real_layout() -> None:
    """Guard the fixtures themselves: class entries are symlinks into devices/, device links resolve."""
    cls = FIXTURES / "nitro_v4" / "sys" / "class" / "infiniband"
    for entry in cls.iterdir():
        assert entry.is_symlink()
        assert "/devices/" in os.path.realpath(entry)
        assert (entry / "device" / "vendor").is_file()


def test_kernel_verbs_counters_have_their_own_names() -> None:
    """amzn-drivers r2.12+ (kernel verbs) add alloc_mr_err and get_dma_mr_err at device level."""
    values, _fams, errors = collect(FIXTURES / "newer_driver" / "sys")
    assert errors.count("efa") == 0
    assert get(values, "fmdiag_efa_alloc_mr_errors_total", device="rdmap79s0") == 4013
    assert get(values, "fmdiag_efa_get_dma_mr_errors_total", device="rdmap79s0") == 4014
    others = {dict(k[1]).get("counter") for k in values if k[0] == "fmdiag_efa_device_other_counter_total"}
    assert others == {"destroy_qp_err"}


def test_an_old_drivers_admin_counters_under_the_port_keep_their_device_names() -> None:
    """Before r1.14.0 the admin counters sat in ports/1/hw_counters (no device-level directory)."""
    values, _fams, errors = collect(FIXTURES / "old_driver" / "sys")
    assert errors.count("efa") == 0
    device_files = list(EFA_DEVICE_COUNTERS)[:12]  # the fixture's files, in DOMAIN.md's order
    for i, name in enumerate(device_files):
        metric = EFA_DEVICE_COUNTERS[name][0]
        assert get(values, metric, device="efa_0") == 3 * 1000 + i, name
    assert not any(k[0].endswith("_other_counter_total") for k in values)
    # The port's own counters are unchanged.
    nitro_v3, _, _ = collect(FIXTURES / "nitro_v3" / "sys")
    assert get(values, "fmdiag_efa_tx_bytes_total", device="efa_0", port="1") == get(
        nitro_v3, "fmdiag_efa_tx_bytes_total", device="efa_0", port="1"
    )
    assert {k for k in values if k[0] != "fmdiag_efa_hw_counters_lifespan_seconds"} == {
        k for k in nitro_v3 if k[0] != "fmdiag_efa_hw_counters_lifespan_seconds"
    }
