#!/usr/bin/env python3
"""Reference learning rates for lr_schedule (llmtrain.h) from transformers' schedulers.

Writes tests/fixtures/lr_schedule.txt: a header line, then one row per (setting, step):
  schedule max_lr min_lr warmup decay_steps step expected_lr
read by tests/test_schedule.c, which calls lr_schedule(step, max_lr, min_lr, warmup, decay_steps, style) with
style = lr_style(schedule) and compares.

lr_schedule(step, ...) is the rate of the step-th optimizer update (the trainer counts steps from 1). Each
expected value is max_lr * lr_lambda(step) of a real transformers scheduler (a LambdaLR stepped `step` times).
The same function of the step, not of the update: LambdaLR starts at lambda(0), so transformers' n-th update
uses lambda(n - 1), one step behind the trainer. The arguments map onto transformers' as follows:
  cosine    get_cosine_with_min_lr_schedule_with_warmup(num_warmup_steps=warmup, num_training_steps=decay_steps,
            min_lr=min_lr). Steps 1..decay_steps only: past decay_steps transformers' cosine rises
            again (cos(pi * progress) with progress > 1), ours stays at min_lr.
  linear    get_linear_schedule_with_warmup(num_warmup_steps=warmup, num_training_steps=decay_steps).
            transformers decays to 0: only min_lr = 0 can match (past decay_steps both give 0).
  constant  get_constant_schedule_with_warmup(num_warmup_steps=warmup).
  wsd       get_wsd_schedule(num_warmup_steps=warmup, num_stable_steps=decay_steps - decay - warmup,
            num_decay_steps=decay, decay_type="linear", min_lr_ratio=min_lr / max_lr), decay = decay_steps // 10:
            warmup to max_lr, constant until decay_steps - decay, then linear to min_lr at decay_steps
            (docs/labs.md, lab 4). transformers' WSD warmup starts from min_lr, ours (shared by every schedule)
            from 0: settings with both a warmup and min_lr > 0 cannot match and are not written.
Usage: python3 dev/gen_lr_schedule_fixtures.py [--out tests/fixtures/lr_schedule.txt]
"""
import argparse

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup,
                          get_linear_schedule_with_warmup, get_wsd_schedule)

# (schedule, max_lr, min_lr, warmup, decay_steps, last step written)
SETTINGS = [
    ("cosine", 1e-3, 1e-4, 10, 100, 100),
    ("cosine", 3e-4, 0.0, 0, 50, 50),
    ("cosine", 2e-3, 1e-3, 1, 7, 7),
    ("linear", 1e-3, 0.0, 10, 100, 120),
    ("linear", 6e-4, 0.0, 0, 40, 45),
    ("constant", 1e-3, 1e-4, 10, 100, 110),
    ("constant", 5e-4, 0.0, 0, 30, 35),
    ("wsd", 1e-3, 0.0, 10, 100, 120),
    ("wsd", 2e-3, 2e-4, 0, 50, 60),
    ("wsd", 4e-4, 0.0, 5, 37, 40),
]


def scheduler(name, max_lr, min_lr, warmup, decay_steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    if name == "cosine":
        return opt, get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, decay_steps, min_lr=min_lr)
    if name == "linear":
        assert min_lr == 0.0, "transformers' linear schedule decays to 0"
        return opt, get_linear_schedule_with_warmup(opt, warmup, decay_steps)
    if name == "constant":
        return opt, get_constant_schedule_with_warmup(opt, warmup)
    if name == "wsd":
        assert warmup == 0 or min_lr == 0.0, "transformers' WSD warmup starts from min_lr, ours from 0"
        decay = decay_steps // 10
        return opt, get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=decay,
                                     num_stable_steps=decay_steps - decay - warmup, decay_type="linear",
                                     min_lr_ratio=min_lr / max_lr)
    raise ValueError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/lr_schedule.txt")
    args = ap.parse_args()
    rows = []
    for name, max_lr, min_lr, warmup, decay_steps, last in SETTINGS:
        opt, sched = scheduler(name, max_lr, min_lr, warmup, decay_steps)
        lrs = [sched.get_last_lr()[0]]            # lambda(0)
        for _ in range(last):
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr()[0])    # lambda(i) after i scheduler steps
        for step in range(1, last + 1):
            rows.append(f"{name} {max_lr:.9g} {min_lr:.9g} {warmup} {decay_steps} {step} {lrs[step]:.12g}")
    with open(args.out, "w") as f:
        f.write("# schedule max_lr min_lr warmup decay_steps step expected_lr (dev/gen_lr_schedule_fixtures.py)\n")
        f.write("\n".join(rows) + "\n")
    print(f"{args.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
