"""Ray job: decide, for every processed batch of (group, day) without a decision, whether to retrain
and why (drift against the production model's data; thresholds in settings).

    ray job submit --working-dir . -- python -m jobs.decide --group 9 --day Tuesday
"""

from jobs.common import job_parser, run_job
from tasador.decisions import decide_pending


def main() -> None:
    args = job_parser(__doc__).parse_args()
    run_job("decide", lambda settings: decide_pending(settings, args.group, args.day))


if __name__ == "__main__":
    main()
