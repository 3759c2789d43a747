"""Small well-formed picture files built in the tests, byte by byte: what a resident's photo
stands for. `label` makes files of different content (and so different content addresses)."""

from __future__ import annotations

import struct
import zlib


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


JFIF = jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
QUANT = jpeg_segment(0xDB, bytes(65))
EOI = b"\xff\xd9"


def jpeg_scan(label: bytes = b"") -> bytes:
    """A start of scan and its entropy-coded data (a 0xFF in it stuffed as 0xFF 0x00, as in a
    real scan), without the end of image."""
    return jpeg_segment(0xDA, b"\x01\x01\x00\x00?\x00") + b"\x12\x34\xff\x00\x56" + label


def jpeg(label: bytes = b"", *, before_scan: bytes = b"") -> bytes:
    """A JPEG of one picture; `before_scan`: segments between its header and its scan."""
    return b"\xff\xd8" + JFIF + before_scan + QUANT + jpeg_scan(label) + EOI


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
IEND = png_chunk(b"IEND", b"")


def png(label: bytes = b"") -> bytes:
    """A one-pixel PNG without metadata chunks."""
    pixels = png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00" + label))
    return PNG_SIGNATURE + IHDR + pixels + IEND


def webp_chunk(kind: bytes, payload: bytes) -> bytes:
    padding = b"\x00" if len(payload) % 2 else b""
    return kind + struct.pack("<I", len(payload)) + payload + padding


def webp(*chunks: bytes) -> bytes:
    body = b"".join(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def gif_sub_blocks(data: bytes) -> bytes:
    """`data` as GIF data sub-blocks (each at most 255 bytes) and their terminator."""
    return (
        b"".join(bytes([len(c)]) + c for c in (data[i : i + 255] for i in range(0, len(data), 255)))
        + b"\x00"
    )


def gif_extension(label: int, data: bytes) -> bytes:
    return bytes([0x21, label]) + gif_sub_blocks(data)


#: The application extension that loops an animation (forever).
GIF_LOOP = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"


def gif(label: bytes = b"", *, extensions: bytes = b"") -> bytes:
    """A one-pixel GIF with a two-colour table; `extensions` go before its image."""
    screen = b"GIF89a" + b"\x01\x00\x01\x00\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    image = (
        b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02" + gif_sub_blocks(b"\x4c\x01" + label)
    )
    return screen + extensions + image + b"\x3b"
