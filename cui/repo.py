"""`cui` commands for appliance repositories: create, publish, serve, versions, trust, token."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _human(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n, precision=2)


@click.command("create")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--require-signed", is_flag=True, help="Accept only versions with trusted signed tags."
)
def create_cmd(path: Path, require_signed: bool) -> None:
    """Create an empty appliance repository at PATH."""
    from reposerver.repo_config import RepoConfig
    from reposerver.repository import Repository

    repo = Repository.create(path, RepoConfig(require_signed=require_signed))
    click.echo(f"created repository {repo.path}")


@click.command("publish")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("cvl_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--sign", "key", help="GPG key id, or path of an SSH private key, to sign the tag.")
@click.option("-m", "--message", help="Tag and commit message.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def publish_cmd(
    path: Path, cvl_file: Path, key: str | None, message: str | None, as_json: bool
) -> None:
    """Publish CVL_FILE (with its domain XML and program disks) as the next version of PATH."""
    from reposerver.publish import publish

    result = publish(path, cvl_file, sign=key, message=message)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "version": result.version,
                    "commit": result.commit,
                    "signed": result.signed,
                    "stored_bytes": result.stored_bytes,
                    "image_bytes": result.image_bytes,
                    "disks": [d.__dict__ for d in result.disks],
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"published v{result.version} ({'signed' if result.signed else 'unsigned'}) "
        f"commit {result.commit[:12]}"
    )
    for disk in result.disks:
        how = f"overlay on {disk.parent[:12]}" if disk.parent else "base image"
        click.echo(
            f"  {disk.name}: stored {_human(disk.stored_bytes)} of a "
            f"{_human(disk.image_bytes)} image ({how}, sha256 {disk.sha256[:12]})"
        )
    click.echo(
        f"stored {_human(result.stored_bytes)} new bytes; a full copy would take "
        f"{_human(result.image_bytes)}"
    )


@click.command("serve")
@click.argument("root", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Server config JSON (users, subscribers, read protection).",
)
def serve_cmd(root: Path, host: str, port: int, config_file: Path | None) -> None:
    """Serve every repository under ROOT over HTTP (development server; production: gunicorn)."""
    from reposerver import create_app

    config = json.loads(config_file.read_text()) if config_file else {}
    config["root"] = str(root)
    create_app(config).run(host=host, port=port, threaded=True)


@click.command("versions")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True)
def versions_cmd(url: str, as_json: bool) -> None:
    """List the versions of the repository at URL (http(s)://HOST/NAME or a directory)."""
    from reposerver.client import open_repository

    versions = open_repository(url).versions()
    if as_json:
        click.echo(json.dumps(versions, indent=2))
        return
    for v in versions:
        signer = v["signer"] or ("signed, untrusted" if v["signed"] else "unsigned")
        click.echo(f"v{v['number']:<5} {v['commit'][:12]}  {signer}")


@click.command("fetch")
@click.argument("url")
@click.argument("version_and_dir", nargs=-1, required=True, metavar="[VERSION] DIR")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def fetch_cmd(url: str, version_and_dir: tuple[str, ...], as_json: bool) -> None:
    """Write version VERSION (default latest) of URL into DIR for stock tools.

    DIR gets the version's files (domain XML with absolute disk paths, for `virsh define`) and,
    per program disk, a qcow2 file of its name over the verified chain in DIR/objects (for
    `qemu-img info --backing-chain`).
    """
    from reposerver.client import open_repository
    from reposerver.export import export_version

    if len(version_and_dir) > 2:
        raise click.UsageError("expected URL [VERSION] DIR")
    version = None
    if len(version_and_dir) == 2:
        text = version_and_dir[0].removeprefix("v")
        if not text.isdigit():
            raise click.UsageError(f"VERSION must be a number like 3 or v3, not {text!r}")
        version = int(text)
    result = export_version(open_repository(url), version, Path(version_and_dir[-1]))
    if as_json:
        data = {**result.__dict__, "directory": str(result.directory)}
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"v{result.version} in {result.directory}: disks {', '.join(result.disks) or '-'}; "
        f"files {', '.join(result.files)}"
    )


@click.command("trust")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--gpg-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Armored GPG public key file to trust.",
)
@click.option("--ssh-signer", help="An allowed_signers line: 'PRINCIPAL KEYTYPE KEY'.")
@click.option("--require-signed/--allow-unsigned", default=None)
def trust_cmd(
    path: Path, gpg_key: Path | None, ssh_signer: str | None, require_signed: bool | None
) -> None:
    """Change the trust policy of the repository at PATH."""
    from reposerver.trust import add_gpg_key, add_ssh_signer, set_require_signed

    if gpg_key:
        click.echo(f"trusting GPG key file {add_gpg_key(path, gpg_key.read_text()).name}")
    if ssh_signer:
        add_ssh_signer(path, ssh_signer)
        click.echo("added SSH signer")
    if require_signed is not None:
        set_require_signed(path, require_signed)
        click.echo("signed versions are " + ("required" if require_signed else "optional"))


@click.command("token")
def token_cmd() -> None:
    """Make a push token: print it once, and the digest to put in the server config."""
    from reposerver.auth import new_token, token_digest

    token = new_token()
    click.echo(f"token:        {token}\ntoken_sha256: {token_digest(token)}")


def _resolvable_parent(parent: Path, parent_id: str) -> Path:
    """`parent`, or the same object under the checkout's `.git/lfs/objects` when `parent` is an
    overlay whose store-relative backing name does not resolve beside it (a `git lfs pull`
    checkout or a download). Refuses with what to do when neither works."""
    from reposerver.errors import InvalidAppliance
    from reposerver.objects import object_relpath
    from reposerver.qcow2 import checked_parent

    try:
        below = checked_parent(parent)
    except Exception as exc:  # noqa: BLE001 - our own parser's refusal, said plainly
        raise InvalidAppliance(f"{parent}: not a usable published disk: {exc}") from None
    if below is None or (parent.resolve().parent / "../.." / object_relpath(below)).is_file():
        return parent
    for directory in parent.resolve().parents:
        candidate = directory / ".git" / "lfs" / "objects" / object_relpath(parent_id)
        if candidate.is_file():
            deeper = candidate.parent / "../.." / object_relpath(below)
            if deeper.is_file():
                return candidate
            break
    raise InvalidAppliance(
        f"{parent} is an overlay of sha256:{below[:12]}, which is not next to it: run "
        "`git lfs fetch --all` in the checkout (cui delta then reads the chain from "
        ".git/lfs/objects), or `cui fetch URL VERSION DIR` and give DIR/objects/…/<sha256>"
    )


@click.command("delta")
@click.argument("parent", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
def delta_cmd(parent: Path, image: Path, out: Path) -> None:
    """Write OUT: IMAGE as an overlay over PARENT (a disk object of the previous version).

    For publishers who push with git: PARENT is the previous version's disk object as git-lfs
    checked it out (byte-identical to the stored object); commit OUT in its place and push. The
    server stores only the changed clusters and checks that PARENT's object is in the repository.
    When the previous version is itself an overlay, its backing chain must resolve: after
    `git lfs fetch --all` the checked-out file is enough (the chain is read from the
    checkout's `.git/lfs/objects/`, the `ab/cd/<sha256>` layout the references use).
    """
    import os
    import tempfile

    from reposerver.disks import write_delta
    from reposerver.objects import hash_file

    parent_id, _ = hash_file(parent)
    parent = _resolvable_parent(parent, parent_id)
    fd, tmp = tempfile.mkstemp(dir=out.resolve().parent, prefix=".cui-delta-")
    os.close(fd)
    os.unlink(tmp)
    try:
        write_delta(image, parent, parent_id, Path(tmp))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    click.echo(
        f"wrote {out}: {_human(out.stat().st_size)} over sha256:{parent_id[:12]} "
        f"(the full image is {_human(image.stat().st_size)})"
    )


@click.command("subscribe")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("url")
@click.option(
    "--secret-env",
    required=True,
    help="Environment variable holding the HMAC secret (the secret itself never goes to disk).",
)
def subscribe_cmd(path: Path, url: str, secret_env: str) -> None:
    """Send an HMAC-signed event to URL whenever the repository at PATH gets a new version."""
    from reposerver.trust import add_subscriber

    add_subscriber(path, url, secret_env)
    click.echo(f"{url} will receive publish events (secret from ${secret_env})")


def register(cli: click.Group) -> None:
    """Attach the repository commands to the `cui` group."""
    for command in (
        create_cmd, publish_cmd, serve_cmd, versions_cmd, trust_cmd, token_cmd, delta_cmd,
        subscribe_cmd, fetch_cmd,
    ):  # fmt: skip
        cli.add_command(command)
