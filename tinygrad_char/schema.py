"""What a configuration field may hold, written once: `Rule` (a range of numbers or a set
of choices), the wording of a range (shared with the command line's number types), and
`check_fields`, the one check of a config dataclass against its table of rules.

GPTConfig (model.py) and TrainConfig (training/config.py) each keep a plain table
`RULES = {field name: Rule}` beside their fields; a field with no rule is checked for its
type alone (bool, a path). Every problem is a one-line ConfigError:

    config: n_layer must be a positive integer, got 0 (--n-layer)

A small table rather than pydantic: the messages above are pinned word for word by the
tests and name the command-line flag, which pydantic's would need translating back into;
the configs stay plain dataclasses (asdict, replace) and the core package needs no extra
dependency.

What this file deliberately is not: the fields themselves, or the rules between fields
(n_embd divisible by n_head, min_lr <= learning_rate), which the config classes check after.
"""

import math
import numbers
from dataclasses import dataclass, fields

from tinygrad_char.errors import UserError

MAX_SEED = 2**63 - 1  # the largest seed anywhere (flags, configs, the server): fits int64


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def describe_range(low=None, high=None, low_open=False, high_open=False):
    """'>= 1', '> 0', '<= 5' or 'in [0, 1)': the allowed values, for messages and --help."""
    def show(x):
        return "2**63 - 1" if x == MAX_SEED else f"{x:g}" if isinstance(x, float) else str(x)

    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {show(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {show(high)}"
    return "any value"


def range_error(value, low=None, high=None, low_open=False, high_open=False):
    """None when `value` (an int or float) is allowed, else what is wrong with it.
    Floats must also be finite: NaN passes every comparison test by failing it."""
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return f"must be a finite number {describe_range(low, high, low_open, high_open)}"
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        return f"must be {describe_range(low, high, low_open, high_open)}"
    return None


@dataclass(frozen=True)
class Rule:
    """What one field may hold: numbers low <= value <= high (either end open or absent;
    floats finite), or one of `choices`. `hint` joins the error and --help (e.g. what 0
    means); `words` replaces the range in the error where it does not say it all."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = None
    hint: str = ""
    words: str = ""

    def describe(self):
        return describe_range(self.low, self.high, self.low_open, self.high_open)


def _is(kind, value):
    """Whether `value` has the field type `kind`: NumPy's integers count as int, and an
    integer as a float (JSON has one number type); a bool is neither."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


def _expected(kind, rule, value):
    """What the field holds, in words: "a positive integer", "in [0, 1)", "a number > 1",
    "a finite number >= 0", "one of a, b", "true or false"."""
    if kind is bool:
        return "true or false"
    if rule is None:
        return {int: "an integer", float: "a number"}.get(kind, f"a {kind.__name__}")
    if rule.words:
        return rule.words
    if rule.choices:
        return "one of " + ", ".join(rule.choices)
    span = rule.describe()
    if kind is int:
        return "a positive integer" if (rule.low, rule.high) == (1, None) else f"an integer {span}"
    if _is(float, value) and not math.isfinite(value):
        return f"a finite number {span}"
    return span if rule.low is not None and rule.high is not None else f"a number {span}"


def field_problem(f, rule, value):
    """None when `value` suits the dataclass field `f` under `rule` (None: its type alone),
    else "must be ...". None itself is allowed only where the field's default is None."""
    if value is None and f.default is None:
        return None
    if not _is(f.type, value):
        return f"must be {_expected(f.type, rule, value)}"
    if rule is None:
        return None
    wrong = value not in rule.choices if rule.choices else \
        range_error(value, rule.low, rule.high, rule.low_open, rule.high_open)
    return f"must be {_expected(f.type, rule, value)}" if wrong else None


def flag(name):
    """The command-line flag of a field: n_kv_head -> --n-kv-head."""
    return "--" + name.replace("_", "-")


def check_fields(config, rules, flags=False):
    """Raise a one-line ConfigError for the first field of the dataclass `config` whose
    value breaks its type or its rule in `rules`, naming the field, the value and (flags
    True) its flag, with the rule's hint."""
    for f in fields(config):
        rule = rules.get(f.name)
        value = getattr(config, f.name)
        problem = field_problem(f, rule, value)
        if problem:
            notes = [flag(f.name)] if flags else []
            if rule is not None and rule.hint and not rule.words:  # words say it all
                notes.append(rule.hint)
            raise ConfigError(f"config: {f.name} {problem}, got {value!r}"
                              + (f" ({'; '.join(notes)})" if notes else ""))
