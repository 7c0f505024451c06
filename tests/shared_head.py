"""The tests' Ray head, one per test module, in a module of its own.

pytest loads tests/conftest.py as `conftest`, while the test modules import it as
`tests.conftest`: two copies, each with its own globals. Kept in either, the head started
through one copy would be invisible to the other (a module-end fixture of `conftest` found no
head to stop, and the first head ever started served the whole session). Both copies import
this one module, so there is one head, and it is the module's.
"""

from __future__ import annotations

import os

# The head this module started, and the token-authentication mode its jobs must use.
_shared: tuple | None = None


def shared_ray() -> tuple[str, str]:
    """The address and token-authentication mode of one Ray head (2 CPUs, as this machine)
    started on first use in a test module and shut down at the module's end
    (conftest.stop_shared_ray_after_each_module). Joining it spares each job run a Ray start
    and stop of its own. Its workers run with this process's environment as it was when the
    head started, not the job's: a run whose workers need variables of their own uses
    plain_env(), unless the module starts its head with them (tests/test_s3.py), and so does a
    run whose whole process group is killed.

    The head takes token authentication as this process has it when it starts: on when an
    earlier test's ray.init() started a local Ray here (Ray then sets RAY_AUTH_MODE=token in
    this process), off otherwise. Its jobs are given that mode, whatever this process has
    since: a driver and workers that disagree fail every call between them."""
    global _shared
    if _shared is None:
        from ray.cluster_utils import Cluster

        auth_mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        head = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 2,
                "num_gpus": 0,
                "include_dashboard": False,
                # A port of its own, not Ray's default (52365): the Ray a job starts for
                # itself, or a `ray start` head, needs that one for its dashboard agent
                # ("No available agent to submit job" otherwise).
                "dashboard_agent_listen_port": None,
            },
        )
        _shared = (head, auth_mode)
    head, auth_mode = _shared
    return head.address, auth_mode


def stop_shared_ray() -> None:
    global _shared
    if _shared is not None:
        head, _ = _shared
        _shared = None
        head.shutdown()
