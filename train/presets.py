"""The paper's per-benchmark settings (Zuo et al. 2024, §4.1; METHOD.md "Adapters" and
"Synthetic anomalies"), so a user reproducing a column of the results table names the
benchmark instead of remembering the flags.

    mvtec: beta1 = 0.1, beta2 = 0.9, random-perturbation (Gaussian) synthetic anomalies
    visa:  beta1 = 1,   beta2 = 1,   NSA (Poisson-blended) synthetic anomalies

An option given explicitly on the command line wins over the preset; without a preset the
defaults are the MVTec AD settings. The preset's name is recorded in `TrainConfig.preset`,
so it appears in every checkpoint, report and model file.
"""

from __future__ import annotations

from fsac.errors import FsacError

PRESETS: dict[str, dict[str, float | str]] = {
    "mvtec": {"beta1": 0.1, "beta2": 0.9, "synth": "gaussian"},
    "visa": {"beta1": 1.0, "beta2": 1.0, "synth": "nsa"},
}
DEFAULT_PRESET = "mvtec"  # the defaults when neither a preset nor the option is given


def resolve(preset: str | None, **given: float | str | None) -> dict[str, float | str]:
    """Each setting: the value given (not None), else the preset's, else the MVTec default."""
    if preset is not None and preset not in PRESETS:
        raise FsacError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = PRESETS[preset or DEFAULT_PRESET]
    out = {}
    for name, value in given.items():
        if name not in base:
            raise KeyError(name)
        out[name] = base[name] if value is None else value
    return out
