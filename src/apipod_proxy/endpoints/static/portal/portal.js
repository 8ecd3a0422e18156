// The customer portal: a customer's own key, answered by GET /account only.
// The key lives in this tab's sessionStorage and goes out only as the Authorization header.
import { $, api, budgetMeter, count, formats, h, replace, seriesByModel, usagePanel, usd, when } from "./common/common.js";

const STORE = "apipod.customer-key";
const DAYS = 30;

let key = sessionStorage.getItem(STORE);

function lastDays(days, now = new Date()) {
  const labels = [];
  for (let back = days - 1; back >= 0; back -= 1) {
    labels.push(new Date(now.getTime() - back * 86400000).toISOString().slice(0, 10));
  }
  return labels;
}

async function load() {
  const answer = await api("/account", { headers: { authorization: `Bearer ${key}` } });
  if (answer.ok) {
    show(answer.data);
    return;
  }
  forget();
  let message = answer.message;
  if (answer.status === 401 || answer.status === 403) message = `This key was not accepted: ${answer.message}`;
  else if (answer.status === 404) message = "This proxy does not offer account pages yet.";
  $("#signin-error").textContent = message;
}

function forget() {
  key = null;
  sessionStorage.removeItem(STORE);
  $("#account").hidden = $("#signout").hidden = true;
  $("#signin").hidden = false;
}

function show(account) {
  $("#signin").hidden = true;
  $("#signin-error").textContent = "";
  $("#account").hidden = $("#signout").hidden = false;
  $("#account-name").textContent = account.name;
  $("#account-tier").textContent = account.tier;
  $("#account-expires").textContent = account.expires_at ? when(account.expires_at) : "never";
  $("#account-rpm").textContent = !account.rpm ? "unlimited" : count(account.rpm, "requests per minute");
  const models = account.models;
  replace(
    $("#account-models"),
    models && models.length ? h("ul", { class: "chips" }, models.map((m) => h("li", {}, h("code", {}, m)))) : "All models",
  );
  const spend = Number(account.spend) || 0;
  const target = $("#account-spend");
  if (account.budget === null || account.budget === undefined) {
    const period = account.budget_period || (account.resets_at ? "month" : null);
    const span = period === "total" ? " in total" : period ? ` this ${period}` : "";
    replace(target, h("p", { id: "spend-text" }, `${usd(spend)} spent${span}; no budget limit.`));
  } else {
    const budget = Number(account.budget);
    const period = account.budget_period === "total" ? "in total" : `this ${account.budget_period}`;
    replace(
      target,
      budgetMeter(spend, budget),
      h("p", { id: "spend-text" }, `${usd(spend)} of ${usd(budget)} spent ${period}; ${usd(Math.max(budget - spend, 0))} left.`),
      h("p", { class: "hint" }, account.resets_at ? `Resets ${when(account.resets_at)}.` : "Does not reset."),
    );
  }
  const labels = lastDays(DAYS);
  const rows = account.usage || [];
  const names = [...new Set(rows.map((r) => r.model))].sort();
  const panel = (id, title, pick, format) =>
    usagePanel({ id, title, labels, series: seriesByModel(labels, rows, pick, names, (r) => r.date), format, caption: `${title}, by day (UTC)` });
  replace(
    $("#account-usage"),
    panel("account-cost", "Cost by model (USD)", (r) => r.cost, formats.cost),
    panel("account-requests", "Requests by model", (r) => r.requests, formats.requests),
    panel("account-tokens", "Tokens by model", (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0), formats.tokens),
    panel("account-reasoning", "Reasoning tokens by model (reported + estimated, apart from the tokens above)", (r) => (r.reasoning_tokens || 0) + (r.estimated_reasoning_tokens || 0), formats.tokens),
  );
}

$("#signin").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("#key").value.trim();
  $("#key").value = "";
  sessionStorage.setItem(STORE, key);
  load();
});
$("#signout").addEventListener("click", forget);
if (key) load();
else $("#key").focus();
