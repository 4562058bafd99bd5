"""Configuration: typed schemas composed by Hydra from the YAML groups in ``conf/``; the only source of
settings for every job.

Each dataclass mirrors one Hydra group, in the module of its concern (``data``, ``storage``, ``model``,
``strategy``, ``training``, ``tracking``, ``evaluation``, ``sweep``), and ``job.JobConfig`` holds them all.
Hydra validates keys and types when it composes; ``__post_init__`` checks the invariants that span fields,
and runs when a job turns the composed config into these objects (``OmegaConf.to_object``), so a bad value
fails on the driver before any work starts.

Jobs use :func:`hydra_main`; tests and the pipeline use :func:`compose`. Either way a typo or a bad value
stops on the driver with one line that names the key and the valid choices.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import traceback
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from rsvlm.config.errors import ConfigError
from rsvlm.errors import DEBUG_ENV, JobError, as_job_error
from rsvlm.redaction import has_url_credentials, move_tracking_credentials
from rsvlm.config.job import JobConfig

__all__ = ["ConfigError", "JobConfig", "JobError", "as_config_error", "compose", "conf_dir", "expand_shorthands", "from_dict",
           "hydra_main", "protect_credentials", "report_error", "resolve", "to_dict"]

_SCHEMA_NAME = "rsvlm_job_schema"


def conf_dir() -> Path:
    """The ``conf/`` folder: ``$RSVLM_CONF_DIR``, else the one at the root of this source tree."""
    override = os.environ.get("RSVLM_CONF_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[3] / "conf"


def register_schema() -> None:
    """Put the typed schema in Hydra's ConfigStore; ``conf/config.yaml`` lists it first in its defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=_SCHEMA_NAME, node=JobConfig)


def resolve(cfg: DictConfig) -> JobConfig:
    """Turn a composed config into typed objects, running every ``__post_init__`` check.

    ``workdir`` becomes absolute first: Ray workers run in another cwd, so relative paths would point elsewhere.
    """
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    unknown = sorted(set(cfg.keys()) - {f.name for f in fields(JobConfig)})
    if unknown:
        raise ConfigError(unknown[0], "unknown key", [f.name for f in fields(JobConfig)])
    cfg.workdir = os.path.abspath(os.path.expanduser(cfg.workdir))
    # Before merging: a merge keeps the schema's default where the YAML says ??? (required).
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(", ".join(missing), "required, but no value is set (the YAML leaves it as ???)")
    merged = OmegaConf.merge(OmegaConf.structured(JobConfig), cfg)
    OmegaConf.resolve(merged)
    job: JobConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    # A URI from the environment (MLFLOW_TRACKING_URI) may carry credentials too: they must not reach
    # params, checkpoints (job_config.yaml) or registered models.
    job.tracking.uri = move_tracking_credentials(job.tracking.uri)
    return job


def to_dict(job: JobConfig) -> dict[str, Any]:
    """A plain, JSON-able dict of a typed config (enums as their values): for Ray workers, MLflow and files."""
    return OmegaConf.to_container(OmegaConf.structured(job), enum_to_str=True)  # type: ignore[return-value]


def from_dict(data: Mapping[str, Any], schema: type = JobConfig) -> Any:
    """Inverse of :func:`to_dict` for ``schema`` (a whole job, or one part such as ``StrategyConfig``)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))


def compose(overrides: Optional[list[str]] = None, config_name: str = "config") -> JobConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, outside of a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except Exception as exc:  # noqa: BLE001 - translated to one line, or re-raised untouched
        error = as_config_error(exc)
        if error is None:
            raise
        raise error from exc
    return resolve(cfg)


def expand_shorthands(args: list[str], shorthands: Mapping[str, str], implies: tuple[str, ...] = ()) -> list[str]:
    """Command-line ``key=value`` → ``shorthands[key]=value``; when any shorthand is used, ``implies`` overrides
    (e.g. ``data=custom``) are added unless the command line already picks that group."""
    expanded, used = [], False
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in shorthands:
            expanded.append(f"{shorthands[key]}={value}")
            used = True
        else:
            expanded.append(arg)
    if used:
        picked = {arg.partition("=")[0].lstrip("+~") for arg in args}
        expanded = [o for o in implies if o.partition("=")[0] not in picked] + expanded
    return expanded


def hydra_main(task: Callable[[JobConfig], Any], shorthands: Mapping[str, str] | None = None,
               shorthand_implies: tuple[str, ...] = ()) -> Callable[[], None]:
    """Decorate a job's ``main(cfg: JobConfig)`` as a Hydra app (``-m`` multirun included).

    A failed job prints one line, ``error: <what>: <why> (<what to do>)``, and exits non-zero (2 for a
    configuration mistake, else 1); ``RSVLM_DEBUG=1`` adds the traceback. Hydra's own report of a failed
    job (``Error executing job with overrides: …``) never appears: the task's errors are caught before Hydra
    sees them, and in a multirun the other combinations still run. Credentials in a URL on the command line
    are taken out before Hydra records the overrides (:func:`protect_credentials`). ``shorthands`` lets a
    job accept short keys (``source=…`` for ``data.source=…``), see :func:`expand_shorthands`.
    """
    import hydra

    register_schema()
    config_path = str(conf_dir())
    failures: list[BaseException] = []

    @functools.wraps(task)
    def run_task(cfg: DictConfig) -> Any:
        try:
            job = resolve(cfg)
            job.tracking.tags.update(multirun_tags())
            return task(job)
        except Exception as exc:  # noqa: BLE001 - reported as one line below
            failures.append(exc)
            report_error(exc)
            return None

    app = hydra.main(config_path=config_path, config_name="config", version_base="1.3")(run_task)

    def entry() -> None:
        # Hydra's exceptions come through untouched; report_error turns them into one line.
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        try:
            args = sys.argv[1:]
            if shorthands:
                args = expand_shorthands(args, shorthands, shorthand_implies)
            sys.argv[1:] = protect_credentials(args)
            app()
        except Exception as exc:  # noqa: BLE001
            sys.exit(report_error(exc))
        if failures:
            sys.exit(max(getattr(error, "exit_code", 1) for error in map(_as_job_error, failures)))

    entry.__doc__ = inspect.getdoc(task)
    return entry


def _as_job_error(exc: BaseException) -> JobError:
    return as_config_error(exc) or as_job_error(exc)


def report_error(exc: BaseException) -> int:
    """Print ``error: <one line>`` for ``exc`` on stderr (and its traceback with ``RSVLM_DEBUG=1``); the
    exit code to use."""
    error = _as_job_error(exc)
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr, flush=True)
    return error.exit_code


# Command-line keys whose URL may carry credentials that are moved to MLflow's environment variables.
_TRACKING_URI_KEYS = ("tracking.uri", "+tracking.uri", "++tracking.uri")


def protect_credentials(args: list[str]) -> list[str]:
    """Command-line overrides with no credentials left in them, before Hydra writes them to its output folder.

    ``tracking.uri=http://user:pass@host`` becomes ``tracking.uri=http://host``, the credentials moving to
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (where MLflow reads them; a warning says so).
    Credentials in any other value are refused: no other setting has a place to move them to.
    """
    protected = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and has_url_credentials(value):
            if key not in _TRACKING_URI_KEYS:
                raise JobError(key.lstrip("+~"), "the value holds credentials (user:password@ in a URL), which "
                               "would be written to logs, Hydra's output folder and MLflow",
                               "remove them: S3 keys come from the AWS environment, MLflow's from "
                               "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
            arg = f"{key}={move_tracking_credentials(value)}"
            print("warning: tracking.uri: the credentials in the URI were moved to MLFLOW_TRACKING_USERNAME / "
                  "MLFLOW_TRACKING_PASSWORD for this job; set those variables instead", file=sys.stderr)
        protected.append(arg)
    return protected


def multirun_tags() -> dict[str, str]:
    """MLflow tags that group the jobs of one Hydra multirun (``-m``); empty outside a multirun.

    ``rsvlm.multirun`` is the multirun's id (its sweep folder's name, a time stamp), so the MLflow UI can
    show one multirun's runs side by side: ``tags.`rsvlm.multirun` = '2026-11-26_10-00-00'``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    return {"rsvlm.multirun": Path(hydra_cfg.sweep.dir).name, "rsvlm.multirun.job": str(hydra_cfg.job.num),
            "rsvlm.multirun.overrides": " ".join(hydra_cfg.overrides.task)}


def as_config_error(exc: BaseException) -> Optional[ConfigError]:
    """The configuration mistake behind an exception from Hydra, OmegaConf or a schema check; None otherwise."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    for err in _chain(exc):
        if isinstance(err, ConfigError):
            return err
        if isinstance(err, MissingConfigException):
            missing = str(getattr(err, "missing_cfg_file", "") or "")
            group, _, option = missing.rpartition("/")
            options = getattr(err, "options", None) or _listed_options(str(err))
            if group:
                return ConfigError(f"{group}={option}", "no such option", options)
            return ConfigError(missing or "config", "not found", options)
        if isinstance(err, (ConfigAttributeError, ConfigKeyError)):
            key = getattr(err, "full_key", None) or "config"
            object_type = getattr(err, "object_type", None)
            choices = [f.name for f in fields(object_type)] if object_type and is_dataclass(object_type) else None
            return ConfigError(key, "unknown key", choices)
        if isinstance(err, ValidationError):
            key = getattr(err, "full_key", None) or "config"
            first_line = str(err).splitlines()[0]
            listed = re.search(r"expected one of \[(.*)\]", first_line)
            if listed:
                value = re.search(r"Invalid value '([^']*)'", first_line)
                problem = f"invalid value '{value.group(1)}'" if value else "invalid value"
                return ConfigError(key, problem, [c.strip() for c in listed.group(1).split(",")])
            return ConfigError(key, first_line)
        if isinstance(err, (OmegaConfBaseException, ConfigCompositionException)) and err.__cause__ is None:
            return ConfigError(getattr(err, "full_key", None) or "config", str(err).splitlines()[0])
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _listed_options(message: str) -> list[str]:
    block = message.split("Available options", 1)[-1].split("Config search path", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]
