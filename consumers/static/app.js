// The live page: one EventSource on /v1/events; each event lists the streams whose prediction changed.
"use strict";
const rows = new Map();   // stream id -> latest row
const body = document.querySelector("#streams tbody");
const status = document.getElementById("status");
const search = document.getElementById("search");
const colours = {};
function colour(label) {
  if (!colours[label]) {
    const known = getComputedStyle(document.documentElement).getPropertyValue("--" + label).trim();
    colours[label] = known || ["#8c564b", "#e377c2", "#17becf", "#bcbd22"][Object.keys(colours).length % 4];
    const legend = document.getElementById("legend");
    const swatch = document.createElement("span");
    swatch.style.background = colours[label];
    legend.append(swatch, document.createTextNode(label));
  }
  return colours[label];
}
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
function render() {
  const q = search.value.trim().toLowerCase();
  const shown = [...rows.values()].filter(r => !q || r.stream_id.toLowerCase().includes(q))
                                  .sort((a, b) => a.stream_id.localeCompare(b.stream_id));
  body.replaceChildren(...shown.map(r => {
    const tr = document.createElement("tr");
    tr.dataset.stream = r.stream_id;
    const label = cell(r.label, "label"); label.style.color = colour(r.label);
    const timeline = document.createElement("td"); timeline.className = "hide-narrow";
    const strip = document.createElement("div"); strip.className = "timeline";
    strip.setAttribute("aria-label", "recent labels: " + r.recent.join(", "));
    for (const lab of r.recent) { const s = document.createElement("span"); s.style.background = colour(lab); s.title = lab; strip.append(s); }
    timeline.append(strip);
    const level = document.createElement("td"); level.className = "hide-narrow";
    const meter = document.createElement("div"); meter.className = "meter";
    const fill = document.createElement("div");
    const db = r.rms_dbfs == null ? -120 : r.rms_dbfs;
    fill.style.width = Math.max(0, Math.min(100, (db + 60) / 60 * 100)) + "%";
    meter.append(fill); level.append(meter);
    tr.append(cell(r.stream_id), label, cell(r.confidence.toFixed(2), "num"), timeline, level,
              cell(r.rms_dbfs == null ? "-" : r.rms_dbfs.toFixed(1), "num"),
              cell(String(r.windows), "num hide-narrow"), cell(String(r.gaps), "num hide-narrow"),
              cell(String(r.dead_letters), "num hide-narrow"), cell(r.music || "", "hide-narrow"));
    return tr;
  }));
  status.textContent = `${rows.size} stream(s)` + (q ? `, ${shown.length} shown` : "") + ", live";
}
search.addEventListener("input", render);
const events = new EventSource("/v1/events");
events.addEventListener("streams", e => { for (const r of JSON.parse(e.data)) rows.set(r.stream_id, r); render(); });
// newest first, the last 20: one line per item, "stream start-end s" then its text
function prependItems(list, items, text) {
  for (const it of items) {
    const li = document.createElement("li");
    li.dataset.id = it.id;
    const who = document.createElement("span"); who.className = "who";
    who.textContent = `${it.stream_id} ${it.start_s.toFixed(1)}-${it.end_s.toFixed(1)} s`;
    li.append(who, document.createTextNode(" " + text(it)));
    list.prepend(li);
  }
  while (list.children.length > 20) list.lastElementChild.remove();
}
const captions = document.getElementById("transcripts");  // speech to text
events.addEventListener("transcripts", e => prependItems(captions, JSON.parse(e.data), c => c.text));
const heard = document.getElementById("detections");  // BirdNET: audiostream detect
events.addEventListener("detections", e => prependItems(heard, JSON.parse(e.data), d =>
  (d.scientific_name ? `${d.name} (${d.scientific_name})` : d.name) + ` ${d.confidence.toFixed(2)}`
  + (d.more ? ` +${d.more} more` : "")));
events.addEventListener("error", e => {
  if (e.data) status.textContent = JSON.parse(e.data);
  else status.textContent = "connection lost; reconnecting ...";
});
