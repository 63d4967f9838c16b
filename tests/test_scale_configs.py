"""The Docker and Kubernetes work-pool templates in docs/scale-out/: accepted by a Prefect server as base job
templates of pools of their type, and, filled in with their defaults, a job that gets one GPU and the shared data
root. (Parsed and checked here; no Docker engine or cluster runs on these machines.)"""

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values, find_placeholders

CONFIGS = Path(__file__).parents[1] / "docs" / "scale-out"


def filled(name: str) -> tuple[dict, dict]:
    """The template `name` and its job configuration with every variable at its default."""
    template = json.loads((CONFIGS / name).read_text())
    variables = template["variables"]["properties"]
    assert {p.name for p in find_placeholders(template["job_configuration"])} <= set(variables)
    defaults = {key: spec["default"] for key, spec in variables.items() if "default" in spec}
    return template, apply_values(template["job_configuration"], defaults)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_the_pool_templates_are_accepted_by_prefect(kind):
    template, _ = filled(f"{kind}-pool.json")
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name=f"svi-{kind}-check", type=kind, base_job_template=template), overwrite=True
        )
    assert pool.base_job_template == template  # (a placeholder without its variable is refused with HTTP 422)


def test_a_docker_job_gets_a_gpu_and_the_data_root():
    _, job = filled("docker-pool.json")
    assert job["container_create_kwargs"]["device_requests"] == [
        {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}
    ]
    assert "/srv/svi:/data/svi" in job["volumes"] and job["env"]["SVI_CACHE_DIR"] == "/data/svi"


def test_a_kubernetes_job_gets_a_gpu_and_the_data_root():
    _, job = filled("kubernetes-pool.json")
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
    assert mounts["data-root"] == "/data/svi" and claims["data-root"] == "svi-data"
    assert job["env"]["SVI_CACHE_DIR"] == "/data/svi"
