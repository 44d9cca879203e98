"""A device's identity file and where its own data lives (light: no ML imports, so the
SecAgg+ key-exchange stages of the ClientApp start fast)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_FILE = "device.json"
STORE_FILE = "kizuna.db"
SENT_UPDATES_DIR = "sent-updates"


@dataclass(frozen=True)
class DeviceManifest:
    """Who a device is, which base model it carries, whether it keeps what it sends."""

    device_id: str
    base_model: str
    #: Keep a copy of every update sent (in ``sent-updates/``) for the owner to inspect.
    keep_sent_updates: bool = False

    @classmethod
    def read(cls, data_dir: Path) -> DeviceManifest:
        """The manifest of the device at ``data_dir``."""
        path = data_dir / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{data_dir} is not a device data dir (no {MANIFEST_FILE}); "
                "create one with `kizuna device simulate` or write it by hand"
            )
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def write(self, data_dir: Path) -> None:
        """Save the manifest into ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")


def device_store_url(data_dir: Path) -> str:
    """The device's own interaction store."""
    return f"sqlite:///{data_dir / STORE_FILE}"
