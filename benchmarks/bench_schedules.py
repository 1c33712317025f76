"""Schedule evaluation cost: nanoseconds per evaluation in a compiled loop.

``fastlr._schedules._time_evaluations`` evaluates a schedule at n consecutive steps in a C
loop (no Python per evaluation), which is what an optimizer step pays per group and
hyperparameter. Target: <= 50 ns per evaluation for every built-in.
"""

from fastlr import schedules as S
from fastlr._schedules import _time_evaluations

SCHEDULES = {
    "constant": lambda: S.constant(0.1),
    "step_decay": lambda: S.step_decay(0.1, 30),
    "multistep": lambda: S.multistep(0.1, [30, 60, 90, 120]),
    "exponential": lambda: S.exponential(0.1, 0.999),
    "exponential_decay": lambda: S.exponential_decay(0.1, 100, 0.5, staircase=True,
                                                     end=1e-4),
    "inverse_time": lambda: S.inverse_time(0.1, 100, 0.5),
    "polynomial": lambda: S.polynomial(0.1, 100_000, power=2.0),
    "linear": lambda: S.linear(0.1, total_steps=100_000),
    "cosine": lambda: S.cosine(0.1, 100_000),
    "cosine_restarts": lambda: S.cosine_restarts(0.1, 100, period_mult=2, decay=0.9),
    "cyclic": lambda: S.cyclic(0.01, 0.1, step_size_up=500, mode="exp_range", gamma=0.9999),
    "one_cycle": lambda: S.one_cycle(0.1, 100_000, three_phase=True),
    "piecewise_constant": lambda: S.piecewise_constant([1000, 2000, 3000], [1, 0.5, 0.25, 0.1]),
    "piecewise_linear": lambda: S.piecewise_linear([0, 1000, 100_000], [0.0, 1.0, 0.01]),
    "warmup_cosine": lambda: S.warmup_cosine(0.1, warmup_steps=500, total_steps=100_000),
    "warmup(cosine)": lambda: S.warmup(S.cosine(0.1, 100_000), 500),
    "nested join * c": lambda: S.join(
        [S.linear(0.1, start_factor=0.01, total_steps=1000),
         S.join([S.cosine(0.1, 50_000), S.constant(0.001)], [50_000]),
         S.exponential(0.001, 0.9999)], [1000, 60_000]) * 0.5,
    "wsd(1-sqrt)": lambda: S.wsd(0.1, 100_000, warmup_steps=500, decay_fraction=0.2,
                                 decay="1-sqrt"),
    "inverse_sqrt": lambda: S.inverse_sqrt(0.1, 4000),
    "noam": lambda: S.noam(512, 4000),
    "rex": lambda: S.rex(0.1, 100_000),
    "sgdr": lambda: S.sgdr([{"peak": 0.1, "warmup_steps": 100, "total_steps": 50_000},
                            {"peak": 0.05, "warmup_steps": 100, "total_steps": 50_000}]),
    "maximum(cosine * c + c, c)": lambda: S.maximum(S.cosine(0.1, 100_000) * 0.5 + 0.01,
                                                    0.02),
    "s1 * s2 - s3 / c": lambda: S.cosine(0.1, 100_000) * S.exponential(1.0, 0.9999)
    - S.linear(0.01, total_steps=1000) / 4.0,
    # consecutive steps continue the cached product: one factor evaluation each
    "multiplicative(schedule)": lambda: S.multiplicative(
        0.1, S.piecewise_constant([1000, 50_000], [0.9999, 1.0, 0.99999])),
}

N = 200_000


class TrackScheduleEvaluation:
    """Nanoseconds per evaluation of a schedule in a compiled loop over N steps (best of 5)."""

    params = [list(SCHEDULES)]
    param_names = ["schedule"]
    unit = "ns"
    timeout = 60

    def setup(self, name):
        self.schedule = SCHEDULES[name]()

    def track_ns_per_evaluation(self, name):
        best = min(_time_evaluations(self.schedule, N, 0)[0] for _ in range(5))
        return round(best / N * 1e9, 2)


class TimeScheduleValues:
    """``s.values(ts)`` over 100k steps: one C call for a whole curve (plots, tests)."""

    params = [["cosine", "one_cycle", "nested join * c"]]
    param_names = ["schedule"]

    def setup(self, name):
        import numpy as np

        self.schedule = SCHEDULES[name]()
        self.ts = np.arange(100_000)

    def time_values(self, name):
        self.schedule.values(self.ts)
