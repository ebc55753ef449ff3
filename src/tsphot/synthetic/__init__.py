"""Simulated observing nights with known truth, for tests, benchmarks and the demo.

``simulate_night(out_dir, SimConfig(...))`` writes ``raw/sci_NNNN.fits`` (uint16, BZERO 32768),
``raw/bias_NNN.fits``, ``raw/dark_NNN.fits``, ``raw/flat_NNN.fits``, ``tsphot.toml`` and the
truth: ``truth.json``, ``truth_stars.ecsv`` (per star), ``truth_frames.ecsv`` (per frame x
star), ``truth_exposures.ecsv`` (per frame), ``truth_cosmics.ecsv`` (per cosmic-ray pixel) and
``truth_maps.fits`` (true flat, dark rate, bias columns). ``load_truth`` reads them back;
``expected_star_sigma`` / ``expected_star_terms`` give the predicted aperture-flux noise;
``background_excess_var`` the noise an injected sky pattern adds beyond it.
"""

from .config import SimConfig
from .psf import enclosed_fraction, moffat_alpha
from .simulate import simulate_night
from .truth import (
    Truth,
    background_excess_var,
    expected_star_sigma,
    expected_star_terms,
    load_truth,
    scintillation_sigma,
)

__all__ = [
    "SimConfig",
    "Truth",
    "background_excess_var",
    "enclosed_fraction",
    "expected_star_sigma",
    "expected_star_terms",
    "load_truth",
    "moffat_alpha",
    "scintillation_sigma",
    "simulate_night",
]
