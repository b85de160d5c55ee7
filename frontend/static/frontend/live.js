// The live view of a network page: one WebSocket in envelope mode, resumed with ?since= after
// every drop so nothing published meanwhile is missed, plus a street map (traffic networks),
// a time-series chart and a stream of recent messages. No dependency: SVG drawn by hand.
//
// DOM contract (browser tests rely on it): #live-view[data-network], #live-status[data-state]
// in {connecting, live, reconnecting, not-entitled, closed}, and #live-messages > .live-message
// [data-seq] whose text holds the compact JSON of data (as published), newest first.

const MAX_MESSAGES = 50;
const MAX_POINTS = 120;
const DEFAULT_SERIES = 4;
const RENDER_EVERY_MS = 250;
const PALETTE = ["#4b4fd8", "#e4572e", "#17a398", "#f3a712", "#a23b72", "#2e86ab", "#6a994e", "#8d6a9f"];
const LABELS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  "not-entitled": "Not entitled — subscribe to listen",
  closed: "Closed",
};
const SVG_NS = "http://www.w3.org/2000/svg";

const root = document.getElementById("live-view");
if (root) {
  const view = new LiveView(root, readJSON("live-topology"));
  new Connection(root, view).start();
}

function readJSON(id) {
  const element = document.getElementById(id);
  if (!element) return null;
  try { return JSON.parse(element.textContent); } catch (e) { return null; }
}

function svg(name, attrs = {}, parent = null) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, value);
  if (parent) parent.appendChild(element);
  return element;
}

// --- Connection -------------------------------------------------------------------------------

function Connection(root, view) {
  const slug = root.dataset.network;
  const paid = root.dataset.paid === "true";
  const signedIn = root.dataset.signedIn === "true";
  const status = document.getElementById("live-status");
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  let socket = null;
  let lastSeq = null;
  let lastEpoch = null; // the numbering lastSeq belongs to (a reset frame moves it)
  let attempt = 0;
  let authFailures = 0;
  let token = null;
  let tokenExpiresAt = 0;
  let timer = null;
  let everLive = false;

  function setState(state, label) {
    status.dataset.state = state;
    status.textContent = label || LABELS[state];
  }

  async function entitlementToken() {
    if (token && Date.now() < tokenExpiresAt - 30000) return token;
    token = null;
    if (!signedIn) return null;
    const response = await fetch(root.dataset.tokenUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": root.dataset.csrf, Accept: "application/json" },
    });
    if (response.status === 401 || response.status === 403) return null;
    if (!response.ok) throw new Error(`entitlement token: HTTP ${response.status}`);
    const body = await response.json();
    if (!(body.networks || []).includes(slug)) return null;
    token = body.token;
    tokenExpiresAt = Date.parse(body.expires_at) || Date.now() + 60000;
    return token;
  }

  async function connect() {
    timer = null;
    setState(everLive ? "reconnecting" : "connecting", everLive ? "Reconnecting…" : undefined);
    let protocols = null;
    if (paid) {
      let presented;
      try {
        presented = await entitlementToken();
      } catch (error) {
        retry();
        return;
      }
      if (!presented) {
        notEntitled();
        return;
      }
      protocols = ["katiedj", presented];
    }
    const params = new URLSearchParams({ format: "envelope" });
    if (lastSeq !== null) params.set("since", String(lastSeq));
    if (lastSeq !== null && lastEpoch) params.set("epoch", lastEpoch);
    const url = `${wsBase}/ws/networks/${encodeURIComponent(slug)}/?${params}`;
    try {
      socket = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    } catch (error) {
      retry();
      return;
    }
    socket.onopen = () => {
      attempt = 0;
      everLive = true;
      setState("live");
    };
    socket.onmessage = (event) => receive(event.data);
    socket.onclose = (event) => closed(event.code);
  }

  function receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch (error) { return; }
    if (frame && frame.type === "gap" && !("data" in frame)) {
      view.gap(frame);
      return;
    }
    if (frame && frame.type === "reset" && !("data" in frame)) {
      // The numbering restarted (the server lost what followed our last message): continue
      // from where the new one starts; its seqs may be lower than those already shown.
      lastSeq = frame.seq;
      lastEpoch = frame.epoch;
      view.reset(frame);
      return;
    }
    if (!frame || typeof frame.seq !== "number" || !("data" in frame)) return;
    if (lastSeq !== null && frame.seq <= lastSeq) return; // already shown (a replay overlap)
    lastSeq = frame.seq;
    if (frame.epoch) lastEpoch = frame.epoch;
    authFailures = 0;
    view.message(frame.seq, frame.ts, frame.data, rawData(text));
  }

  // The data exactly as published (the server serializes it once; the envelope wraps those
  // characters last), so 10.0 shows as 10.0. Anything unexpected: JSON.stringify instead.
  function rawData(text) {
    const at = text.indexOf(',"data":');
    if (at < 0 || !text.endsWith("}")) return null;
    const raw = text.slice(at + 8, -1);
    try {
      JSON.parse(raw);
      return raw;
    } catch (error) {
      return null;
    }
  }

  function closed(code) {
    socket = null;
    switch (code) {
      case 4401: // no token, or not one of ours: try once with a fresh one
      case 4408: // expired or voided: a fresh token is the documented fix
        token = null;
        if (++authFailures > 2) notEntitled();
        else retry(200);
        break;
      case 4403:
        token = null;
        notEntitled();
        break;
      case 4410:
        stop("Closed — the provider archived this network");
        break;
      case 4429:
        stop("Closed — too many open connections: close another tab and reload");
        break;
      case 1008:
      case 1009:
        stop("Closed by the server");
        break;
      default:
        retry();
    }
  }

  function retry(delay) {
    attempt += 1;
    // Exponential backoff with jitter, capped at 30 s, so a restarting server is not stormed.
    const wait = delay ?? Math.min(30000, 500 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2);
    setState(everLive || attempt > 1 ? "reconnecting" : "connecting",
      everLive || attempt > 1 ? `Reconnecting… (retry in ${Math.max(1, Math.round(wait / 1000))} s)` : undefined);
    clearTimeout(timer);
    timer = setTimeout(connect, wait);
  }

  function notEntitled() {
    setState("not-entitled", signedIn
      ? "Not entitled — subscribe to listen"
      : "Not entitled — log in and subscribe to listen");
    // A subscription just bought is confirmed by a webhook moments later: check again.
    if (signedIn) {
      attempt += 1;
      clearTimeout(timer);
      timer = setTimeout(connect, Math.min(60000, 3000 * attempt));
    }
  }

  function stop(label) {
    clearTimeout(timer);
    timer = null;
    setState("closed", label);
  }

  // Come back at once when the network or the tab does, instead of waiting out the backoff.
  function wake() {
    if (timer && status.dataset.state === "reconnecting") {
      clearTimeout(timer);
      connect();
    }
  }

  this.start = () => {
    window.addEventListener("online", wake);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) wake(); });
    connect();
  };
}

// --- View -------------------------------------------------------------------------------------

function LiveView(root, topology) {
  const list = document.getElementById("live-messages");
  const empty = document.getElementById("live-empty");
  const count = document.getElementById("live-count");
  const seqOut = document.getElementById("live-seq");
  const timeOut = document.getElementById("live-time");
  const chartBox = document.getElementById("live-chart");
  const picker = document.getElementById("live-series");
  const trafficBox = document.getElementById("live-traffic");
  const mapBox = document.getElementById("live-map");
  const chartTitle = document.getElementById("chart-title");

  let received = 0;
  let traffic = null; // set on the first message with a numeric "state" map
  let map = null;
  const points = []; // [{t: Date, values: {key: number}}]
  const selected = [];
  const known = new Set();
  let dirty = false;

  // A simulated network's page knows its streets: show the map and the right titles before
  // the first sample arrives (on a phone the generic panel would otherwise fill the screen).
  if (topology && Array.isArray(topology.streets) && topology.streets.length) {
    traffic = true;
    chartTitle.textContent = "Density of chosen streets (veh/km)";
    showTraffic();
  }

  this.message = (seq, ts, data, raw) => {
    received += 1;
    const item = document.createElement("li");
    item.className = "live-message";
    item.dataset.seq = String(seq);
    const when = ts ? new Date(ts) : new Date();
    const seqSpan = document.createElement("span");
    seqSpan.className = "seq";
    seqSpan.textContent = `#${seq}`;
    const time = document.createElement("time");
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    const json = document.createElement("code");
    json.className = "json";
    json.textContent = raw || JSON.stringify(data);
    item.append(seqSpan, time, json);
    list.prepend(item);
    while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
    empty.hidden = true;
    count.textContent = String(received);
    seqOut.textContent = String(seq);
    timeOut.textContent = when.toLocaleTimeString();

    if (traffic === null) traffic = isTraffic(data);
    const values = traffic ? numericMap(data.state) : flatten(data);
    points.push({ t: when, values });
    if (points.length > MAX_POINTS) points.shift();
    if (traffic) showTraffic(); // coloured by render(), at most every RENDER_EVERY_MS
    for (const key of Object.keys(values)) discover(key);
    dirty = true;
  };

  this.gap = (frame) => {
    const item = document.createElement("li");
    item.className = "live-gap";
    item.setAttribute("role", "note");
    // Honest about both causes: dropped from the history, or numbers a restart never used.
    item.textContent = `Gap: seq ${frame.from_seq}–${frame.to_seq} (${frame.missed}) is not in the history — published while you were away and no longer kept, or skipped by a server restart.`;
    list.prepend(item);
    empty.hidden = true;
  };

  this.reset = (frame) => {
    const item = document.createElement("li");
    item.className = "live-gap";
    item.setAttribute("role", "note");
    item.textContent = `Numbering restarted after seq ${frame.seq}: the server lost messages it had sent after that (a storage restart or failover). New messages follow.`;
    list.prepend(item);
    empty.hidden = true;
  };

  function isTraffic(data) {
    return data && typeof data.state === "object" && data.state !== null &&
      Object.values(data.state).length > 0 &&
      Object.values(data.state).every((v) => typeof v === "number");
  }

  function numericMap(object) {
    const out = {};
    for (const [key, value] of Object.entries(object || {})) {
      if (typeof value === "number" && Number.isFinite(value)) out[key] = value;
    }
    return out;
  }

  // Numeric fields of any payload, nested ones as "a.b" (two levels, at most 40 fields).
  function flatten(data, prefix = "", out = {}, depth = 0) {
    if (!data || typeof data !== "object" || depth > 2) return out;
    for (const [key, value] of Object.entries(data)) {
      if (Object.keys(out).length >= 40) break;
      const name = prefix + key;
      if (typeof value === "number" && Number.isFinite(value)) out[name] = value;
      else if (value && typeof value === "object" && !Array.isArray(value)) flatten(value, name + ".", out, depth + 1);
    }
    return out;
  }

  function label(key) {
    if (!traffic || !topology) return key;
    const street = topology.streets.find((s) => s.id === key);
    return street ? `${key} · ${street.name}` : key;
  }

  function colorOf(key) {
    const index = selected.indexOf(key);
    return index < 0 ? "#9aa3b5" : PALETTE[index % PALETTE.length];
  }

  function discover(key) {
    if (known.has(key)) return;
    known.add(key);
    if (selected.length < DEFAULT_SERIES) selected.push(key);
    if (traffic) {
      chartTitle.textContent = "Density of chosen streets (veh/km)";
      return; // streets are picked on the map; the picker lists the chosen ones
    }
    addPickerEntry(key);
  }

  function addPickerEntry(key) {
    const box = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = key;
    input.checked = selected.includes(key);
    input.addEventListener("change", () => toggle(key));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    box.append(input, swatch, document.createTextNode(label(key)));
    picker.appendChild(box);
  }

  function toggle(key) {
    const index = selected.indexOf(key);
    if (index >= 0) selected.splice(index, 1);
    else selected.push(key);
    dirty = true;
    render();
  }

  function syncPicker() {
    if (traffic) {
      const shown = Array.from(picker.querySelectorAll("input")).map((input) => input.value);
      if (shown.join() !== selected.join()) {
        picker.replaceChildren();
        for (const key of selected) addPickerEntry(key);
      }
    }
    for (const box of picker.children) {
      const input = box.querySelector("input");
      input.checked = selected.includes(input.value);
      box.querySelector(".swatch").style.background = input.checked ? colorOf(input.value) : "#d5dae4";
    }
  }

  // --- Traffic: map or tiles coloured by density --------------------------------------------

  function showTraffic() {
    if (map) return;
    trafficBox.hidden = false;
    map = topology ? buildMap(topology) : buildTiles();
  }

  function ramp(ratio) {
    const stops = [[0, [34, 197, 94]], [0.4, [234, 179, 8]], [0.65, [249, 115, 22]], [0.85, [220, 38, 38]], [1, [127, 29, 29]]];
    const r = Math.max(0, Math.min(1, ratio));
    for (let i = 1; i < stops.length; i += 1) {
      const [p1, c1] = stops[i];
      const [p0, c0] = stops[i - 1];
      if (r <= p1) {
        const f = (r - p0) / (p1 - p0);
        const c = c0.map((v, k) => Math.round(v + (c1[k] - v) * f));
        return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
      }
    }
    return "rgb(127, 29, 29)";
  }

  function streetToggle(element, key) {
    element.setAttribute("tabindex", "0");
    element.setAttribute("role", "button");
    element.addEventListener("click", () => toggle(key));
    element.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggle(key);
      }
    });
  }

  function buildMap(layout) {
    const scale = 720;
    const pad = 36;
    const byId = Object.fromEntries(layout.nodes.map((n) => [n.id, n]));
    const maxX = Math.max(...layout.nodes.map((n) => n.x), 0.01);
    const maxY = Math.max(...layout.nodes.map((n) => n.y), 0.01);
    const width = maxX * scale + 2 * pad;
    const height = maxY * scale + 2 * pad;
    const at = (n) => [pad + n.x * scale, pad + n.y * scale];
    const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "street-map", role: "group", "aria-label": "Street map coloured by density" });
    const few = layout.nodes.length <= 16;
    const lines = {};
    for (const street of layout.streets) {
      const a = byId[street.from];
      const b = byId[street.to];
      if (!a || !b) continue;
      const [x1, y1] = at(a);
      const [x2, y2] = at(b);
      const length = Math.hypot(x2 - x1, y2 - y1) || 1;
      // Two-way streets: each direction drawn on its own side (right-hand traffic).
      const ox = (-(y2 - y1) / length) * 5;
      const oy = ((x2 - x1) / length) * 5;
      const trim = Math.min(10, length / 4);
      const tx = ((x2 - x1) / length) * trim;
      const ty = ((y2 - y1) / length) * trim;
      const line = svg("line", {
        x1: x1 + tx - ox, y1: y1 + ty - oy, x2: x2 - tx - ox, y2: y2 - ty - oy,
        class: "street", stroke: "#3a4566", "stroke-width": few ? 8 : 6,
        "aria-label": street.name,
      }, drawing);
      svg("title", {}, line).textContent = street.name;
      streetToggle(line, street.id);
      lines[street.id] = { line, street };
    }
    for (const node of layout.nodes) {
      const [x, y] = at(node);
      const border = node.id.startsWith("border_");
      svg("circle", { cx: x, cy: y, r: border ? 2.5 : node.signal ? 6 : 4.5, class: node.signal ? "node signal" : "node" }, drawing);
      if (few) svg("text", { x: x + 9, y: y - 9 }, drawing).textContent = node.id;
    }
    mapBox.replaceChildren(drawing);
    return {
      update(values) {
        for (const [id, { line, street }] of Object.entries(lines)) {
          const value = values[id];
          if (value === undefined) continue;
          line.setAttribute("stroke", ramp(value / (street.jam || 125)));
          line.querySelector("title").textContent = `${street.name}: ${value.toFixed(1)} veh/km`;
          line.classList.toggle("selected", selected.includes(id));
          line.style.filter = selected.includes(id) ? `drop-shadow(0 0 4px ${colorOf(id)})` : "";
          line.setAttribute("aria-pressed", selected.includes(id) ? "true" : "false");
        }
      },
    };
  }

  // No geometry known (a traffic feed without a simulation here): one tile per street.
  function buildTiles() {
    const box = document.createElement("div");
    box.className = "tiles";
    mapBox.replaceChildren(box);
    const tiles = {};
    let top = 50;
    return {
      update(values) {
        top = Math.max(top, ...Object.values(values));
        for (const [id, value] of Object.entries(values)) {
          if (!tiles[id]) {
            const button = document.createElement("button");
            button.type = "button";
            button.addEventListener("click", () => toggle(id));
            box.appendChild(button);
            tiles[id] = button;
          }
          tiles[id].style.background = ramp(value / top);
          tiles[id].textContent = `${id} · ${value.toFixed(1)}`;
          tiles[id].setAttribute("aria-pressed", selected.includes(id) ? "true" : "false");
          tiles[id].title = `Street ${id}: ${value.toFixed(1)} veh/km`;
        }
      },
    };
  }

  // --- Chart ----------------------------------------------------------------------------------

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function render() {
    dirty = false;
    syncPicker();
    if (map && points.length) map.update(points[points.length - 1].values);
    const series = selected.filter((key) => points.some((p) => key in p.values));
    if (!series.length || points.length < 2) {
      chartBox.innerHTML = `<p class="chart-empty">${points.length ? "Waiting for a second sample to draw a line…" : "Waiting for data…"}</p>`;
      return;
    }
    const width = Math.max(chartBox.clientWidth, 280);
    const height = 220;
    const left = 48;
    const right = 10;
    const top = 10;
    const bottom = 24;
    let low = Infinity;
    let high = -Infinity;
    for (const p of points) for (const key of series) if (key in p.values) {
      low = Math.min(low, p.values[key]);
      high = Math.max(high, p.values[key]);
    }
    if (low >= 0) low = 0;
    else low = -niceMax(-low);
    high = niceMax(high <= low ? low + 1 : high);
    const t0 = points[0].t.getTime();
    const t1 = Math.max(points[points.length - 1].t.getTime(), t0 + 1);
    const x = (t) => left + ((t.getTime() - t0) / (t1 - t0)) * (width - left - right);
    const y = (v) => top + (1 - (v - low) / (high - low)) * (height - top - bottom);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart" });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const v = low + (high - low) * f;
      svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid-line" }, chart);
      const text = svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis-label" }, chart);
      text.textContent = Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(Math.round(v * 10) / 10);
    }
    for (const [f, anchor] of [[0, "start"], [0.5, "middle"], [1, "end"]]) {
      const t = new Date(t0 + (t1 - t0) * f);
      const text = svg("text", { x: left + f * (width - left - right), y: height - 6, "text-anchor": anchor, class: "axis-label" }, chart);
      text.textContent = t.toLocaleTimeString();
    }
    for (const key of series) {
      const coords = points.filter((p) => key in p.values).map((p) => `${x(p.t).toFixed(1)},${y(p.values[key]).toFixed(1)}`);
      svg("polyline", { points: coords.join(" "), fill: "none", stroke: colorOf(key), "stroke-width": 2, "stroke-linejoin": "round" }, chart);
    }
    chartBox.replaceChildren(chart);
  }

  setInterval(() => { if (dirty) render(); }, RENDER_EVERY_MS);
  window.addEventListener("resize", () => { dirty = true; });
}
