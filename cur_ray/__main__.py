"""Allow ``python -m cur_ray``."""

from cur_ray.entrypoints.cli import main

main()
