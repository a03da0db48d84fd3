"""The layout of examples/handlers: copying its handler files into a handler
directory makes them answer the tags that their headers and the cookbook give."""

import os
import re
import subprocess

import pytest

from conftest import COOKBOOK, EXAMPLES, tag_of

HANDLERS = {
    "notify.sh": "notify",
    "clipboard/set.sh": "clipboard.set",
    "clipboard/get.sh": "clipboard.get",
    "open-url.sh": "open-url",
    "file.sh": "file",
    "ring.sh": "ring",
    "battery.sh": "battery",
}
TOOLS = ["bin/cnspr-send-file"]
TAG = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def files_under(root):
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )


def header(rel):
    lines = (EXAMPLES / rel).read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]


def test_the_directory_holds_the_handlers_and_the_sending_tool():
    assert files_under(EXAMPLES) == sorted([*HANDLERS, *TOOLS])


@pytest.mark.parametrize("rel,tag", HANDLERS.items())
def test_path_gives_the_documented_tag(rel, tag):
    assert tag_of(rel) == tag
    assert TAG.fullmatch(tag) and tag.split(".")[0] not in ("daemon", "peer")
    tag_lines = [line for line in header(rel) if line.startswith("# Tag:")]
    assert tag_lines == [f"# Tag:   {tag}"]


@pytest.mark.parametrize("rel", [*HANDLERS, *TOOLS])
def test_script_shape(rel):
    path = EXAMPLES / rel
    assert os.access(path, os.X_OK), f"{rel} is not executable"
    assert not any(part.startswith((".", "#")) or part.endswith("~") for part in rel.split("/"))
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text
    head = "\n".join(header(rel))
    if rel in HANDLERS:
        for field in ("# Tag:", "# Does:", "# Needs:", "# Send:", "# Exit:"):
            assert field in head, f"{rel}: header lacks {field}"
    # Parses as POSIX sh (dash, the strictest usual /bin/sh).
    subprocess.run(["sh", "-n", str(path)], check=True)


@pytest.mark.parametrize("rel,tag", HANDLERS.items())
def test_cookbook_shows_how_to_install_and_use(rel, tag):
    book = COOKBOOK.read_text()
    top = rel.split("/")[0]
    assert f"cp -r examples/handlers/{top} ~/.config/cnspr/handlers/" in book
    if tag == "file":
        assert "cnspr-send-file PEER FILE" in book
        assert "cnspr send laptop file --reply" in book
    else:
        assert re.search(rf"cnspr send (PEER|laptop|phone|--all) {re.escape(tag)}\b", book), tag


def test_cookbook_copy_all_line_names_every_handler_and_not_bin():
    book = COOKBOOK.read_text()
    (line,) = [x for x in book.splitlines() if x.startswith("cp -r ") and "notify.sh clipboard" in x]
    names = line.split()[2:-1]
    assert sorted(names) == sorted({rel.split("/")[0] for rel in HANDLERS})
