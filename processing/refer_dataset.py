"""Convert a refer-format dataset (RefCOCO / RefCOCO+ / RefCOCOg) into a 🤗 dataset folder.

The folder looks like a dataset repository on the Hub: `data/<split>-XXXXX-of-YYYYY.parquet` shards plus a
`README.md` card whose YAML `configs` maps the shards to splits, so `datasets.load_dataset(DIR)` opens it and the
folder can be pushed to the Hub as is. Images and masks are embedded (PNG masks, 1 bit), one row per sentence.

Usage::

    python -m processing.refer_dataset --refer_root data/refer --dataset_name refcoco \
        --images_dir data/coco/train2014 --output_dir data/refcoco_hf [--splits val testA testB]

Rows are written shard by shard as they are read (at most one row group of masks in memory) into a temporary
folder next to the output, which is moved into place only once complete: a failed run leaves no partial output.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData
from PIL import Image

from .output_dirs import check_output_dir, staged_output_dir
from .refer_format import ReferReader

logger = logging.getLogger(__name__)

REFER_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "sentence": datasets.Value("string"),
        "image_id": datasets.Value("int64"),
        "ann_id": datasets.Value("int64"),
        "ref_id": datasets.Value("int64"),
        "sent_id": datasets.Value("int64"),
        "category_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
    }
)
# Rows per parquet row group: few enough that one group of embedded images stays small in memory.
ROWS_PER_ROW_GROUP = 100


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    """Encode a bool mask of shape `(H, W)` as a 1-bit PNG (decodes back with `np.asarray(Image.open(...))`)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _encode_rows(reader: ReferReader, split: str):
    """Yield the encoded rows of `split`; each image file is read once for its consecutive sentences."""
    current_path, current_bytes = None, None
    current_mask, current_mask_png = None, None
    for example in reader.examples(split):
        if example["image"] != current_path:
            current_path, current_bytes = example["image"], Path(example["image"]).read_bytes()
        if example["mask"] is not current_mask:  # the reader shares one mask array per ref
            current_mask, current_mask_png = example["mask"], mask_to_png_bytes(example["mask"])
        row = {key: example[key] for key in REFER_FEATURES if key not in ("image", "mask")}
        row["image"] = {"bytes": current_bytes, "path": example["file_name"]}
        row["mask"] = {"bytes": current_mask_png, "path": None}
        yield REFER_FEATURES.encode_example(row)


def _write_split(reader: ReferReader, split: str, data_dir: Path, rows_per_shard: int) -> SplitInfo:
    """Write `split` as `data/<split>-XXXXX-of-YYYYY.parquet` shards; return its size (rows, Arrow bytes)."""
    num_rows = reader.num_examples(split)
    if num_rows == 0:
        raise ValueError(f"split {split!r} has no refs in {reader.refs_path}")
    num_shards = math.ceil(num_rows / rows_per_shard)
    schema = REFER_FEATURES.arrow_schema  # carries the 🤗 features (Image columns) in its metadata
    rows = _encode_rows(reader, split)
    written, num_bytes = 0, 0
    for shard in range(num_shards):
        path = data_dir / f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            shard_end = min(written + rows_per_shard, num_rows)
            while written < shard_end:
                group = list(itertools.islice(rows, min(ROWS_PER_ROW_GROUP, shard_end - written)))
                table = pa.Table.from_pylist(group, schema=schema)
                writer.write_table(table)
                written, num_bytes = written + table.num_rows, num_bytes + table.nbytes
    return SplitInfo(name=split, num_examples=written, num_bytes=num_bytes)


def _dataset_card(reader: ReferReader, split_infos: list[SplitInfo]) -> str:
    """README.md: YAML with the `configs` that `load_dataset` reads and the `dataset_info`, then a description."""
    card_data = DatasetCardData(
        pretty_name=f"{reader.dataset} ({reader.split_by}) referring expression segmentation",
        language=["en"],
        task_categories=["image-segmentation"],
        tags=["referring-expression-segmentation", reader.dataset],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": info.name, "path": f"data/{info.name}-*.parquet"} for info in split_infos],
            }
        ],
    )
    splits = SplitDict()
    for info in split_infos:
        splits.add(info)
    DatasetInfosDict({"default": DatasetInfo(features=REFER_FEATURES, splits=splits)}).to_dataset_card_data(card_data)
    sizes = "\n".join(f"| {info.name} | {info.num_examples} |" for info in split_infos)
    columns = ", ".join(f"`{name}`" for name in REFER_FEATURES)
    return f"""---
{card_data.to_yaml()}
---

# {reader.dataset} ({reader.split_by} splits) — referring expression segmentation

Converted from the refer format (`{reader.dataset}/refs({reader.split_by}).p` + `instances.json`) with
`python -m processing.refer_dataset` of the EPNG project. One row per referring sentence.

Columns: {columns}.
`mask` is a 1-bit PNG of the referred object at the image's size
(`np.asarray(row["mask"])` is a bool array); `sentence` is the refer toolkit's cleaned sentence.

| split | sentences |
|---|---:|
{sizes}

```python
from datasets import load_dataset

dataset = load_dataset("path/to/this/folder")  # DatasetDict with the splits above
```

The annotations and COCO images keep the terms of their original releases.
"""


def convert_refer_to_hf(
    refer_root: str | Path,
    dataset: str,
    output_dir: str | Path,
    images_dir: str | Path | None = None,
    splits: Sequence[str] | None = None,
    split_by: str | None = None,
    rows_per_shard: int = 1000,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """
    Write a refer dataset as a 🤗 dataset folder (parquet shards + README card).

    Args:
        refer_root (`str` or `Path`): folder with `<dataset>/refs(<split_by>).p` and `<dataset>/instances.json`.
        dataset (`str`): `"refcoco"`, `"refcoco+"` or `"refcocog"`.
        output_dir (`str` or `Path`): folder to create; may not be, contain or lie inside `refer_root` or `images_dir`.
        images_dir (`str` or `Path`, *optional*): COCO 2014 train images; defaults to `refer_root/images/train2014`.
        splits (`Sequence[str]`, *optional*): splits to convert; defaults to the paper's evaluation splits
            (`val`, `testA`, `testB`; RefCOCOg: `val`, `test`).
        split_by (`str`, *optional*): `unc`, `umd` or `google`; defaults to the dataset's usual one.
        rows_per_shard (`int`, defaults to 1000): rows per parquet file.
        overwrite (`bool`, defaults to `False`): replace an existing `output_dir`.
        allow_pickle (`bool`, defaults to `False`): load a refs pickle that names Python globals, which are refused
            by default because unpickling them can run code (see [`~processing.refer_format.load_refs`]).

    Returns:
        `Path`: the output folder.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    output_dir = Path(output_dir)
    sources = (refer_root, images_dir)
    check_output_dir(output_dir, overwrite, sources)
    reader = ReferReader(refer_root, dataset, split_by=split_by, images_dir=images_dir, allow_pickle=allow_pickle)
    splits = reader.check_splits(splits if splits is not None else reader.evaluation_splits)

    with staged_output_dir(output_dir, overwrite, sources) as staging_dir:
        (staging_dir / "data").mkdir()
        split_infos = []
        for split in splits:
            split_infos.append(_write_split(reader, split, staging_dir / "data", rows_per_shard))
            logger.info("%s %s: %d sentences", dataset, split, split_infos[-1].num_examples)
        (staging_dir / "README.md").write_text(_dataset_card(reader, split_infos), encoding="utf-8")
    return output_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--refer_root", required=True, help="folder with <dataset>/refs(<split_by>).p and instances.json"
    )
    parser.add_argument("--dataset_name", required=True, help="refcoco, refcoco+ or refcocog")
    parser.add_argument("--output_dir", required=True, help="dataset folder to create")
    parser.add_argument(
        "--images_dir", default=None, help="COCO 2014 train images (default: REFER_ROOT/images/train2014)"
    )
    parser.add_argument("--splits", nargs="+", default=None, help="splits to convert (default: evaluation splits)")
    parser.add_argument("--split_by", default=None, help="unc, umd or google (default: the dataset's usual one)")
    parser.add_argument("--rows_per_shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="load a refs pickle that names Python globals (runs code from the file: trusted files only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = convert_refer_to_hf(
            args.refer_root,
            args.dataset_name,
            args.output_dir,
            images_dir=args.images_dir,
            splits=args.splits,
            split_by=args.split_by,
            rows_per_shard=args.rows_per_shard,
            overwrite=args.overwrite,
            allow_pickle=args.allow_pickle,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as error:  # wrong arguments or files: no traceback
        parser.error(str(error))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
