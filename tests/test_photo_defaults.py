"""Photo settings have their defaults in one place (gateway.config.PhotosConfig): the pipeline's own
defaults (used by the send API's tests, the benches and anyone calling process_photo directly) said
max_pixels = 4096 x 4096 while the config, the docs and the running gateway said 20,000,000."""

from __future__ import annotations

from dataclasses import fields

from gateway.config import PhotosConfig
from gateway.photos import PhotoSettings
from gateway.protocol import Limits


def test_the_pipeline_defaults_are_the_configs() -> None:
    shared = {f.name for f in fields(PhotosConfig)} & {f.name for f in fields(PhotoSettings)}
    assert {"alert_long_edge", "thumb_long_edge", "alert_quality", "thumb_quality", "max_pixels"} <= shared
    for name in shared:
        assert getattr(PhotoSettings(), name) == getattr(PhotosConfig(), name), name
    assert PhotoSettings().max_pixels == 20_000_000
    assert PhotoSettings().max_bytes == Limits().max_photo_bytes


def test_from_config_carries_every_shared_field() -> None:
    cfg = PhotosConfig(
        alert_long_edge=1000,
        thumb_long_edge=200,
        alert_quality=70,
        thumb_quality=60,
        max_pixels=5_000_000,
        caption_strip=False,
    )
    s = PhotoSettings.from_config(cfg, max_bytes=12345)
    assert (s.alert_long_edge, s.thumb_long_edge, s.alert_quality, s.thumb_quality, s.max_pixels) == (
        1000,
        200,
        70,
        60,
        5_000_000,
    )
    assert s.caption_strip is False and s.max_bytes == 12345
