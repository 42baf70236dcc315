"""Helpers shared by the tests: imported as `tests.support.<module>`, never by bare name.

The suite runs as `python -m pytest` from the repository root, which puts the root on sys.path;
nothing under tests/ edits sys.path (tests/test_layout.py checks). Helper scripts run as
subprocesses are started with `python -m tests.support.<module>` and the root as working directory.
Fixtures stay in the conftest.py files.
"""
