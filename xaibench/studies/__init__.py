"""Studies: experiments that are not one explainer's evaluation (``experiment=qge_*``).

Each study is a function ``run(cfg) -> summary`` selected by an experiment's
``study:`` node (``_partial_: true``); :func:`xaibench.pipeline.run_study` calls
it and writes the returned summary to ``summary.json``. Shared output helpers
live in :mod:`xaibench.studies.common`.
"""
