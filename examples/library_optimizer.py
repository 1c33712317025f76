"""A library-style optimizer on fastlr's functional kernels: state allocated once, nothing
allocated per step.

A library that manages its own parameters and optimizer state (its own checkpoint format,
its own parameter registry) does not need ``fastlr.Adam``: it can allocate the state a
kernel needs with ``fastlr.kernels.make_state`` and call ``fastlr.kernels.adam`` on it, in
place, each step. ``TinyAdam`` below is such an optimizer in a few lines; ``python
examples/library_optimizer.py`` trains a least-squares model with it and prints the loss.

``backend`` is any module with fastlr's kernel signatures: ``fastlr.kernels`` (compiled,
the default) or ``fastlr.reference`` (its pure-NumPy twin, for checking).
"""

import numpy as np

import fastlr.kernels
from fastlr import schedules


class TinyAdam:
    """Adam (AdamW with ``decoupled_weight_decay=True``) over a list of arrays, in place.

    ``lr`` is a number, a fastlr schedule or a callable ``step -> float``: update ``t + 1``
    uses ``lr(t)``. Other arguments as ``torch.optim.Adam``.
    """

    def __init__(self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decoupled_weight_decay=False, backend=fastlr.kernels):
        self.params = list(params)
        # Allocated once: zero-filled buffers with each param's shape, dtype and layout, in
        # a dict keyed by the kernel's argument names (exp_avg, exp_avg_sq[, max_exp_avg_sq]).
        self.state = [fastlr.kernels.make_state("adam", p, amsgrad=amsgrad)
                      for p in self.params]
        self.lr = lr if callable(lr) else float(lr)
        self.hyper = dict(beta1=float(betas[0]), beta2=float(betas[1]), eps=float(eps),
                          weight_decay=float(weight_decay),
                          decoupled_weight_decay=bool(decoupled_weight_decay))
        self.adam = backend.adam
        self.steps = 0                       # updates applied so far

    def step(self, grads):
        """One update of every param with its grad (same order, shapes and dtypes)."""
        if len(grads) != len(self.params):
            raise ValueError(f"TinyAdam.step: {len(grads)} grads for {len(self.params)} params")
        lr = self.lr(self.steps) if callable(self.lr) else self.lr
        self.steps += 1
        for param, grad, state in zip(self.params, grads, self.state):
            # Validated in compiled code, then updated in place: no array is allocated.
            self.adam(param, grad, **state, step=self.steps, lr=lr, **self.hyper)


def least_squares_problem(n_samples=256, n_features=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    y = X @ np.linspace(-2.0, 2.0, n_features) + 0.5 + 0.01 * rng.standard_normal(n_samples)
    return X, y


def main(steps=300, seed=0):
    X, y = least_squares_problem(seed=seed)
    w, b = np.zeros(X.shape[1]), np.zeros(1)          # the model: updated in place
    grad_w, grad_b = np.empty_like(w), np.empty_like(b)   # the model's own grad buffers
    opt = TinyAdam([w, b], lr=schedules.warmup_cosine(0.1, warmup_steps=20, total_steps=steps))

    def loss_and_grads():
        err = X @ w + b - y
        np.matmul(X.T, err / len(y), out=grad_w)
        grad_b[0] = err.mean()
        return 0.5 * float(err @ err) / len(y)

    print(f"TinyAdam on a least-squares fit ({X.shape[0]} samples, {X.shape[1]} features, "
          f"{steps} steps of fastlr.kernels.adam)")
    initial = loss = loss_and_grads()
    for t in range(steps):
        if t % 50 == 0:
            print(f"  step {t:4d}: loss {loss:.6g}")
        opt.step([grad_w, grad_b])
        loss = loss_and_grads()
    print(f"initial loss {initial:.6g}, final loss {loss:.6g}")
    return initial, loss


if __name__ == "__main__":
    main()
