from enum import IntEnum

__all__ = ["FINITE", "NONNEG", "POSITIVE", "UNIT", "CLOSED_UNIT", "OPEN_UNIT", "ABOVE_ONE",
           "RULES", "INT_MAX",
           "MAX_THREADS", "real_arg", "checked_real", "int_arg", "flag_arg", "step_arg",
           "threads_arg", "choice_arg", "ndarray_hint", "layout_hint"]

class Rule(IntEnum):
    FINITE = 0
    NONNEG = 1
    POSITIVE = 2
    UNIT = 3
    CLOSED_UNIT = 4
    OPEN_UNIT = 5
    ABOVE_ONE = 6

class Limit(IntEnum):
    MAX_THREADS = 4096

FINITE: int
NONNEG: int
POSITIVE: int
UNIT: int
CLOSED_UNIT: int
OPEN_UNIT: int
ABOVE_ONE: int
MAX_THREADS: int
INT_MAX: int
RULES: dict[str, int]

def real_arg(fn: str, name: str, value: object) -> float: ...
def checked_real(fn: str, name: str, value: object, rule: int) -> float: ...
def int_arg(fn: str, name: str, value: object, low: int, high: int) -> int: ...
def flag_arg(fn: str, name: str, value: object) -> bool: ...
def step_arg(fn: str, step: object) -> int: ...
def threads_arg(fn: str, n_threads: object) -> int: ...
def choice_arg(fn: str, name: str, value: object, choices: tuple) -> int: ...
def ndarray_hint(value: object) -> str: ...
def layout_hint(name: str, fortran: bool = ..., written: bool = ...) -> str: ...
