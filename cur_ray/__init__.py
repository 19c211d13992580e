"""cur_ray: exact, per-project AWS Cost and Usage Report tables on Ray."""

__version__ = "0.1.0"
