"""Model fusion on Omniglot: a meta-learned fusion of ProtoNets vs averaging, best-single, stacking.

Protocol (full, recorded in the JSON):

* Data: Omniglot (Lake et al. 2015), images 28x28 (the data layer's preprocessing: inverted,
  strokes = 1, PIL bilinear resize), no rotations.
  Background split, 30 alphabets sorted by name: alphabets 4, 9, 14, ... (every 5th, 6 of them)
  are kept for meta-training the fusion; the other 24 are split round-robin into M = 4 disjoint
  groups of 6, one per base model. Test: the 20 evaluation alphabets, unseen by every base model
  and by the fusion.
* Base models: Conv-4 ProtoNet embeddings (width 32, max-pool, TaskBatchNorm), one per group and
  seed, each trained for ``--base-minutes`` of wall time (or ``--base-steps``) on 20-way 1-shot
  5-query episodes of its own alphabets, Adam 1e-3, one episode per step.
* Fusion: :class:`metafit.fusion.FusionLearner` (1 inner step, attention on support statistics,
  normalised logits) meta-trained with the engine (vmap path) on ``--fusion-tasks`` cached
  embedded 5-way K-shot tasks (``--fusion-query`` queries per class) of the 6 fusion alphabets,
  meta-batch 16, Adam 1e-2, ``--fusion-steps`` steps; one fusion per K.
* Baselines, on the same test episodes: each base model alone, uniform averaging of the M
  models' ProtoNet probabilities, best single model chosen on the support set (LOO accuracy,
  ties / K = 1 by support cross-entropy), stacking (scikit-learn StackingClassifier contract:
  L2 multinomial logistic regression, C = 1, on the models' LOO support probabilities; K = 1:
  in-sample, cross-validation impossible) and class-symmetric stacking.
* Evaluation: ``--eval-tasks`` fixed 5-way episodes (``--eval-query`` per class) of the evaluation
  alphabets per K = 1, 5; accuracy mean ± 95% CI over episodes, and the paired difference
  (fusion - baseline) ± 95% CI over the same episodes.

Data: the library data layer (:mod:`metafit.data.omniglot`: ``load_omniglot``, decoded once and
cached in ``--cache-dir``; ``omniglot_alphabets`` for the alphabet groups; the Lake ``"test"``
split = the evaluation alphabets) and its samplers (``EpisodeSampler``, ``fixed_episodes``).
The fusion's meta-training and the comparison are :func:`metafit.fusion.meta_train_fusion` and
:func:`metafit.fusion.compare_fusion`, what ``metafit fuse`` runs on trained run folders.

Usage:
    python benchmarks/fusion.py --out results/fusion.json
    python benchmarks/fusion.py --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import parser, setup_threads, write_out  # noqa: E402
from metafit import ProtoNet, Trainer, generator, seeded, summarize  # noqa: E402
from metafit.data.datasets import LabelledDataset  # noqa: E402
from metafit.data.omniglot import alphabet_names, load_omniglot, omniglot_alphabets, omniglot_split  # noqa: E402
from metafit.data.sampling import EpisodeSampler, fixed_episodes  # noqa: E402
from metafit.fusion import FusionLearner, compare_fusion, embed_task, fusion_markdown, meta_train_fusion  # noqa: E402
from metafit.models import Conv4  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
M = 4


def train_base(dataset: LabelledDataset, seed: int, minutes: float, max_steps: int) -> tuple[torch.nn.Module, dict]:
    """A Conv-4 ProtoNet trained on 20-way 1-shot 5-query episodes of ``dataset``, frozen."""
    model = seeded(seed, lambda: Conv4(1, None, width=32))
    algo = ProtoNet()
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="loop")
    sampler = EpisodeSampler(dataset, 20, 1, 5, tasks_per_batch=1, generator=generator(seed + 7))
    t0 = time.perf_counter()
    steps, accs = 0, []
    while steps < max_steps and time.perf_counter() - t0 < minutes * 60:
        r = trainer.step(sampler.sample_batch())
        accs.append(r.metrics["accuracy"])
        steps += 1
    assert trainer.meta_params is not None
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(trainer.meta_params["model"][name])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    last = accs[-100:]
    return model, {"steps": steps, "seconds": time.perf_counter() - t0, "train_acc_last100": sum(last) / max(len(last), 1)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the data layer caches the decoded images (default $METAFIT_CACHE/omniglot or ~/.cache/metafit/omniglot)")
    p.add_argument("--base-minutes", type=float, default=1.0)
    p.add_argument("--base-steps", type=int, default=100_000)
    p.add_argument("--fusion-tasks", type=int, default=300)
    p.add_argument("--fusion-query", type=int, default=5, help="queries per class of fusion training tasks")
    p.add_argument("--fusion-steps", type=int, default=300)
    p.add_argument("--eval-tasks", type=int, default=300)
    p.add_argument("--eval-query", type=int, default=10, help="queries per class of test episodes")
    args = p.parse_args()
    setup_threads(args.threads)
    if args.quick:
        args.base_minutes, args.base_steps, args.fusion_tasks, args.fusion_steps, args.eval_tasks = 0.1, 10, 16, 10, 20
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    data = load_omniglot(args.data_root, image_size=28, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    names = list(alphabet_names(data, "background"))
    fusion_alpha = names[4::5]
    rest = [a for a in names if a not in fusion_alpha]
    groups = [rest[i::M] for i in range(M)]
    test_ds = omniglot_split(data, "test", protocol="lake", rotations=False)  # the 20 evaluation alphabets
    fusion_ds = omniglot_alphabets(data, fusion_alpha)

    bases, base_info = [], []
    for i, grp in enumerate(groups):
        model, info = train_base(omniglot_alphabets(data, grp), args.seed + 10 * i, args.base_minutes, args.base_steps)
        bases.append(model)
        base_info.append({"alphabets": grp, **info})
        print(f"base model {i}: {info['steps']} steps in {info['seconds']:.0f} s, "
              f"train acc (last 100, 20-way 1-shot) {info['train_acc_last100']:.3f}", flush=True)

    results: dict = {"protocol": {k: str(v) for k, v in vars(args).items()}, "data_load_seconds": load_s,
                     "fusion_alphabets": fusion_alpha, "base_models": base_info, "eval": {}}
    tables = []
    for k in (1, 5):
        t0 = time.perf_counter()
        pool = EpisodeSampler(fusion_ds, 5, k, args.fusion_query, tasks_per_batch=args.fusion_tasks,
                              generator=generator(args.seed + 1000 + k)).sample_batch()
        train_tasks = [embed_task(bases, t) for t in pool]
        algo = FusionLearner(inner_steps=1)
        head, mp, _ = meta_train_fusion(train_tasks, M, steps=args.fusion_steps, generator=generator(args.seed + 2000 + k),
                                        tasks_per_batch=16, lr=1e-2, learner=algo, seed=args.seed + k, path="vmap")
        fusion_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        # fixed test episodes, the same for every method
        episodes = fixed_episodes(test_ds, 5, k, args.eval_query, args.eval_tasks, seed=args.seed + 5000 + k)
        test = [embed_task(bases, t) for t in episodes]
        cmp = compare_fusion(algo, head, mp, test)
        chosen = cmp.best_single_choice
        eval_s = time.perf_counter() - t0
        nll = summarize(cmp.fusion_nll)
        out = cmp.summary()  # mean ± 95% CI per method, paired difference to the fusion
        w = mp["model"]["log_scale"].detach()
        results["eval"][k] = {
            "accuracy": out, "fusion_train_seconds": fusion_s, "eval_seconds": eval_s, "n_tasks": len(test),
            "learned_log_scale": w.tolist(), "learned_inner_lr": float(mp["model"]["log_inner_lr"].detach().exp()),
            "best_single_choice_counts": torch.bincount(torch.tensor(chosen), minlength=M).tolist(),
            "fusion_nll": {"mean": nll.mean, "ci95": nll.ci95},
        }
        tables.append((k, fusion_markdown(out)))
        print(f"K={k}: fusion meta-training {fusion_s:.0f} s, evaluation {eval_s:.0f} s", flush=True)
    results["total_seconds"] = time.perf_counter() - t_all
    for k, table in tables:
        print(f"\n5-way {k}-shot, {args.eval_tasks} test episodes ({args.eval_query} queries/class) of the evaluation alphabets\n")
        print(table, end="")
    print(f"\ntotal {results['total_seconds']:.0f} s (data load {load_s:.0f} s)")
    write_out(args.out, {"benchmark": "fusion_omniglot", "quick": args.quick, **results})


if __name__ == "__main__":
    main()
