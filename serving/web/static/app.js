// The clinician's page: sign in, fill the form (by hand, from the example or from a FHIR
// Bundle), ask POST /v1/predict, and show the answer so it can be understood at a glance.
//
// The page computes no prediction and judges no input: every number comes from the service's
// answer, and every error from its 400 answer, mapped back to the field it names.

import {
  BAND_WORDS, STATUS_WORDS, factorSentence, logistic, percent, problemText, signed, valueText,
} from "./format.js";
import { waterfall } from "./waterfall.js";

const SHOWN_FACTORS = 8;
const TOKEN_KEY = "ketapredict.token";
const boot = JSON.parse(document.getElementById("boot").textContent);
const FIELDS = new Map(boot.fields.map((f) => [f.name, f]));
const PLAN = boot.fields.filter((f) => f.plan);
const $ = (id) => document.getElementById(id);
const state = { record: null, prediction: null, cardUrl: null };

// ------------------------------------------------------------------ talking to the service
class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body, accept = "application/json" } = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`, accept };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (response.status === 401 && path !== "/v1/model") signOut("Your sign-in was not accepted any more. Sign in again; nothing you entered was sent.");
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

function failureText(error) {
  if (!(error instanceof ApiError)) console.error(error);
  if (!(error instanceof ApiError)) return "The service could not be reached. Check the connection and try again.";
  switch (error.status) {
    case 401: return "Not signed in.";
    case 413: return "The request was too large for the service.";
    case 503: return "The service cannot record this prediction in its audit log right now, so it gives none. Try again in a minute; if it persists, tell the service's administrator.";
    default: return `The service answered with an error (HTTP ${error.status}). Try again; if it persists, tell the service's administrator.`;
  }
}

// ------------------------------------------------------------------ sign-in
function showSignedIn(signedIn) {
  $("sign-in").hidden = signedIn;
  $("workspace").hidden = !signedIn;
  $("account").hidden = !signedIn;
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.cardUrl) URL.revokeObjectURL(state.cardUrl);
  state.cardUrl = null;
  showSignedIn(false);
  $("token-error").textContent = message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    $("token-error").textContent = "Enter your API token.";
    $("token").setAttribute("aria-invalid", "true");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    showModel(await api("/v1/model"));
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").setAttribute("aria-invalid", "true");
    $("token-error").textContent = error instanceof ApiError && error.status === 401 ? "This token was not accepted. Check it and try again." : failureText(error);
    return;
  }
  $("token").value = "";
  $("token").removeAttribute("aria-invalid");
  $("token-error").textContent = "";
  showSignedIn(true);
  control("patient_id").focus();
}

function showModel(model) {
  boot.model = { ...boot.model, ...model };
  $("model-name").textContent = model.name;
  $("model-version").textContent = model.version;
}

// ------------------------------------------------------------------ the form
function control(name, prefix = "f") {
  return document.getElementById(`${prefix}-${name}`);
}

/** The record as typed: numbers parsed, but text that is not a number is sent as typed, so the
 * service names the problem instead of the page guessing. Empty optional fields are omitted. */
function readRecord(prefix = "f", fields = boot.fields) {
  const record = {};
  for (const f of fields) {
    const raw = control(f.name, prefix).value.trim();
    if (raw === "") continue;
    if (f.kind === "integer" || f.kind === "number") {
      record[f.name] = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(raw) ? Number(raw) : raw;
    } else if (f.kind === "boolean") {
      record[f.name] = raw === "true";
    } else {
      record[f.name] = raw;
    }
  }
  return record;
}

function fillForm(record, prefix = "f", fields = boot.fields) {
  for (const f of fields) {
    const v = record[f.name];
    control(f.name, prefix).value = v === undefined || v === null ? "" : String(v);
  }
}

function clearErrors(prefix = "f") {
  for (const f of boot.fields) {
    const input = control(f.name, prefix);
    if (!input) continue;
    input.removeAttribute("aria-invalid");
    document.getElementById(`${prefix === "f" ? "err" : "cerr"}-${f.name}`).textContent = "";
  }
  if (prefix === "f") {
    $("error-summary").hidden = true;
    $("error-list").replaceChildren();
  }
}

/** Map the service's 400 answer to the fields it names; anything else goes to the summary. */
function showErrors(detail, sent = {}, prefix = "f") {
  const items = Array.isArray(detail) ? detail : [{ msg: typeof detail === "string" ? detail : "The input was not accepted." }];
  const summary = [];
  for (const item of items) {
    const loc = Array.isArray(item.loc) ? item.loc : [];
    const name = loc.length >= 3 && loc[0] === "patients" ? loc[2] : null;
    const field = name && FIELDS.get(name);
    const input = field && control(name, prefix);
    const text = problemText(item, field, name ? sent[name] : undefined);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      const slot = document.getElementById(`${prefix === "f" ? "err" : "cerr"}-${name}`);
      slot.textContent = slot.textContent ? `${slot.textContent} ${text}` : text;
      summary.push({ name, prefix, text: `${field.label}: ${text}` });
    } else {
      summary.push({ name: null, prefix, text });
    }
  }
  const list = $("error-list");
  list.replaceChildren(...summary.map((s) => {
    const li = document.createElement("li");
    if (s.name) {
      const a = document.createElement("a");
      a.href = `#${s.prefix}-${s.name}`;
      a.textContent = s.text;
      a.addEventListener("click", (e) => { e.preventDefault(); control(s.name, s.prefix).focus(); });
      li.append(a);
    } else {
      li.textContent = s.text;
    }
    return li;
  }));
  $("error-summary").hidden = false;
  $("error-summary").focus();
}

async function predict(event) {
  event.preventDefault();
  clearErrors();
  const record = readRecord();
  $("form-status").textContent = "Asking the model…";
  $("predict").disabled = true;
  try {
    const answer = await api("/v1/predict", { method: "POST", body: { patients: [record] } });
    state.record = record;
    state.prediction = answer.predictions[0];
    $("form-status").textContent = "";
    showResult(answer);
  } catch (error) {
    $("form-status").textContent = "";
    if (error instanceof ApiError && error.status === 400) showErrors(error.body && error.body.detail, record);
    else if (!(error instanceof ApiError && error.status === 401)) showErrors(failureText(error));
  } finally {
    $("predict").disabled = false;
  }
}

// ------------------------------------------------------------------ the result
function node(tag, text = null, attrs = {}) {
  const n = document.createElement(tag);
  if (text !== null) n.textContent = text;
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

function showEligibility(e) {
  const box = $("eligibility");
  const words = STATUS_WORDS[e.status];
  box.className = `eligibility status-${e.status}`;
  box.setAttribute("role", e.status === "contraindicated" ? "alert" : "region");
  box.setAttribute("aria-label", "Eligibility for ketamine infusions");
  const heading = node("h3", null, { id: "eligibility-status", "data-status": e.status });
  heading.append(node("span", words.mark, { class: "mark", "aria-hidden": "true" }), ` ${words.label}`);
  const parts = [heading];
  if (e.status === "contraindicated") {
    parts.push(node("p", "Do not start ketamine infusions on the strength of this prediction: a contraindication below applies. The probability is shown for context only.", { class: "stop" }));
  }
  if (e.reasons.length) {
    const ul = node("ul", null, { class: "reasons" });
    for (const r of e.reasons) {
      const li = node("li", null, { "data-rule": r.rule, "data-severity": r.severity });
      li.append(node("strong", `${STATUS_WORDS[r.severity].label}: `), r.message, node("span", ` Rule ${r.rule}; source: ${r.source}.`, { class: "source" }));
      ul.append(li);
    }
    parts.push(ul);
  } else {
    parts.push(node("p", "The safety screen found no contraindication or caution."));
  }
  box.replaceChildren(...parts);
}

function showHeadline(p) {
  const [lo, hi] = p.probability_interval;
  $("probability").textContent = percent(p.probability);
  $("probability").dataset.value = String(p.probability);
  $("interval").textContent = `95% range ${percent(lo)} to ${percent(hi)}`;
  $("interval").dataset.lower = String(lo);
  $("interval").dataset.upper = String(hi);
  const band = BAND_WORDS[p.risk_band];
  $("risk-band").replaceChildren(node("span", band.mark, { class: "mark", "aria-hidden": "true" }), ` ${band.label} chance of response (${band.detail})`);
  $("risk-band").className = `band band-${p.risk_band}`;
  $("risk-band").dataset.band = p.risk_band;
  $("interval-method").textContent = boot.model.interval_method || "";
}

function showFactors(p) {
  $("base-rate").textContent =
    `The model starts from the base rate of ${percent(logistic(p.base_log_odds))} for an average development patient; ` +
    `each factor below moved this patient's prediction up or down from there to ${percent(p.probability)}. ` +
    "Contributions are associations the model learned, not causes.";
  $("waterfall").replaceChildren(waterfall(p, SHOWN_FACTORS));
  $("factor-sentences").replaceChildren(...p.contributions.slice(0, SHOWN_FACTORS).map((c) => {
    const li = node("li", null, { "data-feature": c.feature, class: c.shap >= 0 ? "up" : "down" });
    li.append(node("span", c.shap >= 0 ? "▲" : "▼", { class: "mark", "aria-hidden": "true" }), ` ${factorSentence(c)}`);
    return li;
  }));
  $("all-factors").tBodies[0].replaceChildren(...p.contributions.map((c) => {
    const tr = node("tr");
    tr.append(node("th", c.label, { scope: "row" }), node("td", valueText(c)), node("td", signed(c.shap, 3)));
    return tr;
  }));
}

function showWarnings(p) {
  const items = p.warnings.map((w) => node("li", w.message, { "data-code": w.code }));
  const a = p.applicability;
  items.push(node("li", `${a.typicality_percentile.toFixed(0)}% of held-out development patients were at least as unusual as this patient${a.typical ? "" : ", so this patient is outside what the model knows well"}.`, { "data-code": "typicality" }));
  if (boot.model.synthetic_data) {
    items.push(node("li", "The model was trained on synthetic patients from a simulator, not on real patients.", { "data-code": "synthetic" }));
  }
  $("warnings").replaceChildren(...items);
}

function showResult(answer) {
  const p = answer.predictions[0];
  $("result-title").textContent = `Prediction for patient ${p.patient_id}`;
  $("printed-on").textContent = `Made ${new Date().toLocaleString()} with model ${p.model.name} version ${p.model.version}.`;
  showEligibility(p.eligibility);
  showHeadline(p);
  showFactors(p);
  showWarnings(p);
  buildCompare();
  $("comparison").replaceChildren();
  const trained = boot.model.trained_at ? `, trained ${String(boot.model.trained_at).slice(0, 10)}` : "";
  $("result-model").replaceChildren(`Model ${p.model.name} version ${p.model.version}${trained}. `, cardLink());
  $("result-notice").textContent = answer.notice;
  $("result").hidden = false;
  $("result").focus();
}

function cardLink() {
  const a = node("a", "Model card and validation report", { href: "/v1/model/card?format=html", target: "_blank", rel: "noopener" });
  a.addEventListener("click", openCard);
  return a;
}

/** The model card needs the token, which a plain link cannot carry: fetch it, show it as a blob. */
async function openCard(event) {
  event.preventDefault();
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    $("token-error").textContent = "Sign in to read the model card.";
    $("token").focus();
    return;
  }
  const tab = window.open("about:blank", "_blank");
  try {
    if (!state.cardUrl) {
      const html = await api("/v1/model/card?format=html", { accept: "text/html" });
      state.cardUrl = URL.createObjectURL(new Blob([html], { type: "text/html" }));
    }
    if (tab) tab.location.href = state.cardUrl;
  } catch (error) {
    if (tab) tab.close();
    $("form-status").textContent = failureText(error);
  }
}

// ------------------------------------------------------------------ compare plans
function buildCompare() {
  const grid = $("compare-fields");
  grid.replaceChildren(...PLAN.map((f) => {
    const original = control(f.name);
    const wrap = node("div", null, { class: "field" });
    const input = original.cloneNode(true);
    input.id = `c-${f.name}`;
    input.removeAttribute("name");
    input.setAttribute("aria-describedby", `cerr-${f.name}`);
    input.removeAttribute("aria-invalid");
    const unit = f.unit && (f.kind === "integer" || f.kind === "number") ? ` (${f.unit})` : "";
    wrap.append(node("label", `${f.label}${unit}`, { for: input.id }), input, node("p", null, { class: "field-error", id: `cerr-${f.name}` }));
    return wrap;
  }));
  fillForm(state.record, "c", PLAN);
}

async function compare(event) {
  event.preventDefault();
  clearErrors("c");
  const plan = readRecord("c", PLAN);
  const alternative = { ...state.record };
  for (const f of PLAN) delete alternative[f.name];
  Object.assign(alternative, plan);
  $("compare-status").textContent = "Asking the model…";
  try {
    const answer = await api("/v1/predict", { method: "POST", body: { patients: [alternative] } });
    $("compare-status").textContent = "";
    showComparison(state.record, state.prediction, alternative, answer.predictions[0]);
  } catch (error) {
    $("compare-status").textContent = error instanceof ApiError && error.status === 400 ? "The alternative plan has a problem: see the fields above." : failureText(error);
    if (error instanceof ApiError && error.status === 400) {
      for (const item of error.body.detail || []) {
        const name = Array.isArray(item.loc) ? item.loc[2] : null;
        const slot = name && document.getElementById(`cerr-${name}`);
        if (slot) {
          slot.textContent = problemText(item, FIELDS.get(name), alternative[name]);
          control(name, "c").setAttribute("aria-invalid", "true");
        }
      }
    }
  }
}

function planValue(record, f) {
  const v = record[f.name];
  if (v === undefined) return "not recorded";
  const level = f.levels.find((l) => l.value === v);
  return level ? level.label : valueText({ value: v, unit: f.unit });
}

function showComparison(recordA, a, recordB, b) {
  const table = node("table", null, { id: "comparison-table", class: "comparison" });
  table.append(node("caption", "The model's prediction under another plan. Not a causal estimate: a different plan is not shown to cause a different outcome."));
  const head = node("tr");
  head.append(node("td"), node("th", "Plan as entered", { scope: "col" }), node("th", "Alternative plan", { scope: "col" }));
  const thead = node("thead");
  thead.append(head);
  table.append(thead);
  const body = node("tbody");
  const row = (label, x, y, attrs = {}) => {
    const tr = node("tr", null, attrs);
    tr.append(node("th", label, { scope: "row" }), node("td", x), node("td", y));
    body.append(tr);
    return tr;
  };
  for (const f of PLAN) row(f.label, planValue(recordA, f), planValue(recordB, f));
  const probs = row("Predicted chance of response", percent(a.probability), percent(b.probability), { class: "probabilities" });
  probs.cells[1].dataset.value = String(a.probability);
  probs.cells[2].dataset.value = String(b.probability);
  row("95% range", `${percent(a.probability_interval[0])} to ${percent(a.probability_interval[1])}`, `${percent(b.probability_interval[0])} to ${percent(b.probability_interval[1])}`);
  row("Band", BAND_WORDS[a.risk_band].label, BAND_WORDS[b.risk_band].label);
  row("Eligibility", STATUS_WORDS[a.eligibility.status].label, STATUS_WORDS[b.eligibility.status].label);
  table.append(body);
  $("comparison").replaceChildren(table);
}

// ------------------------------------------------------------------ FHIR Bundle
async function fillFromFhir() {
  const status = $("fhir-status");
  let bundle;
  try {
    bundle = JSON.parse($("fhir-text").value);
  } catch (error) {
    status.textContent = `This is not valid JSON (${error.message}). Paste the Bundle exactly as the EHR exported it.`;
    return;
  }
  status.textContent = "Reading the Bundle…";
  try {
    const out = await api("/v1/record/from-fhir", { method: "POST", body: bundle });
    clearErrors();
    fillForm(out.record);
    const parts = [`Filled ${Object.keys(out.record).length} fields from the Bundle; check them before asking for a prediction.`];
    if (out.ignored.length) parts.push(`${out.ignored.length} observations were not used: ${out.ignored.map((i) => `${i.code} (${i.reason}: ${i.detail})`).join("; ")}.`);
    if (out.problems.length) parts.push(`Problems: ${out.problems.map((p) => p.message).join("; ")}.`);
    status.textContent = parts.join(" ");
  } catch (error) {
    const problems = error instanceof ApiError && error.status === 400 && error.body && error.body.problems;
    status.textContent = problems ? `The Bundle could not be read: ${problems.map((p) => p.message).join("; ")}.` : failureText(error);
  }
}

// ------------------------------------------------------------------ wiring
$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut("Signed out."));
$("patient-form").addEventListener("submit", predict);
$("compare-form").addEventListener("submit", compare);
$("load-example").addEventListener("click", () => { clearErrors(); fillForm(boot.example); $("form-status").textContent = "Example patient loaded (synthetic)."; });
$("clear-form").addEventListener("click", () => { clearErrors(); fillForm({}); $("result").hidden = true; });
$("fhir-fill").addEventListener("click", fillFromFhir);
$("fhir-example").addEventListener("click", () => { $("fhir-text").value = JSON.stringify(boot.example_bundle, null, 2); });
$("print").addEventListener("click", () => window.print());
// The printed summary carries the interval's caveat, which the screen keeps behind a disclosure.
window.addEventListener("beforeprint", () => { document.querySelector("details.method").open = true; });
$("model-card-link").addEventListener("click", openCard);
showSignedIn(Boolean(sessionStorage.getItem(TOKEN_KEY)));
