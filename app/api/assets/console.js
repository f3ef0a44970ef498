// The operations console. Every row is built from text nodes, never HTML, so node metadata,
// error messages and message bodies show as text whatever they hold. No build; one library,
// uPlot (vendor/uplot), draws the charts on canvases.
"use strict";

const TOKEN_KEY = "qosmesh.admin-token";
const TABS = ["nodes", "messaging", "dlq", "health", "catalogue"];
const POLL_MESSAGING_MS = 2000;
const POLL_HEALTH_MS = 5000;
const $ = (id) => document.getElementById(id);

const state = {
  info: null, // /console/api/info: service, node_id, version, admin
  nodes: new Map(), // node_id -> NodeInfo, from /nodes/events
  ready: new Map(), // node_id -> bool, from /cluster/health (this service's instances)
  handled: new Map(), // consumer -> [handled, at ms], for the rate
  nodesDown: false, // the event stream is reconnecting
  skew: 0, // the serving instance's clock minus this browser's, in ms
  group: null, // the dead-letter group open, if any
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ""))));
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function age(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 90) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function since(iso) {
  // Counted on the serving instance's clock, as the heartbeats stream tells it.
  return (Date.now() + state.skew - Date.parse(iso)) / 1000;
}

async function getJson(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  if (!response.ok) {
    const error = new Error(`HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

// -- tabs -------------------------------------------------------------------------------

function show(tab) {
  for (const button of document.querySelectorAll("[role=tab]")) {
    const selected = button.dataset.tab === tab;
    button.setAttribute("aria-selected", String(selected));
    $(button.dataset.tab).hidden = !selected;
  }
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
  if (tab === "dlq") openDeadLetters();
  if (tab === "catalogue") loadCatalogue();
  if (tab === "messaging") pollMessaging();
  if (tab === "health") pollHealth();
}

// -- nodes ------------------------------------------------------------------------------

function renderNodes() {
  const nodes = [...state.nodes.values()].sort(
    (a, b) => a.service.localeCompare(b.service) || a.node_id.localeCompare(b.node_id),
  );
  fill(
    $("nodes-table").tBodies[0],
    nodes.map((node) => {
      const mine = state.info && node.service === state.info.service;
      const ready = state.ready.get(node.node_id);
      const self = state.info && node.node_id === state.info.node_id;
      return el(
        "tr",
        { class: self ? "self" : "", "data-node": node.node_id },
        el("td", {}, node.service),
        el("td", {}, node.node_id, self ? " (this instance)" : ""),
        el("td", {}, node.address),
        el("td", {}, node.version),
        el("td", {}, age(since(node.started_at))),
        el("td", { class: "heartbeat", "data-age": since(node.last_seen).toFixed(2) }, age(since(node.last_seen))),
        el("td", { class: ready ? "ok" : "bad" }, !mine || ready === undefined ? "" : ready ? "yes" : "no"),
      );
    }),
  );
  $("nodes-status").textContent = state.nodesDown
    ? "reconnecting…"
    : `${nodes.length} instance${nodes.length === 1 ? "" : "s"}`;
}

function followNodes() {
  const source = new EventSource("/nodes/events");
  let opened = false;
  source.addEventListener("open", () => {
    if (opened) state.nodes.clear(); // the stream sends every live node again
    opened = true;
  });
  const upsert = (event) => {
    const { node } = JSON.parse(event.data);
    state.nodes.set(node.node_id, node);
    renderNodes();
  };
  source.addEventListener("joined", upsert);
  source.addEventListener("updated", upsert);
  source.addEventListener("heartbeats", (event) => {
    // Every second: each live node's last heartbeat, which joins and updates do not carry.
    const { now, last_seen: seen } = JSON.parse(event.data);
    state.skew = Date.parse(now) - Date.now();
    for (const [id, at] of Object.entries(seen)) {
      const node = state.nodes.get(id);
      if (node) node.last_seen = at;
    }
    renderNodes();
  });
  source.addEventListener("left", (event) => {
    state.nodes.delete(JSON.parse(event.data).node.node_id);
    renderNodes();
  });
  source.addEventListener("error", () => {
    state.nodesDown = true;
    if (source.readyState === EventSource.CLOSED) {
      // Closed for good (an error status): the browser will not retry, so we do.
      setTimeout(followNodes, 3000);
    }
  });
  source.addEventListener("open", () => {
    state.nodesDown = false;
  });
}

// -- messaging --------------------------------------------------------------------------

const SCOPE_KEY = "qosmesh.messaging-scope";
const CHART_COLORS = ["#1f5fbf", "#c2410c", "#1b7f3b", "#7e22ce", "#b42318", "#0e7490", "#a16207"];
const CHART_HEIGHT = 160;

function scope() {
  return sessionStorage.getItem(SCOPE_KEY) === "service" ? "service" : "instance";
}

function setScope(value) {
  sessionStorage.setItem(SCOPE_KEY, value);
  state.handled.clear(); // rates start again from the new scope's counts
  for (const button of document.querySelectorAll(".scope button")) {
    button.setAttribute("aria-pressed", String(button.dataset.scope === value));
  }
  pollMessaging();
}

function counter(label, value, whose) {
  return el("div", { class: "counter" }, el("b", {}, value ?? "–"), el("span", {}, `${label} · ${whose}`));
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? null : `${(seconds * 1000).toFixed(1)} ms`;
}

function describeScope(data) {
  if (data.scope === "instance") {
    return `This instance (${data.instances[0]}): its own counters and charts. Choose “The whole service” for every instance's.`;
  }
  const n = data.instances.length;
  const missing = data.missing.length ? ` Not answering: ${data.missing.join(", ")}.` : "";
  return (
    `The service ${state.info ? state.info.service : ""}: ${n} instance${n === 1 ? "" : "s"} (${data.instances.join(", ")}). ` +
    "Counters added up; a consumer they share has its pending and oldest unacked counted once; " +
    `percentiles from their histograms merged.${missing}`
  );
}

async function pollMessaging() {
  let data;
  try {
    data = await getJson(`/console/api/messaging?scope=${scope()}`);
  } catch (error) {
    $("qos-counters").replaceChildren(el("p", { class: "status" }, `messaging: ${error.message}`));
    return;
  }
  const whose = data.scope === "service" ? "service" : "this instance";
  $("messaging-scope").textContent = describeScope(data);
  $("messaging").dataset.scope = data.scope;
  const now = Date.now() - (data.age ?? 0) * 1000; // when the instance read its counters
  const hits = Object.entries(data.qos.dedupe_hits);
  $("qos-counters").replaceChildren(
    counter("QoS 0 lost", data.qos.qos0_lost, whose),
    counter("publish retries", data.qos.publish_retries, whose),
    counter("redeliveries", data.qos.redeliveries, whose),
    counter(
      `dedupe hits (${hits.map(([side, n]) => `${side} ${n}`).join(", ")})`,
      hits.reduce((sum, [, n]) => sum + n, 0),
      whose,
    ),
    counter("publish p50 / p99", `${ms(data.latency.publish_p50) ?? "–"} / ${ms(data.latency.publish_p99) ?? "–"}`, whose),
    counter("handler p50 / p99", `${ms(data.latency.handler_p50) ?? "–"} / ${ms(data.latency.handler_p99) ?? "–"}`, whose),
  );
  fill(
    $("consumers-table").tBodies[0],
    data.consumers.map((c) => {
      const before = state.handled.get(c.consumer);
      state.handled.set(c.consumer, [c.handled, now]);
      const rate = before ? ((c.handled - before[0]) * 1000) / Math.max(1, now - before[1]) : 0;
      return el(
        "tr",
        { "data-consumer": c.consumer, "data-pending": c.pending ?? "", "data-handled": c.handled },
        el("td", {}, c.consumer, el("br"), el("small", {}, `${c.subject} · ${c.shared ? "shared by the instances" : "one per instance"}`)),
        el("td", {}, c.qos),
        el("td", {}, c.transport),
        el("td", {}, c.pending ?? "n/a"),
        el("td", {}, age(c.oldest_unacked)),
        el("td", {}, rate.toFixed(1)),
        el("td", {}, c.handled),
        el("td", {}, c.redeliveries),
        el("td", { class: c.dead_letters ? "bad" : "" }, c.dead_letters),
      );
    }),
  );
  $("charts-title").textContent = `The last minutes · ${whose}`;
  drawCharts(data.charts);
}

// One uPlot per figure, kept while its series stay the same; `window.qosmeshCharts` holds
// them (what each draws can be read back from `.data` and `.series`).
const charts = {};
window.qosmeshCharts = charts;

function chartSeries(data, name) {
  const values = data[name];
  if (Array.isArray(values)) return [["publish p99", values.map((v) => (v === null ? null : v * 1000))]];
  return Object.entries(values ?? {}).sort(([a], [b]) => a.localeCompare(b));
}

function drawCharts(data) {
  for (const figure of document.querySelectorAll("#charts figure")) {
    const name = figure.dataset.chart;
    const series = chartSeries(data, name);
    const rows = [data.t, ...series.map(([, values]) => values)];
    const labels = series.map(([label]) => label).join("\n");
    const chart = charts[name];
    const width = Math.max(200, figure.clientWidth - 16);
    if (chart && chart.labels === labels && data.t.length) {
      chart.setData(rows);
      if (Math.abs(chart.width - width) > 4) chart.setSize({ width, height: CHART_HEIGHT });
      continue;
    }
    if (chart) chart.destroy();
    delete charts[name];
    for (const old of figure.querySelectorAll(".uplot, .empty")) old.remove();
    if (!data.t.length || !series.length || typeof uPlot === "undefined") {
      figure.append(el("p", { class: "empty" }, "nothing yet"));
      continue;
    }
    const made = new uPlot(
      {
        width,
        height: CHART_HEIGHT,
        legend: { show: true },
        cursor: { points: { size: 5 } },
        scales: { x: { time: true } },
        axes: [{}, { size: 50 }],
        series: [
          {},
          ...series.map(([label], i) => ({
            label,
            stroke: CHART_COLORS[i % CHART_COLORS.length],
            width: 1.5,
            spanGaps: false,
          })),
        ],
      },
      rows,
      figure,
    );
    made.labels = labels;
    charts[name] = made;
  }
}

// -- cluster health ---------------------------------------------------------------------

async function pollHealth() {
  try {
    const data = await getJson("/cluster/health");
    state.ready = new Map(data.instances.map((i) => [i.node_id, i.ready]));
    fill(
      $("health-table").tBodies[0],
      data.instances.map((i) =>
        el(
          "tr",
          { class: i.node_id === data.self ? "self" : "" },
          el("td", {}, i.node_id),
          el("td", {}, i.address),
          el("td", { class: i.ready ? "ok" : "bad" }, i.ready ? "yes" : "no"),
          el("td", {}, i.rtt_ms === null ? "" : `${i.rtt_ms} ms`),
          el("td", { class: "error" }, i.error ?? ""),
        ),
      ),
    );
    $("health-status").textContent = `asked ${data.instances.length} at ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("health-status").textContent = `cluster health: ${error.message}`;
  }
}

// -- dead letters -----------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function admin(path, options = {}) {
  try {
    return await getJson(path, { ...options, headers: { Authorization: `Bearer ${token()}` } });
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      openDeadLetters("That token was refused.");
    }
    throw error;
  }
}

function openDeadLetters(message) {
  const enabled = state.info && state.info.admin;
  $("dlq-off").hidden = enabled !== false;
  $("dlq-login").hidden = !enabled || Boolean(token());
  $("dlq-view").hidden = !enabled || !token();
  if (message) $("dlq-status").textContent = message;
  if (enabled && !token() && message) $("dlq-login").querySelector(".hint").textContent = message;
  if (enabled && token()) {
    loadGroups();
    if (state.info.outbox) loadOutboxRows();
  }
}

// -- outbox rows refused for good (a service with a database) ---------------------------

async function loadOutboxRows() {
  let data;
  try {
    data = await admin("/admin/outbox/dead");
  } catch (error) {
    $("outbox-status").textContent = `outbox: ${error.message}`;
    return;
  }
  $("outbox-dead").hidden = false;
  $("outbox-status").textContent =
    `${data.total} outbox row${data.total === 1 ? "" : "s"} refused for good` +
    (data.total ? ": their keys went on without them" : "");
  fill(
    $("outbox-table").tBodies[0],
    data.items.map((r) =>
      el(
        "tr",
        { "data-row": r.id },
        el("td", {}, r.id),
        el("td", {}, r.type),
        el("td", {}, r.message_id),
        el("td", {}, r.ordering_key || "-"),
        el("td", {}, new Date(r.dead_at).toLocaleString()),
        el("td", { class: "error" }, r.error),
        el(
          "td",
          {},
          el("button", { type: "button", class: "retry-row", onclick: () => rowAction(r, "retry") }, "Retry"),
          el("button", { type: "button", class: "discard-row", onclick: () => rowAction(r, "discard") }, "Discard"),
        ),
      ),
    ),
  );
}

async function rowAction(row, action) {
  const verb = action === "retry" ? "Retry" : "Discard";
  if (!window.confirm(`${verb} outbox row ${row.id} (${row.type} ${row.message_id})?`)) return;
  try {
    if (action === "retry") await admin(`/admin/outbox/dead/${row.id}/retry`, { method: "POST" });
    else await admin(`/admin/outbox/dead/${row.id}`, { method: "DELETE" });
    $("dlq-result").textContent = `${action === "retry" ? "handed back to the relay" : "discarded"}: outbox row ${row.id}`;
  } catch (error) {
    $("dlq-result").textContent = `${verb} outbox row ${row.id}: ${error.message}`;
  }
  await loadOutboxRows();
}

async function loadGroups() {
  let data;
  try {
    data = await admin("/admin/dlq/groups");
  } catch (error) {
    $("dlq-status").textContent = `dead letters: ${error.message}`;
    return;
  }
  const total = data.groups.reduce((sum, g) => sum + g.count, 0);
  $("dlq-status").textContent =
    `${total} dead letter${total === 1 ? "" : "s"} in ${data.groups.length} group${data.groups.length === 1 ? "" : "s"}` +
    (data.complete ? "" : ` (the newest ${data.scanned})`);
  fill(
    $("groups-table").tBodies[0],
    data.groups.map((g) =>
      el(
        "tr",
        { "data-fingerprint": g.fingerprint },
        el("td", {}, g.label, g.type ? "" : el("br"), g.type ? "" : el("small", {}, "not a qosmesh message type")),
        el("td", {}, g.reason, el("br"), el("small", {}, g.explanation)),
        el("td", {}, g.error_type),
        el("td", {}, g.count),
        el("td", {}, new Date(g.last_dead_at).toLocaleString()),
        el(
          "td",
          {},
          el("button", { type: "button", class: "open", onclick: () => openGroup(g) }, "Open"),
          el("button", { type: "button", class: "replay-group", onclick: () => groupAction(g, "replay") }, "Replay all"),
          el("button", { type: "button", class: "discard-group", onclick: () => groupAction(g, "discard") }, "Discard all"),
        ),
      ),
    ),
  );
  if (state.group) {
    const still = data.groups.find((g) => g.fingerprint === state.group.fingerprint);
    if (still) await openGroup(still);
    else closeGroup();
  }
}

function closeGroup() {
  state.group = null;
  $("group-detail").hidden = true;
  $("letter-detail").hidden = true;
}

async function openGroup(group) {
  state.group = group;
  $("letter-detail").hidden = true;
  let letters;
  try {
    letters = (await admin(`/admin/dlq/groups/${group.fingerprint}`)).items;
  } catch (error) {
    $("dlq-result").textContent = `group ${group.label}: ${error.message}`;
    return;
  }
  $("group-title").textContent = `${group.label} · ${group.reason} · ${group.error_type}`;
  fill(
    $("letters-table").tBodies[0],
    letters.map((d) =>
      el(
        "tr",
        { "data-dlq": d.dlq_id },
        el("td", {}, d.dlq_id),
        el("td", {}, d.message_id),
        el("td", {}, new Date(d.dead_at).toLocaleString()),
        el("td", { class: "error" }, d.explanation),
        el(
          "td",
          {},
          el("button", { type: "button", class: "show", onclick: () => showLetter(d.dlq_id) }, "Show"),
          el("button", { type: "button", class: "replay", onclick: () => letterAction(d, "replay") }, "Replay"),
          el("button", { type: "button", class: "discard", onclick: () => letterAction(d, "discard") }, "Discard"),
        ),
      ),
    ),
  );
  $("group-detail").hidden = false;
}

async function showLetter(id) {
  let d;
  try {
    d = await admin(`/admin/dlq/${encodeURIComponent(id)}`);
  } catch (error) {
    $("dlq-result").textContent = `${id}: ${error.message}`;
    return;
  }
  $("letter-title").textContent = `${d.dlq_id}: ${d.label}${d.message_id ? ` ${d.message_id}` : ""}`;
  $("letter-error").textContent = `${d.explanation} (${d.reason}: ${d.error})`;
  fill(
    $("letter-headers").tBodies[0],
    Object.entries(d.headers).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))),
  );
  $("letter-body").textContent = d.body;
  $("letter-detail").hidden = false;
}

async function letterAction(letter, action) {
  const verb = action === "replay" ? "Replay" : "Discard";
  if (!window.confirm(`${verb} dead letter ${letter.dlq_id} (${letter.label})?`)) return;
  const id = encodeURIComponent(letter.dlq_id);
  const asked = Date.now() + state.skew;
  $("dlq-result").classList.remove("error");
  try {
    if (action === "replay") await admin(`/admin/dlq/${id}/replay`, { method: "POST" });
    else await admin(`/admin/dlq/${id}`, { method: "DELETE" });
    $("dlq-result").textContent =
      action === "replay"
        ? `replayed ${letter.dlq_id}; watching for ${REPLAY_WATCH_S} s whether it fails again…`
        : `discarded ${letter.dlq_id}`;
  } catch (error) {
    $("dlq-result").textContent = `${verb} ${letter.dlq_id}: ${error.message}`;
    return;
  }
  $("letter-detail").hidden = true;
  await loadGroups();
  if (action === "replay") await watchReplays([letter], asked);
}

const REPLAY_WATCH_S = 30;

// A replay publishes the message again: whether it was handled this time shows only later,
// as the absence of a new dead letter for its message id, or as one.
async function watchReplays(letters, asked) {
  const ids = new Map(letters.filter((l) => l.message_id).map((l) => [l.message_id, l.dlq_id]));
  const again = new Map(); // message id -> its new dead letter
  const until = Date.now() + REPLAY_WATCH_S * 1000;
  while (Date.now() < until && again.size < ids.size) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    for (const [messageId, old] of ids) {
      if (again.has(messageId)) continue;
      try {
        const found = await admin(`/admin/dlq?message_id=${encodeURIComponent(messageId)}&limit=5`);
        const fresh = found.items.find((d) => d.dlq_id !== old && Date.parse(d.dead_at) >= asked - 1000);
        if (fresh) again.set(messageId, fresh);
      } catch {
        return; // the token was refused or the store is away: the last line stands
      }
    }
  }
  const replayed = letters.map((l) => l.dlq_id).join(", ");
  if (again.size === 0) {
    $("dlq-result").textContent = `replayed ${replayed}; no new dead letter for ${ids.size === 1 ? "it" : "them"} in ${REPLAY_WATCH_S} s`;
  } else {
    const failed = [...again.entries()].map(([messageId, d]) => `${ids.get(messageId)} as ${d.dlq_id}`);
    const reason = [...again.values()][0].explanation;
    $("dlq-result").textContent =
      `replayed ${replayed}; failed again: ${failed.join(", ")} (${reason})`;
    $("dlq-result").classList.add("error");
  }
  await loadGroups();
}

async function groupAction(group, action) {
  const verb = action === "replay" ? "Replay" : "Discard";
  const n = Math.min(group.count, 1000);
  if (!window.confirm(`${verb} ${n} dead letter${n === 1 ? "" : "s"}: ${group.label} · ${group.reason} · ${group.error_type}?`)) return;
  const asked = Date.now() + state.skew;
  $("dlq-result").classList.remove("error");
  let members = [];
  if (action === "replay") {
    try {
      members = (await admin(`/admin/dlq/groups/${group.fingerprint}`)).items;
    } catch {
      members = [];
    }
  }
  try {
    const result = await admin(`/admin/dlq/groups/${group.fingerprint}/${action}`, { method: "POST" });
    const failed = Object.keys(result.errors).length;
    $("dlq-result").textContent = `${verb.toLowerCase()}ed ${result.done} of ${result.matched}${failed ? `, ${failed} failed: ${Object.entries(result.errors).map(([id, why]) => `${id} ${why}`).join("; ")}` : ""}`;
    members = members.filter((m) => !(m.dlq_id in result.errors));
  } catch (error) {
    $("dlq-result").textContent = `${verb} group: ${error.message}`;
    members = [];
  }
  closeGroup();
  await loadGroups();
  if (members.length) await watchReplays(members.slice(0, 50), asked);
}

// -- message catalogue (AsyncAPI) --------------------------------------------------------

function resolve(doc, ref) {
  return ref.replace(/^#\//, "").split("/").reduce((node, key) => node?.[key], doc);
}

async function loadCatalogue() {
  let doc;
  try {
    doc = await getJson("/asyncapi.json");
  } catch (error) {
    $("catalogue-status").textContent = `AsyncAPI document: ${error.message}`;
    return;
  }
  const operations = Object.values(doc.operations);
  $("catalogue-list").replaceChildren(
    ...Object.entries(doc.channels).map(([id, channel]) => {
      const actions = operations
        .filter((op) => op.channel.$ref === `#/channels/${id}`)
        .map((op) => (op.action === "send" ? "sends" : `receives (${op["x-consumer"] ?? ""})`));
      const message = resolve(doc, Object.values(channel.messages)[0].$ref);
      const payload = resolve(doc, message.payload.$ref);
      const headers = Object.keys(resolve(doc, message.headers.$ref).properties);
      return el(
        "article",
        { class: "channel", "data-channel": channel.address },
        el("h2", {}, `${message.name} on ${channel.address}`),
        el("p", {}, `QoS ${channel["x-qos"]} on ${channel["x-transport"]}; this service ${actions.join(" and ")}`),
        el("p", { class: "hint" }, `headers: ${headers.join(", ")}`),
        el("details", {}, el("summary", {}, "payload schema"), el("pre", {}, JSON.stringify(payload, null, 2))),
      );
    }),
  );
}

// -- start ------------------------------------------------------------------------------

async function loadInfo() {
  try {
    state.info = await getJson("/console/api/info");
  } catch (error) {
    $("instance").textContent = `not ready: ${error.message}`;
    setTimeout(loadInfo, 2000); // the instance may still be starting
    return;
  }
  $("service").textContent = state.info.service;
  $("instance").textContent = `${state.info.node_id} · ${state.info.version}`;
  document.title = `${state.info.service} · console`;
  if (currentTab() === "dlq") openDeadLetters();
}

function currentTab() {
  const tab = location.hash.slice(1);
  return TABS.includes(tab) ? tab : "nodes";
}

async function start() {
  for (const button of document.querySelectorAll("[role=tab]")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("dlq-login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("dlq-token").value);
    $("dlq-token").value = "";
    openDeadLetters();
  });
  for (const button of document.querySelectorAll(".scope button")) {
    button.addEventListener("click", () => setScope(button.dataset.scope));
    button.setAttribute("aria-pressed", String(button.dataset.scope === scope()));
  }
  $("dlq-logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    closeGroup();
    openDeadLetters();
  });
  await loadInfo();
  followNodes();
  setInterval(renderNodes, 1000); // heartbeat ages move without events
  // Poll only what a visible tab shows (the ready column of Nodes comes from cluster health).
  const visible = (...tabs) => !document.hidden && tabs.includes(currentTab());
  const poll = (run, every, ...tabs) => {
    if (visible(...tabs)) run();
    setInterval(() => visible(...tabs) && run(), every);
  };
  poll(pollMessaging, POLL_MESSAGING_MS, "messaging");
  poll(pollHealth, POLL_HEALTH_MS, "nodes", "health");
  const fromHash = () => show(currentTab());
  window.addEventListener("hashchange", fromHash);
  fromHash();
}

start();
