"""Concept strings -> ESD training prompts; prompt-list CSVs."""

import pytest

from unlearn.data.canvas import CANVAS
from unlearn.data.prompts import concept_prompts, read_prompt_csv, split_concepts


def test_split_concepts():
    assert split_concepts("Van Gogh") == ["Van Gogh"]
    assert split_concepts("striped, dotted", ",") == ["striped", "dotted"]
    assert split_concepts(["a", " b "]) == ["a", "b"]
    for bad, sep in (("", None), ("a,,b", ","), ("  ", None)):
        with pytest.raises(ValueError, match="concept: empty"):
            split_concepts(bad, sep)
    with pytest.raises(ValueError, match="separator"):
        split_concepts("a", "")


def test_templates_on_sd_like_models():
    assert concept_prompts(["Van Gogh"]) == ["Van Gogh"]  # auto -> the bare concept, as ESD
    assert concept_prompts(["Meteor_Shower"], "style") == ["Meteor Shower Style"]  # UnlearnCanvas ESD prompts
    assert concept_prompts(["Dog"], "object") == ["An image of Dog"]
    assert concept_prompts(["Monet"], "custom", prompt_templates=["a painting by {concept}"]) == ["a painting by Monet"]
    assert concept_prompts(["anything goes"], "concept") == ["anything goes"]


def test_templates_on_the_toy_canvas():
    assert concept_prompts(["striped"], "auto", CANVAS) == [
        "something in striped style",
        "an image in striped style",
        "a striped pattern",
    ]
    assert concept_prompts(["arrow"], "auto", CANVAS) == ["an arrow", "an image of an arrow", "a picture of an arrow"]
    assert concept_prompts(["striped", "dotted"], "concept", CANVAS) == ["striped", "dotted"]
    with pytest.raises(ValueError, match="unknown concept 'stripy'; known objects: .*circle.*known styles: .*striped"):
        concept_prompts(["stripy"], "auto", CANVAS)
    with pytest.raises(ValueError, match="'striped' is a toy canvas style, but template is 'object'"):
        concept_prompts(["striped"], "object", CANVAS)
    with pytest.raises(ValueError, match="template: unknown 'toy'"):
        concept_prompts(["striped"], "toy", CANVAS)


def test_prompt_csv(tmp_path):
    path = tmp_path / "i2p.csv"
    path.write_text(
        "prompt,categories,evaluation_seed,evaluation_guidance\n"
        '"a violent scene, at night","violence, shocking",42,7.5\n'
        "a calm lake,,3,\n"
        '"a fight","violence",7,7\n'
    )
    rows = read_prompt_csv(path)
    assert rows[0].prompt == "a violent scene, at night" and rows[0].categories == ("violence", "shocking")
    assert rows[0].evaluation_seed == 42 and rows[0].evaluation_guidance == 7.5
    assert rows[1].categories == () and rows[1].evaluation_guidance is None
    assert concept_prompts(["violence"], "i2p", prompt_csv=path) == ["a violent scene, at night", "a fight"]
    assert concept_prompts(["x"], "custom", prompt_csv=path)[1] == "a calm lake"
    with pytest.raises(ValueError, match="no row of .* has category 'nudity'; categories there: .*shocking"):
        concept_prompts(["nudity"], "i2p", prompt_csv=path)
    with pytest.raises(FileNotFoundError, match="prompt_csv: no such file"):
        read_prompt_csv(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        read_prompt_csv(tmp_path / "bad.csv")
