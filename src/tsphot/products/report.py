"""report.html: one self-contained page (pictures embedded as base64) with the run's summary."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from tsphot.products.export import atomic_write

PICTURES = (
    ("lightcurve.png", "Light curve"),
    ("conditions.png", "Observing conditions"),
    ("finder.png", "Finder chart"),
    ("noise_budget.png", "Noise budget"),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-family: monospace; }
img { max-width: 100%; border: 1px solid #eee; } .bad { color: #a00; } .muted { color: #777; }
"""


def _fmt(v: Any, digits: int = 5) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]], num: set[int] | None = None) -> str:
    num = num or set()
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for k, v in enumerate(row):
            cls = ' class="num"' if k in num else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def build_report(run_dir: str | Path, pictures: list[Path] | None = None) -> str:
    """The HTML text of a run's report, from run.json and the pictures in run_dir."""
    run_dir = Path(run_dir)
    rec = json.loads((run_dir / "run.json").read_text())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>tsphot report — {html.escape(run_dir.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>tsphot report: {html.escape(str(run_dir))}</h1>",
        f"<p class='muted'>tsphot {html.escape(rec.get('tsphot_version', ''))}; "
        f"reference frame {html.escape(str(rec.get('reference_frame')))}</p>",
    ]
    frames = rec.get("frames", {})
    ap = rec.get("apertures", {})
    parts.append("<h2>Summary</h2>")
    parts.append(
        _table(
            ["quantity", "value"],
            [
                ["exposures", frames.get("total")],
                [
                    "by status",
                    ", ".join(f"{k}: {v}" for k, v in frames.get("by_status", {}).items()),
                ],
                ["aperture radius (px)", ap.get("chosen_radius_px")],
                ["annulus (px)", ap.get("annulus_px")],
                ["gain (e-/ADU)", rec.get("gain_e_per_adu")],
                ["airmass from", rec.get("airmass_source")],
                ["site from", rec.get("site_source")],
                ["scintillation", rec.get("scintillation")],
                [
                    "comparison stars kept",
                    sum(1 for c in rec.get("comparison_stars", []) if c.get("used")),
                ],
            ],
        )
    )
    objs = rec.get("objects", {})
    rows = []
    for name, o in objs.items():
        fit = o.get("fit") or {}
        p, e = fit.get("params", {}), fit.get("errors", {})

        def val(k: str, p: dict = p) -> str:
            return f"{p[k]:.6f}" if k == "t0" else f"{p[k]:.6g}"

        fit_txt = ", ".join(
            f"{k} = {val(k)} ± {e[k]:.2g}" if e.get(k) is not None else f"{k} = {val(k)}"
            for k in ("t0", "depth", "rp", "a", "inc")
            if k in p
        )
        resid = fit.get("residual_rms")
        rows.append(
            [
                name,
                o.get("role"),
                o.get("frames_measured"),
                1e3 * o["rms_rel_flux"] if o.get("rms_rel_flux") is not None else None,
                1e3 * o["median_err_rel_flux"]
                if o.get("median_err_rel_flux") is not None
                else None,
                1e3 * resid if resid is not None else None,
                fit_txt or "—",
            ]
        )
    parts.append("<h2>Targets and check stars</h2>")
    parts.append(
        _table(
            [
                "object",
                "role",
                "points",
                "rms (ppt)",
                "median error (ppt)",
                "rms about the fit (ppt)",
                "fit",
            ],
            rows,
            {2, 3, 4, 5},
        )
    )
    for filename, title in PICTURES:
        path = run_dir / filename
        if path.exists():
            parts.append(f"<h2>{html.escape(title)}</h2>")
            parts.append(_image(path, title))
    comps = rec.get("comparison_stars", [])
    parts.append("<h2>Comparison stars</h2>")
    parts.append(
        _table(
            [
                "name",
                "x",
                "y",
                "kept",
                "weight",
                "rms (mmag)",
                "expected (mmag)",
                "chi2_red",
                "reason",
            ],
            [
                [
                    c["name"],
                    c["x"],
                    c["y"],
                    "yes" if c["used"] else "no",
                    c["weight"],
                    1e3 * c["rms_mag"] if c.get("rms_mag") is not None else None,
                    1e3 * c["expected_mag"] if c.get("expected_mag") is not None else None,
                    c.get("chi2_red"),
                    c.get("reason"),
                ]
                for c in comps
            ],
            {1, 2, 4, 5, 6, 7},
        )
    )
    bad = [i for i in rec.get("inputs", []) if i.get("status") != "ok"]
    parts.append("<h2>Exposures not measured</h2>")
    if bad:
        parts.append(
            _table(
                ["file", "status", "reason"],
                [[Path(i["path"]).name, i["status"], i["reason"]] for i in bad],
            )
        )
    else:
        parts.append("<p>none: every exposure was measured.</p>")
    assumed = rec.get("assumed", [])
    parts.append("<h2>Assumed values</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{html.escape(str(a))}</li>" for a in assumed) + "</ul>"
        if assumed
        else "<p>none</p>"
    )
    parts.append("<h2>Settings</h2>")
    parts.append("<pre>" + html.escape(json.dumps(rec.get("settings", {}), indent=1)) + "</pre>")
    parts.append("<h2>Versions</h2>")
    parts.append(
        _table(["package", "version"], [[k, v] for k, v in rec.get("versions", {}).items()])
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, pictures: list[Path] | None = None) -> Path:
    """Write run_dir/report.html; return its path."""
    run_dir = Path(run_dir)
    text = build_report(run_dir, pictures)
    path = run_dir / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
