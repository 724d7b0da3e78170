"""The machine's own Debian package sources, read from /etc/apt, as deb822 stanzas.

The Kubernetes build (``testbench.cluster``) and the image build (``testbench.images``) copy them
instead of naming a mirror, so the repository holds no host name and any snapshot pinning the
machine uses carries over.
"""

from __future__ import annotations

import glob
from pathlib import Path

Stanza = dict[str, str]
APT_DIR = Path("/etc/apt")


def _deb822_stanzas(text: str) -> list[Stanza]:
    stanzas: list[Stanza] = []
    for paragraph in text.split("\n\n"):
        fields: Stanza = {}
        for line in paragraph.splitlines():
            if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
            stanzas.append({**fields, "Types": "deb"})
    return stanzas


def _one_line_stanza(line: str) -> Stanza | None:
    words = line.split("#", 1)[0].split()
    if not words or words[0] != "deb":
        return None
    words = words[1:]
    options: dict[str, str] = {}
    if words and words[0].startswith("["):
        while words:
            option = words.pop(0).strip("[]")
            if "=" in option:
                k, _, v = option.partition("=")
                options[k] = v
            if option.endswith("]") or not words or words[0].startswith("]"):
                break
    if len(words) < 2:
        return None
    stanza = {"Types": "deb", "URIs": words[0], "Suites": words[1]}
    if len(words) > 2:
        stanza["Components"] = " ".join(words[2:])
    if "signed-by" in options:
        stanza["Signed-By"] = options["signed-by"]
    return stanza


def binary_sources(apt_dir: Path = APT_DIR) -> list[Stanza]:
    """Every enabled ``deb`` entry of the machine, one-line and deb822 files alike."""
    stanzas: list[Stanza] = []
    for deb822 in sorted(glob.glob(str(apt_dir / "sources.list.d" / "*.sources"))):
        stanzas += _deb822_stanzas(Path(deb822).read_text())
    for path in [apt_dir / "sources.list", *map(Path, sorted(glob.glob(str(apt_dir / "sources.list.d" / "*.list"))))]:
        if path.is_file():
            stanzas += [s for line in path.read_text().splitlines() if (s := _one_line_stanza(line)) is not None]
    return stanzas


def render(stanzas: list[Stanza], types: str = "deb") -> str:
    """deb822 text for ``stanzas``, with their Types replaced by ``types`` (``deb-src`` for sources)."""
    return "\n\n".join("\n".join(f"{k}: {v}" for k, v in {**s, "Types": types}.items()) for s in stanzas) + "\n"


def for_release(stanzas: list[Stanza], codename: str) -> list[Stanza]:
    """Only the entries of one Debian release (its main suite, -updates, -security): no third-party repositories."""

    def of_release(suite: str) -> bool:
        return suite == codename or suite.startswith(codename + "-")

    return [s for s in stanzas if s.get("Suites") and all(of_release(x) for x in s["Suites"].split())]
