"""The quality study behind ``benchmarks/quality.py``: seeds × settings × tasks with the model users run.

- :mod:`study.settings`: what is run: the tasks, learning rates, settings and their overrides, the bench, the
  radius grid and the rule that reads radii off the probe, the plans.
- :mod:`study.runner`: one run composed from ``conf/`` as ``smart-train`` composes it, trained, evaluated and
  appended to ``runs.jsonl``; a plan run over worker processes, skipping the runs already stored.
- :mod:`study.probe`: the perturbation against dropout at trained weights (or at step 0), per radius.
- :mod:`study.tables`, :mod:`study.robustness`, :mod:`study.report`: the tables of ``benchmarks/RESULTS.md``.
"""
