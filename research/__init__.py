"""research: the synthetic benchmark that decided what gor_det ships, kept apart from the product.

* :mod:`research.run`: the harness (runs a suite's rows at their seeds; results committed under research/results/).
* :mod:`research.suite`: the suite format (rows, their bases, the report's tables, sweeps and compares as data).
* :mod:`research.stats`, :mod:`research.tables`: paired per-seed statistics and the markdown tables.
* :mod:`research.report`: rewrites research/REPORT.md and the docs/ tables from the committed results.
* :mod:`research.balancers`: the balance forms that left the product, registered when imported.

Nothing in ``gor_det`` imports this package. Scripts here put the repository root on ``sys.path``, so they run as
``python research/<script>.py`` from a checkout.
"""
