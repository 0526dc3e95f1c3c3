#!/usr/bin/env python3
"""PyTorch's learning rates per epoch for cnnc's `schedule` key (tests/schedule.rs).

For each case below, a one-parameter torch.optim optimiser gets the scheduler the `schedule`
text stands for, and `scheduler.step()` is called once after every epoch, as `cnnc run` steps
it; the rate of each epoch is `optimizer.param_groups[0]["lr"]` before the epoch. The rates are
written as Python's repr (the shortest text that reads back to the same float), as strings so
that no JSON reader rounds them, to tests/golden/schedules.json:

    [{"schedule": "step(every=5, gamma=0.5)", "optimizer": "sgd", "lr": "0.05",
      "epochs": 15, "rates": ["0.05", ...]}, ...]

Run with the peers' venv (torch): /work/peers-venv/bin/python scripts/schedule_golden.py
The test itself needs no torch.
"""

import json
import math
import pathlib

import torch

# (schedule text as cnnc reads it, optimiser, lr, epochs)
CASES = [
    ("constant", "sgd", 0.1, 5),
    ("step(every=5, gamma=0.5)", "sgd", 0.05, 15),
    ("step(1)", "sgd", 0.1, 6),
    ("step(every=3, gamma=0.7)", "adam", 0.001, 12),
    ("step(every=4, gamma=1.5)", "sgd", 0.01, 9),
    ("cosine", "sgd", 0.05, 15),
    ("cosine(min_lr=0.001)", "sgd", 0.1, 10),
    ("cosine", "sgd", 0.3, 1),
    ("cosine(min_lr=0.0001)", "adam", 0.02, 100),
]


def scheduler_for(text, optimizer, epochs):
    name, _, rest = text.partition("(")
    args = {}
    positional = []
    for part in filter(None, (p.strip() for p in rest.rstrip(")").split(","))):
        if "=" in part:
            key, value = part.split("=")
            args[key.strip()] = float(value)
        else:
            positional.append(float(part))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "step":
        every = int(positional[0] if positional else args["every"])
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=every, gamma=args.get("gamma", 0.1)
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs, eta_min=args.get("min_lr", 0.0)
        )
    raise ValueError(text)


def rates(text, kind, lr, epochs):
    param = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        optimizer = torch.optim.SGD([param], lr=lr)
    else:
        optimizer = torch.optim.Adam([param], lr=lr)
    scheduler = scheduler_for(text, optimizer, epochs)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        optimizer.step()
        scheduler.step()
    return out


def main():
    cases = []
    for text, kind, lr, epochs in CASES:
        values = rates(text, kind, lr, epochs)
        assert all(isinstance(v, float) and math.isfinite(v) for v in values)
        cases.append(
            {
                "schedule": text,
                "optimizer": kind,
                "lr": repr(lr),
                "epochs": epochs,
                "rates": [repr(v) for v in values],
            }
        )
    out = pathlib.Path(__file__).resolve().parent.parent / "tests/golden/schedules.json"
    out.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1) + "\n")
    print(f"wrote {out} ({len(cases)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
