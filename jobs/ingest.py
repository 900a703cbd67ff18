"""Ray job: fetch the next batch of (group, day) from the data API into the raw database.

    ray job submit --working-dir . -- python -m jobs.ingest --group 9 --day Tuesday
"""

from jobs.common import job_parser, run_job
from tasador.ingest import ingest_next


def main() -> None:
    args = job_parser(__doc__).parse_args()
    run_job("ingest", lambda settings: ingest_next(settings, args.group, args.day).as_dict())


if __name__ == "__main__":
    main()
