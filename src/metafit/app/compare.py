"""``metafit compare``: several trained runs on the SAME fixed episodes, with paired statistics.

For each setting (``n_way:k_shot``), one fixed list of test episodes is drawn once (from the first
run's test classes, or an explicit ``dataset``; ``protocol="within-alphabet"`` draws Lake et al.'s
Omniglot one-shot task: every class of an episode from one evaluation alphabet, no rotations) and
every run adapts to exactly those episodes, each in its own input format (a run trained on other
images gets the episodes converted to its format; the output says so). Per run: mean accuracy
± 95% t interval over episodes, the class-bootstrap interval that also counts the finite pool of
test classes (:func:`metafit.comparison.class_bootstrap_ci`), and calibration (NLL, Brier, ECE with
15 equal-width bins, pooled over all queries). Then the paired difference of every run to the
reference (the best run, or ``baseline``) with its interval, a paired t-test and a Wilcoxon
signed-rank test with Holm's correction, and one-line verdicts (:func:`metafit.comparison.compare_runs`).
Runs of the same config that differ only in ``train.seed`` form a group: the spread over seeds is
reported apart from the episode interval and decides the group verdict
(:func:`metafit.comparison.compare_seeds`). A raw-input nearest-centroid baseline is in every table;
on episodes of feature vectors (tables), logistic regression, gradient boosting and shrinkage LDA
fitted on each episode's support rows are too (:func:`metafit.data.gp.support_baseline_logits`). Episodes for a
run trained on ``tabular-prior`` tasks are standardised with their support rows, as its training
tasks were (:func:`metafit.data.gp.standardise_tasks`), and every row scores those same episodes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metafit.app.config import REGRESSION_FAMILIES
from metafit.app.runs import _dataset, checkpoint_config, cross_domain_dataset, load_trained
from metafit.calibration import apply_temperature, calibration_metrics, fit_temperature, query_logits
from metafit.comparison import class_bootstrap_ci, compare_runs, compare_seeds, per_class_values
from metafit.data.gp import baseline_applies
from metafit.data.task import TaskBatch

__all__ = ["compare", "compare_regression", "compare_markdown", "NAIVE"]

NAIVE = "nearest centroid (raw inputs)"
TABLE_BASELINES = {
    "logistic_regression": "logistic regression (support rows)",
    "gradient_boosting": "gradient boosting (support rows)",
    "shrinkage_lda": "shrinkage LDA (support rows)",
}


def _group_key(config: Any, depth: int = 0) -> str:
    """The config less its training seed; a ``train.init_from`` run is replaced by ITS key, so the
    runs of one pipeline (pretraining, then meta-training from it) with other seeds at every stage
    are one group. A starting run whose ``config.json`` cannot be read stays named by its path."""
    d = config.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k != "seed"}
    d.pop("name", None)
    start = d["train"].get("init_from")
    if start and depth < 8:
        try:
            recorded = json.loads((Path(start) / "config.json").read_text())
            d["train"]["init_from"] = {"run": json.loads(_group_key(checkpoint_config(recorded), depth + 1))}
        except (OSError, ValueError, TypeError, KeyError):
            pass
    return json.dumps(d, sort_keys=True)


def _convert(tasks: TaskBatch, shape: tuple[int, ...]) -> tuple[TaskBatch, str | None]:
    """The episodes in a run's own input format (images only), and what was done."""
    from metafit.data.sources import convert_images

    have = tuple(tasks.support_x.shape[2:])
    if have == shape:
        return tasks, None
    if len(have) != 3 or len(shape) != 3:
        raise ValueError(f"episodes of example shape {have} cannot be converted to a run's input shape {shape}")
    t, s, q = tasks.support_x.shape[0], tasks.support_x.shape[1], tasks.query_x.shape[1]
    sx = convert_images(tasks.support_x.flatten(0, 1), image_size=shape[1], channels=shape[0]).view(t, s, *shape)
    qx = convert_images(tasks.query_x.flatten(0, 1), image_size=shape[1], channels=shape[0]).view(t, q, *shape)
    return TaskBatch(sx, tasks.support_y, qx, tasks.query_y, n_way=tasks.n_way), f"{have} -> {shape}"


def _episodes(
    first: Any,
    setting: tuple[int, int],
    n: int,
    seed: int,
    protocol: str,
    dataset: str | None,
    n_query: int | None,
    imbalanced: float | None,
) -> tuple[Any, dict[str, Any]]:
    from metafit.data import protocols as pr

    n_way, k_shot = setting
    q = n_query or first.config.data.eval_n_query or first.config.data.n_query
    info: dict[str, Any] = {"protocol": protocol, "n_way": n_way, "k_shot": k_shot, "episodes": n, "seed": seed}
    if protocol == "within-alphabet":
        cfg = first.config
        if cfg.data.dataset != "omniglot" or dataset not in (None, "omniglot"):
            raise ValueError("protocol='within-alphabet' is Omniglot's one-shot task: the runs must be Omniglot runs")
        from metafit.data import omniglot as om

        test = om.omniglot_split(
            cfg.data.data_root or _root(),
            "test",
            protocol="lake",
            rotations=False,
            image_size=cfg.data.image_size,
            cache_dir=cfg.data.cache_dir,
        )
        es = pr.within_alphabet_episodes(test, n, seed=seed, n_way=n_way, k_shot=k_shot, n_query=n_query or 1)
        info.update(split="Lake evaluation alphabets, no rotations", n_query=n_query or 1)
        return es, info
    if dataset is not None:
        test, conv = cross_domain_dataset(first.config, dataset, first.checkpoint.meta.get("preprocessing", {}))
        info["dataset"] = conv
    elif first.config.data.dataset == "tabular-prior":
        raise ValueError(
            "a run trained on tabular-prior tasks has no test classes of its own: compare it on a table, "
            "e.g. --dataset iris (or wine, breast-cancer, digits-table, a .csv/.parquet/.npz file)"
        )
    else:
        test = _dataset(first.config, "test")
        info["dataset"] = first.config.data.dataset
    if imbalanced is not None:
        es = pr.imbalanced_query_episodes(test, n_way, k_shot, n_way * q, n, alpha=imbalanced, seed=seed)
        info.update(n_query_total=n_way * q, dirichlet_alpha=imbalanced)
    else:
        es = pr.fixed_episodes_with_classes(test, n_way, k_shot, q, n, seed=seed)
        info["n_query"] = q
    if first.config.data.dataset == "tabular-prior":
        from dataclasses import replace

        from metafit.data.gp import standardise_tasks

        es = replace(es, tasks=standardise_tasks(es.tasks))
        info["standardisation"] = "each episode's features by its support rows' mean and sd"
    return es, info


def _root() -> str:
    import os

    root = os.environ.get("METAFIT_DATA")
    if not root:
        raise ValueError("data root not set: set METAFIT_DATA or the runs' data.data_root")
    return root


def _score(
    learner: Any,
    model: Any,
    meta_params: Any,
    buffers: Any,
    tasks: Any,
    classes: Tensor_,
    seed: int,
    temperature: Any = None,
) -> dict[str, Any]:
    logits, labels = query_logits(learner, model, meta_params, tasks, buffers=buffers)
    return _score_logits(logits, labels, classes, seed, temperature)


def _table_baseline_logits(tasks: TaskBatch, method: str, seed: int) -> tuple[Tensor_, Tensor_]:
    from metafit.data.gp import support_baseline_logits

    logits = torch.stack([support_baseline_logits(tasks[i], method, seed=seed) for i in range(len(tasks))])
    return logits, tasks.query_y


def _score_logits(
    logits: Tensor_, labels: Tensor_, classes: Tensor_, seed: int, temperature: Any = None
) -> dict[str, Any]:
    correct = (logits.argmax(-1) == labels).double()
    acc = correct.mean(1)
    cal = calibration_metrics(logits, labels, n_bins=15, per_episode=False)
    n_way = int(logits.shape[-1])
    boot = class_bootstrap_ci(
        per_class_values(correct, labels, n_way), classes, generator=torch.Generator().manual_seed(seed), n_boot=1000
    )
    return {
        "per_episode": acc.tolist(),
        "bootstrap": boot.to_dict(),
        "calibration": {
            "nll": cal.nll,
            "brier": cal.brier,
            "ece": cal.ece,
            "n_bins": cal.n_bins,
            "binning": cal.binning,
            "pooling": cal.pooling,
            "diagram": _diagram(cal.diagram),
        },
        **({} if temperature is None else {"temperature": _scaled(logits, labels, temperature)}),
    }


def _scaled(logits: Tensor_, labels: Tensor_, fit: Any) -> dict[str, Any]:
    """Test calibration after dividing the logits by the temperature fitted on validation episodes."""
    if isinstance(fit, str):
        return {"skipped": fit}
    cal = calibration_metrics(apply_temperature(logits, fit), labels, n_bins=15, per_episode=False)
    return {**fit.to_dict(), "nll": cal.nll, "brier": cal.brier, "ece": cal.ece}


def _fit_temperature(tr: Any, learner: Any, setting: tuple[int, int], n_query: int, episodes: int, seed: int) -> Any:
    """``fit_temperature`` on the run's VALIDATION classes (never the test ones), or why it cannot be fitted."""
    from metafit.data import protocols as pr

    if tr.config.data.dataset == "tabular-prior":  # validation = fresh tasks of the training prior, never the table
        from metafit.app.runs import eval_tasks

        tasks = eval_tasks(
            tr.config, n_tasks=episodes, n_way=setting[0], k_shot=setting[1], n_query=n_query, seed=seed + 1
        )
        logits, labels = query_logits(learner, tr.model, tr.meta_params, tasks, buffers=tr.buffers)
        return fit_temperature(logits, labels)
    try:
        val = _dataset(tr.config, "val")
    except (ValueError, KeyError) as e:
        return f"no validation split to fit a temperature on ({str(e).splitlines()[0]})"
    n_way, k_shot = setting
    if val.num_classes < n_way:
        return f"the validation split has {val.num_classes} classes, fewer than n_way={n_way}"
    es = pr.fixed_episodes_with_classes(val, n_way, k_shot, n_query, episodes, seed=seed + 1)
    logits, labels = query_logits(learner, tr.model, tr.meta_params, es.tasks, buffers=tr.buffers)
    return fit_temperature(logits, labels)


Tensor_ = torch.Tensor


def _diagram(d: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(d)
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def compare(
    runs: Sequence[str | Path],
    *,
    settings: Sequence[tuple[int, int]] | None = None,
    episodes: int = 600,
    seed: int = 2024,
    baseline: str | None = None,
    protocol: str = "standard",
    dataset: str | None = None,
    n_query: int | None = None,
    imbalanced: float | None = None,
    inductive: bool = False,
    alpha: float = 0.05,
    test: str = "t",
    temperature: bool = False,
    shots: Sequence[int] | None = None,
    ensemble: int = 1,
) -> dict[str, Any]:
    """Evaluates trained runs on identical fixed episodes and compares them (see the module docstring).

    Regression runs (sinusoid, Gaussian-process and image-completion families) are compared on
    identical held-out tasks of their family instead (:func:`compare_regression`): ``shots``
    gives the context sizes; the classification options do not apply to them.

    Args:
        runs: Run folders or checkpoints (at least one); a run's name is its folder's name.
        settings: ``(n_way, k_shot)`` test settings (default: the first run's evaluation setting).
        episodes: Fixed episodes per setting.
        seed: Seed of the episodes (the same for every run).
        baseline: The reference run's name (default: the best run).
        protocol: ``"standard"`` or ``"within-alphabet"`` (Omniglot, Lake et al. 2015).
        dataset: Test on another dataset's test classes (cross-domain).
        n_query: Queries per class (default: the first run's evaluation queries; 1 within-alphabet).
        imbalanced: Draw class-imbalanced query sets with Dirichlet(``imbalanced``) proportions.
        inductive: Normalise with support-set statistics only (:func:`metafit.data.protocols.inductive`).
        alpha: Significance level of the verdicts.
        test: ``"t"`` (paired t-test) or ``"wilcoxon"`` for the verdicts.
        temperature: Also fit a temperature per run on episodes of its VALIDATION classes
            (:func:`metafit.calibration.fit_temperature`) and report the test calibration after
            scaling beside the raw one (accuracy is unchanged by a temperature).
        shots: Regression runs only: context points per task, one comparison per value (default:
            the first run's evaluation shot; Gaussian-process tasks draw their own sizes).
        ensemble: Score every run as a :class:`~metafit.algorithms.PermutationEnsemble` of this
            many members (TabPFN's test-time ensemble over class and column permutations; ``1``:
            the run as trained). Learners with an inner loop are refused.

    Returns:
        JSON-able ``{"settings": [...], "runs": {...}}`` (see :func:`compare_markdown`).
    """
    from metafit.algorithms.baselines import RawNearestCentroid
    from metafit.algorithms.ensemble import PermutationEnsemble
    from metafit.data.protocols import inductive as make_inductive

    if isinstance(runs, (str, Path)) or not runs:
        raise ValueError(f"runs must name at least one trained run, got {runs!r}")
    if protocol not in ("standard", "within-alphabet"):
        raise ValueError(f"protocol must be 'standard' or 'within-alphabet', got {protocol!r}")
    loaded = []
    for r in runs:
        tr = load_trained(r)
        p = Path(r)
        name = p.name if p.is_dir() else tr.checkpoint.path.parent.parent.name
        if any(name == n for n, _ in loaded):
            name = str(p)
        loaded.append((name, tr))
    regression = [n for n, tr in loaded if tr.config.data.dataset in REGRESSION_FAMILIES]
    if regression:
        if len(regression) != len(loaded):
            raise ValueError(
                f"runs {regression} were trained on regression tasks and the others on classification: "
                "compare them separately"
            )
        given = {
            "settings": settings,
            "protocol": None if protocol == "standard" else protocol,
            "dataset": dataset,
            "imbalanced": imbalanced,
            "inductive": inductive or None,
            "temperature": temperature or None,
            "ensemble": None if ensemble == 1 else ensemble,
        }
        wrong = [k for k, v in given.items() if v is not None]
        if wrong:
            raise ValueError(
                f"{wrong} apply to classification episodes; regression runs are compared on their own "
                "family's held-out tasks (give shots for the context sizes)"
            )
        return compare_regression(
            loaded,
            shots=shots,
            episodes=episodes,
            seed=seed,
            n_query=n_query,
            baseline=baseline,
            alpha=alpha,
            test=test,
        )
    if shots is not None:
        raise ValueError("shots (context sizes) apply to regression runs; classification runs take settings")
    priors = {n for n, tr in loaded if tr.config.data.dataset == "tabular-prior"}
    if priors and len(priors) != len(loaded):
        raise ValueError(
            f"runs {sorted(priors)} were trained on tabular-prior tasks (episodes standardised with their support "
            f"rows) and the others were not: compare them separately"
        )
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"ensemble must be an int >= 1 (members), got {ensemble!r}")
    if ensemble > 1:
        looped = [n for n, tr in loaded if tr.algorithm.spec.inner_loop]
        if looped:
            raise ValueError(
                f"ensemble={ensemble} permutes classes and columns of learners without an inner loop; "
                f"runs {looped} adapt by gradient steps: compare them without an ensemble"
            )
    if baseline is not None and baseline not in [n for n, _ in loaded]:
        raise ValueError(f"baseline must be one of the runs {[n for n, _ in loaded]}, got {baseline!r}")
    first = loaded[0][1]
    d = first.config.data
    settings = list(settings or [(d.eval_n_way or d.n_way, d.eval_k_shot or d.k_shot)])
    groups: dict[str, list[str]] = {}  # config (less its seed) -> one run per distinct seed
    seen: set[tuple[str, int]] = set()
    for name, tr in loaded:
        key = _group_key(tr.config)
        if (key, tr.config.train.seed) not in seen:
            seen.add((key, tr.config.train.seed))
            groups.setdefault(key, []).append(name)
    out: dict[str, Any] = {
        "runs": {n: _run_record(tr) for n, tr in loaded},
        "inductive": inductive,
        "settings": [],
    }
    for setting in settings:
        es, info = _episodes(first, setting, episodes, seed, protocol, dataset, n_query, imbalanced)
        info["normalisation"] = (
            "inductive (support statistics only)" if inductive else "transductive (support + query batch)"
        )
        if ensemble > 1:
            info["ensemble"] = f"{ensemble} members: class and column permutations (PermutationEnsemble)"
        scores: dict[str, Any] = {}
        for name, tr in loaded:
            if tr.algorithm.spec.head == "fixed" and tr.config.data.n_way != setting[0]:
                scores[name] = {"skipped": f"a {tr.config.data.n_way}-way head cannot score {setting[0]}-way episodes"}
                continue
            shape = tuple(
                tr.checkpoint.meta.get("preprocessing", {}).get("input_shape") or es.tasks.support_x.shape[2:]
            )
            tasks, converted = _convert(es.tasks, shape)
            learner = make_inductive(tr.algorithm) if inductive else tr.algorithm
            if ensemble > 1:
                learner = PermutationEnsemble(learner, ensemble)
            fit = None
            if temperature:
                q_val = int(info.get("n_query") or n_query or tr.config.data.n_query)
                fit = _fit_temperature(tr, learner, setting, q_val, min(episodes, 200), seed)
            s = _score(learner, tr.model, tr.meta_params, tr.buffers, tasks, es.classes, seed, fit)
            s["format"] = "own format" + (f" (episodes converted {converted})" if converted else "")
            scores[name] = s
        naive = RawNearestCentroid()
        scores[NAIVE] = _score(naive, torch.nn.Identity(), {}, {}, es.tasks, es.classes, seed)
        scores[NAIVE]["format"] = "raw episode inputs"
        if es.tasks.support_x.dim() == 3:  # feature vectors: the classical classifiers of tables
            for method, label in TABLE_BASELINES.items():
                if not baseline_applies(method, es.tasks.support_x.shape[1], es.tasks.n_way):
                    continue  # e.g. shrinkage LDA at one shot: no within-class covariance to pool
                logits, labels = _table_baseline_logits(es.tasks, method, seed)
                scores[label] = _score_logits(logits.to(torch.float32), labels, es.classes, seed)
                scores[label]["format"] = "episode inputs (scikit-learn, fitted on the support rows)"
        values = {n: s["per_episode"] for n, s in scores.items() if "per_episode" in s}
        cmp = compare_runs(values, baseline=baseline, alpha=alpha, test=test)  # type: ignore[arg-type]
        entry: dict[str, Any] = {**info, "scores": scores, "comparison": cmp.to_dict(), "verdicts": _verdicts(cmp)}
        multi = {k: v for k, v in groups.items() if len(v) > 1}
        if multi and len(groups) > 1:  # a seed comparison needs two configs, one with several seeds
            named = {f"{'+'.join(v)}": [values[n] for n in v if n in values] for v in groups.values()}
            named = {k: v for k, v in named.items() if v}
            sc = compare_seeds(named, alpha=alpha)
            entry["seeds"] = sc.to_dict()
            entry["verdicts"] += _verdicts(sc)
        out["settings"].append(entry)
    return out


def _run_record(tr: Any) -> dict[str, Any]:
    return {
        "checkpoint": str(tr.checkpoint.path),
        "step": tr.checkpoint.step,
        "algo": tr.config.algo.name,
        "seed": tr.config.train.seed,
        "config_name": tr.config.name,
        "train_minutes": _train_minutes(tr.checkpoint.meta),
    }


def compare_regression(
    loaded: Sequence[tuple[str, Any]],
    *,
    shots: Sequence[int] | None = None,
    episodes: int = 600,
    seed: int = 2024,
    n_query: int | None = None,
    baseline: str | None = None,
    alpha: float = 0.05,
    test: str = "t",
) -> dict[str, Any]:
    """Regression runs of one task family on identical held-out tasks, compared pairwise.

    The tasks are drawn once per context size from the first run's family
    (:func:`metafit.app.runs.eval_tasks` with ``seed``) and every run predicts them. Per run and
    task: the query (target) MSE, and for learners with a Gaussian predictive the target
    log-likelihood per point, the context log-likelihood (each task's context points as its
    targets) and the coverage of the central 90% predictive
    interval (the fraction of targets inside it; not for masked neural processes on padded
    Gaussian-process tasks). Then
    :func:`metafit.comparison.compare_runs` on the per-task target log-likelihood (higher is
    better, in nats) among the Gaussian learners and on the per-task MSE (lower is better) among
    all, with their verdicts.

    Args:
        loaded: ``(name, TrainedRun)`` pairs, every run trained on the same regression family.
        shots: Context points per task, one comparison per value (default: the first run's
            ``eval_k_shot``/``k_shot``). Gaussian-process families draw a context size per task
            (the GP protocol) and take no shots.
        episodes: Tasks per context size.
        seed: Seed of the tasks (the same for every run).
        n_query: Target points per task (sinusoid; default: the first run's evaluation targets).
        baseline: The reference run's name (default: the best run).
        alpha: Family-wise significance level of the verdicts.
        test: ``"t"`` or ``"wilcoxon"`` for the verdicts.

    Returns:
        JSON-able ``{"kind": "regression", "runs": {...}, "settings": [...]}``; each setting has
        ``"scores"`` (per-task lists and means), ``"comparisons"`` (``"target_ll"``, ``"mse"``) and
        ``"verdicts"``.

    Raises:
        ValueError: runs of different families, shots for Gaussian-process tasks, an unknown baseline.
    """
    from metafit.app.runs import eval_algorithm, eval_tasks, score_tasks
    from metafit.evaluation import summarize

    families = {tr.config.data.dataset for _, tr in loaded}
    if len(families) != 1:
        raise ValueError(f"regression runs are compared on one family's tasks, got runs trained on {sorted(families)}")
    (family,) = families
    first = loaded[0][1].config
    names = [n for n, _ in loaded]
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline must be one of the runs {names}, got {baseline!r}")
    out: dict[str, Any] = {"kind": "regression", "runs": {n: _run_record(tr) for n, tr in loaded}, "settings": []}
    for k in list(shots) if shots is not None else [None]:
        tasks = eval_tasks(first, n_tasks=episodes, k_shot=k, n_query=n_query, seed=seed)
        scores: dict[str, Any] = {}
        for name, tr in loaded:
            learner = eval_algorithm(tr.config, tr.algorithm)
            per = score_tasks(tr.config, learner, tr.model, tr.meta_params, tr.buffers, tasks).per_task
            sc: dict[str, Any] = {"mse": per["mse"]}
            for key, out_key in (("nll", "target_ll"), ("context_nll", "context_ll")):
                if key in per:
                    sc[out_key] = [-v for v in per[key]]
            if "coverage_90" in per:  # how often the central 90% interval holds the target
                sc["coverage_90"] = per["coverage_90"]
            sc["summary"] = {m: vars(summarize(v)) for m, v in sc.items() if isinstance(v, list)}
            scores[name] = sc
        first_task = tasks[0]
        entry: dict[str, Any] = {
            "dataset": family,
            "k_shot": None if family.startswith("gp-") else k or first.data.eval_k_shot or first.data.k_shot,
            "context": "per task (the GP protocol)" if family.startswith("gp-") else "fixed",
            "n_query": None if family.startswith("gp-") else first_task.query_x.shape[0],  # GP: sizes per task
            "episodes": len(tasks),
            "seed": seed,
            "scores": scores,
            "comparisons": {},
            "verdicts": [],
        }
        for metric, higher, unit in (("target_ll", True, "nats per target point"), ("mse", False, "MSE")):
            values = {n: sc[metric] for n, sc in scores.items() if metric in sc}
            if len(values) < 2:
                continue
            ref = baseline if baseline in values else None
            cmp = compare_runs(
                values,  # type: ignore[arg-type]
                baseline=ref,
                alpha=alpha,
                test=test,
                higher_is_better=higher,
                scale=1.0,
                unit=unit,
            )
            entry["comparisons"][metric] = cmp.to_dict()
            entry["verdicts"] += _verdicts(cmp)
        out["settings"].append(entry)
    return out


def _train_minutes(meta: dict[str, Any]) -> float | None:
    """Training minutes recorded in a checkpoint (``None`` for checkpoints that predate the record)."""
    seconds = meta.get("train_seconds")
    return None if seconds is None else float(seconds) / 60.0


def _verdicts(result: Any) -> list[str]:
    return list(result.verdicts)


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _runs_markdown(out: dict[str, Any]) -> list[str]:
    lines: list[str] = ["| run | learner | seed | steps | training minutes |", "|---|---|---|---|---|"]
    for name, r in out["runs"].items():
        minutes = r.get("train_minutes")
        lines.append(
            f"| {name} | {r['algo']} | {r['seed']} | {r['step']:,} | {'-' if minutes is None else f'{minutes:.1f}'} |"
        )
    return [*lines, ""]


def _cell(summary: dict[str, Any], metric: str, digits: int) -> str:
    if metric not in summary:
        return "-"
    return f"{summary[metric]['mean']:.{digits}f} ± {summary[metric]['ci95']:.{digits}f}"


def _diff_cell(diffs: dict[str, dict[str, Any]], metric: str, name: str) -> str:
    if name not in diffs.get(metric, {}):
        return "-"
    d = diffs[metric][name]
    return "reference" if d is None else f"{d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"


def _regression_markdown(out: dict[str, Any]) -> str:
    lines = _runs_markdown(out)
    for s in out["settings"]:
        if s["context"] == "fixed":
            size = f"{s['k_shot']} context points, {s['n_query']} target points"
        else:
            size = f"context and target sizes {s['context']}"
        lines.append(f"## {s['dataset']}, {size}, {s['episodes']} fixed tasks (seed {s['seed']})\n")
        diffs = {
            m: {d["run"]: d for d in c["differences"]} | {c["reference"]: None} for m, c in s["comparisons"].items()
        }
        lines.append(
            "| run | target log-likelihood per point ± 95% CI | paired diff (nats) | context log-likelihood | "
            "target MSE ± 95% CI | paired diff (MSE) | 90% interval coverage |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for name, sc in s["scores"].items():
            summ = sc["summary"]
            lines.append(
                f"| {name} | {_cell(summ, 'target_ll', 3)} | {_diff_cell(diffs, 'target_ll', name)} | "
                f"{_cell(summ, 'context_ll', 3)} | {_cell(summ, 'mse', 4)} | {_diff_cell(diffs, 'mse', name)} | "
                f"{_cell(summ, 'coverage_90', 3)} |"
            )
        lines += ["", "Verdicts:\n", *[f"- {v}" for v in s["verdicts"]], ""]
    return "\n".join(lines) + "\n"


def compare_markdown(out: dict[str, Any]) -> str:
    """Tables (accuracy % with both intervals, paired differences, calibration) and the verdicts
    (regression comparisons: log-likelihood and MSE with their paired differences)."""
    if out.get("kind") == "regression":
        return _regression_markdown(out)
    lines = _runs_markdown(out)
    for s in out["settings"]:
        ds = s.get("dataset")
        where = ds if isinstance(ds, str) else (ds or {}).get("dataset", "")
        lines.append(
            f"## {s['n_way']}-way {s['k_shot']}-shot, {s['episodes']} fixed episodes, {s['protocol']} protocol"
            f"{', ' + where if where else ''}; {s['normalisation']}"
            f"{'; ensemble of ' + s['ensemble'] if s.get('ensemble') else ''}\n"
        )
        diffs = {d["run"]: d for d in s["comparison"]["differences"]}
        ref = s["comparison"]["reference"]
        lines.append(
            "| run | accuracy % ± 95% CI (episodes) | class-bootstrap 95% CI | diff to "
            f"{ref} (paired, points) | p t-test | p Wilcoxon | p Holm | NLL | Brier | ECE | input |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        runs = {r["name"]: r for r in s["comparison"]["runs"]}
        for name, sc in s["scores"].items():
            if "per_episode" not in sc:
                lines.append(f"| {name} | {sc['skipped']} | | | | | | | | | |")
                continue
            r, b, c = runs[name], sc["bootstrap"], sc["calibration"]
            half = 100 * (r["high"] - r["low"]) / 2
            d = diffs.get(name)
            diff = (
                "reference" if d is None else f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
            )
            pt = "-" if d is None else _p(d["t_p"])
            pw = "-" if d is None else _p(d["wilcoxon_p"])
            ph = "-" if d is None else _p(d["p_holm"])
            lines.append(
                f"| {name} | {100 * r['mean']:.2f} ± {half:.2f} | [{100 * b['low']:.2f}, {100 * b['high']:.2f}] | "
                f"{diff} | {pt} | {pw} | {ph} | {c['nll']:.3f} | {c['brier']:.3f} | {c['ece']:.3f} | "
                f"{sc['format']} |"
            )
        lines.append("")
        scaled = {n: sc["temperature"] for n, sc in s["scores"].items() if "temperature" in sc}
        if scaled:
            lines.append("Temperature scaling (T fitted on validation-class episodes, test calibration after):\n")
            lines.append("| run | T | NLL after | Brier after | ECE after |")
            lines.append("|---|---|---|---|---|")
            for name, t in scaled.items():
                if "skipped" in t:
                    lines.append(f"| {name} | {t['skipped']} | | | |")
                else:
                    bound = " (at the search bound)" if t["at_bound"] else ""
                    lines.append(
                        f"| {name} | {t['temperature']:.3g}{bound} | {t['nll']:.3f} | {t['brier']:.3f} | {t['ece']:.3f} |"
                    )
            lines.append("")
        if "seeds" in s:
            lines.append("Training seeds (spread over seeds, separate from the episode interval):\n")
            for g in s["seeds"]["groups"]:
                lines.append(
                    f"- {g['name']}: {g['n_seeds']} seeds, mean {100 * g['mean']:.2f}, sd over seeds "
                    f"{100 * g['seed_std']:.2f}, 95% CI over seeds [{100 * g['seed_low']:.2f}, "
                    f"{100 * g['seed_high']:.2f}], episode CI [{100 * g['episode_low']:.2f}, "
                    f"{100 * g['episode_high']:.2f}]"
                )
            lines.append("")
        lines.append("Verdicts:\n")
        lines += [f"- {v}" for v in s["verdicts"]]
        lines.append("")
    return "\n".join(lines) + "\n"
