"""Ray job: compare the newest challenger of (group, day) with the production model on the same
held-out rows and move the ``production`` alias only if it is better by the configured margin.

    ray job submit --working-dir . -- python -m jobs.promote --group 9 --day Tuesday [--version V]
"""

from jobs.common import job_parser, run_job
from tasador.retrain import promote_pending


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--version", default=None, help="the challenger version (default: the one trained last)")
    args = parser.parse_args()
    run_job("promote", lambda settings: promote_pending(settings, args.group, args.day, args.version))


if __name__ == "__main__":
    main()
