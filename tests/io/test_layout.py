"""io/layout.py: a checkpoint's names and how a pointer file reads."""
import pytest

from distnn.io.layout import EPOCH_NAME, CheckpointError, epoch_name, parse_pointer

HEX = "ab" * 32


def test_epoch_names_sort_as_numbers_up_to_9999_and_still_match_beyond():
    assert epoch_name(7) == "epoch-0007"
    assert sorted(epoch_name(e) for e in (10, 9, 100)) == ["epoch-0009", "epoch-0010",
                                                          "epoch-0100"]
    assert EPOCH_NAME.match(epoch_name(12345))
    assert not EPOCH_NAME.match("epoch-7") and not EPOCH_NAME.match("epoch-0007/..")


def test_a_pointer_is_a_name_and_the_hash_of_its_meta_json():
    assert parse_pointer(f"epoch-0003\nmeta.json sha256 {HEX}\n", "ck/latest") == (
        "epoch-0003", HEX)


@pytest.mark.parametrize("text, match", [
    ("../elsewhere\nmeta.json sha256 " + HEX, "must name a checkpoint directory inside ck"),
    ("/abs/epoch-0001\nmeta.json sha256 " + HEX, "must name a checkpoint directory"),
    ("", "must name a checkpoint directory"),
    ("epoch-0001", "the sha256 of its meta.json"),                # format 1: no hash
    ("epoch-0001\nmeta.json sha256 " + HEX[:-1], "the sha256 of its meta.json"),
    ("epoch-0001\nmeta.json md5 " + HEX, "the sha256 of its meta.json"),
    ("epoch-0001\nmeta.json sha256 " + HEX + "\nmore", "must name a checkpoint directory"),
])
def test_a_pointer_that_is_not_what_distnn_writes_is_refused(text, match):
    with pytest.raises(CheckpointError, match=match):
        parse_pointer(text, "ck/latest")
