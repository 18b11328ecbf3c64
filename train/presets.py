"""The paper's per-benchmark settings (Zuo et al. 2024, §4.1; METHOD.md "Adapters" and
"Synthetic anomalies"), so a user reproducing a column of the results table names the
benchmark instead of remembering the flags.

    mvtec: beta1 = 0.1, beta2 = 0.9, random-perturbation (Gaussian) synthetic anomalies
    visa:  beta1 = 1,   beta2 = 1,   NSA (Poisson-blended) synthetic anomalies

An option given explicitly on the command line wins over the preset; without a preset the
defaults are the MVTec AD settings. What is recorded (`TrainConfig.to_dict`: every checkpoint,
report and model file) is the preset the settings were taken from, plus `preset_overrides`,
the settings whose value differs from that preset's. Without `--preset` the preset recorded is
"mvtec": the defaults *are* its values (HeadConfig and SynthConfig default to them), so
recording none would tell a reader reproducing a column that the paper's settings were not
used when they were; an override (say `--synth nsa`) shows up as such instead of being hidden
behind a preset name.
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


def overrides(preset: str | None, actual: dict[str, float | str]) -> dict[str, float | str]:
    """The settings in `actual` whose value differs from the preset's ({} without a preset)."""
    if preset is None:
        return {}
    base = PRESETS[preset]
    return {k: v for k, v in actual.items() if k in base and v != base[k]}
