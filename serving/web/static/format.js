// Words and numbers for the page: pure functions, no DOM, so the wording lives in one place.
//
// The server's answer is the only source of numbers; these functions only format them. A
// percentage is rounded once, here, so every place on the page shows the same figure.

export const logistic = (x) => 1 / (1 + Math.exp(-x));

/** "42%" for 0.4213; probabilities below 1% or above 99% are shown as "<1%" / ">99%". */
export function percent(p) {
  const v = Math.round(p * 100);
  if (p > 0 && v < 1) return "<1%";
  if (p < 1 && v > 99) return ">99%";
  return `${v}%`;
}

export const BAND_WORDS = {
  low: { label: "Low", detail: "below 30%", mark: "▼" },
  moderate: { label: "Moderate", detail: "30% to 60%", mark: "■" },
  high: { label: "High", detail: "60% or more", mark: "▲" },
};

export const STATUS_WORDS = {
  eligible: { label: "No contraindication found", mark: "✓" },
  caution: { label: "Caution", mark: "!" },
  contraindicated: { label: "Contraindicated", mark: "✕" },
  unknown: { label: "Eligibility unknown: safety screen incomplete", mark: "?" },
};

/** A factor's value as a clinician reads it: "20 days", "yes", "relapse prevention". */
export function valueText(c) {
  const v = c.value;
  if (v === null || v === undefined) return "not recorded";
  if (typeof v === "boolean") return v ? "yes" : "no";
  const shown = typeof v === "number" ? String(+v.toPrecision(6)) : String(v).replaceAll("_", " ");
  return c.unit ? `${shown} ${c.unit}` : shown;
}

/** How strongly a contribution in log-odds moved the prediction. */
export function degree(shap) {
  const a = Math.abs(shap);
  if (a < 0.1) return "slightly";
  if (a < 0.3) return "moderately";
  return "strongly";
}

/** "Heavy drinking days: 20 days lowered the predicted chance moderately." */
export function factorSentence(c) {
  const verb = c.shap >= 0 ? "raised" : "lowered";
  return `${c.label}: ${valueText(c)} ${verb} the predicted chance ${degree(c.shap)}.`;
}

/** A signed log-odds contribution, with a true minus sign: "+0.32", "−0.18". */
export function signed(x, digits = 2) {
  const s = Math.abs(x).toFixed(digits);
  return x >= 0 ? `+${s}` : `−${s}`;
}

function numberWords(x) {
  return String(+Number(x).toPrecision(6));
}

/**
 * One problem from the server's 400 answer in plain words, for the field it names.
 * `error` is one pydantic item ({type, loc, msg}; the service echoes no value back), `field`
 * the field's spec and `sent` what the page sent for it, to quote to the clinician.
 */
export function problemText(error, field, sent) {
  const unit = field && field.unit ? ` ${field.unit}` : "";
  const entered = sent === undefined || sent === null ? "" : ` You entered ${typeof sent === "string" ? `"${sent}"` : sent}.`;
  const range =
    field && field.minimum !== null && field.maximum !== null
      ? `between ${numberWords(field.minimum)} and ${numberWords(field.maximum)}${unit}`
      : "";
  switch (error.type) {
    case "missing":
      return "Required: enter a value.";
    case "greater_than_equal":
    case "less_than_equal":
    case "greater_than":
    case "less_than":
      return `Must be ${range || "within the plausible range"}.${entered}`;
    case "int_parsing":
    case "int_type":
    case "int_from_float":
      return `Enter a whole number${range ? ` ${range}` : ""}.${entered}`;
    case "float_parsing":
    case "float_type":
    case "finite_number":
      return `Enter a number${range ? ` ${range}` : ""}.${entered}`;
    case "literal_error":
    case "enum":
      return `Choose one of the listed options.${entered}`;
    case "bool_type":
    case "bool_parsing":
      return "Choose yes, no or not recorded.";
    case "string_pattern_mismatch":
    case "string_too_long":
    case "string_too_short":
      return "Use 1 to 64 letters, digits, '-' or '_' (a pseudonymous ID, never a name or record number).";
    case "extra_forbidden":
      return "This field is not part of the input contract.";
    default:
      return String(error.msg || "This value is not accepted.").replace(/^Value error, /, "");
  }
}
