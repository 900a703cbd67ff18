"""Ray job: clean every raw batch of (group, day) not processed yet, with Ray Data.

    ray job submit --working-dir . -- python -m jobs.process --group 9 --day Tuesday
"""

from jobs.common import job_parser, run_job
from tasador.processing import process_pending


def main() -> None:
    args = job_parser(__doc__).parse_args()
    run_job("process", lambda settings: process_pending(settings, args.group, args.day))


if __name__ == "__main__":
    main()
