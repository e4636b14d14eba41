"""MLflow tracking: the store's layout and client (:mod:`~bench.tracking.client`, the only
module that imports mlflow), the writer ``bench run`` logs with (:mod:`~bench.tracking.writer`,
driven by :mod:`~bench.tracking.observer`) and the reader of ``bench report``
(:mod:`~bench.tracking.reader`).

Layout: one experiment per dataset (``czsl/<dataset>``), a parent run per ``bench run``
invocation and dataset, a child run per (method, seed) named ``<method>|<dataset>|s<seed>``.
Everything is logged from result dicts (the result JSONs are the source of truth), only by
the driver process.
"""
