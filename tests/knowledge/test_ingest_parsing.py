"""What repository ingestion reads of git's output and decides from it, without a
sandbox: ls-tree, diff --name-status and cat-file --batch records (paths with spaces,
tabs and non-ASCII names; renames; contents with newlines and invalid UTF-8 kept byte
exact), which files are indexed and why others are not, and the plans for a full and
an incremental index."""

import pytest

from apps.knowledge.ingest import (
    BATCH_BYTES,
    MAX_FILE_BYTES,
    Change,
    TreeEntry,
    batches,
    parse_cat_file_batch,
    parse_ls_tree,
    parse_name_status,
    plan_full,
    plan_incremental,
    skip_reason,
    text_of,
)

BLOB_A = "a" * 40
BLOB_B = "b" * 40


def _entry(
    path: str, size: int = 10, *, mode: str = "100644", kind: str = "blob", blob: str = BLOB_A
) -> TreeEntry:
    return TreeEntry(path=path, mode=mode, kind=kind, blob=blob, size=size)


def test_ls_tree_records_give_paths_sizes_and_blobs_even_for_odd_names() -> None:
    output = (
        f"100644 blob {BLOB_A}     120\tsrc/app.py\0".encode()
        + f"100755 blob {BLOB_B}       7\tbin/run me\0".encode()
        + f"100644 blob {BLOB_A}       3\tdocs/résumé\twith tab.md\0".encode()
        + f"160000 commit {BLOB_B}       -\tvendor/lib\0".encode()
        + f"120000 blob {BLOB_B}      11\tlink\0".encode()
    )
    tree = parse_ls_tree(output)
    assert tree["src/app.py"] == TreeEntry("src/app.py", "100644", "blob", BLOB_A, 120)
    assert tree["bin/run me"].size == 7
    assert tree["docs/résumé\twith tab.md"].size == 3
    assert tree["vendor/lib"].kind == "commit"
    assert tree["vendor/lib"].size == -1
    assert tree["link"].mode == "120000"
    assert parse_ls_tree(b"") == {}


def test_a_garbled_ls_tree_record_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="ls-tree"):
        parse_ls_tree(b"100644 blob\tno-size\0")


def test_name_status_gives_each_change_with_both_paths_of_a_rename() -> None:
    output = (
        b"M\0src/app.py\0A\0new file.txt\0D\0gone.py\0R086\0old/name.py\0new/name.py\0"
        b"T\0link\0C100\0a.py\0b.py\0"
    )
    assert parse_name_status(output) == [
        Change("M", "src/app.py"),
        Change("A", "new file.txt"),
        Change("D", "gone.py"),
        Change("R", "new/name.py", "old/name.py"),
        Change("T", "link"),
        Change("C", "b.py", "a.py"),
    ]
    assert parse_name_status(b"") == []
    with pytest.raises(ValueError, match="without both paths"):
        parse_name_status(b"R100\0only-one-path\0")


def test_cat_file_batch_contents_are_read_by_their_byte_size() -> None:
    first = "line one\nline two with é\n".encode()
    second = b"\xff\xfe not utf-8 \n\n"
    output = (
        f"{BLOB_A} blob {len(first)}\n".encode()
        + first
        + b"\n"
        + f"{BLOB_B} missing\n".encode()
        + f"{BLOB_B} blob {len(second)}\n".encode()
        + second
        + b"\n"
    )
    assert parse_cat_file_batch(output) == {BLOB_A: first, BLOB_B: second}
    with pytest.raises(ValueError, match="cut short"):
        parse_cat_file_batch(f"{BLOB_A} blob 100\nshort\n".encode())


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (_entry("src/app.py"), None),
        (_entry("README"), None),
        (_entry("node_modules/left-pad/index.js"), "in a vendored or generated directory"),
        (_entry("web/vendor/jquery.js"), "in a vendored or generated directory"),
        (_entry("package-lock.json"), "a lock file, bundle or binary format"),
        (_entry("static/app.min.js"), "a lock file, bundle or binary format"),
        (_entry("logo.PNG"), "a lock file, bundle or binary format"),
        (_entry("big.py", MAX_FILE_BYTES + 1), "larger than 512 KB"),
        (_entry("empty.py", 0), "empty"),
        (_entry("link", mode="120000"), "a symlink"),
        (_entry("lib", kind="commit", size=-1), "a submodule"),
    ],
)
def test_which_files_are_indexed(entry: TreeEntry, reason: str | None) -> None:
    assert skip_reason(entry) == reason


def test_text_is_utf8_without_nul_bytes() -> None:
    assert text_of("héllo\r\nworld\n".encode()) == "héllo\nworld\n"
    assert text_of(b"\xef\xbb\xbfbom\n") == "bom\n"
    assert text_of(b"PK\x03\x04\x00\x00binary") is None
    assert text_of(b"caf\xe9 latin-1\n") is None


def test_a_full_plan_puts_every_eligible_file_and_deletes_paths_no_longer_there() -> None:
    tree = {
        "a.py": _entry("a.py"),
        "b.md": _entry("b.md"),
        "node_modules/x.js": _entry("node_modules/x.js"),
        "huge.txt": _entry("huge.txt", MAX_FILE_BYTES * 2),
    }
    plan = plan_full(head=BLOB_B, tree=tree, indexed_paths={"a.py", "removed.py", "huge.txt"})
    assert plan.full
    assert [entry.path for entry in plan.puts] == ["a.py", "b.md"]
    assert plan.deletes == ["huge.txt", "removed.py"]
    assert set(plan.skipped) == {"node_modules/x.js", "huge.txt"}
    assert plan.total == 4


def test_an_incremental_plan_touches_only_what_changed() -> None:
    tree = {
        "kept.py": _entry("kept.py"),
        "edited.py": _entry("edited.py"),
        "added.py": _entry("added.py"),
        "renamed/new.py": _entry("renamed/new.py"),
        "grown.txt": _entry("grown.txt", MAX_FILE_BYTES + 1),
    }
    changes = [
        Change("M", "edited.py"),
        Change("A", "added.py"),
        Change("D", "deleted.py"),
        Change("R", "renamed/new.py", "old.py"),
        Change("M", "grown.txt"),
    ]
    plan = plan_incremental(head=BLOB_B, tree=tree, changes=changes)
    assert not plan.full
    assert [entry.path for entry in plan.puts] == ["added.py", "edited.py", "renamed/new.py"]
    assert plan.deletes == ["deleted.py", "grown.txt", "old.py"]
    assert plan.skipped == {"grown.txt": "larger than 512 KB"}


def test_reads_are_batched_by_size_and_count() -> None:
    entries = [_entry(f"f{index}.py", 3 * 1024 * 1024) for index in range(3)] + [
        _entry(f"s{index}.py", 10) for index in range(450)
    ]
    made = list(batches(entries))
    assert [entry for batch in made for entry in batch] == entries
    assert all(len(batch) <= 200 for batch in made)
    assert all(sum(entry.size for entry in batch) <= BATCH_BYTES for batch in made)
    assert [len(batch) for batch in made][:2] == [1, 1]
