"""The Tasador web app (Plotly Dash): Predict, Models, Monitoring, Data.

    python -m dashboard.app        (``tasador up`` starts it on 127.0.0.1:TASADOR_DASH_PORT)

It talks to the prediction API over HTTP and reads MLflow, PostgreSQL and Prometheus (dashboard.data);
it imports nothing from serve_app or jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html

from dashboard import data
from tasador.schema import STATES, STATUSES
from tasador.settings import Settings

settings = Settings.load()
app = Dash(__name__, title="Tasador", suppress_callback_exceptions=True)
server = app.server
server.add_url_rule("/health", "health", lambda: {"status": "ok"})

PAGES = {"/": "Predict", "/models": "Models", "/monitoring": "Monitoring", "/data": "Data"}
NUMBERS = {"bed": 3, "bath": 2, "house_size": 1800, "acre_lot": 0.25, "brokered_by": None, "street": None}
TEXTS = {"city": "Boston", "zip_code": "02108", "prev_sold_date": ""}
LABELS = {"status": "Status", "state": "State", "city": "City", "zip_code": "Zip code", "bed": "Bedrooms",
          "bath": "Bathrooms", "house_size": "House size (sq ft)", "acre_lot": "Lot (acres)",
          "brokered_by": "Broker id", "street": "Street id", "prev_sold_date": "Previous sale (YYYY-MM-DD)"}
CELL = {"border": "1px solid #ddd", "padding": "4px 8px", "fontSize": "13px", "textAlign": "left",
        "verticalAlign": "top"}

app.layout = html.Div(style={"fontFamily": "system-ui, sans-serif", "margin": "0 24px"}, children=[
    dcc.Location(id="url"),
    html.H2("Tasador: US real-estate prices"),
    html.Nav([dcc.Link(name, href=path, id=f"nav-{name.lower()}", style={"marginRight": "18px"})
              for path, name in PAGES.items()]),
    html.Hr(),
    html.Div(id="page"),
])


def table(rows: list[dict], columns: list[str], table_id: str, row_style=None) -> html.Table:
    head = html.Tr([html.Th(c, style=CELL) for c in columns])
    body = [html.Tr([html.Td(_cell(r.get(c)), style=CELL) for c in columns],
                    style=row_style(r) if row_style else None, className="data-row") for r in rows]
    return html.Table([html.Thead(head), html.Tbody(body)], id=table_id, style={"borderCollapse": "collapse"})


def _cell(value):
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)


# -- pages ----------------------------------------------------------------------------------------
def predict_page():
    fields = [
        html.Label([LABELS["status"], dcc.Dropdown(list(STATUSES), "for_sale", id="in-status", clearable=False)]),
        html.Label([LABELS["state"], dcc.Dropdown(list(STATES), "Massachusetts", id="in-state", clearable=False)]),
        *[html.Label([LABELS[k], dcc.Input(id=f"in-{k}", type="text", value=v, debounce=False)])
          for k, v in TEXTS.items()],
        *[html.Label([LABELS[k], dcc.Input(id=f"in-{k}", type="number", value=v, min=0)]) for k, v in NUMBERS.items()],
    ]
    return html.Div([
        html.Div(fields, style={"display": "grid", "gridTemplateColumns": "repeat(3, 260px)", "gap": "10px"}),
        html.Button("Price it", id="predict-button", n_clicks=0, style={"marginTop": "14px"}),
        dcc.Loading(html.Div(id="predict-result", style={"marginTop": "16px"})),
    ])


def models_page():
    try:
        versions = data.model_versions(settings)
    except data.Unavailable as exc:
        return html.Div(str(exc), id="models-message", style={"color": "#b00"})
    if not versions:
        return html.Div(f"No version of {settings.model_name} is registered yet.", id="models-message")
    for v in versions:
        v["status"] = "★ production" if v["production"] else v["promotion"]
    by_family = {}
    for v in sorted(versions, key=lambda v: int(v["version"])):
        if v["rmse"] is not None:
            by_family.setdefault(v["family"], []).append(v)
    figure = go.Figure([go.Scatter(x=[int(v["version"]) for v in vs], y=[v["rmse"] for v in vs], mode="markers+lines",
                                   name=family) for family, vs in by_family.items()])
    figure.update_layout(title="Held-out RMSE ($) by version", xaxis_title="version", yaxis_title="RMSE ($)",
                         height=320, margin={"t": 40}, xaxis={"tickformat": ",d"})
    columns = ["version", "status", "family", "rmse", "mae", "r2", "mape", "rows", "batch_ids", "created",
               "promotion_reason", "trigger_reason"]
    return html.Div([dcc.Graph(figure=figure, id="metrics-chart"),
                     table(versions, columns, "versions-table",
                           lambda r: {"background": "#fff6d5"} if r["production"] else None)])


def monitoring_page():
    return html.Div([dcc.Interval(id="monitoring-tick", interval=10_000), html.Div(id="monitoring-body")])


def data_page():
    try:
        rows = data.batches(settings)
    except data.Unavailable as exc:
        return html.Div(str(exc), style={"color": "#b00"})
    columns = ["batch_id", "group", "day", "batch", "raw_rows", "clean_rows", "rejected_rows", "received_at",
               "processed_at", "drift_found", "retrain"]
    options = [{"label": f"batch {r['batch_id']} (group {r['group']} {r['day']} #{r['batch']})", "value": r["batch_id"]}
               for r in rows if r["drift_found"] is not None]
    return html.Div([
        table(rows, columns, "batches-table"),
        html.H4("Drift of a batch against the production model's data", style={"marginTop": "20px"}),
        dcc.Dropdown(options, options[0]["value"] if options else None, id="drift-batch", style={"width": "480px"}),
        html.Div(id="drift-body", style={"marginTop": "10px"}),
    ])


@app.callback(Output("page", "children"), Input("url", "pathname"))
def route(path):
    return {"/models": models_page, "/monitoring": monitoring_page, "/data": data_page}.get(path, predict_page)()


# -- callbacks --------------------------------------------------------------------------------------
@app.callback(Output("predict-result", "children"), Input("predict-button", "n_clicks"),
              State("in-status", "value"), State("in-state", "value"),
              *[State(f"in-{k}", "value") for k in (*TEXTS, *NUMBERS)], prevent_initial_call=True)
def predict(_, status, state, *values):
    listing = {"status": status, "state": state}
    for key, value in zip((*TEXTS, *NUMBERS), values, strict=True):
        listing[key] = None if value in ("", None) else value
    try:
        answer = data.explain(settings, listing)
    except data.Unavailable as exc:
        return html.Div(str(exc), id="predict-error", style={"color": "#b00"})
    if "invalid" in answer:
        return html.Div(f"Please correct the listing: {answer['invalid']}", id="predict-error", style={"color": "#b00"})
    explanation = answer["explanations"][0]
    contributions = sorted(explanation["contributions"].items(), key=lambda kv: abs(kv[1]))
    figure = go.Figure(go.Bar(x=[round((math.exp(v) - 1) * 100, 2) for _, v in contributions],
                              y=[LABELS.get(k, k) for k, _ in contributions], orientation="h"))
    figure.update_layout(title=f"What moved the price from the base of ${explanation['base_price']:,.0f} (SHAP, %)",
                         xaxis_title="effect on the price (%)", height=420, margin={"t": 40, "l": 180})
    return html.Div([
        html.H3([html.Span(f"${explanation['price']:,.0f}", id="price")]),
        html.Div(["priced by ", html.Span(answer["model_name"], id="model-name"), " version ",
                  html.Span(answer["model_version"], id="model-version")]),
        dcc.Graph(figure=figure, id="contributions"),
    ])


@app.callback(Output("monitoring-body", "children"), Input("monitoring-tick", "n_intervals"))
def monitoring(_):
    try:
        series = data.monitoring(settings)
    except data.Unavailable as exc:
        return html.Div(str(exc), id="monitoring-message", style={"color": "#b00"})
    if not any(series.values()):
        return html.Div("Prometheus answers but has no Serve metrics yet: send some predictions.",
                        id="monitoring-message")
    graphs = []
    for name, points in series.items():
        figure = go.Figure(go.Scatter(x=[dt.datetime.fromtimestamp(t) for t, _ in points], y=[v for _, v in points],
                                      mode="lines+markers", marker={"size": 3}))
        figure.update_layout(title=name if points else f"{name}: no data in the last 30 minutes", height=220,
                             margin={"t": 36, "b": 24})
        graphs.append(dcc.Graph(figure=figure, id=f"series-{len(graphs)}",
                                className="monitoring-graph" + (" has-data" if points else "")))
    return html.Div(graphs, id="monitoring-graphs", style={"display": "grid", "gridTemplateColumns": "1fr 1fr"})


@app.callback(Output("drift-body", "children"), Input("drift-batch", "value"))
def drift(batch_id):
    if batch_id is None:
        return html.Div("No batch has a decision yet.")
    report = data.drift(settings, batch_id)
    if report is None:
        return html.Div(f"Batch {batch_id} has no decision yet.")
    rows = [{"feature": f["feature"], "kind": f["kind"], "statistic": f["statistic"], "threshold": f["threshold"],
             "drifted": "yes" if f["drifted"] else "no", "summary": f["summary"],
             "details": json.dumps(f.get("details", {}), default=str)[:160]} for f in report["features"]]
    return html.Div([
        html.P(f"Decision: {report['reason']}", id="drift-reason"),
        html.P(f"{report['batch_rows']:,} batch rows against {report['reference_rows']:,} reference rows "
               f"(production v{report['production_version'] or '-'})" if report["batch_rows"] is not None else ""),
        table(rows, ["feature", "kind", "statistic", "threshold", "drifted", "summary", "details"], "drift-table"),
    ])


def main() -> None:
    app.run(host="127.0.0.1", port=settings.dash_port, debug=False)


if __name__ == "__main__":
    main()
