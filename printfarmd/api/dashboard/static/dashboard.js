// printfarmd dashboard: plain ES2020, no dependencies, no build step.
//
// Data comes from the REST API with the X-Api-Key header; live updates from the SSE
// stream GET /api/events, read with fetch() because EventSource cannot send headers.
// The stream is parsed here, and on a break the script reconnects with Last-Event-ID
// so the server replays exactly what was missed.
//
// SECURITY: every user- or printer-supplied string is put on the page with textContent
// (or as an attribute value): never innerHTML.
"use strict";

(() => {
  const KEY_STORE = "printfarmd.apiKey";
  const OPEN_STATES = ["created", "validated", "sliced", "queued", "printing", "post_process", "ready", "failed"];
  const STATE_ORDER = {
    printing: 0, post_process: 1, queued: 2, sliced: 3, validated: 4, created: 5,
    failed: 6, ready: 7, shipped: 8, cancelled: 9,
  };
  const $ = (id) => document.getElementById(id);

  const state = {
    key: localStorage.getItem(KEY_STORE) || "",
    keyless: false,        // trusted network: the server answers without a key
    printers: new Map(),   // id -> printer JSON
    jobs: new Map(),       // id -> job JSON
    paused: false,
    lastSeq: null,         // last event id seen on the stream
    sort: { key: "state", dir: 1 },
    stream: null,          // AbortController of the running stream
    refetch: new Set(),    // job ids waiting to be re-read
    refetchTimer: null,
    history: { entries: [], total: 0 },  // the loaded page(s) of GET /api/history
    stats: null,           // GET /api/stats
    historyTimer: null,
    spoolman: false,       // Spoolman configured: tiles offer to bind a spool
  };
  const HISTORY_PAGE = 50;
  const OUTCOMES = ["completed", "cancelled", "interrupted", "error"];
  const SVG = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------ helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.key) h["X-Api-Key"] = state.key;
    return h;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const msg = body && body.error ? body.error.message : `HTTP ${status}`;
      super(msg);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const init = { method, headers: headers(), cache: "no-store" };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (_e) { data = null; }
    if (resp.status === 401) { needKey("The API key was refused."); throw new ApiError(401, data); }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  function notice(text, isError) {
    const n = $("notice");
    n.textContent = text;
    n.className = isError ? "notice error" : "notice";
    n.hidden = !text;
  }

  async function act(what, fn) {
    notice("");
    try {
      await fn();
    } catch (e) {
      notice(`${what}: ${e.message}`, true);
    }
  }

  function when(iso) {
    if (!iso) return "";
    const secs = Math.round((Date.parse(iso) - Date.now()) / 1000);
    if (Number.isNaN(secs)) return "";
    const abs = Math.abs(secs);
    const span = abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)} min`
      : `${Math.floor(abs / 3600)} h ${Math.round((abs % 3600) / 60)} min`;
    return secs >= 0 ? `in ${span}` : `${span} ago`;
  }

  function jobLabel(job) {
    return job.name || job.filename;
  }

  // ------------------------------------------------------------------ key

  function needKey(message) {
    stopStream();
    state.key = "";
    localStorage.removeItem(KEY_STORE);
    $("main").hidden = true;
    $("key-form").hidden = false;
    if (message) notice(message, true);
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key-input").value.trim();
    $("key-input").value = "";
    if (!state.key) return;
    localStorage.setItem(KEY_STORE, state.key);
    start();
  });

  $("forget-key").addEventListener("click", () => needKey(""));

  // ------------------------------------------------------------------ loading

  async function loadAll() {
    const [printers, jobs, status] = await Promise.all([
      api("GET", "/api/printers"),
      api("GET", `/api/jobs?status=${OPEN_STATES.join(",")}&limit=1000&sort=created`),
      api("GET", "/api/orchestrator/status"),
    ]);
    state.printers = new Map(printers.printers.map((p) => [p.id, p]));
    try {  // issue 16: spool binding from the tiles when Spoolman is configured
      state.spoolman = (await api("GET", "/api/spools")).spoolman.enabled;
    } catch (_e) { state.spoolman = false; }
    state.jobs = new Map(jobs.jobs.map((j) => [j.id, j]));
    state.paused = status.paused;
    state.lastSeq = status.last_event_seq;
    renderAll();
    await loadHistory(HISTORY_PAGE);
  }

  async function refreshPrinter(id) {
    if (!id) return;
    try {
      const p = await api("GET", `/api/printers/${encodeURIComponent(id)}`);
      state.printers.set(p.id, p);
      renderPrinters();
    } catch (_e) { /* shown on the next full load */ }
  }

  function queueJobRefetch(id) {
    state.refetch.add(id);
    if (state.refetchTimer) return;
    state.refetchTimer = setTimeout(async () => {
      state.refetchTimer = null;
      const ids = [...state.refetch];
      state.refetch.clear();
      await Promise.all(ids.map(async (jid) => {
        try {
          const job = await api("GET", `/api/jobs/${encodeURIComponent(jid)}`);
          state.jobs.set(job.id, job);
        } catch (e) {
          if (e.status === 404) state.jobs.delete(jid);
        }
      }));
      renderJobs();
      renderPrinters();
    }, 50);
  }

  // ------------------------------------------------------------------ live stream

  function setConn(s) {
    const c = $("conn");
    c.dataset.state = s;
    c.textContent = s;
  }

  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function onMessage(type, data, id) {
    if (id !== null) state.lastSeq = id;
    let msg;
    try { msg = JSON.parse(data); } catch (_e) { return; }
    if (type === "progress") {
      const p = state.printers.get(msg.printer_id);
      if (p) {
        p.state = msg.printer_state;
        p.progress = msg.progress;
        p.eta = msg.eta;
        p.current_job = msg.job_id;
      }
      const j = msg.job_id && state.jobs.get(msg.job_id);
      if (j && j.state === "printing") { j.progress = msg.progress; j.eta = msg.eta; }
      renderPrinters();
      if (j) renderJobs();
      return;
    }
    if (type === "orchestrator.paused" || type === "orchestrator.resumed") {
      state.paused = type === "orchestrator.paused";
      renderBar();
      return;
    }
    if (type === "farm.emergency_stop") {
      const d = msg.data || {};
      let text = `Emergency stop by ${d.client || "someone"}: dispatch paused, ` +
        `${(d.jobs || []).length} print(s) failed; stopped: ${(d.stopped || []).join(", ") || "none"}`;
      if ((d.unreachable || []).length) text += `; NOT REACHED: ${d.unreachable.join(", ")}`;
      notice(text, true);
      scheduleHistory();
    }
    if (type === "history.deleted" || type === "history.totals_reset" ||
        (type === "job.transition" && (msg.from_state === "printing" || msg.to_state === "printing"))) {
      scheduleHistory();
    }
    if (msg.job_id) queueJobRefetch(msg.job_id);
    if (msg.printer_id) refreshPrinter(msg.printer_id);
  }

  // Parse text/event-stream (https://html.spec.whatwg.org/#event-stream-interpretation).
  function makeParser() {
    let buf = "", data = [], type = "", id = null;
    return (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data.length) onMessage(type || "message", data.join("\n"), id);
          data = []; type = ""; id = null;
          continue;
        }
        if (line.startsWith(":")) continue;  // heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") type = value;
        else if (field === "id" && /^\d+$/.test(value)) id = Number(value);
      }
    };
  }

  async function runStream() {
    let backoff = 500;
    while (true) {
      const ctl = new AbortController();
      state.stream = ctl;
      const h = headers({ Accept: "text/event-stream" });
      if (state.lastSeq !== null) h["Last-Event-ID"] = String(state.lastSeq);
      try {
        const resp = await fetch("/api/events", { headers: h, signal: ctl.signal, cache: "no-store" });
        if (resp.status === 401) { needKey("The API key was refused."); return; }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        setConn("live");
        backoff = 500;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        const feed = makeParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          feed(value);
        }
      } catch (_e) {
        if (ctl.signal.aborted) return;
      }
      if (ctl.signal.aborted) return;
      setConn("reconnecting");
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  // ------------------------------------------------------------------ rendering

  function renderBar() {
    const d = $("dispatch");
    d.textContent = state.paused ? "dispatch paused" : "dispatching";
    d.className = state.paused ? "dispatch paused" : "dispatch";
    const b = $("pause-toggle");
    b.disabled = false;
    b.textContent = state.paused ? "Resume all" : "Pause all";
    $("estop").disabled = false;
  }

  function renderPrinters() {
    const box = $("printers");
    const tiles = [];
    for (const p of state.printers.values()) {
      const job = p.current_job ? state.jobs.get(p.current_job) : null;
      const pct = Math.max(0, Math.min(100, Number(p.progress) || 0));
      const bar = el("div");
      bar.style.width = `${pct}%`;
      const thumb = el("div", { class: "thumb", "aria-label": "job thumbnail" });
      if (job && job.thumbnail_url) {
        thumb.append(el("img", { src: job.thumbnail_url, alt: "" }));
      } else {
        thumb.textContent = job ? "no preview" : "";
      }
      const actions = el("div", { class: "tile-actions" });
      if (state.spoolman) {
        actions.append(el("button", {
          type: "button", class: "bind-spool quiet", text: "Spool\u2026",
          onclick: () => bindSpool(p),
        }));
      }
      if (p.maintenance_due) {
        actions.append(el("button", {
          type: "button", class: "record-maintenance", text: "Maintenance done…",
          onclick: () => recordMaintenance(p),
        }));
      }
      if (!p.plate_clear && p.state !== "printing") {
        actions.append(el("button", {
          type: "button", class: "primary clear-plate", text: "Plate cleared",
          onclick: () => act("Plate cleared", async () => {
            const np = await api("POST", `/api/printers/${encodeURIComponent(p.id)}/clear`);
            state.printers.set(np.id, np);
            if (job) queueJobRefetch(job.id);
            renderPrinters();
          }),
        }));
      }
      tiles.push(el("article", { class: "tile", dataset: { printerId: p.id, state: p.state } },
        el("div", { class: "tile-head" },
          el("span", { class: "tile-name", text: p.name || p.id }),
          el("span", { class: "badge state", dataset: { state: p.state }, text: p.state.replace("_", " ") })),
        el("div", { class: "tile-body" },
          thumb,
          el("div", { class: "meta" },
            el("span", { class: "job", text: job ? jobLabel(job) : (p.current_job || "no job") }),
            el("span", { class: "material", text: `material: ${(p.materials || []).join(", ") || "none"}` }),
            ...upkeepLines(p),
            el("span", { class: "eta", text: p.eta ? `ETA ${when(p.eta)}` : "" }),
            el("span", { class: "pct", text: p.state === "printing" ? `${pct.toFixed(1)} %` : "" }))),
        el("div", { class: "progress", role: "progressbar", "aria-valuenow": pct.toFixed(0),
          "aria-valuemin": "0", "aria-valuemax": "100" }, bar),
        p.message ? el("div", { class: "sub message", text: p.message }) : null,
        actions));
    }
    box.replaceChildren(...tiles);
  }

  // ------------------------------------------------------------------ upkeep (issue 16)

  function spoolLines(p) {
    // One line per bound spool: "spool 12: PETG 612 g left" with a colour swatch.
    const out = [];
    for (const t of p.spools || []) {
      if (t.spool_id === null || t.spool_id === undefined) continue;
      const tool = (p.spools.length > 1) ? `T${t.tool} ` : "";
      let text = `${tool}spool ${t.spool_id}`;
      if (!t.known) text += ": not read from Spoolman yet";
      else if (t.missing) text += ": not in Spoolman any more";
      else {
        text += `: ${t.material || "?"}`;
        if (t.remaining_g !== null && t.remaining_g !== undefined) text += ` ${Math.round(t.remaining_g)} g left`;
        if (t.archived) text += " (archived)";
      }
      const line = el("span", { class: "spool", dataset: { spoolId: String(t.spool_id) } });
      for (const c of t.colours || []) {
        const sw = el("span", { class: "swatch", title: c });
        if (/^#[0-9A-F]{6}$/.test(c)) sw.style.backgroundColor = c;
        line.append(sw);
      }
      line.append(document.createTextNode(text));
      out.push(line);
    }
    return out;
  }

  function bindSpool(p) {
    const tools = (p.spools || []).length || 1;
    let tool = 0;
    if (tools > 1) {
      const raw = window.prompt(`Tool of ${p.name || p.id} (0 to ${tools - 1})`, "0");
      if (raw === null) return;
      tool = Number(raw);
      if (!Number.isInteger(tool)) { notice("Tool: enter a whole number", true); return; }
    }
    const raw = window.prompt(`Spoolman spool id for ${p.name || p.id} (empty: no spool)`, "");
    if (raw === null) return;
    const spool = raw.trim() === "" ? null : Number(raw);
    if (spool !== null && !Number.isInteger(spool)) { notice("Spool: enter a spool id", true); return; }
    act("Spool", async () => {
      const np = await api("PUT", `/api/printers/${encodeURIComponent(p.id)}/spool`, { spool_id: spool, tool });
      state.printers.set(np.id, np);
      renderPrinters();
    });
  }

  function recordMaintenance(p) {
    const by = window.prompt(`Maintenance of ${p.name || p.id}: who did it?`);
    if (!by || !by.trim()) return;
    const work = window.prompt("What was done?");
    if (!work || !work.trim()) return;
    act("Record maintenance", async () => {
      const np = await api("POST", `/api/printers/${encodeURIComponent(p.id)}/maintenance`, { by, work });
      state.printers.set(np.id, np);
      renderPrinters();
    });
  }

  function upkeepLines(p) {
    const lines = spoolLines(p);
    if (p.maintenance_due) {
      lines.push(el("span", { class: "due", text: `maintenance due: ${p.maintenance_due}` }));
    }
    if (p.waiting) lines.push(el("span", { class: "waiting", text: `waiting: ${p.waiting}` }));
    // Several daemons, one farm: which daemon drives it (only that one acts on it).
    if (p.node) lines.push(el("span", { class: "node", text: `daemon ${p.node}` }));
    return lines;
  }

  function money(cost) {
    if (!cost || !cost.attempts || !cost.total) return "";
    return `cost ${cost.total.toFixed(2)} ${cost.currency}`;
  }

  // Rules that hold printers and jobs (quiet hours, staggered starts, schedules) open
  // with time, not with events: read printers and queued jobs again now and then.
  async function refreshWaiting() {
    try {
      const [printers, queued] = await Promise.all([
        api("GET", "/api/printers"),
        api("GET", "/api/jobs?status=queued&limit=200&sort=created"),
      ]);
      for (const p of printers.printers) state.printers.set(p.id, p);
      for (const j of queued.jobs) state.jobs.set(j.id, j);
      renderPrinters();
      renderJobs();
    } catch (_e) { /* the next full load shows it */ }
  }

  function sortValue(job, key) {
    switch (key) {
      case "state": return STATE_ORDER[job.state] ?? 99;
      case "printer": return job.printer_id || null;
      case "sku": return job.sku || null;
      case "eta": return job.eta ? Date.parse(job.eta) : null;
      case "priority": return -job.priority;
      default: return jobLabel(job).toLowerCase();
    }
  }

  function compareJobs(a, b) {
    const { key, dir } = state.sort;
    const va = sortValue(a, key), vb = sortValue(b, key);
    // Empty values go last whichever the direction.
    if (va === null && vb !== null) return 1;
    if (vb === null && va !== null) return -1;
    if (va !== null && vb !== null && va !== vb) return (va < vb ? -1 : 1) * dir;
    return a.position - b.position;
  }

  function visibleJobs() {
    const text = $("filter-text").value.trim().toLowerCase();
    const only = $("filter-state").value;
    return [...state.jobs.values()].filter((j) => {
      if (only ? j.state !== only : !OPEN_STATES.includes(j.state)) return false;
      if (!text) return true;
      return [j.name, j.filename, j.sku, j.printer_id, j.id, j.state]
        .some((v) => v && String(v).toLowerCase().includes(text));
    }).sort(compareJobs);
  }

  function jobActions(job) {
    const td = el("td", { class: "actions" });
    const cell = el("div", { class: "acts" });
    td.append(cell);
    if (!["shipped", "cancelled"].includes(job.state)) {
      cell.append(el("button", {
        type: "button", class: "danger cancel", text: "Cancel",
        onclick: () => {
          if (!window.confirm(`Cancel job ${jobLabel(job)}?`)) return;
          act("Cancel", async () => {
            state.jobs.set(job.id, await api("POST", `/api/jobs/${job.id}/cancel`, {}));
            renderJobs();
          });
        },
      }));
      cell.append(el("button", {
        type: "button", class: "reprioritize", text: "Priority",
        onclick: () => {
          const raw = window.prompt(`New priority for ${jobLabel(job)}`, String(job.priority));
          if (raw === null) return;
          const priority = Number(raw);
          if (!Number.isInteger(priority)) { notice("Priority: enter a whole number", true); return; }
          act("Priority", async () => {
            state.jobs.set(job.id, await api("POST", "/api/orchestrator/reprioritize", { jobId: job.id, priority }));
            renderJobs();
          });
        },
      }));
    }
    if (job.state === "printing") {
      // Pause or resume on its printer (answers once the printer did; 502 if it could not).
      const printer = state.printers.get(job.printer_id);
      const paused = printer && printer.state === "paused";
      const verb = paused ? "Resume" : "Pause";
      cell.append(el("button", {
        type: "button", class: paused ? "resume" : "pause", text: verb,
        onclick: () => act(verb, async () => {
          const path = `/api/jobs/${job.id}/${paused ? "resume" : "pause"}`;
          state.jobs.set(job.id, await api("POST", path, {}));
          renderJobs();
        }),
      }));
    }
    if (job.state === "queued") {
      const idle = [...state.printers.values()].filter((p) => p.state === "idle");
      const pick = el("select", { class: "release-printer", "aria-label": "send to printer" },
        el("option", { value: "", text: "send to..." }),
        ...idle.map((p) => el("option", { value: p.id, text: p.name || p.id })));
      pick.addEventListener("change", () => {
        const pid = pick.value;
        if (!pid) return;
        act("Send to printer", async () => {
          state.jobs.set(job.id, await api("POST", `/api/jobs/${job.id}/release`, { printerId: pid }));
          renderJobs();
          refreshPrinter(pid);
        });
      });
      cell.append(pick);
    }
    return td;
  }

  function renderJobs() {
    const rows = visibleJobs().map((j) => {
      const eta = j.state === "printing" && j.eta ? when(j.eta) : "";
      return el("tr", { dataset: { jobId: j.id, state: j.state } },
        el("td", { "data-label": "Job", dataset: { col: "name" } },
          el("div", { class: "name", text: jobLabel(j) }),
          el("div", { class: "sub", text: j.name && j.name !== j.filename ? j.filename : j.id })),
        el("td", { "data-label": "State", dataset: { col: "state" } },
          el("span", { class: "badge", dataset: { state: j.state }, text: j.state }),
          j.state === "printing" ? el("span", { class: "sub", text: ` ${Number(j.progress).toFixed(0)} %` }) : null,
          j.last_error && j.state === "failed" ? el("div", { class: "sub", text: j.last_error }) : null,
          j.state === "queued" && j.waiting ? el("div", { class: "sub waiting", text: j.waiting }) : null,
          money(j.cost) ? el("div", { class: "sub cost", text: money(j.cost) }) : null),
        el("td", { "data-label": "Printer", dataset: { col: "printer" }, text: j.printer_id || "" }),
        el("td", { "data-label": "SKU", dataset: { col: "sku" }, text: j.sku || "" }),
        el("td", { "data-label": "ETA", dataset: { col: "eta", eta: j.eta || "" }, text: eta }),
        el("td", { "data-label": "Priority", dataset: { col: "priority" }, text: String(j.priority) }),
        jobActions(j));
    });
    $("job-rows").replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
    for (const b of document.querySelectorAll("th button[data-sort]")) {
      if (b.dataset.sort === state.sort.key) {
        b.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      } else {
        b.removeAttribute("aria-sort");
      }
    }
  }

  function renderAll() {
    renderBar();
    renderPrinters();
    renderJobs();
    renderSummary();
    renderHistory();
  }

  // ------------------------------------------------------------------ history and summary

  function hours(seconds) {
    const s = Math.max(0, Math.round(Number(seconds) || 0));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function stamp(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.valueOf()) ? "" : d.toLocaleString();
  }

  function historyQuery(limit, offset) {
    const q = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if ($("history-printer").value) q.set("printer", $("history-printer").value);
    if ($("history-status").value) q.set("status", $("history-status").value);
    return q.toString();
  }

  async function loadHistory(limit) {
    const [page, stats] = await Promise.all([
      api("GET", `/api/history?${historyQuery(Math.min(Math.max(limit, HISTORY_PAGE), 1000), 0)}`),
      // The summary covers what its bars show: the last 30 days.
      api("GET", `/api/stats?days=30&since=${Math.floor(Date.now() / 1000) - 30 * 86400}`),
    ]);
    state.history = { entries: page.entries, total: page.total };
    state.stats = stats;
    renderSummary();
    renderHistory();
  }

  async function loadMoreHistory() {
    const page = await api("GET", `/api/history?${historyQuery(HISTORY_PAGE, state.history.entries.length)}`);
    state.history.entries.push(...page.entries);
    state.history.total = page.total;
    renderHistory();
  }

  // A burst of transitions (a farm's worth of prints ending) is one reload.
  function scheduleHistory() {
    if (state.historyTimer) return;
    state.historyTimer = setTimeout(async () => {
      try { await loadHistory(state.history.entries.length); } catch (_e) { /* next event */ }
      state.historyTimer = null;
    }, 1000);
  }

  // One bar per day, stacked by how the attempts that ended that day ended.
  function outcomeBars(days) {
    const w = 150, h = 28, gap = 1;
    const bar = w / Math.max(days.length, 1);
    const most = Math.max(1, ...days.map((d) => OUTCOMES.reduce((n, o) => n + (d[o] || 0), 0)));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "outcomes");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("role", "img");
    const total = (o) => days.reduce((n, d) => n + (d[o] || 0), 0);
    svg.setAttribute("aria-label", OUTCOMES.map((o) => `${total(o)} ${o}`).join(", ") + " in the last 30 days");
    days.forEach((d, i) => {
      const g = document.createElementNS(SVG, "g");
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${d.date}: ` + OUTCOMES.map((o) => `${d[o] || 0} ${o}`).join(", ");
      g.append(title);
      const back = document.createElementNS(SVG, "rect");
      back.setAttribute("class", "day");
      back.setAttribute("x", String(i * bar));
      back.setAttribute("y", "0");
      back.setAttribute("width", String(Math.max(bar - gap, 0.5)));
      back.setAttribute("height", String(h));
      g.append(back);
      let y = h;
      for (const o of OUTCOMES) {
        const n = d[o] || 0;
        if (!n) continue;
        const part = (n / most) * h;
        y -= part;
        const r = document.createElementNS(SVG, "rect");
        r.setAttribute("class", `o-${o}`);
        r.setAttribute("data-outcome", o);
        r.setAttribute("data-count", String(n));
        r.setAttribute("x", String(i * bar));
        r.setAttribute("y", String(y));
        r.setAttribute("width", String(Math.max(bar - gap, 0.5)));
        r.setAttribute("height", String(part));
        g.append(r);
      }
      svg.append(g);
    });
    return svg;
  }

  function renderSummary() {
    const stats = state.stats;
    const byId = new Map(((stats && stats.printers) || []).map((p) => [p.printer_id, p]));
    const rows = [...state.printers.values()].map((p) => {
      const s = byId.get(p.id);
      const fail = s && s.last_failure;
      return el("tr", { dataset: { summaryPrinter: p.id } },
        el("td", { "data-label": "Printer", class: "name", text: p.name || p.id }),
        el("td", { "data-label": "Last 30 days" }, s ? outcomeBars(s.outcomes_by_day) : null),
        el("td", { "data-label": "Success", class: "success",
          text: s && s.success_rate !== null ? `${Math.round(s.success_rate * 100)} %` : "" }),
        el("td", { "data-label": "Print hours", class: "hours", text: s ? s.print_hours.toFixed(1) : "" }),
        el("td", { "data-label": "Filament", class: "filament",
          text: s ? `${s.filament_m.toFixed(1)} m, ${s.filament_g.toFixed(0)} g` : "" }),
        el("td", { "data-label": "Hours per failure", class: "mtbf",
          text: s && s.mtbf_hours !== null ? s.mtbf_hours.toFixed(1) : "" }),
        el("td", { "data-label": "Last failure", class: "last-failure" },
          fail ? el("div", { text: stamp(fail.at) }) : null,
          fail ? el("div", { class: "sub", text: fail.reason || fail.status }) : null));
    });
    $("summary-rows").replaceChildren(...rows);
    // the history's printer filter follows the printers
    const pick = $("history-printer");
    const keep = pick.value;
    pick.replaceChildren(el("option", { value: "", text: "every printer" }),
      ...[...state.printers.values()].map((p) => el("option", { value: p.id, text: p.name || p.id })));
    pick.value = keep;
  }

  function renderHistory() {
    const printers = state.printers;
    const rows = state.history.entries.map((e) => {
      const p = e.printer_id && printers.get(e.printer_id);
      return el("tr", { dataset: { historyId: e.id, status: e.status, printer: e.printer_id || "" } },
        el("td", { "data-label": "Started", text: stamp(e.started_at) }),
        el("td", { "data-label": "Printer", dataset: { col: "printer" }, text: p ? (p.name || p.id) : (e.printer_id || "") }),
        el("td", { "data-label": "File", text: e.filename }),
        el("td", { "data-label": "SKU", text: e.sku || "" }),
        el("td", { "data-label": "Outcome" },
          el("span", { class: "badge", dataset: { state: e.status }, text: e.status === "error" ? "failed" : e.status.replace("_", " ") })),
        el("td", { "data-label": "Duration", text: hours(e.duration) }),
        el("td", { "data-label": "Filament",
          text: e.filament_used_mm ? `${(e.filament_used_mm / 1000).toFixed(2)} m, ${e.filament_used_g.toFixed(1)} g` : "" }),
        el("td", { "data-label": "Why it ended", text: e.status === "completed" ? "" : (e.reason || "") }));
    });
    $("history-rows").replaceChildren(...rows);
    $("history-empty").hidden = rows.length > 0;
    $("history-more").hidden = state.history.entries.length >= state.history.total;
  }

  async function downloadCsv() {
    const resp = await fetch(`/api/history?${historyQuery(1000, 0)}`,
      { headers: headers({ Accept: "text/csv" }), cache: "no-store" });
    if (!resp.ok) throw new ApiError(resp.status, null);
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", { href: url, download: "printfarmd-history.csv" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------ controls

  for (const b of document.querySelectorAll("th button[data-sort]")) {
    b.addEventListener("click", () => {
      const key = b.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderJobs();
    });
  }
  $("filter-text").addEventListener("input", renderJobs);
  $("filter-state").addEventListener("change", renderJobs);

  $("history-printer").addEventListener("change", () => act("History", () => loadHistory(HISTORY_PAGE)));
  $("history-status").addEventListener("change", () => act("History", () => loadHistory(HISTORY_PAGE)));
  $("history-more").addEventListener("click", () => act("History", loadMoreHistory));
  $("history-csv").addEventListener("click", () => act("Download CSV", downloadCsv));

  // The farm's emergency stop: every printing printer stops at once, dispatch pauses,
  // the prints fail. The same as Mainsail's and Fluidd's EMERGENCY STOP.
  $("estop").addEventListener("click", () => {
    if (!window.confirm("Emergency stop: stop every printing printer NOW, fail their prints and pause the farm?")) return;
    act("Emergency stop", async () => {
      await api("POST", "/printer/emergency_stop?client=dashboard");
    });
  });

  $("pause-toggle").addEventListener("click", () => act("Pause", async () => {
    const status = await api("POST", state.paused ? "/api/orchestrator/resume" : "/api/orchestrator/pause");
    state.paused = status.paused;
    renderBar();
  }));

  $("upload-file").addEventListener("change", () => {
    const input = $("upload-file");
    const file = input.files && input.files[0];
    if (!file) return;
    act("Add job", async () => {
      const form = new FormData();
      form.append("file", file, file.name);
      const up = await api("POST", "/api/files", form);
      const created = await api("POST", "/api/jobs", { filename: up.file.path });
      for (const j of created.jobs) state.jobs.set(j.id, j);
      renderJobs();
      notice(`Added ${file.name}`);
    }).finally(() => { input.value = ""; });
  });

  // Relative ETAs age: redraw them now and then.
  setInterval(() => { if (!$("main").hidden) { renderPrinters(); renderJobs(); } }, 15000);
  setInterval(() => { if (!$("main").hidden) refreshWaiting(); }, 10000);

  // ------------------------------------------------------------------ start

  async function start() {
    $("key-form").hidden = true;
    try {
      await loadAll();
    } catch (e) {
      if (e.status !== 401) notice(`Loading the farm failed: ${e.message}`, true);
      return;
    }
    $("main").hidden = false;
    notice("");
    stopStream();
    runStream();
  }

  async function boot() {
    if (!state.key) {
      // A trusted network needs no key: ask the server before asking the operator.
      const probe = await fetch("/api/orchestrator/status", { cache: "no-store" }).catch(() => null);
      if (!probe || !probe.ok) { needKey(""); return; }
      state.keyless = true;
    }
    start();
  }

  boot();
})();
