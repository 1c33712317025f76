"""Helpers shared by the schedule tests."""

import warnings

import pytest


def torch_lrs(make_scheduler, base_lr, n):
    """torch's lr used by each of the first n updates: get_last_lr() before each step
    (skips the test without torch)."""
    torch = pytest.importorskip("torch", reason="torch not installed; pip install torch==2.13.0")
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base_lr)
    lrs = []
    with warnings.catch_warnings():
        # other torch warnings stay errors (pyproject: filterwarnings = error)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                category=UserWarning)
        sched = make_scheduler(torch.optim.lr_scheduler, opt)
        for _ in range(n):
            lrs.append(float(sched.get_last_lr()[0]))
            opt.step()
            sched.step()
    return lrs
