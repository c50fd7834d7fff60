"""What only the embedded backend has to get right: deleting build folders on a local disk."""

from pathlib import Path

from supportflow.kb.documents import Passage
from supportflow.kb.tantivy_index import TantivyIndex

PASSAGES = [Passage(id="fees#0", doc_id="fees", title="Exchange fees", body="Exchanging currencies is free on weekdays.", source="test")]


def test_a_discarded_build_leaves_the_build_namespace_even_if_its_deletion_is_unfinished(tmp_path: Path) -> None:
    index = TantivyIndex(tmp_path / "kb", name="kbtest")
    index.create("b1", PASSAGES)
    index.promote("b1")
    index.search("exchange", 10)  # b1 is open, as it is in a serving bot
    # a deletion an earlier promote could not finish, with a file still in it
    unfinished = tmp_path / "kb" / ".discarded-kbtest-b0-0badf00d"
    (unfinished / "segment").mkdir(parents=True)
    (unfinished / "segment" / "meta.json").write_text("{}")
    index.create("b2", PASSAGES)
    index.promote("b2")
    assert index.versions() == ["b2"]
    assert not unfinished.exists()
    assert index.search("exchange", 10)[0].passage_id == "fees#0"


def test_discarding_a_build_that_is_gone_is_a_no_op(tmp_path: Path) -> None:
    index = TantivyIndex(tmp_path / "kb", name="kbtest")
    index.create("b1", PASSAGES)
    index.discard("b1")
    index.discard("b1")
    assert index.versions() == []
