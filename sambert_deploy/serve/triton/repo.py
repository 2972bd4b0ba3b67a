"""``sambert-deploy triton-repo``: a bundle -> a plain Triton model repository.

Layout written (docs/triton.md)::

    REPO/
      sambert/                   # --model-name
        config.pbtxt             # decoupled Python-backend model; parameters name the bundle
        1/
          model.py               # a copy of sambert_deploy/serve/triton/model.py
          bundle/                # only with --copy-bundle

The repository is built in a hidden folder next to ``REPO`` and renamed into place, so a failure never
leaves half a repository. An existing ``REPO`` is replaced only with ``force`` and only when it is a
repository this command wrote (every ``config.pbtxt`` starts with a marker line); anything else is refused.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...errors import SambertDeployError
from ...runtime.manifest import read_manifest
from ...utils import staging_beside, swap_into_place
from .protocol import CONFIG_MARKER, INPUTS, MODEL_NAME, OUTPUTS, ModelParams, TensorSpec

MODEL_FILE = Path(__file__).with_name("model.py")


class TritonRepoError(SambertDeployError):
    """The repository cannot be written where asked (exists, not ours, not writable)."""


@dataclass(frozen=True)
class RepoOptions:
    """``instances``: model instances (stub processes) per server, each loading the bundle once.
    ``max_concurrent``, ``threads``, ``backend``, ``precision``, ``max_input_chars``: per instance,
    see :class:`~.protocol.ModelParams`. ``bundle_path``: the bundle's path as the server will see it
    (inside a container), written as is; default: BUNDLE resolved. ``copy_bundle``: copy the bundle into
    ``<model>/1/bundle`` and name it relatively (a self-contained repository to mount or bake into an
    image). ``execution_env``: ``EXECUTION_ENV_PATH``, the Python environment (packed archive or folder)
    Triton runs the model in; ``$$TRITON_MODEL_DIRECTORY`` is expanded by Triton. ``allow_numpy2``: see
    :class:`~.protocol.ModelParams`."""

    model_name: str = MODEL_NAME
    instances: int = 1
    max_concurrent: int = 4
    backend: str = "auto"
    precision: str = "auto"
    threads: int = 0
    max_input_chars: int = 4096
    bundle_path: str | None = None
    copy_bundle: bool = False
    execution_env: str | None = None
    allow_numpy2: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.model_name):
            raise TritonRepoError(f"model name {self.model_name!r} is not a usable folder name; use letters, digits, "
                                  "'_', '.', '-'")
        if isinstance(self.instances, bool) or not isinstance(self.instances, int) or self.instances < 1:
            raise TritonRepoError(f"--instances must be an integer >= 1, got {self.instances!r}")
        if self.bundle_path is not None and self.copy_bundle:
            raise TritonRepoError("give --bundle-path or --copy-bundle, not both (a copied bundle is found "
                                  "relative to the model)")


@dataclass(frozen=True)
class RepoReport:
    repo: Path
    model_dir: Path
    bundle: str  # as written into config.pbtxt
    config: str  # the config.pbtxt text

    def summary(self) -> str:
        return (f"Triton model repository {self.repo}: model {self.model_dir.name} (config.pbtxt, 1/model.py), "
                f"bundle {self.bundle}\n"
                f"start it: tritonserver --model-repository={self.repo.resolve()} (docs/triton.md)")


def render_config(options: RepoOptions, params: ModelParams) -> str:
    """config.pbtxt for the model, from the specs in :mod:`.protocol` and the options."""
    lines = [f"{CONFIG_MARKER} {__version__}; regenerate rather than edit",
             f"name: {_q(options.model_name)}",
             'backend: "python"',
             "max_batch_size: 0  # one request is one stream; the Synthesizer shares its CPU budget across them",
             "model_transaction_policy { decoupled: true }  # one response per audio chunk, then the final flag",
             "input ["]
    lines += _tensors(INPUTS)
    lines += ["]", "output ["]
    lines += _tensors(OUTPUTS)
    lines += ["]", f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]"]
    values = {**params.to_parameters(), "sambert_deploy_version": __version__}
    if options.execution_env:
        values["EXECUTION_ENV_PATH"] = options.execution_env
    for key, value in values.items():
        lines.append(f"parameters: {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(lines) + "\n"


def _tensors(specs: tuple[TensorSpec, ...]) -> list[str]:
    out = []
    for i, t in enumerate(specs):
        dims = ", ".join(str(d) for d in t.dims)
        body = f"name: {_q(t.name)} data_type: {t.data_type} dims: [ {dims} ]" + (" optional: true" if t.optional
                                                                                  else "")
        out.append(f"  {{ {body} }}{',' if i < len(specs) - 1 else ''}  # {t.doc}")
    return out


def _q(value: str) -> str:
    # Protobuf text format takes UTF-8 in quotes with C escapes, which json.dumps writes for \\ \" \n.
    return json.dumps(value, ensure_ascii=False)


def write_repo(bundle: str | Path, out: str | Path, options: RepoOptions | None = None) -> RepoReport:
    """Write the model repository for ``bundle`` to ``out``; returns what was written."""
    o = options or RepoOptions()
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)  # a missing or broken bundle is named now, not when the server starts
    if o.copy_bundle:
        bundle_value = "bundle"
    elif o.bundle_path is not None:
        bundle_value = o.bundle_path
    else:
        bundle_value = str(bundle.resolve())
    params = ModelParams(bundle=bundle_value, backend=o.backend, precision=o.precision, threads=o.threads,
                         max_concurrent=o.max_concurrent, max_input_chars=o.max_input_chars,
                         allow_numpy2=o.allow_numpy2)
    from ...runtime.placement import PlacementRequest, host_facts, plan_placement

    # The Synthesizer's own placement of every voice, as the model will plan it: a bad backend, precision
    # or thread count is the error the server would give, before anything is written.
    request = PlacementRequest(backend=o.backend, precision=o.precision, threads=o.threads)
    plan_placement(manifest, request, host_facts())
    _check_output(out, o.force)
    config = render_config(o, params)
    tmp = _staging(out)
    try:
        model_dir = tmp / o.model_name
        version = model_dir / "1"
        version.mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(config, "utf-8")
        shutil.copyfile(MODEL_FILE, version / "model.py")
        if o.copy_bundle:
            shutil.copytree(bundle, version / "bundle")
        _move_into_place(tmp, out, o.force)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise TritonRepoError(f"cannot write the repository {out} ({e.strerror or e}); check free space and "
                                  "permissions, or choose another -o path") from None
        raise
    return RepoReport(out, out / o.model_name, bundle_value, config)


def _is_our_repo(path: Path) -> bool:
    configs = list(path.glob("*/config.pbtxt"))
    if not configs:
        return False
    try:
        return all(c.read_text("utf-8").startswith(CONFIG_MARKER) for c in configs)
    except (OSError, UnicodeDecodeError):
        return False


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TritonRepoError(f"output {out} exists and is not a directory; choose another -o path")
    if out.is_dir() and any(out.iterdir()):
        if not _is_our_repo(out):
            raise TritonRepoError(f"output {out} is not empty and is not a repository written by triton-repo; "
                                  "refusing to touch it, even with --force: choose an empty or new -o path")
        if not force:
            raise TritonRepoError(f"output {out} already holds a model repository; pass --force to replace it or "
                                  "choose another -o path")


def _staging(out: Path) -> Path:
    try:
        return staging_beside(out)
    except OSError as e:
        raise TritonRepoError(f"output {out} is not writable ({e.strerror}); choose a writable -o path") from None


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``; a previous repository there is removed only once the new one is in."""
    _check_output(out, force)  # again: the folder may have changed meanwhile
    try:
        swap_into_place(tmp, out)
    except OSError as e:
        raise TritonRepoError(f"could not move the new repository {tmp} to {out} ({e.strerror}); the previous one, "
                              "if any, is unchanged: check permissions on the -o folder and retry") from None
