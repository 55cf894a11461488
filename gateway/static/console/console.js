// Chorus console: REST for state, one WebSocket (the global event feed) for liveness.
// Every value from the server is inserted as text (never as HTML): agents are untrusted.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, me: null, ws: null, last: null, events: [], agentsByUuid: {}, timers: {},
  agentsDirty: false };
// The feed runs ahead of the read models: a read that does not show an event yet is
// repeated a few times, with growing pauses, then left to the next event.
const RETRIES = 20;
const later = (attempt, fn) => setTimeout(fn, Math.min(50 * 2 ** attempt, 2000));
const AUDITORS = new Set(["auditor", "admin"]);
const KINDS = { workflow: "workflows", session: "sessions", agent: "agents" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const short = (id) => (id || "").slice(0, 8);
const status = (s) => el("span", { class: `status s-${s}` }, s);
const when = (t) => (t ? new Date(t).toLocaleTimeString() : "");

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${path}`);
  return body;
}

// Debounced refreshes: a burst of events causes one request per kind.
function schedule(name, fn, delay = 300) {
  if (state.timers[name]) return;
  state.timers[name] = setTimeout(() => {
    delete state.timers[name];
    fn().catch((e) => console.warn(name, e));
  }, delay);
}

// Overview ---------------------------------------------------------------------------------

function stat(label, value, parts) {
  return el("div", { class: "card stat" },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    el("div", { class: "parts" }, parts || ""));
}

const total = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);
const breakdown = (counts) => Object.entries(counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");

async function loadOverview() {
  const m = await api("/api/v1/metrics");
  const lag = Object.entries(m.projections).map(([k, p]) => `${k} ${p.lag}`).join(", ");
  const maxLag = Math.max(0, ...Object.values(m.projections).map((p) => p.lag));
  const minute = Date.now() - 60_000;
  const recent = state.events.filter((e) => Date.parse(e.occurred_at) >= minute).length;
  $("overview").replaceChildren(
    stat("workflows", total(m.workflows), breakdown(m.workflows)),
    stat("sessions", total(m.sessions), breakdown(m.sessions)),
    stat("agents", total(m.agents), breakdown(m.agents)),
    stat("events / min", recent, `log head ${m.event_store_head}`),
    stat("projection lag", maxLag, lag),
    stat("seal", m.seal.unsealed === 0 ? "sealed" : `${m.seal.unsealed} unsealed`,
      `through ${m.seal.sealed_through}`),
  );
  $("overview").dataset.head = m.event_store_head;
  return m;
}

// Overview and agents, once every read model has applied the newest event seen.
async function sync(attempt = 0) {
  const m = await loadOverview();
  const behind = Object.values(m.projections).some((p) => p.position < (state.last || 0));
  if (behind && attempt < RETRIES) return later(attempt, () => sync(attempt + 1).catch(console.warn));
  if (state.agentsDirty) {
    state.agentsDirty = false;
    await loadList("agents");
  }
}

// Tables -------------------------------------------------------------------------------------

const ROWS = {
  workflows: (w) => el("tr", { "data-id": w.workflow_id, "data-status": w.status },
    el("td", { class: "id" }, short(w.workflow_id)), el("td", {}, w.workflow_type),
    el("td", {}, w.priority), el("td", {}, status(w.status)),
    el("td", {}, el("div", { class: "bar", title: `${w.progress}%` },
      el("span", { style: `width:${Number(w.progress) || 0}%` })), `${w.progress}%`),
    el("td", {}, w.current_phase || ""), el("td", {}, w.current_assignee || ""),
    el("td", { title: (w.errors || []).map((e) => e.message || e.code).join("\n") },
      (w.errors || []).length || ""),
    el("td", {}, when(w.estimated_completion))),
  sessions: (s) => el("tr", { "data-id": s.session_id, "data-status": s.status },
    el("td", { class: "id" }, short(s.session_id)), el("td", {}, status(s.status)),
    el("td", {}, s.participants.join(", ")),
    el("td", {}, `${Object.keys(s.results || {}).length} / ${s.participants.length}`),
    el("td", {}, s.outcome ? (s.outcome.reason || s.outcome.status || JSON.stringify(s.outcome)) : "")),
  agents: (a) => el("tr", { "data-id": a.agent_id, "data-status": a.status },
    el("td", {}, a.agent_id), el("td", {}, status(a.status)),
    el("td", {}, el("div", { class: "bar", title: a.reliability_score.toFixed(2) },
      el("span", { style: `width:${Math.round(a.reliability_score * 100)}%` })),
      a.reliability_score.toFixed(2)),
    el("td", { class: "verdicts" }, `${a.verified} verified, ${a.rejected} rejected`),
    el("td", {}, `${a.open_tasks} open / ${a.total_tasks}`),
    el("td", {}, (a.capabilities || []).join(", "))),
};
const ID = { workflows: "workflow_id", sessions: "session_id", agents: "agent_id" };

function upsert(kind, item, flash) {
  const body = $(kind).tBodies[0];
  const row = ROWS[kind](item);
  row.addEventListener("click", () => showDetail(kind, item[ID[kind]]));
  const old = body.querySelector(`tr[data-id="${CSS.escape(item[ID[kind]])}"]`);
  if (old) old.replaceWith(row);
  else body.prepend(row);
  if (flash) row.classList.add("changed");
  if (kind === "agents") state.agentsByUuid[item.uuid] = item.agent_id;
}

async function loadList(kind) {
  const page = await api(`/api/v1/${kind}?limit=50`);
  $(kind).tBodies[0].replaceChildren();
  for (const item of page.items.slice().reverse()) upsert(kind, item, false);
  if (kind === "agents") await sparklines(page.items.map((a) => a.agent_id));
}

// A sparkline of an agent's latest verdicts, oldest first: a tall green bar for each
// verified claim, a short red one for each rejected.
const SVG = "http://www.w3.org/2000/svg";
function sparkline(marks) {
  const svg = document.createElementNS(SVG, "svg");
  const ok = marks.filter(Boolean).length;
  for (const [k, v] of Object.entries({ class: "spark", width: String(Math.max(marks.length * 4, 1)),
    height: "14", role: "img", "aria-label": `${ok} of ${marks.length} recent verdicts verified` })) {
    svg.setAttribute(k, v);
  }
  marks.forEach((verified, i) => {
    const bar = document.createElementNS(SVG, "rect");
    for (const [k, v] of Object.entries({ x: String(i * 4), width: "3", y: verified ? "0" : "7",
      height: verified ? "14" : "7", class: verified ? "ok" : "bad" })) bar.setAttribute(k, v);
    svg.append(bar);
  });
  return svg;
}

async function sparklines(ids) {
  if (!ids.length) return;
  const query = ids.map((id) => `agent=${encodeURIComponent(id)}`).join("&");
  const recent = await api(`/api/v1/verdicts/recent?${query}`);
  for (const id of ids) {
    const cell = $("agents").tBodies[0].querySelector(`tr[data-id="${CSS.escape(id)}"] td.verdicts`);
    if (cell && recent[id] && recent[id].length) cell.prepend(sparkline(recent[id]), " ");
  }
}

async function refreshOne(kind, id, version, attempt = 0) {
  let item = null;
  try {
    item = await api(`/api/v1/${kind}/${encodeURIComponent(id)}`);
  } catch (e) {
    console.warn(kind, id, e); // not in the read model yet
  }
  if (item) {
    upsert(kind, item, true);
    if (kind === "agents") await sparklines([item.agent_id]);
  }
  if ((!item || item.version < version) && attempt < RETRIES) {
    later(attempt, () => refreshOne(kind, id, version, attempt + 1));
  }
}

// The live tail ------------------------------------------------------------------------------

const typeOf = (r) => (r.type === "event" && r.event ? r.event : r.type);

function tailLine(r) {
  const text = `${r.position}  ${when(r.occurred_at)}  ${r.aggregate}  ${typeOf(r)}  ${r.aggregate_id}`;
  return el("li", { "data-text": text.toLowerCase() }, text);
}

function applyFilter() {
  const needle = $("filter").value.trim().toLowerCase();
  for (const li of $("tail").children) li.hidden = needle !== "" && !li.dataset.text.includes(needle);
}

function onEvent(r) {
  state.last = Math.max(state.last || 0, r.position);
  state.events.push(r);
  if (state.events.length > 500) state.events.shift();
  const line = tailLine(r);
  $("tail").prepend(line);
  while ($("tail").children.length > 200) $("tail").lastElementChild.remove();
  applyFilter();
  const kind = KINDS[r.aggregate];
  if (kind === "workflows" || kind === "sessions") {
    schedule(`${kind}:${r.aggregate_id}`, () => refreshOne(kind, r.aggregate_id, r.version), 50);
    state.agentsDirty = true; // busy / idle follow assignments
  } else if (kind === "agents") {
    const name = state.agentsByUuid[r.aggregate_id];
    if (name) schedule(`agents:${name}`, () => refreshOne("agents", name, r.version), 50);
    else state.agentsDirty = true;
  }
  schedule("sync", sync, 300);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const from = state.last === null ? "tail=50" : `since=${state.last}`;
  const ws = new WebSocket(`${scheme}://${location.host}/api/v1/events/feed?${from}` +
    `&token=${encodeURIComponent(state.key)}`);
  state.ws = ws;
  ws.onopen = () => { $("live").textContent = "live"; $("live").className = "badge on"; };
  ws.onmessage = (m) => {
    let r;
    try { r = JSON.parse(m.data); } catch { return; }
    if (typeof r.position === "number") onEvent(r);
  };
  ws.onclose = () => {
    $("live").textContent = "offline"; $("live").className = "badge off";
    if (state.ws === ws && state.key) setTimeout(connect, 2000); // reconnect, resuming
  };
}

// Detail: the entity, its history and (auditors) its state at a version ----------------------

async function showDetail(kind, id) {
  const auditor = AUDITORS.has(state.me.role);
  $("detail").hidden = false;
  $("detail-title").textContent = `${kind.slice(0, -1)} ${id}`;
  $("detail-body").textContent = JSON.stringify(await api(`/api/v1/${kind}/${encodeURIComponent(id)}`), null, 2);
  $("detail-travel").hidden = !auditor;
  $("detail-history-title").hidden = !auditor;
  $("detail-history").replaceChildren();
  $("detail-go").onclick = async () => {
    const v = Number($("detail-version").value);
    $("detail-body").textContent = JSON.stringify(
      await api(`/api/v1/${kind}/${encodeURIComponent(id)}?at_version=${v}`), null, 2);
  };
  if (auditor) {
    const history = await api(`/api/v1/${kind}/${encodeURIComponent(id)}/events`);
    for (const e of history.items) {
      $("detail-history").append(el("li", { value: e.version },
        `${e.type} by ${e.actor} at ${when(e.occurred_at)} (position ${e.position})`));
    }
  }
}

// Signing in -----------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  state.me = await api("/api/v1/console/me");
  sessionStorage.setItem("chorus.key", key);
  $("who").textContent = `${state.me.actor} (${state.me.role})`;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  await Promise.all([loadOverview(), loadList("workflows"), loadList("sessions"), loadList("agents")]);
  connect();
}

function signOut() {
  sessionStorage.removeItem("chorus.key");
  state.key = null;
  if (state.ws) state.ws.close();
  location.reload();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try { await signIn($("key").value.trim()); } catch (e) {
      state.key = null;
      $("signin-error").textContent = `Sign-in failed: ${e.message}`;
    }
  });
  $("signout").addEventListener("click", signOut);
  $("filter").addEventListener("input", applyFilter);
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  const saved = sessionStorage.getItem("chorus.key");
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem("chorus.key"));
});
