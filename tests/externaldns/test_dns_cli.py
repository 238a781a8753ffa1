"""``homeplane dns plan|sync`` on the bundled example, offline and against the Cloudflare fake."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from homeplane.cli import app
from tests.conftest import EXAMPLE
from tests.externaldns.fakes.cloudflare import FakeCloudflare

VARS = ["--vars", str(EXAMPLE / "cluster-secrets.env")]


def test_plan_offline_shows_records_and_registry():
    r = CliRunner().invoke(app, ["dns", "plan", str(EXAMPLE), *VARS, "--offline"])
    assert r.exit_code == 0, r.output
    assert "whoami.home.example   CNAME   external.home.example         yes" in r.output
    assert "registry: 4 TXT records" in r.output
    doc = json.loads(CliRunner().invoke(app, ["dns", "plan", str(EXAMPLE), *VARS, "--offline", "-o", "json"]).output)
    assert [i["instance"]["name"] for i in doc] == ["network/cloudflare-dns", "network/unifi-dns"]
    assert {"name": "internal.home.example", "type": "A", "targets": ["192.168.42.121"],
            "resource": "service/network/envoy-network-envoy-internal-1102ed95"} in doc[1]["records"]


def test_plan_without_credentials_says_what_is_missing_and_exits_1():
    r = CliRunner().invoke(app, ["dns", "plan", str(EXAMPLE), *VARS, "--instance", "cloudflare-dns"])
    assert r.exit_code == 1 and "needs CF_API_TOKEN" in r.output
    r = CliRunner().invoke(app, ["dns", "plan", str(EXAMPLE), *VARS, "--instance", "nope"])
    assert r.exit_code == 2 and "no external-dns instance nope" in r.output


def test_sync_then_plan_is_in_sync(monkeypatch):
    with FakeCloudflare("tok") as cf:
        monkeypatch.setenv("HOMEPLANE_CLOUDFLARE_API_URL", cf.url)
        args = ["dns", "sync", str(EXAMPLE), *VARS, "--set", "CF_API_TOKEN=tok", "--instance", "cloudflare-dns"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "applied: create whoami.home.example CNAME external.home.example" in r.output
        assert "tok" not in r.output.replace("--set", "")
        assert cf.find("whoami.home.example")[0]["proxied"] is True
        r = CliRunner().invoke(app, ["dns", "plan", *args[2:]])
        assert r.exit_code == 0 and "in sync: no changes" in r.output
