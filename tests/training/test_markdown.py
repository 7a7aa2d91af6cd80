"""The one Markdown table writer."""

import pytest

from training.markdown import markdown_table


def test_columns_are_padded_and_aligned():
    table = markdown_table(["Model", "AR"], [["a", "5.0"], ["longer", "75.5"]], right_aligned=[False, True])
    assert table.splitlines() == [
        "| Model  |   AR |",
        "|--------|-----:|",
        "| a      |  5.0 |",
        "| longer | 75.5 |",
    ]


def test_left_aligned_by_default():
    assert markdown_table(["Key", "Value"], [["seed", "1"]]).splitlines()[1] == "|------|-------|"


def test_a_row_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1", "2"], ["3"]])
