"""Real nights of the project's shared data: where they are and how they are reduced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsphot.settings import ObjectSpec, Settings, make_settings

# The shared data folder sits beside a checkout: <checkout>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HATP32_DIR = SHARED_DATA / "hatp32-microobservatory"


def hatp32_settings(out: str | Path, data_dir: Path = HATP32_DIR, **overrides: Any) -> Settings:
    """Settings for the HAT-P-32 MicroObservatory night (see its README), comparison stars
    chosen automatically; ``overrides`` are further settings (e.g. transit, all_stars)."""
    base: dict[str, Any] = {
        "frames": [str(data_dir)],
        "out": str(out),
        # target by its pixel position on the first exposure, with its sky position (SIMBAD)
        # for the barycentric correction
        "targets": [
            ObjectSpec(name="HAT-P-32", x=423.2, y=286.0, ra="02:04:10.278", dec="+46:41:16.21")
        ],
        # FWHM ~2.3-2.5 px: radii around the optimum, the annulus clear of the star's wings
        "radii": [2.75, 3.0, 3.25, 3.5, 3.75, 4.0, 4.25],
        "annulus": (9.0, 16.0),
        "site": (31.675467, -110.951376, 1268.0),  # Whipple base camp, Amado (the data README)
        "quiet": True,
    }
    base.update(overrides)
    return make_settings(**base)
