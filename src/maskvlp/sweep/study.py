"""The Optuna side of a sweep: storage, sampler, pruner, sampling a trial, and counting trials.

A *logical trial* is one point of the search space and its run folder `runs/<study>/trial-NNNN/`
(NNNN = the number of its first attempt). When its job dies, the attempt is told FAIL and a retry is
enqueued with the same params and the same folder (it resumes from the folder's checkpoint); the
retry is a new Optuna trial with user attribute `retry_of`. So a study's finished count is the
number of logical trials whose latest attempt is COMPLETE, PRUNED, or FAIL with no retry left.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from maskvlp.runs import StudyPaths
from maskvlp.sweep.space import SweepSpec, SweepSpecError, grid_values

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SPEC_ATTR = "maskvlp.fingerprint"
INSTANCE_ATTR = "maskvlp.instance"  # a random id per created study: a job of a replaced study is told apart
PASSWORD_ENV = "MASKVLP_STORAGE_PASSWORD"  # an RDB storage's password, never written to a file or printed


def storage_url(study_dir: Path, storage: str | None) -> str:
    """The storage as a string: an RDB URL (`mysql+pymysql://...`, `postgresql://...`) or a journal
    file path (default: <study_dir>/study.journal)."""
    return storage or str(StudyPaths(study_dir).journal)


def is_rdb(url: str) -> bool:
    return "://" in url


def public_url(url: str) -> str:
    """The storage as it may be printed and stored: an RDB URL without its password (a journal path as
    it is). The password travels only in the environment (PASSWORD_ENV), as the driver hands it on."""
    if not is_rdb(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except Exception:  # not a URL sqlalchemy can parse: keep nothing after the scheme that could be secret
        return url.split("://", 1)[0] + "://(unparseable URL hidden)"


def take_password(url: str) -> str:
    """`url` without its password, which goes into this process's environment (PASSWORD_ENV), where the
    trial processes and Slurm jobs this driver starts inherit it (sbatch exports the environment)."""
    if not is_rdb(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise SweepSpecError(
            f"--storage: not a database URL ({type(exc).__name__}); e.g. mysql+pymysql://user@host/db"
        ) from None
    if parsed.password:
        os.environ[PASSWORD_ENV] = str(parsed.password)
    return public_url(url)


def _with_password(url: str) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return url if parsed.password else parsed.set(password=password).render_as_string(hide_password=False)


def open_storage(url: str, parallel: int = 1) -> optuna.storages.BaseStorage:
    """JournalStorage on a file (no server; safe on a shared filesystem) or an RDB storage. SQLite is
    refused with parallel workers: it locks the whole file and loses updates under concurrent writers."""
    if not is_rdb(url):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        # an open(O_EXCL) lock file: works on NFS and on local disks alike
        return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
    if url.startswith("sqlite") and parallel > 1:
        raise SweepSpecError(
            f"--storage {url}: SQLite cannot take parallel workers; use the default journal file "
            "(omit --storage) or a server database (mysql+pymysql://..., postgresql://...)"
        )
    try:
        return optuna.storages.RDBStorage(_with_password(url), engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # sqlalchemy's errors: unknown driver, refused connection, bad credentials
        detail = str(exc).replace(os.environ.get(PASSWORD_ENV) or "\0", "***")
        raise SweepSpecError(
            f"--storage {public_url(url)}: cannot open the database: {detail} (a password goes in "
            f"${PASSWORD_ENV} or a MySQL option file: ...?read_default_file=~/.my.cnf)"
        ) from None


def make_sampler(spec: SweepSpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with `seed + offset`. The driver passes the number of trials the study
    already holds as offset, so a resumed sweep draws new points instead of repeating its first ones."""
    seed, opts = spec.seed + offset, dict(spec.sampler_options)
    try:
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **{"constant_liar": True, **opts})
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **opts)
        if spec.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=spec.seed, **opts)  # the sequence is resumed by count
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **opts)
        return _GridSampler(grid_values(spec), seed=spec.seed, first=(spec.compare or {}).get("seeds"), **opts)
    except TypeError as exc:
        raise SweepSpecError(f"sampler: {exc}") from exc


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, with three changes. The points run in one order: optuna's shuffle (by the
    sampler's seed), and with a comparison's seed key (`compare.seeds`) seed by seed, so that a study
    stopped part way has every arm at its first seeds (its claims pair by seed). A new trial takes the
    first point in that order that no trial holds (finished, failed or running), known by its params
    (a trial that ended without any, asked and never launched, holds none):
    optuna gives trial n the n-th point unchecked, so a grid study resumed with another sampler seed ran
    some points twice and others never. And no `study.stop()` after the last point: that only works
    inside `study.optimize` and raised in the trial job's tell; the driver stops at n_trials itself."""

    def __init__(self, search_space, seed: int | None = None, first: str | None = None) -> None:
        super().__init__(search_space, seed)
        if first in self._param_names:  # stable: optuna's shuffled order within each seed
            at, values = self._param_names.index(first), self._search_space[first]
            self._all_grids.sort(key=lambda point: values.index(point[at]))

    def before_trial(self, study, trial) -> None:
        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return  # a retry (enqueued with its params) or a trial that already has its point
        taken = set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if t.number == trial.number or not (t.state.is_finished() or t.state == TrialState.RUNNING):
                continue
            params = t.params or t.system_attrs.get("fixed_params") or {}
            if all(name in params for name in self._param_names):
                taken.add(tuple(params[name] for name in self._param_names))
            elif "grid_id" in t.system_attrs and t.state == TrialState.RUNNING:  # asked, not yet sampled
                taken.add(tuple(self._all_grids[t.system_attrs["grid_id"]]))
            # (finished without params: asked and never launched, the driver killed in that instant: its
            # point is free again)
        free = [i for i, point in enumerate(self._all_grids) if tuple(point) not in taken]
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", free[0] if free else 0)

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    try:
        return pruners[spec.pruner](**spec.pruner_options)
    except TypeError as exc:
        raise SweepSpecError(f"pruner: {exc}") from exc


def load_study(spec: SweepSpec, url: str, parallel: int = 1, sampler_offset: int = 0) -> optuna.Study:
    """The existing study (for trial jobs, status and report)."""
    storage, sampler = open_storage(url, parallel), make_sampler(spec, sampler_offset)
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=make_pruner(spec))


def create_or_resume(spec: SweepSpec, url: str, parallel: int, force_new: bool) -> optuna.Study:
    """The study of this spec in the storage: created, or resumed when its fingerprint matches.
    A study of the same name with another base / space / objectives is refused unless force_new,
    which deletes it from the storage (the caller moves its run folders aside)."""
    storage = open_storage(url, parallel)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in existing:
        stored = existing[spec.name].user_attrs.get(SPEC_ATTR)
        if stored == spec.fingerprint() and not force_new:
            study = optuna.load_study(study_name=spec.name, storage=storage)
            if INSTANCE_ATTR not in study.user_attrs:  # a study begun before instances had ids
                study.set_user_attr(INSTANCE_ATTR, uuid.uuid4().hex)
            offset = len(study.get_trials(deepcopy=False))
            return load_study(spec, url, parallel, offset)
        if not force_new:
            raise SweepSpecError(
                f"study '{spec.name}' already exists in {url} with a different base, search space or objectives; "
                "rename the sweep (name:), or pass --force-new to set the old study aside and start afresh"
            )
        optuna.delete_study(study_name=spec.name, storage=storage)
    pruner = make_pruner(spec)  # bad pruner options are refused before the study exists
    sampler, directions = make_sampler(spec), [o.direction for o in spec.objectives]
    study = optuna.create_study(
        study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner, directions=directions
    )
    study.set_user_attr(SPEC_ATTR, spec.fingerprint())
    study.set_user_attr(INSTANCE_ATTR, uuid.uuid4().hex)
    study.set_user_attr("maskvlp.objectives", [o.metric for o in spec.objectives])
    return study


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """Sample the spec's space for one trial (a parameter with `when` only where its conditions hold
    on the base and the values sampled before it). Enqueued trials (retries) get their fixed params."""
    values: dict[str, Any] = {}
    for p in spec.space:
        known = spec.resolve(values)
        if any(known.get(k) != v for k, v in p.when.items()):
            continue
        if p.type == "categorical":
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.type == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
            if p.step:  # 0.30000000000000004 -> 0.3: the value a user would write in params.yaml
                values[p.key] = round(values[p.key], 10)
    return values


def trial_handle(study: optuna.Study, number: int) -> optuna.Trial:
    """A live Trial for `number` in another process (a trial's job): report() and should_prune() then
    reach the shared storage. Optuna has no public constructor from a number; this is the one place
    that uses the storage's trial id lookup."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


# ------------------------------------------------------------------------------ logical trials
@dataclass
class Logical:
    """One point of the space and its run folder; `attempts` are its Optuna trials, oldest first."""

    run_dir: str
    attempts: list[optuna.trial.FrozenTrial]

    @property
    def last(self) -> optuna.trial.FrozenTrial:
        return self.attempts[-1]

    @property
    def number(self) -> int:
        return self.attempts[0].number

    @property
    def failures(self) -> int:
        """Attempts that failed by a crash (a clean stop or a never-launched attempt does not count)."""
        return sum(1 for t in self.attempts if t.state == TrialState.FAIL and t.user_attrs.get("counts_as_failure"))


def logical_trials(study: optuna.Study) -> list[Logical]:
    groups: dict[str, Logical] = {}
    for t in study.get_trials(deepcopy=False):
        run_dir = t.user_attrs.get("run_dir")
        if run_dir is None:  # asked but never launched (the driver died in between): not a trial
            continue
        groups.setdefault(run_dir, Logical(run_dir, [])).attempts.append(t)
    for g in groups.values():
        g.attempts.sort(key=lambda t: t.number)
    return sorted(groups.values(), key=lambda g: g.number)


def is_finished(g: Logical, retries: int) -> bool:
    """COMPLETE or PRUNED, or FAIL with its retries used up (or with a failure no retry can mend)."""
    state = g.last.state
    if state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return state == TrialState.FAIL and (g.failures > retries or bool(g.last.user_attrs.get("no_retry")))


def values_from_record(spec: SweepSpec, result: dict[str, Any]) -> list[float] | None:
    """The objective values of a run record (result.json), or None when one is missing. A value may be
    NaN or infinite: see :func:`non_finite`."""
    out = []
    for o in spec.objectives:
        value = result.get("eval", {}).get(o.metric, result.get(o.metric))
        if not isinstance(value, int | float):
            return None
        out.append(float(value))
    return out


def non_finite(spec: SweepSpec, values: list[float]) -> str | None:
    """Why these objective values cannot be told COMPLETE (a NaN or infinite one), or None."""
    bad = [f"{o.metric}={v}" for o, v in zip(spec.objectives, values) if not math.isfinite(v)]
    return f"non-finite objective ({', '.join(bad)})" if bad else None


def live_problem(study: optuna.Study, number: int, instance: str) -> str | None:
    """Why the attempt `number` of study instance `instance` may no longer write or tell, or None when it
    is the live attempt: the study in the storage is another instance (replaced by --force-new) or gone,
    or the trial is no longer RUNNING (the driver settled it; its retry is another trial)."""
    try:
        current = study._storage.get_study_user_attrs(study._study_id).get(INSTANCE_ATTR)
        trial = study._storage.get_trial(
            study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        )
    except KeyError:
        return "its study is gone from the storage"
    if instance and current != instance:
        return f"its study was replaced (instance {instance[:8]}, the storage now holds {str(current)[:8]})"
    if trial.state != TrialState.RUNNING:
        return f"trial {number} is already {trial.state.name}: another attempt is the live one"
    return None


def intermediate_value(spec: SweepSpec, metrics: dict[str, float]) -> float | None:
    """The metric of the cheap evaluation during training (evaltasks.SubsetEvaluator) that stands for
    the first objective when pruning: the subset's zero-shot top-1 for zero-shot objectives, its
    retrieval R@1 in the objective's direction for retrieval ones, else the mean of both R@1."""
    metric = spec.objectives[0].metric
    direction = "t2i" if "t2i" in metric else "i2t"
    task = metric.split("/")[0]
    key = {"zeroshot": "zeroshot/subset/top1", "retrieval": f"retrieval/subset/{direction}_r1"}.get(task)
    if key is not None and key in metrics:
        return float(metrics[key])
    r1 = [metrics[k] for k in ("retrieval/subset/i2t_r1", "retrieval/subset/t2i_r1") if k in metrics]
    return sum(r1) / len(r1) if r1 else None


@contextlib.contextmanager
def quiet_optuna():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
