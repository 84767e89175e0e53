"""The shapes of what a run records about itself (config.json, a checkpoint's fields), checked once where each is
read: a crafted or damaged record is then one line naming its file and the field, never a traceback far away in
the command that used it. A field a record lacks is left to its readers' defaults (older runs recorded fewer);
one this scs-probe does not know is let through."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .choices import SEED_MAX, WORKERS_MAX

Check = Callable[[object, str], None]  # check(value, field) raises _Wrong


class _Wrong(Exception):
    def __init__(self, field: str, expected: str, value):
        super().__init__(field)
        self.field, self.expected, self.value = field, expected, value


INT_MAX = 2**63 - 1  # what a record's counts, epochs and seeds can be; a larger int is crafted (and one of 5,000
# digits cannot even be printed)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -INT_MAX <= v <= INT_MAX


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _shown(value) -> str:
    """A wrong value (or a key) as the message shows it: scalars by a short repr, containers by their kind (a repr
    of a crafted list could be any size; of an int of 5,000 digits, a ValueError)."""
    if isinstance(value, str | int | float | bool) or value is None:
        try:
            text = repr(value)
        except ValueError:
            return "a huge integer"
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def printable(value, limit: int = 200) -> str:
    """A value read from a file, as a terminal may show it: control characters (escape sequences, carriage
    returns) written as Python escapes, the text cut at `limit` characters; a list's items (a data set's classes)
    by their short reprs as far as the limit reaches, other containers by their kind."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 10 ** 40):
        text = str(value)
    elif isinstance(value, list | tuple):
        items, size = [], 0
        for item in value:  # no repr of a crafted list of any size: as many items as the limit shows
            if size > limit:
                items.append("...")
                break
            items.append(_shown(item))
            size += len(items[-1]) + 2
        text = "[" + ", ".join(items) + "]"
    else:
        text = _shown(value)
    return escape_controls(text[:limit]) + ("..." if len(text) > limit else "")


def escape_controls(text: str, keep_lines: bool = False) -> str:
    """`text` with every character a terminal would act on (escape sequences, carriage returns, bells) written as
    its Python escape (with `keep_lines`, newlines kept): names and values read from files reach error lines and
    logs this way, never the terminal."""
    if keep_lines:
        return "\n".join(escape_controls(line) for line in str(text).split("\n"))
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _where(field: str, key) -> str:
    name = key if isinstance(key, str) and len(key) <= 40 else _shown(key)
    return f"{field}.{name}" if field else name


def that(ok: Callable[[object], bool], expected: str) -> Check:
    def check(value, field):
        if not ok(value):
            raise _Wrong(field, expected, value)
    return check


def integer(low: int = 0, high: int = INT_MAX) -> Check:
    return that(lambda v: _is_int(v) and low <= v <= high,
                f"an integer >= {low}" if high == INT_MAX else f"an integer from {low} to {high}")


def positive() -> Check:
    return that(lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a finite number > 0")


def _numeric(v) -> bool:
    """A number, or text of one (history rows keep the learning rate as text)."""
    if _is_number(v):
        return True
    if not isinstance(v, str):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


TEXT = that(lambda v: isinstance(v, str), "text")
NAME = that(lambda v: isinstance(v, str) and v.strip() != "", "non-empty text")
FLAG = that(lambda v: isinstance(v, bool), "true or false")
NUMERIC = that(_numeric, "a number")
NUMERIC_OR_EMPTY = that(lambda v: v == "" or _numeric(v), "a number or empty")
SCALAR = that(lambda v: v is None or isinstance(v, str | float | bool) or _is_int(v),
              "text, a number, true/false or null")
TENSOR = that(lambda v: isinstance(v, torch.Tensor), "a tensor")


def optional(check: Check) -> Check:
    def inner(value, field):
        if value is not None:
            check(value, field)
    return inner


def either(*checks: Check, expected: str) -> Check:
    def inner(value, field):
        for check in checks:
            try:
                return check(value, field)
            except _Wrong:
                pass
        raise _Wrong(field, expected, value)
    return inner


def mapping(fields: dict[str, Check] | None = None, values: Check | None = None, required=()) -> Check:
    """An object whose known `fields` (where present; `required` ones always) and, with `values`, every value
    pass their checks."""
    def check(value, field):
        if not isinstance(value, dict):
            raise _Wrong(field, "an object", value)
        for key in required:
            if key not in value:
                raise _Wrong(_where(field, key), "present", "nothing")
        for key, sub in (fields or {}).items():
            if key in value:
                sub(value[key], _where(field, key))
        if values is not None:
            for key, sub_value in value.items():
                values(sub_value, _where(field, key))
    return check


def sequence(item: Check) -> Check:
    def check(value, field):
        if not isinstance(value, list | tuple):
            raise _Wrong(field, "a list", value)
        for i, v in enumerate(value):
            item(v, f"{field}[{i}]")
    return check


VARIANT_FIELDS = {"arch": NAME, "layer": NAME, "activation": NAME, "pool": NAME, "norm": NAME,
                  "image_size": integer(1), "fixed_p": optional(positive())}
VARIANT = mapping(VARIANT_FIELDS)
OPTIONS = mapping({
    **VARIANT_FIELDS, "epochs": optional(integer(1)), "batch_size": optional(integer(1)),
    "max_lr": optional(positive()), "seed": optional(integer(0, SEED_MAX)), "device": NAME, "dataset": NAME,
    "data_dir": optional(TEXT), "out": optional(TEXT), "limit_train": optional(integer(1)),
    "limit_test": optional(integer(1)), "val_seed": integer(0, SEED_MAX),
    "val_split": optional(either(integer(1), that(lambda v: v == "auto", "auto"), expected="an integer >= 1 or auto")),
    "init_from": optional(TEXT), "workers": integer(0, WORKERS_MAX),
    **dict.fromkeys(("norms_every_batch", "amp", "tensorboard", "compile", "channels_last"), FLAG)})
DATA = mapping({
    "dataset": TEXT, "name": TEXT, "root": TEXT, "official_files": FLAG, "n_train": integer(0), "n_test": integer(0),
    "num_classes": integer(1), "classes": sequence(SCALAR), "channels": integer(1), "test_split": integer(0),
    "fingerprint": TEXT, "val_split": optional(mapping({"n": integer(1), "seed": integer(0), "indices_sha256": TEXT}))})
DIVERGED = mapping({"epoch": integer(0), "reason": TEXT})
# the columns every reader of a history row uses (inspect, the best epoch, the report's tables)
HISTORY_USED = ("epoch", "train_acc", "test_acc", "train_seconds", "eval_seconds")
HISTORY_ROW = mapping({**dict.fromkeys(HISTORY_USED, NUMERIC), "epoch": integer(0)}, values=NUMERIC_OR_EMPTY,
                      required=HISTORY_USED)
COMMON = {"variant": VARIANT, "options": OPTIONS, "status": NAME, "data": DATA, "params": integer(0),
          "versions": mapping(values=SCALAR), "environment": optional(mapping(values=SCALAR)), "diverged": DIVERGED}

# what tune stores in an Optuna study (study.db, or a server others write too)
STUDY = mapping({"data_fingerprint": TEXT, "settings": mapping(values=SCALAR)})
CONFIG = mapping({**COMMON, "variant_name": NAME, "epochs_done": integer(0), "updated": TEXT, "device": TEXT,
                  "host": TEXT, "pid": integer(0), "node": optional(TEXT), "amp": optional(TEXT)})
CHECKPOINT = mapping({**COMMON, "format_version": integer(0), "epoch": integer(0), "history": sequence(HISTORY_ROW),
                      "model": mapping(values=TENSOR), "optimizer": mapping(), "scheduler": mapping()})


MAX_DEPTH = 32  # how deep a record's values may nest (ours: 4); a field nested thousands deep is crafted, and
# printing or comparing it recurses until Python gives up


def _nested(record, limit: int = MAX_DEPTH) -> None:
    """Every value of `record` within `limit` levels of containers (walked without recursion), else _Wrong
    naming the outermost fields above where it goes too deep."""
    stack = [(record, "", 0)]
    while stack:
        value, field, depth = stack.pop()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list | tuple | set | frozenset):
            items = enumerate(value)
        else:
            continue
        if depth >= limit:
            raise _Wrong(field, "deep", value)
        for key, sub in items:
            if isinstance(sub, dict | list | tuple | set | frozenset):
                where = field if depth >= 2 else _where(field, key) if isinstance(value, dict) else f"{field}[{key}]"
                stack.append((sub, where, depth + 1))


def check(record, schema: Check, source, error: type[Exception]) -> None:
    """`record` (read from `source`) fits `schema`, else `error` naming the file and the first wrong field."""
    try:
        _nested(record)
        schema(record, "")
    except _Wrong as e:
        what = (f"{e.field} is missing" if e.expected == "present" else
                f"{e.field or 'the whole file'} is nested deeper than {MAX_DEPTH} levels" if e.expected == "deep" else
                f"{e.field or 'the whole file'} must be {e.expected}, got {_shown(e.value)}")
        raise error(f"{source}: malformed ({what})") from None
