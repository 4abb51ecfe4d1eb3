"""The modes an XDP program is attached in (``pyxdp.XdpMode``) and the
kernel's XDP_FLAGS_* (linux/if_link.h). Pure: the rule-set file checks an
interface's mode with it, and :mod:`pyxdp.kernel.xdp` attaches with it."""

from __future__ import annotations

from enum import Enum

from ..errors import UsageError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4


class XdpMode(Enum):
    """Where the program runs: in the driver, in the generic (skb) path,
    on the NIC, or AUTO (native, else generic)."""

    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"
    OFFLOAD = "offload"

    @property
    def flags(self) -> int:
        return {
            XdpMode.AUTO: 0,
            XdpMode.NATIVE: XDP_FLAGS_DRV_MODE,
            XdpMode.GENERIC: XDP_FLAGS_SKB_MODE,
            XdpMode.OFFLOAD: XDP_FLAGS_HW_MODE,
        }[self]

    @classmethod
    def parse(cls, text: str) -> XdpMode:
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"bad mode {text!r}: auto, native, generic or offload") from None
