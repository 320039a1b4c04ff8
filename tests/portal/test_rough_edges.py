"""Rough edges of issue 17, each shown fixed: a rename refused as a duplicate keeps the
object's own name in the title and breadcrumb; /favicon.ico is served; the development server
prints a failed request's log line once."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.urls import reverse

from tests.factories import make_cloud_application, make_pos
from tests.live import ROOT, free_port
from tests.portal.conftest import client_for

SERVER_START_TIMEOUT = 60
TITLE = re.compile(r"<title>(.*?) · Cloud Connector</title>", re.S)
CRUMBS = re.compile(r'<div class="crumbs">(.*?)</div>', re.S)
H1 = re.compile(r"<h1[^>]*>(.*?)</h1>", re.S)


def page_parts(response) -> tuple[str, str, str]:
    html = response.content.decode()
    return TITLE.search(html).group(1), CRUMBS.search(html).group(1), H1.search(html).group(1)


# --- a refused rename -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_store_rename_refused_as_a_duplicate_keeps_the_stores_name(world):
    response = client_for(world.merchant_admin).post(
        reverse("portal:store_rename", args=[world.store.pk]), {"name": "Mill Lane"}
    )
    assert response.status_code == 200
    assert "There is already a store called “Mill Lane” here" in response.content.decode()
    title, crumbs, h1 = page_parts(response)
    assert title == "Rename store" and "High Street" in crumbs and "High Street" in h1
    assert "Mill Lane" not in crumbs + h1
    assert 'value="Mill Lane"' in response.content.decode()  # what was typed stays in the field
    world.store.refresh_from_db()
    assert world.store.name == "High Street"


@pytest.mark.django_db
def test_a_pos_rename_refused_as_a_duplicate_keeps_the_pos_name(world):
    make_pos(store=world.store, name="Till 2")
    response = client_for(world.merchant_admin).post(
        reverse("portal:pos_rename", args=[world.pos.pk]), {"name": "till 2"}
    )
    assert "There is already a POS called “till 2” here" in response.content.decode()
    _title, crumbs, h1 = page_parts(response)
    assert "Till 1" in crumbs and "Till 1" in h1 and "till 2" not in crumbs + h1


@pytest.mark.django_db
def test_an_application_rename_refused_as_a_duplicate_keeps_the_applications_name(world):
    make_cloud_application(merchant_aggregator=world.ma, name="Second app")
    response = client_for(world.ma_admin).post(
        reverse("portal:application_detail", args=[world.app.pk]),
        {"name": "Second app", "services": ["retail-api"]},
    )
    html = response.content.decode()
    assert "already an application called “Second app”" in html
    title, _crumbs, h1 = page_parts(response)
    assert title == "Acme POS cloud" and h1 == "Acme POS cloud"
    assert 'value="Second app"' in html
    world.app.refresh_from_db()
    assert world.app.name == "Acme POS cloud"


# --- the favicon ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_favicon_is_served_to_anyone_and_linked_from_every_page(world):
    response = client_for(None).get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] in {"image/vnd.microsoft.icon", "image/x-icon"}
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert "max-age" in response["Cache-Control"]
    for page in (client_for(None).get("/accounts/login/"), client_for(world.merchant_admin).get("/")):
        assert b'<link rel="icon" href="/static/portal/favicon.ico"' in page.content


# --- the development server's log -------------------------------------------------------------------


def test_the_development_server_logs_a_failed_request_once(tmp_path: Path):
    """`make run`'s server (runserver) used to print each 4xx/5xx twice: Django's django.request
    line and daphne's access line. Now once, with its request id; and the favicon is no 404."""
    port = free_port()
    log = tmp_path / "runserver.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "SQLITE_PATH": str(tmp_path / "dev.sqlite3"),
        "DEBUG": "1",
        "LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while True:
                try:
                    favicon = requests.get(f"http://127.0.0.1:{port}/favicon.ico", timeout=5)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, log.read_text()
                    assert server.poll() is None, log.read_text()
                    time.sleep(0.2)
            missing = requests.get(f"http://127.0.0.1:{port}/no-such-page-pb", timeout=5)
            # The access line, if any, is written when the response completes: give it time.
            time.sleep(1)
        finally:
            server.terminate()
            server.wait(timeout=30)
    text = log.read_text()
    assert favicon.status_code == 200
    assert missing.status_code == 404
    lines = [line for line in text.splitlines() if "/no-such-page-pb" in line]
    assert len(lines) == 1, text
    assert "django.request" in lines[0] and "request_id=" in lines[0]
    assert "favicon" not in text
