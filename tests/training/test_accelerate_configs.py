"""The accelerate config files of training/accelerate_configs/: accelerate's own loader and launcher read them into the
process layout they promise (nodes, processes per node, rank, main process address, FSDP wrapping)."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.dataclasses import get_module_class_from_name
from accelerate.utils.launch import prepare_multi_gpu_env

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "accelerate_configs"
# file -> (distributed type, machines, processes in all)
EXPECTED = {
    "ddp_1node_8gpu.yaml": (DistributedType.MULTI_GPU, 1, 8),
    "ddp_2nodes_8gpu.yaml": (DistributedType.MULTI_GPU, 2, 16),
    "fsdp_1node_8gpu.yaml": (DistributedType.FSDP, 1, 8),
}


def launch_args(config_name, *options):
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / config_name), *options, "training/run_png.py", "--output_dir", "out"]
    )
    _validate_launch_command(args)
    return args


def test_every_shipped_config_is_listed():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("config_name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(config_name):
    distributed_type, num_machines, num_processes = EXPECTED[config_name]
    config = load_config_from_file(str(CONFIGS / config_name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_machines, config.num_processes) == (
        distributed_type,
        num_machines,
        num_processes,
    )
    assert config.mixed_precision == "bf16" and not config.use_cpu


def test_two_node_launch_sets_rank_and_rendezvous_from_the_command_line():
    args = launch_args("ddp_2nodes_8gpu.yaml", "--machine_rank", "1", "--main_process_ip", "10.1.2.3")
    prepare_multi_gpu_env(args)
    assert args.multi_gpu and (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert "10.1.2.3" in (getattr(args, "master_addr", None) or args.rdzv_endpoint)


def test_single_node_launch_starts_eight_processes():
    args = launch_args("ddp_1node_8gpu.yaml")
    prepare_multi_gpu_env(args)
    assert args.multi_gpu and args.nproc_per_node == "8" and not hasattr(args, "nnodes")


def test_fsdp_wraps_classes_that_the_model_has():
    args = launch_args("fsdp_1node_8gpu.yaml")
    environment = prepare_multi_gpu_env(args)
    assert args.use_fsdp and environment["FSDP_VERSION"] == "2"
    assert environment["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny())
    for class_name in environment["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
        assert get_module_class_from_name(model, class_name) is not None, class_name
