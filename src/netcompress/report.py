"""The per-layer record of a compression: a table to print and JSON to keep."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from netcompress.registry import settings_from_json

__all__ = ["DEFAULT_MIN_AGREEMENT", "DEFAULT_MIN_COSINE", "Fidelity", "LayerRow", "Report"]


STATUSES = ("compressed", "left dense", "not selected")


FORMAT = "netcompress.report"
VERSION = 1  # of the JSON written by Report.to_json
OPTIONS = ("holdout", "positions", "sequential", "blocks")  # compress's keywords a replay passes again

# Below these, the CLI refuses to write a model (``--allow-degraded`` writes it anyway). A model that keeps
# 90 % of its top-1 answers has lost a lot already; 6–13 % (what the broken models of the issue kept) is noise.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MIN_COSINE = 0.9


@dataclass
class Fidelity:
    """The compressed network against the original on ``samples`` held-out target samples."""

    samples: int
    relative_error: float
    cosine: float
    min_cosine: float
    agreement: float | None = None  # top-1 agreement, for classifier outputs
    accuracy_before: float | None = None  # with labels
    accuracy_after: float | None = None
    where: str = "held-out"  # "held-out" (the share of data compress kept apart) or "eval" (labelled data)

    @property
    def measure(self) -> tuple[str, float]:
        """The one figure a threshold reads: top-1 agreement for a classifier, else the mean output cosine."""
        return ("agreement", self.agreement) if self.agreement is not None else ("cosine", self.cosine)

    def below(self, min_agreement: float = DEFAULT_MIN_AGREEMENT, min_cosine: float = DEFAULT_MIN_COSINE
              ) -> str | None:
        """A sentence saying why the model is degraded, or ``None`` if it meets the thresholds."""
        name, value = self.measure
        floor = min_agreement if name == "agreement" else min_cosine
        if value < floor:
            return (f"the compressed model keeps {name} {value:.4f} with the original on {self.samples} {self.where} "
                    f"target samples, below {floor:g}")
        return None

    def __str__(self) -> str:
        parts = [f"whole model on {self.samples} {self.where} samples:"]
        if self.agreement is not None:
            parts.append(f"top-1 agreement {self.agreement:.4f},")
        parts.append(f"output cosine {self.cosine:.4f} (min {self.min_cosine:.4f}),")
        parts.append(f"relative error {self.relative_error:.4f}")
        if self.accuracy_after is not None:
            parts.append(f"; accuracy {self.accuracy_before:.4f} → {self.accuracy_after:.4f}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Fidelity:
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) - names or not {"samples", "relative_error", "cosine",
                                                                        "min_cosine"} <= set(data):
            raise ValueError("the report's 'fidelity' is malformed; write it again with Report.to_json")
        return cls(**dict(data))


@dataclass
class LayerRow:
    """One layer of the model: compressed, left dense (``note`` says why) or not selected.

    ``relative_error`` is ``||Y − Ŷ||/||Y||`` on the calibration samples the method saw;
    ``heldout_error`` the same on held-out target samples it did not see (``None`` without them).
    """

    name: str
    kind: str
    shape: list[int]
    method: str
    rank: int | None
    params_before: int
    params_after: int
    relative_error: float | None
    note: str = ""
    setting: str = ""
    bits: float | None = None  # bits per stored weight, for quantized layers
    status: str = "compressed"
    heldout_error: float | None = None
    saved_bytes: int | None = None  # what netcompress.save writes for the layer's tensors (codes packed)
    settings: dict | None = None  # the settings (Settings.to_json) of the claim that considered it: replayable
    step: int | None = None  # in a recipe's Report, the step (1, 2, ...) that wrote the row

    @property
    def replaced(self) -> bool:
        """Whether the layer was swapped for a compressed one."""
        return self.status == "compressed"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What each field of a LayerRow may hold in JSON, by its annotation.
_KINDS = {"str": (lambda v: isinstance(v, str), "text"),
          "int": (_whole, "a whole number"),
          "int | None": (lambda v: v is None or _whole(v), "a whole number or null"),
          "float | None": (lambda v: v is None or _number(v), "a finite number or null"),
          "list[int]": (lambda v: isinstance(v, list) and len(v) <= 8 and all(_whole(d) for d in v),
                        "a list of at most 8 whole numbers"),
          "dict | None": (lambda v: v is None or isinstance(v, dict) and isinstance(v.get("method"), str),
                          "null or an object naming its 'method'")}


def _check_row(index: int, row: object) -> None:
    """Raise ``ValueError`` naming the row and the field unless ``row`` holds a :class:`LayerRow`'s JSON types."""
    if not isinstance(row, dict):
        raise ValueError(f"the report's row {index} must be an object of fields; write it again with Report.to_json")
    for spec in fields(LayerRow):
        if spec.name not in row:
            continue
        check, kind = _KINDS[spec.type]
        if not check(row[spec.name]):
            raise ValueError(f"the report's row {index} ({row.get('name')!r}): field {spec.name!r} must be {kind}, "
                             f"got {row[spec.name]!r:.60}; write it again with Report.to_json")


@dataclass
class Report:
    """The rows of one ``compress`` call; ``str(report)`` is a table, :meth:`to_json` its record."""

    rows: list[LayerRow] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # compress's options that shape the result (holdout, sequential, ...)
    fidelity: Fidelity | None = None  # the whole model against the original on held-out target data
    batchnorm: int | None = None  # how many BatchNorm layers had their statistics re-estimated
    target: dict | None = None  # with compress(target=...): what was asked, predicted and reached (planner)

    @classmethod
    def of_steps(cls, reports: Sequence[Report]) -> Report:
        """One Report of a recipe's steps: every row labelled with its step (totals count each layer once)."""
        rows = [replace(row, step=index) for index, report in enumerate(reports, 1) for row in report.rows]
        last = reports[-1] if reports else cls()
        return cls(rows, dict(last.options), last.fidelity, last.batchnorm, last.target)

    def _first(self) -> list[LayerRow]:
        """Each layer's first row (in a recipe's Report, the layer as the first step found it)."""
        seen: dict[str, LayerRow] = {}
        for row in self.rows:
            seen.setdefault(row.name, row)
        return list(seen.values())

    def final(self) -> list[LayerRow]:
        """Each layer's last row: the layer as the model now holds it."""
        return list({row.name: row for row in self.rows}.values())

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self._first())

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.final())

    @property
    def saved_bytes(self) -> int | None:
        """The bytes ``save`` writes for the reported layers' tensors (``None`` where a row lacks them)."""
        sizes = [r.saved_bytes for r in self.final()]
        return None if any(b is None for b in sizes) else sum(sizes)

    def __getitem__(self, name: str) -> LayerRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in this report")

    def __str__(self) -> str:
        steps = any(r.step is not None for r in self.rows)
        header = [*(["step"] if steps else []), "layer", "type", "shape", "status", "method", "setting",
                  "params before", "params after", "kept %", "bits", "saved bytes", "rel. error", "held-out", "note"]
        lines = [header]
        for r in self.rows:
            kept = 100 * r.params_after / r.params_before if r.params_before else 100.0
            setting = r.setting or ("-" if r.rank is None else f"rank {r.rank}")
            lines.append([
                *([str(r.step or "")] if steps else []),
                r.name, r.kind, "×".join(map(str, r.shape)), r.status,
                r.method if r.status != "not selected" else "", setting,
                f"{r.params_before:,}", f"{r.params_after:,}", f"{kept:.2f}",
                "-" if r.bits is None else f"{r.bits:g}",
                "-" if r.saved_bytes is None else f"{r.saved_bytes:,}",
                "-" if r.relative_error is None else f"{r.relative_error:.4f}",
                "-" if r.heldout_error is None else f"{r.heldout_error:.4f}", r.note,
            ])
        total = 100 * self.params_after / self.params_before if self.params_before else 100.0
        saved = self.saved_bytes
        lines.append([*([""] if steps else []), "total", "", "", "", "", "", f"{self.params_before:,}",
                      f"{self.params_after:,}", f"{total:.2f}", "", "-" if saved is None else f"{saved:,}", "", "", ""])
        return "\n".join([*self.headline(), text_table(lines[0], lines[1:])])

    def headline(self) -> list[str]:
        """The lines printed above the table: the whole model's fidelity first, then the target and BatchNorm."""
        lines = [str(self.fidelity) if self.fidelity is not None else
                 "whole model: not measured (no target data was given)"]
        if self.target is not None:
            lines.append(target_line(self.target))
        if self.batchnorm:
            lines.append(f"BatchNorm statistics re-estimated on the target sample in {self.batchnorm} layer(s)")
        return lines

    def recipe(self) -> dict[str, object]:
        """Layer name → the settings object that compressed it (or considered it and left it dense by its own
        sizing): with :attr:`options`, what :func:`netcompress.replay` gives ``compress`` to redo this Report."""
        if any(row.step is not None for row in self.rows):
            raise ValueError("this is a recipe's Report (rows of several steps); run the recipe again with "
                             "netcompress.run_pipeline")
        plan: dict[str, object] = {}
        for row in self.rows:
            if row.settings is not None:
                plan[row.name] = settings_from_json(row.settings, f"the report's row {row.name!r}")
        if not plan:
            raise ValueError("this report holds no settings to replay (it was written before netcompress kept them, "
                             "or nothing was compressed)")
        return plan

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "options": dict(self.options),
                "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
                "batchnorm": self.batchnorm, "target": self.target, "layers": [asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"this JSON is not a netcompress report (its 'format' is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"the report has version {data.get('version')!r}; this netcompress reads version "
                             f"{VERSION}, so write it again with Report.to_json")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise ValueError("the report's 'layers' must be a list of rows; write it again with Report.to_json")
        names = {f.name for f in fields(LayerRow)}
        try:
            for index, row in enumerate(layers):
                _check_row(index, row)
            rows = [LayerRow(**{k: v for k, v in row.items() if k in names}) for row in layers]
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"the report's layer rows are malformed ({error}); write it again with Report.to_json") from None
        bad = [r.name for r in rows if r.status not in STATUSES]
        if bad:
            raise ValueError(f"the report's row {bad[0]!r} has an unknown status; write it again with Report.to_json")
        options = data.get("options", {})
        if not isinstance(options, dict) or set(options) - set(OPTIONS):
            raise ValueError(f"the report's 'options' must be an object with some of {', '.join(OPTIONS)}; "
                             "write it again with Report.to_json")
        fidelity = data.get("fidelity")
        target = data.get("target")
        if target is not None and not isinstance(target, dict):
            raise ValueError("the report's 'target' must be an object; write it again with Report.to_json")
        batchnorm = data.get("batchnorm")
        if batchnorm is not None and not _whole(batchnorm):
            raise ValueError("the report's 'batchnorm' must be a whole number; write it again with Report.to_json")
        return cls(rows, options, Fidelity.from_dict(fidelity) if fidelity is not None else None, batchnorm, target)

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"the report is not valid JSON ({error})") from None
        return cls.from_dict(data)


def target_line(target: dict) -> str:
    """One line: the target asked for, what the plan was predicted to reach and what it reached."""
    asked = ", ".join(f"{k} {v:g}" for k, v in target.get("asked", {}).items())
    reached = ", ".join(f"{k} {int(v):,}" if k == "bytes" else f"{k} {v:.4g}" for k, v in target.get("reached", {}).items())
    line = f"target: {asked}; reached {reached}"
    if target.get("predicted_error") is not None:
        line += (f"; whole-model relative error predicted {target['predicted_error']:.4f}, "
                 f"measured {target.get('measured_error', float('nan')):.4f}")
    recovered = target.get("recovered")
    if recovered is not None:
        line += (f"; recovery: held-out {recovered['measure']} {recovered['before']:.4f} → {recovered['after']:.4f} "
                 f"(best epoch {recovered['best_epoch']} of {recovered['epochs']})")
    return line


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = True,
               right: bool = False) -> str:
    """Columns padded to their widest cell; a dashed rule under the header; numbers right-aligned if ``right``."""
    lines = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line):
        cells = [c.rjust(w) if right and i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(cells).rstrip()

    out = [render(line) for line in lines]
    if rule:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
