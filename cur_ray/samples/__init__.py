"""Synthetic and real CUR sample data for ``cur-ray demo`` and the tests.

* :mod:`cur_ray.samples.line_items` — :class:`LineItem` and the deterministic generator.
* :mod:`cur_ray.samples.expected` — the independent expected-figures oracle (``decimal``).
* :mod:`cur_ray.samples.writers` — write line items as legacy CSV/Parquet, CUR 2.0 and FOCUS
  exports in the key layout AWS delivers (and upload a folder to S3).
* :mod:`cur_ray.samples.demo_tree` — the demo project's multi-format delivery.

Nothing here needs the network or files outside the package.
"""
