"""The README and docs/ speak to users: every relative link resolves, and no page narrates the project's issues."""

import glob
import os
import re

import pytest
from conftest import REPO_ROOT

PAGES = [
    "README.md",
    *sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))),
]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def relative_links(text: str) -> list[str]:
    """Targets of markdown links and images that are not URLs or in-page anchors, without their #fragment."""
    targets = [first or second for first, second in LINK.findall(text)]
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_relative_links_are_found_in_markdown_and_html():
    text = 'see [method](docs/method.md#s2), ![fig](docs/a.png), [site](https://x.org), [top](#top) <img src="b.png">'
    assert relative_links(text) == ["docs/method.md", "docs/a.png", "b.png"]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    with open(os.path.join(REPO_ROOT, page)) as file:
        links = relative_links(file.read())
    base = os.path.dirname(os.path.join(REPO_ROOT, page))
    missing = [link for link in links if not os.path.exists(os.path.normpath(os.path.join(base, link)))]
    assert missing == [], f"{page} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES)
def test_no_page_names_an_issue_number(page):
    with open(os.path.join(REPO_ROOT, page)) as file:
        found = re.findall(r"\bissues? #?\d{1,2}\b", file.read(), flags=re.IGNORECASE)
    assert found == [], f"{page} names issues: {found}"
