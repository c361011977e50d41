"""Trials that run outside the driver (a pool of processes, a Ray cluster).

- ``remote``: the driver's end (``RemoteExecutor``, the base of such executors).
- ``worker``: the worker's end, where the trial loop runs.

The contract an executor plugin implements is ``runner.executor`` (public).
"""
