"""Issue 10 item 4: a signature is bound to its repository (and appliance).

Repository A's signed `v1` (the same tag object, signed by a key repository B also trusts) is
pushed into B with stock git through gunicorn: refused, whether or not B requires signatures,
and B's store is unchanged. A tag signed without a binding is never shown as verified. The
utility refuses A's signed tag when a server serves it under another repository's URL. Signature
blocks are found the way git finds them (the last marker line), so an SSH-signed tag whose
message quotes a PGP armour line verifies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from dulwich.objects import Tag
from hypothesis import given
from hypothesis import strategies as st

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.signatures import binding, split_signature
from reposerver.tag_signing import sign_payload
from reposerver.testing import running_server, sample_appliance
from reposerver.trust import add_ssh_signer, set_require_signed
from tests.security.sec_web_support import clone, git, store_state
from utility.adapters.trust_policy import TrustPolicy
from utility.errors import TrustRefused

SSH_BLOCK = b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"
PGP_LINE = "-----BEGIN PGP SIGNATURE-----"


def ssh_key(path: Path, principal: str) -> str:
    """A new ed25519 key at `path`; its allowed_signers line."""
    git_free = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(path)]
    import subprocess

    subprocess.run(git_free, check=True, capture_output=True)
    kind, key, *_ = Path(f"{path}.pub").read_text().split()
    return f"{principal} {kind} {key}"


def ssh_tag(work: Path, key: Path, message: str, tag: str = "v1") -> None:
    """`git tag -s` with git's own SSH signing (gpg.format=ssh)."""
    git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "tag", "-s", "-m", message, tag,
        cwd=work)  # fmt: skip


@pytest.fixture
def two_repositories(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Repositories A (v1 signed by `cui publish --sign`) and B (empty), one trusted key."""
    root = tmp_path / "root"
    root.mkdir()
    key = tmp_path / "publisher"
    signer = ssh_key(key, "publisher@example.org")
    a, b = Repository.create(root / "A"), Repository.create(root / "B")
    for repo in (a, b):
        add_ssh_signer(repo.path, signer)
    publish(a.path, sample_appliance(tmp_path / "app", "DNS"), sign=str(key))
    yield root, a, b, key, signer


@pytest.mark.parametrize("b_requires_signed", [True, False])
def test_repository_a_signed_tag_is_refused_by_repository_b(
    two_repositories, tmp_path: Path, b_requires_signed: bool
) -> None:
    root, a, b, _, _ = two_repositories
    assert a.version(1).signer == "publisher@example.org (ssh)"
    set_require_signed(b.path, b_requires_signed)
    with running_server(root) as server:
        work = clone(server, "A", tmp_path / "work")
        before = store_state(b.path)
        pushed = git("push", server.push_url("B"), "main", "v1", cwd=work, check=False)
        assert pushed.returncode != 0
        assert "signed for repository 'A', not 'B'" in pushed.stderr, pushed.stderr
        assert store_state(b.path) == before
        assert requests.get(server.url + "/B/").json()["versions"] == []


def test_unbound_signature_is_not_verified_and_refused_where_signing_is_required(
    two_repositories, tmp_path: Path
) -> None:
    root, _, b, key, _ = two_repositories
    with running_server(root) as server:
        work = clone(server, "A", tmp_path / "work")
        git("tag", "-d", "v1", cwd=work)
        ssh_tag(work, key, "v1 without a binding")
        set_require_signed(b.path, True)
        before = store_state(b.path)
        refused = git("push", server.push_url("B"), "main", "v1", cwd=work, check=False)
        assert refused.returncode != 0 and "names no repository" in refused.stderr
        assert store_state(b.path) == before
        set_require_signed(b.path, False)
        git("push", server.push_url("B"), "main", "v1", cwd=work)
        version = requests.get(server.url + "/B/").json()["versions"][0]
        assert version["signed"] is True and version["signer"] is None
        page = requests.get(server.url + "/B/", headers={"Accept": "text/html"}).text
        assert "publisher@example.org" not in page


def test_ssh_signed_tag_quoting_a_pgp_armour_line_verifies(two_repositories, tmp_path) -> None:
    root, _, b, key, _ = two_repositories
    set_require_signed(b.path, True)
    message = (
        f"Release notes quote an armour line:\n{PGP_LINE}\nwhich is not our signature.\n\n"
        "Collective-Repository: B\nCollective-Appliance: DNS\n"
    )
    with running_server(root) as server:
        work = clone(server, "A", tmp_path / "work")
        git("tag", "-d", "v1", cwd=work)
        ssh_tag(work, key, message)
        signers = tmp_path / "allowed_signers"
        shutil.copy(b.path / "trust" / "allowed_signers", signers)
        verified = git("-c", f"gpg.ssh.allowedSignersFile={signers}", "tag", "-v", "v1", cwd=work)
        assert "Good" in verified.stderr
        git("push", server.push_url("B"), "main", "v1", cwd=work)
    assert Repository(b.path).version(1).signer == "publisher@example.org (ssh)"


def test_utility_refuses_a_signed_tag_served_under_another_repository(
    two_repositories, tmp_path: Path
) -> None:
    """A hostile server serves A's signed content as repository Mirror: the utility, which
    checks the binding against the URL it subscribed to, refuses it; A itself passes."""
    root, a, _, _, signer = two_repositories
    shutil.copytree(a.path, root / "Mirror")
    policy = TrustPolicy(tmp_path / "state")
    with running_server(root) as server:
        for name in ("A", "Mirror"):
            policy.set_require_signed(f"{server.url}/{name}", True)
            policy.add_key(f"{server.url}/{name}", signer)
        session = policy.session()
        assert session.release(f"{server.url}/A", "1") is not None
        with pytest.raises(TrustRefused, match="signed for repository 'A', not 'Mirror'"):
            session.release(f"{server.url}/Mirror", "1")


_line = st.one_of(
    st.sampled_from([PGP_LINE, "-----BEGIN SSH SIGNATURE-----x", "-----BEGIN PGP MESSAGE-----"]),
    st.text(
        alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
        max_size=40,
    ),
)


@given(st.lists(_line, max_size=12))
def test_the_last_marker_line_starts_the_signature_like_git(lines: list[str]) -> None:
    payload = ("object 0\ntype commit\ntag v1\n\n" + "".join(f"{x}\n" for x in lines)).encode()
    assert split_signature(payload + SSH_BLOCK) == (payload, SSH_BLOCK, "ssh")


_names = st.characters(blacklist_characters="\n:", blacklist_categories=("Cs",))


@given(st.text(alphabet=_names, min_size=1, max_size=30))
def test_binding_trailers_round_trip(name: str) -> None:
    clean = name.strip()
    message = f"tag v1\n\nnotes\n\nCollective-Repository: {name}\nCollective-Appliance: X\n"
    bound = binding(message.encode())
    assert bound.repository == (clean or None) and bound.appliance == "X"


def test_utility_refuses_a_signed_tag_bound_to_another_appliance(
    two_repositories, tmp_path: Path
) -> None:
    """A hostile server whose repository Evil holds a tag (validly signed by the trusted key,
    bound to repository Evil) naming appliance Other over A's commit: the utility's check of
    the signed CVL text refuses it; A's own tag and text pass."""
    root, a, _, key, signer = two_repositories
    evil = Repository(Path(shutil.copytree(a.path, root / "Evil")))
    original = evil.tag(1)
    tag = Tag()
    tag.object = original.object
    tag.name, tag.tagger, tag.tag_time, tag.tag_timezone = b"v1", b"x <x@x>", 0, 0
    tag.message = b"Version 1\n\nCollective-Repository: Evil\nCollective-Appliance: Other\n"
    tag.signature = sign_payload(tag.as_raw_string(), str(key))
    evil.git.object_store.add_object(tag)
    evil.git.refs[b"refs/tags/v1"] = tag.id
    text = a.file(1, "DNS.cvl").data.decode()
    policy = TrustPolicy(tmp_path / "state")
    with running_server(root) as server:
        for name in ("A", "Evil"):
            policy.set_require_signed(f"{server.url}/{name}", True)
            policy.add_key(f"{server.url}/{name}", signer)
        session = policy.session()
        assert session.cvl_problems([(f"{server.url}/A", "DNS.cvl", "1", text)]) == []
        [problem] = session.cvl_problems([(f"{server.url}/Evil", "DNS.cvl", "1", text)])
    assert "signed for appliance 'Other', but DNS.cvl defines 'DNS'" in problem
