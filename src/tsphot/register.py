"""Registration: the transform from the reference frame's pixels to each frame's, from star lists.

Stars are matched by triangle invariants (ratios of side lengths, unchanged by shift, rotation,
scale and flip). Every candidate is scored in a fixed order, so the same input always gives the same
transform: no random sampling, unlike RANSAC-based aligners.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.spatial import cKDTree

from tsphot.errors import FrameError


@dataclass(frozen=True)
class Transform:
    """Affine map of reference-frame pixels to a frame's pixels: p' = A p + t."""

    a: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)  # A row-major
    t: tuple[float, float] = (0.0, 0.0)
    n_matched: int = 0
    rms: float = 0.0  # px, residual of matched stars

    @property
    def matrix(self) -> np.ndarray:
        """The 2×2 linear part."""
        return np.array(self.a, dtype=float).reshape(2, 2)

    @property
    def rotation_deg(self) -> float:
        """Rotation angle (deg) of the linear part."""
        m = self.matrix
        return float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))

    @property
    def scale(self) -> float:
        """Scale factor of the linear part."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def flipped(self) -> bool:
        """True when the map includes a mirror reflection."""
        return bool(np.linalg.det(self.matrix) < 0)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map reference positions to this frame's positions."""
        m = self.matrix
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return m[0, 0] * x + m[0, 1] * y + self.t[0], m[1, 0] * x + m[1, 1] * y + self.t[1]


def similarity_fit(
    src: np.ndarray, dst: np.ndarray, allow_reflection: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) mapping src (N,2) onto dst (N,2): A, t."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1.0
    rot = u @ e @ vt
    var_s = (s**2).sum() / len(src)
    scale = (sig * np.diag(e)).sum() / var_s if var_s > 0 else 1.0
    a = scale * rot
    return a, mu_d - a @ mu_s


def _triangles(xy: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of each star with pairs of its k nearest neighbours: vertices, invariants."""
    n = len(xy)
    k = min(k, n - 1)
    if k < 2:
        return np.empty((0, 3), int), np.empty((0, 2))
    tree = cKDTree(xy)
    _, nbr = tree.query(xy, k + 1)
    # every star with each pair of its k nearest neighbours; each triangle once, in sorted order
    pj, pm = np.array(list(combinations(range(1, k + 1), 2))).T
    tri = np.column_stack(
        [np.repeat(np.arange(n), len(pj)), nbr[:, pj].ravel(), nbr[:, pm].ravel()]
    )
    tri = np.sort(tri, axis=1)
    key = np.unique((tri[:, 0] * n + tri[:, 1]) * n + tri[:, 2])  # sorted, as the rows would be
    tri = np.column_stack([key // (n * n), key // n % n, key % n])
    p = xy[tri]  # (T, 3, 2)
    # side opposite vertex v
    sides = np.stack(
        [
            np.linalg.norm(p[:, 1] - p[:, 2], axis=1),
            np.linalg.norm(p[:, 0] - p[:, 2], axis=1),
            np.linalg.norm(p[:, 0] - p[:, 1], axis=1),
        ],
        axis=1,
    )
    order = np.argsort(sides, axis=1)  # vertices ordered by the length of their opposite side
    tri = np.take_along_axis(tri, order, axis=1)
    ss = np.take_along_axis(sides, order, axis=1)
    ok = ss[:, 0] > 1.0
    inv = np.stack(
        [ss[:, 2] / np.maximum(ss[:, 1], 1e-9), ss[:, 1] / np.maximum(ss[:, 0], 1e-9)], 1
    )
    return tri[ok], inv[ok]


_REF_TRIANGLES: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}


def _reference_triangles(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_triangles of the reference stars, kept: every frame of a run is matched to the same list."""
    key = ref.tobytes() + str(ref.shape).encode()
    if key not in _REF_TRIANGLES:
        if len(_REF_TRIANGLES) >= 8:
            _REF_TRIANGLES.clear()
        _REF_TRIANGLES[key] = _triangles(ref)
    return _REF_TRIANGLES[key]


def match_stars(
    ref_xy: np.ndarray,
    frm_xy: np.ndarray,
    *,
    n_use: int = 40,
    tol_px: float = 3.0,
    allow_reflection: bool = True,
    max_candidates: int = 3000,
    max_false: float = 1e-3,
) -> Transform:
    """Find the transform taking reference star positions to a frame's star positions.

    Both lists are brightest first. The search runs on the brightest n_use stars, then on
    fewer (15, then 8): under cloud only the brightest stars remain, and their triangles are
    found among the reference's brightest. A transform is accepted only if the stars it
    matches within 1 px could not arise by chance: the probability of that many coincidences
    (Poisson, given the frame's star density), times the number of hypotheses tried, must be
    below max_false. A frame of another field, or one that does not overlap the reference,
    therefore raises FrameError instead of returning a spurious transform.
    """
    ref_all = np.asarray(ref_xy, float)
    frm_all = np.asarray(frm_xy, float)
    if len(ref_all) < 3 or len(frm_all) < 3:
        raise FrameError(
            f"cannot register: {len(frm_all)} stars found in the frame and {len(ref_all)} in "
            "the reference (at least 3 each are needed; cloud or a blank frame?)"
        )
    best_note = "no star pattern of the reference found in the frame"
    # A shift alone (most frames of a night) is found by voting at a fraction of the triangles'
    # cost, under the same test against chance; rotations and flips go on to the triangles.
    shifted = _match_offset(ref_all, frm_all, n_use, tol_px)
    if (
        shifted is not None
        and _significance(shifted[0], ref_all, frm_all, shifted[1])[1] < max_false
    ):
        return shifted[0]
    for n in dict.fromkeys((n_use, 15, 8)):
        if n > n_use and n != n_use:
            continue
        try:
            tr, n_tried = _match_once(ref_all, frm_all, n, tol_px, allow_reflection, max_candidates)
        except FrameError as exc:
            best_note = str(exc).removeprefix("cannot register: ")
            continue
        k, p_false = _significance(tr, ref_all, frm_all, n_tried)
        if p_false < max_false:
            return tr
        best_note = (
            f"the best match ({k} stars within 1 px) could arise by chance "
            f"(p = {min(p_false, 1.0):.2g}): no overlap with the reference, or too few stars"
        )
    raise FrameError(f"cannot register: {best_note}")


def _significance(
    tr: Transform, ref: np.ndarray, frm: np.ndarray, n_tried: int
) -> tuple[int, float]:
    """Stars matched within 1 px, and the chance of as many coincidences over all trials."""
    from scipy.special import pdtrc  # poisson.sf without scipy.stats' per-call overhead

    mapped = np.column_stack(tr(ref[:, 0], ref[:, 1]))
    lo, hi = frm.min(axis=0), frm.max(axis=0)
    inside = np.all((mapped >= lo - 1) & (mapped <= hi + 1), axis=1)
    dist, _ = cKDTree(frm).query(mapped[inside], distance_upper_bound=1.0)
    k = int(np.isfinite(dist).sum())
    area = float(np.prod(np.maximum(hi - lo, 1.0)))
    lam = inside.sum() * len(frm) / area * np.pi  # chance matches within 1 px
    extra = k - 3  # the triangle that made the hypothesis matches by construction
    if extra <= 0:
        return k, np.inf
    return k, float(pdtrc(extra - 1, lam) * max(n_tried, 1))


def _match_once(
    ref_xy: np.ndarray,
    frm_xy: np.ndarray,
    n_use: int,
    tol_px: float,
    allow_reflection: bool,
    max_candidates: int,
) -> tuple[Transform, int]:
    """One triangle search on the brightest n_use stars; the transform and hypotheses tried."""
    ref = np.asarray(ref_xy, float)[:n_use]
    frm = np.asarray(frm_xy, float)[: max(n_use, 2 * n_use // 1)]
    if len(ref) < 3 or len(frm) < 3:
        raise FrameError(
            f"cannot register: {len(frm)} stars found in the frame and {len(ref)} in the reference "
            "(at least 3 each are needed; cloud or a blank frame?)"
        )
    tri_r, inv_r = _reference_triangles(ref)
    tri_f, inv_f = _triangles(frm)
    if len(tri_r) == 0 or len(tri_f) == 0:
        raise FrameError("cannot register: stars too few or too close to form triangles")
    tree_inv = cKDTree(inv_f)
    pairs = tree_inv.query_ball_point(inv_r, r=0.03)
    ci = np.array([i for i, js in enumerate(pairs) for _ in js], dtype=int)
    cj = np.array([j for js in pairs for j in js], dtype=int)
    if len(ci) == 0:
        raise FrameError("cannot register: no star pattern of the reference found in the frame")
    # Best-fitting invariants first, so a good hypothesis is met early; the order is deterministic.
    d2 = np.sum((inv_r[ci] - inv_f[cj]) ** 2, axis=1)
    order = np.lexsort((cj, ci, d2))[:max_candidates]
    cand = list(zip(ci[order].tolist(), cj[order].tolist(), strict=True))
    tree_f = cKDTree(frm)
    best: tuple[int, float, np.ndarray, np.ndarray] | None = None
    need = max(3, int(0.7 * min(len(ref), len(frm))))
    n_tried = 0
    for i, j in cand:
        n_tried += 1
        src, dst = ref[tri_r[i]], frm[tri_f[j]]
        a, t = similarity_fit(src, dst, allow_reflection)
        sc = np.sqrt(abs(np.linalg.det(a)))
        if not 0.8 < sc < 1.25:
            continue
        mapped = ref @ a.T + t
        dist, _ = tree_f.query(mapped, distance_upper_bound=tol_px)
        inl = np.isfinite(dist)
        score = int(inl.sum())
        resid = float(np.mean(dist[inl])) if score else np.inf
        if best is None or score > best[0] or (score == best[0] and resid < best[1]):
            best = (score, resid, a, t)
            if score >= need and score >= 6:
                break
    if best is None or best[0] < 3:
        raise FrameError("cannot register: no transform matches 3 or more stars")
    return _refine(best[2], best[3], ref_xy, frm_xy, n_use, tol_px, ref), n_tried


def _refine(
    a: np.ndarray,
    t: np.ndarray,
    ref_xy: np.ndarray,
    frm_xy: np.ndarray,
    n_use: int,
    tol_px: float,
    first: np.ndarray,
) -> Transform:
    """A hypothesis refined on every matched pair, thrice (matches may grow once the fit
    improves); `first`, the stars that made it, stand for the matches if none are found."""
    full_ref = np.asarray(ref_xy, float)[: 4 * n_use]
    tree_all = cKDTree(np.asarray(frm_xy, float))
    frm_all = np.asarray(frm_xy, float)
    src = dst = first
    for _ in range(3):
        mapped = full_ref @ a.T + t
        dist, idx = tree_all.query(mapped, distance_upper_bound=tol_px)
        ok = np.isfinite(dist)
        if ok.sum() < 3:
            break
        src, dst = full_ref[ok], frm_all[idx[ok]]
        a, t = (
            _affine_fit(src, dst)
            if ok.sum() >= 12
            else similarity_fit(src, dst, np.linalg.det(a) < 0)
        )
    resid = np.linalg.norm(src @ a.T + t - dst, axis=1)
    return Transform(
        a=tuple(float(v) for v in a.ravel()),
        t=(float(t[0]), float(t[1])),
        n_matched=len(src),
        rms=float(np.sqrt(np.mean(resid**2))),
    )


def _match_offset(
    ref_xy: np.ndarray, frm_xy: np.ndarray, n_use: int, tol_px: float
) -> tuple[Transform, int] | None:
    """The common case, a frame shifted from the reference (rotated by well under a degree),
    found by voting: the offset shared by most pairs of bright stars; None without a clear one.
    The transform is then refined exactly as a triangle match's is."""
    ref = np.asarray(ref_xy, float)[:n_use]
    frm = np.asarray(frm_xy, float)[: 2 * n_use]
    if len(ref) < 6 or len(frm) < 6:
        return None
    d = (frm[None, :, :] - ref[:, None, :]).reshape(-1, 2)
    cell = np.floor(d / tol_px).astype(np.int64)
    key = (cell[:, 0] + 2**20) * 2**21 + (cell[:, 1] + 2**20)
    keys, counts = np.unique(key, return_counts=True)
    top = keys[np.argmax(counts)]  # the first of equals: deterministic
    centre = (np.array([top // 2**21 - 2**20, top % 2**21 - 2**20]) + 0.5) * tol_px
    near = np.all(np.abs(d - centre) <= tol_px, axis=1)  # the cell and its neighbours
    if near.sum() < 6:
        return None
    t = np.median(d[near], axis=0)
    tr = _refine(np.eye(2), t, ref_xy, frm_xy, n_use, tol_px, ref)
    # A shift that is not the whole story (a rotation of a degree or more smears the offsets)
    # leaves part of the stars unmatched or matched loosely: the triangles then decide.
    n_ref = min(len(np.asarray(ref_xy)[: 4 * n_use]), len(frm_xy))
    if tr.n_matched < max(6, 0.7 * n_ref) or tr.rms > tol_px / 6:
        return None
    return tr, len(d)


def _affine_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares general affine transform (handles small differential scale and shear)."""
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return coef[:2].T, coef[2]
