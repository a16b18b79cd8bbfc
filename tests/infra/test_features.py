from __future__ import annotations

from typing import Any

from backend.infra.database import detect_features


class FakeAdmin:
    def __init__(self, version: str) -> None:
        self.version = version

    async def command(self, name: str) -> dict[str, Any]:
        assert name == "buildInfo"
        return {"version": self.version}


class FakeClient:
    def __init__(self, version: str) -> None:
        self.admin = FakeAdmin(version)


async def test_features_post_images_on_a_replica_set_of_mongodb_6_and_later() -> None:
    eight = await detect_features(FakeClient("8.0.4"), "replicaset")  # type: ignore[arg-type]
    assert eight.version == (8, 0, 4) and eight.post_images and eight.version_text == "8.0.4"
    five = await detect_features(FakeClient("5.0.26"), "replicaset")  # type: ignore[arg-type]
    assert not five.post_images  # updateLookup, with the engine building versions itself
    embedded = await detect_features(FakeClient("7.0.0"), "embedded")  # type: ignore[arg-type]
    assert not embedded.post_images
