"""The HTML training report: every table and figure of a run in one self-contained file.

Self-contained on purpose (figures embedded as base64 PNG, no scripts, no external CSS or
fonts): it is logged to MLflow, served at `/v1/model/card` and must open on a closed clinic
network.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import jinja2
import pandas as pd
from matplotlib.figure import Figure


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1a1a1a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;
margin-top:2rem}
.notice{border:2px solid #8a4b00;background:#fff6e5;padding:.75rem 1rem;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left}th{background:#eef2f7}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.9rem;color:#444}
</style></head><body>
<h1>{{ title }}</h1>
{% for n in notices %}<p class="notice" role="note">{{ n }}</p>{% endfor %}
{% for s in sections %}<section><h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% for caption, table in s.tables %}<h3>{{ caption }}</h3>{{ table | safe }}{% endfor %}
{% for caption, png in s.figures %}<figure><img alt="{{ caption }}"
src="data:image/png;base64,{{ png }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}</section>{% endfor %}
</body></html>
"""
)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render(title: str, notices: list[str], sections: list[Section]) -> str:
    """One HTML document; tables are escaped by pandas, text by jinja2."""
    rendered = [
        {
            "title": s.title,
            "paragraphs": s.paragraphs,
            "tables": [
                (c, t.to_html(index=False, na_rep="—", float_format=_fmt, border=0))
                for c, t in s.tables
            ],
            "figures": [(c, _png(f)) for c, f in s.figures],
        }
        for s in sections
    ]
    return _TEMPLATE.render(title=title, notices=notices, sections=rendered)


def _fmt(x: float) -> str:
    return f"{x:.3f}"
