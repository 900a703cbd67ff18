"""The local stack's processes: PostgreSQL, the Ray head (Serve, HAProxy), MLflow, Prometheus, Airflow
and the data API, each started on loopback and stopped by PID (``stack.up``/``down``/``status``)."""
