"""Ray job: fetch the next batch of (group, day) from the data API into the raw database.

    ray job submit --working-dir . -- python -m jobs.ingest --group 9 --day Tuesday
"""

from jobs.common import job_parser, run_job
from tasador.cycle import work_pending
from tasador.ingest import ingest_next


def ingest(settings, group: int, day: str) -> dict:
    """The next batch; when the API is exhausted, also whether a crashed run left work behind (the
    DAG then runs the rest of the cycle instead of skipping it)."""
    summary = ingest_next(settings, group, day).as_dict()
    if summary["status"] == "exhausted":
        summary["work_pending"] = work_pending(settings, group, day)
    return summary


def main() -> None:
    args = job_parser(__doc__).parse_args()
    run_job("ingest", lambda settings: ingest(settings, args.group, args.day))


if __name__ == "__main__":
    main()
