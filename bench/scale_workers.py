"""Films on a work pool: the wall time of the same films on one process worker and on two, on this machine.

    python bench/scale_workers.py                        # 2 films x 3 clips x 9 frames, 4 steps, 128 px
    python bench/scale_workers.py --films 4 --out bench/results/scale-$(date +%F).json

A throwaway Prefect server is started; `svi deploy`'s deployments go on a process pool; for 1 and then 2 workers
(each `svi worker`'s command, each in a folder of its own, sharing one fresh data root) the films are submitted
together and timed from submission until the last one is done. Tiny random weights on the CPU: on a machine with
fewer cores than workers the workers share them, so read the ratio as a lower bound of what separate GPUs give.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=int, default=2)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["SVI_DEMO_MODEL"] = "random"  # tiny random weights, built offline in the data root

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.deploy import deploy_flows, worker_command

    work = Path(tempfile.mkdtemp(prefix="svi-bench-scale-"))
    request = {"clips": args.clips, "render": {"num_frames": 9, "steps": args.steps, "max_width": 128}}
    seconds = {}
    with prefect_test_harness(server_startup_timeout=60):
        deploy_flows("svi-bench")
        for count in (1, 2):
            root, names = work / f"root-{count}", [f"worker-{count}-{n}" for n in range(count)]
            workers = []
            for name in names:
                command, environment = worker_command("svi-bench", name=name)
                environment.update(
                    PREFECT_API_URL=PREFECT_API_URL.value(), SVI_CACHE_DIR=str(root), PREFECT_WORKER_QUERY_SECONDS="1"
                )
                (work / name).mkdir()
                workers.append(subprocess.Popen(command, cwd=work / name, env=environment, stdout=subprocess.DEVNULL))
            with get_client(sync_client=True) as client:
                while {w.name for w in client.read_workers_for_work_pool("svi-bench") if w.status == "ONLINE"} < set(
                    names
                ):
                    time.sleep(0.5)
                start = time.perf_counter()
                runs = [
                    run_deployment(
                        "film/svi-film",
                        parameters={
                            "request": {**request, "keywords": [f"film {n}"], "output": {"run_dir": f"runs/{n}"}}
                        },
                        timeout=0,
                    ).id
                    for n in range(args.films)
                ]
                while not all(client.read_flow_run(run).state.is_final() for run in runs):
                    time.sleep(0.5)
                seconds[count] = time.perf_counter() - start
                states = [client.read_flow_run(run).state.name for run in runs]
            for worker in workers:
                worker.send_signal(signal.SIGINT)
                worker.wait(timeout=60)
            print(f"{args.films} films on {count} worker(s): {seconds[count]:.1f} s ({', '.join(states)})")
    figures = {
        "films": args.films,
        "clips": args.clips,
        "steps": args.steps,
        "seconds_one_worker": round(seconds[1], 1),
        "seconds_two_workers": round(seconds[2], 1),
        "speed_up": round(seconds[1] / seconds[2], 2),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    print(f"two workers: {figures['speed_up']}x the one worker's speed on {figures['cpus']} CPUs")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
