"""The training toolkit's view of a script-mode job, reproduced for the user's script.

How SageMaker's ``sagemaker-training`` toolkit turns a job into a script's inputs:
hyperparameters JSON-decoded (``read_hyperparameters``) and split into the script's own
and the SDK's ``sagemaker_*`` ones, the script's ones as ``--name value`` arguments
(``mapping.to_cmd_args``), and the whole environment as ``SM_*`` variables
(``Environment.to_env_vars``, ``mapping.to_env_vars``). Facts from the toolkit; the code
is ours. ``script.py`` runs the script with them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from typing import Any

from modelapp.training.environment import TrainingEnvironment, read_json_object

PROGRAM = "sagemaker_program"
SUBMIT_DIRECTORY = "sagemaker_submit_directory"
LOG_LEVEL = "sagemaker_container_log_level"
JOB_NAME = "sagemaker_job_name"
REGION = "sagemaker_region"
SAGEMAKER_PREFIX = "sagemaker_"
# Never passed to the script; the other sagemaker_* keys are its "framework parameters".
TOOLKIT_KEYS = (
    PROGRAM,
    SUBMIT_DIRECTORY,
    "sagemaker_enable_cloudwatch_metrics",
    REGION,
    LOG_LEVEL,
    JOB_NAME,
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)
DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)
DEFAULT_GROUP = "homogeneousCluster"
# SageMaker kills the container 120 s after SIGTERM; the script gets most of that.


# --- hyperparameters, as the toolkit reads and formats them ------------------------------------
def decode_hyperparameters(raw: dict[str, Any]) -> dict[str, Any]:
    """Each value JSON-decoded, else kept as given (the toolkit's ``read_hyperparameters``)."""
    decoded = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            decoded[key] = value
    return decoded


def split_hyperparameters(
    decoded: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the script's hyperparameters, the SDK's ``sagemaker_*`` ones)."""
    sagemaker = {
        k: v
        for k, v in decoded.items()
        if k in TOOLKIT_KEYS or k.startswith(SAGEMAKER_PREFIX)
    }
    user = {k: v for k, v in decoded.items() if k not in sagemaker}
    return user, sagemaker


def to_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    """``--name value`` pairs, sorted by name, exactly as the toolkit formats them: a
    one-letter name gets one dash, values are ``str()`` of the decoded JSON (``True``,
    ``[1, 2]``), a mapping becomes ``k=v,k=v`` and ``None`` an empty string."""
    args = []
    for key in sorted(hyperparameters):
        name = str(key)
        args.append(f"-{name}" if len(name) == 1 else f"--{name}")
        value = hyperparameters[key]
        if hasattr(value, "items"):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append(text(value))
    return args


def env_value(value: Any) -> str:
    """An ``SM_*`` value: strings as they are, ``None`` empty, the rest compact JSON."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    return str(value)


# --- the environment the script sees -----------------------------------------------------------
def training_environment(
    env: TrainingEnvironment,
    decoded: dict[str, Any],
    *,
    program: str,
    module_dir: str,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
) -> dict[str, Any]:
    """The toolkit's ``Environment`` as a dict (``SM_TRAINING_ENV``)."""
    paths = env.paths
    user, sagemaker = split_hyperparameters(decoded)
    resource = read_json_object(paths.resourceconfig_file, default={})
    resource.setdefault("current_host", env.current_host)
    resource.setdefault("hosts", list(env.hosts))
    input_data = read_json_object(paths.inputdataconfig_file, default={})
    if not paths.inputdataconfig_file.exists():
        input_data = {
            name: {"TrainingInputMode": channel.input_mode}
            for name, channel in env.channels.items()
        }
    channel_dirs = {
        name: str(
            env.channels[name].override
            if name in env.channels and env.channels[name].override
            else paths.channel_dir(name)
        )
        for name in sorted(set(input_data) | set(env.channels))
    }
    framework = {k: v for k, v in sagemaker.items() if k not in TOOLKIT_KEYS}
    hosts = list(resource["hosts"])
    current_host = str(resource["current_host"])
    group = resource.get("current_group_name", DEFAULT_GROUP)
    groups = resource.get("instance_groups") or []
    distributed = [group] if any(framework.get(f) for f in DISTRIBUTION_FLAGS) else []
    distribution_groups = framework.get(
        "sagemaker_distribution_instance_groups", distributed
    )
    if groups:
        distribution_hosts = [
            h
            for g in groups
            if g.get("instance_group_name") in distribution_groups
            for h in g.get("hosts", [])
        ]
    else:
        distribution_hosts = list(hosts)
    master = (distribution_hosts or hosts or [current_host])[0]
    return {
        "additional_framework_parameters": framework,
        "channel_input_dirs": channel_dirs,
        "current_host": current_host,
        "current_instance_group": group,
        "current_instance_group_hosts": next(
            (
                g.get("hosts", [])
                for g in groups
                if g.get("instance_group_name") == group
            ),
            [],
        ),
        "current_instance_type": resource.get("current_instance_type", "local"),
        "distribution_hosts": distribution_hosts,
        "distribution_instance_groups": distribution_groups,
        "framework_module": None,
        "hosts": hosts,
        "hyperparameters": user,
        "input_config_dir": str(paths.config_dir),
        "input_data_config": input_data,
        "input_dir": str(paths.input_dir),
        "instance_groups": [g.get("instance_group_name") for g in groups],
        "instance_groups_dict": {g.get("instance_group_name"): g for g in groups},
        "is_hetero": len(groups) > 1,
        "is_master": current_host == master,
        "is_modelparallel_enabled": False,
        "is_smddpmprun_installed": False,
        "is_smddprun_installed": False,
        "job_name": env.job_name,
        "log_level": sagemaker.get(LOG_LEVEL, logging.INFO),
        "master_hostname": master,
        "model_dir": str(paths.model_dir),
        "module_dir": module_dir,
        "module_name": program[:-3] if program.endswith(".py") else program,
        "network_interface_name": resource.get("network_interface_name", "eth0"),
        "num_cpus": num_cpus if num_cpus is not None else (os.cpu_count() or 1),
        "num_gpus": num_gpus if num_gpus is not None else count_gpus(),
        "num_neurons": 0,
        "output_data_dir": str(paths.output_data_dir),
        "output_dir": str(paths.output_dir),
        "output_intermediate_dir": str(paths.output_intermediate_dir),
        "resource_config": resource,
        "topology": resource.get("topology", []),
        "user_entry_point": program,
    }


def sm_variables(training_env: dict[str, Any]) -> dict[str, str]:
    """Every ``SM_*`` variable of the toolkit's ``Environment.to_env_vars``."""
    t = training_env
    values: dict[str, Any] = {
        "hosts": t["hosts"],
        "network_interface_name": t["network_interface_name"],
        "hps": t["hyperparameters"],
        "user_entry_point": t["user_entry_point"],
        "framework_params": t["additional_framework_parameters"],
        "resource_config": t["resource_config"],
        "input_data_config": t["input_data_config"],
        "output_data_dir": t["output_data_dir"],
        "channels": sorted(t["channel_input_dirs"]),
        "current_host": t["current_host"],
        "current_instance_type": t["current_instance_type"],
        "current_instance_group": t["current_instance_group"],
        "current_instance_group_hosts": t["current_instance_group_hosts"],
        "instance_groups": t["instance_groups"],
        "instance_groups_dict": t["instance_groups_dict"],
        "distribution_instance_groups": t["distribution_instance_groups"],
        "is_hetero": t["is_hetero"],
        "module_name": t["module_name"],
        "log_level": t["log_level"],
        "framework_module": t["framework_module"],
        "input_dir": t["input_dir"],
        "input_config_dir": t["input_config_dir"],
        "output_dir": t["output_dir"],
        "num_cpus": t["num_cpus"],
        "num_gpus": t["num_gpus"],
        "num_neurons": t["num_neurons"],
        "model_dir": t["model_dir"],
        "module_dir": t["module_dir"],
        "training_env": t,
        "user_args": to_cmd_args(t["hyperparameters"]),
        "output_intermediate_dir": t["output_intermediate_dir"],
    }
    if t["topology"]:
        values["topology"] = t["topology"]
    for name, path in t["channel_input_dirs"].items():
        values[f"channel_{name}"] = path
    for key, value in t["hyperparameters"].items():
        values[f"hp_{key}"] = value
    return {f"SM_{str(k).upper()}": env_value(v) for k, v in values.items()}


def count_gpus() -> int:
    """GPUs ``nvidia-smi --list-gpus`` lists; 0 without it (the toolkit's rule)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        output = subprocess.run(
            ["nvidia-smi", "--list-gpus"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in output.splitlines() if line.startswith("GPU "))
