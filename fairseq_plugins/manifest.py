"""Data manifests: a data-bin must match the ``manifest.json`` its data script wrote, and a checkpoint the
dictionaries it was trained on.

One call in a task's ``setup_task`` does both checks::

    task = super().setup_task(cfg, **kwargs)
    bind_data_manifest(task, data_dir)

1. ``data_dir/manifest.json`` (written by ``data_scripts/``), when present, names each dictionary file with its
   size (``len(Dictionary)``) and sha256. A dictionary file that differs from it raises :class:`DifftextError`.
2. The fingerprint of the task's dictionaries (file name, size and sha256 of each, plus the SentencePiece model's
   sha256 from the manifest) is put into the task's state. fairseq saves ``task.state_dict()`` in every checkpoint
   as ``"task_state"`` and, when it loads a checkpoint for decoding (``fairseq-generate``, ``fairseq-interactive``,
   the hub), calls ``task.load_state_dict(checkpoint["task_state"])`` *before* it builds the model. The state
   container installed here compares the two fingerprints then, so a checkpoint used with another data-bin fails
   with one line instead of a tensor-size error (or, with an equally sized dictionary, silently wrong text).

Checkpoints without a fingerprint (trained before this check existed) are accepted as they are.
"""
import hashlib
import json
import os
from typing import Dict, Mapping, Optional, Tuple

from fairseq.tasks.fairseq_task import StatefulContainer

from fairseq_plugins.errors import DifftextError

STATE_KEY = "data_manifest"
MANIFEST = "manifest.json"

__all__ = ["bind_data_manifest", "check_data_dir", "data_fingerprint", "task_dictionaries", "STATE_KEY"]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(data_dir: str) -> Optional[dict]:
    """``data_dir/manifest.json`` as a dict, or None when there is none."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise DifftextError(
            f"{path} is not readable JSON ({error}); re-run the data script that wrote {data_dir}, "
            f"or delete {MANIFEST}"
        ) from None


def task_dictionaries(task) -> Dict[str, Tuple[str, object]]:
    """``{role: (dict file name, Dictionary)}``: source and target of a translation-style task, else dict.txt."""
    if getattr(task, "src_dict", None) is not None:
        cfg = task.cfg
        return {
            "source": (f"dict.{cfg.source_lang}.txt", task.src_dict),
            "target": (f"dict.{cfg.target_lang}.txt", task.tgt_dict),
        }
    return {"dictionary": ("dict.txt", task.source_dictionary)}


def manifest_dictionary(manifest: dict, name: str) -> Optional[dict]:
    """The manifest's entry for dictionary file ``name`` (``{"size", "sha256"}``), or None if it names no such file."""
    entry = manifest.get("dictionary") or {}
    files = entry.get("files") or ([entry["file"]] if "file" in entry else [])
    if name in files:
        return entry
    if entry.get("joined") and name.startswith("dict.") and entry.get("file", "").startswith("dict."):
        return entry  # manifests of joined data name one file; every dict.<lang>.txt is a copy of it
    return None


def data_fingerprint(data_dir: str, dictionaries: Mapping[str, Tuple[str, object]]) -> dict:
    """``{"dictionaries": {role: {file, size, sha256}}, "sentencepiece_sha256"}`` of a data directory."""
    manifest = read_manifest(data_dir) or {}
    return {
        "dictionaries": {
            role: {"file": name, "size": len(dictionary), "sha256": sha256_file(os.path.join(data_dir, name))}
            for role, (name, dictionary) in dictionaries.items()
        },
        "sentencepiece_sha256": (manifest.get("sentencepiece") or {}).get("sha256"),
    }


def check_data_dir(data_dir: str, dictionaries: Mapping[str, Tuple[str, object]]) -> dict:
    """Verify ``data_dir``'s dictionary files against its ``manifest.json`` (if any); return the fingerprint.

    ``dictionaries`` is ``{role: (file name in data_dir, loaded fairseq Dictionary)}`` (see ``task_dictionaries``).
    Raises ``DifftextError`` (one line, with the fix) when a file's size or sha256 differs from the manifest.
    """
    fingerprint = data_fingerprint(data_dir, dictionaries)
    manifest = read_manifest(data_dir)
    if manifest is None:
        return fingerprint
    for found in fingerprint["dictionaries"].values():
        expected = manifest_dictionary(manifest, found["file"])
        if expected is None:
            continue
        size_ok = expected.get("size") in (None, found["size"])
        sha_ok = expected.get("sha256") in (None, found["sha256"])
        if not (size_ok and sha_ok):
            raise DifftextError(
                f"{os.path.join(data_dir, found['file'])} (sha256 {found['sha256'][:12]}, {found['size']} types) "
                f"does not match {os.path.join(data_dir, MANIFEST)} (sha256 {str(expected.get('sha256'))[:12]}, "
                f"{expected.get('size')} types); the data-bin changed after its data script ran: re-run the script "
                f"that wrote it, or delete {MANIFEST} if the new dictionary is intended"
            )
    return fingerprint


def mismatch(trained: dict, found: dict, data_dir: str) -> Optional[str]:
    """The one-line error for two fingerprints whose dictionaries differ, else None."""
    for role, seen in found.get("dictionaries", {}).items():
        saved = trained.get("dictionaries", {}).get(role)
        if saved is None or saved.get("sha256") == seen["sha256"]:
            continue
        kind = "dictionary" if role == "dictionary" else f"{role} dictionary"
        return (
            f"checkpoint was trained on data with a {kind} of {saved.get('size')} types "
            f"(sha256 {saved['sha256'][:12]}, {saved.get('file')}) but {data_dir} has {seen['size']} "
            f"(sha256 {seen['sha256'][:12]}, {seen['file']}); pass the data-bin the model was trained on "
            "(or binarize your data with its dictionary: fairseq-preprocess --srcdict/--tgtdict)"
        )
    return None


class ManifestState(StatefulContainer):
    """fairseq's task state, which refuses to merge a checkpoint's state recorded on other dictionaries."""

    def __init__(self, base: StatefulContainer, data_dir: str):
        super().__init__()
        self._state.update(base._state)
        self._factories.update(base._factories)
        self._data_dir = data_dir

    def merge_state_dict(self, state_dict):
        trained, found = state_dict.get(STATE_KEY), self._state.get(STATE_KEY)
        if trained is not None and found is not None:
            error = mismatch(trained, found, self._data_dir)
            if error is not None:
                raise DifftextError(error)
        super().merge_state_dict(state_dict)


def bind_data_manifest(task, data_dir: str, dictionaries: Optional[Mapping[str, Tuple[str, object]]] = None) -> dict:
    """Check ``data_dir`` against its manifest and make ``task``'s checkpoints remember (and check) its dictionaries.

    ``dictionaries`` defaults to ``task_dictionaries(task)``: ``dict.{src,tgt}.txt`` of a translation-style task,
    ``dict.txt`` of a language-modelling task. Returns the fingerprint stored in the task state.
    """
    fingerprint = check_data_dir(data_dir, dictionaries or task_dictionaries(task))
    if not isinstance(task.state, ManifestState):
        task.state = ManifestState(task.state, data_dir)
    task.state._state[STATE_KEY] = fingerprint  # saved in every checkpoint as task_state[STATE_KEY]
    return fingerprint
