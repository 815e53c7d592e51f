"""The user's encrypted secret cache, and the grep test: sensitive values never reach a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utility.adapters.simulation import publisher_domain_xml, simulated_host_uri
from utility.client import secret_cache
from utility.errors import CheckFailed, SecretCacheError
from utility.service.manager import Caller, ClusterManager

SECRET = "Xyzzy-S3cret-4711"


def test_values_round_trip_and_the_file_holds_no_clear_text(tmp_path: Path) -> None:
    path = tmp_path / "agent.enc"
    cache = secret_cache.SecretCache(path, "pw")
    cache.set("/a.cvl#rootpw", SECRET)
    cache.save()
    raw = path.read_bytes()
    assert SECRET.encode() not in raw and b"rootpw" not in raw
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(raw)["kdf"]["name"] == "scrypt"
    assert secret_cache.SecretCache(path, "pw").get("/a.cvl#rootpw") == SECRET


def test_wrong_password_and_tampering_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "agent.enc"
    cache = secret_cache.SecretCache(path, "right")
    cache.set("k", "v")
    cache.save()
    with pytest.raises(SecretCacheError, match="wrong password, or the file was altered"):
        secret_cache.SecretCache(path, "wrong")
    blob = json.loads(path.read_bytes())
    data = bytearray(__import__("base64").b64decode(blob["data"]))
    data[0] ^= 1
    blob["data"] = __import__("base64").b64encode(bytes(data)).decode()
    path.write_text(json.dumps(blob))
    with pytest.raises(SecretCacheError, match="altered"):
        secret_cache.SecretCache(path, "right")
    path.write_text("garbage")
    with pytest.raises(SecretCacheError, match="not an agent cache file"):
        secret_cache.SecretCache(path, "right")


@settings(max_examples=5, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=4))
def test_any_values_survive_encryption(
    tmp_path_factory: pytest.TempPathFactory, values: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("agent") / "c.enc"
    cache = secret_cache.SecretCache(path, "pw")
    for k, v in values.items():
        cache.set(k, v)
    cache.save()
    again = secret_cache.SecretCache(path, "pw")
    assert {k: again.get(k) for k in values} == values


def test_obtain_uses_cache_then_environment_then_asks_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cvl = tmp_path / "S.cvl"
    cache = secret_cache.SecretCache(tmp_path / "agent.enc", "pw")
    monkeypatch.setenv("COLLECTIVE_SECRET_L_ROOTPW", "from-env")
    asked: list[str] = []
    got = secret_cache.obtain(
        cache, cvl, ["l.rootpw", "password"], lambda k: asked.append(k) or "typed"
    )
    assert got == {"l.rootpw": "from-env", "password": "typed"} and asked == ["password"]
    monkeypatch.delenv("COLLECTIVE_SECRET_L_ROOTPW")
    again = secret_cache.SecretCache(tmp_path / "agent.enc", "pw")
    assert secret_cache.obtain(again, cvl, ["l.rootpw", "password"], lambda k: "never") == got
    with pytest.raises(SecretCacheError, match="no value given for sensitive parameter x"):
        secret_cache.obtain(again, cvl, ["x"], lambda k: "")


def test_only_the_referenced_sensitive_parameter_is_asked_for(tmp_path: Path) -> None:
    from utility.adapters.cvl_adapter import missing_sensitive_paths

    (tmp_path / "x.cvl").write_text(
        'CVL = "0.8";\nS extends VMAppliance {\n  var "required" "sensitive" pw, copy;\n'
        '  var "sensitive" optional;\n  copy = pw;\n  vm = "s.xml";\n}\n'
    )
    assert missing_sensitive_paths(tmp_path / "x.cvl") == ["pw"]


def test_grep_sensitive_value_reaches_no_file_under_state_or_disk_dirs(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "s.vmx").write_text(publisher_domain_xml("secret", 64))
    __import__("utility.adapters.simulation", fromlist=["base_image"]).base_image(
        apps / "system.qcow2"
    )
    cvl = apps / "Secret.cvl"
    cvl.write_text(
        'Secret extends VMAppliance {\n  var "required" "sensitive" rootpw;\n'
        '  var greeting;\n  greeting = rootpw;\n  vm = "s.vmx";\n'
        '  datadisks = { device => "vdb", size => "1mb" };\n}\n'
    )
    manager = ClusterManager(tmp_path / "state")
    admin = Caller("root", "admin")
    manager.add_host(admin, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 4)
    manager.add_vlans(admin, "100-101")
    manager.add_public_ips(admin, "192.0.2.1-192.0.2.2")
    with pytest.raises(CheckFailed, match="required parameter rootpw has no value"):
        manager.start(admin, str(cvl))
    result = manager.start(admin, str(cvl), {"rootpw": SECRET})
    params = result["components"][0]["params"]
    assert params["rootpw"] == ["********"] and params["greeting"] == ["********"]
    manager.stop(admin, str(cvl))
    manager.start(admin, str(cvl), {"rootpw": SECRET})
    manager.close()
    files = [p for d in (tmp_path / "state", apps) for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".qcow2" for p in files) and any("sqlite" in p.name for p in files)
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
