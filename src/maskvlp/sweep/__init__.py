"""Sweeps: the sweep file, the Optuna studies that run it, and the analyses of their trials.

    space.py     the sweep file's data model (no optuna): SweepSpec, Param, grids, objective keys
    rules.py     params derived per trial (warmup, checkpoints, lr by width, ...)
    spec.py      parse, load (once, with the command line's changes), validate against params.yaml;
                 ANALYSES: the `fit:` and `compare:` sections behind one interface (check, validate, write)
    fit.py, fitforms.py   scaling studies: `maskvlp scaling-fit` and its registry of fit forms
    compare.py   strategies over seeds: comparison.md / .json / .png (comparetext.py: its sentences
                 and tables; trialmetrics.py: trial-metrics.csv; comparemasks.py: the cluster arms' masks)
    regenerate.py  a comparison written again from trial-metrics.csv; a report's generated block
    study.py     the Optuna side: storage, sampler, pruner, sampling a trial, counting logical trials
    prepare.py   `maskvlp sweep FILE` made ready: everything checked before anything is submitted
    liveness.py  whether a trial's job or a study's driver is alive; the driver lock
    driver.py    keeps `parallel` trials in flight, reconciles trials whose job is gone, resumes;
                 `--detach` runs the driver itself as a Slurm job
    job.py       one trial as a job: pretrain with the pruning hook, evaluate, tell the study
    report.py    `maskvlp sweep-status` and `maskvlp sweep-report`
    carry.py     `maskvlp sweep-pack` / `sweep-unpack`: a study's state carried to another machine
    commands.py  the bodies of the sweep commands of maskvlp.cli

space, rules, spec, fit, fitforms, compare and regenerate work without optuna (the analyses read a study's
finished trials through runs.finished_trials); docs/sweeps.md describes the design and a trial's states.
"""
