"""The EFA collector on trees rendered by the simulator (fmdiag.simulate.nodes.render.render_node),
including a live tree advanced, degraded and unplugged between scrapes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.efa import EfaCollector
from fmdiag.simulate.nodes.readings import EfaDeviceState, NodeState
from fmdiag.simulate.nodes.render import render_node

SRD = {
    "retrans_bytes",
    "retrans_pkts",
    "retrans_timeout_events",
    "unresponsive_remote_events",
    "impaired_remote_conn_events",
}
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def device(i: int, srd: bool = True, scale: int = 1, gbps: int = 100) -> EfaDeviceState:
    return EfaDeviceState(
        name=f"rdmap{16 + i}s0",
        pci_address=f"0000:{16 + i:02x}:00.0",
        numa_node=i % 2,
        node_guid=f"0ab1:23ff:fe45:{i:04x}",
        fw_ver="0.0.0.0",
        port_counters={name: (k + 1) * 1000 * scale + i for k, name in enumerate(EFA_PORT_COUNTERS)},
        device_counters={name: k * scale + i for k, name in enumerate(EFA_DEVICE_COUNTERS)},
        srd_counters=srd,
        rate_gbps=gbps,
    )


def scrape(sysfs: Path) -> tuple[Values, int]:
    errors = ErrorReporter()
    fams = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs), errors=errors)).collect()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples
    }, errors.count("efa")


def get(values: Values, name: str, **labels: str) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def check_device(values: Values, dev: EfaDeviceState) -> None:
    port = {"device": dev.name, "port": "1"}
    for file, (name, _help) in EFA_PORT_COUNTERS.items():
        if file in SRD and not dev.srd_counters:
            assert get(values, name, **port) is None, file
        else:
            assert get(values, name, **port) == dev.port_counters[file], file
    for file, (name, _help) in EFA_DEVICE_COUNTERS.items():
        assert get(values, name, device=dev.name) == dev.device_counters[file], file
    assert get(values, "fmdiag_efa_port_state_id", **port) == dev.state
    assert get(values, "fmdiag_efa_port_physical_state_id", **port) == dev.phys_state
    assert get(values, "fmdiag_efa_port_rate_bytes_per_second", **port) == dev.rate_gbps * 1e9 / 8
    assert (
        get(
            values,
            "fmdiag_efa_info",
            device=dev.name,
            fw_ver=dev.fw_ver,
            node_guid=dev.node_guid,
            pci_address=dev.pci_address,
            numa_node=str(dev.numa_node),
            link_layer="Unknown",
        )
        == 1
    )


def test_simulated_node_with_and_without_srd_and_mellanox(tmp_path: Path) -> None:
    devices = [device(0), device(1), device(2, srd=False, gbps=200), device(3, srd=False, gbps=400)]
    render_node(NodeState(hostname="node-1", time_s=1.7e9, efa=devices), tmp_path, mellanox=2)
    values, errors = scrape(tmp_path / "sys")
    assert errors == 0
    assert get(values, "fmdiag_efa_devices") == 4
    for dev in devices:
        check_device(values, dev)
    assert not any("mlx" in str(key) for key in values)
    assert not any(name.endswith("_other_counter_total") for name, _ in values)


def test_live_tree_advances_degrades_and_loses_a_device(tmp_path: Path) -> None:
    devices = [device(i) for i in range(4)]
    state = NodeState(hostname="node-1", time_s=1.7e9, efa=devices)
    render_node(state, tmp_path)
    first, _ = scrape(tmp_path / "sys")

    # One second later: counters advanced, one port down, one device unplugged.
    later = [device(i, scale=3) for i in range(3)]
    later[1].state, later[1].phys_state = 1, 3  # DOWN / Disabled
    render_node(NodeState(hostname="node-1", time_s=1.7e9 + 1, efa=later), tmp_path)
    values, errors = scrape(tmp_path / "sys")
    assert errors == 0
    assert get(values, "fmdiag_efa_devices") == 3
    for dev in later:
        check_device(values, dev)
    gone = devices[3].name
    assert (
        get(
            first,
            "fmdiag_efa_info",
            device=gone,
            fw_ver="0.0.0.0",
            node_guid=devices[3].node_guid,
            pci_address=devices[3].pci_address,
            numa_node="1",
            link_layer="Unknown",
        )
        == 1
    )
    assert not any(dict(lab).get("device") == gone for _, lab in values)


counter = st.integers(0, 2**64 - 1)


@settings(max_examples=25)
@given(
    port=st.fixed_dictionaries({f: counter for f in EFA_PORT_COUNTERS}),
    dev=st.fixed_dictionaries({f: counter for f in EFA_DEVICE_COUNTERS}),
    srd=st.booleans(),
)
def test_any_counter_values_survive_the_round_trip(
    port: dict[str, int], dev: dict[str, int], srd: bool
) -> None:
    d = device(0, srd=srd)
    d.port_counters, d.device_counters = port, dev
    with tempfile.TemporaryDirectory() as tmp:
        render_node(NodeState(hostname="n", time_s=1.7e9, efa=[d]), Path(tmp))
        values, errors = scrape(Path(tmp) / "sys")
    assert errors == 0
    for file, (name, _help) in EFA_PORT_COUNTERS.items():
        want = None if (file in SRD and not srd) else port[file]  # exact, even beyond 2**53
        assert get(values, name, device=d.name, port="1") == want
