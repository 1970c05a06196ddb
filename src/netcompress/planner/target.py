"""What a user asks of a compressed model: a size, a speed or a compute budget, and how much it may lose."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["KINDS", "Target"]

KINDS = ("size", "bytes", "flops", "latency")


@dataclass(frozen=True, kw_only=True)
class Target:
    """One cost to meet, and optionally the whole-model error allowed.

    * ``size``: the share of the float32 bytes ``save`` writes for the model (0.25: a quarter);
    * ``bytes``: the bytes ``save`` writes for the model's tensors, at most;
    * ``flops``: the share of the dense model's multiply-accumulates per sample;
    * ``latency``: the share of the dense model's time per batch of ``batch`` samples, measured
      on this machine (each layer's candidates timed alone, the whole plan timed at the end);
    * ``max_error``: the largest whole-model relative output error ``‖Y − Ŷ‖/‖Y‖`` on held-out
      target samples; alone, the planner finds the cheapest plan (in bytes) within it, with a
      cost target it refuses a plan whose measured error exceeds it.
    """

    size: float | None = None
    bytes: int | None = None
    flops: float | None = None
    latency: float | None = None
    batch: int = 1
    max_error: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"a target has one cost, got {', '.join(given)}; give one of {', '.join(KINDS)}")
        if not given and self.max_error is None:
            raise ValueError("a target needs a cost (size=0.25, bytes=..., flops=0.5 or latency=0.5) or max_error")
        for key in ("size", "flops", "latency"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value <= 1):
                raise ValueError(f"target {key} must be a share in (0, 1] of the dense model's, got {value!r}")
        if self.bytes is not None and (isinstance(self.bytes, bool) or not isinstance(self.bytes, int)
                                       or self.bytes <= 0):
            raise ValueError(f"target bytes must be a positive whole number, got {self.bytes!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch <= 0:
            raise ValueError(f"target batch must be a positive whole number of samples, got {self.batch!r}")
        if self.max_error is not None and (isinstance(self.max_error, bool)
                                           or not isinstance(self.max_error, (int, float)) or not self.max_error > 0):
            raise ValueError(f"target max_error must be a positive relative error, got {self.max_error!r}")

    @property
    def kind(self) -> str:
        """The cost the target bounds ("bytes" when only ``max_error`` is given: the cheapest such plan)."""
        return next((k for k in KINDS if getattr(self, k) is not None), "bytes")

    def asked(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None and (f.name != "batch" or self.kind == "latency")}

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"size=0.25"``, ``"latency=0.5,batch=64"``, ``"size=0.125,max_error=0.1"`` (the CLI's ``--target``)."""
        values: dict[str, float | int] = {}
        names = {f.name for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise ValueError(f"--target takes KEY=VALUE pairs with keys {', '.join(sorted(names))}, got {part!r}")
            try:
                values[key] = int(value) if key in ("bytes", "batch") else float(value)
            except ValueError:
                raise ValueError(f"--target {key} must be a number, got {value!r}") from None
        return cls(**values)
