// runner dashboard: the runs page and the run page. Reads the API described in
// runner/dashboard/app.py; draws with uPlot (shipped beside this file). No build step.
"use strict";

const TOKEN = (() => {
  const query = new URLSearchParams(location.search);
  const given = query.get("token");
  if (given) {
    sessionStorage.setItem("runner-dashboard-token", given); // this tab's, gone with it
    history.replaceState(null, "", location.pathname); // the token leaves the address bar and history
  }
  return given || sessionStorage.getItem("runner-dashboard-token") || "";
})();

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const MARK_COLORS = {
  nudge: "#1f77b4", rollback: "#ff7f0e", divergence: "#d62728", pause: "#7f7f7f",
  prune: "#9467bd", stop: "#333333", nudge_refused: "#d62728", trial_retry: "#8c564b",
};
const NOT_CURVES = new Set(["t", "event", "trial", "epoch", "step", "seconds", "order"]);

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};
const fmt = (v) => (typeof v === "number" ? String(Number.isInteger(v) ? v : Number(v.toPrecision(4))) : v ?? "–");
const trialName = (t) => (t === null || t === undefined ? "run" : `t${String(t).padStart(3, "0")}`);
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "X-Runner-Token": TOKEN, ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setConnection(text, ok) {
  const badge = $("#connection");
  badge.textContent = text;
  badge.className = `badge ${ok ? "ok" : "bad"}`;
}

// ---- the runs page ------------------------------------------------------------------

async function runsPage() {
  $("#page").append($("#runs-view").content.cloneNode(true));
  $("#where").textContent = "runs";
  const body = $("#runs tbody");
  const refresh = async () => {
    try {
      const runs = await api("/api/runs");
      setConnection("connected", true);
      body.replaceChildren(
        ...runs.map((run) =>
          el("tr", {},
            el("td", {}, el("a", { href: `/runs/${encodeURIComponent(run.name)}` }, run.name)),
            el("td", {}, run.experiment ?? "–"),
            el("td", {}, el("span", { className: `badge ${stateClass(run.state, run.alive)}` }, stateText(run.state, run.alive))),
            el("td", {}, `${run.finished}${run.planned ? ` / ${run.planned}` : ""} done, ${run.running} running`),
            el("td", {}, run.best ? `${fmt(run.best.score)} ${run.metric} (${trialName(run.best.trial)})` : "–"),
            el("td", {}, when(run.updated)),
          ),
        ),
      );
      $("#no-runs").hidden = runs.length > 0;
    } catch (err) {
      setConnection(err.message, false);
    }
  };
  await refresh();
  setInterval(refresh, 2000);
}

function stateText(state, alive) {
  return state === "running" && !alive ? "stopped (process gone)" : state;
}

function stateClass(state, alive) {
  if (alive) return "ok";
  return state === "finished" ? "done" : "bad";
}

// ---- the run page: the log folded as it streams in ------------------------------------

class RunLog {
  constructor() { this.clear(); }

  clear() {
    this.metric = null;
    this.mode = "max";
    this.trials = new Map(); // id -> {params, state, points: [epoch_end by epoch], score, hyper}
    this.marks = [];
  }

  trial(id) {
    if (!this.trials.has(id)) this.trials.set(id, { id, params: {}, state: "queued", points: [], score: null, hyper: {} });
    return this.trials.get(id);
  }

  add(e) {
    const t = e.trial;
    switch (e.event) {
      case "experiment_start":
        this.metric = this.metric ?? e.metric;
        this.mode = e.mode || this.mode;
        break;
      case "trial_start": {
        const trial = this.trial(t);
        Object.assign(trial, { params: e.params || {}, state: "running", points: [], hyper: e.hyperparameters || {} });
        break;
      }
      case "epoch_end": {
        const trial = this.trial(t);
        trial.points.length = Math.min(trial.points.length, e.epoch); // a later path replaces what was after it
        trial.points[e.epoch] = e;
        trial.state = trial.state === "queued" ? "running" : trial.state;
        for (const name of Object.keys(trial.hyper)) if (typeof e[name] === "number") trial.hyper[name] = e[name];
        break;
      }
      case "trial_resume":
        this.trial(t).points.length = Math.min(this.trial(t).points.length, e.epoch);
        this.trial(t).state = "running";
        break;
      case "trial_retry":
        this.trial(t).points.length = Math.min(this.trial(t).points.length, e.snapshot ? e.epoch : 0);
        this.mark(e, "trial_retry", `retried: ${e.reason}`, e.snapshot ? e.epoch : 0);
        break;
      case "rollback":
        this.trial(t).points.length = Math.min(this.trial(t).points.length, e.to_epoch);
        if (typeof e.lr_after === "number" && "lr" in this.trial(t).hyper) this.trial(t).hyper.lr = e.lr_after;
        Object.entries(e.changes || {}).forEach(([k, c]) => { this.trial(t).hyper[k] = c.new; }); // an exploit's
        this.mark(e, "rollback", `rolled back from epoch ${e.from_epoch} to ${e.to_epoch} (${e.reason || e.snapshot}); lr ${fmt(e.lr_before)} → ${fmt(e.lr_after)}`, e.to_epoch);
        break;
      case "nudge":
        this.mark(e, "nudge", `${e.source}: ` + Object.entries(e.changes || {}).map(([k, c]) => `${k} ${fmt(c.old)} → ${fmt(c.new)}`).join(", "));
        Object.entries(e.changes || {}).forEach(([k, c]) => { this.trial(t).hyper[k] = c.new; });
        break;
      case "nudge_refused":
        this.mark(e, "nudge_refused", `nudge refused: ${e.reason}`);
        break;
      case "divergence":
        this.mark(e, "divergence", `diverged: ${e.kind} (loss ${fmt(e.loss)})`);
        break;
      case "pause":
        this.trial(t).state = "paused";
        this.mark(e, "pause", `paused (${e.source})`);
        break;
      case "unpause":
        this.trial(t).state = "running";
        break;
      case "prune":
        this.mark(e, "prune", `pruned: ${e.reason}`);
        break;
      case "stop":
        if (t !== undefined) this.mark(e, "stop", `stopped: ${e.reason || e.source}`);
        break;
      case "trial_complete":
      case "trial_suspend":
        Object.assign(this.trial(t), { state: e.state, score: e.score, params: e.params || this.trial(t).params });
        break;
      default:
        break;
    }
  }

  // A mark sits where it happened on the x axis of epochs completed: inside the epoch it
  // happened in, or (a rollback) at the epoch the trial went back to, where its new path begins.
  mark(e, kind, text, boundary = null) {
    if (e.trial === undefined) return;
    this.marks.push({ trial: e.trial, kind, text, x: boundary ?? (e.epoch ?? 0) + 0.5, t: e.t });
  }

  best(trial) {
    const sign = this.mode === "min" ? -1 : 1;
    let best = trial.score;
    for (const p of trial.points) {
      const v = p && p[this.metric];
      if (typeof v === "number" && (best === null || best === undefined || sign * v > sign * best)) best = v;
    }
    return best;
  }

  curves() {
    const names = new Set([this.metric, "val_loss", "train_loss"].filter(Boolean));
    const live = new Set();
    for (const trial of this.trials.values()) Object.keys(trial.hyper).forEach((k) => live.add(k));
    for (const trial of this.trials.values())
      for (const p of trial.points) if (p) for (const [k, v] of Object.entries(p)) if (typeof v === "number" && !NOT_CURVES.has(k) && !live.has(k)) names.add(k);
    return [...names, ...live];
  }
}

// ---- the run page: charts ------------------------------------------------------------

class Charts {
  constructor(root, log) {
    this.root = root;
    this.log = log;
    this.plots = new Map(); // curve -> {plot, key}
  }

  draw() {
    const trials = [...this.log.trials.values()].filter((t) => t.points.length > 0);
    const epochs = Math.max(0, ...trials.map((t) => t.points.length));
    const xs = Array.from({ length: epochs }, (_, i) => i + 1);
    const key = trials.map((t) => t.id).join(",");
    for (const name of this.log.curves()) {
      const ys = trials.map((t) => xs.map((x) => { const v = t.points[x - 1]?.[name]; return typeof v === "number" ? v : null; }));
      if (!ys.some((series) => series.some((v) => v !== null))) continue;
      let entry = this.plots.get(name);
      if (!entry || entry.key !== key) {
        entry?.plot.destroy();
        entry?.box.remove();
        const box = entry?.box || el("div", { className: "chart" });
        box.dataset.curve = name;
        this.root.append(box);
        entry = { key, box, plot: this.make(name, trials, [xs, ...ys], box) };
        this.plots.set(name, entry);
      } else {
        entry.plot.setData([xs, ...ys]);
      }
      entry.box.dataset.epochs = String(epochs);
    }
  }

  make(name, trials, data, box) {
    const log = this.log;
    const marks = {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.lineWidth = 1;
          ctx.setLineDash([4, 3]);
          for (const m of log.marks) {
            const x = u.valToPos(m.x, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = MARK_COLORS[m.kind] || "#999";
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
    return new uPlot({
      title: name,
      width: Math.max(300, box.clientWidth - 8),
      height: 180,
      scales: { x: { time: false } },
      axes: [{}, { size: 56 }],
      series: [{ label: "epoch" }, ...trials.map((t) => ({ label: trialName(t.id), stroke: COLORS[t.id % COLORS.length], width: 1.5, spanGaps: false, points: { show: false } }))],
      legend: { show: trials.length <= 12 },
      plugins: [marks],
    }, data, box);
  }
}

// ---- the run page: steering ----------------------------------------------------------

class Steering {
  constructor(name) {
    this.name = name;
    this.sent = []; // {what, sha, reads, node, settled}
    this.settings = null;
    this.running = [];
    this.picker = null;
    $("#target").addEventListener("change", () => this.enable());
    $("#rollback-to").addEventListener("change", () => { $("#rollback-epoch").hidden = $("#rollback-to").value !== "epoch"; });
    for (const id of ["pause", "resume", "checkpoint"]) $(`#${id}`).addEventListener("click", () => this.send({ action: { do: id } }, id));
    $("#stop-trial").addEventListener("click", () => this.send({ action: { do: "stop" } }, "stop", this.target() ?? this.running[0]));
    $("#stop-run").addEventListener("click", () => {
      if (confirm("Stop the whole run?")) this.send({ action: { do: "stop" } }, "stop the run", null);
    });
    $("#rollback").addEventListener("click", () => {
      const choice = $("#rollback-to").value;
      const epoch = $("#rollback-epoch").value.trim();
      if (choice === "epoch" && !/^\d+$/.test(epoch)) { $("#rollback-epoch").focus(); return; }
      const to = choice === "epoch" ? Number(epoch) : choice;
      this.send({ action: { do: "rollback", to } }, `rollback to ${to}`);
    });
  }

  target() {
    const value = $("#target").value;
    return value === "" ? null : Number(value);
  }

  update(run) {
    const status = run.status;
    const control = status.control || {};
    const running = Object.keys(status.trials || {}).map(Number).sort((a, b) => a - b);
    const picker = running.map((t) => `${t}:${status.trials[t].state}`).join();
    if (picker !== this.picker) { // rebuilt only when the trials change: an open list stays open
      this.picker = picker;
      const select = $("#target");
      const chosen = select.value;
      select.replaceChildren(el("option", { value: "" }, running.length > 1 ? "every running trial" : "the running trial"),
        ...running.map((t) => el("option", { value: String(t) }, `${trialName(t)} (${status.trials[t].state})`)));
      select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    }
    this.running = running;
    this.enable();
    const names = control.settings || [];
    if (names.join() !== this.settings) {
      this.settings = names.join();
      $("#settings").replaceChildren(...names.map((name) => {
        const bounds = (control.bounds || {})[name] || {};
        const input = el("input", { id: `setting-${name}`, type: "number", step: "any", title: boundsText(bounds) });
        const button = el("button", { id: `set-${name}` }, `Set ${name}`);
        button.addEventListener("click", () => {
          const value = Number(input.value);
          if (input.value === "" || !Number.isFinite(value)) { input.focus(); return; }
          this.send({ settings: { [name]: value } }, `${name}=${value}`);
        });
        return el("div", { className: "row" }, el("label", { htmlFor: input.id }, name), input, button);
      }));
    }
    const shown = running.length ? (status.trials[this.target() ?? running[0]] || {}).hyperparameters || {} : {};
    for (const name of names) $(`#setting-${name}`).placeholder = fmt(shown[name]);
    this.settle(status, run.control_sha256);
  }

  enable() { // a stop without a trial ends the run: "Stop trial" needs one
    $("#stop-trial").disabled = this.target() === null && this.running.length !== 1;
  }

  async send(order, what, trial = this.target()) {
    const node = el("li", { className: "order" });
    node.dataset.state = "sending";
    $("#orders").prepend(node);
    const entry = { what: trial === null ? what : `${trialName(trial)}: ${what}`, node, settled: false };
    this.sent.unshift(entry);
    this.show(entry, "sending", "");
    try {
      const answer = await api(`/api/runs/${encodeURIComponent(this.name)}/orders`, {
        method: "POST", body: JSON.stringify({ ...order, trial }),
      });
      Object.assign(entry, { sha: answer.sha256, reads: answer.reads_before });
      this.show(entry, "pending", "written to control.json; waiting for the run");
    } catch (err) {
      entry.settled = true;
      this.show(entry, "refused", err.message);
    }
  }

  // Each order the page sent, as runner nudge waits for it: the run's read of the version it
  // wrote (by its SHA-256), settled once every order in it is, and training has had its say on
  // a nudge (refusable_until: a divergence in its next steps still refuses it).
  settle(status, controlSha) {
    const recent = status.control.recent || [];
    const ended = !status.alive || status.run.state !== "running";
    for (const entry of this.sent) {
      if (entry.settled || !entry.sha) continue;
      const newer = recent.filter((r) => (r.read || 0) > entry.reads);
      const read = newer.find((r) => r.sha256 === entry.sha);
      if (read) {
        if (read.outcome === "rejected") { entry.settled = true; this.show(entry, "refused", read.message); continue; }
        if (read.orders.some((o) => o.state === "pending")) {
          if (!ended) { this.show(entry, "pending", "read by the run; applying"); continue; }
          entry.settled = true;
          this.show(entry, "dropped", "the run ended before it carried this out");
          continue;
        }
        const onTrial = read.orders.filter((o) => o.refusable_until != null && status.trials[o.trial]?.state === "running");
        const bad = read.orders.find((o) => o.state !== "applied");
        const where = read.orders.map((o) => `${trialName(o.trial)} at step ${o.step ?? "–"}`).join(", ");
        if (bad) { entry.settled = true; this.show(entry, bad.state, bad.detail || bad.what); }
        else if (!read.orders.length) { entry.settled = true; this.show(entry, "no-change", "the run already had these settings"); }
        else if (onTrial.length && !ended) this.show(entry, "on-trial", `${where}; refused if training diverges by step ${onTrial[0].refusable_until}`);
        else { entry.settled = true; this.show(entry, "applied", where); }
      } else if (ended) {
        entry.settled = true;
        this.show(entry, "dropped", "the run ended before it read this");
      } else if (newer.length && controlSha && controlSha !== entry.sha) {
        entry.settled = true;
        this.show(entry, "superseded", "the run read a later version of the control file instead, made on top of this one (see its verdict)");
      }
    }
  }

  show(entry, state, detail) {
    entry.node.dataset.state = state;
    entry.node.replaceChildren(el("span", { className: `badge ${state}` }, state), ` ${entry.what}`, detail ? el("div", { className: "muted" }, detail) : null);
  }
}

function boundsText(bounds) {
  const words = { gt: ">", ge: "≥", lt: "<", le: "≤" };
  return Object.entries(bounds).map(([k, v]) => `${words[k]} ${v}`).join(", ");
}

// ---- the run page ----------------------------------------------------------------------

async function runPage(name) {
  $("#page").append($("#run-view").content.cloneNode(true));
  $("#where").textContent = name;
  $("#run-name").textContent = name;
  const log = new RunLog();
  const charts = new Charts($("#charts"), log);
  const steering = new Steering(name);
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; charts.draw(); drawMarks(log); drawLeaderboard(log); });
  };
  const source = new EventSource(`/api/runs/${encodeURIComponent(name)}/stream?token=${encodeURIComponent(TOKEN)}`);
  const restart = () => { log.clear(); $("#charts").replaceChildren(); charts.plots.clear(); redraw(); };
  // Each connection, a reconnection too, sends the whole log from its start.
  source.addEventListener("open", () => { restart(); setConnection("live", true); });
  source.addEventListener("error", () => setConnection("reconnecting…", false));
  source.addEventListener("reset", restart);
  source.addEventListener("log", (message) => {
    for (const event of JSON.parse(message.data)) log.add(event);
    redraw();
  });
  source.addEventListener("run", (message) => {
    const run = JSON.parse(message.data);
    showRun(run, log);
    if (run.status) steering.update(run);
  });
}

function showRun(run, log) {
  const status = run.status;
  if (!status) { $("#run-note").textContent = "no status.json yet"; return; }
  const state = status.run.state;
  const badge = $("#run-state");
  badge.textContent = stateText(state, status.alive);
  badge.className = `badge ${stateClass(state, status.alive)}`;
  const live = status.alive && state === "running";
  $("#steer").hidden = !live;
  $("#run-note").textContent = live
    ? `${status.run.name}: ${Object.keys(status.trials).length} trial(s) running`
    : state === "finished" ? `${status.run.name}: finished (read-only)` : `${status.run.name}: not running (read-only); runner resume goes on`;
  const control = status.control || {};
  const change = control.last_change;
  $("#last-change").textContent = change
    ? `last change ${when(change.t)}: ${trialName(change.trial)} ${change.what} ` + Object.entries(change.changes || {}).map(([k, c]) => `${k} ${fmt(c.old)} → ${fmt(c.new)}`).join(", ") + ` (${change.source})`
    : "no change yet";
  const error = control.last_error;
  $("#last-error").hidden = !error;
  $("#last-error").textContent = error ? `last error ${when(error.t)}: ${error.message}` : "";
  $("#reads").replaceChildren(...(control.recent || []).slice(0, 6).map((r) =>
    el("li", {}, el("span", { className: `badge ${r.outcome.replaceAll(" ", "-")}` }, r.outcome), ` read ${r.read} at ${when(r.t)}: `,
      r.orders.map((o) => `${trialName(o.trial)} ${o.what} (${o.state})`).join(", ") || r.message || "no orders")));
  $("#control-file").textContent = run.control_file ?? "(no control file)";
  if (log.metric) $("#metric-head").textContent = `best ${log.metric}`;
}

function drawMarks(log) {
  $("#marks").replaceChildren(...log.marks.slice(-30).reverse().map((m) =>
    el("li", {}, el("span", { className: "swatch", style: `background:${MARK_COLORS[m.kind] || "#999"}` }),
      ` ${trialName(m.trial)} epoch ${Math.ceil(m.x)}: ${m.text}`)));
}

function drawLeaderboard(log) {
  const sign = log.mode === "min" ? 1 : -1;
  const rows = [...log.trials.values()].map((t) => ({ t, best: log.best(t) }));
  rows.sort((a, b) => (a.best === null || a.best === undefined) - (b.best === null || b.best === undefined) || sign * (a.best - b.best) || a.t.id - b.t.id);
  $("#leaderboard tbody").replaceChildren(...rows.map(({ t, best }) =>
    el("tr", {},
      el("td", {}, el("span", { className: "swatch", style: `background:${COLORS[t.id % COLORS.length]}` }), ` ${trialName(t.id)}`),
      el("td", {}, t.state),
      el("td", {}, String(t.points.length)),
      el("td", {}, fmt(best)),
      el("td", {}, Object.entries(t.hyper).map(([k, v]) => `${k}=${fmt(v)}`).join(" ")),
      el("td", { className: "params" }, Object.entries(t.params).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v) : JSON.stringify(v)}`).join(" ")),
    )));
}

const match = location.pathname.match(/^\/runs\/([^/]+)$/);
if (match) runPage(decodeURIComponent(match[1]));
else runsPage();
