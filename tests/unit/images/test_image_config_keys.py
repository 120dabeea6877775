"""server.yaml keys of the image pipeline, backups, capsule GC and runtimes, with the seed's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from capsa.config.server import BackupConfig, CapsuleGcConfig, DevmapperConfig, ImagesConfig, RuntimesConfig


def test_the_seed_limits_are_the_defaults() -> None:
    images = ImagesConfig()
    assert images.download_timeout_s == 300  # 5 minutes without a byte
    assert images.download_deadline_s == 3600
    assert images.unpack.timeout_s == 1800  # 30 minutes per image
    assert images.verify_policy == "size" and images.pipeline is True
    assert DevmapperConfig().max_device_size == 100 * 1024**3
    assert RuntimesConfig().cache_dir is None
    assert CapsuleGcConfig().interval_s is None and CapsuleGcConfig().older_than_s == 7 * 86400


def test_the_keys_are_validated() -> None:
    assert ImagesConfig.model_validate({"verify_policy": "full"}).verify_policy == "full"
    with pytest.raises(ValidationError, match="verify_policy"):
        ImagesConfig.model_validate({"verify_policy": "sometimes"})
    with pytest.raises(ValidationError, match="backup.interval_s needs backup.dir"):
        BackupConfig.model_validate({"interval_s": 3600})
    with pytest.raises(ValidationError, match="absolute"):
        BackupConfig.model_validate({"dir": "relative/dir"})
    assert BackupConfig.model_validate({"dir": "/var/backups/capsa", "interval_s": 3600}).dir == Path(
        "/var/backups/capsa")
    with pytest.raises(ValidationError):
        CapsuleGcConfig.model_validate({"interval_s": 5})  # at least a minute between collections
