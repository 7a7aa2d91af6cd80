"""Web-app examples read from a PNG-format benchmark and copied into an `examples.json` folder."""

from pathlib import Path

from PIL import Image

from processing.examples import load_examples, write_examples
from processing.synthetic import generate


def test_examples_from_the_synthetic_benchmark_and_their_copy(tmp_path):
    root = generate(tmp_path / "synthetic", num_train=1, num_val=3, seed=0)
    examples = load_examples(root, limit=2)
    assert len(examples) == 2
    for example in examples:
        assert Image.open(example.image).size[0] > 0
        assert example.phrases and all(phrase in example.narrative for phrase in example.phrases)
    written = write_examples(examples, tmp_path / "space_examples")
    # two narratives of one image share its copy
    assert written == sorted({f"images/{Path(e.image).name}" for e in examples}) + ["examples.json"]
    assert [(e.narrative, e.phrases) for e in load_examples(tmp_path / "space_examples")] == [
        (e.narrative, e.phrases) for e in examples
    ]
    assert load_examples(tmp_path / "nowhere") == []
