"""The watermark's payload: who made a video and when, in 56 bits with a CRC-16.

    bits  0-15  server id  (16 bits: a hash of the operator's server name)
    bits 16-31  stream id  (16 bits: a hash of the stream's id; an offline render's file name)
    bits 32-55  minutes    (24 bits: whole minutes since 2025-01-01 UTC; wraps after 31 years)
    bits 56-71  CRC-16/CCITT of bits 0-55

The payload is fixed for a stream's whole life (the minute is the stream's start), so any
2 s of it carry the same bits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

EPOCH = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
DATA_BITS = 56
CRC_BITS = 16
CODED_BITS = DATA_BITS + CRC_BITS


def short_hash(text: str) -> int:
    """16 bits of a name (server, stream): the same name always gives the same value."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:2], "big")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


@dataclass(frozen=True)
class Payload:
    server: int  # 16 bits
    stream: int  # 16 bits
    minutes: int  # 24 bits since EPOCH

    @classmethod
    def make(cls, server_name: str, stream_id: str, unix_time: float) -> Payload:
        minutes = int(max(0.0, unix_time - EPOCH) // 60) % (1 << 24)
        return cls(short_hash(server_name), short_hash(stream_id), minutes)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(EPOCH + 60 * self.minutes, UTC)

    def as_dict(self) -> dict:
        return {
            "server": f"{self.server:04x}",
            "stream": f"{self.stream:04x}",
            "time": self.time.strftime("%Y-%m-%dT%H:%MZ"),
        }

    def _data(self) -> bytes:
        value = (self.server << 40) | (self.stream << 24) | self.minutes
        return value.to_bytes(7, "big")

    def bits(self) -> np.ndarray:
        """The coded bits (data then CRC) as a (72,) array of 0/1."""
        raw = self._data() + crc16(self._data()).to_bytes(2, "big")
        return np.unpackbits(np.frombuffer(raw, np.uint8))

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Payload | None:
        """Decode 72 bits; None when the CRC does not match."""
        raw = np.packbits(np.asarray(bits, np.uint8)).tobytes()
        data, crc = raw[:7], int.from_bytes(raw[7:9], "big")
        if crc16(data) != crc:
            return None
        value = int.from_bytes(data, "big")
        return cls(value >> 40, (value >> 24) & 0xFFFF, value & 0xFFFFFF)
