"""The Hydra app over the method: ``smart-train`` and ``smart-aggregate``, their config schema, the checks before a
run, the app's callbacks, the run's outputs, and the sweep and compare reports with their statistics.

Nothing outside this package imports it, Hydra or OmegaConf: the method, ``tasks/``, ``data/`` and ``attack.py`` work
in any Lightning project without them.
"""
