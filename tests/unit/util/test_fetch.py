"""Downloads against a real local HTTP server (pytest-httpserver)."""

from __future__ import annotations

import hashlib

import pytest
from werkzeug import Response

from hbos.errors import DownloadError, HashMismatch
from hbos.util import fetch

BODY = b"snp release bytes " * 1000
SHA = hashlib.sha256(BODY).hexdigest()


def test_success_verifies_and_writes_atomically(httpserver, tmp_path):
    httpserver.expect_request("/r.tar.gz").respond_with_data(BODY)
    dest = tmp_path / "r.tar.gz"
    assert fetch.download(httpserver.url_for("/r.tar.gz"), dest, sha256=SHA) == SHA
    assert dest.read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["r.tar.gz"]


def test_404_names_url_and_status(httpserver, tmp_path):
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    url = httpserver.url_for("/missing")
    with pytest.raises(DownloadError) as exc:
        fetch.download(url, tmp_path / "x", retries=3, backoff=0)
    assert str(exc.value) == f"cannot fetch {url}: HTTP 404 NOT FOUND"
    assert not (tmp_path / "x").exists()
    assert len(httpserver.log) == 1  # a 404 is final: no retry


def test_sha256_mismatch_shows_both_and_keeps_nothing(httpserver, tmp_path):
    httpserver.expect_request("/r").respond_with_data(BODY)
    wrong = "0" * 64
    with pytest.raises(HashMismatch) as exc:
        fetch.download(httpserver.url_for("/r"), tmp_path / "r", sha256=wrong)
    assert f"expected {wrong}" in str(exc.value) and f"got      {SHA}" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_is_detected(httpserver, tmp_path):
    def handler(request):
        return Response(iter([BODY[:100]]), headers={"Content-Length": str(len(BODY))},
                        direct_passthrough=True)
    httpserver.expect_request("/t").respond_with_handler(handler)
    with pytest.raises(DownloadError) as exc:
        fetch.download(httpserver.url_for("/t"), tmp_path / "t", retries=2, backoff=0)
    assert "truncated" in str(exc.value) or "connection broke" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_500_then_200_is_retried(httpserver, tmp_path):
    httpserver.expect_ordered_request("/flaky").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/flaky").respond_with_data(BODY)
    assert fetch.download(httpserver.url_for("/flaky"), tmp_path / "f", sha256=SHA,
                          backoff=0) == SHA


def test_unreachable_host_names_the_url(tmp_path):
    url = "http://127.0.0.1:9/nothing-listens-here"
    with pytest.raises(DownloadError) as exc:
        fetch.download(url, tmp_path / "x", retries=1)
    assert url in str(exc.value)
