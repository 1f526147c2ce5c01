"""The clinician's page in a real browser against the real service.

Every number the page shows is checked against `POST /v1/predict` for the same patient, so a
page that rounded, reordered or recomputed anything would fail here.
"""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import run_axe, screenshot, sign_in
from tests.conftest import API_TOKEN, Server

pytestmark = pytest.mark.e2e
SHOWN = 8


def _percent(p: float) -> str:
    v = math.floor(p * 100 + 0.5)  # JavaScript's Math.round
    if p > 0 and v < 1:
        return "<1%"
    if p < 1 and v > 99:
        return ">99%"
    return f"{v}%"


def _boot(pg) -> dict:
    return json.loads(pg.text_content("#boot"))


def _api(server: Server, record: dict) -> dict:
    r = server.http.post(f"{server.url}/v1/predict", json={"patients": [record]})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def _predict_example(pg, **changes: str) -> dict:
    """Sign in, load the example, apply `changes` (field -> typed text), submit; the record."""
    sign_in(pg)
    pg.click("#load-example")
    for name, text in changes.items():
        control = pg.locator(f"#f-{name}")
        if control.evaluate("e => e.tagName") == "SELECT":
            control.select_option(text)
        else:
            control.fill(text)
    pg.click("#predict")
    pg.wait_for_selector("#result:not([hidden])")
    return _boot(pg)["example"]


def test_example_patient_result_equals_the_api(page, server: Server) -> None:
    record = _predict_example(page)
    expected = _api(server, record)

    assert page.inner_text("#result-title") == f"Prediction for patient {record['patient_id']}"
    assert page.inner_text("#probability") == _percent(expected["probability"])
    assert float(page.get_attribute("#probability", "data-value")) == expected["probability"]
    lo, hi = expected["probability_interval"]
    assert page.inner_text("#interval") == f"95% range {_percent(lo)} to {_percent(hi)}"
    assert page.get_attribute("#risk-band", "data-band") == expected["risk_band"]
    assert expected["risk_band"].capitalize() in page.inner_text("#risk-band")

    # one bar per shown factor, in the API's order, with the API's contributions
    shown = expected["contributions"][:SHOWN]
    bars = page.locator("svg.waterfall rect.factor-bar")
    assert bars.count() == len(shown) == page.locator("#factor-sentences li").count()
    assert [float(b.get_attribute("data-shap")) for b in bars.all()] == [c["shap"] for c in shown]
    rest = expected["contributions"][SHOWN:]
    rest_bar = page.locator("svg.waterfall rect.rest-bar")
    assert rest_bar.count() == 1
    assert float(rest_bar.get_attribute("data-shap")) == pytest.approx(
        sum(c["shap"] for c in rest), abs=1e-12
    )
    sentences = page.locator("#factor-sentences li").all_inner_texts()
    for c, text in zip(shown, sentences, strict=True):
        assert c["label"] in text
        assert ("raised" if c["shap"] >= 0 else "lowered") + " the predicted chance" in text
    assert page.locator("#all-factors tbody tr").count() == len(expected["contributions"])

    status = expected["eligibility"]["status"]
    assert page.get_attribute("#eligibility-status", "data-status") == status
    warnings = page.locator("#warnings li[data-code]")
    codes = {w.get_attribute("data-code") for w in warnings.all()}
    assert {w["code"] for w in expected["warnings"]} <= codes
    assert "missing_input" in codes, "the example lacks its inflammatory markers"

    model = server.http.get(f"{server.url}/v1/model").json()
    text = page.inner_text("#result")
    assert f"version {model['version']}" in text
    assert model["trained_at"][:10] in text
    assert "synthetic" in page.inner_text("#notice").lower()
    assert "decision support, not a decision" in text.lower()
    assert page.locator("#result-model a[href='/v1/model/card?format=html']").count() == 1
    screenshot(page, "result", "#result")


def test_out_of_range_and_unreadable_values_are_shown_beside_their_fields(
    page, server: Server
) -> None:
    sign_in(page)
    page.click("#load-example")
    page.fill("#f-hdd_90d", "120")
    page.fill("#f-age_years", "forty")
    page.click("#predict")
    page.wait_for_selector("#error-summary:not([hidden])")

    hdd = page.inner_text("#err-hdd_90d")
    assert "between 0 and 90 days" in hdd and "120" in hdd
    assert "whole number" in page.inner_text("#err-age_years")
    assert page.get_attribute("#f-hdd_90d", "aria-invalid") == "true"
    assert page.get_attribute("#f-sex", "aria-invalid") is None
    assert page.inner_text("#err-sex") == ""
    # the summary links to each field, and no prediction is shown for a rejected form
    links = page.locator("#error-list a")
    assert links.count() == 2
    assert page.is_hidden("#result")
    assert page.evaluate("document.activeElement.id") == "error-summary"
    links.filter(has_text="Heavy drinking days").click()
    assert page.evaluate("document.activeElement.id") == "f-hdd_90d"
    screenshot(page, "field-errors", "#patient")

    page.fill("#f-hdd_90d", "90")
    page.fill("#f-age_years", "40")
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_hidden("#error-summary")
    assert page.inner_text("#err-hdd_90d") == ""


def test_a_contraindicated_patient_is_flagged_prominently(page, server: Server) -> None:
    record = _predict_example(page, psychosis_history="true", pregnant_or_breastfeeding="true")
    record = {**record, "psychosis_history": True, "pregnant_or_breastfeeding": True}
    expected = _api(server, record)
    assert expected["eligibility"]["status"] == "contraindicated"

    box = page.locator("#eligibility")
    assert "status-contraindicated" in box.get_attribute("class")
    assert box.get_attribute("role") == "alert"
    assert page.inner_text("#eligibility-status").strip().endswith("Contraindicated")
    assert "Do not start ketamine infusions" in box.inner_text()
    rules = [li.get_attribute("data-rule") for li in box.locator("li[data-rule]").all()]
    assert rules == [r["rule"] for r in expected["eligibility"]["reasons"]]
    for reason in expected["eligibility"]["reasons"]:
        assert reason["source"] in box.inner_text()
    # it comes before the probability, in reading order and on screen
    top = page.evaluate("document.querySelector('#eligibility').getBoundingClientRect().top")
    assert top < page.evaluate("document.querySelector('#probability').getBoundingClientRect().top")
    screenshot(page, "contraindicated", "#result")


def test_compare_plans_shows_both_predictions(page, server: Server) -> None:
    record = _predict_example(page)
    page.fill("#c-infusions_planned", "6")
    page.select_option("#c-psychotherapy", "relapse_prevention")
    page.click("#compare")
    page.wait_for_selector("#comparison-table")

    alternative = {**record, "infusions_planned": 6, "psychotherapy": "relapse_prevention"}
    a, b = _api(server, record), _api(server, alternative)
    cells = page.locator("#comparison-table tr.probabilities td")
    assert cells.count() == 2
    assert [float(c.get_attribute("data-value")) for c in cells.all()] == [
        a["probability"],
        b["probability"],
    ]
    assert cells.all_inner_texts() == [_percent(a["probability"]), _percent(b["probability"])]
    caption = page.inner_text("#comparison-table caption")
    assert "under another plan" in caption and "Not a causal estimate" in caption
    table = page.inner_text("#comparison-table")
    assert "Relapse prevention" in table and "6" in table
    # the plan as entered is unchanged in the main form
    assert page.input_value("#f-infusions_planned") == str(record["infusions_planned"])
    screenshot(page, "compare-plans", "#result")

    page.fill("#c-dose_mg_per_kg", "5")
    page.click("#compare")
    expect(page.locator("#cerr-dose_mg_per_kg")).to_contain_text("between 0.1 and 2 mg/kg")


def test_a_pasted_fhir_bundle_fills_the_form(page, server: Server) -> None:
    sign_in(page)
    page.click("#fhir-panel summary")
    page.fill("#fhir-text", "{not json")
    page.click("#fhir-fill")
    assert "not valid JSON" in page.inner_text("#fhir-status")

    page.click("#fhir-example")
    page.click("#fhir-fill")
    expect(page.locator("#fhir-status")).to_contain_text("Filled")
    example = _boot(page)["example"]
    for name, value in example.items():
        if name == "site_id":  # a site is not part of a FHIR Patient, so the Bundle lacks it
            assert page.input_value("#f-site_id") == ""
            continue
        shown = page.input_value(f"#f-{name}")
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, float):
            assert float(shown) == value, name
        else:
            assert shown == expected, name
    assert page.input_value("#f-il6_pg_ml") == "", "absent from the Bundle, so left empty"
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    from_bundle = {k: v for k, v in example.items() if k != "site_id"}
    assert page.inner_text("#probability") == _percent(_api(server, from_bundle)["probability"])


def test_sign_in_is_required_and_kept_for_the_tab_only(browser, page, server: Server) -> None:
    assert page.is_visible("#sign-in") and page.is_hidden("#workspace")
    page.fill("#token", "not-the-token-" + "x" * 20)
    page.press("#token", "Enter")
    expect(page.locator("#token-error")).to_contain_text("not accepted")
    assert page.is_hidden("#workspace")

    sign_in(page)
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.length") == 1
    assert page.input_value("#token") == ""
    other = browser.new_context()
    fresh = other.new_page()
    fresh.goto(server.url + "/")
    assert fresh.is_visible("#sign-in") and fresh.is_hidden("#workspace")
    other.close()
    page.click("#sign-out")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.is_visible("#sign-in")


def test_the_page_works_on_a_closed_network(page, server: Server) -> None:
    """Every request stays on the service's origin; the page's own files need no token."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.reload()
    _predict_example(page)
    assert requested
    assert all(u.startswith(server.url) or u.startswith("data:") for u in requested), requested

    r = httpx.get(server.url + "/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text), "nothing from elsewhere"
    for asset in ("app.js", "format.js", "waterfall.js", "app.css", "print.css"):
        assert httpx.get(f"{server.url}/static/{asset}").status_code == 200, asset
    assert httpx.get(f"{server.url}/static/../v1/model").status_code in {401, 404}
    assert httpx.post(f"{server.url}/v1/record/from-fhir", json={}).status_code == 401


def test_keyboard_alone_reaches_a_prediction(page) -> None:
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.focus("#token")
    page.keyboard.type(API_TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "f-patient_id"
    page.focus("#load-example")
    page.keyboard.press("Enter")
    page.focus("#predict")
    page.keyboard.press("Enter")
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "result"


def test_printed_summary_shows_the_result_not_the_form(page) -> None:
    _predict_example(page)
    page.emulate_media(media="print")
    assert page.is_hidden("#patient")
    assert page.is_hidden("#compare-form")
    assert page.is_visible("#probability") and page.is_visible("#waterfall svg")
    assert page.is_visible("#eligibility") and page.is_visible("#notice")
    screenshot(page, "print")
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")


@pytest.mark.parametrize("view", ["sign-in", "form", "result", "errors"])
def test_no_serious_accessibility_violations(page, view: str) -> None:
    if view == "sign-in":
        target = "body"
    elif view == "form":
        sign_in(page)
        page.click("#load-example")
        page.click("#fhir-panel summary")
        target = "body"
    elif view == "result":
        _predict_example(page, psychosis_history="true")
        page.fill("#c-infusions_planned", "6")
        page.click("#compare")
        page.wait_for_selector("#comparison-table")
        page.click(".all-factors summary")
        target = "#result"
    else:
        sign_in(page)
        page.click("#load-example")
        page.fill("#f-hdd_90d", "999")
        page.click("#predict")
        page.wait_for_selector("#error-summary:not([hidden])")
        target = "body"
    violations = run_axe(page, target)
    assert not violations, [(v["id"], v["impact"], v["help"]) for v in violations]
