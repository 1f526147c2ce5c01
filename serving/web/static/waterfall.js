// The waterfall of SHAP contributions, drawn as SVG by the page (no charting library, no CDN).
//
// The path runs in calibrated log-odds from the base rate to this patient's logit, one bar per
// shown factor plus one for the rest, so the bars add up exactly to the served prediction. The
// axis is labelled in probability at log-odds positions: that is the scale the bars add on,
// and the scale a clinician reads.

import { factorSentence, logistic, percent, signed, valueText } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 760;
const LABEL_W = 300;
const RIGHT_PAD = 70;
const ROW_H = 28;
const TOP = 34;
const TICKS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98];
const logit = (p) => Math.log(p / (1 - p));

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

/** The rows of the chart: the shown factors by magnitude, then the rest summed. */
export function waterfallRows(prediction, shown) {
  const top = prediction.contributions.slice(0, shown);
  const rest = prediction.contributions.slice(shown);
  const rows = top.map((c) => ({ kind: "factor", label: c.label, value: valueText(c), shap: c.shap, title: factorSentence(c) }));
  if (rest.length) {
    const shap = rest.reduce((s, c) => s + c.shap, 0);
    rows.push({ kind: "rest", label: `${rest.length} other factors together`, value: "", shap, title: `The other ${rest.length} factors together: ${signed(shap)} log-odds.` });
  }
  let at = prediction.base_log_odds;
  for (const r of rows) {
    r.start = at;
    at += r.shap;
    r.end = at;
  }
  return rows;
}

/** An <svg> element: base rate, one bar per row, this patient's prediction. */
export function waterfall(prediction, shown) {
  const rows = waterfallRows(prediction, shown);
  const points = [prediction.base_log_odds, prediction.logit, ...rows.map((r) => r.end)];
  let lo = Math.min(...points) - 0.25;
  let hi = Math.max(...points) + 0.25;
  if (hi - lo < 2) {
    const mid = (hi + lo) / 2;
    lo = mid - 1;
    hi = mid + 1;
  }
  const x = (v) => LABEL_W + ((v - lo) / (hi - lo)) * (WIDTH - LABEL_W - RIGHT_PAD);
  const height = TOP + (rows.length + 2) * ROW_H + 30;
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-labelledby": "wf-title wf-desc", class: "waterfall" });
  svg.append(el("title", { id: "wf-title" }, "How each factor moved the prediction from the base rate to this patient"));
  svg.append(
    el("desc", { id: "wf-desc" },
      `Starts at the base rate of ${percent(logistic(prediction.base_log_odds))} and ends at ${percent(prediction.probability)}. ` +
      rows.map((r) => `${r.label}${r.value ? ` ${r.value}` : ""}: ${signed(r.shap)}`).join("; ") + "."),
  );

  const axisY = height - 24;
  for (const p of TICKS) {
    const v = logit(p);
    if (v < lo || v > hi) continue;
    svg.append(el("line", { x1: x(v), x2: x(v), y1: TOP - 8, y2: axisY, class: "grid-line" }));
    svg.append(el("text", { x: x(v), y: axisY + 16, "text-anchor": "middle", class: "tick" }, percent(p)));
  }
  svg.append(el("text", { x: LABEL_W, y: 16, class: "axis-title" }, "Predicted chance of response (log-odds scale)"));

  const rowY = (i) => TOP + i * ROW_H;
  const marker = (i, v, label, cls) => {
    const y = rowY(i);
    svg.append(el("text", { x: LABEL_W - 10, y: y + 18, "text-anchor": "end", class: `row-label ${cls}` }, label));
    svg.append(el("line", { x1: x(v), x2: x(v), y1: y + 2, y2: y + ROW_H - 2, class: `marker ${cls}` }));
    svg.append(el("text", { x: x(v) + 6, y: y + 18, class: `marker-label ${cls}` }, percent(logistic(v))));
  };
  marker(0, prediction.base_log_odds, "Base rate (average patient)", "base");
  rows.forEach((r, k) => {
    const y = rowY(k + 1);
    const up = r.shap >= 0;
    const left = x(Math.min(r.start, r.end));
    const width = Math.max(Math.abs(x(r.end) - x(r.start)), 1.5);
    const label = r.value ? `${r.label}: ${r.value}` : r.label;
    svg.append(el("text", { x: LABEL_W - 10, y: y + 18, "text-anchor": "end", class: "row-label" }, truncate(label, 44)));
    const bar = el("rect", {
      x: left, y: y + 5, width, height: ROW_H - 10,
      class: `bar ${r.kind === "rest" ? "rest-bar" : "factor-bar"} ${up ? "up" : "down"}`,
      "data-shap": r.shap,
    });
    bar.append(el("title", {}, r.title));
    svg.append(bar);
    const after = up ? x(r.end) + 5 : x(r.end) - 5;
    svg.append(el("text", { x: after, y: y + 18, "text-anchor": up ? "start" : "end", class: `shap-label ${up ? "up" : "down"}` }, `${up ? "▶" : "◀"} ${signed(r.shap)}`));
  });
  marker(rows.length + 1, prediction.logit, "This patient", "final");
  return svg;
}

function truncate(text, n) {
  return text.length <= n ? text : `${text.slice(0, n - 1)}…`;
}
