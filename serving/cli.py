"""``serving`` command: run a config with the project's launch settings.

    serving run configs/quickstart.yaml [--default-proxy]
    serving model-config NAME [--repository models]

``model-config`` prints a model's config.yaml as the gateway completes it from the ONNX graph.

``run`` starts a fresh local Ray instance (never attaching to someone else's) whose node
declares a resource for every pool of the config (so a hybrid config runs on one machine),
with the replica settings of :data:`REPLICA_ENV`, and replaces itself with ``serve run`` so
Ctrl-C / SIGINT stops Serve cleanly. The project's configs say ``proxy_location: Disabled``:
the gateway replicas serve HTTP and gRPC themselves (:mod:`serving.server`).
``--default-proxy`` runs a copy of the config with Ray Serve's own proxy instead (stock Ray
Serve, the fallback ingress).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPLICA_ENV = {
    # Run user code and the handle router on the replica's main event loop: fewer thread
    # hops per request. At 600 req/s open loop on digits this doubled the gateway's goodput
    # on a 2-core machine (README, Benchmarks). Our replicas never block their loop.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
# Ray Serve's own fast ingress would bind the configured ports in every replica (and HAProxy's
# listeners on all interfaces): off, whatever the environment says; the gateway serves itself.
RAY_INGRESS_OFF = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
RESOURCES_ENV = "RAY_OVERRIDE_RESOURCES"  # what the local Ray node declares at start
BASE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # loopback-only by default; see README before exposing it
    "RAY_ADDRESS": "local",  # a new Ray instance, not whatever cluster happens to run here
}


def launch_env(
    *,
    default_proxy: bool = False,
    base: dict[str, str] | None = None,
    resources: dict[str, float] | None = None,
) -> dict[str, str]:
    """The environment ``serve run`` gets; explicit settings in ``base`` win, except that
    Ray Serve's HAProxy and direct ingress are always off (:data:`RAY_INGRESS_OFF`).

    ``default_proxy``: stock Ray Serve (its Python proxy and Ray's own replica defaults).
    ``resources``: custom resources the local Ray node declares (one per pool of the
    config), so every pool's replicas can be placed on this machine.
    """
    env = dict(os.environ if base is None else base)
    for key, value in {**BASE_ENV, **({} if default_proxy else REPLICA_ENV)}.items():
        env.setdefault(key, value)
    if default_proxy:
        for key in REPLICA_ENV:
            env.pop(key, None)
    env.update(RAY_INGRESS_OFF)
    if resources:
        declared = json.loads(env.get(RESOURCES_ENV) or "{}")
        env[RESOURCES_ENV] = json.dumps({**resources, **declared})
    return env


def with_default_proxy(path: Path) -> Path:
    """A copy of the config at ``path`` in which Ray Serve's proxy is the ingress (on the
    head node), written to a temporary file (``serve run`` reads it once at start)."""
    document = yaml.safe_load(path.read_text()) or {}
    document["proxy_location"] = "HeadOnly"
    handle, name = tempfile.mkstemp(prefix=f"{path.stem}-default-proxy-", suffix=".yaml")
    with os.fdopen(handle, "w") as copy:
        yaml.safe_dump(document, copy)
    return Path(name)


def serve_command(config: Path) -> list[str]:
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve is None:
        raise SystemExit("the 'serve' command (ray[serve]) is not installed in this environment")
    return [serve, "run", str(config)]


def check_config(path: Path) -> list[str]:
    """Validate every gateway application in a Serve YAML file; return the problems found.

    ``serve run`` builds applications inside the Serve controller, where a bad value only
    shows up as a failed deployment in the logs; checking here stops the start at once.
    Every model an ONNX Runtime pool serves is loaded once here too, so a model that cannot
    be loaded (say, a file written for a newer ONNX Runtime) stops the start with its reason.
    """
    from serving.config import parse_gateway_config
    from serving.errors import ConfigError
    from serving.repository import load_repository

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        return [f"{path}: not valid YAML: {exc}"]
    problems = []
    for index, app in enumerate(document.get("applications") or []):
        if app.get("import_path") != "serving.deployments:build_app":
            continue
        try:
            config = parse_gateway_config(app.get("args") or {})
            problems += _autoscaling_problems(path, index, app, config)
            specs = load_repository(config)
            if any(pool.runtime == "onnx" for pool in config.pools.values()):
                for spec in specs.values():
                    _load_once(spec)
        except ConfigError as exc:
            problems.append(f"{path}: applications[{index}] ({app.get('name')}): {exc}")
    return problems


AUTOSCALER = "serving.autoscaler:GatewayAutoscaler"


def _autoscaling_problems(path: Path, index: int, app: dict, config: Any) -> list[str]:
    """A pool that autoscales needs the gateway's policy: Serve's own cannot see the
    demand the gateway queues, and the workers would hold their count."""
    scaled = [f"{name} ({p.min_replicas}..{p.max_replicas})"
              for name, p in config.pools.items() if p.min_replicas < p.max_replicas]
    policy = (app.get("autoscaling_policy") or {}).get("policy_function")
    if not scaled or policy == AUTOSCALER:
        return []
    return [f"{path}: applications[{index}] ({app.get('name')}): pools {', '.join(scaled)} "
            f"autoscale, but the application's autoscaling_policy is {policy!r}; add "
            f"autoscaling_policy: {{policy_function: {AUTOSCALER}}}"]


def pool_resources(path: Path) -> dict[str, float]:
    """The custom resources a single machine needs to host every pool in ``path``."""
    from serving.config import parse_gateway_config
    from serving.placement import local_resources

    document = yaml.safe_load(path.read_text()) or {}
    resources: dict[str, float] = {}
    for app in document.get("applications") or []:
        if app.get("import_path") == "serving.deployments:build_app":
            resources.update(local_resources(parse_gateway_config(app.get("args") or {})))
    return resources


def _load_once(spec: object) -> None:
    from serving.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(spec)  # type: ignore[arg-type]
    runtime.load()  # ConfigError: ONNX Runtime's reason, or a mismatch with config.yaml
    runtime.unload()


def model_config(repository: Path, name: str) -> int:
    from serving.errors import ConfigError
    from serving.repository import completed_config

    try:
        print(completed_config(repository, name), end="")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve a config (blocks; Ctrl-C stops)")
    run.add_argument("config", type=Path)
    run.add_argument(
        "--default-proxy", action="store_true", help="use Ray Serve's Python proxy instead"
    )
    describe = commands.add_parser(
        "model-config", help="print a model's config.yaml, completed from its ONNX graph"
    )
    describe.add_argument("name", help="the model's folder name in the repository")
    describe.add_argument("--repository", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    if args.command == "model-config":
        return model_config(args.repository, args.name)
    if not args.config.is_file():
        parser.error(f"config file {args.config} does not exist")
    problems = check_config(args.config)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    config = with_default_proxy(args.config) if args.default_proxy else args.config
    command = serve_command(config)
    env = launch_env(default_proxy=args.default_proxy, resources=pool_resources(args.config))
    os.execve(command[0], command, env)
    return 0  # unreachable: execve replaces the process


if __name__ == "__main__":
    sys.exit(main())
