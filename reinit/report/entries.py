"""The report as data: frozen `TensorEntry`, `Summary`, `Report`, with their JSON form (docs/reference.md)."""

from __future__ import annotations

__all__ = [
    "NOTE_CHANGED",
    "NOTE_NEW",
    "NOTE_SHAPE",
    "Report",
    "ReportStep",
    "Summary",
    "TensorEntry",
    "kept_entry",
    "step_lines",
    "var_gain",
]

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from reinit.errors import NoSuchEntryError, UsageError
from reinit.fans import compute_fans
from reinit.planning.actions import action_changes
from reinit.report.jsonio import JSON, json_safe, number
from reinit.report.stats import Stats
from reinit.text import bounded


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's row of the report: what was done to it, its statistics after (and before,
    where known), what its scheme expected, and the flags it earned."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    action: str  # kept | reinit | transplant | skipped
    after: Stats
    rule: str | None = None
    scheme: str | None = None
    source: str | None = None  # "from" in JSON
    reason: str | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    before: Stats | None = None
    expected_std: float | None = None
    var_gain: float | None = None
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kurtosis: float = 3.0  # of the scheme's distribution; for std_off's tolerance only
    sha256: str | None = None  # of the bytes as written (--checksums)
    # the model's own scale for this tensor and where it came from (report/reference.py)
    reference_std: float | None = None
    reference: str | None = None
    # a transplant's transform as written (`chunk=0/3, dim=0`, `rotary=…`), None for a copy
    transform: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def changes(self) -> bool:
        """Re-initialized or transplanted (as `PlanEntry.changes`)."""
        return action_changes(self.action)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def to_dict(self) -> dict[str, JSON]:
        """The tensor's object in the JSON report (docs/reference.md); `sha256` only with --checksums,
        `transform` only for a transplant that ran one."""
        d: dict[str, JSON] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "action": self.action,
            "rule": self.rule,
            "scheme": self.scheme,
            "from": self.source,
            "reason": self.reason,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict(),
            "expected_std": self.expected_std,
            "reference_std": self.reference_std,
            "reference": self.reference,
            "var_gain": self.var_gain,
            "flags": list(self.flags),
            "notes": list(self.notes),
        }
        if self.transform is not None:  # added for transforms; absent for a plain copy
            d["transform"] = self.transform
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TensorEntry:  # Any: json.loads' output, as read
        return TensorEntry(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            action=d["action"],
            after=_counted(Stats.from_dict(d["after"]), d["shape"]),
            rule=d.get("rule"),
            scheme=d.get("scheme"),
            source=d.get("from"),
            reason=d.get("reason"),
            fan_in=d.get("fan_in"),
            fan_out=d.get("fan_out"),
            before=Stats.from_dict(d["before"]) if d.get("before") else None,
            expected_std=number(d.get("expected_std")),
            reference_std=number(d.get("reference_std")),
            reference=d.get("reference"),
            var_gain=number(d.get("var_gain")),
            flags=tuple(d.get("flags", ())),
            notes=tuple(d.get("notes", ())),
            sha256=d.get("sha256"),
            transform=d.get("transform"),
        )


def _counted(s: Stats, shape: Sequence[int]) -> Stats:
    """Stats read back from JSON, with the finite count (not in the schema) restored, so
    std_off's sampling tolerance is the same as when the report was made."""
    return replace(s, count=max(math.prod(shape) - s.nonfinite, 0) if s.std is not None else 0)


@dataclass(frozen=True)
class Summary:
    """The counts of a report, by action, and what the run cost."""

    tensors: int
    reinit: int
    transplant: int
    kept: int
    skipped: int
    flagged: int
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict[str, JSON]:
        return asdict(self)


@dataclass(frozen=True)
class ReportStep:
    """One step of an output made in several (a recipe's steps, or applies chained through
    files), as its record holds it: the seed, the rules and the surgery as written (`--drop
    X`, …, in the order surgery runs; None: too large to have been recorded)."""

    seed: int
    rules: tuple[str, ...]
    surgery: tuple[str, ...] | None = ()

    def to_dict(self) -> dict[str, JSON]:
        surgery: JSON = None if self.surgery is None else list[JSON](self.surgery)
        return {"seed": self.seed, "rules": list[JSON](self.rules), "surgery": surgery}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ReportStep:
        surgery = d.get("surgery", ())
        return ReportStep(
            int(d["seed"]),
            tuple(d.get("rules", ())),
            None if surgery is None else tuple(surgery),
        )

    def text(self) -> str:
        """`seed 0, rules a=kaiming, b=zeros; --resize c=[56,*]`."""
        rules = ", ".join(self.rules) or "(none)"
        surgery = (
            "; surgery not recorded"
            if self.surgery is None
            else "".join(f"; {t}" for t in self.surgery)
        )
        return f"seed {self.seed}, rules {rules}{surgery}"


def step_lines(steps: tuple[ReportStep, ...] | None) -> list[str]:
    """`step 1 of 3: seed 0, rules …`, one line per step of an output made in several; for
    one whose earlier steps are not known, a line that says so; none for one step. Each line
    is `bounded`: a record's rules are the file's text (a hostile one printed 33 MB on the
    terminal); the JSON's `steps` hold them whole."""
    if steps is None:
        return ["made in several steps; the steps before the last are not recorded"]
    if not steps:
        return []
    return [bounded(f"step {i} of {len(steps)}: {st.text()}") for i, st in enumerate(steps, 1)]


_ROWS = "\x00reinit-tensor-rows\x00"  # to_json's placeholder for the tensor rows


@dataclass(frozen=True)
class Report:
    """What a run did to every tensor, in plan order: the value `apply` and `reinit report`
    return, and the source of every rendering (terminal, JSON, CSV, Markdown, plot)."""

    reinit_version: str
    source: str
    output: str | None
    seed: int
    rules: tuple[str, ...]
    tensors: tuple[TensorEntry, ...]
    summary: Summary
    warnings: tuple[str, ...] = field(default=())
    dropped: tuple[str, ...] = field(default=())  # names removed by --drop
    notes: tuple[str, ...] = field(default=())  # config.json fields changed, files not copied
    # every step of an output made in several (its record's, oldest first); () for one step
    # (then the JSON has no "steps"), None when the steps before the last are not recorded
    steps: tuple[ReportStep, ...] | None = field(default=())

    def to_dict(self) -> dict[str, JSON]:
        """The JSON report (docs/reference.md) as Python values (non-finite numbers as floats)."""
        return self._fields([t.to_dict() for t in self.tensors])

    def _fields(self, tensors: JSON) -> dict[str, JSON]:
        return {
            "reinit_version": self.reinit_version,
            "source": self.source,
            "output": self.output,
            "seed": self.seed,
            "rules": list(self.rules),
            "tensors": tensors,
            "summary": self.summary.to_dict(),
            "dropped": list(self.dropped),
            **self._steps_field(),
        }

    def _steps_field(self) -> dict[str, JSON]:
        if self.steps == ():
            return {}  # one step: its seed and rules above, the JSON as it always was
        return {"steps": None if self.steps is None else [st.to_dict() for st in self.steps]}

    def to_json(self, indent: int | None = 2, end: str = "") -> str:
        """The report as JSON (then `end`): indented, with one line per tensor.

        Why one line per tensor: json's indenting encoder is pure Python, and a fully indented
        tensor list cost ~0.4 ms and ~500 bytes per tensor (a third of `apply`'s time on a file
        of 100k small tensors); each row is encoded by the C encoder instead. Rows are encoded
        one at a time and joined once, so no row's dict outlives its line and the text is
        built once, not copied (a 100k-tensor report: about 55 MB of text)."""
        if indent is None:  # non-finite numbers as strings: strict JSON
            return json.dumps(json_safe(self.to_dict()), allow_nan=False) + end
        return "".join([*self._json_pieces(indent), end])

    def _json_pieces(self, indent: int) -> Iterator[str]:
        # a placeholder no real value encodes to, kept in key order
        text = json.dumps(json_safe(self._fields(_ROWS)), indent=indent, allow_nan=False)
        head, _, tail = text.partition(json.dumps(_ROWS))
        yield head
        if not self.tensors:
            yield "[]"
        encode = json.JSONEncoder(allow_nan=False).encode
        pad = " " * indent
        for i, t in enumerate(self.tensors):
            yield ("[\n" if i == 0 else ",\n") + pad * 2 + encode(json_safe(t.to_dict()))
        if self.tensors:
            yield f"\n{pad}]"
        yield tail

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Report:  # Any: json.loads' output, as read
        """The report a JSON report holds (`json.loads` of `to_json()` or a report file); a
        value that is not one is a `UsageError` naming what is missing or wrong."""
        try:
            return Report._of(d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise UsageError(f"not a reinit JSON report: {what:.200}") from None

    @staticmethod
    def _of(d: Mapping[str, Any]) -> Report:
        return Report(
            reinit_version=d["reinit_version"],
            source=d["source"],
            output=d.get("output"),
            seed=int(d["seed"]),
            rules=tuple(d.get("rules", ())),
            tensors=tuple(TensorEntry.from_dict(t) for t in d["tensors"]),
            summary=Summary(**d["summary"]),
            dropped=tuple(d.get("dropped", ())),
            steps=Report._steps_of(d),
        )

    @staticmethod
    def _steps_of(d: Mapping[str, Any]) -> tuple[ReportStep, ...] | None:
        if "steps" not in d:
            return ()
        steps = d["steps"]
        return None if steps is None else tuple(ReportStep.from_dict(st) for st in steps)

    def entry(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise NoSuchEntryError(
            f"the report of {self.source} has no tensor {name!r} ({len(self.tensors)} listed)"
        )

    @property
    def flagged(self) -> tuple[TensorEntry, ...]:
        return tuple(t for t in self.tensors if t.flags)


def var_gain(fan_in: int | None, std: float | None) -> float | None:
    """fan_in·std²: the factor by which a layer scales the variance of its input."""
    if fan_in is None or std is None:
        return None
    return fan_in * std * std


def kept_entry(
    name: str, shape: tuple[int, ...], dtype: str, is_float: bool, after: Stats
) -> TensorEntry:
    """The entry of a tensor no rule touched, as `run.stream` makes it for one (torch's fans
    from the shape, `var_gain` for floats): what `reinit report` of a safetensors file builds
    without torch (tests/test_report_no_torch.py holds the two equal)."""
    fans = compute_fans(shape)
    fan_in, fan_out = fans if fans else (None, None)
    return TensorEntry(
        name=name,
        shape=shape,
        dtype=dtype,
        action="kept",
        after=after,
        fan_in=fan_in,
        fan_out=fan_out,
        var_gain=var_gain(fan_in, after.std) if is_float else None,
    )


NOTE_CHANGED = "changed vs baseline"  # `report --against`: the bytes differ from the baseline's


NOTE_NEW = "not in baseline"

NOTE_SHAPE = "baseline shape "  # `report --against`, then the baseline's shape: [10, 4]
