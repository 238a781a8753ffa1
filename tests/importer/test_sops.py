"""SOPS + age, as Flux decrypts: a repository encrypted by the test itself with a freshly
generated age key (``age-keygen``) and the real ``sops``; decrypted where a Kustomization says
``decryption.provider: sops``, fed to ``substituteFrom``, never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homeplane.importer.repo import load_repo
from homeplane.importer.sops import Decryptor, sops_binary, user_identities

CLUSTER_SECRETS = """\
apiVersion: v1
kind: Secret
metadata:
  name: cluster-secrets
  namespace: flux-system
stringData:
  SECRET_DOMAIN: sops.example
"""

APP_TOKEN = """\
# the app's token
apiVersion: v1
kind: Secret
metadata:
  name: app-token
stringData:
  TOKEN: s3cr3t-t0ken-value
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app}
spec:
  hostnames: ["app.${SECRET_DOMAIN}"]
  rules: [{backendRefs: [{name: app, port: 80}]}]
"""

FLUX = """\
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: cluster-vars, namespace: flux-system}
spec:
  path: ./kubernetes/vars
  decryption: {provider: sops, secretRef: {name: sops-age}}
  sourceRef: {kind: GitRepository, name: flux-system}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: cluster-apps, namespace: flux-system}
spec:
  path: ./kubernetes/apps
  decryption: {provider: sops, secretRef: {name: sops-age}}
  postBuild:
    substituteFrom: [{kind: Secret, name: cluster-secrets}]
  sourceRef: {kind: GitRepository, name: flux-system}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: no-decryption, namespace: flux-system}
spec:
  path: ./kubernetes/plain
  sourceRef: {kind: GitRepository, name: flux-system}
"""


KUSTOMIZE = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


def encrypt(path: Path, recipient: str) -> None:
    binary = sops_binary()
    assert binary, "sops is installed with the package (sops-binary)"
    subprocess.run([binary, "encrypt", "--age", recipient, "--encrypted-regex", "^(data|stringData)$", "-i", str(path)],
                   check=True, capture_output=True, env={"PATH": os.environ["PATH"]})


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the repo's kubernetes/ folder, the right key file, a key file for someone else)."""
    tmp = tmp_path_factory.mktemp("sops")
    key, other = tmp / "age.key", tmp / "other.key"
    recipient = keygen(key)
    keygen(other)
    k = tmp / "repo" / "kubernetes"
    files = {
        "flux/cluster/ks.yaml": FLUX,
        "vars/kustomization.yaml": KUSTOMIZE + "resources: [cluster-secrets.sops.yaml]\n",
        "vars/cluster-secrets.sops.yaml": CLUSTER_SECRETS,
        # a kustomize namespace and label: transformations of the encrypted object
        "apps/kustomization.yaml": KUSTOMIZE + "namespace: selfhosted\nlabels: [{pairs: {app: demo}}]\n"
                                   "resources: [route.yaml, app-token.sops.yaml]\n",
        "apps/route.yaml": ROUTE,
        "apps/app-token.sops.yaml": APP_TOKEN,
        "plain/kustomization.yaml": KUSTOMIZE + "resources: [other.sops.yaml]\n",
        "plain/other.sops.yaml": APP_TOKEN.replace("app-token", "other-token"),
    }
    for name, text in files.items():
        p = k / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if name.endswith(".sops.yaml"):
            encrypt(p, recipient)
            assert "s3cr3t" not in p.read_text() and "sops.example" not in p.read_text()
    return k, key, other


def _obj(result, kind: str, name: str):
    found = [o for o in result.objects if o.kind == kind and o.name == name]
    assert found, f"{kind} {name} not loaded"
    return found[0]


def _codes(result) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in result.diagnostics:
        out.setdefault(d.code, []).append(d.message)
    return out


def test_decrypted_as_flux_does_with_the_users_key(repo: tuple[Path, Path, Path]) -> None:
    k, key, _ = repo
    r = load_repo(k, {}, decryptor=Decryptor(user_identities([key], environ={})))
    assert not r.diagnostics.errors, [d.message for d in r.diagnostics.errors]
    # substituteFrom reads the decrypted cluster-secrets
    assert _obj(r, "HTTPRoute", "app").raw["spec"]["hostnames"] == ["app.sops.example"]
    token = _obj(r, "Secret", "app-token")
    assert token.raw["stringData"] == {"TOKEN": "s3cr3t-t0ken-value"}
    assert "sops" not in token.raw
    # the build's transformations stay on the decrypted object
    assert token.namespace == "selfhosted" and token.raw["metadata"]["labels"] == {"app": "demo"}
    # a Kustomization without spec.decryption leaves its object encrypted, and says so
    assert _obj(r, "Secret", "other-token").raw["stringData"]["TOKEN"].startswith("ENC[")
    assert any("no-decryption" in m for m in _codes(r)["DecryptionNotConfigured"])


def test_no_key_leaves_values_to_set(repo: tuple[Path, Path, Path]) -> None:
    k, _, _ = repo
    r = load_repo(k, {"SECRET_DOMAIN": "from-set.example"}, decryptor=Decryptor(()))
    assert not r.diagnostics.errors
    assert _obj(r, "HTTPRoute", "app").raw["spec"]["hostnames"] == ["app.from-set.example"]
    (msg,) = _codes(r)["NotDecrypted"]
    assert "apps/app-token.sops.yaml" in msg and "vars/cluster-secrets.sops.yaml" in msg


def test_wrong_key_is_one_error_naming_file_and_recipient(repo: tuple[Path, Path, Path]) -> None:
    k, key, other = repo
    recipient = subprocess.run(["age-keygen", "-y", str(key)], capture_output=True, text=True).stdout.strip()
    r = load_repo(k, {}, decryptor=Decryptor(user_identities([other], environ={})))
    failed = [d for d in r.diagnostics if d.code == "DecryptionFailed"]
    assert {d.file for d in failed} == {"kubernetes/vars/cluster-secrets.sops.yaml", "kubernetes/apps/app-token.sops.yaml"}
    assert all(recipient in d.message for d in failed) and all(d in r.diagnostics.errors for d in failed)


def test_tampered_file_fails_its_mac(repo: tuple[Path, Path, Path], tmp_path: Path) -> None:
    k, key, _ = repo
    import shutil

    copy = tmp_path / "kubernetes"
    shutil.copytree(k, copy)
    f = copy / "apps/app-token.sops.yaml"
    f.write_text(f.read_text().replace("name: app-token", "name: app-token2"))  # an authenticated value changed
    r = load_repo(copy, {}, decryptor=Decryptor(user_identities([key], environ={})))
    (d,) = [d for d in r.diagnostics if d.code == "DecryptionFailed"]
    assert d.file == "kubernetes/apps/app-token.sops.yaml" and "MAC" in d.message


def test_key_from_the_repos_sops_age_secret(repo: tuple[Path, Path, Path], tmp_path: Path) -> None:
    k, key, _ = repo
    import shutil

    copy = tmp_path / "kubernetes"
    shutil.copytree(k, copy)
    identity = key.read_text()
    (copy / "flux/cluster/sops-age.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: sops-age, namespace: flux-system}\nstringData:\n  age.agekey: |\n"
        + "".join(f"    {ln}\n" for ln in identity.splitlines()))
    r = load_repo(copy, {}, decryptor=Decryptor(()))
    assert _obj(r, "HTTPRoute", "app").raw["spec"]["hostnames"] == ["app.sops.example"]


def test_key_files_and_environment(tmp_path: Path) -> None:
    from homeplane.importer.sops import KeyFileError

    key = tmp_path / "k.txt"
    keygen(key)
    ident = [ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-")]
    assert user_identities([], environ={"SOPS_AGE_KEY_FILE": str(key)}) == ident
    assert user_identities([], environ={"SOPS_AGE_KEY": ident[0]}) == ident
    assert user_identities([], environ={"XDG_CONFIG_HOME": str(tmp_path / "none")}) == []
    (tmp_path / "cfg/sops/age").mkdir(parents=True)
    (tmp_path / "cfg/sops/age/keys.txt").write_text(key.read_text())
    assert user_identities([], environ={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}) == ident
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="no age identity"):
        user_identities([tmp_path / "empty"], environ={})
    with pytest.raises(KeyFileError, match="cannot read"):
        user_identities([tmp_path / "missing"], environ={})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    return subprocess.run([sys.executable, "-m", "homeplane", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_check_get_and_vars_never_print_plaintext(repo: tuple[Path, Path, Path]) -> None:
    k, key, other = repo
    p = _cli("check", str(k), "--age-key", str(key), "-o", "json")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert "s3cr3t" not in p.stdout + p.stderr
    p = _cli("get", "httproutes", "-f", str(k), "--age-key", str(key), "-o", "json")
    assert "app.sops.example" in p.stdout
    p = _cli("get", "secrets", "-f", str(k), "--age-key", str(key), "-o", "yaml")
    assert p.returncode == 0 and "app-token" in p.stdout and "s3cr3t" not in p.stdout + p.stderr
    # a wrong key: exit 1, the file named, nothing of the values
    p = _cli("check", str(k), "--age-key", str(other))
    assert p.returncode == 1 and "app-token.sops.yaml" in p.stdout and "s3cr3t" not in p.stdout + p.stderr
    # an encrypted --vars file
    p = _cli("check", str(k), "--vars", str(k / "vars/cluster-secrets.sops.yaml"), "--age-key", str(key), "-o", "json")
    assert p.returncode == 0
    p = _cli("check", str(k), "--vars", str(k / "vars/cluster-secrets.sops.yaml"))
    assert p.returncode == 2 and "cluster-secrets.sops.yaml: SOPS-encrypted, cannot decrypt: no age key" in p.stderr
    p = _cli("check", str(k), "--age-key", str(k / "missing.key"))
    assert p.returncode == 2 and "missing.key: cannot read" in p.stderr
    json.loads(_cli("check", str(k), "--age-key", str(key), "-o", "json").stdout)


def test_only_age_keys_are_used_and_odd_files_are_errors_not_crashes(repo: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A file that also names a Vault server (or a KMS) is opened with age alone: sops asks no
    one; a multi-document file is decrypted whole; metadata that is not sops' is one error; an
    encrypted ConfigMap stays encrypted (Flux decrypts Secrets only)."""
    import shutil
    import socket
    import threading

    k, key, other = repo
    copy = tmp_path / "kubernetes"
    shutil.copytree(k, copy)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    hits: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            hits.append(c.recv(100))
            c.close()
    threading.Thread(target=accept, daemon=True).start()
    f = copy / "apps/app-token.sops.yaml"
    vault = (f"    hc_vault:\n        - vault_address: http://127.0.0.1:{listener.getsockname()[1]}\n"
             "          engine_path: sops\n          key_name: firstkey\n          created_at: \"2026-01-01T00:00:00Z\"\n"
             "          enc: vault:v1:abc\n")
    f.write_text(f.read_text().replace("sops:\n", "sops:\n" + vault, 1))
    recipient = subprocess.run(["age-keygen", "-y", str(key)], capture_output=True, text=True).stdout.strip()
    multi = copy / "apps/two.sops.yaml"
    multi.write_text(APP_TOKEN.replace("app-token", "one") + "---\n" + APP_TOKEN.replace("app-token", "two"))
    encrypt(multi, recipient)
    cm = copy / "apps/settings.sops.yaml"
    cm.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {PASSWORD: cm-secret}\n")
    subprocess.run([sops_binary(), "encrypt", "--age", recipient, "--encrypted-regex", "^data$", "-i", str(cm)],
                   check=True, capture_output=True)
    (copy / "apps/odd.sops.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: odd}\nstringData: {A: 'ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]'}\n"
        "sops: {age: 5}\n")
    (copy / "apps/kustomization.yaml").write_text(
        KUSTOMIZE + "namespace: selfhosted\nresources: [route.yaml, app-token.sops.yaml, two.sops.yaml, settings.sops.yaml, odd.sops.yaml]\n")
    r = load_repo(copy, {}, decryptor=Decryptor(user_identities([other], environ={})))  # a key that cannot open it
    assert hits == []  # no one was asked
    (fail,) = [d for d in r.diagnostics if d.code == "DecryptionFailed" and "app-token" in d.file]
    assert "none of the age keys given" in fail.message
    r = load_repo(copy, {}, decryptor=Decryptor(user_identities([key], environ={})))
    assert hits == []
    assert _obj(r, "Secret", "app-token").raw["stringData"]["TOKEN"] == "s3cr3t-t0ken-value"
    assert _obj(r, "Secret", "one").raw["stringData"]["TOKEN"] == _obj(r, "Secret", "two").raw["stringData"]["TOKEN"] == "s3cr3t-t0ken-value"
    assert _obj(r, "ConfigMap", "settings").raw["data"]["PASSWORD"].startswith("ENC[")
    assert any("ConfigMap settings" in m for m in _codes(r)["DecryptionNotSupported"])
    assert [d.file for d in r.diagnostics if d.code == "DecryptionFailed"] == ["kubernetes/apps/odd.sops.yaml"]
    listener.close()


def test_encrypted_dotenv_vars_and_a_bom_key_file(tmp_path: Path) -> None:
    from homeplane.api.variables import VariablesError, load_vars_file

    key = tmp_path / "k.txt"
    recipient = keygen(key)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + key.read_bytes())
    env = tmp_path / "cluster.sops.env"
    env.write_text("SECRET_DOMAIN=dotenv.example\nTOKEN=abc\n")
    subprocess.run([sops_binary(), "encrypt", "--age", recipient, "-i", str(env)], check=True, capture_output=True)
    assert "dotenv.example" not in env.read_text()
    assert load_vars_file(env, Decryptor(user_identities([bom], environ={}))) == {"SECRET_DOMAIN": "dotenv.example", "TOKEN": "abc"}
    with pytest.raises(VariablesError, match="SOPS-encrypted, cannot decrypt: no age key"):
        load_vars_file(env)
