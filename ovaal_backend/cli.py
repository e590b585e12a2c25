"""Command line: ``python -m ovaal_backend <command>``, one sub-command per driver and admin task."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .backend.export_formats import COCO_FILE, DEFAULT_FORMATS, FORMATS, LS_FILE, parse_formats
from .config import Config, ConfigError
from .files import lock_model_dir


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    from .simulator.flags import add_simulate_arguments

    p = sub.add_parser("simulate", help="offline active-learning loop with an oracle annotator",
                       description="Run the active-learning loop on a labelled dataset, answering queries from its "
                                   "ground truth, and write per-round mIoU to a JSON file.")
    p.set_defaults(run=run_simulate)
    add_simulate_arguments(p)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run_simulate(args: argparse.Namespace) -> int:
    """``simulate``: run the loop, write RESULT.json (and the plot), print a one-line summary."""
    from .simulator.flags import simulation_config
    from .simulator.loop import plot_results, run_simulation, write_result

    config = simulation_config(args)
    result = run_simulation(config, args.train, args.eval, args.max_train_images, args.max_eval_images,
                            progress=not args.quiet, train_prefixes=_split(args.train_prefixes),
                            eval_prefixes=_split(args.eval_prefixes), semi_ablations=_split(args.semi_ablations),
                            checkpoint=args.save_checkpoint,
                            logit_taus=[float(t) for t in _split(args.logit_taus)],
                            convergence_check=args.convergence_check, method=args.method,
                            dense_images=args.dense_images)
    write_result(result, args.out)
    if args.plot:
        plot_results([result], args.plot)
    last = result["rounds"][-1]
    print(f"{result['method']}: mIoU {last['miou']:.2f} at {last['labelled_pixels_per_image']:.0f} px/image "
          f"({100 * last['labelled_fraction']:.4f} %), {result['total_seconds']:.0f} s -> {args.out}")
    return 0


def _backend_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("serve", help="run the Label Studio ML backend (gunicorn on PORT)",
                   description="Serve /health, /setup, /predict, /webhook and /metrics for Label Studio. Every "
                               "setting comes from the environment (field names of config/ in upper case)."
                   ).set_defaults(run=run_serve)
    p = sub.add_parser("export", help="write a project's masks: PNG label maps, COCO JSON, Label Studio JSON",
                       description="The mask of every source image from the project's current model, annotators' "
                                   "clicks on top, in each --format: png (label map per image, class index per "
                                   "pixel, 255 = none, plus a colour preview), coco (coco.json: one RLE per class "
                                   "per image, category id = class index + 1), ls-json (label_studio.json: the "
                                   "tasks with the masks as brush predictions, to import into a project with the "
                                   "same label config); classes.json always. Reads MODEL_DIR; asks Label Studio "
                                   "only for uncached images.")
    p.set_defaults(run=run_export)
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--format", type=_export_formats, default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated, from {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)})")
    p = sub.add_parser("resync", help="re-read a project's annotations from Label Studio (lost webhooks)",
                       description="Queue every annotation Label Studio has, and the deletion of stored ones it no "
                                   "longer has, as events: a running backend applies them within seconds, a "
                                   "stopped one when it starts.")
    p.set_defaults(run=run_resync)
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p = sub.add_parser("quarantine", help="list what a project set aside: malformed events, unreadable images",
                       description="Events that could not be applied and images that could not be read, with their "
                                   "reasons. --release puts the events back in the queue (a running backend applies "
                                   "them within seconds); images are tried again by every round by themselves.")
    p.set_defaults(run=run_quarantine)
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--release", action="store_true", help="retry the quarantined events")
    p = sub.add_parser("cleanup", help="remove from a Label Studio project everything the backend wrote into it",
                       description="Deletes the backend's query tasks (with their annotations), its predictions "
                                   "(model versions ovaal-N) and its Data Manager tab, and sets the project back to "
                                   "sequential sampling and no model version. Disconnect the model in Label Studio "
                                   "first, or the backend starts a new round. MODEL_DIR/<id> is left as it is.")
    p.set_defaults(run=run_cleanup)
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--yes", action="store_true", help="really do it (without: only say what would happen)")
    p = sub.add_parser("worker", help="run round jobs from the Redis queue (REDIS_URL), e.g. on a GPU machine",
                       description="An RQ worker for the backend's JOB_QUEUE on REDIS_URL: each round job runs in a "
                                   "freshly spawned process (never a fork, so CUDA is safe). Needs the shared "
                                   "MODEL_DIR and the image files; start one per GPU (CUDA_VISIBLE_DEVICES=N).")
    p.set_defaults(run=run_worker)
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    p.add_argument("--name", help="worker name shown by rq (default: a random id)")
    p = sub.add_parser("check", help="say what is right and how to fix what is not, before connecting",
                       description="One line per item: Label Studio's URL and the API key, the local-files document "
                                   "root and one image read through it, MODEL_DIR writable, the device and the "
                                   "training profile, Redis and its workers (with REDIS_URL), and the settings in "
                                   "effect after the profile. Exit status 0 when every item is ok, 1 otherwise.")
    p.set_defaults(run=run_check)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of lines")
    p = sub.add_parser("requeue", help="run a project's round job again after it failed for good",
                       description="A round job that failed on every retry holds its project (shown under "
                                   "failed_job in /metrics). After fixing the cause, this puts the job back on the "
                                   "queue (REDIS_URL) or, without a queue, has the backend run it again in its "
                                   "process; a running backend picks it up within seconds, a stopped one on start.")
    p.set_defaults(run=run_requeue)
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")


def run_serve(args: argparse.Namespace) -> int:
    """``serve``: the ML backend under gunicorn, settings from the environment.

    It holds MODEL_DIR's lock while it runs (``files.lock_model_dir``): a second server on the same MODEL_DIR stops
    with one ``error:`` line instead of running every project's rounds a second time.
    """
    from .backend.wsgi import check_network_exposure, serve

    config = Config.from_env()
    check_network_exposure(config)  # a refused address leaves nothing behind, not even MODEL_DIR
    with lock_model_dir(config.model_dir):
        serve(config)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``export``: label maps and previews of one project's source images."""
    from .backend.client import client_from_config
    from .backend.export import export_project

    config = Config.from_env()
    written = export_project(config, args.project, args.out, client_from_config(config), args.format)
    files = [f"{len(written)} label maps"] if "png" in args.format else []
    files += [name for fmt, name in (("coco", COCO_FILE), ("ls-json", LS_FILE)) if fmt in args.format]
    print(f"project {args.project}: {', '.join(files)} -> {args.out}")
    return 0


def _export_formats(text: str) -> tuple[str, ...]:
    """``--format``'s value as export formats; argparse turns the error into a usage error naming the choices."""
    try:
        return parse_formats(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_resync(args: argparse.Namespace) -> int:
    """``resync``: queue Label Studio's annotations of one project as events for the backend to apply."""
    from .backend import service
    from .backend.client import client_from_config

    config = Config.from_env()
    queued, deleted = service.resync(config, args.project, client_from_config(config))
    print(f"project {args.project}: queued {queued} annotations and {deleted} deletions")
    return 0


def run_quarantine(args: argparse.Namespace) -> int:
    """``quarantine``: what one project set aside, and optionally release its events."""
    from .backend import service

    found = service.quarantine(Config.from_env(), args.project, release=args.release)
    for event in found.events:
        print(f"event {event['id']} ({event['action']}): {event['error']}")
    for image in found.images:
        print(f"image of task {image['item']}: {image['reason']}")
    print(f"project {args.project}: {len(found.events)} quarantined events, {len(found.images)} unreadable images"
          + (f"; released {found.released} events" if args.release else ""))
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """``worker``: an RQ worker for the backend's round jobs."""
    from .backend.queue_worker import run_worker as work

    return work(Config.from_env(), burst=args.burst, name=args.name)


def run_requeue(args: argparse.Namespace) -> int:
    """``requeue``: release a project's round job that failed for good (re-queued on Redis when there is a queue)."""
    from .backend import service

    config = Config.from_env()
    failed = service.held_job(config, args.project)
    print(f"project {args.project}: round job {failed['job']} (round {failed['round']}) failed: {failed['reason']}")
    if config.redis_url:
        from .backend.queue_jobs import requeue_failed

        print(requeue_failed(config, failed["queue_id"]))
    else:
        print("no REDIS_URL: the backend runs it again in its own process")
    service.release_job(config, args.project, failed["job"])
    print(f"project {args.project}: released; a running backend resumes the round within seconds")
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    """``cleanup``: everything the backend wrote into a project, removed."""
    from .backend.cleanup import clean_project
    from .backend.client import client_from_config

    if not args.yes:
        print(f"project {args.project}: would delete the backend's query tasks, its ovaal-N predictions and its "
              "Data Manager tab, and set sampling back to sequential; run again with --yes")
        return 0
    removed = clean_project(client_from_config(Config.from_env()), args.project)
    print(f"project {args.project}: removed {removed['query_tasks']} query tasks, {removed['predictions']} "
          f"predictions, {removed['views']} tabs; sampling is sequential again")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``check``: every item's line (or JSON); 0 when all are ok, 1 otherwise."""
    from .backend.check import report, run_checks

    findings = run_checks(Config.from_env())
    print(report(findings, args.json))
    return 0 if all(f.ok for f in findings) else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ovaal_backend`` parser with one sub-command per driver."""
    parser = argparse.ArgumentParser(prog="python -m ovaal_backend",
                                     description="One-vs-All active learning for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    _backend_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; known failures (bad settings, data, weights) print one ``error:`` line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        level = "INFO" if args.command == "simulate" else Config.from_env().log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args)  # each sub-command's parser names its function (set_defaults)
    except (ConfigError, ValueError, RuntimeError, OSError) as err:  # DatasetError, WeightsUnavailableError, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
