"""serve_config.yaml is valid for `serve deploy`: Ray's schema, importable apps, no unknown keys.

Ray's pydantic schema ignores unknown keys silently (RAY-NOTES), so a typo such as
``num_replica`` would deploy with the default. The walk below checks every key against the
fields of the schema model it lands in.
"""

from __future__ import annotations

import copy
import importlib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def load_config() -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, List, Dict...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted key of ``model`` (names and aliases) → field name."""
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name] = name
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                names[alias] = name
    return names


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Paths of the keys in ``data`` that are not fields of ``model``, recursively."""
    if not isinstance(data, dict):
        return []
    accepted = _field_names(model)
    problems: list[str] = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in accepted:
            problems.append(where)
            continue
        candidates = _models_in(model.model_fields[accepted[key]].annotation)
        if not candidates:
            continue  # a free-form value (runtime_env, user_config, ...)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            item_path = where if index is None else f"{where}[{index}]"
            # With several candidate models, the value is fine if one of them accepts it all.
            reports = [unknown_keys(candidate, item, item_path) for candidate in candidates]
            problems.extend(min(reports, key=len))
    return problems


def test_config_is_valid_for_serve_deploy() -> None:
    schema = ServeDeploySchema.model_validate(load_config())
    assert [app.name for app in schema.applications] == ["cur_ray"]
    app = schema.applications[0]
    assert app.route_prefix == "/"
    assert app.import_path == "cur_ray.entrypoints.serve_app:app"
    assert [d.name for d in app.deployments] == ["CurRayApi"]
    deployment = app.deployments[0]
    assert deployment.ray_actor_options.num_cpus == 0
    assert schema.http_options.port == 8000


def test_config_has_no_unknown_keys() -> None:
    assert unknown_keys(ServeDeploySchema, load_config()) == []


def _autoscale_with_typo(config: dict[str, Any]) -> None:
    deployment = config["applications"][0]["deployments"][0]
    deployment.pop("num_replicas")
    deployment["autoscaling_config"] = {"min_replicas": 1, "max_replica": 4}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(http_option=c.pop("http_options")), "http_option"),
        (lambda c: c["http_options"].update(hots="127.0.0.1"), "http_options.hots"),
        (
            lambda c: c["applications"][0].update(import_paths="x:y"),
            "applications[0].import_paths",
        ),
        (
            lambda c: c["applications"][0]["deployments"][0].update(
                num_replica=c["applications"][0]["deployments"][0].pop("num_replicas")
            ),
            "applications[0].deployments[0].num_replica",
        ),
        (
            lambda c: c["applications"][0]["deployments"][0]["ray_actor_options"].update(num_cpu=0),
            "applications[0].deployments[0].ray_actor_options.num_cpu",
        ),
        (_autoscale_with_typo, "applications[0].deployments[0].autoscaling_config.max_replica"),
    ],
)
def test_a_misspelled_key_is_caught(mutate: Any, expected: str) -> None:
    config = copy.deepcopy(load_config())
    mutate(config)
    ServeDeploySchema.model_validate(config)  # Ray's own schema lets the typo through...
    assert unknown_keys(ServeDeploySchema, config) == [expected]  # ...this walk does not


def test_every_import_path_imports_a_serve_application() -> None:
    from ray.serve import Application

    for app in load_config()["applications"]:
        module_name, _, attribute = app["import_path"].partition(":")
        module = importlib.import_module(module_name)
        assert isinstance(module, types.ModuleType)
        target = getattr(module, attribute)
        assert isinstance(target, Application), app["import_path"]
        names = {d["name"] for d in app.get("deployments", [])}
        assert names <= {module.CurRayApi.name}, "config names a deployment the app lacks"


def test_no_local_working_dir() -> None:
    # RAY-NOTES: serve_config.yaml cannot point at local code; working_dir must be a URI.
    for app in load_config()["applications"]:
        working_dir = (app.get("runtime_env") or {}).get("working_dir")
        assert working_dir is None or "://" in working_dir
