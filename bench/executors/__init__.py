"""Executors schedule the cells of a ``bench run`` grid and forward their events.

``local`` (:class:`~bench.executors.local.LocalExecutor`, the default) runs every cell in
this process, one after the other. ``ray`` (:class:`RayExecutor`) spreads the cells over the
GPUs of one machine or a Ray cluster; Ray is an optional extra
(``pip install "czsl-bench[ray]"``). Both take ``(config, events, **options)`` and return one
outcome per cell from ``run()``. Importing this package never imports Ray.
"""

from __future__ import annotations

from bench.executors.local import LocalExecutor
from bench.executors.ray_executor import RAY_INSTALL_HINT, RayExecutor, task_resources

#: Names accepted by ``bench run --executor``.
EXECUTORS: tuple[str, ...] = ("local", "ray")

__all__ = ["EXECUTORS", "RAY_INSTALL_HINT", "LocalExecutor", "RayExecutor", "task_resources"]
