"""UnlearnCanvas-style prompt sets from local style / object name lists, round-tripped through the I2P CSV."""

from __future__ import annotations

import pytest

from unlearn.data.prompts import PromptRow, canvas_prompt_rows, read_name_list, read_prompt_csv, write_prompt_csv


def test_name_lists_make_style_object_prompts_that_round_trip(tmp_path):
    (tmp_path / "styles.txt").write_text("# UnlearnCanvas styles\nVan_Gogh\n\nMeteor_Shower  # a comment\n")
    (tmp_path / "objects.txt").write_text("Dogs\nSea\n")
    assert read_name_list(tmp_path / "styles.txt") == ["Van_Gogh", "Meteor_Shower"]
    rows = canvas_prompt_rows(tmp_path / "styles.txt", tmp_path / "objects.txt", seeds=[188, 288], guidance=9.0)
    assert len(rows) == 8
    assert rows[0] == PromptRow("A Dogs image in Van Gogh style.", ("Van_Gogh", "Dogs"), 188, 9.0)
    assert rows[3].prompt == "A Sea image in Van Gogh style." and rows[3].evaluation_seed == 288
    assert rows[4].categories == ("Meteor_Shower", "Dogs")
    back = read_prompt_csv(write_prompt_csv(rows, tmp_path / "canvas.csv"))
    assert back == rows
    plain = canvas_prompt_rows(["Pop_Art"], ["Cats"], template="{style} Style")
    assert plain == [PromptRow("Pop Art Style", ("Pop_Art", "Cats"))]
    assert read_prompt_csv(write_prompt_csv(plain, tmp_path / "p.csv")) == plain


def test_bad_name_lists_and_templates_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="name list: no such file"):
        read_name_list(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no names"):
        canvas_prompt_rows(tmp_path / "empty.txt", ["Dogs"])
    with pytest.raises(ValueError, match="template: expected"):
        canvas_prompt_rows(["a"], ["b"], template="a photo")
