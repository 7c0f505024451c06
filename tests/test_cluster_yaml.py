"""cluster.yaml passes Ray's own cluster-config validator and matches the project's pins."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO


def load_cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def validate(config):
    """What `ray up` does before it launches anything: fill defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_cluster_yaml_is_valid_for_ray():
    validate(load_cluster())


def test_the_validator_does_reject_a_broken_config():
    import jsonschema
    import pytest

    config = load_cluster()
    config["available_node_types"]["gpu_t4"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(config)


def test_cluster_has_a_gpu_worker_pool_of_fixed_size():
    config = load_cluster()
    workers = {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    gpu_types = [n for n in workers.values() if n["node_config"]["InstanceType"].startswith("g")]
    assert gpu_types and all(n["min_workers"] == n["max_workers"] >= 1 for n in gpu_types)


def test_cluster_installs_the_ray_version_pyproject_pins():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    version = re.search(r"==([\d.]+)", pinned).group(1)
    setup = " ".join(load_cluster()["setup_commands"])
    assert f"=={version}" in setup and "matryoshka-embed[s3]" in setup
