// The operator dashboard. Every action is a call to the admin JSON API with the
// x-admin-secret header; the secret lives in memory and in this tab's sessionStorage.
import {
  $, ago, api, budgetMeter, count, dataTable, formats, h, percent, rankChart, rate, replace,
  row, seriesByModel, sparkline, usagePanel, usd, when,
} from "./common/common.js";

const STORE = "apipod.admin-secret";
const LIVE_SECONDS = 3;
const HISTORY = 100; // samples: 5 minutes at one every 3 s

let secret = sessionStorage.getItem(STORE);
let keys = [];
let period = "hour";
let liveTimer = null;
let history = [];

// --- signing in -------------------------------------------------------------------

function call(path, options = {}) {
  return api(path, { ...options, headers: { "x-admin-secret": secret } }).then((answer) => {
    if (answer.status === 401) signOut(answer.message);
    return answer;
  });
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#secret");
  secret = input.value;
  const answer = await api("/admin/keys", { headers: { "x-admin-secret": secret } });
  if (!answer.ok) {
    secret = null;
    $("#signin-error").textContent = answer.message;
    input.select();
    return;
  }
  input.value = "";
  sessionStorage.setItem(STORE, secret);
  start(answer.data.data);
}

function signOut(message = "") {
  secret = null;
  sessionStorage.removeItem(STORE);
  clearInterval(liveTimer);
  liveTimer = null;
  history = [];
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("#app").hidden = $("#nav").hidden = $("#signout").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  $("#secret").focus();
}

function start(initialKeys) {
  $("#signin").hidden = true;
  $("#signin-error").textContent = "";
  $("#app").hidden = $("#nav").hidden = $("#signout").hidden = false;
  showKeys(initialKeys);
  refreshLive();
  liveTimer = setInterval(() => {
    if (document.visibilityState === "visible") refreshLive();
  }, LIVE_SECONDS * 1000);
  loadUsage();
  loadRoutes();
}

// --- live -------------------------------------------------------------------------

async function refreshLive() {
  const [stats, health] = await Promise.all([call("/admin/stats"), api("/health")]);
  if (!secret) return;
  if (stats.ok) {
    const live = stats.data;
    $("#live-rps").textContent = rate(live.requests_per_second, "req/s");
    $("#live-streams").textContent = count(live.active_streams, live.active_streams === 1 ? "stream" : "streams");
    $("#live-errors").textContent = percent(live.error_rate);
    $("#live-refused").textContent = percent(live.client_error_rate);
    $("#live-tps").textContent = rate(live.tokens_per_second, "tokens/s");
    $("#live-updated").textContent = `updated ${when(live.time)}`;
    if (live.requests_per_second !== null) history = [...history, live.requests_per_second].slice(-HISTORY);
    replace($("#live-history"), sparkline(history, { title: "Requests per second", format: (v) => rate(v, "req/s") }));
  } else {
    $("#live-updated").textContent = `not updated: ${stats.message}`;
  }
  $("#live-db").textContent = health.data?.database ?? "unreachable";
  showCooldowns(stats.data?.cooldowns ?? health.data?.cooldowns);
}

/** Cooldowns as /admin/stats and /health list them: [{model, until}], soonest first. */
function showCooldowns(cooldowns) {
  const target = $("#live-cooldowns");
  if (!cooldowns?.length) {
    target.className = "muted";
    replace(target, "None");
    return;
  }
  target.className = "";
  replace(
    target,
    h("ul", { class: "chips" }, cooldowns.map(({ model, until }) => h("li", {}, h("code", {}, model), ` until ${when(until)} (${ago(until)})`))),
  );
}

// --- keys -------------------------------------------------------------------------

function status(key) {
  if (!key.active) return "revoked";
  if (key.expires_at && Date.parse(key.expires_at) <= Date.now()) return "expired";
  return "active";
}

async function loadKeys() {
  const answer = await call("/admin/keys");
  if (answer.ok) showKeys(answer.data.data);
  else say("#keys-message", answer.message, true);
}

function showKeys(list) {
  keys = list;
  const select = $("#key-tier");
  const chosen = select.value;
  const tiers = [...new Set(keys.map((k) => k.tier))].sort();
  replace(select, h("option", { value: "" }, "All tiers"), tiers.map((t) => h("option", { value: t }, t)));
  select.value = tiers.includes(chosen) ? chosen : "";
  renderKeys();
}

function spendCell(key) {
  if (key.spend === undefined && key.budget === undefined) return h("span", { class: "muted" }, "—");
  const spend = Number(key.spend) || 0;
  if (key.budget === null || key.budget === undefined) {
    return h("div", { class: "spend" }, h("span", {}, `${usd(spend)} · no budget`));
  }
  const budget = Number(key.budget);
  const period = key.budget_period ? ` per ${key.budget_period}` : "";
  return h(
    "div",
    { class: "spend" },
    budgetMeter(spend, budget),
    h("span", {}, `${usd(spend)} of ${usd(budget)}${period}`),
  );
}

function renderKeys() {
  const query = $("#key-search").value.trim().toLowerCase();
  const tier = $("#key-tier").value;
  const wanted = $("#key-status").value;
  const shown = keys.filter((key) => {
    if (tier && key.tier !== tier) return false;
    if (wanted && status(key) !== wanted) return false;
    if (!query) return true;
    return [key.name, key.prefix, key.tier, String(key.id)].some((v) => String(v).toLowerCase().includes(query));
  });
  const body = $("#keys-table tbody");
  replace(
    body,
    shown.length
      ? shown.map(keyRow)
      : h("tr", {}, h("td", { colspan: 10, class: "empty" }, keys.length ? "No key matches" : "No keys yet")),
  );
  $("#keys-count").textContent = `${shown.length} of ${keys.length} keys`;
}

function keyRow(key) {
  const state = status(key);
  const actions = [
    h("button", { type: "button", class: "small", on: { click: () => openKey(key) } }, "Edit"),
    h("button", { type: "button", class: "small", on: { click: () => openRotate(key) } }, "Rotate"),
    key.active
      ? h("button", { type: "button", class: "small danger", on: { click: () => setActive(key, false) } }, "Revoke")
      : h("button", { type: "button", class: "small", on: { click: () => setActive(key, true) } }, "Activate"),
  ];
  return h(
    "tr",
    { "data-key-id": key.id },
    h("td", { class: "name", title: key.name }, key.name),
    h("td", {}, h("code", {}, `${key.prefix}…`)),
    h("td", {}, key.tier),
    h("td", {}, h("span", { class: `badge ${state}` }, state)),
    h("td", { class: "num" }, key.rpm === null || key.rpm === undefined ? "tier" : key.rpm === 0 ? "unlimited" : count(key.rpm, "req/min")),
    h("td", {}, spendCell(key)),
    h("td", { class: "num" }, count(key.requests, "req"), key.errors ? h("div", { class: "hint" }, count(key.errors, key.errors === 1 ? "error" : "errors")) : null),
    h("td", { title: key.last_used_at || "" }, ago(key.last_used_at)),
    h("td", { title: key.expires_at || "" }, key.expires_at ? when(key.expires_at) : "never"),
    h("td", {}, h("div", { class: "actions" }, actions)),
  );
}

function say(selector, message, isError = false) {
  const target = $(selector);
  target.className = isError ? "error" : "notice";
  target.textContent = message;
}

async function setActive(key, active) {
  const answer = await call(active ? "/admin/activate-key" : "/admin/revoke-key", { method: "POST", body: { id: key.id } });
  if (answer.ok) say("#keys-message", `${active ? "Activated" : "Revoked"} key ${key.id} (${key.name})`);
  else say("#keys-message", answer.message, true);
  await loadKeys();
}

/** The form's fields as the API takes them; with `previous` (the key edited), only changes. */
function fields(form, previous = null) {
  const data = Object.fromEntries(new FormData(form));
  const out = {};
  const changed = (name, value) => {
    if (!previous || JSON.stringify(previous[name] ?? null) !== JSON.stringify(value)) out[name] = value;
  };
  const name = data.name.trim();
  changed("name", name);
  if (data.tier.trim()) changed("tier", data.tier.trim());
  const number = (text) => (text.trim() === "" ? null : Number(text.trim()));
  changed("rpm", number(data.rpm));
  changed("budget", number(data.budget));
  changed("budget_period", data.budget_period || null);
  const models = data.models.split(",").map((m) => m.trim()).filter(Boolean);
  changed("models", models.length ? models : null);
  const expires = data.expires_in.trim();
  if (expires) out.expires_in = expires.toLowerCase() === "never" ? null : expires;
  return out;
}

function bindDialog(dialog) {
  for (const button of dialog.querySelectorAll("button.cancel")) button.addEventListener("click", () => dialog.close());
}

/** POST from a dialog: a refusal shows on its error line, success closes it. */
async function submitFrom(dialog, path, body) {
  const answer = await call(path, { method: "POST", body });
  if (!answer.ok) {
    $(".error", dialog).textContent = answer.message;
    return null;
  }
  dialog.close();
  return answer.data;
}

let editing = null; // the key the key dialog edits; null while it creates one

function openKey(key = null) {
  editing = key;
  const form = $("#key-form");
  form.reset();
  $("#key-title").textContent = key ? "Edit key" : "New key";
  $("#key-which").textContent = key ? `Key ${key.id} (${key.prefix}…)` : "";
  $("#key-expires").textContent = key
    ? 'Expires in (e.g. 30d; "never"; empty: unchanged)'
    : "Expires in (e.g. 30d; empty: never)";
  $("#key-submit").textContent = key ? "Save" : "Create";
  form.elements.tier.placeholder = key ? "unchanged" : "elite"; // what an empty tier means
  if (key) {
    form.elements.name.value = key.name;
    form.elements.tier.value = key.tier;
    form.elements.rpm.value = key.rpm ?? "";
    form.elements.budget.value = key.budget ?? "";
    form.elements.budget_period.value = key.budget_period ?? "";
    form.elements.models.value = (key.models || []).join(", ");
  }
  $(".error", form).textContent = "";
  $("#key-dialog").showModal();
}

async function submitKey(event) {
  event.preventDefault();
  const dialog = $("#key-dialog");
  const key = editing;
  const wanted = fields(event.target, key);
  if (key && !Object.keys(wanted).length) {
    dialog.close();
    return;
  }
  const answer = key
    ? await submitFrom(dialog, "/admin/update-key", { id: key.id, ...wanted })
    : await submitFrom(dialog, "/admin/create-key", Object.fromEntries(Object.entries(wanted).filter(([, v]) => v !== null)));
  if (!answer) return;
  if (key) say("#keys-message", `Saved key ${key.id}`);
  else showSecret(answer, "Created");
  await loadKeys();
}

function showSecret(created, verb) {
  $("#secret-which").textContent = `${verb} key ${created.id}: ${created.name}`;
  $("#secret-value").value = created.api_key;
  $("#secret-copied").textContent = "";
  $("#secret-dialog").showModal();
  $("#secret-value").select();
}

async function copySecret() {
  const input = $("#secret-value");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select(); // no Clipboard API (plain HTTP from another host): the old way
    document.execCommand("copy");
  }
  $("#secret-copied").textContent = "Copied to the clipboard.";
}

function closeSecret() {
  $("#secret-value").value = "";
  $("#secret-dialog").close();
}

let rotating = null;

function openRotate(key) {
  rotating = key;
  $("#rotate-which").textContent = `Key ${key.id}: ${key.name} (${key.prefix}…)`;
  $("#rotate-form .error").textContent = "";
  $("#rotate-dialog").showModal();
}

async function submitRotate(event) {
  event.preventDefault();
  const rotated = await submitFrom($("#rotate-dialog"), "/admin/rotate-key", { id: rotating.id });
  if (!rotated) return;
  showSecret(rotated, "Rotated");
  await loadKeys();
}

// --- usage ------------------------------------------------------------------------

async function loadUsage() {
  const answer = await call(`/admin/usage/series?bucket=${period}`);
  if (!answer.ok) {
    say("#usage-message", answer.message, true);
    return;
  }
  $("#usage-message").textContent = "";
  const { buckets, data, top_keys: top } = answer.data;
  const models = [...new Set(data.map((r) => r.model))].sort();
  const span = period === "hour" ? "last 24 hours, by hour (UTC)" : "last 30 days, by day (UTC)";
  const panel = (id, title, pick, format) =>
    usagePanel({ id, title, labels: buckets, series: seriesByModel(buckets, data, pick, models), format, caption: `${title}, ${span}` });
  const priced = top.some((k) => k.cost > 0);
  const rank = top.map((k) => ({ label: `${k.name} (${k.prefix}…)`, value: priced ? k.cost : k.requests }));
  const rankFormat = priced ? usd : (v) => count(v, "req");
  replace(
    $("#usage-panels"),
    panel("usage-requests", "Requests by routed model", (r) => r.requests, formats.requests),
    panel("usage-errors", "Errors by routed model", (r) => r.errors, formats.requests),
    panel("usage-tokens", "Tokens by routed model", (r) => r.prompt_tokens + r.completion_tokens, formats.tokens),
    panel("usage-reasoning", "Estimated reasoning tokens by routed model (apart from the tokens above)", (r) => r.estimated_reasoning_tokens || 0, formats.tokens),
    panel("usage-estimated", "Requests billed on estimates (stream cut before its usage)", (r) => r.estimated_requests || 0, formats.requests),
    panel("usage-cost", "Cost by routed model (USD)", (r) => r.cost, formats.cost),
    h(
      "div",
      { class: "panel", id: "usage-top" },
      h("h3", {}, priced ? "Top 10 keys by spend" : "Top 10 keys by spend (nothing priced yet: ranked by requests)"),
      rankChart({ rows: rank, format: rankFormat, title: "Top 10 keys by spend" }),
      dataTable({
        caption: `Top 10 keys, ${span.split(",")[0]}`,
        head: row(["Key", "Requests", "Tokens", "Cost"], { numeric: [1, 2, 3] }),
        rows: top.map((k) => row([`${k.name} (${k.prefix}…)`, count(k.requests, "req"), count(k.tokens, "tokens"), usd(k.cost)], { numeric: [1, 2, 3] })),
        empty: "No usage in this period",
      }),
    ),
  );
}

function choosePeriod(chosen) {
  period = chosen;
  $("#period-hour").setAttribute("aria-pressed", String(chosen === "hour"));
  $("#period-day").setAttribute("aria-pressed", String(chosen === "day"));
  loadUsage();
}

// --- routing ----------------------------------------------------------------------

function objectTable(title, entries, firstColumn) {
  const isObject = (v) => v && typeof v === "object" && !Array.isArray(v);
  const columns = [...new Set(entries.flatMap(([, v]) => (isObject(v) ? Object.keys(v) : ["value"])))];
  const cell = (value) => {
    if (value === null || value === undefined) return "—";
    if (Array.isArray(value)) return value.join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  };
  return dataTable({
    caption: title,
    head: h("tr", {}, h("th", {}, firstColumn), columns.map((c) => h("th", {}, c))),
    rows: entries.map(([name, v]) => h("tr", {}, h("td", {}, h("code", {}, name)), columns.map((c) => h("td", {}, cell(isObject(v) ? v[c] : v))))),
  });
}

async function loadRoutes() {
  const answer = await call("/admin/routes");
  if (!answer.ok) {
    say("#routing-source", answer.message, true);
    return;
  }
  const table = answer.data;
  const source = table.source || {};
  $("#routing-source").className = "";
  replace(
    $("#routing-source"),
    source.kind === "file"
      ? ["From ", h("code", {}, source.path), `, loaded ${when(source.loaded_at)}.`]
      : ["The built-in table (ROUTES_FILE is not set)."],
  );
  const aliasRows = Object.entries(table.aliases || {}).flatMap(([name, alias]) =>
    Object.entries(alias.targets).map(([target, share]) => [name, target, `${share} %`, alias.sticky ? "sticky" : "per request"]),
  );
  const tables = [
    dataTable({
      id: "routing-aliases",
      caption: "Aliases: requests spread over targets by weight",
      head: row(["Alias", "Target", "Share", "Choice"], { numeric: [2] }),
      rows: aliasRows.map((r) => row(r, { numeric: [2] })),
    }),
    objectTable("Renames: one name sent as another", Object.entries(table.renames || {}).map(([k, v]) => [k, { "sent as": v }]), "Requested"),
  ];
  for (const [name, value] of Object.entries(table)) {
    if (["aliases", "renames", "source", "rate_limits"].includes(name) || !value || typeof value !== "object") continue;
    const titles = { prices: "Prices (USD per million tokens)", default_price: "Default price (USD per million tokens; every model not under Prices)" };
    const title = titles[name] || name[0].toUpperCase() + name.slice(1);
    tables.push(objectTable(title, Object.entries(value), name === "prices" ? "Model" : "Name"));
  }
  const limits = table.rate_limits || {};
  tables.push(
    objectTable(
      "Rate limits (requests per minute; a key's own rpm comes first, 0 is unlimited)",
      [["default (DEFAULT_RPM)", limits.default_rpm], ...Object.entries(limits.tier_rpm || {}).map(([t, rpm]) => [`tier ${t} (TIER_RPM)`, rpm])].map(
        ([name, rpm]) => [name, { "requests per minute": rpm === 0 ? "unlimited" : count(rpm, "req/min") }],
      ),
      "Applies to",
    ),
  );
  replace($("#routing-tables"), tables);
}

// --- wiring -----------------------------------------------------------------------

$("#signin").addEventListener("submit", signIn);
$("#signout").addEventListener("click", () => signOut());
$("#key-search").addEventListener("input", renderKeys);
$("#key-tier").addEventListener("change", renderKeys);
$("#key-status").addEventListener("change", renderKeys);
$("#key-new").addEventListener("click", () => openKey());
$("#key-form").addEventListener("submit", submitKey);
$("#rotate-form").addEventListener("submit", submitRotate);
$("#secret-copy").addEventListener("click", copySecret);
$("#secret-done").addEventListener("click", closeSecret);
$("#secret-dialog").addEventListener("close", () => ($("#secret-value").value = ""));
$("#period-hour").addEventListener("click", () => choosePeriod("hour"));
$("#period-day").addEventListener("click", () => choosePeriod("day"));
$("#usage-refresh").addEventListener("click", () => {
  loadUsage();
  loadKeys();
  loadRoutes();
});
for (const dialog of document.querySelectorAll("dialog")) bindDialog(dialog);

if (secret) {
  call("/admin/keys").then((answer) => {
    if (answer.ok) start(answer.data.data);
  });
} else {
  $("#secret").focus();
}
