"""Finding a model artefact folder from a model reference.

A reference is one of:

- a folder path holding a ``spinecloud.json``: that artefact, as is. A string is a path when
  it contains a path separator or starts with ``.`` or ``~`` (``./tiny``, ``/models/x/1.0``);
  a bare word is always a model name, whatever folders the working directory holds;
- ``NAME@VERSION``: the folder ``<root>/NAME/VERSION/`` in the first search root that has it;
- ``NAME``: among the versions of NAME in every search root (``<root>/NAME/<version>/``),
  the highest version whose manifest state is ``production`` if any is, else the highest
  version. Versions compare by their numeric parts first (``0.10`` after ``0.9``); on a tie,
  the earlier root wins.

The search roots are, in order, the site's models folder (``models_dir``, by default
``settings.data_dir / "models"``) and the models packaged with this service
(``spinecloud_inference/default_models/``). A root may also hold an artefact directly as
``<root>/NAME/spinecloud.json`` (no version folder); its version is the manifest's.
Nothing found -> ``ModelNotFoundError`` listing where it looked.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from spinecloud_shared.errors import ModelArtifactError, ModelNotFoundError
from spinecloud_shared.models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ModelState,
    parse_model_ref,
    read_manifest,
)
from spinecloud_shared.settings import get_settings

logger = logging.getLogger(__name__)

#: Models shipped with the inference package (the training engineer's demo model lives here).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "default_models"
#: The model used when none is named.
DEFAULT_MODEL = "spine-segresnet-demo"


@dataclass(frozen=True)
class Candidate:
    """One artefact folder found for a name, with its (unverified) manifest."""

    folder: Path
    manifest: Manifest
    root_index: int


def search_roots(models_dir: Path | None = None) -> list[Path]:
    """Where named models are looked up, in order of precedence."""
    site = models_dir if models_dir is not None else get_settings().data_dir / "models"
    return [Path(site), DEFAULT_MODELS_DIR]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key of a version string: '0.10.0' > '0.9.1', '1.0' > '1.0rc1'."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    # Numbers sort above words at the same position, so a release sorts after its candidates.
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in parts)


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.startswith((".", "~"))


def _direct_folder(ref: str) -> Path:
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: no such model folder.", path=str(folder))
    if not (folder / MANIFEST_FILE).is_file():
        raise ModelArtifactError(
            f"{folder}: no {MANIFEST_FILE}; not a SpineCloud model artefact.", path=str(folder)
        )
    return folder


def _artefact_folders(base: Path) -> list[Path]:
    """``base`` itself when it is an artefact, else its version folders that are."""
    if (base / MANIFEST_FILE).is_file():
        return [base]
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / MANIFEST_FILE).is_file())


def _candidates(name: str, roots: list[Path]) -> list[Candidate]:
    """Every artefact of ``name`` in the roots; unreadable manifests are skipped (logged)."""
    found = []
    for index, root in enumerate(roots):
        for folder in _artefact_folders(root / name):
            try:
                manifest = read_manifest(folder, verify=False)
            except ModelArtifactError as exc:
                logger.warning("skipping model folder %s: %s", folder, exc.message)
                continue
            if manifest.name == name:
                found.append(Candidate(folder, manifest, index))
    return found


def _best(candidates: list[Candidate], version: str | None) -> Candidate | None:
    if version is not None:
        exact = [c for c in candidates if c.manifest.version == version]
        return min(exact, key=lambda c: c.root_index) if exact else None
    if not candidates:
        return None
    production = [c for c in candidates if c.manifest.state is ModelState.PRODUCTION]
    pool = production or candidates
    return max(pool, key=lambda c: (version_key(c.manifest.version), -c.root_index))


def resolve_model_folder(ref: str | Path, *, models_dir: Path | None = None) -> Path:
    """The artefact folder a model reference names (rules in the module docstring)."""
    text = str(ref)
    if isinstance(ref, Path) or _looks_like_path(text):
        return _direct_folder(text)
    name, version = parse_model_ref(text)
    roots = search_roots(models_dir)
    chosen = _best(_candidates(name, roots), version)
    if chosen is None:
        wanted = f"{name}@{version}" if version else name
        looked = ", ".join(str(r) for r in roots)
        missing = [str(r) for r in roots if not r.is_dir()]
        note = f" (absent: {', '.join(missing)})" if missing else ""
        raise ModelNotFoundError(
            f"Model {wanted!r} not found in {looked}{note}. Give a folder path or NAME@VERSION "
            "of an installed model.",
            model=wanted,
        )
    return chosen.folder
