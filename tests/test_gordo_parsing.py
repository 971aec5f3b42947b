"""Reading Gordo's metadata: resolutions in old and new spellings, tags, offsets, bad answers."""

from datetime import timedelta

import pytest

from latigo.errors import PermanentError
from latigo.providers.models.gordo import parse_metadata, parse_resolution


@pytest.mark.parametrize(
    "text, expected",
    [("10T", timedelta(minutes=10)), ("10min", timedelta(minutes=10)), ("1H", timedelta(hours=1)),
     ("30S", timedelta(seconds=30)), ("H", timedelta(hours=1)), ("2h", timedelta(hours=2))],
)
def test_resolutions(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["", "ten minutes", "10Q", "-5T"])
def test_bad_resolutions_are_permanent_errors(text):
    with pytest.raises(PermanentError, match="resolution"):
        parse_resolution(text)


def document(**dataset):
    return {
        "metadata": {
            "dataset": {"tag_list": ["A", {"name": "B", "asset": "x"}], "resolution": "10T", **dataset},
            "metadata": {"build_metadata": {"model": {"model_offset": 4}}},
        }
    }


def test_metadata_fields():
    meta = parse_metadata("p", "m", "7", document(target_tag_list=["B"]))
    assert meta.tags == ("A", "B") and meta.target_tags == ("B",)
    assert meta.resolution == timedelta(minutes=10) and meta.offset == 4 and meta.revision == "7"


def test_target_tags_default_to_the_tags():
    assert parse_metadata("p", "m", "7", document()).target_tags == ("A", "B")


@pytest.mark.parametrize("broken", [{}, {"metadata": {}}, {"metadata": {"dataset": {"tag_list": []}}}])
def test_metadata_without_what_latigo_needs_is_permanent(broken):
    with pytest.raises(PermanentError, match="p/m"):
        parse_metadata("p", "m", "7", broken)
