"""``fmdiag collect`` takes dcgm-exporter's node label in both spellings it has had (``hostname``
after 4.5.3, fmdiag's default; ``Hostname`` before) and stores the catalog's in the dump."""

from __future__ import annotations

from fmdiag import dumpformat
from fmdiag.analyzers.collect import long_form, node_name
from fmdiag.analyzers.readers.prometheus_source import Series

GPU = {"gpu": "0", "UUID": "GPU-0", "pci_bus_id": "b", "device": "nvidia0", "modelName": "m"}


def test_the_node_comes_from_either_spelling_before_the_target() -> None:
    assert node_name({"hostname": "node-a", "instance": "10.0.0.5:9400"}) == "node-a"
    assert node_name({"Hostname": "node-b", "instance": "10.0.0.6:9400"}) == "node-b"
    assert node_name({"instance": "node-c:9847"}) == "node-c"


def test_both_spellings_land_in_the_catalogued_column() -> None:
    new = Series("DCGM_FI_DEV_GPU_TEMP", {**GPU, "hostname": "node-a", "job": "dcgm"}, [1.0], [40.0])
    old = Series("DCGM_FI_DEV_GPU_TEMP", {**GPU, "Hostname": "node-b", "job": "dcgm"}, [1.0], [41.0])
    cols = long_form([new, old], "gpu")
    assert "hostname" not in cols
    assert cols["Hostname"] == ["node-a", "node-b"] and cols["instance"] == ["node-a", "node-b"]
    assert set(cols) - {"timestamp", "metric", "value"} <= set(dumpformat.label_columns("gpu"))
