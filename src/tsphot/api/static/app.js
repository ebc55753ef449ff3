// tsphot's page: plain modern JavaScript (an ES module, no build step, nothing fetched from
// elsewhere). It talks only to this server's REST API (/api/v1/), with the user's API token.
import { lineChart } from "./chart.js";

const API = "/api/v1";
const RES = `${API}/time_series_photometry_tools`;
const TOKEN_KEY = "tsphot-token";
const EXPORTS = ["ecsv", "csv", "fits", "parquet", "aij"];
const AAVSO_EXPORTS = ["aavso-extended", "aavso-exoplanet"];
const main = document.getElementById("main");
const bannerEl = document.getElementById("banner");

const state = { token: localStorage.getItem(TOKEN_KEY) || "", timers: [], newRun: null };

// ------------------------------------------------------------------------------------ helpers

/** An element: h("p", {class: "x", onclick: f}, "text", child, …); text is never parsed. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(message, status = 0, kind = "http") {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

const noServer = () =>
  `The server at ${location.origin} does not answer. Check that \`tsphot serve\` is running ` +
  "and that this computer can reach it; what you entered here is kept, try again when it is back.";

function banner(message, kind = "network") {
  bannerEl.textContent = message;
  bannerEl.dataset.kind = kind;
  bannerEl.hidden = false;
}

function serverUp() {
  if (bannerEl.dataset.kind === "network") {
    bannerEl.hidden = true;
    bannerEl.dataset.kind = "";
  }
}

/** A response's error in words: the API's "detail" (a string, or a list naming fields). */
async function errorText(r) {
  let body = "";
  try {
    body = await r.text();
    const j = JSON.parse(body);
    if (typeof j.detail === "string") return j.detail;
    if (Array.isArray(j.detail)) {
      return j.detail
        .map((d) => {
          const loc = (d.loc || []).filter((p) => p !== "body").join(".");
          return loc ? `${loc}: ${d.msg}` : d.msg;
        })
        .join("; ");
    }
  } catch (e) {
    /* not JSON: say what came */
  }
  return `the server answered ${r.status} ${r.statusText}${body ? ": " + body.slice(0, 200) : ""}`;
}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let r;
  try {
    r = await fetch(path, { ...opts, headers });
  } catch (e) {
    banner(noServer());
    throw new ApiError(noServer(), 0, "network");
  }
  serverUp();
  if (!r.ok) {
    const msg = await errorText(r);
    if (r.status === 401) {
      signOut(`Your token was refused: ${msg}`);
    }
    throw new ApiError(msg, r.status);
  }
  return r;
}

const getJSON = async (path, opts) => (await api(path, opts)).json();
const postJSON = (path, body) =>
  getJSON(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });

/** Run fn every ms milliseconds until the view changes (errors are shown, polling goes on). */
function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof ApiError)) console.error(e);
    }
    if (!stopped) state.timers.push(setTimeout(tick, ms));
  };
  state.timers.push({ stop: () => (stopped = true) });
  tick();
}

function stopTimers() {
  for (const t of state.timers) {
    if (typeof t === "object" && t.stop) t.stop();
    else clearTimeout(t);
  }
  state.timers = [];
}

function show(...children) {
  main.replaceChildren(...children);
  const heading = main.querySelector("h2");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function errorBox(id, message) {
  return h("div", { class: "error", role: "alert", id }, message);
}

const fmt = (v, digits = 4) =>
  v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(digits);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

/** Parse CSV text (RFC 4180 quoting) into {columns, rows: [{col: text}]}. */
export function parseCSV(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      field = "";
      if (row.length > 1 || row[0] !== "") rows.push(row);
      row = [];
    } else field += c;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  const data = rows.filter((r) => !r[0].startsWith("#"));
  const columns = data.shift() || [];
  return {
    columns,
    rows: data.map((r) => Object.fromEntries(columns.map((c, i) => [c, r[i] ?? ""]))),
  };
}

const num = (t) => (t === "" || t === undefined ? NaN : Number(t));

/** Save a blob under a name (the browser's download). */
function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function downloadButton(label, path, name, id) {
  const status = h("span", { class: "dl-status", role: "status" });
  const button = h(
    "button",
    {
      type: "button",
      id,
      class: "download",
      onclick: async () => {
        status.textContent = "downloading…";
        try {
          const r = await api(path);
          saveBlob(await r.blob(), name);
          status.textContent = "";
        } catch (e) {
          status.textContent = `not downloaded: ${e.message}`;
          status.classList.add("error-text");
        }
      },
    },
    label,
  );
  return h("li", {}, button, " ", status);
}

/** An image of the API (it needs the token, so it is fetched and shown from a blob). */
function apiImage(path, alt, attrs = {}) {
  const img = h("img", { alt, ...attrs });
  api(path)
    .then((r) => r.blob())
    .then((b) => {
      img.src = URL.createObjectURL(b);
    })
    .catch((e) => img.replaceWith(h("p", { class: "error-text" }, `${alt}: ${e.message}`)));
  return img;
}

// ------------------------------------------------------------------------------------ sign in

function signOut(message) {
  state.token = "";
  localStorage.removeItem(TOKEN_KEY);
  stopTimers();
  viewSignin(message);
}

function viewSignin(message) {
  document.getElementById("signout").hidden = true;
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    "aria-describedby": "token-help",
  });
  const err = h("div", { id: "signin-error", role: "alert" }, message ? errorBox("", message) : "");
  const form = h(
    "form",
    {
      id: "signin",
      class: "card narrow",
      onsubmit: async (ev) => {
        ev.preventDefault();
        state.token = input.value.trim();
        err.replaceChildren();
        try {
          await getJSON(`${RES}?limit=1`);
          localStorage.setItem(TOKEN_KEY, state.token);
          if (!location.hash || location.hash === "#/signin") location.hash = "#/";
          route();
        } catch (e) {
          if (e.status !== 401) err.replaceChildren(errorBox("", e.message));
        }
      },
    },
    h("h2", {}, "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    h(
      "p",
      { id: "token-help", class: "help" },
      "Your administrator gives you a token (",
      h("code", {}, "tsphot users add NAME"),
      "). It is kept in this browser until you sign out.",
    ),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    err,
  );
  show(form);
  input.focus();
}

// ------------------------------------------------------------------------------------ runs

function statusBadge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

function progressCell(run) {
  const { done, total } = run.progress;
  return h(
    "span",
    { class: "progress-cell" },
    h("progress", { max: total || 1, value: done, "aria-label": `${run.name} progress` }),
    ` ${done} / ${total}`,
  );
}

async function viewRuns() {
  const body = h("tbody", { id: "runs-body" });
  const note = h("p", { id: "runs-note", class: "help" });
  show(
    h(
      "section",
      { class: "card" },
      h("div", { class: "row-between" }, h("h2", {}, "Your runs"), h("a", { href: "#/new", class: "button primary", id: "new-run" }, "New run")),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "runs" },
          h("caption", { class: "sr-only" }, "Runs, newest first"),
          h("thead", {}, h("tr", {}, ["Name", "Status", "Frames measured", "Created"].map((t) => h("th", { scope: "col" }, t)))),
          body,
        ),
      ),
      note,
    ),
  );
  every(2000, async () => {
    let page;
    try {
      page = await getJSON(`${RES}?limit=100`);
    } catch (e) {
      note.replaceChildren(errorBox("runs-error", `Your runs could not be read: ${e.message}`));
      throw e;
    }
    body.replaceChildren(
      ...page.items.map((r) =>
        h(
          "tr",
          { dataset: { run: r.id } },
          h("td", {}, h("a", { href: `#/runs/${r.id}` }, r.name)),
          h("td", {}, statusBadge(r.status), r.status === "failed" ? h("span", { class: "reason" }, " ", r.reason) : ""),
          h("td", {}, progressCell(r)),
          h("td", {}, when(r.created)),
        ),
      ),
    );
    note.textContent = page.total ? `${page.total} run(s).` : "No run yet: start one with “New run”.";
  });
}

// ------------------------------------------------------------------------------------ new run

function newRunState() {
  return {
    mode: "upload",
    uploads: [], // {file, id, status}
    folder: "",
    ref: null,
    image: null,
    objects: [], // {role, name, x, y}
    view: { scale: 1, ox: 0, oy: 0 },
    hover: null,
  };
}

/** Upload one file with per-file progress (XMLHttpRequest: fetch reports no upload progress). */
function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/uploads`);
    xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      serverUp();
      let j = null;
      try {
        j = JSON.parse(xhr.responseText);
      } catch (e) {
        /* said below */
      }
      if (xhr.status >= 200 && xhr.status < 300 && j) resolve(j);
      else {
        const d = j && j.detail;
        const msg =
          typeof d === "string"
            ? d
            : Array.isArray(d)
              ? d.map((x) => x.msg).join("; ")
              : `the server answered ${xhr.status}`;
        reject(new ApiError(msg, xhr.status));
      }
    };
    xhr.onerror = () => {
      banner(noServer());
      reject(new ApiError(noServer(), 0, "network"));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Upload files two at a time into a list with a progress bar and a status per file. */
async function uploadAll(files, list, kind) {
  const items = files.map((file) => {
    const bar = h("progress", { max: 1, value: 0, "aria-label": `upload of ${file.name}` });
    const status = h("span", { class: "up-status" }, "waiting");
    const li = h("li", { dataset: { file: file.name, kind } }, h("span", { class: "fname" }, file.name), bar, status);
    list.append(li);
    return { file, bar, status, li, id: null, error: null };
  });
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const it = items[next++];
      it.status.textContent = "uploading";
      try {
        const out = await uploadFile(it.file, (f) => (it.bar.value = f));
        it.id = out.id;
        it.bar.value = 1;
        it.status.textContent = out.deduplicated ? "done (already uploaded)" : "done";
        it.li.classList.add("ok");
      } catch (e) {
        it.error = e.message;
        it.status.textContent = `refused: ${e.message}`;
        it.li.classList.add("failed");
      }
    }
  };
  await Promise.all([worker(), worker()]);
  return items;
}

function suggestApertures(fwhm) {
  const f = fwhm && fwhm > 0 ? fwhm : 4;
  const r = Math.max(1.6 * f, 2);
  return [r, r + 2 * f, r + 5 * f].map((v) => Math.round(v * 10) / 10);
}

function viewNew() {
  const nr = (state.newRun = state.newRun || newRunState());

  // --- step 1: exposures
  const fileInput = h("input", {
    id: "files",
    type: "file",
    multiple: true,
    accept: ".fits,.fit,.fts,.fits.gz,.fit.gz,.gz,.fz",
    "aria-describedby": "files-help",
  });
  const upList = h("ul", { id: "upload-list", class: "files", "aria-live": "polite" });
  const upError = h("div", { id: "upload-error" });
  const drop = h(
    "div",
    { class: "drop", id: "drop" },
    h("label", { for: "files" }, "Exposures (FITS, many at once)"),
    fileInput,
    h("p", { id: "files-help", class: "help" }, "Choose files, or drop them here. Each is checked as it arrives."),
  );
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  fileInput.addEventListener("change", () => addFiles([...fileInput.files]));

  async function addFiles(files) {
    if (!files.length) return;
    upError.replaceChildren();
    const items = await uploadAll(files, upList, "frames");
    nr.uploads.push(...items.filter((i) => i.id));
    const bad = items.filter((i) => i.error);
    if (bad.length) {
      upError.replaceChildren(
        errorBox(
          "upload-failed",
          `${bad.length} of ${items.length} file(s) could not be uploaded: ` +
            bad.map((b) => `${b.file.name}: ${b.error}`).join("; "),
        ),
      );
    }
    if (nr.uploads.length) await loadReference();
  }

  const folderInput = h("input", { id: "folder", type: "text", placeholder: "night1/raw", "aria-describedby": "folder-help" });
  const folderList = h("ul", { id: "folder-list", class: "folder-list" });
  const folderError = h("div", { id: "folder-error" });
  async function browse(path) {
    folderError.replaceChildren();
    try {
      const f = await getJSON(`${API}/files?path=${encodeURIComponent(path)}`);
      folderInput.value = f.path;
      const up = f.path ? f.path.split("/").slice(0, -1).join("/") : null;
      const nFits = f.entries.filter((e) => e.kind === "fits").length;
      folderList.replaceChildren(
        ...(up !== null ? [h("li", {}, h("button", { type: "button", class: "link", onclick: () => browse(up) }, "⬑ up"))] : []),
        ...f.entries
          .filter((e) => e.kind === "folder")
          .map((e) => h("li", {}, h("button", { type: "button", class: "link", onclick: () => browse(f.path ? `${f.path}/${e.name}` : e.name) }, `📁 ${e.name}`))),
        h("li", { class: "help" }, `${nFits} FITS file(s) here`),
      );
    } catch (e) {
      folderError.replaceChildren(errorBox("folder-failed", e.message));
    }
  }
  const folderBox = h(
    "div",
    { id: "folder-box", hidden: nr.mode !== "folder" },
    h("label", { for: "folder" }, "Folder (or glob) under the server's data root"),
    h("div", { class: "inline" }, folderInput,
      h("button", { type: "button", onclick: () => browse(folderInput.value) }, "Browse"),
      h("button", { type: "button", class: "primary", id: "use-folder", onclick: async () => {
        nr.folder = folderInput.value.trim();
        await loadReference();
      } }, "Use these exposures")),
    h("p", { id: "folder-help", class: "help" }, "FITS files of that folder; or a glob such as night1/raw/sci_*.fits."),
    folderList,
    folderError,
  );
  const uploadBox = h("div", { id: "upload-box", hidden: nr.mode !== "upload" }, drop, upList, upError);
  const modeRadio = (value, label) =>
    h("label", { class: "radio" },
      h("input", { type: "radio", name: "source", value, checked: nr.mode === value, onchange: () => {
        nr.mode = value;
        uploadBox.hidden = value !== "upload";
        folderBox.hidden = value !== "folder";
        calPaths.forEach((p) => (p.hidden = value !== "folder"));
      } }), ` ${label}`);

  // --- step 2: the reference frame
  const canvas = h("canvas", { id: "ref-canvas", role: "img", "aria-label": "reference frame; click to place the target, then comparison stars", tabindex: 0 });
  const wrap = h("div", { class: "canvas-wrap" }, canvas);
  const refInfo = h("p", { id: "ref-info", class: "help" }, "Upload exposures or choose a folder: the reference frame appears here.");
  const cursor = h("output", { id: "cursor-info", class: "cursor-info" }, "—");
  const refError = h("div", { id: "ref-error" });
  const [ap0, an10, an20] = suggestApertures(null);
  const num_ = (id, label, value, help) =>
    h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, type: "number", step: "0.1", min: "0.5", value, inputmode: "decimal", "aria-describedby": help ? `${id}-help` : null }), help ? h("p", { id: `${id}-help`, class: "help" }, help) : "");
  const apField = num_("aperture", "Aperture radius (px)", ap0);
  const an1Field = num_("annulus-inner", "Annulus inner radius (px)", an10);
  const an2Field = num_("annulus-outer", "Annulus outer radius (px)", an20);
  const radii = () => [apField, an1Field, an2Field].map((f) => Number(f.querySelector("input").value));
  for (const f of [apField, an1Field, an2Field]) f.querySelector("input").addEventListener("input", () => draw());
  const placeRadios = h("fieldset", { class: "inline-fieldset" }, h("legend", {}, "A click on the image places"),
    ...[["target", "the target"], ["comp", "a comparison star"], ["check", "a check star"]].map(([v, t]) =>
      h("label", { class: "radio" }, h("input", { type: "radio", name: "place", value: v, checked: v === "target" }), ` ${t}`)));
  const autoComps = h("input", { type: "checkbox", id: "auto-comps", checked: true });
  const objBody = h("tbody", { id: "objects-body" });
  const addRole = h("select", { id: "add-role", "aria-label": "role of the object to add" }, h("option", { value: "target" }, "target"), h("option", { value: "comp" }, "comparison"), h("option", { value: "check" }, "check"));
  const addX = h("input", { id: "add-x", type: "number", step: "0.1", "aria-label": "x (px)", placeholder: "x" });
  const addY = h("input", { id: "add-y", type: "number", step: "0.1", "aria-label": "y (px)", placeholder: "y" });

  function placeMode() {
    return placeRadios.querySelector("input[name=place]:checked").value;
  }

  function nameFor(role) {
    const prefix = { target: "T", comp: "C", check: "K" }[role];
    let k = 1;
    while (nr.objects.some((o) => o.name === `${prefix}${k}`)) k++;
    return `${prefix}${k}`;
  }

  function addObject(role, x, y) {
    nr.objects.push({ role, name: nameFor(role), x: Math.round(x * 100) / 100, y: Math.round(y * 100) / 100 });
    if (role === "comp") autoComps.checked = false;
    if (role === "target" && placeMode() === "target") {
      placeRadios.querySelector("input[value=comp]").checked = true;
    }
    renderObjects();
    draw();
  }

  function renderObjects() {
    objBody.replaceChildren(
      ...nr.objects.map((o, i) => {
        const cell = (key, type) =>
          h("input", { type, value: o[key], step: type === "number" ? "0.01" : null, "aria-label": `${o.name} ${key}`, class: `obj-${key}`,
            onchange: (e) => {
              o[key] = type === "number" ? Number(e.target.value) : e.target.value.trim();
              draw();
            } });
        return h("tr", { dataset: { role: o.role } },
          h("td", {}, o.role === "comp" ? "comparison" : o.role),
          h("td", {}, cell("name", "text")),
          h("td", {}, cell("x", "number")),
          h("td", {}, cell("y", "number")),
          h("td", {}, h("button", { type: "button", class: "link", "aria-label": `remove ${o.name}`, onclick: () => {
            nr.objects.splice(i, 1);
            renderObjects();
            draw();
          } }, "remove")));
      }),
    );
  }

  async function loadReference() {
    refError.replaceChildren();
    const body = nr.mode === "upload" ? { uploads: nr.uploads.map((u) => u.id) } : { paths: [nr.folder] };
    if (!(body.uploads || body.paths).length || (body.paths && !body.paths[0])) return;
    refInfo.textContent = "Finding the reference frame…";
    try {
      const ref = await postJSON(`${API}/reference`, body);
      const path = ref.upload ? `${API}/uploads/${ref.upload}/image.png?bin=${ref.bin}` : `${API}/files/image.png?path=${encodeURIComponent(ref.path)}&bin=${ref.bin}`;
      const blob = await (await api(path)).blob();
      const img = new Image();
      img.src = URL.createObjectURL(blob);
      await img.decode();
      nr.ref = ref;
      nr.image = img;
      const [a, b, c] = suggestApertures(ref.fwhm);
      apField.querySelector("input").value = a;
      an1Field.querySelector("input").value = b;
      an2Field.querySelector("input").value = c;
      const nSat = ref.stars.filter((s) => s.saturated).length;
      refInfo.textContent =
        `Reference frame: ${ref.filename} (the first of ${ref.n_files} exposure(s) by mid-exposure time), ` +
        `${ref.width}×${ref.height} px, ${ref.filter || "no filter"}, FWHM ${fmt(ref.fwhm, 1)} px, ` +
        `${ref.stars.length} stars detected${nSat ? `, ${nSat} saturated (marked ×)` : ""}.`;
      fit();
      refSection.hidden = false;
      calSection.hidden = false;
    } catch (e) {
      refInfo.textContent = "";
      refError.replaceChildren(errorBox("ref-failed", `No reference frame: ${e.message}`));
    }
  }

  // image ↔ canvas: a frame pixel x (0-based, centre at integer x) is at canvas
  // ox + scale·(x + 0.5)/bin; the canvas shows the (binned) picture scaled by `scale`.
  const toCanvas = (x, y) => {
    const { scale, ox, oy } = nr.view;
    const b = nr.ref.bin;
    return [ox + (scale * (x + 0.5)) / b, oy + (scale * (y + 0.5)) / b];
  };
  const toFrame = (cx, cy) => {
    const { scale, ox, oy } = nr.view;
    const b = nr.ref.bin;
    return [((cx - ox) / scale) * b - 0.5, ((cy - oy) / scale) * b - 0.5];
  };

  function fit() {
    if (!nr.image) return;
    const w = wrap.clientWidth || 600;
    const hgt = Math.min(Math.round(w * (nr.image.height / nr.image.width)), Math.round(window.innerHeight * 0.75));
    canvas.width = w;
    canvas.height = hgt;
    const scale = Math.min(w / nr.image.width, hgt / nr.image.height);
    nr.view = { scale, ox: (w - scale * nr.image.width) / 2, oy: (hgt - scale * nr.image.height) / 2 };
    draw();
  }

  function zoom(factor, cx = canvas.width / 2, cy = canvas.height / 2) {
    const v = nr.view;
    const s = Math.min(Math.max(v.scale * factor, 0.05), 40);
    const f = s / v.scale;
    nr.view = { scale: s, ox: cx - (cx - v.ox) * f, oy: cy - (cy - v.oy) * f };
    draw();
  }

  function nearestStar(x, y, within) {
    if (!nr.ref) return null;
    let best = null;
    let bestD = within;
    for (const s of nr.ref.stars) {
      const d = Math.hypot(s.x - x, s.y - y);
      if (d < bestD) {
        best = s;
        bestD = d;
      }
    }
    return best;
  }

  function draw() {
    if (!nr.image) return;
    const ctx = canvas.getContext("2d");
    const { scale, ox, oy } = nr.view;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = scale < 1;
    ctx.drawImage(nr.image, ox, oy, nr.image.width * scale, nr.image.height * scale);
    const pxScale = scale / nr.ref.bin;
    Object.assign(canvas.dataset, { scale: pxScale, ox, oy, bin: nr.ref.bin });
    // saturated stars: a red ×
    ctx.strokeStyle = "#ff4d4d";
    ctx.lineWidth = 1.5;
    for (const s of nr.ref.stars.filter((q) => q.saturated)) {
      const [cx, cy] = toCanvas(s.x, s.y);
      const d = 6;
      ctx.beginPath();
      ctx.moveTo(cx - d, cy - d);
      ctx.lineTo(cx + d, cy + d);
      ctx.moveTo(cx + d, cy - d);
      ctx.lineTo(cx - d, cy + d);
      ctx.stroke();
    }
    const [r, a1, a2] = radii();
    const colours = { target: "#39ff88", comp: "#5cc8ff", check: "#ffc24d" };
    for (const o of nr.objects) {
      const [cx, cy] = toCanvas(o.x, o.y);
      // each circle twice: a dark edge under the colour, visible on sky and on stars alike
      for (const [rad, dash] of [[r, []], [a1, [5, 4]], [a2, [5, 4]]]) {
        if (!(rad > 0)) continue;
        ctx.setLineDash(dash);
        for (const [style, width] of [["rgba(0,0,0,0.8)", 4], [colours[o.role], 2]]) {
          ctx.strokeStyle = style;
          ctx.lineWidth = width;
          ctx.beginPath();
          ctx.arc(cx, cy, rad * pxScale, 0, 2 * Math.PI);
          ctx.stroke();
        }
      }
      ctx.setLineDash([]);
      ctx.font = "bold 14px system-ui, sans-serif";
      const lx = cx + Math.max(a2 * pxScale, 8) * 0.72;
      const ly = cy - Math.max(a2 * pxScale, 8) * 0.72;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0,0,0,0.9)";
      ctx.strokeText(o.name, lx, ly);
      ctx.fillStyle = colours[o.role];
      ctx.fillText(o.name, lx, ly);
    }
    if (nr.hover) {
      const [cx, cy] = toCanvas(nr.hover.x, nr.hover.y);
      ctx.strokeStyle = "#fff";
      ctx.setLineDash([2, 2]);
      ctx.beginPath();
      ctx.arc(cx, cy, Math.max(r * pxScale, 5), 0, 2 * Math.PI);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  // pointer: a drag pans, a click places, the wheel zooms
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.offsetX, y: e.offsetY, ox: nr.view.ox, oy: nr.view.oy, moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!nr.ref) return;
    if (drag) {
      const dx = e.offsetX - drag.x;
      const dy = e.offsetY - drag.y;
      if (Math.hypot(dx, dy) > 4) drag.moved = true;
      if (drag.moved) {
        nr.view.ox = drag.ox + dx;
        nr.view.oy = drag.oy + dy;
        draw();
        return;
      }
    }
    const [x, y] = toFrame(e.offsetX, e.offsetY);
    const star = nearestStar(x, y, Math.max(3, 1.5 * (nr.ref.fwhm || 3)));
    nr.hover = star;
    if (x < -0.5 || y < -0.5 || x > nr.ref.width - 0.5 || y > nr.ref.height - 0.5) cursor.textContent = "—";
    else {
      cursor.textContent = `x ${x.toFixed(1)}, y ${y.toFixed(1)}` +
        (star ? ` · star at (${star.x.toFixed(1)}, ${star.y.toFixed(1)}): FWHM ${fmt(star.fwhm, 2)} px, peak ${fmt(star.peak, 0)} ADU` +
          (star.saturated ? " · SATURATED: not usable for photometry" : "") : " · no star here");
      cursor.classList.toggle("saturated", Boolean(star && star.saturated));
    }
    draw();
  });
  canvas.addEventListener("pointerup", (e) => {
    const d = drag;
    drag = null;
    if (!d || d.moved || !nr.ref) return;
    let [x, y] = toFrame(e.offsetX, e.offsetY);
    const star = nearestStar(x, y, Math.max(3, 1.5 * (nr.ref.fwhm || 3)));
    if (star) [x, y] = [star.x, star.y]; // a click snaps to the star under it
    if (x < 0 || y < 0 || x > nr.ref.width - 1 || y > nr.ref.height - 1) return;
    addObject(placeMode(), x, y);
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoom(e.deltaY < 0 ? 1.25 : 0.8, e.offsetX, e.offsetY);
  }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 40;
    const keys = { "+": () => zoom(1.25), "=": () => zoom(1.25), "-": () => zoom(0.8), "0": fit,
      ArrowLeft: () => { nr.view.ox += step; draw(); }, ArrowRight: () => { nr.view.ox -= step; draw(); },
      ArrowUp: () => { nr.view.oy += step; draw(); }, ArrowDown: () => { nr.view.oy -= step; draw(); } };
    if (keys[e.key]) {
      e.preventDefault();
      keys[e.key]();
    }
  });
  window.addEventListener("resize", () => nr.image && fit());

  const refSection = h(
    "section",
    { class: "card", id: "step-reference", hidden: !nr.ref, "aria-labelledby": "h-ref" },
    h("h3", { id: "h-ref" }, "2. Target and comparison stars"),
    h("div", { class: "toolbar" },
      h("button", { type: "button", onclick: () => zoom(1.25), "aria-label": "zoom in" }, "+"),
      h("button", { type: "button", onclick: () => zoom(0.8), "aria-label": "zoom out" }, "−"),
      h("button", { type: "button", onclick: fit }, "Fit"),
      placeRadios,
      h("label", { class: "radio" }, autoComps, " Choose comparison stars automatically")),
    wrap,
    cursor,
    h("p", { class: "help" }, "Drag to pan, wheel or +/− to zoom (keys: + − 0 and arrows when the image has focus). A click snaps to the star under it. Circles: aperture (solid), sky annulus (dashed)."),
    h("div", { class: "fields" }, apField, an1Field, an2Field),
    h("div", { class: "table-wrap" }, h("table", { id: "objects" },
      h("caption", {}, "Objects (0-based pixels on the reference frame)"),
      h("thead", {}, h("tr", {}, ["Role", "Name", "x (px)", "y (px)", ""].map((t) => h("th", { scope: "col" }, t)))),
      objBody)),
    h("div", { class: "inline add-object" }, addRole, addX, addY,
      h("button", { type: "button", onclick: () => {
        if (addX.value === "" || addY.value === "") return;
        addObject(addRole.value, Number(addX.value), Number(addY.value));
      } }, "Add by position")),
  );

  // --- step 3: calibration, site, start
  const calInput = (kind, label) =>
    h("div", { class: "field" }, h("label", { for: `cal-${kind}` }, label),
      h("input", { id: `cal-${kind}`, type: "file", multiple: true, accept: ".fits,.fit,.fts,.gz,.fz" }));
  const calPathInput = (kind) =>
    h("div", { class: "field", hidden: nr.mode !== "folder" }, h("label", { for: `calpath-${kind}` }, `${kind} frames on the server (folder or glob)`),
      h("input", { id: `calpath-${kind}`, type: "text" }));
  const calPaths = ["bias", "dark", "flat"].map(calPathInput);
  const text = (id, label, attrs = {}, help = "") =>
    h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, type: "text", ...attrs, "aria-describedby": help ? `${id}-help` : null }), help ? h("p", { id: `${id}-help`, class: "help" }, help) : "");
  const calList = h("ul", { id: "cal-list", class: "files" });
  const startError = h("div", { id: "start-error" });
  const startButton = h("button", { type: "submit", class: "primary", id: "start" }, "Start the run");
  const calSection = h(
    "section",
    { class: "card", id: "step-start", hidden: !nr.ref, "aria-labelledby": "h-start" },
    h("h3", { id: "h-start" }, "3. Calibration, site and start"),
    h("fieldset", {}, h("legend", {}, "Calibration frames (optional)"),
      h("div", { class: "fields" }, calInput("bias", "Bias frames"), calInput("dark", "Dark frames"), calInput("flat", "Flat frames")),
      h("div", { class: "fields" }, ...calPaths), calList),
    h("fieldset", {}, h("legend", {}, "Site and observer"),
      h("div", { class: "fields" },
        text("site-lat", "Latitude (deg, north +)", { inputmode: "decimal" }),
        text("site-lon", "Longitude (deg, east +)", { inputmode: "decimal" }),
        text("site-elev", "Elevation (m)", { inputmode: "decimal" }),
        text("obscode", "AAVSO observer code", { autocomplete: "off" }, "Optional; with it, the AAVSO reports are written too."),
        text("run-name", "Name of the run", { placeholder: "e.g. WASP-12 2026-11-22" }))),
    h("p", { class: "help" }, "Without a site the header's is used. Every export format is written: ", EXPORTS.join(", "), "."),
    startButton,
    startError,
  );

  function siteValue() {
    const vals = ["site-lat", "site-lon", "site-elev"].map((id) => document.getElementById(id).value.trim());
    if (vals.every((v) => v === "")) return undefined;
    if (vals.some((v) => v === "" || Number.isNaN(Number(v)))) {
      throw new ApiError("site: give latitude, longitude and elevation as numbers (or leave all three empty)");
    }
    return vals.map(Number);
  }

  async function start(ev) {
    ev.preventDefault();
    startError.replaceChildren();
    startButton.disabled = true;
    try {
      if (!nr.objects.some((o) => o.role === "target")) {
        throw new ApiError("no target: click on the target in the image (or add it by position)");
      }
      const [r, a1, a2] = radii();
      if (!(r > 0 && a1 > r && a2 > a1)) {
        throw new ApiError(`apertures: give radius < annulus inner < annulus outer (now ${r}, ${a1}, ${a2} px)`);
      }
      const obscode = document.getElementById("obscode").value.trim();
      const spec = (o) => ({ name: o.name, x: o.x, y: o.y });
      const settings = {
        targets: nr.objects.filter((o) => o.role === "target").map(spec),
        checks: nr.objects.filter((o) => o.role === "check").map(spec),
        aperture: r,
        annulus: [a1, a2],
        exports: obscode ? [...EXPORTS, ...AAVSO_EXPORTS] : EXPORTS,
      };
      if (!autoComps.checked) settings.comps = nr.objects.filter((o) => o.role === "comp").map(spec);
      const site = siteValue();
      if (site) settings.site = site;
      if (obscode) settings.observer_code = obscode;
      const body = { name: document.getElementById("run-name").value.trim(), settings };
      body.exposures = nr.mode === "upload" ? { uploads: nr.uploads.map((u) => u.id) } : { paths: [nr.folder] };
      for (const kind of ["bias", "dark", "flat"]) {
        const files = [...document.getElementById(`cal-${kind}`).files];
        const set = { uploads: [], paths: [] };
        if (files.length) {
          const items = await uploadAll(files, calList, kind);
          const bad = items.filter((i) => i.error);
          if (bad.length) throw new ApiError(`${kind} frames not uploaded: ${bad.map((b) => `${b.file.name}: ${b.error}`).join("; ")}`);
          set.uploads = items.map((i) => i.id);
        }
        const p = document.getElementById(`calpath-${kind}`).value.trim();
        if (p) set.paths = [p];
        if (set.uploads.length || set.paths.length) body[kind] = set;
      }
      const run = await postJSON(RES, body);
      state.newRun = null;
      location.hash = `#/runs/${run.id}`;
    } catch (e) {
      startError.replaceChildren(errorBox("start-failed", `The run was not started: ${e.message}`));
    } finally {
      startButton.disabled = false;
    }
  }

  show(
    h("h2", {}, "New run"),
    h("section", { class: "card", id: "step-exposures", "aria-labelledby": "h-exp" },
      h("h3", { id: "h-exp" }, "1. Exposures"),
      h("fieldset", { class: "inline-fieldset" }, h("legend", {}, "Exposures come from"),
        modeRadio("upload", "files uploaded from this computer"), modeRadio("folder", "a folder on the server")),
      uploadBox, folderBox, refInfo, refError),
    h("form", { id: "new-run-form", onsubmit: start, novalidate: true }, refSection, calSection),
  );
  if (nr.ref) {
    fit();
    renderObjects();
  }
}

// ------------------------------------------------------------------------------------ a run

async function viewRun(id) {
  const head = h("div", { class: "row-between" }, h("h2", { id: "run-title" }, "Run"), h("span", { id: "run-status" }));
  const meta = h("p", { id: "run-meta", class: "help" });
  const live = h("section", { class: "card", id: "run-live", hidden: true, "aria-labelledby": "h-live" },
    h("h3", { id: "h-live" }, "Progress"),
    h("progress", { id: "run-progress", max: 1, value: 0, "aria-describedby": "run-progress-text" }),
    h("p", { id: "run-progress-text", role: "status" }),
    h("div", { id: "rejected" }),
    h("button", { type: "button", id: "cancel", onclick: async () => {
      try { await api(`${RES}/${id}`, { method: "DELETE" }); } catch (e) { banner(`Not cancelled: ${e.message}`, "error"); }
    } }, "Cancel the run"));
  const failed = h("div", { id: "run-failed" });
  const results = h("div", { id: "run-results" });
  show(head, meta, failed, live, results);

  let shown = false;
  every(1000, async () => {
    if (shown) return;
    const run = await getJSON(`${RES}/${id}`);
    const prog = await getJSON(`${RES}/${id}/progress`);
    document.getElementById("run-title").textContent = run.name;
    document.getElementById("run-status").replaceChildren(statusBadge(run.status));
    meta.textContent = `Created ${when(run.created)} · started ${when(run.started)} · finished ${when(run.finished)} · ${run.n_exposures} exposure(s)`;
    const bar = document.getElementById("run-progress");
    bar.max = prog.total || 1;
    bar.value = prog.done;
    document.getElementById("run-progress-text").textContent =
      run.status === "pending" ? "Waiting for a worker…" : `${prog.done} of ${prog.total} frames measured, ${prog.rejected.length} rejected.`;
    document.getElementById("rejected").replaceChildren(rejectedTable(prog.rejected, "rejected-live"));
    live.hidden = !["pending", "running"].includes(run.status);
    if (run.status === "failed") {
      failed.replaceChildren(errorBox("run-error", `This run failed: ${run.reason || "no reason recorded"}`));
      if (prog.rejected.length) failed.append(rejectedTable(prog.rejected, "rejected-failed"));
      shown = true;
    } else if (run.status === "done") {
      shown = true;
      await showResults(run, prog, results);
    }
  });
}

function rejectedTable(rejected, id = "rejected-table") {
  if (!rejected.length) return h("p", { class: "help" }, "No frame rejected.");
  return h("div", { class: "table-wrap" }, h("table", { id },
    h("caption", {}, `Frames rejected (${rejected.length})`),
    h("thead", {}, h("tr", {}, ["Frame", "File", "Why"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rejected.map((r) => h("tr", { dataset: { frame: r.frame, file: r.file, reason: r.reason } }, h("td", {}, r.frame), h("td", {}, r.file), h("td", {}, r.reason || r.status))))));
}

async function allResults(id, params = "") {
  const items = [];
  for (let offset = 0; offset < 200_000; offset += 10_000) {
    const page = await getJSON(`${RES}/${id}/results?limit=10000&offset=${offset}${params}`);
    items.push(...page.items);
    if (offset + 10_000 >= page.total) break;
  }
  return items;
}

async function showResults(run, prog, box) {
  const id = run.id;
  const objects = await getJSON(`${RES}/${id}/objects`);
  const curves = objects.filter((o) => o.role === "target" || o.role === "check");
  const comps = objects.filter((o) => o.role === "comp");
  const picker = h("select", { id: "curve-object" }, curves.map((o) => h("option", { value: o.name }, `${o.name} (${o.role})`)));
  const chartBox = h("div", { id: "lc-chart-box" });
  const cut = h("div", { id: "cutout-box", "aria-live": "polite" }, h("p", { class: "help" }, "Click a point (or “show” in the table) to see that frame."));
  const tableBox = h("div", { id: "lc-table-box" });
  const checkBox = h("div", { id: "check-box" });

  async function showCurve(name) {
    const text = await (await api(`${RES}/${id}/lightcurves/${encodeURIComponent(name)}?format=csv`)).text();
    const { rows } = parseCSV(text);
    const rowsOf = await allResults(id, `&object=${encodeURIComponent(name)}`);
    const byFrame = new Map(rowsOf.map((r) => [r.frame, r]));
    const t0 = Math.floor(Math.min(...rows.map((r) => num(r.BJD_TDB)).filter(Number.isFinite)));
    const points = rows.map((r, frame) => ({
      frame,
      x: num(r.BJD_TDB) - t0,
      y: num(r.rel_flux),
      err: num(r.rel_flux_err),
      file: r.file,
      bjd: r.BJD_TDB,
      valid: r.valid === "True" || r.valid === "true" || r.valid === "1",
      status: r.status,
    }));
    const good = points.filter((p) => p.valid && Number.isFinite(p.y));
    const showFrame = (p) => showCutout(id, p, byFrame.get(p.frame), objects, cut);
    chartBox.replaceChildren(
      lineChart({
        id: "lc-chart",
        title: `Light curve of ${name}`,
        xLabel: `BJD_TDB − ${t0}`,
        yLabel: "relative flux",
        series: [{ name, points: good, errors: true, className: "main" }],
        zoomable: true,
        tooltip: (p) => `frame ${p.frame} · ${p.file} · BJD_TDB ${p.bjd} · rel. flux ${fmt(p.y, 5)} ± ${fmt(p.err, 5)}`,
        onClick: showFrame,
      }),
    );
    tableBox.replaceChildren(
      h("details", { id: "lc-details" },
        h("summary", {}, `Light curve table of ${name} (${rows.length} frames, ${good.length} valid)`),
        h("div", { class: "table-wrap tall" }, h("table", { id: "lc-table", dataset: { object: name } },
          h("thead", {}, h("tr", {}, ["Frame", "File", "BJD_TDB", "rel. flux", "error", "status", ""].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, points.map((p) => h("tr", { dataset: { frame: p.frame, bjd: rows[p.frame].BJD_TDB, flux: rows[p.frame].rel_flux, err: rows[p.frame].rel_flux_err } },
            h("td", {}, p.frame), h("td", {}, p.file), h("td", {}, rows[p.frame].BJD_TDB), h("td", {}, rows[p.frame].rel_flux), h("td", {}, rows[p.frame].rel_flux_err), h("td", {}, p.status),
            h("td", {}, h("button", { type: "button", class: "link", onclick: () => showFrame(p), "aria-label": `show frame ${p.frame}` }, "show")))))))),
    );
    return [t0, points.filter((p) => Number.isFinite(p.x))];
  }
  picker.addEventListener("change", () => showCurve(picker.value));

  // comparison stars: each one's flux over its median, and the check stars' curves
  async function showStars(t0, times) {
    const rows = await allResults(id);
    // the time of each frame, from the light curve (result rows of comparison stars carry none)
    const xOf = new Map(times.map((p) => [p.frame, p.x]));
    const shown = comps.filter((c) => c.used).sort((a, b) => (b.weight || 0) - (a.weight || 0)).slice(0, 8);
    const series = shown.map((c) => {
      const mine = rows.filter((r) => r.object === c.name && r.status === "ok" && r.flux > 0 && xOf.has(r.frame));
      const med = median(mine.map((r) => r.flux));
      return { name: c.name, className: "comp", points: mine.map((r) => ({ frame: r.frame, x: xOf.get(r.frame), y: r.flux / med, file: r.file })) };
    });
    const parts = [];
    if (series.length) {
      parts.push(lineChart({ id: "comp-chart", title: `Comparison stars in the ensemble (${series.length} of highest weight): flux / its median — clouds and airmass are common to all`, xLabel: `BJD_TDB − ${t0}`, yLabel: "flux / median", series, tooltip: (p, s) => `${s.name} · frame ${p.frame} · ${p.file} · ${fmt(p.y, 4)}` }));
    }
    for (const c of curves.filter((o) => o.role === "check")) {
      const { rows: lc } = parseCSV(await (await api(`${RES}/${id}/lightcurves/${encodeURIComponent(c.name)}?format=csv`)).text());
      const pts = lc.map((r, frame) => ({ frame, x: num(r.BJD_TDB) - t0, y: num(r.rel_flux), err: num(r.rel_flux_err), file: r.file, valid: r.valid === "True" })).filter((p) => p.valid && Number.isFinite(p.y));
      parts.push(lineChart({ id: `check-chart-${c.name}`, title: `Check star ${c.name}: relative flux (rms ${fmt(c.rms, 5)}, expected ${fmt(c.expected, 5)})`, xLabel: `BJD_TDB − ${t0}`, yLabel: "relative flux", series: [{ name: c.name, points: pts, errors: true, className: "check" }], tooltip: (p) => `frame ${p.frame} · ${p.file} · ${fmt(p.y, 5)} ± ${fmt(p.err, 5)}` }));
    }
    checkBox.replaceChildren(...parts);
  }

  const ensemble = h("div", { class: "table-wrap" }, h("table", { id: "ensemble-table" },
    h("caption", {}, `Ensemble of comparison stars (Everett & Howell 2001): ${comps.filter((c) => c.used).length} used of ${comps.length}`),
    h("thead", {}, h("tr", {}, ["Star", "x", "y", "Used", "Weight", "Scatter (mag)", "Expected (mag)", "Why rejected"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, comps.map((c) => h("tr", { class: c.used ? "" : "rejected-row", dataset: { name: c.name } },
      h("td", {}, c.name), h("td", {}, fmt(c.x, 1)), h("td", {}, fmt(c.y, 1)), h("td", {}, c.used ? "yes" : "no"),
      h("td", {}, fmt(c.weight, 3)), h("td", {}, fmt(c.rms, 5)), h("td", {}, fmt(c.expected, 5)), h("td", {}, c.reason || ""))))));

  const downloads = h("ul", { id: "downloads", class: "downloads" });
  for (const o of curves) {
    downloads.append(downloadButton(`Light curve ${o.name} (CSV)`, `${RES}/${id}/lightcurves/${o.name}?format=csv`, `lightcurve_${o.name}.csv`, `dl-lc-${o.name}-csv`));
    downloads.append(downloadButton(`Light curve ${o.name} (ECSV)`, `${RES}/${id}/lightcurves/${o.name}`, `lightcurve_${o.name}.ecsv`, `dl-lc-${o.name}-ecsv`));
  }
  downloads.append(downloadButton("All results (CSV)", `${RES}/${id}/results?format=csv`, `results_${id}.csv`, "dl-results-csv"));
  downloads.append(downloadButton("All results (ECSV)", `${RES}/${id}/results?format=ecsv`, `results_${id}.ecsv`, "dl-results-ecsv"));
  try {
    for (const f of await getJSON(`${RES}/${id}/exports`)) {
      downloads.append(downloadButton(`Export: ${f.name} (${(f.size_bytes / 1024).toFixed(0)} kB)`, `${RES}/${id}/exports/${encodeURIComponent(f.name)}`, f.name, `dl-export-${f.name.replace(/[^A-Za-z0-9_-]/g, "_")}`));
    }
  } catch (e) {
    downloads.append(h("li", { class: "error-text" }, `exports not listed: ${e.message}`));
  }
  downloads.append(downloadButton("Report (HTML)", `${RES}/${id}/report.html`, `report_${id}.html`, "dl-report"));
  downloads.append(downloadButton("Bundle (zip: settings, masters, products)", `${RES}/${id}/bundle`, `tsphot-bundle-${id}.zip`, "dl-bundle"));

  const s = run.summary || {};
  box.replaceChildren(
    h("section", { class: "card", "aria-labelledby": "h-lc" },
      h("div", { class: "row-between" }, h("h3", { id: "h-lc" }, "Light curve"), h("label", {}, "Object ", picker)),
      h("p", { class: "help" }, `${run.n_exposures_ok} of ${run.n_exposures} frames measured; aperture ${fmt(run.aperture_radius, 2)} px, annulus ${fmt(run.annulus_inner, 1)}–${fmt(run.annulus_outer, 1)} px. Drag across the plot to zoom; hover for a point's frame, time and error.`),
      chartBox, cut, tableBox, rejectedTable(prog.rejected)),
    h("section", { class: "card", "aria-labelledby": "h-stars" }, h("h3", { id: "h-stars" }, "Comparison and check stars"), checkBox, ensemble),
    h("section", { class: "card", "aria-labelledby": "h-plots" }, h("h3", { id: "h-plots" }, "Noise budget and conditions"),
      h("div", { class: "plots" },
        h("figure", {}, apiImage(`${RES}/${id}/plots/noise_budget.png`, "noise budget: each term of the noise model against the achieved scatter", { id: "plot-noise" }), h("figcaption", {}, "Noise budget")),
        h("figure", {}, apiImage(`${RES}/${id}/plots/conditions.png`, "conditions through the night: airmass, FWHM, sky, transparency", { id: "plot-conditions" }), h("figcaption", {}, "Conditions")))),
    h("section", { class: "card", "aria-labelledby": "h-dl" }, h("h3", { id: "h-dl" }, "Downloads"), downloads),
    s && Object.keys(s).length ? h("details", { class: "card" }, h("summary", {}, "Run summary (JSON)"), h("pre", {}, JSON.stringify(s, null, 2))) : "",
  );
  if (curves.length) {
    const [t0, times] = await showCurve(curves[0].name);
    await showStars(t0, times);
  }
  box.dataset.ready = "true";
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const n = s.length;
  return n ? (n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2) : NaN;
}

/** One frame's cut-out around the object, its aperture and annulus drawn over it (SVG). */
async function showCutout(id, p, row, objects, box) {
  const half = row && row.annulus_outer ? Math.min(Math.ceil(row.annulus_outer + 6), 256) : 32;
  if (!row || !(Number.isFinite(row.x) && Number.isFinite(row.y))) {
    box.replaceChildren(h("p", { class: "help" }, `Frame ${p.frame} (${p.file}): no position measured (${row ? row.reason || row.status : "no record"}).`));
    return;
  }
  box.replaceChildren(h("p", { class: "help" }, `Loading frame ${p.frame}…`));
  try {
    const r = await api(`${RES}/${id}/frames/${p.frame}/cutout.png?x=${row.x}&y=${row.y}&half=${half}`);
    const x0 = Number(r.headers.get("X-Cutout-X0"));
    const y0 = Number(r.headers.get("X-Cutout-Y0"));
    const url = URL.createObjectURL(await r.blob());
    const img = new Image();
    img.src = url;
    await img.decode();
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${img.width} ${img.height}`);
    svg.setAttribute("class", "cutout");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `frame ${p.frame} around ${row.object}: aperture ${fmt(row.aperture_radius, 1)} px, annulus ${fmt(row.annulus_inner, 1)}–${fmt(row.annulus_outer, 1)} px`);
    const im = document.createElementNS(ns, "image");
    im.setAttribute("href", url);
    im.setAttribute("width", img.width);
    im.setAttribute("height", img.height);
    svg.append(im);
    const cx = row.x - x0 + 0.5;
    const cy = row.y - y0 + 0.5;
    for (const [rad, cls] of [[row.aperture_radius, "ap"], [row.annulus_inner, "an"], [row.annulus_outer, "an"]]) {
      if (!(rad > 0)) continue;
      const c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", cx);
      c.setAttribute("cy", cy);
      c.setAttribute("r", rad);
      c.setAttribute("class", cls);
      svg.append(c);
    }
    box.replaceChildren(h("figure", { id: "cutout", dataset: { frame: p.frame } }, svg,
      h("figcaption", {}, `Frame ${p.frame}: ${p.file}, BJD_TDB ${p.bjd}; ${row.object} at (${fmt(row.x, 2)}, ${fmt(row.y, 2)}) px, peak ${fmt(row.peak, 0)} ADU${row.saturated ? " (SATURATED)" : ""}, status ${row.status}${row.reason ? ": " + row.reason : ""}.`)));
  } catch (e) {
    box.replaceChildren(errorBox("cutout-error", `Frame ${p.frame} not shown: ${e.message}`));
  }
}

// ------------------------------------------------------------------------------------ routing

function route() {
  stopTimers();
  const hash = location.hash || "#/";
  if (!state.token) return viewSignin();
  document.getElementById("signout").hidden = false;
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === hash);
  }
  if (hash === "#/new") return viewNew();
  const m = hash.match(/^#\/runs\/([0-9a-fA-F-]{36})$/);
  if (m) return viewRun(m[1]);
  return viewRuns();
}

document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
