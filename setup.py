"""Only the package list lives here (everything else is in pyproject.toml): ``plugins/`` is installed under
the import name ``gate_plugins``, never as a top-level ``plugins``, and setuptools' ``packages.find`` cannot
rename a folder, so the packages are found here instead of being listed by hand."""

from setuptools import find_packages, setup

PLUGINS = [p.replace("plugins", "gate_plugins", 1) for p in find_packages(include=["plugins", "plugins.*"])]
setup(packages=find_packages(include=["gate", "gate.*"]) + PLUGINS)
