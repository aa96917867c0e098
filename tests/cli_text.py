"""How CLI tests compare messages: on one line and with the temporary folder named ROOT, so that neither the
terminal width nor the length of pytest's temporary path can move a line break into the compared text."""

from __future__ import annotations

import re
from pathlib import Path


def normalised(text: str, root: Path | None = None) -> str:
    """`text` with every run of whitespace (line breaks included) one blank, and `root` written as ROOT."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace(str(root), "ROOT") if root is not None else text
