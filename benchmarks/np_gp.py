"""CNP vs TNP-D (and the deterministic ANP) on 1-D GP regression: held-out target log-likelihood.

Protocol (a short CPU version of the TNP GP benchmark, Nguyen & Grover, ICML 2022): every model is
meta-trained on the same stream of RBF GP tasks (:class:`metafit.data.gp.GPTasks`: x ~ U[-2, 2],
lengthscale ~ U[0.1, 0.6], scale ~ U[0.1, 1], noise sd 0.02, context 3..46, targets
3..49-context, one size per batch as in the reference code), 16 tasks per batch, Adam lr 5e-4,
the same seeds, for ``--steps`` steps or ``--minutes`` per model, whichever ends first. Both use
the variance floor ``--min-variance`` (0.0025 = the TNP code's sd floor 0.05). Evaluation: 500
fixed held-out padded tasks per kernel (:func:`metafit.data.gp.gp_eval_tasks`, seed 777, sizes
drawn per task), identical for every model, scored by :class:`metafit.algorithms.neural_process.Padded`:
mean per-target log-likelihood (nats, higher is better) with a 95% CI over tasks, and the MSE of
the predictive mean. RBF is in-distribution; Matérn-5/2 and periodic are out-of-distribution
transfer rows (the paper trains one model per kernel). ``--models gp`` scores the exact GP
predictive with each task's true kernel and hyperparameters on the same tasks (no training): the
oracle the neural processes approximate.

The reference code trains 100,000 steps on a GPU (Adam 5e-4, cosine annealing); published target
log-likelihoods on this protocol (RBF, 48,000 held-out functions, 5 training seeds; Li et al.,
NeurIPS 2025, "Learning to Generalize: An Information Perspective on Neural Processes", Table 4,
run with the TNP code): CNP 0.265, ANP 0.805, TNP-A 1.650 (TNP-A scores targets jointly, so it
is not comparable with a diagonal predictor). docs/results.md sets them against this library's
runs. A few CPU minutes show the ordering early in training, not the papers' values.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/np_gp.py --threads 1 --minutes 1.0 --models cnp,anp,tnp --out results/np_gp.json
    OMP_NUM_THREADS=1 python benchmarks/np_gp.py --threads 1 --models gp --out results/np_gp_oracle.json
    python benchmarks/np_gp.py --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402

from metafit import Trainer, evaluate, generator, seeded, summarize  # noqa: E402
from metafit.algorithms.neural_process import NeuralProcess, Padded, masked_gaussian_nll  # noqa: E402
from metafit.callbacks import TimeBudget  # noqa: E402
from metafit.data.gp import GPTasks, gp_eval_tasks, gp_eval_truth, gp_predictive, split_mask  # noqa: E402
from metafit.models import CNPRegressor  # noqa: E402
from metafit.models.attentive import AttentiveNP, CNPAdapter, TransformerNP  # noqa: E402

KERNELS = ("rbf", "matern52", "periodic")
EVAL_SEED = 777


def oracle(kernel: str, tasks) -> tuple:  # noqa: ANN001
    """Per-task target NLL and MSE of the exact GP predictive with each task's TRUE hyperparameters."""
    truth = gp_eval_truth(kernel, len(tasks), seed=EVAL_SEED)
    nlls, mses = [], []
    for i, t in enumerate(tasks):
        (cx, cm), (tx, tm) = split_mask(t.support_x), split_mask(t.query_x)
        hyp = {k: v[i] for k, v in truth.items()}
        mean, var = gp_predictive(kernel, cx[cm].double(), t.support_y[cm].double(), tx[tm].double(), **hyp)
        y = t.query_y[tm].double()
        nlls.append(float(masked_gaussian_nll(mean, var, y, None)))
        mses.append(float((mean - y).pow(2).mean()))
    return summarize(nlls), summarize(mses)


def build(name: str, min_variance: float) -> torch.nn.Module:
    if name == "cnp":  # the CNP paper's 1-D regression sizes
        return CNPAdapter(
            CNPRegressor(
                1, 1, r_dim=128, encoder_hidden=(128, 128, 128), decoder_hidden=(128, 128), min_variance=min_variance
            )
        )
    if name == "anp":
        return AttentiveNP(
            1, 1, d_model=64, n_heads=4, n_self_layers=2, d_ff=128, decoder_hidden=(64, 64), min_variance=min_variance
        )
    if name == "tnp":  # TNP-D at half the paper's width/depth (CPU budget)
        return TransformerNP(
            1,
            1,
            d_model=64,
            n_heads=4,
            n_layers=3,
            d_ff=128,
            embed_depth=2,
            decoder_hidden=(128,),
            min_variance=min_variance,
        )
    raise ValueError(name)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--minutes", type=float, default=1.1, help="training wall-time cap per model")
    p.add_argument("--eval-tasks", type=int, default=500)
    p.add_argument("--min-variance", type=float, default=0.0025)
    p.add_argument("--models", default="cnp,tnp")
    args = p.parse_args()
    if args.quick:
        args.steps, args.minutes, args.eval_tasks = 30, 0.2, 50
    setup_threads(args.threads if args.threads is not None else 1, args.keep_freed_memory)
    models = args.models.split(",")
    evals = {k: gp_eval_tasks(k, args.eval_tasks, seed=EVAL_SEED) for k in KERNELS}
    rows, results = [], {}
    for name in models:
        if name == "gp":  # the oracle: no training, the true kernel and hyperparameters of every task
            results[name] = {"eval": {}}
            for kernel, tasks in evals.items():
                nll, mse = oracle(kernel, tasks)
                results[name]["eval"][kernel] = {
                    "target_ll": -nll.mean,
                    "ci95": nll.ci95,
                    "mse": mse.mean,
                    "mse_ci95": mse.ci95,
                }
                rows.append(
                    [name, kernel, 0, "0", f"{-nll.mean:.3f} ± {nll.ci95:.3f}", f"{mse.mean:.4f} ± {mse.ci95:.4f}"]
                )
            continue
        model = seeded(args.seed, lambda n=name: build(n, args.min_variance))
        algo = NeuralProcess()
        trainer = Trainer(algo, model, optimizer=lambda ps: torch.optim.Adam(ps, lr=5e-4), path="vmap")
        stream = GPTasks("rbf", tasks_per_batch=16, generator=generator(args.seed + 1))
        t0 = time.perf_counter()
        # the one training loop: a wall-clock budget (TimeBudget) and every 250th loss kept
        results_ = trainer.fit(stream, args.steps, callbacks=[TimeBudget(args.minutes * 60)])
        it = trainer.step_count
        log = [(i + 1, r.metrics["nll"]) for i, r in enumerate(results_) if (i + 1) % 250 == 0 or i == 0]
        train_s = time.perf_counter() - t0
        res = {
            "steps": it,
            "train_seconds": train_s,
            "parameters": sum(p.numel() for p in model.parameters()),
            "log": log,
            "eval": {},
        }
        for kernel, tasks in evals.items():
            ev = evaluate(Padded(algo), model, trainer.meta_params, tasks)
            nll, mse = ev.metrics["nll"], ev.metrics["mse"]
            res["eval"][kernel] = {"target_ll": -nll.mean, "ci95": nll.ci95, "mse": mse.mean, "mse_ci95": mse.ci95}
            rows.append(
                [
                    name,
                    kernel,
                    it,
                    f"{train_s:.0f}",
                    f"{-nll.mean:.3f} ± {nll.ci95:.3f}",
                    f"{mse.mean:.4f} ± {mse.ci95:.4f}",
                ]
            )
        results[name] = res
    print(markdown_table(["model", "eval kernel", "steps", "train s", "target ll (nats)", "mse"], rows))
    write_out(
        args.out,
        {
            "protocol": __doc__.split("Usage:")[0].strip(),
            "args": vars(args) | {"out": str(args.out)},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
