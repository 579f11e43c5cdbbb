"""Helpers shared by test areas: a real Prometheus server (prom) and exporter subprocesses
(exporter_proc). Importable as ``support.*`` because pyproject puts tests/ on pytest's path."""
