"""The API docs work offline: every page and asset comes from the gateway itself.

Swagger UI, ReDoc and the AsyncAPI page reference no external host, every asset they
reference is served from the installed package, the seed's ``/docs`` and ``/redoc`` paths
lead to them, and a built wheel carries the assets.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chorus.gateway.app import create_app
from chorus.gateway.state import GatewayConfig
from chorus.schema import asyncapi
from litestar.testing import AsyncTestClient

from tests.conftest import NatsEndpoint

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/schema", "/schema/swagger", "/schema/redoc", "/asyncapi"]
#: src/href attributes and CSS url(...) values.
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]|url\(\s*['"]?([^'")]+)""")


@pytest.fixture
async def client(
    nats_server: NatsEndpoint, database_url: str, read_store_url: str, tmp_path: Path
) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(
        GatewayConfig(
            nats_url=nats_server.url,
            database_url=database_url,
            read_store_url=read_store_url,
            keys_path=str(tmp_path / "keys.db"),
            asyncapi=asyncapi(),
        )
    )
    async with AsyncTestClient(app) as test_client:
        yield test_client


def references(page: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(page)]


@pytest.mark.parametrize("path", PAGES)
async def test_docs_pages_reference_no_external_host(client: AsyncTestClient, path: str) -> None:  # type: ignore[type-arg]
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert not re.search(r"""(?:src|href)\s*=\s*['"](?:https?:)?//""", page), page[:2000]
    assert "fonts.googleapis" not in page and "cdn." not in page
    for url in references(page):
        if url.startswith("#"):
            continue
        assert url.startswith("/"), f"{path} references {url}"
        asset = await client.get(url)
        assert asset.status_code == 200, f"{path} references {url}: {asset.status_code}"


async def test_seed_docs_paths_lead_to_the_offline_pages(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    for seed, target in (("/docs", "/schema/swagger"), ("/redoc", "/schema/redoc")):
        response = await client.get(seed, follow_redirects=False)
        assert response.status_code in (301, 302, 307, 308)
        assert response.headers["location"] == target


async def test_asyncapi_document_is_served_at_a_stable_url(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith("3.")
    assert "session_open" in document["channels"]
    page = (await client.get("/asyncapi")).text
    assert "chorus.cmd.{actor_id}.session.open" in page


def test_the_wheel_carries_the_docs_assets(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(tmp_path.glob("chorus-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in (
        "chorus/gateway/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "chorus/gateway/static/vendor/swagger-ui/LICENSE",
        "chorus/gateway/static/vendor/redoc/redoc.standalone.js",
        "chorus/gateway/static/vendor/redoc/LICENSE",
    ):
        assert asset in names, f"{asset} is not in {wheel.name}"
