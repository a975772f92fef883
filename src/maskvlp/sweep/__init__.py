"""Optuna sweeps: the only package that imports optuna.

    study.py   storage (journal file by default, any RDB URL), sampler, pruner, the study's identity,
               sampling one trial from a SweepSpec, counting logical trials (a trial and its retries)
    job.py     one trial as a job (a Slurm job or a local process): pretrain with the pruning hook,
               evaluate, tell the study; resumes from the trial's own checkpoint
    driver.py  `maskvlp sweep`: keeps `parallel` trials in flight asynchronously, reconciles trials
               whose job is gone (failed, retried from their checkpoint), resumes after being killed
    report.py  `maskvlp sweep-status` and `maskvlp sweep-report`: tables, CSV/Markdown, best params,
               Optuna's matplotlib plots, the Pareto front

The sweep file format and its validation live in maskvlp.sweepspec (no optuna); docs/sweeps.md
describes the design and the states a trial goes through.
"""
