"""The cluster and dataset generator: a job's ranks, its faults, and every file a dump holds.

It models step times, collectives and node signals from first principles and writes step
records, Kineto traces, metric dumps and ``truth.json`` through the core's formats.
"""
