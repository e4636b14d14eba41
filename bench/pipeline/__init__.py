"""The cell pipeline of ``bench run``: plan, prepare a dataset, run cells, emit events.

A grid is planned once (:mod:`~bench.pipeline.plan`); per dataset, the dataset is opened, the
backbone loaded and the features extracted (:mod:`~bench.pipeline.prepare`); each cell is fit,
evaluated and written to the result store (:mod:`~bench.pipeline.cell`,
:mod:`~bench.pipeline.store`). Every step reports through events
(:mod:`~bench.pipeline.events`) that observers (the terminal display, MLflow logging) receive;
executors (:mod:`bench.executors`) only schedule cells and forward those events.
"""
