"""Optimize the plain DSPy program in support.py from Python, as from a notebook.

    python examples/plain_dspy/optimize.py [--trials 6] [--out runs/plain_dspy]
"""

import argparse
import random

from support import Support, intent_match, load_examples

import stagewise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--limit", type=int, default=48, help="examples to use (of 80)")
    parser.add_argument("--out", default="runs/plain_dspy")
    args = parser.parse_args()

    examples = load_examples()
    random.Random(0).shuffle(examples)
    examples = examples[: args.limit]
    third = len(examples) // 3
    train, dev, test = examples[:third], examples[third:2 * third], examples[2 * third:]

    optimizer = stagewise.JointOptimizer(
        metric=intent_match,                                    # a plain DSPy metric
        stage_metrics={"area": "area"},                          # score the first stage on its own label
        models={"*": ["smollm2-135m", "gemma3-270m"]},           # every stage: one of the local models
        optimizers=["none", "labeled_fewshot"], demos=[2, 4],
        trials=args.trials, tracking="plain-dspy", out_dir=args.out,
        baseline={"area": "smollm2-135m", "intent.predict": "smollm2-135m"},
    )
    best = optimizer.compile(Support(), trainset=train, valset=dev, testset=test)

    print(optimizer.front[["trial", "quality", "cost_per_1k_requests", "area.model", "intent.predict.model"]])
    print(optimizer.report.table())                              # the chosen program on the test set
    print(f"baseline (SmolLM2 everywhere, no demos) on the test set: {optimizer.baseline_report_.quality:.3f}")
    directory = stagewise.export(best, f"{args.out}/best")        # program.json, manifest.json, code/
    print(f"exported to {directory}; serve it with: stagewise serve {directory} --trust-code --no-auth")


if __name__ == "__main__":
    main()
