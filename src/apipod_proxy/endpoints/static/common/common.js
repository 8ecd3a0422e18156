// Shared by the dashboard and the portal: building elements, formatting numbers with
// their units, calling the JSON API, and small SVG charts.
//
// Every string that came from a user (key names, model names, tiers) reaches the page
// as a text node or an attribute value, never as HTML: nothing here parses markup.

const SVG = "http://www.w3.org/2000/svg";

function build(element, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") element.textContent = String(value);
    else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    } else if (name.startsWith("on")) throw new Error("use the on: {} prop for events");
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element; string children become text nodes. */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element. */
export function s(tag, props, ...children) {
  return build(document.createElementNS(SVG, tag), props, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function replace(target, ...children) {
  target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

// --- numbers and times, always with a unit ---------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function count(value, unit) {
  const text = value === null || value === undefined ? "—" : integer.format(value);
  return unit ? `${text} ${unit}` : text;
}

export function compact(value) {
  const n = Number(value) || 0;
  if (Math.abs(n) >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
  if (Math.abs(n) >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
  return integer.format(n) === "0" && n > 0 ? n.toPrecision(1) : `${+n.toFixed(n < 10 ? 2 : 0)}`;
}

/** US dollars: cents for whole amounts, more digits for the small sums tokens cost. */
export function usd(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  const digits = n !== 0 && Math.abs(n) < 1 ? 4 : 2;
  return `$${n.toFixed(digits)} USD`;
}

export function percent(value) {
  if (value === null || value === undefined) return "—";
  return `${(value * 100).toFixed(value > 0 && value < 0.01 ? 2 : 1)} %`;
}

export function rate(value, unit) {
  if (value === null || value === undefined) return `— ${unit}`;
  return `${value < 10 ? value.toFixed(2) : value.toFixed(1)} ${unit}`;
}

/** "2026-11-27T02:00:00Z" -> "2026-11-27 02:00 UTC" */
export function when(iso) {
  if (!iso) return "—";
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (Number.isNaN(seconds)) return iso;
  if (seconds < 0) return `in ${duration(-seconds)}`;
  if (seconds < 60) return "just now";
  return `${duration(seconds)} ago`;
}

export function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

/** Bucket label ("2026-11-27T02" or "2026-11-27") as shown under a chart. */
export function bucketLabel(bucket) {
  return bucket.length > 10 ? `${bucket.slice(11, 13)}:00` : bucket.slice(5, 10);
}

// --- the JSON API ----------------------------------------------------------------

/** fetch() a JSON endpoint; resolves to {ok, status, data, message}, never throws. */
export async function api(path, { method = "GET", headers = {}, body } = {}) {
  const init = { method, headers: { accept: "application/json", ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    return { ok: false, status: 0, data: null, message: `The proxy did not answer (${error.message})` };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  const message =
    data && data.error && typeof data.error.message === "string"
      ? data.error.message
      : `${response.status} ${response.statusText}`;
  return { ok: response.ok, status: response.status, data, message };
}

// --- charts ----------------------------------------------------------------------

/** Series colours come from classes s0..s9 in style.css (no inline styles under CSP). */
export function colourClass(index) {
  return `s${index % 10}`;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** A legend: one swatch and name per series. */
export function legend(series) {
  return h(
    "ul",
    { class: "legend" },
    series.map((one) => h("li", {}, h("span", { class: `swatch ${one.colour}` }), one.name)),
  );
}

/**
 * Stacked bars, one per label. series: [{name, colour, values: [number per label]}].
 * format(value) gives a value with its unit (tooltips and the axis).
 */
export function barChart({ labels, series, format, title }) {
  const width = 640;
  const height = 220;
  const left = 56;
  const bottom = 24;
  const top = 8;
  const plotW = width - left - 8;
  const plotH = height - top - bottom;
  const totals = labels.map((_, i) => series.reduce((sum, one) => sum + (one.values[i] || 0), 0));
  let max = niceMax(Math.max(0, ...totals));
  if (format.whole) max = Math.max(4, Math.ceil(max / 4) * 4); // whole ticks for counts
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
    preserveAspectRatio: "xMidYMid meet",
  });
  for (let tick = 0; tick <= 4; tick += 1) {
    const value = (max * tick) / 4;
    const y = top + plotH - (plotH * tick) / 4;
    svg.append(
      s("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }),
      s("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, format.axis(value)),
    );
  }
  const slot = plotW / Math.max(labels.length, 1);
  const barW = Math.max(slot * 0.72, 1);
  const every = Math.ceil(labels.length / 8);
  labels.forEach((label, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    let y = top + plotH;
    series.forEach((one) => {
      const value = one.values[i] || 0;
      if (value <= 0) return;
      const barH = Math.max((plotH * value) / max, 1);
      y -= barH;
      svg.append(
        s(
          "rect",
          { x, y, width: barW, height: barH, class: `bar ${one.colour}`, "data-value": value },
          s("title", {}, `${bucketLabel(label)} · ${one.name}: ${format.value(value)}`),
        ),
      );
    });
    if (i % every === 0) {
      svg.append(
        s("text", { x: x + barW / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, bucketLabel(label)),
      );
    }
  });
  return h("figure", { class: "figure" }, svg, legend(series.filter((one) => one.values.some((v) => v > 0))));
}

/** Horizontal bars, one per row: [{label, value}], for rankings such as top keys. */
export function rankChart({ rows, format, title, colour = "s0" }) {
  const width = 640;
  const rowH = 26;
  const labelW = 180;
  const height = Math.max(rows.length, 1) * rowH + 8;
  const max = niceMax(Math.max(0, ...rows.map((row) => row.value)));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  rows.forEach((row, i) => {
    const y = 4 + i * rowH;
    const barW = Math.max(((width - labelW - 120) * row.value) / max, row.value > 0 ? 1 : 0);
    const name = row.label.length > 26 ? `${row.label.slice(0, 25)}…` : row.label;
    svg.append(
      s("text", { x: labelW - 8, y: y + 17, class: "axis label", "text-anchor": "end" }, name),
      s(
        "rect",
        { x: labelW, y: y + 4, width: barW, height: rowH - 8, class: `bar ${colour}`, "data-value": row.value },
        s("title", {}, `${row.label}: ${format(row.value)}`),
      ),
      s("text", { x: labelW + barW + 6, y: y + 17, class: "axis" }, format(row.value)),
    );
  });
  if (!rows.length) svg.append(s("text", { x: width / 2, y: 20, class: "axis", "text-anchor": "middle" }, "No data yet"));
  return h("figure", { class: "figure" }, svg);
}

/** A small line of recent values (oldest first), for the live panel. */
export function sparkline(values, { title, format }) {
  const width = 640;
  const height = 60;
  const max = niceMax(Math.max(0, ...values));
  const step = width / Math.max(values.length - 1, 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 4 - ((height - 8) * v) / max).toFixed(1)}`);
  return s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "chart spark", role: "img", "aria-label": title, preserveAspectRatio: "none" },
    s("title", {}, `${title}: now ${format(values.at(-1) ?? 0)}, peak ${format(Math.max(0, ...values))}`),
    s("line", { x1: 0, x2: width, y1: height - 4, y2: height - 4, class: "grid" }),
    values.length > 1 ? s("polyline", { points: points.join(" "), class: "line" }) : null,
  );
}

/** Cells for a table row; numbers are right-aligned. */
export function row(cells, { header = false, numeric = [] } = {}) {
  return h(
    "tr",
    {},
    cells.map((cell, i) =>
      h(header && i === 0 ? "th" : "td", { class: numeric.includes(i) ? "num" : null }, cell),
    ),
  );
}

/**
 * A table in its own horizontal scroller: a caption, a header row, the body rows (or one
 * row saying `empty` across every column) and an optional footer row.
 */
export function dataTable({ caption, head, rows, empty = "None", foot = null, id = null }) {
  const body = rows.length ? rows : h("tr", {}, h("td", { colspan: head.children.length, class: "empty" }, empty));
  return h(
    "div",
    { class: "scroll" },
    h("table", { class: "data", id }, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body), foot && h("tfoot", {}, foot)),
  );
}

/** A table of the chart's numbers: one row per bucket with data, then the total. */
export function seriesTable({ labels, series, format, caption }) {
  const numeric = series.map((_, i) => i + 1).concat(series.length + 1);
  const rows = [];
  labels.forEach((label, i) => {
    const values = series.map((one) => one.values[i] || 0);
    const total = values.reduce((a, b) => a + b, 0);
    if (total > 0) rows.push(row([label.replace("T", " ") + (label.length > 10 ? ":00" : ""), ...values.map(format), format(total)], { numeric }));
  });
  const sums = series.map((one) => one.values.reduce((a, b) => a + (b || 0), 0));
  const grand = sums.reduce((a, b) => a + b, 0);
  return dataTable({
    caption,
    head: h("tr", {}, h("th", {}, "UTC"), series.map((one) => h("th", { class: "num" }, one.name)), h("th", { class: "num" }, "Total")),
    rows,
    empty: "No usage in this period",
    foot: h("tr", { class: "total" }, h("th", {}, "Total"), sums.map((v) => h("td", { class: "num" }, format(v))), h("td", { class: "num", "data-total": grand }, format(grand))),
  });
}

/** A usage panel: its heading, the stacked bars and the table of the same numbers. */
export function usagePanel({ id, title, labels, series, format, caption }) {
  return h(
    "div",
    { class: "panel", id },
    h("h3", {}, title),
    barChart({ labels, series, format, title }),
    seriesTable({ labels, series, format: format.value, caption }),
  );
}

/** Spend against a budget: the browser shades it from 70 % and 90 % of the budget. */
export function budgetMeter(spend, budget) {
  const max = budget || 1;
  return h("meter", { min: 0, max, low: budget * 0.7, high: budget * 0.9, optimum: 0, value: Math.min(spend, max) });
}

/** Series per model over the labels, from rows {bucket|date, model, ...}, using pick(row). */
export function seriesByModel(labels, rows, pick, models, bucketOf = (r) => r.bucket) {
  const index = new Map(labels.map((label, i) => [label, i]));
  return models.map((model, i) => {
    const values = labels.map(() => 0);
    for (const r of rows) {
      const at = index.get(bucketOf(r));
      if (r.model === model && at !== undefined) values[at] += Number(pick(r)) || 0;
    }
    return { name: model || "(none)", colour: colourClass(i), values };
  });
}

export const formats = {
  requests: { value: (v) => count(v, "req"), axis: compact, whole: true },
  tokens: { value: (v) => count(v, "tokens"), axis: compact, whole: true },
  cost: { value: usd, axis: (v) => `$${v < 1 && v > 0 ? v.toFixed(3) : compact(v)}` },
};
