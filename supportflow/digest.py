"""Content digests: the keys that let a re-run recognise work it has already done."""

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(paths: Iterable[Path], root: Path | None = None) -> str:
    """One SHA-256 over the files (folders walked), names and bytes; caches go stale exactly when content changes."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(root) if root else file).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def text_digest(*parts: object) -> str:
    return hashlib.sha256("|".join(str(part) for part in parts).encode()).hexdigest()
