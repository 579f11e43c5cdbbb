"""Scale-out: the local process pool and a Dask cluster give the same analysis as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from analyze import kineto_builder as kb
from analyze.helpers import SAMPLES

from fmdiag.analyzers import executors, pipeline
from fmdiag.analyzers.reports import report_json


def _square(x: int) -> int:
    return x * x


def _doc(dump: Path, **opts: object) -> dict[str, object]:
    doc = report_json.document(pipeline.run(dump, pipeline.Options(hta_compatible=True, **opts)))  # type: ignore[arg-type]
    return json.loads(json.dumps(doc))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dump")
    for rank in range(3):
        kb.write(d / "kineto" / f"rank{rank}.json.gz", kb.build(kb.Options(rank=rank, steps=3, seed=rank)))
    (d / "steps").symlink_to(SAMPLES / "healthy" / "steps")
    return d


def test_map_keeps_order() -> None:
    assert executors.map_items(_square, list(range(20)), workers=2) == [x * x for x in range(20)]
    assert executors.map_items(_square, [], workers=2) == []


def test_process_pool_equals_one_process(dump: Path) -> None:
    assert _doc(dump, workers=2) == _doc(dump, workers=1)


def test_dask_local_cluster_equals_one_process(dump: Path) -> None:
    from distributed import LocalCluster  # the dev extra installs dask

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    try:
        assert _doc(dump, scheduler=cluster.scheduler_address) == _doc(dump, workers=1)
    finally:
        cluster.close()
