"""farm: the nightly device farm (farm.toml, executors, results store + migrations, regress, report, CLI).

Built on :mod:`edgepack.device_bench` (which measures one artifact) and :mod:`edgepack.api`; nothing in
``device_bench`` imports this package.
"""
