"""GPU architectures: parse `--gpu-arch` values and decide which fatbin entries can run on them.

A target is the compute capability of a GPU the image will run on: `sm_90` (H100), `sm_86`,
`sm_100` ... A suffix (`sm_90a`, `sm_100f`) names the same device and is accepted as written.

CUDA's rules (the CUDA C Programming Guide, "Binary Compatibility" and "Feature Set Compiler Targets"):
- SASS `sm_XY` runs on devices of the same major version X with minor >= Y (sm_80 on sm_86, never sm_90);
- arch-specific SASS `sm_XYa` runs only on compute capability X.Y;
- family-specific SASS `sm_XYf` runs on devices of the same major version with minor >= Y;
- PTX `compute_XY` is compiled by the driver for any device of compute capability >= X.Y;
  `compute_XYa` only for X.Y, `compute_XYf` for the family as above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Entry flags in a fatbin entry header (u64 at 0x28), found by compiling with nvcc 13.0.
FLAG_ARCH_SPECIFIC = 0x100000  # sm_90a, compute_100a
FLAG_FAMILY_SPECIFIC = 0x200000  # sm_100f, compute_120f
FLAG_COMPRESSED = 0x8000

_TARGET = re.compile(r"^(?:sm_|compute_)?(\d{2,3})([af]?)$")
_DOTTED = re.compile(r"^(\d{1,2})\.(\d)$")


class GpuArchError(ValueError):
    """A --gpu-arch value that is not an architecture."""


@dataclass(frozen=True, order=True)
class Target:
    """A GPU's compute capability, major.minor."""

    major: int
    minor: int

    @property
    def sm(self) -> int:
        return self.major * 10 + self.minor

    def __str__(self) -> str:
        return f"sm_{self.sm}"


def parse_target(text: str) -> Target:
    """`sm_90`, `sm_90a`, `sm_100f`, `90` or `9.0` -> Target(9, 0)."""
    value = text.strip().lower()
    m = _TARGET.match(value)
    if m:
        number = int(m.group(1))
        return Target(number // 10, number % 10)
    d = _DOTTED.match(value)
    if d:
        return Target(int(d.group(1)), int(d.group(2)))
    msg = f"'{text}' is not a GPU architecture: use sm_<major><minor>, e.g. sm_80, sm_86, sm_90, sm_100, sm_120"
    raise GpuArchError(msg)


def parse_targets(values: list[str] | tuple[str, ...]) -> tuple[Target, ...]:
    """Targets from repeated and comma-separated values, sorted, without duplicates."""
    out = {parse_target(part) for value in values for part in value.split(",") if part.strip()}
    return tuple(sorted(out))


def variant(flags: int) -> str:
    if flags & FLAG_ARCH_SPECIFIC:
        return "a"
    if flags & FLAG_FAMILY_SPECIFIC:
        return "f"
    return ""


def entry_name(kind_is_ptx: bool, sm: int, flags: int) -> str:
    return f"{'compute' if kind_is_ptx else 'sm'}_{sm}{variant(flags)}"


def sass_runs_on(sm: int, flags: int, target: Target) -> bool:
    major, minor = divmod(sm, 10)
    if major != target.major:
        return False
    if variant(flags) == "a":
        return minor == target.minor
    return minor <= target.minor


def ptx_runs_on(sm: int, flags: int, target: Target) -> bool:
    """Whether the driver can compile this PTX for `target`."""
    if variant(flags):
        return sass_runs_on(sm, flags, target)
    return sm <= target.sm
