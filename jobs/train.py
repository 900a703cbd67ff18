"""Ray job: when the latest decision of (group, day) says retrain, train the three families with Ray
Tune on every clean row and register the best as a new model version.

    ray job submit --working-dir . -- python -m jobs.train --group 9 --day Tuesday [--force]
"""

from jobs.common import job_parser, run_job
from tasador.retrain import train_pending


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--force", action="store_true", help="train even if no decision asks for it")
    args = parser.parse_args()
    run_job("train", lambda settings: train_pending(settings, args.group, args.day, args.force))


if __name__ == "__main__":
    main()
