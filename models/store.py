"""The model store: registered classifiers on a filesystem shared by the gateway and the workers.

Layout: ``ROOT/<model id>/<version>/manifest.json`` beside the weights file and an ``artifacts/``
folder for explainer artifacts (SyCE generators, GAD support models). Versions are integers from 1;
re-registering an id makes the next version. Writes go to a temporary folder that is renamed into
place, so a reader never sees half a version. Torch-free.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.manifest import MODEL_ID_PATTERN, ModelManifest
from xai.errors import NotFound

MANIFEST_NAME = "manifest.json"
MODEL_ID = re.compile(MODEL_ID_PATTERN.strip("^$"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def versions(self, model_id: str) -> list[int]:
        folder = self._model_folder(model_id)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST_NAME).exists())

    def list_models(self) -> list[ModelManifest]:
        """The default version (see ``get``) of every registered model, sorted by id."""
        ids = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [self.get(model_id) for model_id in ids if self.versions(model_id)]

    def get(self, model_id: str, version: int | None = None) -> ModelManifest:
        """A version of a model; with no version, the newest ready one (else the newest, to say why it is not)."""
        versions = self.versions(model_id)
        if not versions:
            known = ", ".join(m.id for m in self.list_models()) or "none"
            raise NotFound(f"model {model_id!r} is not registered; registered models: {known}", code="unknown_model")
        if version is None:
            # A new version that fails validation must not take the model away from every caller.
            manifests = [self._read(model_id, v) for v in reversed(versions)]
            return next((m for m in manifests if m.status == "ready"), manifests[0])
        if version not in versions:
            raise NotFound(
                f"model {model_id!r} has no version {version}; versions: {versions}", code="unknown_model_version"
            )
        return self._read(model_id, version)

    def _read(self, model_id: str, version: int) -> ModelManifest:
        return ModelManifest.model_validate_json((self.version_dir(model_id, version) / MANIFEST_NAME).read_text())

    def version_dir(self, model_id: str, version: int) -> Path:
        return self._model_folder(model_id) / str(version)

    def _model_folder(self, model_id: str) -> Path:
        """The folder of a model id; an id outside the manifest's alphabet is never joined to a path."""
        if not MODEL_ID.fullmatch(model_id):
            raise NotFound(
                f"no model {model_id[:80]!r}: model ids are 1-64 characters of a-z, 0-9, '.', '_' and '-', "
                "starting with a letter or digit",
                code="unknown_model",
            )
        return self.root / model_id

    def weights_path(self, manifest: ModelManifest) -> Path:
        return self.version_dir(manifest.id, manifest.version) / manifest.weights_file

    def artifact_path(self, manifest: ModelManifest, method: str) -> Path | None:
        relative = manifest.artifacts.get(method)
        return self.version_dir(manifest.id, manifest.version) / relative if relative else None

    def register(self, manifest: ModelManifest, weights: Path, artifacts_dir: Path | None = None) -> ModelManifest:
        """Store a new version of ``manifest.id`` with the given weights file (copied).

        ``artifacts_dir``, when given, is copied as the version's ``artifacts/`` folder; the
        manifest's ``artifacts`` paths are relative to the version folder.
        """
        (self.root / manifest.id).mkdir(parents=True, exist_ok=True)
        with self._locked(manifest.id):
            version = (self.versions(manifest.id) or [0])[-1] + 1
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root / manifest.id))
            try:
                shutil.copyfile(weights, staging / manifest.weights_file)
                if artifacts_dir is not None:
                    _copy_tree(artifacts_dir, staging / "artifacts")
                stored = manifest.model_copy(
                    update={"version": version, "weights_sha256": sha256_of(staging / manifest.weights_file)}
                )
                (staging / MANIFEST_NAME).write_text(stored.model_dump_json(indent=2))
                os.rename(staging, self.version_dir(manifest.id, version))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return stored

    def register_directory(self, folder: Path) -> ModelManifest:
        """Register the model in ``folder`` (manifest.json + weights + optional artifacts/).

        Idempotent: when the latest version already has the same weights and artifacts, it is returned
        unchanged, so starting the service twice does not make new versions of the demo models.
        """
        manifest = ModelManifest.model_validate_json((folder / MANIFEST_NAME).read_text())
        weights = folder / manifest.weights_file
        if self.versions(manifest.id):
            latest = self.get(manifest.id, self.versions(manifest.id)[-1])
            if latest.weights_sha256 == sha256_of(weights) and latest.artifacts == manifest.artifacts:
                return latest
        artifacts = folder / "artifacts"
        return self.register(manifest, weights, artifacts if artifacts.is_dir() else None)

    def add_artifact(self, model_id: str, version: int, method: str, source: Path) -> ModelManifest:
        """Move a finished artifact file or folder into a version and record it in its manifest."""
        with self._locked(model_id):
            manifest = self.get(model_id, version)
            target = self.version_dir(model_id, version) / "artifacts" / method
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.move(str(source), target)
            updated = manifest.model_copy(update={"artifacts": {**manifest.artifacts, method: f"artifacts/{method}"}})
            self._write_manifest(updated)
        return updated

    def set_status(self, model_id: str, version: int, status: str, reason: str | None) -> ModelManifest:
        with self._locked(model_id):
            updated = self.get(model_id, version).model_copy(update={"status": status, "status_reason": reason})
            self._write_manifest(updated)
        return updated

    def _write_manifest(self, manifest: ModelManifest) -> None:
        path = self.version_dir(manifest.id, manifest.version) / MANIFEST_NAME
        temporary = path.with_suffix(".tmp")
        temporary.write_text(manifest.model_dump_json(indent=2))
        os.replace(temporary, path)

    @contextmanager
    def _locked(self, model_id: str) -> Iterator[None]:
        with open(self._model_folder(model_id) / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a folder as new files and folders, which take this process's umask (0600/0700 under ``xai serve``).

    ``shutil.copytree`` would give them the source's modes instead: a demo model's world-readable files.
    """
    target.mkdir()
    for path in sorted(source.rglob("*")):  # sorted: a folder comes before what it holds
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir()
        else:
            shutil.copyfile(path, destination)
