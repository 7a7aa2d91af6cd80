"""run_png.py refuses silent misconfigurations before any training: misspelt or mistyped config overrides, runs
that train nothing, unknown splits."""

import pytest

from training.run_checks import check_config_overrides, check_training_length
from training.run_png import run


def run_args(dataset_dir, config_dir, tokenizer_path, output_dir, *extra):
    common = ["--image_size", "64", "--report_to", "none", "--use_cpu", "true"]
    paths = ["--dataset_name", str(dataset_dir), "--config_name", str(config_dir), "--tokenizer_name", tokenizer_path]
    return [*paths, "--output_dir", str(output_dir), *common, "--save_strategy", "no", *extra]


def test_unknown_override_names_the_closest_field():
    with pytest.raises(ValueError, match="'sal_wieght' is not a field of EpngConfig; did you mean 'sal_weight'"):
        check_config_overrides({"sal_wieght": 0})
    with pytest.raises(ValueError, match="'colour' is not a field of EpngConfig$"):
        check_config_overrides({"colour": 1})
    check_config_overrides({"sal_weight": 0, "output_attentions": True, "dropout": 0.2})


@pytest.mark.parametrize(
    "epochs, max_steps, message",
    [(0, -1, "--num_train_epochs must be > 0"), (-3, -1, "got -3"), (3, -2, "--max_steps must be > 0")],
)
def test_runs_that_train_nothing_are_refused(epochs, max_steps, message):
    with pytest.raises(ValueError, match=message):
        check_training_length(epochs, max_steps)


def test_training_length_that_trains():
    check_training_length(0, 5)  # max_steps wins over the epochs
    check_training_length(0.5, -1)


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--config_overrides", "sal_wieght=0"], ValueError, "did you mean 'sal_weight'"),
        (["--config_overrides", "sal_weight=abc"], TypeError, r"EpngConfig.sal_weight must be of type float \| int"),
        (["--num_train_epochs", "-3"], ValueError, "--num_train_epochs must be > 0"),
        (["--num_train_epochs", "0"], ValueError, "--num_train_epochs must be > 0"),
        (["--train_split", "bogus"], ValueError, r"'bogus' is not a split .* \['train', 'validation'\]"),
        (["--eval_split", "test", "--do_eval"], ValueError, r"--eval_split 'test' is not a split"),
    ],
)
def test_main_refuses_before_training(
    synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path, extra, error, message
):
    output_dir = tmp_path / "out"
    with pytest.raises(error, match=message):
        run(run_args(synthetic_dataset_dir, tiny_config_dir, minilm_path, output_dir, "--do_train", *extra))
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "config.json").exists()


def test_overrides_of_a_trained_model_are_checked(tiny_config, minilm_path, tmp_path):
    from modeling_epng import EpngForPanopticNarrativeGrounding
    from training.run_png import DataArguments, ModelArguments, build_model_and_processor

    EpngForPanopticNarrativeGrounding(tiny_config).save_pretrained(tmp_path)
    data_args = DataArguments(dataset_name="unused")
    arguments = ModelArguments(model_name_or_path=str(tmp_path), tokenizer_name=minilm_path)
    arguments.config_overrides = "sal_weight=abc"
    with pytest.raises(TypeError, match="EpngConfig.sal_weight must be of type"):
        build_model_and_processor(arguments, data_args)
    arguments.config_overrides = "sal_weight=-1"
    with pytest.raises(ValueError, match="EpngConfig.sal_weight must be >= 0"):
        build_model_and_processor(arguments, data_args)
    arguments.config_overrides = "sal_weight=0"
    model, _ = build_model_and_processor(arguments, data_args)
    assert model.config.sal_weight == 0
