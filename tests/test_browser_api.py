"""What a browser needs from the API: the caller's job list, CORS, signed result URLs an <img> can load, caching."""

from __future__ import annotations

import time
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR
from tests.test_api import MODEL, error_code, mnist_digit, png, submit, work

PACS = {"Authorization": "Bearer pacs-secret-0123456789"}
DASH = {"Authorization": "Bearer dash-secret-0123456789"}
DASHBOARD_ORIGIN = "http://dashboard.example:8080"


@pytest.fixture
def keyed(settings):
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    return type(settings).model_validate(settings.model_dump() | {
        "api_keys": [
            {"name": "pacs", "key": "pacs-secret-0123456789", "scopes": ["explain"]},
            {"name": "dash", "key": "dash-secret-0123456789", "scopes": ["explain"]},
        ],
        "cors_origins": [DASHBOARD_ORIGIN],
    })


@pytest.fixture
def client(keyed):
    with TestClient(create_app(keyed)) as client:
        yield client


@pytest.fixture
def finished(client, keyed) -> dict:
    """A finished saliency job of the 'pacs' key, as GET /v1/jobs/{id} shows it."""
    job_id = submit(client, png(mnist_digit(3)), headers=PACS).json()["job_id"]
    work(keyed)
    status = client.get(f"/v1/jobs/{job_id}", headers=PACS).json()
    assert status["status"] == "finished"
    return status


def path_and_query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {name: values[0] for name, values in parse_qs(parts.query).items()}


def test_a_signed_file_url_loads_without_a_key_for_that_file_only(client, finished):
    path, query = path_and_query(finished["result"]["files"]["overlay.png"])
    assert set(query) == {"expires", "by", "sig"} and query["by"] == "pacs"
    loaded = client.get(path, params=query)
    assert loaded.status_code == 200 and loaded.headers["content-type"] == "image/png"
    assert loaded.content == client.get(path, headers=PACS).content

    assert error_code(client.get(path)) == "missing_api_key"
    job_path = path.rsplit("/", 1)[0]
    assert error_code(client.get(job_path, params=query)) == "missing_api_key"  # the job itself needs the key

    refusals = {
        "another file": (job_path + "/heatmap.png", query),
        "altered signature": (path, query | {"sig": "0" * 64}),
        "another owner": (path, query | {"by": "dash"}),
        "later expiry": (path, query | {"expires": str(int(query["expires"]) + 3600)}),
        "malformed expiry": (path, query | {"expires": "soon"}),
    }
    for what, (url, params) in refusals.items():
        refused = client.get(url, params=params)
        assert (refused.status_code, error_code(refused)) == (403, "signature_invalid"), what


def test_a_signed_url_stops_working_when_it_expires(client, finished, keyed, monkeypatch):
    path, query = path_and_query(finished["result"]["files"]["heatmap.png"])
    assert int(query["expires"]) == pytest.approx(time.time() + keyed.signed_url_ttl_s, abs=30)
    later = int(query["expires"]) + 1
    monkeypatch.setattr("service.signing.time", SimpleNamespace(time=lambda: later))
    expired = client.get(path, params=query)
    assert (expired.status_code, error_code(expired)) == (403, "signature_expired")


def test_result_files_carry_an_etag_and_a_private_cache_policy(client, finished):
    path, query = path_and_query(finished["result"]["files"]["overlay.png"])
    first = client.get(path, headers=PACS)
    assert first.headers["cache-control"] == "private, max-age=3600, immutable"
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag != client.get(path.replace("overlay", "heatmap"), headers=PACS).headers["etag"]
    revalidated = client.get(path, headers=PACS | {"If-None-Match": etag})
    assert revalidated.status_code == 304 and revalidated.content == b"" and revalidated.headers["etag"] == etag
    changed = client.get(path, headers=PACS | {"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_cors_admits_the_configured_dashboard_origin_only(client, finished):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = client.options("/v1/explanations", headers=preflight | {"Origin": DASHBOARD_ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == DASHBOARD_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = client.options("/v1/explanations", headers=preflight | {"Origin": "http://elsewhere.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

    path, _ = path_and_query(finished["result"]["files"]["overlay.png"])
    read = client.get(path, headers=PACS | {"Origin": DASHBOARD_ORIGIN})
    assert read.headers["access-control-allow-origin"] == DASHBOARD_ORIGIN
    assert "etag" in read.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("origins", [["*"], ["http://dash.example/viewer"], ["dash.example"]])
def test_cors_origins_must_be_exact_origins(settings, origins):
    with pytest.raises(ValueError):
        type(settings).model_validate(settings.model_dump() | {"cors_origins": origins})


def test_without_configured_origins_no_page_elsewhere_may_call(settings):
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/models", headers={"Origin": DASHBOARD_ORIGIN})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_the_job_list_is_the_callers_newest_first_in_pages(client, keyed):
    submitted = [submit(client, png(mnist_digit(3, i)), headers=PACS).json()["job_id"] for i in range(5)]
    other = submit(client, png(mnist_digit(8)), headers=DASH).json()["job_id"]

    seen, cursor = [], None
    for expected_size in (2, 2, 1):
        page = client.get("/v1/jobs", params={"limit": 2} | ({"cursor": cursor} if cursor else {}), headers=PACS)
        body = page.json()
        assert page.status_code == 200 and len(body["jobs"]) == expected_size
        seen += [job["job_id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
    assert seen == submitted[::-1] and cursor is None
    assert [j["job_id"] for j in client.get("/v1/jobs", headers=DASH).json()["jobs"]] == [other]

    newer = submit(client, png(mnist_digit(3, 9)), headers=PACS).json()["job_id"]
    first = client.get("/v1/jobs", params={"limit": 2}, headers=PACS).json()
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=PACS).json()
    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == [newer, *submitted[::-1][:3]]


def test_the_job_list_filters_by_status_and_model_and_forgets_purged_jobs(client, keyed):
    done, canceled, purged = (submit(client, png(mnist_digit(3, i)), headers=PACS).json()["job_id"] for i in range(3))
    assert client.delete(f"/v1/jobs/{canceled}", headers=PACS).status_code == 202
    work(keyed)
    assert client.delete(f"/v1/jobs/{purged}", headers=PACS).status_code == 204

    def listed(**params) -> list[str]:
        answer = client.get("/v1/jobs", params=params, headers=PACS)
        assert answer.status_code == 200, answer.text
        return [job["job_id"] for job in answer.json()["jobs"]]

    assert listed() == [canceled, done]
    assert listed(status="finished") == [done]
    assert listed(status="canceled") == [canceled]
    assert listed(status="queued") == []
    assert listed(model_id=MODEL, status="finished") == [done]
    assert listed(model_id="nih-cardiomegaly") == []
    finished_entry = client.get("/v1/jobs", params={"status": "finished"}, headers=PACS).json()["jobs"][0]
    assert "sig=" in finished_entry["result"]["files"]["overlay.png"]


@pytest.mark.parametrize(
    "params, code",
    [
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "MTIzOi4uLy4u"}, "invalid_cursor"),  # "123:../.." base64
        ({"status": "lost"}, "invalid_request"),
        ({"limit": 0}, "invalid_request"),
        ({"limit": 101}, "invalid_request"),
    ],
)
def test_bad_list_queries_are_refused_with_their_code(client, params, code):
    answer = client.get("/v1/jobs?" + urlencode(params), headers=PACS)
    assert (answer.status_code, error_code(answer)) == (422, code)
