# The one Tasador image: Ray jobs, the Serve app, MLflow server and the Dash app all run from it.
# The base is Ray's image of the same Ray and Python versions as pyproject.toml pins.
FROM rayproject/ray:2.60.0-py311-cpu

WORKDIR /home/ray/tasador
# .dockerignore keeps out .venv, state and caches
COPY --chown=ray:users . .
RUN pip install --no-cache-dir -e . \
    && python -c "import serve_app.app, jobs.pipeline, tasador.training"
ENV PYTHONUNBUFFERED=1
