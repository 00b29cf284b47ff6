// refind's pages: keys on the results grid, the photo picker (drop, paste, a box on the
// photo), the track page's frames, the cameras' live counters and the alert stream.
// Plain DOM code: no framework, nothing loaded from elsewhere.
"use strict";

function typing(el) {
  return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
}

// "/" focuses the search box; arrows move between result cards; Enter opens (a link's own).
document.addEventListener("keydown", (ev) => {
  if (ev.key === "/" && !typing(document.activeElement)) {
    const q = document.getElementById("q");
    if (q) { ev.preventDefault(); q.focus(); q.select(); }
    return;
  }
  const keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"];
  if (!keys.includes(ev.key) || typing(document.activeElement)) return;
  const cards = Array.from(document.querySelectorAll("#results .card a.open"));
  if (!cards.length) return;
  let i = cards.indexOf(document.activeElement);
  if (i < 0) { cards[0].focus(); ev.preventDefault(); return; }
  const top = (el) => el.getBoundingClientRect().top;
  const perRow = cards.filter((c) => Math.abs(top(c) - top(cards[0])) < 4).length || 1;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[ev.key];
  i = Math.max(0, Math.min(cards.length - 1, i + step));
  cards[i].focus();
  cards[i].scrollIntoView({ block: "nearest" });
  ev.preventDefault();
});

// The photo picker: a file from the input, a drop or a paste; a box dragged on the preview.
(function photoPicker() {
  const input = document.getElementById("image");
  const drop = document.getElementById("drop");
  if (!input || !drop) return;
  const picker = document.getElementById("picker");
  const preview = document.getElementById("preview");
  const stage = document.getElementById("stage");
  const box = document.getElementById("box");
  const field = document.getElementById("box-field");
  let url = null;

  function show(file) {
    if (!file || !file.type.startsWith("image/")) return;
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(file);
    preview.src = url;
    picker.hidden = false;
    box.hidden = true;
    field.value = "";
  }
  function take(file) {  // put a dropped or pasted file into the form's file input
    const dt = new DataTransfer();
    dt.items.add(file);
    input.files = dt.files;
    show(file);
  }
  input.addEventListener("change", () => show(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => {
    ev.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer.files[0];
    if (file) take(file);
  });
  document.addEventListener("paste", (ev) => {
    const item = Array.from(ev.clipboardData.items).find((it) => it.type.startsWith("image/"));
    if (!item) return;
    const details = drop.closest("details");
    if (details) details.open = true;
    take(item.getAsFile());
  });

  let start = null;
  function point(ev) {
    const r = preview.getBoundingClientRect();
    return [Math.max(0, Math.min(r.width, ev.clientX - r.left)),
            Math.max(0, Math.min(r.height, ev.clientY - r.top))];
  }
  stage.addEventListener("pointerdown", (ev) => {
    start = point(ev); stage.setPointerCapture(ev.pointerId); ev.preventDefault();
  });
  stage.addEventListener("pointermove", (ev) => {
    if (!start) return;
    const [x, y] = point(ev);
    Object.assign(box.style, {
      left: Math.min(x, start[0]) + "px", top: Math.min(y, start[1]) + "px",
      width: Math.abs(x - start[0]) + "px", height: Math.abs(y - start[1]) + "px",
    });
    box.hidden = false;
  });
  stage.addEventListener("pointerup", (ev) => {
    if (!start) return;
    const [x, y] = point(ev);
    const r = preview.getBoundingClientRect();
    const sx = preview.naturalWidth / r.width, sy = preview.naturalHeight / r.height;
    const x1 = Math.min(x, start[0]) * sx, x2 = Math.max(x, start[0]) * sx;
    const y1 = Math.min(y, start[1]) * sy, y2 = Math.max(y, start[1]) * sy;
    start = null;
    if (x2 - x1 < 4 || y2 - y1 < 4) { box.hidden = true; field.value = ""; return; }
    field.value = [x1, y1, x2, y2].map((v) => v.toFixed(1)).join(",");
  });
})();

// The track page: a crop in the strip shows the frame it was taken from.
document.querySelectorAll(".strip button.crop").forEach((button) => {
  button.addEventListener("click", () => {
    const context = document.getElementById("context");
    if (context && button.dataset.context) context.src = button.dataset.context;
    document.querySelectorAll(".strip button.crop").forEach((b) => b.classList.remove("shown"));
    button.classList.add("shown");
  });
});

// The cameras page: live counters every 2 s (frames per second from frames_in deltas).
(function cameras() {
  const tiles = document.getElementById("tiles");
  if (!tiles) return;
  const last = {};
  async function poll() {
    try {
      const res = await fetch("/v1/cameras/status", { credentials: "same-origin" });
      if (!res.ok) return;
      const body = await res.json();
      for (const cam of body.cameras) {
        const tile = tiles.querySelector(`[data-camera="${CSS.escape(cam.camera)}"]`);
        if (!tile) continue;
        const set = (cls, text) => { const el = tile.querySelector(cls); if (el) el.textContent = text; };
        if (cam.state) {
          const state = tile.querySelector(".state");
          state.textContent = cam.state;
          state.className = "state state-" + cam.state;
        }
        if (cam.rate_fps !== undefined) {
          set(".fps", Number(cam.rate_fps).toFixed(1));
        } else if (cam.frames_in !== undefined) {
          const prev = last[cam.camera];
          if (prev && body.now > prev.t) set(".fps", ((cam.frames_in - prev.n) / (body.now - prev.t)).toFixed(1));
          last[cam.camera] = { n: cam.frames_in, t: body.now };
        }
        if (cam.frames_dropped !== undefined) set(".drops", String(cam.frames_dropped));
        if (cam.freshness_s !== undefined && cam.freshness_s !== null) set(".freshness", Number(cam.freshness_s).toFixed(2) + " s");
        if (cam.updated !== undefined) set(".updated", Math.max(0, body.now - cam.updated).toFixed(1) + " s ago");
      }
    } catch (err) { /* the next poll tries again */ }
  }
  if (tiles.dataset.live === "yes") { poll(); setInterval(poll, 2000); }
})();

// The alerts page: server-sent events, newest first.
(function alerts() {
  const list = document.getElementById("alerts");
  if (!list) return;
  const state = document.getElementById("alert-state");
  const none = document.getElementById("no-alerts");
  const source = new EventSource("/v1/alerts/stream");
  source.addEventListener("hello", () => { state.textContent = "connected"; });
  source.addEventListener("error", () => { state.textContent = "reconnecting…"; });
  source.addEventListener("alert", (ev) => {
    const a = JSON.parse(ev.data);
    // shown already (in the page as it was served, or sent twice: delivery is at least once)
    if (a.event_id && [...list.children].some((li) => li.dataset.event === a.event_id)) return;
    const li = document.createElement("li");
    li.className = "alert";
    if (a.event_id) li.dataset.event = a.event_id;
    if (a.thumbnail) {
      const img = document.createElement("img");
      img.src = "/v1/crops/" + a.thumbnail.split("/").map(encodeURIComponent).join("/");
      img.alt = `The crop that matched ${a.watch}`;
      li.append(img);
    }
    const link = document.createElement("a");
    link.href = `/tracks/${encodeURIComponent(a.camera)}/${a.track_id}`;
    link.textContent = `${a.watch || "watch"}: ${a.camera} track ${a.track_id}`;
    const person = a.global_id ? ` · person ${a.global_id}` : "";
    const why = document.createElement("span");
    why.className = "muted";
    why.textContent = (a.reasons || []).join("; ");
    li.append(link, document.createTextNode(
      ` · score ${Number(a.score || 0).toFixed(2)}${person} · just now `), why);
    list.prepend(li);
    none.hidden = true;
  });
})();

// "Back to results" returns to the search that led here, when there was one.
(function back() {
  const link = document.getElementById("back");
  if (!link || !document.referrer) return;
  const from = new URL(document.referrer);
  if (from.origin === location.origin && from.pathname === "/") link.href = from.href;
})();
