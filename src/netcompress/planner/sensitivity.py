"""How much the whole model's output moves per unit of one layer's output error, measured on held-out data.

A layer's sensitivity ``s_l`` is the whole model's relative output error ``E`` divided by the
layer's own relative output error ``e`` when only that layer is disturbed: ``E ≈ s_l·e``. Two
measurements, both end to end on held-out target samples (the original network's outputs are
the reference):

* :func:`noise_sensitivity`, before anything is chosen: the layer's output gets Gaussian noise of
  relative size ``ε`` (``‖noise‖ = ε‖y‖`` per batch), a probe of the same size for every layer;
* :func:`replacement_sensitivity`, once a plan is chosen: the layer's chosen replacement is
  swapped in alone, so the error is the replacement's own (low-rank errors lie in the directions
  the data uses least, and a network forgives them more than isotropic noise).

With independent errors the squared whole-model errors add, ``E² ≈ Σ_l s_l² e_l²``: the planner's
prediction, checked against the plan applied whole (the Report gives both).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from netcompress._core.layers import progress_disabled, replace_module
from netcompress.apply import behind_padding
from netcompress.stats.fidelity import References, measure

__all__ = ["NOISE", "noise_sensitivity", "replacement_sensitivity"]

NOISE = 0.05  # ε: small enough to stay in the linear regime, large enough to rise above float rounding


def _noise_hook(relative: float, generator: torch.Generator):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return output
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)
        return output + noise * (relative * output.norm() / noise.norm().clamp_min(1e-30))
    return hook


@torch.no_grad()
def noise_sensitivity(model: nn.Module, layers: Mapping[str, nn.Module], references: References,
                      relative: float = NOISE, seed: int = 0, progress: bool | None = False) -> dict[str, float]:
    """Each layer's ``s_l = E / ε`` with noise of relative size ``ε`` added to its output alone."""
    from tqdm.auto import tqdm

    found = {}
    for name, layer in tqdm(layers.items(), desc="sensitivity", unit="layer", disable=progress_disabled(progress)):
        handle = layer.register_forward_hook(_noise_hook(relative, torch.Generator().manual_seed(seed)))
        try:
            found[name] = measure(model, references).relative_error / relative
        finally:
            handle.remove()
    return found


@torch.no_grad()
def replacement_sensitivity(model: nn.Module, replacements: Mapping[str, tuple[nn.Module, float]],
                            references: References, progress: bool | None = False) -> dict[str, float]:
    """Each layer's ``s_l = E / e``: its replacement (with its own error ``e``) swapped in alone, then put back."""
    from tqdm.auto import tqdm

    modules = dict(model.named_modules())
    found = {}
    for name, (new, error) in tqdm(replacements.items(), desc="check", unit="layer", disable=progress_disabled(progress)):
        if error <= 0:
            continue
        old = modules[name]
        replace_module(model, name, behind_padding(old, new))
        try:
            found[name] = measure(model, references).relative_error / error
        finally:
            replace_module(model, name, old)
    return found
