"""The Tasador web app (Plotly Dash, dash-bootstrap-components for layout and theme, Dash AG Grid for
every table): Predict, Models, Data and drift, Monitoring, Lineage.

    python -m dashboard.app        (``tasador up`` starts it on 127.0.0.1:TASADOR_DASH_PORT)

It talks to the prediction API over HTTP and reads MLflow, PostgreSQL and Prometheus (dashboard.data);
it imports nothing from serve_app or jobs. Bootstrap's stylesheet is served from ``assets/`` (the
browser may have no internet).
"""

from __future__ import annotations

import datetime as dt
import math
from urllib.parse import parse_qs

import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html

from dashboard import data
from tasador import history
from tasador.schema import STATES, STATUSES
from tasador.settings import Settings

settings = Settings.load()
app = Dash(__name__, title="Tasador", suppress_callback_exceptions=True)
server = app.server
server.add_url_rule("/health", "health", lambda: {"status": "ok"})

PAGES = {"/": "Predict", "/models": "Models", "/data": "Data and drift", "/monitoring": "Monitoring",
         "/lineage": "Lineage"}
NUMBERS = {"bed": 3, "bath": 2, "house_size": 1800, "acre_lot": 0.25, "brokered_by": None, "street": None}
TEXTS = {"city": "Boston", "zip_code": "02108", "prev_sold_date": ""}
LABELS = {"status": "Status", "state": "State", "city": "City", "zip_code": "Zip code", "bed": "Bedrooms",
          "bath": "Bathrooms", "house_size": "House size (sq ft)", "acre_lot": "Lot (acres)",
          "brokered_by": "Broker id", "street": "Street id", "prev_sold_date": "Previous sale (YYYY-MM-DD)"}
GREEN, RED, ORANGE, GREY = "#2a9d4b", "#c0392b", "#e07b00", "#6c757d"

app.layout = dbc.Container(fluid=True, className="pb-4", children=[
    dcc.Location(id="url"),
    dbc.NavbarSimple(brand="Tasador: US real-estate prices", color="dark", dark=True, className="mb-3",
                     children=[dbc.NavItem(dbc.NavLink(name, href=path, id=f"nav-{path.strip('/') or 'predict'}",
                                                       active="exact")) for path, name in PAGES.items()]),
    html.Div(id="page"),
])


def grid(rows: list[dict], columns: list[str], grid_id: str, wide: tuple[str, ...] = (), height: int | None = None,
         production_row: bool = False) -> dag.AgGrid:
    """An AG Grid: sort, filter and pages on every column; ``wide`` columns wrap their text."""
    defs = [{"field": c, "headerName": c.replace("_", " "), "wrapText": c in wide, "autoHeight": c in wide,
             **({"minWidth": 420, "flex": 2} if c in wide else {"flex": 1, "minWidth": 110})} for c in columns]
    style = {"styleConditions": [{"condition": "params.data.production", "style": {"backgroundColor": "#fff6d5"}}]}
    return dag.AgGrid(id=grid_id, rowData=rows, columnDefs=defs,
                      defaultColDef={"sortable": True, "filter": True, "resizable": True},
                      dashGridOptions={"pagination": True, "paginationPageSize": 20,
                                       "suppressColumnVirtualisation": True,
                                       "domLayout": "autoHeight" if height is None else "normal"},
                      getRowStyle=style if production_row else None, className="ag-theme-alpine",
                      style={"height": height} if height else {"height": None})


def problem(text: str, element_id: str | None = None) -> dbc.Alert:
    return dbc.Alert(text, color="danger", id=element_id or f"alert-{abs(hash(text)) % 10**6}")


def card(title: str, body, element_id: str | None = None) -> dbc.Card:
    return dbc.Card([dbc.CardHeader(title), dbc.CardBody(body, **({"id": element_id} if element_id else {}))],
                    className="mb-3")


# -- Predict ------------------------------------------------------------------------------------------
def predict_page():
    fields = [
        dbc.Col([dbc.Label(LABELS["status"]), dcc.Dropdown(list(STATUSES), "for_sale", id="in-status",
                                                           clearable=False)], md=4),
        dbc.Col([dbc.Label(LABELS["state"]), dcc.Dropdown(list(STATES), "Massachusetts", id="in-state",
                                                          clearable=False)], md=4),
        *[dbc.Col([dbc.Label(LABELS[k]), dbc.Input(id=f"in-{k}", type="text", value=v)], md=4)
          for k, v in TEXTS.items()],
        *[dbc.Col([dbc.Label(LABELS[k]), dbc.Input(id=f"in-{k}", type="number", value=v, min=0)], md=4)
          for k, v in NUMBERS.items()],
    ]
    try:
        recent = grid(data.last_predictions(settings), ["requested_at", "prediction_id", "model_version",
                                                       "predicted_price", "state", "city", "bed", "bath",
                                                       "house_size"], "last-predictions")
    except data.Unavailable as exc:
        recent = problem(str(exc))
    return dbc.Row([
        dbc.Col(card("A listing", [dbc.Row(fields, className="g-2"),
                                   dbc.Button("Price it", id="predict-button", n_clicks=0, className="mt-3")]), md=5),
        dbc.Col(dcc.Loading(html.Div(id="predict-result")), md=7),
        dbc.Col(card("The last predictions (the prediction log)", recent), md=12),
    ])


def waterfall(explanation: dict) -> go.Figure:
    """SHAP on the log price, in dollars: from the base price, each feature's effect applied in turn
    (largest last), so the steps add up exactly to the price."""
    contributions = sorted(explanation["contributions"].items(), key=lambda kv: abs(kv[1]))
    price, steps = explanation["base_price"], []
    for _, value in contributions:
        after = price * math.exp(value)
        steps.append(after - price)
        price = after
    figure = go.Figure(go.Waterfall(
        orientation="h", measure=["absolute", *["relative"] * len(steps), "total"],
        y=["base price", *[LABELS.get(k, k) for k, _ in contributions], "price"],
        x=[explanation["base_price"], *steps, 0], text=[f"${explanation['base_price']:,.0f}",
                                                        *[f"{s:+,.0f}" for s in steps], f"${price:,.0f}"],
        increasing={"marker": {"color": GREEN}}, decreasing={"marker": {"color": RED}},
        totals={"marker": {"color": "#1f77b4"}}))
    figure.update_layout(title="Why this price: each feature's effect (SHAP), in dollars", height=460,
                         margin={"t": 40, "l": 170}, xaxis_title="price ($)", showlegend=False)
    return figure


# -- Models -------------------------------------------------------------------------------------------
def models_page():
    try:
        versions = data.model_versions(settings)
    except data.Unavailable as exc:
        return problem(str(exc), "models-message")
    if not versions:
        return html.Div(f"No version of {settings.model_name} is registered yet.", id="models-message")
    for v in versions:
        v["status"] = "★ production" if v["production"] else v["promotion"]
    try:
        moves, history_problem = data.production_history(settings), None
    except data.Unavailable as exc:
        moves, history_problem = [], str(exc)
    current = next((v["version"] for v in versions if v["production"]), None)
    earlier = [v for v in history.served_versions(moves) if v != current]
    before = moves[-1]["previous_version"] if moves and moves[-1]["previous_version"] in earlier else None
    columns = ["version", "status", "family", "rmse", "mae", "r2", "rows", "batch_ids", "data_hash", "created",
               "links", "trigger_reason", "promotion_reason"]
    for v in versions:
        v["links"] = " ".join(f"[{name}]({v[key]})" for name, key in VERSION_LINKS if v.get(key))
    table = grid(versions, columns, "versions-table", wide=("trigger_reason", "promotion_reason"), production_row=True)
    for d in table.columnDefs:
        if d["field"] == "links":
            d["cellRenderer"] = "markdown"
    rollback_form = dbc.Row([
        dbc.Col(dcc.Dropdown([{"label": f"v{v}", "value": v} for v in earlier], before, id="rollback-version",
                             placeholder="an earlier production version"), md=2),
        dbc.Col(dbc.Textarea(id="rollback-reason", placeholder="why (recorded with the move)"), md=5),
        dbc.Col(dbc.Input(id="rollback-token", type="password", placeholder="Serve admin token"), md=3),
        dbc.Col(dbc.Button("Roll back", id="rollback-button", color="warning", n_clicks=0), md=2),
    ], className="g-2")
    return html.Div([
        card("Production timeline", [
            dcc.Graph(figure=timeline_figure(moves, versions), id="production-timeline"),
            problem(history_problem) if history_problem else None,
            dbc.InputGroup([dbc.InputGroupText("What served at (YYYY-MM-DD HH:MM, UTC)"),
                            dbc.Input(id="served-at", type="text", placeholder="2026-12-01 12:00", debounce=True)]),
            html.Div(id="served-at-answer", className="mt-2"),
        ]),
        card("Metrics by version", dcc.Graph(figure=metrics_figure(versions), id="metrics-chart")),
        card("Every version: its lineage and reasons", table),
        card("Roll back", [rollback_form, html.Div(id="rollback-result", className="mt-2")]),
    ])


VERSION_LINKS = (("MLflow", "run_url"), ("Ray job logs", "job_url"))  # a version's row -> its run and its job
KIND_COLOURS = {"promotion": GREEN, "rollback": ORANGE}


def timeline_figure(moves: list[dict], versions: list[dict]) -> go.Figure:
    """Which version served when: a step line from move to move up to now, each move marked by kind,
    each rejected version marked at its registration."""
    figure = go.Figure()
    if moves:
        now = dt.datetime.now(dt.UTC)
        figure.add_trace(go.Scatter(x=[m["moved_at"] for m in moves] + [now],
                                    y=[int(m["version"]) for m in moves] + [int(moves[-1]["version"])],
                                    mode="lines", line={"shape": "hv", "color": GREY}, name="serving"))
        for kind, colour in KIND_COLOURS.items():
            marked = [m for m in moves if m["kind"] == kind]
            figure.add_trace(go.Scatter(x=[m["moved_at"] for m in marked], y=[int(m["version"]) for m in marked],
                                        mode="markers", marker={"size": 12, "color": colour}, name=kind,
                                        text=[m["reason"] for m in marked], hoverinfo="text+x+y"))
    rejected = [v for v in versions if v["promotion"] == "rejected"]
    figure.add_trace(go.Scatter(x=[v["created"] for v in rejected], y=[int(v["version"]) for v in rejected],
                                mode="markers", marker={"symbol": "x", "size": 11, "color": RED},
                                name="rejected", text=[v["promotion_reason"] for v in rejected],
                                hoverinfo="text+x+y"))
    figure.update_layout(title="The version serving, its promotions and rollbacks (rejected versions: x)",
                         yaxis={"title": "version", "dtick": 1, "tickformat": "d"}, height=320, margin={"t": 40})
    return figure


def metrics_figure(versions: list[dict]) -> go.Figure:
    """Held-out RMSE by version on an integer axis: promoted and rejected versions in their colours."""
    colours = {"promoted": GREEN, "rejected": RED}
    figure = go.Figure()
    for status in sorted({v["promotion"] for v in versions}):
        shown = [v for v in versions if v["promotion"] == status and v["rmse"] is not None]
        figure.add_trace(go.Scatter(x=[int(v["version"]) for v in shown], y=[v["rmse"] for v in shown],
                                    mode="markers", marker={"size": 12, "color": colours.get(status, GREY)},
                                    name=status, text=[v["family"] for v in shown]))
    figure.update_layout(title="Held-out RMSE ($) by version", yaxis_title="RMSE ($)", height=300, margin={"t": 40},
                         xaxis={"title": "version", "dtick": 1, "tickformat": "d"})
    return figure


# -- Data and drift ------------------------------------------------------------------------------------
def data_page():
    try:
        rows = data.batches(settings)
    except data.Unavailable as exc:
        return problem(str(exc))
    columns = ["batch_id", "group", "day", "batch", "raw_rows", "clean_rows", "rejected_rows", "received_at",
               "processed_at", "drift_found", "retrain"]
    options = [{"label": f"batch {r['batch_id']} (group {r['group']} {r['day']} #{r['batch']})", "value": r["batch_id"]}
               for r in rows if r["drift_found"] is not None]
    return html.Div([
        card("Batches", grid(rows, columns, "batches-table")),
        card("How a batch differs from the data the production model learned from", [
            dcc.Dropdown(options, options[0]["value"] if options else None, id="drift-batch", clearable=False),
            html.Div(id="drift-body", className="mt-3"),
        ]),
    ])


def drift_statistics_figure(features: list[dict]) -> go.Figure:
    """Each feature's statistic as a share of its threshold: past 1 is drift."""
    figure = go.Figure(go.Bar(x=[f["feature"] for f in features],
                              y=[f["statistic"] / f["threshold"] if f["threshold"] else 0 for f in features],
                              marker={"color": [RED if f["drifted"] else GREEN for f in features]},
                              text=[f"{f['statistic']:.3f} / {f['threshold']:g}" for f in features]))
    figure.add_hline(y=1, line_dash="dash", annotation_text="threshold")
    figure.update_layout(title="Statistic / threshold per feature (KS for numbers, shares' distance for categories)",
                         height=300, margin={"t": 40}, yaxis_title="statistic / threshold")
    return figure


def distribution_figure(feature: dict, sides: dict) -> go.Figure:
    figure = go.Figure()
    colours = {"batch": ORANGE, "reference": "#1f77b4"}
    if feature["kind"] == "categorical":
        top = sorted(set(sides["batch"]) | set(sides["reference"]),
                     key=lambda k: -max(sides["batch"].get(k, 0), sides["reference"].get(k, 0)))[:20]
        for side, shares in sides.items():
            figure.add_trace(go.Bar(x=top, y=[shares.get(k, 0) for k in top], name=side,
                                    marker={"color": colours[side]}))
        figure.update_layout(yaxis={"title": "share of rows", "tickformat": ".0%"}, barmode="group")
    else:
        for side, values in sides.items():
            n = len(values)
            figure.add_trace(go.Scatter(x=values, y=[(i + 1) / n for i in range(n)], mode="lines", name=side,
                                        line={"shape": "hv", "color": colours[side]}))
        positive = all(v > 0 for vs in sides.values() for v in vs[:1])
        figure.update_layout(yaxis={"title": "share of rows at or below", "tickformat": ".0%"},
                             xaxis={"title": feature["feature"], "type": "log" if positive else "linear"})
    figure.update_layout(title=f"{feature['feature']}: the batch against the reference ({feature['summary']})",
                         height=380, margin={"t": 40})
    return figure


# -- Monitoring ----------------------------------------------------------------------------------------
def monitoring_page():
    return html.Div([dcc.Interval(id="monitoring-tick", interval=10_000), html.Div(id="monitoring-body")])


def health_cards(health: dict) -> dbc.Row:
    registry = health.get("registry", {}) if isinstance(health.get("registry"), dict) else {}
    log_state = health.get("prediction_log", {}) if isinstance(health.get("prediction_log"), dict) else {}
    status = health.get("status", "unknown")
    colour = {"ok": "success", "degraded": "warning"}.get(status, "danger")
    database = health.get("database", {}) if isinstance(health.get("database"), dict) else {}
    unreachable = registry.get("unreachable_for_s")
    items = [("serving", f"v{health.get('model_version') or '-'}", "primary"), ("status", status, colour),
             ("registry", "reachable" if unreachable is None else f"unreachable {unreachable}s", "secondary"),
             ("database", database.get("status", "-"), "secondary"),
             ("prediction log", f"{log_state.get('backlog', '-')} waiting, {log_state.get('lost', 0)} lost",
              "secondary")]
    return dbc.Row([dbc.Col(dbc.Card(dbc.CardBody([html.Small(name), html.H5(str(value))]), color=c, outline=True))
                    for name, value, c in items], className="mb-3", id="health-cards")


# -- Lineage -------------------------------------------------------------------------------------------
def lineage_page(search: str | None):
    given = parse_qs((search or "").lstrip("?")).get("id", [""])[0]
    return html.Div([
        dbc.InputGroup([dbc.InputGroupText("Prediction id"),
                        dbc.Input(id="lineage-id", value=given, placeholder="as /predict answered it", debounce=True)],
                       className="mb-3"),
        dcc.Loading(html.Div(id="lineage-body")),
    ])


@app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
def route(path, search):
    if path == "/lineage":
        return lineage_page(search)
    return {"/models": models_page, "/monitoring": monitoring_page, "/data": data_page}.get(path, predict_page)()


# -- callbacks ----------------------------------------------------------------------------------------
@app.callback(Output("predict-result", "children"), Input("predict-button", "n_clicks"),
              State("in-status", "value"), State("in-state", "value"),
              *[State(f"in-{k}", "value") for k in (*TEXTS, *NUMBERS)], prevent_initial_call=True)
def predict(_, status, state, *values):
    listing = {"status": status, "state": state}
    for key, value in zip((*TEXTS, *NUMBERS), values, strict=True):
        listing[key] = None if value in ("", None) else value
    try:
        priced = data.predict(settings, listing)
        answer = priced if "invalid" in priced else data.explain(settings, listing)
    except data.Unavailable as exc:
        return problem(str(exc), "predict-error")
    if "invalid" in answer:
        return problem(f"Please correct the listing: {answer['invalid']}", "predict-error")
    prediction_id = priced["prediction_ids"][0]
    return card("The price", [
        html.H2(html.Span(f"${priced['prices'][0]:,.0f}", id="price")),
        html.Div(["priced by ", html.Span(priced["model_name"], id="model-name"), " version ",
                  html.Span(priced["model_version"], id="model-version")]),
        html.Div(["prediction id ", html.Code(prediction_id, id="prediction-id"), " · ",
                  dcc.Link("what does it rest on?", href=f"/lineage?id={prediction_id}", id="lineage-link")]),
        dcc.Graph(figure=waterfall(answer["explanations"][0]), id="contributions"),
    ])


@app.callback(Output("served-at-answer", "children"), Input("served-at", "value"), prevent_initial_call=True)
def served_at(text):
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        return f"{text!r} is not a time: write YYYY-MM-DD HH:MM"
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    move = history.serving_at(data.production_history(settings), when)
    if move is None:
        return f"Nothing served at {when:%Y-%m-%d %H:%M %Z}: it is before the first promotion."
    return (f"v{move['version']} served at {when:%Y-%m-%d %H:%M %Z}, since its {move['kind']} at "
            f"{move['moved_at']:%Y-%m-%d %H:%M:%S %Z}: {move['reason']}")


@app.callback(Output("rollback-result", "children"), Input("rollback-button", "n_clicks"),
              State("rollback-version", "value"), State("rollback-reason", "value"), State("rollback-token", "value"),
              prevent_initial_call=True)
def rollback(_, version, reason, token):
    if not version:
        return problem("Choose the version to roll back to.", "rollback-error")
    try:
        done = data.rollback(settings, version, reason or "", token or "")
    except (data.Unavailable, PermissionError, ValueError) as exc:
        return problem(str(exc), "rollback-error")
    if done["status"] == "already_production":
        return dbc.Alert(f"v{version} is production already: nothing moved.", color="info", id="rollback-done")
    return dbc.Alert([f"Production is v{done['version']} (was v{done['previous_version']}). Recorded: "
                      f"{done['reason']} ", dcc.Link("reload the timeline", href="/models", refresh=True)],
                     color="success", id="rollback-done")


@app.callback(Output("monitoring-body", "children"), Input("monitoring-tick", "n_intervals"))
def monitoring(_):
    try:
        cards = health_cards(data.health(settings))
    except data.Unavailable as exc:
        cards = problem(str(exc), "health-message")
    try:
        charts = data.monitoring(settings)
    except data.Unavailable as exc:
        return html.Div([cards, problem(str(exc), "monitoring-message")])
    if not any(charts.values()):
        return html.Div([cards, dbc.Alert("Prometheus answers but has no Serve metrics yet: send some predictions.",
                                          color="info", id="monitoring-message")])
    graphs = []
    for name, lines in charts.items():
        figure = go.Figure([go.Scatter(x=[dt.datetime.fromtimestamp(t) for t, _ in points], y=[v for _, v in points],
                                       mode="lines+markers", marker={"size": 3}, name=line,
                                       line_shape=data.CHARTS[name].shape)
                            for line, points in lines.items()])
        figure.update_layout(title=name if lines else f"{name}: none in the last 30 minutes", height=240,
                             margin={"t": 36, "b": 24}, showlegend=bool(lines))
        graphs.append(dbc.Col(dcc.Graph(figure=figure, id=f"series-{len(graphs)}",
                                        className="monitoring-graph" + (" has-data" if lines else "")), md=6))
    return html.Div([cards, dbc.Row(graphs, id="monitoring-graphs")])


@app.callback(Output("drift-body", "children"), Input("drift-batch", "value"))
def drift(batch_id):
    if batch_id is None:
        return html.Div("No batch has a decision yet.")
    report = data.drift(settings, batch_id)
    if report is None:
        return html.Div(f"Batch {batch_id} has no decision yet.")
    features = report["features"]
    rows = [{"feature": f["feature"], "kind": f["kind"], "statistic": round(f["statistic"], 4),
             "threshold": f["threshold"], "drifted": "yes" if f["drifted"] else "no", "in words": f["summary"]}
            for f in features]
    compared = (f"{report['batch_rows']:,} batch rows against {report['reference_rows']:,} reference rows "
                f"(the data of production v{report['production_version'] or '-'})"
                if report["batch_rows"] is not None else "")
    options = [{"label": f["feature"], "value": f["feature"]} for f in features]
    first = next((f["feature"] for f in features if f["drifted"]), features[0]["feature"] if features else None)
    return html.Div([
        dbc.Alert([html.B("Decision: "), html.Span(report["reason"], id="drift-reason")], color="light"),
        html.P(compared),
        dcc.Graph(figure=drift_statistics_figure(features), id="drift-statistics"),
        grid(rows, ["feature", "kind", "statistic", "threshold", "drifted", "in words"], "drift-table",
             wide=("in words",)),
        dbc.Row([dbc.Col(dbc.Label("Distribution of"), width="auto"),
                 dbc.Col(dcc.Dropdown(options, first, id="drift-feature", clearable=False), md=3)],
                className="mt-3 align-items-center"),
        dcc.Store(id="drift-context", data={"batch_id": batch_id, "reference": report["reference_batches"],
                                            "features": features}),
        dcc.Loading(dcc.Graph(id="drift-distribution")),
    ])


@app.callback(Output("drift-distribution", "figure"), Input("drift-feature", "value"), State("drift-context", "data"))
def distribution(feature_name, context):
    feature = next(f for f in context["features"] if f["feature"] == feature_name)
    sides = data.distribution(settings, context["batch_id"], feature_name, feature["kind"], context["reference"])
    return distribution_figure(feature, sides)


@app.callback(Output("lineage-body", "children"), Input("lineage-id", "value"))
def lineage(prediction_id):
    if not prediction_id:
        return html.Div("Paste a prediction id (the Predict page links each price to its lineage).")
    try:
        walk = data.lineage(settings, prediction_id.strip())
    except (ValueError, LookupError, data.Unavailable) as exc:
        return problem(str(exc), "lineage-error")
    trained, trigger = walk["trained_on"], walk["trigger"]
    decision = trigger.get("decision") or {}
    samples = walk["sample_raw_rows"]
    return html.Div(id="lineage-walk", children=[
        card("The prediction", [
            html.H3(f"${walk['predicted_price']:,.0f}"),
            html.Div(f"priced at {walk['requested_at']:%Y-%m-%d %H:%M:%S %Z} by version {walk['model_version']} "
                     f"of {walk['model_name']}", id="lineage-version"),
            html.A("its MLflow run", href=walk["run_url"], target="_blank") if walk["run_url"] else None,
        ]),
        card("Why that version was trained", html.Div([
            html.P(trigger.get("reason") or "-", id="lineage-trigger"),
            html.P(f"the decision on batch {decision['batch_id']}: {decision['retrain_reason']}") if decision else None,
        ])),
        card(f"What it was trained on: {trained['rows'] or 0:,} clean rows (data hash {trained['data_hash']})",
             grid(trained["batches"], ["batch_id", "batch_number", "clean_rows"], "lineage-batches")),
        card("Sample raw rows of those batches",
             grid([{k: str(v) for k, v in r.items()} for r in samples], list(samples[0]) if samples else [],
                  "lineage-raw-rows")),
    ])


def main() -> None:
    app.run(host="127.0.0.1", port=settings.dash_port, debug=False)


if __name__ == "__main__":
    main()
