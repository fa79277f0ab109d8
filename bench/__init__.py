"""The benchmark suite (issue 6): `python bench/run.py --help`."""
