"""Ray job: the whole cycle for the next batch of (group, day), every step in this one job;
``--all`` repeats it until the data API has no more batches.

    ray job submit --working-dir . -- python -m jobs.pipeline --group 9 --day Tuesday --all
"""

from jobs.common import job_parser, run_job
from tasador.cycle import cycle


def run(settings, group: int, day: str, every: bool) -> dict:
    rows = []
    while True:
        result = cycle(settings, group, day)
        if result["status"] == "exhausted" or not every:
            break
        rows.append(result["row"])
    return {"job": "pipeline", "status": result["status"], "group_number": group, "day": day,
            "batches": rows or ([result["row"]] if result["row"] else [])}


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--all", action="store_true", help="run the cycle until the API is exhausted")
    args = parser.parse_args()
    run_job("pipeline", lambda settings: run(settings, args.group, args.day, args.all))


if __name__ == "__main__":
    main()
