// A small SVG scatter chart: points with error bars, axes with round ticks, a tooltip on hover,
// a click on a point, and zoom by dragging across the plot (a button resets it).
const NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** Round tick values covering [lo, hi], about n of them. */
export function ticks(lo, hi, n = 6) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function extent(values, pad = 0.05) {
  const v = values.filter(Number.isFinite);
  if (!v.length) return [0, 1];
  let lo = Math.min(...v);
  let hi = Math.max(...v);
  if (hi === lo) {
    lo -= 0.5;
    hi += 0.5;
  }
  const d = (hi - lo) * pad;
  return [lo - d, hi + d];
}

/**
 * lineChart({id, title, xLabel, yLabel, series: [{name, points: [{x, y, err?}], errors?,
 * className?}], zoomable?, tooltip(p, series) → text, onClick(p, series)}) → a <figure>.
 */
export function lineChart(opts) {
  // the drawing's own units follow the screen, so its text stays readable on a phone
  const W = Math.round(Math.max(340, Math.min(900, window.innerWidth - 48)));
  const H = Math.round(Math.max(240, W * 0.4));
  const M = { l: 70, r: 16, t: 12, b: 46 };
  const all = opts.series.flatMap((s) => s.points);
  const full = {
    x: extent(all.map((p) => p.x)),
    y: extent(all.flatMap((p) => (Number.isFinite(p.err) ? [p.y - p.err, p.y + p.err] : [p.y]))),
  };
  let dom = { x: [...full.x], y: [...full.y] };
  const fig = document.createElement("figure");
  fig.className = "chart";
  fig.id = opts.id;
  const cap = document.createElement("figcaption");
  cap.textContent = opts.title;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${opts.title}: ${all.length} points` });
  const tip = document.createElement("div");
  tip.className = "tip";
  tip.id = `${opts.id}-tip`;
  tip.hidden = true;
  const reset = document.createElement("button");
  reset.type = "button";
  reset.textContent = "Reset zoom";
  reset.className = "reset-zoom";
  reset.hidden = true;
  reset.addEventListener("click", () => {
    dom = { x: [...full.x], y: [...full.y] };
    reset.hidden = true;
    render();
  });
  const box = document.createElement("div");
  box.className = "chart-box";
  box.append(svg, tip);
  fig.append(cap, box);
  if (opts.zoomable) fig.append(reset);

  const sx = (x) => M.l + ((x - dom.x[0]) / (dom.x[1] - dom.x[0])) * (W - M.l - M.r);
  const sy = (y) => H - M.b - ((y - dom.y[0]) / (dom.y[1] - dom.y[0])) * (H - M.t - M.b);
  const ix = (px) => dom.x[0] + ((px - M.l) / (W - M.l - M.r)) * (dom.x[1] - dom.x[0]);
  let plotted = [];

  function render() {
    svg.replaceChildren();
    const axes = svgEl("g", { class: "axes" });
    for (const t of ticks(dom.x[0], dom.x[1])) {
      const x = sx(t);
      axes.append(svgEl("line", { x1: x, x2: x, y1: M.t, y2: H - M.b, class: "grid" }));
      const l = svgEl("text", { x, y: H - M.b + 16, "text-anchor": "middle" });
      l.textContent = String(t);
      axes.append(l);
    }
    for (const t of ticks(dom.y[0], dom.y[1], 5)) {
      const y = sy(t);
      axes.append(svgEl("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, class: "grid" }));
      const l = svgEl("text", { x: M.l - 6, y: y + 4, "text-anchor": "end" });
      l.textContent = String(t);
      axes.append(l);
    }
    axes.append(svgEl("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, class: "frame" }));
    const xl = svgEl("text", { x: (M.l + W - M.r) / 2, y: H - 8, "text-anchor": "middle", class: "label" });
    xl.textContent = opts.xLabel;
    const yl = svgEl("text", { x: 14, y: (M.t + H - M.b) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})` });
    yl.textContent = opts.yLabel;
    axes.append(xl, yl);
    svg.append(axes);
    const clipId = `${opts.id}-clip`;
    const defs = svgEl("defs");
    const clip = svgEl("clipPath", { id: clipId });
    clip.append(svgEl("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b }));
    defs.append(clip);
    svg.append(defs);
    const g = svgEl("g", { "clip-path": `url(#${clipId})` });
    plotted = [];
    opts.series.forEach((s, k) => {
      const sg = svgEl("g", { class: `series ${s.className || ""} s${k % 8}` });
      if (!s.errors && s.points.length > 1) {
        const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
        sg.append(svgEl("path", { d, class: "line" }));
      }
      for (const p of s.points) {
        if (p.x < dom.x[0] || p.x > dom.x[1]) continue;
        const x = sx(p.x);
        const y = sy(p.y);
        if (s.errors && Number.isFinite(p.err)) {
          sg.append(svgEl("line", { x1: x, x2: x, y1: sy(p.y - p.err), y2: sy(p.y + p.err), class: "err" }));
        }
        sg.append(svgEl("circle", { cx: x, cy: y, r: s.errors ? 3 : 2, class: "pt", "data-frame": p.frame ?? "" }));
        plotted.push({ p, s, x, y });
      }
      g.append(sg);
    });
    svg.append(g);
    if (opts.series.length > 1) {
      const legend = svgEl("g", { class: "legend" });
      const per = W < 600 ? 3 : 6;
      opts.series.slice(0, 12).forEach((s, k) => {
        const t = svgEl("text", { x: M.l + 8 + (k % per) * 70, y: M.t + 14 + Math.floor(k / per) * 14, class: `series s${k % 8} ${s.className || ""}` });
        t.textContent = s.name;
        legend.append(t);
      });
      svg.append(legend);
    }
  }

  // pointer position in the SVG's own units
  const pos = (e) => {
    const r = svg.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * W, ((e.clientY - r.top) / r.height) * H];
  };
  const nearest = (x, y) => {
    let best = null;
    let bd = 30;
    for (const q of plotted) {
      const d = Math.hypot(q.x - x, q.y - y);
      if (d < bd) {
        best = q;
        bd = d;
      }
    }
    return best;
  };
  let brush = null;
  svg.addEventListener("pointerdown", (e) => {
    if (!opts.zoomable) return;
    const [x] = pos(e);
    brush = { x0: x, x1: x, rect: svgEl("rect", { class: "brush", y: M.t, height: H - M.t - M.b, x, width: 0 }) };
    svg.append(brush.rect);
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener("pointermove", (e) => {
    const [x, y] = pos(e);
    if (brush) {
      brush.x1 = x;
      brush.rect.setAttribute("x", Math.min(brush.x0, x));
      brush.rect.setAttribute("width", Math.abs(x - brush.x0));
    }
    const q = nearest(x, y);
    for (const c of svg.querySelectorAll("circle.hover")) c.classList.remove("hover");
    if (!q || !opts.tooltip) {
      tip.hidden = true;
      return;
    }
    svg.querySelectorAll("circle.pt")[plotted.indexOf(q)]?.classList.add("hover");
    tip.textContent = opts.tooltip(q.p, q.s);
    tip.hidden = false;
    const r = svg.getBoundingClientRect();
    const left = (q.x / W) * r.width;
    tip.style.left = `${Math.min(left + 12, r.width - 260)}px`;
    tip.style.top = `${(q.y / H) * r.height + 12}px`;
  });
  svg.addEventListener("pointerleave", () => (tip.hidden = true));
  svg.addEventListener("pointerup", (e) => {
    const b = brush;
    brush = null;
    if (b) b.rect.remove();
    const [x, y] = pos(e);
    if (b && Math.abs(b.x1 - b.x0) > 8) {
      const lo = ix(Math.min(b.x0, b.x1));
      const hi = ix(Math.max(b.x0, b.x1));
      const inside = opts.series.flatMap((s) => s.points).filter((p) => p.x >= lo && p.x <= hi);
      dom = { x: [lo, hi], y: inside.length ? extent(inside.flatMap((p) => (Number.isFinite(p.err) ? [p.y - p.err, p.y + p.err] : [p.y]))) : dom.y };
      reset.hidden = false;
      render();
      return;
    }
    const q = nearest(x, y);
    if (q && opts.onClick) opts.onClick(q.p, q.s);
  });
  render();
  return fig;
}
