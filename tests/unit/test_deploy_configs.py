"""Deployment files are valid for the tools that consume them (SPEC §5, §8).

* ``cluster.yaml`` — Ray's own JSON schema and config validation (what ``ray up`` runs before
  it touches AWS), the EC2 request shape of every ``node_config``, pinned installs, token auth,
  metrics port, no secrets.
* ``deploy/kuberay/`` — the RayService's ``serveConfigV2`` is ``serve_config.yaml``, valid for
  Serve key by key; autoscaling, GCS fault tolerance, token auth and secrets on every Ray
  container; the scheduler Job talks to the same cluster.
* ``deploy/iam/`` — least privilege: the checks below fail on an extra or wildcard action, a
  ``*`` resource, or a missing ExternalId / prefix condition.
* ``deploy/grafana/`` — every query uses only the metric names and labels the code exports.

All offline and fast: no AWS, no Kubernetes, no Ray cluster.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import botocore.session
import jsonschema
import pytest
import ray.autoscaler
import yaml
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema
from test_serve_config import load_config as load_serve_config
from test_serve_config import unknown_keys

from cur_ray.adapters.db.jobs import JobStatus
from cur_ray.domain.billing import FileStatus

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"
IAM = ROOT / "deploy" / "iam"
DASHBOARD = ROOT / "deploy" / "grafana" / "cur_ray_dashboard.json"
RAY_SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

Mutation = Callable[[dict[str, Any]], None]


def _load_yaml(path: Path) -> dict[str, Any]:
    """One YAML document that must be a mapping."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_version() -> str:
    """The version of cur_ray in pyproject.toml."""
    return str(_pyproject()["project"]["version"])


def pinned_ray_version() -> str:
    """The Ray version pyproject.toml pins (``ray[...]==X``)."""
    for requirement in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match[2]
    raise AssertionError("pyproject.toml does not pin ray")


# =============================================================================================
# cluster.yaml


def load_cluster_config() -> dict[str, Any]:
    """cluster.yaml as ``ray up`` reads it."""
    return _load_yaml(CLUSTER_YAML)


def _ray_schema() -> dict[str, Any]:
    """Ray's cluster config schema, as installed with the pinned Ray."""
    schema = json.loads(RAY_SCHEMA_PATH.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


# Keys the Ray AWS provider reads from node_config itself instead of passing them to EC2
# (ray/autoscaler/_private/aws: SubnetIds becomes SubnetId when a node is launched).
_RAY_ONLY_NODE_CONFIG_KEYS = frozenset({"SubnetIds"})


@lru_cache(maxsize=1)
def _run_instances_shape() -> Any:
    """The request shape of EC2 RunInstances, from botocore's bundled model (loaded once)."""
    model = botocore.session.get_session().get_service_model("ec2")
    return model.operation_model("RunInstances").input_shape


def node_config_problems(node_config: dict[str, Any]) -> list[str]:
    """What EC2 RunInstances would reject in ``node_config``, checked by botocore offline.

    Ray passes ``node_config`` to ``ec2.create_instances(**node_config, MinCount=1,
    MaxCount=1, ...)``; botocore's own validator (the one boto3 runs before sending) catches
    unknown or misspelled keys at any depth and wrong types, from the bundled service model.
    """
    shape = _run_instances_shape()
    params = {k: v for k, v in node_config.items() if k not in _RAY_ONLY_NODE_CONFIG_KEYS}
    params.update(MinCount=1, MaxCount=1)
    try:
        validate_parameters(params, shape)
    except ParamValidationError as error:
        return [f"node_config: {error}"]
    return []


def cluster_config_problems(raw: dict[str, Any]) -> list[str]:
    """Everything Ray (and EC2's request shape) would reject in a cluster config, offline.

    ``ray up`` runs ``_bootstrap_config``: ``prepare_config`` (merge with aws/defaults.yaml,
    merge setup commands, docker checks, per-type min/max workers), then the AWS provider's
    ``fillout_available_node_types_resources`` (EC2 DescribeInstanceTypes), then
    ``validate_config`` (the JSON schema again + head type + min_workers sum), then the
    provider's ``bootstrap_config`` (IAM, key pair, subnets, security group). The two provider
    steps call AWS; the other two are pure, and both are run here, after
    ``jsonschema.validate`` against ray-schema.json on the raw file.

    On top of Ray: the schema lets any key through under ``provider`` (it is shared by all
    clouds), so those keys are checked against the schema's list of provider properties, and
    ``node_config`` is checked against the EC2 request shape.
    """
    schema = _ray_schema()
    try:
        jsonschema.validate(raw, schema)
    except jsonschema.ValidationError as error:
        return [f"ray-schema.json: {error.message} (at {list(error.absolute_path)})"]
    problems: list[str] = []
    try:
        validate_config(prepare_config(copy.deepcopy(raw)))
    except Exception as error:  # Ray raises ValueError, KeyError or AssertionError
        problems.append(f"ray validate_config: {type(error).__name__}: {error}")
    known_provider_keys = set(schema["properties"]["provider"]["properties"])
    problems.extend(
        f"provider.{key}: not a key of ray-schema.json"
        for key in raw.get("provider", {})
        if key not in known_provider_keys
    )
    for name, node_type in raw.get("available_node_types", {}).items():
        problems.extend(f"{name}.{p}" for p in node_config_problems(node_type["node_config"]))
    return problems


def test_ray_schema_catches_unknown_top_level_keys() -> None:
    """The premise of the typo tests (RAY-NOTES): Ray's schema is closed at the top."""
    assert _ray_schema()["additionalProperties"] is False


def test_cluster_yaml_is_valid_for_ray_up() -> None:
    """cluster.yaml passes Ray's schema and Ray's own validation, and the extra checks."""
    raw = load_cluster_config()
    jsonschema.validate(raw, _ray_schema())  # Ray's own schema...
    prepared = prepare_config(copy.deepcopy(raw))  # ...and Ray's own validation
    validate_config(prepared)
    assert cluster_config_problems(raw) == []

    provider = raw["provider"]
    assert provider["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", provider["region"])
    assert isinstance(provider["cache_stopped_nodes"], bool)
    assert raw["cluster_name"]
    assert raw["idle_timeout_minutes"] > 0
    head_type = raw["head_node_type"]
    assert head_type in raw["available_node_types"]
    assert prepared["available_node_types"][head_type]["max_workers"] == 0


def test_head_runs_no_tasks_and_workers_autoscale_on_spot() -> None:
    """No task CPUs on the head; workers autoscale within bounds, spot allowed."""
    raw = load_cluster_config()
    node_types = raw["available_node_types"]
    head_type = raw["head_node_type"]
    assert node_types[head_type]["resources"] == {"CPU": 0}

    workers = {name: spec for name, spec in node_types.items() if name != head_type}
    assert workers, "no worker node type"
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= raw["max_workers"], name
        assert spec["max_workers"] >= 1, name
    assert any(
        spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for spec in workers.values()
    ), "no worker type may use spot instances"


def test_every_node_has_an_instance_profile() -> None:
    """Every node type runs with a cur-ray instance profile (deploy/iam/)."""
    for name, spec in load_cluster_config()["available_node_types"].items():
        arn = spec["node_config"]["IamInstanceProfile"]["Arn"]
        profile = r"arn:aws:iam::(\d{12}|<[A-Z_]+>):instance-profile/cur-ray-\w+"
        assert re.fullmatch(profile, arn), name


def _commands(config: dict[str, Any], key: str) -> list[str]:
    """The command list ``key`` of a cluster config."""
    commands = config[key]
    assert isinstance(commands, list), key
    return [str(command) for command in commands]


def test_setup_commands_are_explicit_and_pinned() -> None:
    """No Ray default command leaks in; Ray and cur_ray are installed at pinned versions."""
    raw = load_cluster_config()
    # Every command list of Ray's AWS defaults is set here, so none of the defaults (a nightly
    # Ray wheel, an unpinned boto3) can leak in through prepare_config.
    defaults = _load_yaml(RAY_SCHEMA_PATH.parent / "aws" / "defaults.yaml")
    assert {key for key in defaults if key.endswith("_commands")} <= set(raw)
    prepared = prepare_config(copy.deepcopy(raw))
    every_command = "\n".join(
        command
        for key in prepared
        if key.endswith("_commands")
        for command in _commands(prepared, key)
    )
    for forbidden in ("ray-wheels", "nightly", "dev0", "latest/"):
        assert forbidden not in every_command

    setup = "\n".join(_commands(raw, "setup_commands"))
    assert f'"ray[default,serve]=={pinned_ray_version()}"' in setup
    version = re.escape(package_version())
    assert re.search(
        rf'"cur_ray @ \S+/cur_ray-{version}-py3-none-any\.whl#sha256=\S+"|cur_ray=={version}',
        setup,
    ), "cur_ray is not installed at the version of pyproject.toml"
    assert "-c ~/cur-ray/requirements.lock" in setup
    # `cur-ray …` on a node (ray exec, head setup) joins the node's cluster, with the token.
    for line in ("export RAY_ADDRESS=auto", "export RAY_AUTH_MODE=token"):
        assert f"'{line}'" in setup
    # The head migrates the database after the common setup (prepare_config merges them).
    assert "cur-ray db upgrade" in _commands(raw, "head_setup_commands")
    assert prepared["head_setup_commands"][-1] == "cur-ray db upgrade"


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_with_metrics_port_and_token_auth(key: str) -> None:
    """``ray start`` exports metrics on 8080 and runs with token auth."""
    starts = [c for c in _commands(load_cluster_config(), key) if "ray start" in c]
    assert len(starts) == 1, starts
    assert "--metrics-export-port=8080" in starts[0]
    assert "RAY_AUTH_MODE=token" in starts[0]


def test_cluster_yaml_holds_no_secrets() -> None:
    """Secrets come from Secrets Manager at setup time, never from the file."""
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    assert not re.search(r"://[^\s/@<>]+:[^\s/@<>]+@", text), "credentials in a URL"
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "CUR_SECRETS_KEY=", "auth_token:"):
        assert name not in text
    raw = load_cluster_config()
    setup = "\n".join(_commands(raw, "setup_commands"))
    # Settings and the Ray token come from Secrets Manager, in the cluster's region.
    assert "SecretId='cur-ray/prod/env'" in setup
    assert "SecretId='cur-ray/prod/ray-auth-token'" in setup
    assert "> ~/.ray/auth_token" in setup
    regions = set(re.findall(r"region_name='([^']+)'", setup))
    assert regions == {raw["provider"]["region"]}


def test_file_mounts_exist_in_the_repository() -> None:
    """Every local file mount exists (``ray up`` runs from the repository root)."""
    for remote, local in load_cluster_config()["file_mounts"].items():
        assert (ROOT / local).is_file(), f"{remote}: {local} is missing"


def _rename(path: tuple[str, ...], new_key: str) -> Mutation:
    """A mutation renaming the key at ``path`` to ``new_key`` (a typo)."""

    def mutate(config: dict[str, Any]) -> None:
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        parent[new_key] = parent.pop(path[-1])

    return mutate


def _set(path: tuple[str, ...], value: Any) -> Mutation:
    """A mutation setting the value at ``path``."""

    def mutate(config: dict[str, Any]) -> None:
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value

    return mutate


_WORKER = ("available_node_types", "ray.worker.spot")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(_rename(("max_workers",), "max_worker"), "'max_worker'", id="max_worker"),
        pytest.param(
            _rename(("head_node_type",), "head_node_typ"), "'head_node_typ'", id="head_node_typ"
        ),
        pytest.param(
            _rename(("idle_timeout_minutes",), "idle_timeout_minute"),
            "'idle_timeout_minute'",
            id="idle_timeout_minute",
        ),
        pytest.param(
            _rename((*_WORKER, "min_workers"), "min_worker"), "'min_worker'", id="min_worker"
        ),
        pytest.param(
            _rename((*_WORKER, "node_config"), "node_conifg"), "node_con", id="node_conifg"
        ),
        pytest.param(
            _rename(("available_node_types",), "available_node_type"),
            "'available_node_type'",
            id="available_node_type",
        ),
        pytest.param(
            _set(("head_node_type",), "ray.head.defualt"),
            "head_node_type",
            id="head_node_type-not-a-node-type",
        ),
        pytest.param(
            _rename(("provider", "cache_stopped_nodes"), "cache_stoped_nodes"),
            "provider.cache_stoped_nodes",
            id="provider-key",
        ),
        pytest.param(
            _rename((*_WORKER, "node_config", "InstanceType"), "InstanceTyp"),
            '"InstanceTyp"',
            id="node_config-key",
        ),
        pytest.param(
            _rename((*_WORKER, "node_config", "InstanceMarketOptions", "MarketType"), "MarketTyp"),
            '"MarketTyp"',
            id="nested-node_config-key",
        ),
        pytest.param(
            _set((*_WORKER, "min_workers"), 11), "min_workers", id="min_workers-over-max_workers"
        ),
    ],
)
def test_a_typo_in_cluster_yaml_fails_validation(mutate: Mutation, expected: str) -> None:
    """A misspelled or inconsistent key fails, naming the culprit."""
    raw = copy.deepcopy(load_cluster_config())
    mutate(raw)
    problems = cluster_config_problems(raw)
    assert problems, "the broken config passed validation"
    assert expected in "\n".join(problems)


# =============================================================================================
# deploy/kuberay


def load_rayservice() -> dict[str, Any]:
    """deploy/kuberay/rayservice.yaml."""
    return _load_yaml(KUBERAY / "rayservice.yaml")


def _cluster_spec() -> dict[str, Any]:
    """The RayService's rayClusterConfig."""
    spec = load_rayservice()["spec"]["rayClusterConfig"]
    assert isinstance(spec, dict)
    return spec


def _ray_containers(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) for the Ray container of the head and of every worker group."""
    yield "head", cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def _secret_ref(entry: dict[str, Any]) -> dict[str, Any]:
    """The secretKeyRef of an env entry, which must not also carry a literal value."""
    ref = entry.get("valueFrom", {}).get("secretKeyRef")
    assert isinstance(ref, dict), f"{entry['name']} is not a secretKeyRef"
    assert "value" not in entry, f"{entry['name']} has a literal value"
    return ref


def test_rayservice_is_a_ray_io_v1_rayservice() -> None:
    """The manifest is a ray.io/v1 RayService upgraded blue/green."""
    service = load_rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    assert service["kind"] == "RayService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def test_serve_config_v2_is_serve_config_yaml() -> None:
    """serveConfigV2 is serve_config.yaml, top-level keys included."""
    # The operator PUTs serveConfigV2 to the dashboard's /api/serve/applications/, the same
    # endpoint and schema `serve deploy serve_config.yaml` uses, so the whole document is
    # shared: applications and the top-level proxy_location / http_options / logging_config
    # (port 8000 is also the port of KubeRay's serve Service). Comments may differ; the parsed
    # structures may not.
    serve_config_v2 = yaml.safe_load(load_rayservice()["spec"]["serveConfigV2"])
    assert serve_config_v2 == load_serve_config()


def test_serve_config_v2_is_valid_for_serve() -> None:
    """serveConfigV2 passes Ray's Serve schema with no unknown key and no local code."""
    serve_config_v2 = yaml.safe_load(load_rayservice()["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config_v2)
    assert [app.import_path for app in schema.applications] == ["cur_ray.entrypoints.serve_app:app"]
    assert unknown_keys(ServeDeploySchema, serve_config_v2) == []
    for app in serve_config_v2["applications"]:
        working_dir = (app.get("runtime_env") or {}).get("working_dir")
        assert working_dir is None or "://" in working_dir


def test_rayservice_cluster_autoscales_with_pinned_ray() -> None:
    """Pinned Ray, in-tree autoscaling, a head without CPUs, bounded worker groups."""
    cluster = _cluster_spec()
    assert cluster["rayVersion"] == pinned_ray_version()
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        low, high = group["minReplicas"], group["maxReplicas"]
        assert isinstance(low, int), group["groupName"]
        assert isinstance(high, int), group["groupName"]
        assert 0 <= low <= high, group["groupName"]
        assert high >= 1, group["groupName"]
        assert low <= group.get("replicas", low) <= high, group["groupName"]
    # rayStartParams is a map[string]string in the CRD: numbers must be quoted.
    for params in [
        head["rayStartParams"],
        *(g["rayStartParams"] for g in cluster["workerGroupSpecs"]),
    ]:
        assert all(isinstance(value, str) for value in params.values()), params


def test_every_ray_node_exports_metrics_on_8080() -> None:
    """Head and workers export Ray metrics on port 8080."""
    cluster = _cluster_spec()
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    for where, container in _ray_containers(cluster):
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports.get("metrics") == 8080, where


def test_gcs_fault_tolerance_with_redis_password_from_a_secret() -> None:
    """GCS fault tolerance is on, with the Redis password from a Secret."""
    service = load_rayservice()
    cluster = _cluster_spec()
    annotations = service["metadata"].get("annotations") or {}
    options = cluster.get("gcsFaultToleranceOptions")
    assert options or annotations.get("ray.io/ft-enabled") == "true", "GCS FT is off"
    if options:
        # KubeRay's validation rejects these together with gcsFaultToleranceOptions.
        assert "ray.io/ft-enabled" not in annotations
        head_env = _env(next(_ray_containers(cluster))[1])
        assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME"} & set(head_env)
        assert re.fullmatch(r"(redis://)?[a-z0-9.-]+:\d+", options["redisAddress"])
        password = options["redisPassword"]
        assert "value" not in password, "a literal Redis password"
        ref = password["valueFrom"]["secretKeyRef"]
        assert ref["name"]
        assert ref["key"]


def test_token_auth_on_every_ray_container() -> None:
    """RAY_AUTH_MODE=token and the token from the auth Secret on head and workers."""
    cluster = _cluster_spec()
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    for where, container in _ray_containers(cluster):
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        ref = _secret_ref(env["RAY_AUTH_TOKEN"])
        assert (ref["name"], ref["key"]) == (auth["secretName"], "auth_token"), where


def test_settings_come_from_secrets_and_are_the_same_on_every_node() -> None:
    """DATABASE_URL / CUR_SECRETS_KEY from a Secret; one environment for all nodes."""
    cluster = _cluster_spec()
    envs = {where: _env(container) for where, container in _ray_containers(cluster)}
    secret_name = re.compile(r"TOKEN|SECRET|PASSWORD|DATABASE_URL|_KEY$")
    for where, env in envs.items():
        for name in ("DATABASE_URL", "CUR_SECRETS_KEY"):
            assert _secret_ref(env[name])["key"] == name, where
        for name, entry in env.items():
            assert not (secret_name.search(name) and "value" in entry), f"{where}: {name}"
    head_env = envs.pop("head")
    for where, env in envs.items():
        assert env == head_env, f"{where} and head see different settings"


def _image(container: dict[str, Any]) -> str:
    """A container's image reference."""
    image = container["image"]
    assert isinstance(image, str)
    return image


def test_one_image_with_the_package_baked_in() -> None:
    """One cur_ray image (tagged with the package version) for all pods."""
    cluster = _cluster_spec()
    images = {_image(container) for _, container in _ray_containers(cluster)}
    job = _load_yaml(KUBERAY / "scheduler-job.yaml")
    images.add(_image(job["spec"]["template"]["spec"]["containers"][0]))
    assert len(images) == 1, images
    image = images.pop()
    # Serve cannot load local code: the image is cur_ray's own, tagged with its version.
    assert not image.startswith(("rayproject/", "docker.io/rayproject/"))
    assert image.rsplit(":", 1)[1] == package_version()


def test_scheduler_job_starts_the_scheduler_on_the_rayservice_cluster() -> None:
    """The Job submits ``cur-ray scheduler`` to the RayService's head, with the token."""
    job = _load_yaml(KUBERAY / "scheduler-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    command = container["command"]
    assert command[-2:] == ["cur-ray", "scheduler"]
    env = _env(container)
    service_name = load_rayservice()["metadata"]["name"]
    assert env["RAY_ADDRESS"]["value"] == f"http://{service_name}-head-svc:8265"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = _secret_ref(env["RAY_AUTH_TOKEN"])
    assert (ref["name"], ref["key"]) == (_cluster_spec()["authOptions"]["secretName"], "auth_token")


# =============================================================================================
# deploy/iam

BUCKET, PREFIX = "<CUR_BUCKET>", "<CUR_PREFIX>"


def load_policy(name: str) -> dict[str, Any]:
    """One policy document of deploy/iam/."""
    policy = json.loads((IAM / name).read_text(encoding="utf-8"))
    assert isinstance(policy, dict)
    return policy


def _as_list(value: Any) -> list[Any]:
    """IAM's 'one or a list' values as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _allow_statements(policy: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, statement) for each Allow statement (Deny statements only restrict)."""
    for index, statement in enumerate(_as_list(policy.get("Statement"))):
        if statement.get("Effect") == "Allow":  # Deny statements only ever restrict
            yield statement.get("Sid", f"Statement[{index}]"), statement


def _common_problems(where: str, statement: dict[str, Any]) -> list[str]:
    """Forms that allow more than they name: NotAction / NotResource / NotPrincipal, wildcards."""
    problems = [
        f"{where}: {key}"
        for key in ("NotAction", "NotResource", "NotPrincipal")
        if key in statement
    ]
    problems.extend(
        f"{where}: wildcard action {action!r}"
        for action in _as_list(statement.get("Action"))
        if "*" in action or "?" in action
    )
    problems.extend(
        f"{where}: resource '*'" for r in _as_list(statement.get("Resource")) if r == "*"
    )
    return problems


def _actions(statement: dict[str, Any]) -> set[str]:
    """The statement's actions, lower-cased (IAM compares them case-insensitively)."""
    return {str(action).lower() for action in _as_list(statement.get("Action"))}  # IAM: any case


def customer_policy_problems(policy: dict[str, Any], bucket: str, prefix: str) -> list[str]:
    """Why ``policy`` grants more (or other) than listing ``prefix`` and reading ``prefix/*``."""
    bucket_arn = f"arn:aws:s3:::{bucket}"
    objects_arn = f"arn:aws:s3:::{bucket}/{prefix}/*"
    problems: list[str] = []
    granted: set[str] = set()
    for where, statement in _allow_statements(policy):
        problems.extend(_common_problems(where, statement))
        actions = _actions(statement)
        granted |= actions
        resources = _as_list(statement.get("Resource"))
        problems.extend(
            f"{where}: action {action!r} is not allowed"
            for action in sorted(actions - {"s3:listbucket", "s3:getobject"})
        )
        if actions >= {"s3:listbucket", "s3:getobject"}:
            problems.append(f"{where}: ListBucket and GetObject share resources")
        elif "s3:listbucket" in actions:
            if resources != [bucket_arn]:
                problems.append(f"{where}: ListBucket on {resources}, not {bucket_arn}")
            conditions = statement.get("Condition", {})
            prefixes = [
                value
                for operator in ("StringLike", "StringEquals")
                for value in _as_list(conditions.get(operator, {}).get("s3:prefix"))
            ]
            if not prefixes:
                problems.append(f"{where}: ListBucket without an s3:prefix condition")
            problems.extend(
                f"{where}: s3:prefix {value!r} is outside {prefix}/"
                for value in prefixes
                if not str(value).startswith(f"{prefix}/")
            )
        elif "s3:getobject" in actions and resources != [objects_arn]:
            problems.append(f"{where}: GetObject on {resources}, not {objects_arn}")
    problems.extend(
        f"{action} is not granted"
        for action in ("s3:listbucket", "s3:getobject")
        if action not in granted
    )
    return problems


def trust_policy_problems(policy: dict[str, Any]) -> list[str]:
    """Why ``policy`` lets someone assume the role without our roles and the ExternalId."""
    problems: list[str] = []
    statements = list(_allow_statements(policy))
    if not statements:
        problems.append("no Allow statement")
    for where, statement in statements:
        problems.extend(_common_problems(where, statement))
        if _actions(statement) != {"sts:assumerole"}:
            problems.append(f"{where}: actions {sorted(_actions(statement))}, not sts:AssumeRole")
        principal = statement.get("Principal")
        if not isinstance(principal, dict) or set(principal) != {"AWS"}:
            problems.append(f"{where}: principal {principal!r} is not a list of AWS roles")
        else:
            problems.extend(
                f"{where}: principal {arn!r} is not one role"
                for arn in _as_list(principal["AWS"])
                if not re.fullmatch(r"arn:aws:iam::(\d{12}|<[A-Z_]+>):role/[\w+=,.@/-]+", arn)
            )
        external_ids = _as_list(
            statement.get("Condition", {}).get("StringEquals", {}).get("sts:ExternalId")
        )
        if not external_ids or any(not value or "*" in value for value in external_ids):
            problems.append(f"{where}: no StringEquals condition on sts:ExternalId")
    return problems


# The customer role's naming convention (deploy/iam/README.md): cur-ray-reader[-*].
_CUSTOMER_ROLE_ARN = re.compile(r"arn:aws:iam::(\*|\d{12}|<[A-Z_]+>):role/cur-ray-reader(-\*)?")


def cluster_policy_problems(policy: dict[str, Any]) -> list[str]:
    """Why ``policy`` allows more than assuming the customers' cur-ray-reader roles."""
    problems: list[str] = []
    statements = list(_allow_statements(policy))
    if not statements:
        problems.append("no Allow statement")
    for where, statement in statements:
        problems.extend(_common_problems(where, statement))
        if _actions(statement) != {"sts:assumerole"}:
            problems.append(f"{where}: actions {sorted(_actions(statement))}, not sts:AssumeRole")
        resources = _as_list(statement.get("Resource"))
        if not resources:
            problems.append(f"{where}: no Resource")
        problems.extend(
            f"{where}: resource {resource!r} is not a cur-ray-reader role"
            for resource in resources
            if not _CUSTOMER_ROLE_ARN.fullmatch(str(resource))
        )
    return problems


def test_every_policy_document_parses() -> None:
    """Every deploy/iam/*.json is a policy document."""
    names = sorted(path.name for path in IAM.glob("*.json"))
    assert {
        "cluster-policy.json",
        "customer-role-policy.json",
        "customer-role-trust-policy.json",
    } <= set(names)
    for name in names:
        policy = load_policy(name)
        assert policy["Version"] == "2012-10-17", name
        assert _as_list(policy["Statement"]), name


def test_customer_role_policy_is_least_privilege() -> None:
    """The customer role lists the CUR prefix and reads its objects, nothing else."""
    assert customer_policy_problems(load_policy("customer-role-policy.json"), BUCKET, PREFIX) == []


def test_customer_role_policy_filled_in_is_still_least_privilege() -> None:
    """The check is about the shape: it holds with real values and fails for another prefix."""
    # The check is about the shape, not the placeholders: fill them in as the README does.
    text = (IAM / "customer-role-policy.json").read_text(encoding="utf-8")
    filled = json.loads(text.replace(BUCKET, "acme-billing").replace(PREFIX, "cur/acme"))
    assert customer_policy_problems(filled, "acme-billing", "cur/acme") == []
    assert customer_policy_problems(filled, "acme-billing", "cur/other") != []


def test_customer_role_trust_policy_requires_the_external_id() -> None:
    """Only our roles, only with the ExternalId."""
    assert trust_policy_problems(load_policy("customer-role-trust-policy.json")) == []


def test_cluster_policy_only_assumes_customer_roles() -> None:
    """The cluster may only call sts:AssumeRole on cur-ray-reader roles."""
    assert cluster_policy_problems(load_policy("cluster-policy.json")) == []


def _statement(policy: dict[str, Any], index: int) -> dict[str, Any]:
    """Statement ``index`` of a policy."""
    statement = _as_list(policy["Statement"])[index]
    assert isinstance(statement, dict)
    return statement


def _add_action(index: int, action: str) -> Mutation:
    """A mutation adding ``action`` to statement ``index``."""

    def mutate(policy: dict[str, Any]) -> None:
        statement = _statement(policy, index)
        statement["Action"] = [*_as_list(statement["Action"]), action]

    return mutate


def _update(index: int, **changes: Any) -> Mutation:
    """A mutation setting (or, with None, removing) keys of statement ``index``."""

    def mutate(policy: dict[str, Any]) -> None:
        statement = _statement(policy, index)
        for key, value in changes.items():
            if value is None:
                statement.pop(key, None)
            else:
                statement[key] = value

    return mutate


def _append_statement(statement: dict[str, Any]) -> Mutation:
    """A mutation adding a statement."""

    def mutate(policy: dict[str, Any]) -> None:
        policy["Statement"] = [*_as_list(policy["Statement"]), statement]

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_add_action(1, "s3:PutObject"), id="extra-action"),
        pytest.param(_add_action(0, "s3:ListAllMyBuckets"), id="extra-list-action"),
        pytest.param(_update(1, Action="s3:Get*"), id="wildcard-action"),
        pytest.param(_update(1, Action="s3:*"), id="service-wildcard"),
        pytest.param(_update(1, Resource="*"), id="star-resource"),
        pytest.param(_update(1, Resource=f"arn:aws:s3:::{BUCKET}/*"), id="whole-bucket"),
        pytest.param(_update(0, Condition=None), id="no-prefix-condition"),
        pytest.param(_update(0, Condition={"StringLike": {"s3:prefix": ["*"]}}), id="any-prefix"),
        pytest.param(_update(1, Action=None, NotAction="s3:DeleteObject"), id="not-action"),
        pytest.param(
            _append_statement(
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other/*"}
            ),
            id="extra-statement",
        ),
    ],
)
def test_a_broader_customer_policy_fails(mutate: Mutation) -> None:
    """Any broadening of the customer role policy is reported."""
    policy = copy.deepcopy(load_policy("customer-role-policy.json"))
    mutate(policy)
    assert customer_policy_problems(policy, BUCKET, PREFIX) != []


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_update(0, Condition=None), id="no-external-id"),
        pytest.param(
            _update(0, Condition={"StringLike": {"sts:ExternalId": "*"}}), id="any-external-id"
        ),
        pytest.param(_update(0, Principal={"AWS": "*"}), id="anyone"),
        pytest.param(_add_action(0, "sts:TagSession"), id="extra-action"),
    ],
)
def test_a_weaker_trust_policy_fails(mutate: Mutation) -> None:
    """Any weakening of the trust policy is reported."""
    policy = copy.deepcopy(load_policy("customer-role-trust-policy.json"))
    mutate(policy)
    assert trust_policy_problems(policy) != []


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_add_action(0, "s3:GetObject"), id="extra-action"),
        pytest.param(_update(0, Action="sts:*"), id="wildcard-action"),
        pytest.param(_update(0, Resource="*"), id="star-resource"),
        pytest.param(_update(0, Resource="arn:aws:iam::*:role/*"), id="any-role"),
        pytest.param(
            _append_statement(
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}
            ),
            id="extra-statement",
        ),
    ],
)
def test_a_broader_cluster_policy_fails(mutate: Mutation) -> None:
    """Any broadening of the cluster policy (e.g. an extra action) is reported."""
    policy = copy.deepcopy(load_policy("cluster-policy.json"))
    mutate(policy)
    assert cluster_policy_problems(policy) != []


# =============================================================================================
# deploy/grafana

# The metrics cur_ray exports (ray.util.metrics, "ray_" prefixed by Ray) and their labels.
METRICS: dict[str, frozenset[str]] = {
    "ray_cur_ray_jobs_total": frozenset({"name", "outcome"}),
    "ray_cur_ray_job_duration_seconds_bucket": frozenset({"name", "le"}),
    "ray_cur_ray_queue_waiting_jobs": frozenset(),
    "ray_cur_ray_files": frozenset({"status"}),
    "ray_cur_ray_rows_read_total": frozenset(),
    "ray_cur_ray_bytes_read_total": frozenset(),
    "ray_cur_ray_file_processing_seconds_bucket": frozenset({"le"}),
}
# Values of the enumerated labels. A job run's outcome is the job's final status, or
# "retried" when the run ended with the job back in the queue (the coordinator's bookkeeping).
LABEL_VALUES: dict[str, frozenset[str]] = {
    "outcome": frozenset({JobStatus.COMPLETED.value, JobStatus.FAILED.value, "retried"}),
    "status": frozenset(status.value for status in FileStatus),
}
_PROMQL_WORDS = frozenset(
    {
        # aggregations and functions
        "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev",
        "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
        "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "sort", "sort_desc",
        "time", "vector", "scalar", "absent", "label_replace",
        "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
        # keywords
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "and", "or", "unless", "offset",
    }
)  # fmt: skip
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")


def promql_problems(expr: str) -> list[str]:
    """Metric names, labels and label values in ``expr`` that cur_ray does not export."""
    problems: list[str] = []
    metrics_used: set[str] = set()
    for match in _LABEL_VALUES.finditer(expr):  # a Grafana variable query
        metric, label = match[1], match[2]
        if metric not in METRICS:
            problems.append(f"unknown metric {metric!r}")
        elif label not in METRICS[metric]:
            problems.append(f"{metric} has no label {label!r}")
    expr = _LABEL_VALUES.sub(" ", expr)
    for match in _SELECTOR.finditer(expr):
        metric = match[1]
        for label, operator, value in _MATCHER.findall(match[2]):
            if metric in METRICS and label not in METRICS[metric]:
                problems.append(f"{metric} has no label {label!r}")
            if label not in LABEL_VALUES or operator not in ("=", "=~"):
                continue
            if operator == "=~" and not re.fullmatch(r"[\w-]+(\|[\w-]+)*", value):
                continue  # a real regex or a Grafana variable: not checked
            problems.extend(
                f"{label}={v!r} is never exported"
                for v in value.split("|")
                if v not in LABEL_VALUES[label]
            )
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", expr)  # selectors, ranges, variables
    grouped = {label.strip() for g in _GROUPING.findall(bare) for label in g.split(",")}
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?", " ", bare)  # numbers
    for word in re.findall(r"[A-Za-z_:][\w:]*", bare):
        if word in _PROMQL_WORDS:
            continue
        if word in METRICS:
            metrics_used.add(word)
        else:
            problems.append(f"unknown metric {word!r}")
    labels = set().union(*(METRICS[m] for m in metrics_used)) if metrics_used else set()
    problems.extend(f"grouping by unknown label {g!r}" for g in sorted(grouped - labels - {""}))
    return problems


def load_dashboard() -> dict[str, Any]:
    """deploy/grafana/cur_ray_dashboard.json."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a JSON tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    queries = [node["expr"] for node in _walk(dashboard.get("panels", [])) if "expr" in node]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return [str(query) for query in queries]


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_uses_a_prometheus_datasource_variable() -> None:
    """Panels query the Prometheus chosen in the ``datasource`` variable."""
    dashboard = load_dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    """Every query uses only the metric names, labels and label values cur_ray exports."""
    queries = dashboard_queries(load_dashboard())
    assert queries
    problems = {query: promql_problems(query) for query in queries}
    assert {query: found for query, found in problems.items() if found} == {}


def test_dashboard_shows_every_exported_metric() -> None:
    """Every exported metric appears on the dashboard."""
    text = " ".join(dashboard_queries(load_dashboard()))
    missing = [metric for metric in METRICS if not re.search(rf"\b{metric}\b", text)]
    assert missing == []


def test_dashboard_has_the_expected_panels() -> None:
    """The panels SPEC §8 asks for are there."""
    titles = {panel["title"] for panel in _panels(load_dashboard())}
    assert {
        "Job failure rate",
        "Job runs by outcome",
        "Job duration (p50 / p90 / p99)",
        "Queue length (waiting jobs)",
        "Files by status",
        "Rows read",
        "Bytes read",
        "Per-file processing time (p50 / p90 / p99)",
    } <= titles


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(ray_cur_ray_job_total[5m]))", "unknown metric 'ray_cur_ray_job_total'"),
        ("sum(rate(cur_ray_rows_read_total[5m]))", "unknown metric 'cur_ray_rows_read_total'"),
        ('max(ray_cur_ray_files{state="ERROR"})', "has no label 'state'"),
        ('max(ray_cur_ray_files{status="FAILED"})', "status='FAILED' is never exported"),
        (
            'sum(ray_cur_ray_jobs_total{outcome=~"completed|error"})',
            "outcome='error' is never exported",
        ),
        ("max by (project) (ray_cur_ray_files)", "grouping by unknown label 'project'"),
        ("label_values(ray_cur_ray_jobs_total, job)", "has no label 'job'"),
    ],
)
def test_a_query_out_of_sync_with_the_code_is_caught(expr: str, expected: str) -> None:
    """The query check reports unknown metrics, labels and label values."""
    assert any(expected in problem for problem in promql_problems(expr)), promql_problems(expr)
