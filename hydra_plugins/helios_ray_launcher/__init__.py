"""Hydra launcher that runs a Helios multirun on Ray (see :mod:`.helios_ray_launcher`).

``hydra_plugins`` itself has no ``__init__.py``: it is a namespace package that
Hydra scans for plugins, shared with any other installed Hydra plugin.
"""
