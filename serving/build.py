"""Build the service's Bento with the MLflow champion inside: `python -m serving.build`.

Steps (DESIGN decision 6: the service needs no tracking server once built):

1. copy the version behind the alias (default `champion`) from the MLflow registry into the
   BentoML model store, exactly as `ketapredict serve` does (`serving.bento_store.import_alias`);
2. regenerate `bento-requirements.txt` from `uv.lock` (the project's runtime dependencies, no
   dev or spark groups), so the image installs what the lock pins;
3. run `bentoml build` on `bentofile.yaml` with `KETAPREDICT_MODEL_TAG` set to the exact tag
   imported in step 1. `serving.service` declares its model at class scope from that variable,
   so the Bento lists that model, and `bentoml containerize` copies it into the image. The tag
   also goes into the Bento's `envs` (an `ENV` line of the image, so the container serves that
   model) and the registry version and run id into its labels.

MLflow is found as everywhere else: `MLFLOW_TRACKING_URI`, else `./mlruns` under the working
directory. The BentoML stores are under `BENTOML_HOME` (default `~/bentoml`). BentoML's image
step calls `uv`, so uv must be on PATH; `make setup` installs it into `.tools/bin`, which is
added to PATH here when present.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENTOFILE = "bentofile.yaml"
REQUIREMENTS = "bento-requirements.txt"
MODEL_TAG_ENV = "KETAPREDICT_MODEL_TAG"
UV_EXPORT = (
    "export",
    "--frozen",
    "--no-default-groups",
    "--no-emit-project",
    "--no-hashes",
    "--no-annotate",
    "--no-header",
)
_QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
}
REQUIREMENTS_HEADER = (
    "# Generated from uv.lock by `python -m serving.build --requirements-only`\n"
    f"# (uv {' '.join(UV_EXPORT)}); do not edit. Read by bentofile.yaml.\n"
)


@dataclass(frozen=True)
class BuiltBento:
    """What was built: the Bento tag and the model inside it."""

    tag: str
    model_tag: str
    registered_model: str
    registered_version: str
    run_id: str
    alias: str


def find_uv() -> str | None:
    """`uv` on PATH, else the copy `make setup` installs into .tools/bin."""
    found = shutil.which("uv")
    if found:
        return found
    local = ROOT / ".tools" / "bin" / "uv"
    return str(local) if local.is_file() else None


def requirements_text(uv: str, context: Path = ROOT) -> str:
    """The runtime requirements pinned by `uv.lock`, as bento-requirements.txt holds them."""
    done = subprocess.run(
        [uv, *UV_EXPORT], cwd=context, capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"uv export failed:\n{done.stderr.strip()}")
    return REQUIREMENTS_HEADER + done.stdout


def refresh_requirements(uv: str, context: Path = ROOT) -> bool:
    """Rewrite bento-requirements.txt when uv.lock changed; True if the file was written."""
    path = context / REQUIREMENTS
    text = requirements_text(uv, context)
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def _bentofile(source: Path, model_tag: str, labels: dict[str, str], out: Path) -> Path:
    """A copy of bentofile.yaml with the model tag pinned in `envs` and the labels added."""
    config = yaml.safe_load(source.read_text())
    config["labels"] = {**config.get("labels", {}), **labels}
    envs = [e for e in config.get("envs", []) if e.get("name") != MODEL_TAG_ENV]
    config["envs"] = [*envs, {"name": MODEL_TAG_ENV, "value": model_tag}]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _bentoml_env(uv: str, model_tag: str) -> dict[str, str]:
    path = os.pathsep.join([str(Path(uv).parent), os.environ.get("PATH", "")])
    return {**os.environ, **_QUIET, "PATH": path, MODEL_TAG_ENV: model_tag}


def build_bento(
    alias: str = "champion",
    *,
    version: str | None = None,
    context: Path = ROOT,
    refresh: bool = True,
) -> BuiltBento:
    """Import the model behind `alias` and build the Bento around it.

    Raises:
        LookupError: the alias is not set in the registry (nothing has passed the gate).
        RuntimeError: uv is missing, or `uv export` or `bentoml build` failed.
    """
    import bentoml  # noqa: PLC0415 (keeps `--help` and `--requirements-only` light)

    from serving import registry  # noqa: PLC0415
    from serving.bento_store import import_alias  # noqa: PLC0415

    if not (context / BENTOFILE).is_file():
        raise RuntimeError(f"no {BENTOFILE} in {context}: build from a source checkout")
    uv = find_uv()
    if uv is None:
        raise RuntimeError("bentoml build needs uv on PATH (`make setup` puts it in .tools/bin)")
    registry.configure_uri_only()
    if registry.registry_version(alias) is None:
        raise LookupError(
            f"no '{alias}' version in the registry: train until a version passes the gate, "
            f"or promote one with `ketapredict promote VERSION --alias {alias} --reason TEXT`"
        )
    model_tag = str(import_alias(alias))
    meta = bentoml.models.get(model_tag).info.metadata
    labels = {
        "model_tag": model_tag,
        "registered_model": registry.REGISTERED_MODEL,
        "registered_version": str(meta["mlflow_version"]),
        "mlflow_run_id": str(meta["mlflow_run_id"]),
        "alias": alias,
    }
    if refresh:
        refresh_requirements(uv, context)
    bentoml_exe = str(Path(sys.executable).with_name("bentoml"))
    with tempfile.TemporaryDirectory(prefix="ketapredict-bento-") as tmp:
        bentofile = _bentofile(context / BENTOFILE, model_tag, labels, Path(tmp) / BENTOFILE)
        cmd = [bentoml_exe, "build", str(context), "-f", str(bentofile), "-o", "tag"]
        if version:
            cmd += ["--version", version]
        done = subprocess.run(
            cmd,
            cwd=context,
            env=_bentoml_env(uv, model_tag),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    tags = [
        ln.split("__tag__:", 1)[1].strip() for ln in done.stdout.splitlines() if "__tag__:" in ln
    ]
    if done.returncode != 0 or not tags:
        raise RuntimeError(f"bentoml build failed:\n{done.stdout}\n{done.stderr}".strip())
    return BuiltBento(
        tag=tags[-1],
        model_tag=model_tag,
        registered_model=labels["registered_model"],
        registered_version=labels["registered_version"],
        run_id=labels["mlflow_run_id"],
        alias=alias,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.build", description=__doc__.splitlines()[0])
    p.add_argument("--alias", default="champion", choices=("champion", "challenger"))
    p.add_argument("--version", default=None, help="Bento version (default: generated)")
    p.add_argument(
        "--frozen-requirements",
        action="store_true",
        help=f"use {REQUIREMENTS} as it is instead of regenerating it from uv.lock",
    )
    p.add_argument(
        "--requirements-only",
        action="store_true",
        help=f"only regenerate {REQUIREMENTS} from uv.lock",
    )
    args = p.parse_args(argv)
    for name, value in _QUIET.items():  # as `ketapredict` does: offline, no progress bars
        os.environ.setdefault(name, value)
    try:
        if args.requirements_only:
            uv = find_uv()
            if uv is None:
                raise RuntimeError("uv not found on PATH or in .tools/bin")
            changed = refresh_requirements(uv)
            sys.stdout.write(f"{REQUIREMENTS} {'updated' if changed else 'up to date'}\n")
            return 0
        built = build_bento(args.alias, version=args.version, refresh=not args.frozen_requirements)
    except (LookupError, RuntimeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(
        f"built {built.tag} with {built.model_tag} "
        f"({built.registered_model} version {built.registered_version}, {built.alias})\n"
        f"  bentoml containerize {built.tag}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
