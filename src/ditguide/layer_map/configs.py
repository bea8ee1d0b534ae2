"""What the layer map's scans vary and run on: the named edits, the step windows, the noise levels, the
(edit, block, window) configs of the generation scan, and the default bed (the glyph-scene testbed)."""

from __future__ import annotations

from collections.abc import Sequence

# name -> edit op template ("{block}" is replaced by a block address).
EDITS = {
    "skip": "skip:{block}",
    "skip_attn": "skip_attn:{block}",
    "skip_ff": "skip_ff:{block}",
    "scale0.5": "scale(0.5):{block}",
    "scale1.5": "scale(1.5):{block}",
    "identity_attn": "identity_attn_in_stream:{block}",
    "temperature2": "temperature(2):{block}",
}
WINDOW_EDITS = ("skip", "scale1.5")
WINDOWS = {"early": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "late": (2 / 3, 1.0)}  # fractions of the steps
T_GRID = (0.95, 0.8, 0.6, 0.4, 0.2, 0.05)


def edit_string(edit: str, block: str) -> str:
    if edit not in EDITS:
        raise ValueError(f"edit {edit!r} is not known; allowed: {', '.join(EDITS)}")
    return EDITS[edit].format(block=block)


def window_steps(window: tuple[float, float], steps: int) -> set[int]:
    """Steps i with start <= i / steps < end (half-open, so the thirds tile the trajectory)."""
    lo, hi = window
    return {i for i in range(steps) if lo <= i / steps < hi}


def generation_configs(
    blocks: Sequence[str], edits: Sequence[str], window_edits: Sequence[str] = WINDOW_EDITS
) -> list[tuple[str, str, str]]:
    """(edit, block, window) of the scan: every edit over all steps, then the window edits per third."""
    configs = [(e, b, "all") for e in edits for b in blocks]
    configs += [(e, b, w) for e in window_edits for b in blocks for w in WINDOWS]
    return configs


def resolve_bed(bed):
    """The testbed adapter (ditguide.testbeds.beds); None is the glyph-scene testbed."""
    from ..testbeds.beds import ScenesBed

    return ScenesBed() if bed is None else bed
