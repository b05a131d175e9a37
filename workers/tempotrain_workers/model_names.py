"""What a spec's model name means, and what to say when it cannot be loaded: a user who put
`models/minilm` in a spec and forgot the folder must read that the folder is missing (and
where it was looked for), not that huggingface.co is unreachable."""

from __future__ import annotations

from pathlib import Path


def resolve_model(name: str, snapshots_root: Path) -> str:
    """A folder on the snapshots volume (`models/minilm`) means that folder; an absolute
    folder (host workers, tests) is itself; anything else is a Hub id for from_pretrained."""
    for candidate in (snapshots_root / name, Path(name).expanduser()):
        if candidate.is_dir():
            return str(candidate)
    return name


def model_not_found(name: str, snapshots_root: Path, err: BaseException) -> str:
    """The message of ModelNotFound: what was looked for where, then the loader's words."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    path = Path(name)
    if path.is_dir() or (snapshots_root / name).is_dir():
        folder = path if path.is_dir() else snapshots_root / name
        return f"model folder {folder} cannot be loaded (is it a saved model?): {detail}"
    if path.is_absolute():
        return f"model folder {name} does not exist"
    return (
        f"model {name!r} is not a folder on the snapshots volume (no {snapshots_root / name}) "
        f"and could not be loaded from the Hugging Face Hub: {detail}"
    )
