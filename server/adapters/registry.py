"""The adapter registry: the folder `adapters.dir` (one `<name>/` per adapter, each with its
manifest) is the source of truth, plus `.registry.json` there recording what the admin API
unloaded or pinned, so the served set survives restarts.

Each adapter is served as its own `Served`: the base model's engine and queue, with the tool
format, chat template and default tool_choice of its manifest, and a lease on the engine's
AdapterPool. Names come from requests; paths only from this folder (admin requests may name a
folder, which must resolve inside it). Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from server.adapters.manifest import (
    MANIFEST,
    NAME_PATTERN,
    AdapterManifest,
    atomic_write_text,
    read_manifest,
    sha256_files,
)
from server.adapters.pool import AdapterLoadFailed, AdapterPool
from server.config import AdaptersSection, Settings
from server.engines.base import AdapterFiles
from server.errors import ConfigError, InvalidRequest, NotFound
from server.serving.served import AdapterBinding, Provenance, Served
from server.toolcalls.base import ToolFormat
from server.toolcalls.detect import resolve_format
from server.toolcalls.prompting import prompt_sha256
from server.types import ChoiceMode

STATE_FILE = ".registry.json"
_log = logging.getLogger("callgate")


class AdapterRefused(InvalidRequest):
    """An adapter folder that cannot be served; the message says why and what to fix."""

    code = "invalid_adapter"


class AdapterState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    pinned: bool = False


class RegistryState(BaseModel):
    """`.registry.json`: what the admin API changed. Folders not listed are served."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    adapters: dict[str, AdapterState] = {}


@dataclass(frozen=True)
class Adapter:
    name: str
    folder: Path
    manifest: AdapterManifest
    files: AdapterFiles
    template: str | None  # the folder's chat template, None to use the base model's
    template_path: Path | None


@dataclass
class BaseModelFile:
    """The served base GGUF, hashed once on first need (only manifests that carry a hash ask)."""

    path: Path | None
    _sha256: str | None = field(default=None, repr=False)

    def sha256(self) -> str | None:
        if self._sha256 is None and self.path is not None:
            self._sha256 = sha256_files([self.path])
        return self._sha256


def resolve_folder(root: Path, lora_path: str, name: str) -> Path:
    """The adapter folder an admin request names: a bare name, or a path that resolves (links
    followed) to `<adapters.dir>/<name>`. Anything else is refused before it is read."""
    if not lora_path:
        raise InvalidRequest("Both 'lora_name' and 'lora_path' must be provided.", param="lora_path")
    base = root.resolve()
    given = Path(lora_path)
    candidate = base / given if os.sep not in lora_path and not given.is_absolute() else given
    folder = candidate.resolve()
    if folder.parent != base:
        raise AdapterRefused(
            f"lora_path {lora_path!r} is not an adapter folder inside the adapters directory ({root}); "
            f"copy or export the adapter to {root}/<name>/ and pass that folder or its bare name",
            param="lora_path",
        )
    if folder.name != name:
        raise AdapterRefused(
            f"lora_path names the folder {folder.name!r} but lora_name is {name!r}; "
            "an adapter is served under its folder's name",
            param="lora_name",
        )
    return folder


def read_adapter(folder: Path, base: BaseModelFile) -> Adapter:
    """Read and check one adapter folder: manifest, file names, base model hash."""
    name = folder.name
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        raise AdapterRefused(
            f"{folder} has no {MANIFEST}; export adapters with `python -m training export`", param="lora_path"
        ) from None
    except (ValidationError, ValueError, OSError) as exc:
        raise AdapterRefused(f"{folder}/{MANIFEST} is not a valid adapter manifest: {exc}", param="lora_path") from None
    if manifest.name != name:
        raise AdapterRefused(
            f"{folder}/{MANIFEST} names the adapter {manifest.name!r}, not its folder's name "
            f"{name!r}; rename the folder or re-export",
            param="lora_name",
        )
    _check_base(manifest, base)
    spec = manifest.files
    gguf = _inside(folder, spec.gguf) if spec.gguf else None
    peft = _inside(folder, spec.peft_weights)
    if not (gguf and gguf.is_file()) and not peft.is_file():
        raise AdapterRefused(
            f"{folder} holds no adapter weights ({spec.gguf} or {spec.peft_weights})", param="lora_path"
        )
    template_path = _inside(folder, spec.chat_template)
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    files = AdapterFiles(name, folder, gguf if gguf and gguf.is_file() else None)
    return Adapter(name, folder, manifest, files, template, template_path if template is not None else None)


def _check_base(manifest: AdapterManifest, base: BaseModelFile) -> None:
    wanted = manifest.base_model.gguf_sha256
    if wanted is None:
        _log.warning(
            "adapter %s: its manifest has no base_model.gguf_sha256, so its fit to the served base "
            "model cannot be checked",
            manifest.name,
        )
        return
    have = base.sha256()
    if have is not None and have != wanted:
        raise AdapterRefused(
            f"adapter {manifest.name!r} was trained for another base model (base GGUF sha256 {wanted[:12]}..., "
            f"served {have[:12]}...: {manifest.base_model.id}); serve it with that model",
            param="lora_path",
        )


def _check_prompt(manifest: AdapterManifest, fmt: ToolFormat, template: str) -> None:
    """Warn, not refuse: the adapter still makes valid calls under the grammar, but its scores were
    measured on other prompt wording (an upgrade that rewords the tool prompt calls for retraining)."""
    wanted = manifest.tool_prompt_sha256
    have = prompt_sha256(template, fmt)
    if wanted is None or have is None or have == wanted:
        return
    _log.warning(
        "adapter %s was trained on other wording of the gateway's tool prompt than this version "
        "writes (tool_prompt_sha256 %s..., now %s...): expect more calls where none is needed and "
        "fewer right ones than its manifest's scores; retrain it with this version",
        manifest.name,
        wanted[:12],
        have[:12],
    )


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise AdapterRefused(f"{folder}/{MANIFEST} names the file {name!r} outside its folder", param="lora_path")
    return path


def bind(adapter: Adapter, base: Served, pool: AdapterPool, scale: float) -> Served:
    """The adapter as served: base engine and queue; its own format, template and tool_choice."""
    template = adapter.template if adapter.template is not None else base.template
    try:
        fmt, source = resolve_format(adapter.manifest.tool_format, template)
    except ConfigError as exc:
        raise AdapterRefused(f"adapter {adapter.name!r}: {exc}", param="lora_path") from None
    _check_prompt(adapter.manifest, fmt, template)
    # The base's engine, info and queue; the rest is the adapter's own.
    template_path = str(adapter.template_path) if adapter.template_path else base.provenance.template
    own = adapter.manifest.no_tool_threshold
    policy = replace(
        base.policy,
        no_tool_threshold=own if own is not None else base.policy.adapter_threshold,
        default_choice=ChoiceMode(adapter.manifest.tool_choice),
    )
    return replace(
        base,
        name=adapter.name,
        format=fmt,
        template=template,
        policy=policy,
        provenance=Provenance(source, template_path),
        adapter=AdapterBinding(adapter.name, scale, partial(pool.lease, adapter.files)),
    )


class AdapterRegistry:
    """The adapters served on one base model, by name."""

    def __init__(self, settings: AdaptersSection, base: Served, base_file: BaseModelFile, pool: AdapterPool):
        self.root = settings.dir
        self.settings = settings
        self.base = base
        self.base_file = base_file
        self.pool = pool
        self.adapters: dict[str, Adapter] = {}
        self.served: dict[str, Served] = {}
        self.state = self._read_state()
        self._locks: dict[str, asyncio.Lock] = {}
        pool.pinned |= {n for n, s in self.state.adapters.items() if s.pinned}

    # --- start-up ---

    def scan(self) -> int:
        """Register every enabled adapter folder; refused ones are logged and skipped. Returns
        the number skipped."""
        if not self.root.is_dir():
            return 0
        skipped = 0
        for folder in sorted(p for p in self.root.iterdir() if (p / MANIFEST).is_file()):
            if not self.state.adapters.get(folder.name, AdapterState()).enabled:
                _log.info("adapter %s: unloaded through the admin API, not served (load it to serve it)", folder.name)
                continue
            try:
                self._register(self._check(folder))
            except AdapterRefused as exc:
                skipped += 1
                _log.warning("adapter folder skipped: %s", exc.message)
        _log.info("adapters: %d served from %s, %d skipped", len(self.served), self.root, skipped)
        return skipped

    async def start(self) -> None:
        """Load pinned adapters now; the others load on their first request."""
        for name in sorted(self.pool.pinned - set(self.served)):
            _log.warning("pinned adapter %s is not served (no such folder in %s, or refused)", name, self.root)
        for name in sorted(self.pool.pinned & set(self.served)):
            try:
                async with self.served[name].lease():
                    pass
            except Exception as exc:  # served anyway: its first request retries the load
                _log.warning("pinned adapter %s did not load at start: %s", name, exc)

    # --- requests ---

    def get(self, name: str) -> Served | None:
        return self.served.get(name)

    # --- admin ---

    async def load(self, name: str, lora_path: str, inplace: bool = False, pinned: bool | None = None) -> None:
        """Serve the folder `lora_path` as `name` (vLLM's load_lora_adapter), loaded now."""
        self._check_name(name)
        async with self._lock(name):
            if name in self.served and not inplace:
                raise InvalidRequest(
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    param="lora_name",
                )
            folder = resolve_folder(self.root, lora_path, name)
            adapter = await asyncio.to_thread(read_adapter, folder, self.base_file)  # may hash the base
            served = bind(adapter, self.base, self.pool, self.settings.scale)
            if pinned:
                self._check_pin(name)
            await self._swap_in(adapter, served)
            if pinned is not None:
                (self.pool.pinned.add if pinned else self.pool.pinned.discard)(name)
            self._save(name, AdapterState(enabled=True, pinned=name in self.pool.pinned))

    async def _swap_in(self, adapter: Adapter, served: Served) -> None:
        """Serve the new binding at once; drain the old weights; load the new ones now, so a
        broken file is refused here rather than on the first request."""
        name, previous = adapter.name, self.served.get(adapter.name)
        self.pool.serve(adapter.files)
        self.adapters[name], self.served[name] = adapter, served
        if previous is not None:
            await self.pool.drain(name)
        try:
            async with served.lease():
                pass
        except AdapterLoadFailed as exc:
            self._unregister(name)
            raise AdapterRefused(f"{exc.message}; check the files in {adapter.folder}", param="lora_path") from None
        except BaseException:  # no slot came free (504, 503): a new adapter is not served; one
            if previous is None:  # served before stays served, with its new binding, loaded lazily
                self._unregister(name)
            raise

    def _check_pin(self, name: str) -> None:
        if len(self.pool.pinned | {name}) > self.pool.max_loaded:
            raise InvalidRequest(
                f"cannot pin {name!r}: {len(self.pool.pinned)} adapters are pinned and "
                f"adapters.max_loaded is {self.pool.max_loaded}; unpin one first",
                param="pinned",
            )

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            if name not in self.served:
                raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name")
            self._unregister(name)
            self.pool.pinned.discard(name)
            self._save(name, AdapterState(enabled=False))
            await self.pool.drain(name)  # requests in flight finish on it first

    # --- inside ---

    def _check(self, folder: Path) -> Adapter:
        folder = resolve_folder(self.root, folder.name, folder.name)  # a link out of the folder is refused
        adapter = read_adapter(folder, self.base_file)
        self._check_name(adapter.name)
        return adapter

    def _check_name(self, name: str) -> None:
        if not re.fullmatch(NAME_PATTERN, name):
            raise AdapterRefused(
                f"lora_name {name!r} is not a valid adapter name (letters, digits, '.', '_', '-'; at most 64)",
                param="lora_name",
            )
        if name == self.base.name:
            raise AdapterRefused(
                f"The lora adapter name '{name}' conflicts with a served base model.", param="lora_name"
            )

    def _register(self, adapter: Adapter) -> None:
        served = bind(adapter, self.base, self.pool, self.settings.scale)
        self.pool.serve(adapter.files)
        self.adapters[adapter.name], self.served[adapter.name] = adapter, served

    def _unregister(self, name: str) -> None:
        self.served.pop(name, None)
        self.adapters.pop(name, None)
        self.pool.forget(name)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _read_state(self) -> RegistryState:
        path = self.root / STATE_FILE
        try:
            return RegistryState.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return RegistryState()
        except (ValidationError, ValueError, OSError) as exc:
            raise ConfigError(
                f"cannot read the adapter registry state {path}: {exc}; fix it or delete it "
                "(every adapter folder is then served)"
            ) from None

    def _save(self, name: str, state: AdapterState) -> None:
        self.state.adapters[name] = state
        text = json.dumps(self.state.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.root / STATE_FILE, text)


def open_adapters(settings: Settings, base: Served, base_gguf: Path | None) -> AdapterRegistry:
    """The registry of `settings.adapters.dir` over `base`, scanned. One pool per base engine."""
    section = settings.adapters
    pool = AdapterPool(base.engine, section.max_loaded, section.pinned, wait_s=settings.limits.queue_timeout_s)
    registry = AdapterRegistry(section, base, BaseModelFile(base_gguf), pool)
    registry.scan()
    return registry
